"""Small reads (issue 14): a blob of one chunk is read in one round trip, checked against
the CID itself; a storage node serves a small marked range without a worker thread."""

from __future__ import annotations

import os

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.storage import BlobStore, StorageUnavailable
from agents.storage.blobstore import NOWAIT_BYTES
from agents.storage.client import StorageClient
from agents.storage.errors import BadRequest, CorruptBlob
from core import cid as cidmod
from core import protocol
from core.cid import CHUNK_SIZE

from tests.agents.test_storage_node import swarm


class _Replies:
    """An endpoint double: each node answers ``storage.get`` with what ``answer(node,
    request)`` returns (data, size, digests); every request is recorded."""

    identity = "client"

    def __init__(self, answer):
        self.answer = answer
        self.requests: list[tuple[str, protocol.StorageGet]] = []

    async def request(self, node, kind, body, timeout=None):
        await trio.lowlevel.checkpoint()
        assert kind == protocol.StorageGet.kind
        req = protocol.StorageGet.from_wire(body)
        self.requests.append((node, req))
        data, size, digests = self.answer(node, req)
        return protocol.StorageGetReply(data, size, digests).to_wire()


def _honest(data: bytes):
    b = cidmod.CidBuilder(record_leaves=True)
    b.update(data)
    b.finish()
    digests = b"".join(b.leaf_digests or [])

    def answer(node, req):
        return data[req.offset : req.offset + req.length], len(data), digests if req.leaves else None

    return answer


@pytest.mark.parametrize("size", [0, 1, 4000, CHUNK_SIZE])
def test_a_one_chunk_blob_takes_one_request_without_leaves(size):
    data = os.urandom(size)
    cid = cidmod.compute(data)
    assert cidmod.parse(cid).codec == cidmod.RAW
    ep = _Replies(_honest(data))
    client = StorageClient(ep, ["a", "b", "c"])
    assert trio.run(client.get, cid) == data
    assert len(ep.requests) == 1
    node, req = ep.requests[0]
    assert node == client.placement(cid)[0] and req.offset == 0 and not req.leaves


def test_a_blob_of_two_chunks_still_asks_for_leaves_first():
    data = os.urandom(CHUNK_SIZE + 1)
    ep = _Replies(_honest(data))
    client = StorageClient(ep, ["a"], replicas=1, write_quorum=1)
    assert trio.run(client.get, cidmod.compute(data)) == data
    assert ep.requests[0][1].leaves


_LIES = ["flip", "truncate", "append", "size+1", "size-1", "other-blob", "empty"]


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, CHUNK_SIZE), lie=st.sampled_from(_LIES), where=st.floats(0, 1, exclude_max=True))
def test_a_lying_replica_of_a_one_chunk_blob_is_never_released_and_the_next_serves(size, lie, where):
    data = os.urandom(size)
    cid = cidmod.compute(data)
    liar = cidmod.choose_replicas(cid, ["a", "b"], 2)[0]  # asked first
    pos = int(where * size)

    def answer(node, req):
        if node != liar:
            return data, size, None
        if lie == "flip":
            bad = bytearray(data)
            bad[pos] ^= 0x01
            return bytes(bad), size, None
        if lie == "truncate":
            return data[:pos], size, None
        if lie == "append":
            return data + b"x", size + 1, None
        if lie == "size+1":
            return data, size + 1, None
        if lie == "size-1":
            return data, size - 1, None
        if lie == "other-blob":
            other = os.urandom(size)
            while other == data:  # (another blob: of one byte, a fresh one is the same 1 time in 256)
                other = os.urandom(size)
            return other, size, None
        return b"", 0, None

    seen: list[bytes] = []

    async def sink(piece: bytes) -> None:
        seen.append(piece)

    corrupt: list[str] = []
    client = StorageClient(_Replies(answer), ["a", "b"], replicas=2, write_quorum=1)
    assert trio.run(lambda: client.read_to(cid, sink, corrupt=corrupt)) == size
    assert seen == [data]  # nothing of the liar's reached the sink
    assert corrupt == [liar]
    assert client.statistics().corrupt_replicas == 1


def test_a_one_chunk_blob_no_replica_serves_honestly_is_unavailable():
    data = b"a small record"
    client = StorageClient(_Replies(lambda node, req: (b"a small recorD", len(data), None)), ["a", "b"],
                           replicas=2, write_quorum=1)
    with pytest.raises(StorageUnavailable) as info:
        trio.run(client.get, cidmod.compute(data))
    assert all(isinstance(e, CorruptBlob) for e in info.value.causes.values())


def test_rankings_are_kept_and_forgotten_when_the_nodes_change():
    client = StorageClient(_Replies(_honest(b"")), ["a", "b"], replicas=2, write_quorum=1)
    cid = cidmod.compute(b"x")
    assert sorted(client.placement(cid)) == ["a", "b"]
    client.set_nodes(["a", "b", "c"])
    assert client.placement(cid) == cidmod.choose_replicas(cid, ["a", "b", "c"], 3)
    for i in range(2000):  # bounded
        client.placement(cidmod.compute(i.to_bytes(2, "big")))
    assert len(client._rankings) <= 1024


# -- the node: small marked ranges served on the event loop ----------------------------------


