"""Leaner ledger answers on the access path (core.protocol ``_views``, ``PeerQuery.held``/``view``,
``CommitNotice.for_submitter``): a view only leaves fields out and keeps each one its reader
checks; an answer to a ``held`` query puts back exactly the held transaction; a notice's own
entry comes back under the transaction's effect key. Hostile bodies only raise DecodeError."""

from __future__ import annotations

import hashlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import ecdsa
from core.errors import DecodeError
from core.protocol import (
    HELD_SIZE, NOTICE_VIEWS, OWN_KEY, QUERY_VIEWS, REQUEST_ANSWER, REQUEST_ROW, CommitNotice, PeerQuery,
    PeerQueryReply, answer_from_row, grant_terms_view, query_view, request_answer_view, request_row_view,
    requester_view,
)
from core.tx import Transaction

KEY = ecdsa.generate_private_key()


def _wire(value):
    """Through msgpack as the bus carries it."""
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False, strict_map_key=False)


def _request_entry(effect: str = "allow", status: str = "pending", **extra) -> dict:
    """A request entry as core.ledger writes it (the fields of core.state.RequestEntry)."""
    reason = "allowed by rule 'cardio' (approved in advance)" if effect == "allow" else "no rule allows this"
    return {"doctor": "dr-heart", "patient": "alice", "record_id": "r-1", "label": "cardiology",
            "operation": "read", "purpose": "treatment", "status": status, "time": 1_700_000_000_000,
            "height": 12, "decision": {"approval": "auto", "effect": effect, "policy": "sharing",
                                       "reason": reason, "rule": "cardio" if effect == "allow" else None,
                                       "version": 1}, **extra}


def _grant_tx(**body) -> Transaction:
    body = {"grant_id": "g-1", "request_id": "q-1", "threshold": 2, "expires_at": 1_900_000_000,
            "shares": {"peer-a1": b"\x01" * 32}, "scope": "label", **body}
    return Transaction.create("grant", "alice", body, KEY, 1_700_000_000_000)


def _store_tx(record_id: str = "r-1", **extra) -> Transaction:
    body = {"record_id": record_id, "label": "cardiology", "cid": "bafk" + "a" * 55, "size": 2979,
            "media_type": "application/fhir+json", "capsule": b"\x01" * 48, **extra}
    return Transaction.create("store", "alice", body, KEY, 1_700_000_000_000)


def _record_entry(tx: Transaction, **extra) -> dict:
    return {**{k: v for k, v in tx.body.items() if k != "record_id"}, "height": 7, "tx": tx.to_bytes(), **extra}


# -- the views ----------------------------------------------------------------------

ENTRY_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(["", "allow", "deny", "x"]))
DECISIONS = st.dictionaries(st.sampled_from(["approval", "effect", "policy", "reason", "rule", "version", "zz"]),
                            ENTRY_VALUES, max_size=7)
ENTRIES = st.dictionaries(
    st.sampled_from(["doctor", "patient", "record_id", "label", "operation", "purpose", "status", "time",
                     "height", "grant_id", "hold", "reject_reason", "threshold", "expires_at", "scope", "epoch",
                     "shares", "revoked", "zz"]),
    ENTRY_VALUES, max_size=12).flatmap(
    lambda e: st.one_of(st.just(e), DECISIONS.map(lambda d: {**e, "decision": d}),
                        st.just({**e, "decision": [1]})))
VIEWS = [requester_view, request_answer_view, grant_terms_view]


@settings(max_examples=300, deadline=None)
@given(entry=ENTRIES)
def test_a_view_only_leaves_fields_out(entry):
    for view in VIEWS:
        out = view(entry)
        for k, v in out.items():
            if k == "decision":
                assert isinstance(entry.get("decision"), dict) or v == {}
                assert all(entry["decision"][dk] == dv for dk, dv in v.items())
            else:
                assert k in entry and entry[k] == v and v is not None


def test_non_maps_pass_through_every_view():
    for view in VIEWS:
        assert view(None) is None and view([1]) == [1]
    assert query_view("request", None, _request_entry()) == _request_entry()  # no view: the whole entry
    assert query_view("request", REQUEST_ANSWER, None) is None


