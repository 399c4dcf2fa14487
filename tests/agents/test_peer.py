"""Consortium peers and the orderer over the in-memory bus: enrollment, submit/commit,
queries, audit, key shares, re-encryption and revocation, events, catch-up, CLI checks."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

import bus
from agents.cli.ledger import audit_main, verify_main
from agents.orderer import OrdererAgent
from agents.peer import REENCRYPTION_TAG, PeerAgent, share_context
from agents.consortium import Manifest, enroll_id, enrollment_token
from agents.keys import AgentKeys
from agents.runtime import make_endpoint
from agents.testing.consortium import CARDIOLOGY_POLICY
from core import canonical, ecdsa, enrollment, pre
from core.cid import compute as compute_cid
from core.enrollment import EnrollmentToken
from core.identity import Certificate, ConsortiumConfig, OrgInfo, PeerInfo
from core.ledger import make_genesis
from core.lightclient import CertificateLightClient
from core.protocol import PeerDeliverShareReply, PeerReencrypt, PeerReencryptReply, codes
from core.policy import parse as parse_policy
from core.state import token_key
from core.tx import Transaction


class Consortium:
    """Keys, genesis and manifest of a test consortium (orgs a and b, two peers each)."""

    def __init__(self, tmp: Path, n_peers: int = 4, threshold: int = 2, agents: dict | None = None):
        self.tmp = tmp
        self.orderer_key = ecdsa.generate_private_key()
        self.peer_keys: dict[str, AgentKeys] = {}
        infos = []
        for i in range(n_peers):
            org = "org-a" if i < (n_peers + 1) // 2 else "org-b"
            pid = f"peer-{org[-1]}-{i + 1}"
            keys = AgentKeys.generate()
            self.peer_keys[pid] = keys
            infos.append(PeerInfo(pid, org, keys.ecdsa_public, keys.box_public, i + 1))
        self.infos = {p.id: p for p in infos}
        self.registrars = {"org-a": ecdsa.generate_private_key(), "org-b": ecdsa.generate_private_key()}
        self.admins = admins = {"org-a": ecdsa.generate_private_key(), "org-b": ecdsa.generate_private_key()}
        orgs = tuple(OrgInfo(o, name, ecdsa.public_key(admins[o]), ecdsa.public_key(self.registrars[o]))
                     for o, name in (("org-a", "Hospital A"), ("org-b", "Hospital B")))
        self.config = ConsortiumConfig("test", orgs, tuple(infos), "orderer", ecdsa.public_key(self.orderer_key),
                                       threshold, created_at=int(time.time() * 1000))
        self.genesis = make_genesis(self.config, {o: self.config.sign_as_org(k) for o, k in admins.items()}).to_bytes()
        keys = {pid: k.ecdsa_public for pid, k in self.peer_keys.items()}
        keys["orderer"] = ecdsa.public_key(self.orderer_key)
        self.manifest = Manifest("test", self.genesis, "orderer", list(self.peer_keys), [], threshold,
                                 dict(agents or {}), keys, {"org-a": [p for p in keys if p.startswith("peer-a")],
                                                            "org-b": [p for p in keys if p.startswith("peer-b")]})

    def orderer(self, **kw) -> OrdererAgent:
        return OrdererAgent(orderer_id="orderer", signing_key=self.orderer_key, genesis=self.genesis,
                            data_dir=self.tmp / "orderer", directory=self.manifest.directory(), **kw)

    def peer(self, pid: str, **kw) -> PeerAgent:
        return PeerAgent(peer_id=pid, keys=self.peer_keys[pid], genesis=self.genesis, data_dir=self.tmp / pid,
                         manifest=self.manifest, **kw)


class User:
    def __init__(self, subject: str, keys: AgentKeys, endpoint: bus.Endpoint, cert: dict):
        self.subject, self.keys, self.endpoint, self.cert = subject, keys, endpoint, cert

    def tx(self, tx_type: str, body: dict) -> bytes:
        return Transaction.create(tx_type, self.subject, body, self.keys.ecdsa_private,
                                  int(time.time() * 1000)).to_bytes()

    async def submit(self, peer: str, tx_type: str, body: dict) -> dict:
        return await self.endpoint.request(peer, "peer.submit", {"tx": self.tx(tx_type, body), "wait": True})


def enroll_body(c: Consortium, keys: AgentKeys, subject: str, org: str, attrs: dict, token: bytes | None = None):
    """A ``peer.enroll`` body from ``keys``, with a fresh token bound to them unless ``token`` is given."""
    recv = keys.receive
    if token is None:
        token = enrollment_token(c.registrars[org], subject, org, attrs, enroll_id(keys.ecdsa_public))
    return {"subject": subject, "org": org, "attributes": attrs, "box_key": keys.box_public,
            "pre_key": recv.public.to_bytes(), "pre_proof": recv.prove(subject).to_bytes(), "valid_s": 86400,
            "token": token}


async def enroll(c: Consortium, node: bus.Node, peer: str, subject: str, org: str, attrs: dict,
                 everywhere: dict | None = None) -> User:
    keys = AgentKeys.generate()
    ep = make_endpoint(node, enroll_id(keys.ecdsa_public), keys.ecdsa_private, c.manifest.directory())
    try:
        reply = await ep.request(peer, "peer.enroll", enroll_body(c, keys, subject, org, attrs))
    finally:
        await ep.aclose()
    assert reply["cert"]["subject"] == subject and reply["cert"]["issuer"] == peer
    for p in (everywhere or {}).values():  # the other peers commit the register block a moment later
        await p.wait_for_height(reply["height"])
    return User(subject, keys, make_endpoint(node, subject, keys.ecdsa_private, c.manifest.directory()),
                reply["cert"])


@asynccontextmanager
async def running(c: Consortium, peers: list[str] | None = None, **orderer_kw):
    async with bus.open_node() as node:
        async with trio.open_nursery() as nursery:
            orderer = c.orderer(**orderer_kw)
            await nursery.start(orderer.run, node)
            agents = {}
            for pid in peers if peers is not None else list(c.peer_keys):
                agents[pid] = c.peer(pid)
                await nursery.start(agents[pid].run, node)
            yield node, orderer, agents, nursery
            nursery.cancel_scope.cancel()


def store_body(keys: AgentKeys, record_id: str, label: str = "cardiology"):
    capsule, key = pre.encapsulate(keys.label_key(label).public)
    return {"record_id": record_id, "label": label, "cid": compute_cid(record_id.encode()), "size": 10,
            "media_type": "application/fhir+json", "capsule": capsule.to_bytes()}, key


async def test_enrollment_good_bad_and_duplicate(tmp_path):
    c = Consortium(tmp_path)
    with trio.fail_after(30):
        async with running(c) as (node, orderer, peers, _):
            alice = await enroll(c, node, "peer-a-1", "alice", "org-a", {"role": "patient"})
            for p in peers.values():  # every peer committed it and learned the key
                await p.wait_for_height(1)
                assert p.ledger.certificate("alice").cert.ecdsa_key == alice.keys.ecdsa_public
                assert p.directory("alice") == alice.keys.ecdsa_public
            keys = AgentKeys.generate()
            ep = make_endpoint(node, enroll_id(keys.ecdsa_public), keys.ecdsa_private, c.manifest.directory())
            with pytest.raises(bus.RemoteError) as info:  # token signed by a key that is not the registrar's
                await ep.request("peer-a-1", "peer.enroll", enroll_body(
                    c, keys, "mallory", "org-a", {"role": "doctor"},
                    token=enrollment_token(ecdsa.generate_private_key(), "mallory", "org-a", {"role": "doctor"},
                                           enroll_id(keys.ecdsa_public))))
            assert info.value.code == "enroll.denied"
            with pytest.raises(bus.RemoteError) as info:  # token for other attributes
                body = enroll_body(c, keys, "mallory", "org-a", {"role": "patient"})
                body["attributes"] = {"role": "doctor"}
                await ep.request("peer-a-1", "peer.enroll", body)
            assert info.value.code == "enroll.denied"
            with pytest.raises(bus.RemoteError) as info:  # another organization's peer
                await ep.request("peer-b-3", "peer.enroll", enroll_body(c, keys, "bob", "org-a", {"role": "patient"}))
            assert info.value.code == "enroll.denied"
            with pytest.raises(bus.RemoteError) as info:
                await ep.request("peer-a-2", "peer.enroll", enroll_body(c, keys, "alice", "org-a", {"role": "patient"}))
            assert info.value.code == "enroll.exists"
            body = enroll_body(c, keys, "bob", "org-a", {"role": "patient"})
            body["pre_proof"] = enroll_body(c, AgentKeys.generate(), "bob", "org-a", {"role": "patient"})["pre_proof"]
            with pytest.raises(bus.RemoteError) as info:  # proof of possession for another key
                await ep.request("peer-a-1", "peer.enroll", body)
            assert info.value.code == "enroll.invalid"
            assert peers["peer-a-1"].ledger.certificate("mallory") is None
            # queries before registering: only cert and head
            assert (await ep.request("peer-a-1", "peer.query", {"what": "cert", "subject": "alice"}))["revoked"] is False
            with pytest.raises(bus.RemoteError) as info:
                await ep.request("peer-a-1", "peer.query", {"what": "policy", "patient": "alice"})
            assert info.value.code == "forbidden"


async def test_peers_follow_a_configuration_change(tmp_path):
    """org-b leaves (both organizations sign): every peer drops its peers from the bus
    directory and the classifier, and org-b's peers enroll nobody any more."""
    from core.identity import ConsortiumConfig
    from core.ledger import sign_config_change

    c = Consortium(tmp_path)
    cur = c.config
    gone = ConsortiumConfig(cur.name, cur.orgs[:1], tuple(p for p in cur.peers if p.org == "org-a"), cur.orderer_id,
                            cur.orderer_key, cur.threshold, cur.max_skew_ms, cur.created_at)
    body = {"config": gone.to_bytes(),
            "signatures": {o: sign_config_change(cur, 0, gone, c.admins[o]) for o in ("org-a", "org-b")}}
    with trio.fail_after(30):
        async with running(c) as (node, orderer, peers, _):
            assert peers["peer-a-1"].directory("peer-b-3") is not None
            tx = Transaction.create("config", "peer-a-1", body, c.peer_keys["peer-a-1"].ecdsa_private,
                                    int(time.time() * 1000))
            [(_, height, mark)] = await peers["peer-a-1"].submit([tx.to_bytes()], wait=True)
            assert mark == "ok"
            for p in peers.values():
                await p.wait_for_height(height)
                assert p.config == gone == p.ledger.config
                assert p.directory("peer-b-3") is None and p.directory("peer-a-2") is not None
                assert p.classifier.node_class("peer-b-3") is None
            keys = AgentKeys.generate()
            ep = make_endpoint(node, enroll_id(keys.ecdsa_public), keys.ecdsa_private, c.manifest.directory())
            with pytest.raises(bus.RemoteError) as info:
                await ep.request("peer-b-3", "peer.enroll", enroll_body(c, keys, "bob", "org-b", {"role": "patient"}))
            assert info.value.code == "enroll.denied"


