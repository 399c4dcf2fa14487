"""The load test's own process: every cycle collection it makes, timed (``gc.callbacks``).

With the in-process swarm every agent shares this interpreter, so a collection
pauses all of them at once; the report's ``gc`` section says how many
collections of each generation ran in the measured window, how long they
paused the process (wall time, and the collector's own CPU time), how many objects the collector
still walks (tracked and not frozen, :mod:`agents.gcpolicy`) and the pause of
each full collection over time, to see whether pauses grow with the run.
With ``--processes`` it covers the load test's clients only (each agent
process has its own collector).

    watch = GcWatch(clock)          # clock: seconds since the run started
    with watch:
        ...                          # the measured run
    report["gc"] = watch.summary(start, end)
"""

from __future__ import annotations

import gc
import time
from typing import Any, Callable

from agents.bench.loadtest.metrics import percentile

__all__ = ["GcWatch"]

MAX_EVENTS = 200_000


class GcWatch:
    """Records (t, generation, pause seconds, CPU seconds) for every collection while entered."""

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self.events: list[tuple[float, int, float, float]] = []
        self._began = 0.0
        self._began_cpu = 0.0
        self.walked_at_start: int | None = None
        self.walked_at_end: int | None = None

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            self._began_cpu = time.thread_time()
        elif len(self.events) < MAX_EVENTS:
            self.events.append((self._clock(), info["generation"], time.perf_counter() - self._began,
                                time.thread_time() - self._began_cpu))

    def __enter__(self) -> "GcWatch":
        self.walked_at_start = _walked()
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: Any) -> None:
        gc.callbacks.remove(self._callback)
        self.walked_at_end = _walked()

    def summary(self, start: float, end: float) -> dict[str, Any]:
        """Collections in [start, end) by generation: count, pause p50/p99/max and total (ms of wall time,
        which includes time the process was not scheduled), CPU p50/max (ms of the collecting thread's CPU:
        the collector's own work, whatever else runs on the machine); the full collections' pauses in time
        order; objects the collector walks at the start and the end."""
        inside = [e for e in self.events if start <= e[0] < end]
        by_gen = {}
        for g in range(3):
            pauses = sorted(p * 1000 for t, gen, p, _ in inside if gen == g)
            cpu = sorted(c * 1000 for t, gen, _, c in inside if gen == g)
            by_gen[str(g)] = {"collections": len(pauses),
                              "p50_ms": percentile(pauses, 50) if pauses else None,
                              "p99_ms": percentile(pauses, 99) if pauses else None,
                              "max_ms": pauses[-1] if pauses else None,
                              "total_ms": sum(pauses),
                              "cpu_p50_ms": percentile(cpu, 50) if cpu else None,
                              "cpu_max_ms": cpu[-1] if cpu else None,
                              "cpu_total_ms": sum(cpu)}
        return {"by_generation": by_gen,
                "full": [[round(t - start, 2), round(p * 1000, 2), round(c * 1000, 2)]
                         for t, gen, p, c in inside if gen == 2],
                "total_pause_ms": sum(p for _, _, p, _ in inside) * 1000,
                "total_cpu_ms": sum(c for *_, c in inside) * 1000,
                "walked_objects": [self.walked_at_start, self.walked_at_end],
                "frozen_objects": gc.get_freeze_count(),
                "thresholds": list(gc.get_threshold())}


def _walked() -> int:
    """Objects a full collection would walk now (tracked by the collector, not frozen)."""
    return len(gc.get_objects())
