"""The consortium ledger: blocks, validation rules and world state (pure, deterministic).

Order-then-validate, as Hyperledger Fabric: an ordering service puts signed
transactions into signed, hash-chained blocks; every peer runs
:meth:`Ledger.apply` on every block and gets the same validity marks, the same
state writes and the same state root. Invalid transactions stay in the block
with a reason code and change no state.

World state is a key-value map (``str -> canonical msgpack bytes``) behind the
small :class:`KV` protocol, so peers keep it in SQLite and tests in memory.
The keys, and typed read views of their values, are in :mod:`core.state`; the
query helpers (:meth:`Ledger.grant`, :meth:`Ledger.certificate`, ...) keep the
views they decoded while the KV holds the same bytes (:meth:`Ledger._view`).

The genesis (block 0: the :class:`~core.identity.ConsortiumConfig` and every
member organization's signature over it, :func:`make_genesis`) is read by
:func:`parse_genesis` alone, which refuses one that lacks a member's signature.
A ``config`` transaction signed by more than half of the members adds or removes
one organization (:func:`check_config_change`); the configuration in force is at
:data:`CONFIG_KEY` and :attr:`Ledger.config` follows it from the next block. The rules on who may submit (timestamp, signature, certificate, nonce)
and on ``register`` and ``revoke_cert`` are :class:`IdentityRules`, shared with
the certificate light client (:mod:`core.lightclient`). :func:`effect_key` and
:func:`shows_effect` say which state entry shows that a transaction committed.

State root: ``root_h = SHA-256(root_{h-1} || block hash || canonical(marks) ||
canonical(sorted writes))``, a hash chain over every block's effect, so two
peers agree on the root exactly when they applied the same blocks with the
same outcome.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol

import msgpack

from . import canonical, ecdsa
from .cid import parse as parse_cid
from .curve import G1
from .errors import CoreError, DecodeError, SignatureError, ValidationError
from .enrollment import TOKEN_ID_SIZE
from .identity import Certificate, ConsortiumConfig, PeerInfo, check_id
from .policy import Policy, Request as PolicyRequest
from .state import (
    DELEGATION_MODES, HEAD_KEY, CertEntry, DelegationEntry, GrantEntry, PolicyEntry, RecordEntry, RequestEntry,
    active_key, audit_key, audit_prefix, break_glass_key, cert_key, delegation_key, grant_key, nonce_key,
    policy_key, record_key, request_key, revoked_key, serial_key, standing_key, token_key,
)
from .tx import Transaction

__all__ = [
    "AUDIT_PAGE",
    "Block",
    "KV",
    "MemoryKV",
    "Ledger",
    "CommitResult",
    "merkle_root",
    "make_genesis",
    "Genesis",
    "parse_genesis",
    "read_genesis_draft",
    "missing_signatures",
    "GENESIS_SIGNATURE",
    "CONFIG_KEY",
    "check_config_change",
    "config_change_message",
    "sign_config_change",
    "IdentityRules",
    "store_record",
    "reseal_record",
    "record_body",
    "effect_key",
    "shows_effect",
    "BLOCK_TAG",
    "MAX_BLOCK_BYTES",
    "batch_fits",
    "REASON_CODES",
    "STANDING_GRANT_TTL_S",
    "BREAK_GLASS_TAG",
    "OFFICER_ATTRIBUTE",
    "break_glass_message",
    "standing_grant_id",
    "break_glass_grant_id",
    "LEDGER_GRANT_PREFIXES",
    "MAX_ACCESS_ENTRIES",
    "ACCESS_ENTRY_FIELDS",
    "LATE_SERVE_SKEWS",
]

STANDING_GRANT_TTL_S = 24 * 3600
"""Lifetime of a grant the ledger makes from a standing delegation (the policy is
re-evaluated at every re-encryption anyway)."""
BREAK_GLASS_TAG = "emrshare/v1/break-glass"
OFFICER_ATTRIBUTE = "officer"
"""A co-signing officer's certificate carries ``officer: true``, put there by its
hospital's registrar at enrollment (core.enrollment binds the attributes)."""
MAX_COSIGNERS = 16


def break_glass_message(break_glass_id: str, doctor: str, patient: str, record_id: str, reason: str) -> bytes:
    """What each co-signing officer signs (ECDSA, under :data:`BREAK_GLASS_TAG`)."""
    return canonical.pack([break_glass_id, doctor, patient, record_id, reason])


LEDGER_GRANT_PREFIXES = ("sg-", "bg-")
"""Prefixes of the grant ids the ledger derives; a patient's ``grant`` may not use them."""


def standing_grant_id(request_id: str) -> str:
    """The id of the grant the ledger makes for ``request_id`` from a standing delegation."""
    return "sg-" + hashlib.sha256(b"emrshare/v1/standing-grant" + request_id.encode()).hexdigest()[:32]


def break_glass_grant_id(break_glass_id: str) -> str:
    """The id of the grant a committed ``break_glass`` makes."""
    return "bg-" + hashlib.sha256(b"emrshare/v1/break-glass-grant" + break_glass_id.encode()).hexdigest()[:32]

AUDIT_PAGE = 2000
"""Audit events in one page of a patient's trail (``peer.audit``): ~330 KB at ~165 bytes
an event, far below a frame, whatever the trail's length."""
MAX_ACCESS_ENTRIES = 64
"""Entries an ``access_batch`` transaction may carry (more: ``malformed``); 64 entries
of the longest ids (128 characters each) stay well below core.tx.MAX_TX_SIZE."""
ACCESS_ENTRY_FIELDS = ("grant_id", "request_id", "record_id", "doctor", "time")
"""The fields of an ``access_batch`` entry: what the re-encryption was asked for and
when the peer served it (Unix ms)."""
LATE_SERVE_SKEWS = 2
"""How late (in ``max_skew_ms``) after a grant's revocation (its ``revoked_at``) an
``access_batch`` entry may have been served and still be recorded ``late: "revoked"``:
the revocation's block is cut within a skew of its timestamp and a peer serves until it
applies that block. An entry served at or after the grant's expiry plus one skew is
refused: the serving peer checked the expiry against the clock that timed the entry."""

BLOCK_TAG = "emrshare/v1/block"
MAX_BLOCK_TXS = 10_000
# A block's encoded size is bounded in bytes as well as in count, well below the
# bus's 16 MiB frame so that a block always fits in a reply or an event with room
# to spare (an unbounded block could be persisted but never published or served,
# halting every peer for good).
MAX_BLOCK_BYTES = 4 * 1024 * 1024
# Bytes a block's encoding adds to its transactions: the fixed fields (at most
# 200 bytes) and a 5-byte msgpack bin header per transaction.
_BLOCK_OVERHEAD = 256
_TX_OVERHEAD = 5


VIEW_CACHE = 8192  # committed entries a Ledger keeps decoded (Ledger._view)


def batch_fits(count: int, tx_bytes: int) -> bool:
    """Whether ``count`` transactions of ``tx_bytes`` bytes in all fit in one block."""
    return count <= MAX_BLOCK_TXS and _BLOCK_OVERHEAD + tx_bytes + _TX_OVERHEAD * count <= MAX_BLOCK_BYTES
ZERO_HASH = bytes(32)

REASON_CODES = {
    "ok": "valid",
    "malformed": "the transaction or its body does not decode",
    "bad_signature": "the submitter's signature does not verify",
    "unknown_submitter": "no certificate or peer with that id",
    "cert_revoked": "the submitter's certificate is revoked",
    "cert_expired": "the submitter's certificate is outside its validity window",
    "replayed_nonce": "the nonce was used before by this submitter",
    "stale_timestamp": "the timestamp is too far from the block's",
    "forbidden": "the submitter may not do this (role, ownership or organization)",
    "duplicate": "the id already exists",
    "not_found": "a referenced object does not exist",
    "bad_certificate": "the certificate is invalid (issuer signature, proof of possession, window)",
    "not_allowed": "the referenced request was not allowed by the policy",
    "bad_state": "the referenced object is in the wrong state (revoked, answered, expired)",
    "duplicate_in_block": "the same transaction appears earlier in the block",
}


# ------------------------------------------------------------------ blocks


def _leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(a: bytes, b: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + a + b).digest()


def merkle_root(items: Iterable[bytes]) -> bytes:
    """RFC 6962-style Merkle tree hash (leaf/node prefixes; odd nodes promoted)."""
    level = [_leaf(x) for x in items]
    if not level:
        return hashlib.sha256(b"").digest()
    while len(level) > 1:
        nxt = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