def test_the_requester_sees_its_decision_and_the_reason_of_a_refusal_only():
    allowed = requester_view(_request_entry())
    assert allowed == {"status": "pending", "decision": {"effect": "allow", "rule": "cardio"}}
    denied = requester_view(_request_entry("deny", "denied"))
    assert denied == {"status": "denied", "decision": {"effect": "deny", "reason": "no rule allows this"}}
    granted = requester_view(_request_entry(status="granted", grant_id="g-9"))
    assert granted["grant_id"] == "g-9" and granted["status"] == "granted"
    held = requester_view(_request_entry(hold="revoked by patient"))
    assert held["hold"] == "revoked by patient"


def test_the_patient_sees_every_field_it_checks_before_granting():
    entry = _request_entry(hold="revoked by patient")
    view = request_answer_view(entry)
    # agents/patient.py _answer and _grant read these (and show them for approval)
    for k in ("doctor", "patient", "record_id", "label", "operation", "purpose", "status", "hold"):
        assert view[k] == entry[k]
    assert view["decision"] == {"effect": "allow", "approval": "auto", "rule": "cardio"}
    assert not {"time", "height"} & set(view)
    denied = request_answer_view(_request_entry("deny", "denied"))
    assert denied["decision"]["reason"] == "no rule allows this"
    # an allowed request whose status says denied still shows why
    assert "reason" in request_answer_view(_request_entry(status="denied"))["decision"]
    assert len(msgpack.packb(view)) < len(msgpack.packb(entry)) - 80


TEXT_ENTRIES = st.dictionaries(
    st.sampled_from(["doctor", "patient", "record_id", "label", "operation", "purpose", "status", "time",
                     "height", "hold", "zz"]),
    st.one_of(st.none(), st.text(max_size=12)), max_size=11).flatmap(
    lambda e: st.one_of(st.just(e), st.dictionaries(st.sampled_from(["approval", "effect", "policy", "reason",
                                                                     "rule", "version"]),
                                                    st.one_of(st.none(), st.text(max_size=12)), max_size=6)
                        .map(lambda d: {**e, "decision": d})))


@settings(max_examples=300, deadline=None)
@given(entry=TEXT_ENTRIES)
def test_the_row_view_reads_back_as_the_answer_view(entry):
    row = _wire(request_row_view(entry))
    assert answer_from_row(row) == request_answer_view(entry)
    assert query_view("request", REQUEST_ROW, entry) == request_row_view(entry)


def test_the_row_view_is_smaller_and_hostile_rows_only_raise_decode_error():
    entry = _request_entry(hold="revoked by patient")
    assert len(msgpack.packb(request_row_view(entry))) < len(msgpack.packb(request_answer_view(entry))) - 70
    assert answer_from_row(None) is None
    for bad in ({"doctor": "x"}, "x", 7, [1], ["a"] * 10, ["a"] * 8 + ["allow"], ["a"] * 8 + [["a"] * 5],
                ["a"] * 8 + [[b"x"]], ["x" * 4097], [["allow"]], ["a", None, True]):
        with pytest.raises(DecodeError):
            answer_from_row(bad)
    assert answer_from_row([]) == {"decision": {}}  # (an empty row checks as an entry with no fields)
    # the client reads a row view's reply back into the map (PeerQueryReply with the query's view)
    row = _wire(request_row_view(entry))
    assert PeerQueryReply.from_wire(row, view=REQUEST_ROW).value == request_answer_view(entry)
    assert PeerQueryReply.from_wire(None, view=REQUEST_ROW).value is None
    with pytest.raises(DecodeError):
        PeerQueryReply.from_wire({"doctor": "dr-heart"}, view=REQUEST_ROW)


def test_the_grant_view_is_its_terms():
    entry = {"patient": "alice", "doctor": "dr-heart", "label": "cardiology", "record_id": "r-1",
             "request_id": "q-1", "threshold": 2, "expires_at": 1_900_000_000, "shares": {"peer-a1": b"\x01" * 32},
             "revoked": False, "time": 1, "height": 14, "scope": "label", "epoch": 3}
    assert grant_terms_view(entry) == {"threshold": 2, "expires_at": 1_900_000_000, "scope": "label", "epoch": 3}
    assert set(NOTICE_VIEWS) == {"access_request", "grant"} and set(QUERY_VIEWS) == {"request"}


