"""Sealed records: the KEM/DEM format patients store in content-addressed storage.

Layout (version 1). A sealed record is ONE msgpack array, written and read as a
stream so records of any size (tested to 64 MiB) take bounded memory::

    [ "emrshare/sealed-record",   # str, format tag
      1,                          # int, format version
      header,                     # bin, canonical msgpack of the RecordHeader (below)
      nonce,                      # bin(24), random base nonce
      chunk_0, ..., chunk_{n-1} ] # bin, XChaCha20-Poly1305 ciphertext of each chunk

The header is itself a msgpack array in this fixed order::

    [version, owner_id, label, record_id, media_type,
     capsule U (bin 48), owner P1_L (bin 48), size, chunk_size,
     key_check (bin 16), owner_wrap (bin 80 or nil)]

Keys: ``K = Z^k`` from the PRE capsule (core.pre); the data key
``dk = HKDF-SHA256(ikm = enc(K), salt = "emrshare/v1/dem", info = enc(U) || enc(P1_L))``;
``key_check = HMAC-SHA256(dk, "emrshare/v1/key-check")[:16]`` lets a reader test a
candidate key before decrypting (and makes the AEAD key-committing); the
optional ``owner_wrap`` is dk sealed to the owner's X25519 key so the owner
opens its records without a pairing.

Chunks: plaintext is cut into ``chunk_size`` pieces (the last may be shorter;
an empty record has one empty chunk), ``n = max(1, ceil(size / chunk_size))``.
Chunk i is encrypted with nonce ``nonce XOR i`` (i as 24-byte big-endian) and
associated data ``header || i (8-byte big-endian) || final (1 byte)``, so
chunks cannot be reordered, dropped, truncated or moved between records.
CRYPTO.md's single-shot ``ad = header`` is the one-chunk case with the index and
final flag appended.

Readers (:class:`RecordOpener`) release a chunk's plaintext only after it
authenticates, and :meth:`RecordOpener.close` fails unless every chunk arrived;
a caller writing a stream to disk must discard it unless ``close()`` succeeds
(:func:`open_record` does that for in-memory use).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Callable, Iterable

import msgpack
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey as BoxPrivateKey
from nacl.public import PublicKey as BoxPublicKey
from nacl.public import SealedBox

from .curve import GT, G1
from .errors import DecodeError, DecryptionError
from .kdf import hkdf_sha256
from .pre import KeyPair, PublicKey, ReencryptedShare, decapsulate_owner, encapsulate, recover_key

__all__ = [
    "FORMAT_TAG",
    "FORMAT_VERSION",
    "DEFAULT_CHUNK_SIZE",
    "RecordHeader",
    "RecordSealer",
    "RecordOpener",
    "seal",
    "open_record",
    "derive_data_key",
    "owner_key_provider",
    "owner_pairing_key_provider",
    "ThresholdKeyProvider",
]

FORMAT_TAG = "emrshare/sealed-record"
FORMAT_VERSION = 1
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
OWNER_WRAP_SIZE = 80  # sealed box of a 32-byte key

_DEM_SALT = b"emrshare/v1/dem"
_KEY_CHECK_INFO = b"emrshare/v1/key-check"

KeyProvider = Callable[["RecordHeader"], bytes]


def derive_data_key(k: GT, capsule: bytes, owner_p1: bytes) -> bytes:
    """dk = HKDF-SHA256(enc(K), salt, enc(U) || enc(P1_L))."""
    return hkdf_sha256(k.to_bytes(), _DEM_SALT, capsule + owner_p1, 32)


def _key_check(dk: bytes) -> bytes:
    return hmac.new(dk, _KEY_CHECK_INFO, hashlib.sha256).digest()[:KEY_CHECK_SIZE]


def _text(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str) or not value:
        raise DecodeError(f"record header: {what} must be a non-empty string")
    if len(value.encode()) > limit:
        raise DecodeError(f"record header: {what} is longer than {limit} bytes")
    return value


@dataclass(frozen=True, slots=True)
class RecordHeader:
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

    def __post_init__(self) -> None:
        _text(self.owner_id, "owner id", MAX_ID_LEN)
        _text(self.label, "label", MAX_ID_LEN)
        _text(self.record_id, "record id", MAX_ID_LEN)
        _text(self.media_type, "media type", MAX_MEDIA_TYPE_LEN)
        if self.version != FORMAT_VERSION:
            raise DecodeError(f"record header: unsupported version {self.version!r}")
        for name, value, size in (
            ("capsule", self.capsule, 48),
            ("owner P1", self.owner_p1, 48),
            ("key check", self.key_check, KEY_CHECK_SIZE),
        ):
            if not isinstance(value, bytes) or len(value) != size:
                raise DecodeError(f"record header: {name} must be {size} bytes")
        if self.owner_wrap is not None and (
            not isinstance(self.owner_wrap, bytes) or len(self.owner_wrap) != OWNER_WRAP_SIZE
        ):
            raise DecodeError(f"record header: owner wrap must be {OWNER_WRAP_SIZE} bytes or absent")
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
        return msgpack.packb(
            [
                self.version,
                self.owner_id,
                self.label,
                self.record_id,
                self.media_type,
                self.capsule,
                self.owner_p1,
                self.size,
                self.chunk_size,
                self.key_check,
                self.owner_wrap,
            ],
            use_bin_type=True,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> "RecordHeader":
        if not isinstance(data, bytes) or len(data) > MAX_HEADER_SIZE:
            raise DecodeError("record header: not bytes or too large")
        try:
            fields = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=MAX_HEADER_SIZE)
        except Exception as exc:
            raise DecodeError(f"record header: not msgpack ({type(exc).__name__})") from exc
        if not isinstance(fields, list) or len(fields) != 11:
            raise DecodeError("record header: expected an array of 11 fields")
        (version, owner_id, label, record_id, media_type, capsule, owner_p1, size, chunk_size,
         key_check, owner_wrap) = fields
        header = cls(owner_id, label, record_id, media_type, capsule, owner_p1, size, chunk_size,
                     key_check, owner_wrap, version)
        if header.to_bytes() != data:
            raise DecodeError("record header: not in canonical encoding")
        return header

    def capsule_point(self, backend=None) -> G1:
        return G1.from_bytes(self.capsule, backend=backend)


def _nonce(base: bytes, index: int) -> bytes:
    return (int.from_bytes(base, "big") ^ index).to_bytes(NONCE_SIZE, "big")


def _ad(header_bytes: bytes, index: int, final: bool) -> bytes:
    return header_bytes + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


class RecordSealer:
    """Sans-I/O streaming encryption of one record.

    ``start()`` returns the first bytes of the blob; ``update(data)`` returns
    the blob bytes that complete chunks produce; ``finish()`` the rest. The
    concatenation is the sealed record.
    """

    def __init__(
        self,
        owner: PublicKey,
        *,
        owner_id: str,
        label: str,
        record_id: str,
        media_type: str,
        size: int,
        owner_box_public_key: bytes | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ):
        capsule, k = encapsulate(owner)
        capsule_b, p1_b = capsule.to_bytes(), owner.p1.to_bytes()
        self._dk = derive_data_key(k, capsule_b, p1_b)
        wrap = None
        if owner_box_public_key is not None:
            wrap = SealedBox(BoxPublicKey(owner_box_public_key)).encrypt(self._dk)
        try:
            self.header = RecordHeader(
                owner_id, label, record_id, media_type, capsule_b, p1_b, size, chunk_size,
                _key_check(self._dk), wrap,
            )
        except DecodeError as exc:
            raise ValueError(str(exc).replace("record header: ", "")) from exc
        self._header_bytes = self.header.to_bytes()
        self._nonce = secrets.token_bytes(NONCE_SIZE)
        self._pending = bytearray()
        self._index = 0
        self._fed = 0
        self._started = False
        self._finished = False

    def start(self) -> bytes:
        if self._started:
            raise RuntimeError("start() called twice")
        self._started = True
        packer = msgpack.Packer(use_bin_type=True)
        return (
            packer.pack_array_header(4 + self.header.chunk_count)
            + packer.pack(FORMAT_TAG)
            + packer.pack(FORMAT_VERSION)
            + packer.pack(self._header_bytes)
            + packer.pack(self._nonce)
        )

    def _chunk(self, plain: bytes) -> bytes:
        final = self._index == self.header.chunk_count - 1
        ct = crypto_aead_xchacha20poly1305_ietf_encrypt(
            plain, _ad(self._header_bytes, self._index, final), _nonce(self._nonce, self._index), self._dk
        )
        self._index += 1
        return msgpack.packb(ct, use_bin_type=True)

    def update(self, data: bytes) -> bytes:
        if not self._started or self._finished:
            raise RuntimeError("update() outside start()/finish()")
        self._fed += len(data)
        if self._fed > self.header.size:
            raise ValueError(f"more plaintext than the declared size {self.header.size}")
        self._pending += data
        out = []
        size = self.header.chunk_size
        while len(self._pending) >= size and self._index < self.header.chunk_count - 1:
            out.append(self._chunk(bytes(self._pending[:size])))
            del self._pending[:size]
        return b"".join(out)

    def finish(self) -> bytes:
        if not self._started or self._finished:
            raise RuntimeError("finish() outside start()")
        if self._fed != self.header.size:
            raise ValueError(f"declared size {self.header.size}, got {self._fed} bytes")
        self._finished = True
        out = self._chunk(bytes(self._pending))
        self._pending.clear()
        self._dk = b""
        return out


def seal(
    plaintext: bytes,
    owner: PublicKey,
    *,
    owner_id: str,
    label: str,
    record_id: str,
    media_type: str = "application/octet-stream",
    owner_box_public_key: bytes | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> bytes:
    """Seal ``plaintext`` in memory; returns the blob."""
    sealer = RecordSealer(
        owner, owner_id=owner_id, label=label, record_id=record_id, media_type=media_type,
        size=len(plaintext), owner_box_public_key=owner_box_public_key, chunk_size=chunk_size,
    )
    mv = memoryview(plaintext)
    parts = [sealer.start()]
    for off in range(0, len(plaintext), chunk_size):
        parts.append(sealer.update(bytes(mv[off : off + chunk_size])))
    parts.append(sealer.finish())
    return b"".join(parts)


class RecordOpener:
    """Sans-I/O streaming decryption: ``feed(blob bytes) -> [verified plaintext chunks]``.

    When the header has been read, ``key_provider(header)`` is called once and
    must return dk (or raise). ``close()`` checks that the blob was complete.
    """

    _FEED_PIECE = 1 << 16

    def __init__(self, key_provider: KeyProvider, *, max_chunk_size: int = MAX_CHUNK_SIZE):
        self._provider = key_provider
        self._unpacker = msgpack.Unpacker(
            raw=False,
            use_list=True,
            max_buffer_size=max_chunk_size + TAG_SIZE + (1 << 17),
            max_bin_len=max_chunk_size + TAG_SIZE,
            max_str_len=64,
            max_array_len=0,
            max_map_len=0,
            max_ext_len=0,
        )
        self._state = "array"
        self._length = 0
        self.header: RecordHeader | None = None
        self._header_bytes = b""
        self._nonce = b""
        self._dk = b""
        self._index = 0
        self._closed = False

    def feed(self, data: bytes) -> list[bytes]:
        if self._closed:
            raise DecodeError("sealed record: data after the end")
        out: list[bytes] = []
        mv = memoryview(data)
        for off in range(0, len(mv), self._FEED_PIECE):
            try:
                self._unpacker.feed(mv[off : off + self._FEED_PIECE])
            except msgpack.BufferFull as exc:  # pragma: no cover - guarded by piece size
                raise DecodeError("sealed record: element too large") from exc
            self._drain(out)
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

    def _drain(self, out: list[bytes]) -> None:
        while True:
            try:
                if self._state == "array":
                    try:
                        self._length = self._unpacker.read_array_header()
                    except msgpack.OutOfData:
                        raise
                    except Exception as exc:
                        raise DecodeError("sealed record: not a msgpack array") from exc
                    if self._length < 5:
                        raise DecodeError("sealed record: array too short")
                    self._state = "tag"
                elif self._state == "tag":
                    if self._next() != FORMAT_TAG:
                        raise DecodeError("sealed record: wrong format tag")
                    self._state = "version"
                elif self._state == "version":
                    version = self._next()
                    if version != FORMAT_VERSION or type(version) is not int:
                        raise DecodeError(f"sealed record: unsupported version {version!r}")
                    self._state = "header"
                elif self._state == "header":
                    hb = self._next()
                    if not isinstance(hb, bytes):
                        raise DecodeError("sealed record: header must be bin")
                    self.header = RecordHeader.from_bytes(hb)
                    self._header_bytes = hb
                    if self._length != 4 + self.header.chunk_count:
                        raise DecodeError("sealed record: chunk count does not match the header")
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
                elif self._state == "chunks":
                    assert self.header is not None
                    if self._index >= self.header.chunk_count:
                        self._state = "done"
                        continue
                    ct = self._next()
                    expected = self.header.chunk_length(self._index) + TAG_SIZE
                    if not isinstance(ct, bytes) or len(ct) != expected:
                        raise DecodeError(f"sealed record: chunk {self._index} has the wrong size")
                    final = self._index == self.header.chunk_count - 1
                    try:
                        plain = crypto_aead_xchacha20poly1305_ietf_decrypt(
                            ct, _ad(self._header_bytes, self._index, final),
                            _nonce(self._nonce, self._index), self._dk,
                        )
                    except CryptoError as exc:
                        raise DecryptionError(
                            f"sealed record: chunk {self._index} failed authentication"
                        ) from exc
                    self._index += 1
                    out.append(plain)
                else:  # done: any further byte is an error
                    try:
                        self._unpacker.skip()
                    except msgpack.OutOfData:
                        return
                    except Exception:
                        pass
                    raise DecodeError("sealed record: trailing data after the last chunk")
            except msgpack.OutOfData:
                return

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
    parts = opener.feed(blob)
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
    """The owner's fast path: unwrap dk with its X25519 key (no pairing)."""

    def provide(header: RecordHeader) -> bytes:
        if header.owner_wrap is None:
            raise DecryptionError("record carries no owner wrap; use the pairing path")
        try:
            return SealedBox(BoxPrivateKey(box_secret_key)).decrypt(header.owner_wrap)
        except CryptoError as exc:
            raise DecryptionError("owner wrap does not open with this key") from exc

    return provide


