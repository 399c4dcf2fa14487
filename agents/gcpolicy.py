"""The interpreter's garbage collector in a process that runs agents for a long time.

CPython's cycle collector stops the whole process while it runs, and a full
(generation 2) collection walks every container object the process holds: the
agents' keys, certificates, ledger state, caches and reply caches, which only
grow while a swarm runs. In one process that hosts every agent of a swarm, one
full collection pauses every agent at once; measured on the embedded swarm
under load it grew from ~20 ms to ~50-120 ms over a minute (2 shared cores),
which lands in the access latency's tail.

:func:`gc_keeper` (a trio task; the in-process swarm and every node process run
one) does three things while it runs, and undoes them when it stops:

- a larger young-generation threshold (:data:`YOUNG_THRESHOLD` container
  allocations instead of 700): an access allocates thousands of short-lived
  containers (messages, dicts, trio tasks); with 700, many are still in flight
  when a young collection runs, get promoted to the older generations and count
  towards the next full collection (which CPython runs once a quarter of the
  long-lived objects are new). Young collections become fewer and each is
  still short (it walks at most that many young objects);
- :func:`settle` at its start: one full collection, then ``gc.freeze()``: what
  survived (start-up state) moves to the permanent generation, which
  collections never walk;
- at the end of every full collection the process makes (a ``gc.callbacks``
  hook; the young generations are empty then), it freezes again: what
  survived a full collection is long-lived, so the next full collection walks
  only the objects that arrived since, and its pause stays bounded by the
  growth between two full collections instead of the process's whole heap.

The cost: a reference cycle among frozen objects that later becomes garbage
is not reclaimed while frozen (acyclic garbage is freed by reference counting
as usual). Frozen cycles are the request-scoped objects that happened to be in
flight at a freeze; at the first full collection ``refresh`` seconds (default
10 minutes) after the last refresh, the keeper unfreezes everything instead of
freezing, so the next full collection walks the whole heap once (one long
pause) and reclaims them, and the freezing resumes after it. The same refresh
comes early once the frozen objects outnumber :data:`FROZEN_GROWTH` times those
frozen at the last refresh (or the settle): a client that keeps many requests in
flight at every full collection could otherwise grow the frozen garbage by that
much per collection for the whole ten minutes (docs/security.md, "Third wave");
a heap that really grows pays one whole-heap walk per doubling.
"""

from __future__ import annotations

import gc
import math
import time
from typing import Callable

import trio

__all__ = ["YOUNG_THRESHOLD", "FROZEN_GROWTH", "gc_keeper", "keeping", "settle"]

YOUNG_THRESHOLD = 10_000
"""Container allocations (net of deallocations) between two young collections (CPython's default: 700)."""

FROZEN_GROWTH = 2
"""How many times the objects frozen at the last refresh (or settle) the frozen ones may
number before the next full collection unfreezes everything (a refresh ahead of time)."""

_keepers = 0
_saved: tuple[int, ...] | None = None


def settle() -> None:
    """Collect everything collectable now, then freeze what is left (start-up state, the load test's
    setup): later collections skip it. Call it at a quiet moment: the collection walks the whole heap."""
    gc.collect()
    gc.freeze()
    _Refresh.cap = FROZEN_GROWTH * gc.get_freeze_count()


class _Refresh:
    """When to unfreeze next (the process's first keeper sets it)."""

    every = 600.0
    clock: Callable[[], float] = time.monotonic
    due = math.inf
    cap = math.inf  # frozen objects beyond which the next full collection thaws (FROZEN_GROWTH)
    thawing = False


def _after_full(phase: str, info: dict) -> None:
    """At the end of a full collection (the young generations are empty then): freeze its survivors, or,
    when the refresh is due, unfreeze everything so the next full collection walks (and reclaims) it all."""
    if phase != "stop" or info["generation"] != 2:
        return
    now = _Refresh.clock()
    if not _Refresh.thawing and (now >= _Refresh.due or gc.get_freeze_count() > _Refresh.cap):
        gc.unfreeze()
        _Refresh.thawing = True
        return
    gc.freeze()  # the collection is over: moving its survivors is list splicing, nothing is walked
    if _Refresh.thawing:
        _Refresh.thawing = False
        _Refresh.due = now + _Refresh.every
        _Refresh.cap = FROZEN_GROWTH * gc.get_freeze_count()


async def gc_keeper(*, refresh: float = 600.0, young: int = YOUNG_THRESHOLD,
                    clock: Callable[[], float] = time.monotonic,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Run until cancelled: the young threshold ``young``, :func:`settle` at once, a freeze at the end of
    each full collection, and, the first full collection ``refresh`` seconds (of ``clock``; 0: never) after
    the last refresh, everything unfrozen instead, so the next one reclaims frozen cycles. It holds no
    timer (an idle process, or a test's autojump clock, is not woken by it). When the last keeper of the
    process stops, the thresholds are restored and everything is unfrozen (nothing stays frozen)."""
    global _keepers, _saved
    if _keepers == 0:
        _saved = gc.get_threshold()
        gc.set_threshold(young, *_saved[1:])
        _Refresh.every = refresh if refresh > 0 else math.inf
        _Refresh.clock = clock
        _Refresh.due = clock() + _Refresh.every
        _Refresh.cap = math.inf  # (settle sets it)
        _Refresh.thawing = False
        gc.callbacks.append(_after_full)
    _keepers += 1
    try:
        settle()
        task_status.started()
        await trio.sleep_forever()
    finally:
        _keepers -= 1
        if _keepers == 0:
            gc.callbacks.remove(_after_full)
            if _saved is not None:
                gc.set_threshold(*_saved)
            gc.unfreeze()


def keeping() -> bool:
    """Whether a :func:`gc_keeper` runs in this process."""
    return _keepers > 0
