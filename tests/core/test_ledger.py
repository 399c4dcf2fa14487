"""Ledger rules (core.ledger): the whole flow, every rejection path, determinism, tampering."""

from __future__ import annotations

import hashlib
import secrets

import pytest

from core import canonical, ecdsa, pre
from core.cid import compute as compute_cid
from core.identity import Certificate
from core.identity import ConsortiumConfig
from core.ledger import (BREAK_GLASS_TAG, Block, Ledger, MemoryKV, break_glass_message, merkle_root,
                         sign_config_change)
from core.errors import DecodeError, SignatureError, ValidationError
from core.policy import parse as parse_policy
from core.tx import Transaction

from agents.testing.consortium import SHARING_POLICY as POLICY
from agents.testing.consortium import TestConsortium, split_peers

T0 = 1_780_000_000  # seconds; a Tuesday, 2026-05-28 20:26:40 UTC


def register_body(cert: dict | str) -> dict:
    """A ``register`` body: the certificate and a fresh enrollment token id (core.enrollment)."""
    return {"cert": cert, "token_id": secrets.token_bytes(16)}


class Consortium:
    def __init__(self, n_peers: int = 4, threshold: int = 2):
        c = TestConsortium.build(split_peers(n_peers, name="peer{number}"), threshold=threshold,
                                 org_names={"org-a": "Hospital A", "org-b": "Hospital B"}, max_skew_ms=60_000,
                                 created_at=T0 * 1000)
        self.orderer_key, self.config, self.genesis = c.orderer_key, c.config, c.genesis
        self.peer_keys = {pid: k.ecdsa_private for pid, k in c.peer_keys.items()}
        self.kv = MemoryKV()
        self.ledger = Ledger(self.genesis, self.kv)
        self.users = {}
        self.time_ms = T0 * 1000

    def block(self, *txs: Transaction | bytes, timestamp: int | None = None):
        height, head, _ = self.ledger.head()
        raws = [t.to_bytes() if isinstance(t, Transaction) else t for t in txs]
        block = Block.make(height + 1, head, timestamp or self.time_ms, raws, self.orderer_key)
        result = self.ledger.apply(block)
        self.kv.apply(result.writes)
        return block, result

    def tx(self, tx_type, submitter, body, *, key=None, ts=None, nonce=None):
        key = key or self.users.get(submitter, {}).get("key") or self.peer_keys[submitter]
        return Transaction.create(tx_type, submitter, body, key, ts or self.time_ms, nonce)

    def cert(self, subject, org, attrs, *, peer="peer1", valid=(T0 - 10, T0 + 86400 * 30)):
        key = ecdsa.generate_private_key()
        ms = pre.new_master_secret()
        recv = pre.KeyPair.derive(ms, pre.RECEIVE_LABEL)
        cert = Certificate(
            f"serial-{subject}", subject, org, attrs, ecdsa.public_key(key), pre.box_keypair()[1],
            recv.public.to_bytes(), recv.prove(subject).to_bytes(), valid[0], valid[1], peer,
        ).sign(self.peer_keys[peer])
        self.users[subject] = {"key": key, "master": ms, "cert": cert}
        return cert

    def register(self, subject, org, attrs, peer="peer1", **kw):
        cert = self.cert(subject, org, attrs, peer=peer, **kw)
        return self.block(self.tx("register", peer, register_body(cert.to_dict())))[1].marks[0]


def registered() -> "Consortium":
    """A consortium with alice (patient), dr-heart, dr-gp and a nurse registered."""
    c = Consortium()
    assert c.register("alice", "org-a", {"role": "patient"}) == "ok"
    assert c.register("dr-heart", "org-b", {"role": "doctor", "department": "cardiology"}, peer="peer3") == "ok"
    assert c.register("dr-gp", "org-a", {"role": "doctor", "department": "general"}) == "ok"
    assert c.register("nurse", "org-a", {"role": "nurse", "department": "cardiology"}) == "ok"
    return c


@pytest.fixture
def c():
    return registered()


