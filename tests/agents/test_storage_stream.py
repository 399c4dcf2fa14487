"""The blob data path (issue 14): verified-at-rest marks on the node, incremental chunk
verification on the client, streamed record reads into a file, bounded memory."""

from __future__ import annotations

import os
import random
import time

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.recordio import read_record_to_file
from agents.storage import BlobStore, CidMismatch, StorageUnavailable
from agents.storage.client import StorageClient
from agents.storage.errors import CorruptBlob
from agents.errors import IntegrityError
from core import cid as cidmod
from core import pre
from core import protocol
from core import record as recordmod
from core.cid import CHUNK_SIZE

from tests.agents.test_storage_node import swarm

MiB = 1 << 20


# -- incremental verification on the client: a fake endpoint serving chosen bytes ------------


class _Bytes:
    """An endpoint double: each node answers ``storage.get`` from its own copy of the blob
    (the honest digests, so a flipped byte shows only in the data)."""

    def __init__(self, copies: dict[str, bytes], digests: bytes):
        self.copies = copies
        self.digests = digests
        self.served: dict[str, list[tuple[int, int]]] = {n: [] for n in copies}

    async def request(self, node, kind, body, timeout=None):
        await trio.lowlevel.checkpoint()
        assert kind == protocol.StorageGet.kind
        req = protocol.StorageGet.from_wire(body)
        data = self.copies[node]
        piece = data[req.offset : req.offset + req.length]
        self.served[node].append((req.offset, len(piece)))
        return protocol.StorageGetReply(piece, len(data), self.digests if req.leaves else None).to_wire()


def _digests(data: bytes) -> bytes:
    b = cidmod.CidBuilder(record_leaves=True)
    b.update(data)
    b.finish()
    return b"".join(b.leaf_digests or [])


def _read(copies: dict[str, bytes], data: bytes, **opts) -> tuple[list[bytes], BaseException | None, _Bytes]:
    cid = cidmod.compute(data)
    ep = _Bytes(copies, _digests(data))
    client = StorageClient(ep, list(copies), replicas=len(copies), write_quorum=1,
                           **opts)
    got: list[bytes] = []
    error: BaseException | None = None

    async def sink(piece: bytes) -> None:
        got.append(bytes(piece))

    async def main() -> None:
        nonlocal error
        try:
            await client.read_to(cid, sink)
        except (StorageUnavailable, CorruptBlob) as exc:
            error = exc

    trio.run(main)
    return got, error, ep


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.integers(1, 9), tail=st.integers(0, CHUNK_SIZE - 1), where=st.floats(0, 1, exclude_max=True),
       bit=st.integers(0, 7), per_message=st.integers(1, 3), seed=st.integers(0, 2**32))
