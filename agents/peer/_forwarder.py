"""Transaction forwarding: a peer's submissions to the orderer, and the waiters for their commits.

:class:`TxForwarder` queues encoded transactions and forwards them to the
orderer (``orderer.submit``, list form), coalescing the submissions that
arrive while a forward is in flight into one message (at most
:data:`core.protocol.MAX_TXS_PER_SUBMIT` transactions and
:data:`core.protocol.MAX_SUBMIT_BYTES` bytes). :meth:`TxForwarder.submit`
also waits, if asked, until each transaction's block is committed here:
the agent calls :meth:`TxForwarder.resolve` with every committed block.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import trio

import bus
from core.ledger import Block, CommitResult
from core.protocol import MAX_SUBMIT_BYTES, MAX_TXS_PER_SUBMIT, OrdererSubmit, codes

__all__ = ["TxForwarder"]

log = logging.getLogger("agents.peer")


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
    """Forwards to ``orderer`` once :meth:`run` is running; waits ``submit_timeout`` for commits."""

    def __init__(self, *, orderer: str, submit_timeout: float):
        self.orderer = orderer
        self.submit_timeout = submit_timeout
        self._waiters: dict[bytes, _TxWaiter] = {}
        self._outgoing: list[_Outgoing] = []
        self._outgoing_ready = trio.Event()

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
            error = None
            try:
                await endpoint.request(self.orderer, OrdererSubmit.kind, OrdererSubmit(txs, batch=True).to_wire(),
                                       timeout=10.0)
            except bus.RemoteError as exc:
                error = f"orderer refused: {exc.code}"
            except bus.BusError as exc:
                error = f"orderer unavailable: {type(exc).__name__}"
            for item in batch:
                item.error = error
                item.done.set()

    async def forward(self, txs: list[bytes]) -> None:
        """Queue encoded transactions for the orderer; return once it accepted them."""
        item = _Outgoing(txs, trio.Event())
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
        if not self._waiters:
            return
        for raw, mark in zip(block.txs, result.marks):
            waiter = self._waiters.pop(hashlib.sha256(raw).digest(), None)
            if waiter is not None:
                waiter.height, waiter.mark = block.height, mark
                waiter.event.set()
