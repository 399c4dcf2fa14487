"""Content identifiers: the CIDs Kubo gives, computed, parsed and validated.

``compute(data)`` returns the CIDv1 that ``ipfs add --cid-version=1
--raw-leaves`` prints for the same bytes with Kubo's default settings:

* the file is cut into 262,144-byte chunks (the last one shorter);
* a file of at most one chunk is a single raw block: its CID is
  ``bafkrei...`` = CIDv1(raw, sha2-256(bytes)), the empty file included;
* a longer file is a balanced UnixFS DAG: raw leaves, grouped left to right
  under dag-pb File nodes of at most 174 links, those grouped again, until one
  root remains (``bafybei...``). All leaves sit at the same depth; the last
  node of every level may be partly filled (even with a single child).

:class:`CidBuilder` does the same incrementally (``update`` / ``finish``) in
bounded memory: one chunk buffer plus at most 174 links per tree level. The
chunk size, fan-out, leaf kind and CID version are parameters so the same code
reproduces other real fixtures too (CIDv0 with UnixFS leaves, small chunks).

:func:`parse` turns a CID string (CIDv0 ``Qm...`` or CIDv1 in any multibase)
into a :class:`Cid` or raises :class:`~core.errors.DecodeError` (:func:`is_cid`
is its bool twin). :func:`is_valid` tells whether bytes hash to a CID and
:func:`verify` raises :class:`~core.errors.CidMismatchError` when they do not.
:func:`choose_replicas` is rendezvous (highest random weight) hashing of a CID
over a set of node ids, used to place replicas.

Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from multiformats import CID as _MfCID

from ._unixfs import file_branch_node, file_leaf_node, varint
from .errors import CidMismatchError, DecodeError

__all__ = [
    "CHUNK_SIZE",
    "MAX_LINKS",
    "RAW",
    "DAG_PB",
    "SHA2_256",
    "Cid",
    "from_binary",
    "CidBuilder",
    "compute",
    "parse",
    "is_cid",
    "is_valid",
    "verify",
    "builder_for",
    "cid_from_leaves",
    "leaf_count",
    "choose_replicas",
]

CHUNK_SIZE = 262_144
"""Kubo's default chunker: ``size-262144``."""

MAX_LINKS = 174
"""Kubo's default maximum number of links of a balanced-layout file node."""

RAW = 0x55
DAG_PB = 0x70
SHA2_256 = 0x12

_CODEC_NAMES = {RAW: "raw", DAG_PB: "dag-pb"}
_MAX_CID_TEXT = 512


@dataclass(frozen=True, slots=True)
class Cid:
    """A parsed content identifier.

    ``codec`` is the multicodec code (``RAW`` or ``DAG_PB`` for the file CIDs
    used here; other codecs parse too), ``hash_code`` the multihash function
    code and ``digest`` the raw hash digest. Two ``Cid`` values are equal when
    they name the same content with the same version, whatever multibase the
    text used.
    """

    version: int
    codec: int
    hash_code: int
    digest: bytes

    @property
    def codec_name(self) -> str:
        return _CODEC_NAMES.get(self.codec, hex(self.codec))

    @property
    def multihash(self) -> bytes:
        return varint(self.hash_code) + varint(len(self.digest)) + self.digest

    def to_bytes(self) -> bytes:
        """The binary CID (what dag-pb links carry)."""
        if self.version == 0:
            return self.multihash
        return varint(1) + varint(self.codec) + self.multihash

    def __str__(self) -> str:
        """Canonical text: base58btc for CIDv0, lowercase base32 (``b...``) for CIDv1
        (the texts of the latest :data:`_KEPT` CIDs are kept)."""
        try:
            return _text_kept(self)
        except TypeError:  # a digest that is not hashable (a bytearray): not kept
            return _text(self)

    def to_v1(self) -> Cid:
        return Cid(1, self.codec, self.hash_code, self.digest)


_KEPT = 2048
"""CID texts whose parse (and parsed CIDs whose text) are kept, least recently used
dropped first: a read names the same CID in every request and reply of its pieces,
and on every node it reaches; parsing one costs ~10 us, a lookup well under 1 us.
About 0.5 KB each (1 MB in all); a ``Cid`` is immutable, so sharing one is safe."""


def _text(cid: Cid) -> str:
    if cid.version == 0:
        return str(_MfCID("base58btc", 0, "dag-pb", cid.multihash))
    return _b32(cid.to_bytes())


_text_kept = functools.lru_cache(maxsize=_KEPT)(_text)


