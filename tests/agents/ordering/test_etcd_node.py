"""The etcd orderer node against a real 3-member etcd cluster: the leader appends signed blocks;
a deposed leader's append fails (the txn's compare); two would-be leaders never fork the chain;
followers forward submissions and serve blocks from etcd; the block window; and, without etcd on a
virtual clock, when the leader's cutter cuts."""

from __future__ import annotations

import time

import pytest
import trio

import bus
from agents.ordering import EtcdClient, chain_prefix
from agents.runtime import make_endpoint
from agents.testing.consortium import TestConsortium
from core import ecdsa
from core.ledger import Block
from core.tx import Transaction



def _consortium():
    return TestConsortium.build([("p1", "org")], name="c", threshold=1, orderers=2)


def _tx(c, i):
    return Transaction.create("revoke_cert", "p1", {"subject": f"s{i}", "reason": "r"},
                              c.peer_keys["p1"].ecdsa_private, int(time.time() * 1000)).to_bytes()


async def _wait_leader(*nodes, timeout=10.0):
    with trio.fail_after(timeout):
        while True:
            leaders = [n for n in nodes if n.is_leader]
            if leaders:
                return leaders[0]
            await trio.sleep(0.02)


async def _chain(etcd_endpoints, c):
    """Every block etcd holds for the chain, in height order."""
    prefix = chain_prefix(c.genesis, c.name) + b"block/"
    async with EtcdClient(etcd_endpoints) as client:
        kvs, _ = await client.range(prefix, prefix[:-1] + b"0")
    return [Block.from_bytes(kv.value) for kv in kvs]


async def test_leader_appends_followers_forward_and_serve(etcd):
    c = _consortium()
    keys = {n: ecdsa.public_key(k) for n, k in c.orderer_nodes.items()}
    with trio.fail_after(60):
        async with bus.open_node() as node, trio.open_nursery() as nursery:
            nodes = [c.ordering_node(n, etcd.endpoints, batch_size=4, batch_timeout=0.05) for n in c.orderer_nodes]
            for n in nodes:
                await nursery.start(n.run, node)
            leader = await _wait_leader(*nodes)
            follower = next(n for n in nodes if n is not leader)
            ep = make_endpoint(node, "p1", c.peer_keys["p1"].ecdsa_private, c.directory())
            sub = await ep.subscribe(follower.orderer_id, "blocks")
            # submitted to the follower: forwarded to the leader, cut, appended, published by both
            reply = await ep.request(follower.orderer_id, "orderer.submit", {"txs": [_tx(c, i) for i in range(6)]})
            assert len(reply["tx_ids"]) == 6
            got, prev = 0, c.genesis
            while got < 6:
                block = Block.from_bytes((await sub.receive()).body["block"])
                assert block.height == prev.height + 1 and block.prev_hash == prev.hash
                assert block.is_valid_signature(keys[leader.orderer_id])  # the leader's own key
                got += len(block.txs)
                prev = block
            for n in nodes:
                while (await ep.request(n.orderer_id, "orderer.head", {}))["height"] < prev.height:
                    await trio.sleep(0.01)
                assert await ep.request(n.orderer_id, "orderer.head", {}) == {"height": prev.height,
                                                                              "hash": prev.hash}
                blocks = (await ep.request(n.orderer_id, "orderer.blocks", {"from": 0, "limit": 50}))["blocks"]
                assert [Block.from_bytes(b).height for b in blocks] == list(range(prev.height + 1))
            with pytest.raises(bus.RemoteError) as info:
                await ep.request(follower.orderer_id, "orderer.submit", {"tx": b"\x93junk"})
            assert info.value.code == "bad-request"
            nursery.cancel_scope.cancel()
    assert [b.height for b in await _chain(etcd.endpoints, c)] == list(range(1, prev.height + 1))


