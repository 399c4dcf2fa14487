"""The orderer's kinds (``orderer.*``) and its ``blocks`` topic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Self

from core.errors import DecodeError
from core.ledger import MAX_BLOCK_BYTES
from core.tx import MAX_TX_SIZE

from core.protocol._schema import INT64_MAX, UINT64_MAX, Bytes, Codec, Int, ListOf, Message, wire

__all__ = [
    "MAX_TXS_PER_SUBMIT", "MAX_BLOCKS_PER_REPLY", "HASH_SIZE",
    "OrdererSubmit", "OrdererSubmitReply", "OrdererBlocks", "OrdererBlocksReply", "OrdererHead",
    "OrdererHeadReply", "BlockEvent", "BlockRange", "BlockList",
]

MAX_TXS_PER_SUBMIT = 1024
"""Transactions in one ``orderer.submit`` or ``peer.submit``."""
MAX_BLOCKS_PER_REPLY = 256
"""Blocks in one ``orderer.blocks`` or ``peer.blocks`` reply (a larger ``limit`` is cut to it)."""
HASH_SIZE = 32

_TX = Bytes(max_size=MAX_TX_SIZE)
_TX_ID = Bytes(HASH_SIZE)
_BLOCK = Bytes(max_size=MAX_BLOCK_BYTES)
_HEIGHT = Int(0, INT64_MAX)
_LIMIT = Int(1, UINT64_MAX)


def _one_or_list(obj: Any, what: str, one: str, many: str, item: Codec) -> tuple[tuple, bool]:
    """``{one: x}`` or ``{many: [..]}`` (1..1024 items) from the map ``obj``: (the items,
    whether it was the list form)."""
    if many in obj:
        return ListOf(item, min_len=1, max_len=MAX_TXS_PER_SUBMIT).decode(obj[many], f"{what}: {many!r}"), True
    if one not in obj:
        raise DecodeError(f"{what}: field {one!r} (or {many!r}) is missing")
    return (item.decode(obj[one], f"{what}: {one!r}"),), False


class _OneOrList(Message):
    """Base of the bodies with two forms: one item, ``{<one>: x}``, or a list of them,
    ``{<many>: [..]}`` (1..1024 items; then ``batch`` is True). A subclass names the
    two keys and the item's codec in ``forms`` and declares its fields: first the
    items (named like the list key), and a ``batch`` field."""

    __slots__ = ()

    forms: ClassVar[tuple[str, str, Codec]]  # (one, many, item)
    batch: bool

    def to_wire(self) -> dict[str, Any]:
        one, many, _ = self.forms
        items = getattr(self, many)
        return {many: list(items)} if self.batch else {one: items[0]}

    @classmethod
    def from_wire(cls, obj: Any, *, what: str | None = None) -> Self:
        return cls(*_one_or_list(*cls._body(obj, what), *cls.forms))


@dataclass(frozen=True, slots=True)
class OrdererSubmit(_OneOrList, kind="orderer.submit"):
    """``{tx}`` (one encoded core.tx.Transaction) or ``{txs: [..]}`` (1..1024, ``batch``)."""

    forms = ("tx", "txs", _TX)
    txs: tuple[bytes, ...]
    batch: bool = False


@dataclass(frozen=True, slots=True)
class OrdererSubmitReply(_OneOrList, kind="orderer.submit"):
    """``{tx_id}``, or ``{tx_ids: [..]}`` for the list form: queued, not yet committed."""

    forms = ("tx_id", "tx_ids", _TX_ID)
    tx_ids: tuple[bytes, ...]
    batch: bool = False


@dataclass(frozen=True, slots=True)
class BlockRange(Message):
    """Base of ``orderer.blocks`` and ``peer.blocks``: blocks ``start``, ``start + 1``, ...,
    at most ``limit`` (cut to 256) and a few MiB."""

    start: int = wire(_HEIGHT, name="from")
    limit: int = wire(_LIMIT)


@dataclass(frozen=True, slots=True)
class OrdererBlocks(BlockRange, kind="orderer.blocks"):
    """``{from, limit}``; ``limit`` may be absent (256)."""

    limit: int = wire(_LIMIT, default=MAX_BLOCKS_PER_REPLY)


@dataclass(frozen=True, slots=True)
class BlockList(Message):
    """Base of the ``orderer.blocks`` and ``peer.blocks`` replies."""

    blocks: tuple[bytes, ...] = wire(ListOf(_BLOCK, max_len=MAX_BLOCKS_PER_REPLY))


@dataclass(frozen=True, slots=True)
class OrdererBlocksReply(BlockList, kind="orderer.blocks"):
    """``{blocks: [bin]}``: encoded core.ledger.Block, heights from ``from`` on."""


@dataclass(frozen=True, slots=True)
class OrdererHead(Message, kind="orderer.head"):
    pass


@dataclass(frozen=True, slots=True)
class OrdererHeadReply(Message, kind="orderer.head"):
    height: int = wire(_HEIGHT)
    hash: bytes = wire(Bytes(HASH_SIZE))


@dataclass(frozen=True, slots=True)
class BlockEvent(Message, kind="blocks"):
    """Topic ``blocks`` (published by the orderer after it persisted the block)."""

    block: bytes = wire(_BLOCK)
