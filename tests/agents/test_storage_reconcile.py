"""Storage that heals itself: the reconcile plan (sans-I/O) and its trio loop over a real in-process bus."""

from __future__ import annotations

import json
import os
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from agents.storage import BlobStore
from agents.storage.node import StorageAccess, StorageNode
from agents.storage.reconcile import Collect, Pull, ReconcilePlan, Reconciler, Verify
from bus import open_node
from core import ecdsa
from core import protocol
from core.cid import CHUNK_SIZE, choose_replicas, compute
from core.lightclient import StoredRecord

MiB = 1 << 20
NODES = ["s0", "s1", "s2", "s3"]


def record(cid: str, patient: str = "alice", rid: str = "rec-1") -> StoredRecord:
    return StoredRecord(patient, rid, cid, 10, 1)


def cid_placed(me: str, inside: bool, r: int = 3, nodes=NODES) -> str:
    """A CID whose top-r placement includes ``me`` (or not)."""
    for i in range(1000):
        cid = compute(f"blob-{i}".encode())
        if (me in choose_replicas(cid, nodes, r)) == inside:
            return cid
    raise AssertionError("no such CID")


# -- the plan ----------------------------------------------------------------


def test_a_missing_copy_is_pulled_by_the_replicas_that_lack_it_only():
    mine, other = cid_placed("s0", True), cid_placed("s0", False)
    plan = ReconcilePlan("s0", NODES, 3)
    actions = plan.round(0.0, {mine: record(mine), other: record(other, rid="r2")}, [], synced_at=0.0)
    assert len(actions) == 1 and isinstance(actions[0], Pull)
    pull = actions[0]
    assert pull.cid == mine and "s0" not in pull.sources and sorted(pull.sources) == ["s1", "s2", "s3"]
    assert list(pull.sources) == [n for n in choose_replicas(mine, NODES, 4) if n != "s0"]
    # while it is being pulled, no second pull; once pulled it is held and verified
    assert plan.round(1.0, {mine: record(mine)}, [], synced_at=1.0) == []
    plan.pulled(mine, True)
    assert plan.round(2.0, {mine: record(mine)}, [mine], synced_at=2.0) == []
    # a failed pull is tried again next round
    plan.held.clear()
    plan.verified.clear()
    assert [type(a) for a in plan.round(3.0, {mine: record(mine)}, [], synced_at=3.0)] == [Pull]
    plan.pulled(mine, False)
    assert [type(a) for a in plan.round(4.0, {mine: record(mine)}, [], synced_at=4.0)] == [Pull]
    assert plan.counters.pull_failures == 1


def test_a_put_in_progress_is_left_alone_and_pulls_are_bounded():
    cids = []
    for i in range(400):
        cid = compute(f"many-{i}".encode())
        if "s0" in choose_replicas(cid, NODES, 3):
            cids.append(cid)
    committed = {c: record(c, rid=f"r{i}") for i, c in enumerate(cids[:5])}
    plan = ReconcilePlan("s0", NODES, 3, max_pulls=2)
    busy = cids[0]
    actions = plan.round(0.0, committed, [], synced_at=0.0, busy=lambda c: c == busy)
    assert [a.cid for a in actions] == sorted(c for c in committed if c != busy)[:2]
    assert len(plan.pending) == 2 and busy not in plan.pending and plan.deferred == [busy]
    status = plan.status(committed)
    assert status["active"] == sorted(a.cid for a in actions) and status["pending"] == [*plan.pending, busy]


def test_held_copies_are_verified_once_and_a_corrupt_one_is_pulled_again():
    cid = cid_placed("s0", True)
    plan = ReconcilePlan("s0", NODES, 3)
    assert plan.round(0.0, {cid: record(cid)}, [cid], synced_at=0.0) == [Verify(cid)]
    plan.verified_copy(cid, True)
    assert plan.round(1.0, {cid: record(cid)}, [cid], synced_at=1.0) == []
    plan.verified_copy(cid, False)  # found corrupt later (quarantined)
    assert [type(a) for a in plan.round(2.0, {cid: record(cid)}, [], synced_at=2.0)] == [Pull]