def parse(text: str) -> Cid:
    """Parse and validate a CID string; raise ``DecodeError`` on anything else.

    Accepts CIDv0 (base58btc ``Qm...``, dag-pb, sha2-256) and CIDv1 in any
    multibase the multiformats library knows. Rejects non-strings, surrounding
    whitespace, unknown multibases, codecs or hash functions, and digests whose
    length does not match the hash function (sha2-256 must be 32 bytes).
    The results for the latest :data:`_KEPT` strings are kept (a refusal is not).
    """
    if type(text) is str:
        return _parse_kept(text)
    return _parse(text)


def _parse(text: str) -> Cid:
    if not isinstance(text, str):
        raise DecodeError(f"a CID must be a string, got {type(text).__name__}")
    if not text:
        raise DecodeError("empty CID string")
    if len(text) > _MAX_CID_TEXT:
        raise DecodeError(f"CID string longer than {_MAX_CID_TEXT} characters")
    if text != text.strip():
        raise DecodeError("CID string has surrounding whitespace")
    fast = _parse_base32_v1(text)
    if fast is not None:
        return fast
    try:
        mf = _MfCID.decode(text)
        version = int(mf.version)
        codec = int(mf.codec.code)
        hash_code = int(mf.hashfun.code)
        digest = bytes(mf.raw_digest)
    except Exception as exc:  # the library raises a dozen unrelated types
        raise DecodeError(f"not a valid CID: {text[:80]!r} ({exc})") from None
    if version not in (0, 1):
        raise DecodeError(f"unsupported CID version {version}")
    if version == 0 and (codec != DAG_PB or hash_code != SHA2_256):
        raise DecodeError("CIDv0 must be dag-pb with a sha2-256 multihash")
    if hash_code == SHA2_256 and len(digest) != 32:
        raise DecodeError(f"sha2-256 digest must be 32 bytes, got {len(digest)}")
    if not digest:
        raise DecodeError("CID has an empty digest")
    return Cid(version, codec, hash_code, digest)


_parse_kept = functools.lru_cache(maxsize=_KEPT)(_parse)

_B32_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")


def _b32(raw: bytes) -> str:
    return "b" + base64.b32encode(raw).decode("ascii").lower().rstrip("=")


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(raw) and shift < 63:
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and shift:  # non-minimal encoding
                return -1, pos
            return value, pos
        shift += 7
    return -1, pos


def _parse_base32_v1(text: str) -> Cid | None:
    """Fast path for the canonical form (``b`` + lowercase base32, sha2-256, raw or
    dag-pb); None sends anything else to the general multiformats parser."""
    if len(text) < 2 or text[0] != "b" or not _B32_ALPHABET.issuperset(text[1:]):
        return None
    body = text[1:].upper()
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except ValueError:
        return None
    if _b32(raw) != text:  # non-canonical padding bits: let the general parser judge
        return None
    version, pos = _read_varint(raw, 0)
    codec, pos = _read_varint(raw, pos)
    hash_code, pos = _read_varint(raw, pos)
    length, pos = _read_varint(raw, pos)
    if version != 1 or codec not in (RAW, DAG_PB) or hash_code != SHA2_256 or length != 32:
        return None
    if len(raw) - pos != 32:
        return None
    return Cid(1, codec, SHA2_256, raw[pos:])


def from_binary(raw: object) -> Cid:
    """Parse a binary CID (:meth:`Cid.to_bytes`): a CIDv1 of a raw or dag-pb block with a
    sha2-256 multihash (36 bytes), or a CIDv0 (the bare 34-byte sha2-256 multihash);
    DecodeError for anything else (what a node or client sends in place of the text form)."""
    if type(raw) is not bytes:
        raise DecodeError(f"a binary CID must be bytes, got {type(raw).__name__}")
    if len(raw) == 34 and raw[:2] == b"\x12\x20":
        return Cid(0, DAG_PB, SHA2_256, raw[2:])
    if len(raw) == 36 and raw[0] == 1 and raw[1] in (RAW, DAG_PB) and raw[2:4] == b"\x12\x20":
        return Cid(1, raw[1], SHA2_256, raw[4:])
    raise DecodeError("not a binary CIDv1 (raw or dag-pb, sha2-256) or CIDv0")


def is_cid(text: object) -> bool:
    """True when ``text`` parses as a CID (the bool twin of :func:`parse`)."""
    try:
        parse(text)  # type: ignore[arg-type]
    except DecodeError:
        return False
    return True


def _cid_bytes(version: int, codec: int, digest: bytes) -> bytes:
    mh = b"\x12\x20" + digest
    if version == 0:
        return mh
    return b"\x01" + varint(codec) + mh


