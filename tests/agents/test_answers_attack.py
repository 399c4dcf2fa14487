"""Leaner ledger answers on the access path, against the real in-process swarm (orderer,
4 peers with threshold 2, 3 storage nodes):

* a doctor that verified a record's store transaction names it (``PeerQuery.held``) and
  gets the record without it while it is the record's; a re-sealed record comes whole;
* the patient reads the request it is asked to grant with ``view: "row"`` and checks
  it as before (another doctor's request is still unknown to it);
* the doctor's own commit notice carries its view of the decision: the outcome of an
  allowed, a patient-approved and a denied read is what it was, and ``request()`` still
  returns the whole decision;
* hostile ``held`` and ``view`` fields (bad types, sizes, a digest of another record,
  a doctor the policy does not show the record) are refused or answered in full, while
  a legitimate doctor keeps reading.
"""

from __future__ import annotations

import hashlib

import pytest
import trio

import bus
from agents.doctor import DoctorAgent
from agents.errors import PolicyDenied
from agents.patient import PatientAgent
from agents.testing.consortium import SHARING_POLICY as POLICY
from core.protocol import HELD_SIZE, PatientAccessRequest, PeerQuery, PeerQueryReply, answer_from_row, codes

from tests.agents.test_commit_notices import _swarm_and_users  # (its Users: agents on the swarm's node)

pytestmark = pytest.mark.slow

PATIENT = ("alice", "hospital-a", {"role": "patient"})
HEART = ("dr-heart", "hospital-b", {"role": "doctor", "department": "cardiology"})
GP = ("dr-gp", "hospital-a", {"role": "doctor", "department": "general"})
SKIN = ("dr-skin", "hospital-b", {"role": "doctor", "department": "dermatology"})


def _record_exchanges(client) -> list:
    """Wrap ``client.peer_request``: record each (kind, body, raw reply) it exchanges."""
    seen: list = []
    inner = client.peer_request

    async def recording(peer, kind, body, *, timeout=None):
        reply = await inner(peer, kind, body, timeout=timeout)
        seen.append((kind, body, reply))
        return reply

    client.peer_request = recording
    return seen


def _queries(seen: list, what: str) -> list:
    """The (query, raw reply) of the recorded ``peer.query`` of ``what``."""
    return [(PeerQuery.from_wire(body), reply) for kind, body, reply in seen
            if kind == PeerQuery.kind and PeerQuery.from_wire(body).what == what]


async def _approve(info):
    return "label"


async def test_a_doctor_holding_the_store_transaction_gets_the_record_without_it(tmp_path):
    with trio.fail_after(180):
        async with _swarm_and_users(tmp_path) as (swarm, users):
            alice = await users.open(PatientAgent, PATIENT, approve=_approve)
            heart = await users.open(DoctorAgent, HEART)
            await alice.set_policy(POLICY, standing=())
            rid = await alice.store(b"ECG: sinus rhythm", label="cardiology", media_type="text/plain")
            seen = _record_exchanges(heart.client)
            assert await heart.read("alice", rid) == b"ECG: sinus rhythm"
            ((first, reply),) = _queries(seen, "record")
            assert first.held is None and "tx" in reply
            tx1 = reply["tx"]
            seen.clear()
            # the same record again: the peer answers "held", the doctor checks the tx it holds
            assert await heart.read("alice", rid) == b"ECG: sinus rhythm"
            ((again, reply),) = _queries(seen, "record")
            assert again.held == hashlib.sha256(tx1).digest()
            assert reply[PeerQueryReply.HELD] is True and "tx" not in reply
            # the record is re-sealed (a new store transaction, a new epoch): the whole entry comes
            await alice.rotate("cardiology")
            seen.clear()
            assert await heart.read("alice", rid) == b"ECG: sinus rhythm"
            (changed, reply), *_ = _queries(seen, "record")
            assert changed.held == hashlib.sha256(tx1).digest()
            assert PeerQueryReply.HELD not in reply and reply["tx"] != tx1
            tx2 = reply["tx"]
            seen.clear()
            assert await heart.read("alice", rid) == b"ECG: sinus rhythm"
            ((last, reply),) = _queries(seen, "record")
            assert last.held == hashlib.sha256(tx2).digest() and reply[PeerQueryReply.HELD] is True


async def test_the_patient_reads_its_view_of_the_request_and_checks_it_as_before(tmp_path):
    with trio.fail_after(180):
        async with _swarm_and_users(tmp_path) as (swarm, users):
            alice = await users.open(PatientAgent, PATIENT, approve=_approve)
            gp = await users.open(DoctorAgent, GP)
            heart = await users.open(DoctorAgent, HEART)
            await alice.set_policy(POLICY, standing=())
            rid = await alice.store(b"blood panel", label="labs", media_type="text/plain")
            seen = _record_exchanges(alice.client)
            # approval patient: the doctor asks alice, who reads the request's view and grants
            assert await gp.read("alice", rid) == b"blood panel"
            ((query, reply),) = _queries(seen, "request")
            assert query.view == "row" and isinstance(query.min_height, int)
            assert reply[:3] == ["dr-gp", "alice", rid]  # (the answer view's fields in order)
            reply = answer_from_row(reply)
            assert reply["doctor"] == "dr-gp" and reply["patient"] == "alice" and reply["record_id"] == rid
            assert reply["decision"] == {"effect": "allow", "approval": "patient", "rule": "gp"}
            assert not {"time", "height"} & set(reply)
            # the whole entry is one query away (and what request() returns)
            full = await alice.client.query(PeerQuery("request", request_id=query.request_id))
            assert full["decision"]["policy"] == "sharing" and full["decision"]["reason"]
            # another doctor's request is still not the asker's: the patient refuses it
            decision = await heart.request("alice", rid)
            assert decision["effect"] == "deny"  # heart may not read labs
            with pytest.raises(bus.RemoteError) as info:
                await gp.endpoint.request("alice", PatientAccessRequest.kind,
                                          PatientAccessRequest(decision["request_id"], decision["height"]).to_wire(),
                                          timeout=30)
            assert info.value.code == codes.REQUEST_UNKNOWN


