"""Peers with etcd ordering: they commit blocks signed by any orderer of the genesis's set and
refuse one signed by another key; a peer joining after the chain left the etcd window catches up
from the other peers; a submission a leader lost is resubmitted and committed once."""

from __future__ import annotations

import time
from collections import Counter

import pytest
import trio

import bus
from agents.consortium import CertificateFollower
from agents.runtime import make_endpoint
from agents.testing.consortium import TestConsortium
from core import ecdsa
from core.ledger import Block
from core.tx import Transaction


def _tx(c, peer, i):
    return Transaction.create("revoke_cert", peer, {"subject": f"s{i}", "reason": "r"},
                              c.peer_keys[peer].ecdsa_private, int(time.time() * 1000)).to_bytes()


async def test_peer_accepts_any_orderer_of_the_set_and_refuses_others(tmp_path):
    c = TestConsortium.build([("p1", "org")], name="c", threshold=1, orderers=3)
    peer = c.peer("p1", tmp_path / "p1")
    assert peer.orderers == ["orderer-1", "orderer-2", "orderer-3"]
    ts = int(time.time() * 1000)
    head = c.genesis
    with trio.fail_after(30):
        async with bus.open_node() as node, trio.open_nursery() as nursery:
            await nursery.start(peer.run, node)  # no orderer node runs: blocks come from the test
            for height, oid in enumerate(["orderer-2", "orderer-3", "orderer-1"], start=1):
                block = Block.make(height, head.hash, ts, [_tx(c, "p1", height)], c.orderer_nodes[oid])
                assert await peer.sync.commit_raw(block.to_bytes()) == "committed"
                head = block
            outsider = Block.make(4, head.hash, ts, [_tx(c, "p1", 4)], ecdsa.generate_private_key())
            assert await peer.sync.commit_raw(outsider.to_bytes()) == "bad"
            assert peer.ledger.height == 3
            nursery.cancel_scope.cancel()


async def test_late_peer_catches_up_from_peers_beyond_the_window(etcd, tmp_path):
    c = TestConsortium.build([("p1", "org"), ("p2", "org")], name="c", threshold=1, orderers=2, storage=["s1"])
    with trio.fail_after(90):
        async with bus.open_node() as node, trio.open_nursery() as nursery:
            for node_id in c.orderer_nodes:
                await nursery.start(c.ordering_node(node_id, etcd.endpoints, batch_size=1, window=3).run, node)
            p1 = c.peer("p1", tmp_path / "p1")
            await nursery.start(p1.run, node)
            for i in range(8):
                await p1.submit([_tx(c, "p1", i)], wait=True)
            assert p1.ledger.height >= 8
            p2 = c.peer("p2", tmp_path / "p2")  # starts after blocks 1..5 left etcd
            await nursery.start(p2.run, node)
            await p2.wait_for_height(p1.ledger.height)
            assert p2.ledger.head() == p1.ledger.head()
            # and it follows new blocks from then on
            await p1.submit([_tx(c, "p1", 99)], wait=True)
            await p2.wait_for_height(p1.ledger.height)
            # a storage node's certificate follower, too, fetches the pruned blocks from the peers
            directory = c.manifest.directory()
            follower = CertificateFollower(make_endpoint(node, "s1", c.storage_keys["s1"].ecdsa_private, directory),
                                           c.manifest, directory)
            with pytest.raises(bus.RemoteError) as info:
                await follower.endpoint.request("orderer-1", "orderer.blocks", {"from": 1, "limit": 10})
            assert info.value.code == "orderer.pruned"
            assert await follower.catch_up()
            assert follower.height == p1.ledger.height
            nursery.cancel_scope.cancel()


async def test_a_lost_submission_is_resubmitted_and_committed_once(etcd, tmp_path):
    c = TestConsortium.build([("p1", "org")], name="c", threshold=1, orderers=2)
    with trio.fail_after(90):
        async with bus.open_node() as node, trio.open_nursery() as nursery:
            nodes = [c.ordering_node(n, etcd.endpoints) for n in c.orderer_nodes]
            for n in nodes:
                await nursery.start(n.run, node)
            while not any(n.is_leader for n in nodes):
                await trio.sleep(0.02)
            leader = next(n for n in nodes if n.is_leader)
            fresh = leader._fresh
            lost = []

            def lose_first(batch):  # the leader acknowledged the batch, then "dies" before appending it
                if not lost:
                    lost.extend(batch)
                    return []
                return fresh(batch)

            leader._fresh = lose_first
            p1 = c.peer("p1", tmp_path / "p1")
            p1.forwarder.resubmit_after = 0.3
            await nursery.start(p1.run, node)
            raw = _tx(c, "p1", 1)
            [(tx_id, height, mark)] = await p1.submit([raw], wait=True)
            assert lost == [raw] and p1.forwarder.resubmitted >= 1
            assert height >= 1
            # more resubmissions may cross the commit: the chain still holds it once
            await trio.sleep(1.0)
            await p1.submit([_tx(c, "p1", 2)], wait=True)
            counts = Counter()
            for _, _, data, _, _ in p1.store.block_rows(1):
                counts.update(Block.from_bytes(data).txs)
            assert counts[raw] == 1
            nursery.cancel_scope.cancel()
