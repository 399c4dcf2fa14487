"""The hostile-client kit on a real in-process swarm: every kind and topic refused to
senders who may not send it, nothing written; floods that must not starve others."""

from __future__ import annotations

import contextlib
from collections import Counter

import trio

import bus
from agents.client import UserConfig
from agents.consortium import enroll_id
from agents.doctor import DoctorAgent
from agents.keys import AgentKeys
from agents.patient import ANSWERS_WAITING_PER_DOCTOR, PatientAgent
from agents.runtime import make_endpoint
from agents.swarm import Swarm, SwarmSpec
from agents.testing import hostile
from core.protocol import KINDS, TOPICS

POLICY = """
policy "p" version 1
default deny
rule cardio:
  allow read on label "cardiology" when role == "doctor" and department == "cardiology"
  approval auto
"""
ALICE = ("alice", "hospital-a", {"role": "patient"})
HEART = ("dr-h", "hospital-b", {"role": "doctor", "department": "cardiology"})
MALLORY = ("mallory", "hospital-a", {"role": "patient"})
EVIL = ("dr-evil", "hospital-b", {"role": "doctor", "department": "dermatology"})


def _cfg(swarm: Swarm, subject: str, org: str, attrs: dict) -> UserConfig:
    return UserConfig(subject=subject, org=org, attributes=attrs, data_dir=swarm.files.user_dir(subject),
                      manifest=swarm.manifest, passphrase="pw " + subject, fast_kdf=True, request_timeout=10)


@contextlib.asynccontextmanager
async def _world(tmp_path):
    async with Swarm.open(SwarmSpec(data_dir=tmp_path / "swarm"), fresh=True) as swarm, \
            contextlib.AsyncExitStack() as stack:
        agents = {}
        for who, cls in ((ALICE, PatientAgent), (HEART, DoctorAgent), (MALLORY, PatientAgent),
                         (EVIL, DoctorAgent)):
            agent = await stack.enter_async_context(cls.open(_cfg(swarm, *who), node=swarm.node))
            await agent.register(swarm.token(*who, agent.enroll_id))
            agents[who[0]] = agent
        yield swarm, agents


async def _heights(swarm: Swarm, ep: bus.Endpoint) -> dict[str, int]:
    return {pid: (await ep.request(pid, "peer.query", {"what": "head"}))["height"] for pid in swarm.manifest.peers}


async def _blobs(swarm: Swarm, ep: bus.Endpoint) -> dict[str, int]:
    return {s: (await ep.request(s, "storage.stat", {"cid": None}))["blobs"] for s in swarm.manifest.storage}


async def test_every_kind_and_topic_is_refused_to_hostile_senders(tmp_path):
    with trio.fail_after(120):
        async with _world(tmp_path) as (swarm, a):
            alice, heart = a["alice"], a["dr-h"]
            rid = await alice.store(b"ECG: sinus rhythm", label="cardiology", media_type="text/plain")
            await alice.set_policy(POLICY, standing=())
            assert await heart.read("alice", rid) == b"ECG: sinus rhythm"
            [(grant_id, grant)] = alice.grants.items()
            [rec] = await alice.records()
            for attacker in ("mallory", "dr-evil"):  # so alice's refusals verify at the attackers
                await a[attacker].client.lookup_certificate("alice")
            keys = AgentKeys.generate()
            directory = swarm.manifest.directory()  # knows alice, so her refusals verify
            directory.set_certificate("alice", alice.keys.ecdsa_public)
            anonymous = make_endpoint(swarm.node, enroll_id(keys.ecdsa_public), keys.ecdsa_private, directory)
            cast = hostile.Cast(anonymous=anonymous, patient=a["mallory"].endpoint,
                                patient_key=a["mallory"].keys.ecdsa_private, doctor=a["dr-evil"].endpoint,
                                victim="alice", victim_doctor="dr-h", record_id=rid, cid=rec["cid"],
                                grant_id=grant_id, request_id=grant["request_id"], peer=swarm.manifest.peers[0],
                                orderer=swarm.manifest.orderer, storage=swarm.manifest.storage[0])
            # the read's access batches (agents.peer._audit: a window, then a block) are in and every
            # peer applied them: what is ordered from here on is the attackers' doing
            with trio.fail_after(60):
                while (sum(e["event"] == "access" for e in await alice.audit()) < 2
                       or len(set((await _heights(swarm, alice.endpoint)).values())) != 1):
                    await trio.sleep(0.05)
            before, stored = await _heights(swarm, alice.endpoint), await _blobs(swarm, alice.endpoint)
            report = await hostile.run(cast)
            print(report.summary())
            # every kind and topic of the registry was tried, each from at least one hostile class
            assert {o.kind for o in report.outcomes} == set(KINDS) | {f"topic {t}" for t in TOPICS}
            assert report.wrongly_allowed == []
            assert report.refused == report.tried >= 2 * len(KINDS)
            await trio.sleep(0.5)
            assert await _heights(swarm, alice.endpoint) == before  # nothing ordered
            assert await _blobs(swarm, alice.endpoint) == stored  # nothing stored
            # the legitimate users still work
            assert await heart.read("alice", rid) == b"ECG: sinus rhythm"
            await anonymous.aclose()


