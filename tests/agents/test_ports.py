"""Ports chosen for agents that bind them later (agents.ports), and the swarm's start error.

CI once failed two `--processes` swarm tests with "agent storage-2 exited with 1": ports came
from binding port 0, i.e. from the ephemeral range, where the outgoing connections of the agents
already running take their source ports, so a later agent's bind could find its port taken.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from agents import ports
from agents.ports import ephemeral_range, free_port
from agents.swarm import AgentStartError, Swarm, SwarmFiles, SwarmSpec


def test_ports_lie_outside_the_ephemeral_range_bind_and_are_not_repeated():
    lo, hi = ephemeral_range()
    chosen = [free_port() for _ in range(200)]
    assert len(set(chosen)) == len(chosen)
    for port in chosen:
        assert not lo <= port <= hi
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free now: no one else holds it


def test_a_port_held_by_another_socket_is_not_handed_out(monkeypatch):
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    port = held.getsockname()[1]
    try:
        # the only port outside the (pretended) ephemeral range is the held one: it is tried and
        # refused, and the fallback is the kernel's pick
        monkeypatch.setattr(ports, "ephemeral_range", lambda: (port + 1, 65535))
        monkeypatch.setattr(ports, "_LOWEST", port)
        tried: list[int] = []
        bindable = ports._bindable
        monkeypatch.setattr(ports, "_bindable", lambda host, p: tried.append(p) or bindable(host, p))
        got = free_port()
        assert got != port and tried and set(tried) == {port}
        with socket.socket() as s:
            s.bind(("127.0.0.1", got))
    finally:
        held.close()


def test_the_range_is_read_from_the_kernel_with_a_fallback(monkeypatch, tmp_path):
    f = tmp_path / "range"
    f.write_text("20000\t40000\n")
    monkeypatch.setattr(ports, "_EPHEMERAL", f)
    assert ephemeral_range() == (20000, 40000)
    for _ in range(50):
        assert not 20000 <= free_port() <= 40000
    monkeypatch.setattr(ports, "_EPHEMERAL", tmp_path / "missing")
    assert ephemeral_range() == (32768, 60999)
    f.write_text("garbage")
    monkeypatch.setattr(ports, "_EPHEMERAL", f)
    assert ephemeral_range() == (32768, 60999)


@pytest.mark.slow
async def test_an_agent_that_cannot_bind_fails_the_start_with_its_log_in_the_error(tmp_path):
    """A swarm whose storage node's port is taken: the start error quotes the agent's log, so the
    cause survives the log's directory (a CI run's temporary files)."""
    spec = SwarmSpec(data_dir=tmp_path / "swarm", processes=True)
    manifest = SwarmFiles(spec.data_dir).create(spec)
    address = manifest.agents["storage-1"]
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    blocker = socket.socket()
    blocker.bind((host, int(port)))
    blocker.listen()
    try:
        with pytest.raises(BaseException) as info:
            async with Swarm.open(spec):
                pass
    finally:
        blocker.close()
    errors = [info.value]
    while errors and isinstance(errors[0], BaseExceptionGroup):
        errors = list(errors[0].exceptions)
    assert errors and isinstance(errors[0], AgentStartError), info.value
    text = str(errors[0])
    assert "storage-1 exited with" in text
    assert "\n    " in text  # the log's last lines, indented
    assert "in use" in text.lower() or "errno 98" in text.lower(), text
    assert Path(text.split("see ", 1)[1].split()[0]).exists()
