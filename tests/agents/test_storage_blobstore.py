"""agents.storage.blobstore: durable puts, verified reads, pins, quota, disk full."""

from __future__ import annotations

import errno
import os

import pytest

from agents.storage import BlobStore, errors
from agents.storage import blobstore as bsmod
from core.cid import CHUNK_SIZE, compute

EMPTY = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


def _files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 17])
def test_round_trip(tmp_path, size) -> None:
    store = BlobStore(tmp_path)
    data = os.urandom(size)
    cid = store.put(data)
    assert cid == compute(data)
    assert store.has(cid)
    assert store.read(cid) == data
    assert b"".join(store.iter_read(cid, CHUNK_SIZE)) == data
    st = store.stat(cid)
    assert (st.size, st.pinned) == (size, True)
    if size > 10:
        assert store.read(cid, 5, 7) == data[5:12]
        assert store.read(cid, size - 3) == data[-3:]
    # a second store over the same directory sees it (durable, not cached)
    again = BlobStore(tmp_path)
    assert again.read(cid) == data
    assert again.statistics().used_bytes == store.statistics().used_bytes


def test_empty_blob_cid_is_kubos(tmp_path) -> None:
    assert BlobStore(tmp_path).put(b"") == EMPTY


def test_streaming_put_with_claimed_cid(tmp_path) -> None:
    store = BlobStore(tmp_path)
    data = os.urandom(2 * CHUNK_SIZE + 5)
    with store.begin_put(compute(data), len(data)) as s:
        for i in range(0, len(data), 100_000):
            s.write(data[i : i + 100_000])
        cid = s.commit()
    assert store.read(cid) == data
    assert _files(tmp_path / "tmp") == []


def test_claimed_cid_mismatch_rejected_nothing_left(tmp_path) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(errors.CidMismatch):
        store.put(b"hello", claimed_cid=compute(b"world"))
    assert _files(tmp_path) == []
    assert store.statistics().used_bytes == 0 and store.statistics().reserved_bytes == 0


def test_bad_cids_rejected(tmp_path) -> None:
    store = BlobStore(tmp_path)
    for bad in ["", "../../etc/passwd", "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH", "bafy"]:
        with pytest.raises(errors.BadRequest):
            store.has(bad)
    with pytest.raises(errors.NotFound):
        store.read(compute(b"absent"))


def test_max_blob(tmp_path) -> None:
    store = BlobStore(tmp_path, max_blob=1000)
    with pytest.raises(errors.BlobTooLarge, match="maximum of 1000"):
        store.begin_put(size=1001)
    with store.begin_put() as s:  # undeclared size: caught while streaming
        s.write(b"x" * 600)
        with pytest.raises(errors.BlobTooLarge):
            s.write(b"x" * 600)
    assert _files(tmp_path) == []
    assert store.put(b"y" * 1000)


def test_quota(tmp_path) -> None:
    store = BlobStore(tmp_path, quota_bytes=10_000)
    store.put(b"a" * 5000)
    with pytest.raises(errors.QuotaExceeded, match="quota exceeded"):
        store.put(b"b" * 6000)
    with store.begin_put() as s:
        s.write(b"c" * 4000)
        with pytest.raises(errors.QuotaExceeded):
            s.write(b"c" * 4000)
    assert len([f for f in _files(tmp_path / "blobs") if not f.endswith(".pin")]) == 1
    assert _files(tmp_path / "tmp") == []
    stats = store.statistics()
    assert stats.reserved_bytes == 0 and stats.blobs == 1
    # freeing space (unpin + gc) makes room again
    store.unpin(compute(b"a" * 5000))
    assert store.gc() == 1
    assert store.put(b"b" * 6000)


def test_disk_full_leaves_nothing(tmp_path, monkeypatch) -> None:
    store = BlobStore(tmp_path)
    real_write = os.write
    budget = {"left": 300_000}

    def write(fd, data):  # the disk fills up after 300 kB
        if budget["left"] < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        budget["left"] -= len(data)
        return real_write(fd, data)

    monkeypatch.setattr(bsmod.os, "write", write)
    with pytest.raises(errors.DiskFull, match="disk full"):
        store.put(os.urandom(1 << 20))
    monkeypatch.setattr(bsmod.os, "write", real_write)
    assert _files(tmp_path) == []
    assert store.statistics().reserved_bytes == 0


def test_flipped_byte_detected_never_served(tmp_path) -> None:
    store = BlobStore(tmp_path)
    data = os.urandom(3 * CHUNK_SIZE)
    cid = store.put(data)
    path = tmp_path / "blobs" / cid[-2:] / cid
    raw = bytearray(path.read_bytes())
    raw[CHUNK_SIZE + 1234] ^= 0x01
    path.write_bytes(bytes(raw))
    # chunk 0 is intact and still served; any read touching chunk 1 fails
    assert store.read(cid, 0, 1000) == data[:1000]
    with pytest.raises(errors.CorruptBlob, match="chunk 1"):
        store.read(cid)
    assert not store.is_intact(cid)
    store.quarantine(cid)
    assert not store.has(cid)
    assert store.put(data) == cid and store.read(cid) == data


@pytest.mark.parametrize("damage", ["truncate", "append", "trailer", "digest"])
def test_other_damage_detected(tmp_path, damage) -> None:
    store = BlobStore(tmp_path)
    data = os.urandom(CHUNK_SIZE + 10)
    cid = store.put(data)
    path = tmp_path / "blobs" / cid[-2:] / cid
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[:-1]
    elif damage == "append":
        raw += b"\0"
    elif damage == "trailer":
        raw[-1] ^= 0xFF
    else:  # a leaf digest in the trailer
        raw[len(data) + 3] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(errors.CorruptBlob):
        store.read(cid, 0, 10)


def test_pins_list_delete(tmp_path) -> None:
    store = BlobStore(tmp_path)
    a = store.put(b"a", pin=False)
    b = store.put(b"b")
    assert [x.cid for x in store.list()] == sorted([a, b])
    assert not store.is_pinned(a) and store.is_pinned(b)
    with pytest.raises(errors.StorageError, match="pinned"):
        store.delete(b)
    store.pin(a)
    store.unpin(b)
    assert store.gc() == 1
    assert store.has(a) and not store.has(b)
    with pytest.raises(errors.NotFound):
        store.pin(b)


def test_interrupted_put_is_cleaned_on_open(tmp_path) -> None:
    store = BlobStore(tmp_path)
    s = store.begin_put()
    s.write(b"partial")
    # process dies here: the temp file stays until the next open
    assert len(_files(tmp_path / "tmp")) == 1
    BlobStore(tmp_path)
    assert _files(tmp_path / "tmp") == []
