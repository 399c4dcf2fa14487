"""What the patient and doctor agents share: configuration, keys, state, endpoints, ledger calls.

:class:`UserConfig` says who the user is and where its deployment is;
:class:`PeerClient` is how a user talks to the consortium's peers;
:class:`UserAgent` is the base of the two user agents (the client's views, the
storage client, identity calls).
:class:`agents.patient.PatientAgent` and :class:`agents.doctor.DoctorAgent`
each hold one (``agent.client``), made by :func:`open_agent`, which opens the
keys, the bus node (unless given one) and the agent's nursery. The client owns

* the keys (:class:`agents.runtime.AgentKeys`, generated on first open and kept
  encrypted in ``data_dir/keys.bin``) and small local state
  (``data_dir/state.msgpack``: certificate, record index, grants, grant cache),
  written atomically after every change so an agent reopened from its
  directory continues where it stopped;
* its bus endpoint (agent id = subject) and, while registering, a second one
  with the self-certifying id ``enroll:<hex key>`` (docs/protocol.md);
* its key directory: the manifest's static keys plus certificates learned from
  peers (``peer.query cert``, or the ``owner_cert`` a doctor's ``record`` query
  carries), each checked against its issuing peer's key from the genesis; the
  signatures it verified are remembered by their bytes (:attr:`PeerClient.verified`,
  :class:`agents.runtime.VerifiedMemo`), revocations are read fresh (a counterpart's
  certificate a peer showed less than :attr:`PeerClient.cert_fresh_s` ago is used as
  held). An envelope from a user it does not know yet makes it look the certificate
  up in the background, so the sender's retry gets through;
* peer selection (the configured peer, else the first of its organization;
  reads fail over to the other peers), submit-and-wait, queries (with
  read-your-writes across peers) and registration;
* commit notices: once registered it subscribes to its own topic
  ``commits/<subject>`` at one peer (healthy first). A submit hands the bytes
  over (``wait`` false) and learns the commit, its height and its effect from
  the notice (:class:`core.protocol.CommitNotice`: for an ``access_request`` or
  a ``grant`` its own entry is the submitter's view, ``core.protocol.NOTICE_VIEWS``,
  and the submit's answer says ``projected``; a query reads the whole entry); reads that must see a
  write name its height (``PeerQuery.min_height``), so no loop polls for a
  commit. When the notice does not come within :attr:`PeerClient.notice_wait`
  (or the subscription lags or breaks) the same bytes go once more to the same
  peer with ``wait`` (the fallback), and the next submit subscribes afresh.
  ``commit_stats`` counts notices, fallbacks and polls;
* peer health (:class:`agents.health.AgentHealth`, shared by the agents on one
  bus node): a peer that timed out or could not be reached is tried last for
  ``cooldown`` seconds (then probed by one request), for queries, submits,
  share deliveries and re-encryption requests.

Submitting safely through another peer: a transaction is signed once and the
SAME bytes are re-sent when the first peer did not answer (timeout, broken
connection, ``submit.timeout``). The ledger keeps at most one copy: a second
copy is marked ``replayed_nonce`` (its nonce is already used; a nonce is only
recorded for a valid transaction) or, in the same block, ``duplicate_in_block``.
After a failover such a mark therefore means "the first copy committed": it is
confirmed by reading the entry that shows the transaction's effect
(:func:`core.ledger.effect_key` and :func:`core.ledger.shows_effect`: the record,
request, grant, ... carrying this transaction's data) and reported as success.
The policy is :class:`agents.plans.SubmitFailover`, run by :mod:`agents.driver`.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, TypeVar

import msgpack
import trio

import bus
from core import pre
from core.errors import DecodeError
from core.identity import Certificate, ConsortiumConfig
from core.ledger import effect_key, parse_genesis, shows_effect
from core.state import CertEntry, entry_query
from core.protocol import (
    NOTICE_TX_ID, CommitNotice, PeerEnroll, PeerEnrollReply, PeerQuery, PeerQueryReply, PeerSubmit, PeerSubmitReply,
    codes, commits_topic,
)
from core.tx import Transaction

from agents.driver import result_of, run_plan
from agents.health import AgentHealth
from agents.errors import (
    AgentError,
    CertificateRevoked,
    EnrollmentExists,
    EnrollmentInvalid,
    IntegrityError,
    NotRegistered,
    RegistrationError,
    TransactionRejected,
    Unavailable,
    UnknownAgent,
    from_remote,
)
from agents.consortium import ENROLL_PREFIX, ConsortiumDirectory, Manifest, enroll_id
from agents.keys import AgentKeys, KeyStore, atomic_write
from agents.plans import COPY_MARKS, Answer, Confirm, Done, SubmitFailover
from agents.runtime import VerifiedMemo, make_endpoint, run_crypto
from agents.storage import StorageClient

__all__ = ["UserConfig", "PeerClient", "UserAgent", "open_agent", "new_id", "CERT_VALIDITY_S", "CERT_FRESH_S",
           "SUSPECT_TIMEOUT"]

log = logging.getLogger("agents.user")

CERT_VALIDITY_S = 365 * 86400
STATE_FILE = "state.msgpack"
KEY_FILE = "keys.bin"
_LOOKUP_INTERVAL = 2.0  # seconds between background certificate look-ups of one unknown id
_MAX_LOOKUPS = 16  # background look-ups in flight
_MAX_CERT_ENTRIES = 4096  # certificate entries remembered as accepted (PeerClient.accept_cert_entry)
_STORAGE_RETRIES = 7
_HEAD_TIMEOUT = 2.0  # a peer that cannot say its height within this (plus its own wait) is not waited for
_PEER_WAIT = 2.0  # how long a peer waits for a query's min_height (agents.peer QUERY_WAIT_S)
SUSPECT_TIMEOUT = 2.0  # request timeout for a peer that failed lately (asked only as a last resort)
RESUBSCRIBE_S = 5.0  # after a failed or broken commit subscription, submits wait on the peer this long
COMMIT_BUFFER = 64  # commit notices buffered for the reader task
CERT_FRESH_S = 60.0
"""How old a doctor's certificate, as a peer last showed it, a patient answering that
doctor's request may use without reading it again (docs/security.md: the peers read it
fresh at every re-encryption, so a revocation stops the doctor there at once)."""
A = TypeVar("A")


@dataclass
class UserConfig:
    """Who a user agent is and where its deployment is.

    ``attributes`` go on the certificate (``role`` is required: ``"patient"``,
    ``"doctor"``, ``"nurse"``, ...). ``data_dir`` holds the encrypted keys and
    the local state. Give exactly one of ``passphrase`` or ``key_file`` (a
    32-byte file, see :meth:`agents.runtime.KeyStore.create_key_file`);
    ``fast_kdf`` makes the passphrase KDF cheap (tests only). ``peer`` is the
    preferred peer (default: the first of ``org``'s). ``listen`` is the bus
    address this agent accepts connections on when it opens its own node
    (patients: so doctors can reach them, e.g. ``"tcp://127.0.0.1:0"``).
    ``routes`` adds bus routes (agent id -> address) beyond the manifest's,
    e.g. where a patient listens, for a doctor that opens its own node.
    """

    subject: str
    org: str
    attributes: dict
    data_dir: Path
    manifest: Manifest
    passphrase: str | None = None
    key_file: Path | None = None
    fast_kdf: bool = False
    peer: str | None = None
    listen: str | None = None
    request_timeout: float = 30.0
    routes: dict = field(default_factory=dict)


def new_id(prefix: str) -> str:
    """A fresh object id: ``prefix`` then 96 random bits in 16 characters (base 64 over
    ``[A-Za-z0-9.-]``, inside core.identity's id alphabet): request, grant and delegation
    ids travel in most messages of an access, so they are kept short."""
    return prefix + base64.b64encode(secrets.token_bytes(12), altchars=b".-").decode()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _unknown_sender(exc: BaseException) -> bool:
    """True if every node behind ``exc`` refused us as an unknown sender."""
    causes = getattr(exc, "causes", None)
    if causes:
        return all(_unknown_sender(c) for c in causes.values())
    code = getattr(exc, "code", None)
    return isinstance(code, str) and isinstance(from_remote(code, ""), UnknownAgent)


def remote_error(exc: bus.RemoteError, what: str) -> AgentError:
    """The typed AgentError for a peer's (or patient's) error reply (:func:`agents.errors.from_remote`)."""
    error = from_remote(exc.code, f"{what}: {exc.peer or 'peer'} answered [{exc.code}] {exc.message}")
    if isinstance(error, UnknownAgent):
        return UnknownAgent(f"{what}: {exc.peer or 'the peer'} does not know this agent "
                            "(not registered, or its certificate was revoked)")
    return error


class PeerClient:
    """A user's side of the consortium (see the module docstring): the patient and
    doctor agents each hold one. Made by :func:`open_agent`; do not construct directly.

    ``nursery`` is the agent's, for background work (certificate look-ups,
    probes, the patient's late share deliveries, storage stragglers);
    ``address`` is where the agent's own bus node listens (None when it has none).
    """

    def __init__(self, config: UserConfig, keys: AgentKeys, node: bus.Node, nursery: trio.Nursery):
        self.config = config
        self.subject = config.subject
        self.manifest = config.manifest
        self.keys = keys
        self.node = node
        self.nursery = nursery
        self.consortium: ConsortiumConfig = parse_genesis(config.manifest.genesis).config
        self.peer_info = {p.id: p for p in self.consortium.peers}
        self._directory: ConsortiumDirectory = config.manifest.directory()
        self._lookups: dict[str, float] = {}
        self._lookups_running = 0
        self._certs: dict[str, Certificate] = {}  # verified, not revoked, as of last look-up
        self._cert_at: dict[str, float] = {}  # subject -> when a peer last showed its certificate (trio time)
        # subject -> (the unrevoked certificate entry last accepted, its certificate): an equal
        # entry next time is accepted without parsing or checking it again
        self._cert_entries: dict[str, tuple[Any, Certificate]] = {}
        self.cert_fresh_s = CERT_FRESH_S
        """How old a certificate a peer showed may be when this agent checks a counterpart
        with it (the patient: the requesting doctor's; the doctor: the record owner's);
        0: read it on every use."""
        self.verified = VerifiedMemo()
        """Signatures already verified (certificates, store transactions, re-encryption
        replies): :class:`agents.runtime.VerifiedMemo`."""
        self._state_lock = trio.Lock()
        self._state_dirty = False  # changed since the background saver last saved (save_state_soon)
        self._state_saving = False
        self.state: dict[str, Any] = {"cert": None}
        self.address: str | None = None
        self.endpoint: bus.Endpoint = make_endpoint(node, self.subject, keys.ecdsa_private, self._lookup_key)
        self.health: AgentHealth = AgentHealth.for_node(node)
        # commit notices (topic commits/<subject> at one peer; see "Commit notices" below)
        self._commit_sub: bus.Subscription | None = None
        self._commit_waiters: dict[bytes, _CommitWaiter] = {}
        self._commit_retry_at = -math.inf
        self._commit_lock = trio.Lock()
        self.commit_stats: dict[str, int] = {"notices": 0, "fallbacks": 0, "polls": 0}
        """``notices``: commits learned from a notice; ``fallbacks``: submits whose notice
        did not come in time (the same bytes re-sent, waiting on the peer); ``polls``:
        queries repeated because a commit was not visible yet (:meth:`query_committed`,
        :meth:`wait_for_peers`), also by ``what`` (``"polls record"``, ...)."""

    async def aclose(self) -> None:
        if self._commit_sub is not None:
            with contextlib.suppress(bus.BusError):
                await self._commit_sub.aclose()
        await self.endpoint.aclose()

    # ------------------------------------------------------------ state

    @property
    def data_dir(self) -> Path:
        return Path(self.config.data_dir)

    async def _load_state(self) -> None:
        path = self.data_dir / STATE_FILE

        def load() -> dict | None:
            try:
                return msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=False)
            except FileNotFoundError:
                return None

        loaded = await trio.to_thread.run_sync(load)
        if loaded is not None:
            if not isinstance(loaded, dict) or loaded.get("subject") != self.subject:
                raise AgentError(f"{path} holds the state of another subject or is corrupt")
            self.state.update(loaded)
        self.state["subject"] = self.subject

    async def save_state(self) -> None:
        """Persist the local state (atomically; serialized so the newest wins)."""
        async with self._state_lock:
            data = msgpack.packb(self.state, use_bin_type=True)
            await trio.to_thread.run_sync(atomic_write, self.data_dir / STATE_FILE, data)

    def save_state_soon(self) -> None:
        """Save the local state off the caller's path: a background saver writes it (encode,
        write, fsync) while the agent keeps changing it, so changes made meanwhile share
        one save; :meth:`flush_state` (the agent closing) saves what it has not. For
        state the ledger also holds (a patient's records and grants, a doctor's held
        grants): a crash before the save loses the local note, not the ledger's entry."""
        self._state_dirty = True
        if not self._state_saving:
            self._state_saving = True
            self.nursery.start_soon(self._state_saver)

    async def _state_saver(self) -> None:
        try:
            while self._state_dirty:
                self._state_dirty = False
                try:
                    await self.save_state()
                except OSError as exc:  # the ledger holds it: the next change or the close tries again
                    self._state_dirty = True
                    log.warning("%s: saving the local state failed: %s", self.subject, exc)
                    return
        finally:
            self._state_saving = False

    async def flush_state(self) -> None:
        """Save what :meth:`save_state_soon` has not saved yet (the agent is closing)."""
        if self._state_dirty or self._state_saving:
            self._state_dirty = False
            try:
                await self.save_state()
            except OSError as exc:
                log.warning("%s: saving the local state at close failed: %s", self.subject, exc)

    @property
    def certificate(self) -> Certificate | None:
        """This agent's certificate once registered."""
        raw = self.state.get("cert")
        return None if raw is None else Certificate.from_dict(raw)

    @property
    def registered(self) -> bool:
        return self.state.get("cert") is not None

    @property
    def enroll_id(self) -> str:
        """The bus id this agent enrolls from (``enroll:<hex ECDSA key>``): its registrar
        binds the enrollment token to it (:func:`agents.enrollment_token`)."""
        return enroll_id(self.keys.ecdsa_public)

    def require_registered(self) -> None:
        if not self.registered:
            raise NotRegistered(f"{self.subject} is not registered yet: call register(token) first")

    # ------------------------------------------------------------ directory

    def _lookup_key(self, agent: str) -> bytes | None:
        """The bus directory: known keys, else look the certificate up in the background."""
        key = self._directory(agent)
        if key is not None or agent.startswith(ENROLL_PREFIX) or agent in self.peer_info:
            return key
        now = trio.current_time()
        if now - self._lookups.get(agent, -1e9) >= _LOOKUP_INTERVAL and self._lookups_running < _MAX_LOOKUPS:
            if len(self._lookups) > 4096:
                self._lookups.clear()
            self._lookups[agent] = now
            self._lookups_running += 1
            self.nursery.start_soon(self._background_lookup, agent)
        return None

    async def _background_lookup(self, agent: str) -> None:
        try:
            await self.lookup_certificate(agent)
        except Exception as exc:  # a bad answer must not take the agent down
            log.info("%s: certificate look-up of %r failed: %s", self.subject, agent, exc)
        finally:
            self._lookups_running -= 1

    async def lookup_certificate(self, subject: str, *, fresh: bool = True,
                                 max_age: float | None = None) -> Certificate | None:
        """The committed, non-revoked certificate of ``subject`` (None if absent or revoked).

        The certificate is checked against its issuing peer's key from the
        genesis; a good one is added to the bus directory, a revoked one removed.
        ``fresh`` False: the one accepted last, if any, however old; ``max_age``:
        the one accepted last if a peer showed it at most that many seconds ago
        (:data:`CERT_FRESH_S` for a patient answering a doctor), else read again.
        """
        if not fresh and subject in self._certs:
            return self._certs[subject]
        recent = None if max_age is None else self.recent_certificate(subject, max_age)
        if recent is not None:
            return recent
        return self.accept_cert_entry(await self.query(PeerQuery("cert", subject=subject)), subject)

    def recent_certificate(self, subject: str, max_age: float) -> Certificate | None:
        """The certificate of ``subject`` accepted last, if a peer showed it (unrevoked) at
        most ``max_age`` seconds ago; else None (no I/O)."""
        cert = self._certs.get(subject)
        if cert is None or trio.current_time() - self._cert_at.get(subject, -math.inf) > max_age:
            return None
        return cert

    def accept_cert_entry(self, value: Any, subject: str) -> Certificate | None:
        """The certificate of ``subject`` from its committed entry ``value`` (a ``peer.query
        cert`` answer, or the ``owner_cert`` of a ``record`` answer): None if absent or
        revoked (then dropped from the bus directory), else checked against its issuing
        peer's key from the genesis (:meth:`_check_certificate`, memoized) and added to
        the directory; an entry equal to the one accepted last for ``subject`` is taken
        as it was (same bytes, same outcome; a revocation changes the entry).
        IntegrityError for a malformed entry, a certificate of another subject or a bad
        signature."""
        seen = self._cert_entries.get(subject)
        if seen is not None and seen[0] == value:  # the very entry accepted last time: same outcome
            cert = seen[1]
        else:
            entry = _cert_entry(value, subject)
            if entry is None or entry.revoked:
                self._directory.set_certificate(subject, None)
                self._certs.pop(subject, None)
                self._cert_at.pop(subject, None)
                self._cert_entries.pop(subject, None)
                return None
            cert = self._check_certificate(entry.cert, subject)
            if len(self._cert_entries) >= _MAX_CERT_ENTRIES:
                self._cert_entries.clear()
            self._cert_entries[subject] = (value, cert)
        self._directory.set_certificate(subject, cert.ecdsa_key)
        self._certs[subject] = cert
        self._cert_at[subject] = trio.current_time()
        return cert

    def _check_certificate(self, raw: Any, subject: str) -> Certificate:
        """A certificate (or its map) of ``subject``, checked against its issuing peer's key."""
        try:
            cert = raw if isinstance(raw, Certificate) else Certificate.from_dict(raw)
        except DecodeError as exc:
            raise IntegrityError(f"certificate of {subject} is malformed: {exc}") from exc
        issuer = self.peer_info.get(cert.issuer)
        if cert.subject != subject or issuer is None or issuer.org != cert.org:
            raise IntegrityError(f"certificate of {subject} names the wrong subject or issuer")
        # the issuer's signature depends on these bytes and the key alone: verified once
        signed = cert.signed_bytes() + bytes(cert.signature or b"")
        if not self.verified.valid("cert", issuer.ecdsa_key, signed,
                                   lambda: cert.is_valid_signature(issuer.ecdsa_key)):
            raise IntegrityError(f"certificate {cert.serial} of {subject} is not signed by {cert.issuer}")
        return cert

    # ------------------------------------------------------------ peers

    @property
    def home_peer(self) -> str:
        if self.config.peer:
            return self.config.peer
        org_peers = self.manifest.peer_orgs.get(self.config.org) or []
        if org_peers:
            return org_peers[0]
        return self.manifest.peers[0]

    def peer_order(self) -> list[str]:
        """The home peer first, then the others (same organization first)."""
        home = self.home_peer
        same = [p for p in self.manifest.peer_orgs.get(self.config.org, []) if p != home]
        rest = [p for p in self.manifest.peers if p != home and p not in same]
        return [home] + same + rest

    @property
    def commit_wait(self) -> float:
        """How long to poll for an entry another agent says it committed (read-your-writes
        across peers): half the request timeout, between 2 and 5 s."""
        return min(5.0, max(2.0, self.config.request_timeout / 2))

    def peers_by_health(self) -> list[str]:
        """:meth:`peer_order`, peers that failed lately last (see :class:`AgentHealth`)."""
        return self.health.order(self.peer_order(), self.probe_peer)

    def probe_peer(self, peer: str) -> None:
        """Find out in the background whether a peer that failed lately is back."""
        try:
            self.nursery.start_soon(self._probe, peer)
        except RuntimeError:  # closing: the probe window lapses and someone else probes
            pass

    async def _probe(self, peer: str) -> None:
        with contextlib.suppress(bus.BusError):
            await self.peer_request(peer, PeerQuery.kind, PeerQuery("head").to_wire(), timeout=SUSPECT_TIMEOUT)

    async def peer_request(self, peer: str, kind: str, body: dict, *, timeout: float | None = None) -> Any:
        """``endpoint.request`` to a server agent, noting in :attr:`health` whether it answered
        (an error reply counts as an answer; a timeout or a transport failure does not)."""
        timeout = self.config.request_timeout if timeout is None else timeout
        try:
            reply = await self.endpoint.request(peer, kind, body, timeout=timeout)
        except bus.RemoteError:
            self.health.success(peer)
            raise
        except bus.DeliveryError:
            self.health.failure(peer)
            raise
        self.health.success(peer)
        return reply

    async def call_peer(self, kind: str, body: dict, *, timeout: float | None = None,
                        failover: bool = True) -> Any:
        """Request ``kind`` from the home peer (healthy peers first); on a timeout or
        transport failure (and ``failover``) from the next.

        Raises :class:`bus.RemoteError` as the peer answered, :class:`Unavailable`
        when no peer answered.
        """
        errors: dict[str, str] = {}
        timeout = self.config.request_timeout if timeout is None else timeout
        use, avoid = self.health.split(self.peer_order(), self.probe_peer) if failover else ([self.home_peer], [])
        # a peer that failed lately gets a short leash when it is the last resort after
        # healthy ones (not when every peer failed lately: then all may just be busy)
        leash = min(timeout, SUSPECT_TIMEOUT) if use else timeout
        for peer in use + avoid:
            try:
                return await self.peer_request(peer, kind, body, timeout=leash if peer in avoid else timeout)
            except bus.RequestTimeout as exc:
                errors[peer] = f"timeout: {exc}"
            except bus.DeliveryError as exc:  # unreachable, broken, closed (a timeout is caught above)
                errors[peer] = f"{type(exc).__name__}: {exc}"
        raise Unavailable(f"no peer answered {kind}: " + "; ".join(f"{p}: {e}" for p, e in errors.items()))

    async def explain_unknown(self, exc: AgentError) -> AgentError:
        """Turn a peer's "unknown sender" into CertificateRevoked when that is the reason.

        Peers drop revoked certificates from their key directory, so a revoked
        agent only hears "unknown sender"; it asks (from its self-certifying
        enrollment id, which peers accept for certificate queries) whether its
        own certificate is revoked.
        """
        if not isinstance(exc, UnknownAgent):
            return exc
        ep = make_endpoint(self.node, enroll_id(self.keys.ecdsa_public), self.keys.ecdsa_private, self._lookup_key)
        try:
            entry = await ep.request(self.home_peer, PeerQuery.kind, PeerQuery("cert", subject=self.subject).to_wire(),
                                     timeout=self.config.request_timeout)
        except bus.BusError:
            return exc
        finally:
            await ep.aclose()
        try:
            cert_entry = _cert_entry(entry, self.subject)
        except AgentError:
            return exc
        if cert_entry is not None and cert_entry.revoked:
            return CertificateRevoked(f"the certificate of {self.subject} is revoked: "
                                      f"{cert_entry.revoke_reason or 'no reason given'}")
        return exc

    async def query(self, query: PeerQuery, *, held_tx: bytes | None = None) -> Any:
        """``peer.query`` (see docs/protocol.md), failing over between peers: the entry (or nil).
        ``held_tx``: the store transaction whose id ``query.held`` names (put back into an
        answer that leaves it out: ``PeerQueryReply.HELD``).

        With ``query.min_height`` (the height of a commit notice) the answer comes from
        a peer that has applied that block: a peer below it waits for it a bounded
        time (``QUERY_WAIT_S`` at the peer), then answers ``query.behind`` and the next
        peer is asked, healthy ones first (read-your-writes without polling); so is the
        next when a peer's waiting slots are full (``busy``)."""
        if query.min_height is None:
            try:
                return _query_value(await self.call_peer(PeerQuery.kind, query.to_wire()), held_tx, query.view)
            except bus.RemoteError as exc:
                raise remote_error(exc, f"query {query.what}") from None
        behind: bus.RemoteError | None = None
        for peer in self.peers_by_health():
            try:
                return _query_value(await self.peer_request(peer, PeerQuery.kind, query.to_wire()), held_tx,
                                    query.view)
            except bus.RemoteError as exc:
                # busy: its waiting slots for us are taken (a doctor naming far heights to us can fill them)
                if exc.code != codes.QUERY_BEHIND and exc.code != codes.BUSY:
                    raise remote_error(exc, f"query {query.what}") from None
                behind = exc
            except bus.DeliveryError:
                continue
        if behind is not None:
            raise Unavailable(f"query {query.what}: no peer reached height {query.min_height} in time "
                              f"({behind.message}); try again")
        raise Unavailable(f"query {query.what}: no peer answered")

    async def query_committed(self, query: PeerQuery, *, wait: float = 2.0, held_tx: bytes | None = None) -> Any:
        """Like :meth:`query`, for an entry another agent just committed through another
        peer: peers apply blocks independently, so when the first peer asked has
        nothing yet, ask the others (committed state is final: whichever peer has
        applied the block answers the same) and poll briefly until one has it;
        return None if none has after ``wait`` seconds."""
        delay = 0.02
        deadline = trio.current_time() + wait
        first = True
        while True:
            if not first:
                self._count_poll(query.what)
            entry = (await self.query(query, held_tx=held_tx) if first
                     else await self._query_any(query, deadline, held_tx))
            if entry is not None or trio.current_time() >= deadline:
                return entry
            if not first:
                await trio.sleep(min(delay, max(0.0, deadline - trio.current_time())))
                delay = min(delay * 2, 0.25)
            first = False

    def _count_poll(self, what: str) -> None:
        """Count a query repeated because a commit was not visible yet (``polls`` and ``polls <what>``)."""
        self.commit_stats["polls"] += 1
        key = f"polls {what}"
        self.commit_stats[key] = self.commit_stats.get(key, 0) + 1

    async def _query_any(self, query: PeerQuery, deadline: float, held_tx: bytes | None = None) -> Any:
        """Ask every usable peer in parallel; the first non-None answer (else None)."""
        found: list[Any] = []
        refused: list[bus.RemoteError] = []
        use, _ = self.health.split(self.peer_order(), self.probe_peer)
        timeout = max(0.05, min(self.config.request_timeout, deadline - trio.current_time()))

        async def ask(peer: str, done: trio.CancelScope) -> None:
            try:
                entry = _query_value(await self.peer_request(peer, PeerQuery.kind, query.to_wire(), timeout=timeout),
                                     held_tx, query.view)
            except bus.RemoteError as exc:
                refused.append(exc)
                return
            except (bus.DeliveryError, IntegrityError):  # no (usable) answer
                return
            if entry is not None:
                found.append(entry)
                done.cancel()

        async with trio.open_nursery() as nursery:
            for peer in use or self.peer_order():
                nursery.start_soon(ask, peer, nursery.cancel_scope)
        if found:
            return found[0]
        # a peer a block behind on our own certificate says unknown-sender: not final
        final = [exc for exc in refused if not _unknown_sender(exc)]
        if final:
            raise remote_error(final[0], f"query {query.what}")
        return None

    async def wait_for_peers(self, height: int, *, timeout: float = 5.0) -> list[str]:
        """Wait (at most ``timeout`` s) until every reachable peer has applied block
        ``height``; return the peers that did. Each peer is asked once for its head
        with ``min_height`` (it answers when it has the block). Peers that failed
        lately, or that do not answer within a few seconds (stalled), are not
        waited for."""
        done: list[str] = []
        use, _ = self.health.split(self.manifest.peers, self.probe_peer)

        async def follow(peer: str) -> None:
            # one request per peer: it answers once it applied the block (it waits up to
            # QUERY_WAIT_S for it; asked again after query.behind, which counts as a poll)
            first = True
            while True:
                if not first:
                    self._count_poll("head")
                first = False
                try:
                    head = await self.peer_request(peer, PeerQuery.kind,
                                                   PeerQuery("head", min_height=height).to_wire(),
                                                   timeout=min(timeout, _HEAD_TIMEOUT + _PEER_WAIT))
                except bus.RemoteError as exc:
                    if exc.code == codes.QUERY_BEHIND:
                        continue
                    return
                except bus.BusError:
                    return
                if isinstance(head, dict) and isinstance(head.get("height"), int) and head["height"] >= height:
                    done.append(peer)
                return

        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                for peer in use:
                    nursery.start_soon(follow, peer)
        return done

    async def submit(self, tx_type: str, body: dict) -> dict:
        """Sign and submit a transaction, wait for its block; return ``{tx_id, height, mark}``,
        with ``effect`` (state key -> entry) when a commit notice told it, and
        ``projected: True`` when that effect's own entry is the submitter's view
        (:data:`core.protocol.NOTICE_VIEWS`; a query reads the whole entry).

        Raises :class:`TransactionRejected` when the ledger marks it invalid.
        Peers are tried healthy first; when one does not answer (timeout, broken
        connection, ``submit.timeout``, ``submit.unavailable``) the same bytes go
        to the next (see the module docstring: the ledger commits one copy).
        A copy marked ``replayed_nonce``/``duplicate_in_block`` after such a
        failover is checked against the ledger and returned as ``ok`` (with
        ``"resubmitted": True``). :class:`Unavailable` when no peer took it
        within about twice ``request_timeout``.
        """
        tx = Transaction.create(tx_type, self.subject, body, self.keys.ecdsa_private, _now_ms())
        raw = tx.to_bytes()
        notified = await self._commit_notices()

        async def wait_on_peer(peer: str, timeout: float) -> Any:
            result = await result_of(self.peer_request(peer, PeerSubmit.kind, PeerSubmit((raw,), wait=True).to_wire(),
                                                       timeout=timeout))
            if isinstance(result, Answer):
                try:  # the plan reads the one result's map ({tx_id, height, mark})
                    got = PeerSubmitReply.from_wire(result.value).results[0]
                except DecodeError as exc:
                    return Answer({"malformed": str(exc)})  # no mark: the plan gives up as malformed
                # (tx_id and height are optional on the wire, for peer.submit without wait; with wait
                # a peer must name this transaction, and its block when it committed)
                if got.tx_id != tx.tx_id or got.mark is None or (got.mark == "ok" and got.height is None):
                    return Answer({"malformed": "the reply names another transaction, or no block"})
                return Answer(got.to_wire())
            return result

        async def perform(action: Any) -> Any:
            if isinstance(action, Confirm):
                return Answer(await self._committed_earlier(tx, action.peer))
            if waiter is None or (self._commit_sub is None and waiter.notice is None):
                return await wait_on_peer(action.peer, action.timeout)
            return await self._submit_notified(tx, raw, action.peer, action.timeout, waiter, wait_on_peer)

        plan = SubmitFailover(self.peers_by_health(), timeout=self.config.request_timeout)
        waiter = _CommitWaiter() if notified else None
        if waiter is not None:
            self._commit_waiters[tx.tx_id[:NOTICE_TX_ID]] = waiter  # a notice names it by that much
            waiter.tx_id = tx.tx_id
        try:
            outcome = await run_plan(plan, perform)
        finally:
            if waiter is not None and self._commit_waiters.get(tx.tx_id[:NOTICE_TX_ID]) is waiter:
                del self._commit_waiters[tx.tx_id[:NOTICE_TX_ID]]
        if isinstance(outcome, Done):
            if outcome.value.get("resubmitted"):
                log.info("%s: %s committed through an unresponsive peer; the re-sent copy was marked %s",
                         self.subject, tx_type, plan.copy_mark)
            return outcome.value
        if outcome.reason == "refused":
            raise remote_error(outcome.detail.cause, f"{tx_type} transaction") from None
        if outcome.reason == "malformed":
            raise IntegrityError(f"{tx_type} transaction: malformed submit reply")
        if outcome.reason == "rejected":
            raise TransactionRejected(f"the ledger marked the {tx_type} transaction invalid: {outcome.detail}",
                                      reason=str(outcome.detail))
        detail = "; ".join(f"{p}: {e}" for p, e in outcome.errors.items())
        raise Unavailable(f"{tx_type} transaction: no peer committed it in time ({detail})")

    # ------------------------------------------------------------ commit notices

    async def _commit_notices(self) -> bool:
        """Make sure this user is subscribed to its own ``commits/<subject>`` at a peer
        (healthy first); False when it cannot be (not registered, refused, every peer
        down: then submits wait on the peer, and another try comes after
        :data:`RESUBSCRIBE_S`)."""
        sub = self._commit_sub
        if sub is not None and self.health.state(sub.publisher) == "open":
            # its publisher failed lately (stalled, unreachable): move to a healthy peer
            await self._leave_commits(sub)
        if self._commit_sub is not None:
            return True
        if not self.registered or trio.current_time() < self._commit_retry_at:
            return False
        async with self._commit_lock:
            if self._commit_sub is not None:
                return True
            for peer in self.peers_by_health():
                try:
                    sub = await self.endpoint.subscribe(peer, commits_topic(self.subject), buffer=COMMIT_BUFFER,
                                                        timeout=min(SUSPECT_TIMEOUT, self.config.request_timeout))
                except bus.BusError as exc:
                    log.info("%s: no commit notices from %s: %s", self.subject, peer, exc)
                    continue
                self._commit_sub = sub
                try:
                    self.nursery.start_soon(self._read_commits, sub)
                except RuntimeError:  # closing
                    self._commit_sub = None
                    return False
                return True
            self._commit_retry_at = trio.current_time() + RESUBSCRIBE_S
            return False

    async def _read_commits(self, sub: bus.Subscription) -> None:
        """The reader of the commit subscription: wake the submit waiting for each notice;
        on a gap (we lagged) or a break (the peer dropped us, crashed, closed) wake every
        waiter without a notice, so it falls back at once instead of at its bound."""
        try:
            while True:
                try:
                    event = await sub.receive()
                except bus.SubscriptionLagged:
                    self._commits_lost()
                    continue
                try:
                    notice = CommitNotice.from_wire(event.body)
                except DecodeError as exc:
                    log.warning("%s: malformed commit notice from %s: %s", self.subject, sub.publisher, exc)
                    continue
                waiter = self._commit_waiters.get(notice.tx_id[:NOTICE_TX_ID])
                if waiter is not None and waiter.notice is None and notice.names(waiter.tx_id):
                    waiter.notice = notice
                    waiter.event.set()
                    for scope in waiter.scopes:
                        scope.cancel()
        except (bus.BrokenError, bus.ClosedError) as exc:
            log.info("%s: commit notices from %s stopped: %s", self.subject, sub.publisher, exc)
        finally:
            if self._commit_sub is sub:
                self._commit_sub = None
                self._commit_retry_at = trio.current_time() + RESUBSCRIBE_S
            self._commits_lost()

    async def _leave_commits(self, sub: bus.Subscription) -> None:
        """Stop using ``sub`` (the next submit subscribes again, healthy peers first)."""
        if self._commit_sub is sub:
            self._commit_sub = None
        with contextlib.suppress(bus.BusError):
            await sub.aclose()

    def _commits_lost(self) -> None:
        for waiter in self._commit_waiters.values():
            waiter.event.set()

    @property
    def notice_wait(self) -> float:
        """How long a submit waits for its commit notice before the fallback: the
        commit wait (between 2 and 5 s)."""
        return self.commit_wait

    async def _submit_notified(self, tx: Transaction, raw: bytes, peer: str, timeout: float,
                               waiter: _CommitWaiter, wait_on_peer: Callable[[str, float], Any]) -> Any:
        """One submit with a commit notice: hand the bytes to ``peer`` (``wait`` false: the
        peer returns once the orderer took them), then wait for the notice (registered
        for the whole submit, so a notice of a copy sent through a peer that then did not
        answer counts too, and ends that request). The fallback when it does not come
        within :attr:`notice_wait` (or the subscription broke): the same bytes once more
        to the same peer, waiting there for the commit (a copy of a transaction that
        committed meanwhile is marked ``replayed_nonce`` or ``duplicate_in_block`` and
        confirmed by reading its effect)."""
        start = trio.current_time()
        if waiter.notice is None:
            result: Any = None
            with trio.CancelScope() as scope:
                waiter.scopes.append(scope)  # the reader cancels the request when the notice comes
                result = await result_of(self.peer_request(peer, PeerSubmit.kind, PeerSubmit((raw,)).to_wire(),
                                                           timeout=timeout))
            waiter.scopes.remove(scope)
            if waiter.notice is None and not isinstance(result, Answer):
                return result
            with trio.move_on_after(max(0.0, min(timeout, self.notice_wait) - (trio.current_time() - start))):
                await waiter.event.wait()
        notice = waiter.notice
        effect: dict | None = None
        if notice is not None:
            try:  # the fields of its entries that repeat our own transaction's body come back from it,
                # and its own entry's key from the transaction (core.ledger effect_key)
                effect = notice.expand(tx.body, effect_key(tx), tx.type)
            except DecodeError as exc:
                log.warning("%s: malformed commit notice for %s: %s", self.subject, tx.type, exc)
        if notice is not None and effect is not None:
            self.commit_stats["notices"] += 1
            answer = {"tx_id": tx.tx_id, "height": notice.height, "mark": notice.mark, "effect": effect}
            if notice.projected:  # its own entry is the submitter's view (core.protocol.NOTICE_VIEWS)
                answer["projected"] = True
            return Answer(answer)
        self.commit_stats["fallbacks"] += 1
        log.info("%s: no commit notice for %s within %.1f s: waiting on %s", self.subject, tx.type,
                 self.notice_wait, peer)
        sub = self._commit_sub
        if sub is not None:  # its publisher is slow or stalled: the next submit subscribes afresh
            with contextlib.suppress(RuntimeError):  # closing
                self.nursery.start_soon(self._leave_commits, sub)
        result = await wait_on_peer(peer, timeout)
        if isinstance(result, Answer) and isinstance(result.value, dict) and result.value.get("mark") in COPY_MARKS:
            if await self._committed_earlier(tx, peer):
                return Answer({**result.value, "mark": "ok", "resubmitted": True})
        return result

    async def _committed_earlier(self, tx: Transaction, peer: str | None) -> bool:
        """Whether the ledger shows ``tx``'s effect (:func:`core.ledger.effect_key`; asked
        first of ``peer``, which has applied the block of the re-sent copy and so the
        earlier one)."""
        try:
            key = effect_key(tx)
        except DecodeError:
            return False
        if key is None:  # the nonce alone says it: only a valid transaction records its nonce
            return True
        query = PeerQuery.from_wire(entry_query(key))
        entry = None
        if peer is not None:
            try:
                entry = _query_value(await self.peer_request(peer, PeerQuery.kind, query.to_wire()))
            except (bus.BusError, AgentError):
                entry = None
        if entry is None:
            try:
                entry = await self.query_committed(query)
            except AgentError:
                return False
        return shows_effect(tx, entry)

    async def storage_retry(self, fn: Callable[[], Any]) -> Any:
        """Run a storage call, retrying while storage nodes do not know this agent yet.

        Storage nodes learn certificates by following the orderer's blocks, so
        right after registration they may answer ``unknown-sender`` for a moment.
        """
        from agents.storage import StorageError

        delay = 0.1
        for attempt in range(_STORAGE_RETRIES):
            try:
                return await fn()
            except (StorageError, bus.BusError) as exc:
                if not _unknown_sender(exc) or attempt + 1 == _STORAGE_RETRIES:
                    raise
                await trio.sleep(delay)
                delay = min(2 * delay, 1.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def peer_key(self, peer: str) -> bytes | None:
        return self.manifest.keys.get(peer)

    # ------------------------------------------------------------ registration

    async def register(self, token: bytes) -> Certificate:
        """Enroll with a peer of this agent's organization; idempotent once registered.

        ``token`` is the organization's authorization for this subject, its
        attributes and :attr:`enroll_id` (:func:`agents.enrollment_token`: single
        use, expiring). Returns the committed certificate.
        Raises :class:`RegistrationError` (``code`` = the peer's error code).
        """
        if self.certificate is not None:
            return self.certificate
        recv = self.keys.receive
        proof = await run_crypto(recv.prove, self.subject)
        body = PeerEnroll(
            subject=self.subject, org=self.config.org, attributes=dict(self.config.attributes),
            box_key=self.keys.box_public, pre_key=recv.public.to_bytes(), pre_proof=proof.to_bytes(),
            valid_s=CERT_VALIDITY_S, token=bytes(token),
        ).to_wire()
        peer = self.home_peer
        ep = make_endpoint(self.node, self.enroll_id, self.keys.ecdsa_private, self._lookup_key)
        try:
            try:
                reply = await ep.request(peer, PeerEnroll.kind, body, timeout=self.config.request_timeout)
            except bus.RemoteError as exc:
                error = from_remote(exc.code, f"enrollment refused by {peer}: {exc.message}")
                if not isinstance(error, EnrollmentExists):
                    if isinstance(error, RegistrationError):
                        raise error from None
                    raise RegistrationError(str(error), code=exc.code) from None
                reply = None
            except bus.DeliveryError as exc:
                raise Unavailable(f"enrollment: {peer} did not answer: {exc}") from None
        finally:
            await ep.aclose()
        if reply is None:  # already registered (e.g. we crashed before saving): accept only our own keys
            try:
                cert = await self.lookup_certificate(self.subject)
            except AgentError:  # peers refuse our envelopes: they hold another key for this subject
                cert = None
            if cert is None or cert.ecdsa_key != self.keys.ecdsa_public:
                raise EnrollmentExists(f"subject {self.subject} is registered with other keys")
        else:
            try:
                cert = self._check_certificate(PeerEnrollReply.from_wire(reply).cert, self.subject)
            except (AgentError, DecodeError) as exc:
                raise EnrollmentInvalid(f"enrollment reply: {exc}") from None
        if (cert.ecdsa_key, cert.box_key, cert.pre_key) != (self.keys.ecdsa_public, self.keys.box_public,
                                                           recv.public.to_bytes()):
            raise EnrollmentInvalid("the issued certificate does not carry this agent's keys")
        self.state["cert"] = cert.to_dict()
        self._directory.set_certificate(self.subject, cert.ecdsa_key)
        self._certs[self.subject] = cert
        await self.save_state()
        return cert

    async def revoke_certificate(self, reason: str = "revoked by its holder") -> None:
        """Revoke this agent's own certificate (lost device, left the hospital): a
        ``revoke_cert`` transaction. Peers refuse the agent's messages from then on."""
        self.require_registered()
        try:
            await self.submit("revoke_cert", {"subject": self.subject, "reason": reason})
        except UnknownAgent as exc:
            # the revocation may have committed before its confirmation reached us: peers
            # then refuse this agent ("unknown sender"); the ledger says whether it did
            if not isinstance(await self.explain_unknown(exc), CertificateRevoked):
                raise
        self.state["cert_revoked"] = True
        await self.save_state()


class _CommitWaiter:
    """A submit waiting for its commit notice (``notice`` None when woken without one) of
    the transaction ``tx_id`` (the waiters are keyed by its first :data:`NOTICE_TX_ID` bytes,
    all a notice carries)."""

    __slots__ = ("event", "notice", "scopes", "tx_id")

    def __init__(self) -> None:
        self.tx_id = b""
        self.event = trio.Event()
        self.notice: CommitNotice | None = None
        self.scopes: list[trio.CancelScope] = []  # submit requests in flight, cancelled by the notice


def _cert_entry(value: Any, subject: str) -> CertEntry | None:
    """A ``peer.query cert`` answer as a view (None: not registered); AgentError if malformed."""
    if value is None:
        return None
    try:
        return CertEntry.from_state(value)
    except DecodeError as exc:
        raise AgentError(f"certificate entry of {subject} is malformed: {exc}", code="integrity") from exc


class UserAgent:
    """What :class:`agents.patient.PatientAgent` and :class:`agents.doctor.DoctorAgent`
    share: views of their :class:`PeerClient` (``config``, ``subject``,
    ``manifest``, ``keys``, ``endpoint``, ``health``, ``address``, local
    ``state``), a :class:`agents.storage.StorageClient` on the manifest's storage
    nodes, and the identity calls, which the client makes."""

    def __init__(self, client: PeerClient):
        self.client = client
        config = self.config = client.config
        self.subject = client.subject
        self.manifest = client.manifest
        self.keys = client.keys
        self.endpoint = client.endpoint
        self.health = client.health
        self.address = client.address
        self.state = client.state
        self.storage = StorageClient(self.endpoint, self.manifest.storage, replicas=self.manifest.replicas,
                                     write_quorum=self.manifest.write_quorum, timeout=config.request_timeout,
                                     health=self.health, background=client.nursery,
                                     node_keys=self.manifest.directory())

    @property
    def certificate(self) -> Certificate | None:
        """This user's certificate once registered."""
        return self.client.certificate

    @property
    def registered(self) -> bool:
        return self.client.registered

    @property
    def enroll_id(self) -> str:
        """The id this agent enrolls from; its registrar's token is bound to it (:attr:`PeerClient.enroll_id`)."""
        return self.client.enroll_id

    async def register(self, token: bytes) -> Certificate:
        """Enroll with a peer of this user's organization (:meth:`PeerClient.register`)."""
        return await self.client.register(token)

    async def revoke_certificate(self, reason: str = "revoked by its holder") -> None:
        """Revoke this user's own certificate (:meth:`PeerClient.revoke_certificate`)."""
        await self.client.revoke_certificate(reason)

    async def lookup_certificate(self, subject: str, *, fresh: bool = True) -> Certificate | None:
        """Another user's committed, non-revoked certificate (:meth:`PeerClient.lookup_certificate`)."""
        return await self.client.lookup_certificate(subject, fresh=fresh)


@contextlib.asynccontextmanager
async def open_agent(config: UserConfig, node: bus.Node | None, build: Callable[[PeerClient], A]) -> AsyncIterator[A]:
    """Open a user agent: its keys (created on first use), a bus node unless ``node``
    is given (TCP, routed by the manifest and ``config.routes``, listening at
    ``config.listen``), its nursery and its :class:`PeerClient`; ``build(client)``
    makes the agent (its handlers go on the endpoint before anything awaits); the
    local state is loaded; yields the agent, closes everything on exit.

    The caller's own exception comes out unchanged, not wrapped in the nurseries'
    exception groups.
    """
    data_dir = Path(config.data_dir)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = await trio.to_thread.run_sync(_load_or_create_keys, config)
    try:
        async with contextlib.AsyncExitStack() as stack:
            address = None
            if node is None:
                routes = {**config.manifest.agents, **config.routes}
                node = await stack.enter_async_context(bus.open_node(routes=routes))
                if config.listen:
                    address = await node.listen(config.listen)
            else:
                for agent_id, addr in config.routes.items():
                    node.add_route(agent_id, addr)
            nursery = await stack.enter_async_context(trio.open_nursery())
            client = PeerClient(config, keys, node, nursery)
            client.address = address
            stack.push_async_callback(client.aclose)
            agent = build(client)
            await client._load_state()
            if client.certificate is not None:
                client._directory.set_certificate(client.subject, client.certificate.ecdsa_key)
            try:
                yield agent
            finally:
                with trio.move_on_after(10, shield=True):
                    await client.flush_state()  # what the background saver has not saved yet
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # the caller's own exception, not wrapped in our nurseries' groups
        lone = _lone(group)
        if lone is None:
            raise
        raise lone from None


def _query_value(reply: Any, held_tx: bytes | None = None, view: str | None = None) -> Any:
    """A ``peer.query`` reply's value (a map, a list or nil), else IntegrityError; ``held_tx``:
    the transaction the query held (``PeerQuery.held``), put back where the answer left it out;
    ``view``: the query's (an array view read back into its map)."""
    try:
        return PeerQueryReply.from_wire(reply, held=held_tx, view=view).value
    except DecodeError as exc:
        raise IntegrityError(f"malformed peer.query reply: {exc}") from None


def _lone(group: BaseExceptionGroup) -> BaseException | None:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


def _load_or_create_keys(config: UserConfig) -> AgentKeys:
    store = KeyStore(Path(config.data_dir) / KEY_FILE, passphrase=config.passphrase,
                     key_file=config.key_file, fast_kdf=config.fast_kdf)
    if store.exists():
        return AgentKeys.from_bytes(store.load())
    keys = AgentKeys.generate()
    store.save(keys.to_bytes())
    return keys


def check_receiving_key(cert: Certificate) -> pre.PublicKey:
    """The certificate's PRE receiving key after its proof of possession verifies (raises CoreError)."""
    key = pre.PublicKey.from_bytes(cert.pre_key)
    pre.verify_public_key(key, cert.subject, pre.RECEIVE_LABEL, pre.Proof.from_bytes(cert.pre_proof))
    return key
