"""What a deployment trusts and where its agents are.

* :class:`Manifest`: where a deployment's agents are and what they trust.
* :class:`ConsortiumDirectory`: the bus's key directory — the consortium's
  static keys (peers, orderer, storage nodes), every certificate committed on
  the ledger (revoked ones removed), and self-certifying enrollment ids
  (``enroll:<hex compressed ECDSA key>``) so a user can reach its peer before it
  has a certificate.
* :func:`enroll_id`, :func:`enroll_key`, :func:`enrollment_token`: enrollment
  identities and the registrar's token (:mod:`core.enrollment`: bound to the
  enrolling key, expiring, single use).
* :class:`CertificateFollower`: keeps a directory in step with the ledger's
  certificates, for agents that do not validate the ledger (storage nodes): a
  trio loop around :class:`core.lightclient.CertificateLightClient`, which also
  follows the CIDs committed ``store`` transactions name (:meth:`CertificateFollower.cids`,
  read by the storage reconciler, :mod:`agents.storage.reconcile`).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import trio

from bus import BusError, Endpoint, RemoteError
from core import ecdsa, enrollment
from core.errors import DecodeError, ValidationError
from core.ledger import Block
from core.lightclient import BlockChanges, CertificateLightClient, StoredRecord
from core.protocol import codes

__all__ = ["ENROLL_PREFIX", "CertificateFollower", "ConsortiumDirectory", "FollowerStatistics", "Manifest",
           "TOKEN_TTL_S", "enroll_id", "enroll_key", "enrollment_token"]

ENROLL_PREFIX = "enroll:"
TOKEN_TTL_S = 7 * 86400
"""How long an enrollment token is valid by default (a week)."""
MAX_CATCH_UP = 256  # blocks asked of the orderer at a time
log_rt = logging.getLogger("agents.consortium")


def enroll_id(ecdsa_public: bytes) -> str:
    """The self-certifying bus id a user enrolls from (before it has a certificate)."""
    return ENROLL_PREFIX + ecdsa_public.hex()


def enroll_key(agent_id: str) -> bytes:
    """The compressed ECDSA public key an ``enroll:<hex key>`` id names (ValueError otherwise)."""
    if not agent_id.startswith(ENROLL_PREFIX):
        raise ValueError(f"{agent_id[:80]!r} is not an enrollment id ({ENROLL_PREFIX}<hex ECDSA key>)")
    raw = bytes.fromhex(agent_id[len(ENROLL_PREFIX):])
    ecdsa.decode_public_key(raw)
    return raw


def enrollment_token(registrar_key: bytes, subject: str, org: str, attributes: dict[str, Any], enrolling: str, *,
                     ttl_s: float = TOKEN_TTL_S, now: float | None = None) -> bytes:
    """The registrar's token for one enrollment (:mod:`core.enrollment`), as ``peer.enroll`` carries it.

    It authorizes ``subject`` of ``org`` with ``attributes``, enrolling from the id
    ``enrolling`` (``enroll:<hex key>``: the user's agent gives it, e.g.
    ``PatientAgent.enroll_id``) only, once, for ``ttl_s`` seconds from ``now``
    (default: the wall clock), signed with the organization's registrar private
    key ``registrar_key``. ValueError for a malformed enrollment id or
    attributes without a canonical encoding."""
    key = enroll_key(enrolling)
    expires = int((time.time() if now is None else now) + ttl_s)
    return enrollment.issue(registrar_key, subject=subject, org=org, attributes=attributes, enroll_key=key,
                            expires=expires, token_id=secrets.token_bytes(enrollment.TOKEN_ID_SIZE)).to_bytes()


class ConsortiumDirectory:
    """Agent id -> ECDSA public key, for bus envelope verification."""

    def __init__(self, static: dict[str, bytes] | None = None):
        self._static = dict(static or {})
        self._certs: dict[str, bytes] = {}
        self._roles: dict[str, str] = {}

    def add_static(self, agent: str, key: bytes) -> None:
        self._static[agent] = key

    def remove_static(self, agent: str) -> None:
        """Forget a consortium node (a configuration change removed it)."""
        self._static.pop(agent, None)

    def set_certificate(self, subject: str, key: bytes | None, role: str | None = None) -> None:
        """Learn (or, with None, forget: revoked) a user's key (and its certificate's role) from the ledger."""
        if key is None:
            self._certs.pop(subject, None)
            self._roles.pop(subject, None)
        else:
            self._certs[subject] = key
            if role is not None:
                self._roles[subject] = role

    def role(self, subject: str) -> str | None:
        """The role on ``subject``'s committed, unrevoked certificate, when it was learned with one."""
        return self._roles.get(subject) if subject in self._certs else None

    def is_registered(self, agent: str) -> bool:
        """Whether ``agent`` is a user with a committed, unrevoked certificate (as learned)."""
        return agent in self._certs and agent not in self._static

    def __call__(self, agent: str) -> bytes | None:
        key = self._static.get(agent) or self._certs.get(agent)
        if key is not None:
            return key
        if agent.startswith(ENROLL_PREFIX):
            try:
                raw = bytes.fromhex(agent[len(ENROLL_PREFIX):])
                return ecdsa.decode_public_key(raw)
            except ValueError:
                return None
        return None




