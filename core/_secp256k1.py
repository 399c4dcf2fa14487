"""The two ECDSA implementations behind core.ecdsa: libsecp256k1 and pure Python.

Both implement the same four methods on raw bytes, give byte-identical results
(RFC 6979 deterministic nonces, low-s signatures, 33-byte compressed keys) and
are chosen once per process together with the pairing backend
(core/_backend.py). ``is_valid_digest`` is a primitive: it returns a bool and
never raises on malformed input; core.ecdsa builds the raising ``verify`` on it.

* :class:`NativeEcdsa`: libsecp256k1 through coincurve's cffi binding (the GIL
  is released in calls). Constructing it raises ImportError without coincurve.
* :class:`PureEcdsa`: py-ecc's secp256k1 arithmetic, for portability and tests.

Both keep the public keys they parsed for verification (:data:`PUBKEY_CACHE`
entries, keyed by the key's bytes, a failed parse too): a ledger verifies the
same few hundred submitters' and peers' keys over and over, and parsing a
compressed key costs a square root mod p. The cache holds public data only; it
is bounded (the oldest entry goes first) and safe across threads (a lost race
parses twice).
"""

from __future__ import annotations

import hashlib
import hmac

from . import _pyecc  # noqa: F401  (first: keeps the recursion limit py_ecc would raise)
from py_ecc.secp256k1 import secp256k1 as _ec

from .errors import DecodeError, SignatureError

__all__ = ["N", "P", "PRIVATE_KEY_SIZE", "PUBLIC_KEY_SIZE", "SIGNATURE_SIZE", "PureEcdsa", "NativeEcdsa"]

N = _ec.N
P = _ec.P
_HALF_N = N // 2
PRIVATE_KEY_SIZE = 32
PUBLIC_KEY_SIZE = 33
SIGNATURE_SIZE = 64
PUBKEY_CACHE = 4096
"""Parsed public keys kept per implementation."""


class _KeyCache:
    """A bounded map of public key bytes -> parsed key (or None: does not parse)."""

    __slots__ = ("_entries", "_limit")

    def __init__(self, limit: int = PUBKEY_CACHE) -> None:
        self._entries: dict[bytes, object] = {}
        self._limit = limit

    def get(self, pub: bytes, parse):
        try:
            return self._entries[pub]
        except KeyError:
            pass
        parsed = parse(pub)
        entries = self._entries
        if len(entries) >= self._limit:
            try:  # the oldest entry (dicts keep insertion order); another thread may have taken it
                del entries[next(iter(entries))]
            except (KeyError, StopIteration, RuntimeError):
                pass
        entries[bytes(pub)] = parsed
        return parsed

    def __len__(self) -> int:
        return len(self._entries)


# ------------------------------------------------------------------ pure math