async def test_enrollment_tokens_are_bound_to_the_key_expire_and_enroll_once(tmp_path):
    c = Consortium(tmp_path)
    attrs = {"role": "doctor", "department": "cardiology"}
    with trio.fail_after(30):
        async with running(c) as (node, orderer, peers, _):
            victim, attacker = AgentKeys.generate(), AgentKeys.generate()
            victim_ep = make_endpoint(node, enroll_id(victim.ecdsa_public), victim.ecdsa_private,
                                      c.manifest.directory())
            attacker_ep = make_endpoint(node, enroll_id(attacker.ecdsa_public), attacker.ecdsa_private,
                                        c.manifest.directory())
            # a token captured on the network, replayed from the attacker's own key: refused, nothing written
            captured = enrollment_token(c.registrars["org-a"], "dr-v", "org-a", attrs, enroll_id(victim.ecdsa_public))
            height = peers["peer-a-1"].height
            with pytest.raises(bus.RemoteError) as info:
                await attacker_ep.request("peer-a-1", "peer.enroll",
                                          enroll_body(c, attacker, "dr-v", "org-a", attrs, token=captured))
            assert info.value.code == "enroll.denied"
            # an expired token: refused with its own code
            stale = enrollment_token(c.registrars["org-a"], "dr-v", "org-a", attrs, enroll_id(victim.ecdsa_public),
                                     ttl_s=3600, now=time.time() - 7200)
            with pytest.raises(bus.RemoteError) as info:
                await victim_ep.request("peer-a-1", "peer.enroll", enroll_body(c, victim, "dr-v", "org-a", attrs,
                                                                               token=stale))
            assert info.value.code == "enroll.expired"
            assert peers["peer-a-1"].height == height and peers["peer-a-1"].ledger.certificate("dr-v") is None
            # the victim's own key enrolls with the captured token; the certificate carries the victim's key
            reply = await victim_ep.request("peer-a-1", "peer.enroll",
                                            enroll_body(c, victim, "dr-v", "org-a", attrs, token=captured))
            assert reply["cert"]["ecdsa_key"] == victim.ecdsa_public
            # used twice: refused (the subject exists; a token re-issued with the same id for another subject too)
            with pytest.raises(bus.RemoteError) as info:
                await victim_ep.request("peer-a-2", "peer.enroll",
                                        enroll_body(c, victim, "dr-v", "org-a", attrs, token=captured))
            assert info.value.code == "enroll.exists"
            spent_id = EnrollmentToken.from_bytes(captured).token_id
            reissued = enrollment.issue(c.registrars["org-a"], subject="dr-w", org="org-a", attributes=attrs,
                                        enroll_key=attacker.ecdsa_public, expires=int(time.time()) + 3600,
                                        token_id=spent_id).to_bytes()
            for p in peers.values():
                await p.wait_for_height(reply["height"])
            with pytest.raises(bus.RemoteError) as info:
                await attacker_ep.request("peer-a-2", "peer.enroll",
                                          enroll_body(c, attacker, "dr-w", "org-a", attrs, token=reissued))
            assert info.value.code == "enroll.denied" and "used before" in info.value.message
            # a register transaction spending the token again (a peer racing, or skipping its check) is invalid
            # on every peer and in the certificate light client
            recv = attacker.receive
            now = int(time.time())
            cert = Certificate("serial-w", "dr-w", "org-a", attrs, attacker.ecdsa_public, attacker.box_public,
                               recv.public.to_bytes(), recv.prove("dr-w").to_bytes(), now - 60, now + 3600,
                               "peer-a-1").sign(c.peer_keys["peer-a-1"].ecdsa_private)
            tx = Transaction.create("register", "peer-a-1", {"cert": cert.to_dict(), "token_id": spent_id},
                                    c.peer_keys["peer-a-1"].ecdsa_private, now * 1000)
            [(_, at, mark)] = await peers["peer-a-1"].submit([tx.to_bytes()], wait=True)
            assert mark == "duplicate"
            light = CertificateLightClient(c.genesis)
            for p in peers.values():
                await p.wait_for_height(at)
                assert p.ledger.certificate("dr-w") is None
                assert p.ledger.get(token_key("org-a", spent_id)) == "dr-v"
            for raw in peers["peer-b-3"].store.blocks(1, at):
                light.apply(raw)
            assert "dr-v" in light.certificates() and "dr-w" not in light.certificates()
            # the holder revokes its certificate; the token again, with the same key: refused as revoked
            # (a subject enrolls once), not as "already registered" (which a client takes for its own crash)
            revoke = Transaction.create("revoke_cert", "dr-v", {"subject": "dr-v", "reason": "lost device"},
                                        victim.ecdsa_private, int(time.time() * 1000))
            [(_, at, mark)] = await peers["peer-a-1"].submit([revoke.to_bytes()], wait=True)
            assert mark == "ok" and peers["peer-a-1"].ledger.certificate("dr-v").revoked
            with pytest.raises(bus.RemoteError) as info:
                await victim_ep.request("peer-a-1", "peer.enroll",
                                        enroll_body(c, victim, "dr-v", "org-a", attrs, token=captured))
            assert info.value.code == "enroll.denied" and "revoked" in info.value.message
            await victim_ep.aclose()
            await attacker_ep.aclose()