@dataclass
class Manifest:
    """A deployment as its clients see it: trust anchors and addresses.

    ``agents`` maps every server agent (peers, orderer, storage nodes) to its
    bus address (``tcp://host:port``, or ``mem://...`` inside one process);
    ``keys`` maps them to their ECDSA public keys. ``peer_orgs`` maps each
    organization to its peers (users enroll through one of them). ``node_orgs``
    maps each orderer and storage node to the organization whose profile lists it
    (the genesis does not say; a node's ``[tls.orgs]``: which member's TLS CA
    vouches for it, :func:`agents.tls.node_cas`); empty in older manifests.
    """

    consortium: str
    genesis: bytes
    orderer: str
    peers: list[str]
    storage: list[str]
    threshold: int
    agents: dict[str, str]
    keys: dict[str, bytes]
    peer_orgs: dict[str, list[str]]
    replicas: int = 3
    write_quorum: int = 2
    node_orgs: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({
            "consortium": self.consortium, "genesis": self.genesis.hex(), "orderer": self.orderer,
            "peers": self.peers, "storage": self.storage, "threshold": self.threshold,
            "agents": self.agents, "keys": {k: v.hex() for k, v in self.keys.items()},
            "peer_orgs": self.peer_orgs, "replicas": self.replicas, "write_quorum": self.write_quorum,
            **({"node_orgs": self.node_orgs} if self.node_orgs else {}),
        }, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        d = json.loads(text)
        return cls(
            d["consortium"], bytes.fromhex(d["genesis"]), d["orderer"], list(d["peers"]),
            list(d["storage"]), int(d["threshold"]), dict(d["agents"]),
            {k: bytes.fromhex(v) for k, v in d["keys"].items()}, {k: list(v) for k, v in d["peer_orgs"].items()},
            int(d.get("replicas", 3)), int(d.get("write_quorum", 2)),
            {str(k): str(v) for k, v in d.get("node_orgs", {}).items()},
        )

    def directory(self) -> ConsortiumDirectory:
        return ConsortiumDirectory(dict(self.keys))


# ------------------------------------------------------------------ light client


@dataclass(frozen=True, slots=True)
class FollowerStatistics:
    """What a :class:`CertificateFollower` has done: the height it reached, the
    certificate changes it passed to its directory, the blocks it refused
    (undecodable, not extending the chain it follows, not signed by the orderer)."""

    height: int
    changes: int
    refused: int


class CertificateFollower:
    """Keeps a :class:`ConsortiumDirectory` in step with the ledger's certificates.

    For agents that do not validate the ledger (storage nodes): a trio loop
    around :class:`core.lightclient.CertificateLightClient`, which applies the
    ledger's own rules to ``register`` and ``revoke_cert`` transactions. It
    follows the orderer's ``blocks`` topic (catching up with ``orderer.blocks``
    on start, on a gap and after a refused block), feeds each block to the light
    client in a worker thread (it verifies signatures and proofs), and passes
    the certificates learned and revoked to the directory. A block the light
    client refuses is logged and counted (:meth:`statistics`), never applied.
    With etcd ordering it follows one node of the genesis's orderer set, moves
    to the next when that one fails, and fetches blocks below the nodes' etcd
    window from the peers (``peer.blocks``).
    """

    def __init__(self, endpoint: Endpoint, manifest: Manifest, directory: ConsortiumDirectory,
                 *, retry: float = 1.0):
        self.endpoint = endpoint
        self.manifest = manifest
        self.directory = directory
        self.retry = retry
        self.client = CertificateLightClient(manifest.genesis)
        self.config = self.client.config
        # etcd ordering: the orderer set's nodes, the manifest's first; the next one when it fails
        ids = list(self.config.orderer_ids) if self.config.orderers else [manifest.orderer]
        self._orderers = [manifest.orderer, *(o for o in ids if o != manifest.orderer)] if manifest.orderer in ids \
            else ids
        self.orderer = self._orderers[0]
        self._limiter = trio.CapacityLimiter(1)  # one block at a time, in order
        # called with the records each applied block stored (the storage reconciler wakes up)
        self.on_records: list[Callable[[list[StoredRecord]], None]] = []
        self._changes = 0
        self._refused = 0

    @property
    def height(self) -> int:
        """The last block applied."""
        return self.client.height

    def statistics(self) -> FollowerStatistics:
        return FollowerStatistics(self.client.height, self._changes, self._refused)

    def cids(self) -> dict[str, StoredRecord]:
        """Every CID committed ``store`` transactions named (as far as followed), with its record."""
        return self.client.cids()

    def _feed(self, raw: bytes) -> BlockChanges | bool:
        """Worker thread: the block's changes, or whether it is stale if it is not the
        next block (True: applied already; False: after a gap); DecodeError/ValidationError
        if refused."""
        block = Block.from_bytes(raw)
        if block.height != self.client.height + 1:
            return block.height <= self.client.height
        return self.client.apply_all(block)

    async def apply_block(self, raw: bytes) -> bool:
        """Apply one encoded block if it is the next one; whether it was."""
        return await self._apply(raw) == "applied"

    async def _apply(self, raw: bytes) -> str:
        """Apply one encoded block: ``applied``; ``stale`` (applied already, e.g. by a
        concurrent catch_up); ``gap`` (not the next block); ``refused``. The verdict is
        this call's own (the subscription loop and a concurrent catch_up share nothing)."""
        try:
            changes = await trio.to_thread.run_sync(self._feed, raw, limiter=self._limiter)
        except (DecodeError, ValidationError) as exc:
            self._refused += 1
            log_rt.warning("certificate follower: refused a block: %s", exc)
            return "refused"
        if isinstance(changes, bool):
            return "stale" if changes else "gap"
        for change in changes.certificates:
            cert = change.certificate
            self.directory.set_certificate(change.subject, change.ecdsa_key, None if cert is None else cert.role)
        self._changes += len(changes.certificates)
        if changes.records:
            for listener in self.on_records:
                listener(changes.records)
        return "applied"

    async def catch_up(self, *, timeout: float | None = None) -> bool:
        """Fetch and apply the blocks after ours from the orderer; whether this reached
        the orderer's head (False: a malformed reply or a refused block). Bus errors
        propagate."""
        while True:
            kw = {} if timeout is None else {"timeout": timeout}
            start = self.height + 1
            reply = await self._fetch(start, kw)
            blocks = reply.get("blocks") if isinstance(reply, dict) else None
            if not isinstance(blocks, list) or not all(isinstance(b, bytes) for b in blocks):
                log_rt.warning("certificate follower: malformed blocks reply from %s", self.orderer)
                return False
            for i, raw in enumerate(blocks):
                # not applied: refused, or applied meanwhile by the other caller (the subscription loop)
                if not await self.apply_block(raw) and self.height < start + i:
                    return False
            if len(blocks) < MAX_CATCH_UP:
                return True

    async def _fetch(self, start: int, kw: dict[str, Any]) -> Any:
        """``orderer.blocks`` from ``start``; below an etcd orderer node's window
        (``orderer.pruned``) ``peer.blocks`` from the first peer that answers."""
        body = {"from": start, "limit": MAX_CATCH_UP}
        try:
            return await self.endpoint.request(self.orderer, "orderer.blocks", body, **kw)
        except RemoteError as exc:
            if exc.code != codes.ORDERER_PRUNED:
                raise
            pruned = exc
        for peer in self.manifest.peers:
            try:
                return await self.endpoint.request(peer, "peer.blocks", body, **kw)
            except BusError:
                continue
        raise pruned

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        started = False
        while True:
            try:
                async with await self.endpoint.subscribe(self.orderer, "blocks") as sub:
                    await self.catch_up()
                    if not started:
                        task_status.started()
                        started = True
                    async for event in sub:
                        body = event.body
                        if isinstance(body, dict) and isinstance(body.get("block"), bytes):
                            # not applied: after a gap, catch up; a block applied already (by
                            # catch_up, before this copy of it arrived) asks the orderer nothing
                            if await self._apply(body["block"]) in ("gap", "refused"):
                                await self.catch_up()
            except BusError as exc:
                log_rt.info("certificate follower: %s; retrying", type(exc).__name__)
                self.orderer = self._orderers[(self._orderers.index(self.orderer) + 1) % len(self._orderers)]
                if not started:
                    task_status.started()
                    started = True
                await trio.sleep(self.retry)