class CidBuilder:
    """Incremental CID of a byte stream, in bounded memory.

    ``update(data)`` any number of times, then ``finish()`` once; it returns
    the CID string (canonical text). Defaults give Kubo's
    ``--cid-version=1 --raw-leaves``. ``raw_leaves=False`` wraps every chunk
    in a UnixFS leaf node (Kubo's CIDv0 default); ``version=0`` makes dag-pb
    nodes CIDv0 (raw leaves stay CIDv1, the only form a raw block has).

    Memory held: a buffer of at most one chunk and, per tree level, at most
    ``max_links`` child entries of ~50 bytes.
    """

    __slots__ = (
        "_chunk_size",
        "_max_links",
        "_raw_leaves",
        "_version",
        "_buffer",
        "_levels",
        "_size",
        "_finished",
        "leaves",
        "nodes",
        "leaf_digests",
    )

    def __init__(
        self,
        *,
        chunk_size: int = CHUNK_SIZE,
        max_links: int = MAX_LINKS,
        raw_leaves: bool = True,
        version: int = 1,
        record_leaves: bool = False,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        if max_links < 2:
            raise ValueError("max_links must be at least 2")
        if version not in (0, 1):
            raise ValueError("CID version must be 0 or 1")
        self._chunk_size = chunk_size
        self._max_links = max_links
        self._raw_leaves = raw_leaves
        self._version = version
        self._buffer = bytearray()
        # _levels[k]: entries (cid bytes, tsize, filesize) of nodes at height k
        # (0 = leaves) not yet grouped under a parent.
        self._levels: list[list[tuple[bytes, int, int]]] = [[]]
        self._size = 0
        self._finished = False
        self.leaves = 0
        """Number of leaf blocks produced so far."""
        self.nodes = 0
        """Number of internal (dag-pb branch) nodes produced so far."""
        self.leaf_digests: list[bytes] | None = [] if record_leaves else None
        """With ``record_leaves``: the sha2-256 digest of every leaf block, in order
        (32 bytes per chunk; enough to rebuild the root, see :func:`cid_from_leaves`)."""

    @property
    def size(self) -> int:
        """Bytes fed so far."""
        return self._size

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if self._finished:
            raise ValueError("CidBuilder.update after finish")
        view = memoryview(data).cast("B")
        self._size += len(view)
        cs = self._chunk_size
        if self._buffer:
            take = min(cs - len(self._buffer), len(view))
            self._buffer += view[:take]
            view = view[take:]
            if len(self._buffer) < cs:
                return
            self._leaf(bytes(self._buffer))
            self._buffer.clear()
        # whole chunks straight from the caller's buffer, no copy
        while len(view) >= cs:
            self._leaf(view[:cs])
            view = view[cs:]
        self._buffer += view

    def _leaf(self, chunk: bytes | memoryview) -> None:
        self.leaves += 1
        if self._raw_leaves:
            digest = hashlib.sha256(chunk).digest()
            entry = (_cid_bytes(1, RAW, digest), len(chunk), len(chunk))
        else:
            block = file_leaf_node(bytes(chunk))
            digest = hashlib.sha256(block).digest()
            entry = (_cid_bytes(self._version, DAG_PB, digest), len(block), len(chunk))
        if self.leaf_digests is not None:
            self.leaf_digests.append(digest)
        self._push(0, entry)

    def _push(self, level: int, entry: tuple[bytes, int, int]) -> None:
        if len(self._levels[level]) == self._max_links:
            self._flush(level)
        self._levels[level].append(entry)

    def _flush(self, level: int) -> None:
        """Group the entries of ``level`` under a new node one level up."""
        entries = self._levels[level]
        block = file_branch_node(entries)
        tsize = len(block) + sum(t for _, t, _ in entries)
        filesize = sum(f for _, _, f in entries)
        digest = hashlib.sha256(block).digest()
        self.nodes += 1
        self._levels[level] = []
        if level + 1 == len(self._levels):
            self._levels.append([])
        self._push(level + 1, (_cid_bytes(self._version, DAG_PB, digest), tsize, filesize))

    def finish_cid(self) -> Cid:
        """Like :meth:`finish` but returns the parsed form."""
        if self._finished:
            raise ValueError("CidBuilder.finish called twice")
        self._finished = True
        if self._buffer or self.leaves == 0:
            self._leaf(bytes(self._buffer))
            self._buffer.clear()
        level = 0
        while True:
            entries = self._levels[level]
            higher = any(self._levels[level + 1 :])
            if not higher and len(entries) == 1:
                root = entries[0][0]
                break
            if entries:
                self._flush(level)
            level += 1
        if root[0] == 0x12:  # CIDv0: a bare multihash
            return Cid(0, DAG_PB, SHA2_256, root[2:])
        codec = root[1]
        return Cid(1, codec, SHA2_256, root[-32:])

    def finish(self) -> str:
        """End the stream and return the root CID text."""
        return str(self.finish_cid())


def leaf_count(size: int, chunk_size: int = CHUNK_SIZE) -> int:
    """Number of leaves of a ``size``-byte file (the empty file has one)."""
    return max(1, -(-size // chunk_size))


def cid_from_leaves(
    digests: list[bytes], size: int, *, chunk_size: int = CHUNK_SIZE, max_links: int = MAX_LINKS
) -> Cid:
    """The root CID of a ``size``-byte file whose raw leaves have these sha2-256 digests.

    Rebuilds the balanced DAG from the leaf hashes alone (no data), so a store
    can check a list of per-chunk digests against a CID cheaply, then verify
    each chunk it serves against its digest. Raises ``DecodeError`` when the
    number or size of the digests does not fit ``size``.
    """
    if size < 0:
        raise DecodeError("negative file size")
    if len(digests) != leaf_count(size, chunk_size):
        raise DecodeError(f"a {size}-byte file has {leaf_count(size, chunk_size)} leaves, got {len(digests)} digests")
    builder = CidBuilder(chunk_size=chunk_size, max_links=max_links)
    remaining = size
    for digest in digests:
        if len(digest) != 32:
            raise DecodeError("leaf digest must be 32 bytes")
        n = min(chunk_size, remaining)
        remaining -= n
        builder.leaves += 1
        builder._push(0, (_cid_bytes(1, RAW, bytes(digest)), n, n))
    builder._size = size
    return builder.finish_cid()


def compute(data: bytes | bytearray | memoryview, **options: object) -> str:
    """The CIDv1 Kubo gives ``data`` with ``ipfs add --cid-version=1 --raw-leaves``.

    ``options`` are passed to :class:`CidBuilder` (chunk_size, max_links,
    raw_leaves, version) for non-default layouts.
    """
    builder = CidBuilder(**options)  # type: ignore[arg-type]
    builder.update(data)
    return builder.finish()


def builder_for(cid: Cid | str) -> CidBuilder:
    """A builder with the settings that produce CIDs like ``cid``.

    CIDv1 means Kubo's ``--cid-version=1`` (raw leaves); CIDv0 means Kubo's
    legacy default (UnixFS leaves). Raises ``DecodeError`` for CIDs that no
    supported layout produces (other hash functions or codecs).
    """
    if isinstance(cid, str):
        cid = parse(cid)
    if cid.hash_code != SHA2_256 or cid.codec not in (RAW, DAG_PB):
        raise DecodeError(f"not a UnixFS file CID with sha2-256: {cid}")
    if cid.version == 0:
        return CidBuilder(raw_leaves=False, version=0)
    return CidBuilder()


def is_valid(cid: Cid | str, data: bytes | bytearray | memoryview) -> bool:
    """True when ``data`` hashes to ``cid`` (under the layout ``cid``'s version implies)."""
    if isinstance(cid, str):
        cid = parse(cid)
    builder = builder_for(cid)
    builder.update(data)
    return builder.finish_cid() == cid


def verify(cid: Cid | str, data: bytes | bytearray | memoryview) -> None:
    """Raise CidMismatchError unless ``data`` hashes to ``cid`` (see :func:`is_valid`)."""
    if not is_valid(cid, data):
        raise CidMismatchError(f"data does not hash to {cid}")


def _weight(node_id: str, key: bytes) -> bytes:
    return hashlib.sha256(b"emrshare-rendezvous-v1\x00" + node_id.encode() + b"\x00" + key).digest()


def choose_replicas(cid: Cid | str, node_ids: Iterable[str], r: int) -> list[str]:
    """The ``r`` nodes that should hold ``cid``, best first (rendezvous hashing).

    Each node's weight is sha256(tag, node id, binary CIDv1); nodes are ranked
    by weight, highest first (ties, which need a hash collision, by id).
    Adding or removing one node moves only the blobs whose top ``r`` included
    it. With fewer than ``r`` nodes, all of them are returned, ranked.
    """
    if r < 0:
        raise ValueError("r must be non-negative")
    if isinstance(cid, str):
        cid = parse(cid)
    key = cid.to_v1().to_bytes()
    ids = sorted(set(node_ids))
    ranked = sorted(ids, key=lambda n: (_weight(n, key), n), reverse=True)
    return ranked[:r]
