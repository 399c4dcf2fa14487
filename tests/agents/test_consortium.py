"""agents.consortium's CertificateFollower: a storage node's key directory follows the
ledger's certificates through the orderer's blocks (core.lightclient underneath)."""

from __future__ import annotations

import secrets
from typing import Any
import time

import trio

import bus
from agents.consortium import CertificateFollower
from agents.orderer import OrdererAgent
from agents.runtime import make_endpoint
from agents.testing.consortium import TestConsortium
from core import ecdsa, pre
from core.identity import Certificate
from core.ledger import Block
from core.tx import Transaction


def register_body(cert: dict | str) -> dict:
    """A ``register`` body: the certificate and a fresh enrollment token id (core.enrollment)."""
    return {"cert": cert, "token_id": secrets.token_bytes(16)}


class World:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        c = self.consortium = TestConsortium.build([("p-a", "org-a"), ("p-b", "org-b")], name="c", threshold=1,
                                                   storage=["storage-1"], created_at=1)
        self.orderer_key, self.peers, self.storage = c.orderer_key, c.peer_keys, c.storage_keys["storage-1"]
        self.config, self.genesis, self.manifest = c.config, c.genesis.to_bytes(), c.manifest
        self.users: dict[str, bytes] = {}

    def orderer(self) -> OrdererAgent:
        return self.consortium.orderer(self.tmp, batch_timeout=0.01)

    def register(self, subject: str, peer: str, *, signer: str | None = None, org: str | None = None) -> bytes:
        """A register transaction by ``peer`` (certificate for ``org``, default the peer's own,
        signed with ``signer``'s key, default the peer's)."""
        key = ecdsa.generate_private_key()
        self.users[subject] = key
        recv = pre.KeyPair.derive(pre.new_master_secret(), pre.RECEIVE_LABEL)
        now = int(time.time())
        cert = Certificate(f"serial-{subject}", subject, org or self.config.peer(peer).org, {"role": "patient"},
                           ecdsa.public_key(key), pre.box_keypair()[1], recv.public.to_bytes(),
                           recv.prove(subject).to_bytes(), now - 60, now + 3600, peer,
                           ).sign(self.peers[signer or peer].ecdsa_private)
        return Transaction.create("register", peer, register_body(cert.to_dict()), self.peers[peer].ecdsa_private,
                                  int(now * 1000)).to_bytes()

    async def one_block(self, node, nursery) -> tuple[OrdererAgent, Any, CertificateFollower]:
        """A running orderer with block 1 (alice registered by p-a) cut, p-a's endpoint, and
        storage-1's certificate follower, not started."""
        orderer = self.orderer()
        await nursery.start(orderer.run, node)
        peer = make_endpoint(node, "p-a", self.peers["p-a"].ecdsa_private, self.manifest.directory())
        await peer.request("orderer", "orderer.submit", {"txs": [self.register("alice", "p-a")]})
        while (await peer.request("orderer", "orderer.head", {}))["height"] < 1:
            await trio.sleep(0.01)
        directory = self.manifest.directory()
        endpoint = make_endpoint(node, "storage-1", self.storage.ecdsa_private, directory)
        return orderer, peer, CertificateFollower(endpoint, self.manifest, directory)

    def revoke(self, submitter: str, subject: str) -> bytes:
        key = self.peers[submitter].ecdsa_private if submitter in self.peers else self.users[submitter]
        return Transaction.create("revoke_cert", submitter, {"subject": subject, "reason": "r"}, key,
                                  int(time.time() * 1000)).to_bytes()


async def _until(predicate) -> None:
    while not predicate():
        await trio.sleep(0.01)


