"""The consortium peer agent: its lifecycle, and what happens when a block commits.

:class:`PeerAgent` is composed of three parts, each in its own module:

* :class:`~agents.peer._sync.BlockSync` keeps the peer's copy of the chain up
  with the orderer (following its ``blocks`` topic, catching up from the
  orderer or the other peers, applying and persisting each block);
* :class:`~agents.peer._forwarder.TxForwarder` forwards transactions to the
  orderer (coalescing concurrent submissions) and wakes the submissions
  waiting for their commits;
* :class:`~agents.peer._handlers.PeerHandlers` serves the ``peer.*`` kinds
  (typed by :mod:`core.protocol`; docs/protocol.md, "Consortium peer");
* :class:`~agents.peer._audit.AccessLog` collects the re-encryptions the
  handlers served and forwards them as signed ``access_batch`` transactions
  (flushed, within a second, when the peer stops).

The agent itself opens the endpoint, runs the parts, and after each committed
block updates the bus's key directory from the certificates written, wakes
submit waiters, drops the cached shares of revoked grants, calls commit
listeners and publishes topic ``events`` (:class:`core.protocol.PeerEvent`)
and, to each user subscribed to its own ``commits/<subject>``, a
:class:`core.protocol.CommitNotice` per transaction it submitted (height,
mark, the entries that show its effect, as the submitter needs them:
``CommitNotice.for_submitter``), whichever peer it was submitted to.

Admission: the agent classifies senders (:class:`agents.admission.Classifier`)
from the genesis, the manifest and its ledger's committed, unrevoked
certificates (``roles``); :func:`agents.handlers.serve` refuses classes a
kind does not admit, only peers may subscribe to ``events``, and a registered
user only to its own ``commits/<subject>``. Refusals are
counted in ``refusals``.

``python -m agents.peer serve ...`` runs one peer as its own process
(:mod:`agents.peer.__main__`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import msgpack
import trio

import bus
from core import canonical
from core.errors import DecodeError
from core.ledger import CONFIG_KEY, Block, CommitResult, Ledger, effect_key, parse_genesis
from core.protocol import COMMITS, EVENT_TYPES, CommitNotice, Decision, PeerEvent, commits_owner, commits_topic
from core.state import CertEntry, GrantEntry, certs_prefix, entry_key, nonce_key, parse_key
from core.tx import Transaction

from agents.admission import Classifier, Refusals
from agents.consortium import Manifest
from agents.handlers import serve
from agents.keys import AgentKeys
from agents.ledger_store import LedgerStore
from agents.peer._audit import WINDOW_S, AccessJournal, AccessLog
from agents.peer._forwarder import TxForwarder
from agents.peer._handlers import SHARE_CACHE, PeerHandlers
from agents.peer._sync import BlockSync
from agents.runtime import make_endpoint, run_crypto

__all__ = ["PeerAgent"]

log = logging.getLogger("agents.peer")
MAX_COMMIT_HINTS = 65536  # users remembered as commit subscribers (cleared beyond: a hint only)


class PeerAgent:
    def __init__(self, *, peer_id: str, keys: AgentKeys, genesis: bytes, data_dir: Path, manifest: Manifest,
                 enrolls: bool = True, clock: Callable[[], float] = time.time,
                 submit_timeout: float = 20.0, sync_idle: float = 5.0, retry_interval: float = 1.0,
                 audit_window: float = WINDOW_S, reply_cache: int = SHARE_CACHE):
        self.peer_id = peer_id
        self.keys = keys
        self.manifest = manifest
        self.enrolls = enrolls  # issues certificates to its organization's users (tokens: the registrar's key)
        self.clock = clock
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
        # etcd ordering: every node of the genesis's orderer set, the manifest's first
        self.orderers = [self.orderer]
        if self.config.orderers:
            ids = list(self.config.orderer_ids)
            self.orderers = [self.orderer, *(o for o in ids if o != self.orderer)] if self.orderer in ids else ids
            self.orderer = self.orderers[0]
        self.directory = manifest.directory()
        for node in self.config.orderers:  # the genesis vouches for the orderer set's keys
            self.directory.add_static(node.id, node.key)
        self.roles: dict[str, str] = {}  # subject -> role, for every committed, unrevoked certificate
        for key, raw in self.store.scan(certs_prefix()):
            entry = CertEntry.from_state(canonical.unpack(raw, what=key))
            if not entry.revoked:
                self.directory.set_certificate(entry.subject, entry.cert.ecdsa_key)
                self.roles[entry.subject] = entry.cert.role
        self.refusals = Refusals(peer_id)
        self.classifier = Classifier(peers=[p.id for p in self.config.peers], orderer=self.orderer,
                                     storage=manifest.storage, role=self.roles.get, orderers=self.orderers)
        self.endpoint: bus.Endpoint | None = None
        self._nursery: trio.Nursery | None = None
        self._committed = trio.Event()
        self._listeners: list[Callable[[Block, CommitResult], None]] = []
        self._commit_subscribers: set[str | None] = set()  # users that subscribed to commits/<them>
        self.height = self.ledger.height  # last block whose effects are fully processed
        self.stopping = False  # set when run() ends: the peer serves no more re-encryptions
        self.forwarder = TxForwarder(orderers=self.orderers, submit_timeout=submit_timeout)
        self.sync = BlockSync(peer_id=peer_id, ledger=self.ledger, store=self.store, orderers=self.orderers,
                              peers=list(manifest.peers), on_commit=self._after_commit, sync_idle=sync_idle,
                              retry_interval=retry_interval)
        self.handlers = PeerHandlers(self, reply_cache=reply_cache)
        # a batch must still be within the timestamp skew when its block is cut;
        # its signature is small crypto, made on the event loop (_run_audit_sign); what is
        # served is journaled first (opened and replayed by run(), after a crash too)
        self.audit = AccessLog(index=info.index, sign=self._sign_access_batch, forward=self._forward_audit, clock=clock,
                               window=audit_window, max_age=self.config.max_skew_ms / 2000,
                               run_sign=self._run_audit_sign)

    # ------------------------------------------------------------ lifecycle

    async def run(self, node: bus.Node, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        admit = self.classifier.subscriber_admitter(self.refusals)

        def admit_subscriber(sender: str, topic: str) -> bool:
            ok = admit(sender, topic)
            if ok and topic.startswith(COMMITS + "/"):
                # a hint of whom to build commit notices for (publish() finds the live ones)
                if len(self._commit_subscribers) >= MAX_COMMIT_HINTS:
                    self._commit_subscribers.clear()
                self._commit_subscribers.add(commits_owner(topic))
            return ok

        journal = self.audit.journal = AccessJournal(self.data_dir / "access-journal")
        self.audit.recover(self._batch_committed)  # before any share is served (and journaled)
        ep = make_endpoint(node, self.peer_id, self.keys.ecdsa_private, self.directory,
                           admit_subscriber=admit_subscriber)
        self.endpoint = ep
        serve(ep, self.handlers.table(), classifier=self.classifier, refusals=self.refusals,
              fast=self.handlers.fast_table())
        for agent, address in self.manifest.agents.items():
            if agent != self.peer_id:
                try:
                    node.add_route(agent, address)
                except bus.BusError:
                    pass  # e.g. a mem:// address on a node without that transport: the launcher routes it
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self.forwarder.run, ep)
                nursery.start_soon(self.audit.run)
                await nursery.start(self.sync.run, ep)
                log.info("peer %s ready at height %d", self.peer_id, self.ledger.height)
                task_status.started()
        finally:
            # from here no share is served (the flush below may already have taken the log's
            # entries, and the endpoint still answers until it closes): _handlers refuses, busy
            self.stopping = True
            with trio.CancelScope(shield=True):
                if self.audit.pending:
                    with trio.move_on_after(1.0):  # the re-encryptions served last
                        await self.audit.flush(lambda txs: self.forwarder.send_now(ep, txs))
                await ep.aclose()
            self.store.close()
            journal.close()

    @staticmethod
    async def _run_audit_sign(sign: Callable[[dict[str, Any], int], bytes], body: dict[str, Any],
                              timestamp_ms: int) -> bytes:
        """How the access log's batches are signed: as small crypto (:func:`agents.runtime.run_crypto`
        ``small=True``), inline on the native backend. One ECDSA signature and the encoding of at
        most :data:`core.ledger.MAX_ACCESS_ENTRIES` entries: ~0.05-0.15 ms of CPU, less than the
        worker-thread hop it replaces (py-spy --gil, ``loadtest --processes``, access only: the
        hop, ``start_thread_soon``, cost the peers ~4 % of their GIL time, about as much as the
        signing itself; under a read load served from the reply cache few re-encryption batches
        run for a signature to ride with)."""
        return await run_crypto(sign, body, timestamp_ms, small=True)

    def _batch_committed(self, raw: bytes) -> bool:
        """Whether the ledger committed this (journaled) ``access_batch``: its nonce is used
        (only a valid transaction records it). A batch that does not decode is not replayed."""
        try:
            tx = Transaction.from_bytes(raw)
        except (DecodeError, ValueError):
            return True
        return self.store.get(nonce_key(tx.submitter, tx.nonce)) is not None

    def _sign_access_batch(self, body: dict[str, Any], timestamp_ms: int) -> bytes:
        """The encoded ``access_batch`` transaction (:class:`AccessLog`'s signer; inline or in a
        worker thread, :meth:`_run_audit_sign`)."""
        return Transaction.create("access_batch", self.peer_id, body, self.keys.ecdsa_private, timestamp_ms).to_bytes()

    def spawn(self, async_fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``async_fn(*args)`` in the background while the peer runs."""
        assert self._nursery is not None
        self._nursery.start_soon(async_fn, *args)

    def add_commit_listener(self, listener: Callable[[Block, CommitResult], None]) -> None:
        """Call ``listener(block, result)`` after each block commits (in-process observers, benches)."""
        self._listeners.append(listener)

    async def wait_for_height(self, height: int) -> None:
        """Return once block ``height`` is committed and its effects (directory, waiters) are done."""
        while self.height < height:
            await self._committed.wait()

    async def wait_next_commit(self) -> None:
        """Return once the next block is committed and its effects are done."""
        await self._committed.wait()

    # ------------------------------------------------------------ submitting

    async def forward(self, txs: list[bytes]) -> None:
        """Queue encoded transactions for the orderer; return once it accepted them."""
        await self.forwarder.forward(txs)

    async def _forward_audit(self, txs: list[bytes]) -> None:
        """The access log's batches: ahead of the clients' queued submissions."""
        await self.forwarder.forward(txs, first=True)

    async def submit(self, txs: list[bytes], *, wait: bool) -> list[tuple[bytes, int, str]]:
        """Forward and (optionally) wait for the commits: [(tx_id, height, mark)]."""
        return await self.forwarder.submit(txs, wait=wait)

    # ------------------------------------------------------------ after a commit

    def _follow_config(self, height: int) -> None:
        """A ``config`` transaction committed: the peers it added are known on the bus and
        classified as peers from now on, the ones it removed are not (the ledger enforces
        the new configuration from the next block)."""
        old, new = {p.id for p in self.config.peers}, {p.id: p for p in self.ledger.config.peers}
        self.config = self.ledger.config
        for pid in old - set(new):
            self.directory.remove_static(pid)
        for pid, info in new.items():
            if pid not in old:
                self.directory.add_static(pid, info.ecdsa_key)
        self.classifier.set_peers(new)
        log.info("peer %s: configuration changed at block %d: organizations %s", self.peer_id, height,
                 ", ".join(o.id for o in self.config.orgs))

    async def _after_commit(self, block: Block, result: CommitResult) -> None:
        events = []
        # an audit entry's event is the type of the transaction that wrote it (an access_batch's
        # are "access"): a block with no transaction of an EVENT_TYPES type publishes no event, and
        # its audit entries (one per re-encryption served: most of a read load's writes) are not decoded
        eventful = len(result.txs) != len(block.txs) or any(
            tx is not None and tx.type in EVENT_TYPES for tx in result.txs)
        for key, value in result.writes.items():
            if value is None:
                continue
            kind = key.partition("/")[0]  # (the ledger's own keys: parsed only where an id is needed)
            if kind == "audit" and not eventful:
                continue
            if kind == "cert":
                cert_entry = CertEntry.from_state(_own_state(value))
                subject = cert_entry.subject
                self.directory.set_certificate(subject, cert_entry.active_key)
                if cert_entry.revoked or cert_entry.active_key is None:
                    self.roles.pop(subject, None)
                else:
                    self.roles[subject] = cert_entry.cert.role
                if cert_entry.revoked:
                    log.info("peer %s: certificate of %s revoked at block %d", self.peer_id, subject, block.height)
            elif kind == "audit":
                entry = _own_state(value)
                if entry.get("event") in EVENT_TYPES:
                    events.append((key, entry))
            elif kind == "grant":
                if GrantEntry.from_state(_own_state(value)).revoked:
                    self.handlers.forget_share(parse_key(key).parts[0])
        if CONFIG_KEY in result.writes:
            self._follow_config(block.height)
        self.forwarder.resolve(block, result)
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
            event = _event(block.height, parse_key(key).parts[0], entry)
            await self.endpoint.publish(PeerEvent.kind, event.to_wire())
        if self._commit_subscribers:
            await self._notify_commits(block, result)

    async def _notify_commits(self, block: Block, result: CommitResult) -> None:
        """Tell each subscribed submitter that its transaction committed, and what it wrote
        (topic ``commits/<submitter>``, :class:`core.protocol.CommitNotice`)."""
        assert self.endpoint is not None
        # the transactions and ids as Ledger.apply decoded and hashed them (decoded again only
        # for a result that does not carry them)
        decoded = result.txs if len(result.txs) == len(block.txs) else [_decode(raw) for raw in block.txs]
        tx_ids = result.tx_ids if len(result.tx_ids) == len(block.txs) else \
            [hashlib.sha256(raw).digest() for raw in block.txs]
        writes = result.writes

        def committed(key: str) -> Any:
            # the entry as the block left it: this block's own write (the bytes Ledger.apply
            # just packed, decoded without a store read or the canonical re-encoding check),
            # else the ledger's
            value = writes.get(key, _UNWRITTEN)
            if value is _UNWRITTEN:
                return self.ledger.get(key)
            return None if value is None else _own_state(value)

        for tx, tx_id, mark in zip(decoded, tx_ids, result.marks):
            if tx is None or tx.submitter not in self._commit_subscribers:
                continue
            effect: dict[str, Any] = {}
            key = None
            if mark == "ok":
                with contextlib.suppress(DecodeError):
                    key = effect_key(tx)
                    entry = committed(key) if key is not None else None
                    if entry is not None:
                        effect[key] = entry
                        grant_id = entry.get("grant_id") if tx.type == "access_request" else None
                        if isinstance(grant_id, str):  # granted by the ledger (standing delegation)
                            gkey = entry_key("grant", grant_id)
                            grant = committed(gkey)
                            if grant is not None:
                                effect[gkey] = grant
            # as its submitter needs it: the own entry under OWN_KEY (its type's view: NOTICE_VIEWS),
            # the fields its transaction's body holds echoed
            notice = CommitNotice(tx_id=tx_id, height=block.height, type=tx.type,
                                  mark=mark, effect=effect).for_submitter(tx.type, tx.body, key)
            await self.endpoint.publish(commits_topic(tx.submitter), notice.to_wire())


def _event(height: int, patient: str, entry: dict[str, Any]) -> PeerEvent:
    """Topic ``events``' payload for an audit entry of an :data:`~core.protocol.EVENT_TYPES` type."""
    event_type = entry["event"]
    doctor = entry.get("doctor", entry["actor"] if event_type == "access_request" else None)
    decision = entry.get("decision")
    if event_type == "access_request" and isinstance(decision, dict):
        decision = Decision(**{k: decision.get(k) for k in ("effect", "approval", "rule", "reason")})
    else:
        decision = None
    return PeerEvent(height=height, type=event_type, patient=patient, doctor=doctor,
                     request_id=entry.get("request_id"), grant_id=entry.get("grant_id"), decision=decision)


_UNWRITTEN = object()


def _decode(raw: bytes) -> Transaction | None:
    try:
        return Transaction.from_bytes(raw)
    except DecodeError:
        return None


def _own_state(value: bytes) -> Any:
    """A state value our own Ledger.apply just wrote (canonical.pack output, in memory):
    decoded without the canonical re-encoding check, as core.ledger's overlay does."""
    return msgpack.unpackb(value, raw=False, strict_map_key=True)