def test_an_unnamed_blob_is_collected_only_after_the_grace_and_a_later_sync():
    cid, named = compute(b"refused"), compute(b"committed later")
    plan = ReconcilePlan("s0", NODES, 3, grace=100.0)
    assert plan.round(0.0, {}, [cid, named], synced_at=0.0) == []
    assert plan.round(60.0, {named: record(named)}, [cid, named], synced_at=60.0) == [Verify(named)]
    # the grace is over but the light client has not confirmed the head since: nothing
    assert plan.round(150.0, {named: record(named)}, [cid, named], synced_at=60.0) == [Verify(named)]
    plan.verified_copy(named, True)
    assert plan.round(160.0, {named: record(named)}, [cid, named], synced_at=160.0) == [Collect(cid)]
    plan.collected(cid)
    assert plan.counters.collected == 1 and plan.status({})["unnamed"] == []
    # the grace restarts when a blob appears again (e.g. put again)
    assert plan.round(170.0, {named: record(named)}, [cid, named], synced_at=170.0) == []
    assert plan.round(269.0, {named: record(named)}, [cid, named], synced_at=269.0) == []
    assert plan.round(271.0, {named: record(named)}, [cid, named], synced_at=270.0) == [Collect(cid)]


def test_never_synced_collects_nothing():
    cid = compute(b"x")
    plan = ReconcilePlan("s0", NODES, 3, grace=0.0)
    assert plan.round(1e9, {}, [cid], synced_at=None) == []


# -- the trio loop -------------------------------------------------------------------


class FakeFollower:
    """What a Reconciler needs of a CertificateFollower: committed CIDs and a catch-up."""

    def __init__(self):
        self.committed: dict[str, StoredRecord] = {}
        self.reachable = True
        self.height = 0
        self.on_records = []

    def commit(self, cid: str, rec: StoredRecord) -> None:
        """A block naming ``cid`` was applied: the reconcilers are told, as by the real follower."""
        self.committed[cid] = rec
        for listener in self.on_records:
            listener([rec])

    def cids(self):
        return dict(self.committed)

    async def catch_up(self, *, timeout=None) -> bool:
        return self.reachable


@asynccontextmanager
async def cluster(tmp_path, n=3, *, replicas=3, interval=30.0, grace=300.0, session_timeout=60.0,
                  request_timeout=600.0, evil=(), gone_after=600.0):
    """``n`` storage nodes s0.. with reconcilers (sharing one FakeFollower); ``evil``: extra
    node ids that are hostile storage nodes (the caller registers their handlers)."""
    ids = [f"s{i}" for i in range(n)]
    all_storage = [*ids, *evil]
    keys = {i: ecdsa.generate_private_key() for i in [*all_storage, "alice"]}
    pubs = {i: ecdsa.public_key(k) for i, k in keys.items()}
    access = StorageAccess(frozenset(all_storage), frozenset(), {"alice"}.__contains__)
    follower = FakeFollower()

    async with open_node() as bus, trio.open_nursery() as nursery:
        def ep(ident):
            return bus.endpoint(ident, signer=lambda m, k=keys[ident]: ecdsa.sign_raw(k, m),
                                directory=pubs.get, verifier=ecdsa.is_valid_raw)

        class C:
            pass

        c = C()
        c.follower, c.ep, c.nodes, c.reconcilers, c.stores = follower, ep, {}, {}, {}
        c.evil = {e: ep(e) for e in evil}

        def start(ident):
            store = BlobStore(tmp_path / ident)
            node = StorageNode(ep(ident), store, access=access, session_timeout=session_timeout)
            rec = Reconciler(node.endpoint, store, follower, all_storage, replicas=replicas, interval=interval,
                             grace=grace, request_timeout=request_timeout, node=node, gone_after=gone_after)
            scope = trio.CancelScope()

            async def run():
                with scope:
                    async with trio.open_nursery() as inner:
                        inner.start_soon(node.run)
                        inner.start_soon(rec.run)
                with trio.CancelScope(shield=True):
                    await node.endpoint.aclose()  # stopped: it may start again with the same id
            nursery.start_soon(run)
            c.nodes[ident], c.reconcilers[ident], c.stores[ident] = node, rec, store
            return scope

        c.start = start
        c.scopes = {i: start(i) for i in ids}
        yield c
        nursery.cancel_scope.cancel()


async def settle(c):
    """Wait until no reconciler has a pull under way (each pull is bounded in time)."""
    while any(r.plan.active for r in c.reconcilers.values()):
        await trio.sleep(0.01)


