"""The storage node's kinds (``storage.*``).

A put of at most one message is ``storage.put``; a larger one is a session:
``storage.put.begin``, then ``storage.put.chunk`` in order (``offset`` = bytes
written so far), then ``storage.put.commit`` (or ``storage.put.abort``). Every
``storage.get`` re-hashes the chunks it returns; ``leaves`` asks for the
blob's chunk digests in the same round trip.

A put's reply carries the node's **receipt**: its ECDSA signature (tag
:data:`RECEIPT_TAG`) over :func:`receipt_message` ``(node, cid, size, putter)``,
"this node durably holds this blob, put by this agent": evidence the putter can
show a third party later (the channel that carried the reply authenticates it
only to the putter). :func:`make_receipt` and :func:`verify_receipt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

from core import canonical, ecdsa
from core import cid as cidmod
from core.errors import DecodeError
from core.protocol._peer import CID, MAX_CID_LENGTH
from core.protocol._schema import (
    INT64_MAX, Bool, Bytes, Codec, Id, Int, ListOf, Message, Optional, Row, Text, wire,
)

__all__ = [
    "MAX_MESSAGE_DATA", "MAX_LIST_LIMIT", "SESSION_SIZE", "DIGEST_SIZE",
    "StoragePut", "StoragePutReply", "StoragePutBegin", "StoragePutBeginReply", "StoragePutChunk",
    "StoragePutChunkReply", "StoragePutCommit", "StoragePutCommitReply", "StoragePutAbort", "StoragePutAbortReply",
    "StorageGet", "StorageGetReply", "StorageLeaves", "StorageLeavesReply", "StorageHas", "StorageHasReply",
    "StoragePin", "StoragePinReply", "StorageUnpin", "StorageUnpinReply", "StorageStat", "BlobStatistics",
    "NodeStatistics", "StorageStatReply", "StorageList", "StorageListReply",
    "RECEIPT_TAG", "receipt_message", "make_receipt", "verify_receipt",
]

RECEIPT_TAG = "emrshare/v1/storage-receipt"


def receipt_message(node: str, cid: str, size: int, putter: str) -> bytes:
    """What a storage node signs when it acknowledges a put."""
    return canonical.pack([node, cid, size, putter])


def make_receipt(private_key: bytes, node: str, cid: str, size: int, putter: str) -> bytes:
    return ecdsa.sign(private_key, RECEIPT_TAG, receipt_message(node, cid, size, putter))


def verify_receipt(public_key: bytes, node: str, cid: str, size: int, putter: str, receipt: bytes) -> bool:
    """Whether ``receipt`` is ``node``'s acknowledgement of this put (never raises)."""
    return ecdsa.is_valid(public_key, RECEIPT_TAG, receipt_message(node, cid, size, putter), receipt)

MAX_MESSAGE_DATA = 8 * 1024 * 1024
"""Largest data field of one message (the bus frame limit is 16 MiB)."""
MAX_LIST_LIMIT = 10_000
SESSION_SIZE = 16
DIGEST_SIZE = 32

_SIZE = Int(0, INT64_MAX)
_DATA = Bytes(max_size=MAX_MESSAGE_DATA, mutable=True)  # (a read piece may come as the frame itself)
_SESSION = Bytes(SESSION_SIZE)
_DIGESTS = Bytes(max_size=MAX_MESSAGE_DATA, multiple=DIGEST_SIZE)


# -- the field groups several kinds share ------------------------------------------


@dataclass(frozen=True, slots=True)
class _OneBlob(Message):
    """Base of the bodies that name one stored blob: ``{cid, ...}``."""

    cid: str = wire(CID)


class _BinaryCid(Codec):
    """A CID sent in its binary form (:meth:`core.cid.Cid.to_bytes`: 36 bytes for a CIDv1,
    23 fewer than its text) and read back as its canonical text; a text CID (an older
    sender) is still read as :data:`CID` reads it."""

    __slots__ = ()

    def decode(self, value: Any, what: str) -> str:
        if type(value) is bytes:
            try:
                return str(cidmod.from_binary(value))
            except DecodeError as exc:
                raise DecodeError(f"{what}: {exc}") from None
        return CID.decode(value, what)

    def encode(self, value: Any) -> Any:
        try:
            return cidmod.parse(value).to_bytes()
        except DecodeError:  # (not a CID: sent as it is, refused by the receiver)
            return value


@dataclass(frozen=True, slots=True)
class _OneSession(Message):
    """Base of the bodies that name one put session: ``{session, ...}`` (the id the node
    gave in its ``storage.put.begin`` reply)."""

    session: bytes = wire(_SESSION)


@dataclass(frozen=True, slots=True)
class _Done(Message):
    """Base of the replies that only acknowledge: the empty map."""


_RECEIPT = Bytes(max_size=128)


@dataclass(frozen=True, slots=True)
class _Stored(_OneBlob):
    """Base of the replies that acknowledge a put, whole or in a session: ``{cid, receipt}``,
    sent once the blob is durable (fsync, rename, directory fsync) and its CID checked;
    ``receipt``: the node's signature (see the module docstring)."""

    receipt: bytes = wire(_RECEIPT)


# -- the kinds ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoragePut(Message, kind="storage.put"):
    """The whole blob; ``cid`` (optional) is what the client claims it hashes to."""

    data: bytes = wire(_DATA)
    cid: str | None = wire(Optional(CID), default=None)
    pin: bool = wire(Bool(), default=True)


@dataclass(frozen=True, slots=True)
class StoragePutReply(_Stored, kind="storage.put"):
    pass


