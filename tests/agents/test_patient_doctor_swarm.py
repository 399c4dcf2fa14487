"""Patient and doctors against the real swarm: orderer, 4 peers (threshold 2), 3 storage nodes.

Everything runs in this process on the swarm's bus node (local delivery), with
the real peer and orderer agents (agents/peer.py, agents/orderer.py), SQLite
ledgers, storage nodes following the orderer's blocks, and the user agents of
agents/patient.py and agents/doctor.py. The flows mirror tests/test_patient_doctor.py
(which runs them against a protocol double).
"""

from __future__ import annotations

import contextlib
import pathlib

import pytest
import trio

from agents.client import UserConfig
from agents.doctor import DoctorAgent
from agents.errors import (
    AgentError,
    CertificateRevoked,
    GrantRevoked,
    PolicyDenied,
    RequestRejected,
)
from agents.patient import PatientAgent
from agents.testing.consortium import SHARING_POLICY as POLICY
from agents.testing.consortium import expect_not_enough_peers, user_config
from agents.swarm import Swarm, SwarmSpec

pytestmark = pytest.mark.slow  # ~35 s on the pure backend (the protocol-double tests still run there)

FHIR = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "fhir-r4"

PATIENT = ("alice", "hospital-a", {"role": "patient"})
HEART = ("dr-heart", "hospital-b", {"role": "doctor", "department": "cardiology"})
GP = ("dr-gp", "hospital-a", {"role": "doctor", "department": "general"})


def fhir_file() -> pathlib.Path:
    files = sorted((FHIR / "synthea-smart-r4").glob("*.json"))
    if not files:
        pytest.skip("shared FHIR data not present")
    return files[0]


class Users:
    def __init__(self, swarm: Swarm, tmp: pathlib.Path):
        self.swarm, self.tmp = swarm, tmp

    def config(self, subject, org, attributes, **kw) -> UserConfig:
        return user_config(self.swarm.manifest, self.tmp / "users" / subject, subject, org, attributes, **kw)

    async def open(self, stack, cls, who, *, register=True, **kw):
        subject, org, attributes = who
        timeout = kw.pop("request_timeout", 10.0)
        agent = await stack.enter_async_context(
            cls.open(self.config(subject, org, attributes, request_timeout=timeout), node=self.swarm.node, **kw))
        if register:
            await agent.register(self.swarm.token(subject, org, attributes, agent.enroll_id))
        return agent


@pytest.fixture
async def users(tmp_path):
    async with Swarm.open(SwarmSpec(data_dir=tmp_path / "swarm")) as swarm:
        yield Users(swarm, tmp_path)


