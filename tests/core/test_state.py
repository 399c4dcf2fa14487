"""core.state: the state keys (built, split, queried) and the typed read views of ledger entries."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from core import state
from core.errors import DecodeError
from core.identity import check_id
from core.policy import parse as parse_policy
from core.state import (
    BreakGlassEntry, CertEntry, DelegationEntry, GrantEntry, PolicyEntry, RecordEntry, RequestEntry, entry_key,
    entry_query, parse_key,
)

ids = st.text(alphabet="abcXYZ019._:@-", min_size=1, max_size=20)

OPTIONAL = {"revoked_at", "revoke_reason", "grant_id", "reject_reason", "hold", "scope", "delegation", "break_glass",
            "epoch"}
VIEWS = {"cert": CertEntry, "record": RecordEntry, "policy": PolicyEntry, "request": RequestEntry,
         "grant": GrantEntry}


@given(ids, ids, ids, st.integers(0, 10**12 - 1), st.integers(0, 99_999), st.binary(min_size=16, max_size=16))
def test_keys_split_back_into_their_parts(a, b, c, height, index, nonce):
    assert parse_key(state.cert_key(a)) == state.StateKey("cert", (a,))
    assert parse_key(state.serial_key(a)) == state.StateKey("serial", (a,))
    assert parse_key(state.nonce_key(a, nonce)) == state.StateKey("nonce", (a, nonce.hex()))
    assert parse_key(state.record_key(a, b)) == state.StateKey("record", (a, b))
    assert parse_key(state.policy_key(a)) == state.StateKey("policy", (a,))
    assert parse_key(state.request_key(a)) == state.StateKey("request", (a,))
    assert parse_key(state.grant_key(a)) == state.StateKey("grant", (a,))
    assert parse_key(state.active_key(a, b, c)) == state.StateKey("active", (a, b, c))
    assert parse_key(state.audit_key(a, height, index)) == state.StateKey("audit", (a, f"{height:012d}",
                                                                                     f"{index:05d}"))
    assert parse_key(state.HEAD_KEY) == state.StateKey("meta", ("head",))
    assert state.record_key(a, b).startswith(state.records_prefix(a))
    assert state.cert_key(a).startswith(state.certs_prefix())
    assert state.audit_key(a, height, index).startswith(state.audit_prefix(a))
    # a patient's prefix never covers another patient's keys
    if a != b:
        assert not state.record_key(b, c).startswith(state.records_prefix(a))


@pytest.mark.parametrize("key", ["", "cert", "cert/", "cert/a/b", "record/a", "record/a/", "record//b",
                                 "audit/a/1", "bogus/a", "nonce/a"])
def test_parse_key_refuses_what_the_ledger_never_writes(key):
    with pytest.raises(DecodeError):
        parse_key(key)


@given(st.sampled_from(sorted(state.ENTRY_QUERIES)), st.lists(ids, min_size=2, max_size=2))
def test_entry_queries_name_their_keys(what, values):
    fields = state.ENTRY_QUERIES[what]
    key = entry_key(what, *values[: len(fields)])
    assert entry_query(key) == {"what": what, **dict(zip(fields, values))}


def test_entry_queries_only_for_entries():
    with pytest.raises(DecodeError):
        entry_query(state.nonce_key("alice", bytes(16)))
    with pytest.raises(DecodeError):
        entry_query(state.audit_key("alice", 1, 0))
    with pytest.raises(ValueError):
        entry_key("record", "alice")
    with pytest.raises(ValueError):
        entry_key("audit", "alice")


def _flow(chain):
    """Every kind of entry, in every state the ledger leaves it in."""
    c = chain
    marks = c.block(c.register_tx("alice", "org-a"), c.register_tx("bob", "org-b", "doctor", peer="p3"),
                    c.register_tx("carol", "org-a")).marks
    assert marks == ("ok", "ok", "ok")
    marks = c.block(c.tx("store", "alice", c.store_body()),
                    c.tx("set_policy", "alice", {"policy": parse_policy(c.POLICY).to_msgpack()})).marks
    assert marks == ("ok", "ok")
    ask = {"patient": "alice", "record_id": "rec-1", "operation": "read"}
    marks = c.block(c.tx("access_request", "bob", {"request_id": "r1", "purpose": None, **ask}),
                    c.tx("access_request", "bob", {"request_id": "r2", "purpose": "care", **ask}),
                    c.tx("access_request", "carol", {"request_id": "r3", "purpose": None, **ask})).marks
    assert marks == ("ok", "ok", "ok")
    marks = c.block(c.tx("grant", "alice", c.grant_body("g1", "r1")),
                    c.tx("deny_request", "alice", {"request_id": "r2", "reason": "no"})).marks
    assert marks == ("ok", "ok")
    marks = c.block(c.tx("revoke_grant", "alice", {"grant_id": "g1", "reason": "done"}),
                    c.tx("revoke_cert", "carol", {"subject": "carol", "reason": "left"})).marks
    assert marks == ("ok", "ok")


def test_views_read_every_entry_the_ledger_writes(chain):
    _flow(chain)
    seen = set()
    for key in chain.kv.data:
        parsed = parse_key(key)
        view = VIEWS.get(parsed.kind)
        if view is not None:
            view.from_state(chain.ledger.get(key))
            seen.add(parsed.kind)
    assert seen == set(VIEWS)
    led = chain.ledger
    alice = led.certificate("alice")
    assert alice.subject == "alice" and not alice.revoked and alice.active_key == alice.cert.ecdsa_key
    carol = led.certificate("carol")
    assert carol.revoked and carol.active_key is None and carol.revoke_reason == "left"
    rec = led.record("alice", "rec-1")
    assert rec.label == "cardiology" and rec.store_transaction().submitter == "alice"
    assert led.policy("alice").parsed().name == "sharing" and led.policy("alice").version == 1
    r1, r2, r3 = led.request("r1"), led.request("r2"), led.request("r3")
    assert (r1.status, r1.grant_id, r1.allowed) == ("granted", "g1", True)
    assert (r2.status, r2.reject_reason, r2.purpose) == ("rejected", "no", "care")
    assert (r3.status, r3.allowed, r3.decision.rule) == ("denied", False, "default")
    g1 = led.grant("g1")
    assert g1.revoked and not g1.active_at(0) and g1.share_digest("p1") is not None and g1.share_digest("p4") is None
    assert (g1.doctor, g1.patient, g1.label, g1.request_id) == ("bob", "alice", "cardiology", "r1")
    assert led.grant("nope") is None and led.record("alice", "nope") is None and led.request("nope") is None
    assert led.policy("bob") is None and led.certificate("nobody") is None


def test_views_refuse_malformed_entries(chain):
    _flow(chain)
    good = {kind: chain.ledger.get(key) for kind, key in [
        ("cert", state.cert_key("alice")), ("record", state.record_key("alice", "rec-1")),
        ("policy", state.policy_key("alice")), ("request", state.request_key("r1")),
        ("grant", state.grant_key("g1"))]}
    for kind, value in good.items():
        view = VIEWS[kind]
        assert view.from_state(value) == view.from_state(dict(value))
        for bad in (None, [], "x", b"", {}):
            with pytest.raises(DecodeError):
                view.from_state(bad)
        for name in value:
            if name not in OPTIONAL:
                with pytest.raises(DecodeError):
                    view.from_state({k: v for k, v in value.items() if k != name})
            with pytest.raises(DecodeError):  # every field is checked for its type
                view.from_state({**value, name: 1.5})
        with pytest.raises(DecodeError):
            view.from_state({**value, "extra": 1})
    with pytest.raises(DecodeError):
        RequestEntry.from_state({**good["request"], "status": "maybe"})
    with pytest.raises(DecodeError):
        RequestEntry.from_state({**good["request"], "decision": {**good["request"]["decision"], "rule": None}})
    with pytest.raises(DecodeError):
        GrantEntry.from_state({**good["grant"], "shares": {"p1": b"short"}})
    with pytest.raises(DecodeError):
        GrantEntry.from_state({**good["grant"], "revoked": 1})  # a bool, not an int
    with pytest.raises(DecodeError):
        RecordEntry.from_state({**good["record"], "size": True})  # an int, not a bool
    with pytest.raises(DecodeError):
        CertEntry.from_state({**good["cert"], "cert": {**good["cert"]["cert"], "subject": "a/b"}})


values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.binary(max_size=40),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                   max_size=3), max_leaves=8)


@given(st.sampled_from(sorted(VIEWS)), st.data())
def test_views_decode_or_raise_decode_error(kind, data):
    """Any value, even one shaped like an entry with random field values: a view or DecodeError."""
    names = {"cert": ["cert", "revoked", "height", "revoked_at", "revoke_reason"],
             "record": ["tx", "label", "cid", "size", "media_type", "capsule", "height"],
             "policy": ["policy", "version", "name", "height"],
             "request": ["doctor", "patient", "record_id", "label", "operation", "purpose", "decision", "status",
                         "time", "height", "grant_id", "reject_reason"],
             "grant": ["patient", "doctor", "label", "record_id", "request_id", "threshold", "expires_at", "shares",
                       "revoked", "time", "height", "revoked_at"]}[kind]
    value = data.draw(st.fixed_dictionaries({n: values for n in names}) | st.dictionaries(st.sampled_from(names), values)
                      | values)
    try:
        VIEWS[kind].from_state(value)
    except DecodeError:
        pass


# ------------------------------------------------------------------ the stored shapes, written out

# Each view's stored map as the ledger writes it: (required fields, optional fields), name -> type
# (a tuple: any of them; None: nil). This is the decoder's contract as it was written in each
# from_state before the views derived it from their dataclass fields; the reference below
# refuses by it, independently of core.state.
SHAPES: dict[type, tuple[dict, dict]] = {
    CertEntry: ({"cert": dict, "revoked": bool, "height": int}, {"revoked_at": int, "revoke_reason": str}),
    RecordEntry: ({"tx": bytes, "label": str, "cid": str, "size": int, "media_type": str, "capsule": bytes,
                   "height": int}, {"epoch": int}),
    PolicyEntry: ({"policy": bytes, "version": int, "name": str, "height": int}, {}),
    RequestEntry: ({"doctor": str, "patient": str, "record_id": str, "label": str, "operation": str,
                    "purpose": (str, None), "decision": dict, "status": str, "time": int, "height": int},
                   {"grant_id": str, "reject_reason": str, "hold": str}),
    GrantEntry: ({"patient": str, "doctor": str, "label": str, "record_id": str, "request_id": str, "threshold": int,
                  "expires_at": int, "shares": dict, "revoked": bool, "time": int, "height": int},
                 {"revoked_at": int, "scope": str, "delegation": str, "break_glass": str, "epoch": int}),
    DelegationEntry: ({"patient": str, "label": str, "mode": str, "threshold": int, "parts": dict, "time": int,
                       "height": int, "epoch": int}, {}),
    BreakGlassEntry: ({"doctor": str, "patient": str, "record_id": str, "label": str, "reason": str,
                       "cosigners": list, "expires_at": int, "grant_id": str, "time": int, "height": int}, {}),
}
DECISION_SHAPE = ({"effect": str, "approval": (str, None), "rule": str, "reason": str, "policy": str,
                   "version": int}, {})
# fields from_state checks beyond their type (a value of the right type may still be refused)
CHECKED_FURTHER = {"cert", "decision", "status", "mode", "shares", "parts", "cosigners"}

_DIGESTS = {"p1": bytes(32), "p2": b"\x01" * 32}
_DECISION = {"effect": "allow", "approval": "patient", "rule": "r", "reason": "ok", "policy": "p", "version": 1}
_CERT = {"serial": "s1", "subject": "alice", "org": "org-a", "attributes": {"role": "patient"},
         "ecdsa_key": b"\x02" * 33, "box_key": bytes(32), "pre_key": bytes(144), "pre_proof": bytes(64),
         "valid_from": 0, "valid_until": 10, "issuer": "org-a", "signature": b""}
# one good stored map of each view, every optional field present
GOOD: dict[type, dict] = {
    CertEntry: {"cert": _CERT, "revoked": True, "height": 3, "revoked_at": 4, "revoke_reason": "left"},
    RecordEntry: {"tx": b"tx", "label": "cardiology", "cid": "c1", "size": 10, "media_type": "text/plain",
                  "capsule": b"k", "height": 2, "epoch": 1},
    PolicyEntry: {"policy": b"p", "version": 1, "name": "sharing", "height": 2},
    RequestEntry: {"doctor": "bob", "patient": "alice", "record_id": "rec-1", "label": "cardiology",
                   "operation": "read", "purpose": None, "decision": _DECISION, "status": "granted", "time": 5,
                   "height": 3, "grant_id": "g1", "reject_reason": "no", "hold": "h1"},
    GrantEntry: {"patient": "alice", "doctor": "bob", "label": "cardiology", "record_id": "rec-1",
                 "request_id": "r1", "threshold": 2, "expires_at": 99, "shares": _DIGESTS, "revoked": False,
                 "time": 5, "height": 4, "revoked_at": 6, "scope": "record", "delegation": "d1",
                 "break_glass": "bg1", "epoch": 0},
    DelegationEntry: {"patient": "alice", "label": "cardiology", "mode": "auto", "threshold": 2,
                      "parts": _DIGESTS, "time": 5, "height": 4, "epoch": 0},
    BreakGlassEntry: {"doctor": "bob", "patient": "alice", "record_id": "rec-1", "label": "cardiology",
                      "reason": "unconscious", "cosigners": ["o1", "o2"], "expires_at": 99, "grant_id": "g1",
                      "time": 5, "height": 4},
}


def _of_type(value, kind) -> bool:
    if isinstance(kind, tuple):
        return any(_of_type(value, k) for k in kind)
    if kind is None:
        return value is None
    if kind in (int, bool):  # True is no int here, and 1 no bool
        return type(value) is kind
    return isinstance(value, kind)


def _refused_by_shape(value, shape) -> bool:
    """The reference: whether ``value`` breaks ``shape`` (not a map, a required field
    missing, an unknown field, a field of the wrong type)."""
    required, optional = shape
    if not isinstance(value, dict):
        return True
    if required.keys() - value.keys() or value.keys() - required.keys() - optional.keys():
        return True
    return not all(_of_type(v, {**required, **optional}[k]) for k, v in value.items())


def _refused(view, value) -> bool:
    if _refused_by_shape(value, SHAPES[view]):
        return True
    return view is RequestEntry and _refused_by_shape(value["decision"], DECISION_SHAPE)


def test_every_good_map_decodes_and_every_view_is_written_out():
    assert set(SHAPES) == set(GOOD) == {v for v in vars(state).values() if isinstance(v, type)
                                        and v.__name__.endswith("Entry") and hasattr(v, "from_state")}
    for view, value in GOOD.items():
        assert not _refused(view, value)
        decoded = view.from_state(value)
        for name in value.keys() - CHECKED_FURTHER:
            assert getattr(decoded, name) == value[name]
        for name in SHAPES[view][1]:  # an optional field is absent or of its type, never nil
            assert view.from_state({k: v for k, v in value.items() if k != name}) is not None
            with pytest.raises(DecodeError):
                view.from_state({**value, name: None})


_FIELD_NAMES = sorted({n for required, optional in SHAPES.values() for n in (*required, *optional)})


@settings(max_examples=400)
@given(st.sampled_from(sorted(GOOD, key=lambda v: v.__name__)), st.data())
def test_decoding_refuses_what_the_written_out_shapes_refuse(view, data):
    """Good maps with fields dropped, added, or given random values: a view refuses every
    one the written-out shape refuses (its nested decision too), and decodes every one the
    shape accepts whose further-checked fields are untouched, field for field."""
    value = dict(GOOD[view])
    for name in data.draw(st.sets(st.sampled_from(sorted(value)), max_size=2), label="dropped"):
        del value[name]
    own = sorted(value.keys() | SHAPES[view][0].keys() | SHAPES[view][1].keys())
    names = st.sampled_from(own) | st.sampled_from(_FIELD_NAMES) | st.text(max_size=8)
    value.update(data.draw(st.dictionaries(names, st.none() | st.booleans() | values, max_size=2), label="set"))
    if _refused(view, value):
        with pytest.raises(DecodeError):
            view.from_state(value)
        return
    try:
        decoded = view.from_state(value)
    except DecodeError:
        assert any(value[n] != GOOD[view][n] for n in CHECKED_FURTHER & value.keys())
        return
    required, optional = SHAPES[view]
    for name in (required.keys() | optional.keys()) - CHECKED_FURTHER:
        assert getattr(decoded, name) == value.get(name)


def test_ids_never_hold_the_key_separator():
    # parse_key relies on it: every id the ledger writes into a key is check_id'ed
    with pytest.raises(DecodeError):
        check_id("a/b", "id")
