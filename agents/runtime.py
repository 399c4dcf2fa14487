"""What every agent process shares at run time: bus endpoints signing with
core.ecdsa, crypto off the event loop, and running until a signal.

* :func:`make_endpoint`: an agent's bus endpoint signing with core.ecdsa. Importing
  this module registers the registry's kind codes with the bus
  (``bus.register_kind_codes``: ``core.protocol.KIND_CODES`` and ``TOPIC_CODES``):
  every agent process sends and reads its requests' kinds and its events' topics as
  codes (docs/protocol.md).
* :func:`run_crypto`: crypto off the event loop, bounded by one limiter per
  process (cffi releases the GIL, so native work runs in parallel); with
  ``small=True``, work under :data:`SMALL_CRYPTO_S` of CPU runs inline on the
  native backend instead (a thread hop costs more than it saves).
* :class:`VerifiedMemo`: a bounded memo of verification results that depend
  only on a key and the bytes checked (certificates, store transactions,
  re-encryption replies), so repeat reads re-check nothing that cannot have changed.
* :func:`serve_until_signal`: an agent process's main task, cancelled at the
  first SIGINT or SIGTERM (``python -m agents.peer``, ``python -m agents.storage``,
  the swarm's agent processes).
* :func:`return_freed_memory`: glibc's malloc gives freed memory back to the OS
  instead of keeping up to tens of MiB per thread arena (the user CLI's reads).
"""

from __future__ import annotations

import functools
import hashlib
import os
import signal
from collections import OrderedDict
from typing import Any, Awaitable, Callable, TypeVar

import trio

from bus import Endpoint, Node, register_kind_codes
from core import ecdsa
from core.backend import backend_name
from core.protocol import KIND_CODES, TOPIC_CODES

register_kind_codes({**KIND_CODES, **TOPIC_CODES})  # (before any endpoint of this process sends or reads a code)

__all__ = ["SMALL_CRYPTO_S", "SMALL_RECORD_BYTES", "VerifiedMemo", "crypto_limiter", "inline_small_crypto",
           "keep_freed_buffers", "make_endpoint", "return_freed_memory", "run_crypto", "serve_until_signal"]

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


SMALL_CRYPTO_S = 0.0003
"""The rule for ``run_crypto(..., small=True)``: a call whose CPU time on the native
backend stays under this (0.3 ms: one ECDSA verify ~45 us, a GT decode ~90 us, a
t-share GT multi-exponentiation ~0.3 ms, AEAD of a few hundred KiB) runs inline
on the event loop. A worker-thread hop (``to_thread.run_sync``, the thread's
start, its report back and the loop's wake-up) costs ~0.1 ms of wall time and
a comparable share of the GIL, more than such a call saves by leaving the loop;
the loop is never held more than ~1 ms by one call. Pairings, key generation,
sealing and records of more than :data:`SMALL_RECORD_BYTES` stay in threads."""

SMALL_RECORD_BYTES = 64 * 1024
"""Sealed records up to this size open as small crypto (``run_crypto(open_record, ...,
small=True)``): ~0.5 ms of CPU on the native backend, most of it the doctor's t-share
GT multi-exponentiation and key derivation (the owner's path is cheaper); larger ones
open in a worker thread (measured: inline reads of 16 and 64 KiB records cost the
process less CPU and ran faster; at 200 KiB the event loop's share grew with no gain)."""

_inline: bool | None = None


def inline_small_crypto() -> bool:
    """Whether ``small=True`` runs inline: only when both the curve arithmetic and ECDSA
    are native (the pure-Python backend is ~100x slower: everything goes to a thread)."""
    global _inline
    if _inline is None:
        _inline = backend_name() == "native" and ecdsa.ecdsa_backend_name() == "native"
    return _inline


async def run_crypto(fn: Callable[..., T], *args: Any, small: bool = False, **kwargs: Any) -> T:
    """Run CPU-bound crypto in a worker thread (the native core releases the GIL).

    ``small=True``: the call takes less than :data:`SMALL_CRYPTO_S` of CPU on the
    native backend (the caller's promise, bounded by the size of its input): it
    runs inline, then checkpoints (cancellation and fairness: other tasks run
    before this one goes on). On the pure-Python backend it goes to a thread
    like any other."""
    if small and inline_small_crypto():
        result = fn(*args, **kwargs)
        await trio.lowlevel.checkpoint()
        return result
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=crypto_limiter())


_MISSING: Any = object()


class VerifiedMemo:
    """Results of pure verifications, remembered by a digest of what they depend on.

    A certificate's issuer signature, a store transaction's signature, a peer's
    signed re-encryption reply: each result is a function of a public key and
    the bytes checked (signature included) alone, so the same bytes under the
    same key verify the same way next time. The memo keeps the SHA-256 of
    (``what``, ``key``, ``data``) of the last ``size`` successes (least recently
    used out) with their result; a failure is never kept (it raises or returns
    False every time), so a memo can only skip work, never turn a bad signature
    good: a different signature, key or byte is a different digest. What can
    change (a revocation, a grant's state) is not a verification and is read
    fresh by the caller every time."""

    def __init__(self, size: int = 4096):
        if size < 1:
            raise ValueError("a memo holds at least one entry")
        self.size = size
        self._seen: OrderedDict[bytes, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._seen)

    @staticmethod
    def _digest(what: str, key: bytes, data: bytes) -> bytes:
        h = hashlib.sha256()
        for part in (what.encode(), bytes(key)):
            h.update(len(part).to_bytes(4, "big"))
            h.update(part)
        h.update(data)
        return h.digest()

    def _get(self, digest: bytes) -> Any:
        result = self._seen.get(digest, _MISSING)
        if result is _MISSING:
            self.misses += 1
        else:
            self._seen.move_to_end(digest)
            self.hits += 1
        return result

    def value(self, what: str, key: bytes, data: bytes, check: Callable[[], T]) -> T:
        """``check()``'s result, computed once for (``what``, ``key``, ``data``) while it
        is remembered. ``data`` must hold every byte the check reads besides ``key``
        (the signature too), and ``check`` must raise when the verification fails
        (nothing is remembered then). The result should be immutable."""
        digest = self._digest(what, key, data)
        result = self._get(digest)
        if result is _MISSING:
            result = check()
            self._remember(digest, result)
        return result

    def valid(self, what: str, key: bytes, data: bytes, check: Callable[[], bool]) -> bool:
        """``check()`` (a signature's validity) for (``what``, ``key``, ``data``): True is
        remembered, False is not (checked again every time)."""
        digest = self._digest(what, key, data)
        if self._get(digest) is not _MISSING:
            return True
        if not check():
            return False
        self._remember(digest, True)
        return True

    async def run_value(self, what: str, key: bytes, data: bytes, check: Callable[[], T]) -> T:
        """:meth:`value`, with a miss's check run by ``run_crypto(check, small=True)``."""
        digest = self._digest(what, key, data)
        result = self._get(digest)
        if result is _MISSING:
            result = await run_crypto(check, small=True)
            self._remember(digest, result)
        return result

    async def run_valid(self, what: str, key: bytes, data: bytes, check: Callable[[], bool]) -> bool:
        """:meth:`valid`, with a miss's check run by ``run_crypto(check, small=True)``."""
        digest = self._digest(what, key, data)
        if self._get(digest) is not _MISSING:
            return True
        if not await run_crypto(check, small=True):
            return False
        self._remember(digest, True)
        return True

    def _remember(self, digest: bytes, result: Any) -> None:
        self._seen[digest] = result
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)


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