async def test_full_flow_shares_reencryption_revocation_events(tmp_path):
    c = Consortium(tmp_path)
    with trio.fail_after(45):
        async with running(c) as (node, orderer, peers, _):
            alice = await enroll(c, node, "peer-a-1", "alice", "org-a", {"role": "patient"})
            doc = await enroll(c, node, "peer-b-3", "dr-heart", "org-b", {"role": "doctor", "department": "cardiology"},
                             everywhere=peers)
            with pytest.raises(bus.RemoteError) as refused:  # events go to consortium peers only
                await doc.endpoint.subscribe("peer-b-4", "events")
            assert refused.value.code == "forbidden"
            events = await peers["peer-a-1"].endpoint.subscribe("peer-b-4", "events")
            body, key = store_body(alice.keys, "rec-1")
            reply = await alice.submit("peer-a-2", "store", body)
            assert reply["mark"] == "ok" and reply["height"] >= 3
            reply = await alice.submit("peer-a-2", "set_policy",
                                       {"policy": parse_policy(CARDIOLOGY_POLICY).to_msgpack()})
            assert reply["mark"] == "ok"
            # an invalid transaction is committed with its reason code
            reply = await alice.submit("peer-a-1", "store", body)
            assert reply["mark"] == "duplicate"
            # no-wait submit
            reply = await alice.endpoint.request("peer-a-1", "peer.submit", {"tx": alice.tx("store", store_body(
                alice.keys, "rec-2", "labs")[0]), "wait": False})
            assert reply == {}  # taken by the orderer: nothing the submitter does not know
            reply = await doc.submit("peer-b-3", "access_request", {
                "request_id": "req-1", "patient": "alice", "record_id": "rec-1", "operation": "read", "purpose": None})
            assert reply["mark"] == "ok"
            req = await doc.endpoint.request("peer-b-3", "peer.query", {"what": "request", "request_id": "req-1"})
            assert req["decision"]["effect"] == "allow" and req["decision"]["rule"] == "cardio"
            ev = await events.receive()
            assert ev.body["type"] == "access_request" and ev.body["patient"] == "alice"
            assert ev.body["doctor"] == "dr-heart" and ev.body["decision"]["rule"] == "cardio"
            for p in peers.values():
                await p.wait_for_height(peers["peer-b-3"].height)
            recs = await alice.endpoint.request("peer-a-1", "peer.query", {"what": "records", "patient": "alice",
                                                                          "label": None})
            assert [r["record_id"] for r in recs] == ["rec-1", "rec-2"]  # rec-2 committed before req-1
            recs = await alice.endpoint.request("peer-a-1", "peer.query", {"what": "records", "patient": "alice",
                                                                          "label": "labs"})
            assert [(r["record_id"], r["label"]) for r in recs] == [("rec-2", "labs")]
            # the doctor sees only what alice's policy could allow it (cardiology), without the CID
            recs = await doc.endpoint.request("peer-a-1", "peer.query", {"what": "records", "patient": "alice",
                                                                        "label": None})
            assert [r["record_id"] for r in recs] == ["rec-1"] and "cid" not in recs[0]
            with pytest.raises(bus.RemoteError) as refused:
                await doc.endpoint.request("peer-a-1", "peer.query", {"what": "record", "patient": "alice",
                                                                     "record_id": "rec-2"})
            assert refused.value.code == "forbidden"
            # owner_cert: the record with alice's certificate entry, read from the same state
            rec = await doc.endpoint.request("peer-a-1", "peer.query", {"what": "record", "patient": "alice",
                                                                       "record_id": "rec-1", "owner_cert": True})
            owner = rec.pop("owner_cert")
            assert rec == await doc.endpoint.request("peer-a-1", "peer.query", {
                "what": "record", "patient": "alice", "record_id": "rec-1"})
            assert owner == await doc.endpoint.request("peer-a-1", "peer.query", {"what": "cert", "subject": "alice"})
            assert owner["cert"]["subject"] == "alice" and not owner["revoked"]
            # ... never for a record the doctor may not see, nor on other forms or as a non-boolean
            for query, code in [({"what": "record", "patient": "alice", "record_id": "rec-2", "owner_cert": True},
                                "forbidden"),
                               ({"what": "records", "patient": "alice", "label": None, "owner_cert": True},
                                "bad-request"),
                               ({"what": "record", "patient": "alice", "record_id": "rec-1", "owner_cert": "yes"},
                                "bad-request")]:
                with pytest.raises(bus.RemoteError) as refused:
                    await doc.endpoint.request("peer-a-1", "peer.query", query)
                assert refused.value.code == code, query
            assert await alice.endpoint.request("peer-a-1", "peer.query", {  # an unknown record: nil
                "what": "record", "patient": "alice", "record_id": "rec-9", "owner_cert": True}) is None
            with pytest.raises(bus.RemoteError) as refused:
                await doc.endpoint.request("peer-a-1", "peer.query", {"what": "policy", "patient": "alice"})
            assert refused.value.code == "forbidden"
            # key shares, 2 of 4, delivered before the grant commits (the peers wait for it)
            label_keys = alice.keys.label_key("cardiology")
            receiver = pre.PublicKey.from_bytes(doc.cert["pre_key"])
            proxies = [pre.Proxy(p.index, p.box_key) for p in c.infos.values()]
            sealed = pre.make_key_shares(label_keys, receiver, proxies, 2, share_context("g-1"))
            by_peer = {pid: s for pid, s in zip(c.infos, sealed)}
            grant = {"grant_id": "g-1", "request_id": "req-1", "threshold": 2, "expires_at": int(time.time()) + 3600,
                     "shares": {pid: hashlib.sha256(s.sealed).digest() for pid, s in by_peer.items()}}
            acks = {}

            async def deliver(pid):
                acks[pid] = await alice.endpoint.request(pid, "peer.deliver_share", {
                    "grant_id": "g-1", "index": by_peer[pid].index, "sealed": by_peer[pid].sealed})

            async with trio.open_nursery() as n:
                for pid in by_peer:
                    n.start_soon(deliver, pid)
                await trio.sleep(0.05)
                assert (await alice.submit("peer-a-1", "grant", grant))["mark"] == "ok"
            assert all(a == [] and PeerDeliverShareReply.from_wire(a).ok for a in acks.values())  # ok: its default
            with pytest.raises(bus.RemoteError) as info:  # someone else's share
                await alice.endpoint.request("peer-a-1", "peer.deliver_share", {
                    "grant_id": "g-1", "index": 1, "sealed": by_peer["peer-a-2"].sealed})
            assert info.value.code == "share.mismatch"
            assert (await events.receive()).body["type"] == "grant"
            # re-encryption by two peers; the shares combine to the record key
            ask = {"grant_id": "g-1", "patient": "alice", "record_id": "rec-1", "request_id": "req-1"}
            shares = []
            for pid in ("peer-a-2", "peer-b-4"):
                raw = await doc.endpoint.request(pid, "peer.reencrypt", ask)
                r = PeerReencryptReply.from_wire(raw)
                assert raw == [r.share, r.signature]  # the doctor knows the CID and the index
                assert int.from_bytes(r.share[:4], "big") == c.infos[pid].index
                assert ecdsa.is_valid(c.infos[pid].ecdsa_key, REENCRYPTION_TAG,
                                      canonical.pack([ask["request_id"], body["cid"], c.infos[pid].index,
                                                      r.share]),
                                      r.signature)
                shares.append(pre.ReencryptedShare.from_bytes(r.share))
            assert pre.combine(shares, doc.keys.receive.secret) == key
            # the patient alone reads its audit trail; the peers logged their accesses
            with pytest.raises(bus.RemoteError) as info:
                await doc.endpoint.request("peer-a-1", "peer.audit", {"patient": "alice"})
            assert info.value.code == "forbidden"  # a doctor: refused by class, before any work
            while True:
                trail = (await alice.endpoint.request("peer-a-1", "peer.audit", {"patient": "alice"}))["events"]
                if sum(e["event"] == "access" for e in trail) == 2:
                    break
                await trio.sleep(0.02)
            assert sorted(e["peer"] for e in trail if e["event"] == "access") == ["peer-a-2", "peer-b-4"]
            # a repeat read: the same signed reply without a pairing, logged like any other
            handlers = peers["peer-a-2"].handlers
            pairings, fast = handlers.reply_hits, peers["peer-a-2"].endpoint.fast_runs
            again = PeerReencryptReply.from_wire(await doc.endpoint.request("peer-a-2", "peer.reencrypt", ask))
            assert handlers.reply_hits == pairings + 1 and again.share == shares[0].to_bytes()
            assert peers["peer-a-2"].endpoint.fast_runs == fast + 1  # answered by the fast companion
            handlers._cache_share("g-1", handlers._shares["g-1"])  # a key share cached anew: its replies made again
            again = PeerReencryptReply.from_wire(await doc.endpoint.request("peer-a-2", "peer.reencrypt", ask))
            assert handlers.reply_hits == pairings + 1 and again.share == shares[0].to_bytes()
            while sum(e["event"] == "access" for e in trail) != 4:
                await trio.sleep(0.02)
                trail = (await alice.endpoint.request("peer-a-1", "peer.audit", {"patient": "alice"}))["events"]
            assert sorted(e["peer"] for e in trail if e["event"] == "access") == ["peer-a-2"] * 3 + ["peer-b-4"]
            # someone else asking, and a wrong request id
            with pytest.raises(bus.RemoteError) as info:
                await alice.endpoint.request("peer-a-1", "peer.reencrypt", ask)
            assert info.value.code == "forbidden"  # a patient: refused by class
            with pytest.raises(bus.RemoteError) as info:
                await doc.endpoint.request("peer-a-1", "peer.reencrypt", {**ask, "request_id": "req-x"})
            assert info.value.code == "access.forbidden"
            with pytest.raises(bus.RemoteError) as info:  # another patient's record under this grant
                await doc.endpoint.request("peer-a-1", "peer.reencrypt", {**ask, "patient": "bob"})
            assert info.value.code == "access.forbidden"
            # the lean form (what a doctor sends): no patient, no request id; the peer reads the
            # grant's, and its signature covers the grant's request id
            lean = PeerReencrypt(grant_id="g-1", record_id="rec-1").to_wire()
            assert lean == ["g-1", None, "rec-1"]
            r = PeerReencryptReply.from_wire(await doc.endpoint.request("peer-b-4", "peer.reencrypt", lean))
            assert r.share == shares[1].to_bytes()
            assert ecdsa.is_valid(c.infos["peer-b-4"].ecdsa_key, REENCRYPTION_TAG,
                                  canonical.pack(["req-1", body["cid"], c.infos["peer-b-4"].index, r.share]),
                                  r.signature)
            while sum(e["event"] == "access" for e in trail) != 5:
                await trio.sleep(0.02)
                trail = (await alice.endpoint.request("peer-a-1", "peer.audit", {"patient": "alice"}))["events"]
            assert [e["request_id"] for e in trail if e["event"] == "access"] == ["req-1"] * 5
            # revocation: every peer refuses from the committing block on
            assert (await alice.submit("peer-a-1", "revoke_grant", {"grant_id": "g-1", "reason": "done"}))["mark"] == "ok"
            for pid in peers:
                await peers[pid].wait_for_height(peers["peer-a-1"].ledger.height)
                with pytest.raises(bus.RemoteError) as info:
                    await doc.endpoint.request(pid, "peer.reencrypt", ask)
                assert info.value.code == "access.bad-state"
            assert (await events.receive()).body["type"] == "revoke_grant"
            # all peers agree
            heads = {pid: p.ledger.head() for pid, p in peers.items()}
            assert len(set(heads.values())) == 1
            await events.aclose()
    # the stored chain verifies; the audit CLI reads the history
    assert verify_main(["--data", str(tmp_path / "peer-a-1")]) == 0
    assert audit_main(["--data", str(tmp_path / "peer-b-3"), "--patient", "alice"]) == 0


