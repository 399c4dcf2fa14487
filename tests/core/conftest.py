"""A small consortium chain for the ledger-state tests: keys, genesis, users, signed
transactions and blocks, and a full Ledger over memory (``chain`` fixture); PRE proxies
for the core.pre tests (:func:`make_proxies`)."""

from __future__ import annotations

import hashlib
import secrets

import pytest

from core import ecdsa, pre
from core.cid import compute as compute_cid
from core.identity import Certificate
from core.ledger import Block, CommitResult, Ledger, MemoryKV
from core.tx import Transaction

from agents.testing.consortium import TestConsortium, split_peers

T0 = 1_780_000_000  # seconds


def register_body(cert: dict | str) -> dict:
    """A ``register`` body: the certificate and a fresh enrollment token id (core.enrollment)."""
    return {"cert": cert, "token_id": secrets.token_bytes(16)}


def make_proxies(n: int) -> tuple[list[pre.Proxy], dict[int, bytes]]:
    """``n`` PRE proxies with indices 1..n and fresh box keys: (the proxies, their secret keys by index)."""
    secrets_, proxies = {}, []
    for i in range(1, n + 1):
        sk, pk = pre.box_keypair()
        proxies.append(pre.Proxy(i, pk))
        secrets_[i] = sk
    return proxies, secrets_


class Chain:
    """Orgs a (peers p1, p2) and b (peers p3, p4), threshold 2; ``ledger`` applies
    what :meth:`commit` is given. Blocks are made without being applied by
    :meth:`make_block`, so the same blocks can be fed to other consumers."""

    T0 = T0
    # doctors may read cardiology records once the patient approves
    POLICY = """
policy "sharing" version 1
default deny
rule cardio:
  allow read on label "cardiology"
  when role == "doctor"
  approval patient
"""

    def __init__(self) -> None:
        c = TestConsortium.build(split_peers(4, name="p{number}"), name="chain",
                                 org_names={"org-a": "A", "org-b": "B"}, max_skew_ms=60_000, created_at=T0 * 1000)
        self.orderer_key, self.config, self.genesis = c.orderer_key, c.config, c.genesis
        self.admins = c.admins  # org -> admin key (signs configuration changes)
        self.peer_keys: dict[str, bytes] = {pid: k.ecdsa_private for pid, k in c.peer_keys.items()}
        self.kv = MemoryKV()
        self.ledger = Ledger(self.genesis, self.kv)
        self.keys: dict[str, bytes] = dict(self.peer_keys)
        self.height, self.head = 0, self.genesis.hash
        self.time_ms = T0 * 1000

    def cert(self, subject: str, org: str, attrs: dict, *, peer: str = "p1", signer: str | None = None,
             proof_for: str | None = None) -> Certificate:
        """A certificate issued by ``peer`` (signed with ``signer``'s key, default the
        issuer's; PRE key proven for ``proof_for``, default the subject); the user's
        ECDSA key is kept in :attr:`keys`."""
        key = ecdsa.generate_private_key()
        recv = pre.KeyPair.derive(pre.new_master_secret(), pre.RECEIVE_LABEL)
        cert = Certificate(f"serial-{subject}", subject, org, attrs, ecdsa.public_key(key), pre.box_keypair()[1],
                           recv.public.to_bytes(), recv.prove(proof_for or subject).to_bytes(), T0 - 10,
                           T0 + 86400, peer).sign(self.peer_keys[signer or peer])
        self.keys[subject] = key
        return cert

    def tx(self, tx_type: str, submitter: str, body: dict, *, key: bytes | None = None) -> Transaction:
        return Transaction.create(tx_type, submitter, body, key or self.keys[submitter], self.time_ms)

    def register_tx(self, subject: str, org: str, role: str = "patient", *, peer: str = "p1", **kw) -> Transaction:
        cert = self.cert(subject, org, {"role": role}, peer=peer, **kw)
        return self.tx("register", peer, register_body(cert.to_dict()))

    def make_block(self, *txs: Transaction | bytes, key: bytes | None = None) -> Block:
        """The next block (after the last one made), not applied."""
        raws = [t.to_bytes() if isinstance(t, Transaction) else t for t in txs]
        block = Block.make(self.height + 1, self.head, self.time_ms, raws, key or self.orderer_key)
        self.height, self.head = block.height, block.hash
        return block

    def commit(self, block: Block) -> CommitResult:
        result = self.ledger.apply(block)
        self.kv.apply(result.writes)
        return result

    def block(self, *txs: Transaction | bytes) -> CommitResult:
        return self.commit(self.make_block(*txs))

    @staticmethod
    def store_body(record_id: str = "rec-1", label: str = "cardiology") -> dict:
        kp = pre.KeyPair.derive(pre.new_master_secret(), label)
        capsule, _ = pre.encapsulate(kp.public)
        return {"record_id": record_id, "label": label, "cid": compute_cid(record_id.encode()), "size": 10,
                "media_type": "application/fhir+json", "capsule": capsule.to_bytes()}

    @staticmethod
    def grant_body(grant_id: str, request_id: str) -> dict:
        return {"grant_id": grant_id, "request_id": request_id, "threshold": 2, "expires_at": T0 + 3600,
                "shares": {p: hashlib.sha256(p.encode()).digest() for p in ("p1", "p2", "p3")}}


@pytest.fixture
def chain() -> Chain:
    return Chain()


@pytest.fixture
def new_chain() -> type[Chain]:
    """Make chains (one per hypothesis example)."""
    return Chain