# -- peer.query held and view: the codec ---------------------------------------------------


def test_held_and_view_travel_in_the_row_and_round_trip():
    held = b"\x07" * HELD_SIZE
    q = PeerQuery("record", patient="alice", record_id="r-1", held=held)
    assert q.to_wire() == ["record", "alice", "r-1", None, None, held]
    assert PeerQuery.from_wire(_wire(q.to_wire())) == q
    both = PeerQuery("record", patient="alice", record_id="r-1", owner_cert=True, held=held, min_height=4)
    assert both.to_wire() == ["record", "alice", "r-1", 4, True, held]
    assert PeerQuery.from_wire(_wire(both.to_wire())) == both
    v = PeerQuery("request", request_id="q-1", min_height=9, view=REQUEST_ANSWER)
    assert v.to_wire() == ["request", "q-1", 9, None, None, "answer"]
    assert PeerQuery.from_wire(_wire(v.to_wire())) == v
    assert PeerQuery.from_wire({"what": "request", "request_id": "q-1", "view": "answer"}).view == "answer"
    # without the options the rows are as before
    assert PeerQuery("request", request_id="q-1").to_wire() == ["request", "q-1"]


@pytest.mark.parametrize("row, match", [
    (["record", "alice", "r-1", None, None, "x" * 32], "'held'"),                    # a str, not bytes
    (["record", "alice", "r-1", None, None, b"x" * 31], "'held'"),                   # too short
    (["record", "alice", "r-1", None, None, b"x" * 33], "'held'"),                   # too long
    (["record", "alice", "r-1", None, None, b"x" * (1 << 20)], "'held'"),            # huge
    (["record", "alice", "r-1", None, None, 5], "'held'"),
    (["record", "alice", "r-1", None, None, [b"x" * 32]], "'held'"),
    (["request", "q-1", None, None, b"x" * 32], "only a 'record' query takes 'held'"),
    (["cert", "alice", None, None, b"x" * 32], "only a 'record' query takes 'held'"),
    (["record", "alice", "r-1", None, None, None, "answer"], "takes no 'view'"),
    (["grant", "g-1", None, None, None, "answer"], "takes no 'view'"),
    (["request", "q-1", None, None, None, "everything"], "'view'"),
    (["request", "q-1", None, None, None, "a" * 100_000], "'view'"),
    (["request", "q-1", None, None, None, 1], "'view'"),
    (["request", "q-1", None, None, None, True], "'view'"),
    (["request", "q-1", None, None, None, {"answer": 1}], "'view'"),
])
def test_hostile_held_and_view_are_refused_by_name(row, match):
    with pytest.raises(DecodeError, match=match):
        PeerQuery.from_wire(row)
    # and in the map form
    names = ("what", *{"record": ("patient", "record_id"), "request": ("request_id",), "cert": ("subject",),
                       "grant": ("grant_id",)}[row[0]], *PeerQuery.OPTIONS)
    with pytest.raises(DecodeError, match=match):
        PeerQuery.from_wire({k: v for k, v in zip(names, row) if v is not None})


# -- answers to a held query ------------------------------------------------------------


def test_an_unchanged_record_travels_without_its_transaction_and_comes_back_exactly():
    tx = _store_tx()
    entry = _record_entry(tx, owner_cert={"cert": {"subject": "alice"}, "revoked": False})
    full = _wire(PeerQueryReply(entry).to_wire())
    sent = _wire(PeerQueryReply(entry, held=True).to_wire())
    assert "tx" not in sent and sent[PeerQueryReply.HELD] is True
    assert set(sent) == {"height", "owner_cert", PeerQueryReply.ECHO, PeerQueryReply.HELD}
    assert len(msgpack.packb(sent)) <= len(msgpack.packb(full)) - len(tx.to_bytes()) + 8  # "held": true
    assert PeerQueryReply.from_wire(sent, held=tx.to_bytes()).value == entry
    # a held query whose record changed gets the whole entry, which decodes as always
    assert PeerQueryReply.from_wire(full, held=b"other tx").value == entry
    # an epoch the body does not carry still travels
    sealed = _record_entry(tx, epoch=2)
    assert PeerQueryReply.from_wire(_wire(PeerQueryReply(sealed, held=True).to_wire()), held=tx.to_bytes()).value \
        == sealed


