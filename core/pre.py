"""Threshold AFGH proxy re-encryption, label-scoped (CRYPTO.md).

Keys
    Each user holds a 32-byte master secret ``s``. Its PRE secret for label L is
    ``a_L = hash_to_scalar("emrshare/v1/pre-label", s, L)``; at epoch e > 0 (after
    a rotation, docs/crypto-standing.md) it is
    ``a_{L,e} = hash_to_scalar("emrshare/v1/pre-label-epoch", s, L, e)``, so epoch 0
    is the original key and every epoch's key is independent. Its public key is
    ``(P1, P2) = (a_L g1, a_L g2)``, published with a Schnorr proof of possession
    of ``a_L`` bound to the owner's id and label. A doctor's receiving key is the
    key of the label ``"receive"``.

Encapsulation (patient, label L)
    ``k`` random; capsule ``U = k P1``; ``K = Z^k`` (:func:`encapsulate`). The
    owner, who knows ``a_L``, computes the same capsule as ``U = (k a_L) g1``
    from a fixed-base table (:func:`encapsulate_owner`, constant time on the
    native backend): the result is identical, only faster.

Delegation (t of n proxies)
    A random polynomial ``f`` of degree t-1 with ``f(0) = 1/a_L``; proxy i gets
    ``rk_i = f(x_i) P2_B``, sealed to its X25519 key with the grant context inside
    (version 2) or rk masked with it (version 4, what patients seal: :data:`_BOUND_CODE`).

Standing delegation (t of n proxies, any later receiver)
    The same polynomial ``f`` drawn once per label, but proxy i gets the scalar
    ``f(x_i)`` itself, sealed to its X25519 key (:func:`make_standing_parts`);
    for a receiver B the ledger allows later it derives its own key share
    ``rk_i = f(x_i) P2_B`` (:func:`derive_key_share`: one constant-time G2
    multiplication), with no message to the owner. Any t parts interpolate
    ``1/a_L`` (docs/security.md, "Standing delegation", says what that costs).

Re-encryption (proxy i)
    ``s_i = e(U, rk_i) = Z^(k b f(x_i) a_L)``.

Decapsulation (doctor B)
    ``K = prod s_i^(l_i / b)`` over t shares with Lagrange coefficients l_i at 0:
    one multi-exponentiation. With faulty shares, other subsets are tried and the
    faulty proxies named.

Keys, shares and capsules are made on the process's arithmetic backend, and
everything computed from them stays on theirs; :class:`Scheme` makes them on a
given backend (contract tests). Nothing here does I/O; randomness comes from
the OS CSPRNG (``secrets``).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from dataclasses import dataclass, field
from math import comb
from typing import Callable, Sequence

import msgpack
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey as BoxPrivateKey
from nacl.public import PublicKey as BoxPublicKey
from nacl.public import SealedBox

from ._backend import Backend, active_backend
from .curve import (
    G1, G2, GT, G2Prepared, R, api, hash_to_scalar, multi_pairing, pairing, random_scalar, scalar_from_bytes,
    scalar_inverse, scalar_to_bytes,
)
from .errors import DecodeError, DecryptionError, FaultyShareError, SignatureError

__all__ = [
    "MASTER_SECRET_SIZE",
    "RECEIVE_LABEL",
    "MAX_PROXIES",
    "MAX_EPOCH",
    "PublicKey",
    "KeyPair",
    "Proof",
    "Proxy",
    "KeyShare",
    "SealedKeyShare",
    "StandingPart",
    "ReencryptedShare",
    "Scheme",
    "new_master_secret",
    "label_secret",
    "verify_public_key",
    "encapsulate",
    "encapsulate_owner",
    "decapsulate_owner",
    "make_key_shares",
    "open_key_share",
    "make_standing_parts",
    "open_standing_part",
    "derive_key_share",
    "is_valid_single_rekey",
    "reencrypt",
    "lagrange_at_zero",
    "combine",
    "recover_key",
    "box_keypair",
]

MASTER_SECRET_SIZE = 32
RECEIVE_LABEL = "receive"
MAX_PROXIES = 64
MAX_LABEL_LEN = 128
MAX_ID_LEN = 256

_LABEL_TAG = "emrshare/v1/pre-label"
_EPOCH_TAG = "emrshare/v1/pre-label-epoch"
MAX_EPOCH = 2**32 - 1
_POP_TAG = "emrshare/v1/pre-pop"
_SHARE_TAG = "emrshare/v1/rk-share"  # version 1 of a key share's plaintext (still opened)
_SHARE_CODE = 2
"""Version 2 of a key share's plaintext: the tag is this small integer instead of the
20-character string (20 bytes less per sealed share; a standing part's tag stays a
string, so neither is taken for the other)."""
_DIGEST_BOUND_CODE = 3
"""Version 3 of a key share's plaintext, ``[3, rk]`` (session 11): no context, index or
threshold, bound to its grant only by the sha256 of its sealed bytes that the grant
commits. Whoever held those bytes could commit them under another grant of its own
(session 12's attack review), so a proxy opens a version-3 share only from its own store
(``stored=True``: kept before version 4), never when one is delivered."""
_BOUND_CODE = 4
"""Version 4 of a key share's plaintext, ``[4, rk XOR mask]``, what a patient seals for a
grant: no context, index or threshold (21 bytes less per sealed share than version 2) and
no byte more than version 3. ``mask`` = SHAKE-256(domain || u32(len context) || context
|| index as 32 bytes) over rk's 96 bytes (:func:`_share_mask`): opened for another grant or
proxy index, rk is 96 bytes of garbage (not a point of the subgroup: refused). The sha256
of the sealed bytes, which the grantor commits (the grant transaction's ``shares``), is
still checked before one is opened (``expected_digest``)."""
_MASK_TAG = b"emrshare/v1/rk-share-mask\x00"
_PART_TAG = "emrshare/v1/standing-part"


def new_master_secret() -> bytes:
    import secrets

    return secrets.token_bytes(MASTER_SECRET_SIZE)


def box_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair (secret, public) for sealed boxes."""
    sk = BoxPrivateKey.generate()
    return bytes(sk), bytes(sk.public_key)


def _check_text(value: str, what: str, limit: int) -> bytes:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    data = value.encode()
    if len(data) > limit:
        raise ValueError(f"{what} is longer than {limit} bytes")
    return data


def label_secret(master_secret: bytes, label: str, epoch: int = 0) -> int:
    """a_{L,e}, the PRE secret scalar of ``label`` at ``epoch`` (nonzero by construction;
    epoch 0 is a_L)."""
    if not isinstance(master_secret, (bytes, bytearray)) or len(master_secret) != MASTER_SECRET_SIZE:
        raise ValueError(f"master secret must be {MASTER_SECRET_SIZE} bytes")
    if type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH:
        raise ValueError(f"epoch must be an integer in [0, {MAX_EPOCH}]")
    name = _check_text(label, "label", MAX_LABEL_LEN)
    if epoch == 0:
        return hash_to_scalar(_LABEL_TAG, bytes(master_secret), name)
    return hash_to_scalar(_EPOCH_TAG, bytes(master_secret), name, epoch.to_bytes(4, "big"))


# ----------------------------------------------------------------- public keys


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A PRE public key (P1 = a g1, P2 = a g2); 144 bytes encoded."""

    p1: G1
    p2: G2

    SIZE = 144

    def to_bytes(self) -> bytes:
        return self.p1.to_bytes() + self.p2.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> "PublicKey":
        """Decode and validate points (not the identity), on the process's backend.
        Call :meth:`check` for the pairing check."""
        return Scheme(active_backend()).public_key_from_bytes(data)

    def check(self) -> None:
        """Raise DecodeError unless e(P1, g2) = e(g1, P2) (one multi-pairing)."""
        c = api(self.p1.backend)
        if not multi_pairing([(self.p1, -c.G2.generator()), (c.G1.generator(), self.p2)]).is_one():
            raise DecodeError("PRE public key is inconsistent: e(P1, g2) != e(g1, P2)")


@dataclass(frozen=True, slots=True)
class Proof:
    """Schnorr proof of knowledge of a for P1 = a g1, as (challenge c, response z)."""

    c: int
    z: int

    SIZE = 64

    def to_bytes(self) -> bytes:
        return scalar_to_bytes(self.c) + scalar_to_bytes(self.z)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Proof":
        if not isinstance(data, (bytes, bytearray)) or len(data) != cls.SIZE:
            raise DecodeError(f"proof of possession must be {cls.SIZE} bytes")
        return cls(scalar_from_bytes(data[:32]), scalar_from_bytes(data[32:], allow_zero=True))


def _pop_challenge(public: PublicKey, owner_id: str, label: str, commitment: G1) -> int:
    return hash_to_scalar(
        _POP_TAG,
        _check_text(owner_id, "owner id", MAX_ID_LEN),
        _check_text(label, "label", MAX_LABEL_LEN),
        public.to_bytes(),
        commitment.to_bytes(),
    )


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A label's PRE secret scalar and public key. ``repr`` never shows the secret."""

    secret: int = field(repr=False)
    public: PublicKey
    label: str
    epoch: int = 0

    @classmethod
    def derive(cls, master_secret: bytes, label: str, epoch: int = 0) -> "KeyPair":
        """The key pair of ``label`` (at ``epoch``), on the process's backend."""
        return Scheme(active_backend()).derive_keypair(master_secret, label, epoch)

    @property
    def backend(self) -> Backend:
        return self.public.p1.backend

    def prove(self, owner_id: str) -> Proof:
        """A fresh proof of possession of this key, bound to ``owner_id`` and the label."""
        r = random_scalar()
        commitment = api(self.backend).G1.generator() * r
        c = _pop_challenge(self.public, owner_id, self.label, commitment)
        return Proof(c, (r + c * self.secret) % R)


def verify_public_key(public: PublicKey, owner_id: str, label: str, proof: Proof) -> None:
    """Check the pairing consistency and the proof of possession; raise on failure.

    DecodeError for an inconsistent key, SignatureError for a bad proof.
    """
    public.check()
    g1 = api(public.p1.backend).G1.generator()
    commitment = G1.msm([g1, public.p1], [proof.z, (R - proof.c) % R])
    if commitment.is_identity() or _pop_challenge(public, owner_id, label, commitment) != proof.c:
        raise SignatureError(f"proof of possession for {owner_id!r}/{label!r} does not verify")


# ------------------------------------------------------------- encapsulation


def encapsulate(owner: PublicKey) -> tuple[G1, GT]:
    """(capsule U = k P1, K = Z^k) for a fresh random k."""
    k = random_scalar()
    return owner.p1 * k, api(owner.p1.backend).GT.generator_pow(k)


def encapsulate_owner(keypair: KeyPair) -> tuple[G1, GT]:
    """The owner's :func:`encapsulate`: (U = (k a_L) g1 = k P1, K = Z^k), fresh k.

    Same distribution and same bytes as ``encapsulate(keypair.public)``; it uses
    the secret a_L to replace the variable-base multiplication k P1 by a
    fixed-base one.
    """
    k = random_scalar()
    c = api(keypair.backend)
    return c.G1.generator_mul(k * keypair.secret % R), c.GT.generator_pow(k)


def decapsulate_owner(keypair: KeyPair, capsule: G1) -> GT:
    """K = e(a^-1 U, g2), the owner's own path (one pairing)."""
    inv = scalar_inverse(keypair.secret)
    return pairing(capsule * inv, api(keypair.backend).G2.generator())


# ----------------------------------------------------------------- delegation


@dataclass(frozen=True, slots=True)
class Proxy:
    """A re-encryption proxy (consortium peer): public index x_i and X25519 key."""

    index: int
    box_public_key: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.index, int) or not 0 < self.index < R:
            raise ValueError("proxy index must be an integer in [1, r)")
        if not isinstance(self.box_public_key, bytes) or len(self.box_public_key) != 32:
            raise ValueError("proxy box public key must be 32 bytes")


@dataclass(frozen=True, slots=True)
class SealedKeyShare:
    """rk_i sealed to proxy i's X25519 key; only this ever travels or rests."""

    index: int
    sealed: bytes


@dataclass(frozen=True, slots=True)
class KeyShare:
    """An opened re-encryption key share rk_i (held by proxy i only)."""

    index: int
    threshold: int
    context: bytes
    rk: G2

    def prepare(self) -> "PreparedKeyShare":
        return PreparedKeyShare(self.index, self.rk.prepare())

    def to_bytes(self, *, bound: bool = False) -> bytes:
        """The share's plaintext encoding (what gets sealed; keep it secret): version 2,
        ``[2, context, index, threshold, rk]`` (version 1 had the tag string
        ``"emrshare/v1/rk-share"`` first); ``bound``: version 4, ``[4, rk XOR mask(context,
        index)]``, for a share whose sealed bytes' digest the grantor commits
        (:func:`make_key_shares`). :meth:`Scheme.open_key_share` opens every version (3 only
        from a proxy's own store)."""
        if bound:
            return msgpack.packb([_BOUND_CODE, _masked(self.rk.to_bytes(), self.context, self.index)])
        return msgpack.packb([_SHARE_CODE, self.context, self.index, self.threshold, self.rk.to_bytes()])


@dataclass(frozen=True, slots=True)
class PreparedKeyShare:
    index: int
    rk: G2Prepared


def _check_proxies(proxies: Sequence[Proxy], threshold: int) -> None:
    n = len(proxies)
    if not 1 <= n <= MAX_PROXIES:
        raise ValueError(f"need between 1 and {MAX_PROXIES} proxies, got {n}")
    if not isinstance(threshold, int) or not 1 <= threshold <= n:
        raise ValueError(f"threshold must be between 1 and the number of proxies ({n}), got {threshold}")
    if len({p.index for p in proxies}) != n:
        raise ValueError("proxy indices must be distinct")


def make_key_shares(
    keypair: KeyPair,
    receiver: PublicKey,
    proxies: Sequence[Proxy],
    threshold: int,
    context: bytes,
    *,
    bound: bool = False,
) -> list[SealedKeyShare]:
    """Re-encryption key shares of ``keypair``'s label for ``receiver``, t of n.

    ``context`` (e.g. the canonical grant id) is sealed with each share, and the
    proxy checks it on opening. The caller must have checked the receiver's key
    on the ledger (``verify_public_key``).

    ``bound``: the shares carry no context or index (version 4, 21 bytes fewer each): rk is
    masked with the context and index instead (opened for another grant or proxy it is not
    a point), and the caller commits each sealed share's sha256, signed, where its proxy
    reads it (the grant transaction's ``shares``: for this grant, this proxy); the proxy
    opens it only with that digest (``open_key_share(..., expected_digest=...)``).
    """
    out = []
    for proxy, y in _inverse_shares(keypair, proxies, threshold, context):
        out.append(_seal(proxy, KeyShare(proxy.index, threshold, context, receiver.p2 * y).to_bytes(bound=bound)))
    return out


def _seal(proxy: Proxy, plain: bytes) -> SealedKeyShare:
    """``plain`` sealed to ``proxy``'s X25519 key, under its index."""
    return SealedKeyShare(proxy.index, SealedBox(BoxPublicKey(proxy.box_public_key)).encrypt(plain))


def _open_sealed(
    sealed: SealedKeyShare,
    box_secret_key: bytes,
    *,
    tag: str | tuple[str | int, ...],
    what: str,
    holder: str,
    strict: bool,
    expected_context: bytes,
    expected_index: int,
) -> tuple[int, int, bytes, bytes]:
    """Proxy side: unseal a ``[tag, context, index, threshold, value]`` body (``tag``: the
    one accepted, or a tuple of them: the versions of the body) and
    check it is for ``expected_context`` and this proxy; (index, threshold,
    context, value bytes). ``what`` names the body and ``holder`` what its
    context names, in the errors. ``strict`` (standing parts) also refuses
    bools as integers and a threshold outside 1..MAX_PROXIES."""
    plain = _unseal(sealed, box_secret_key, what)
    try:
        body_tag, context, index, threshold, value = msgpack.unpackb(plain, raw=False)
    except Exception as exc:
        raise DecodeError(f"{what} has a malformed body") from exc
    tags = tag if isinstance(tag, tuple) else (tag,)
    if (type(body_tag) not in (str, int) or not any(type(body_tag) is type(t) and body_tag == t for t in tags)
            or not isinstance(context, bytes) or not isinstance(value, bytes)):
        raise DecodeError(f"{what} has a malformed body")
    if strict:
        ints_ok = type(index) is int and type(threshold) is int and 1 <= threshold <= MAX_PROXIES
    else:
        ints_ok = isinstance(index, int) and isinstance(threshold, int)
    if not ints_ok:
        raise DecodeError(f"{what} has a malformed body")
    if context != expected_context:
        raise DecodeError(f"{what} is for another {holder}")
    if index != expected_index or index != sealed.index:
        raise DecodeError(f"{what} is for another proxy index")
    return index, threshold, context, value


def _unseal(sealed: SealedKeyShare, box_secret_key: bytes, what: str) -> bytes:
    try:
        return SealedBox(BoxPrivateKey(box_secret_key)).decrypt(sealed.sealed)
    except CryptoError as exc:
        raise DecryptionError(f"{what} does not open with this proxy's key") from exc


def _share_mask(context: bytes, index: int, size: int) -> bytes:
    """The mask a version-4 share's rk is XORed with: SHAKE-256 of the grant context and the
    proxy index (what binds the sealed share to its grant and proxy inside the seal)."""
    if not isinstance(context, bytes) or not isinstance(index, int) or not 0 <= index < 2**256:
        raise DecodeError("a key share's context must be bytes and its index a proxy index")
    return hashlib.shake_256(_MASK_TAG + len(context).to_bytes(4, "big") + context
                             + index.to_bytes(32, "big")).digest(size)


def _masked(rk: bytes, context: bytes, index: int) -> bytes:
    """``rk`` XOR its mask for (``context``, ``index``): masks and unmasks."""
    mask = _share_mask(context, index, len(rk))
    return (int.from_bytes(rk, "big") ^ int.from_bytes(mask, "big")).to_bytes(len(rk), "big")


def _bound_share(plain: bytes) -> tuple[int, bytes] | None:
    """(version, rk bytes as sealed) of a version-3 ``[3, rk]`` or version-4 ``[4, masked rk]``
    share's plaintext; None for another version."""
    if plain[:2] not in (b"\x92\x03", b"\x92\x04"):  # (a 2-array starting with the int 3 or 4)
        return None
    try:
        code, rk = msgpack.unpackb(plain, raw=False)
    except Exception as exc:
        raise DecodeError("sealed key share has a malformed body") from exc
    if type(code) is not int or code not in (_DIGEST_BOUND_CODE, _BOUND_CODE) or not isinstance(rk, bytes):
        raise DecodeError("sealed key share has a malformed body")
    return code, rk


def _inverse_shares(keypair: KeyPair, proxies: Sequence[Proxy], threshold: int,
                    context: bytes) -> list[tuple[Proxy, int]]:
    """(proxy, f(x_i)) for a fresh random f of degree t-1 with f(0) = 1/a_L."""
    _check_proxies(proxies, threshold)
    if not isinstance(context, bytes):
        raise TypeError("context must be bytes")
    # f(x) = 1/a + c_1 x + ... + c_{t-1} x^{t-1}
    coeffs = [scalar_inverse(keypair.secret)] + [random_scalar() for _ in range(threshold - 1)]
    out = []
    for proxy in proxies:
        y = 0
        for c in reversed(coeffs):
            y = (y * proxy.index + c) % R
        out.append((proxy, y))
    return out


@dataclass(frozen=True, slots=True)
class StandingPart:
    """An opened standing-delegation part: proxy i's scalar f(x_i) (held by proxy i only).

    ``repr`` never shows the scalar. With a receiver's key it gives proxy i's
    re-encryption key share for that receiver (:func:`derive_key_share`)."""

    index: int
    threshold: int
    context: bytes
    scalar: int = field(repr=False)

    def to_bytes(self) -> bytes:
        """The part's plaintext encoding (what gets sealed; keep it secret)."""
        return msgpack.packb([_PART_TAG, self.context, self.index, self.threshold, scalar_to_bytes(self.scalar)])


def make_standing_parts(
    keypair: KeyPair,
    proxies: Sequence[Proxy],
    threshold: int,
    context: bytes,
) -> list[SealedKeyShare]:
    """Standing-delegation parts of ``keypair``'s label, t of n: f(x_i) for a fresh
    f of degree t-1 with f(0) = 1/a_L, each sealed to its proxy's X25519 key with
    ``context`` (e.g. the delegation id) inside.

    Any t parts together give 1/a_L, hence a_L: the owner hands its t proxies
    jointly the power to serve any receiver (and to read the label's records);
    t-1 of them learn nothing about a_L (the parts are t-1-wise uniform).
    """
    out = []
    for proxy, y in _inverse_shares(keypair, proxies, threshold, context):
        out.append(_seal(proxy, StandingPart(proxy.index, threshold, context, y).to_bytes()))
    return out


def open_standing_part(
    sealed: SealedKeyShare,
    box_secret_key: bytes,
    *,
    expected_context: bytes,
    expected_index: int,
) -> StandingPart:
    """Proxy side: unseal a standing part and check it is for this delegation and this proxy."""
    index, threshold, context, y = _open_sealed(
        sealed, box_secret_key, tag=_PART_TAG, what="sealed standing part", holder="delegation", strict=True,
        expected_context=expected_context, expected_index=expected_index,
    )
    return StandingPart(index, threshold, context, scalar_from_bytes(y))


def derive_key_share(part: StandingPart, receiver: PublicKey) -> KeyShare:
    """Proxy i's re-encryption key share for ``receiver``: rk_i = f(x_i) P2_B (one
    constant-time G2 multiplication). The caller must have checked the receiver's
    key on the ledger (``verify_public_key``); the share is what
    :func:`make_key_shares` would have sealed to this proxy for that receiver,
    with the same f."""
    return KeyShare(part.index, part.threshold, part.context, receiver.p2 * part.scalar)


def open_key_share(
    sealed: SealedKeyShare,
    box_secret_key: bytes,
    *,
    expected_context: bytes,
    expected_index: int,
    expected_digest: bytes | None = None,
    stored: bool = False,
) -> KeyShare:
    """Proxy side: unseal a share and check it is for this grant and this proxy
    (rk on the process's backend); ``expected_digest``: the sha256 of the sealed bytes the
    grantor committed for this proxy (checked when given; a version-3 or 4 share, which
    carries no context or index, opens only with it). ``stored``: the share is read back
    from the proxy's own store, where a version-3 share (bound by that digest alone) may
    have been kept before version 4; a delivered one is refused."""
    return Scheme(active_backend()).open_key_share(
        sealed, box_secret_key, expected_context=expected_context, expected_index=expected_index,
        expected_digest=expected_digest, stored=stored,
    )


def is_valid_single_rekey(owner: PublicKey, receiver: PublicKey, rk: G2) -> bool:
    """For t = n = 1 (plain AFGH, rk = (b/a) g2): e(P1_A, rk) = e(g1, P2_B)."""
    g1 = api(owner.p1.backend).G1.generator()
    return multi_pairing([(owner.p1, rk), (-g1, receiver.p2)]).is_one()


# -------------------------------------------------------------- re-encryption


@dataclass(frozen=True, slots=True)
class ReencryptedShare:
    """s_i = e(U, rk_i) with the proxy's index; 4 + 288 bytes encoded: the index
    big-endian, then the GT value in its compressed (T2) form (``GT.to_compressed``)."""

    index: int
    value: GT

    SIZE = 4 + GT.COMPRESSED_SIZE

    def to_bytes(self) -> bytes:
        return self.index.to_bytes(4, "big") + self.value.to_compressed()

    @classmethod
    def from_bytes(cls, data: bytes) -> "ReencryptedShare":
        """Decode a share (nonzero index, GT value not the identity), on the process's backend."""
        return Scheme(active_backend()).reencrypted_share_from_bytes(data)


def reencrypt(capsule: G1, share: KeyShare | PreparedKeyShare) -> ReencryptedShare:
    """Proxy i's share s_i = e(U, rk_i). The capsule must be a validated, non-identity point."""
    if capsule.is_identity():
        raise DecodeError("capsule is the identity")
    return ReencryptedShare(share.index, pairing(capsule, share.rk))


def lagrange_at_zero(indices: Sequence[int]) -> list[int]:
    """Lagrange coefficients l_i at 0 for distinct nonzero indices x_i."""
    if len(set(indices)) != len(indices):
        raise ValueError("duplicate share indices")
    out = []
    for i, xi in enumerate(indices):
        num, den = 1, 1
        for j, xj in enumerate(indices):
            if i != j:
                num = num * xj % R
                den = den * (xj - xi) % R
        out.append(num * pow(den, -1, R) % R)
    return out


def combine(shares: Sequence[ReencryptedShare], receiver_secret: int) -> GT:
    """K = prod s_i^(l_i / b) over exactly the given shares (one multi-exponentiation)."""
    if not shares:
        raise ValueError("no shares to combine")
    inv_b = scalar_inverse(receiver_secret)
    lams = lagrange_at_zero([s.index for s in shares])
    return GT.multi_pow([s.value for s in shares], [lam * inv_b % R for lam in lams])


def recover_key(
    shares: Sequence[ReencryptedShare],
    threshold: int,
    receiver_secret: int,
    check: Callable[[GT], bool],
    *,
    max_subsets: int = 256,
) -> tuple[GT, tuple[int, ...]]:
    """Find K from t-of-n shares, tolerating faulty ones.

    Tries subsets of ``threshold`` shares (at most ``max_subsets``) until
    ``check(K)`` accepts. Returns K and the indices of shares that are
    inconsistent with the accepted subset (faulty proxies, possibly empty).
    Raises FaultyShareError naming the proxies in every failing subset when no
    subset works, DecryptionError when there are fewer than t shares.
    """
    by_index: dict[int, ReencryptedShare] = {}
    for s in shares:
        by_index.setdefault(s.index, s)
    uniq = list(by_index.values())
    if len(uniq) < threshold:
        raise DecryptionError(f"need {threshold} re-encryption shares, have {len(uniq)}")
    failing: list[set[int]] = []
    for subset in itertools.islice(itertools.combinations(uniq, threshold), max_subsets):
        key = combine(subset, receiver_secret)
        if check(key):
            suspects = _inconsistent(subset, [s for s in uniq if s not in subset])
            return key, suspects
        failing.append({s.index for s in subset})
    common = set.intersection(*failing) if failing else set()
    tried = len(failing)
    total = comb(len(uniq), threshold)
    raise FaultyShareError(
        f"no subset of {threshold} shares opened the record "
        f"({tried} of {total} subsets tried); suspect proxies: {sorted(common) or 'undetermined'}",
        tuple(sorted(common)),
    )


def _inconsistent(good: Sequence[ReencryptedShare], others: Sequence[ReencryptedShare]) -> tuple[int, ...]:
    """Shares not on the exponent polynomial interpolated through ``good``."""
    bad = []
    xs = [s.index for s in good]
    for other in others:
        # l_i(x) = prod_{j != i} (x - x_j) / (x_i - x_j)
        lams = []
        for i, xi in enumerate(xs):
            num, den = 1, 1
            for j, xj in enumerate(xs):
                if i != j:
                    num = num * (other.index - xj) % R
                    den = den * (xi - xj) % R
            lams.append(num * pow(den, -1, R) % R)
        if GT.multi_pow([s.value for s in good], lams) != other.value:
            bad.append(other.index)
    return tuple(bad)


# ------------------------------------------------------------ one backend


class Scheme:
    """The entry points that build PRE objects from secrets or bytes, bound to one backend.

    ``KeyPair.derive``, ``PublicKey.from_bytes``, ``ReencryptedShare.from_bytes``
    and :func:`open_key_share` are these on the process's backend; a Scheme on
    another backend runs the same code there (contract tests, conversions).
    Everything else in this module works on whatever backend its arguments
    were made on.
    """

    __slots__ = ("curve",)

    def __init__(self, backend: Backend):
        self.curve = api(backend)

    @property
    def backend(self) -> Backend:
        return self.curve.backend

    def derive_keypair(self, master_secret: bytes, label: str, epoch: int = 0) -> KeyPair:
        """The key pair of ``label`` at ``epoch``: a_{L,e} from the master secret, (a g1, a g2)."""
        a = label_secret(master_secret, label, epoch)
        return KeyPair(a, PublicKey(self.curve.G1.generator() * a, self.curve.G2.generator() * a), label, epoch)

    def public_key_from_bytes(self, data: bytes) -> PublicKey:
        """Decode and validate points (not the identity). Call :meth:`PublicKey.check` for the pairing check."""
        if not isinstance(data, (bytes, bytearray)) or len(data) != PublicKey.SIZE:
            raise DecodeError(f"PRE public key must be {PublicKey.SIZE} bytes")
        return PublicKey(self.curve.G1.from_bytes(data[:48]), self.curve.G2.from_bytes(data[48:]))

    def reencrypted_share_from_bytes(self, data: bytes) -> ReencryptedShare:
        if not isinstance(data, (bytes, bytearray)) or len(data) != ReencryptedShare.SIZE:
            raise DecodeError(f"re-encrypted share must be {ReencryptedShare.SIZE} bytes")
        index = int.from_bytes(data[:4], "big")
        if index == 0:
            raise DecodeError("re-encrypted share has index 0")
        value = self.curve.GT.from_compressed(bytes(data[4:]))
        if value.is_one():
            raise DecodeError("re-encrypted share is the identity")
        return ReencryptedShare(index, value)

    def open_key_share(
        self, sealed: SealedKeyShare, box_secret_key: bytes, *, expected_context: bytes, expected_index: int,
        expected_digest: bytes | None = None, stored: bool = False,
    ) -> KeyShare:
        """Proxy side: unseal a share and check it is for this grant and this proxy (see
        :func:`open_key_share`)."""
        if expected_digest is not None and not hmac.compare_digest(
                hashlib.sha256(sealed.sealed).digest(), expected_digest):
            raise DecodeError("sealed key share is not the one committed for this proxy")
        if sealed.index != expected_index:
            raise DecodeError("sealed key share is for another proxy index")
        plain = _unseal(sealed, box_secret_key, "sealed key share")
        bound = _bound_share(plain)
        if bound is not None:
            version, rk_bytes = bound
            if expected_digest is None:
                raise DecodeError(f"a version-{version} key share opens only with its committed digest")
            if version == _DIGEST_BOUND_CODE and not stored:
                raise DecodeError("a version-3 key share names no grant: taken only from the proxy's own store, "
                                  "not delivered (patients seal version 4)")
            if version == _BOUND_CODE:
                rk_bytes = _masked(rk_bytes, expected_context, expected_index)
            # (threshold 0: a version-3 or 4 share does not carry it; nothing on the proxy side reads it;
            # a version-4 share unmasked for another grant or index is not a point: DecodeError)
            return KeyShare(expected_index, 0, expected_context, self.curve.G2.from_bytes(rk_bytes))
        index, threshold, context, rk = _open_sealed(
            sealed, box_secret_key, tag=(_SHARE_CODE, _SHARE_TAG), what="sealed key share", holder="grant",
            strict=False,
            expected_context=expected_context, expected_index=expected_index,
        )
        return KeyShare(index, threshold, context, self.curve.G2.from_bytes(rk))
