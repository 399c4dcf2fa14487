"""The embedded ordering service: batches submitted transactions into signed blocks.

It does not validate transactions beyond their framing (order-then-validate:
every peer validates every transaction). It cuts a block when ``batch_size``
transactions are queued or ``batch_timeout`` seconds have passed since the
previous cut began (so a transaction reaching an idle orderer is cut at once, and
under load blocks come at most every ``batch_timeout``), signs it, persists it
(SQLite, ``synchronous=FULL``) and only then publishes it on topic ``blocks``;
``orderer.blocks`` near the head is answered from the last blocks it keeps in
memory (:data:`RECENT_BLOCKS`), older ones from the database.
Its kinds (``orderer.submit``, ``orderer.blocks``, ``orderer.head``) are typed
by :mod:`core.protocol`; see docs/protocol.md, "Orderer". It classifies
senders from the genesis (peers) and the storage node ids it is given: only
peers submit, only peers and storage nodes read blocks, the head, and
subscribe to ``blocks`` (others: ``forbidden``, before any work).

What every orderer shares lives here too: :class:`OrdererBase` (the endpoint,
the admission, the handler table, ``orderer.head``) and :class:`TxQueue` (the
bounded queue of accepted transactions and when to cut the next block), which
the etcd orderer node (:class:`agents.ordering.node.EtcdOrderer`) builds on.
"""

from __future__ import annotations

import collections
import itertools
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
from agents.ledger_store import LedgerStore, within_bytes
from agents.runtime import make_endpoint

__all__ = ["OrdererAgent", "OrdererBase", "TxQueue", "MAX_BLOCKS_PER_REPLY", "MAX_QUEUED", "check_batching",
           "tx_ids"]

log = logging.getLogger("agents.orderer")

MAX_QUEUED = 50_000
MAX_QUEUED_BYTES = 256 * 1024 * 1024
RECENT_BLOCKS = 64
"""The last blocks the embedded orderer keeps in memory (at most :data:`RECENT_BLOCKS_BYTES`):
``orderer.blocks`` near the head (a storage node's certificate follower catching up
after a missed event, a peer one block behind) is answered without a database read."""
RECENT_BLOCKS_BYTES = 16 * 1024 * 1024


def check_batching(batch_size: int, batch_timeout: float) -> None:
    """Refuse a batch size no block holds and a batch timeout that is not positive."""
    if not 1 <= batch_size <= MAX_BLOCK_TXS:
        raise ValueError(f"batch_size must be 1..{MAX_BLOCK_TXS}")
    if batch_timeout <= 0:
        raise ValueError("batch_timeout must be positive")


def tx_ids(txs: Iterable[bytes], *, max_tx_bytes: int | None = None, cap: int = 0) -> tuple[bytes, ...]:
    """The ids of submitted transactions; ``bad-request`` for one that does not decode or (with
    ``max_tx_bytes``) is larger than a block of ``cap`` bytes holds."""
    ids = []
    for raw in txs:
        try:
            ids.append(Transaction.from_bytes(raw).tx_id)
        except DecodeError as exc:
            raise bus.HandlerError(codes.BAD_REQUEST, f"transaction does not decode: {exc}") from None
        if max_tx_bytes is not None and len(raw) > max_tx_bytes:
            raise bus.HandlerError(codes.BAD_REQUEST, f"transaction larger than the block cap ({cap} bytes)")
    return tuple(ids)


