"""Rotation and consent scope (issue 16). Rotation: after a revocation new records go under a fresh label key, and
``PatientAgent.rotate`` re-seals the label's records; a revoked doctor holding its old
key shares, even with t colluding peers' help, cannot open them.

Against the protocol double (agents.testing.double), which keeps each peer's opened
key shares in ``fake.shares``: the test plays the colluding peers with them. Consent scope: an approval grants what the prompt showed.
"""

from __future__ import annotations

import contextlib

import pytest
import trio

from agents.doctor import DoctorAgent
from agents.errors import GrantRevoked
from agents.patient import PatientAgent
from agents.testing.consortium import CARDIOLOGY_POLICY as POLICY
from core import pre
from core import record as recordmod
from core.curve import G1
from core.errors import CoreError
from tests.agents.test_patient_doctor import CARDIO, world  # noqa: F401 (fixture)


def _open_with(fake, shares, doctor, patient, record_id, blob):
    """What a revoked doctor with these old key shares (t colluding peers re-encrypting) gets."""
    rec = fake.ledger.record(patient, record_id)
    capsule = G1.from_bytes(rec.capsule)
    reencrypted = [pre.reencrypt(capsule, s) for s in shares]
    provider = recordmod.ThresholdKeyProvider(reencrypted, len(shares), doctor.keys.receive.secret)
    return recordmod.open_record(blob, provider)[1]


async def test_a_revoked_doctors_old_shares_do_not_open_records_stored_or_resealed_after(world):  # noqa: F811
    async def approve(info):
        return "label"

    with trio.fail_after(60):
        async with contextlib.AsyncExitStack() as stack:
            alice, heart = await world.patient_and_cardiologist(stack, approve=approve)
            other = await world.registered(stack, DoctorAgent, "dr-other", "hospital-a", CARDIO)
            old_id = await alice.store(b"old ECG", label="cardiology", media_type="text/plain")
            await alice.set_policy(POLICY, standing=())  # the patient makes each doctor's shares
            assert await heart.read("alice", old_id) == b"old ECG"
            grant_id = heart.cached_grant("alice", "cardiology")["grant_id"]
            fake = world.fake
            old_shares = [share for (pid, gid), share in sorted(fake.shares.items()) if gid == grant_id][:2]
            old_blob = await alice.storage.get(fake.ledger.record("alice", old_id).cid)
            # the colluders' shares work on what existed (the test can fail)
            assert _open_with(fake, old_shares, heart, "alice", old_id, old_blob) == b"old ECG"

            await alice.revoke(grant_id, "left the team")
            assert alice.epoch("cardiology") == 1  # new records go under a fresh key
            with pytest.raises(GrantRevoked):
                await heart.read("alice", old_id)
            new_id = await alice.store(b"new ECG", label="cardiology", media_type="text/plain")
            assert fake.ledger.record("alice", new_id).key_epoch == 1
            new_blob = await alice.storage.get(fake.ledger.record("alice", new_id).cid)
            with pytest.raises(CoreError):
                _open_with(fake, old_shares, heart, "alice", new_id, new_blob)

            rotated = await alice.rotate("cardiology")
            assert (rotated["label"], rotated["epoch"]) == ("cardiology", 2)
            assert sorted(rotated["resealed"]) == sorted([old_id, new_id])
            for record_id, data in ((old_id, b"old ECG"), (new_id, b"new ECG")):
                rec = fake.ledger.record("alice", record_id)
                assert rec.key_epoch == 2 and rec.store_transaction().type == "reseal"
                blob = await alice.storage.get(rec.cid)
                with pytest.raises(CoreError):
                    _open_with(fake, old_shares, heart, "alice", record_id, blob)
                assert await alice.read(record_id) == data  # the owner's path
                assert await other.read("alice", record_id) == data  # other doctors are served
            assert (await alice.rotate("cardiology"))["epoch"] == 3  # every record again, under epoch 3


async def test_rotation_keeps_standing_service_on_the_new_epoch_and_withdraws_the_old(world):  # noqa: F811
    with trio.fail_after(60):
        async with contextlib.AsyncExitStack() as stack:
            alice, heart = await world.patient_and_cardiologist(stack)
            other = await world.registered(stack, DoctorAgent, "dr-other", "hospital-a", CARDIO)
            old_id = await alice.store(b"old ECG", label="cardiology", media_type="text/plain")
            assert await alice.set_policy(POLICY) == {"cardiology": "auto"}
            assert await heart.read("alice", old_id) == b"old ECG"
            ledger = world.fake.ledger
            await alice.revoke(heart.cached_grant("alice", "cardiology")["grant_id"])
            # the revocation moved the label to epoch 1 and delegated that epoch too
            assert ledger.current_delegation("alice", "cardiology", 1) is not None
            new_id = await alice.store(b"new ECG", label="cardiology", media_type="text/plain")
            assert await other.read("alice", new_id) == b"new ECG"
            assert await other.read("alice", old_id) == b"old ECG"  # epoch 0: its own delegation
            assert alice.grants == {}  # every grant came from the ledger, none from the patient
            await alice.rotate("cardiology")
            assert [ledger.current_delegation("alice", "cardiology", e) is not None for e in (0, 1, 2)] == [
                False, False, True]
            for record_id, data in ((old_id, b"old ECG"), (new_id, b"new ECG")):
                assert await other.read("alice", record_id) == data


async def test_an_approval_covers_what_the_prompt_showed(world):  # noqa: F811
    """Consent scope: approving a prompt for one record grants that record; answering
    "label" grants the label with its future records; the peers check it on every read."""
    from agents.testing.consortium import SHARING_POLICY

    prompts, answer = [], [True]

    async def approve(info):
        prompts.append(info)
        return answer[0]

    gp_attrs = {"role": "doctor", "department": "general"}  # 'approval patient' in the sharing policy
    with trio.fail_after(60):
        async with contextlib.AsyncExitStack() as stack:
            alice = await world.registered(stack, PatientAgent, "alice", "hospital-a", {"role": "patient"},
                                           approve=approve)
            gp = await world.registered(stack, DoctorAgent, "dr-gp", "hospital-a", gp_attrs)
            first = await alice.store(b"lab 1", label="labs", media_type="text/plain")
            second = await alice.store(b"lab 2", label="labs", media_type="text/plain")
            await alice.set_policy(SHARING_POLICY, standing=())
            assert await gp.read("alice", first) == b"lab 1"
            assert prompts[-1]["scope"] == "record" and prompts[-1]["record_id"] == first
            grant = gp.cached_grant("alice", "labs")
            assert world.fake.ledger.grant(grant["grant_id"]).scope == "record"
            # the peers refuse the record grant for the other record, even to a doctor that tries
            from agents.errors import AgentError

            with pytest.raises(AgentError, match="access.forbidden"):
                await gp._collect(grant, "alice", second, world.fake.ledger.get(f"record/alice/{second}"))
            # the agent knows it: a new prompt for the second record
            assert await gp.read("alice", second) == b"lab 2" and len(prompts) == 2
            assert prompts[-1]["record_id"] == second
            answer[0] = "label"
            third = await alice.store(b"lab 3", label="labs", media_type="text/plain")
            assert await gp.read("alice", third) == b"lab 3" and len(prompts) == 3
            fourth = await alice.store(b"lab 4", label="labs", media_type="text/plain")  # a future record
            assert await gp.read("alice", fourth) == b"lab 4" and len(prompts) == 3  # no new prompt
