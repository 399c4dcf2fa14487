"""Storage nodes and the replicating client over a real bus (in one process)."""

from __future__ import annotations

import os
from contextlib import asynccontextmanager

import pytest
import trio

from agents.storage import BlobStore, CidMismatch, NotFound, QuotaExceeded, Unavailable
from agents.storage.client import StorageClient
from agents.storage.node import StorageAccess, StorageNode
from bus import open_node
from core import ecdsa, protocol
from core.cid import CHUNK_SIZE, compute

MiB = 1 << 20


@asynccontextmanager
async def swarm(tmp_path, n=3, *, quota=None, max_blob=256 * MiB, session_timeout=120.0, client_role="storage",
                node_opts=None, **client_opts):
    """``n`` nodes s0.. and a client ``client`` acting as ``client_role`` ("storage": the
    repair process; "user": a registered user). ``client.endpoint_for(ident)`` makes
    endpoints for "alice" and "bob" (registered users), "peer" (a consortium node) and
    "stranger" (a known key, not registered)."""
    node_ids = [f"s{i}" for i in range(n)]
    ids = [*node_ids, "client", "alice", "bob", "peer", "stranger"]
    keys = {i: ecdsa.generate_private_key() for i in ids}
    pubs = {i: ecdsa.public_key(k) for i, k in keys.items()}
    storage = {*node_ids, *(["client"] if client_role == "storage" else [])}
    users = {"alice", "bob", *(["client"] if client_role == "user" else [])}
    access = StorageAccess(frozenset(storage), frozenset({"peer"}), users.__contains__)

    def ep(node, ident):
        return node.endpoint(
            ident,
            signer=lambda m, k=keys[ident]: ecdsa.sign_raw(k, m),
            directory=pubs.get,
            verifier=ecdsa.is_valid_raw,
        )

    async with open_node() as bus, trio.open_nursery() as nursery:
        nodes = {}
        for ident in node_ids:
            store = BlobStore(tmp_path / ident, quota_bytes=quota, max_blob=max_blob)
            nodes[ident] = StorageNode(ep(bus, ident), store, access=access, session_timeout=session_timeout,
                                       **(node_opts or {}))
            nursery.start_soon(nodes[ident].run)
        client = StorageClient(ep(bus, "client"), node_ids, **{"node_keys": pubs.get, **client_opts})
        client.endpoint_for = lambda ident: ep(bus, ident)  # other senders, for the admission tests
        client.node_pubs = pubs
        yield client, nodes
        nursery.cancel_scope.cancel()


def holders(nodes, cid):
    return sorted(i for i, n in nodes.items() if n.store.has(cid))


@pytest.mark.parametrize("size", [0, 10, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * MiB + 5])
async def test_round_trip_replicated(tmp_path, size) -> None:
    data = os.urandom(size)
    with trio.fail_after(30):
        async with swarm(tmp_path) as (client, nodes):
            cid = await client.put(data)
            assert cid == compute(data)
            assert holders(nodes, cid) == ["s0", "s1", "s2"]
            assert await client.get(cid) == data


async def test_put_file_and_get_report_progress(tmp_path) -> None:
    """The CLI's progress bars: ``progress(done, size)`` rises to the blob's size on put_file and get."""
    data = os.urandom(5 * MiB + 3)
    path = tmp_path / "blob"
    path.write_bytes(data)
    put_seen: list[tuple[int, int]] = []
    get_seen: list[tuple[int, int]] = []
    with trio.fail_after(30):
        async with swarm(tmp_path, message_size=1 * MiB, bulk_message_size=1 * MiB) as (client, nodes):
            cid = await client.put_file(path, progress=lambda done, size: put_seen.append((done, size)))
            assert await client.get(cid, progress=lambda done, size: get_seen.append((done, size))) == data
    for seen in (put_seen, get_seen):
        assert len(seen) >= 5  # one call per piece at least
        assert {size for _, size in seen} == {len(data)}
        dones = [done for done, _ in seen]
        assert dones == sorted(dones) and len(set(dones)) == len(dones) and dones[-1] == len(data)


@pytest.mark.slow
async def test_round_trip_50_mib(tmp_path) -> None:
    data = os.urandom(50 * MiB)
    with trio.fail_after(120):
        async with swarm(tmp_path, n=4) as (client, nodes):
            cid = await client.put(data)
            assert len(holders(nodes, cid)) == 3
            assert await client.get(cid) == data


async def test_placement_is_rendezvous(tmp_path) -> None:
    with trio.fail_after(30):
        async with swarm(tmp_path, n=5) as (client, nodes):
            for i in range(6):
                data = i.to_bytes(2, "big") * 100
                cid = await client.put(data)
                assert holders(nodes, cid) == sorted(client.placement(cid)[:3])


