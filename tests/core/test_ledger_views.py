"""Ledger's memo of decoded committed entries (Ledger._view): kept while the stored bytes are, redone when a commit
writes them, and the live re-encryption check answering from it exactly as a fresh ledger would."""

from __future__ import annotations

import hashlib

import pytest

from core import ledger as ledger_module
from core.errors import DecodeError, ValidationError
from core.ledger import Ledger
from core.policy import parse as parse_policy

from tests.core.test_ledger import T0, Consortium, grant_body, registered, request, setup_records


@pytest.fixture(name="c")
def consortium() -> Consortium:
    return registered()


DENY_ALL = """
policy "closed" version 3
default deny
"""


def fresh(c) -> Ledger:
    """A ledger over the same state with nothing memoized."""
    return Ledger(c.genesis, c.kv)


def check(ledger: Ledger, *args) -> str:
    try:
        ledger.check_reencryption(*args)
    except ValidationError as exc:
        return exc.code
    return "ok"


def test_a_view_is_decoded_once_while_its_bytes_stay_and_again_after_a_commit_writes_them(c):
    setup_records(c)
    request(c, "dr-heart", "req-1")
    assert c.block(c.tx("grant", "alice", grant_body(c, "g-1", "req-1")))[1].marks == ("ok",)
    first = c.ledger.grant("g-1")
    assert c.ledger.grant("g-1") is first  # memoized
    assert c.ledger.certificate("dr-heart") is c.ledger.certificate("dr-heart")
    # equal bytes in another object (a store reading the row again) still answer from the memo
    c.kv.data["grant/g-1"] = bytes(bytearray(c.kv.data["grant/g-1"]))
    assert c.ledger.grant("g-1") is first
    assert c.block(c.tx("revoke_grant", "alice", {"grant_id": "g-1", "reason": "done"}))[1].marks == ("ok",)
    revoked = c.ledger.grant("g-1")
    assert revoked is not first and revoked.revoked and not first.revoked
    assert revoked == fresh(c).grant("g-1")
    # a deleted entry is gone, memo or not
    del c.kv.data["grant/g-1"]
    assert c.ledger.grant("g-1") is None


def test_the_same_key_read_as_another_view_is_decoded_as_that_view(c):
    setup_records(c)
    policy = c.ledger.policy("alice")
    assert policy is not None and policy.version >= 1
    with pytest.raises(DecodeError):  # a policy entry is no certificate: the memo does not answer for the wrong type
        c.ledger._view("policy/alice", type(c.ledger.certificate("alice")))


def test_the_memo_is_bounded(c, monkeypatch):
    monkeypatch.setattr(ledger_module, "VIEW_CACHE", 2)
    for subject in ("alice", "dr-heart", "dr-gp", "nurse"):
        assert c.ledger.certificate(subject).subject == subject
        assert len(c.ledger._views) <= 2


def test_the_live_check_follows_every_commit_that_changes_its_answer(c):
    """Each change below is a commit that writes a key the check read before (so it is memoized):
    the memoized ledger answers what a fresh ledger over the same state answers, every time."""
    setup_records(c)
    request(c, "dr-heart", "req-1")
    assert c.block(c.tx("grant", "alice", grant_body(c, "g-1", "req-1")))[1].marks == ("ok",)
    args = ("g-1", "dr-heart", "alice", "rec-1", T0 + 10)
    outcomes = []

    def step():
        answer = check(c.ledger, *args)
        assert answer == check(fresh(c), *args)
        outcomes.append(answer)

    step()
    step()  # (from the memo)
    # the patient's policy now denies everything
    assert c.block(c.tx("set_policy", "alice", {"policy": parse_policy(DENY_ALL).to_msgpack()}))[1].marks == ("ok",)
    step()
    # the doctor's certificate is revoked
    assert c.block(c.tx("revoke_cert", "peer3", {"subject": "dr-heart", "reason": "left"}))[1].marks == ("ok",)
    step()
    # the grant is revoked
    assert c.block(c.tx("revoke_grant", "alice", {"grant_id": "g-1", "reason": "done"}))[1].marks == ("ok",)
    step()
    assert outcomes == ["ok", "ok", "not_allowed", "cert_revoked", "bad_state"]


def test_an_access_batch_reading_one_grant_for_many_entries_writes_what_single_reads_would(c):
    """The batch's per-transaction read memo and its one transaction hash: every entry's audit event
    names the batch's hash, in entry order, with each entry's own time."""
    setup_records(c)
    request(c, "dr-heart", "req-1")
    assert c.block(c.tx("grant", "alice", grant_body(c, "g-1", "req-1")))[1].marks == ("ok",)
    entries = [{"grant_id": "g-1", "request_id": "req-1", "record_id": "rec-1", "doctor": "dr-heart",
                "time": c.time_ms - n} for n in range(5)]
    tx = c.tx("access_batch", "peer1", {"index": 1, "entries": entries})
    _, result = c.block(tx)
    assert result.marks == ("ok",)
    events = [e for e in c.ledger.audit("alice") if e.get("entry") is not None]
    assert len(events) == 5 and {e["event"] for e in events} == {"access"}
    assert all(e["tx"] == hashlib.sha256(tx.to_bytes()).digest() for e in events)
    assert [e["entry"] for e in events] == list(range(5))
    assert [e["time"] for e in events] == [e["time"] for e in entries]


def test_a_commit_result_carries_the_transactions_and_ids_apply_decoded(c):
    """(what the peer's commit processing reads instead of decoding and hashing the block again)"""
    good = c.tx("store", "alice", {"record_id": "rec-9", "label": "labs", "cid": "x", "size": 1,
                                   "media_type": "text/plain", "capsule": b""})
    block, result = c.block(good, b"\x93garbage")
    assert result.tx_ids == tuple(hashlib.sha256(raw).digest() for raw in block.txs)
    assert result.txs[0] == good and result.txs[0].submitter == "alice" and result.txs[1] is None
    assert result.marks[1] == "malformed"
