"""agents.runtime.serve_until_signal: an agent process's main task, until SIGTERM or SIGINT."""

from __future__ import annotations

import os
import signal

import pytest
import trio

from agents.runtime import serve_until_signal


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_ready_once_started_then_the_task_is_cancelled_at_the_signal(signum):
    log: list[str] = []

    async def run(name: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
        log.append(f"start {name}")
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            log.append("cancelled")

    def ready() -> None:
        log.append("ready")
        os.kill(os.getpid(), signum)  # delivered to the receiver serve_until_signal holds

    with trio.fail_after(10):
        await serve_until_signal(run, "node-1", ready=ready)
    assert log == ["start node-1", "ready", "cancelled"]


async def test_a_task_that_fails_to_start_is_not_reported_ready():
    async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
        raise OSError("address in use")

    def ready() -> None:  # pragma: no cover - must not run
        raise AssertionError("ready() called")

    failed: list[BaseException] = []
    try:
        await serve_until_signal(run, ready=ready)
    except* OSError as group:  # raised out of the nursery
        failed.extend(group.exceptions)
    assert [str(e) for e in failed] == ["address in use"]


def test_return_freed_memory_sets_the_trim_threshold_on_glibc():
    import platform

    from agents.runtime import return_freed_memory

    assert return_freed_memory() is (platform.libc_ver()[0] == "glibc")