def store_body(record_id="rec-1", label="cardiology"):
    kp = pre.KeyPair.derive(pre.new_master_secret(), label)
    capsule, _ = pre.encapsulate(kp.public)
    return {"record_id": record_id, "label": label, "cid": compute_cid(record_id.encode()), "size": 10,
            "media_type": "application/fhir+json", "capsule": capsule.to_bytes()}


def setup_records(c):
    marks = c.block(
        c.tx("store", "alice", store_body()),
        c.tx("store", "alice", store_body("rec-2", "labs")),
        c.tx("set_policy", "alice", {"policy": parse_policy(POLICY).to_msgpack()}),
    )[1].marks
    assert marks == ("ok", "ok", "ok")


def request(c, doctor, rid, record="rec-1", purpose=None):
    return c.block(c.tx("access_request", doctor, {"request_id": rid, "patient": "alice",
                                                   "record_id": record, "operation": "read",
                                                   "purpose": purpose}))[1].marks[0]


def grant_body(c, gid, rid, threshold=2, expires=T0 + 3600):
    return {"grant_id": gid, "request_id": rid, "threshold": threshold, "expires_at": expires,
            "shares": {p: hashlib.sha256(p.encode()).digest() for p in ("peer1", "peer2", "peer3")}}


def test_full_flow_and_audit(c):
    setup_records(c)
    assert request(c, "dr-heart", "req-1") == "ok"
    req = c.ledger.get("request/req-1")
    assert req["decision"]["effect"] == "allow" and req["decision"]["rule"] == "cardio"
    assert req["status"] == "pending"
    assert c.block(c.tx("grant", "alice", grant_body(c, "g-1", "req-1")))[1].marks == ("ok",)
    grant, rec = c.ledger.check_reencryption("g-1", "dr-heart", "alice", "rec-1", T0 + 10)
    assert grant.threshold == 2 and rec.label == "cardiology"
    access = c.tx("access", "peer1", {"grant_id": "g-1", "request_id": "req-1", "record_id": "rec-1",
                                      "doctor": "dr-heart", "index": 1})
    assert c.block(access)[1].marks == ("ok",)
    assert c.block(c.tx("revoke_grant", "alice", {"grant_id": "g-1", "reason": "done"}))[1].marks == ("ok",)
    with pytest.raises(ValidationError) as info:
        c.ledger.check_reencryption("g-1", "dr-heart", "alice", "rec-1", T0 + 20)
    assert info.value.code == "bad_state"
    events = [e["event"] for e in c.ledger.audit("alice")]
    assert events == ["store", "store", "set_policy", "access_request", "grant", "access", "revoke_grant"]
    # the store transaction in state carries the patient's signature over the CID
    stored = Transaction.from_bytes(c.ledger.get("record/alice/rec-1")["tx"])
    assert stored.is_valid_signature(c.users["alice"]["cert"].ecdsa_key)


def test_policy_decisions_recorded(c):
    setup_records(c)
    assert request(c, "nurse", "req-n") == "ok"  # valid transaction, denied decision
    req = c.ledger.get("request/req-n")
    assert req["status"] == "denied" and req["decision"]["rule"] == "default"
    assert request(c, "dr-heart", "req-labs", record="rec-2") == "ok"
    assert c.ledger.get("request/req-labs")["status"] == "denied"
    assert request(c, "dr-gp", "req-gp") == "ok"
    assert c.ledger.get("request/req-gp")["decision"]["approval"] == "patient"
    # a denied request cannot be granted
    assert c.block(c.tx("grant", "alice", grant_body(c, "g-n", "req-n")))[1].marks == ("not_allowed",)
    # the patient may reject a pending one, and then it cannot be granted
    assert c.block(c.tx("deny_request", "alice", {"request_id": "req-gp", "reason": "no"}))[1].marks == ("ok",)
    assert c.block(c.tx("grant", "alice", grant_body(c, "g-gp", "req-gp")))[1].marks == ("bad_state",)


