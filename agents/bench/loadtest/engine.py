"""Drive a workload: closed-loop at a concurrency or open-loop at a target rate.

A workload gives operations: ``next_op(rng) -> Op``. An :class:`Op` is a
phase name and an async function; the function returns normally on success
(optionally a :class:`Result` naming the phase it turned out to be, e.g. a
read that had to obtain a grant first, and the payload size) and raises on
failure; ``workload.classify(exc)`` turns the exception into a reason string.

Closed loop: ``concurrency`` workers each run one operation after another;
latency is the operation's own time. Open loop: arrivals at ``rate`` per
second (evenly spaced, or Poisson), each started at its scheduled time
whatever is still in flight; latency counts from the *scheduled* time, so
queueing behind a slow system is measured (no coordinated omission). At most
``max_inflight`` open-loop operations run at once; an arrival beyond that is
recorded as failed with reason ``overload (in-flight cap)``.

The run lasts ``warmup + duration`` seconds, or until ``ops`` operations have
been recorded; operations still running at the end get ``grace`` seconds to
finish, then are cancelled and recorded as ``cut off at end of run``.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

import trio

from agents.bench.loadtest.metrics import Recorder

__all__ = ["Op", "Result", "Workload", "RunSettings", "run_load"]


@dataclass(frozen=True, slots=True)
class Result:
    phase: str | None = None
    nbytes: int = 0


@dataclass(frozen=True, slots=True)
class Op:
    phase: str
    fn: Callable[[], Awaitable[Result | None]]


class Workload(Protocol):
    def next_op(self, rng: random.Random) -> Op: ...

    def classify(self, exc: BaseException) -> str: ...


@dataclass
class RunSettings:
    duration: float = 30.0
    warmup: float = 5.0
    concurrency: int | None = 8  # closed loop (when rate is None)
    rate: float | None = None  # open loop, operations per second
    poisson: bool = False
    ops: int | None = None  # stop after this many recorded operations
    max_inflight: int = 512
    grace: float = 15.0
    seed: int = 1

    def check(self) -> None:
        if self.rate is None and (self.concurrency is None or self.concurrency < 1):
            raise ValueError("give a concurrency >= 1 (closed loop) or a rate > 0 (open loop)")
        if self.rate is not None and not 0 < self.rate < math.inf:
            raise ValueError("rate must be a number > 0")
        if not self.duration < math.inf:  # (nan: a run that never ends)
            raise ValueError("duration must be a number of seconds")
        if self.duration <= 0 and self.ops is None:
            raise ValueError("give a duration > 0 or an operation count")
        if not 0 <= self.warmup < math.inf:
            raise ValueError("warm-up must be >= 0")
        if self.ops is not None and self.ops < 1:
            raise ValueError("operation count must be >= 1")


class Clock:
    """Seconds since the run started (perf_counter based)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0


async def _run_one(op: Op, workload: Workload, recorder: Recorder, clock: Clock, scheduled: float) -> None:
    phase, nbytes = op.phase, 0
    try:
        result = await op.fn()
    except trio.Cancelled:
        recorder.record(phase, scheduled, clock(), False, "cut off at end of run")
        raise
    except Exception as exc:  # an operation's failure is data, not a crash of the run
        recorder.record(phase, scheduled, clock(), False, workload.classify(exc))
        return
    if result is not None:
        phase = result.phase or phase
        nbytes = result.nbytes
    recorder.record(phase, scheduled, clock(), True, "", nbytes)


async def run_load(workload: Workload, settings: RunSettings, recorder: Recorder,
                   *, clock: Clock | None = None, on_tick: Callable[[float], Any] | None = None) -> Clock:
    """Run the workload; samples go to ``recorder`` (its warm-up is ``settings.warmup``)."""
    settings.check()
    clock = clock or Clock()
    recorder.warmup = settings.warmup
    rng = random.Random(settings.seed)
    end = settings.warmup + settings.duration if settings.duration > 0 else math.inf
    stop = trio.Event()

    def done() -> bool:
        if settings.ops is not None and len(recorder.samples) >= settings.ops:
            return True
        return clock() >= end

    async def ticker() -> None:
        while not stop.is_set():
            if done():
                stop.set()
                return
            if on_tick is not None:
                on_tick(clock())
            with trio.move_on_after(min(1.0, max(0.01, end - clock()))):
                await stop.wait()

    async with trio.open_nursery() as outer:
        outer.start_soon(ticker)
        with trio.CancelScope() as ops_scope:
            async with trio.open_nursery() as ops:
                if settings.rate is None:
                    async def worker() -> None:
                        while not stop.is_set():
                            op = workload.next_op(rng)
                            await _run_one(op, workload, recorder, clock, clock())
                            if done():
                                stop.set()

                    for _ in range(settings.concurrency or 1):
                        ops.start_soon(worker)
                else:
                    ops.start_soon(_arrivals, workload, settings, recorder, clock, rng, stop, ops, done)
                await stop.wait()
                # let running operations finish; then cut off stragglers
                ops_scope.deadline = trio.current_time() + settings.grace
        if on_tick is not None:
            on_tick(clock())
        outer.cancel_scope.cancel()
    return clock


async def _arrivals(workload: Workload, settings: RunSettings, recorder: Recorder, clock: Clock,
                    rng: random.Random, stop: trio.Event, nursery: trio.Nursery, done: Callable[[], bool]) -> None:
    assert settings.rate is not None
    inflight = 0
    k = 0
    next_at = 0.0

    async def one(op: Op, scheduled: float) -> None:
        nonlocal inflight
        try:
            await _run_one(op, workload, recorder, clock, scheduled)
        finally:
            inflight -= 1

    while not stop.is_set():
        delay = next_at - clock()
        if delay > 0:
            with trio.move_on_after(delay):
                await stop.wait()
            if stop.is_set():
                return
        op = workload.next_op(rng)
        if inflight >= settings.max_inflight:
            recorder.record(op.phase, next_at, clock(), False, "overload (in-flight cap)")
        else:
            inflight += 1
            nursery.start_soon(one, op, next_at)
        k += 1
        gap = rng.expovariate(settings.rate) if settings.poisson else 1.0 / settings.rate
        next_at += gap
        if done():
            stop.set()
