"""core.lightclient: the certificate light client agrees with a full Ledger on the same blocks."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given, settings, strategies as st

from core import ecdsa
from core.errors import DecodeError, ValidationError
from core.ledger import Block, merkle_root
from core.lightclient import CertificateChange, CertificateLightClient
from core.state import certs_prefix


def register_body(cert: dict | str) -> dict:
    """A ``register`` body: the certificate and a fresh enrollment token id (core.enrollment)."""
    return {"cert": cert, "token_id": secrets.token_bytes(16)}


def ledger_certificates(chain) -> dict:
    """Registered, unrevoked certificates in the full ledger's state."""
    out = {}
    for key, _ in chain.kv.scan(certs_prefix()):
        entry = chain.ledger.certificate(key[len(certs_prefix()):])
        if not entry.revoked:
            out[entry.subject] = entry.cert
    return out


def feed(chain, client, *txs):
    """Make the next block, apply it to the ledger and the light client; the changes and marks."""
    block = chain.make_block(*txs)
    marks = chain.commit(block).marks
    changes = client.apply(block.to_bytes())
    assert client.certificates() == ledger_certificates(chain)
    assert (client.height, client.head_hash) == chain.ledger.head()[:2]
    return changes, marks


def test_register_rules_agree(chain):
    c = chain
    lc = CertificateLightClient(c.genesis.to_bytes())
    good = c.register_tx("alice", "org-a")
    other_org = c.register_tx("mallory", "org-a", peer="p3")  # a peer of org-b issuing for org-a
    forged = c.register_tx("eve", "org-a", signer="p2")  # issued by p1, signed by p2
    bad_proof = c.register_tx("trudy", "org-a", proof_for="someone-else")
    by_user = c.tx("register", "alice", register_body(c.cert("oscar", "org-a", {"role": "patient"}).to_dict()))
    wrong_key = c.tx("register", "p1", register_body(c.cert("peggy", "org-a", {"role": "patient"}).to_dict()),
                     key=c.peer_keys["p2"])
    changes, marks = feed(c, lc, good)
    assert marks == ("ok",)
    assert changes == [CertificateChange("alice", lc.certificates()["alice"], 1)]
    assert changes[0].ecdsa_key == ecdsa.public_key(c.keys["alice"])
    changes, marks = feed(c, lc, other_org, forged, bad_proof, by_user, wrong_key, good, good)
    assert marks == ("forbidden", "bad_certificate", "bad_certificate", "forbidden", "bad_signature",
                     "replayed_nonce", "duplicate_in_block")
    assert changes == [] and set(lc.certificates()) == {"alice"}


def test_revoke_rules_agree(chain):
    c = chain
    lc = CertificateLightClient(c.genesis)
    regs = [c.register_tx(s, "org-a") for s in ("alice", "bob", "carol")] + [
        c.register_tx("dave", "org-b", "doctor", peer="p3")]
    changes, marks = feed(c, lc, *regs)
    assert marks == ("ok",) * 4 and [ch.subject for ch in changes] == ["alice", "bob", "carol", "dave"]

    def revoke(submitter, subject, **kw):
        return c.tx("revoke_cert", submitter, {"subject": subject, "reason": "r"}, **kw)

    # by the subject, by a peer of its organization: forgotten
    changes, marks = feed(c, lc, revoke("alice", "alice"), revoke("p2", "bob"))
    assert marks == ("ok", "ok")
    assert [(ch.subject, ch.certificate, ch.ecdsa_key, ch.height) for ch in changes] == [
        ("alice", None, None, 2), ("bob", None, None, 2)]
    # by strangers (a peer of another organization, another user), by a revoked subject, twice,
    # of an unknown subject, signed with the wrong key: refused, nothing forgotten
    changes, marks = feed(c, lc, revoke("p3", "carol"), revoke("dave", "carol"), revoke("alice", "alice"),
                          revoke("p1", "bob"), revoke("p1", "nobody"), revoke("carol", "carol", key=c.keys["dave"]))
    assert marks == ("forbidden", "forbidden", "cert_revoked", "bad_state", "not_found", "bad_signature")
    assert changes == [] and set(lc.certificates()) == {"carol", "dave"}
    assert lc.certificate("alice").revoked and lc.certificate("nobody") is None
    # registered and revoked in one block: one change, revoked
    changes, marks = feed(c, lc, c.register_tx("erin", "org-b", peer="p4"), revoke("p3", "erin"))
    assert marks == ("ok", "ok") and changes == [CertificateChange("erin", None, 4)]


