"""The collector policy of agent processes (agents.gcpolicy) and the load test's GC watch."""

from __future__ import annotations

import gc
import weakref

import trio

from agents import gcpolicy
from agents.bench.loadtest.gcwatch import GcWatch


class _Node:
    """A container the collector tracks; two of them make a reference cycle."""

    other: "_Node | None" = None


def _cycle() -> _Node:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return a


async def test_the_keeper_freezes_start_up_state_and_each_full_collections_survivors_and_undoes_it():
    before = gc.get_threshold()
    assert not gcpolicy.keeping()
    async with trio.open_nursery() as nursery:
        await nursery.start(gcpolicy.gc_keeper)
        assert gcpolicy.keeping()
        assert gc.get_threshold() == (gcpolicy.YOUNG_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0  # settled: what lived at start-up is frozen
        kept = [_cycle() for _ in range(50)]  # long-lived state made after start-up
        frozen = gc.get_freeze_count()
        gc.collect()  # a full collection: its survivors are frozen at its end
        assert gc.get_freeze_count() >= frozen + 100
        assert not any(obj is kept for gen in range(3) for obj in gc.get_objects(generation=gen))
        # a second keeper (another swarm in the same process) changes nothing, and its end undoes nothing
        async with trio.open_nursery() as inner:
            await inner.start(gcpolicy.gc_keeper)
            inner.cancel_scope.cancel()
        assert gcpolicy.keeping() and gc.get_threshold()[0] == gcpolicy.YOUNG_THRESHOLD
        nursery.cancel_scope.cancel()
    assert not gcpolicy.keeping()
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    gc.collect()  # with nothing frozen, a full collection walks (and freezes) nothing behind our back
    assert gc.get_freeze_count() == 0
    del kept


async def test_a_frozen_cycle_is_reclaimed_after_the_refresh_unfreezes(autojump_clock):
    now = [0.0]
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: gcpolicy.gc_keeper(refresh=600.0, clock=lambda: now[0],
                                                                   task_status=task_status))
        cycle = _cycle()
        gc.collect()  # the cycle survives (it is referenced) and is frozen
        gone = weakref.ref(cycle)
        del cycle  # now garbage, but frozen: the cost the keeper trades for short pauses
        gc.collect()
        assert gone() is not None
        now[0] = 601.0
        gc.collect()  # the first full collection after the refresh is due unfreezes everything ...
        assert gc.get_freeze_count() == 0 and gone() is not None
        gc.collect()  # ... and the next one walks it all, reclaims the cycle, and freezes again
        assert gone() is None and gc.get_freeze_count() > 0
        nursery.cancel_scope.cancel()


def test_the_watch_times_each_collection_by_generation_within_the_window():
    now = [0.0]
    watch = GcWatch(lambda: now[0])
    with watch:
        gc.collect(0)  # before the window
        now[0] = 10.0
        gc.collect(2)
        gc.collect(1)
        now[0] = 20.0
        gc.collect(2)  # at the window's end: outside it
    gc.collect()  # after the watch: not recorded
    s = watch.summary(5.0, 20.0)
    assert [s["by_generation"][g]["collections"] for g in ("0", "1", "2")] == [0, 1, 1]
    assert [e[0] for e in s["full"]] == [5.0]
    full = s["by_generation"]["2"]
    assert full["max_ms"] == full["p50_ms"] == full["total_ms"] > 0 and full["cpu_max_ms"] == full["cpu_total_ms"] > 0
    assert s["by_generation"]["0"]["p50_ms"] is None
    assert len(watch.events) == 4 and s["walked_objects"][0] > 0 and s["walked_objects"][1] > 0


async def test_cycles_a_client_keeps_in_flight_at_every_full_collection_do_not_stay_frozen_for_ten_minutes():
    # the hostile pattern (docs/security.md, "Third wave"): at each full collection many request-scoped
    # cycles are alive (in flight), get frozen, and are garbage a moment later. With only the ten-minute
    # refresh they stayed frozen, round after round; past FROZEN_GROWTH times what was frozen at the
    # settle, the next full collection thaws and the one after reclaims them.
    now = [0.0]
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: gcpolicy.gc_keeper(refresh=600.0, clock=lambda: now[0],
                                                                   task_status=task_status))
        base = gc.get_freeze_count()
        per_round = base // 4 // 4 + 1  # cycles of two _Node (each with its __dict__): ~4 objects a cycle
        gone = []
        for _ in range(4 * gcpolicy.FROZEN_GROWTH + 2):  # together several times what the settle froze
            in_flight = [_cycle() for _ in range(per_round)]
            gc.collect()  # a full collection while they are alive: frozen at its end
            gone.append(weakref.ref(in_flight[0]))
            del in_flight  # the requests end: their cycles are garbage
        gc.collect()
        gc.collect()
        assert gone[0]() is None  # reclaimed long before the refresh is due (the clock never moved)
        assert gc.get_freeze_count() < (gcpolicy.FROZEN_GROWTH + 1) * base
        nursery.cancel_scope.cancel()
