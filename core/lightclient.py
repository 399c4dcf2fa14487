"""A sans-I/O certificate light client: the ledger's certificates and stored CIDs, followed from its blocks.

For agents that do not validate the whole ledger (storage nodes), who still
need to know which users may talk to them and which blobs committed ``store``
transactions name (the blobs they must keep, :mod:`agents.storage.reconcile`). :class:`CertificateLightClient`
takes the chain's blocks in order (:meth:`~CertificateLightClient.apply`,
bytes in, :class:`CertificateChange` values out; no I/O, no clock), checks each
block as a peer does (it extends the last one, its Merkle root holds, the
orderer signed it) and applies the ledger's own rules
(:class:`core.ledger.IdentityRules`: timestamp, submitter, signature, nonce,
then the ``register`` or ``revoke_cert`` body) to its certificate transactions,
and the ledger's ``store`` and ``reseal`` rules (a patient's certificate,
:func:`core.ledger.store_record`, :func:`core.ledger.reseal_record`) to its
``store`` and ``reseal`` transactions (:meth:`~CertificateLightClient.apply_all`
returns the :class:`StoredRecord` values a block committed,
:meth:`~CertificateLightClient.records` the current one of every record: a re-seal
replaces the record's blob, so the old CID is no longer named), and the
ledger's ``config`` rule (:meth:`core.ledger.IdentityRules.config_change`: a
majority of member organizations adds or removes one), whose new configuration
decides, from the next block on, which peers may register users. Every other
transaction type is skipped without being verified.

It agrees with a full :class:`core.ledger.Ledger` fed the same blocks on the
set of registered, unrevoked certificates and on the set of stored records,
with one exception it cannot see: nonces. It records the nonces of the
certificate, store and reseal transactions it applies, not those of other types, so a
``register``, ``revoke_cert``, ``store`` or ``reseal`` that reuses a nonce its submitter
spent on another type of transaction is refused by the ledger
(``replayed_nonce``) and accepted here. Nonces are random: only a submitter
doing it on purpose gets there, and that submitter (the issuing peer, the
subject or its peer for a revocation, the patient for a store) could register,
revoke or store validly anyway. A store so accepted only makes the storage
nodes keep a blob the patient could have stored with a fresh nonce; a
revocation so accepted is worse: the storage nodes then treat the subject as
revoked while the ledger does not, refuse its later puts, and no longer
count its later stores, so a blob it puts and commits afterwards can be
collected as unnamed after the grace period. Only the subject or its own
hospital's peer can cause this, to that subject alone (an open gap:
docs/security.md).

Errors: :class:`~core.errors.DecodeError` when a block does not decode,
:class:`~core.errors.ValidationError` (codes ``bad_height``, ``bad_prev_hash``,
``bad_tx_root``, ``bad_block_signature``, as :meth:`core.ledger.Ledger.check_block`)
when it does not extend the last block applied or is not the orderer's. A block
refused changes nothing; the caller logs it and fetches the missing blocks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .canonical import unpack
from .errors import CoreError, DecodeError, ValidationError
from .identity import Certificate, ConsortiumConfig
from .ledger import Block, Genesis, IdentityRules, MemoryKV, _Overlay, parse_genesis, reseal_record, store_record
from .state import CertEntry, cert_key, certs_prefix, parse_key, record_key
from .tx import Transaction

__all__ = ["BlockChanges", "CertificateChange", "CertificateLightClient", "StoredRecord"]


@dataclass(frozen=True, slots=True)
class CertificateChange:
    """A certificate registered (``certificate`` set) or revoked (``certificate`` None)
    by block ``height``."""

    subject: str
    certificate: Certificate | None
    height: int

    @property
    def ecdsa_key(self) -> bytes | None:
        """The subject's key from now on (None: forget it)."""
        return None if self.certificate is None else self.certificate.ecdsa_key


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record a committed ``store`` transaction named: the blob ``cid`` (``size``
    bytes, as the patient declared it) that ``patient`` stored as ``record_id`` in
    block ``height``."""

    patient: str
    record_id: str
    cid: str
    size: int
    height: int


@dataclass(frozen=True, slots=True)
class BlockChanges:
    """What one block changed for a light client: certificates and stored records."""

    certificates: list[CertificateChange]
    records: list[StoredRecord]


class CertificateLightClient:
    """Follows the ledger's certificates from its blocks (see the module docstring).

    ``genesis`` is the chain's genesis (bytes, a Block, or a parsed
    :class:`core.ledger.Genesis`; checked by :func:`core.ledger.parse_genesis`).
    ``verify_pre_proofs`` as for :class:`core.ledger.Ledger` (the ledger checks
    each certificate's PRE key proof; leave it on to agree with the ledger).
    """

    def __init__(self, genesis: Genesis | Block | bytes, *, verify_pre_proofs: bool = True):
        parsed = parse_genesis(genesis)
        self.rules = IdentityRules(parsed.config, verify_pre_proofs=verify_pre_proofs)
        self.height = 0
        self.head_hash = parsed.hash
        # cert/, serial/, token/ (spent enrollment tokens), record/ and the certificate and store
        # transactions' nonce/ entries, as the ledger writes them
        self._kv = MemoryKV()
        self._records: dict[tuple[str, str], StoredRecord] = {}

    @property
    def config(self) -> ConsortiumConfig:
        """The configuration in force (the genesis's, or the last committed ``config`` transaction's)."""
        return self.rules.config

    def apply(self, block: Block | bytes) -> list[CertificateChange]:
        """Apply the next block; the certificates it registered or revoked, by subject.

        Raises DecodeError or ValidationError (then nothing changed)."""
        return self.apply_all(block).certificates

    def apply_all(self, block: Block | bytes) -> BlockChanges:
        """Apply the next block; the certificates it registered or revoked (by subject)
        and the records it stored (in block order).

        Raises DecodeError or ValidationError (then nothing changed)."""
        if not isinstance(block, Block):
            block = Block.from_bytes(block)
        self.rules = self.rules.following(self._kv)
        self.rules.check_block(block, self.height, self.head_hash)
        state = _Overlay(self._kv)
        seen: set[bytes] = set()
        stored: list[StoredRecord] = []
        for raw in block.txs:
            tx_id = hashlib.sha256(raw).digest()
            if tx_id in seen:  # the ledger marks a second copy duplicate_in_block
                continue
            seen.add(tx_id)
            record = self._apply_tx(state, block, raw)
            if isinstance(record, StoredRecord):
                stored.append(record)
        changes = []
        for key, value in sorted(state.writes.items()):
            if value is not None and parse_key(key).kind == "cert":
                entry = CertEntry.from_state(unpack(value, what=key))
                changes.append(CertificateChange(entry.subject, None if entry.revoked else entry.cert,
                                                 block.height))
        self._kv.apply(state.writes)
        self.rules = self.rules.following(self._kv)
        self.height, self.head_hash = block.height, block.hash
        for record in stored:
            self._records[(record.patient, record.record_id)] = record
        return BlockChanges(changes, stored)

    def _apply_tx(self, state: _Overlay, block: Block, raw: bytes) -> str | StoredRecord:
        """The ledger's mark for a certificate transaction ("skipped" for other types);
        for a valid ``store``, the record it stored."""
        try:
            tx = Transaction.from_bytes(raw)
        except DecodeError:
            return "malformed"
        if tx.type not in ("register", "revoke_cert", "store", "reseal", "config"):
            return "skipped"
        tx_state = _Overlay(state)  # an invalid transaction writes nothing
        result: str | StoredRecord = "ok"
        try:
            self.rules.check_submitter(tx_state, block, tx)
            self.rules.check_nonce(tx_state, tx)
            if tx.type == "register":
                self.rules.register(tx_state, block, tx)
            elif tx.type == "revoke_cert":
                self.rules.revoke_cert(tx_state, block, tx)
            elif tx.type == "config":  # who registers and who submits follows the configuration
                self.rules.config_change(tx_state, block, tx)
            else:
                self.rules.user(tx_state, tx, "patient")
                if tx.type == "store":
                    body = store_record(tx_state, block, tx)
                else:  # a re-seal names the record's new blob; the old one is no longer named
                    body, _ = reseal_record(tx_state, block, tx)
                # the entry's bytes (the transaction, the capsule) are not needed here: what the
                # reseal rule reads
                tx_state.put(record_key(tx.submitter, body["record_id"]),
                             {"label": body["label"], "cid": body["cid"],
                              **({"epoch": body["epoch"]} if body.get("epoch") else {})})
                result = StoredRecord(tx.submitter, body["record_id"], body["cid"], body["size"], block.height)
        except ValidationError as exc:
            return exc.code
        except (DecodeError, ValueError, CoreError):
            return "malformed"
        state.writes.update(tx_state.writes)
        return result

    def certificate(self, subject: str) -> CertEntry | None:
        """The subject's certificate entry, revoked or not (None: never registered)."""
        raw = self._kv.get(cert_key(subject))
        return None if raw is None else CertEntry.from_state(unpack(raw, what=subject))

    def certificates(self) -> dict[str, Certificate]:
        """Every registered, unrevoked certificate, by subject."""
        out = {}
        for key, raw in self._kv.scan(certs_prefix()):
            entry = CertEntry.from_state(unpack(raw, what=key))
            if not entry.revoked:
                out[entry.subject] = entry.cert
        return out

    def records(self) -> list[StoredRecord]:
        """Every record committed ``store`` transactions named (its current blob: after a
        ``reseal``, the re-sealed one), in commit order."""
        return list(self._records.values())

    def cids(self) -> dict[str, StoredRecord]:
        """Every CID committed ``store`` transactions named, with the first record naming it."""
        out: dict[str, StoredRecord] = {}
        for record in self._records.values():
            out.setdefault(record.cid, record)
        return out
