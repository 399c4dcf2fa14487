"""The doctor's memo of data keys recovered from t shares (core.record.DataKeyMemo)."""

from __future__ import annotations

import pytest

from core import pre, record
from core.curve import GT, api
from core.errors import DecryptionError

pytestmark = pytest.mark.crypto


def _setup(backend, n=3, t=2):
    kp = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), "cardiology")
    doctor = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), pre.RECEIVE_LABEL)
    boxes = {i: pre.box_keypair() for i in range(1, n + 1)}
    sealed = pre.make_key_shares(kp, doctor.public, [pre.Proxy(i, pk) for i, (_, pk) in boxes.items()], t, b"g")
    shares = [pre.Scheme(backend).open_key_share(s, boxes[s.index][0], expected_context=b"g",
                                                 expected_index=s.index) for s in sealed]

    def blob_of(data: bytes, record_id: str) -> tuple[bytes, list[pre.ReencryptedShare]]:
        blob = record.seal(data, kp.public, owner_id="p", label="cardiology", record_id=record_id)
        capsule = api(backend).G1.from_bytes(record.peek_header(blob).capsule)
        return blob, [pre.reencrypt(capsule, s) for s in shares]

    return doctor, blob_of


def _count_multi_pow(monkeypatch) -> list[int]:
    calls = [0]
    original = GT.multi_pow

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(GT, "multi_pow", staticmethod(counting))
    return calls


def test_a_repeat_read_with_the_same_shares_skips_the_multi_exponentiation(backend, monkeypatch):
    doctor, blob_of = _setup(backend)
    blob, rs = blob_of(b"x" * 3000, "r1")
    memo = record.DataKeyMemo(8)
    calls = _count_multi_pow(monkeypatch)
    first = record.open_record(blob, record.ThresholdKeyProvider(rs[:2], 2, doctor.secret, memo=memo))[1]
    assert first == b"x" * 3000 and calls[0] == 1 and len(memo) == 1 and memo.hits == 0
    again = record.open_record(blob, record.ThresholdKeyProvider(rs[:2], 2, doctor.secret, memo=memo))[1]
    assert again == first and calls[0] == 1 and memo.hits == 1
    # another pair of shares of the same record: another entry, the same plaintext
    other = record.open_record(blob, record.ThresholdKeyProvider(rs[1:], 2, doctor.secret, memo=memo))[1]
    assert other == first and calls[0] == 2 and len(memo) == 2
    # more than t shares: the recovery decides which are good, every time (no memo)
    record.open_record(blob, record.ThresholdKeyProvider(rs, 2, doctor.secret, memo=memo))
    assert calls[0] >= 3 and len(memo) == 2


def test_the_memo_never_opens_what_the_shares_do_not(backend):
    doctor, blob_of = _setup(backend)
    blob1, rs1 = blob_of(b"one", "r1")
    blob2, rs2 = blob_of(b"two", "r2")
    memo = record.DataKeyMemo(8)
    assert record.open_record(blob1, record.ThresholdKeyProvider(rs1[:2], 2, doctor.secret, memo=memo))[1] == b"one"
    # record 1's shares against record 2 (another capsule): the key is not found, the recovery fails
    with pytest.raises(DecryptionError):
        record.open_record(blob2, record.ThresholdKeyProvider(rs1[:2], 2, doctor.secret, memo=memo))
    # another receiver's secret with the same shares: not the memo's entry, and it does not open
    other = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), pre.RECEIVE_LABEL)
    with pytest.raises(DecryptionError):
        record.open_record(blob1, record.ThresholdKeyProvider(rs1[:2], 2, other.secret, memo=memo))
    assert memo.hits == 0
    # a wrong key under the right entry (memory corrupted, a bug): the header's key check refuses
    # it and the key is recovered again
    key = record.DataKeyMemo.key(rs1[:2], doctor.secret, record.peek_header(blob1))
    memo.put(key, bytes(32))
    assert record.open_record(blob1, record.ThresholdKeyProvider(rs1[:2], 2, doctor.secret, memo=memo))[1] == b"one"
    assert memo.hits == 0 and memo.get(key) != bytes(32)
    assert record.open_record(blob2, record.ThresholdKeyProvider(rs2[:2], 2, doctor.secret, memo=memo))[1] == b"two"


def test_the_memo_is_bounded_least_recently_used_first_out():
    memo = record.DataKeyMemo(3)
    for i in range(3):
        memo.put(bytes([i]) * 32, bytes([i]) * 32)
    assert memo.get(bytes([0]) * 32) == bytes([0]) * 32  # used: now the most recent
    memo.put(bytes([3]) * 32, bytes([3]) * 32)
    assert len(memo) == 3 and memo.get(bytes([1]) * 32) is None
    assert memo.get(bytes([0]) * 32) is not None and memo.get(bytes([3]) * 32) is not None
    with pytest.raises(ValueError):
        record.DataKeyMemo(0)


def test_the_memo_may_be_shared_between_threads():
    """A large record opens in a worker thread while the loop opens small ones: four threads
    putting and getting at once keep the bound and lose no entry they just put."""
    import threading

    memo = record.DataKeyMemo(16)
    errors: list[BaseException] = []

    def hammer(t: int) -> None:
        try:
            for i in range(3000):
                key = bytes([t]) + i.to_bytes(31, "big")
                memo.put(key, key)
                got = memo.get(key)
                assert got is None or got == key  # (evicted by another thread meanwhile, or ours)
                assert len(memo) <= 16
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    import sys

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        threads = [threading.Thread(target=hammer, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors and len(memo) == 16