class TxQueue:
    """The transactions an orderer accepted and has not cut yet, bounded in count and bytes.

    ``fits(count, size)``: whether ``count`` transactions of ``size`` bytes in all fit in one block."""

    def __init__(self, batch_size: int, fits: Callable[[int, int], bool]):
        self.batch_size = batch_size
        self._fits = fits
        self._txs: list[bytes] = []
        self.bytes = 0
        self._wakeup = trio.Event()

    def __len__(self) -> int:
        return len(self._txs)

    def add(self, txs: tuple[bytes, ...]) -> None:
        """Queue ``txs`` (``orderer.busy`` when the queue would pass its bounds) and wake the cutter."""
        size = sum(len(raw) for raw in txs)
        if len(self._txs) + len(txs) > MAX_QUEUED or self.bytes + size > MAX_QUEUED_BYTES:
            raise bus.HandlerError(codes.ORDERER_BUSY, "too many transactions queued; retry later")
        self._txs.extend(txs)
        self.bytes += size
        self._wakeup.set()

    def clear(self) -> None:
        self._txs.clear()
        self.bytes = 0

    def batch_length(self) -> int:
        """How many queued transactions (from the front) the next block takes: at most
        batch_size, and no more than fit in a block (always at least one)."""
        size = 0
        for n, raw in enumerate(self._txs[: self.batch_size]):
            size += len(raw)
            if n and not self._fits(n + 1, size):
                return n
        return min(len(self._txs), self.batch_size)

    async def take(self, cut_at: float) -> list[bytes]:
        """The next block's transactions, taken off the queue: once a full block is queued
        (batch_size transactions or a block's bytes), or at ``cut_at`` (trio time) with what
        is queued then; waits for a first transaction."""
        while not self._txs:
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        with trio.move_on_at(cut_at):
            while self.batch_length() == len(self._txs) < self.batch_size:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
        n = self.batch_length()
        batch = self._txs[:n]
        del self._txs[:n]
        self.bytes -= sum(len(raw) for raw in batch)
        return batch


class OrdererBase:
    """What every orderer shares: the endpoint it serves the orderer kinds on, who may ask
    (peers submit; peers, orderers and storage nodes read), the queue of accepted transactions."""

    endpoint: bus.Endpoint | None
    height: int
    head_hash: bytes

    def __init__(self, *, orderer_id: str, signing_key: bytes, directory: Callable[[str], bytes | None],
                 peers: set[str], classifier: Classifier, queue: TxQueue, batch_timeout: float):
        self.orderer_id = orderer_id
        self._key = signing_key
        self._directory = directory
        self._peers = peers
        self.classifier = classifier
        self.refusals = Refusals(orderer_id)
        self._queue = queue
        self.batch_size = queue.batch_size
        self.batch_timeout = batch_timeout
        self._limiter = trio.CapacityLimiter(1)  # the orderer's own worker: no queue behind other agents' crypto
        self.endpoint = None

    @property
    def queued(self) -> int:
        """Transactions accepted and not yet cut into a block (node metrics, graceful stop)."""
        return len(self._queue)

    def _open_endpoint(self, node: bus.Node) -> bus.Endpoint:
        ep = make_endpoint(node, self.orderer_id, self._key, self._directory,
                           admit_subscriber=self.classifier.subscriber_admitter(self.refusals))
        self.endpoint = ep
        return ep

    def _serve(self, ep: bus.Endpoint) -> None:
        serve(ep, self.handlers(), classifier=self.classifier, refusals=self.refusals)
        log.info("orderer %s serving at height %d", self.orderer_id, self.height)

    def handlers(self) -> dict[type, Any]:
        """The kinds this agent serves: request type -> typed handler."""
        return {OrdererSubmit: self._submit, OrdererBlocks: self._blocks, OrdererHead: self._head}

    async def _submit(self, msg: bus.Message, request: OrdererSubmit) -> OrdererSubmitReply:
        raise NotImplementedError

    async def _blocks(self, msg: bus.Message, request: OrdererBlocks) -> OrdererBlocksReply:
        raise NotImplementedError

    async def _head(self, msg: bus.Message, request: OrdererHead) -> OrdererHeadReply:
        return OrdererHeadReply(self.height, self.head_hash)


