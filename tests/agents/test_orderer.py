"""The embedded orderer: batching by size and time, persistence across restarts, access rules."""

from __future__ import annotations

import time

import pytest
import trio

import bus
from agents.orderer import OrdererAgent
from agents.runtime import make_endpoint
from agents.testing.consortium import TestConsortium
from core import ecdsa
from core.ledger import Block
from core.tx import Transaction


def _setup(tmp_path):
    """A one-peer consortium (p1 of org, threshold 1) and a stranger "x" the directory knows."""
    c = TestConsortium.build([("p1", "org")], name="c", threshold=1, created_at=1)
    stranger = ecdsa.generate_private_key()
    directory = c.directory()
    directory.add_static("x", ecdsa.public_key(stranger))
    return c.orderer_key, c.peer_keys["p1"], c.genesis, directory, stranger


def _tx(peer, i):
    return Transaction.create("revoke_cert", "p1", {"subject": f"s{i}", "reason": "r"}, peer.ecdsa_private,
                              int(time.time() * 1000)).to_bytes()


async def test_batches_persistence_and_access(tmp_path):
    okey, peer, genesis, directory, stranger = _setup(tmp_path)

    def orderer(**kw):
        return OrdererAgent(orderer_id="orderer", signing_key=okey, genesis=genesis.to_bytes(),
                            data_dir=tmp_path, directory=directory, **kw)

    with trio.fail_after(20):
        async with bus.open_node() as node:
            async with trio.open_nursery() as nursery:
                await nursery.start(orderer(batch_size=3, batch_timeout=0.2).run, node)
                ep = make_endpoint(node, "p1", peer.ecdsa_private, directory)
                sub = await ep.subscribe("orderer", "blocks")
                reply = await ep.request("orderer", "orderer.submit", {"txs": [_tx(peer, i) for i in range(7)]})
                assert len(reply["tx_ids"]) == 7
                sizes = []
                prev = genesis
                for _ in range(3):
                    block = Block.from_bytes((await sub.receive()).body["block"])
                    assert block.is_valid_signature(ecdsa.public_key(okey))
                    assert block.height == prev.height + 1 and block.prev_hash == prev.hash
                    sizes.append(len(block.txs))
                    prev = block
                assert sizes == [3, 3, 1]  # two full batches, then the timeout cut the rest
                with pytest.raises(bus.RemoteError) as info:
                    await ep.request("orderer", "orderer.submit", {"tx": b"\x93junk"})
                assert info.value.code == "bad-request"
                outsider = make_endpoint(node, "x", stranger, directory)
                with pytest.raises(bus.RemoteError) as info:
                    await outsider.request("orderer", "orderer.submit", {"tx": _tx(peer, 9)})
                assert info.value.code == "forbidden"
                for kind, body in (("orderer.head", {}), ("orderer.blocks", {"from": 0, "limit": 1})):
                    with pytest.raises(bus.RemoteError) as info:  # consortium nodes only
                        await outsider.request("orderer", kind, body)
                    assert info.value.code == "forbidden"
                assert await ep.request("orderer", "orderer.head", {}) == {"height": 3, "hash": prev.hash}
                nursery.cancel_scope.cancel()
        # restarted from its database, it continues the chain
        async with bus.open_node() as node:
            async with trio.open_nursery() as nursery:
                await nursery.start(orderer(batch_size=1).run, node)
                ep = make_endpoint(node, "p1", peer.ecdsa_private, directory)
                blocks = (await ep.request("orderer", "orderer.blocks", {"from": 1, "limit": 10}))["blocks"]
                assert [Block.from_bytes(b).height for b in blocks] == [1, 2, 3]
                await ep.request("orderer", "orderer.submit", {"tx": _tx(peer, 10)})
                while (await ep.request("orderer", "orderer.head", {}))["height"] < 4:
                    await trio.sleep(0.01)
                (raw,) = (await ep.request("orderer", "orderer.blocks", {"from": 4, "limit": 10}))["blocks"]
                assert Block.from_bytes(raw).prev_hash == prev.hash
                nursery.cancel_scope.cancel()