async def test_flipped_byte_detected_good_replica_served_and_healed(tmp_path) -> None:
    data = os.urandom(2 * CHUNK_SIZE + 99)
    with trio.fail_after(30):
        async with swarm(tmp_path) as (client, nodes):
            cid = await client.put(data)
            first = client.placement(cid)[0]
            path = tmp_path / first / "blobs" / cid[-2:] / cid
            raw = bytearray(path.read_bytes())
            raw[CHUNK_SIZE + 7] ^= 0x80
            path.write_bytes(bytes(raw))
            assert await client.get(cid) == data
            assert nodes[first].corruptions == 1
            assert client.statistics().corrupt_replicas == 1 and client.statistics().healed == 1
            # the bad copy was quarantined and replaced by a good one
            assert nodes[first].store.is_intact(cid)
            assert (tmp_path / first / "corrupt" / cid).exists()


async def test_lying_node_bytes_never_reach_caller(tmp_path) -> None:
    data = os.urandom(CHUNK_SIZE * 2)
    with trio.fail_after(30):
        async with swarm(tmp_path) as (client, nodes):
            cid = await client.put(data)
            first = client.placement(cid)[0]
            store = nodes[first].store
            real = store.read_range
            store.read_range = lambda c, o=0, n=None: (bytes(len(real(c, o, n)[0])), real(c, o, n)[1])
            got = []

            async def sink(piece):
                got.append(piece)

            assert await client.read_to(cid, sink) == len(data)
            assert b"".join(got) == data
            assert client.statistics().corrupt_replicas == 1


async def test_quota_and_mismatch_errors_are_clear(tmp_path) -> None:
    with trio.fail_after(30):
        async with swarm(tmp_path, quota=100_000) as (client, nodes):
            await client.put(b"x" * 50_000)
            with pytest.raises(QuotaExceeded, match="quota exceeded"):
                await client.put(b"y" * 60_000)
            for n in nodes.values():
                assert n.store.statistics().reserved_bytes == 0
                assert not list((n.store.root / "tmp").iterdir())
            # a client claiming the wrong CID is refused by the node itself
            with pytest.raises(CidMismatch):
                await client._put_one("s0", compute(b"other"), 5, _const(b"hello"), True)
            with pytest.raises(NotFound):
                await client.get(compute(b"never stored"))


def _const(data):
    async def read(offset, n):
        return data[offset : offset + n]

    return read


async def test_write_quorum_and_fallback(tmp_path) -> None:
    with trio.fail_after(30):
        async with swarm(tmp_path, n=3) as (client, nodes):
            # one node refuses everything (full): the write still reaches w=2
            nodes["s1"].store.quota_bytes = 0
            cid = await client.put(b"quorum" * 1000)
            assert holders(nodes, cid) == ["s0", "s2"]
            # two refuse: below quorum
            nodes["s2"].store.quota_bytes = 0
            with pytest.raises((Unavailable, QuotaExceeded)):
                await client.put(b"nope" * 1000)


@pytest.mark.parametrize("size", [100, 3 * MiB + 5])  # one message, and a put session
async def test_puts_are_acknowledged_with_signed_receipts(tmp_path, size) -> None:
    with trio.fail_after(30):
        async with swarm(tmp_path, n=3) as (client, nodes):
            cid = await client.put(os.urandom(size))
            receipts = client.receipts(cid)
            assert len(receipts) >= 2
            for node, receipt in receipts.items():
                key = client.node_pubs[node]
                assert protocol.verify_receipt(key, node, cid, size, "client", receipt)
                # bound to the node, the blob, its size and who put it
                assert not protocol.verify_receipt(key, node, cid, size + 1, "client", receipt)
                assert not protocol.verify_receipt(key, node, cid, size, "alice", receipt)
                assert not protocol.verify_receipt(key, "s9", cid, size, "client", receipt)
                assert not protocol.verify_receipt(client.node_pubs["client"], node, cid, size, "client", receipt)


async def test_an_acknowledgement_without_a_valid_receipt_does_not_count(tmp_path) -> None:
    with trio.fail_after(30):
        async with swarm(tmp_path, n=3) as (client, nodes):
            nodes["s1"]._receipt = lambda cid, size, putter: bytes(64)  # stores, but signs nothing valid
            cid = await client.put(b"evidence" * 100)
            assert "s1" not in client.receipts(cid) and len(client.receipts(cid)) == 2
            nodes["s2"]._receipt = lambda cid, size, putter: nodes["s0"]._receipt(cid, size, putter)  # s0's
            with pytest.raises(Unavailable):
                await client.put(b"no quorum" * 100)


