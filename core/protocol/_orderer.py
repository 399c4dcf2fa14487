"""The orderer's kinds (``orderer.*``) and its ``blocks`` topic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

from core.errors import DecodeError
from core.ledger import MAX_BLOCK_BYTES
from core.tx import MAX_TX_SIZE

from core.protocol._schema import INT64_MAX, UINT64_MAX, Bytes, Int, ListOf, Message, wire

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


def _txs_from_wire(cls: type, obj: Any, what: str) -> tuple[tuple[bytes, ...], bool]:
    """``{tx}`` or ``{txs: [..]}``: (the transactions, whether it was the list form)."""
    if not isinstance(obj, dict):
        raise DecodeError(f"{what}: the body must be a map")
    if "txs" in obj:
        return ListOf(_TX, min_len=1, max_len=MAX_TXS_PER_SUBMIT).decode(obj["txs"], f"{what}: 'txs'"), True
    if "tx" not in obj:
        raise DecodeError(f"{what}: field 'tx' (or 'txs') is missing")
    return (_TX.decode(obj["tx"], f"{what}: 'tx'"),), False


@dataclass(frozen=True, slots=True)
class OrdererSubmit(Message):
    """``{tx}`` (one encoded core.tx.Transaction) or ``{txs: [..]}`` (1..1024, ``batch``)."""

    kind = "orderer.submit"
    txs: tuple[bytes, ...]
    batch: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"txs": list(self.txs)} if self.batch else {"tx": self.txs[0]}

    @classmethod
    def from_wire(cls, obj: Any, *, what: str | None = None) -> Self:
        txs, batch = _txs_from_wire(cls, obj, what or cls.kind)
        return cls(txs, batch)


@dataclass(frozen=True, slots=True)
class OrdererSubmitReply(Message):
    """``{tx_id}``, or ``{tx_ids: [..]}`` for the list form: queued, not yet committed."""

    kind = "orderer.submit"
    tx_ids: tuple[bytes, ...]
    batch: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"tx_ids": list(self.tx_ids)} if self.batch else {"tx_id": self.tx_ids[0]}

    @classmethod
    def from_wire(cls, obj: Any, *, what: str | None = None) -> Self:
        what = what or cls.kind
        if not isinstance(obj, dict):
            raise DecodeError(f"{what}: the body must be a map")
        if "tx_ids" in obj:
            ids = ListOf(_TX_ID, min_len=1, max_len=MAX_TXS_PER_SUBMIT).decode(obj["tx_ids"], f"{what}: 'tx_ids'")
            return cls(ids, True)
        if "tx_id" not in obj:
            raise DecodeError(f"{what}: field 'tx_id' (or 'tx_ids') is missing")
        return cls((_TX_ID.decode(obj["tx_id"], f"{what}: 'tx_id'"),), False)


@dataclass(frozen=True, slots=True)
class BlockRange(Message):
    """Base of ``orderer.blocks`` and ``peer.blocks``: blocks ``start``, ``start + 1``, ...,
    at most ``limit`` (cut to 256) and a few MiB."""

    start: int = wire(Int(0, INT64_MAX), name="from")
    limit: int = wire(Int(1, UINT64_MAX))


@dataclass(frozen=True, slots=True)
class OrdererBlocks(BlockRange):
    """``{from, limit}``; ``limit`` may be absent (256)."""

    kind = "orderer.blocks"
    limit: int = wire(Int(1, UINT64_MAX), default=MAX_BLOCKS_PER_REPLY)


@dataclass(frozen=True, slots=True)
class BlockList(Message):
    """Base of the ``orderer.blocks`` and ``peer.blocks`` replies."""

    blocks: tuple[bytes, ...] = wire(ListOf(_BLOCK, max_len=MAX_BLOCKS_PER_REPLY))


@dataclass(frozen=True, slots=True)
class OrdererBlocksReply(BlockList):
    """``{blocks: [bin]}``: encoded core.ledger.Block, heights from ``from`` on."""

    kind = "orderer.blocks"


@dataclass(frozen=True, slots=True)
class OrdererHead(Message):
    kind = "orderer.head"


@dataclass(frozen=True, slots=True)
class OrdererHeadReply(Message):
    kind = "orderer.head"
    height: int = wire(Int(0, INT64_MAX))
    hash: bytes = wire(Bytes(HASH_SIZE))


@dataclass(frozen=True, slots=True)
class BlockEvent(Message):
    """Topic ``blocks`` (published by the orderer after it persisted the block)."""

    kind = "blocks"
    block: bytes = wire(_BLOCK)