def test_read_nowait_serves_marked_cached_ranges_and_nothing_else(tmp_path):
    store = BlobStore(tmp_path)
    data = os.urandom(3 * CHUNK_SIZE + 7)
    cid = store.put(data)  # marked by the put
    for offset, length in [(0, 10), (5, CHUNK_SIZE), (CHUNK_SIZE - 3, 6), (len(data) - 7, 100), (3, len(data))]:
        assert store.read_nowait(cid, offset, length) == store.read_range(cid, offset, length)
    assert store.nowait_reads == 5
    assert store.read_nowait(cid, 0, NOWAIT_BYTES + 1) is None  # too large: a thread reads it
    for offset, length in [(-1, 5), (len(data), 5), (len(data) + 1, 5), (0, 0)]:
        assert store.read_nowait(cid, offset, length) is None  # the thread path judges (BadRequest, b"")
    assert store.read_nowait("not a cid", 0, 5) is None
    assert store.read_nowait(cidmod.compute(b"absent"), 0, 5) is None
    fresh = BlobStore(tmp_path)  # no marks after a restart
    assert fresh.read_nowait(cid, 0, 10) is None
    fresh.read(cid, 0, 10)  # hashes and marks chunk 0 only
    assert fresh.read_nowait(cid, 0, 10) == (data[:10], len(data))
    assert fresh.read_nowait(cid, CHUNK_SIZE - 3, 6) is None  # chunk 1 not verified yet
    store.forget_marks()
    assert store.read_nowait(cid, 0, 10) is None


def test_read_nowait_refuses_a_file_changed_under_its_mark(tmp_path):
    store = BlobStore(tmp_path)
    data = os.urandom(1000)
    cid = store.put(data)
    path = store._path(cid)
    raw = bytearray(path.read_bytes())
    raw[3] ^= 1
    path.write_bytes(raw)  # a new mtime: the mark no longer holds
    assert store.read_nowait(cid, 0, 10) is None
    with pytest.raises(CorruptBlob):
        store.read_range(cid, 0, 10)


async def test_a_bulk_reads_later_pieces_are_served_on_the_event_loop(tmp_path):
    data = os.urandom(2 * NOWAIT_BYTES + CHUNK_SIZE + 5)
    with trio.fail_after(30):
        async with swarm(tmp_path, n=1, replicas=1, write_quorum=1) as (client, nodes):
            store = nodes["s0"].store
            cid = await client.put(data)
            before = store.nowait_reads
            assert await client.get(cid) == data  # 2 MiB pieces: the first with leaves (a thread), two more
            assert store.nowait_reads == before + 2
            pieces: list[bytes] = []

            async def keep(piece: bytes) -> None:
                pieces.append(piece)

            assert await client.read_to(cid, keep, message_size=NOWAIT_BYTES + CHUNK_SIZE) == len(data)
            assert b"".join(pieces) == data and store.nowait_reads == before + 2  # over the limit: threads


async def test_a_node_serves_small_gets_without_a_thread_and_still_refuses_bad_ranges(tmp_path):
    small, large = os.urandom(3000), os.urandom(2 * CHUNK_SIZE)
    with trio.fail_after(30):
        async with swarm(tmp_path, n=1, replicas=1, write_quorum=1) as (client, nodes):
            store = nodes["s0"].store
            cids = [await client.put(small), await client.put(large)]
            assert await client.get(cids[0]) == small
            assert store.nowait_reads == 1
            assert await client.get(cids[1]) == large  # a first piece with leaves: a thread
            assert store.nowait_reads == 1
            hostile = client.endpoint_for("alice")  # a registered user asking odd ranges
            for offset, length, expect in [(2999, 10, small[2999:]), (3000, 10, b""), (0, 0, b"")]:
                body = protocol.StorageGet(cids[0], offset, length).to_wire()
                reply = protocol.StorageGetReply.from_wire(await hostile.request("s0", "storage.get", body))
                assert reply.data == expect and reply.size == len(small)
            from bus import RemoteError
            with pytest.raises(RemoteError) as info:
                await hostile.request("s0", "storage.get", protocol.StorageGet(cids[0], 3001, 10).to_wire())
            assert info.value.code == BadRequest.code
            stranger = client.endpoint_for("stranger")  # not registered: refused before any read
            before = store.nowait_reads
            with pytest.raises(RemoteError) as info:
                await stranger.request("s0", "storage.get", protocol.StorageGet(cids[0], 0, 10).to_wire())
            assert info.value.code == "storage.forbidden" and store.nowait_reads == before


# -- piece sizes: a get holds the blob anyway, a streamed read stays bounded -------------------


def test_get_reads_bulk_pieces_and_a_streamed_read_its_message_size():
    MiB = 1 << 20
    data = os.urandom(5 * MiB + 3)
    cid = cidmod.compute(data)
    ep = _Replies(_honest(data))
    client = StorageClient(ep, ["a"], replicas=1, write_quorum=1, message_size=MiB)
    assert trio.run(client.get, cid) == data
    assert [r.length for _, r in ep.requests] == [2 * MiB, 2 * MiB, MiB + 3]
    ep.requests.clear()

    async def drop(piece: bytes) -> None:
        assert len(piece) <= MiB

    assert trio.run(client.read_to, cid, drop) == len(data)
    assert [r.length for _, r in ep.requests] == [MiB] * 5 + [3]
    with pytest.raises(ValueError):
        StorageClient(ep, ["a"], bulk_message_size=CHUNK_SIZE + 1)
    with pytest.raises(ValueError):
        trio.run(lambda: client.read_to(cid, drop, message_size=16 * MiB))
