"""ECDSA over secp256k1 with SHA-256 (the paper's signature scheme).

Signatures are 64 bytes ``r || s`` (big-endian), ``s`` in the lower half of the
group order. Verification rejects r or s outside [1, n-1], a high s, and public
keys that are not on the curve. Public keys are 33-byte compressed (what we
emit) or 65-byte uncompressed (accepted). Private keys are 32-byte scalars in
[1, n-1] from the OS CSPRNG. Signing uses RFC 6979 deterministic nonces on both
backends, so the two produce byte-identical signatures.

Implementations (core/_secp256k1.py): libsecp256k1 through coincurve's cffi
binding ("native"), else a pure-Python implementation on py-ecc's secp256k1
field arithmetic ("pure"), chosen once per process together with the pairing
backend (core/_backend.py; ``EMRSHARE_BACKEND=pure`` forces the pure one).

``sign``/``verify`` prefix a domain-separation tag naming what is signed (for
example ``emrshare/v1/store``), so no signature is valid as another kind;
``sign_raw``/``is_valid_raw`` sign SHA-256(message) with no tag. ``verify``
raises :class:`~core.errors.SignatureError`; its twins ``is_valid`` and
``is_valid_raw`` return a bool and never raise on malformed input.
"""

from __future__ import annotations

import hashlib
import secrets

from ._backend import active_ecdsa
from ._secp256k1 import N, PRIVATE_KEY_SIZE, PUBLIC_KEY_SIZE, SIGNATURE_SIZE
from .errors import DecodeError, SignatureError

__all__ = [
    "PRIVATE_KEY_SIZE",
    "PUBLIC_KEY_SIZE",
    "SIGNATURE_SIZE",
    "generate_private_key",
    "public_key",
    "sign",
    "verify",
    "is_valid",
    "sign_raw",
    "is_valid_raw",
    "decode_public_key",
    "tagged_message",
    "ecdsa_backend_name",
]


def ecdsa_backend_name() -> str:
    """"native" (libsecp256k1) or "pure": the process's ECDSA implementation."""
    return active_ecdsa().name


# ------------------------------------------------------------------ public API


def generate_private_key() -> bytes:
    """A fresh private key from the OS CSPRNG."""
    while True:
        key = secrets.token_bytes(PRIVATE_KEY_SIZE)
        if 1 <= int.from_bytes(key, "big") < N:
            return key


def public_key(private_key: bytes) -> bytes:
    """The 33-byte compressed public key of ``private_key``."""
    return active_ecdsa().public_key(bytes(private_key))


def decode_public_key(data: bytes) -> bytes:
    """Validate a 33- or 65-byte public key; return its 33-byte compressed form."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"ECDSA public key must be bytes, not {type(data).__name__}")
    return active_ecdsa().check_public_key(bytes(data))


def tagged_message(tag: str, message: bytes) -> bytes:
    """The bytes actually signed for ``tag``: tag, a NUL byte, then the message."""
    if not isinstance(tag, str) or not tag or "\x00" in tag:
        raise ValueError("signature tag must be a non-empty string without NUL")
    return tag.encode() + b"\x00" + bytes(message)


def sign_raw(private_key: bytes, message: bytes) -> bytes:
    """A 64-byte low-s signature over SHA-256(message), no domain tag."""
    return active_ecdsa().sign_digest(bytes(private_key), hashlib.sha256(message).digest())


def is_valid_raw(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True if ``signature`` (64-byte r||s, low s) is valid over SHA-256(message).

    Never raises on malformed input: anything invalid returns False.
    """
    try:
        if not isinstance(signature, (bytes, bytearray)) or len(signature) != SIGNATURE_SIZE:
            return False
        if not isinstance(public_key, (bytes, bytearray)):
            return False
        msg = bytes(message)
    except Exception:
        return False
    return active_ecdsa().is_valid_digest(bytes(public_key), hashlib.sha256(msg).digest(), bytes(signature))


def sign(private_key: bytes, tag: str, message: bytes) -> bytes:
    """Sign ``message`` under the domain-separation ``tag`` (e.g. ``emrshare/v1/store``)."""
    return sign_raw(private_key, tagged_message(tag, message))


def is_valid(public_key: bytes, tag: str, message: bytes, signature: bytes) -> bool:
    """Boolean twin of :func:`verify`."""
    return is_valid_raw(public_key, tagged_message(tag, message), signature)


def verify(public_key: bytes, tag: str, message: bytes, signature: bytes) -> None:
    """Raise SignatureError unless ``signature`` is valid for ``tag`` and ``message``."""
    if not is_valid(public_key, tag, message, signature):
        raise SignatureError(f"invalid ECDSA signature for {tag}")