async def test_end_to_end(users):
    path = fhir_file()
    approvals = []

    async def approve(info):
        approvals.append(info)
        return info["purpose"] == "treatment"

    with trio.fail_after(120):
        async with contextlib.AsyncExitStack() as stack:
            alice = await users.open(stack, PatientAgent, PATIENT, approve=approve)
            heart = await users.open(stack, DoctorAgent, HEART, request_timeout=3.0)
            gp = await users.open(stack, DoctorAgent, GP)
            rid = await alice.store(path, label="cardiology", media_type="application/fhir+json")
            await alice.store(b"HbA1c 5.9 %", label="labs", media_type="text/plain", record_id="labs-1")
            await alice.set_policy(POLICY, standing=())

            # store + read, byte-identical
            assert await heart.read("alice", rid) == path.read_bytes()
            # policy denial
            with pytest.raises(PolicyDenied) as info:
                await heart.read("alice", "labs-1")
            assert info.value.rule == "default"
            # patient rejection through the callback, then approval
            with pytest.raises(RequestRejected):
                await gp.read("alice", "labs-1", purpose="research")
            assert await gp.read("alice", "labs-1", purpose="treatment") == b"HbA1c 5.9 %"
            assert [a["purpose"] for a in approvals] == ["research", "treatment"]

            # revoke, then GrantRevoked (and no silent re-request)
            grant_id = next(g for g, v in alice.grants.items() if v["doctor"] == "dr-heart")
            await alice.revoke(grant_id)
            with pytest.raises(GrantRevoked):
                await heart.read("alice", rid)
            assert heart.cached_grant("alice", "cardiology") is None
            events = [e["event"] for e in await alice.audit()]
            while events.count("access") < 4:  # t = 2 shares logged per successful read, by the
                await trio.sleep(0.02)  # peers' next access batches (agents.peer._audit)
                events = [e["event"] for e in await alice.audit()]
            assert events.count("access_request") == 4 and events.count("revoke_grant") == 1

            # a fresh grant once the policy changed (a revoked doctor is not auto-granted under the
            # policy it was revoked under), then fewer than t peers up -> NotEnoughPeers, quickly
            await alice.set_policy(POLICY.replace("version 1", "version 2"), standing=())
            before = set(alice.grants)
            assert await heart.read("alice", rid) == path.read_bytes()
            # the patient answers once t peers hold their shares and delivers the others in the
            # background: wait until all four acknowledged, so that peer-b1 (the one left up below)
            # holds its share (else it answers share.missing and none answer, as it should)
            [fresh] = set(alice.grants) - before
            with trio.fail_after(30):
                while len(alice.grants[fresh]["peers"]) < 4:
                    await trio.sleep(0.02)
            for peer in ("peer-a1", "peer-a2", "peer-b2"):  # heart's home peer-b1 stays up
                await users.swarm.stop_agent(peer)
            await expect_not_enough_peers(heart, "alice", rid, answered=1, needed=2,
                                          failed={"peer-a1", "peer-a2", "peer-b2"}, timeout=15)


async def test_revoked_doctor_and_patient_restart(users):
    data = b'{"resourceType": "Observation", "status": "final"}'
    with trio.fail_after(120):
        async with contextlib.AsyncExitStack() as stack:
            alice = await users.open(stack, PatientAgent, PATIENT)
            heart = await users.open(stack, DoctorAgent, HEART)
            rid = await alice.store(data, label="cardiology", media_type="application/fhir+json")
            await alice.set_policy(POLICY, standing=())
            assert await heart.read("alice", rid) == data
            cert, grants = alice.certificate, dict(alice.grants)
            # the doctor's certificate is revoked: peers no longer serve it
            await heart.revoke_certificate("left the hospital")
            with pytest.raises(AgentError) as info:
                await heart.read("alice", rid)
            assert isinstance(info.value, CertificateRevoked) and info.value.code == "agent.cert-revoked"
            assert "left the hospital" in str(info.value)
        # the patient reopens from its directory and goes on
        async def yes(info):
            return True

        async with contextlib.AsyncExitStack() as stack:
            alice = await users.open(stack, PatientAgent, PATIENT, register=False, approve=yes)
            assert alice.certificate == cert and alice.grants == grants
            assert await alice.read(rid) == data
            rid2 = await alice.store(b"second", label="cardiology", media_type="text/plain")
            assert {r["record_id"] for r in await alice.records()} == {rid, rid2}
            gp = await users.open(stack, DoctorAgent, GP)
            # a new doctor is served by the reopened patient (its label keys survived the restart)
            assert await gp.read("alice", rid2) == b"second"


async def test_integration_example_over_tcp(users, tmp_path):
    """examples/integration_service.py: each agent on its own TCP node; the doctor reaches the
    listening patient through a configured route."""
    import importlib.util
    import json

    from agents.testing.fhir import check_bundle

    spec = importlib.util.spec_from_file_location(
        "integration_service", pathlib.Path(__file__).resolve().parents[2] / "examples" / "integration_service.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    workdir = tmp_path / "service"
    workdir.mkdir()
    with trio.fail_after(120):
        data = await example.run(users.swarm.files.dir / "manifest.json", workdir)
        check_bundle(json.loads(data), require_resolved=True)
        # a second run continues with the same keys and registrations
        assert await example.run(users.swarm.files.dir / "manifest.json", workdir) == data