def test_no_policy_means_deny(c):
    c.block(c.tx("store", "alice", store_body()))
    assert request(c, "dr-heart", "r") == "ok"
    assert c.ledger.get("request/r")["decision"]["rule"] == "no-policy"


def test_rejection_paths(c):
    setup_records(c)
    request(c, "dr-heart", "req-1")
    # bad signature: signed by someone else's key
    forged = c.tx("store", "alice", store_body("rec-x"), key=c.users["dr-heart"]["key"])
    # unknown submitter
    unknown = Transaction.create("store", "mallory", store_body("rec-y"), ecdsa.generate_private_key(), c.time_ms)
    # wrong role: a doctor storing
    wrong_role = c.tx("store", "dr-heart", store_body("rec-z"))
    # non-owner grant
    non_owner = c.tx("grant", "dr-heart", grant_body(c, "g-x", "req-1"))
    # stale timestamp
    stale = c.tx("store", "alice", store_body("rec-s"), ts=c.time_ms - 3_600_000)
    # duplicate record id
    dup = c.tx("store", "alice", store_body("rec-1"))
    # malformed body
    bad_body = c.tx("store", "alice", {"record_id": "rec-m"})
    # garbage bytes
    marks = c.block(forged, unknown, wrong_role, non_owner, stale, dup, bad_body, b"\x93garbage")[1].marks
    assert marks == ("bad_signature", "unknown_submitter", "forbidden", "forbidden", "stale_timestamp",
                     "duplicate", "malformed", "malformed")
    # replayed nonce: the same transaction again in a later block
    ok = c.tx("store", "alice", store_body("rec-r"))
    assert c.block(ok)[1].marks == ("ok",)
    replay = c.tx("store", "alice", store_body("rec-r2"), nonce=ok.nonce)
    assert c.block(replay)[1].marks == ("replayed_nonce",)
    # the same bytes twice in one block
    t = c.tx("store", "alice", store_body("rec-d"))
    assert c.block(t, t)[1].marks == ("ok", "duplicate_in_block")
    # the same bytes resubmitted in a later block (a peer resubmitting after an orderer
    # failover): committed once, the copy is refused by its nonce
    again = c.tx("store", "alice", store_body("rec-again"))
    assert c.block(again)[1].marks == ("ok",)
    assert c.block(again)[1].marks == ("replayed_nonce",)


def test_revoked_and_expired_certificates(c):
    setup_records(c)
    assert c.block(c.tx("revoke_cert", "peer3", {"subject": "dr-heart", "reason": "left"}))[1].marks == ("ok",)
    assert request(c, "dr-heart", "req-r") == "cert_revoked"
    # a peer of another organization may not revoke
    assert c.block(c.tx("revoke_cert", "peer3", {"subject": "dr-gp", "reason": "x"}))[1].marks == ("forbidden",)
    # expired: a certificate whose window ended
    assert c.register("dr-old", "org-a", {"role": "doctor", "department": "cardiology"},
                      valid=(T0 - 100, T0 - 1)) == "ok"
    assert request(c, "dr-old", "req-o") == "cert_expired"


def test_time_window_in_policy(c):
    c.block(c.tx("store", "alice", store_body()))
    text = """
policy "hours" version 2
default deny
rule day:
  allow read on all when role == "doctor"
  during hours 08:00-18:00
  approval auto
"""
    c.block(c.tx("set_policy", "alice", {"policy": parse_policy(text).to_msgpack()}))
    # T0 is 20:26 UTC: outside the window
    assert request(c, "dr-heart", "night") == "ok"
    assert c.ledger.get("request/night")["status"] == "denied"
    c.time_ms = (T0 + 13 * 3600) * 1000  # 09:26 next day
    assert request(c, "dr-heart", "day") == "ok"
    assert c.ledger.get("request/day")["status"] == "pending"


