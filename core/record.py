"""Sealed records: the KEM/DEM format patients store in content-addressed storage.

Layout (version 3; versions 1 and 2 are still read). A sealed record is ONE
msgpack array, written and read as a stream so records of any size (tested to
64 MiB) take bounded memory::

    [ 3,                          # int, format version (= the header's version)
      header,                     # bin, canonical msgpack of the RecordHeader (below)
      nonce,                      # bin(24), random base nonce
      chunk_0, ..., chunk_{n-1} ] # bin, XChaCha20-Poly1305 ciphertext of each chunk

Versions 1 and 2 have the format tag ``"emrshare/sealed-record"`` (a str) first
and their version second; version 3 leaves the tag out (23 bytes; a reader tells
the forms apart by the first item: the int 3 or the tag).

The header is itself a msgpack array in this fixed order (versions 2 and 3)::

    [version, owner_id, label, record_id, media_type,
     capsule U (bin 48), owner P1_L (bin 48), size, chunk_size,
     key_check (bin 16), owner_wrap_kind (int), owner_wrap (bin or nil)]

In version 3 ``media_type`` is the small int :data:`MEDIA_TYPE_CODES` gives a
known type (``application/fhir+json`` is 1: 21 bytes fewer), any other type its
string (a known type written as its string is not canonical: refused), and a
kind-2 owner wrap is 48 bytes (its nonce derived, below). Version 1 headers have
11 fields: no ``owner_wrap_kind``, and ``owner_wrap`` is nil or an 80-byte
sealed box (kind 1 below). A reader accepts a blob only with a header of its own
version; writers write version 3 (66 bytes fewer than version 2 for a FHIR
record sealed by its patient).

Keys: ``K = Z^k`` from the PRE capsule (core.pre); the data key
``dk = HKDF-SHA256(ikm = enc(K), salt = "emrshare/v1/dem", info = enc(U) || enc(P1_L))``;
``key_check = HMAC-SHA256(dk, "emrshare/v1/key-check")[:16]`` lets a reader test a
candidate key before decrypting (and makes the AEAD key-committing).

Owner wrap (CRYPTO.md: "the header may also carry dk sealed to the owner's own
X25519 key, so the owner opens its records without a pairing"), by kind:

* 0 -- none; ``owner_wrap`` is nil. The owner uses the pairing path.
* 1 -- sealed box (80 bytes): ``SealedBox(owner X25519 public key).encrypt(dk)``
  (ephemeral X25519 key || XSalsa20-Poly1305). Anyone holding the owner's box
  public key can write it: the path for third-party sealers.
* 2 -- owner box: version 2 (72 bytes), ``nonce (24, random from the OS CSPRNG) ||
  Box(owner_sk, owner_pk).encrypt(dk, nonce)``; version 3 (48 bytes), the
  ciphertext alone, under the nonce ``SHA-256("emrshare/v1/owner-wrap-nonce\\0"
  || enc(U))[:24]`` (U is fresh for every sealing, a new random k, so no two
  wraps under one owner's key share a nonce; a wrap moved to another record
  does not even open there). crypto_box of the owner to itself. Its key is HSalsa20(X25519(sk, pk_self)): computing it from the
  public key alone is the computational Diffie-Hellman problem with both inputs
  equal (as hard as CDH), so only the owner can open, and only the owner can
  write, such a wrap (authenticated encryption; with random 24-byte nonces
  collisions are negligible). The shared key is computed once per owner and
  kept in a small in-process cache (:func:`_owner_keys`), so wrapping and
  unwrapping cost one XSalsa20-Poly1305 of 32 bytes instead of an X25519
  scalar multiplication. It is only written when the sealer is given the owner's
  box secret key (the patient sealing its own record).

In every kind the unwrapped dk is accepted only if it matches ``key_check``, so
a wrap moved from another record, or written by someone else (kind 1), is
refused before any chunk is decrypted.

Chunks: plaintext is cut into ``chunk_size`` pieces (the last may be shorter;
an empty record has one empty chunk), ``n = max(1, ceil(size / chunk_size))``.
Chunk i is encrypted with nonce ``nonce XOR i`` (i as 24-byte big-endian) and
associated data ``header || i (8-byte big-endian) || final (1 byte)``, so
chunks cannot be reordered, dropped, truncated or moved between records.
CRYPTO.md's single-shot ``ad = header`` is the one-chunk case with the index and
final flag appended. Each chunk is one msgpack bin (bin8/16/32 header, then the
raw ciphertext); readers check its length against the header.

Readers (:class:`RecordOpener`) release a chunk's plaintext only after it
authenticates, and :meth:`RecordOpener.close` fails unless every chunk arrived;
a caller writing a stream to disk must discard it unless ``close()`` succeeds
(:func:`open_record` does that for in-memory use).

Performance notes: the sealer encrypts straight from the caller's buffer
(memoryviews, no intermediate copies when input arrives in chunk-size pieces)
into an output buffer that already holds the bin header; :func:`seal` and
:func:`open_record` allocate one buffer for the whole output. The AEAD is
libsodium's, called through pynacl's low-level binding (``nacl._sodium``) so it
can read memoryviews and write into preallocated buffers; without that private
module the public ``nacl.bindings`` functions are used (same bytes, more copies).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass
from typing import Callable, Iterable

import msgpack
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError
from nacl.public import Box
from nacl.public import PrivateKey as BoxPrivateKey
from nacl.public import PublicKey as BoxPublicKey
from nacl.public import SealedBox

from .curve import GT, G1, api
from .errors import DecodeError, DecryptionError
from .kdf import hkdf_sha256
from .pre import (
    KeyPair,
    PublicKey,
    ReencryptedShare,
    decapsulate_owner,
    encapsulate,
    encapsulate_owner,
    recover_key,
)

try:  # libsodium through pynacl's private cffi module: memoryview in, buffer out
    from nacl._sodium import ffi as _sffi
    from nacl._sodium import lib as _slib

    _AEAD_ENCRYPT = _slib.crypto_aead_xchacha20poly1305_ietf_encrypt
    _AEAD_DECRYPT = _slib.crypto_aead_xchacha20poly1305_ietf_decrypt
except (ImportError, AttributeError):  # pragma: no cover - depends on the pynacl build
    _sffi = _slib = _AEAD_ENCRYPT = _AEAD_DECRYPT = None

__all__ = [
    "FORMAT_TAG",
    "FORMAT_VERSION",
    "READ_VERSIONS",
    "DEFAULT_CHUNK_SIZE",
    "WRAP_NONE",
    "WRAP_SEALED_BOX",
    "WRAP_OWNER_BOX",
    "RecordHeader",
    "RecordSealer",
    "RecordOpener",
    "seal",
    "open_record",
    "peek_header",
    "derive_data_key",
    "owner_key_provider",
    "owner_pairing_key_provider",
    "ThresholdKeyProvider",
    "DataKeyMemo",
]

FORMAT_TAG = "emrshare/sealed-record"
FORMAT_VERSION = 3
READ_VERSIONS = (1, 2, 3)
_TAGGED_VERSIONS = (1, 2)  # (versions 1 and 2 have the tag first; version 3 the version alone)
DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 1 << 12
MAX_CHUNK_SIZE = 8 << 20
MAX_RECORD_SIZE = 1 << 40
MAX_HEADER_SIZE = 4096
MAX_ID_LEN = 256
MAX_MEDIA_TYPE_LEN = 128
NONCE_SIZE = 24
TAG_SIZE = 16
KEY_CHECK_SIZE = 16
WRAP_NONE = 0
WRAP_SEALED_BOX = 1
WRAP_OWNER_BOX = 2
OWNER_WRAP_SIZE = 80  # sealed box of a 32-byte key (kind 1)
OWNER_BOX_WRAP_SIZE = 72  # nonce || crypto_box of a 32-byte key (kind 2, version 2)
OWNER_BOX_WRAP_SIZE_V3 = 48  # crypto_box of a 32-byte key, its nonce derived from U (kind 2, version 3)
_WRAP_SIZES = {WRAP_NONE: None, WRAP_SEALED_BOX: OWNER_WRAP_SIZE, WRAP_OWNER_BOX: OWNER_BOX_WRAP_SIZE}
_HEADER_FIELDS = {1: 11, 2: 12, 3: 12}
_WRAP_NONCE_DOMAIN = b"emrshare/v1/owner-wrap-nonce\x00"

MEDIA_TYPE_CODES: dict[str, int] = {
    "application/fhir+json": 1,
    "application/json": 2,
    "text/plain": 3,
    "application/octet-stream": 4,
    "application/fhir+xml": 5,
    "application/pdf": 6,
    "application/dicom": 7,
    "image/jpeg": 8,
    "image/png": 9,
    "text/csv": 10,
}
"""Media types a version-3 header writes as a small int (append-only: a code is never
given to another type); any other is written as its string."""
_MEDIA_TYPES = {code: name for name, code in MEDIA_TYPE_CODES.items()}

_DEM_SALT = b"emrshare/v1/dem"
_KEY_CHECK_INFO = b"emrshare/v1/key-check"

KeyProvider = Callable[["RecordHeader"], bytes]


def derive_data_key(k: GT, capsule: bytes, owner_p1: bytes) -> bytes:
    """dk = HKDF-SHA256(enc(K), salt, enc(U) || enc(P1_L))."""
    return hkdf_sha256(k.to_bytes(), _DEM_SALT, capsule + owner_p1, 32)


def _wrap_nonce(capsule: bytes) -> bytes:
    """A version-3 owner box's nonce: the first 24 bytes of SHA-256(domain || U). U is fresh
    for every sealing (a new k), so no two wraps under one owner's key share a nonce."""
    return hashlib.sha256(_WRAP_NONCE_DOMAIN + capsule).digest()[:Box.NONCE_SIZE]