async def test_a_deposed_leader_cannot_append(etcd):
    """The leader loses its election key (its lease revoked: as if it expired while the node was
    paused); its next append fails on the txn's compare, and the other node leads on the same chain."""
    c = _consortium()
    with trio.fail_after(60):
        async with bus.open_node() as node, trio.open_nursery() as nursery:
            first = c.ordering_node("orderer-1", etcd.endpoints, batch_size=1)
            await nursery.start(first.run, node)
            await _wait_leader(first)
            ep = make_endpoint(node, "p1", c.peer_keys["p1"].ecdsa_private, c.directory())
            await ep.request("orderer-1", "orderer.submit", {"tx": _tx(c, 0)})
            while first.height < 1:
                await trio.sleep(0.01)
            election = first._leader_key
            async with EtcdClient(etcd.endpoints) as client:
                kv = await client.get(election)
                assert kv is not None and kv.value == b"orderer-1"
                won_at = kv.create_revision
                # the key is deleted (lease gone) and another contender takes it at once
                ok, _, _ = await client.txn([EtcdClient.create_revision_is(election, won_at)],
                                            [EtcdClient.delete_range(election, election + b"\x00")])
                assert ok
                lease = await client.lease_grant(5)
                ok, _, _ = await client.txn([EtcdClient.create_revision_is(election, 0)],
                                            [EtcdClient.put(election, b"usurper", lease=lease)])
                assert ok
                # the deposed node's append of block 2 is refused by etcd
                assert not await first._append([_tx(c, 1)], won_at)
                assert len(await _chain(etcd.endpoints, c)) == 1
                await client.lease_revoke(lease)
            nursery.cancel_scope.cancel()


async def test_two_would_be_leaders_never_fork(etcd):
    """Two nodes each believing they lead (both hold an election revision) append concurrently:
    only the election key's holder writes, and each height is written once."""
    c = _consortium()
    with trio.fail_after(60):
        async with bus.open_node() as node, trio.open_nursery() as nursery:
            a = c.ordering_node("orderer-1", etcd.endpoints, batch_size=1)
            b = c.ordering_node("orderer-2", etcd.endpoints, batch_size=1)
            for n in (a, b):
                await nursery.start(n.run, node)
            leader = await _wait_leader(a, b)
            other = b if leader is a else a
            async with EtcdClient(etcd.endpoints) as client:
                won_at = (await client.get(leader._leader_key)).create_revision
            # the other node acts on a stale belief that it leads, at the same heights
            other._tip = leader._tip = (leader.height, leader.head_hash, 0)
            results = {}

            async def append(n, i):
                results[n.orderer_id, i] = await n._append([_tx(c, 100 + i + (50 if n is other else 0))], won_at
                                                            if n is leader else won_at - 1)

            async with trio.open_nursery() as racers:
                for i in range(5):
                    racers.start_soon(append, leader, i)
                    racers.start_soon(append, other, i)
            assert not any(ok for (oid, _), ok in results.items() if oid == other.orderer_id)
            chain = await _chain(etcd.endpoints, c)
            assert [blk.height for blk in chain] == list(range(1, len(chain) + 1))
            prev = c.genesis
            key = ecdsa.public_key(c.orderer_nodes[leader.orderer_id])
            for blk in chain:
                assert blk.prev_hash == prev.hash and blk.is_valid_signature(key)
                prev = blk
            nursery.cancel_scope.cancel()


async def test_block_window_and_pruned_reads(etcd):
    c = _consortium()
    with trio.fail_after(60):
        async with bus.open_node() as node, trio.open_nursery() as nursery:
            n = c.ordering_node("orderer-1", etcd.endpoints, batch_size=1, window=3)
            await nursery.start(n.run, node)
            await _wait_leader(n)
            ep = make_endpoint(node, "p1", c.peer_keys["p1"].ecdsa_private, c.directory())
            for i in range(6):
                await ep.request("orderer-1", "orderer.submit", {"tx": _tx(c, i)})
                while n.height < i + 1:
                    await trio.sleep(0.01)
            assert [b.height for b in await _chain(etcd.endpoints, c)] == [4, 5, 6]
            blocks = (await ep.request("orderer-1", "orderer.blocks", {"from": 4, "limit": 10}))["blocks"]
            assert [Block.from_bytes(b).height for b in blocks] == [4, 5, 6]
            with pytest.raises(bus.RemoteError) as info:
                await ep.request("orderer-1", "orderer.blocks", {"from": 2, "limit": 10})
            assert info.value.code == "orderer.pruned"
            nursery.cancel_scope.cancel()