@pytest.mark.parametrize("bad", [
    lambda s: {**s, PeerQueryReply.HELD: False},
    lambda s: {**s, PeerQueryReply.HELD: 1},
    lambda s: {**s, PeerQueryReply.HELD: "yes"},
    lambda s: {**s, PeerQueryReply.HELD: b"\x01" * 32},
    lambda s: {**s, "tx": b"sent too"},
    lambda s: {**s, PeerQueryReply.ECHO: 1 << 40},
    lambda s: {**s, "cid": "sent and echoed"},
    lambda s: {**{k: v for k, v in s.items() if k != PeerQueryReply.ECHO}, PeerQueryReply.ECHO: "x"},
])
def test_a_hostile_held_answer_only_raises_decode_error(bad):
    tx = _store_tx()
    sent = _wire(PeerQueryReply(_record_entry(tx), held=True).to_wire())
    with pytest.raises(DecodeError):
        PeerQueryReply.from_wire(bad(sent), held=tx.to_bytes())


def test_a_held_answer_to_a_query_that_held_nothing_is_refused():
    tx = _store_tx()
    sent = _wire(PeerQueryReply(_record_entry(tx), held=True).to_wire())
    with pytest.raises(DecodeError, match="did not hold"):
        PeerQueryReply.from_wire(sent)
    # what is put back is always the reader's own transaction (the one it holds for that record and
    # verified), never bytes of the answer's: the doctor checks it as a sent one (signature, fields)
    other = _store_tx("r-2")
    restored = PeerQueryReply.from_wire(sent, held=other.to_bytes()).value
    assert restored["tx"] == other.to_bytes() and restored["cid"] == other.body["cid"]
    assert hashlib.sha256(restored["tx"]).digest() != hashlib.sha256(tx.to_bytes()).digest()


# -- commit notices for their submitter ------------------------------------------------


def _with_own(row: list, own) -> list:
    """A notice's wire row with its own entry replaced (a hostile peer's)."""
    row = list(row)
    effect = dict(row[4])
    effect[OWN_KEY] = own
    row[4] = effect
    return row


def test_an_access_request_notice_carries_the_requester_view_under_the_own_key():
    body = {"request_id": "q-1", "patient": "alice", "record_id": "r-1", "operation": "read", "purpose": "treatment"}
    tx = Transaction.create("access_request", "dr-heart", body, KEY, 1_700_000_000_000)
    entry = _request_entry()
    notice = CommitNotice(tx_id=tx.tx_id, height=12, type="access_request", mark="ok",
                          effect={"request/q-1": entry}).for_submitter(tx.type, tx.body, "request/q-1")
    assert notice.projected and set(notice.effect) == {OWN_KEY} and notice.type is None
    assert notice.effect[OWN_KEY] == ["pending", None, None, ["allow", "cardio"]]  # (the view as its row)
    sent = _wire(notice.to_wire())
    got = CommitNotice.from_wire(sent)
    assert got.expand(tx.body, "request/q-1", "access_request") == {"request/q-1": requester_view(entry)}
    with pytest.raises(DecodeError, match="row"):  # (a row read without its type)
        got.expand(tx.body, "request/q-1")
    for bad in ([1], ["pending", None, None, "allow"], ["a"] * 5, ["pending", None, None, ["a"] * 4]):
        hostile = CommitNotice.from_wire(_wire(_with_own(notice.to_wire(), bad)))
        with pytest.raises(DecodeError):
            hostile.expand(tx.body, "request/q-1", "access_request")
    full = CommitNotice(tx_id=tx.tx_id, height=12, type="access_request", mark="ok",
                        effect={"request/q-1": entry}).echoing(tx.body)
    assert len(msgpack.packb(sent)) < len(msgpack.packb(full.to_wire())) - 100