def test_registration_rules(c):
    # a peer of org-a cannot issue for org-b
    cert = c.cert("bob", "org-b", {"role": "patient"}, peer="peer1")
    assert c.block(c.tx("register", "peer1", register_body(cert.to_dict())))[1].marks == ("forbidden",)
    # a user cannot register others
    cert = c.cert("carol", "org-a", {"role": "patient"})
    assert c.block(c.tx("register", "alice", register_body(cert.to_dict())))[1].marks == ("forbidden",)
    # a bad proof of possession
    d = cert.to_dict()
    d["pre_proof"] = pre.KeyPair.derive(pre.new_master_secret(), "receive").prove("carol").to_bytes()
    bad = Certificate.from_dict(d).sign(c.peer_keys["peer1"])
    assert c.block(c.tx("register", "peer1", register_body(bad.to_dict())))[1].marks == ("bad_certificate",)
    # a certificate not signed by the submitting peer
    other = Certificate.from_dict({**cert.to_dict(), "signature": b""}).sign(c.peer_keys["peer2"])
    assert c.block(c.tx("register", "peer1", register_body(other.to_dict())))[1].marks == ("bad_certificate",)
    # duplicate subject
    assert c.register("alice", "org-a", {"role": "patient"}) == "duplicate"


def test_reencryption_checks(c):
    setup_records(c)
    request(c, "dr-heart", "req-1")
    c.block(c.tx("grant", "alice", grant_body(c, "g-1", "req-1", expires=T0 + 100)))
    with pytest.raises(ValidationError) as info:
        c.ledger.check_reencryption("g-1", "dr-gp", "alice", "rec-1", T0 + 10)
    assert info.value.code == "forbidden"
    with pytest.raises(ValidationError) as info:
        c.ledger.check_reencryption("g-1", "dr-heart", "alice", "rec-2", T0 + 10)
    assert info.value.code == "forbidden"  # another label
    with pytest.raises(ValidationError) as info:
        c.ledger.check_reencryption("g-1", "dr-heart", "alice", "rec-1", T0 + 100)
    assert info.value.code == "bad_state"  # expired
    # an access log by a peer that holds no share, or after expiry, is invalid
    body = {"grant_id": "g-1", "request_id": "req-1", "record_id": "rec-1", "doctor": "dr-heart", "index": 4}
    assert c.block(c.tx("access", "peer4", body))[1].marks == ("forbidden",)


def test_blocks_must_extend_the_head():
    c = Consortium()
    height, head, _ = c.ledger.head()
    tx = c.tx("store", "peer1", store_body()).to_bytes()
    skip = Block.make(height + 2, head, c.time_ms, [tx], c.orderer_key)
    with pytest.raises(ValidationError) as info:
        c.ledger.apply(skip)
    assert info.value.code == "bad_height"
    first, result = c.block(tx)
    assert result.marks == ("forbidden",)  # peers do not store records
    with pytest.raises(ValidationError) as info:
        c.ledger.apply(first)  # the same block again
    assert info.value.code == "bad_height"


def test_two_ledgers_same_blocks_same_root():
    c = Consortium()
    kv_a, kv_b = MemoryKV(), MemoryKV()
    la, lb = Ledger(c.genesis, kv_a), Ledger(c.genesis, kv_b)
    cert = c.cert("alice", "org-a", {"role": "patient"})
    txs = [c.tx("register", "peer1", register_body(cert.to_dict()))]
    txs += [c.tx("store", "alice", store_body(f"r{i}")) for i in range(5)]
    txs.append(c.tx("store", "alice", store_body("r0")))  # an invalid one (duplicate)
    for tx in txs:
        height, head, _ = la.head()
        b = Block.make(height + 1, head, c.time_ms, [tx.to_bytes()], c.orderer_key)
        ra, rb = la.apply(b), lb.apply(Block.from_bytes(b.to_bytes()))
        kv_a.apply(ra.writes)
        kv_b.apply(rb.writes)
        assert ra.state_root == rb.state_root and ra.marks == rb.marks
    assert ra.marks == ("duplicate",)
    assert kv_a.data == kv_b.data