async def test_only_peers_and_orderer_nodes_submit_and_only_nodes_read(etcd):
    c = TestConsortium.build([("p1", "org")], name="c", threshold=1, orderers=2, storage=["s1"])
    stranger = ecdsa.generate_private_key()
    directory = c.directory()
    directory.add_static("x", ecdsa.public_key(stranger))
    with trio.fail_after(60):
        async with bus.open_node() as node, trio.open_nursery() as nursery:
            n = c.ordering_node("orderer-1", etcd.endpoints, directory=directory)
            await nursery.start(n.run, node)
            await _wait_leader(n)
            outsider = make_endpoint(node, "x", stranger, directory)
            storage = make_endpoint(node, "s1", c.storage_keys["s1"].ecdsa_private, directory)
            for ep, kinds in ((outsider, ("orderer.submit", "orderer.head", "orderer.blocks")),
                              (storage, ("orderer.submit",))):
                for kind in kinds:
                    body = {"tx": _tx(c, 0)} if kind == "orderer.submit" else {"from": 0, "limit": 1} \
                        if kind == "orderer.blocks" else {}
                    with pytest.raises(bus.RemoteError) as info:
                        await ep.request("orderer-1", kind, body)
                    assert info.value.code == "forbidden"
            assert (await storage.request("orderer-1", "orderer.head", {}))["height"] == 0
            # another orderer node of the set may submit (forwarding to its leader)
            other = make_endpoint(node, "orderer-2", c.orderer_nodes["orderer-2"], directory)
            reply = await other.request("orderer-1", "orderer.submit", {"tx": _tx(c, 1)})
            assert len(reply["tx_id"]) == 32
            nursery.cancel_scope.cancel()


async def test_client_moves_to_another_member_when_one_dies(etcd):
    async with EtcdClient(etcd.endpoints, timeout=5.0) as client:  # a busy machine's fsync
        ok, _, _ = await client.txn([EtcdClient.create_revision_is(b"/k", 0)], [EtcdClient.put(b"/k", b"v1")])
        assert ok
        ok, _, _ = await client.txn([EtcdClient.create_revision_is(b"/k", 0)], [EtcdClient.put(b"/k", b"v2")])
        assert not ok  # the key exists: the compare fails, nothing is written
        etcd.kill(0)
        with trio.fail_after(20):
            while True:
                try:
                    kv = await client.get(b"/k")
                    break
                except Exception:
                    await trio.sleep(0.1)
        assert kv is not None and kv.value == b"v1"


async def test_the_cut_interval_runs_from_the_start_of_the_previous_cut(autojump_clock):
    """The leader's cutter alone (no etcd: its append takes 0.4 s of virtual time): a transaction that
    arrives while a block is appended is cut 1.0 s after that cut BEGAN, not 1.0 s after it ended."""
    c = _consortium()
    node = c.ordering_node("orderer-1", ["http://127.0.0.1:1"], batch_size=10, batch_timeout=1.0)
    t0 = trio.current_time()
    appended = []

    async def slow_append(txs, election_revision):
        appended.append((trio.current_time() - t0, len(txs)))
        await trio.sleep(0.4)  # an etcd round trip and its fsync
        return True

    node._append = slow_append
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node._cutter, 1, nursery.cancel_scope)
        node._queue.add((_tx(c, 0),))  # idle: cut at once
        await trio.sleep(0.1)
        node._queue.add((_tx(c, 1),))  # during the first append
        while len(appended) < 2:
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert appended[0] == (pytest.approx(0.0, abs=0.02), 1)
    assert appended[1] == (pytest.approx(1.0, abs=0.02), 1)  # not 1.4
