"""What a deployment trusts and where its agents are.

* :class:`Manifest`: where a deployment's agents are and what they trust.
* :class:`ConsortiumDirectory`: the bus's key directory — the consortium's
  static keys (peers, orderer, storage nodes), every certificate committed on
  the ledger (revoked ones removed), and self-certifying enrollment ids
  (``enroll:<hex compressed ECDSA key>``) so a user can reach its peer before it
  has a certificate.
* :func:`enroll_id`, :func:`enrollment_token`: enrollment identities and the
  registrar's token.
* :class:`CertificateFollower`: keeps a directory in step with the ledger's
  certificates, for agents that do not validate the ledger (storage nodes).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from typing import Any

import trio

from bus import Endpoint
from core import canonical, ecdsa

__all__ = ["ENROLL_PREFIX", "CertificateFollower", "ConsortiumDirectory", "Manifest", "enroll_id",
           "enrollment_token"]

ENROLL_PREFIX = "enroll:"
log_rt = logging.getLogger("agents.consortium")


def enroll_id(ecdsa_public: bytes) -> str:
    """The self-certifying bus id a user enrolls from (before it has a certificate)."""
    return ENROLL_PREFIX + ecdsa_public.hex()


def enrollment_token(org_secret: bytes, subject: str, org: str, attributes: dict[str, Any]) -> bytes:
    """The organization's authorization of a subject's attributes (its registrar signs off)."""
    return hmac.new(org_secret, canonical.pack(["emrshare/v1/enroll", subject, org, attributes]),
                    hashlib.sha256).digest()


class ConsortiumDirectory:
    """Agent id -> ECDSA public key, for bus envelope verification."""

    def __init__(self, static: dict[str, bytes] | None = None):
        self._static = dict(static or {})
        self._certs: dict[str, bytes] = {}

    def add_static(self, agent: str, key: bytes) -> None:
        self._static[agent] = key

    def set_certificate(self, subject: str, key: bytes | None) -> None:
        """Learn (or, with None, forget: revoked) a user's key from the ledger."""
        if key is None:
            self._certs.pop(subject, None)
        else:
            self._certs[subject] = key

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
    organization to its peers (users enroll through one of them).
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

    def to_json(self) -> str:
        return json.dumps({
            "consortium": self.consortium, "genesis": self.genesis.hex(), "orderer": self.orderer,
            "peers": self.peers, "storage": self.storage, "threshold": self.threshold,
            "agents": self.agents, "keys": {k: v.hex() for k, v in self.keys.items()},
            "peer_orgs": self.peer_orgs, "replicas": self.replicas, "write_quorum": self.write_quorum,
        }, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        d = json.loads(text)
        return cls(
            d["consortium"], bytes.fromhex(d["genesis"]), d["orderer"], list(d["peers"]),
            list(d["storage"]), int(d["threshold"]), dict(d["agents"]),
            {k: bytes.fromhex(v) for k, v in d["keys"].items()}, {k: list(v) for k, v in d["peer_orgs"].items()},
            int(d.get("replicas", 3)), int(d.get("write_quorum", 2)),
        )

    def directory(self) -> ConsortiumDirectory:
        return ConsortiumDirectory(dict(self.keys))


# ------------------------------------------------------------------ light client


class CertificateFollower:
    """Keeps a :class:`ConsortiumDirectory` in step with the ledger's certificates.

    For agents that do not validate the ledger (storage nodes): it follows the
    orderer's ``blocks`` topic (catching up with ``orderer.blocks``) and learns a
    certificate from a ``register`` transaction only if the transaction is signed
    by the issuing peer and the certificate by that same peer of the same
    organization; it forgets one on a ``revoke_cert`` signed by the subject or a
    peer of its organization. (A full peer applies every rule; this is the part
    of them that decides who may talk.)
    """

    def __init__(self, endpoint: Endpoint, manifest: Manifest, directory: ConsortiumDirectory,
                 *, retry: float = 1.0):
        from core.identity import ConsortiumConfig
        from core.ledger import Block

        self.endpoint = endpoint
        self.manifest = manifest
        self.directory = directory
        self.retry = retry
        genesis = Block.from_bytes(manifest.genesis)
        self.config = ConsortiumConfig.from_bytes(genesis.txs[0])
        self.peers = {p.id: p for p in self.config.peers}
        self.height = 0
        self.certs: dict[str, Any] = {}

    def apply_block(self, raw: bytes) -> None:
        from core.identity import Certificate
        from core.ledger import Block
        from core.tx import Transaction

        block = Block.from_bytes(raw)
        if block.height != self.height + 1:
            return
        if not block.is_valid_signature(self.config.orderer_key):
            log_rt.warning("ignoring a block not signed by the orderer")
            return
        for tx_raw in block.txs:
            try:
                tx = Transaction.from_bytes(tx_raw)
                if tx.type == "register":
                    peer = self.peers.get(tx.submitter)
                    if peer is None or not tx.is_valid_signature(peer.ecdsa_key):
                        continue
                    cert = Certificate.from_dict(tx.body["cert"])
                    if cert.issuer != peer.id or cert.org != peer.org or cert.subject in self.certs:
                        continue
                    cert.verify_signature(peer.ecdsa_key)
                    self.certs[cert.subject] = cert
                    self.directory.set_certificate(cert.subject, cert.ecdsa_key)
                elif tx.type == "revoke_cert":
                    subject = tx.body.get("subject")
                    cert = self.certs.get(subject)
                    if cert is None:
                        continue
                    peer = self.peers.get(tx.submitter)
                    signer = peer.ecdsa_key if peer is not None and peer.org == cert.org else (
                        cert.ecdsa_key if tx.submitter == subject else None)
                    if signer is not None and tx.is_valid_signature(signer):
                        self.directory.set_certificate(subject, None)
            except Exception:  # a malformed transaction is the ledger's business, not ours
                continue
        self.height = block.height

    async def catch_up(self) -> None:
        while True:
            reply = await self.endpoint.request(self.manifest.orderer, "orderer.blocks",
                                                {"from": self.height + 1, "limit": 256})
            blocks = reply.get("blocks", []) if isinstance(reply, dict) else []
            for raw in blocks:
                self.apply_block(raw)
            if len(blocks) < 256:
                return

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from bus import BusError

        started = False
        while True:
            try:
                async with await self.endpoint.subscribe(self.manifest.orderer, "blocks") as sub:
                    await self.catch_up()
                    if not started:
                        task_status.started()
                        started = True
                    async for event in sub:
                        body = event.body
                        if isinstance(body, dict) and isinstance(body.get("block"), bytes):
                            before = self.height
                            self.apply_block(body["block"])
                            if self.height == before:
                                await self.catch_up()
            except BusError as exc:
                log_rt.info("certificate follower: %s; retrying", type(exc).__name__)
                if not started:
                    task_status.started()
                    started = True
                await trio.sleep(self.retry)
