"""Ledger rules of issue 16: standing delegations and the grants the ledger makes from
them, break-glass, revocation that sticks, increasing policy versions, grant scopes."""

from __future__ import annotations

import hashlib

import pytest

from core import ecdsa
from core.errors import ValidationError
from core.ledger import (
    BREAK_GLASS_TAG, STANDING_GRANT_TTL_S, break_glass_grant_id, break_glass_message, standing_grant_id,
)
from core.policy import parse as parse_policy
from core.state import BreakGlassEntry, DelegationEntry

from tests.core.conftest import T0, register_body

AUTO = """
policy "auto" version {version}
default deny
{emergency}
rule cardio:
  allow read on label "cardiology"
  when role == "doctor"
  approval {approval}
"""
PARTS = {p: hashlib.sha256(b"part" + p.encode()).digest() for p in ("p1", "p2", "p3", "p4")}


def policy(version=1, approval="auto", emergency=""):
    return {"policy": parse_policy(AUTO.format(version=version, approval=approval,
                                               emergency=emergency)).to_msgpack()}


@pytest.fixture
def c(chain):
    chain.block(chain.register_tx("alice", "org-a"), chain.register_tx("bob", "org-b", "doctor", peer="p3"),
                chain.register_tx("carol", "org-b", "doctor", peer="p3"),
                chain.register_tx("eve", "org-a", "patient"))
    chain.block(chain.tx("store", "alice", chain.store_body("rec-1")),
                chain.tx("store", "alice", chain.store_body("rec-2")),
                chain.tx("store", "alice", chain.store_body("rec-3", label="labs")))
    return chain


def standing(c, delegation_id="d1", mode="auto", label="cardiology", threshold=2, parts=PARTS):
    return c.block(c.tx("standing", "alice", {"delegation_id": delegation_id, "label": label, "mode": mode,
                                              "threshold": threshold, "parts": parts})).marks[0]


def ask(c, doctor, request_id, record_id="rec-1"):
    mark = c.block(c.tx("access_request", doctor, {"request_id": request_id, "patient": "alice",
                                                   "record_id": record_id, "operation": "read",
                                                   "purpose": None})).marks[0]
    assert mark == "ok"
    return c.ledger.request(request_id)


def test_standing_delegation_lets_the_ledger_grant_without_the_patient(c):
    c.block(c.tx("set_policy", "alice", policy()))
    assert standing(c) == "ok"
    entry = DelegationEntry.from_state(c.ledger.get("delegation/d1"))
    assert (entry.patient, entry.label, entry.mode, entry.threshold) == ("alice", "cardiology", "auto", 2)
    req = ask(c, "bob", "r1")
    gid = standing_grant_id("r1")
    assert req.status == "granted" and req.grant_id == gid
    grant = c.ledger.grant(gid)
    assert (grant.doctor, grant.delegation, grant.scope, dict(grant.shares)) == ("bob", "d1", "label", PARTS)
    assert grant.expires_at == T0 + STANDING_GRANT_TTL_S
    for record in ("rec-1", "rec-2"):  # the label, as the policy says
        c.ledger.check_reencryption(gid, "bob", "alice", record, T0 + 1)
    with pytest.raises(ValidationError) as info:
        c.ledger.check_reencryption(gid, "bob", "alice", "rec-3", T0 + 1)
    assert info.value.code == "forbidden"
    with pytest.raises(ValidationError):
        c.ledger.check_reencryption(gid, "carol", "alice", "rec-1", T0 + 1)
    # the peers' access transactions are flagged as served under the standing delegation
    assert c.block(c.tx("access", "p1", {"grant_id": gid, "request_id": "r1", "record_id": "rec-1",
                                         "doctor": "bob", "index": 1})).marks == ("ok",)
    audit = c.ledger.audit("alice")
    assert audit[-2]["event"] == "access_request" and audit[-2]["standing"] and audit[-2]["grant_id"] == gid
    assert audit[-1]["event"] == "access" and audit[-1]["standing"] is True


