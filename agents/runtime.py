"""What every agent process shares at run time: bus endpoints signing with
core.ecdsa, crypto off the event loop, and running until a signal.

* :func:`make_endpoint`: an agent's bus endpoint signing with core.ecdsa.
* :func:`run_crypto`: crypto off the event loop, bounded by one limiter per
  process (cffi releases the GIL, so native work runs in parallel).
* :func:`serve_until_signal`: an agent process's main task, cancelled at the
  first SIGINT or SIGTERM (``python -m agents.peer``, ``python -m agents.storage``,
  the swarm's agent processes).
* :func:`return_freed_memory`: glibc's malloc gives freed memory back to the OS
  instead of keeping up to tens of MiB per thread arena (the user CLI's reads).
"""

from __future__ import annotations

import functools
import os
import signal
from typing import Any, Awaitable, Callable, TypeVar

import trio

from bus import Endpoint, Node
from core import ecdsa

__all__ = ["crypto_limiter", "keep_freed_buffers", "make_endpoint", "return_freed_memory", "run_crypto",
           "serve_until_signal"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt(3)


def _mallopt() -> Any:
    """glibc's ``mallopt``, or None where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


def return_freed_memory(threshold: int = 256 * 1024) -> bool:
    """Make glibc's malloc return freed heap memory above ``threshold`` bytes to the OS
    (``mallopt(M_TRIM_THRESHOLD)``, which also ends its dynamic mmap threshold, so
    buffers of 128 KiB and more are mapped and unmapped one by one).

    Without it a process streaming 1 MiB buffers through several threads keeps
    freed buffers resident in each thread's arena (the trim threshold grows to
    twice the largest buffer freed): ~10 MiB more peak memory for a streamed
    200 MiB read (``emrshare bench storage``). Process-wide; returns False where
    the C library is not glibc (nothing changed)."""
    mallopt = _mallopt()
    return mallopt is not None and mallopt(_M_TRIM_THRESHOLD, threshold) == 1


def keep_freed_buffers(mmap_threshold: int = 4 << 20, trim_threshold: int = 8 << 20) -> bool:
    """Let glibc's malloc serve a storage node's 1-2 MiB buffers (a read piece, its
    reply, its sealed frame) from memory it keeps, instead of mapping and faulting
    in fresh pages for each (256 page faults per fresh 1 MiB buffer; none after
    this: tests/agents/test_storage_malloc.py counts them): buffers below ``mmap_threshold`` come
    from the heap, which keeps up to ``trim_threshold`` bytes free. The opposite
    of a reader's :func:`return_freed_memory`: a node holds a few MiB more to
    spend less CPU per MiB served. Process-wide (a node process only); False
    where the C library is not glibc (nothing changed)."""
    mallopt = _mallopt()
    return (mallopt is not None and mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
            and mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1)


T = TypeVar("T")


def make_endpoint(node: Node, agent_id: str, signing_key: bytes, directory: Callable[[str], bytes | None],
                  **options: Any) -> Endpoint:
    return node.endpoint(
        agent_id,
        signer=lambda message: ecdsa.sign_raw(signing_key, message),
        directory=directory,
        verifier=ecdsa.is_valid_raw,
        **options,
    )


_limiter: trio.CapacityLimiter | None = None


def crypto_limiter() -> trio.CapacityLimiter:
    global _limiter
    if _limiter is None:
        _limiter = trio.CapacityLimiter(max(2, os.cpu_count() or 2))
    return _limiter


async def run_crypto(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run CPU-bound crypto in a worker thread (the native core releases the GIL)."""
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=crypto_limiter())


async def serve_until_signal(run: Callable[..., Awaitable[Any]], *args: Any, ready: Callable[[], None]) -> None:
    """Start ``run(*args)`` as a task that reports its start (``nursery.start``), call
    ``ready()`` once it has started, and cancel it at the first SIGINT or SIGTERM."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(run, *args)
            ready()
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