@dataclass(frozen=True, slots=True)
class StoragePutBegin(Message, kind="storage.put.begin"):
    size: int = wire(_SIZE)
    cid: str | None = wire(Optional(CID), default=None)
    pin: bool = wire(Bool(), default=True)


@dataclass(frozen=True, slots=True)
class StoragePutBeginReply(_OneSession, kind="storage.put.begin"):
    pass


@dataclass(frozen=True, slots=True)
class StoragePutChunk(_OneSession, kind="storage.put.chunk"):
    offset: int = wire(_SIZE)
    data: bytes = wire(_DATA)


@dataclass(frozen=True, slots=True)
class StoragePutChunkReply(Message, kind="storage.put.chunk"):
    written: int = wire(_SIZE)


@dataclass(frozen=True, slots=True)
class StoragePutCommit(_OneSession, kind="storage.put.commit"):
    pass


@dataclass(frozen=True, slots=True)
class StoragePutCommitReply(_Stored, kind="storage.put.commit"):
    pass


@dataclass(frozen=True, slots=True)
class StoragePutAbort(_OneSession, kind="storage.put.abort"):
    pass


@dataclass(frozen=True, slots=True)
class StoragePutAbortReply(_Done, kind="storage.put.abort"):
    pass


@dataclass(frozen=True, slots=True)
class StorageGet(_OneBlob, kind="storage.get", row=True):
    """``[cid, offset, length, leaves]``; the CID in its binary form (``_BinaryCid``)."""

    cid: str = wire(_BinaryCid())
    offset: int = wire(_SIZE)
    length: int = wire(Int(0, MAX_MESSAGE_DATA))
    leaves: bool = wire(Bool(), default=False)


@dataclass(frozen=True, slots=True)
class StorageGetReply(Message, kind="storage.get", row=True):
    """``data`` from ``offset`` (shorter at the end of the blob), the blob's ``size``, and
    its chunk ``digests`` (32 bytes each, concatenated) when the request asked for ``leaves``."""

    data: bytes = wire(_DATA)
    size: int = wire(_SIZE)
    digests: bytes | None = wire(Optional(_DIGESTS), default=None, omit_none=True)


@dataclass(frozen=True, slots=True)
class StorageLeaves(_OneBlob, kind="storage.leaves"):
    pass


@dataclass(frozen=True, slots=True)
class StorageLeavesReply(Message, kind="storage.leaves"):
    size: int = wire(_SIZE)
    digests: bytes = wire(_DIGESTS)


@dataclass(frozen=True, slots=True)
class StorageHas(_OneBlob, kind="storage.has"):
    pass


@dataclass(frozen=True, slots=True)
class StorageHasReply(Message, kind="storage.has"):
    has: bool = wire(Bool())


@dataclass(frozen=True, slots=True)
class StoragePin(_OneBlob, kind="storage.pin"):
    pass


@dataclass(frozen=True, slots=True)
class StoragePinReply(_Done, kind="storage.pin"):
    pass


@dataclass(frozen=True, slots=True)
class StorageUnpin(_OneBlob, kind="storage.unpin"):
    pass


@dataclass(frozen=True, slots=True)
class StorageUnpinReply(_Done, kind="storage.unpin"):
    pass


@dataclass(frozen=True, slots=True)
class StorageStat(Message, kind="storage.stat"):
    """One blob's statistics, or (``cid`` nil) the node's."""

    cid: str | None = wire(Optional(CID), default=None)


@dataclass(frozen=True, slots=True)
class BlobStatistics(_OneBlob, kind="storage.stat"):
    size: int = wire(_SIZE)
    stored_bytes: int = wire(_SIZE)
    pinned: bool = wire(Bool())


@dataclass(frozen=True, slots=True)
class NodeStatistics(Message, kind="storage.stat"):
    node: str = wire(Id())
    blobs: int = wire(_SIZE)
    used_bytes: int = wire(_SIZE)
    reserved_bytes: int = wire(_SIZE)
    quota_bytes: int | None = wire(Optional(_SIZE))
    max_blob: int = wire(_SIZE)
    corruptions: int = wire(_SIZE)


@dataclass(frozen=True, slots=True)
class StorageStatReply(Message, kind="storage.stat"):
    """The body is the :class:`BlobStatistics` or :class:`NodeStatistics` map itself
    (the node's has a ``node`` field)."""

    stat: BlobStatistics | NodeStatistics

    def to_wire(self) -> dict[str, Any]:
        return self.stat.to_wire()

    @classmethod
    def from_wire(cls, obj: Any, *, what: str | None = None) -> Self:
        if isinstance(obj, dict) and "node" in obj:
            return cls(NodeStatistics.from_wire(obj, what=what))
        return cls(BlobStatistics.from_wire(obj, what=what))


@dataclass(frozen=True, slots=True)
class StorageList(Message, kind="storage.list"):
    """A page of the node's blobs in CID order, after ``after`` (nil: from the start)."""

    after: str | None = wire(Optional(Text(MAX_CID_LENGTH)))
    limit: int = wire(Int(1, MAX_LIST_LIMIT))


@dataclass(frozen=True, slots=True)
class StorageListReply(Message, kind="storage.list"):
    """``blobs``: ``[cid, size, pinned]`` rows; ``more``: another page follows."""

    blobs: tuple[tuple[str, int, bool], ...] = wire(ListOf(Row(CID, _SIZE, Bool()), max_len=MAX_LIST_LIMIT))
    more: bool = wire(Bool())