@pytest.mark.parametrize("bound", [False, True])
async def test_share_survives_restart_sealed_at_rest(tmp_path, bound):
    """A delivered share is kept sealed in SQLite and usable after a restart (no cache). Read
    back from disk it is checked against the digest the committed grant holds: another sealed
    share put in its place (a valid one for this peer, of another grant) is refused. ``bound``:
    a version-4 share (no context inside: the digest and its mask bind it), as patients seal."""
    c = Consortium(tmp_path, n_peers=1, threshold=1)
    (pid,) = c.infos
    with trio.fail_after(30):
        async with running(c) as (node, orderer, peers, _):
            alice = await enroll(c, node, pid, "alice", "org-a", {"role": "patient"})
            doc = await enroll(c, node, pid, "dr", "org-a", {"role": "doctor", "department": "cardiology"})
            body, key = store_body(alice.keys, "rec-1")
            await alice.submit(pid, "store", body)
            await alice.submit(pid, "set_policy", {"policy": parse_policy(CARDIOLOGY_POLICY).to_msgpack()})
            await doc.submit(pid, "access_request", {"request_id": "r1", "patient": "alice", "record_id": "rec-1",
                                                     "operation": "read", "purpose": None})
            (sealed,) = pre.make_key_shares(alice.keys.label_key("cardiology"),
                                            pre.PublicKey.from_bytes(doc.cert["pre_key"]),
                                            [pre.Proxy(1, c.infos[pid].box_key)], 1, share_context("g"), bound=bound)
            (other,) = pre.make_key_shares(alice.keys.label_key("cardiology"),
                                           pre.PublicKey.from_bytes(doc.cert["pre_key"]),
                                           [pre.Proxy(1, c.infos[pid].box_key)], 1, share_context("g"), bound=bound)
            await alice.submit(pid, "grant", {"grant_id": "g", "request_id": "r1", "threshold": 1,
                                              "expires_at": int(time.time()) + 600,
                                              "shares": {pid: hashlib.sha256(sealed.sealed).digest()}})
            await alice.endpoint.request(pid, "peer.deliver_share", {"grant_id": "g", "index": 1,
                                                                     "sealed": sealed.sealed})
        # the share rests as delivered: sealed to the peer's X25519 key
        with sqlite3.connect(tmp_path / pid / "ledger.sqlite") as conn:
            (stored,) = conn.execute("SELECT sealed FROM shares WHERE grant_id = 'g'").fetchone()
        assert stored == sealed.sealed
        async with running(c) as (node, orderer, peers, _):
            doc_ep = make_endpoint(node, "dr", doc.keys.ecdsa_private, c.manifest.directory())
            r = await doc_ep.request(pid, "peer.reencrypt", {"grant_id": "g", "patient": "alice",
                                                            "record_id": "rec-1", "request_id": "r1"})
            share = PeerReencryptReply.from_wire(r).share
            assert pre.combine([pre.ReencryptedShare.from_bytes(share)], doc.keys.receive.secret) == key
        with sqlite3.connect(tmp_path / pid / "ledger.sqlite") as conn:
            conn.execute("UPDATE shares SET sealed = ? WHERE grant_id = 'g'", (other.sealed,))
        async with running(c) as (node, orderer, peers, _):
            doc_ep = make_endpoint(node, "dr", doc.keys.ecdsa_private, c.manifest.directory())
            with pytest.raises(bus.RemoteError) as info:
                await doc_ep.request(pid, "peer.reencrypt", {"grant_id": "g", "patient": "alice",
                                                            "record_id": "rec-1", "request_id": "r1"})
            assert info.value.code == codes.SHARE_MISSING
        with sqlite3.connect(tmp_path / pid / "ledger.sqlite") as conn:
            conn.execute("UPDATE shares SET sealed = ? WHERE grant_id = 'g'", (stored,))
    # `ledger verify` checks the stored share against the hash the patient committed in the grant
    assert verify_main(["--data", str(tmp_path / pid)]) == 0
    db = tmp_path / pid / "ledger.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE shares SET sealed = ? WHERE grant_id = 'g'", (bytes([stored[0] ^ 1]) + stored[1:],))
    assert verify_main(["--data", str(tmp_path / pid)]) == 1
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE shares SET sealed = ?, grant_id = 'g-unknown' WHERE grant_id = 'g'", (stored,))
    assert verify_main(["--data", str(tmp_path / pid)]) == 1
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE shares SET grant_id = 'g' WHERE grant_id = 'g-unknown'")
    assert verify_main(["--data", str(tmp_path / pid)]) == 0