@dataclass(frozen=True, slots=True)
class Block:
    height: int
    prev_hash: bytes
    timestamp: int
    tx_root: bytes
    txs: tuple[bytes, ...]
    orderer_sig: bytes

    def header_bytes(self) -> bytes:
        return canonical.pack([self.height, self.prev_hash, self.timestamp, self.tx_root, len(self.txs)])

    @property
    def hash(self) -> bytes:
        return hashlib.sha256(self.header_bytes()).digest()

    @classmethod
    def make(cls, height: int, prev_hash: bytes, timestamp: int, txs: Iterable[bytes],
             orderer_key: bytes) -> "Block":
        txs = tuple(txs)
        if not batch_fits(len(txs), sum(len(t) for t in txs)):
            raise ValueError(f"a block holds at most {MAX_BLOCK_TXS} transactions and {MAX_BLOCK_BYTES} bytes")
        unsigned = cls(height, prev_hash, timestamp, merkle_root(txs), txs, b"")
        sig = ecdsa.sign(orderer_key, BLOCK_TAG, unsigned.header_bytes())
        return cls(height, prev_hash, timestamp, unsigned.tx_root, txs, sig)

    def is_valid_signature(self, orderer_public_key: bytes) -> bool:
        """True when the orderer's signature over the header verifies under the key."""
        return ecdsa.is_valid(orderer_public_key, BLOCK_TAG, self.header_bytes(), self.orderer_sig)

    def verify_signature(self, orderer_public_key: bytes) -> None:
        """Raise SignatureError unless the orderer's signature over the header verifies."""
        if not self.is_valid_signature(orderer_public_key):
            raise SignatureError(f"block {self.height} is not signed by the orderer")

    def to_bytes(self) -> bytes:
        return canonical.pack([self.height, self.prev_hash, self.timestamp, self.tx_root,
                               list(self.txs), self.orderer_sig])

    @classmethod
    def from_bytes(cls, data: bytes) -> "Block":
        height, prev, ts, root, txs, sig = canonical.unpack_array(data, 6, max_size=MAX_BLOCK_BYTES, what="block")
        if type(height) is not int or height < 0:
            raise DecodeError("block: bad height")
        if not isinstance(prev, bytes) or len(prev) != 32 or not isinstance(root, bytes) or len(root) != 32:
            raise DecodeError("block: hashes must be 32 bytes")
        if type(ts) is not int or ts < 0:
            raise DecodeError("block: bad timestamp")
        if not isinstance(txs, list) or len(txs) > MAX_BLOCK_TXS or not all(isinstance(t, bytes) for t in txs):
            raise DecodeError("block: transactions must be a list of bytes")
        if not isinstance(sig, bytes) or len(sig) != 64:
            raise DecodeError("block: signature must be 64 bytes")
        return cls(height, prev, ts, root, tuple(txs), sig)


GENESIS_SIGNATURE = bytes(64)
"""Block 0's ``orderer_sig``: none. The genesis's authority is its member
organizations' signatures over the configuration, not an orderer's."""
MAX_GENESIS_SIGNATURES = 256


def _signatures_bytes(signatures: Mapping[str, bytes]) -> bytes:
    return canonical.pack({org: bytes(sig) for org, sig in sorted(signatures.items())})


def make_genesis(config: ConsortiumConfig, signatures: Mapping[str, bytes]) -> Block:
    """Block 0: the consortium configuration and its organizations' signatures
    (org id -> :meth:`ConsortiumConfig.sign_as_org`), as two entries; no orderer
    signature (:data:`GENESIS_SIGNATURE`). With some signatures missing this is a
    draft (:func:`read_genesis_draft`), which :func:`parse_genesis` refuses."""
    txs = (config.to_bytes(), _signatures_bytes(signatures))
    if not batch_fits(len(txs), sum(len(t) for t in txs)):
        raise ValueError("the genesis does not fit in a block")
    return Block(0, ZERO_HASH, config.created_at, merkle_root(txs), txs, GENESIS_SIGNATURE)


def read_genesis_draft(genesis: bytes | Block) -> tuple[ConsortiumConfig, dict[str, bytes]]:
    """The configuration and the valid member signatures of a genesis that may
    still lack some (a draft being signed). Raises DecodeError when the block is not
    a genesis, or when a signature is not a member's or does not verify."""
    block = genesis if isinstance(genesis, Block) else Block.from_bytes(genesis)
    if block.height != 0 or len(block.txs) != 2 or block.prev_hash != ZERO_HASH:
        raise DecodeError("genesis must be block 0 with a configuration and its signatures")
    if block.tx_root != merkle_root(block.txs) or block.orderer_sig != GENESIS_SIGNATURE:
        raise DecodeError("genesis block is malformed (Merkle root or block signature)")
    config = ConsortiumConfig.from_bytes(block.txs[0])
    if block.timestamp != config.created_at:
        raise DecodeError("genesis block time differs from the configuration's")
    sigs = canonical.unpack(block.txs[1], max_size=MAX_BLOCK_BYTES, what="genesis signatures")
    if not isinstance(sigs, dict) or len(sigs) > MAX_GENESIS_SIGNATURES:
        raise DecodeError("genesis signatures must be a map of organization -> signature")
    out: dict[str, bytes] = {}
    for org, sig in sigs.items():
        if not isinstance(org, str) or not isinstance(sig, bytes):
            raise DecodeError("genesis signatures must be a map of organization -> signature")
        if config.org(org) is None:
            raise DecodeError(f"genesis carries a signature of {org[:80]!r}, not a member organization")
        if not config.is_signed_by(org, sig):
            raise DecodeError(f"genesis signature of {org} does not verify under its admin key")
        out[org] = sig
    if block.txs[1] != _signatures_bytes(out):
        raise DecodeError("genesis signatures are not in canonical form")
    return config, out


def missing_signatures(config: ConsortiumConfig, signatures: Mapping[str, bytes]) -> list[str]:
    """The member organizations whose valid signature over ``config`` is not in ``signatures``."""
    return [o.id for o in config.orgs if not (o.id in signatures and config.is_signed_by(o.id, signatures[o.id]))]


CONFIG_KEY = "meta/config"
"""World state: the configuration in force once a ``config`` transaction changed the
genesis's: ``{config: bytes, seq: int, height: int}`` (absent: the genesis's, seq 0)."""
CONFIG_CHANGE_TAG = "emrshare/v1/config-change"


def config_change_message(current: ConsortiumConfig, seq: int, new: ConsortiumConfig) -> bytes:
    """What a member organization's admin signs to approve the change from ``current``
    (the ``seq``-th configuration: 0 is the genesis's) to ``new``."""
    return canonical.pack([seq, current.digest(), new.digest()])


def sign_config_change(current: ConsortiumConfig, seq: int, new: ConsortiumConfig, admin_private_key: bytes) -> bytes:
    return ecdsa.sign(admin_private_key, CONFIG_CHANGE_TAG, config_change_message(current, seq, new))


def check_config_change(current: ConsortiumConfig, seq: int, new: ConsortiumConfig,
                        signatures: Mapping[str, bytes]) -> None:
    """Raise ValidationError unless ``new`` adds or removes exactly one organization
    (with its peers) to or from ``current`` and a majority of ``current``'s members
    (more than half) signed the change (:func:`sign_config_change`).

    Everything else stays: the name, orderer, time rules, the other organizations
    and their peers (so a new organization's peers take ids and proxy indices no
    current peer holds: a configuration has them distinct). The threshold may
    change (still at most the number of peers)."""
    if (new.name, new.orderer_id, new.orderer_key, new.orderers, new.max_skew_ms, new.created_at) != (
            current.name, current.orderer_id, current.orderer_key, current.orderers, current.max_skew_ms,
            current.created_at):
        raise ValidationError("bad_config", "a configuration change keeps the name, orderers and time rules")
    cur_orgs, new_orgs = {o.id: o for o in current.orgs}, {o.id: o for o in new.orgs}
    added, removed = set(new_orgs) - set(cur_orgs), set(cur_orgs) - set(new_orgs)
    if len(added) + len(removed) != 1:
        raise ValidationError("bad_config", "a configuration change adds or removes exactly one organization")
    for org in set(cur_orgs) & set(new_orgs):
        if cur_orgs[org] != new_orgs[org] or [p for p in current.peers if p.org == org] != [
                p for p in new.peers if p.org == org]:
            raise ValidationError("bad_config", f"organization {org} and its peers must stay as they are")
    message = config_change_message(current, seq, new)
    approvals = 0
    for org, sig in signatures.items():
        info = cur_orgs.get(org) if isinstance(org, str) else None
        if info is None or not isinstance(sig, bytes):
            raise ValidationError("bad_config", "config signatures must be current members' (org -> signature)")
        if not ecdsa.is_valid(info.admin_key, CONFIG_CHANGE_TAG, message, sig):
            raise ValidationError("bad_signature", f"the config change signature of {org} does not verify")
        approvals += 1
    if approvals * 2 <= len(cur_orgs):
        raise ValidationError("forbidden", f"a configuration change needs more than half of the "
                                           f"{len(cur_orgs)} member organizations; {approvals} signed")


@dataclass(frozen=True, slots=True)
class Genesis:
    """A checked genesis block and the consortium configuration it carries."""

    block: Block
    config: ConsortiumConfig

    @property
    def hash(self) -> bytes:
        return self.block.hash

    def to_bytes(self) -> bytes:
        return self.block.to_bytes()


def parse_genesis(genesis: bytes | Block | Genesis, *, orderer_key: bytes | None = None) -> Genesis:
    """Read a genesis: block 0 (after the zero hash) with two entries, the
    consortium configuration and its member organizations' signatures, with a
    matching Merkle root and no orderer signature (:func:`make_genesis`).

    Every member organization must have signed the configuration's digest with
    its admin key (:meth:`ConsortiumConfig.sign_as_org`): a node refuses a genesis
    that lacks one, so no organization can be made a member of, or bound by, a
    configuration it did not sign. Signatures make the genesis the members'
    agreement; which members to expect is still the deployment's: a node
    checks its own organization is in it (its keys are). A caller that holds the
    orderer's key from elsewhere (the orderer, its own signing key) passes it as
    ``orderer_key``: a genesis naming another key is refused. Raises DecodeError
    on any failure.
    """
    if isinstance(genesis, Genesis):  # checked when it was made
        parsed = genesis
    else:
        block = genesis if isinstance(genesis, Block) else Block.from_bytes(genesis)
        config, signatures = read_genesis_draft(block)
        missing = missing_signatures(config, signatures)
        if missing:
            raise DecodeError(f"genesis lacks the signature of member organization(s) {', '.join(missing)}")
        parsed = Genesis(block, config)
    if orderer_key is not None and orderer_key != parsed.config.orderer_key:
        raise DecodeError("genesis names another orderer key")
    return parsed


# ------------------------------------------------------------------ state


