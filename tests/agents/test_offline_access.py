"""Issue 16 against the real swarm: access while the patient's process is stopped.

The patient stores, sets its policy (which deposits its standing parts) and
closes; doctors registered afterwards read under the policy with no message to
the patient; an emergency physician breaks the glass with officers' co-signatures;
the patient, reopened, sees all of it in one call (``while_away``).
"""

from __future__ import annotations

import contextlib
import time

import pytest
import trio

from agents.doctor import DoctorAgent, cosign_break_glass
from agents.errors import GrantRevoked, PolicyDenied, RequestRejected, TransactionRejected
from agents.patient import PatientAgent
from agents.testing.consortium import SHARING_POLICY as POLICY
from tests.agents.test_patient_doctor_swarm import GP, HEART, PATIENT, users  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

ER = ("dr-er", "hospital-b", {"role": "doctor", "department": "emergency"})
OLGA = ("olga", "hospital-b", {"role": "nurse", "officer": True})
OSCAR = ("oscar", "hospital-b", {"role": "nurse", "officer": True})
OTTO = ("otto", "hospital-a", {"role": "nurse", "officer": True})  # an officer of another hospital
EMERGENCY = POLICY.replace("version 1", "version 2").replace(
    "default deny", "default deny\nemergency roles doctor cosign 2 window 8")  # room for 2 reads on a busy machine
ECG = b'{"resourceType": "Observation", "code": "ECG", "status": "final"}'


async def _patient_sets_policy_and_leaves(users, policy=POLICY):  # noqa: F811
    async with contextlib.AsyncExitStack() as stack:
        alice = await users.open(stack, PatientAgent, PATIENT)
        rid = await alice.store(ECG, label="cardiology", media_type="application/fhir+json")
        labs = await alice.store(b"HbA1c 5.9 %", label="labs", media_type="text/plain")
        deposited = await alice.set_policy(policy)
        return rid, labs, deposited


async def _away(alice, key):
    """``while_away()`` once the peers' access transactions (logged just after serving) are in."""
    with trio.move_on_after(60):
        while not (await alice.while_away(0))[key]:
            await trio.sleep(0.1)
    return await alice.while_away()


async def test_a_new_doctor_reads_while_the_patient_is_offline(users):  # noqa: F811
    with trio.fail_after(120):
        rid, labs, deposited = await _patient_sets_policy_and_leaves(users)
        assert deposited == {"cardiology": "auto"}  # the label its approval-auto rule names
        async with contextlib.AsyncExitStack() as stack:
            # registered after the patient left: nobody could have made it a key share
            heart = await users.open(stack, DoctorAgent, HEART)
            assert await heart.read("alice", rid) == ECG  # byte-identical, patient offline
            assert heart.cached_grant("alice", "cardiology")["grant_id"].startswith("sg-")
            with pytest.raises(PolicyDenied):
                await heart.read("alice", labs)  # outside the policy
            gp = await users.open(stack, DoctorAgent, GP)
            with pytest.raises(Exception) as info:  # approval patient: the patient must answer, and cannot
                await gp.read("alice", labs, purpose="treatment")
            assert "did not answer" in str(info.value) or "no route" in str(info.value)
        async with contextlib.AsyncExitStack() as stack:  # the patient comes back
            alice = await users.open(stack, PatientAgent, PATIENT, register=False)
            away = await _away(alice, "standing_reads")
            assert [(e["actor"], e["record_id"]) for e in away["standing_grants"]] == [("dr-heart", rid)]
            assert {e["peer"] for e in away["standing_reads"]} and all(
                e["doctor"] == "dr-heart" for e in away["standing_reads"])
            assert [(e["actor"], e["record_id"]) for e in away["denied"]] == [("dr-heart", labs)]
            assert [(e["actor"], e["record_id"]) for e in away["waiting"]] == [("dr-gp", labs)]
            assert (await alice.while_away())["standing_reads"] == []  # seen: the next call starts after