async def test_catch_up_from_peer_when_orderer_is_gone(tmp_path):
    c = Consortium(tmp_path, n_peers=3)
    with trio.fail_after(40):
        async with bus.open_node() as node:
            async with trio.open_nursery() as nursery:
                orderer_scope = trio.CancelScope()

                async def run_orderer(task_status=trio.TASK_STATUS_IGNORED):
                    with orderer_scope:
                        await c.orderer(batch_size=2).run(node, task_status=task_status)

                await nursery.start(run_orderer)
                peers = {}
                for pid in ("peer-a-1", "peer-a-2"):
                    peers[pid] = c.peer(pid, retry_interval=0.2)
                    await nursery.start(peers[pid].run, node)
                alice = await enroll(c, node, "peer-a-1", "alice", "org-a", {"role": "patient"}, everywhere=peers)
                for i in range(5):
                    await alice.submit("peer-a-2", "store", store_body(alice.keys, f"rec-{i}")[0])
                await peers["peer-a-1"].wait_for_height(peers["peer-a-2"].ledger.height)
                orderer_scope.cancel()
                await trio.sleep(0.05)
                late = c.peer("peer-b-3", retry_interval=0.2)
                await nursery.start(late.run, node)
                assert late.ledger.head() == peers["peer-a-1"].ledger.head()
                assert late.ledger.height >= 6
                assert late.directory("alice") == alice.keys.ecdsa_public
                # with the orderer gone, submissions fail cleanly
                with pytest.raises(bus.RemoteError) as info:
                    await alice.submit("peer-b-3", "store", store_body(alice.keys, "rec-x")[0])
                assert info.value.code == "submit.unavailable"
                nursery.cancel_scope.cancel()


