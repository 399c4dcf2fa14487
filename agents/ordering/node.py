"""An orderer node of the etcd-backed ordering service (issue 15; design in docs/ordering.md).

:class:`EtcdOrderer` serves today's orderer kinds (``orderer.submit``,
``orderer.blocks``, ``orderer.head``, topic ``blocks``; core.protocol) with
the chain kept in an etcd cluster, under ``/emrshare/<consortium>/<genesis
hash>/``:

* ``leader``: the election key. A node campaigns with one txn: "if ``leader``
  does not exist, put it (my id) under my lease". The winner keeps its lease
  alive (every TTL/4); when it dies or cannot reach a quorum the lease expires
  after ``lease_ttl`` s (default 1 s: etcd's minimum with the 500 ms election
  timeout our clusters run with), etcd deletes the key and another node wins.
* ``block/<height, 20 digits>``: block ``height`` (core.ledger.Block bytes).
  Only the leader cuts blocks; it signs each with its own key (one of the
  genesis's orderer set) and appends it with one txn whose compares are "the
  election key still has the create revision I won it with" and "``block/<h>``
  does not exist": a deposed leader's append fails, two would-be leaders
  cannot both write height ``h``, there is no fork. The same txn deletes the
  blocks older than ``window`` heights (peers keep the full history; a peer
  asking below the window gets ``orderer.pruned`` and catches up from peers).

Every node (leader or not) follows ``block/`` with an etcd watch, publishes
each new block on ``blocks`` in height order, and answers ``orderer.head``
and ``orderer.blocks`` from what etcd holds. A node that does not lead
forwards a peer's ``orderer.submit`` to the leader (it reads the leader's id
from the election key) and returns its answer; without a reachable leader it
answers ``orderer.no-leader`` and the peer tries another node. Submissions a
deposed leader had queued are dropped: peers resubmit what they do not see
committed (agents.peer), and the ledger commits a transaction once (its nonce).

Blocks hold at most :data:`agents.ordering.etcd.ETCD_BLOCK_BYTES` (the etcd
cluster runs with ``--max-request-bytes`` above it). The leader drops queued
transactions it has seen in a recent block (a resubmission that crossed its
commit).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from contextlib import aclosing
from typing import Callable, Iterable

import trio

import bus
from core import ecdsa
from core.errors import DecodeError
from core.ledger import Block, parse_genesis
from core.protocol import MAX_BLOCKS_PER_REPLY, BlockEvent, OrdererBlocks, OrdererBlocksReply, OrdererSubmit, \
    OrdererSubmitReply, codes

from agents.admission import Classifier
from agents.orderer import MAX_QUEUED, OrdererBase, TxQueue, check_batching, tx_ids
from agents.ordering.etcd import ETCD_BLOCK_BYTES, EtcdClient, EtcdUnavailable, prefix_end

__all__ = ["EtcdOrderer", "MAX_QUEUED", "chain_prefix", "current_leader"]

log = logging.getLogger("agents.ordering")

MAX_REPLY_BYTES = 8 << 20
RECENT_TX_IDS = 200_000  # tx ids of recent blocks the leader remembers (drops resubmitted copies)
_BLOCK_OVERHEAD = 256
_TX_OVERHEAD = 5


def chain_prefix(genesis: Block, consortium: str) -> bytes:
    """The etcd key prefix of a chain: its consortium name and genesis hash."""
    return f"/emrshare/{consortium}/{genesis.hash.hex()[:32]}/".encode()


async def current_leader(etcd: list[str], genesis: Block, consortium: str) -> str | None:
    """The id of the orderer node holding the chain's election key now (None: no leader)."""
    async with EtcdClient(etcd) as client:
        kv = await client.get(chain_prefix(genesis, consortium) + b"leader")
    return kv.value.decode("utf-8", "replace") if kv is not None else None


def _height_key(prefix: bytes, height: int) -> bytes:
    return prefix + b"block/" + b"%020d" % height