class KV(Protocol):
    """World state as :class:`Ledger` reads it. A KV may also offer
    ``get_many(keys) -> {key: value or None}`` (what ``get`` would return for each):
    :meth:`Ledger.apply` then reads every transaction's nonce entry of a block in
    one call instead of one ``get`` each (agents.ledger_store: one SQL query)."""

    def get(self, key: str) -> bytes | None: ...
    def scan(self, prefix: str) -> list[tuple[str, bytes]]: ...


class MemoryKV:
    """A dict-backed KV for tests and in-process ledgers."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def scan(self, prefix: str) -> list[tuple[str, bytes]]:
        return sorted((k, v) for k, v in self.data.items() if k.startswith(prefix))

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        return {k: self.data.get(k) for k in keys}

    def apply(self, writes: dict[str, bytes | None]) -> None:
        for k, v in writes.items():
            if v is None:
                self.data.pop(k, None)
            else:
                self.data[k] = v


class _Overlay:
    """Reads through to the KV (or a parent overlay), buffers writes. A block's
    overlay may hold values read ahead from the KV (``prefetched``: key -> the
    KV's value or None, read in one go before the block's first transaction)."""

    def __init__(self, parent: "KV | _Overlay", prefetched: Mapping[str, bytes | None] | None = None) -> None:
        self.parent = parent
        self.writes: dict[str, bytes | None] = {}
        self.prefetched = prefetched or {}

    def lookup(self, key: str) -> bytes | None:
        if key in self.writes:
            return self.writes[key]
        if isinstance(self.parent, _Overlay):
            return self.parent.lookup(key)
        if key in self.prefetched:
            return self.prefetched[key]
        return self.parent.get(key)

    def get(self, key: str) -> Any:
        raw = self.lookup(key)
        if raw is None:
            return None
        # State values are canonical.pack output written by Ledger itself, so the
        # canonical re-encoding check of canonical.unpack is skipped on this hot path
        # (a tampered store is caught by the state root and by `ledger verify`).
        try:
            return msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except Exception as exc:
            raise DecodeError(f"{key}: stored state value does not decode") from exc

    def put(self, key: str, value: Any) -> None:
        self.writes[key] = canonical.pack(value)


@dataclass(frozen=True, slots=True)
class CommitResult:
    height: int
    block_hash: bytes
    marks: tuple[str, ...]
    writes: dict[str, bytes | None]
    state_root: bytes
    # what apply decoded and hashed on its way, for the caller's commit processing (notices,
    # waiters): the block's transactions (None: did not decode) and their SHA-256 ids, in order
    txs: tuple[Transaction | None, ...] = field(default=(), compare=False, repr=False)
    tx_ids: tuple[bytes, ...] = field(default=(), compare=False, repr=False)

    @property
    def valid_count(self) -> int:
        return sum(1 for m in self.marks if m == "ok")


# ------------------------------------------------------------------ rules


def _body(tx: Transaction, spec: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check the body has exactly the fields of ``spec`` (name -> type or tuple of types),
    and maybe those of ``optional``."""
    body = tx.body
    optional = optional or {}
    if not set(spec) <= set(body) <= set(spec) | set(optional):
        raise ValidationError("malformed", f"{tx.type} body needs fields {sorted(spec)}"
                                           + (f" (optional: {sorted(optional)})" if optional else ""))
    for name, kind in {**spec, **optional}.items():
        if name not in body:
            continue
        value = body[name]
        if kind is int:  # every integer in a body is a count, size, index or time: 0 <= n < 2**63
            ok = type(value) is int and 0 <= value < 2**63
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise ValidationError("malformed", f"{tx.type} body field {name!r} has the wrong type or range")
    return body


def _id(value: str, what: str) -> str:
    try:
        return check_id(value, what)
    except DecodeError as exc:
        raise ValidationError("malformed", str(exc)) from exc


def _owned(state: Any, key: str, tx: Transaction, what: str, forbidden: str) -> dict[str, Any]:
    """The ``what`` (a request or a grant) stored at ``key``, which must exist
    (``not_found``) and concern the submitting patient (``forbidden``)."""
    entry = state.get(key)
    if entry is None:
        raise ValidationError("not_found", f"no such {what}")
    if entry["patient"] != tx.submitter:
        raise ValidationError("forbidden", forbidden)
    return entry


def _epoch(body: dict[str, Any]) -> int:
    """A body's optional label-key ``epoch`` (0 when absent), at most core.pre.MAX_EPOCH."""
    epoch = body.get("epoch", 0)
    if epoch > 2**32 - 1:
        raise ValidationError("malformed", "epoch must be at most 2**32 - 1")
    return epoch


def _text(value: str, what: str, limit: int = 256) -> str:
    if not 0 < len(value) <= limit:
        raise ValidationError("malformed", f"{what} must be 1..{limit} characters")
    return value


def record_body(tx: Transaction) -> dict[str, Any]:
    """A ``store`` or ``reseal`` body, checked: record id, label, media type, optional
    label-key ``epoch``, capsule on the curve (order-r subgroup, not the identity), CID."""
    body = _body(tx, {"record_id": str, "label": str, "cid": str, "size": int,
                      "media_type": str, "capsule": bytes}, {"epoch": int})
    _id(body["record_id"], "record id")
    _text(body["label"], "label", 128)
    _text(body["media_type"], "media type", 128)
    if "epoch" in body:
        _epoch(body)
    try:  # a bad capsule is refused here, never an `internal` at every re-encryption later
        G1.from_bytes(body["capsule"])
    except DecodeError as exc:
        raise ValidationError("malformed", f"capsule: {exc}") from exc
    try:
        parse_cid(body["cid"])
    except DecodeError as exc:
        raise ValidationError("malformed", f"cid: {exc}") from exc
    return body


def _put_record(state: Any, block: Block, tx: Transaction, key: str, body: dict[str, Any]) -> None:
    state.put(key, {"tx": tx.to_bytes(), "label": body["label"], "cid": body["cid"],
                    "size": body["size"], "media_type": body["media_type"],
                    "capsule": body["capsule"], "height": block.height,
                    **({"epoch": body["epoch"]} if body.get("epoch") else {})})


def store_record(state: Any, block: Block, tx: Transaction) -> dict[str, Any]:
    """The ``store`` rule after its submitter was found to be a patient: check the body
    (:func:`record_body`) and write ``record/<patient>/<record id>`` (``duplicate`` if
    it exists); returns the body.

    Shared by :class:`Ledger` and the light client (:mod:`core.lightclient`), as is
    :func:`reseal_record`, so both agree on which CIDs committed transactions name."""
    body = record_body(tx)
    key = record_key(tx.submitter, body["record_id"])
    if state.get(key) is not None:
        raise ValidationError("duplicate", f"record {body['record_id']} already stored")
    _put_record(state, block, tx, key, body)
    return body