async def test_gap_in_published_blocks_is_filled(tmp_path):
    """A peer that misses published blocks (here: started from an old copy of its
    database while the swarm moved on) fetches the gap before the next block."""
    c = Consortium(tmp_path, n_peers=2)
    with trio.fail_after(40):
        async with running(c, batch_size=1) as (node, orderer, peers, nursery):
            alice = await enroll(c, node, "peer-a-1", "alice", "org-a", {"role": "patient"})
            p2 = peers["peer-b-2"]
            # detach peer-b-2's subscription from the orderer side: it misses the next blocks
            subscribers = orderer.endpoint.statistics().subscribers
            await p2.endpoint.send(orderer.orderer_id, "bus.unsubscribe", {"topic": "blocks"})
            while orderer.endpoint.statistics().subscribers == subscribers:
                await trio.sleep(0.01)
            for i in range(3):
                await alice.submit("peer-a-1", "store", store_body(alice.keys, f"rec-{i}")[0])
            target = peers["peer-a-1"].ledger.height
            assert p2.ledger.height < target
            with trio.fail_after(15):
                await p2.wait_for_height(target)  # idle poll of orderer.head finds the gap
            assert p2.ledger.head() == peers["peer-a-1"].ledger.head()


async def test_tampered_block_is_named_by_verify(tmp_path, capsys):
    c = Consortium(tmp_path, n_peers=1, threshold=1)
    with trio.fail_after(30):
        async with running(c, batch_size=1) as (node, orderer, peers, _):
            alice = await enroll(c, node, "peer-a-1", "alice", "org-a", {"role": "patient"})
            for i in range(3):
                await alice.submit("peer-a-1", "store", store_body(alice.keys, f"rec-{i}")[0])
    data = tmp_path / "peer-a-1"
    assert verify_main(["--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("chain OK: 5 blocks, root ")
    db = data / "ledger.sqlite"
    for height, offset in ((3, 40), (2, -70), (4, 5)):
        with sqlite3.connect(db) as conn:
            (blob,) = conn.execute("SELECT data FROM blocks WHERE height = ?", (height,)).fetchone()
            bad = bytearray(blob)
            bad[offset] ^= 0x01
            conn.execute("UPDATE blocks SET data = ? WHERE height = ?", (bytes(bad), height))
        assert verify_main(["--data", str(data)]) == 1
        assert f"chain BAD: block {height}:" in capsys.readouterr().out
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE blocks SET data = ? WHERE height = ?", (blob, height))
    assert verify_main(["--data", str(data)]) == 0
    # a changed state value or mark is caught too
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE blocks SET marks = ? WHERE height = 3", (canonical.pack(["duplicate"]),))
    assert verify_main(["--data", str(data)]) == 1
    assert "block 3: stored validity marks" in capsys.readouterr().out
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE blocks SET marks = ? WHERE height = 3", (canonical.pack(["ok"]),))
        conn.execute("UPDATE state SET value = ? WHERE key = 'record/alice/rec-1'", (canonical.pack({"x": 1}),))
    assert verify_main(["--data", str(data)]) == 1
    assert "record/alice/rec-1" in capsys.readouterr().out


# ---------------------------------------------------------------- separate processes

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import msgpack  # noqa: E402

from agents.ledger_store import LedgerStore  # noqa: E402
from agents.keys import KeyStore  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

REPLAY = """
import sys, msgpack
from core.ledger import Block, Ledger, MemoryKV
from agents.ledger_store import LedgerStore
blocks = msgpack.unpackb(open(sys.argv[1], "rb").read())
genesis = Block.from_bytes(blocks[0])
if sys.argv[2] == "sqlite":
    kv = LedgerStore(sys.argv[3])
    kv.init_genesis(genesis)
else:
    kv = MemoryKV()
ledger = Ledger(genesis, kv)
for raw in blocks[1:]:
    block = Block.from_bytes(raw)
    result = ledger.apply(block)
    kv.commit(block, result) if sys.argv[2] == "sqlite" else kv.apply(result.writes)
print(ledger.head()[2].hex())
"""


def _env(**extra):
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


async def test_two_processes_replaying_a_chain_reach_the_same_root(tmp_path):
    """Determinism: the chain of a full flow (every transaction type), replayed in two
    fresh interpreters with different hash seeds and stores, gives byte-identical roots."""
    c = Consortium(tmp_path, n_peers=2, threshold=1)
    with trio.fail_after(40):
        async with running(c) as (node, orderer, peers, _):
            alice = await enroll(c, node, "peer-a-1", "alice", "org-a", {"role": "patient"}, everywhere=peers)
            doc = await enroll(c, node, "peer-b-2", "dr", "org-b", {"role": "doctor", "department": "cardiology"},
                               everywhere=peers)
            await alice.submit("peer-a-1", "store", store_body(alice.keys, "rec-1")[0])
            await alice.submit("peer-a-1", "set_policy", {"policy": parse_policy(CARDIOLOGY_POLICY).to_msgpack()})
            for rid in ("r1", "r2"):
                await doc.submit("peer-b-2", "access_request", {"request_id": rid, "patient": "alice",
                                                                "record_id": "rec-1", "operation": "read",
                                                                "purpose": "care"})
            await alice.submit("peer-a-1", "grant", {"grant_id": "g", "request_id": "r1", "threshold": 1,
                                                     "expires_at": int(time.time()) + 600,
                                                     "shares": {"peer-a-1": bytes(32)}})
            await alice.submit("peer-a-1", "deny_request", {"request_id": "r2", "reason": "no"})
            await alice.submit("peer-a-1", "revoke_grant", {"grant_id": "g", "reason": "done"})
            await doc.submit("peer-b-2", "revoke_cert", {"subject": "dr", "reason": "left"})
            for p in peers.values():
                await p.wait_for_height(peers["peer-b-2"].height)
            roots = {p.ledger.head()[2] for p in peers.values()}
            assert len(roots) == 1
            chain = peers["peer-a-1"].store.blocks(0, 10_000)
    (tmp_path / "chain.msgpack").write_bytes(msgpack.packb(chain))
    outs = []
    for seed, kind in (("1", "memory"), ("12345", "sqlite")):
        proc = await trio.run_process(
            [sys.executable, "-c", REPLAY, str(tmp_path / "chain.msgpack"), kind, str(tmp_path / f"replay-{seed}.db")],
            capture_stdout=True, env=_env(PYTHONHASHSEED=seed), cwd=tmp_path)
        outs.append(proc.stdout.decode().strip())
    assert outs[0] == outs[1] == roots.pop().hex()


async def _read_line(stream, buf: bytearray) -> str:
    while b"\n" not in buf:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise EOFError("process closed its output")
        buf.extend(chunk)
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line.decode()


async def test_peer_process_killed_mid_commit_restarts_consistent(tmp_path):
    """SIGKILL a peer process while blocks stream in; restarted, it reaches the same head
    and state root as the in-process peer, and its stored chain verifies."""
    c = Consortium(tmp_path, n_peers=2, threshold=1)
    remote = "peer-b-2"
    key_file = tmp_path / "p.key"
    KeyStore.create_key_file(key_file)
    KeyStore(tmp_path / "p.keys", key_file=key_file).save(c.peer_keys[remote].to_bytes())
    with trio.fail_after(50):
        async with bus.open_node() as node:
            address = await node.listen("tcp://127.0.0.1:0")
            c.manifest.agents = {"orderer": address, "peer-a-1": address}
            (tmp_path / "manifest.json").write_text(c.manifest.to_json())
            argv = [sys.executable, "-m", "agents.peer", "serve", "--id", remote, "--manifest",
                    str(tmp_path / "manifest.json"), "--keystore", str(tmp_path / "p.keys"), "--key-file",
                    str(key_file), "--data", str(tmp_path / remote)]

            async def start_remote():
                proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, env=_env(), cwd=tmp_path)
                line = await _read_line(proc.stdout, bytearray())
                assert line.startswith("ready "), line
                node.add_route(remote, line.split()[1])
                return proc

            async with trio.open_nursery() as nursery:
                await nursery.start(c.orderer(batch_size=20, batch_timeout=0.01).run, node)
                local = c.peer("peer-a-1")
                await nursery.start(local.run, node)
                alice = await enroll(c, node, "peer-a-1", "alice", "org-a", {"role": "patient"})
                proc = await start_remote()

                async def remote_height():
                    return (await alice.endpoint.request(remote, "peer.query", {"what": "head"}, timeout=5))["height"]

                async def stream(first, count):
                    for i in range(first, first + count):
                        txs = [alice.tx("store", store_body(alice.keys, f"rec-{i}-{j}")[0]) for j in range(20)]
                        await alice.endpoint.request("peer-a-1", "peer.submit", {"txs": txs, "wait": False})
                        await trio.sleep(0.01)

                async with trio.open_nursery() as n:
                    n.start_soon(stream, 0, 60)
                    while await remote_height() < 10:
                        await trio.sleep(0.01)
                    proc.kill()  # SIGKILL, while blocks keep coming
                    await proc.wait()
                assert proc.returncode == -9
                await stream(60, 10)
                last = await alice.submit("peer-a-1", "store", store_body(alice.keys, "rec-last")[0])
                assert last["mark"] == "ok"  # ordered after everything streamed before it
                # restarted from its data directory, it catches up to the same state
                proc = await start_remote()
                while await remote_height() < last["height"]:
                    await trio.sleep(0.05)
                head = await alice.endpoint.request(remote, "peer.query", {"what": "head"})
                assert (head["height"], head["hash"], head["root"]) == local.ledger.head()
                proc.terminate()
                await proc.wait()
                nursery.cancel_scope.cancel()
    assert verify_main(["--data", str(tmp_path / remote)]) == 0
    store = LedgerStore(tmp_path / remote / "ledger.sqlite", readonly=True)
    assert len(store.scan("record/alice/")) == 70 * 20 + 1
    store.close()


async def test_bench_ledger_smoke(tmp_path):
    from agents.bench.ledger import run_bench

    with trio.fail_after(40):
        report = await run_bench(120, batch=40, window=80, data_dir=tmp_path)
    for r in report["results"]:
        assert r["transactions"] == r["valid"] == 120
        assert r["verify_calls"] >= 4 * 120  # every peer verified every transaction
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]


