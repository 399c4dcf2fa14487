"""Transaction forwarding: a peer's submissions to the orderer, and the waiters for their commits.

:class:`TxForwarder` queues encoded transactions and forwards them to the
orderer (``orderer.submit``, list form), coalescing the submissions that
arrive while a forward is in flight into one message (at most
:data:`core.protocol.MAX_TXS_PER_SUBMIT` transactions and
:data:`core.protocol.MAX_SUBMIT_BYTES` bytes). :meth:`TxForwarder.submit`
also waits, if asked, until each transaction's block is committed here:
the agent calls :meth:`TxForwarder.resolve` with every committed block.

With several orderer nodes (etcd ordering, the genesis's orderer set) a
forward that finds its node unreachable, or answering ``orderer.no-leader``,
moves to the next node and tries again for up to ``failover_timeout``
seconds; a node that could not be reached is passed over for
``DOWN_FOR`` seconds while another one answers (reconnecting to a dead
address costs the bus about a second of connect attempts). Every transaction forwarded is remembered until a committed block
holds it; one not committed ``resubmit_after`` seconds after its last
forward (lost in a leader that died) is forwarded again, for at most
``MAX_PENDING_AGE`` seconds: the ledger commits a transaction once (a copy is
refused by its nonce) and the leader drops copies it has seen.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass

import trio

import bus
from core.ledger import Block, CommitResult
from core.protocol import MAX_SUBMIT_BYTES, MAX_TXS_PER_SUBMIT, OrdererSubmit, codes

__all__ = ["TxForwarder"]

log = logging.getLogger("agents.peer")

MAX_PENDING = 100_000  # transactions remembered for resubmission (the oldest forgotten beyond)
MAX_PENDING_AGE = 60.0  # seconds a transaction is resubmitted for (its timestamp skew bounds it anyway)
DOWN_FOR = 5.0  # seconds an unreachable orderer node is passed over


@dataclass
class _TxWaiter:
    event: trio.Event
    height: int = 0
    mark: str = ""


@dataclass
class _Outgoing:
    txs: list[bytes]
    done: trio.Event
    error: str | None = None


class TxForwarder:
    """Forwards to ``orderers[0]`` (then the next ones, see the module docstring) once
    :meth:`run` is running; waits ``submit_timeout`` for commits."""

    def __init__(self, *, orderers: list[str], submit_timeout: float, failover_timeout: float = 10.0,
                 resubmit_after: float = 4.0):
        self.orderers = list(orderers)
        self.orderer = self.orderers[0]
        self.submit_timeout = submit_timeout
        self.failover_timeout = failover_timeout
        self.resubmit_after = resubmit_after
        self.resubmitted = 0
        self._waiters: dict[bytes, _TxWaiter] = {}
        self._outgoing: list[_Outgoing] = []
        self._outgoing_ready = trio.Event()
        self._pending: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()  # tx id -> (raw, forwarded at)
        self._down_until: dict[str, float] = {}  # orderer node -> until when it is passed over

    @property
    def failover(self) -> bool:
        return len(self.orderers) > 1

    @property
    def queued(self) -> int:
        """Submissions waiting to be forwarded to the orderer (node metrics, graceful stop)."""
        return len(self._outgoing)

    @property
    def waiting(self) -> int:
        """Transactions whose submitters wait for their commit."""
        return len(self._waiters)

    async def run(self, endpoint: bus.Endpoint) -> None:
        """Forward queued transactions to the orderer, coalescing concurrent submissions."""
        async with trio.open_nursery() as nursery:
            if self.failover:
                nursery.start_soon(self._resubmitter)
            await self._forward_loop(endpoint)

    async def _send(self, endpoint: bus.Endpoint, txs: tuple[bytes, ...]) -> str | None:
        """Forward to the current orderer node (moving on to the others when failing over); the error or None."""
        body = OrdererSubmit(txs, batch=True).to_wire()
        deadline = trio.current_time() + (self.failover_timeout if self.failover else 0)
        while True:
            try:
                await endpoint.request(self.orderer, OrdererSubmit.kind, body, timeout=10.0 if not self.failover else 3.0)
                break
            except bus.RemoteError as exc:
                error = f"orderer refused: {exc.code}"
                if exc.code != codes.ORDERER_NO_LEADER:
                    return error
            except bus.BusError as exc:
                error = f"orderer unavailable: {type(exc).__name__}"
                self._down_until[self.orderer] = trio.current_time() + DOWN_FOR
            if not self.failover or trio.current_time() >= deadline:
                return error
            self.orderer = self._next_orderer()
            await trio.sleep(0.05)
        if self.failover:
            now = trio.current_time()
            for raw in txs:
                tx_id = hashlib.sha256(raw).digest()
                self._pending.pop(tx_id, None)
                self._pending[tx_id] = (raw, now)
            while len(self._pending) > MAX_PENDING:
                self._pending.popitem(last=False)
        return None

    def _next_orderer(self) -> str:
        """The next node after the current one that is not passed over (else simply the next)."""
        now = trio.current_time()
        i = self.orderers.index(self.orderer)
        ring = self.orderers[i + 1:] + self.orderers[:i + 1]
        return next((o for o in ring if self._down_until.get(o, 0) <= now), ring[0])

    async def _resubmitter(self) -> None:
        """Forward again what no committed block holds ``resubmit_after`` s after its last forward."""
        while True:
            await trio.sleep(self.resubmit_after / 2)
            now = trio.current_time()
            due = []
            for tx_id, (raw, sent) in list(self._pending.items()):
                if now - sent > MAX_PENDING_AGE + self.resubmit_after:
                    del self._pending[tx_id]
                elif now - sent >= self.resubmit_after:
                    due.append(raw)
            for i in range(0, len(due), MAX_TXS_PER_SUBMIT):
                chunk = due[i:i + MAX_TXS_PER_SUBMIT]
                log.info("resubmitting %d transactions not committed after %.1f s", len(chunk), self.resubmit_after)
                self.resubmitted += len(chunk)
                item = _Outgoing(chunk, trio.Event())
                self._outgoing.append(item)
                self._outgoing_ready.set()
                await item.done.wait()

    async def _forward_loop(self, endpoint: bus.Endpoint) -> None:
        while True:
            if not self._outgoing:
                self._outgoing_ready = trio.Event()
                await self._outgoing_ready.wait()
            batch: list[_Outgoing] = []
            count = size = 0
            while self._outgoing and count + len(self._outgoing[0].txs) <= MAX_TXS_PER_SUBMIT:
                item_size = sum(len(raw) for raw in self._outgoing[0].txs)
                if batch and size + item_size > MAX_SUBMIT_BYTES:
                    break
                item = self._outgoing.pop(0)
                batch.append(item)
                count += len(item.txs)
                size += item_size
            txs = tuple(raw for item in batch for raw in item.txs)
            error = await self._send(endpoint, txs)
            for item in batch:
                item.error = error
                item.done.set()

    async def send_now(self, endpoint: bus.Endpoint, txs: list[bytes]) -> None:
        """Forward ``txs`` at once, not through the queue (at stop, once :meth:`run` no
        longer runs); raise :class:`bus.HandlerError` when the orderer did not take them."""
        error = await self._send(endpoint, tuple(txs))
        if error is not None:
            raise bus.HandlerError(codes.SUBMIT_UNAVAILABLE, error)

    async def forward(self, txs: list[bytes], *, first: bool = False) -> None:
        """Queue encoded transactions for the orderer; return once it accepted them. ``first``:
        ahead of everything queued (the peer's own access log, which must not wait behind its
        clients' submissions: agents.peer._audit)."""
        item = _Outgoing(txs, trio.Event())
        if first:
            self._outgoing.insert(0, item)
        else:
            self._outgoing.append(item)
        self._outgoing_ready.set()
        await item.done.wait()
        if item.error is not None:
            raise bus.HandlerError(codes.SUBMIT_UNAVAILABLE, item.error)

    async def submit(self, txs: list[bytes], *, wait: bool) -> list[tuple[bytes, int, str]]:
        """Forward and (optionally) wait for the commits: [(tx_id, height, mark)]."""
        ids = [hashlib.sha256(raw).digest() for raw in txs]
        waiters = []
        if wait:
            for tx_id in ids:
                waiter = self._waiters.get(tx_id)
                if waiter is None:
                    waiter = self._waiters[tx_id] = _TxWaiter(trio.Event())
                waiters.append(waiter)
        try:
            await self.forward(txs)
            if not wait:
                return [(tx_id, 0, "") for tx_id in ids]
            with trio.move_on_after(self.submit_timeout):
                for waiter in waiters:
                    await waiter.event.wait()
            if not all(w.event.is_set() for w in waiters):
                raise bus.HandlerError(codes.SUBMIT_TIMEOUT, f"not committed within {self.submit_timeout} s")
            return [(tx_id, w.height, w.mark) for tx_id, w in zip(ids, waiters)]
        finally:
            for tx_id, waiter in zip(ids, waiters):
                if not waiter.event.is_set() and self._waiters.get(tx_id) is waiter:
                    del self._waiters[tx_id]

    def resolve(self, block: Block, result: CommitResult) -> None:
        """Wake the submissions waiting for a transaction of this committed block."""
        if not self._pending and not self._waiters:
            return
        tx_ids = result.tx_ids if len(result.tx_ids) == len(block.txs) else \
            [hashlib.sha256(raw).digest() for raw in block.txs]
        if self._pending:
            for tx_id in tx_ids:
                self._pending.pop(tx_id, None)
        if not self._waiters:
            return
        for tx_id, mark in zip(tx_ids, result.marks):
            waiter = self._waiters.pop(tx_id, None)
            if waiter is not None:
                waiter.height, waiter.mark = block.height, mark
                waiter.event.set()