class EtcdOrderer(OrdererBase):
    """One orderer node (see the module docstring): ``orderer_id`` and ``signing_key`` must be in
    the genesis's orderer set; ``etcd`` the cluster's client URLs."""

    def __init__(self, *, orderer_id: str, signing_key: bytes, genesis: bytes, etcd: list[str],
                 directory: Callable[[str], bytes | None], batch_size: int = 500, batch_timeout: float = 0.05,
                 lease_ttl: int = 1, window: int = 10_000, storage: Iterable[str] = (),
                 clock: Callable[[], float] = time.time, max_block_bytes: int = ETCD_BLOCK_BYTES):
        check_batching(batch_size, batch_timeout)
        if lease_ttl < 1 or window < 1:
            raise ValueError("lease_ttl and window must be positive")
        parsed = parse_genesis(genesis)
        self.genesis, self.config = parsed.block, parsed.config
        members = {o.id: o.key for o in self.config.orderers}
        if members.get(orderer_id) != ecdsa.public_key(signing_key):
            raise ValueError(f"{orderer_id} with this key is not in the genesis's orderer set")
        self._orderers = set(members)
        peers = {p.id for p in self.config.peers}

        def fits(count: int, size: int) -> bool:
            return _BLOCK_OVERHEAD + size + count * _TX_OVERHEAD <= max_block_bytes

        super().__init__(orderer_id=orderer_id, signing_key=signing_key, directory=directory, peers=peers,
                         classifier=Classifier(peers=peers, orderers=self._orderers, storage=storage),
                         queue=TxQueue(batch_size, fits), batch_timeout=batch_timeout)
        self.etcd = EtcdClient(etcd)
        self.prefix = chain_prefix(self.genesis, self.config.name)
        self._leader_key = self.prefix + b"leader"
        self._blocks_key = self.prefix + b"block/"
        self.lease_ttl = lease_ttl
        self.window = window
        self.max_block_bytes = max_block_bytes
        self._clock = clock
        # the chain as this node has seen it in etcd (and published)
        self.height = 0
        self.head_hash = self.genesis.hash
        self._new_block = trio.Event()
        # leadership
        self.leader_id: str | None = None
        self.is_leader = False
        self.blocks_cut = 0
        self._recent: OrderedDict[bytes, None] = OrderedDict()

    # -- lifecycle ----------------------------------------------------------

    async def run(self, node: bus.Node, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        ep = self._open_endpoint(node)
        try:
            await self._read_head()
            self._serve(ep)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._follow)
                nursery.start_soon(self._campaign)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await ep.aclose()
                await self.etcd.aclose()

    async def _read_head(self) -> int:
        """Set height/head from the newest block in etcd; the store's revision."""
        while True:
            try:
                kvs, revision = await self.etcd.range(self._blocks_key, prefix_end(self._blocks_key), limit=1,
                                                      descending=True)
                break
            except EtcdUnavailable as exc:
                log.warning("orderer node %s: %s", self.orderer_id, exc)
                await trio.sleep(0.2)
        if kvs:
            block = Block.from_bytes(kvs[0].value)
            if block.height > self.height:
                self.height, self.head_hash = block.height, block.hash
        return revision

    # -- handlers -----------------------------------------------------------

    async def _submit(self, msg: bus.Message, request: OrdererSubmit) -> OrdererSubmitReply:
        if msg.sender not in self._peers and msg.sender not in self._orderers:
            raise bus.HandlerError(codes.FORBIDDEN, "only consortium peers submit to the orderer")
        ids = tx_ids(request.txs, max_tx_bytes=self.max_block_bytes - _BLOCK_OVERHEAD - _TX_OVERHEAD,
                     cap=self.max_block_bytes)
        if self.is_leader:
            self._queue.add(request.txs)
            return OrdererSubmitReply(ids, request.batch)
        leader = self.leader_id
        if msg.sender in self._orderers or leader is None or leader == self.orderer_id:
            raise bus.HandlerError(codes.ORDERER_NO_LEADER, "no orderer node leads right now; retry shortly")
        assert self.endpoint is not None
        try:
            await self.endpoint.request(leader, OrdererSubmit.kind, request.to_wire(), timeout=5.0)
        except bus.RemoteError as exc:
            raise bus.HandlerError(exc.code if exc.code in (codes.ORDERER_BUSY, codes.BAD_REQUEST)
                                   else codes.ORDERER_NO_LEADER, f"the leader {leader} refused: {exc.code}") from None
        except bus.BusError as exc:
            if self.leader_id == leader:
                self.leader_id = None  # until the election key says who leads (its lease expires if it died)
            raise bus.HandlerError(codes.ORDERER_NO_LEADER, f"the leader {leader} did not answer "
                                                            f"({type(exc).__name__}); retry shortly") from None
        return OrdererSubmitReply(ids, request.batch)

    async def _blocks(self, msg: bus.Message, request: OrdererBlocks) -> OrdererBlocksReply:
        limit = min(request.limit, MAX_BLOCKS_PER_REPLY)
        start = request.start
        out: list[bytes] = []
        if start == 0:
            out.append(self.genesis.to_bytes())
            start, limit = 1, limit - 1
        if limit <= 0 or start > self.height:
            return OrdererBlocksReply(tuple(out))
        try:
            kvs, _ = await self.etcd.range(_height_key(self.prefix, start), _height_key(self.prefix, start + limit))
        except EtcdUnavailable as exc:
            raise bus.HandlerError(codes.ORDERER_NO_LEADER, f"etcd unavailable: {exc}") from None
        if not out and (not kvs or kvs[0].key != _height_key(self.prefix, start)):
            raise bus.HandlerError(codes.ORDERER_PRUNED, f"block {start} is older than the orderer's window; "
                                                         "ask a peer")
        total = sum(len(b) for b in out)
        for kv in kvs:
            total += len(kv.value)
            if out and total > MAX_REPLY_BYTES:
                break
            out.append(kv.value)
        return OrdererBlocksReply(tuple(out))

    # -- following the chain in etcd ----------------------------------------

    async def _follow(self) -> None:
        """Publish every block etcd holds after ours, in order: read, then watch; again on a break."""
        while True:
            try:
                revision = await self._catch_up()
                watch = self.etcd.watch(self._blocks_key, prefix_end(self._blocks_key), revision + 1)
                async with aclosing(watch) as batches:
                    async for events in batches:
                        for event in events:
                            if event.type == "PUT":
                                await self._seen(event.kv.value)
            except EtcdUnavailable as exc:
                log.info("orderer node %s: block watch: %s", self.orderer_id, exc)
                await trio.sleep(0.1)

    async def _catch_up(self) -> int:
        """Publish the blocks etcd holds above our height; etcd's revision of that read."""
        while True:
            kvs, revision = await self.etcd.range(_height_key(self.prefix, self.height + 1),
                                                  prefix_end(self._blocks_key), limit=MAX_BLOCKS_PER_REPLY)
            if kvs and kvs[0].key != _height_key(self.prefix, self.height + 1):
                # our next block left the window: resume from the window's start (peers hold the rest)
                first = Block.from_bytes(kvs[0].value)
                self.height, self.head_hash = first.height - 1, first.prev_hash
            for kv in kvs:
                await self._seen(kv.value)
            if len(kvs) < MAX_BLOCKS_PER_REPLY:
                return revision

    async def _seen(self, raw: bytes) -> None:
        try:
            block = Block.from_bytes(raw)
        except DecodeError:
            log.error("orderer node %s: undecodable block in etcd", self.orderer_id)
            return
        if block.height != self.height + 1:
            return  # an old one (a re-read) or past a gap (the catch-up that follows a broken watch fills it)
        self.height, self.head_hash = block.height, block.hash
        for raw_tx in block.txs:
            self._recent[hashlib.sha256(raw_tx).digest()] = None
        while len(self._recent) > RECENT_TX_IDS:
            self._recent.popitem(last=False)
        self._new_block.set()
        self._new_block = trio.Event()
        assert self.endpoint is not None
        await self.endpoint.publish(BlockEvent.kind, BlockEvent(raw).to_wire())

    # -- leadership ------------------------------------------------------------

    async def _campaign(self) -> None:
        """Win the election key under a lease, lead while the lease lives, then campaign again."""
        while True:
            try:
                lease = await self.etcd.lease_grant(self.lease_ttl)
                won, revision, responses = await self.etcd.txn(
                    [EtcdClient.create_revision_is(self._leader_key, 0)],
                    [EtcdClient.put(self._leader_key, self.orderer_id.encode(), lease=lease)],
                    [EtcdClient.get_op(self._leader_key)])
            except EtcdUnavailable as exc:
                log.info("orderer node %s: campaign: %s", self.orderer_id, exc)
                await trio.sleep(0.2)
                continue
            if not won:
                kvs = responses[0].get("response_range", {}).get("kvs", []) if responses else []
                self.leader_id = _decode_id(kvs[0].get("value")) if kvs else None
                try:
                    await self.etcd.lease_revoke(lease)
                except EtcdUnavailable:
                    pass  # it expires
                await trio.sleep(0.1)
                continue
            log.info("orderer node %s leads (election revision %d)", self.orderer_id, revision)
            self.leader_id = self.orderer_id
            try:
                await self._lead(lease, revision)
            finally:
                self.is_leader = False
                self.leader_id = None
                self._queue.clear()
            log.info("orderer node %s no longer leads", self.orderer_id)

    async def _lead(self, lease: int, election_revision: int) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keepalive, lease, nursery.cancel_scope)
            await self._read_head()
            self.is_leader = True
            self._tip = (self.height, self.head_hash, 0)
            nursery.start_soon(self._cutter, election_revision, nursery.cancel_scope)

    async def _keepalive(self, lease: int, scope: trio.CancelScope) -> None:
        """Refresh the lease every TTL/4. Lead on while etcd does not answer: an etcd Raft
        election extends every lease, so a leader that steps down during one only delays the
        next append by a lease expiry and a campaign. Step down when etcd says the lease is
        gone, or after 3 TTLs without a refresh (surely expired: this node is cut off),
        revoking the lease so that another node need not wait for it. Safety does not rest on
        this timing: an append of a node that lost the election key fails on the txn's compare."""
        give_up = 3 * self.lease_ttl
        sent_ok = trio.current_time()
        try:
            while True:
                await trio.sleep(self.lease_ttl / 4)
                sent = trio.current_time()
                ttl = None
                with trio.move_on_at(sent_ok + give_up):
                    try:
                        ttl = await self.etcd.lease_keepalive(lease)
                    except EtcdUnavailable:
                        pass
                if ttl is not None and ttl > 0:
                    sent_ok = sent
                elif ttl is not None or trio.current_time() >= sent_ok + give_up:
                    return  # etcd says the lease is gone, or it has surely expired
        finally:
            scope.cancel()
            with trio.CancelScope(shield=True), trio.move_on_after(0.5):
                try:
                    await self.etcd.lease_revoke(lease)
                except EtcdUnavailable:
                    pass  # it expires

    async def _cutter(self, election_revision: int, scope: trio.CancelScope) -> None:
        # As the embedded orderer's: the interval runs from the start of the previous cut, so a
        # transaction arriving while a block is signed and appended (an etcd round trip and its
        # fsync) waits for that cut and the rest of the interval, not for both one after the other.
        last_cut = -float("inf")
        while True:
            batch = await self._queue.take(last_cut + self.batch_timeout)
            last_cut = trio.current_time()
            batch = self._fresh(batch)
            if batch and not await self._append(batch, election_revision):
                scope.cancel()  # deposed: campaign again
                return

    def _fresh(self, batch: list[bytes]) -> list[bytes]:
        """Drop transactions seen in a recent block or earlier in the batch."""
        out, seen = [], set()
        for raw in batch:
            tx_id = hashlib.sha256(raw).digest()
            if tx_id in self._recent or tx_id in seen:
                continue
            seen.add(tx_id)
            out.append(raw)
        return out

    async def _append(self, txs: list[bytes], election_revision: int) -> bool:
        """Cut, sign and append one block; False when this node no longer leads."""
        height, head_hash, last_ts = self._tip
        if self.height > height:  # blocks another leader appended that we had not read at election
            height, head_hash = self.height, self.head_hash
        ts = max(last_ts, int(self._clock() * 1000))
        block = await trio.to_thread.run_sync(Block.make, height + 1, head_hash, ts, txs, self._key,
                                              limiter=self._limiter)
        key = _height_key(self.prefix, block.height)
        success = [EtcdClient.put(key, block.to_bytes())]
        if block.height > self.window:
            success.append(EtcdClient.delete_range(_height_key(self.prefix, 1),
                                                   _height_key(self.prefix, block.height - self.window + 1)))
        while True:
            try:
                ok, _, _ = await self.etcd.txn(
                    [EtcdClient.create_revision_is(self._leader_key, election_revision),
                     EtcdClient.create_revision_is(key, 0)], success)
            except EtcdUnavailable as exc:
                # the txn may have been applied: ask again; its compares make a repeat harmless
                log.info("orderer node %s: append of block %d: %s", self.orderer_id, block.height, exc)
                await trio.sleep(0.05)
                existing = await self._try_get(key)
                if existing is not None:
                    ok = existing == block.to_bytes()
                    if not ok:
                        return False
                else:
                    continue
            if not ok:
                existing = await self._try_get(key)
                if existing != block.to_bytes():
                    log.warning("orderer node %s: append of block %d refused (deposed)", self.orderer_id,
                                block.height)
                    return False
            self._tip = (block.height, block.hash, ts)
            self.blocks_cut += 1
            return True

    async def _try_get(self, key: bytes) -> bytes | None:
        while True:
            try:
                kv = await self.etcd.get(key)
                return None if kv is None else kv.value
            except EtcdUnavailable:
                await trio.sleep(0.05)


def _decode_id(value: str | None) -> str | None:
    import base64

    try:
        return base64.b64decode(value or "").decode("utf-8") or None
    except (ValueError, UnicodeDecodeError):
        return None