async def test_idle_orderer_cuts_at_once_and_busy_one_waits_for_the_interval(tmp_path):
    okey, peer, genesis, directory, _ = _setup(tmp_path)
    orderer = OrdererAgent(orderer_id="orderer", signing_key=okey, genesis=genesis.to_bytes(), data_dir=tmp_path,
                           directory=directory, batch_size=3, batch_timeout=600.0)
    with trio.fail_after(20):  # far below batch_timeout: only the idle cut can deliver the first block
        async with bus.open_node() as node:
            async with trio.open_nursery() as nursery:
                await nursery.start(orderer.run, node)
                ep = make_endpoint(node, "p1", peer.ecdsa_private, directory)
                sub = await ep.subscribe("orderer", "blocks")
                await ep.request("orderer", "orderer.submit", {"tx": _tx(peer, 0)})
                first = Block.from_bytes((await sub.receive()).body["block"])
                assert (first.height, len(first.txs)) == (1, 1)
                # right after a cut, a lone transaction waits for the next interval ...
                await ep.request("orderer", "orderer.submit", {"tx": _tx(peer, 1)})
                with trio.move_on_after(0.3):
                    await sub.receive()
                    pytest.fail("a block was cut before batch_timeout without a full batch")
                # ... and a full batch is cut at once
                await ep.request("orderer", "orderer.submit", {"txs": [_tx(peer, 2), _tx(peer, 3)]})
                second = Block.from_bytes((await sub.receive()).body["block"])
                assert (second.height, len(second.txs)) == (2, 3)
                nursery.cancel_scope.cancel()


async def test_blocks_are_cut_by_bytes_and_every_block_can_be_served(tmp_path):
    """Large transactions fill blocks by bytes long before batch_size: each block fits in
    MAX_BLOCK_BYTES, is published, and is served by orderer.blocks (which also refuses a
    'from' SQLite cannot hold with a typed error)."""
    from core.ledger import MAX_BLOCK_BYTES

    okey, peer, genesis, directory, _ = _setup(tmp_path)
    orderer = OrdererAgent(orderer_id="orderer", signing_key=okey, genesis=genesis.to_bytes(), data_dir=tmp_path,
                           directory=directory, batch_size=500, batch_timeout=0.2)

    def big(i):
        tx = Transaction.create("revoke_cert", "p1", {"subject": f"s{i}", "reason": "x" * 60_000},
                                peer.ecdsa_private, int(time.time() * 1000)).to_bytes()
        assert 60_000 < len(tx) <= 64 * 1024
        return tx

    txs = [big(i) for i in range(200)]  # 12 MB: three blocks at least
    with trio.fail_after(30):
        async with bus.open_node() as node:  # the in-process bus enforces the 16 MiB frame
            async with trio.open_nursery() as nursery:
                await nursery.start(orderer.run, node)
                ep = make_endpoint(node, "p1", peer.ecdsa_private, directory)
                sub = await ep.subscribe("orderer", "blocks", buffer=64)
                for i in range(0, len(txs), 50):
                    await ep.request("orderer", "orderer.submit", {"txs": txs[i:i + 50]})
                got = []
                while len(got) < len(txs):
                    data = (await sub.receive()).body["block"]
                    assert len(data) <= MAX_BLOCK_BYTES
                    got.extend(Block.from_bytes(data).txs)
                assert got == txs
                height = (await ep.request("orderer", "orderer.head", {}))["height"]
                assert height >= 3
                served = []
                start = 1
                while start <= height:
                    blocks = (await ep.request("orderer", "orderer.blocks", {"from": start}))["blocks"]
                    assert blocks
                    served.extend(Block.from_bytes(b) for b in blocks)
                    start = served[-1].height + 1
                assert [t for b in served for t in b.txs] == txs
                with pytest.raises(bus.RemoteError) as info:
                    await ep.request("orderer", "orderer.blocks", {"from": 2**64 - 1})
                assert info.value.code == "bad-request"
                nursery.cancel_scope.cancel()