async def test_a_doctors_outcomes_and_decisions_are_as_before(tmp_path):
    with trio.fail_after(180):
        async with _swarm_and_users(tmp_path) as (swarm, users):
            alice = await users.open(PatientAgent, PATIENT, approve=_approve)
            heart = await users.open(DoctorAgent, HEART)
            skin = await users.open(DoctorAgent, SKIN)
            await alice.set_policy(POLICY, standing=())
            rid = await alice.store(b"ECG", label="cardiology", media_type="text/plain")
            # the public request() returns the whole decision, as before
            decision = await heart.request("alice", rid, purpose="treatment")
            assert decision["status"] == "pending" and decision["effect"] == "allow"
            assert decision["approval"] == "auto" and decision["rule"] == "cardio"
            assert decision["policy"] == "sharing" and decision["version"] == 1
            assert "cardio" in decision["reason"] and isinstance(decision["height"], int)
            # a read's own request uses the notice's view: the same outcome
            assert await heart.read("alice", rid) == b"ECG"
            # a denied read: PolicyDenied with the ledger's reason (the view keeps it for a refusal)
            whole = await skin.request("alice", rid)
            with pytest.raises(PolicyDenied) as info:
                await skin.read("alice", rid)
            assert whole["effect"] == "deny" and whole["reason"]
            assert info.value.reason == whole["reason"] and info.value.rule == str(whole.get("rule", ""))
            for who in (heart, skin, alice):
                assert who.client.commit_stats["fallbacks"] == 0


async def test_hostile_held_and_view_fields_are_refused_or_answered_whole(tmp_path):
    with trio.fail_after(180):
        async with _swarm_and_users(tmp_path) as (swarm, users):
            alice = await users.open(PatientAgent, PATIENT, approve=_approve)
            heart = await users.open(DoctorAgent, HEART)
            skin = await users.open(DoctorAgent, SKIN)
            await alice.set_policy(POLICY, standing=())
            r1 = await alice.store(b"ECG 1", label="cardiology", media_type="text/plain")
            r2 = await alice.store(b"ECG 2", label="cardiology", media_type="text/plain")
            assert await heart.read("alice", r1) == b"ECG 1"
            peer = swarm.manifest.peers[0]
            tx1 = heart._held_txs[("alice", r1)]
            digest1 = hashlib.sha256(tx1).digest()

            async def ask(who, body):
                return await who.endpoint.request(peer, PeerQuery.kind, body, timeout=30)

            # a digest of another record's transaction, or of nothing: the whole entry
            other = await ask(heart, ["record", "alice", r2, None, None, digest1])
            assert PeerQueryReply.HELD not in other and PeerQueryReply.from_wire(other).value["tx"] != tx1
            made_up = await ask(heart, ["record", "alice", r1, None, None, b"\x00" * HELD_SIZE])
            assert PeerQueryReply.from_wire(made_up).value["tx"] == tx1
            # a doctor the policy does not show the record learns nothing from the right digest
            with pytest.raises(bus.RemoteError) as info:
                await ask(skin, ["record", "alice", r1, None, None, digest1])
            assert info.value.code == codes.FORBIDDEN
            # bad types and sizes, on every form: bad-request before anything is read
            for body in (["record", "alice", r1, None, None, "x" * HELD_SIZE],
                         ["record", "alice", r1, None, None, 7],
                         ["record", "alice", r1, None, None, [digest1]],
                         ["record", "alice", r1, None, None, digest1[:-1]],
                         ["record", "alice", r1, None, None, digest1 + b"\x00"],
                         ["record", "alice", r1, None, None, b"\x00" * (256 * 1024)],
                         ["cert", "alice", None, None, digest1],
                         ["record", "alice", r1, None, None, None, "answer"],
                         ["record", "alice", r1, None, None, None, "row"],
                         ["request", "q-none", None, None, None, "everything"],
                         ["request", "q-none", None, None, None, "a" * (64 * 1024)],
                         ["request", "q-none", None, None, None, 1],
                         {"what": "request", "request_id": "q-none", "view": ["answer"]}):
                with pytest.raises(bus.RemoteError) as info:
                    await ask(heart, body)
                assert info.value.code == codes.BAD_REQUEST, body
            # an unknown request id tells nothing with a view either
            assert await ask(heart, ["request", "q-none", None, None, None, "answer"]) is None
            assert await ask(heart, ["request", "q-none", None, None, None, "row"]) is None
            # the legitimate doctor keeps reading, with the transaction it holds
            assert await heart.read("alice", r1) == b"ECG 1"
            assert await heart.read("alice", r2) == b"ECG 2"