async def test_break_glass_needs_enough_officers_and_ends_with_its_window(users):  # noqa: F811
    with trio.fail_after(120):
        rid, labs, deposited = await _patient_sets_policy_and_leaves(users, EMERGENCY)
        assert deposited == {"cardiology": "auto", "labs": "emergency"}
        async with contextlib.AsyncExitStack() as stack:
            er = await users.open(stack, DoctorAgent, ER)
            olga, oscar, otto = [await users.open(stack, DoctorAgent, who) for who in (OLGA, OSCAR, OTTO)]
            with pytest.raises(PolicyDenied):
                await er.read("alice", labs)  # the policy does not name emergency doctors
            reason = "unconscious in the ER, suspected diabetic coma"

            def sign(officer, bg_id):
                return cosign_break_glass(officer.keys.ecdsa_private, bg_id, "dr-er", "alice", labs, reason)

            with pytest.raises(TransactionRejected) as info:  # one officer: too few
                await er.break_glass("alice", labs, reason, {"olga": sign(olga, "bg-1")}, break_glass_id="bg-1")
            assert info.value.reason == "not_allowed"
            with pytest.raises(TransactionRejected) as info:  # an officer of another hospital does not count
                await er.break_glass("alice", labs, reason, {"olga": sign(olga, "bg-2"), "otto": sign(otto, "bg-2")},
                                     break_glass_id="bg-2")
            assert info.value.reason == "forbidden"
            plain = await er.break_glass("alice", labs, reason,
                                         {"olga": sign(olga, "bg-3"), "oscar": sign(oscar, "bg-3")},
                                         break_glass_id="bg-3")
            assert plain == b"HbA1c 5.9 %"
            assert await er.read("alice", labs) == plain  # within the window
            held = er.cached_grant("alice", "labs")
            bg_grant = held["grant_id"]
            await trio.sleep(max(0.0, held["expires_at"] - time.time()) + 0.5)  # the window (8 s) is over
            with pytest.raises(PolicyDenied):  # the doctor knows: it asks the policy, which says no
                await er.read("alice", labs)
            # and the peers refuse the grant even to a doctor that thinks it still holds it
            er.grant_cache["alice\x00labs"] = {"patient": "alice", "label": "labs", "grant_id": bg_grant,
                                                "request_id": "bg-3", "threshold": 2, "expires_at": 2**40,
                                                "scope": "label", "record_id": labs}
            with pytest.raises(GrantRevoked):
                await er.read("alice", labs)
        async with contextlib.AsyncExitStack() as stack:
            alice = await users.open(stack, PatientAgent, PATIENT, register=False)
            away = await _away(alice, "emergency_reads")
            [event] = away["emergencies"]
            assert (event["doctor"], event["record_id"], event["reason"]) == ("dr-er", labs, reason)
            assert event["cosigners"] == ["olga", "oscar"] and event["emergency"] is True
            assert away["emergency_reads"] and all(e["record_id"] == labs for e in away["emergency_reads"])


async def test_revocation_sticks_until_the_policy_changes(users):  # noqa: F811
    with trio.fail_after(120):
        async with contextlib.AsyncExitStack() as stack:
            alice = await users.open(stack, PatientAgent, PATIENT)  # online, approving nothing
            rid = await alice.store(ECG, label="cardiology", media_type="application/fhir+json")
            await alice.set_policy(POLICY)
            heart = await users.open(stack, DoctorAgent, HEART)
            assert await heart.read("alice", rid) == ECG
            grant_id = heart.cached_grant("alice", "cardiology")["grant_id"]
            outcome = await alice.revoke(grant_id, "second opinion done")
            assert outcome == {"still_allowed": True}  # the CLI warns and offers --narrow
            with pytest.raises(GrantRevoked):
                await heart.read("alice", rid)
            # the policy still allows it, but the ledger no longer grants by itself: the patient decides
            with pytest.raises(RequestRejected):
                await heart.read("alice", rid)
            # the stale version cannot come back over the committed one
            with pytest.raises(TransactionRejected) as info:
                await alice.set_policy(POLICY.replace("approval auto", "approval patient"))
            assert info.value.reason == "bad_state"
            # a new version re-opens the door
            await alice.set_policy(POLICY.replace("version 1", "version 2"))
            assert await heart.read("alice", rid) == ECG
            grant_id = heart.cached_grant("alice", "cardiology")["grant_id"]
            outcome = await alice.revoke(grant_id, "moved away", narrow=True)
            assert outcome == {"still_allowed": False}
            with pytest.raises(GrantRevoked):
                await heart.read("alice", rid)
            with pytest.raises(PolicyDenied):
                await heart.read("alice", rid)


async def test_standing_parts_are_taken_from_their_patient_only_and_must_match(users):  # noqa: F811
    import bus
    from core.protocol import PeerDeliverShare, codes

    mallory_who = ("mallory", "hospital-b", {"role": "patient"})
    with trio.fail_after(60):
        async with contextlib.AsyncExitStack() as stack:
            alice = await users.open(stack, PatientAgent, PATIENT)
            mallory = await users.open(stack, PatientAgent, mallory_who)
            await alice.store(ECG, label="cardiology", media_type="application/fhir+json")
            await alice.set_policy(POLICY)
            delegation_id = alice.standing["cardiology"]["delegation_id"]
            peer = users.swarm.manifest.peers[0]
            index = alice.client.peer_info[peer].index
            body = PeerDeliverShare(delegation_id, index, b"\x00" * 80).to_wire()
            with pytest.raises(bus.RemoteError) as info:  # someone else's delegation
                await mallory.endpoint.request(peer, PeerDeliverShare.kind, body)
            assert info.value.code == codes.SHARE_FORBIDDEN
            with pytest.raises(bus.RemoteError) as info:  # not the part the ledger committed
                await alice.endpoint.request(peer, PeerDeliverShare.kind, body)
            assert info.value.code == codes.SHARE_MISMATCH
