"""Worker-thread jobs of a peer run in batches: one thread hop for the jobs that queued meanwhile.

A hop to a worker thread (``trio.to_thread.run_sync``) costs the event loop more
than its Python: waking the worker preempts the loop's thread while it holds the
GIL (py-spy --gil on the in-process swarm, access-only load: ~5 % of the GIL time
went to ``start_thread_soon`` under the peers' re-encryptions alone). A
:class:`WorkerBatcher` runs at most ``parallel`` batches at once, each one job
list in one worker thread; a job submitted while they run waits for the next
batch, which takes every job queued by then (at most ``max_batch``). An idle
peer's job starts at once, alone; under load the hops per job fall with the
queue's length. Jobs still run off the event loop (the pairings release the GIL:
the second core), ``parallel`` of them at a time.

There is no background task: the first waiting job's task runs the next batch
(it drains), and whoever leaves while jobs wait and no batch runs hands the turn
to the first of them, so a cancelled waiter never strands the others. A job's
exception is its own caller's (each job's outcome is captured apart).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Generic, TypeVar

import outcome
import trio

from agents.runtime import crypto_limiter

__all__ = ["WorkerBatcher"]

T = TypeVar("T")


class _Job(Generic[T]):
    __slots__ = ("fn", "result", "wake")

    def __init__(self, fn: Callable[[], T]):
        self.fn = fn
        self.result: outcome.Outcome[T] | None = None
        self.wake = trio.Event()


def _run_all(fns: list[Callable[[], Any]]) -> list[outcome.Outcome[Any]]:
    """Worker thread: each job's outcome (an exception stays with its job)."""
    return [outcome.capture(fn) for fn in fns]


class WorkerBatcher:
    """Runs sync functions in worker threads, batching the calls that queue while others run."""

    def __init__(self, *, parallel: int = 1, max_batch: int = 8,
                 limiter: Callable[[], trio.CapacityLimiter] = crypto_limiter):
        if parallel < 1 or max_batch < 1:
            raise ValueError("parallel and max_batch are at least 1")
        self.parallel = parallel
        self.max_batch = max_batch
        self._limiter = limiter
        self._queue: list[_Job[Any]] = []
        self._running = 0  # batches in worker threads now
        self.batches = 0  # batches run (metrics: jobs / batches is the mean batch)
        self.jobs = 0

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread, in a batch with the jobs queued with it."""
        job: _Job[T] = _Job(functools.partial(fn, *args))
        self._queue.append(job)
        try:
            while job.result is None:
                if self._running >= self.parallel:
                    await job.wake.wait()
                    job.wake = trio.Event()
                    continue
                await self._drain(job)
        finally:
            if job.result is None and job in self._queue:  # cancelled while waiting
                self._queue.remove(job)
            self._hand_over()
        return job.result.unwrap()

    async def _drain(self, job: _Job[Any]) -> None:
        """Run one batch: ``job`` and the jobs queued before it, then those after it, up to ``max_batch``."""
        batch = self._queue[:self.max_batch]
        if job not in batch:  # (only when more than max_batch wait: the oldest go first)
            batch[-1:] = [job]
        for j in batch:
            self._queue.remove(j)
        self._running += 1
        self._hand_over()  # a second slot free: the next waiter runs a batch beside this one
        try:
            results = await trio.to_thread.run_sync(_run_all, [j.fn for j in batch], limiter=self._limiter())
        except BaseException:
            # cancelled before the thread started (a started job is not abandoned): the others wait again
            self._queue[:0] = [j for j in batch if j is not job]
            raise
        finally:
            self._running -= 1
        self.batches += 1
        self.jobs += len(batch)
        for j, result in zip(batch, results):
            j.result = result
            j.wake.set()

    def _hand_over(self) -> None:
        """Wake the first waiting job when a batch slot is free: it drains next."""
        if self._queue and self._running < self.parallel:
            self._queue[0].wake.set()