def holders(c, cid):
    return sorted(i for i, s in c.stores.items() if s.has(cid) and s.is_intact(cid))


async def test_a_committed_blob_held_once_gets_its_copies_within_an_interval(tmp_path, idle_clock):
    data = os.urandom(3 * MiB + 123)
    cid = compute(data)
    async with cluster(tmp_path, n=4, interval=30.0) as c:
        await trio.sleep(1)
        only = [n for n in choose_replicas(cid, list(c.stores), 4) if n not in choose_replicas(cid, list(c.stores), 3)]
        c.stores[only[0]].put(data, owner="alice")  # a copy off the placement, e.g. the writer's top-up
        c.follower.committed[cid] = record(cid)
        await trio.sleep(31)
        await settle(c)
        placed = choose_replicas(cid, list(c.stores), 3)
        assert holders(c, cid) == sorted([*placed, only[0]])
        for n in placed:
            assert c.stores[n].read(cid) == data
            assert c.stores[n].owner_of(cid) == "alice"  # the ledger's owner, so its share is counted
            status = json.loads((tmp_path / n / "status.json").read_text())
            entry = next(r for r in status["records"] if r["cid"] == cid)
            assert entry["held"] and entry["verified"] and entry["owner"] == "alice"
            assert status["active"] == [] and status["pending"] == []


async def test_a_wiped_node_is_refilled(tmp_path, idle_clock):
    blobs = [os.urandom(n) for n in (10, CHUNK_SIZE + 1, 2 * MiB)]
    cids = [compute(b) for b in blobs]
    async with cluster(tmp_path, n=3, interval=20.0) as c:
        for b, cid in zip(blobs, cids):
            for s in ("s0", "s1"):
                c.stores[s].put(b, owner="alice")
            c.follower.committed[cid] = record(cid, rid=cid[-6:])
        await trio.sleep(21)
        await settle(c)
        assert all(holders(c, cid) == ["s0", "s1", "s2"] for cid in cids)
        c.scopes["s2"].cancel()  # s2 stops, loses its disk, comes back empty
        await trio.sleep(1)
        c.stores["s2"].destroy()
        c.scopes["s2"] = c.start("s2")
        assert c.stores["s2"].list() == []
        await trio.sleep(21)
        await settle(c)
        assert all(holders(c, cid) == ["s0", "s1", "s2"] for cid in cids)
        assert c.reconcilers["s2"].plan.counters.pulled == 3


async def test_a_corrupt_copy_is_replaced(tmp_path, idle_clock):
    data = os.urandom(2 * CHUNK_SIZE)
    cid = compute(data)
    async with cluster(tmp_path, n=3, interval=20.0) as c:
        for s in c.stores.values():
            s.put(data)
        path = tmp_path / "s1" / "blobs" / cid[-2:] / cid
        raw = bytearray(path.read_bytes())
        raw[5] ^= 1
        path.write_bytes(bytes(raw))
        c.follower.committed[cid] = record(cid)
        await trio.sleep(41)  # one round finds it corrupt (quarantined), the next pulls it again
        await settle(c)
        assert holders(c, cid) == ["s0", "s1", "s2"]
        assert c.reconcilers["s1"].plan.counters.quarantined == 1


async def test_a_refused_stores_blob_is_collected_after_the_grace(tmp_path, idle_clock):
    refused, kept = os.urandom(1000), os.urandom(1000)
    async with cluster(tmp_path, n=3, interval=10.0, grace=100.0) as c:
        for s in c.stores.values():
            s.put(refused, owner="alice")
            s.put(kept, owner="alice")
        c.follower.committed[compute(kept)] = record(compute(kept))
        c.follower.reachable = False  # the orderer is out of reach: nothing is collected
        await trio.sleep(250)
        assert holders(c, compute(refused)) == ["s0", "s1", "s2"]
        c.follower.reachable = True
        await trio.sleep(11)
        assert holders(c, compute(refused)) == [] and holders(c, compute(kept)) == ["s0", "s1", "s2"]
        assert all(s.owned_bytes("alice") == s.stat(compute(kept)).stored_bytes for s in c.stores.values())


