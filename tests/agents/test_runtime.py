"""agents.runtime: serve_until_signal (an agent process's main task, until SIGTERM or SIGINT),
run_crypto's small work inline, and the verified memo."""

from __future__ import annotations

import os
import signal

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

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


# -- run_crypto(small=True) and the verified memo (issue 14) ---------------------------------


async def test_small_crypto_runs_inline_on_the_native_backend_and_checkpoints(monkeypatch):
    import threading

    from agents import runtime

    monkeypatch.setattr(runtime, "_inline", True)
    assert await runtime.run_crypto(threading.get_ident, small=True) == threading.get_ident()
    assert await runtime.run_crypto(threading.get_ident) != threading.get_ident()  # big: a worker thread
    ran = []
    with trio.CancelScope() as scope:
        scope.cancel()
        await runtime.run_crypto(ran.append, 1, small=True)  # a checkpoint: cancelled after the call
    assert scope.cancelled_caught and ran == [1]
    # the pure-Python backend is ~100x slower: "small" work goes to a thread there
    monkeypatch.setattr(runtime, "_inline", False)
    assert await runtime.run_crypto(threading.get_ident, small=True) != threading.get_ident()


def test_small_crypto_is_inline_only_when_curve_and_ecdsa_are_native(monkeypatch):
    from agents import runtime
    from core import ecdsa
    from core.backend import backend_name

    monkeypatch.setattr(runtime, "_inline", None)
    native = backend_name() == "native" and ecdsa.ecdsa_backend_name() == "native"
    assert runtime.inline_small_crypto() is native
    if os.environ.get("EMRSHARE_BACKEND") == "pure":
        assert not native


_MEMO_KEYS = [bytes([7]) * 32, bytes([9]) * 32]  # two ECDSA private keys


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, 1), st.binary(max_size=40), st.integers(0, 2), st.integers(0, 63)),
                    min_size=1, max_size=24),
       size=st.integers(1, 4))
def test_the_memo_is_bounded_and_never_turns_a_bad_signature_good(ops, size):
    """Random checks of good and tampered signatures (a flipped bit, another key's) through a
    small memo: every answer is exactly what ECDSA says, and the memo never outgrows ``size``."""
    from agents.runtime import VerifiedMemo
    from core import ecdsa

    memo = VerifiedMemo(size)
    pubs = [ecdsa.public_key(k) for k in _MEMO_KEYS]
    for who, message, tamper, bit in ops:
        sig = ecdsa.sign(_MEMO_KEYS[who], "test/memo", message)
        if tamper == 1:
            sig = bytes(b ^ (1 << (bit % 8)) if i == bit else b for i, b in enumerate(sig))
        key = pubs[who] if tamper != 2 else pubs[1 - who]  # 2: checked under the other key
        truth = ecdsa.is_valid(key, "test/memo", message, sig)
        for _ in range(2):  # the second time may come from the memo
            got = memo.valid("test", key, message + sig, lambda: ecdsa.is_valid(key, "test/memo", message, sig))
            assert got is truth
        assert len(memo) <= size


def test_the_memo_keeps_results_not_failures_and_separates_what_is_checked():
    from agents.runtime import VerifiedMemo

    memo = VerifiedMemo(2)
    calls = []

    def good():
        calls.append("good")
        return ("share",)

    def bad():
        calls.append("bad")
        raise ValueError("forged")

    assert memo.value("share", b"k", b"data", good) == ("share",)
    assert memo.value("share", b"k", b"data", good) == ("share",) and calls == ["good"]
    for _ in range(2):  # a failure raises every time: nothing was kept
        with pytest.raises(ValueError):
            memo.value("share", b"k", b"other", bad)
    assert calls == ["good", "bad", "bad"]
    # another kind, key or byte is another entry (length-prefixed: no ambiguity between key and data)
    assert not memo.valid("cert", b"k", b"data", lambda: False)
    assert not memo.valid("share", b"kd", b"ata", lambda: False)
    assert memo.valid("share", b"k", b"data", lambda: False)  # remembered: not checked again
    # least recently used out
    memo.valid("a", b"k", b"1", lambda: True)
    memo.valid("b", b"k", b"2", lambda: True)
    assert len(memo) == 2 and not memo.valid("share", b"k", b"data", lambda: False)
    with pytest.raises(ValueError):
        VerifiedMemo(0)


async def test_the_memo_runs_a_miss_as_small_crypto_and_remembers_only_successes(monkeypatch):
    import threading

    from agents import runtime

    monkeypatch.setattr(runtime, "_inline", False)  # misses go to a worker thread here
    memo = runtime.VerifiedMemo()
    threads = []

    def check():
        threads.append(threading.get_ident())
        return True

    assert await memo.run_valid("x", b"k", b"d", check) and await memo.run_valid("x", b"k", b"d", check)
    assert len(threads) == 1 and threads[0] != threading.get_ident()
    assert not await memo.run_valid("x", b"k", b"e", lambda: False)
    assert await memo.run_value("y", b"k", b"d", lambda: 5) == 5
    assert await memo.run_value("y", b"k", b"d", lambda: 6) == 5
    assert (memo.hits, memo.misses) == (2, 3)
