"""The consortium peer: enrolls users, relays transactions, validates and commits
every block, answers queries and audits, keeps re-encryption key shares and
re-encrypts capsules for authorized doctors. See docs/protocol.md, "Consortium peer".

Blocks come from the orderer's ``blocks`` topic; a peer asks for missing ones
(``orderer.blocks``, or ``peer.blocks`` at another peer when the orderer does
not answer) on start, whenever it sees a gap, and when the topic has been idle
for a while and the orderer's head is ahead. Every block is applied by
:class:`core.ledger.Ledger` in a worker thread (it verifies signatures and
proofs) and persisted with its marks, state writes and head in one SQLite
transaction (:mod:`agents.ledger_store`).

Re-encryption key shares are kept as they arrive, sealed to the peer's X25519
key (encryption at rest); they are unsealed on first use and the prepared
share is cached in memory per grant.

``python -m agents.peer serve ...`` runs one peer as its own process (see
:func:`main`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import msgpack
import trio

import bus
from core import canonical, pre
from core.curve import G1
from core.errors import CoreError, DecodeError, ValidationError
from core.identity import RESERVED_CERT_ATTRIBUTES, Certificate, check_id
from core.ledger import Block, CommitResult, Ledger, parse_genesis
from core.state import ENTRY_QUERIES, CertEntry, GrantEntry, RecordEntry, certs_prefix, entry_key, parse_key, \
    records_prefix
from core.tx import MAX_TX_SIZE, Transaction

from agents.ledger_store import LedgerStore
from agents.consortium import Manifest, enrollment_token, ENROLL_PREFIX
from agents.keys import AgentKeys
from agents.runtime import make_endpoint, run_crypto

__all__ = ["PeerAgent", "share_context", "REENCRYPTION_TAG", "EVENT_TYPES"]

log = logging.getLogger("agents.peer")

REENCRYPTION_TAG = "emrshare/v1/reencryption"
EVENT_TYPES = ("access_request", "grant", "deny_request", "revoke_grant")
MAX_BLOCKS_PER_REPLY = 256
MAX_TXS_PER_SUBMIT = 1024
# Bytes of transactions in one submit (from a client) and in one forward to the orderer
# (coalesced): half the bus frame, so a forward always fits in one message.
MAX_SUBMIT_BYTES = 8 * 1024 * 1024
MAX_VALID_S = 10 * 366 * 86400
MAX_SEALED_SHARE = 4096
SHARE_CACHE = 4096
GRANT_WAIT_S = 10.0


def share_context(grant_id: str) -> bytes:
    """The context sealed with every re-encryption key share of a grant
    (``core.pre.make_key_shares(..., context=share_context(grant_id))``)."""
    return grant_id.encode("utf-8")


def _bad(message: str) -> bus.HandlerError:
    return bus.HandlerError("bad-request", message)


def _field(body: Any, name: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
    if not isinstance(body, dict):
        raise _bad("body must be a map")
    value = body.get(name)
    if value is None and optional:
        return None
    ok = type(value) is int if kind is int else isinstance(value, kind)
    if not ok:
        raise _bad(f"field {name!r} is missing or has the wrong type")
    return value


def _id_field(body: Any, name: str) -> str:
    value = _field(body, name, str)
    try:
        return check_id(value, name)
    except DecodeError as exc:
        raise _bad(str(exc)) from None


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


class PeerAgent:
    def __init__(self, *, peer_id: str, keys: AgentKeys, genesis: bytes, data_dir: Path, manifest: Manifest,
                 enroll_secret: bytes | None, clock: Callable[[], float] = time.time,
                 submit_timeout: float = 20.0, sync_idle: float = 5.0, retry_interval: float = 1.0):
        self.peer_id = peer_id
        self.keys = keys
        self.manifest = manifest
        self._enroll_secret = enroll_secret
        self._clock = clock
        self.submit_timeout = submit_timeout
        self.sync_idle = sync_idle
        self.retry_interval = retry_interval
        parsed = parse_genesis(genesis)
        self.genesis = parsed.block
        self.data_dir = Path(data_dir)
        self.store = LedgerStore(self.data_dir / "ledger.sqlite")
        self.store.init_genesis(self.genesis)
        self.ledger = Ledger(parsed, self.store)
        self.config = self.ledger.config
        info = self.config.peer(peer_id)
        if info is None:
            raise ValueError(f"{peer_id} is not a peer of consortium {self.config.name}")
        if info.ecdsa_key != keys.ecdsa_public or info.box_key != keys.box_public:
            raise ValueError(f"the keys given for {peer_id} are not the ones in the genesis")
        self.info = info
        self.orderer = manifest.orderer or self.config.orderer_id
        self.directory = manifest.directory()
        for key, raw in self.store.scan(certs_prefix()):
            entry = CertEntry.from_state(canonical.unpack(raw, what=key))
            if not entry.revoked:
                self.directory.set_certificate(entry.subject, entry.cert.ecdsa_key)
        self.endpoint: bus.Endpoint | None = None
        self._nursery: trio.Nursery | None = None
        self._commit_lock = trio.Lock()
        self._apply_limiter = trio.CapacityLimiter(1)
        self._committed = trio.Event()
        self._waiters: dict[bytes, _TxWaiter] = {}
        self._outgoing: list[_Outgoing] = []
        self._outgoing_ready = trio.Event()
        self._shares: OrderedDict[str, pre.PreparedKeyShare] = OrderedDict()
        self._listeners: list[Callable[[Block, CommitResult], None]] = []
        self.height = self.ledger.height  # last block whose effects are fully processed

    # ------------------------------------------------------------ lifecycle

    async def run(self, node: bus.Node, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        ep = make_endpoint(node, self.peer_id, self.keys.ecdsa_private, self.directory)
        self.endpoint = ep
        for kind, handler in {
            "peer.enroll": self._enroll,
            "peer.submit": self._submit,
            "peer.query": self._query,
            "peer.audit": self._audit,
            "peer.deliver_share": self._deliver_share,
            "peer.reencrypt": self._reencrypt,
            "peer.blocks": self._blocks,
        }.items():
            ep.register(kind, handler)
        for agent, address in self.manifest.agents.items():
            if agent != self.peer_id:
                try:
                    node.add_route(agent, address)
                except bus.BusError:
                    pass  # e.g. a mem:// address on a node without that transport: the launcher routes it
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._forwarder)
                await nursery.start(self._sync)
                log.info("peer %s ready at height %d", self.peer_id, self.ledger.height)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await ep.aclose()
            self.store.close()

    def add_commit_listener(self, listener: Callable[[Block, CommitResult], None]) -> None:
        """Call ``listener(block, result)`` after each block commits (in-process observers, benches)."""
        self._listeners.append(listener)

    async def wait_for_height(self, height: int) -> None:
        """Return once block ``height`` is committed and its effects (directory, waiters) are done."""
        while self.height < height:
            await self._committed.wait()

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

    async def _commit_raw(self, raw: bytes) -> str:
        async with self._commit_lock:
            # the peer's own worker thread: blocks are applied one at a time anyway, and
            # waiting behind other agents' crypto in the shared pool only adds latency
            status, block, result = await trio.to_thread.run_sync(self._apply_persist, raw,
                                                                  limiter=self._apply_limiter)
            if status == "committed":
                assert block is not None and result is not None
                await self._after_commit(block, result)
            return status

    async def _after_commit(self, block: Block, result: CommitResult) -> None:
        events = []
        for key, value in result.writes.items():
            if value is None:
                continue
            state_key = parse_key(key)
            if state_key.kind == "cert":
                cert_entry = CertEntry.from_state(_own_state(value))
                subject = cert_entry.subject
                self.directory.set_certificate(subject, cert_entry.active_key)
                if cert_entry.revoked:
                    log.info("peer %s: certificate of %s revoked at block %d", self.peer_id, subject, block.height)
            elif state_key.kind == "audit":
                entry = _own_state(value)
                if entry.get("event") in EVENT_TYPES:
                    events.append((key, entry))
            elif state_key.kind == "grant":
                if GrantEntry.from_state(_own_state(value)).revoked:
                    self._shares.pop(state_key.parts[0], None)
        if self._waiters:
            for raw, mark in zip(block.txs, result.marks):
                waiter = self._waiters.pop(hashlib.sha256(raw).digest(), None)
                if waiter is not None:
                    waiter.height, waiter.mark = block.height, mark
                    waiter.event.set()
        self.height = block.height
        committed, self._committed = self._committed, trio.Event()
        committed.set()
        for listener in self._listeners:
            listener(block, result)
        if result.valid_count < len(result.marks):
            log.info("peer %s: block %d committed, %d of %d valid", self.peer_id, block.height,
                     result.valid_count, len(result.marks))
        assert self.endpoint is not None
        for key, entry in sorted(events):
            patient = parse_key(key).parts[0]
            event_type = entry["event"]
            doctor = entry.get("doctor", entry["actor"] if event_type == "access_request" else None)
            decision = entry.get("decision")
            if event_type == "access_request" and decision is not None:
                decision = {k: decision.get(k) for k in ("effect", "approval", "rule", "reason")}
            await self.endpoint.publish("events", {
                "height": block.height, "type": event_type, "patient": patient, "doctor": doctor,
                "request_id": entry.get("request_id"), "grant_id": entry.get("grant_id"), "decision": decision,
            })

    # ------------------------------------------------------------ sync

    async def _sync(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        assert self.endpoint is not None
        while True:
            sub = None
            try:
                sub = await self.endpoint.subscribe(self.orderer, "blocks", buffer=256, timeout=5.0)
            except bus.BusError as exc:
                log.warning("peer %s: cannot subscribe to %s's blocks: %s", self.peer_id, self.orderer, exc)
            await self._catch_up()
            if not started:
                task_status.started()
                started = True
            if sub is None:
                await trio.sleep(self.retry_interval)
                continue
            try:
                await self._follow(sub)
            except bus.BusError as exc:
                log.warning("peer %s: block subscription ended: %s", self.peer_id, exc)
            finally:
                await sub.aclose()
            await trio.sleep(self.retry_interval / 10)

    async def _follow(self, sub: bus.Subscription) -> None:
        """Commit published blocks until the subscription breaks or the orderer stops answering."""
        assert self.endpoint is not None
        while True:
            event = None
            with trio.move_on_after(self.sync_idle):
                try:
                    event = await sub.receive()
                except bus.SubscriptionLagged as exc:
                    log.info("peer %s: missed %d published blocks; catching up", self.peer_id, exc.missed)
                    await self._catch_up()
                    continue
            if event is None:
                head = await self.endpoint.request(self.orderer, "orderer.head", {}, timeout=5.0)
                if isinstance(head, dict) and type(head.get("height")) is int and head["height"] > self.ledger.height:
                    await self._catch_up()
                continue
            raw = event.body.get("block") if isinstance(event.body, dict) else None
            if not isinstance(raw, bytes):
                log.warning("peer %s: malformed block event from %s", self.peer_id, event.publisher)
                continue
            status = await self._commit_raw(raw)
            if status == "gap":
                await self._catch_up()
                await self._commit_raw(raw)

    async def _catch_up(self) -> None:
        """Fetch and commit missing blocks: from the orderer, else from the other peers."""
        assert self.endpoint is not None
        sources = [self.orderer] + [p for p in self.manifest.peers if p != self.peer_id]
        for source in sources:
            kind = "orderer.blocks" if source == self.orderer else "peer.blocks"
            ok = True
            while ok:
                start = self.ledger.height + 1
                try:
                    reply = await self.endpoint.request(source, kind, {"from": start, "limit": MAX_BLOCKS_PER_REPLY},
                                                        timeout=10.0)
                except bus.BusError as exc:
                    log.info("peer %s: catch-up from %s failed: %s", self.peer_id, source, exc)
                    ok = False
                    break
                blocks = reply.get("blocks") if isinstance(reply, dict) else None
                if not isinstance(blocks, list) or not all(isinstance(b, bytes) for b in blocks):
                    log.warning("peer %s: malformed blocks reply from %s", self.peer_id, source)
                    ok = False
                    break
                if not blocks:
                    break
                for raw in blocks:
                    if await self._commit_raw(raw) in ("bad", "gap"):
                        ok = False
                        break
                if self.ledger.height < start:
                    ok = False
            if ok and source == self.orderer:
                return  # the orderer has no more: we are at its head

    # ------------------------------------------------------------ submitting

    async def _forwarder(self) -> None:
        """Forward queued transactions to the orderer, coalescing concurrent submissions."""
        assert self.endpoint is not None
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
            txs = [raw for item in batch for raw in item.txs]
            error = None
            try:
                await self.endpoint.request(self.orderer, "orderer.submit", {"txs": txs}, timeout=10.0)
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
            raise bus.HandlerError("submit.unavailable", item.error)

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
                raise bus.HandlerError("submit.timeout", f"not committed within {self.submit_timeout} s")
            return [(tx_id, w.height, w.mark) for tx_id, w in zip(ids, waiters)]
        finally:
            for tx_id, waiter in zip(ids, waiters):
                if not waiter.event.is_set() and self._waiters.get(tx_id) is waiter:
                    del self._waiters[tx_id]

    # ------------------------------------------------------------ handlers

    async def _submit(self, msg: bus.Message) -> dict[str, Any]:
        body = msg.body
        if not isinstance(body, dict):
            raise _bad("body must be a map")
        batch = "txs" in body
        txs = body["txs"] if batch else [body.get("tx")]
        if not isinstance(txs, list) or not 0 < len(txs) <= MAX_TXS_PER_SUBMIT:
            raise _bad(f"txs must be a list of 1..{MAX_TXS_PER_SUBMIT} transactions")
        for raw in txs:
            if not isinstance(raw, bytes) or len(raw) > MAX_TX_SIZE:
                raise _bad(f"a transaction must be bytes of at most {MAX_TX_SIZE}")
        if sum(len(raw) for raw in txs) > MAX_SUBMIT_BYTES:
            raise _bad(f"a submit carries at most {MAX_SUBMIT_BYTES} bytes of transactions")
        for raw in txs:
            try:
                Transaction.from_bytes(raw)
            except DecodeError as exc:
                raise _bad(f"transaction does not decode: {exc}") from None
        wait = body.get("wait", False)
        if not isinstance(wait, bool):
            raise _bad("'wait' must be a boolean")
        results = await self.submit(txs, wait=wait)
        out = [{"tx_id": i, "height": h, "mark": m} if wait else {"tx_id": i} for i, h, m in results]
        return {"results": out} if batch else out[0]

    async def _enroll(self, msg: bus.Message) -> dict[str, Any]:
        if not msg.sender.startswith(ENROLL_PREFIX):
            raise bus.HandlerError("enroll.invalid", "enroll from your enrollment id (enroll:<hex ECDSA key>)")
        ecdsa_key = bytes.fromhex(msg.sender[len(ENROLL_PREFIX):])
        body = msg.body
        subject = _field(body, "subject", str)
        org = _field(body, "org", str)
        attributes = _field(body, "attributes", dict)
        box_key = _field(body, "box_key", bytes)
        pre_key = _field(body, "pre_key", bytes)
        pre_proof = _field(body, "pre_proof", bytes)
        valid_s = _field(body, "valid_s", int)
        token = _field(body, "token", bytes)
        if org != self.info.org:
            raise bus.HandlerError("enroll.denied", f"{self.peer_id} enrolls members of {self.info.org} only")
        if self._enroll_secret is None:
            raise bus.HandlerError("enroll.denied", f"{self.peer_id} does not enroll users")
        reserved = sorted(RESERVED_CERT_ATTRIBUTES.intersection(attributes))
        if reserved:
            raise bus.HandlerError("enroll.invalid", f"attribute names {reserved} are reserved: the certificate's "
                                                     "subject and organization set them")
        try:
            expected = enrollment_token(self._enroll_secret, subject, org, attributes)
        except ValueError:
            raise bus.HandlerError("enroll.invalid", "attributes have no canonical encoding") from None
        if not hmac.compare_digest(expected, token):
            log.info("peer %s: enrollment of %r denied (bad token)", self.peer_id, subject[:128])
            raise bus.HandlerError("enroll.denied", "the enrollment token does not match")
        if not 0 < valid_s <= MAX_VALID_S:
            raise bus.HandlerError("enroll.invalid", f"valid_s must be 1..{MAX_VALID_S}")
        if self.ledger.certificate(subject) is not None:
            raise bus.HandlerError("enroll.exists", f"{subject} is already registered")
        now = int(self._clock())
        try:
            cert = Certificate(secrets.token_hex(16), subject, org, attributes, ecdsa_key, box_key, pre_key,
                               pre_proof, max(0, now - 60), now + valid_s, self.peer_id)
            await run_crypto(pre.verify_public_key, pre.PublicKey.from_bytes(pre_key), subject,
                             pre.RECEIVE_LABEL, pre.Proof.from_bytes(pre_proof))
        except CoreError as exc:
            raise bus.HandlerError("enroll.invalid", str(exc)[:200]) from None
        cert = await run_crypto(cert.sign, self.keys.ecdsa_private)
        tx = await run_crypto(Transaction.create, "register", self.peer_id, {"cert": cert.to_dict()},
                              self.keys.ecdsa_private, int(self._clock() * 1000))
        [(_, height, mark)] = await self.submit([tx.to_bytes()], wait=True)
        if mark == "duplicate":
            raise bus.HandlerError("enroll.exists", f"{subject} is already registered")
        if mark != "ok":
            raise bus.HandlerError("enroll.invalid", f"the register transaction was marked {mark}")
        log.info("peer %s: enrolled %s (%s) at block %d", self.peer_id, subject, cert.role, height)
        return {"cert": cert.to_dict(), "height": height}

    async def _query(self, msg: bus.Message) -> Any:
        body = msg.body
        what = _field(body, "what", str)
        if msg.sender.startswith(ENROLL_PREFIX) and what not in ("cert", "head"):
            raise bus.HandlerError("forbidden", "register before querying the ledger")
        ledger = self.ledger
        if what == "head":
            height, block_hash, root = ledger.head()
            return {"height": height, "hash": block_hash, "root": root}
        if what in ENTRY_QUERIES:  # cert, record, request, grant, policy: one entry, as stored
            return ledger.get(entry_key(what, *(_id_field(body, name) for name in ENTRY_QUERIES[what])))
        if what == "records":
            patient = _id_field(body, "patient")
            label = _field(body, "label", str, optional=True)
            out = []
            for key, raw in self.store.scan(records_prefix(patient)):
                rec = RecordEntry.from_state(canonical.unpack(raw, max_size=1 << 22, what=key))
                if label is None or rec.label == label:
                    out.append({"record_id": parse_key(key).parts[1], "label": rec.label, "cid": rec.cid,
                                "size": rec.size, "media_type": rec.media_type, "height": rec.height})
            return out
        raise _bad(f"unknown query {what[:32]!r}")

    async def _audit(self, msg: bus.Message) -> dict[str, Any]:
        patient = _id_field(msg.body, "patient")
        if msg.sender != patient:
            raise bus.HandlerError("audit.forbidden", "only the patient reads its audit trail")
        return {"events": self.ledger.audit(patient)}

    async def _blocks(self, msg: bus.Message) -> dict[str, Any]:
        start = _field(msg.body, "from", int)
        limit = _field(msg.body, "limit", int)
        if not 0 <= start < 2**63 or limit < 1:
            raise _bad("'from' must be in [0, 2**63) and 'limit' >= 1")
        return {"blocks": await trio.to_thread.run_sync(self.store.blocks, start, min(limit, MAX_BLOCKS_PER_REPLY))}

    # -- key shares and re-encryption --------------------------------------------

    def _open_share(self, grant_id: str, index: int, sealed: bytes) -> pre.PreparedKeyShare:
        share = pre.open_key_share(pre.SealedKeyShare(index, sealed), self.keys.box_private,
                                   expected_context=share_context(grant_id), expected_index=self.info.index)
        return share.prepare()

    def _open_and_keep_share(self, grant_id: str, index: int, sealed: bytes) -> pre.PreparedKeyShare:
        """Worker thread: check that the sealed share opens, then keep it (still sealed) at rest."""
        prepared = self._open_share(grant_id, index, sealed)
        self.store.put_share(grant_id, index, sealed)
        return prepared

    def _cache_share(self, grant_id: str, prepared: pre.PreparedKeyShare) -> None:
        self._shares[grant_id] = prepared
        self._shares.move_to_end(grant_id)
        while len(self._shares) > SHARE_CACHE:
            self._shares.popitem(last=False)

    async def _deliver_share(self, msg: bus.Message) -> dict[str, Any]:
        grant_id = _id_field(msg.body, "grant_id")
        index = _field(msg.body, "index", int)
        sealed = _field(msg.body, "sealed", bytes)
        if len(sealed) > MAX_SEALED_SHARE:
            raise bus.HandlerError("share.mismatch", "sealed share too large")
        grant = self.ledger.grant(grant_id)
        with trio.move_on_after(GRANT_WAIT_S):
            while grant is None:
                await self._committed.wait()
                grant = self.ledger.grant(grant_id)
        if grant is None:
            raise bus.HandlerError("share.unknown_grant", f"grant {grant_id} not committed within {GRANT_WAIT_S:g} s")
        if grant.patient != msg.sender:
            raise bus.HandlerError("share.forbidden", "only the grantor delivers its shares")
        expected = grant.share_digest(self.peer_id)
        if expected is None or index != self.info.index:
            raise bus.HandlerError("share.mismatch", f"the grant holds no share for {self.peer_id} at index {index}")
        if not hmac.compare_digest(hashlib.sha256(sealed).digest(), expected):
            raise bus.HandlerError("share.mismatch", "sha256 of the sealed share differs from the grant's")
        try:
            prepared = await run_crypto(self._open_and_keep_share, grant_id, index, sealed)
        except CoreError:
            raise bus.HandlerError("share.mismatch", "the sealed share does not open for this grant and peer") from None
        self._cache_share(grant_id, prepared)
        log.info("peer %s: stored key share of grant %s", self.peer_id, grant_id)
        return {"ok": True}

    async def _prepared_share(self, grant_id: str) -> pre.PreparedKeyShare:
        prepared = self._shares.get(grant_id)
        if prepared is not None:
            self._shares.move_to_end(grant_id)
            return prepared
        row = await trio.to_thread.run_sync(self.store.share, grant_id)
        if row is None:
            raise bus.HandlerError("share.missing", f"{self.peer_id} holds no key share of grant {grant_id}")
        try:
            prepared = await run_crypto(self._open_share, grant_id, row[0], row[1])
        except CoreError:
            log.error("peer %s: stored key share of grant %s does not open", self.peer_id, grant_id)
            raise bus.HandlerError("share.missing", "the stored key share is unusable") from None
        self._cache_share(grant_id, prepared)
        return prepared

    async def _reencrypt(self, msg: bus.Message) -> dict[str, Any]:
        grant_id = _id_field(msg.body, "grant_id")
        patient = _id_field(msg.body, "patient")
        record_id = _id_field(msg.body, "record_id")
        request_id = _id_field(msg.body, "request_id")
        doctor = msg.sender
        try:
            grant, record = self.ledger.check_reencryption(grant_id, doctor, patient, record_id, int(self._clock()))
        except ValidationError as exc:
            log.info("peer %s: re-encryption of %s/%s for %s refused: %s", self.peer_id, patient, record_id,
                     doctor, exc.code)
            raise bus.HandlerError(f"access.{exc.code}", exc.message) from None
        if grant.request_id != request_id:
            raise bus.HandlerError("access.forbidden", "the request id is not the grant's")
        if grant.share_digest(self.peer_id) is None:
            raise bus.HandlerError("share.missing", f"grant {grant_id} has no share at {self.peer_id}")
        prepared = await self._prepared_share(grant_id)
        access = {"grant_id": grant_id, "request_id": request_id, "record_id": record_id, "doctor": doctor,
                  "index": self.info.index}
        # one worker job: the re-encryption, its signature and the access transaction
        share, signature, access_tx = await run_crypto(self._reencrypt_job, record.capsule, record.cid,
                                                       request_id, prepared, access)
        assert self._nursery is not None
        self._nursery.start_soon(self._log_access, access_tx, grant_id, doctor)
        return {"index": prepared.index, "share": share, "cid": record.cid, "signature": signature}

    def _reencrypt_job(self, capsule: bytes, cid: str, request_id: str, prepared: pre.PreparedKeyShare,
                       access: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
        """Worker thread: (share, its signature, the encoded ``access`` transaction)."""
        share = _reencrypt_capsule(capsule, prepared)
        signature = self.keys.sign(REENCRYPTION_TAG, canonical.pack([request_id, cid, prepared.index, share]))
        tx = Transaction.create("access", self.peer_id, access, self.keys.ecdsa_private, int(self._clock() * 1000))
        return share, signature, tx.to_bytes()

    async def _log_access(self, access_tx: bytes, grant_id: str, doctor: str) -> None:
        try:
            await self.forward([access_tx])
        except bus.HandlerError as exc:
            log.warning("peer %s: could not log access to %s for %s: %s", self.peer_id, grant_id, doctor, exc)


def _own_state(value: bytes) -> Any:
    """A state value our own Ledger.apply just wrote (canonical.pack output, in memory):
    decoded without the canonical re-encoding check, as core.ledger's overlay does."""
    return msgpack.unpackb(value, raw=False, strict_map_key=True)


def _reencrypt_capsule(capsule: bytes, prepared: pre.PreparedKeyShare) -> bytes:
    """s_i = e(U, rk_i), encoded (580 bytes: index, GT element)."""
    return pre.reencrypt(G1.from_bytes(capsule), prepared).to_bytes()
