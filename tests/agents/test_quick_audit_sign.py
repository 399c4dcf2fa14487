"""The peer signs its access batches as small crypto: on the event loop with the native
backend (no worker-thread hop per batch), in a worker thread on the pure-Python one."""

import threading

import pytest

from agents.peer._agent import PeerAgent
from agents.runtime import inline_small_crypto


async def test_access_batches_are_signed_inline_when_the_backend_is_native():
    threads = []

    def sign(body, timestamp_ms):
        threads.append(threading.current_thread())
        return b"signed:%d:%d" % (body["index"], timestamp_ms)

    raw = await PeerAgent._run_audit_sign(sign, {"index": 3, "entries": []}, 1234)
    assert raw == b"signed:3:1234"
    (thread,) = threads
    assert (thread is threading.current_thread()) == inline_small_crypto()


async def test_a_failing_signature_is_the_callers():
    def sign(body, timestamp_ms):
        raise ValueError("no key")

    with pytest.raises(ValueError, match="no key"):
        await PeerAgent._run_audit_sign(sign, {"index": 1, "entries": []}, 1)