def reseal_record(state: Any, block: Block, tx: Transaction) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``reseal`` rule after its submitter was found to be a patient: the record is
    re-sealed under a later label-key epoch (a rotation): same record id and label, a new
    blob, capsule and signature. Returns (the body, the record entry it replaced)."""
    body = record_body(tx)
    if "epoch" not in body:
        raise ValidationError("malformed", "reseal needs the epoch the record is re-sealed under")
    key = record_key(tx.submitter, body["record_id"])
    rec = state.get(key)
    if rec is None:
        raise ValidationError("not_found", f"record {body['record_id']} does not exist")
    if rec["label"] != body["label"]:
        raise ValidationError("malformed", "a re-sealed record keeps its label")
    if body["epoch"] <= rec.get("epoch", 0):
        raise ValidationError("bad_state", f"record {body['record_id']} is sealed under epoch "
                                           f"{rec.get('epoch', 0)} already; re-seal under a later one")
    _put_record(state, block, tx, key, body)
    return body, rec


class IdentityRules:
    """The ledger rules on identities, shared by :class:`Ledger` and the certificate
    light client (:class:`core.lightclient.CertificateLightClient`).

    * :meth:`check_block`: a block extends the given head, its Merkle root holds
      and an orderer of the genesis's set signed it (ConsortiumConfig.orderer_keys);
    * :meth:`check_submitter` and :meth:`check_nonce`: every transaction's
      timestamp is within the skew of its block's, its submitter is a peer or
      holds a registered certificate, not revoked and valid at the timestamp, its
      signature verifies, and its nonce is new for its submitter;
    * :meth:`register` and :meth:`revoke_cert`: the bodies of those transactions
      (``register`` = ``{cert, token_id}``: the certificate its organization's peer
      issued and the id of the enrollment token it spent, refused as ``duplicate``
      when that organization's token id was spent before; core.enrollment).

    ``state`` is a transaction's write buffer over world state (``get(key)`` a
    decoded value or None, ``put(key, value)``), as :meth:`Ledger.apply` gives it.
    The checks raise ValidationError with a reason code (DecodeError and the like
    for bodies that do not decode: the caller marks those ``malformed``).
    """

    def __init__(self, config: ConsortiumConfig, *, verify_pre_proofs: bool = True,
                 genesis_config: ConsortiumConfig | None = None):
        self.config = config
        self.genesis_config = genesis_config or config
        self.peers: Mapping[str, PeerInfo] = {p.id: p for p in config.peers}
        self.verify_pre_proofs = verify_pre_proofs

    def following(self, kv: "KV") -> "IdentityRules":
        """These rules, or new ones when ``kv``'s committed configuration (a ``config``
        transaction's, :data:`CONFIG_KEY`) is not the one they enforce."""
        raw = kv.get(CONFIG_KEY)
        wanted = self.genesis_config if raw is None else ConsortiumConfig.from_bytes(canonical.unpack(raw)["config"])
        if wanted == self.config:
            return self
        return IdentityRules(wanted, verify_pre_proofs=self.verify_pre_proofs, genesis_config=self.genesis_config)

    def check_block(self, block: Block, height: int, head_hash: bytes) -> None:
        """Raise ValidationError unless ``block`` is block ``height + 1`` after
        ``head_hash``, its Merkle root holds and an orderer of the set signed it."""
        if block.height != height + 1:
            raise ValidationError("bad_height", f"expected block {height + 1}, got {block.height}")
        if block.prev_hash != head_hash:
            raise ValidationError("bad_prev_hash", f"block {block.height} does not extend the head")
        if block.tx_root != merkle_root(block.txs):
            raise ValidationError("bad_tx_root", f"block {block.height}: Merkle root mismatch")
        if not any(block.is_valid_signature(key) for key in self.config.orderer_keys):
            raise ValidationError("bad_block_signature", f"block {block.height} is not signed by an orderer "
                                                         "of the consortium's set")

    def _submitter_key(self, state: "_Overlay", tx: Transaction) -> tuple[bytes, dict | None]:
        peer = self.peers.get(tx.submitter)
        if peer is not None:
            return peer.ecdsa_key, None
        entry = state.get(cert_key(tx.submitter))
        if entry is None:
            raise ValidationError("unknown_submitter", f"no certificate for {tx.submitter}")
        return entry["cert"]["ecdsa_key"], entry

    def check_submitter(self, state: "_Overlay", block: Block, tx: Transaction) -> None:
        if abs(tx.timestamp - block.timestamp) > self.config.max_skew_ms:
            raise ValidationError("stale_timestamp", "transaction timestamp outside the allowed skew")
        key, entry = self._submitter_key(state, tx)
        if not tx.is_valid_signature(key):
            raise ValidationError("bad_signature", f"signature of {tx.submitter} does not verify")
        if entry is not None:
            if entry["revoked"]:
                raise ValidationError("cert_revoked", f"certificate of {tx.submitter} is revoked")
            cert = entry["cert"]
            t = tx.timestamp // 1000
            if not cert["valid_from"] <= t < cert["valid_until"]:
                raise ValidationError("cert_expired", f"certificate of {tx.submitter} is not valid now")

    def check_nonce(self, state: "_Overlay", tx: Transaction) -> None:
        """Refuse a nonce its submitter used before; record it (in ``state``, so only
        if the whole transaction is valid)."""
        key = nonce_key(tx.submitter, tx.nonce)
        if state.get(key) is not None:
            raise ValidationError("replayed_nonce", "nonce already used")
        state.put(key, 1)

    def user(self, state: "_Overlay", tx: Transaction, role: str | None = None) -> dict:
        """The submitter's certificate entry: it must be a user (``forbidden`` for a peer)
        holding ``role`` if given; call after :meth:`check_submitter`."""
        if tx.submitter in self.peers:
            raise ValidationError("forbidden", f"{tx.type} must be submitted by a user, not a peer")
        entry = state.get(cert_key(tx.submitter))
        assert entry is not None
        if role is not None and entry["cert"]["attributes"].get("role") != role:
            raise ValidationError("forbidden", f"{tx.type} needs role {role!r}")
        return entry

    def register(self, state: "_Overlay", block: Block, tx: Transaction) -> None:
        peer = self.peers.get(tx.submitter)
        if peer is None:
            raise ValidationError("forbidden", "only a consortium peer registers users")
        body = _body(tx, {"cert": dict, "token_id": bytes})
        if len(body["token_id"]) != TOKEN_ID_SIZE:
            raise ValidationError("malformed", f"register token_id must be {TOKEN_ID_SIZE} bytes")
        try:
            cert = Certificate.from_dict(body["cert"])
        except DecodeError as exc:
            raise ValidationError("bad_certificate", str(exc)) from exc
        if cert.issuer != peer.id or cert.org != peer.org:
            raise ValidationError("forbidden", "a peer issues certificates for its own organization only")
        if cert.subject in self.peers or cert.subject in self.config.orderer_ids or \
                cert.subject == self.config.orderer_id:
            # a user named like a node would shadow it wherever the node is not known statically
            raise ValidationError("forbidden", f"{cert.subject} is a consortium node's id; a user may not take it")
        spent = token_key(cert.org, body["token_id"])
        if state.get(spent) is not None:
            raise ValidationError("duplicate", f"enrollment token {body['token_id'].hex()} of {cert.org} "
                                               "was used before")
        try:
            cert.verify_signature(peer.ecdsa_key)
        except CoreError as exc:
            raise ValidationError("bad_certificate", str(exc)) from exc
        if state.get(cert_key(cert.subject)) is not None:
            raise ValidationError("duplicate", f"subject {cert.subject} is already registered")
        if state.get(serial_key(cert.serial)) is not None:
            raise ValidationError("duplicate", f"serial {cert.serial} is already used")
        if self.verify_pre_proofs:
            from . import pre

            try:
                pre.verify_public_key(pre.PublicKey.from_bytes(cert.pre_key), cert.subject,
                                      pre.RECEIVE_LABEL, pre.Proof.from_bytes(cert.pre_proof))
            except CoreError as exc:
                raise ValidationError("bad_certificate", f"PRE key: {exc}") from exc
        try:
            ecdsa.decode_public_key(cert.ecdsa_key)
        except DecodeError as exc:
            raise ValidationError("bad_certificate", str(exc)) from exc
        state.put(cert_key(cert.subject), {"cert": cert.to_dict(), "revoked": False, "height": block.height})
        state.put(serial_key(cert.serial), cert.subject)
        state.put(spent, cert.subject)

    def current_config(self, state: "_Overlay") -> tuple[ConsortiumConfig, int]:
        """The configuration in force in ``state`` and its sequence number (0: the genesis's)."""
        entry = state.get(CONFIG_KEY)
        if entry is None:
            return self.genesis_config, 0
        return ConsortiumConfig.from_bytes(entry["config"]), entry["seq"]

    def config_change(self, state: "_Overlay", block: Block, tx: Transaction) -> None:
        """``config`` = ``{config, signatures}``: a peer submits a new configuration a
        majority of the member organizations signed (:func:`check_config_change`); it
        is in force from the next block on, on every peer."""
        if tx.submitter not in self.peers:
            raise ValidationError("forbidden", "only a consortium peer submits a configuration change")
        body = _body(tx, {"config": bytes, "signatures": dict})
        new = ConsortiumConfig.from_bytes(body["config"])
        current, seq = self.current_config(state)
        check_config_change(current, seq, new, body["signatures"])
        state.put(CONFIG_KEY, {"config": body["config"], "seq": seq + 1, "height": block.height})

    def revoke_cert(self, state: "_Overlay", block: Block, tx: Transaction) -> None:
        body = _body(tx, {"subject": str, "reason": str})
        _text(body["reason"], "reason")
        entry = state.get(cert_key(body["subject"]))
        if entry is None:
            raise ValidationError("not_found", f"no certificate for {body['subject']}")
        peer = self.peers.get(tx.submitter)
        if not (tx.submitter == body["subject"] or (peer is not None and peer.org == entry["cert"]["org"])):
            raise ValidationError("forbidden", "only the subject or its organization's peer revokes")
        if entry["revoked"]:
            raise ValidationError("bad_state", "certificate already revoked")
        entry["revoked"] = True
        entry["revoked_at"] = tx.timestamp
        entry["revoke_reason"] = body["reason"]
        state.put(cert_key(body["subject"]), entry)