async def test_a_slow_handler_flood_from_one_sender_does_not_starve_others(tmp_path):
    with trio.fail_after(120):
        async with _world(tmp_path) as (swarm, a):
            alice, mallory, evil = a["alice"], a["mallory"], a["dr-evil"]
            peer = swarm.manifest.peers[0]
            await mallory.client.lookup_certificate("alice")
            await evil.client.lookup_certificate("alice")
            await alice.client.lookup_certificate("dr-evil")
            codes: list[str | None] = []

            async def one(ep, to, kind, body):
                try:
                    await ep.request(to, kind, body, timeout=30)
                    codes.append(None)
                except bus.RemoteError as exc:
                    codes.append(exc.code)

            async with trio.open_nursery() as nursery:
                for i in range(100):  # unknown grant ids: each would wait 10 s for its grant
                    nursery.start_soon(one, mallory.endpoint, peer, "peer.deliver_share",
                                       {"grant_id": f"g-unknown-{i}", "index": 1, "sealed": bytes(64)})
                for i in range(40):  # unknown request ids at a patient
                    nursery.start_soon(one, evil.endpoint, "alice", "patient.access_request",
                                       {"request_id": f"r-unknown-{i}"})
                # waiting: 4 deliveries at the peer (its per-sender cap), 2 requests at alice (hers per doctor)
                busy = 100 - 4 + 40 - ANSWERS_WAITING_PER_DOCTOR
                with trio.move_on_after(60):  # the busy answers come at once, however busy the machine
                    while codes.count("busy") < busy and len(codes) < 140:
                        await trio.sleep(0.01)
                assert codes.count("busy") == busy, Counter(codes)
                # the floods are still waiting; a legitimate client is served, never busy
                assert len(codes) == busy
                rid = await alice.store(b"still served", label="cardiology", media_type="text/plain")
                assert [r["record_id"] for r in await alice.records()] == [rid]
                assert len(codes) < 140  # the waiting ones were in flight all along
            assert codes.count("busy") == busy
            assert set(codes) <= {"busy", "share.unknown-grant", "request.unknown"}


async def test_rows_that_do_not_decode_are_bad_requests_and_the_legitimate_reads_go_on(tmp_path):
    """The access path's kinds take rows (docs/protocol.md, "Row bodies"): a hostile doctor's
    rows that are too short, mistyped or sent to a kind without the row form are refused as
    bodies that do not decode (nothing served), while a legitimate doctor's reads go on."""
    with trio.fail_after(120):
        async with _world(tmp_path) as (swarm, a):
            alice, heart, evil = a["alice"], a["dr-h"], a["dr-evil"]
            rid = await alice.store(b"ECG: sinus rhythm", label="cardiology", media_type="text/plain")
            await alice.set_policy(POLICY, standing=())
            assert await heart.read("alice", rid) == b"ECG: sinus rhythm"
            [(grant_id, grant)] = alice.grants.items()
            peer = swarm.manifest.peers[0]
            head = await evil.endpoint.request(peer, "peer.query", ["head"])  # a row that decodes
            assert isinstance(head, dict) and head["height"] >= 1
            mallory = a["mallory"]
            for sender, kind, body in (
                    (evil, "peer.reencrypt", [grant_id, 5, rid, grant["request_id"]]),  # patient not an id
                    (evil, "peer.reencrypt", [grant_id, None]),  # record_id missing
                    (evil, "peer.reencrypt", [grant_id, None, rid, 7]),  # request_id not an id
                    (evil, "peer.query", ["record", "alice"]),  # record_id missing
                    (evil, "peer.query", [["record"], "alice", rid]),
                    (mallory, "peer.deliver_share", [grant_id, 0, b"x"]),  # proxy index 0
                    (mallory, "peer.audit", ["mallory"])):  # no row form: a map only
                try:
                    await sender.endpoint.request(peer, kind, body)
                except bus.RemoteError as exc:
                    assert exc.code == "bad-request", (kind, body, exc.code)
                else:
                    raise AssertionError(f"{kind} {body!r} was answered")
                assert await heart.read("alice", rid) == b"ECG: sinus rhythm"  # the legitimate reads go on
            await evil.client.lookup_certificate("alice")  # so alice's refusal verifies at dr-evil
            for _ in range(50):  # alice may first look dr-evil's certificate up (unknown-sender)
                try:
                    await evil.endpoint.request("alice", "patient.access_request", [7, "high"], timeout=10)
                except bus.RemoteError as exc:
                    if exc.code == "unknown-sender":
                        await trio.sleep(0.05)
                        continue
                    assert exc.code == "request.unknown", exc.code
                    break
            else:
                raise AssertionError("alice never answered")