def test_no_automatic_grant_without_auto_approval_or_with_an_emergency_only_delegation(c):
    c.block(c.tx("set_policy", "alice", policy(approval="patient")))
    assert standing(c) == "ok"
    assert ask(c, "bob", "r1").status == "pending"
    assert standing(c, "d2", mode="emergency") == "ok"
    c.block(c.tx("set_policy", "alice", policy(version=2)))
    assert ask(c, "bob", "r2").status == "pending"
    assert c.ledger.current_delegation("alice", "cardiology") == "d2"


def test_withdrawal_and_a_stricter_policy_stop_standing_grants(c):
    c.block(c.tx("set_policy", "alice", policy()))
    standing(c)
    gid = ask(c, "bob", "r1").grant_id
    c.block(c.tx("set_policy", "alice", policy(version=2, approval="patient")))
    with pytest.raises(ValidationError) as info:
        c.ledger.check_reencryption(gid, "bob", "alice", "rec-1", T0 + 1)
    assert info.value.code == "not_allowed"
    c.block(c.tx("set_policy", "alice", policy(version=3)))
    c.ledger.check_reencryption(gid, "bob", "alice", "rec-1", T0 + 1)
    assert c.block(c.tx("standing", "alice", {"delegation_id": "x", "label": "cardiology", "mode": "off",
                                              "threshold": 0, "parts": {}})).marks == ("ok",)
    with pytest.raises(ValidationError) as info:
        c.ledger.check_reencryption(gid, "bob", "alice", "rec-1", T0 + 1)
    assert info.value.code == "bad_state"
    assert ask(c, "bob", "r2").status == "pending"  # back to asking the patient


def test_standing_is_validated_at_entry(c):
    assert standing(c, threshold=1) == "malformed"  # below the consortium's threshold
    assert standing(c, threshold=5) == "malformed"  # above the part count
    assert standing(c, parts={**PARTS, "nobody": bytes(32)}) == "malformed"
    assert standing(c, parts={"p1": bytes(31), "p2": bytes(32)}) == "malformed"
    assert standing(c, mode="sometimes") == "malformed"
    assert standing(c, label="a/b") == "malformed"
    assert c.block(c.tx("standing", "bob", {"delegation_id": "d9", "label": "cardiology", "mode": "auto",
                                            "threshold": 2, "parts": PARTS})).marks == ("forbidden",)
    assert standing(c) == "ok"
    assert standing(c) == "duplicate"
    assert c.block(c.tx("standing", "alice", {"delegation_id": "x", "label": "labs", "mode": "off",
                                              "threshold": 0, "parts": {}})).marks == ("not_found",)


def test_policy_versions_must_increase(c):
    assert c.block(c.tx("set_policy", "alice", policy(version=2))).marks == ("ok",)
    assert c.block(c.tx("set_policy", "alice", policy(version=2, approval="patient"))).marks == ("bad_state",)
    assert c.block(c.tx("set_policy", "alice", policy(version=1))).marks == ("bad_state",)
    assert c.ledger.policy("alice").version == 2
    assert c.block(c.tx("set_policy", "alice", policy(version=3))).marks == ("ok",)


def test_a_revoked_doctor_is_not_granted_again_until_the_policy_changes(c):
    c.block(c.tx("set_policy", "alice", policy()))
    standing(c)
    gid = ask(c, "bob", "r1").grant_id
    c.block(c.tx("revoke_grant", "alice", {"grant_id": gid, "reason": "second opinion done"}))
    req = ask(c, "bob", "r2")
    assert req.status == "pending" and req.hold == "revoked" and req.grant_id is None
    assert ask(c, "carol", "r3").status == "granted"  # others are unaffected
    c.block(c.tx("set_policy", "alice", policy(version=2)))
    assert ask(c, "bob", "r4").status == "granted"