async def test_a_blob_put_just_before_its_commit_is_kept(tmp_path, idle_clock):
    data = os.urandom(1000)
    cid = compute(data)
    async with cluster(tmp_path, n=3, interval=10.0, grace=100.0) as c:
        await trio.sleep(5)
        for s in c.stores.values():
            s.put(data, owner="alice")
        await trio.sleep(90)  # the store transaction commits within the grace
        c.follower.committed[cid] = record(cid)
        await trio.sleep(200)
        assert holders(c, cid) == ["s0", "s1", "s2"]


async def test_an_abandoned_partial_upload_expires(tmp_path, idle_clock):
    async with cluster(tmp_path, n=1, replicas=1, session_timeout=30.0) as c:
        alice = c.ep("alice")
        begin = protocol.StoragePutBegin(4 * MiB, compute(b"x" * 4 * MiB), True)
        sid = protocol.StoragePutBeginReply.from_wire(
            await alice.request("s0", begin.kind, begin.to_wire())).session
        chunk = protocol.StoragePutChunk(sid, 0, b"x" * MiB)
        await alice.request("s0", chunk.kind, chunk.to_wire())
        assert len(c.stores["s0"].partial_files()) == 1 and c.nodes["s0"].partial_uploads() == 1
        await trio.sleep(20)
        assert len(c.stores["s0"].partial_files()) == 1  # not idle long enough
        await trio.sleep(30)  # the writer is gone (e.g. SIGKILLed): the session and its file expire
        assert c.stores["s0"].partial_files() == [] and c.nodes["s0"].partial_uploads() == 0
        assert c.stores["s0"].statistics().reserved_bytes == 0


def test_orphaned_partial_files_expire(tmp_path):
    store = BlobStore(tmp_path)
    session = store.begin_put(None, 10)
    session.write(b"12345")
    orphan = tmp_path / "tmp" / "put-orphan"
    orphan.write_bytes(b"partial")
    old = os.stat(orphan).st_mtime - 1000
    os.utime(orphan, (old, old))
    os.utime(session.path, (old, old))
    assert store.expire_partial(500, {session.path}) == 1
    assert store.partial_files() == [session.path]
    session.abort()


def serve_hostile(ep, mode: str, data: bytes):
    """A hostile storage node: ``junk`` (right size, wrong bytes), ``lying-leaves``
    (digests of other bytes), or ``stall`` (never answers a get)."""
    other = bytes(b ^ 0xFF for b in data)

    def leaves_of(blob):
        import hashlib

        return b"".join(hashlib.sha256(blob[i:i + CHUNK_SIZE]).digest() for i in range(0, len(blob), CHUNK_SIZE))

    async def leaves(msg):
        digests = leaves_of(other if mode == "lying-leaves" else data)
        return protocol.StorageLeavesReply(len(data), digests).to_wire()

    async def get(msg):
        req = protocol.StorageGet.from_wire(msg.body)
        if mode == "stall":
            await trio.sleep_forever()
        piece = other[req.offset:req.offset + req.length]
        return protocol.StorageGetReply(piece, len(data)).to_wire()

    ep.register("storage.leaves", leaves)
    ep.register("storage.get", get)


@pytest.mark.parametrize("mode", ["junk", "lying-leaves", "stall"])
async def test_a_hostile_replica_does_not_get_its_blob_kept(tmp_path, idle_clock, mode):
    data = os.urandom(2 * MiB + 5)
    cid = compute(data)
    async with cluster(tmp_path, n=2, replicas=3, interval=30.0, request_timeout=5.0, evil=("evil",)) as c:
        serve_hostile(c.evil["evil"], mode, data)
        c.follower.committed[cid] = record(cid)  # committed, but only the hostile node "has" it
        await trio.sleep(31)
        assert holders(c, cid) == []
        assert all(s.partial_files() == [] for s in c.stores.values())
        # every pull gave up within the interval (a stalled source is bounded by the request timeout)
        assert all(r.plan.counters.pull_failures >= 1 and not r.plan.active for r in c.reconcilers.values())
        # an honest copy appears on s0: s1 pulls it (after trying the hostile node, per its ranking or not)
        c.stores["s0"].put(data)
        await settle(c)
        await trio.sleep(31)
        assert holders(c, cid) == ["s0", "s1"]
        assert c.stores["s1"].read(cid) == data


