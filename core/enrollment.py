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

Wire form (:meth:`EnrollmentToken.to_bytes`, :data:`TOKEN_SIZE` = 89 bytes)::

    version (1 byte, 2 = registrar ECDSA) | token_id (16) | expires (8, big-endian) | signature (64)

``signature`` = ECDSA (:func:`core.ecdsa.sign`, tag :data:`TOKEN_TAG`) by the
organization's registrar key over canonical([token_id, expires, subject, org,
attributes, enroll_key]). The registrar's public key is in the organization's
entry of the genesis (:attr:`core.identity.OrgInfo.registrar_key`), so every
peer (of any organization) can check a token and none can issue one: the
registrar's private key stays on the registrar's machine. Version 1 (an HMAC
under a secret the registrar and the peers shared) is gone: a peer that can
check such a token can also forge one.

Time and randomness come in as arguments: :func:`issue` takes the token id and
the expiry, :meth:`EnrollmentToken.check` takes ``now``.

Errors: :meth:`EnrollmentToken.from_bytes` raises
:class:`~core.errors.DecodeError`; :meth:`EnrollmentToken.check` raises
:class:`~core.errors.ValidationError` with code ``token_mismatch`` (the
signature does not cover this enrollment: another key, subject, organization or
attributes, or another registrar) or ``token_expired``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from . import canonical, ecdsa
from .errors import DecodeError, ValidationError

__all__ = ["EnrollmentToken", "TOKEN_SIZE", "TOKEN_ID_SIZE", "TOKEN_TAG", "TOKEN_VERSION", "issue"]

TOKEN_TAG = "emrshare/v2/enroll-token"
TOKEN_VERSION = 2  # ECDSA signature by the organization's registrar key
TOKEN_ID_SIZE = 16
_SIG_SIZE = 64
TOKEN_SIZE = 1 + TOKEN_ID_SIZE + 8 + _SIG_SIZE
_MAX_EXPIRES = 2**63 - 1


def _message(token_id: bytes, expires: int, subject: str, org: str, attributes: Mapping[str, Any],
             enroll_key: bytes) -> bytes:
    """ValueError when the attributes have no canonical encoding."""
    return canonical.pack([token_id, expires, subject, org, dict(attributes), bytes(enroll_key)])


@dataclass(frozen=True, slots=True)
class EnrollmentToken:
    """One registrar-issued enrollment authorization (see the module docstring)."""

    token_id: bytes
    expires: int
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.token_id, bytes) or len(self.token_id) != TOKEN_ID_SIZE:
            raise DecodeError(f"token id must be {TOKEN_ID_SIZE} bytes")
        if type(self.expires) is not int or not 0 <= self.expires <= _MAX_EXPIRES:
            raise DecodeError("token expiry must be an integer 0..2**63-1")
        if not isinstance(self.signature, bytes) or len(self.signature) != _SIG_SIZE:
            raise DecodeError(f"token signature must be {_SIG_SIZE} bytes")

    def to_bytes(self) -> bytes:
        return bytes([TOKEN_VERSION]) + self.token_id + self.expires.to_bytes(8, "big") + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> "EnrollmentToken":
        if not isinstance(data, (bytes, bytearray)) or len(data) != TOKEN_SIZE:
            raise DecodeError(f"an enrollment token is {TOKEN_SIZE} bytes")
        data = bytes(data)
        if data[0] != TOKEN_VERSION:
            raise DecodeError(f"enrollment token version {data[0]} is not supported (this is version "
                              f"{TOKEN_VERSION}: signed by the registrar)")
        id_end = 1 + TOKEN_ID_SIZE
        return cls(data[1:id_end], int.from_bytes(data[id_end:id_end + 8], "big"), data[id_end + 8:])

    def check(self, registrar_key: bytes, *, subject: str, org: str, attributes: Mapping[str, Any],
              enroll_key: bytes, now: float) -> None:
        """Raise ValidationError unless this token, signed under ``registrar_key``
        (the organization's registrar public key from the genesis), authorizes
        exactly this enrollment at ``now``. The signature is checked before the
        expiry, so a forged token learns nothing from which check failed."""
        try:
            message = _message(self.token_id, self.expires, subject, org, attributes, enroll_key)
        except ValueError:
            raise ValidationError("token_mismatch", "the attributes have no canonical encoding") from None
        if not ecdsa.is_valid(registrar_key, TOKEN_TAG, message, self.signature):
            raise ValidationError("token_mismatch", "the token does not authorize this enrollment "
                                                    "(subject, organization, attributes, key or registrar)")
        if not now < self.expires:
            raise ValidationError("token_expired", "the enrollment token has expired")


def issue(registrar_private_key: bytes, *, subject: str, org: str, attributes: Mapping[str, Any],
          enroll_key: bytes, expires: int, token_id: bytes) -> EnrollmentToken:
    """The registrar's token for one enrollment of ``subject`` from ``enroll_key``
    (compressed ECDSA public key) until ``expires``, signed with the organization's
    registrar key; ``token_id``: 16 random bytes (the caller draws them with
    :mod:`secrets`). ValueError when the attributes have no canonical encoding."""
    message = _message(token_id, expires, subject, org, attributes, enroll_key)
    return EnrollmentToken(token_id, expires, ecdsa.sign(registrar_private_key, TOKEN_TAG, message))
