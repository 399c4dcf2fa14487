"""Choosing loopback ports for agents and etcd members that bind them later.

A port handed out by binding port 0 comes from the kernel's ephemeral range, the
same range outgoing connections take their local ports from. Between choosing a
port and binding it in another process, any outgoing connection on the machine
(an agent that already runs connects to its peers) may take that port as its
source, and the bind fails with EADDRINUSE: the agent exits at start. So
:func:`free_port` chooses below (or above) the ephemeral range, where the kernel
never hands out a source port, checks that the port binds now, and never hands
out the same port twice in one process.
"""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000  # below: well-known and registered services are more common
_given: set[int] = set()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of source ports for outgoing connections (Linux's default elsewhere)."""
    try:
        lo, hi = (int(x) for x in _EPHEMERAL.read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that binds now and lies outside the ephemeral range (see the module
    docstring); if that space is exhausted or the range covers it all, one the kernel picks."""
    lo, hi = ephemeral_range()
    spans = [(a, b) for a, b in ((_LOWEST, lo - 1), (hi + 1, 65535)) if b >= a]
    sizes = [b - a + 1 for a, b in spans]
    total = sum(sizes)
    for _ in range(256 if total else 0):
        pick = secrets.randbelow(total)
        for (a, _b), size in zip(spans, sizes):
            if pick < size:
                port = a + pick
                break
            pick -= size
        if port not in _given and _bindable(host, port):
            _given.add(port)
            return port
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    _given.add(port)
    return port