def test_only_blobs_on_disk_at_the_first_round_are_re_hashed():
    """A blob that appears while the node runs was installed by a put that checked its CID."""
    old, new = compute(b"on disk at start"), compute(b"put while running")
    committed = {old: record(old), new: record(new, rid="r2")}
    plan = ReconcilePlan("s0", NODES, 3)
    assert plan.round(0.0, committed, [old], synced_at=0.0) == [Verify(old)]
    # `new` appears (a writer's put); `old` is still being verified
    assert plan.round(1.0, committed, [old, new], synced_at=1.0) == [Verify(old)]
    assert new in plan.verified


async def test_a_commit_wakes_the_reconcilers_and_a_stalled_writer_is_waited_for_briefly(tmp_path, idle_clock):
    data = os.urandom(2 * MiB)
    cid = compute(data)
    async with cluster(tmp_path, n=3, interval=60.0) as c:
        await trio.sleep(1)  # first rounds done: the next timed ones are at t = 61
        c.stores["s0"].put(data, owner="alice")
        # alice's put to s1 is under way (begun, one chunk), to s2 nothing yet
        alice = c.ep("alice")
        begin = protocol.StoragePutBegin(len(data), cid, True)
        sid = protocol.StoragePutBeginReply.from_wire(await alice.request("s1", begin.kind, begin.to_wire())).session
        chunk = protocol.StoragePutChunk(sid, 0, data[:MiB])
        await alice.request("s1", chunk.kind, chunk.to_wire())
        t0 = trio.current_time()
        c.follower.commit(cid, record(cid))
        await trio.sleep(2)
        await settle(c)
        assert holders(c, cid) == ["s0", "s2"]  # s2 pulled at once; s1 leaves the writer alone
        assert c.reconcilers["s1"].plan.deferred == [cid]
        await trio.sleep(5)  # the writer sent nothing for writer_idle: s1 pulls (well before t = 61)
        await settle(c)
        assert holders(c, cid) == ["s0", "s1", "s2"] and trio.current_time() - t0 < 10
        # the writer's late commit finds the blob there; its session ends cleanly
        chunk = protocol.StoragePutChunk(sid, MiB, data[MiB:])
        await alice.request("s1", chunk.kind, chunk.to_wire())
        commit = protocol.StoragePutCommit(sid)
        assert protocol.StoragePutCommitReply.from_wire(
            await alice.request("s1", commit.kind, commit.to_wire())).cid == cid
        assert c.stores["s1"].read(cid) == data and c.stores["s1"].partial_files() == []


def test_a_node_gone_for_long_is_replaced_in_the_placement():
    nodes = ["s0", "s1", "s2", "s3"]
    cid = next(c for c in (compute(f"g{i}".encode()) for i in range(1000))
               if choose_replicas(c, nodes, 4)[3] == "s0")  # s0 is fourth: not placed
    first = choose_replicas(cid, nodes, 1)[0]
    plan = ReconcilePlan("s0", nodes, 3)
    assert plan.round(0.0, {cid: record(cid)}, [], synced_at=0.0) == []
    actions = plan.round(1.0, {cid: record(cid)}, [], synced_at=1.0, gone=[first])
    assert [type(a) for a in actions] == [Pull] and plan.placement(cid) == [
        n for n in choose_replicas(cid, nodes, 4) if n != first]
    assert plan.status({cid: record(cid)})["gone"] == [first]
    plan.pulled(cid, True)
    # back: the placement is the usual one again; s0 keeps its copy (a committed blob is never collected)
    assert plan.round(2.0, {cid: record(cid)}, [cid], synced_at=2.0, gone=[]) == []
    assert "s0" not in plan.placement(cid)


async def test_the_next_node_takes_the_copies_of_a_node_gone_for_long(tmp_path, idle_clock):
    data = os.urandom(MiB)
    cid = compute(data)
    async with cluster(tmp_path, n=4, interval=10.0, gone_after=100.0) as c:
        ranking = choose_replicas(cid, list(c.stores), 4)
        dead, spare = ranking[0], ranking[3]
        c.scopes[dead].cancel()  # gone (its endpoint closed: requests to it fail at once)
        for n in ranking[1:3]:
            c.stores[n].put(data, owner="alice")
        c.follower.commit(cid, record(cid))
        await trio.sleep(50)
        await settle(c)
        assert holders(c, cid) == sorted(ranking[1:3])  # not gone long enough
        await trio.sleep(70)
        await settle(c)
        assert holders(c, cid) == sorted(ranking[1:])
        assert json.loads((tmp_path / spare / "status.json").read_text())["gone"] == [dead]
