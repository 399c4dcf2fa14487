"""The ``access_batch`` transaction (a peer's re-encryptions logged together) and the
per-block nonce prefetch of Ledger.apply."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from core.ledger import ACCESS_ENTRY_FIELDS, MAX_ACCESS_ENTRIES, REASON_CODES, Ledger, MemoryKV
from core.policy import parse as parse_policy
from core.state import audit_key, audit_prefix, nonce_key
from core.tx import Transaction

T0 = 1_780_000_000


@pytest.fixture
def c(chain):
    """alice stores rec-1 (cardiology) and rec-2 (labs); bob and carol are doctors; bob holds
    grant g1 (request r1, shares at p1..p3), carol g2 (request r2) and g3 (r3, shares at p2..p4)."""
    chain.block(chain.register_tx("alice", "org-a"), chain.register_tx("bob", "org-b", "doctor", peer="p3"),
                chain.register_tx("carol", "org-b", "doctor", peer="p3"))
    chain.block(chain.tx("store", "alice", chain.store_body("rec-1")),
                chain.tx("store", "alice", chain.store_body("rec-2", label="labs")),
                chain.tx("set_policy", "alice", {"policy": parse_policy(chain.POLICY).to_msgpack()}))
    ask = {"patient": "alice", "record_id": "rec-1", "operation": "read", "purpose": None}
    assert chain.block(chain.tx("access_request", "bob", {"request_id": "r1", **ask}),
                       chain.tx("access_request", "carol", {"request_id": "r2", **ask}),
                       chain.tx("access_request", "carol", {"request_id": "r3", **ask})).marks == ("ok",) * 3
    g3 = {**chain.grant_body("g3", "r3"), "shares": {p: hashlib.sha256(p.encode()).digest() for p in ("p2", "p3", "p4")}}
    assert chain.block(chain.tx("grant", "alice", chain.grant_body("g1", "r1")),
                       chain.tx("grant", "alice", chain.grant_body("g2", "r2")),
                       chain.tx("grant", "alice", g3)).marks == ("ok",) * 3
    return chain


def entry(c, grant="g1", doctor="bob", request="r1", record="rec-1", dt=0, **extra):
    return {"grant_id": grant, "request_id": request, "record_id": record, "doctor": doctor,
            "time": c.time_ms - dt, **extra}


def batch(c, peer, entries, index=None):
    index = c.config.peer(peer).index if index is None else index
    return c.tx("access_batch", peer, {"index": index, "entries": entries})


def accesses(c):
    return [e for e in c.ledger.audit("alice") if e["event"] == "access"]


def test_one_signed_batch_records_one_access_event_per_entry_in_commit_order(c):
    before = len(c.ledger.audit("alice"))
    entries = [entry(c, dt=30), entry(c, "g2", "carol", "r2", dt=20), entry(c, dt=10)]
    tx = batch(c, "p1", entries)
    store = c.tx("store", "alice", c.store_body("rec-3"))
    result = c.block(store, tx, c.tx("store", "alice", c.store_body("rec-4")))
    assert result.marks == ("ok", "ok", "ok")
    trail = c.ledger.audit("alice")[before:]
    assert [e["event"] for e in trail] == ["store", "access", "access", "access", "store"]
    events = trail[1:4]
    assert [e["doctor"] for e in events] == ["bob", "carol", "bob"]
    assert [e["entry"] for e in events] == [0, 1, 2]
    assert [e["time"] for e in events] == [x["time"] for x in entries]  # when each share was served
    assert {e["tx"] for e in events} == {hashlib.sha256(tx.to_bytes()).digest()}
    assert all(e["peer"] == e["actor"] == "p1" and e["share_index"] == c.config.peer("p1").index for e in events)
    assert not any("late" in e or "standing" in e for e in events)
    keys = [k for k, _ in c.kv.scan(audit_prefix("alice"))][before:]
    assert keys == sorted(keys) and keys[1:4] == [audit_key("alice", result.height, 1, n) for n in range(3)]
    assert keys[1] == keys[0][:-5] + "00001.0000"


@pytest.mark.parametrize("case, mark", [
    ("foreign grant", "forbidden"),  # p4 holds no share of g1
    ("one foreign entry", "forbidden"),
    ("wrong index", "forbidden"),
    ("user submits", "forbidden"),
    ("other doctor", "forbidden"),
    ("other request", "forbidden"),
    ("record outside the label", "forbidden"),
    ("no such grant", "not_found"),
    ("no such record", "not_found"),
    ("too many", "malformed"),
    ("empty", "malformed"),
    ("duplicate", "malformed"),
    ("extra field", "malformed"),
    ("missing field", "malformed"),
    ("not a map", "malformed"),
    ("time as text", "malformed"),
    ("served after the batch", "malformed"),
    ("served too long before", "malformed"),
    ("body extra", "malformed"),
])
def test_a_hostile_or_broken_batch_is_refused_whole_and_writes_nothing(c, case, mark):
    ok = entry(c)
    cases = {
        "foreign grant": lambda: batch(c, "p4", [ok]),
        "one foreign entry": lambda: batch(c, "p1", [ok, entry(c, "g2", "carol", "r2", dt=1),
                                                     entry(c, "g3", "carol", "r3", dt=2)]),
        "wrong index": lambda: batch(c, "p1", [ok], index=c.config.peer("p2").index),
        "user submits": lambda: c.tx("access_batch", "alice", {"index": 1, "entries": [ok]}),
        "other doctor": lambda: batch(c, "p1", [ok, entry(c, doctor="carol", dt=1)]),
        "other request": lambda: batch(c, "p1", [entry(c, request="r2")]),
        "record outside the label": lambda: batch(c, "p1", [entry(c, record="rec-2")]),
        "no such grant": lambda: batch(c, "p1", [ok, entry(c, grant="g9", dt=1)]),
        "no such record": lambda: batch(c, "p1", [entry(c, record="rec-9")]),
        "too many": lambda: batch(c, "p1", [entry(c, dt=i) for i in range(MAX_ACCESS_ENTRIES + 1)]),
        "empty": lambda: batch(c, "p1", []),
        "duplicate": lambda: batch(c, "p1", [ok, entry(c, dt=5), dict(ok)]),
        "extra field": lambda: batch(c, "p1", [entry(c, extra=1)]),
        "missing field": lambda: batch(c, "p1", [{k: v for k, v in ok.items() if k != "time"}]),
        "not a map": lambda: batch(c, "p1", [list(ok.values())]),
        "time as text": lambda: batch(c, "p1", [{**ok, "time": str(ok["time"])}]),
        "served after the batch": lambda: batch(c, "p1", [entry(c, dt=-1)]),
        "served too long before": lambda: batch(c, "p1", [entry(c, dt=c.config.max_skew_ms + 1)]),
        "body extra": lambda: c.tx("access_batch", "p1", {"index": 1, "entries": [ok], "x": 1}),
    }
    before = dict(c.kv.data)
    tx = cases[case]()
    result = c.block(tx)
    assert result.marks == (mark,)
    assert not any(k.startswith("audit/") or k.startswith("nonce/") for k in result.writes)
    assert {k: v for k, v in c.kv.data.items() if k != "meta/head"} == \
        {k: v for k, v in before.items() if k != "meta/head"}


def test_the_batch_limit_is_accepted_and_a_copy_is_refused_by_its_nonce(c):
    tx = batch(c, "p2", [entry(c, dt=i) for i in range(MAX_ACCESS_ENTRIES)])
    assert len(tx.to_bytes()) < 16 * 1024
    assert c.block(tx).marks == ("ok",)
    assert len(accesses(c)) == MAX_ACCESS_ENTRIES
    assert c.block(tx).marks == ("replayed_nonce",)  # a resubmitted batch does not log twice
    assert len(accesses(c)) == MAX_ACCESS_ENTRIES


def test_an_entry_whose_grant_was_revoked_or_expired_before_the_commit_is_recorded_flagged(c):
    served = entry(c, dt=50)  # bob read before alice revoked g1 ...
    other = entry(c, "g2", "carol", "r2", dt=40)
    assert c.block(c.tx("revoke_grant", "alice", {"grant_id": "g1", "reason": "done"})).marks == ("ok",)
    assert c.block(batch(c, "p3", [served, other])).marks == ("ok",)  # ... the batch committed after
    late, fine = accesses(c)
    assert late["late"] == "revoked" and late["doctor"] == "bob"
    assert "late" not in fine and fine["doctor"] == "carol"
    # g2 expires at T0 + 3600 s: a batch signed after that flags what it carries
    c.time_ms = (T0 + 3600) * 1000 + 5
    assert c.block(batch(c, "p2", [entry(c, "g2", "carol", "r2", dt=10)])).marks == ("ok",)
    assert accesses(c)[-1]["late"] == "expired"
    # the single-entry `access` of older peers keeps its rule: refused once the grant is revoked
    old = c.tx("access", "p1", {"grant_id": "g1", "request_id": "r1", "record_id": "rec-1", "doctor": "bob",
                                "index": c.config.peer("p1").index})
    assert c.block(old).marks == ("bad_state",)


class _PlainKV:
    """A KV without get_many: every read is one get (the path before the prefetch)."""

    def __init__(self, kv: MemoryKV):
        self.kv = kv
        self.gets: list[str] = []

    def get(self, key):
        self.gets.append(key)
        return self.kv.get(key)

    def scan(self, prefix):
        return self.kv.scan(prefix)


class _CountingKV(_PlainKV):
    def __init__(self, kv: MemoryKV):
        super().__init__(kv)
        self.many: list[list[str]] = []

    def get_many(self, keys):
        keys = list(keys)
        self.many.append(keys)
        return self.kv.get_many(keys)


def test_the_nonce_prefetch_reads_a_blocks_nonces_at_once_and_changes_no_outcome(c):
    twin = MemoryKV()
    twin.data = dict(c.kv.data)
    plain = Ledger(c.genesis, _PlainKV(twin))
    counting_kv = _CountingKV(c.kv)
    c.ledger = Ledger(c.genesis, counting_kv)
    nonce = b"\x07" * 16
    first = Transaction.create("store", "alice", c.store_body("rec-5"), c.keys["alice"], c.time_ms, nonce)
    again = Transaction.create("store", "alice", c.store_body("rec-6"), c.keys["alice"], c.time_ms, nonce)
    blocks = [c.make_block(first, batch(c, "p1", [entry(c)]), again, b"\x93garbage"),
              c.make_block(again, batch(c, "p2", [entry(c, dt=3)]))]
    for block in blocks:
        result = c.commit(block)
        other = plain.apply(block)
        twin.apply(other.writes)
        assert (result.marks, result.state_root, result.writes) == (other.marks, other.state_root, other.writes)
    assert c.kv.get(nonce_key("alice", nonce)) is not None
    assert [len(keys) for keys in counting_kv.many] == [3, 2]  # one read per block (the garbage has no nonce)
    assert not [k for k in counting_kv.gets if k.startswith("nonce/")]
    assert any(k.startswith("nonce/") for k in plain.kv.gets)


_ids = st.sampled_from(["g1", "g2", "g9", "r1", "r2", "rec-1", "rec-2", "bob", "carol", ""])
_values = st.one_of(_ids, st.integers(-2, 2**64 - 1), st.none(), st.binary(max_size=4), st.booleans())  # msgpack carries -2**63 .. 2**64 - 1


@st.composite
def _entries(draw, c):
    out = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["valid"] * 8 + ["mutated", "junk"]))
        if kind == "junk":
            out.append(draw(st.one_of(_values, st.lists(_values, max_size=5))))
            continue
        grant = draw(st.sampled_from([("g1", "bob", "r1"), ("g2", "carol", "r2")]))
        e = entry(c, *grant, dt=draw(st.one_of(st.integers(0, 2_000), st.integers(-5, 70_000))))
        if kind == "mutated":
            field = draw(st.sampled_from(ACCESS_ENTRY_FIELDS + ("extra",)))
            if draw(st.booleans()) and field in e:
                del e[field]
            else:
                e[field] = draw(_values)
        out.append(e)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_batch_body_gets_a_reason_and_two_ledgers_agree_on_it(new_chain, data):
    c = new_chain()
    c.block(c.register_tx("alice", "org-a"), c.register_tx("bob", "org-b", "doctor", peer="p3"),
            c.register_tx("carol", "org-b", "doctor", peer="p3"))
    c.block(c.tx("store", "alice", c.store_body("rec-1")), c.tx("store", "alice", c.store_body("rec-2", label="labs")),
            c.tx("set_policy", "alice", {"policy": parse_policy(c.POLICY).to_msgpack()}))
    ask = {"patient": "alice", "record_id": "rec-1", "operation": "read", "purpose": None}
    c.block(c.tx("access_request", "bob", {"request_id": "r1", **ask}),
            c.tx("access_request", "carol", {"request_id": "r2", **ask}))
    c.block(c.tx("grant", "alice", c.grant_body("g1", "r1")), c.tx("grant", "alice", c.grant_body("g2", "r2")))
    if data.draw(st.booleans(), "revoke g1"):
        c.block(c.tx("revoke_grant", "alice", {"grant_id": "g1", "reason": "done"}))
    twin = MemoryKV()
    twin.data = dict(c.kv.data)
    other = Ledger(c.genesis, _PlainKV(twin))
    txs = []
    for _ in range(data.draw(st.integers(1, 3), "batches")):
        entries = data.draw(_entries(c), "entries")
        peer = data.draw(st.sampled_from(["p1", "p2", "p3", "p4"]), "peer")
        txs.append(batch(c, peer, entries))
    before = len(accesses(c))
    block = c.make_block(*txs)
    result = c.commit(block)
    second = other.apply(block)
    assert (result.marks, result.state_root) == (second.marks, second.state_root)
    assert all(m in REASON_CODES for m in result.marks)
    for mark in result.marks:
        event(f"mark {mark}")
    logged = sum(len(tx.body["entries"]) for tx, m in zip(txs, result.marks) if m == "ok")
    assert len(accesses(c)) - before == logged
    for tx, mark in zip(txs, result.marks):
        if mark == "ok":
            assert all(isinstance(e, dict) and set(e) == set(ACCESS_ENTRY_FIELDS) for e in tx.body["entries"])


# -- attack review (issue 14): a `late` flag names a share served before the peer saw the
# revocation or expiry; an entry served long after it is not evidence of that, it is a
# hostile peer inventing a read after the patient withdrew consent (or after expiry).


def test_an_entry_served_long_after_the_revocation_is_refused_not_flagged_late(c):
    assert c.block(c.tx("revoke_grant", "alice", {"grant_id": "g1", "reason": "done"})).marks == ("ok",)
    revoked_at = c.time_ms
    skew = c.config.max_skew_ms
    # a peer that applied the revocation a moment late: its entry is recorded flagged
    c.time_ms = revoked_at + skew
    assert c.block(batch(c, "p1", [entry(c, dt=10)])).marks == ("ok",)
    assert accesses(c)[-1]["late"] == "revoked"
    # twenty minutes later, p2 claims bob read rec-1 "just now" under the revoked grant
    c.time_ms = revoked_at + 10 * skew
    before = len(accesses(c))
    forged = batch(c, "p2", [entry(c, "g2", "carol", "r2", dt=20), entry(c, dt=10)])
    assert c.block(forged).marks == ("bad_state",)
    assert len(accesses(c)) == before  # refused whole, as any entry that could not have been served


def test_an_entry_served_long_after_the_expiry_is_refused_not_flagged_late(c):
    skew = c.config.max_skew_ms
    expires_ms = (T0 + 3600) * 1000  # g2's expiry
    # served a moment before the expiry, batched just after it: flagged
    c.time_ms = expires_ms + 30
    assert c.block(batch(c, "p2", [entry(c, "g2", "carol", "r2", dt=40)])).marks == ("ok",)
    assert accesses(c)[-1]["late"] == "expired"
    # an hour after g2 expired, p2 claims carol read rec-1 now: no honest peer served that
    c.time_ms = expires_ms + 3600_000
    before = len(accesses(c))
    assert c.block(batch(c, "p2", [entry(c, "g2", "carol", "r2", dt=10)])).marks == ("bad_state",)
    # nor one served at the expiry plus the skew (the peer's clock checked expiry before serving)
    c.time_ms = expires_ms + skew + 5
    assert c.block(batch(c, "p3", [entry(c, "g2", "carol", "r2", dt=5)])).marks == ("bad_state",)
    assert len(accesses(c)) == before


@pytest.mark.slow
def test_a_patients_audit_trail_stays_readable_in_pages_after_many_reads(c):
    """Attack review (issue 14): a doctor holding one grant grows the trail at the peers' serving rate
    (one event per share, 64 per batch); past ~100k events (~163 bytes each) one reply would pass
    the 16 MiB frame and the patient could read none of it. peer.audit answers in pages."""
    from bus import DEFAULT_MAX_FRAME_SIZE
    from bus.envelope import encode_compact
    from core.ledger import AUDIT_PAGE
    from core.protocol import PeerAuditReply

    txs = []
    for b in range(1650):  # ~35k reads of three shares each, a few minutes of one doctor at the peers' rate
        peer = ("p1", "p2", "p3")[b % 3]
        txs.append(batch(c, peer, [entry(c, dt=i + (64 * (b // 3)) % 50_000) for i in range(MAX_ACCESS_ENTRIES)]))
    for i in range(0, len(txs), 500):
        assert set(c.block(*txs[i:i + 500]).marks) == {"ok"}
    events = c.ledger.audit("alice")
    assert len(events) > 100_000
    whole = encode_compact(2, None, 1, 1, "p1", "alice", PeerAuditReply(tuple(events)).to_wire())
    assert len(whole) > DEFAULT_MAX_FRAME_SIZE  # what one reply would have been
    pages, after = [], None
    while True:
        page, after = c.ledger.audit_page("alice", after)
        assert 0 < len(page) <= AUDIT_PAGE
        reply = encode_compact(2, None, 1, 1, "p1", "alice", PeerAuditReply(tuple(page), after).to_wire())
        assert len(reply) <= DEFAULT_MAX_FRAME_SIZE // 16
        pages.extend(page)
        if after is None:
            break
    assert pages == events


def test_audit_pages_follow_each_other_on_both_kvs(c, tmp_path):
    """Ledger.audit_page over MemoryKV (scanned whole) and LedgerStore.scan_page (one SQL page) agree,
    page after page, with the whole trail; a key of another patient's trail is refused."""
    from agents.ledger_store import LedgerStore
    from core.ledger import Ledger

    for b in range(5):
        assert set(c.block(batch(c, "p1", [entry(c, dt=i + 64 * b) for i in range(MAX_ACCESS_ENTRIES)])).marks) == {"ok"}
    whole = c.ledger.audit("alice")
    assert len(whole) > 5 * MAX_ACCESS_ENTRIES - 1
    store = LedgerStore(tmp_path / "ledger.db")
    rows = c.ledger.kv.scan("")
    with store._lock:
        store._db.executemany("INSERT INTO state (key, value) VALUES (?, ?)", rows)
    on_disk = Ledger.__new__(Ledger)
    on_disk.kv = store
    for ledger in (c.ledger, on_disk):
        for limit in (1, 7, 64, 10_000):
            got, after = [], None
            while True:
                page, nxt = ledger.audit_page("alice", after, limit)
                assert len(page) <= limit and (nxt is None or len(page) == limit)
                got.extend(page)
                if nxt is None:
                    break
                assert after is None or nxt > after
                after = nxt
            assert got == whole
        with pytest.raises(ValueError):
            ledger.audit_page("alice", "audit/bob/000000000001/00000")
    store.close()