class Ledger:
    """Validates and applies blocks over a KV world state.

    ``apply(block)`` does not mutate the KV: it returns a :class:`CommitResult`
    whose ``writes`` the caller persists atomically with the block (and then
    calls :meth:`committed`). Everything is a function of the genesis, the
    stored state and the block.
    """

    def __init__(self, genesis: Block | Genesis | bytes, kv: KV, *, verify_pre_proofs: bool = True):
        parsed = parse_genesis(genesis)
        self.genesis_config = parsed.config
        self.genesis = parsed.block
        self.kv = kv
        self.verify_pre_proofs = verify_pre_proofs
        self.rules = IdentityRules(parsed.config, verify_pre_proofs=verify_pre_proofs).following(kv)
        self._policies: dict[bytes, Policy] = {}
        # committed entries decoded into their views (core.state): key -> (stored bytes, view type, view)
        self._views: dict[str, tuple[bytes, type, Any]] = {}

    @property
    def config(self) -> ConsortiumConfig:
        """The configuration in force: the genesis's, or the last committed ``config``
        transaction's (as the KV holds it: once the caller persisted that block)."""
        self.rules = self.rules.following(self.kv)
        return self.rules.config

    @property
    def _peers(self) -> Mapping[str, PeerInfo]:
        return self.rules.peers

    # -- head -----------------------------------------------------------

    def head(self) -> tuple[int, bytes, bytes]:
        """(height, block hash, state root) of the last committed block."""
        raw = self.kv.get(HEAD_KEY)
        if raw is None:
            return 0, self.genesis.hash, hashlib.sha256(b"emrshare/v1/state" + self.genesis.hash).digest()
        d = canonical.unpack(raw)
        return d["height"], d["hash"], d["root"]

    @property
    def height(self) -> int:
        return self.head()[0]

    # -- blocks ---------------------------------------------------------

    def check_block(self, block: Block) -> None:
        """Raise ValidationError unless ``block`` extends the head, is signed and well-formed."""
        height, head_hash, _ = self.head()
        self.rules.check_block(block, height, head_hash)

    def apply(self, block: Block) -> CommitResult:
        self.rules = self.rules.following(self.kv)  # a config transaction committed before this block
        self.check_block(block)
        _, _, prev_root = self.head()
        decoded: list[Transaction | None] = []
        for raw in block.txs:
            try:
                decoded.append(Transaction.from_bytes(raw))
            except (DecodeError, ValueError, CoreError):
                decoded.append(None)  # marked malformed below
        get_many = getattr(self.kv, "get_many", None)
        prefetched = None
        if get_many is not None:  # every nonce check of the block in one read (a new nonce is never cached)
            prefetched = get_many([nonce_key(tx.submitter, tx.nonce) for tx in decoded if tx is not None])
        state = _Overlay(self.kv, prefetched)
        marks = []
        seen: set[bytes] = set()
        tx_ids = []
        for index, (raw, tx) in enumerate(zip(block.txs, decoded)):
            tx_id = hashlib.sha256(raw).digest()
            tx_ids.append(tx_id)
            if tx_id in seen:
                marks.append("duplicate_in_block")
                continue
            seen.add(tx_id)
            marks.append(self._apply_tx(state, block, index, tx))
        root = hashlib.sha256(
            prev_root + block.hash + canonical.pack(marks)
            + canonical.pack(sorted([k, v] for k, v in state.writes.items() if v is not None))
            + canonical.pack(sorted(k for k, v in state.writes.items() if v is None))
        ).digest()
        state.put(HEAD_KEY, {"height": block.height, "hash": block.hash, "root": root})
        return CommitResult(block.height, block.hash, tuple(marks), dict(state.writes), root, tuple(decoded),
                            tuple(tx_ids))

    def _apply_tx(self, state: _Overlay, block: Block, index: int, tx: Transaction | None) -> str:
        """The mark of ``tx`` (None: it did not decode, ``malformed``), its writes into ``state`` if valid."""
        if tx is None:
            return "malformed"
        tx_state = _Overlay(state)  # per-transaction buffer: invalid txs write nothing
        try:
            self._check_common(tx_state, block, tx)
            getattr(self, "_tx_" + tx.type)(tx_state, block, index, tx)
        except ValidationError as exc:
            return exc.code
        except (DecodeError, ValueError, CoreError):
            # any decode problem deep in a body is a malformed transaction
            return "malformed"
        for k, v in tx_state.writes.items():
            state.writes[k] = v
        return "ok"

    # -- common checks ----------------------------------------------------

    def _check_common(self, state: _Overlay, block: Block, tx: Transaction) -> None:
        self.rules.check_submitter(state, block, tx)
        self.rules.check_nonce(state, tx)

    def _user(self, state: _Overlay, tx: Transaction, role: str | None = None) -> dict:
        return self.rules.user(state, tx, role)

    def _audit(self, state: _Overlay, patient: str, block: Block, index: int, tx: Transaction,
               entry: int | None = None, tx_hash: bytes | None = None, **fields: Any) -> None:
        """Write the audit event of ``tx`` (``entry``: of its ``entry``-th entry; ``tx_hash``: its
        SHA-256 when the caller has it); ``fields`` add to, or override, the event's ``event``,
        ``actor``, ``time``, ``height``, ``tx``."""
        if entry is not None:
            fields["entry"] = entry
        state.put(
            audit_key(patient, block.height, index, entry),
            {"event": tx.type, "actor": tx.submitter, "time": tx.timestamp, "height": block.height,
             "tx": hashlib.sha256(tx.to_bytes()).digest() if tx_hash is None else tx_hash, **fields},
        )

    # -- transaction types -------------------------------------------------

    def _tx_register(self, state, block, index, tx) -> None:
        self.rules.register(state, block, tx)

    def _tx_config(self, state, block, index, tx) -> None:
        self.rules.config_change(state, block, tx)

    def _tx_revoke_cert(self, state, block, index, tx) -> None:
        self.rules.revoke_cert(state, block, tx)

    def _tx_store(self, state, block, index, tx) -> None:
        self._user(state, tx, "patient")
        body = store_record(state, block, tx)
        self._audit(state, tx.submitter, block, index, tx, record_id=body["record_id"],
                    label=body["label"], cid=body["cid"], **({"epoch": body["epoch"]} if "epoch" in body else {}))

    def _tx_reseal(self, state, block, index, tx) -> None:
        self._user(state, tx, "patient")
        body, rec = reseal_record(state, block, tx)
        self._audit(state, tx.submitter, block, index, tx, record_id=body["record_id"], label=body["label"],
                    cid=body["cid"], epoch=body["epoch"], previous_cid=rec["cid"])

    def _tx_set_policy(self, state, block, index, tx) -> None:
        self._user(state, tx, "patient")
        body = _body(tx, {"policy": bytes})
        try:
            policy = Policy.from_msgpack(body["policy"])
        except DecodeError as exc:
            raise ValidationError("malformed", f"policy: {exc}") from exc
        self._put_policy(state, block, tx, body["policy"], policy)
        self._audit(state, tx.submitter, block, index, tx, policy=policy.name, version=policy.version)

    def _put_policy(self, state, block, tx, raw: bytes, policy: Policy) -> None:
        """Commit ``policy`` as the submitter's, refusing a version not above the current one."""
        current = state.get(policy_key(tx.submitter))
        if current is not None and policy.version <= current["version"]:
            raise ValidationError("bad_state", f"policy version {policy.version} is not above the committed "
                                               f"version {current['version']}")
        state.put(policy_key(tx.submitter), {"policy": raw, "version": policy.version,
                                             "name": policy.name, "height": block.height})

    def _tx_access_request(self, state, block, index, tx) -> None:
        entry = self._user(state, tx)
        body = _body(tx, {"request_id": str, "patient": str, "record_id": str, "operation": str,
                          "purpose": (str, type(None))})
        _id(body["request_id"], "request id")
        _text(body["operation"], "operation", 64)
        if state.get(request_key(body["request_id"])) is not None:
            raise ValidationError("duplicate", "request id already used")
        rec = state.get(record_key(body["patient"], body["record_id"]))
        if rec is None:
            raise ValidationError("not_found", f"record {body['patient']}/{body['record_id']} does not exist")
        decision = self.evaluate(state, body["patient"], entry["cert"], body["operation"],
                                 body["record_id"], rec["label"], tx.timestamp // 1000, body["purpose"])
        status = "pending" if decision["effect"] == "allow" else "denied"
        req = {
            "doctor": tx.submitter, "patient": body["patient"], "record_id": body["record_id"],
            "label": rec["label"], "operation": body["operation"], "purpose": body["purpose"],
            "decision": decision, "status": status, "time": tx.timestamp, "height": block.height,
        }
        extra: dict[str, Any] = {}
        if status == "pending" and decision["approval"] == "auto":
            revoked_under = state.get(revoked_key(body["patient"], tx.submitter))
            if revoked_under is not None and revoked_under == decision["version"]:
                # revoked under this very policy: the patient decides, until it changes the policy
                req["hold"] = "revoked"
                extra["hold"] = "revoked"
            else:
                epoch = rec.get("epoch", 0)
                delegation_id = state.get(standing_key(body["patient"], rec["label"], epoch))
                delegation = None if delegation_id is None else state.get(delegation_key(delegation_id))
                if delegation is not None and delegation["mode"] == "auto":
                    grant_id = standing_grant_id(body["request_id"])
                    self._put_grant(state, tx.timestamp, block, grant_id, body["patient"], tx.submitter, req,
                                    body["request_id"], delegation["threshold"], delegation["parts"],
                                    tx.timestamp // 1000 + STANDING_GRANT_TTL_S, "label", epoch,
                                    delegation=delegation_id)
                    extra.update(grant_id=grant_id, standing=True)
        state.put(request_key(body["request_id"]), req)
        self._audit(state, body["patient"], block, index, tx, request_id=body["request_id"],
                    record_id=body["record_id"], label=rec["label"], decision=decision, **extra)

    def evaluate(self, state, patient: str, cert: dict, operation: str, record_id: str,
                 label: str, time_s: int, purpose: str | None) -> dict:
        """The patient's policy decision for this requester (a dict, see core.policy.Decision)."""
        pol = state.get(policy_key(patient))
        if pol is None:
            return {"effect": "deny", "approval": None, "rule": "no-policy",
                    "reason": "the patient has set no access policy", "policy": "", "version": 0}
        policy = self._policy(pol["policy"])
        # The reserved names come only from the certificate's own fields, never from
        # its attributes (Certificate refuses them there; this holds for any ledger).
        attrs = dict(cert["attributes"])
        attrs["organization"] = cert["org"]
        attrs["id"] = cert["subject"]
        request = PolicyRequest(attrs, operation, record_id, label, time_s, purpose)
        return policy.evaluate(request).to_dict()

    def _policy(self, raw: bytes) -> Policy:
        """Parsed policies, cached by their bytes (Policy objects are immutable)."""
        policy = self._policies.get(raw)
        if policy is None:
            policy = Policy.from_msgpack(raw)
            if len(self._policies) >= 1024:
                self._policies.clear()
            self._policies[raw] = policy
        return policy

    def _tx_grant(self, state, block, index, tx) -> None:
        self._user(state, tx, "patient")
        body = _body(tx, {"grant_id": str, "request_id": str, "threshold": int, "expires_at": int,
                          "shares": dict}, {"scope": str})
        scope = body.get("scope", "label")
        if scope not in ("record", "label"):
            raise ValidationError("malformed", "grant scope must be 'record' or 'label'")
        _id(body["grant_id"], "grant id")
        if body["grant_id"].startswith(LEDGER_GRANT_PREFIXES):
            # the ids of the grants the ledger makes (standing_grant_id, break_glass_grant_id): a
            # patient's grant under one would be overwritten by it, key shares and all
            raise ValidationError("malformed", f"grant ids starting with {' or '.join(LEDGER_GRANT_PREFIXES)} "
                                               "are the ledger's own")
        if state.get(grant_key(body["grant_id"])) is not None:
            raise ValidationError("duplicate", "grant id already used")
        req = _owned(state, request_key(body["request_id"]), tx, "request", "only the record's owner grants access")
        if req["decision"]["effect"] != "allow":
            raise ValidationError("not_allowed", "the request was denied by the policy")
        if req["status"] != "pending":
            raise ValidationError("bad_state", f"request is {req['status']}")
        shares = body["shares"]
        self._check_split(body["threshold"], shares, "share")
        if body["expires_at"] <= tx.timestamp // 1000:
            raise ValidationError("malformed", "grant expires in the past")
        rec = state.get(record_key(tx.submitter, req["record_id"]))
        self._put_grant(state, tx.timestamp, block, body["grant_id"], tx.submitter, req["doctor"], req,
                        body["request_id"], body["threshold"], shares, body["expires_at"], scope,
                        rec.get("epoch", 0) if rec is not None else 0)
        state.put(request_key(body["request_id"]), req)
        self._audit(state, tx.submitter, block, index, tx, grant_id=body["grant_id"],
                    request_id=body["request_id"], doctor=req["doctor"], label=req["label"],
                    peers=sorted(shares), scope=scope)

    def _check_split(self, threshold: int, digests: dict, noun: str) -> None:
        """A t-of-n split of key material over peers (a grant's shares, a delegation's
        parts): t at least the consortium's and at most n, one 32-byte hash per known peer."""
        if not 1 <= threshold <= len(digests) or threshold < self.config.threshold:
            raise ValidationError("malformed", f"threshold must be at least the consortium's and at most the {noun} count")
        for peer_id, digest in digests.items():
            if peer_id not in self._peers or not isinstance(digest, bytes) or len(digest) != 32:
                raise ValidationError("malformed", f"{noun}s must map peer ids to 32-byte hashes")

    def _put_grant(self, state, time_ms: int, block, grant_id: str, patient: str, doctor: str, req: dict,
                   request_id: str, threshold: int, shares: dict, expires_at: int, scope: str, epoch: int,
                   **origin: str) -> None:
        """Write a grant of the label key at ``epoch`` (and mark ``req``, which the caller puts, granted)."""
        req["status"] = "granted"
        req["grant_id"] = grant_id
        extra: dict[str, Any] = {"epoch": epoch} if epoch else {}
        state.put(grant_key(grant_id), {
            "patient": patient, "doctor": doctor, "label": req["label"], "record_id": req["record_id"],
            "request_id": request_id, "threshold": threshold, "expires_at": expires_at, "shares": shares,
            "revoked": False, "time": time_ms, "height": block.height, "scope": scope, **origin, **extra,
        })
        state.put(active_key(patient, doctor, grant_id), req["label"])

    def _tx_deny_request(self, state, block, index, tx) -> None:
        self._user(state, tx, "patient")
        body = _body(tx, {"request_id": str, "reason": str})
        req = _owned(state, request_key(body["request_id"]), tx, "request",
                     "only the record's owner answers a request")
        if req["status"] != "pending":
            raise ValidationError("bad_state", f"request is {req['status']}")
        req["status"] = "rejected"
        req["reject_reason"] = _text(body["reason"], "reason")
        state.put(request_key(body["request_id"]), req)
        self._audit(state, tx.submitter, block, index, tx, request_id=body["request_id"],
                    doctor=req["doctor"], reason=body["reason"])

    def _tx_revoke_grant(self, state, block, index, tx) -> None:
        self._user(state, tx, "patient")
        body = _body(tx, {"grant_id": str, "reason": str}, {"policy": bytes})
        grant = _owned(state, grant_key(body["grant_id"]), tx, "grant", "only the grantor revokes a grant")
        if grant["revoked"]:
            raise ValidationError("bad_state", "grant already revoked")
        extra: dict[str, Any] = {}
        if "policy" in body:  # narrow the policy in the same step
            try:
                policy = Policy.from_msgpack(body["policy"])
            except DecodeError as exc:
                raise ValidationError("malformed", f"policy: {exc}") from exc
            self._put_policy(state, block, tx, body["policy"], policy)
            extra.update(policy=policy.name, version=policy.version)
        grant["revoked"] = True
        grant["revoked_at"] = tx.timestamp
        state.put(grant_key(body["grant_id"]), grant)
        state.writes[active_key(tx.submitter, grant["doctor"], body["grant_id"])] = None
        pol = state.get(policy_key(tx.submitter))
        # no automatic grant for this doctor again until the policy changes
        state.put(revoked_key(tx.submitter, grant["doctor"]), pol["version"] if pol is not None else 0)
        self._audit(state, tx.submitter, block, index, tx, grant_id=body["grant_id"],
                    doctor=grant["doctor"], reason=_text(body["reason"], "reason"), **extra)

    def _tx_standing(self, state, block, index, tx) -> None:
        self._user(state, tx, "patient")
        body = _body(tx, {"delegation_id": str, "label": str, "mode": str, "threshold": int, "parts": dict},
                     {"epoch": int})
        label = _text(body["label"], "label", 128)
        if "/" in label:
            raise ValidationError("malformed", "a standing delegation's label may not contain '/'")
        epoch = _epoch(body)
        current = standing_key(tx.submitter, label, epoch)
        if body["mode"] == "off":  # withdraw
            if body["parts"] or body["threshold"] != 0:
                raise ValidationError("malformed", "withdrawing (mode off) carries no parts and threshold 0")
            if state.get(current) is None:
                raise ValidationError("not_found", f"no standing delegation of {label}")
            state.writes[current] = None
            self._audit(state, tx.submitter, block, index, tx, label=label, mode="off", epoch=epoch)
            return
        if body["mode"] not in DELEGATION_MODES:
            raise ValidationError("malformed", f"mode must be one of {DELEGATION_MODES + ('off',)}")
        _id(body["delegation_id"], "delegation id")
        if state.get(delegation_key(body["delegation_id"])) is not None:
            raise ValidationError("duplicate", "delegation id already used")
        parts = body["parts"]
        self._check_split(body["threshold"], parts, "part")
        state.put(delegation_key(body["delegation_id"]), {
            "patient": tx.submitter, "label": label, "mode": body["mode"], "threshold": body["threshold"],
            "parts": parts, "time": tx.timestamp, "height": block.height, "epoch": epoch})
        state.put(current, body["delegation_id"])
        self._audit(state, tx.submitter, block, index, tx, delegation_id=body["delegation_id"], label=label,
                    mode=body["mode"], peers=sorted(parts), epoch=epoch)

    def _tx_break_glass(self, state, block, index, tx) -> None:
        entry = self._user(state, tx)
        body = _body(tx, {"break_glass_id": str, "patient": str, "record_id": str, "reason": str,
                          "cosigners": dict})
        bg_id = _id(body["break_glass_id"], "break-glass id")
        reason = _text(body["reason"], "reason", 512)
        if state.get(break_glass_key(bg_id)) is not None:
            raise ValidationError("duplicate", "break-glass id already used")
        rec = state.get(record_key(body["patient"], body["record_id"]))
        if rec is None:
            raise ValidationError("not_found", f"record {body['patient']}/{body['record_id']} does not exist")
        pol = state.get(policy_key(body["patient"]))
        emergency = None if pol is None else self._policy(pol["policy"]).emergency
        if emergency is None:
            raise ValidationError("not_allowed", "the patient's policy has no emergency clause")
        cert = entry["cert"]
        if cert["attributes"].get("role") not in emergency.roles:
            raise ValidationError("forbidden", f"role {cert['attributes'].get('role')!r} may not break the glass")
        cosigners = body["cosigners"]
        if len(cosigners) > MAX_COSIGNERS:
            raise ValidationError("malformed", f"at most {MAX_COSIGNERS} co-signers")
        message = break_glass_message(bg_id, tx.submitter, body["patient"], body["record_id"], reason)
        t = tx.timestamp // 1000
        for officer, signature in sorted(cosigners.items()):
            if not isinstance(officer, str) or not isinstance(signature, bytes) or len(signature) != 64:
                raise ValidationError("malformed", "cosigners must map officer ids to 64-byte signatures")
            if officer == tx.submitter:
                raise ValidationError("forbidden", "the requesting doctor cannot co-sign its own break-glass")
            oentry = state.get(cert_key(officer))
            if oentry is None:
                raise ValidationError("unknown_submitter", f"no certificate for co-signer {officer}")
            ocert = oentry["cert"]
            if oentry["revoked"] or not ocert["valid_from"] <= t < ocert["valid_until"]:
                raise ValidationError("cert_revoked", f"co-signer {officer}'s certificate is not valid now")
            if ocert["org"] != cert["org"] or ocert["attributes"].get(OFFICER_ATTRIBUTE) is not True:
                raise ValidationError("forbidden", f"{officer} is not an officer of {cert['org']}")
            if not ecdsa.is_valid(ocert["ecdsa_key"], BREAK_GLASS_TAG, message, signature):
                raise ValidationError("bad_signature", f"co-signature of {officer} does not verify")
        if len(cosigners) < emergency.cosign:
            raise ValidationError("not_allowed", f"{len(cosigners)} officers co-signed; the patient's policy "
                                                 f"needs {emergency.cosign}")
        epoch = rec.get("epoch", 0)
        delegation_id = state.get(standing_key(body["patient"], rec["label"], epoch))
        delegation = None if delegation_id is None else state.get(delegation_key(delegation_id))
        if delegation is None:
            raise ValidationError("not_found", f"the patient deposited no standing or emergency parts for "
                                               f"label {rec['label']} (key epoch {epoch})")
        grant_id = break_glass_grant_id(bg_id)
        expires_at = t + emergency.window
        req = {"label": rec["label"], "record_id": body["record_id"]}
        self._put_grant(state, tx.timestamp, block, grant_id, body["patient"], tx.submitter, req, bg_id,
                        delegation["threshold"], delegation["parts"], expires_at, "label", epoch,
                        delegation=delegation_id, break_glass=bg_id)
        state.put(break_glass_key(bg_id), {
            "doctor": tx.submitter, "patient": body["patient"], "record_id": body["record_id"],
            "label": rec["label"], "reason": reason, "cosigners": sorted(cosigners), "expires_at": expires_at,
            "grant_id": grant_id, "time": tx.timestamp, "height": block.height})
        self._audit(state, body["patient"], block, index, tx, break_glass_id=bg_id, grant_id=grant_id,
                    doctor=tx.submitter, record_id=body["record_id"], label=rec["label"], reason=reason,
                    cosigners=sorted(cosigners), expires_at=expires_at, emergency=True)

    def _tx_access(self, state, block, index, tx) -> None:
        peer = self._peers.get(tx.submitter)
        if peer is None:
            raise ValidationError("forbidden", "only a peer logs a re-encryption")
        body = _body(tx, {"grant_id": str, "request_id": str, "record_id": str, "doctor": str, "index": int})
        grant = self._served_grant(state, tx.submitter, body, body["index"] == peer.index)
        if grant["revoked"]:
            raise ValidationError("bad_state", "grant revoked")
        if tx.timestamp // 1000 >= grant["expires_at"]:
            raise ValidationError("bad_state", "grant expired")
        self._audit(state, grant["patient"], block, index, tx, grant_id=body["grant_id"],
                    request_id=body["request_id"], record_id=body["record_id"],
                    doctor=body["doctor"], peer=tx.submitter, share_index=body["index"], **_grant_flags(grant))

    def _served_grant(self, state, peer_id: str, entry: Mapping[str, Any], index_ok: bool,
                      read: dict[str, Any] | None = None) -> dict[str, Any]:
        """The grant an access entry of ``peer_id`` names, after checking that a re-encryption
        under it could have served the entry: the peer holds a share of it (at its own
        index: ``index_ok``), and the doctor,
        request and record (in the grant's label and scope) are the grant's. The caller
        checks revocation and expiry. ``read``: state values already decoded by key (a batch's
        entries read the same grants and records; nothing in a batch writes them)."""
        get = state.get if read is None else _reader(state, read)
        grant = get(grant_key(entry["grant_id"]))
        if grant is None:
            raise ValidationError("not_found", "no such grant")
        if peer_id not in grant["shares"] or not index_ok:
            raise ValidationError("forbidden", "this peer holds no share of the grant")
        if grant["doctor"] != entry["doctor"]:
            raise ValidationError("forbidden", "grant is for another doctor")
        if grant["request_id"] != entry["request_id"]:
            raise ValidationError("forbidden", "the request id is not the grant's")
        # only an access a re-encryption under this grant could have served enters the audit trail
        rec = get(record_key(grant["patient"], entry["record_id"]))
        if rec is None:
            raise ValidationError("not_found", f"no record {grant['patient']}/{entry['record_id']}")
        if rec["label"] != grant["label"] or (grant.get("scope") == "record"
                                              and entry["record_id"] != grant["record_id"]):
            raise ValidationError("forbidden", "the grant does not cover this record")
        return grant

    def _tx_access_batch(self, state, block, index, tx) -> None:
        """A peer's re-encryptions since its last batch, one ``access`` audit event each
        (docs/protocol.md, "Ledger transaction ``access_batch``"). The batch is refused whole
        when an entry could not have been served (:meth:`_served_grant`), is malformed, or
        repeats another; an entry whose grant is revoked when the batch commits, or had
        expired at the batch's timestamp, is recorded flagged ``late: "revoked"`` /
        ``"expired"`` (its share was served before the peer saw that), unless it was served
        more than :data:`LATE_SERVE_SKEWS` skews after the revocation or at the expiry plus
        one skew (no honest peer serves that late: the batch is refused ``bad_state``)."""
        peer = self._peers.get(tx.submitter)
        if peer is None:
            raise ValidationError("forbidden", "only a peer logs re-encryptions")
        body = _body(tx, {"index": int, "entries": list})
        if body["index"] != peer.index:
            raise ValidationError("forbidden", "the index is not this peer's")
        entries = body["entries"]
        if not 0 < len(entries) <= MAX_ACCESS_ENTRIES:
            raise ValidationError("malformed", f"an access batch carries 1..{MAX_ACCESS_ENTRIES} entries")
        oldest = max(0, tx.timestamp - self.rules.config.max_skew_ms)
        seen: set[tuple] = set()
        read: dict[str, Any] = {}
        # an entry's checks but its time's, by (grant_id, request_id, record_id, doctor): the
        # same for every entry naming them (nothing in a batch writes grants or records)
        served: dict[tuple, tuple[dict[str, Any], dict[str, bool]]] = {}
        late_by = self.rules.config.max_skew_ms * LATE_SERVE_SKEWS
        events = []
        for entry in entries:
            if not isinstance(entry, dict):
                raise ValidationError("malformed", "an access batch entry is a map")
            fields = tuple(entry.get(name) for name in ACCESS_ENTRY_FIELDS)
            if len(entry) != len(ACCESS_ENTRY_FIELDS) or not all(isinstance(v, str) for v in fields[:4]) or \
                    type(fields[4]) is not int:
                raise ValidationError("malformed", f"an access batch entry has exactly the fields "
                                                   f"{', '.join(ACCESS_ENTRY_FIELDS)} (4 strings, an integer)")
            if not oldest <= entry["time"] <= tx.timestamp:
                raise ValidationError("malformed", "an access entry is served at most the allowed skew "
                                                   "before its batch, and not after it")
            if fields in seen:
                raise ValidationError("malformed", "an access batch lists the same entry twice")
            seen.add(fields)
            hit = served.get(fields[:4])
            if hit is None:
                grant = self._served_grant(state, tx.submitter, entry, True, read)
                hit = served[fields[:4]] = (grant, _grant_flags(grant))
            grant, flags = hit[0], dict(hit[1])
            # late: served before the peer saw the revocation or expiry, so at most
            # LATE_SERVE_SKEWS skews after it (an honest peer checks both before serving)
            if grant["revoked"]:
                if entry["time"] > grant.get("revoked_at", entry["time"]) + late_by:
                    raise ValidationError("bad_state", "an access entry served long after its grant was revoked")
                flags["late"] = "revoked"
            elif tx.timestamp // 1000 >= grant["expires_at"]:
                if entry["time"] >= grant["expires_at"] * 1000 + self.rules.config.max_skew_ms:
                    raise ValidationError("bad_state", "an access entry served after its grant expired")
                flags["late"] = "expired"
            events.append((grant["patient"], entry, flags))
        tx_hash = hashlib.sha256(tx.to_bytes()).digest()
        height, peer_index = block.height, body["index"]
        for n, (patient, entry, flags) in enumerate(events):
            # what _audit writes (event "access", the entry's time), built in key order: canonical
            # encoding then takes the map as it is (the same bytes; ~64 events a batch, on every peer)
            event = {"actor": tx.submitter, "doctor": entry["doctor"], "entry": n, "event": "access",
                     "grant_id": entry["grant_id"], "height": height, "peer": tx.submitter,
                     "record_id": entry["record_id"], "request_id": entry["request_id"], "share_index": peer_index,
                     "time": entry["time"], "tx": tx_hash}
            if flags:
                event = dict(sorted({**event, **flags}.items()))
            state.put(audit_key(patient, height, index, n), event)

    # -- queries (read committed state) -------------------------------------

    def get(self, key: str) -> Any:
        """The decoded value at ``key`` (a map for entries; what ``peer.query`` answers), or None."""
        raw = self.kv.get(key)
        return None if raw is None else canonical.unpack(raw, max_size=1 << 22, what=key)

    def _view(self, key: str, view: type) -> Any:
        """The committed entry at ``key`` as a ``view`` (core.state), or None.

        A memo of decoded views, each kept with the stored bytes it was decoded from and
        answered only while the KV still holds those bytes (the same object, as the peer's
        store cache returns, or equal ones). A commit that writes ``key`` changes its bytes,
        so the next read decodes again: the memo needs no invalidation and answers exactly
        what a fresh decode would (views are frozen, their maps read-only). Bounded: cleared
        when :data:`VIEW_CACHE` keys are held."""
        raw = self.kv.get(key)
        if raw is None:
            return None
        hit = self._views.get(key)
        if hit is not None and hit[1] is view and (hit[0] is raw or hit[0] == raw):
            return hit[2]
        value = view.from_state(canonical.unpack(raw, max_size=1 << 22, what=key))
        views = self._views
        if len(views) >= VIEW_CACHE:
            views.clear()
        views[key] = (raw, view, value)
        return value

    def certificate(self, subject: str) -> CertEntry | None:
        return self._view(cert_key(subject), CertEntry)

    def record(self, patient: str, record_id: str) -> RecordEntry | None:
        return self._view(record_key(patient, record_id), RecordEntry)

    def policy(self, patient: str) -> PolicyEntry | None:
        return self._view(policy_key(patient), PolicyEntry)

    def parsed_policy(self, patient: str) -> Policy | None:
        """The patient's committed policy, parsed (cached by its bytes, as validation does)."""
        entry = self.policy(patient)
        return None if entry is None else self._policy(entry.policy)

    def request(self, request_id: str) -> RequestEntry | None:
        return self._view(request_key(request_id), RequestEntry)

    def grant(self, grant_id: str) -> GrantEntry | None:
        return self._view(grant_key(grant_id), GrantEntry)

    def delegation(self, delegation_id: str) -> DelegationEntry | None:
        return self._view(delegation_key(delegation_id), DelegationEntry)

    def current_delegation(self, patient: str, label: str, epoch: int = 0) -> str | None:
        """The id of ``patient``'s current standing delegation of ``label`` at ``epoch`` (None: none)."""
        value = self.get(standing_key(patient, label, epoch))
        return value if isinstance(value, str) else None

    def check_reencryption(self, grant_id: str, doctor: str, patient: str | None, record_id: str,
                           now_s: int) -> tuple[GrantEntry, RecordEntry]:
        """A peer's live check before re-encrypting; returns (grant, record) or raises
        ValidationError with a reason code (not_found, forbidden, bad_state, not_allowed,
        cert_revoked, cert_expired). ``patient`` None: the grant's (the record is looked up
        under the grant's patient)."""
        grant = self.grant(grant_id)
        if grant is None:
            raise ValidationError("not_found", f"no grant {grant_id}")
        if patient is None:
            patient = grant.patient
        if grant.doctor != doctor or grant.patient != patient:
            raise ValidationError("forbidden", "grant is for another doctor or patient")
        if grant.revoked:
            raise ValidationError("bad_state", "grant revoked")
        if now_s >= grant.expires_at:
            raise ValidationError("bad_state", "grant expired")
        rec = self.record(patient, record_id)
        if rec is None:
            raise ValidationError("not_found", f"no record {patient}/{record_id}")
        if rec.label != grant.label:
            raise ValidationError("forbidden", "record is under another label than the grant")
        if not grant.covers(record_id):
            raise ValidationError("forbidden", f"the grant covers record {grant.record_id} only (the patient "
                                               "approved that record)")
        if (grant.epoch or 0) != rec.key_epoch:
            raise ValidationError("forbidden", f"record {record_id} is sealed under label-key epoch "
                                               f"{rec.key_epoch}, the grant under {grant.epoch or 0}: request again")
        if grant.delegation is not None and \
                self.current_delegation(patient, rec.label, rec.key_epoch) != grant.delegation:
            raise ValidationError("bad_state", "the patient withdrew or replaced the standing delegation")
        entry = self.certificate(doctor)
        if entry is None:
            raise ValidationError("unknown_submitter", f"no certificate for {doctor}")
        if entry.revoked:
            raise ValidationError("cert_revoked", f"certificate of {doctor} is revoked")
        cert = entry.cert
        if not cert.valid_from <= now_s < cert.valid_until:
            raise ValidationError("cert_expired", f"certificate of {doctor} is not valid now")
        if grant.break_glass is not None:
            return grant, rec  # an emergency access: co-signed, time-boxed, and not the policy's to decide
        req = self.request(grant.request_id)
        # a re-encryption lets the doctor read the record, whatever operation its request named
        # (the decision evaluate() makes, from the memoized views)
        pol = self.policy(patient)
        if pol is None:
            raise ValidationError("not_allowed", "policy now denies: the patient has set no access policy")
        attrs = dict(cert.attributes)
        attrs["organization"] = cert.org
        attrs["id"] = cert.subject
        decision = self._policy(pol.policy).evaluate(
            PolicyRequest(attrs, "read", record_id, rec.label, now_s, req.purpose if req else None)).to_dict()
        if decision["effect"] != "allow":
            raise ValidationError("not_allowed", f"policy now denies: {decision['reason']}")
        if grant.delegation is not None and decision["approval"] != "auto":
            raise ValidationError("not_allowed", "the policy no longer pre-authorizes this doctor "
                                                 "(approval patient): ask the patient")
        if grant.delegation is not None and self.get(revoked_key(patient, doctor)) == decision["version"]:
            # a grant the policy made is held as a new request would be: the patient revoked this
            # doctor under the policy version now in force (any of its grants, not only this one)
            raise ValidationError("not_allowed", "the patient revoked this doctor under the policy now in "
                                                 "force: ask the patient")
        return grant, rec

    def audit(self, patient: str) -> list[dict]:
        return [canonical.unpack(v) for _, v in self.kv.scan(audit_prefix(patient))]

    def audit_page(self, patient: str, after: str | None = None,
                   limit: int = AUDIT_PAGE) -> tuple[list[dict], str | None]:
        """Up to ``limit`` events of ``patient``'s trail whose audit key follows ``after``
        (None: from the start), oldest first, and the key to continue after (None: the
        trail ends here). A KV offering ``scan_page(prefix, after, limit)`` (rows of the
        prefix with keys greater than ``after``, in key order, at most ``limit``) is read
        one page at a time; another KV is scanned whole. ValueError for an ``after`` that
        is not a key of this patient's trail."""
        prefix = audit_prefix(patient)
        if after is not None and not after.startswith(prefix):
            raise ValueError("not a key of this patient's audit trail")
        if limit < 1:
            raise ValueError("limit must be positive")
        page = getattr(self.kv, "scan_page", None)
        if page is not None:
            rows = page(prefix, after, limit + 1)
        else:
            rows = [(k, v) for k, v in self.kv.scan(prefix) if after is None or k > after][:limit + 1]
        more = len(rows) > limit
        rows = rows[:limit]
        return [canonical.unpack(v) for _, v in rows], (rows[-1][0] if more and rows else None)


def _reader(state: Any, read: dict[str, Any]) -> Any:
    """``state.get`` that decodes each key once into ``read`` (key -> decoded value or None)."""
    def get(key: str) -> Any:
        if key in read:
            return read[key]
        value = read[key] = state.get(key)
        return value
    return get


# ------------------------------------------------------------------ commit proofs


def _grant_flags(grant: Mapping[str, Any]) -> dict[str, bool]:
    """The audit flags of an access under ``grant``: made from a standing delegation, or a break-glass."""
    flags = {}
    if grant.get("delegation") is not None:
        flags["standing"] = True
    if grant.get("break_glass") is not None:
        flags["emergency"] = True
    return flags


def effect_key(tx: Transaction) -> str | None:
    """The state key whose entry shows that ``tx`` committed (read it, then ask
    :func:`shows_effect`); None for ``access`` and ``access_batch``, whose only trace is an audit event
    at a height nobody knows in advance: its recorded nonce alone shows it (a
    nonce is recorded only for a valid transaction).

    DecodeError when the body lacks the fields naming the entry (such a
    transaction cannot have committed).
    """
    body = tx.body
    try:
        if tx.type == "register":
            return cert_key(_named(body["cert"]["subject"]))
        if tx.type == "revoke_cert":
            return cert_key(_named(body["subject"]))
        if tx.type == "store":
            return record_key(tx.submitter, _named(body["record_id"]))
        if tx.type == "set_policy":
            return policy_key(tx.submitter)
        if tx.type in ("access_request", "deny_request"):
            return request_key(_named(body["request_id"]))
        if tx.type in ("grant", "revoke_grant"):
            return grant_key(_named(body["grant_id"]))
        if tx.type == "standing":
            epoch = body.get("epoch", 0)
            if type(epoch) is not int or epoch < 0:
                raise DecodeError("standing epoch must be a non-negative integer")
            return standing_key(tx.submitter, _label(body["label"]), epoch)
        if tx.type == "reseal":
            return record_key(tx.submitter, _named(body["record_id"]))
        if tx.type == "break_glass":
            return break_glass_key(_named(body["break_glass_id"]))
        if tx.type == "config":
            return CONFIG_KEY
    except (KeyError, TypeError) as exc:
        raise DecodeError(f"{tx.type} body does not name its entry") from exc
    return None


def _named(value: Any) -> str:
    return check_id(value, "id")


def _label(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 128 or "/" in value:
        raise DecodeError("label must be 1..128 characters without '/'")
    return value


def shows_effect(tx: Transaction, value: Any) -> bool:
    """Whether ``value``, the decoded entry at :func:`effect_key` (None if absent),
    shows that ``tx`` committed.

    The entry must carry the transaction's own data: the same certificate, the
    same ``store`` transaction, the same policy bytes, a request by this doctor
    for this record, operation and purpose, a grant by this patient of this
    request with the same threshold, expiry and shares. A revocation shows once
    the certificate or grant is revoked, a rejection once the request is
    rejected, by whichever transaction (the outcome asked for holds). A malformed
    entry shows nothing. For ``access`` and ``access_batch`` (no entry) it is True.
    """
    body = tx.body
    try:
        if tx.type == "register":
            return value is not None and CertEntry.from_state(value).cert == Certificate.from_dict(body["cert"])
        if tx.type == "revoke_cert":
            return value is not None and CertEntry.from_state(value).revoked
        if tx.type in ("store", "reseal"):  # (a later reseal replaces what a store showed)
            return value is not None and RecordEntry.from_state(value).tx == tx.to_bytes()
        if tx.type == "set_policy":
            return value is not None and PolicyEntry.from_state(value).policy == body["policy"]
        if tx.type == "access_request":
            req = RequestEntry.from_state(value) if value is not None else None
            return req is not None and (req.doctor, req.patient, req.record_id, req.operation, req.purpose) == (
                tx.submitter, body["patient"], body["record_id"], body["operation"], body["purpose"])
        if tx.type == "deny_request":
            req = RequestEntry.from_state(value) if value is not None else None
            return req is not None and req.patient == tx.submitter and req.status == "rejected"
        if tx.type == "grant":
            grant = GrantEntry.from_state(value) if value is not None else None
            return grant is not None and (
                grant.patient, grant.request_id, grant.threshold, grant.expires_at, dict(grant.shares)) == (
                tx.submitter, body["request_id"], body["threshold"], body["expires_at"], body["shares"])
        if tx.type == "revoke_grant":
            grant = GrantEntry.from_state(value) if value is not None else None
            return grant is not None and grant.patient == tx.submitter and grant.revoked
        if tx.type == "standing":
            return value is None if body["mode"] == "off" else value == body["delegation_id"]
        if tx.type == "break_glass":
            return isinstance(value, dict) and (value.get("doctor"), value.get("patient"), value.get("record_id")) \
                == (tx.submitter, body["patient"], body["record_id"])
        if tx.type == "config":  # (a later change replaces what this one showed)
            return isinstance(value, dict) and value.get("config") == body["config"]
    except (KeyError, TypeError, DecodeError):
        return False
    return True