def test_tampered_blocks_rejected():
    c = Consortium()
    height, head, _ = c.ledger.head()
    tx = Transaction.create("store", "x", store_body(), ecdsa.generate_private_key(), c.time_ms)
    good = Block.make(height + 1, head, c.time_ms, [tx.to_bytes()], c.orderer_key)
    bad_root = Block(good.height, good.prev_hash, good.timestamp, bytes(32), good.txs, good.orderer_sig)
    bad_sig = Block.make(height + 1, head, c.time_ms, [tx.to_bytes()], ecdsa.generate_private_key())
    bad_prev = Block.make(height + 1, bytes(32), c.time_ms, [tx.to_bytes()], c.orderer_key)
    codes = []
    for b in (bad_root, bad_sig, bad_prev):
        with pytest.raises(ValidationError) as info:
            c.ledger.apply(b)
        codes.append(info.value.code)
    assert codes == ["bad_tx_root", "bad_block_signature", "bad_prev_hash"]
    assert c.ledger.apply(good).marks == ("unknown_submitter",)


def test_block_and_certificate_signatures_have_a_bool_and_a_raising_check():
    c = Consortium()
    orderer, stranger = ecdsa.public_key(c.orderer_key), ecdsa.public_key(ecdsa.generate_private_key())
    block = Block.make(1, c.genesis.hash, c.time_ms, [b"tx"], c.orderer_key)
    assert block.is_valid_signature(orderer) and not block.is_valid_signature(stranger)
    block.verify_signature(orderer)
    with pytest.raises(SignatureError, match="block 1 is not signed by the orderer"):
        block.verify_signature(stranger)
    forged = Block(block.height, block.prev_hash, block.timestamp + 1, block.tx_root, block.txs, block.orderer_sig)
    assert not forged.is_valid_signature(orderer)
    with pytest.raises(SignatureError):
        forged.verify_signature(orderer)

    cert = c.cert("alice", "org-a", {"role": "patient"}, peer="peer1")
    issuer, other = ecdsa.public_key(c.peer_keys["peer1"]), ecdsa.public_key(c.peer_keys["peer2"])
    assert cert.is_valid_signature(issuer) and not cert.is_valid_signature(other)
    cert.verify_signature(issuer)
    with pytest.raises(SignatureError, match="serial-alice is not signed by peer1"):
        cert.verify_signature(other)
    unsigned = Certificate.from_dict({**cert.to_dict(), "signature": b""})
    assert not unsigned.is_valid_signature(issuer)
    with pytest.raises(SignatureError):
        unsigned.verify_signature(issuer)


def test_codecs_reject_garbage():
    for data in (b"", b"\xc1", canonical.pack([1, 2, 3]), canonical.pack({"a": 1})):
        with pytest.raises(DecodeError):
            Transaction.from_bytes(data)
        with pytest.raises(DecodeError):
            Block.from_bytes(data)
    # non-canonical map order is refused
    import msgpack

    with pytest.raises(DecodeError, match="canonical"):
        canonical.unpack(msgpack.packb({"b": 1, "a": 2}))
    assert merkle_root([b"a", b"b", b"c"]) != merkle_root([b"a", b"c", b"b"])


SHADOW_POLICY = """
policy "only-dave-of-b" version 1
default deny
rule dave:
  allow read on all
  when role == "doctor" and organization == "org-b" and id == "dave"
  approval auto
"""