def _key_check(dk: bytes) -> bytes:
    return hmac.new(dk, _KEY_CHECK_INFO, hashlib.sha256).digest()[:KEY_CHECK_SIZE]


@functools.lru_cache(maxsize=16)
def _owner_keys(box_secret_key: bytes) -> tuple[BoxPrivateKey, bytes, Box]:
    """(private key, public key bytes, Box(sk, pk_self)) for an owner's X25519 key.

    Cached: each costs an X25519 scalar multiplication. The cache holds at most
    16 owners' keys in process memory (where the caller already holds them).
    """
    sk = BoxPrivateKey(box_secret_key)
    return sk, bytes(sk.public_key), Box(sk, sk.public_key)


def _box_secret(value: object) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != 32:
        raise ValueError("owner box secret key must be 32 bytes")
    return bytes(value)


# ------------------------------------------------------------------ AEAD


def _bin_header(n: int) -> bytes:
    """msgpack's canonical bin header for n bytes (msgpack-python has no public pack_bin_header)."""
    if n < 0x100:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def _encrypt_into(dst: memoryview, plain, ad: bytes, nonce: bytes, key: bytes) -> None:
    """XChaCha20-Poly1305: write ct || tag (len(plain) + 16 bytes) into ``dst``."""
    if _AEAD_ENCRYPT is not None:
        mlen = len(plain)
        rc = _AEAD_ENCRYPT(
            _sffi.from_buffer("unsigned char[]", dst, require_writable=True), _sffi.NULL,
            _sffi.from_buffer("unsigned char[]", plain) if mlen else _sffi.NULL, mlen,
            ad, len(ad), _sffi.NULL, nonce, key,
        )
        if rc != 0:  # pragma: no cover - libsodium's encrypt does not fail
            raise CryptoError("XChaCha20-Poly1305 encryption failed")
    else:  # pragma: no cover - exercised only without nacl._sodium
        dst[:] = crypto_aead_xchacha20poly1305_ietf_encrypt(bytes(plain), ad, nonce, key)


