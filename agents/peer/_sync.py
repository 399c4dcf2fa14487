"""Block sync: a peer's copy of the chain, kept up with the orderer.

:class:`BlockSync` follows the orderer's ``blocks`` topic and commits every
published block; it asks for missing ones (``orderer.blocks``, or
``peer.blocks`` at another peer when the orderer does not answer) on start,
whenever it sees a gap, and when the topic has been idle for ``sync_idle``
seconds and the orderer's head is ahead. Every block is applied by
:class:`core.ledger.Ledger` in the peer's own worker thread (it verifies
signatures and proofs) and persisted with its marks, state writes and head in
one SQLite transaction (:mod:`agents.ledger_store`); then ``on_commit(block,
result)`` runs on the event loop, one block at a time.

With several orderer nodes (etcd ordering) it follows one; when that node's
subscription breaks or it does not answer, it moves on to the next node of
the set (catching up first: blocks below an etcd node's window come from peers).
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

import trio

import bus
from core.errors import DecodeError, ValidationError
from core.ledger import Block, CommitResult, Ledger
from core import protocol

from agents.ledger_store import LedgerStore

__all__ = ["BlockSync"]

log = logging.getLogger("agents.peer")


class BlockSync:
    """Commits the chain's blocks into ``ledger`` and ``store`` (see the module docstring)."""

    def __init__(self, *, peer_id: str, ledger: Ledger, store: LedgerStore, orderers: list[str], peers: list[str],
                 on_commit: Callable[[Block, CommitResult], Awaitable[None]], sync_idle: float,
                 retry_interval: float):
        self.peer_id = peer_id
        self.ledger = ledger
        self.store = store
        self.orderers = list(orderers)
        self.orderer = self.orderers[0]  # the node followed now
        self.peers = [p for p in peers if p != peer_id]  # catch-up sources after the orderer
        self.sync_idle = sync_idle
        self.retry_interval = retry_interval
        self._on_commit = on_commit
        self._commit_lock = trio.Lock()
        self._apply_limiter = trio.CapacityLimiter(1)

    # ------------------------------------------------------------ committing

    def _apply_persist(self, raw: bytes) -> tuple[str, Block | None, CommitResult | None]:
        """Worker thread: decode, apply, persist. Returns (status, block, result)."""
        try:
            block = Block.from_bytes(raw)
        except DecodeError as exc:
            log.warning("peer %s: undecodable block: %s", self.peer_id, exc)
            return "bad", None, None
        height = self.ledger.height
        if block.height <= height:
            return "stale", block, None
        if block.height > height + 1:
            return "gap", block, None
        try:
            result = self.ledger.apply(block)
        except ValidationError as exc:
            log.warning("peer %s: refused block %d: %s", self.peer_id, block.height, exc)
            return "bad", block, None
        self.store.commit(block, result, raw)
        return "committed", block, result

    async def commit_raw(self, raw: bytes) -> str:
        """Apply and persist one encoded block: ``committed``, ``stale``, ``gap`` or ``bad``."""
        async with self._commit_lock:
            # the peer's own worker thread: blocks are applied one at a time anyway, and
            # waiting behind other agents' crypto in the shared pool only adds latency
            status, block, result = await trio.to_thread.run_sync(self._apply_persist, raw,
                                                                  limiter=self._apply_limiter)
            if status == "committed":
                assert block is not None and result is not None
                await self._on_commit(block, result)
            return status

    # ------------------------------------------------------------ following

    async def run(self, endpoint: bus.Endpoint, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the orderer until cancelled; started once the first catch-up is done."""
        started = False
        while True:
            sub = None
            try:
                sub = await endpoint.subscribe(self.orderer, protocol.BlockEvent.kind, buffer=256, timeout=5.0)
            except bus.BusError as exc:
                log.warning("peer %s: cannot subscribe to %s's blocks: %s", self.peer_id, self.orderer, exc)
            await self.catch_up(endpoint)
            if not started:
                task_status.started()
                started = True
            if sub is None:
                await trio.sleep(self.retry_interval / 10 if self._next_orderer() else self.retry_interval)
                continue
            try:
                await self._follow(endpoint, sub)
            except bus.BusError as exc:
                log.warning("peer %s: block subscription ended: %s", self.peer_id, exc)
            finally:
                await sub.aclose()
            if not self._next_orderer():
                await trio.sleep(self.retry_interval / 10)

    def _next_orderer(self) -> bool:
        """Move on to the next orderer node (True), or False when there is only one."""
        if len(self.orderers) == 1:
            return False
        self.orderer = self.orderers[(self.orderers.index(self.orderer) + 1) % len(self.orderers)]
        log.info("peer %s: following orderer node %s", self.peer_id, self.orderer)
        return True

    async def _follow(self, endpoint: bus.Endpoint, sub: bus.Subscription) -> None:
        """Commit published blocks until the subscription breaks or the orderer stops answering."""
        while True:
            event = None
            with trio.move_on_after(self.sync_idle):
                try:
                    event = await sub.receive()
                except bus.SubscriptionLagged as exc:
                    log.info("peer %s: missed %d published blocks; catching up", self.peer_id, exc.missed)
                    await self.catch_up(endpoint)
                    continue
            if event is None:
                head = protocol.OrdererHead()
                reply = await endpoint.request(self.orderer, head.kind, head.to_wire(), timeout=5.0)
                try:
                    ahead = protocol.OrdererHeadReply.from_wire(reply).height > self.ledger.height
                except DecodeError:
                    ahead = False
                if ahead:
                    await self.catch_up(endpoint)
                continue
            try:
                raw = protocol.BlockEvent.from_wire(event.body).block
            except DecodeError:
                log.warning("peer %s: malformed block event from %s", self.peer_id, event.publisher)
                continue
            status = await self.commit_raw(raw)
            if status == "gap":
                await self.catch_up(endpoint)
                await self.commit_raw(raw)

    async def catch_up(self, endpoint: bus.Endpoint) -> None:
        """Fetch and commit missing blocks: from the orderer, else from the other peers."""
        for source in [self.orderer, *self.peers]:
            request_type, reply_type = ((protocol.OrdererBlocks, protocol.OrdererBlocksReply) if source == self.orderer
                                        else (protocol.PeerBlocks, protocol.PeerBlocksReply))
            ok = True
            while ok:
                start = self.ledger.height + 1
                request = request_type(start=start, limit=protocol.MAX_BLOCKS_PER_REPLY)
                try:
                    reply = await endpoint.request(source, request.kind, request.to_wire(), timeout=10.0)
                except bus.BusError as exc:
                    log.info("peer %s: catch-up from %s failed: %s", self.peer_id, source, exc)
                    ok = False
                    break
                try:
                    blocks = reply_type.from_wire(reply).blocks
                except DecodeError:
                    log.warning("peer %s: malformed blocks reply from %s", self.peer_id, source)
                    ok = False
                    break
                if not blocks:
                    break
                for raw in blocks:
                    if await self.commit_raw(raw) in ("bad", "gap"):
                        ok = False
                        break
                if self.ledger.height < start:
                    ok = False
            if ok and source == self.orderer:
                return  # the orderer has no more: we are at its head