def test_a_ledger_granted_request_keeps_the_grant_whole():
    body = {"request_id": "q-1", "patient": "alice", "record_id": "r-1", "operation": "read", "purpose": None}
    tx = Transaction.create("access_request", "dr-heart", body, KEY, 1_700_000_000_000)
    grant = {"doctor": "dr-heart", "patient": "alice", "label": "cardiology", "threshold": 2, "revoked": False}
    notice = CommitNotice(tx_id=tx.tx_id, height=12, type="access_request", mark="ok",
                          effect={"request/q-1": _request_entry(status="granted", grant_id="g-1"),
                                  "grant/g-1": grant}).for_submitter(tx.type, tx.body, "request/q-1")
    effect = CommitNotice.from_wire(_wire(notice.to_wire())).expand(tx.body, "request/q-1", "access_request")
    assert effect["grant/g-1"] == grant and effect["request/q-1"]["grant_id"] == "g-1"


def test_a_grant_notice_carries_its_terms_echoed_from_the_body():
    tx = _grant_tx()
    entry = {"patient": "alice", "doctor": "dr-heart", "label": "cardiology", "record_id": "r-1",
             "request_id": "q-1", "threshold": 2, "expires_at": 1_900_000_000, "shares": {"peer-a1": b"\x01" * 32},
             "revoked": False, "time": 1, "height": 14, "scope": "label"}
    notice = CommitNotice(tx_id=tx.tx_id, height=14, type="grant", mark="ok",
                          effect={"grant/g-1": entry}).for_submitter(tx.type, tx.body, "grant/g-1")
    assert notice.effect == {OWN_KEY: {}} and notice.echo  # every term is the body's own
    got = CommitNotice.from_wire(_wire(notice.to_wire())).expand(tx.body, "grant/g-1")
    assert got == {"grant/g-1": {"threshold": 2, "expires_at": 1_900_000_000, "scope": "label"}}


def test_other_types_keep_the_whole_entry_under_the_own_key():
    tx = _store_tx()
    entry = _record_entry(tx)
    notice = CommitNotice(tx_id=tx.tx_id, height=7, type="store", mark="ok",
                          effect={"record/alice/r-1": entry}).for_submitter(tx.type, tx.body, "record/alice/r-1")
    assert not notice.projected and set(notice.effect) == {OWN_KEY}
    assert CommitNotice.from_wire(_wire(notice.to_wire())).expand(tx.body, "record/alice/r-1") == {
        "record/alice/r-1": entry}
    # a refused transaction's notice has no effect; no own key
    plain = CommitNotice(tx_id=tx.tx_id, height=7, type="store", mark="bad_state", effect={})
    assert plain.for_submitter(tx.type, tx.body, None).effect == {}


@pytest.mark.parametrize("bad", [
    lambda row: row[:6] + [1],                                   # projected not a bool
    lambda row: row[:6] + ["yes"],
    lambda row: row[:4] + [{OWN_KEY: {}, "request/q-1": {}}] + row[5:],  # the own key twice
    lambda row: row[:4] + [{OWN_KEY: {}, **{f"k{i}": {} for i in range(5)}}] + row[5:],  # too many entries
    lambda row: row[:4] + [{OWN_KEY: "x"}, [1]] + row[6:],        # an echo on a non-map entry
])
def test_a_hostile_notice_only_raises_decode_error(bad):
    body = {"request_id": "q-1", "patient": "alice", "record_id": "r-1", "operation": "read", "purpose": None}
    tx = Transaction.create("access_request", "dr-heart", body, KEY, 1_700_000_000_000)
    notice = CommitNotice(tx_id=tx.tx_id, height=12, type="access_request", mark="ok",
                          effect={"request/q-1": _request_entry()})
    row = notice.for_submitter(tx.type, tx.body, "request/q-1").to_wire()
    row = list(row) + [None] * (7 - len(row))
    with pytest.raises(DecodeError):
        CommitNotice.from_wire(_wire(bad(row))).expand(tx.body, "request/q-1")


def test_an_own_key_entry_needs_the_submitters_key():
    notice = CommitNotice(tx_id=b"\x01" * 8, height=3, type="grant", mark="ok", effect={OWN_KEY: {}})
    with pytest.raises(DecodeError, match="effect key"):
        notice.expand({})
    with pytest.raises(DecodeError, match="effect key"):
        notice.expand({}, OWN_KEY)
    assert notice.expand({}, "grant/g-1") == {"grant/g-1": {}}