def _decrypt(ct, ad: bytes, nonce: bytes, key: bytes) -> bytearray:
    """XChaCha20-Poly1305 open of ``ct`` (any buffer); raises CryptoError on a bad tag."""
    if _AEAD_DECRYPT is not None:
        mlen = len(ct) - TAG_SIZE
        out = bytearray(mlen)
        target = _sffi.from_buffer("unsigned char[]", out, require_writable=True) if mlen else _sffi.NULL
        rc = _AEAD_DECRYPT(
            target, _sffi.NULL, _sffi.NULL, _sffi.from_buffer("unsigned char[]", ct), len(ct),
            ad, len(ad), nonce, key,
        )
        if rc != 0:
            raise CryptoError("Decryption failed. Ciphertext failed verification")
        return out
    return bytearray(crypto_aead_xchacha20poly1305_ietf_decrypt(bytes(ct), ad, nonce, key))  # pragma: no cover


def _byte_view(data) -> memoryview:
    mv = memoryview(data)
    if mv.ndim != 1 or mv.format not in ("B", "b", "c"):
        mv = mv.cast("B")
    return mv


# ------------------------------------------------------------------ header


def _text(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str) or not value:
        raise DecodeError(f"record header: {what} must be a non-empty string")
    if len(value.encode()) > limit:
        raise DecodeError(f"record header: {what} is longer than {limit} bytes")
    return value