async def test_repair_restores_replicas(tmp_path) -> None:
    with trio.fail_after(60):
        async with swarm(tmp_path, n=4) as (client, nodes):
            cids = [await client.put(os.urandom(i * 50_000 + 1)) for i in range(8)]
            cids.append(await client.put(os.urandom(3 * MiB)))
            # node s0 loses its disk
            for b in nodes["s0"].store.list():
                nodes["s0"].store.delete(b.cid, force=True)
            report = await client.repair()
            assert report.failed == 0 and report.unreachable == []
            for cid in cids:
                assert holders(nodes, cid) == sorted(client.placement(cid)[:3])
            again = await client.repair()
            assert again.copied == 0


async def test_pin_unpin_list_stat(tmp_path) -> None:
    with trio.fail_after(30):
        async with swarm(tmp_path) as (client, nodes):
            cid = await client.put(b"pinned")
            assert await client.unpin(cid) == 3
            assert all(not n.store.is_pinned(cid) for n in nodes.values())
            assert await client.pin(cid) == 3
            listing = await client.list("s0")
            assert listing == [(cid, 6, True)]
            st = await client.stat("s0", cid)
            assert st["size"] == 6 and st["pinned"] is True
            ns = await client.stat("s0")
            assert ns["blobs"] == 1
            assert sorted(await client.locate(cid)) == ["s0", "s1", "s2"]


async def test_malformed_requests_get_clear_errors(tmp_path) -> None:
    from bus import RemoteError

    with trio.fail_after(30):
        async with swarm(tmp_path) as (client, nodes):
            ep = client.endpoint
            for kind, body in [
                ("storage.get", {"cid": "bafy", "offset": 0, "length": 1}),
                ("storage.get", {"cid": compute(b""), "offset": -1, "length": 1}),
                ("storage.get", "not a map"),
                ("storage.get", [b"\x01" * 36, 0, 1]),  # not a binary CID
                ("storage.get", [b"\x01\x55\x12\x20" + bytes(33), 0, 1]),
                ("storage.put.chunk", {"session": b"x" * 16, "offset": 0, "data": b""}),
                ("storage.list", {"limit": 0}),
                ("storage.put", {"data": "text, not bytes"}),
            ]:
                with pytest.raises(RemoteError) as info:
                    await ep.request("s0", kind, body)
                assert info.value.code == "storage.bad-request", (kind, info.value.code)


async def test_blob_too_large_is_a_clear_error(tmp_path) -> None:
    from agents.storage import BlobTooLarge

    with trio.fail_after(30):
        async with swarm(tmp_path, max_blob=1000) as (client, nodes):
            with pytest.raises(BlobTooLarge, match="maximum of 1000"):
                await client.put(b"z" * 1001)
            assert await client.put(b"z" * 1000)


async def test_idle_put_session_is_aborted_and_quota_released(tmp_path) -> None:
    from bus import RemoteError

    with trio.fail_after(30):
        async with swarm(tmp_path, quota=10 * MiB, session_timeout=1.0) as (client, nodes):  # > a busy machine's pause
            node = nodes["s0"]
            ep = client.endpoint
            begun = await ep.request("s0", "storage.put.begin", {"cid": None, "size": 3 * MiB, "pin": True})
            await ep.request("s0", "storage.put.chunk", {"session": begun["session"], "offset": 0, "data": b"a" * 1000})
            assert node.store.statistics().reserved_bytes > 3 * MiB
            with trio.fail_after(20):
                while node.store.statistics().reserved_bytes:
                    await trio.sleep(0.05)
            assert not list((node.store.root / "tmp").iterdir())
            with pytest.raises(RemoteError) as info:
                await ep.request(
                    "s0", "storage.put.chunk", {"session": begun["session"], "offset": 1000, "data": b"a"}
                )
            assert info.value.code == "storage.bad-request"