def test_reserved_attributes_come_only_from_the_certificate(c):
    """A registrar of org-a cannot dress a user up as dave of org-b: certificates refuse the
    reserved names, a register transaction carrying one is invalid, and the engine sets them
    from the certificate's subject and organization whatever the attributes say."""
    for attrs in ({"role": "doctor", "organization": "org-b"}, {"role": "doctor", "id": "dave"}):
        with pytest.raises(DecodeError, match="reserved"):
            c.cert("mallory", "org-a", attrs)
    # a register transaction smuggling the reserved names in the encoded certificate is invalid
    cert = c.cert("mallory", "org-a", {"role": "doctor", "department": "x"})
    d = cert.to_dict()
    d["attributes"] = {"role": "doctor", "organization": "org-b", "id": "dave"}
    assert c.block(c.tx("register", "peer1", register_body(d)))[1].marks == ("bad_certificate",)
    assert c.ledger.certificate("mallory") is None
    c.block(c.tx("store", "alice", store_body()),
            c.tx("set_policy", "alice", {"policy": parse_policy(SHADOW_POLICY).to_msgpack()}))
    assert c.register("dave", "org-b", {"role": "doctor"}, peer="peer3") == "ok"
    assert c.register("eve", "org-a", {"role": "doctor"}) == "ok"
    assert request(c, "dave", "req-dave") == "ok"
    assert c.ledger.get("request/req-dave")["decision"]["effect"] == "allow"
    assert request(c, "eve", "req-eve") == "ok"
    assert c.ledger.get("request/req-eve")["decision"]["effect"] == "deny"
    # even a certificate already in state with shadowing attributes (as an older ledger could
    # hold) is evaluated as its real subject and organization
    forged = {**c.ledger.certificate("eve").cert.to_dict(), "attributes": {"role": "doctor", "organization": "org-b",
                                                                    "id": "dave"}}
    decision = c.ledger.evaluate(c.ledger, "alice", forged, "read", "rec-1", "cardiology", T0, None)
    assert decision["effect"] == "deny"


def test_blocks_are_bounded_in_bytes():
    from core.ledger import MAX_BLOCK_BYTES, batch_fits

    key = ecdsa.generate_private_key()
    tx = bytes(64 * 1024)
    n = max(k for k in range(1, 200) if batch_fits(k, k * len(tx)))
    block = Block.make(1, bytes(32), 1, [tx] * n, key)
    data = block.to_bytes()
    assert len(data) <= MAX_BLOCK_BYTES
    assert Block.from_bytes(data) == block
    assert not batch_fits(n + 1, (n + 1) * len(tx))
    with pytest.raises(ValueError, match="at most"):
        Block.make(1, bytes(32), 1, [tx] * (n + 1), key)
    # a block over the bound does not decode, however it was made
    big = canonical.pack([1, bytes(32), 1, bytes(32), [tx] * (n + 1), bytes(64)])
    with pytest.raises(DecodeError):
        Block.from_bytes(big)