async def test_follower_learns_and_forgets_certificates(tmp_path):
    w = World(tmp_path)
    with trio.fail_after(30):
        async with bus.open_node() as node, trio.open_nursery() as nursery:
            await nursery.start(w.orderer().run, node)
            peer = make_endpoint(node, "p-a", w.peers["p-a"].ecdsa_private, w.manifest.directory())

            async def submit(*txs: bytes) -> None:
                await peer.request("orderer", "orderer.submit", {"txs": list(txs)})

            # blocks committed before the follower starts are caught up from orderer.blocks
            await submit(w.register("alice", "p-a"))
            while (await peer.request("orderer", "orderer.head", {}))["height"] < 1:
                await trio.sleep(0.01)
            directory = w.manifest.directory()
            endpoint = make_endpoint(node, "storage-1", w.storage.ecdsa_private, directory)
            follower = CertificateFollower(endpoint, w.manifest, directory)
            await nursery.start(follower.run)
            assert directory("alice") == ecdsa.public_key(w.users["alice"])

            # then from the blocks topic (one submit: one block): a forged issuer signature and
            # a peer registering for another organization are not learned, a good registration is
            await submit(w.register("eve", "p-a", signer="p-b"), w.register("mallory", "p-b", org="org-a"),
                         w.register("bob", "p-b"))
            await _until(lambda: directory("bob") is not None)
            assert directory("bob") == ecdsa.public_key(w.users["bob"])
            assert directory("eve") is None and directory("mallory") is None

            # revocations by the subject and by its organization's peer apply, by a stranger not
            await submit(w.revoke("p-a", "bob"), w.revoke("alice", "alice"))
            await _until(lambda: directory("alice") is None)
            assert directory("bob") == ecdsa.public_key(w.users["bob"])
            await submit(w.revoke("p-b", "bob"))
            await _until(lambda: directory("bob") is None)
            assert follower.client.certificates() == {}
            assert follower.statistics().changes == 4 and follower.statistics().refused == 0

            # a block not signed by the orderer is refused and counted, and changes nothing
            forged = Block.make(follower.height + 1, follower.client.head_hash, int(time.time() * 1000),
                                [w.register("carol", "p-a")], ecdsa.generate_private_key())
            assert not await follower.apply_block(forged.to_bytes())
            assert not await follower.apply_block(b"\x93junk")
            stats = follower.statistics()
            assert stats.refused == 2 and stats.height == follower.height
            assert directory("carol") is None and follower.client.certificates() == {}
            nursery.cancel_scope.cancel()


async def test_a_block_the_follower_has_applied_already_asks_the_orderer_nothing(tmp_path):
    """A copy of an applied block (the topic delivering what catch_up fetched) is skipped; a
    block after a gap is caught up from orderer.blocks."""
    w = World(tmp_path)
    with trio.fail_after(30):
        async with bus.open_node() as node, trio.open_nursery() as nursery:
            orderer, peer, follower = await w.one_block(node, nursery)
            fetched: list[int] = []
            fetch = follower._fetch

            async def counting(start, kw):
                fetched.append(start)
                return await fetch(start, kw)

            follower._fetch = counting
            await nursery.start(follower.run)
            assert fetched == [1] and follower.height == 1  # caught up at start
            applied = (await peer.request("orderer", "orderer.blocks", {"from": 1, "limit": 1}))["blocks"][0]
            await orderer.endpoint.publish("blocks", {"block": applied})  # a copy of block 1
            await trio.sleep(0.2)
            assert fetched == [1] and follower.height == 1 and follower.statistics().refused == 0
            # a block after a gap (height 4 while the follower is at 2): caught up from the orderer
            await peer.request("orderer", "orderer.submit", {"txs": [w.register("bob", "p-a")]})
            await _until(lambda: follower.height == 2)
            ahead = Block.make(4, b"\0" * 32, int(time.time() * 1000), [w.register("carol", "p-a")], w.orderer_key)
            await orderer.endpoint.publish("blocks", {"block": ahead.to_bytes()})
            await _until(lambda: fetched[-1] == 3)  # (block 2 came on the topic: no fetch for it)
            assert follower.height == 2
            nursery.cancel_scope.cancel()