def _pure_decode_point(data: bytes) -> tuple[int, int]:
    if len(data) == 33 and data[0] in (2, 3):
        x = int.from_bytes(data[1:], "big")
        if x >= P:
            raise DecodeError("ECDSA public key: x coordinate not below p")
        y2 = (pow(x, 3, P) + 7) % P
        y = pow(y2, (P + 1) // 4, P)
        if y * y % P != y2:
            raise DecodeError("ECDSA public key: point is not on secp256k1")
        if y & 1 != data[0] & 1:
            y = P - y
        return x, y
    if len(data) == 65 and data[0] == 4:
        x = int.from_bytes(data[1:33], "big")
        y = int.from_bytes(data[33:], "big")
        if x >= P or y >= P:
            raise DecodeError("ECDSA public key: coordinate not below p")
        if (y * y - pow(x, 3, P) - 7) % P:
            raise DecodeError("ECDSA public key: point is not on secp256k1")
        return x, y
    raise DecodeError(
        f"ECDSA public key must be 33 bytes (02/03 prefix) or 65 bytes (04 prefix), got {len(data)} bytes"
    )


def _compress(x: int, y: int) -> bytes:
    return bytes([2 + (y & 1)]) + x.to_bytes(32, "big")


def _rfc6979_k(priv: int, digest: bytes) -> int:
    """RFC 6979 section 3.2 with HMAC-SHA256 (as libsecp256k1 without extra entropy)."""
    x = priv.to_bytes(32, "big")
    h1 = (int.from_bytes(digest, "big") % N).to_bytes(32, "big")
    v = b"\x01" * 32
    k = b"\x00" * 32
    k = hmac.new(k, v + b"\x00" + x + h1, hashlib.sha256).digest()
    v = hmac.new(k, v, hashlib.sha256).digest()
    k = hmac.new(k, v + b"\x01" + x + h1, hashlib.sha256).digest()
    v = hmac.new(k, v, hashlib.sha256).digest()
    while True:
        v = hmac.new(k, v, hashlib.sha256).digest()
        cand = int.from_bytes(v, "big")
        if 1 <= cand < N:
            return cand
        k = hmac.new(k, v + b"\x00", hashlib.sha256).digest()
        v = hmac.new(k, v, hashlib.sha256).digest()


def _pure_point_or_none(data: bytes) -> tuple[int, int] | None:
    try:
        return _pure_decode_point(data)
    except DecodeError:
        return None


class PureEcdsa:
    """secp256k1 ECDSA in Python on py-ecc's field arithmetic (not constant time)."""

    name = "pure"

    def __init__(self) -> None:
        self._keys = _KeyCache()

    def public_key(self, priv: bytes) -> bytes:
        d = _private_scalar(priv)
        x, y = _ec.multiply(_ec.G, d)
        return _compress(x, y)

    def sign_digest(self, priv: bytes, digest: bytes) -> bytes:
        d = _private_scalar(priv)
        z = int.from_bytes(digest, "big") % N
        while True:
            k = _rfc6979_k(d, digest)
            x, _ = _ec.multiply(_ec.G, k)
            r = x % N
            s = pow(k, -1, N) * (z + r * d) % N
            if r and s:
                break
            digest = hashlib.sha256(digest).digest()  # unreachable in practice
        if s > _HALF_N:
            s = N - s
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def is_valid_digest(self, pub: bytes, digest: bytes, sig: bytes) -> bool:
        point = self._keys.get(pub, _pure_point_or_none)
        if point is None:
            return False
        qx, qy = point
        r = int.from_bytes(sig[:32], "big")
        s = int.from_bytes(sig[32:], "big")
        if not (1 <= r < N and 1 <= s <= _HALF_N):
            return False
        z = int.from_bytes(digest, "big") % N
        w = pow(s, -1, N)
        a = _ec.jacobian_multiply(_ec.to_jacobian(_ec.G), z * w % N)
        b = _ec.jacobian_multiply(_ec.to_jacobian((qx, qy)), r * w % N)
        point = _ec.jacobian_add(a, b)
        if point[2] == 0:
            return False
        x, _ = _ec.from_jacobian(point)
        return x % N == r

    def check_public_key(self, pub: bytes) -> bytes:
        return _compress(*_pure_decode_point(pub))


class NativeEcdsa:
    """libsecp256k1 through coincurve's cffi handle (GIL released in calls)."""

    name = "native"

    def __init__(self) -> None:
        from coincurve._libsecp256k1 import ffi, lib
        from coincurve.context import GLOBAL_CONTEXT

        self._ffi = ffi
        self._lib = lib
        self._ctx = GLOBAL_CONTEXT.ctx
        self._keys = _KeyCache()

    def _parse_pub(self, pub: bytes):
        """The parsed key (cached, read-only once made), or None when ``pub`` does not parse."""
        return self._keys.get(pub, self._parse_pub_uncached)

    def _parse_pub_uncached(self, pub: bytes):
        ffi, lib = self._ffi, self._lib
        if len(pub) not in (33, 65):
            return None
        key = ffi.new("secp256k1_pubkey *")
        if not lib.secp256k1_ec_pubkey_parse(self._ctx, key, pub, len(pub)):
            return None
        return key

    def public_key(self, priv: bytes) -> bytes:
        _private_scalar(priv)
        ffi, lib = self._ffi, self._lib
        key = ffi.new("secp256k1_pubkey *")
        if not lib.secp256k1_ec_pubkey_create(self._ctx, key, priv):
            raise DecodeError("ECDSA private key rejected by libsecp256k1")
        out = ffi.new("unsigned char[33]")
        outlen = ffi.new("size_t *", 33)
        lib.secp256k1_ec_pubkey_serialize(self._ctx, out, outlen, key, lib.SECP256K1_EC_COMPRESSED)
        return bytes(ffi.buffer(out, 33))

    def sign_digest(self, priv: bytes, digest: bytes) -> bytes:
        _private_scalar(priv)
        ffi, lib = self._ffi, self._lib
        sig = ffi.new("secp256k1_ecdsa_signature *")
        # NULL nonce function: libsecp256k1's default, RFC 6979 with HMAC-SHA256.
        if not lib.secp256k1_ecdsa_sign(self._ctx, sig, digest, priv, ffi.NULL, ffi.NULL):
            raise SignatureError("libsecp256k1 failed to sign")
        out = ffi.new("unsigned char[64]")
        lib.secp256k1_ecdsa_signature_serialize_compact(self._ctx, out, sig)
        return bytes(ffi.buffer(out, 64))

    def is_valid_digest(self, pub: bytes, digest: bytes, sig: bytes) -> bool:
        ffi, lib = self._ffi, self._lib
        key = self._parse_pub(pub)
        if key is None:
            return False
        r = int.from_bytes(sig[:32], "big")
        s = int.from_bytes(sig[32:], "big")
        if not (1 <= r < N and 1 <= s <= _HALF_N):
            return False
        csig = ffi.new("secp256k1_ecdsa_signature *")
        if not lib.secp256k1_ecdsa_signature_parse_compact(self._ctx, csig, sig):
            return False
        return bool(lib.secp256k1_ecdsa_verify(self._ctx, csig, digest, key))

    def check_public_key(self, pub: bytes) -> bytes:
        # The pure decoder gives precise messages and is cheap next to a verify.
        return _compress(*_pure_decode_point(pub))


def _private_scalar(priv: bytes) -> int:
    if not isinstance(priv, (bytes, bytearray)) or len(priv) != PRIVATE_KEY_SIZE:
        raise DecodeError(f"ECDSA private key must be {PRIVATE_KEY_SIZE} bytes")
    d = int.from_bytes(priv, "big")
    if not 1 <= d < N:
        raise DecodeError("ECDSA private key out of range [1, n-1]")
    return d
