"""Ledger transactions: signed, typed, canonical.

A transaction is ``[type, submitter, nonce, timestamp_ms, body, signature]``
(canonical msgpack). The submitter signs ``canonical([type, submitter, nonce,
timestamp_ms, body])`` under the tag ``emrshare/v1/tx/<type>``, so no
signature is valid for another type. Its id is SHA-256 of the whole encoding.

Bodies by type (all maps, fields exactly as listed; checked by core.ledger):

=================  ===========  ===========================================================
type               submitter    body
=================  ===========  ===========================================================
register           org's peer   cert (Certificate map)
revoke_cert        org's peer   subject, reason
                   or subject
store              patient      record_id, label, cid, size, media_type, capsule (48 B)
                                [, epoch: the label-key epoch it is sealed under (absent: 0)]
reseal             patient      the fields of store and epoch: the record re-sealed under a
                                later label-key epoch (a rotation), same id and label
set_policy         patient      policy (canonical policy msgpack, core.policy)
access_request     any user     request_id, patient, record_id, operation, purpose (str|nil)
grant              patient      grant_id, request_id, threshold, expires_at (Unix s),
                                shares (map peer id -> SHA-256 of its sealed key share)
                                [, scope: "record" or "label" (absent: label)]
deny_request       patient      request_id, reason
revoke_grant       patient      grant_id, reason [, policy: a new policy committed with it]
access             peer         grant_id, request_id, record_id, doctor, index (one
                                re-encryption; peers now log them in batches)
access_batch       peer         index (the peer's proxy index), entries: 1..64 maps
                                {grant_id, request_id, record_id, doctor, time (ms, when
                                the share was served)}, each an ``access`` audit event
standing           patient      delegation_id, label, mode (auto|emergency|off), threshold,
                                parts (map peer id -> SHA-256 of its sealed standing part)
                                [, epoch: the label-key epoch delegated (absent: 0)]
break_glass        doctor       break_glass_id, patient, record_id, reason,
                                cosigners (map officer id -> ECDSA signature, core.ledger
                                ``break_glass_message``)
=================  ===========  ===========================================================

The store transaction's signature is the patient's ECDSA signature over the
record's CID and metadata (the paper's signed CID); a doctor re-verifies it from
the committed transaction before trusting a record.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any

from . import canonical, ecdsa
from .errors import DecodeError, SignatureError

__all__ = ["Transaction", "TX_TYPES", "MAX_TX_SIZE", "tx_tag"]

TX_TYPES = (
    "register",
    "revoke_cert",
    "store",
    "set_policy",
    "access_request",
    "grant",
    "deny_request",
    "revoke_grant",
    "access",
    "standing",
    "break_glass",
    "reseal",
    "config",
    "access_batch",
)
MAX_TX_SIZE = 64 * 1024
NONCE_SIZE = 16
SIGNATURE_SIZE = 64


def tx_tag(tx_type: str) -> str:
    return f"emrshare/v1/tx/{tx_type}"


@dataclass(frozen=True, slots=True)
class Transaction:
    type: str
    submitter: str
    nonce: bytes
    timestamp: int
    body: dict[str, Any]
    signature: bytes
    # the canonical encoding, kept when decoded or created (not part of the value)
    _raw: bytes | None = field(default=None, compare=False, repr=False)

    def signing_bytes(self) -> bytes:
        raw = self._raw
        if raw is not None:
            # canonical([f0..f4]) is canonical([f0..f5]) with a 5-element array header
            # and without the signature's encoding (bin8: 0xc4, 64, 64 bytes)
            return b"\x95" + raw[1:-(2 + SIGNATURE_SIZE)]
        return canonical.pack([self.type, self.submitter, self.nonce, self.timestamp, self.body])

    @classmethod
    def create(
        cls,
        tx_type: str,
        submitter: str,
        body: dict[str, Any],
        private_key: bytes,
        timestamp_ms: int,
        nonce: bytes | None = None,
    ) -> "Transaction":
        if tx_type not in TX_TYPES:
            raise ValueError(f"unknown transaction type {tx_type!r}")
        nonce = secrets.token_bytes(NONCE_SIZE) if nonce is None else nonce
        signing = canonical.pack([tx_type, submitter, nonce, timestamp_ms, body])
        sig = ecdsa.sign(private_key, tx_tag(tx_type), signing)
        raw = b"\x96" + signing[1:] + b"\xc4\x40" + sig
        return cls(tx_type, submitter, nonce, timestamp_ms, body, sig, raw)

    def is_valid_signature(self, public_key: bytes) -> bool:
        """True when the submitter's signature verifies under ``public_key``."""
        return ecdsa.is_valid(public_key, tx_tag(self.type), self.signing_bytes(), self.signature)

    def verify_signature(self, public_key: bytes) -> None:
        """Raise SignatureError unless the submitter's signature verifies under ``public_key``."""
        if not self.is_valid_signature(public_key):
            raise SignatureError(f"{self.type} transaction of {self.submitter} is not signed by that key")

    def to_bytes(self) -> bytes:
        if self._raw is not None:
            return self._raw
        return canonical.pack([self.type, self.submitter, self.nonce, self.timestamp, self.body, self.signature])

    @property
    def tx_id(self) -> bytes:
        return hashlib.sha256(self.to_bytes()).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Transaction":
        fields = canonical.unpack_array(data, 6, max_size=MAX_TX_SIZE, what="transaction")
        tx_type, submitter, nonce, ts, body, sig = fields
        if tx_type not in TX_TYPES:
            raise DecodeError(f"transaction: unknown type {tx_type!r}")
        if not isinstance(submitter, str) or not 0 < len(submitter) <= 128:
            raise DecodeError("transaction: bad submitter")
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
            raise DecodeError("transaction: nonce must be 16 bytes")
        if type(ts) is not int or ts < 0:
            raise DecodeError("transaction: timestamp must be a non-negative integer (ms)")
        if not isinstance(body, dict):
            raise DecodeError("transaction: body must be a map")
        if not isinstance(sig, bytes) or len(sig) != SIGNATURE_SIZE:
            raise DecodeError("transaction: signature must be 64 bytes")
        return cls(tx_type, submitter, nonce, ts, body, sig, bytes(data))