@dataclass(frozen=True, slots=True)
class RecordHeader:
    """The record header. ``owner_wrap_kind`` defaults from ``owner_wrap``
    (None -> 0, 80 bytes -> 1); kind 2 must be given explicitly."""

    owner_id: str
    label: str
    record_id: str
    media_type: str
    capsule: bytes
    owner_p1: bytes
    size: int
    chunk_size: int
    key_check: bytes
    owner_wrap: bytes | None = None
    version: int = FORMAT_VERSION
    owner_wrap_kind: int | None = None

    def __post_init__(self) -> None:
        _text(self.owner_id, "owner id", MAX_ID_LEN)
        _text(self.label, "label", MAX_ID_LEN)
        _text(self.record_id, "record id", MAX_ID_LEN)
        _text(self.media_type, "media type", MAX_MEDIA_TYPE_LEN)
        if type(self.version) is not int or self.version not in READ_VERSIONS:
            raise DecodeError(f"record header: unsupported version {self.version!r}")
        for name, value, size in (
            ("capsule", self.capsule, 48),
            ("owner P1", self.owner_p1, 48),
            ("key check", self.key_check, KEY_CHECK_SIZE),
        ):
            if not isinstance(value, bytes) or len(value) != size:
                raise DecodeError(f"record header: {name} must be {size} bytes")
        kind = self.owner_wrap_kind
        if kind is None:
            kind = WRAP_NONE if self.owner_wrap is None else WRAP_SEALED_BOX
            object.__setattr__(self, "owner_wrap_kind", kind)
        if type(kind) is not int or kind not in _WRAP_SIZES or (self.version == 1 and kind == WRAP_OWNER_BOX):
            raise DecodeError(f"record header: unknown owner wrap kind {kind!r}")
        want = OWNER_BOX_WRAP_SIZE_V3 if kind == WRAP_OWNER_BOX and self.version >= 3 else _WRAP_SIZES[kind]
        if want is None:
            if self.owner_wrap is not None:
                raise DecodeError("record header: owner wrap present but its kind is 'none'")
        elif not isinstance(self.owner_wrap, bytes) or len(self.owner_wrap) != want:
            raise DecodeError(f"record header: owner wrap of kind {kind} must be {want} bytes")
        if type(self.size) is not int or not 0 <= self.size <= MAX_RECORD_SIZE:
            raise DecodeError("record header: size out of range")
        if type(self.chunk_size) is not int or not MIN_CHUNK_SIZE <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise DecodeError(
                f"record header: chunk size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}"
            )

    @property
    def chunk_count(self) -> int:
        return max(1, -(-self.size // self.chunk_size))

    def chunk_length(self, index: int) -> int:
        """Plaintext length of chunk ``index``."""
        if index < self.chunk_count - 1:
            return self.chunk_size
        return self.size - self.chunk_size * (self.chunk_count - 1)

    def to_bytes(self) -> bytes:
        media: str | int = self.media_type
        if self.version >= 3:  # a known media type as its code
            media = MEDIA_TYPE_CODES.get(media, media)  # type: ignore[arg-type]
        fields = [
            self.version,
            self.owner_id,
            self.label,
            self.record_id,
            media,
            self.capsule,
            self.owner_p1,
            self.size,
            self.chunk_size,
            self.key_check,
        ]
        if self.version >= 2:
            fields.append(self.owner_wrap_kind)
        fields.append(self.owner_wrap)
        return msgpack.packb(fields, use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> "RecordHeader":
        if not isinstance(data, bytes) or len(data) > MAX_HEADER_SIZE:
            raise DecodeError("record header: not bytes or too large")
        try:
            fields = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=MAX_HEADER_SIZE)
        except Exception as exc:
            raise DecodeError(f"record header: not msgpack ({type(exc).__name__})") from exc
        if not isinstance(fields, list) or not fields:
            raise DecodeError("record header: expected an array")
        version = fields[0]
        expected = _HEADER_FIELDS.get(version) if type(version) is int else None
        if expected is None:
            raise DecodeError(f"record header: unsupported version {version!r}")
        if len(fields) != expected:
            raise DecodeError(f"record header: expected an array of {expected} fields (version {version})")
        (version, owner_id, label, record_id, media_type, capsule, owner_p1, size, chunk_size,
         key_check) = fields[:10]
        if version >= 3 and type(media_type) is int:
            media_type = _MEDIA_TYPES.get(media_type)
            if media_type is None:
                raise DecodeError(f"record header: unknown media type code {fields[4]!r}")
        kind = fields[10] if version >= 2 else None
        header = cls(owner_id, label, record_id, media_type, capsule, owner_p1, size, chunk_size,
                     key_check, fields[-1], version, kind)
        if header.to_bytes() != data:
            raise DecodeError("record header: not in canonical encoding")
        return header

    def capsule_point(self) -> G1:
        """The capsule U, decoded and validated on the process's backend."""
        return G1.from_bytes(self.capsule)


def _nonce(base: bytes, index: int) -> bytes:
    return (int.from_bytes(base, "big") ^ index).to_bytes(NONCE_SIZE, "big")


def _ad(header_bytes: bytes, index: int, final: bool) -> bytes:
    return header_bytes + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


# ------------------------------------------------------------------ sealing


class RecordSealer:
    """Sans-I/O streaming encryption of one record.

    ``start()`` returns the first bytes of the blob; ``update(data)`` returns
    the blob bytes that complete chunks produce; ``finish()`` the rest. The
    concatenation is the sealed record. ``data`` may be any bytes-like object;
    pieces of ``chunk_size`` bytes are encrypted without being copied.

    ``owner`` is the owner's PRE public key, or its :class:`~core.pre.KeyPair`
    when the owner itself seals (faster capsule, same bytes; its label must be
    ``label``). Owner wrap: with ``owner_box_secret_key`` a kind-2 owner box,
    else with ``owner_box_public_key`` a kind-1 sealed box, else none (giving
    both checks that they are one key pair).
    """

    def __init__(
        self,
        owner: PublicKey | KeyPair,
        *,
        owner_id: str,
        label: str,
        record_id: str,
        media_type: str,
        size: int,
        owner_box_public_key: bytes | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        owner_box_secret_key: bytes | None = None,
    ):
        if isinstance(owner, KeyPair):
            if owner.label != label:
                raise ValueError(f"key pair is for label {owner.label!r}, not {label!r}")
            capsule, k = encapsulate_owner(owner)
            p1 = owner.public.p1
        elif isinstance(owner, PublicKey):
            capsule, k = encapsulate(owner)
            p1 = owner.p1
        else:
            raise TypeError("owner must be a core.pre.PublicKey or KeyPair")
        capsule_b, p1_b = capsule.to_bytes(), p1.to_bytes()
        dk = derive_data_key(k, capsule_b, p1_b)
        if owner_box_secret_key is not None:
            _sk, pk, box = _owner_keys(_box_secret(owner_box_secret_key))
            if owner_box_public_key is not None and bytes(owner_box_public_key) != pk:
                raise ValueError("owner box public key does not belong to the owner box secret key")
            # (version 3: the nonce is derived from U, not sent: 24 bytes fewer)
            kind, wrap = WRAP_OWNER_BOX, bytes(box.encrypt(dk, _wrap_nonce(capsule_b)).ciphertext)
        elif owner_box_public_key is not None:
            kind, wrap = WRAP_SEALED_BOX, SealedBox(BoxPublicKey(owner_box_public_key)).encrypt(dk)
        else:
            kind, wrap = WRAP_NONE, None
        try:
            self.header = RecordHeader(
                owner_id, label, record_id, media_type, capsule_b, p1_b, size, chunk_size,
                _key_check(dk), wrap, FORMAT_VERSION, kind,
            )
        except DecodeError as exc:
            raise ValueError(str(exc).replace("record header: ", "")) from exc
        self._dk = dk
        self._header_bytes = self.header.to_bytes()
        self._nonce = secrets.token_bytes(NONCE_SIZE)
        self._count = self.header.chunk_count
        self._pending = bytearray()
        self._index = 0
        self._fed = 0
        self._started = False
        self._finished = False

    def start(self) -> bytes:
        if self._started:
            raise RuntimeError("start() called twice")
        self._started = True
        return self._prefix()

    def _prefix(self) -> bytes:
        """Version 3: ``[3, header, nonce, chunks...]`` (no format tag: the version leads)."""
        packer = msgpack.Packer(use_bin_type=True)
        return b"".join((
            packer.pack_array_header(3 + self._count),
            packer.pack(FORMAT_VERSION),
            packer.pack(self._header_bytes),
            packer.pack(self._nonce),
        ))

    def _chunk_into(self, dst: memoryview, plain) -> int:
        """Write chunk ``self._index`` (bin header + ciphertext) at the start of ``dst``; return its size."""
        index = self._index
        hdr = _bin_header(len(plain) + TAG_SIZE)
        h = len(hdr)
        end = h + len(plain) + TAG_SIZE
        dst[:h] = hdr
        _encrypt_into(dst[h:end], plain, _ad(self._header_bytes, index, index == self._count - 1),
                      _nonce(self._nonce, index), self._dk)
        self._index = index + 1
        return end

    def _chunk(self, plain) -> bytearray:
        out = bytearray(len(plain) + TAG_SIZE + 5)
        n = self._chunk_into(memoryview(out), plain)
        del out[n:]
        return out

    def update(self, data) -> bytes:
        if not self._started or self._finished:
            raise RuntimeError("update() outside start()/finish()")
        mv = _byte_view(data)
        n = len(mv)
        if self._fed + n > self.header.size:
            raise ValueError(f"more plaintext than the declared size {self.header.size}")
        self._fed += n
        out: list[bytearray] = []
        size = self.header.chunk_size
        last = self._count - 1
        pos = 0
        if self._pending and self._index < last:
            pos = min(size - len(self._pending), n)
            self._pending += mv[:pos]
            if len(self._pending) == size:
                out.append(self._chunk(self._pending))
                self._pending = bytearray()
        while self._index < last and n - pos >= size:
            out.append(self._chunk(mv[pos:pos + size]))
            pos += size
        if pos < n:
            if (self._index == last and not self._pending
                    and n - pos == self.header.chunk_length(last)):
                out.append(self._chunk(mv[pos:]))  # the whole final chunk at once
            else:
                self._pending += mv[pos:]
        if not out:
            return b""
        return bytes(out[0]) if len(out) == 1 else b"".join(out)

    def finish(self) -> bytes:
        if not self._started or self._finished:
            raise RuntimeError("finish() outside start()")
        if self._fed != self.header.size:
            raise ValueError(f"declared size {self.header.size}, got {self._fed} bytes")
        self._finished = True
        out = b""
        if self._index < self._count:
            out = bytes(self._chunk(self._pending))
        self._pending = bytearray()
        self._dk = b""
        return out

    def _seal_all(self, plaintext) -> bytes:
        """The whole blob for ``plaintext`` in one buffer (what :func:`seal` uses)."""
        mv = _byte_view(plaintext)
        if len(mv) != self.header.size or self._started:
            raise RuntimeError("_seal_all needs a fresh sealer and the declared size")
        self._started = True
        prefix = self._prefix()
        total = len(prefix)
        for i in range(self._count):
            total += len(_bin_header(self.header.chunk_length(i) + TAG_SIZE)) + self.header.chunk_length(i) + TAG_SIZE
        out = bytearray(total)
        dst = memoryview(out)
        dst[: len(prefix)] = prefix
        pos, off = len(prefix), 0
        for i in range(self._count):
            length = self.header.chunk_length(i)
            pos += self._chunk_into(dst[pos:], mv[off:off + length])
            off += length
        dst.release()
        self._fed = len(mv)
        self._finished = True
        self._dk = b""
        return bytes(out)


def seal(
    plaintext: bytes,
    owner: PublicKey | KeyPair,
    *,
    owner_id: str,
    label: str,
    record_id: str,
    media_type: str = "application/octet-stream",
    owner_box_public_key: bytes | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    owner_box_secret_key: bytes | None = None,
) -> bytes:
    """Seal ``plaintext`` (any bytes-like) in memory; returns the blob.

    ``owner``, ``owner_box_public_key`` and ``owner_box_secret_key`` as for
    :class:`RecordSealer`.
    """
    sealer = RecordSealer(
        owner, owner_id=owner_id, label=label, record_id=record_id, media_type=media_type,
        size=_byte_view(plaintext).nbytes, owner_box_public_key=owner_box_public_key,
        chunk_size=chunk_size, owner_box_secret_key=owner_box_secret_key,
    )
    return sealer._seal_all(plaintext)


# ------------------------------------------------------------------ opening

_BIN_HEADER_SIZES = {0xC4: 2, 0xC5: 3, 0xC6: 5}


class RecordOpener:
    """Sans-I/O streaming decryption: ``feed(blob bytes) -> [verified plaintext chunks]``.

    When the header has been read, ``key_provider(header)`` is called once and
    must return dk (or raise). ``close()`` checks that the blob was complete.

    The prefix (array header, tag, version, header, nonce) is parsed with
    msgpack's Unpacker; chunks are parsed here, and a chunk that arrives whole
    in one ``feed`` is decrypted straight from the caller's buffer (a split one
    is gathered once into a buffer of its exact size).
    """

    _FEED_PIECE = 1 << 16

    def __init__(self, key_provider: KeyProvider, *, max_chunk_size: int = MAX_CHUNK_SIZE):
        self._provider = key_provider
        self._max_chunk = max_chunk_size
        self._unpacker = msgpack.Unpacker(
            raw=False,
            use_list=True,
            max_buffer_size=MAX_HEADER_SIZE + (1 << 17),
            max_bin_len=MAX_HEADER_SIZE,
            max_str_len=64,
            max_array_len=0,
            max_map_len=0,
            max_ext_len=0,
        )
        self._unpacker_fed = 0
        self._state = "array"
        self._length = 0
        self._version = 0
        self.header: RecordHeader | None = None
        self._header_bytes = b""
        self._nonce = b""
        self._dk = b""
        self._index = 0
        self._closed = False
        self._bin_hdr = bytearray()  # a chunk's bin header, while incomplete
        self._ct: bytearray | None = None  # a chunk's ciphertext, while incomplete
        self._ct_fill = 0

    def feed(self, data) -> list[bytes]:
        return [bytes(p) for p in self._feed(data)]

    def feed_buffers(self, data) -> list[bytearray]:
        """Like :meth:`feed`, returning the plaintext buffers the AEAD wrote (no copy);
        the caller owns them."""
        return self._feed(data)

    def _feed(self, data) -> list[bytearray]:
        if self._closed:
            raise DecodeError("sealed record: data after the end")
        out: list[bytearray] = []
        mv = _byte_view(data)
        if self._state != "chunks":
            off = 0
            while off < len(mv) and self._state != "chunks":
                piece = mv[off : off + self._FEED_PIECE]
                try:
                    self._unpacker.feed(piece)
                except msgpack.BufferFull as exc:  # pragma: no cover - guarded by piece size
                    raise DecodeError("sealed record: element too large") from exc
                self._unpacker_fed += len(piece)
                off += len(piece)
                self._drain_prefix()
            if self._state != "chunks":
                return out
            # The Unpacker holds the last `leftover` bytes of the stream unparsed. Those
            # from this call are re-read from `mv` (so a whole chunk is still decrypted
            # in place); only bytes from earlier calls are taken out of the Unpacker.
            # The Unpacker is not used again.
            leftover = self._unpacker_fed - self._unpacker.tell()
            if leftover > off:
                self._chunks(memoryview(self._unpacker.read_bytes(leftover - off)), out)
                mv = mv[0:]
            else:
                mv = mv[off - leftover:]
        self._chunks(mv, out)
        return out

    def _next(self):
        try:
            return self._unpacker.unpack()
        except msgpack.OutOfData:
            raise
        except ValueError as exc:
            raise DecodeError(f"sealed record: malformed msgpack ({exc})") from exc
        except Exception as exc:
            raise DecodeError(f"sealed record: malformed msgpack ({type(exc).__name__})") from exc

    def _drain_prefix(self) -> None:
        while self._state != "chunks":
            try:
                if self._state == "array":
                    try:
                        self._length = self._unpacker.read_array_header()
                    except msgpack.OutOfData:
                        raise
                    except Exception as exc:
                        raise DecodeError("sealed record: not a msgpack array") from exc
                    if self._length < 4:
                        raise DecodeError("sealed record: array too short")
                    self._state = "tag"
                elif self._state == "tag":  # version 3 leads with its version, 1 and 2 with the tag
                    first = self._next()
                    if type(first) is int and first == FORMAT_VERSION:
                        self._version = first
                        self._state = "header"
                    elif first != FORMAT_TAG:
                        raise DecodeError("sealed record: wrong format tag")
                    else:
                        self._state = "version"
                elif self._state == "version":
                    version = self._next()
                    if type(version) is not int or version not in _TAGGED_VERSIONS:
                        raise DecodeError(f"sealed record: unsupported version {version!r}")
                    self._version = version
                    self._state = "header"
                elif self._state == "header":
                    hb = self._next()
                    if not isinstance(hb, bytes):
                        raise DecodeError("sealed record: header must be bin")
                    self.header = RecordHeader.from_bytes(hb)
                    if self.header.version != self._version:
                        raise DecodeError("sealed record: header version differs from the record's")
                    self._header_bytes = hb
                    if self._length != (3 if self._version >= 3 else 4) + self.header.chunk_count:
                        raise DecodeError("sealed record: chunk count does not match the header")
                    if self.header.chunk_size > self._max_chunk:
                        raise DecodeError("sealed record: chunk size above this reader's limit")
                    self._state = "nonce"
                elif self._state == "nonce":
                    nonce = self._next()
                    if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
                        raise DecodeError("sealed record: nonce must be 24 bytes")
                    self._nonce = nonce
                    assert self.header is not None
                    dk = self._provider(self.header)
                    if not isinstance(dk, bytes) or not hmac.compare_digest(
                        _key_check(dk), self.header.key_check
                    ):
                        raise DecryptionError("sealed record: wrong key for this record")
                    self._dk = dk
                    self._state = "chunks"
            except msgpack.OutOfData:
                return

    def _chunks(self, mv: memoryview, out: list[bytearray]) -> None:
        header = self.header
        assert header is not None
        count = header.chunk_count
        pos, n = 0, len(mv)
        while pos < n:
            if self._index >= count:
                raise DecodeError("sealed record: trailing data after the last chunk")
            if self._ct is None:  # reading a bin header
                if not self._bin_hdr:
                    first = mv[pos]
                    if first not in _BIN_HEADER_SIZES:
                        raise DecodeError(f"sealed record: chunk {self._index} is not msgpack bin")
                want = _BIN_HEADER_SIZES[self._bin_hdr[0] if self._bin_hdr else mv[pos]]
                take = min(want - len(self._bin_hdr), n - pos)
                self._bin_hdr += mv[pos : pos + take]
                pos += take
                if len(self._bin_hdr) < want:
                    return
                length = int.from_bytes(self._bin_hdr[1:], "big")
                self._bin_hdr = bytearray()
                if length != header.chunk_length(self._index) + TAG_SIZE:
                    raise DecodeError(f"sealed record: chunk {self._index} has the wrong size")
                if n - pos >= length:  # whole chunk in this buffer: no copy
                    out.append(self._open_chunk(mv[pos : pos + length]))
                    pos += length
                    continue
                self._ct = bytearray(length)
                self._ct_fill = 0
            take = min(len(self._ct) - self._ct_fill, n - pos)
            self._ct[self._ct_fill : self._ct_fill + take] = mv[pos : pos + take]
            self._ct_fill += take
            pos += take
            if self._ct_fill == len(self._ct):
                ct, self._ct = self._ct, None
                out.append(self._open_chunk(ct))

    def _open_chunk(self, ct) -> bytearray:
        assert self.header is not None
        index = self._index
        final = index == self.header.chunk_count - 1
        try:
            plain = _decrypt(ct, _ad(self._header_bytes, index, final), _nonce(self._nonce, index), self._dk)
        except CryptoError as exc:
            raise DecryptionError(f"sealed record: chunk {index} failed authentication") from exc
        self._index = index + 1
        return plain

    def close(self) -> None:
        """Raise unless the whole record was read and authenticated."""
        self._closed = True
        if self.header is None or self._index != self.header.chunk_count:
            raise DecryptionError("sealed record: truncated (not every chunk was received)")
        self._dk = b""

    @property
    def complete(self) -> bool:
        return self.header is not None and self._index == self.header.chunk_count


def open_record(blob: bytes, key_provider: KeyProvider) -> tuple[RecordHeader, bytes]:
    """Open a whole in-memory blob; returns (header, plaintext) or raises."""
    opener = RecordOpener(key_provider)
    parts = opener._feed(blob)
    opener.close()
    assert opener.header is not None
    return opener.header, b"".join(parts)


def peek_header(blob_prefix: bytes) -> RecordHeader:
    """Parse the header from the first bytes of a blob (no key needed)."""

    class _Stop(Exception):
        pass

    seen: list[RecordHeader] = []

    def provider(h: RecordHeader) -> bytes:
        seen.append(h)
        raise _Stop

    try:
        RecordOpener(provider).feed(blob_prefix)
    except _Stop:
        return seen[0]
    raise DecodeError("sealed record: header incomplete")


# --------------------------------------------------------------- key providers


def owner_key_provider(box_secret_key: bytes) -> KeyProvider:
    """The owner's fast path: unwrap dk with its X25519 key (no pairing).

    Opens kind-1 (sealed box) and kind-2 (owner box) wraps.
    """
    sk_bytes = _box_secret(box_secret_key)

    def provide(header: RecordHeader) -> bytes:
        kind = header.owner_wrap_kind
        if header.owner_wrap is None or kind == WRAP_NONE:
            raise DecryptionError("record carries no owner wrap; use the pairing path")
        sk, _pk, box = _owner_keys(sk_bytes)
        try:
            if kind == WRAP_OWNER_BOX and header.version >= 3:  # (its nonce derived from U)
                return bytes(box.decrypt(header.owner_wrap, _wrap_nonce(header.capsule)))
            if kind == WRAP_OWNER_BOX:
                return bytes(box.decrypt(header.owner_wrap))
            return SealedBox(sk).decrypt(header.owner_wrap)
        except CryptoError as exc:
            raise DecryptionError("owner wrap does not open with this key") from exc

    return provide


def owner_pairing_key_provider(keypair: KeyPair) -> KeyProvider:
    """The owner's pairing path: K = e(a^-1 U, g2)."""

    def provide(header: RecordHeader) -> bytes:
        if header.owner_p1 != keypair.public.p1.to_bytes():
            raise DecryptionError("record is sealed under another key or label")
        k = decapsulate_owner(keypair, api(keypair.backend).G1.from_bytes(header.capsule))
        return derive_data_key(k, header.capsule, header.owner_p1)

    return provide


class DataKeyMemo:
    """Data keys recovered from exactly t shares, by a digest of everything that determines them.

    dk is a function of the t shares (their indices and GT values), the receiver's
    secret, the capsule and the owner's P1: the same inputs give the same key, so a
    reader that reads one record again under one grant (the peers' shares are
    deterministic: e(U, rk_i)) skips the GT multi-exponentiation (~0.3 ms at t = 2).
    A memo of a process's own data keys, in its memory, bounded to ``size`` (least
    recently used first out); a key it returns is still checked against the
    header's key check. Safe to share between threads (a large record is opened
    in a worker thread while the event loop opens small ones)."""

    def __init__(self, size: int = 1024):
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self._keys: dict[bytes, bytes] = {}
        self._lock = threading.Lock()
        self.hits = 0

    @staticmethod
    def key(shares: Iterable[ReencryptedShare], receiver_secret: int, header: RecordHeader) -> bytes:
        h = hashlib.sha256(b"emrshare/data-key-memo/v1")
        h.update(receiver_secret.to_bytes(32, "big"))
        for field_ in (header.capsule, header.owner_p1):
            h.update(len(field_).to_bytes(4, "big") + field_)
        for s in sorted(shares, key=lambda s: s.index):
            h.update(s.index.to_bytes(4, "big") + s.value.to_bytes())
        return h.digest()

    def get(self, key: bytes) -> bytes | None:
        with self._lock:
            dk = self._keys.pop(key, None)
            if dk is not None:
                self._keys[key] = dk  # (most recent last)
            return dk

    def put(self, key: bytes, dk: bytes) -> None:
        with self._lock:
            self._keys.pop(key, None)
            self._keys[key] = dk
            while len(self._keys) > self.size:
                del self._keys[next(iter(self._keys))]

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)


class ThresholdKeyProvider:
    """The doctor's path: K from t of n re-encrypted shares.

    After use, ``suspects`` lists proxy indices whose shares were inconsistent.
    ``memo``: a :class:`DataKeyMemo` consulted and filled when exactly t shares are
    given (with more, which ones are faulty is decided by the recovery each time).
    """

    def __init__(self, shares: Iterable[ReencryptedShare], threshold: int, receiver_secret: int,
                 *, max_subsets: int = 256, memo: DataKeyMemo | None = None):
        self.shares = list(shares)
        self.threshold = threshold
        self._secret = receiver_secret
        self._max = max_subsets
        self._memo = memo
        self.suspects: tuple[int, ...] = ()

    def __call__(self, header: RecordHeader) -> bytes:
        memo_key = None
        if self._memo is not None and len({s.index for s in self.shares}) == self.threshold == len(self.shares):
            memo_key = DataKeyMemo.key(self.shares, self._secret, header)
            dk = self._memo.get(memo_key)
            if dk is not None and hmac.compare_digest(_key_check(dk), header.key_check):
                self._memo.hits += 1
                return dk
        found: list[bytes] = []

        def check(k: GT) -> bool:
            dk = derive_data_key(k, header.capsule, header.owner_p1)
            if hmac.compare_digest(_key_check(dk), header.key_check):
                found.append(dk)
                return True
            return False

        _, self.suspects = recover_key(self.shares, self.threshold, self._secret, check,
                                       max_subsets=self._max)
        if memo_key is not None:
            self._memo.put(memo_key, found[-1])
        return found[-1]