def owner_pairing_key_provider(keypair: KeyPair) -> KeyProvider:
    """The owner's pairing path: K = e(a^-1 U, g2)."""

    def provide(header: RecordHeader) -> bytes:
        if header.owner_p1 != keypair.public.p1.to_bytes():
            raise DecryptionError("record is sealed under another key or label")
        k = decapsulate_owner(keypair, header.capsule_point(keypair.backend))
        return derive_data_key(k, header.capsule, header.owner_p1)

    return provide


class ThresholdKeyProvider:
    """The doctor's path: K from t of n re-encrypted shares.

    After use, ``suspects`` lists proxy indices whose shares were inconsistent.
    """

    def __init__(self, shares: Iterable[ReencryptedShare], threshold: int, receiver_secret: int,
                 *, max_subsets: int = 256):
        self.shares = list(shares)
        self.threshold = threshold
        self._secret = receiver_secret
        self._max = max_subsets
        self.suspects: tuple[int, ...] = ()

    def __call__(self, header: RecordHeader) -> bytes:
        found: list[bytes] = []

        def check(k: GT) -> bool:
            dk = derive_data_key(k, header.capsule, header.owner_p1)
            if hmac.compare_digest(_key_check(dk), header.key_check):
                found.append(dk)
                return True
            return False

        _, self.suspects = recover_key(self.shares, self.threshold, self._secret, check,
                                       max_subsets=self._max)
        return found[-1]
