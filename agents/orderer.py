"""The embedded ordering service: batches submitted transactions into signed blocks.

It does not validate transactions beyond their framing (order-then-validate:
every peer validates every transaction). It cuts a block when ``batch_size``
transactions are queued or ``batch_timeout`` seconds have passed since the
previous cut (so a transaction reaching an idle orderer is cut at once, and
under load blocks come at most every ``batch_timeout``), signs it, persists it
(SQLite, ``synchronous=FULL``) and only then publishes it on topic ``blocks``.
Its kinds (``orderer.submit``, ``orderer.blocks``, ``orderer.head``) are typed
by :mod:`core.protocol`; see docs/protocol.md, "Orderer". It classifies
senders from the genesis (peers) and the storage node ids it is given: only
peers submit, only peers and storage nodes read blocks, the head, and
subscribe to ``blocks`` (others: ``forbidden``, before any work).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import trio

import bus
from core import ecdsa
from core.errors import DecodeError
from core.ledger import MAX_BLOCK_TXS, Block, batch_fits, parse_genesis
from core.protocol import (
    MAX_BLOCKS_PER_REPLY,
    BlockEvent,
    OrdererBlocks,
    OrdererBlocksReply,
    OrdererHead,
    OrdererHeadReply,
    OrdererSubmit,
    OrdererSubmitReply,
    codes,
)
from core.tx import Transaction

from agents.admission import Classifier, Refusals
from agents.handlers import serve
from agents.ledger_store import LedgerStore
from agents.runtime import make_endpoint

__all__ = ["OrdererAgent", "MAX_BLOCKS_PER_REPLY", "MAX_QUEUED"]

log = logging.getLogger("agents.orderer")

MAX_QUEUED = 50_000
MAX_QUEUED_BYTES = 256 * 1024 * 1024


class OrdererAgent:
    def __init__(self, *, orderer_id: str, signing_key: bytes, genesis: bytes, data_dir: Path,
                 directory: Callable[[str], bytes | None], batch_size: int = 500, batch_timeout: float = 0.05,
                 clock: Callable[[], float] = time.time, storage: Iterable[str] = ()):
        if not 1 <= batch_size <= MAX_BLOCK_TXS:
            raise ValueError(f"batch_size must be 1..{MAX_BLOCK_TXS}")
        if batch_timeout <= 0:
            raise ValueError("batch_timeout must be positive")
        self.orderer_id = orderer_id
        self._key = signing_key
        # the genesis must name this orderer's key: blocks signed with another key bind no peer
        parsed = parse_genesis(genesis, orderer_key=ecdsa.public_key(signing_key))
        self.genesis = parsed.block
        self.config = parsed.config
        self._peers = {p.id for p in self.config.peers}
        self.classifier = Classifier(peers=self._peers, orderer=orderer_id, storage=storage)
        self.refusals = Refusals(orderer_id)
        self.data_dir = Path(data_dir)
        self._directory = directory
        self.batch_size = batch_size
        self.batch_timeout = batch_timeout
        self._clock = clock
        self.store = LedgerStore(self.data_dir / "orderer.sqlite", synchronous="FULL")
        self.store.init_genesis(self.genesis)
        height = self.store.last_height()
        last = Block.from_bytes(self.store.block(height))  # type: ignore[arg-type]
        self.height = last.height
        self.head_hash = last.hash
        self._last_ts = last.timestamp
        self._queue: list[bytes] = []
        self._queued_bytes = 0
        self._wakeup = trio.Event()
        self._limiter = trio.CapacityLimiter(1)  # the orderer's own worker: no queue behind other agents' crypto
        self._last_cut = -float("inf")
        self.endpoint: bus.Endpoint | None = None

    @property
    def queued(self) -> int:
        """Transactions accepted and not yet cut into a block (node metrics, graceful stop)."""
        return len(self._queue)

    # -- lifecycle ----------------------------------------------------------

    async def run(self, node: bus.Node, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        ep = make_endpoint(node, self.orderer_id, self._key, self._directory,
                           admit_subscriber=self.classifier.subscriber_admitter(self.refusals))
        self.endpoint = ep
        serve(ep, self.handlers(), classifier=self.classifier, refusals=self.refusals)
        log.info("orderer %s serving at height %d", self.orderer_id, self.height)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._cutter)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await ep.aclose()
            await trio.to_thread.run_sync(self.store.close)

    # -- handlers -----------------------------------------------------------

    def handlers(self) -> dict[type, Any]:
        """The kinds this agent serves: request type -> typed handler."""
        return {OrdererSubmit: self._submit, OrdererBlocks: self._blocks, OrdererHead: self._head}

    async def _submit(self, msg: bus.Message, request: OrdererSubmit) -> OrdererSubmitReply:
        if msg.sender not in self._peers:
            raise bus.HandlerError(codes.FORBIDDEN, "only consortium peers submit to the orderer")
        txs = request.txs
        ids = []
        for raw in txs:
            try:
                ids.append(Transaction.from_bytes(raw).tx_id)
            except DecodeError as exc:
                raise bus.HandlerError(codes.BAD_REQUEST, f"transaction does not decode: {exc}") from None
        size = sum(len(raw) for raw in txs)
        if len(self._queue) + len(txs) > MAX_QUEUED or self._queued_bytes + size > MAX_QUEUED_BYTES:
            raise bus.HandlerError(codes.ORDERER_BUSY, "too many transactions queued; retry later")
        self._queue.extend(txs)
        self._queued_bytes += size
        self._wakeup.set()
        return OrdererSubmitReply(tuple(ids), request.batch)

    async def _blocks(self, msg: bus.Message, request: OrdererBlocks) -> OrdererBlocksReply:
        limit = min(request.limit, MAX_BLOCKS_PER_REPLY)
        blocks = await trio.to_thread.run_sync(self.store.blocks, request.start, limit)
        return OrdererBlocksReply(tuple(blocks))

    async def _head(self, msg: bus.Message, request: OrdererHead) -> OrdererHeadReply:
        return OrdererHeadReply(self.height, self.head_hash)

    # -- cutting blocks -------------------------------------------------------

    async def _cutter(self) -> None:
        # A block is cut when a full block is queued (batch_size transactions or
        # MAX_BLOCK_BYTES), or batch_timeout after the previous cut: a transaction arriving
        # at an orderer idle for that long is cut at once (no waiting at low load), and
        # under load blocks come at most every batch_timeout.
        while True:
            if not self._queue:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            with trio.move_on_at(self._last_cut + self.batch_timeout):
                while self._batch_length() == len(self._queue) < self.batch_size:
                    self._wakeup = trio.Event()
                    await self._wakeup.wait()
            n = self._batch_length()
            batch = self._queue[:n]
            del self._queue[:n]
            self._queued_bytes -= sum(len(raw) for raw in batch)
            await self._cut(batch)

    def _batch_length(self) -> int:
        """How many queued transactions (from the front) the next block takes: at most
        batch_size, and no more than fit in MAX_BLOCK_BYTES (always at least one)."""
        size = 0
        for n, raw in enumerate(self._queue[: self.batch_size]):
            size += len(raw)
            if n and not batch_fits(n + 1, size):
                return n
        return min(len(self._queue), self.batch_size)

    def _make_and_store(self, height: int, prev_hash: bytes, ts: int, txs: list[bytes]) -> tuple[Block, bytes]:
        """Worker thread: sign the block and persist it (one hop off the event loop)."""
        block = Block.make(height, prev_hash, ts, txs, self._key)
        data = block.to_bytes()
        self.store.append_block(block, data)
        return block, data

    async def _cut(self, txs: list[bytes]) -> None:
        ts = max(self._last_ts, int(self._clock() * 1000))
        block, data = await trio.to_thread.run_sync(self._make_and_store, self.height + 1, self.head_hash, ts, txs,
                                                    limiter=self._limiter)
        self._last_cut = trio.current_time()
        self.height, self.head_hash, self._last_ts = block.height, block.hash, ts
        log.debug("cut block %d with %d transactions", block.height, len(txs))
        assert self.endpoint is not None
        await self.endpoint.publish(BlockEvent.kind, BlockEvent(data).to_wire())