def test_revoke_and_narrow_the_policy_in_one_transaction(c):
    c.block(c.tx("set_policy", "alice", policy()))
    standing(c)
    gid = ask(c, "bob", "r1").grant_id
    narrowed = parse_policy(AUTO.format(version=2, approval="auto", emergency="").replace(
        'when role == "doctor"', 'when role == "doctor" and not id == "bob"')).to_msgpack()
    stale = parse_policy(AUTO.format(version=1, approval="patient", emergency="")).to_msgpack()
    assert c.block(c.tx("revoke_grant", "alice", {"grant_id": gid, "reason": "x", "policy": stale})).marks == (
        "bad_state",)  # the version must increase: nothing happens
    assert not c.ledger.grant(gid).revoked
    assert c.block(c.tx("revoke_grant", "alice", {"grant_id": gid, "reason": "x", "policy": narrowed})).marks == (
        "ok",)
    assert c.ledger.grant(gid).revoked and c.ledger.policy("alice").version == 2
    assert ask(c, "bob", "r2").status == "denied"
    audit = c.ledger.audit("alice")[-2]
    assert audit["event"] == "revoke_grant" and audit["version"] == 2


def test_a_record_scoped_grant_covers_its_record_only(c):
    c.block(c.tx("set_policy", "alice", policy(approval="patient")))
    ask(c, "bob", "r1")
    body = {**c.grant_body("g1", "r1"), "scope": "record"}
    assert c.block(c.tx("grant", "alice", {**body, "scope": "everything"})).marks == ("malformed",)
    assert c.block(c.tx("grant", "alice", body)).marks == ("ok",)
    c.ledger.check_reencryption("g1", "bob", "alice", "rec-1", T0 + 1)
    with pytest.raises(ValidationError, match="covers record rec-1 only"):
        c.ledger.check_reencryption("g1", "bob", "alice", "rec-2", T0 + 1)


def _officer(c, name, org="org-b", peer="p3", officer=True):
    cert = c.cert(name, org, {"role": "nurse", "officer": officer}, peer=peer)
    assert c.block(c.tx("register", peer, register_body(cert.to_dict()))).marks == ("ok",)


def _cosign(c, officer, bg_id="bg1", doctor="bob", record_id="rec-1", reason="unconscious, ER"):
    return ecdsa.sign(c.keys[officer], BREAK_GLASS_TAG, break_glass_message(bg_id, doctor, "alice", record_id,
                                                                            reason))


def _break(c, cosigners, bg_id="bg1", doctor="bob", record_id="rec-1", reason="unconscious, ER"):
    return c.block(c.tx("break_glass", doctor, {"break_glass_id": bg_id, "patient": "alice",
                                                "record_id": record_id, "reason": reason,
                                                "cosigners": cosigners})).marks[0]


def test_break_glass_needs_the_clause_the_parts_and_enough_officers_of_the_doctors_hospital(c):
    _officer(c, "olga")
    _officer(c, "oscar")
    _officer(c, "otto", org="org-a", peer="p1")
    _officer(c, "nina", officer=False)
    c.block(c.tx("set_policy", "alice", policy(approval="patient")))
    two = {"olga": _cosign(c, "olga"), "oscar": _cosign(c, "oscar")}
    assert _break(c, two) == "not_allowed"  # no emergency clause
    c.block(c.tx("set_policy", "alice", policy(version=2, approval="patient",
                                               emergency="emergency roles doctor cosign 2 window 3600")))
    assert _break(c, two) == "not_found"  # no parts deposited for the label
    standing(c, mode="emergency")
    assert _break(c, {"olga": two["olga"]}) == "not_allowed"  # too few
    assert _break(c, {"olga": two["olga"], "otto": _cosign(c, "otto")}) == "forbidden"  # another hospital's
    assert _break(c, {"olga": two["olga"], "nina": _cosign(c, "nina")}) == "forbidden"  # not an officer
    assert _break(c, {"olga": two["olga"], "oscar": two["olga"]}) == "bad_signature"
    assert _break(c, {**two}, reason="another reason") == "bad_signature"  # they co-signed another reason
    assert _break(c, two, doctor="eve") == "forbidden"  # a patient's role may not invoke it
    assert _break(c, two) == "ok"
    assert _break(c, two) == "duplicate"
    entry = BreakGlassEntry.from_state(c.ledger.get("breakglass/bg1"))
    assert entry.cosigners == ("olga", "oscar") and entry.expires_at == T0 + 3600
    gid = break_glass_grant_id("bg1")
    assert entry.grant_id == gid
    # served although the policy asks the patient, for the window only
    c.ledger.check_reencryption(gid, "bob", "alice", "rec-2", T0 + 10)
    with pytest.raises(ValidationError) as info:
        c.ledger.check_reencryption(gid, "bob", "alice", "rec-1", T0 + 3600)
    assert info.value.code == "bad_state"
    event = [e for e in c.ledger.audit("alice") if e["event"] == "break_glass"][0]
    assert event["emergency"] is True and event["reason"] == "unconscious, ER" and event["doctor"] == "bob"
    assert c.block(c.tx("access", "p1", {"grant_id": gid, "request_id": "bg1", "record_id": "rec-1",
                                         "doctor": "bob", "index": 1})).marks == ("ok",)
    assert c.ledger.audit("alice")[-1]["emergency"] is True