def _off_curve_points() -> dict[str, bytes]:
    """Compressed G1 encodings that are not usable capsules: off the curve, on the curve
    but outside the order-r subgroup, the identity, and the generator's bytes truncated."""
    p = 0x1A0111EA397FE69A4B1BA7B6434BACD764774B84F38512BF6730D2A0F6B0F6241EABFFFEB153FFFFB9FEFFFFFFFFAAAB

    def x_with(square: bool) -> bytes:
        x = 1
        while (pow((x**3 + 4) % p, (p - 1) // 2, p) == 1) != square:
            x += 1
        return (x | (0x80 << 376)).to_bytes(48, "big")

    return {"off the curve": x_with(False), "outside the subgroup": x_with(True),
            "identity": bytes([0xC0]) + bytes(47), "short": bytes([0x80]) + bytes(10)}


@pytest.mark.crypto
def test_bad_capsules_and_numbers_are_refused_where_they_enter_the_ledger(c):
    """A capsule off the curve or outside the subgroup used to be committed as valid, and every
    peer then answered `internal` to each re-encryption for it. Now the store is invalid."""
    for what, capsule in _off_curve_points().items():
        body = {**store_body(f"rec-{what.replace(' ', '-')}"), "capsule": capsule}
        block, result = c.block(c.tx("store", "alice", body))
        assert result.marks == ("malformed",), what
        assert c.ledger.get(f"record/alice/{body['record_id']}") is None
    for size in (-1, 2**63, 2**64 - 1):
        body = {**store_body("rec-size"), "size": size}
        assert c.block(c.tx("store", "alice", body))[1].marks == ("malformed",), size
    assert c.block(c.tx("store", "alice", store_body("rec-ok")))[1].marks == ("ok",)
    setup_records(c)
    assert request(c, "dr-heart", "req-big") == "ok"
    assert c.block(c.tx("grant", "alice", grant_body(c, "g-big", "req-big", expires=2**64 - 1)))[1].marks == (
        "malformed",)


# ------------------------------------------------------------------ genesis


def test_parse_genesis_checks_block_zero_and_the_org_signatures(chain):
    from core.ledger import GENESIS_SIGNATURE, Genesis, parse_genesis

    parsed = parse_genesis(chain.genesis.to_bytes())
    assert parsed.config == chain.config and parsed.block == chain.genesis and parsed.hash == chain.genesis.hash
    assert parse_genesis(chain.genesis) == parsed == parse_genesis(parsed)
    assert parse_genesis(parsed, orderer_key=chain.config.orderer_key) is parsed
    assert Ledger(parsed, MemoryKV()).config == Ledger(chain.genesis.to_bytes(), MemoryKV()).config == chain.config
    assert chain.genesis.orderer_sig == GENESIS_SIGNATURE  # no orderer signs block 0: the orgs do
    okey = chain.orderer_key
    other = ecdsa.generate_private_key()
    txs = chain.genesis.txs
    bad = [
        b"\x93junk",
        Block.make(1, bytes(32), 0, txs, okey),  # not height 0
        Block(0, b"\x01" * 32, chain.config.created_at, merkle_root(txs), txs, GENESIS_SIGNATURE),  # not after zero
        Block(0, bytes(32), chain.config.created_at, merkle_root(txs[:1]), txs[:1], GENESIS_SIGNATURE),  # one entry
        Block(0, bytes(32), chain.config.created_at, merkle_root([b"\x80", txs[1]]), (b"\x80", txs[1]),
              GENESIS_SIGNATURE),  # not a configuration
        Block.make(0, bytes(32), chain.config.created_at, txs, okey),  # an orderer signature where none belongs
        Block(0, bytes(32), chain.config.created_at, bytes(32), txs, GENESIS_SIGNATURE),  # wrong Merkle root
        Block(0, bytes(32), 1, merkle_root(txs), txs, GENESIS_SIGNATURE),  # block time is not the config's
    ]
    for genesis in bad:
        with pytest.raises(DecodeError):
            parse_genesis(genesis)
        with pytest.raises(DecodeError):
            Ledger(genesis, MemoryKV())
    with pytest.raises(DecodeError):  # a caller holding the orderer's key pins it
        parse_genesis(chain.genesis.to_bytes(), orderer_key=ecdsa.public_key(other))
    assert isinstance(parsed, Genesis)


# ------------------------------------------------------------------ commit proofs


def test_effect_key_and_shows_effect_for_every_transaction_type(chain):
    from core.ledger import effect_key, shows_effect
    from core.tx import TX_TYPES

    c = chain
    covered = set()

    def commit(tx, *, rival=None):
        """``tx`` shows only once committed; ``rival`` (same entry, other data) never does."""
        key = effect_key(tx)
        covered.add(tx.type)
        if key is None:
            assert tx.type in ("access", "access_batch") and shows_effect(tx, None)
        else:
            assert not shows_effect(tx, c.ledger.get(key))
        assert c.block(tx).marks == ("ok",)
        if key is not None:
            assert shows_effect(tx, c.ledger.get(key))
            assert not shows_effect(tx, {"not": "an entry"})
        if rival is not None:
            assert effect_key(rival) == key and not shows_effect(rival, c.ledger.get(key))

    rival = c.register_tx("alice", "org-a")  # made first: the user keeps the key of the one committed
    commit(c.register_tx("alice", "org-a"), rival=rival)
    commit(c.register_tx("bob", "org-b", "doctor", peer="p3"))
    commit(c.register_tx("dave", "org-b", "doctor", peer="p3"))
    commit(c.tx("store", "alice", c.store_body()), rival=c.tx("store", "alice", c.store_body()))
    policy = parse_policy(c.POLICY).to_msgpack()
    other_policy = parse_policy(POLICY).to_msgpack()
    commit(c.tx("set_policy", "alice", {"policy": policy}), rival=c.tx("set_policy", "alice", {"policy": other_policy}))
    ask = {"patient": "alice", "record_id": "rec-1", "operation": "read", "purpose": None}
    commit(c.tx("access_request", "bob", {"request_id": "r1", **ask}),
           rival=c.tx("access_request", "dave", {"request_id": "r1", **ask}))
    commit(c.tx("access_request", "dave", {"request_id": "r2", **ask}))
    grant = c.grant_body("g1", "r1")
    commit(c.tx("grant", "alice", grant), rival=c.tx("grant", "alice", {**grant, "threshold": 3}))
    commit(c.tx("deny_request", "alice", {"request_id": "r2", "reason": "no"}),
           rival=c.tx("deny_request", "bob", {"request_id": "r2", "reason": "no"}))
    commit(c.tx("access", "p1", {"grant_id": "g1", "request_id": "r1", "record_id": "rec-1", "doctor": "bob",
                                 "index": 1}))
    commit(c.tx("access_batch", "p1", {"index": 1, "entries": [
        {"grant_id": "g1", "request_id": "r1", "record_id": "rec-1", "doctor": "bob", "time": c.time_ms}]}))
    commit(c.tx("revoke_grant", "alice", {"grant_id": "g1", "reason": "done"}))
    parts = {p: hashlib.sha256(b"part" + p.encode()).digest() for p in ("p1", "p2", "p3")}
    std = {"delegation_id": "d1", "label": "cardiology", "mode": "emergency", "threshold": 2, "parts": parts}
    commit(c.tx("standing", "alice", std), rival=c.tx("standing", "alice", {**std, "delegation_id": "d2"}))
    emergency = c.POLICY.replace("default deny", "default deny\nemergency roles doctor cosign 1 window 600")
    commit(c.tx("set_policy", "alice", {"policy": parse_policy(emergency.replace("version 1", "version 2"))
                                        .to_msgpack()}))
    officer = c.cert("olga", "org-b", {"role": "nurse", "officer": True}, peer="p3")
    commit(c.tx("register", "p3", register_body(officer.to_dict())))
    bg = {"break_glass_id": "bg1", "patient": "alice", "record_id": "rec-1", "reason": "unconscious"}
    sig = ecdsa.sign(c.keys["olga"], BREAK_GLASS_TAG, break_glass_message("bg1", "bob", "alice", "rec-1",
                                                                           "unconscious"))
    commit(c.tx("break_glass", "bob", {**bg, "cosigners": {"olga": sig}}),
           rival=c.tx("break_glass", "dave", {**bg, "cosigners": {"olga": sig}}))
    resealed = {**c.store_body(), "epoch": 1}
    commit(c.tx("reseal", "alice", resealed), rival=c.tx("reseal", "alice", {**resealed, "epoch": 2}))
    commit(c.tx("revoke_cert", "p3", {"subject": "dave", "reason": "left"}))
    cur = c.config  # both organizations agree org-b leaves (a later change would replace what this shows)
    gone = ConsortiumConfig(cur.name, cur.orgs[:1], tuple(p for p in cur.peers if p.org == "org-a"), cur.orderer_id,
                            cur.orderer_key, cur.threshold, cur.max_skew_ms, cur.created_at)
    commit(c.tx("config", "p1", {"config": gone.to_bytes(), "signatures": {
        o: sign_config_change(cur, 0, gone, c.admins[o]) for o in ("org-a", "org-b")}}))
    assert covered == set(TX_TYPES)
    # a body that does not name its entry cannot have committed
    for tx_type, body in [("store", {}), ("grant", {"grant_id": 5}), ("register", register_body("x")),
                          ("revoke_cert", {"subject": "a/b"})]:
        with pytest.raises(DecodeError):
            effect_key(c.tx(tx_type, "alice", body))
