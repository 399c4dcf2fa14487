"""What every agent process shares at run time: bus endpoints signing with
core.ecdsa, and crypto off the event loop.

* :func:`make_endpoint`: an agent's bus endpoint signing with core.ecdsa.
* :func:`run_crypto`: crypto off the event loop, bounded by one limiter per
  process (cffi releases the GIL, so native work runs in parallel).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, TypeVar

import trio

from bus import Endpoint, Node
from core import ecdsa

__all__ = ["crypto_limiter", "make_endpoint", "run_crypto"]

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