def test_other_transactions_are_skipped(chain):
    c = chain
    lc = CertificateLightClient(c.genesis)
    feed(c, lc, c.register_tx("alice", "org-a"))
    changes, marks = feed(c, lc, c.tx("store", "alice", c.store_body()), b"\x93junk")
    assert marks == ("ok", "malformed") and changes == []


def test_blocks_must_extend_the_last_one_and_be_the_orderers(chain):
    c = chain
    lc = CertificateLightClient(c.genesis)
    first = c.make_block(c.register_tx("alice", "org-a"))
    second = c.make_block(c.register_tx("bob", "org-a"))
    with pytest.raises(ValidationError) as info:  # out of order
        lc.apply(second.to_bytes())
    assert info.value.code == "bad_height" and lc.height == 0 and lc.certificates() == {}
    forged = Block.make(1, c.genesis.hash, c.time_ms, first.txs, ecdsa.generate_private_key())
    wrong_root = Block(1, c.genesis.hash, first.timestamp, merkle_root([]), first.txs, first.orderer_sig)
    other_parent = Block.make(1, b"\x07" * 32, c.time_ms, first.txs, c.orderer_key)
    for block, code in [(forged, "bad_block_signature"), (wrong_root, "bad_tx_root"),
                        (other_parent, "bad_prev_hash")]:
        with pytest.raises(ValidationError) as info:
            lc.apply(block)
        assert info.value.code == code
        with pytest.raises(ValidationError) as info:  # the full ledger refuses it alike
            c.ledger.apply(block)
        assert info.value.code == code
    assert lc.height == 0 and lc.certificates() == {}
    with pytest.raises(DecodeError):
        lc.apply(b"\x96garbage")
    lc.apply(first)
    with pytest.raises(ValidationError):  # a block already applied
        lc.apply(first)
    lc.apply(second)
    assert set(lc.certificates()) == {"alice", "bob"} and lc.height == 2


def test_genesis_is_checked(chain):
    with pytest.raises(DecodeError):
        CertificateLightClient(b"\x93junk")
    with pytest.raises(DecodeError):
        CertificateLightClient(chain.make_block())


ACTIONS = st.lists(st.tuples(st.sampled_from(["register", "register_other_org", "register_forged", "revoke_self",
                                              "revoke_peer", "revoke_stranger", "stale", "new_block"]),
                             st.integers(0, 4)), min_size=1, max_size=14)


@settings(max_examples=25)
@given(ACTIONS)
def test_light_client_and_ledger_agree_on_any_history(new_chain, actions):
    """Random registrations and revocations, good and bad, over several blocks."""
    c = new_chain()
    lc = CertificateLightClient(c.genesis)
    subjects = [f"user{i}" for i in range(5)]
    orgs = {s: ("org-a", "p1") if i % 2 else ("org-b", "p3") for i, s in enumerate(subjects)}
    pending = []
    for action, i in actions:
        s = subjects[i]
        org, peer = orgs[s]
        stranger = "p1" if peer == "p3" else "p3"
        if action == "new_block":
            feed(c, lc, *pending)
            pending = []
        elif action == "register":
            pending.append(c.register_tx(s, org, peer=peer))
        elif action == "register_other_org":
            pending.append(c.register_tx(s, org, peer=stranger))
        elif action == "register_forged":
            pending.append(c.register_tx(s, org, peer=peer, signer=stranger))
        elif action == "stale":
            tx = c.register_tx(s, org, peer=peer)
            c.time_ms += 10 * 60_000
            feed(c, lc, *pending, tx)
            pending = []
        elif s in c.keys:
            submitter = {"revoke_self": s, "revoke_peer": peer, "revoke_stranger": stranger}[action]
            pending.append(c.tx("revoke_cert", submitter, {"subject": s, "reason": "r"}))
    feed(c, lc, *pending)
    assert lc.certificates() == ledger_certificates(c)
    for s in subjects:
        mine, theirs = lc.certificate(s), c.ledger.certificate(s)
        assert mine == theirs


