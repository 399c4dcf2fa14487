"""What every agent shares: keys, the key store, the directory, endpoints, crypto threads.

* :class:`AgentKeys`: an agent's three independent secrets — ECDSA (bus and
  ledger signatures), X25519 (sealed boxes), and the 32-byte PRE master secret
  (label keys; users only).
* :class:`KeyStore`: keys at rest, encrypted with XSalsa20-Poly1305 (pynacl
  SecretBox) under a key derived from a passphrase (Argon2id) or read from a
  32-byte key file. Written atomically (temp file, fsync, rename).
* :class:`ConsortiumDirectory`: the bus's key directory — the consortium's
  static keys (peers, orderer, storage nodes), every certificate committed on
  the ledger (revoked ones removed), and self-certifying enrollment ids
  (``enroll:<hex compressed ECDSA key>``) so a user can reach its peer before it
  has a certificate.
* :func:`make_endpoint`: an agent's bus endpoint signing with core.ecdsa.
* :func:`run_crypto`: crypto off the event loop, bounded by one limiter per
  process (cffi releases the GIL, so native work runs in parallel).
* :class:`Manifest`: where a deployment's agents are and what they trust.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import msgpack
import nacl.pwhash
import nacl.secret
import nacl.utils
import trio
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey as BoxPrivateKey

from bus import Endpoint, Node
from core import canonical, ecdsa, pre

__all__ = [
    "AgentKeys",
    "KeyStore",
    "KeyStoreError",
    "ConsortiumDirectory",
    "Manifest",
    "make_endpoint",
    "run_crypto",
    "enroll_id",
    "enrollment_token",
    "atomic_write",
]

ENROLL_PREFIX = "enroll:"
log_rt = logging.getLogger("agents.runtime")
T = TypeVar("T")


class KeyStoreError(Exception):
    """The key store cannot be opened (wrong passphrase or key file, corrupt file)."""


# ------------------------------------------------------------------ keys


@dataclass(frozen=True)
class AgentKeys:
    ecdsa_private: bytes = field(repr=False)
    box_private: bytes = field(repr=False)
    master: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> "AgentKeys":
        return cls(ecdsa.generate_private_key(), bytes(BoxPrivateKey.generate()), pre.new_master_secret())

    @functools.cached_property
    def ecdsa_public(self) -> bytes:
        return ecdsa.public_key(self.ecdsa_private)

    @functools.cached_property
    def box_public(self) -> bytes:
        return bytes(BoxPrivateKey(self.box_private).public_key)

    @functools.cached_property
    def receive(self) -> pre.KeyPair:
        """The PRE receiving key pair (label "receive")."""
        return pre.KeyPair.derive(self.master, pre.RECEIVE_LABEL)

    def label_key(self, label: str) -> pre.KeyPair:
        return pre.KeyPair.derive(self.master, label)

    def sign(self, tag: str, message: bytes) -> bytes:
        return ecdsa.sign(self.ecdsa_private, tag, message)

    def to_bytes(self) -> bytes:
        return msgpack.packb({"ecdsa": self.ecdsa_private, "box": self.box_private, "master": self.master})

    @classmethod
    def from_bytes(cls, data: bytes) -> "AgentKeys":
        try:
            d = msgpack.unpackb(data)
            return cls(d["ecdsa"], d["box"], d["master"])
        except Exception as exc:
            raise KeyStoreError("key material is malformed") from exc


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` durably: temp file, fsync, rename, directory fsync."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class KeyStore:
    """Secrets at rest in one file, encrypted under a passphrase or a key file.

    File layout (msgpack): ``{"v": 1, "kdf": "argon2id"|"keyfile", "salt": bin16,
    "ops": int, "mem": int, "box": SecretBox ciphertext of the payload}``.
    """

    def __init__(self, path: Path, *, passphrase: str | None = None, key_file: Path | None = None,
                 fast_kdf: bool = False):
        if (passphrase is None) == (key_file is None):
            raise ValueError("give exactly one of passphrase or key_file")
        self.path = Path(path)
        self._passphrase = passphrase
        self._key_file = Path(key_file) if key_file else None
        # fast_kdf: Argon2id's minimum cost, for tests and throwaway swarms only
        self._ops = nacl.pwhash.argon2id.OPSLIMIT_MIN if fast_kdf else nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
        self._mem = nacl.pwhash.argon2id.MEMLIMIT_MIN if fast_kdf else nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE

    @staticmethod
    def create_key_file(path: Path) -> None:
        atomic_write(Path(path), secrets.token_bytes(32))

    def _key(self, salt: bytes, ops: int, mem: int) -> bytes:
        if self._key_file is not None:
            key = self._key_file.read_bytes()
            if len(key) != 32:
                raise KeyStoreError(f"key file {self._key_file} must hold exactly 32 bytes")
            return hmac.new(key, b"emrshare/v1/keystore" + salt, hashlib.sha256).digest()
        assert self._passphrase is not None
        return nacl.pwhash.argon2id.kdf(32, self._passphrase.encode(), salt, opslimit=ops, memlimit=mem)

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, payload: bytes) -> None:
        salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
        key = self._key(salt, self._ops, self._mem)
        box = nacl.secret.SecretBox(key).encrypt(payload)
        atomic_write(self.path, msgpack.packb({
            "v": 1, "kdf": "keyfile" if self._key_file else "argon2id", "salt": salt,
            "ops": self._ops, "mem": self._mem, "box": bytes(box),
        }))

    def load(self) -> bytes:
        try:
            d = msgpack.unpackb(self.path.read_bytes())
            salt, ops, mem, box = d["salt"], d["ops"], d["mem"], d["box"]
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise KeyStoreError(f"key store {self.path} is corrupt") from exc
        try:
            return nacl.secret.SecretBox(self._key(salt, ops, mem)).decrypt(box)
        except CryptoError as exc:
            raise KeyStoreError(f"key store {self.path}: wrong passphrase or key file") from exc


# ------------------------------------------------------------------ directory


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


def make_endpoint(node: Node, agent_id: str, signing_key: bytes, directory: Callable[[str], bytes | None],
                  **options: Any) -> Endpoint:
    return node.endpoint(
        agent_id,
        signer=lambda message: ecdsa.sign_raw(signing_key, message),
        directory=directory,
        verifier=ecdsa.verify_raw,
        **options,
    )


_limiter: trio.CapacityLimiter | None = None


def crypto_limiter() -> trio.CapacityLimiter:
    global _limiter
    if _limiter is None:
        _limiter = trio.CapacityLimiter(max(2, os.cpu_count() or 2))
    return _limiter


async def run_crypto(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run CPU-bound crypto in a worker thread (the native core releases the GIL)."""
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=crypto_limiter())


# ------------------------------------------------------------------ manifest


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
        if not block.verify_signature(self.config.orderer_key):
            log_rt.warning("ignoring a block not signed by the orderer")
            return
        for tx_raw in block.txs:
            try:
                tx = Transaction.from_bytes(tx_raw)
                if tx.type == "register":
                    peer = self.peers.get(tx.submitter)
                    if peer is None or not tx.verify(peer.ecdsa_key):
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
                    if signer is not None and tx.verify(signer):
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

