"""Enrollment tokens: an organization's registrar authorizes one enrollment (pure).

A user enrolls (``peer.enroll``) from its self-certifying bus id
``enroll:<hex compressed ECDSA key>`` with a token its organization's registrar
issued. The token authorizes exactly one enrollment:

* of this subject, in this organization, with these attributes,
* from this ECDSA public key (the key of the ``enroll:`` id the request comes
  from, which becomes the certificate's key): a token captured on the network
  enrolls nobody else's keys;
* until ``expires`` (unix seconds, checked against the enrolling peer's clock);
* once: its ``token_id`` (16 random bytes) travels in the ``register``
  transaction, and the ledger refuses a second ``register`` carrying the same
  id for the same organization (:meth:`core.ledger.IdentityRules.register`,
  state key :func:`core.state.token_key`), on every peer and in the
  certificate light client alike.

Wire form (:meth:`EnrollmentToken.to_bytes`, :data:`TOKEN_SIZE` = 57 bytes)::

    version (1 byte, 1 = HMAC-SHA256) | token_id (16) | expires (8, big-endian) | mac (32)

``mac`` = HMAC-SHA256(org secret, canonical([TOKEN_TAG, token_id, expires,
subject, org, attributes, enroll_key])). The registrar and the organization's
peers share the org secret. Moving the registrar to its own signing key
replaces ``mac`` by a signature under a new version byte; only this module
changes.

Time and randomness come in as arguments: :func:`issue` takes the token id and
the expiry, :meth:`EnrollmentToken.check` takes ``now``.

Errors: :meth:`EnrollmentToken.from_bytes` raises
:class:`~core.errors.DecodeError`; :meth:`EnrollmentToken.check` raises
:class:`~core.errors.ValidationError` with code ``token_mismatch`` (the MAC does
not cover this enrollment: another key, subject, organization or attributes, or
another secret) or ``token_expired``.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Mapping

from . import canonical
from .errors import DecodeError, ValidationError

__all__ = ["EnrollmentToken", "TOKEN_SIZE", "TOKEN_ID_SIZE", "TOKEN_TAG", "issue"]

TOKEN_TAG = "emrshare/v1/enroll-token"
TOKEN_VERSION = 1  # HMAC-SHA256 under the organization's enrollment secret
TOKEN_ID_SIZE = 16
_MAC_SIZE = 32
TOKEN_SIZE = 1 + TOKEN_ID_SIZE + 8 + _MAC_SIZE
_MAX_EXPIRES = 2**63 - 1


def _mac(org_secret: bytes, token_id: bytes, expires: int, subject: str, org: str,
         attributes: Mapping[str, Any], enroll_key: bytes) -> bytes:
    """ValueError when the attributes have no canonical encoding."""
    message = canonical.pack([TOKEN_TAG, token_id, expires, subject, org, dict(attributes), bytes(enroll_key)])
    return hmac.new(org_secret, message, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class EnrollmentToken:
    """One registrar-issued enrollment authorization (see the module docstring)."""

    token_id: bytes
    expires: int
    mac: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.token_id, bytes) or len(self.token_id) != TOKEN_ID_SIZE:
            raise DecodeError(f"token id must be {TOKEN_ID_SIZE} bytes")
        if type(self.expires) is not int or not 0 <= self.expires <= _MAX_EXPIRES:
            raise DecodeError("token expiry must be an integer 0..2**63-1")
        if not isinstance(self.mac, bytes) or len(self.mac) != _MAC_SIZE:
            raise DecodeError(f"token MAC must be {_MAC_SIZE} bytes")

    def to_bytes(self) -> bytes:
        return bytes([TOKEN_VERSION]) + self.token_id + self.expires.to_bytes(8, "big") + self.mac

    @classmethod
    def from_bytes(cls, data: bytes) -> "EnrollmentToken":
        if not isinstance(data, (bytes, bytearray)) or len(data) != TOKEN_SIZE:
            raise DecodeError(f"an enrollment token is {TOKEN_SIZE} bytes")
        data = bytes(data)
        if data[0] != TOKEN_VERSION:
            raise DecodeError(f"enrollment token version {data[0]} is not supported")
        id_end = 1 + TOKEN_ID_SIZE
        return cls(data[1:id_end], int.from_bytes(data[id_end:id_end + 8], "big"), data[id_end + 8:])

    def check(self, org_secret: bytes, *, subject: str, org: str, attributes: Mapping[str, Any],
              enroll_key: bytes, now: float) -> None:
        """Raise ValidationError unless this token authorizes exactly this enrollment at ``now``.

        The MAC is compared in constant time and checked before the expiry, so a
        forged token learns nothing from which check failed."""
        try:
            expected = _mac(org_secret, self.token_id, self.expires, subject, org, attributes, enroll_key)
        except ValueError:
            raise ValidationError("token_mismatch", "the attributes have no canonical encoding") from None
        if not hmac.compare_digest(expected, self.mac):
            raise ValidationError("token_mismatch", "the token does not authorize this enrollment "
                                                    "(subject, organization, attributes or key)")
        if not now < self.expires:
            raise ValidationError("token_expired", "the enrollment token has expired")


def issue(org_secret: bytes, *, subject: str, org: str, attributes: Mapping[str, Any], enroll_key: bytes,
          expires: int, token_id: bytes) -> EnrollmentToken:
    """The registrar's token for one enrollment of ``subject`` from ``enroll_key``
    (compressed ECDSA public key) until ``expires``; ``token_id``: 16 random bytes
    (the caller draws them with :mod:`secrets`). ValueError when the attributes have
    no canonical encoding."""
    mac = _mac(org_secret, token_id, expires, subject, org, attributes, enroll_key)
    return EnrollmentToken(token_id, expires, mac)
