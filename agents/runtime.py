"""What every agent process shares at run time: bus endpoints signing with
core.ecdsa, crypto off the event loop, and running until a signal.

* :func:`make_endpoint`: an agent's bus endpoint signing with core.ecdsa.
* :func:`run_crypto`: crypto off the event loop, bounded by one limiter per
  process (cffi releases the GIL, so native work runs in parallel).
* :func:`serve_until_signal`: an agent process's main task, cancelled at the
  first SIGINT or SIGTERM (``python -m agents.peer``, ``python -m agents.storage``,
  the swarm's agent processes).
"""

from __future__ import annotations

import functools
import os
import signal
from typing import Any, Awaitable, Callable, TypeVar

import trio

from bus import Endpoint, Node
from core import ecdsa

__all__ = ["crypto_limiter", "make_endpoint", "run_crypto", "serve_until_signal"]

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