def test_rotation_epochs_scope_grants_delegations_and_reseals(c):
    c.block(c.tx("set_policy", "alice", policy()))
    assert standing(c) == "ok"  # epoch 0
    gid = ask(c, "bob", "r1").grant_id
    assert c.ledger.grant(gid).epoch is None  # epoch 0
    # a re-seal: same record, later epoch, new blob and capsule
    body = {**c.store_body("rec-1"), "epoch": 1}
    assert c.block(c.tx("reseal", "alice", {**body, "label": "labs"})).marks == ("malformed",)  # keeps its label
    assert c.block(c.tx("reseal", "alice", {k: v for k, v in body.items() if k != "epoch"})).marks == (
        "malformed",)
    assert c.block(c.tx("reseal", "alice", {**body, "record_id": "nope"})).marks == ("not_found",)
    assert c.block(c.tx("reseal", "bob", body)).marks == ("forbidden",)
    assert c.block(c.tx("reseal", "alice", {**body, "epoch": 2**32})).marks == ("malformed",)
    assert c.block(c.tx("reseal", "alice", body)).marks == ("ok",)
    assert c.block(c.tx("reseal", "alice", body)).marks == ("bad_state",)  # not a later epoch
    rec = c.ledger.record("alice", "rec-1")
    assert rec.key_epoch == 1 and rec.store_transaction().type == "reseal"
    # the old grant (epoch 0) no longer serves the re-sealed record, still the others
    with pytest.raises(ValidationError, match="epoch 1"):
        c.ledger.check_reencryption(gid, "bob", "alice", "rec-1", T0 + 1)
    c.ledger.check_reencryption(gid, "bob", "alice", "rec-2", T0 + 1)
    # the epoch-0 delegation does not grant epoch-1 records; an epoch-1 delegation does
    assert ask(c, "carol", "r2").status == "pending"
    assert c.block(c.tx("standing", "alice", {"delegation_id": "d1e1", "label": "cardiology", "mode": "auto",
                                              "threshold": 2, "parts": PARTS, "epoch": 1})).marks == ("ok",)
    req = ask(c, "carol", "r3")
    assert req.status == "granted" and c.ledger.grant(req.grant_id).epoch == 1
    c.ledger.check_reencryption(req.grant_id, "carol", "alice", "rec-1", T0 + 1)
    assert DelegationEntry.from_state(c.ledger.get("delegation/d1e1")).epoch == 1
    assert c.ledger.current_delegation("alice", "cardiology", 0) == "d1"  # each epoch its own
    # a store under a later epoch straight away (what the patient does after a revocation)
    assert c.block(c.tx("store", "alice", {**c.store_body("rec-9"), "epoch": 2})).marks == ("ok",)
    assert c.ledger.record("alice", "rec-9").key_epoch == 2


def test_revoking_one_standing_grant_stops_the_doctors_other_standing_grants_too(c):
    """Attack: a doctor asks twice while the policy pre-authorizes it, so the ledger makes it
    two standing grants; the patient revokes the one it sees. The other must not keep serving
    the label under the policy version the revocation happened under."""
    c.block(c.tx("set_policy", "alice", policy()))
    standing(c)
    first, second = ask(c, "bob", "r1").grant_id, ask(c, "bob", "r2").grant_id
    other = ask(c, "carol", "r3").grant_id
    c.block(c.tx("revoke_grant", "alice", {"grant_id": first, "reason": "done"}))
    with pytest.raises(ValidationError) as info:
        c.ledger.check_reencryption(second, "bob", "alice", "rec-1", T0 + 1)
    assert info.value.code == "not_allowed"
    c.ledger.check_reencryption(other, "carol", "alice", "rec-1", T0 + 1)  # others are unaffected
    # a new policy version lifts the hold, for new requests and standing grants alike
    c.block(c.tx("set_policy", "alice", policy(version=2)))
    c.ledger.check_reencryption(second, "bob", "alice", "rec-1", T0 + 1)