class OrdererAgent(OrdererBase):
    def __init__(self, *, orderer_id: str, signing_key: bytes, genesis: bytes, data_dir: Path,
                 directory: Callable[[str], bytes | None], batch_size: int = 500, batch_timeout: float = 0.05,
                 clock: Callable[[], float] = time.time, storage: Iterable[str] = ()):
        check_batching(batch_size, batch_timeout)
        # the genesis must name this orderer's key: blocks signed with another key bind no peer
        parsed = parse_genesis(genesis, orderer_key=ecdsa.public_key(signing_key))
        self.genesis = parsed.block
        self.config = parsed.config
        peers = {p.id for p in self.config.peers}
        super().__init__(orderer_id=orderer_id, signing_key=signing_key, directory=directory, peers=peers,
                         classifier=Classifier(peers=peers, orderer=orderer_id, storage=storage),
                         queue=TxQueue(batch_size, batch_fits), batch_timeout=batch_timeout)
        self.data_dir = Path(data_dir)
        self._clock = clock
        self.store = LedgerStore(self.data_dir / "orderer.sqlite", synchronous="FULL")
        self.store.init_genesis(self.genesis)
        height = self.store.last_height()
        last = Block.from_bytes(self.store.block(height))  # type: ignore[arg-type]
        self.height = last.height
        self.head_hash = last.hash
        self._last_ts = last.timestamp
        self._last_cut = -float("inf")
        self._recent: collections.deque[bytes] = collections.deque()  # blocks height-len+1 .. height
        self._recent_bytes = 0

    # -- lifecycle ----------------------------------------------------------

    async def run(self, node: bus.Node, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        ep = self._open_endpoint(node)
        self._serve(ep)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._cutter)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await ep.aclose()
            await trio.to_thread.run_sync(self.store.close)

    # -- handlers -----------------------------------------------------------

    async def _submit(self, msg: bus.Message, request: OrdererSubmit) -> OrdererSubmitReply:
        if msg.sender not in self._peers:
            raise bus.HandlerError(codes.FORBIDDEN, "only consortium peers submit to the orderer")
        ids = tx_ids(request.txs)
        self._queue.add(request.txs)
        return OrdererSubmitReply(ids, request.batch)

    async def _blocks(self, msg: bus.Message, request: OrdererBlocks) -> OrdererBlocksReply:
        limit = min(request.limit, MAX_BLOCKS_PER_REPLY)
        if request.start > self.height:  # at the head already: nothing to read
            return OrdererBlocksReply(())
        recent = self._recent_blocks(request.start, limit)
        if recent is not None:
            return OrdererBlocksReply(recent)
        blocks = await trio.to_thread.run_sync(self.store.blocks, request.start, limit)
        return OrdererBlocksReply(tuple(blocks))

    def _recent_blocks(self, start: int, limit: int) -> tuple[bytes, ...] | None:
        """Blocks ``start``.. from memory (as LedgerStore.blocks would read them: at most
        ``limit``, and the first alone past its byte cap), or None when ``start`` is older
        than the blocks kept."""
        first = self.height - len(self._recent) + 1
        if start < first or not self._recent:
            return None
        return tuple(within_bytes(itertools.islice(self._recent, start - first, start - first + limit)))

    def _keep_recent(self, data: bytes) -> None:
        self._recent.append(data)
        self._recent_bytes += len(data)
        while len(self._recent) > RECENT_BLOCKS or (len(self._recent) > 1 and self._recent_bytes > RECENT_BLOCKS_BYTES):
            self._recent_bytes -= len(self._recent.popleft())

    # -- cutting blocks -------------------------------------------------------

    async def _cutter(self) -> None:
        # A block is cut when a full block is queued (batch_size transactions or
        # MAX_BLOCK_BYTES), or batch_timeout after the previous cut: a transaction arriving
        # at an orderer idle for that long is cut at once (no waiting at low load), and
        # under load blocks come at most every batch_timeout.
        # The interval runs from the start of the previous cut: a transaction that arrives while a
        # block is being signed and persisted (an fsync, milliseconds to tens of them on a busy disk)
        # waits for that cut and the rest of the interval, not for both one after the other.
        while True:
            txs = await self._queue.take(self._last_cut + self.batch_timeout)
            self._last_cut = trio.current_time()
            await self._cut(txs)

    def _make_and_store(self, height: int, prev_hash: bytes, ts: int, txs: list[bytes]) -> tuple[Block, bytes]:
        """Worker thread: sign the block and persist it (one hop off the event loop)."""
        block = Block.make(height, prev_hash, ts, txs, self._key)
        data = block.to_bytes()
        self.store.append_block(block, data)
        return block, data

    async def _persist(self, height: int, prev_hash: bytes, ts: int, txs: list[bytes]) -> tuple[Block, bytes]:
        return await trio.to_thread.run_sync(self._make_and_store, height, prev_hash, ts, txs, limiter=self._limiter)

    async def _cut(self, txs: list[bytes]) -> None:
        ts = max(self._last_ts, int(self._clock() * 1000))
        block, data = await self._persist(self.height + 1, self.head_hash, ts, txs)
        self.height, self.head_hash, self._last_ts = block.height, block.hash, ts
        self._keep_recent(data)
        log.debug("cut block %d with %d transactions", block.height, len(txs))
        assert self.endpoint is not None
        await self.endpoint.publish(BlockEvent.kind, BlockEvent(data).to_wire())

