"""Session 12's attack on grant key shares bound by their digest alone (version 3, issue
14), against a real peer: mallory, a patient of her own, commits a grant for the doctor
whose shares are alice's sealed share bytes (a copy of the peer's store at rest, say), so
that the grant's digest matches them, and delivers them: a version-3 share would open
there (it names no grant) and the doctor would read alice's label on under mallory's
grant. The peer refuses it (``share.mismatch``): version 4 is masked with its grant id
and index, and a delivered version-3 share is refused; one kept in the peer's store from
before version 4 is still used."""

from __future__ import annotations

import hashlib
import time

import msgpack
import pytest
import trio
from nacl.public import PublicKey as BoxPublicKey
from nacl.public import SealedBox

import bus
from agents.peer import share_context
from agents.testing.consortium import CARDIOLOGY_POLICY
from core import pre
from core.policy import parse as parse_policy
from core.protocol import PeerReencryptReply, codes
from tests.agents.test_peer import Consortium, enroll, running, store_body


async def test_a_share_of_one_grant_is_refused_under_another_grant_committing_its_digest(tmp_path):
    c = Consortium(tmp_path, n_peers=1, threshold=1)
    (pid,) = c.infos
    proxy = pre.Proxy(1, c.infos[pid].box_key)
    with trio.fail_after(60):
        async with running(c) as (node, orderer, peers, _):
            alice = await enroll(c, node, pid, "alice", "org-a", {"role": "patient"})
            mallory = await enroll(c, node, pid, "mallory", "org-a", {"role": "patient"})
            doc = await enroll(c, node, pid, "dr", "org-a", {"role": "doctor", "department": "cardiology"})
            receiver = pre.PublicKey.from_bytes(doc.cert["pre_key"])
            policy = {"policy": parse_policy(CARDIOLOGY_POLICY).to_msgpack()}
            for who, record_id in ((alice, "rec-a"), (mallory, "rec-m")):
                await who.submit(pid, "store", store_body(who.keys, record_id)[0])
                await who.submit(pid, "set_policy", policy)
            for request_id, patient, record_id in (("ra", "alice", "rec-a"), ("rm", "mallory", "rec-m"),
                                                   ("ra3", "alice", "rec-a")):
                reply = await doc.submit(pid, "access_request", {"request_id": request_id, "patient": patient,
                                                                 "record_id": record_id, "operation": "read",
                                                                 "purpose": None})
                assert reply["mark"] == "ok"

            async def grant(who, grant_id, request_id, sealed):
                reply = await who.submit(pid, "grant", {
                    "grant_id": grant_id, "request_id": request_id, "threshold": 1,
                    "expires_at": int(time.time()) + 600, "shares": {pid: hashlib.sha256(sealed).digest()}})
                assert reply["mark"] == "ok"

            async def deliver(who, grant_id, sealed):
                return await who.endpoint.request(pid, "peer.deliver_share",
                                                  {"grant_id": grant_id, "index": 1, "sealed": sealed})

            # alice's grant, with its share as patients seal it
            (alices,) = pre.make_key_shares(alice.keys.label_key("cardiology"), receiver, [proxy], 1,
                                            share_context("g-a"), bound=True)
            await grant(alice, "g-a", "ra", alices.sealed)
            assert await deliver(alice, "g-a", alices.sealed) == []
            # mallory's grant commits the digest of alice's sealed share, and delivers those bytes
            await grant(mallory, "g-m", "rm", alices.sealed)
            with pytest.raises(bus.RemoteError) as info:
                await deliver(mallory, "g-m", alices.sealed)
            assert info.value.code == codes.SHARE_MISMATCH
            # a version-3 share ([3, rk]: no grant in it) delivered: refused, even for its own grant
            rk = pre.open_key_share(alices, c.peer_keys[pid].box_private, expected_context=share_context("g-a"),
                                    expected_index=1, expected_digest=hashlib.sha256(alices.sealed).digest()).rk
            v3 = SealedBox(BoxPublicKey(proxy.box_public_key)).encrypt(msgpack.packb([3, rk.to_bytes()]))
            await grant(alice, "g-a3", "ra3", v3)
            with pytest.raises(bus.RemoteError) as info:
                await deliver(alice, "g-a3", v3)
            assert info.value.code == codes.SHARE_MISMATCH
            # ... but one the peer kept before version 4 is read back from its store and used
            peers[pid].store.put_share("g-a3", 1, v3)
            ask = {"grant_id": "g-a3", "patient": "alice", "record_id": "rec-a", "request_id": "ra3"}
            doc_ep = doc.endpoint
            reply = PeerReencryptReply.from_wire(await doc_ep.request(pid, "peer.reencrypt", ask))
            assert int.from_bytes(reply.share[:4], "big") == 1
            # and the doctor reads nothing under mallory's grant: the peer holds no share of it
            with pytest.raises(bus.RemoteError) as info:
                await doc_ep.request(pid, "peer.reencrypt", {"grant_id": "g-m", "patient": "mallory",
                                                             "record_id": "rec-m", "request_id": "rm"})
            assert info.value.code == codes.SHARE_MISSING