async def test_blocks_near_the_head_come_from_memory_and_match_the_database(tmp_path, monkeypatch):
    """orderer.blocks answers from the blocks kept in memory what the database would (same
    bytes, same limit and byte cap), falls back to the database for older blocks, and
    answers a start past the head with no blocks."""
    import agents.orderer as orderer_mod

    monkeypatch.setattr(orderer_mod, "RECENT_BLOCKS", 4)
    okey, peer, genesis, directory, _ = _setup(tmp_path)
    orderer = OrdererAgent(orderer_id="orderer", signing_key=okey, genesis=genesis.to_bytes(), data_dir=tmp_path,
                           directory=directory, batch_size=1, batch_timeout=0.01)
    reads = []
    real_blocks = orderer.store.blocks

    def counted(start, limit, *a):
        reads.append(start)
        return real_blocks(start, limit, *a)

    monkeypatch.setattr(orderer.store, "blocks", counted)
    with trio.fail_after(20):
        async with bus.open_node() as node:
            async with trio.open_nursery() as nursery:
                await nursery.start(orderer.run, node)
                ep = make_endpoint(node, "p1", peer.ecdsa_private, directory)
                for i in range(7):
                    await ep.request("orderer", "orderer.submit", {"tx": _tx(peer, i)})
                while (await ep.request("orderer", "orderer.head", {}))["height"] < 7:
                    await trio.sleep(0.01)
                assert len(orderer._recent) == 4  # blocks 4..7
                for start, limit in ((4, 10), (6, 1), (7, 3), (5, 2)):
                    served = (await ep.request("orderer", "orderer.blocks", {"from": start, "limit": limit}))["blocks"]
                    assert served == real_blocks(start, limit)
                    assert [Block.from_bytes(b).height for b in served] == list(range(start, min(8, start + limit)))
                assert reads == []  # none of those read the database
                assert (await ep.request("orderer", "orderer.blocks", {"from": 8}))["blocks"] == []
                older = (await ep.request("orderer", "orderer.blocks", {"from": 1, "limit": 10}))["blocks"]
                assert reads == [1] and older == real_blocks(1, 10) and len(older) == 7
                nursery.cancel_scope.cancel()


def test_blocks_kept_in_memory_are_bounded_in_bytes(tmp_path, monkeypatch):
    import agents.orderer as orderer_mod

    monkeypatch.setattr(orderer_mod, "RECENT_BLOCKS_BYTES", 2500)
    okey, _, genesis, directory, _ = _setup(tmp_path)
    orderer = OrdererAgent(orderer_id="orderer", signing_key=okey, genesis=genesis.to_bytes(), data_dir=tmp_path,
                           directory=directory)
    for size in (1000, 1000, 1000, 3000):
        orderer._keep_recent(bytes(size))
        assert orderer._recent_bytes == sum(len(b) for b in orderer._recent)
        assert orderer._recent_bytes <= 2500 or len(orderer._recent) == 1  # one larger block alone is kept
    assert [len(b) for b in orderer._recent] == [3000]


async def test_the_cut_interval_runs_from_the_start_of_the_previous_cut(tmp_path, autojump_clock):
    """A transaction that arrives while a block is being persisted waits for that cut and the rest of the
    interval, not the persisting time and a whole interval after it (virtual time: persisting takes 0.4 s)."""
    okey, peer, genesis, directory, _ = _setup(tmp_path)
    orderer = OrdererAgent(orderer_id="orderer", signing_key=okey, genesis=genesis.to_bytes(), data_dir=tmp_path,
                           directory=directory, batch_size=10, batch_timeout=1.0)

    async def slow_persist(height, prev_hash, ts, txs):
        made = orderer._make_and_store(height, prev_hash, ts, txs)
        await trio.sleep(0.4)  # a slow fsync
        return made

    orderer._persist = slow_persist
    async with bus.open_node() as node:
        async with trio.open_nursery() as nursery:
            await nursery.start(orderer.run, node)
            ep = make_endpoint(node, "p1", peer.ecdsa_private, directory)
            sub = await ep.subscribe("orderer", "blocks")
            t0 = trio.current_time()
            await ep.request("orderer", "orderer.submit", {"tx": _tx(peer, 0)})  # idle: cut at once
            await trio.sleep(0.1)
            await ep.request("orderer", "orderer.submit", {"tx": _tx(peer, 1)})  # during the first cut's fsync
            published = []
            for _ in range(2):
                Block.from_bytes((await sub.receive()).body["block"])
                published.append(trio.current_time() - t0)
            # first: cut at 0, published after its 0.4 s; second: cut 1.0 after the first cut BEGAN
            # (published at 1.4), not 1.0 after it ended (1.8)
            assert published[0] == pytest.approx(0.4, abs=0.05)
            assert published[1] == pytest.approx(1.4, abs=0.05)
            nursery.cancel_scope.cancel()