async def test_enrollment_refuses_reserved_attribute_names(tmp_path):
    """A token from org-a's registrar for attributes organization=org-b, id=dave does not
    enroll anyone: the reserved names come from the certificate's own fields only."""
    c = Consortium(tmp_path)
    with trio.fail_after(30):
        async with running(c) as (node, orderer, peers, _):
            keys = AgentKeys.generate()
            ep = make_endpoint(node, enroll_id(keys.ecdsa_public), keys.ecdsa_private, c.manifest.directory())
            for attrs in ({"role": "doctor", "organization": "org-b", "id": "dave"},
                          {"role": "doctor", "organization": "org-b"}, {"role": "doctor", "id": "dave"}):
                with pytest.raises(bus.RemoteError) as info:
                    await ep.request("peer-a-1", "peer.enroll", enroll_body(c, keys, "mallory", "org-a", attrs))
                assert info.value.code == "enroll.invalid" and "reserved" in info.value.message
            assert peers["peer-a-1"].ledger.certificate("mallory") is None
            assert peers["peer-a-1"].ledger.head()[0] == 0  # nothing was written


async def test_enrollment_refuses_a_subject_named_like_a_consortium_node(tmp_path):
    """Attack review (issue 15): a registrar's token for subject "peer-b-3" (another hospital's peer)
    or the orderer's id enrolled a *user* of that name (the ledger checks no name against the
    configuration: tests/core/test_register_node_ids.py keeps that open). Such a user would shadow
    the node wherever it is not known statically (a node removed by a change, one added later that a
    storage node does not know). An honest peer now refuses to issue it."""
    c = Consortium(tmp_path)
    with trio.fail_after(30):
        async with running(c) as (node, orderer, peers, _):
            keys = AgentKeys.generate()
            ep = make_endpoint(node, enroll_id(keys.ecdsa_public), keys.ecdsa_private, c.manifest.directory())
            for subject in ("peer-b-3", "peer-a-2", c.manifest.orderer):
                with pytest.raises(bus.RemoteError) as info:
                    await ep.request("peer-a-1", "peer.enroll",
                                     enroll_body(c, keys, subject, "org-a", {"role": "patient"}))
                assert info.value.code == "enroll.denied" and "consortium node" in info.value.message, info.value
            assert peers["peer-a-1"].ledger.head()[0] == 0  # nothing was written
            reply = await ep.request("peer-a-1", "peer.enroll", enroll_body(c, keys, "mallory", "org-a",
                                                                            {"role": "patient"}))
            assert reply["cert"]["subject"] == "mallory"
