"""A directory of content-addressed blobs: durable atomic puts, verified reads.

Layout under ``root``::

    blobs/<last 2 chars of cid>/<cid>       data || trailer
    blobs/<last 2 chars of cid>/<cid>.pin   empty marker: the blob is pinned
    blobs/<last 2 chars of cid>/<cid>.owner the agent whose put first stored it (utf-8)
    tmp/                                puts in progress (emptied on open)
    corrupt/                            blobs that failed verification (kept for inspection)

The trailer is ``leaf digests (32 bytes each) || n (u32 BE) || size (u64 BE)
|| b"EMRBLOB1"``: the sha2-256 of every 262,144-byte chunk. A read first
rebuilds the CID from those digests (:func:`core.cid.cid_from_leaves`) and
compares it with the blob's name, then hashes every chunk it is about to
return that is not yet *verified at rest* and compares it with its digest, so
a flipped, truncated or appended byte is reported as :class:`CorruptBlob`
before a bad byte of an unverified chunk is served.

Verified-at-rest marks (in memory, at most ``max_marks`` blobs, least recently
used dropped first): a put marks every chunk it hashed on the way in, a read
marks the chunks it hashed; a marked chunk is served without hashing it again
(each byte is hashed once on the way out, not once per read). A mark holds the
blob's digests and the file's identity (inode, size, mtime, ctime): it is
dropped when the file changes, on quarantine and delete, and after
``mark_ttl`` seconds (monotonic clock; ``mark_ttl=0`` hashes on every read, as
before marks). Silent corruption of a marked blob's bytes (bit rot changes no
timestamp) is served until the mark expires; the client's check of every chunk
against the CID refuses it and reads another replica, the heal put of that
client makes this store re-check its copy (a put of a blob already held
re-hashes the held copy, quarantining it if it is corrupt), and
:meth:`is_intact` (the reconciler's scrub) ignores marks.

A put streams into a temporary file while hashing, then: checks the CID the
client claimed, appends the trailer, fsyncs the file, renames it into place and
fsyncs the directory; only then does :meth:`PutSession.commit` return the CID.
Any failure (size limit, quota, disk full, CID mismatch) removes the temporary
file, so nothing partial is ever visible.

The methods are blocking file operations; agents call them through
``trio.to_thread.run_sync``. The store is safe to use from several threads.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import shutil
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from core import cid as cidmod
from core.errors import DecodeError

from agents.storage.errors import (
    BadRequest,
    BlobTooLarge,
    CidMismatch,
    CorruptBlob,
    DiskFull,
    NotFound,
    QuotaExceeded,
    StorageError,
)

MAGIC = b"EMRBLOB1"
_MARKERS = (".pin", ".owner")
_TAIL = struct.Struct(">IQ8s")
DEFAULT_MAX_BLOB = 256 * 1024 * 1024
CHUNK = cidmod.CHUNK_SIZE
DEFAULT_MARK_TTL = 600.0
"""Seconds a verified-at-rest mark lets reads skip re-hashing a chunk."""
NOWAIT_BYTES = 2 << 20
"""The largest range :meth:`BlobStore.read_nowait` reads: a small record, a chunk, and
the 2 MiB pieces of a client's bulk read (``StorageClient.get``). A range above one
chunk is served in the buffer it was read into (a bytearray: no copy of it), so the
event loop spends on a 2 MiB piece ~0.25 ms (a zeroed buffer and the page-cache
copy; sealing the reply takes as long) instead of a worker thread's hop and back,
which on a busy node waited for the GIL behind the sends of earlier pieces
(``emrshare bench storage``, 32 MiB gets: the nodes' CPU per MiB about the same,
get vs sha256 0.21-0.28 -> 0.23-0.30, alternating runs on a loaded 2-core machine)."""
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", None) if hasattr(os, "preadv") else None
DEFAULT_MAX_MARKS = 4096
"""Blobs whose verified-at-rest marks one store keeps (about 32 bytes per chunk each)."""


def trailer_size(size: int) -> int:
    return 32 * cidmod.leaf_count(size) + _TAIL.size


def canonical_cid(cid: str) -> str:
    """The canonical CIDv1 text of ``cid``; ``BadRequest`` if it is not a stored kind.

    Stored blobs are named by the CIDs :func:`core.cid.compute` gives (CIDv1,
    sha2-256, raw or dag-pb). The canonical text is lowercase base32, so it is
    also a safe file name. The last 1024 good answers are kept: a streamed read
    names the same CID in every piece's request (parsing one took ~0.1 ms).
    """
    if type(cid) is not str:
        return _canonical_cid(cid)
    return _canonical_cid_kept(cid)


def _canonical_cid(cid: str) -> str:
    try:
        parsed = cidmod.parse(cid)
    except DecodeError as exc:
        raise BadRequest(str(exc)) from None
    if parsed.version != 1 or parsed.hash_code != cidmod.SHA2_256 or parsed.codec not in (cidmod.RAW, cidmod.DAG_PB):
        raise BadRequest(f"only CIDv1 sha2-256 raw/dag-pb blobs are stored (Kubo --cid-version=1), not {cid}")
    return str(parsed)


_canonical_cid_kept = functools.lru_cache(maxsize=1024)(_canonical_cid)


@dataclass(frozen=True, slots=True)
class BlobStat:
    cid: str
    size: int
    stored_bytes: int
    pinned: bool


@dataclass(frozen=True, slots=True)
class StoreStat:
    blobs: int
    used_bytes: int
    reserved_bytes: int
    quota_bytes: int | None
    max_blob: int


@dataclass(slots=True)
class _Mark:
    """What a store knows about one blob file it checked: its identity on disk,
    its size and digests (checked against the CID), and which chunks hashed right."""

    ident: tuple[int, int, int, int]
    size: int
    digests: list[bytes]
    expires: float
    verified: bytearray = field(default_factory=bytearray)  # one byte per chunk: 1 = hashed right
    missing: int = 0  # chunks not yet verified

    def __post_init__(self) -> None:
        if not self.verified:
            self.verified = bytearray(len(self.digests))
            self.missing = len(self.digests)


def _ident(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Blobs by CID under ``root``, with a disk quota and a maximum blob size."""

    def __init__(self, root: str | os.PathLike[str], *, quota_bytes: int | None = None, max_blob: int = DEFAULT_MAX_BLOB,
                 mark_ttl: float = DEFAULT_MARK_TTL, max_marks: int = DEFAULT_MAX_MARKS):
        if quota_bytes is not None and quota_bytes < 0:
            raise ValueError("quota_bytes must be non-negative")
        if max_blob < 0:
            raise ValueError("max_blob must be non-negative")
        self.root = Path(root)
        self.quota_bytes = quota_bytes
        self.max_blob = max_blob
        self._blobs = self.root / "blobs"
        self._blobs_text = str(self._blobs)  # read_nowait's paths: no pathlib on the event loop
        self._tmp = self.root / "tmp"
        self._corrupt = self.root / "corrupt"
        for d in (self._blobs, self._tmp, self._corrupt):
            d.mkdir(parents=True, exist_ok=True)
        for leftover in self._tmp.iterdir():  # interrupted puts: never committed
            leftover.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self.mark_ttl = mark_ttl
        self.max_marks = max_marks
        self._marks: OrderedDict[str, _Mark] = OrderedDict()  # guarded by _lock
        self.chunks_hashed = 0
        """Chunks hashed by reads (a structural measure: a marked chunk is not hashed again)."""
        self.nowait_reads = 0
        """Reads :meth:`read_nowait` served (on the caller's thread, no worker thread)."""
        self.corruptions = 0
        """Corrupt blobs found and quarantined on this store."""
        self._reserved = 0
        self._used = 0
        self._count = 0
        self._owned: dict[str, int] = {}  # owner -> bytes of the blobs it stored first
        for path in self._blobs.glob("*/*"):
            if path.suffix in _MARKERS:
                continue
            stored = path.stat().st_size
            self._used += stored
            self._count += 1
            owner = self._read_owner(path.name)
            if owner is not None:
                self._owned[owner] = self._owned.get(owner, 0) + stored

    # -- paths -------------------------------------------------------------

    def _path(self, cid: str) -> Path:
        return self._blobs / cid[-2:] / cid

    def _owner_path(self, cid: str) -> Path:
        return self._blobs / cid[-2:] / f"{cid}.owner"

    def _read_owner(self, cid: str) -> str | None:
        try:
            return self._owner_path(cid).read_text("utf-8") or None
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    def owner_of(self, cid: str) -> str | None:
        """The agent whose put first stored ``cid`` (None: unknown, e.g. a repaired copy)."""
        return self._read_owner(canonical_cid(cid))

    def owned_bytes(self, owner: str) -> int:
        """Bytes on disk of the blobs ``owner`` stored first (its share of the node)."""
        with self._lock:
            return self._owned.get(owner, 0)

    def _pin_path(self, cid: str) -> Path:
        # next to the blob, so one directory fsync makes both durable
        return self._blobs / cid[-2:] / f"{cid}.pin"

    # -- quota --------------------------------------------------------------

    def _reserve(self, nbytes: int) -> None:
        with self._lock:
            if self.quota_bytes is not None and self._used + self._reserved + nbytes > self.quota_bytes:
                free = self.quota_bytes - self._used - self._reserved
                raise QuotaExceeded(
                    f"disk quota exceeded: {nbytes} more bytes requested, {max(free, 0)} of "
                    f"{self.quota_bytes} left on this node"
                )
            self._reserved += nbytes

    def _release(self, nbytes: int) -> None:
        with self._lock:
            self._reserved -= nbytes

    # -- writes ------------------------------------------------------------

    def begin_put(self, claimed_cid: str | None = None, size: int | None = None) -> PutSession:
        """Start a put. ``claimed_cid``: the CID the client says the bytes have
        (checked at commit); ``size``: the declared length (checked as bytes
        arrive, and reserved against the quota at once)."""
        claimed = canonical_cid(claimed_cid) if claimed_cid is not None else None
        if size is not None:
            if not isinstance(size, int) or size < 0:
                raise BadRequest("size must be a non-negative integer")
            if size > self.max_blob:
                raise BlobTooLarge(f"blob of {size} bytes exceeds this node's maximum of {self.max_blob} bytes")
        return PutSession(self, claimed, size)

    def put(self, data: bytes, claimed_cid: str | None = None, *, pin: bool = True, owner: str | None = None) -> str:
        """Store ``data`` in one call; returns its CID once durable. ``owner``: recorded
        if this put stores the blob first."""
        with self.begin_put(claimed_cid, len(data)) as session:
            view = memoryview(data)
            for i in range(0, len(view), 1 << 20):
                session.write(view[i : i + (1 << 20)])
            return session.commit(pin=pin, owner=owner)

    def _install(self, tmp: Path, cid: str, stored: int, pin: bool, owner: str | None = None,
                 digests: list[bytes] | None = None) -> None:
        final = self._path(cid)
        shard = final.parent
        if not shard.exists():  # a mkdir per put only when the shard is new (a syscall saved per put)
            shard.mkdir(exist_ok=True)
            _fsync_dir(self._blobs)
        if final.exists():
            # a put of a blob already held (a duplicate, or a client healing a copy it found
            # corrupt): re-check the held copy, ignoring its mark, and replace it if corrupt
            try:
                intact = self.is_intact(cid)
            except NotFound:
                intact = True  # gone meanwhile: installed below
            if not intact:
                self.quarantine(cid)
        if pin:
            self._pin_path(cid).touch()
        with self._lock:
            exists = final.exists()
            if exists:
                tmp.unlink()
            else:
                # the owner of a quarantined copy stays the owner of its replacement
                kept = self._read_owner(cid)
                if kept is not None:
                    owner = kept
                elif owner is not None:  # before the blob appears, so a stored blob never lacks its owner
                    self._owner_path(cid).write_text(owner, "utf-8")
                if owner is not None:
                    self._owned[owner] = self._owned.get(owner, 0) + stored
                os.replace(tmp, final)
                self._used += stored
                self._count += 1
                if digests is not None:  # every chunk was hashed on the way in
                    size = stored - 32 * len(digests) - _TAIL.size
                    mark = self._new_mark(os.stat(final), size, digests)
                    mark.verified[:] = b"\x01" * len(digests)
                    mark.missing = 0
                    self._remember(cid, mark)
        # one fsync of the shard directory makes the rename, the pin and the owner durable
        _fsync_dir(shard)

    # -- verified-at-rest marks ------------------------------------------------

    def _new_mark(self, st: os.stat_result, size: int, digests: list[bytes]) -> _Mark:
        return _Mark(_ident(st), size, digests, time.monotonic() + self.mark_ttl)

    def _remember(self, cid: str, mark: _Mark) -> None:
        """Keep ``mark`` (caller holds ``_lock``); the least recently used go beyond ``max_marks``."""
        if self.mark_ttl <= 0 or self.max_marks <= 0:
            return
        self._marks[cid] = mark
        self._marks.move_to_end(cid)
        while len(self._marks) > self.max_marks:
            self._marks.popitem(last=False)

    def _forget(self, cid: str) -> None:
        with self._lock:
            self._marks.pop(cid, None)

    def forget_marks(self) -> None:
        """Drop every verified-at-rest mark (the next reads hash what they serve)."""
        with self._lock:
            self._marks.clear()

    def verified_chunks(self, cid: str) -> int:
        """Chunks of ``cid`` a live mark says hashed right (0 without a mark)."""
        with self._lock:
            mark = self._marks.get(canonical_cid(cid))
            return 0 if mark is None else len(mark.digests) - mark.missing

    # -- reads ---------------------------------------------------------------

    def has(self, cid: str) -> bool:
        return self._path(canonical_cid(cid)).exists()

    def _open_verified(self, cid: str, *, use_mark: bool = True) -> tuple[int, _Mark]:
        """Open ``cid`` and return (fd, its mark): a live mark of the same file, or a new
        one after checking the trailer against the CID (no chunk verified yet)."""
        path = self._path(cid)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise NotFound(f"blob {cid} is not stored on this node") from None
        try:
            st = os.fstat(fd)
            if use_mark:
                with self._lock:
                    mark = self._marks.get(cid)
                    if mark is not None and mark.ident == _ident(st) and mark.expires > time.monotonic():
                        self._marks.move_to_end(cid)
                        return fd, mark
            total = st.st_size
            if total < _TAIL.size:
                raise CorruptBlob(f"blob {cid}: file too short for its trailer")
            n, size, magic = _TAIL.unpack(os.pread(fd, _TAIL.size, total - _TAIL.size))
            if magic != MAGIC:
                raise CorruptBlob(f"blob {cid}: bad trailer magic")
            if n != cidmod.leaf_count(size) or total != size + 32 * n + _TAIL.size:
                raise CorruptBlob(f"blob {cid}: file length does not match its trailer")
            raw = os.pread(fd, 32 * n, size)
            digests = [raw[i : i + 32] for i in range(0, 32 * n, 32)]
            try:
                root = cidmod.cid_from_leaves(digests, size)
            except DecodeError as exc:
                raise CorruptBlob(f"blob {cid}: {exc}") from None
            if str(root) != cid:
                raise CorruptBlob(f"blob {cid}: chunk digests on disk do not hash to the CID")
            mark = self._new_mark(st, size, digests)
            if use_mark:
                with self._lock:
                    self._remember(cid, mark)
            return fd, mark
        except BaseException:
            os.close(fd)
            raise

    def leaves(self, cid: str) -> tuple[int, list[bytes]]:
        """(size, chunk digests) of a blob, checked against its CID."""
        cid = canonical_cid(cid)
        fd, mark = self._open_verified(cid)
        os.close(fd)
        return mark.size, mark.digests

    def size_of(self, cid: str) -> int:
        return self.leaves(cid)[0]

    def read(self, cid: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes ``[offset, offset+length)`` of the blob, every chunk not verified at rest hashed first.

        Raises ``NotFound``, or ``CorruptBlob`` (nothing is returned then).
        """
        return self.read_range(cid, offset, length)[0]

    def read_range(self, cid: str, offset: int = 0, length: int | None = None, *,
                   use_mark: bool = True) -> tuple[bytes, int]:
        """Like :meth:`read`, also returning the blob's total size. ``use_mark=False``
        hashes every chunk of the range whatever the marks say."""
        cid = canonical_cid(cid)
        fd, mark = self._open_verified(cid, use_mark=use_mark)
        try:
            size, digests = mark.size, mark.digests
            if offset < 0 or offset > size:
                raise BadRequest(f"offset {offset} outside blob of {size} bytes")
            end = size if length is None else min(size, offset + max(0, length))
            if end <= offset:
                return b"", size
            first, last = offset // CHUNK, (end - 1) // CHUNK
            base = first * CHUNK
            buf = os.pread(fd, min(size, (last + 1) * CHUNK) - base, base)
            if len(buf) != min(size, (last + 1) * CHUNK) - base:
                raise CorruptBlob(f"blob {cid}: file shorter than its trailer says")
            view = memoryview(buf)
            verified = mark.verified
            hashed = []
            for i in range(first, last + 1):
                if verified[i] and use_mark:
                    continue
                piece = view[(i - first) * CHUNK : (i - first + 1) * CHUNK]
                if hashlib.sha256(piece).digest() != digests[i]:
                    self._forget(cid)
                    raise CorruptBlob(f"blob {cid}: chunk {i} does not match its hash")
                hashed.append(i)
            if hashed:
                with self._lock:
                    self.chunks_hashed += len(hashed)
                    for i in hashed:
                        if not verified[i]:
                            verified[i] = 1
                            mark.missing -= 1
            if offset == base and end - base == len(buf):
                return buf, size
            return bytes(view[offset - base : end - base]), size
        finally:
            os.close(fd)

    def read_nowait(self, cid: str, offset: int, length: int) -> tuple[bytes | bytearray, int] | None:
        """:meth:`read_range` for a caller that must not block (an event loop): (data,
        size), data a bytearray above one chunk, when ``cid`` has a live mark of the
        same file whose chunks in the range
        all hashed right, the range is at most :data:`NOWAIT_BYTES` and its bytes are
        in the page cache (``RWF_NOWAIT``: the kernel refuses rather than wait for the
        disk); None otherwise, and the caller reads in a thread. Only the open and
        fstat of a recently used file (cached by the kernel too) touch the file system
        otherwise. Raises nothing: every failure is a None, for the thread to judge."""
        if _RWF_NOWAIT is None or not 0 < length <= NOWAIT_BYTES or offset < 0:
            return None
        try:
            cid = canonical_cid(cid)
        except BadRequest:
            return None
        with self._lock:
            mark = self._marks.get(cid)
            if mark is None or mark.expires <= time.monotonic():
                return None
            self._marks.move_to_end(cid)
        size = mark.size
        end = min(size, offset + length)
        if end <= offset or not all(mark.verified[offset // CHUNK : (end - 1) // CHUNK + 1]):
            return None
        try:
            fd = os.open(f"{self._blobs_text}/{cid[-2:]}/{cid}", os.O_RDONLY)
        except OSError:
            return None
        try:
            if _ident(os.fstat(fd)) != mark.ident:
                return None
            buf = bytearray(end - offset)
            if os.preadv(fd, [buf], offset, _RWF_NOWAIT) != len(buf):
                return None
        except OSError:  # EAGAIN: not cached; EOPNOTSUPP: a file system without it
            return None
        finally:
            os.close(fd)
        self.nowait_reads += 1
        return (bytes(buf) if len(buf) <= CHUNK else buf), size  # (a large piece as read: it is only packed)

    def iter_read(self, cid: str, piece: int = 1 << 20, *, use_mark: bool = True) -> Iterator[bytes]:
        """Stream the whole blob in verified pieces (``piece`` rounded to chunks)."""
        size = self.size_of(cid)
        step = max(CHUNK, piece - piece % CHUNK)
        offset = 0
        while True:
            data, _ = self.read_range(cid, offset, step, use_mark=use_mark)
            yield data
            offset += len(data)
            if offset >= size:
                return

    def is_intact(self, cid: str) -> bool:
        """Re-hash the whole blob, whatever its mark says; False when it is corrupt
        (NotFound if absent). An intact blob is then marked verified at rest."""
        cid = canonical_cid(cid)
        self._forget(cid)
        try:
            for _ in self.iter_read(cid, 8 << 20, use_mark=False):
                pass
        except CorruptBlob:
            return False
        fd, mark = self._open_verified(cid)
        os.close(fd)
        with self._lock:
            mark.verified[:] = b"\x01" * len(mark.digests)
            mark.missing = 0
        return True

    def quarantine(self, cid: str) -> None:
        """Move a corrupt blob out of the way (so ``has`` is False and it can be re-fetched)."""
        cid = canonical_cid(cid)
        path = self._path(cid)
        try:
            stored = path.stat().st_size
            os.replace(path, self._corrupt / cid)
        except FileNotFoundError:
            return
        owner = self._read_owner(cid)
        with self._lock:
            self._marks.pop(cid, None)
            self.corruptions += 1
            self._used -= stored
            self._count -= 1
            if owner is not None and owner in self._owned:
                self._owned[owner] -= stored
        _fsync_dir(path.parent)

    # -- pins, listing, deletion -----------------------------------------------

    def pin(self, cid: str) -> None:
        cid = canonical_cid(cid)
        if not self._path(cid).exists():
            raise NotFound(f"cannot pin {cid}: not stored on this node")
        marker = self._pin_path(cid)
        if marker.exists():
            return
        marker.touch()
        _fsync_dir(marker.parent)

    def unpin(self, cid: str) -> None:
        marker = self._pin_path(canonical_cid(cid))
        if marker.exists():
            marker.unlink()
            _fsync_dir(marker.parent)

    def is_pinned(self, cid: str) -> bool:
        return self._pin_path(canonical_cid(cid)).exists()

    def stat(self, cid: str) -> BlobStat:
        cid = canonical_cid(cid)
        path = self._path(cid)
        try:
            stored = path.stat().st_size
        except FileNotFoundError:
            raise NotFound(f"blob {cid} is not stored on this node") from None
        with open(path, "rb") as f:
            f.seek(stored - _TAIL.size)
            tail = f.read(_TAIL.size)
        size = _TAIL.unpack(tail)[1] if len(tail) == _TAIL.size else -1
        return BlobStat(cid, size, stored, self._pin_path(cid).exists())

    def list(self) -> list[BlobStat]:
        """Every stored blob (for repair and listing), sorted by CID."""
        out = []
        for path in sorted(self._blobs.glob("*/*"), key=lambda p: p.name):
            if path.suffix in _MARKERS:
                continue
            try:
                out.append(self.stat(path.name))
            except (NotFound, StorageError):
                continue
        return out

    def cids(self) -> set[str]:
        """The CIDs of every stored blob, from the directory names alone (no file is opened)."""
        out = set()
        for shard in os.scandir(self._blobs):
            if not shard.is_dir():
                continue
            for entry in os.scandir(shard.path):
                name = entry.name
                if not name.endswith(_MARKERS):
                    out.add(name)
        return out

    def delete(self, cid: str, *, force: bool = False) -> bool:
        """Delete a blob; pinned blobs only with ``force``. True if something was deleted."""
        cid = canonical_cid(cid)
        if not force and self._pin_path(cid).exists():
            raise StorageError(f"blob {cid} is pinned; unpin it first")
        path = self._path(cid)
        owner = self._read_owner(cid)
        try:
            stored = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return False
        with self._lock:
            self._marks.pop(cid, None)
            self._used -= stored
            self._count -= 1
            if owner is not None and owner in self._owned:
                self._owned[owner] -= stored
        self._pin_path(cid).unlink(missing_ok=True)
        self._owner_path(cid).unlink(missing_ok=True)
        _fsync_dir(path.parent)
        return True

    def gc(self) -> int:
        """Delete every unpinned blob; returns how many."""
        return sum(self.delete(b.cid) for b in self.list() if not b.pinned)

    def expire_partial(self, max_age: float, keep: set[Path] | frozenset[Path] = frozenset()) -> int:
        """Delete the temporary files of puts (``tmp/``) not in ``keep`` and not modified
        for ``max_age`` seconds (wall clock); returns how many."""
        now = time.time()
        expired = 0
        for path in self._tmp.iterdir():
            if path in keep:
                continue
            try:
                if now - path.stat().st_mtime >= max_age:
                    path.unlink()
                    expired += 1
            except FileNotFoundError:
                continue
        return expired

    def partial_files(self) -> list[Path]:
        """The temporary files of puts in progress (or abandoned)."""
        return sorted(self._tmp.iterdir())

    def statistics(self) -> StoreStat:
        with self._lock:
            return StoreStat(self._count, self._used, self._reserved, self.quota_bytes, self.max_blob)

    def destroy(self) -> None:
        """Remove everything (tests and benchmarks)."""
        shutil.rmtree(self.root, ignore_errors=True)


class PutSession:
    """One streaming put: ``write`` pieces, then ``commit`` (or ``abort``).

    A context manager: leaving the block without a commit aborts.
    """

    def __init__(self, store: BlobStore, claimed: str | None, size: int | None):
        self._store = store
        self.claimed = claimed
        self.declared = size
        self._builder = cidmod.CidBuilder(record_leaves=True)
        self._written = 0
        self._reserved = 0
        self._done = False
        if size is not None:
            store._reserve(size + trailer_size(size))
            self._reserved = size + trailer_size(size)
        self._tmp = store._tmp / f"put-{os.urandom(12).hex()}"
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    @property
    def written(self) -> int:
        return self._written

    @property
    def path(self) -> Path:
        """The temporary file the bytes go to until the commit."""
        return self._tmp

    def __enter__(self) -> PutSession:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            self.abort()

    def _fail(self, exc: StorageError) -> StorageError:
        self.abort()
        return exc

    def write(self, data: bytes | memoryview) -> None:
        if self._done:
            raise StorageError("put session already finished")
        n = len(data)
        total = self._written + n
        if total > self._store.max_blob:
            raise self._fail(
                BlobTooLarge(f"blob exceeds this node's maximum of {self._store.max_blob} bytes")
            )
        if self.declared is not None and total > self.declared:
            raise self._fail(BadRequest(f"more bytes than the declared size {self.declared}"))
        need = total + trailer_size(total) - self._reserved
        if need > 0:
            try:
                self._store._reserve(need)
            except QuotaExceeded as exc:
                raise self._fail(exc) from None
            self._reserved += need
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self.abort()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(f"disk full while storing a blob: {exc.strerror}") from None
            raise
        self._builder.update(data)
        self._written = total

    def commit(self, *, pin: bool = True, owner: str | None = None) -> str:
        """Make the blob durable and return its CID (see the module docstring)."""
        if self._done:
            raise StorageError("put session already finished")
        if self.declared is not None and self._written != self.declared:
            raise self._fail(BadRequest(f"got {self._written} bytes, {self.declared} declared"))
        cid = str(self._builder.finish_cid())
        if self.claimed is not None and cid != self.claimed:
            raise self._fail(CidMismatch(f"data hashes to {cid}, not the claimed {self.claimed}"))
        digests = self._builder.leaf_digests or []
        trailer = b"".join(digests) + _TAIL.pack(len(digests), self._written, MAGIC)
        try:
            view = memoryview(trailer)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as exc:
            self.abort()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(f"disk full while storing a blob: {exc.strerror}") from None
            raise
        os.close(self._fd)
        self._fd = -1
        stored = self._written + len(trailer)
        try:
            self._store._install(self._tmp, cid, stored, pin, owner, digests)
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        finally:
            self._done = True
            self._store._release(self._reserved)
            self._reserved = 0
        return cid

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._tmp.unlink(missing_ok=True)
        self._store._release(self._reserved)
        self._reserved = 0