def test_a_flipped_byte_in_any_chunk_is_caught_before_that_chunk_is_released(chunks, tail, where, bit,
                                                                             per_message, seed):
    size = max(1, (chunks - 1) * CHUNK_SIZE + tail)
    data = random.Random(seed).randbytes(size)
    pos = int(where * size)
    bad = bytearray(data)
    bad[pos] ^= 1 << bit
    # one lying replica only: the read releases exactly the chunks before the bad one's message
    got, error, _ = _read({"liar": bytes(bad)}, data, message_size=per_message * CHUNK_SIZE, pipeline=2)
    released = b"".join(got)
    assert error is not None
    assert data.startswith(released)
    bad_chunk = pos // CHUNK_SIZE
    assert len(released) <= bad_chunk * CHUNK_SIZE
    # released whole messages: everything up to the message holding the bad chunk
    message = per_message * CHUNK_SIZE
    assert len(released) == (pos // message) * message


@settings(max_examples=15, deadline=None)
@given(chunks=st.integers(2, 8), where=st.floats(0, 1, exclude_max=True))
def test_a_replica_lying_mid_stream_is_left_for_the_next_at_the_same_offset(chunks, where):
    data = os.urandom(chunks * CHUNK_SIZE - 5)
    pos = int(where * len(data))
    bad = bytearray(data)
    bad[pos] ^= 0x40
    cid = cidmod.compute(data)
    order = cidmod.choose_replicas(cid, ["a", "b"], 2)
    copies = {order[0]: bytes(bad), order[1]: data}  # the first one asked lies
    got, error, ep = _read(copies, data, message_size=CHUNK_SIZE, pipeline=3)
    assert error is None
    assert b"".join(got) == data
    resumed = (pos // CHUNK_SIZE) * CHUNK_SIZE
    # the honest replica was asked only from where the liar's bytes stopped being used
    assert min(o for o, _ in ep.served[order[1]]) == resumed


def test_a_read_holds_at_most_pipeline_pieces_whatever_the_sink_speed():
    data = os.urandom(24 * CHUNK_SIZE)
    cid = cidmod.compute(data)
    ep = _Bytes({"a": data}, _digests(data))
    client = StorageClient(ep, ["a"], replicas=1, write_quorum=1, message_size=CHUNK_SIZE, pipeline=3)
    got = []

    async def slow(piece: bytes) -> None:
        await trio.sleep(1)  # the fetches race ahead while the sink is slow
        got.append(len(piece))

    async def main() -> None:
        assert await client.read_to(cid, slow) == len(data)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert sum(got) == len(data)
    assert client.statistics().pieces_held_max <= 3


# -- the node: hashed once on the way out ------------------------------------------------------


def test_a_marked_blob_is_served_without_hashing_its_chunks_again(tmp_path):
    store = BlobStore(tmp_path)
    data = os.urandom(5 * CHUNK_SIZE + 3)
    cid = store.put(data)  # hashed on the way in: every chunk marked
    assert store.verified_chunks(cid) == 6
    for _ in range(3):
        assert store.read(cid) == data
    assert store.chunks_hashed == 0
    fresh = BlobStore(tmp_path)  # a restart forgets the marks: one hash per chunk, then none
    assert fresh.read(cid, 0, CHUNK_SIZE) == data[:CHUNK_SIZE]
    assert fresh.chunks_hashed == 1
    assert fresh.read(cid) == data and fresh.read(cid) == data
    assert fresh.chunks_hashed == 6 and fresh.verified_chunks(cid) == 6


def test_a_mark_ends_when_the_file_changes_or_expires(tmp_path, monkeypatch):
    store = BlobStore(tmp_path, mark_ttl=60)
    data = os.urandom(3 * CHUNK_SIZE)
    cid = store.put(data)
    path = tmp_path / "blobs" / cid[-2:] / cid
    raw = bytearray(path.read_bytes())
    raw[CHUNK_SIZE + 9] ^= 0x01
    st = path.stat()
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a change the mark sees
    with pytest.raises(CorruptBlob, match="chunk 1"):
        store.read(cid)
    # expiry: a mark older than mark_ttl is not trusted
    store2 = BlobStore(tmp_path / "two", mark_ttl=60)
    cid2 = store2.put(data)
    assert store2.read(cid2) == data and store2.chunks_hashed == 0
    now = time.monotonic()
    monkeypatch.setattr("agents.storage.blobstore.time.monotonic", lambda: now + 61)
    assert store2.read(cid2) == data and store2.chunks_hashed == 3


def test_marks_are_bounded(tmp_path):
    store = BlobStore(tmp_path, max_marks=2)
    cids = [store.put(bytes([i]) * 10) for i in range(4)]
    assert [store.verified_chunks(c) for c in cids] == [0, 0, 1, 1]


def test_a_put_of_a_held_blob_re_checks_it_and_replaces_a_corrupt_copy(tmp_path):
    store = BlobStore(tmp_path)
    data = os.urandom(2 * CHUNK_SIZE + 1)
    cid = store.put(data)
    path = tmp_path / "blobs" / cid[-2:] / cid
    with open(path, "r+b") as f:  # rot under a live mark: served until someone looks
        f.seek(CHUNK_SIZE + 5)
        byte = f.read(1)
        f.seek(CHUNK_SIZE + 5)
        f.write(bytes([byte[0] ^ 0xFF]))
    store.put(data)  # the healing put of a client that found the copy corrupt
    assert store.corruptions == 1
    assert (tmp_path / "corrupt" / cid).exists()
    assert store.is_intact(cid) and store.read(cid) == data


# -- records streamed into a file ----------------------------------------------------------------


def _sealed(size: int) -> tuple[bytes, bytes, bytes]:
    box_sk, box_pk = pre.box_keypair()
    kp = pre.KeyPair.derive(pre.new_master_secret(), "lab")
    plain = os.urandom(size)
    sealer = recordmod.RecordSealer(kp, owner_id="alice", label="lab", record_id="r1", media_type="text/plain",
                                    size=size, owner_box_public_key=box_pk, owner_box_secret_key=box_sk)
    parts = [sealer.start()]
    for off in range(0, size, sealer.header.chunk_size):
        parts.append(sealer.update(plain[off : off + sealer.header.chunk_size]))
    parts.append(sealer.finish())
    return plain, b"".join(parts), box_sk


async def test_a_hostile_node_serving_a_wrong_chunk_mid_stream_writes_nothing_wrong(tmp_path):
    plain, blob, box_sk = _sealed(9 * CHUNK_SIZE)
    out = tmp_path / "out" / "record.bin"
    out.parent.mkdir()
    with trio.fail_after(60):
        async with swarm(tmp_path, message_size=MiB, pipeline=2) as (client, nodes):
            cid = await client.put(blob)
            first = client.placement(cid)[0]
            real = nodes[first].store.read_range

            def lying(c, offset=0, length=None, **kw):
                data, size = real(c, offset, length, **kw)
                if offset >= MiB:  # the second message on: one wrong byte in it
                    data = bytearray(data)
                    data[len(data) // 2] ^= 1
                    data = bytes(data)
                return data, size

            def lying_nowait(c, offset, length):  # (the event loop's read of a marked range lies alike)
                return lying(c, offset, length)

            nodes[first].store.read_range = lying
            nodes[first].store.read_nowait = lying_nowait
            provider = recordmod.owner_key_provider(box_sk)
            header, written = await read_record_to_file(client, cid, provider, out)
            assert written == len(plain) and out.read_bytes() == plain
            assert header.record_id == "r1"
            assert client.statistics().corrupt_replicas == 1
            assert sorted(p.name for p in out.parent.iterdir()) == ["record.bin"]

            # every replica lies: the read fails and nothing is left under the output's name
            for n in nodes.values():
                n.store.read_range, n.store.read_nowait = lying, lying_nowait
            out2 = out.parent / "again.bin"
            with pytest.raises(StorageUnavailable):
                await read_record_to_file(client, cid, provider, out2)
            assert sorted(p.name for p in out.parent.iterdir()) == ["record.bin"]


async def test_a_header_the_ledger_does_not_name_is_refused_before_decrypting(tmp_path):
    plain, blob, box_sk = _sealed(3 * CHUNK_SIZE)
    out = tmp_path / "r.bin"
    calls = []

    def provider(header):
        calls.append(header)
        return recordmod.owner_key_provider(box_sk)(header)

    def check(header):
        raise IntegrityError(f"header names {header.record_id}")

    with trio.fail_after(60):
        async with swarm(tmp_path) as (client, nodes):
            cid = await client.put(blob)
            with pytest.raises(IntegrityError, match="header names r1"):
                await read_record_to_file(client, cid, provider, out, check_header=check)
    assert calls == [] and not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


async def test_what_the_sink_raises_reaches_the_caller_as_is_without_trying_other_replicas(tmp_path):
    data = os.urandom(6 * CHUNK_SIZE)
    with trio.fail_after(60):
        async with swarm(tmp_path, message_size=CHUNK_SIZE, pipeline=2) as (client, nodes):
            cid = await client.put(data)
            for fail_at in (0, 3):  # the first piece, and one in the middle of the ranges
                seen = []

                async def sink(piece):
                    seen.append(piece)
                    if len(seen) > fail_at:
                        raise IntegrityError("the caller refuses this piece")

                with pytest.raises(IntegrityError, match="refuses"):  # not an exception group
                    await client.read_to(cid, sink)
                assert len(seen) == fail_at + 1
            assert client.statistics().fallbacks == 0


async def test_put_file_with_a_known_cid_skips_the_hash_and_the_nodes_still_check_it(tmp_path):
    data = os.urandom(5 * CHUNK_SIZE + 1)
    path = tmp_path / "blob"
    path.write_bytes(data)
    with trio.fail_after(60):
        async with swarm(tmp_path, message_size=MiB) as (client, nodes):
            cid = await client.put_file(path, cid=cidmod.compute(data))
            assert cid == cidmod.compute(data) and await client.get(cid) == data
            wrong = cidmod.compute(data + b"!")
            with pytest.raises(CidMismatch):
                await client.put_file(path, cid=wrong)
            assert not any(n.store.has(wrong) for n in nodes.values())