def test_an_entrys_checks_are_shared_only_by_entries_naming_the_same_grant_request_record_and_doctor(c):
    # g1 is bob's: an entry for carol under it is refused though an earlier entry checked g1
    assert c.block(batch(c, "p1", [entry(c, dt=30), entry(c, doctor="carol", dt=20)])).marks == ("forbidden",)
    assert c.block(batch(c, "p1", [entry(c, dt=30), entry(c, record="rec-2", dt=20)])).marks == ("forbidden",)
    assert c.block(batch(c, "p1", [entry(c, dt=30), entry(c, request="r2", dt=20)])).marks == ("forbidden",)


def test_the_access_events_are_the_canonical_bytes_of_the_audit_map(c):
    from core import canonical
    from core.state import grant_key

    entries = [entry(c, dt=50), entry(c, "g2", "carol", "r2", dt=40), entry(c, dt=30), entry(c, dt=20)]
    assert c.block(c.tx("revoke_grant", "alice", {"grant_id": "g1", "reason": "done"})).marks == ("ok",)
    tx = batch(c, "p2", entries)
    result = c.block(c.tx("store", "alice", c.store_body("rec-3")), tx)
    assert result.marks == ("ok", "ok")
    assert c.kv.get(grant_key("g1")) is not None
    tx_hash = hashlib.sha256(tx.to_bytes()).digest()
    for n, e in enumerate(entries):
        flags = {"late": "revoked"} if e["grant_id"] == "g1" else {}
        # what Ledger._audit writes for the n-th entry (insertion order irrelevant: canonical)
        expected = {"event": "access", "actor": "p2", "time": e["time"], "height": result.height, "tx": tx_hash,
                    "entry": n, "grant_id": e["grant_id"], "request_id": e["request_id"],
                    "record_id": e["record_id"], "doctor": e["doctor"], "peer": "p2",
                    "share_index": c.config.peer("p2").index, **flags}
        assert c.kv.get(audit_key("alice", result.height, 1, n)) == canonical.pack(expected)
