"""agents.peer._batch.WorkerBatcher: jobs that queue while a batch runs share the next worker-thread hop; each job's
result or exception is its caller's; a cancelled caller strands no one."""

from __future__ import annotations

import threading

import pytest
import trio

from agents.peer._batch import WorkerBatcher


def limiter() -> trio.CapacityLimiter:
    return trio.CapacityLimiter(4)


class Gate:
    """A job that blocks its worker thread until released, recording the thread it ran in."""

    def __init__(self):
        self.release = threading.Event()
        self.started = threading.Event()
        self.threads: list[int] = []

    def __call__(self, value):
        self.threads.append(threading.get_ident())
        self.started.set()
        self.release.wait(10)
        return value


def job(value, threads):
    threads.append(threading.get_ident())
    if isinstance(value, Exception):
        raise value
    return value * 2


async def test_an_idle_batcher_runs_a_job_at_once_off_the_event_loop():
    batcher = WorkerBatcher(limiter=limiter)
    threads: list[int] = []
    assert await batcher.run(job, 21, threads) == 42
    assert threads and threads[0] != threading.get_ident()
    assert (batcher.jobs, batcher.batches) == (1, 1)


async def test_jobs_queued_behind_a_running_batch_share_the_next_hop_and_keep_their_own_outcomes():
    batcher = WorkerBatcher(limiter=limiter, max_batch=8)
    gate = Gate()
    threads: list[int] = []
    results: dict[int, object] = {}

    async def call(i):
        try:
            results[i] = await batcher.run(job, ValueError(f"job {i}") if i == 3 else i, threads)
        except ValueError as exc:
            results[i] = str(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(batcher.run, gate, "first")
        await trio.to_thread.run_sync(gate.started.wait, 10)
        for i in range(5):
            nursery.start_soon(call, i)
        await trio.testing.wait_all_tasks_blocked()
        assert results == {}  # queued behind the running batch (parallel=1)
        gate.release.set()
    assert results == {0: 0, 1: 2, 2: 4, 3: "job 3", 4: 8}
    assert (batcher.jobs, batcher.batches) == (6, 2)  # the five queued jobs: one hop, one thread
    assert len(set(threads)) == 1


async def test_a_batch_holds_at_most_max_batch_jobs_and_parallel_batches_run_side_by_side():
    batcher = WorkerBatcher(limiter=limiter, max_batch=2, parallel=2)
    gates = [Gate(), Gate()]
    threads: list[int] = []
    async with trio.open_nursery() as nursery:
        for g in gates:
            nursery.start_soon(batcher.run, g, "x")
        for g in gates:  # two batches at once: both gates started
            await trio.to_thread.run_sync(g.started.wait, 10)
        for i in range(5):
            nursery.start_soon(batcher.run, job, i, threads)
        await trio.testing.wait_all_tasks_blocked()
        for g in gates:
            g.release.set()
    assert batcher.jobs == 7 and batcher.batches >= 2 + 3  # 5 queued jobs in batches of at most 2


async def test_a_cancelled_waiter_leaves_the_queue_and_the_others_still_run():
    batcher = WorkerBatcher(limiter=limiter)
    gate = Gate()
    threads: list[int] = []
    results = []
    with trio.fail_after(10):  # a stranded job would hang: fail instead
        async with trio.open_nursery() as nursery:
            nursery.start_soon(batcher.run, gate, "first")
            await trio.to_thread.run_sync(gate.started.wait, 10)
            doomed = trio.CancelScope()

            async def cancelled():
                with doomed:
                    await batcher.run(job, 100, threads)
                    results.append("not cancelled")
            nursery.start_soon(cancelled)

            async def kept(i):
                results.append(await batcher.run(job, i, threads))
            nursery.start_soon(kept, 1)
            await trio.testing.wait_all_tasks_blocked()
            doomed.cancel()
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()
    assert results == [2]
    assert len(threads) == 1  # the cancelled job never ran


async def test_a_drainer_cancelled_before_its_thread_starts_hands_its_batch_back():
    """A and B queue behind a running batch; A runs the next batch [A, B] but is cancelled while it
    waits for the limiter: B goes back to the queue and runs in a later batch."""
    tokens = trio.CapacityLimiter(1)
    batcher = WorkerBatcher(limiter=lambda: tokens)
    gate = Gate()
    threads: list[int] = []
    results = []
    holder = object()
    with trio.fail_after(10):  # a stranded job would hang: fail instead
        async with trio.open_nursery() as nursery:
            nursery.start_soon(batcher.run, gate, "first")
            await trio.to_thread.run_sync(gate.started.wait, 10)
            doomed = trio.CancelScope()

            async def a():
                with doomed:
                    await batcher.run(job, 100, threads)
                    results.append("not cancelled")

            async def b():
                results.append(await batcher.run(job, 5, threads))
            nursery.start_soon(a)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(b)
            # the test takes the limiter's token next (first in its line), so the batch [A, B] waits for it
            nursery.start_soon(tokens.acquire_on_behalf_of, holder)
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()
            while holder not in tokens.statistics().borrowers:
                await trio.sleep(0.001)
            await trio.testing.wait_all_tasks_blocked()
            assert batcher._running == 1 and not batcher._queue  # A drains [A, B], waiting for the token
            doomed.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert results == []  # B is back in line, not lost
            tokens.release_on_behalf_of(holder)
    assert results == [10] and len(threads) == 1
    assert (batcher.jobs, batcher.batches) == (2, 2)


def test_bounds():
    with pytest.raises(ValueError):
        WorkerBatcher(parallel=0)
    with pytest.raises(ValueError):
        WorkerBatcher(max_batch=0)