def ledger_records(chain) -> set:
    """(patient, record id, cid) of every record in the full ledger's state."""
    out = set()
    for key, _ in chain.kv.scan("record/"):
        _, patient, record_id = key.split("/", 2)
        out.add((patient, record_id, chain.ledger.record(patient, record_id).cid))
    return out


def test_store_rules_agree(chain):
    """The light client names exactly the CIDs of the store transactions the ledger commits."""
    c = chain
    lc = CertificateLightClient(c.genesis)
    feed(c, lc, c.register_tx("alice", "org-a"), c.register_tx("dr", "org-b", "doctor", peer="p3"))
    good = c.tx("store", "alice", c.store_body("rec-1"))
    by_doctor = c.tx("store", "dr", c.store_body("rec-2"))  # not a patient
    by_peer = c.tx("store", "p1", c.store_body("rec-3"))
    bad_capsule = c.tx("store", "alice", {**c.store_body("rec-4"), "capsule": b"\x00" * 48})
    bad_cid = c.tx("store", "alice", {**c.store_body("rec-5"), "cid": "not-a-cid"})
    forged = c.tx("store", "alice", c.store_body("rec-6"), key=c.keys["dr"])
    missing = c.tx("store", "alice", {"record_id": "rec-7"})
    block = c.make_block(good, by_doctor, by_peer, bad_capsule, bad_cid, forged, missing, good)
    marks = c.commit(block).marks
    update = lc.apply_all(block.to_bytes())
    assert marks == ("ok", "forbidden", "forbidden", "malformed", "malformed", "bad_signature", "malformed",
                     "duplicate_in_block")
    assert [(r.patient, r.record_id, r.cid, r.height) for r in update.records] == [
        ("alice", "rec-1", good.body["cid"], 2)]
    # the same record id again (a new nonce), a replayed nonce: refused by both
    dup = c.tx("store", "alice", c.store_body("rec-1"))
    second = c.tx("store", "alice", c.store_body("rec-8"))
    block = c.make_block(dup, second)
    assert c.commit(block).marks == ("duplicate", "ok")
    assert [r.record_id for r in lc.apply_all(block).records] == ["rec-8"]
    assert {(r.patient, r.record_id, r.cid) for r in lc.records()} == ledger_records(c)
    assert set(lc.cids()) == {good.body["cid"], second.body["cid"]}
    # after a revocation the patient's stores are refused by both
    feed(c, lc, c.tx("revoke_cert", "alice", {"subject": "alice", "reason": "r"}))
    block = c.make_block(c.tx("store", "alice", c.store_body("rec-9")))
    assert c.commit(block).marks == ("cert_revoked",)
    assert lc.apply_all(block).records == [] and len(lc.records()) == 2


@settings(max_examples=15, deadline=None)
@given(st.lists(st.sampled_from(["good", "dup-id", "doctor", "bad-cid", "replay"]), min_size=1, max_size=6))
def test_store_rules_agree_on_random_sequences(new_chain, steps):
    c = new_chain()
    lc = CertificateLightClient(c.genesis)
    feed(c, lc, c.register_tx("alice", "org-a"), c.register_tx("dr", "org-b", "doctor", peer="p3"))
    last = None
    for i, step in enumerate(steps):
        if step == "good" or last is None:
            tx = c.tx("store", "alice", c.store_body(f"rec-{i}"))
        elif step == "dup-id":
            tx = c.tx("store", "alice", c.store_body(last.body["record_id"]))
        elif step == "doctor":
            tx = c.tx("store", "dr", c.store_body(f"rec-{i}"))
        elif step == "bad-cid":
            tx = c.tx("store", "alice", {**c.store_body(f"rec-{i}"), "cid": "bafy-nope"})
        else:
            tx = last
        last = tx
        block = c.make_block(tx)
        c.commit(block)
        lc.apply_all(block)
        assert {(r.patient, r.record_id, r.cid) for r in lc.records()} == ledger_records(c)