async def test_admission_who_may_put_read_list_and_unpin(tmp_path, caplog) -> None:
    from agents.storage import Forbidden
    from core.protocol import StorageList, StorageListReply, StorageUnpin, StorageUnpinReply

    with trio.fail_after(30):
        async with swarm(tmp_path, n=1, replicas=1, write_quorum=1) as (repair, nodes):
            node = nodes["s0"]
            alice, bob, peer, stranger = (StorageClient(repair.endpoint_for(i), ["s0"], replicas=1, write_quorum=1)
                                          for i in ("alice", "bob", "peer", "stranger"))
            cid = await alice.put(b"alice's record")
            assert node.store.owner_of(cid) == "alice"
            assert await bob.get(cid) == b"alice's record" and await peer.get(cid) == b"alice's record"
            for who in (stranger, peer):  # not registered / not a user: no puts
                with pytest.raises(Unavailable) as info:
                    await who.put(b"junk")
                assert all(isinstance(e, Forbidden) for e in info.value.causes.values())
            with pytest.raises(Unavailable):
                await stranger.get(cid)
            # list only for consortium nodes
            with pytest.raises(Forbidden):
                await bob._call("s0", StorageList(None, 10), StorageListReply)
            assert [c for c, _, _ in await peer.list("s0")] == [cid]
            # unpin only by the owner or a storage node
            with pytest.raises(Forbidden):
                await bob._call("s0", StorageUnpin(cid), StorageUnpinReply)
            assert node.store.is_pinned(cid)
            assert await alice.unpin(cid) == 1 and not node.store.is_pinned(cid)
            node.store.pin(cid)
            assert await repair.unpin(cid) == 1 and not node.store.is_pinned(cid)
            assert len(node.store.list()) == 1  # nothing the refused senders sent was stored
            # refusals are counted, and logged once per sender and kind (a flood does not flood the log)
            for _ in range(3):
                with pytest.raises(Forbidden):
                    await bob._call("s0", StorageUnpin(cid), StorageUnpinReply)
            assert node.refusals.counts()[("storage.unpin", "storage.forbidden")] == 4
            assert sum(1 for r in caplog.records if "storage.unpin from 'bob'" in r.getMessage()) == 1


async def test_per_sender_quota_and_put_sessions(tmp_path) -> None:
    from agents.storage import Busy
    from core.protocol import StoragePutBegin, StoragePutBeginReply

    opts = {"sessions_per_sender": 2, "sender_quota": 100_000}
    with trio.fail_after(30):
        async with swarm(tmp_path, n=1, replicas=1, write_quorum=1, node_opts=opts) as (repair, nodes):
            alice, bob = (StorageClient(repair.endpoint_for(i), ["s0"], replicas=1, write_quorum=1)
                          for i in ("alice", "bob"))
            # alice holds her share of put sessions; a third is refused, bob's put still succeeds
            for _ in range(2):
                await alice._call("s0", StoragePutBegin(10), StoragePutBeginReply)
            with pytest.raises(Busy):
                await alice._call("s0", StoragePutBegin(10), StoragePutBeginReply)
            assert await bob.get(await bob.put(b"bob still stores")) == b"bob still stores"
            # bytes: bob may store up to his share, then QuotaExceeded
            await bob.put(os.urandom(60_000))
            with pytest.raises(QuotaExceeded):
                await bob.put(os.urandom(60_000))
            # the repair process (a storage node) has no per-sender share
            await repair.put(os.urandom(150_000))


async def test_idle_put_sessions_expire_and_free_the_senders_slots(tmp_path, idle_clock) -> None:
    from core.protocol import StoragePutBegin, StoragePutBeginReply

    opts = {"sessions_per_sender": 1}
    async with swarm(tmp_path, n=1, replicas=1, write_quorum=1, session_timeout=10.0,
                     node_opts=opts) as (repair, nodes):
        # file work runs in threads: the clock jumps only when nothing, not even a thread, works
        alice = StorageClient(repair.endpoint_for("alice"), ["s0"], replicas=1, write_quorum=1, timeout=60)
        await alice._call("s0", StoragePutBegin(10), StoragePutBeginReply)
        await trio.sleep(30)  # idle past the timeout: the reaper aborts it
        assert not nodes["s0"]._sessions
        await alice._call("s0", StoragePutBegin(10), StoragePutBeginReply)


@pytest.mark.parametrize("size", [10, CHUNK_SIZE + 1])  # a raw CID, and a dag-pb one
async def test_put_with_the_callers_cid_is_not_hashed_again(tmp_path, monkeypatch, size) -> None:
    """``put(data, cid=...)`` (the sealer computed the CID) stores without hashing the blob in
    the client; the nodes still check the bytes against it, so a wrong CID stores nothing."""
    import agents.storage.client as client_mod

    data = os.urandom(size)
    right = compute(data)
    with trio.fail_after(30):
        async with swarm(tmp_path) as (client, nodes):
            def no_hash(_data):
                raise AssertionError("the client hashed a blob whose CID it was given")

            monkeypatch.setattr(client_mod.cidmod, "compute", no_hash)
            assert await client.put(data, cid=right) == right
            assert holders(nodes, right) == ["s0", "s1", "s2"]
            monkeypatch.undo()
            assert await client.get(right) == data
            claimed = compute(data + b"!")  # a well-formed CID of other bytes
            with pytest.raises(CidMismatch):
                await client.put(data, cid=claimed)
            assert holders(nodes, claimed) == []
            with pytest.raises(ValueError):
                await client.put(data, cid="not a cid")