def test_a_request_naming_another_operation_does_not_read_around_a_deny_read_rule(c):
    """Attack: the patient denies bob reading cardiology but allows doctors any operation on
    everything. Bob asks for operation "share": the deny-read rule does not match, the ledger
    grants from the standing delegation, and a grant only ever serves re-encryptions, which are
    reads. The peers must decide the re-encryption as the read it is."""
    text = """
policy "ops" version 1
default deny
rule no-bob:
  deny read on label "cardiology" when id == "bob"
rule doctors:
  allow any on all when role == "doctor" approval auto
"""
    c.block(c.tx("set_policy", "alice", {"policy": parse_policy(text).to_msgpack()}))
    standing(c)
    mark = c.block(c.tx("access_request", "bob", {"request_id": "r1", "patient": "alice", "record_id": "rec-1",
                                                  "operation": "share", "purpose": None})).marks[0]
    assert mark == "ok"
    grant_id = c.ledger.request("r1").grant_id
    with pytest.raises(ValidationError) as info:
        c.ledger.check_reencryption(grant_id, "bob", "alice", "rec-1", T0 + 1)
    assert info.value.code == "not_allowed" and "no-bob" in info.value.message
    assert ask(c, "carol", "r2").status == "granted"
    c.ledger.check_reencryption(c.ledger.request("r2").grant_id, "carol", "alice", "rec-1", T0 + 1)


def test_a_peer_cannot_log_an_access_its_grant_does_not_cover(c):
    """Attack: a hostile hospital's peer holding a share of a grant writes `access` events
    into the patient's audit trail for records the grant never covered (another label, a
    record outside a record-scoped grant, one that does not exist) or under another request,
    framing the doctor. The ledger keeps only accesses a re-encryption could have served."""
    c.block(c.tx("set_policy", "alice", policy(approval="patient")))
    ask(c, "bob", "r1")
    assert c.block(c.tx("grant", "alice", {**c.grant_body("g1", "r1"), "scope": "record"})).marks == ("ok",)
    index = c.ledger.config.peers[0].index
    assert c.ledger.config.peers[0].id == "p1"

    def log(record_id, request_id="r1"):
        return c.block(c.tx("access", "p1", {"grant_id": "g1", "request_id": request_id, "record_id": record_id,
                                             "doctor": "bob", "index": index})).marks[0]

    assert log("rec-3") == "forbidden"  # another label
    assert log("rec-2") == "forbidden"  # outside the record the patient approved
    assert log("nope") == "not_found"
    assert log("rec-1", request_id="r-other") == "forbidden"
    assert log("rec-1") == "ok"
    assert [e["record_id"] for e in c.ledger.audit("alice") if e["event"] == "access"] == ["rec-1"]


def test_a_patient_cannot_take_the_id_of_a_grant_the_ledger_will_make(c):
    """Attack: a patient (with a peer that saw a doctor's request before forwarding it)
    commits its own grant under the id the ledger derives for that request
    (standing_grant_id) or for a break-glass (break_glass_grant_id). The ledger then
    overwrote that grant with the victim patient's, and peers that cached the attacker's
    key share under the id served it for the victim's records: garbage shares, with honest
    peers named faulty. The ledger's own grant ids are not the patients' to choose."""
    c.block(c.tx("set_policy", "alice", policy(approval="patient")))
    ask(c, "bob", "r1")
    for taken in (standing_grant_id("r9"), break_glass_grant_id("bg9")):
        assert c.block(c.tx("grant", "alice", c.grant_body(taken, "r1"))).marks == ("malformed",)
        assert c.ledger.grant(taken) is None
    assert c.block(c.tx("grant", "alice", c.grant_body("grant-1", "r1"))).marks == ("ok",)
