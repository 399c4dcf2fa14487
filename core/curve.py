"""BLS12-381 groups G1, G2, GT and scalars, on the process's arithmetic backend.

Elements are immutable wrappers around a backend handle. Every element keeps
the backend it was made on, and everything computed from it stays there; mixing
backends in one operation is a ``TypeError``. The class-level constructors
(``G1.generator()``, ``GT.from_bytes(data)``, ...) build on the process's
backend (core/_backend.py); :func:`api` gives the same constructors bound to
another backend, for contract tests and conversions:
``api(other).G1.from_bytes(x.to_bytes())``.

Encodings (CRYPTO.md): G1 and G2 in the ZCash compressed form (48 and 96 bytes);
GT as 576 bytes, the twelve Fp coefficients of the tower
Fp2 = Fp[u]/(u^2+1), Fp6 = Fp2[v]/(v^3-(u+1)), Fp12 = Fp6[w]/(w^2-v) written as
c0 then c1 (of c0 + c1 w), in each the Fp2 coefficients of v^0, v^1, v^2, in
each Fp2 the u-coefficient first and then the constant, each Fp 48-byte
big-endian (mcl's ETH serialization). On the wire GT elements travel
compressed to 288 bytes (``GT.to_compressed`` / ``GT.from_compressed``, the
algebraic torus T2 of core/_torus.py), decoded with the same subgroup check.
Scalars are 32-byte big-endian.

``P * k`` multiplies in constant time (for secret scalars, the native backend
uses mcl's ``mulCT``); ``P.mul_public(k)`` may use the faster variable-time
routine and is only for public scalars.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from typing import Callable, Iterable, NamedTuple, Sequence

from . import _torus
from ._backend import Backend, active_backend
from ._constants import R
from .errors import DecodeError

__all__ = [
    "R",
    "G1",
    "G2",
    "GT",
    "G2Prepared",
    "pairing",
    "multi_pairing",
    "random_scalar",
    "hash_to_scalar",
    "scalar_to_bytes",
    "scalar_from_bytes",
    "scalar_inverse",
    "Curve",
    "api",
]

SCALAR_SIZE = 32


# --------------------------------------------------------------------- scalars


def random_scalar() -> int:
    """A uniformly random nonzero scalar from the OS CSPRNG."""
    while True:
        # 64 bytes reduced mod r: statistical distance from uniform < 2^-256.
        k = int.from_bytes(secrets.token_bytes(64), "big") % R
        if k:
            return k


def hash_to_scalar(tag: str | bytes, *parts: bytes) -> int:
    """A nonzero scalar derived from a domain tag and byte strings.

    Each part is length-prefixed (8-byte big-endian), so different splits of the
    same bytes never collide. Expands SHA-256 in counter mode to 64 bytes and
    reduces mod r; the (negligible) zero result is re-derived with a counter.
    """
    tag_b = tag.encode() if isinstance(tag, str) else bytes(tag)
    h = hashlib.sha256()
    h.update(len(tag_b).to_bytes(8, "big") + tag_b)
    for part in parts:
        if not isinstance(part, (bytes, bytearray, memoryview)):
            raise TypeError(f"hash_to_scalar parts must be bytes, not {type(part).__name__}")
        part = bytes(part)
        h.update(len(part).to_bytes(8, "big") + part)
    seed = h.digest()
    counter = 0
    while True:
        wide = b"".join(
            hmac.new(seed, bytes([counter, i]), hashlib.sha256).digest() for i in (0, 1)
        )
        k = int.from_bytes(wide, "big") % R
        if k:
            return k
        counter += 1


def scalar_to_bytes(k: int) -> bytes:
    if not 0 <= k < R:
        raise ValueError("scalar out of range [0, r)")
    return k.to_bytes(SCALAR_SIZE, "big")


def scalar_from_bytes(data: bytes, *, allow_zero: bool = False) -> int:
    """Decode a 32-byte big-endian scalar; must be < r (and nonzero unless allowed)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"scalar must be bytes, not {type(data).__name__}")
    if len(data) != SCALAR_SIZE:
        raise DecodeError(f"scalar must be {SCALAR_SIZE} bytes, got {len(data)}")
    k = int.from_bytes(data, "big")
    if k >= R:
        raise DecodeError("scalar is not reduced: value >= r")
    if k == 0 and not allow_zero:
        raise DecodeError("scalar is zero where a nonzero value is required")
    return k


def scalar_inverse(k: int) -> int:
    if k % R == 0:
        raise ZeroDivisionError("zero has no inverse mod r")
    return pow(k, -1, R)


# --------------------------------------------------------------------- groups
#
# Each group names its backend operations explicitly (G1 and G2 through a
# _PointOps table of the backend's g1_*/g2_* methods, GT in its own methods);
# the shared code in the base classes calls those.


class _Element:
    __slots__ = ("_b", "_h")
    ENCODED_SIZE = 0

    def __init__(self, backend: Backend, handle: object):
        self._b = backend
        self._h = handle

    @property
    def backend(self) -> Backend:
        return self._b

    # The backend operations every group has (defined by each group class).
    @staticmethod
    def _decode_handle(b: Backend, data: bytes) -> object:
        raise NotImplementedError

    def _encode(self) -> bytes:
        raise NotImplementedError

    def _eq(self, other: "_Element") -> bool:
        raise NotImplementedError

    def _same(self, other: "_Element") -> None:
        if type(other) is not type(self):
            raise TypeError(f"cannot combine {type(self).__name__} with {type(other).__name__}")
        if other._b is not self._b:
            raise TypeError(
                f"elements from different backends ({self._b.name} and {other._b.name})"
            )

    def to_bytes(self) -> bytes:
        return self._encode()

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Element) or type(other) is not type(self):
            return NotImplemented
        if other._b is not self._b:
            return self.to_bytes() == other.to_bytes()
        return self._eq(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.to_bytes()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_bytes().hex()[:16]}..., {self._b.name})"


class _PointOps(NamedTuple):
    """One group's point operations on one backend (bound methods, named explicitly)."""

    generator: Callable[[], object]
    identity: Callable[[], object]
    decode: Callable[[bytes], object]
    msm: Callable[[list, list[int]], object]
    encode: Callable[[object], bytes]
    eq: Callable[[object, object], bool]
    add: Callable[[object, object], object]
    neg: Callable[[object], object]
    mul: Callable[[object, int, bool], object]
    is_identity: Callable[[object], bool]


@functools.cache
def _g1_ops(b: Backend) -> _PointOps:
    return _PointOps(b.g1_generator, b.g1_identity, b.g1_decode, b.g1_msm, b.g1_encode, b.g1_eq, b.g1_add,
                     b.g1_neg, b.g1_mul, b.g1_is_identity)


@functools.cache
def _g2_ops(b: Backend) -> _PointOps:
    return _PointOps(b.g2_generator, b.g2_identity, b.g2_decode, b.g2_msm, b.g2_encode, b.g2_eq, b.g2_add,
                     b.g2_neg, b.g2_mul, b.g2_is_identity)


class _ECPoint(_Element):
    """What G1 and G2 share; each names its backend's operations in ``_ops``."""

    __slots__ = ()
    _ops: Callable[[Backend], _PointOps]

    @classmethod
    def _generator_handle(cls, b: Backend) -> object:
        return cls._ops(b).generator()

    @classmethod
    def _identity_handle(cls, b: Backend) -> object:
        return cls._ops(b).identity()

    @classmethod
    def _decode_handle(cls, b: Backend, data: bytes) -> object:
        return cls._ops(b).decode(data)

    @classmethod
    def _msm_handle(cls, b: Backend, handles: list, scalars: list[int]) -> object:
        return cls._ops(b).msm(handles, scalars)

    def _encode(self) -> bytes:
        return self._ops(self._b).encode(self._h)

    def _eq(self, other: "_Element") -> bool:
        return self._ops(self._b).eq(self._h, other._h)

    def _add(self, other: "_ECPoint") -> object:
        return self._ops(self._b).add(self._h, other._h)

    def _neg(self) -> object:
        return self._ops(self._b).neg(self._h)

    def _mul_handle(self, k: int, secret: bool) -> object:
        return self._ops(self._b).mul(self._h, k, secret)

    def is_identity(self) -> bool:
        return self._ops(self._b).is_identity(self._h)

    @classmethod
    def generator(cls):
        """The standard generator, on the process's backend."""
        return api().group(cls).generator()

    @classmethod
    def identity(cls):
        return api().group(cls).identity()

    @classmethod
    def from_bytes(cls, data: bytes, *, allow_identity: bool = False):
        """Decode and fully validate a compressed point, on the process's backend.

        Raises DecodeError on wrong type or length, bad flags, a coordinate not
        below p, a point off the curve or outside the order-r subgroup, and (unless
        ``allow_identity``) the point at infinity.
        """
        return api().group(cls).from_bytes(data, allow_identity=allow_identity)

    def __add__(self, other):
        self._same(other)
        return type(self)(self._b, self._add(other))

    def __neg__(self):
        return type(self)(self._b, self._neg())

    def __sub__(self, other):
        return self + (-other)

    def _mul(self, k: int, secret: bool):
        if not isinstance(k, int):
            return NotImplemented
        return type(self)(self._b, self._mul_handle(k % R, secret))

    def __mul__(self, k: int):
        """Constant-time scalar multiplication (safe for secret scalars)."""
        return self._mul(k, True)

    __rmul__ = __mul__

    def mul_public(self, k: int):
        """Variable-time scalar multiplication: only for public scalars."""
        return self._mul(k, False)

    @classmethod
    def msm(cls, points: Sequence["_ECPoint"], scalars: Sequence[int]):
        """sum(k_i P_i) for public scalars (multi-scalar multiplication)."""
        if len(points) != len(scalars):
            raise ValueError("msm needs as many scalars as points")
        if not points:
            raise ValueError("msm of no points")
        b = points[0]._b
        for p in points:
            points[0]._same(p)
        return cls(b, cls._msm_handle(b, [p._h for p in points], [k % R for k in scalars]))


class G1(_ECPoint):
    __slots__ = ()
    ENCODED_SIZE = 48
    _ops = staticmethod(_g1_ops)

    @classmethod
    def generator_mul(cls, k: int) -> "G1":
        """k g1 for a secret k, on the process's backend (see :meth:`Group.generator_mul`)."""
        return api().G1.generator_mul(k)


class G2(_ECPoint):
    __slots__ = ()
    ENCODED_SIZE = 96
    _ops = staticmethod(_g2_ops)

    def prepare(self) -> "G2Prepared":
        """Precompute the Miller-loop lines of this point for repeated pairings."""
        return G2Prepared(self)


class G2Prepared:
    """A G2 point with its pairing precomputation, reused across many pairings."""

    __slots__ = ("point", "_h")

    def __init__(self, point: G2):
        self.point = point
        self._h = point._b.g2_prepare(point._h)


class GT(_Element):
    """The target group, written multiplicatively."""

    __slots__ = ()
    ENCODED_SIZE = 576
    COMPRESSED_SIZE = _torus.COMPRESSED_SIZE

    @staticmethod
    def _decode_handle(b: Backend, data: bytes) -> object:
        return b.gt_decode(data)

    def _encode(self) -> bytes:
        return self._b.gt_encode(self._h)

    def to_compressed(self) -> bytes:
        """The 288-byte algebraic-torus (T2) form, what GT elements travel as (core._torus)."""
        return _torus.compress(self._b.gt_encode(self._h))

    def _eq(self, other: "_Element") -> bool:
        return self._b.gt_eq(self._h, other._h)

    @classmethod
    def one(cls) -> "GT":
        return api().GT.one()

    @classmethod
    def generator(cls) -> "GT":
        """Z = e(g1, g2), on the process's backend."""
        return api().GT.generator()

    @classmethod
    def generator_pow(cls, k: int) -> "GT":
        """Z^k (fixed-base; the native backend uses a precomputed table)."""
        return api().GT.generator_pow(k)

    @classmethod
    def from_bytes(cls, data: bytes) -> "GT":
        """Decode 576 bytes; checks each coefficient < p and membership of the order-r subgroup."""
        return api().GT.from_bytes(data)

    @classmethod
    def from_compressed(cls, data: bytes) -> "GT":
        """Decode the 288-byte T2 form; checks each coefficient < p and membership of the order-r subgroup."""
        return api().GT.from_compressed(data)

    def __mul__(self, other: "GT") -> "GT":
        self._same(other)
        return GT(self._b, self._b.gt_mul(self._h, other._h))

    def __truediv__(self, other: "GT") -> "GT":
        return self * other.inverse()

    def __pow__(self, k: int) -> "GT":
        if not isinstance(k, int):
            return NotImplemented
        return GT(self._b, self._b.gt_pow(self._h, k % R))

    def inverse(self) -> "GT":
        return GT(self._b, self._b.gt_inv(self._h))

    def is_one(self) -> bool:
        return self._b.gt_eq(self._h, self._b.gt_one())

    @classmethod
    def multi_pow(cls, bases: Sequence["GT"], exps: Sequence[int]) -> "GT":
        """prod(b_i ^ e_i) in one multi-exponentiation."""
        if len(bases) != len(exps):
            raise ValueError("multi_pow needs as many exponents as bases")
        if not bases:
            raise ValueError("multi_pow of no bases")
        for x in bases:
            bases[0]._same(x)
        b = bases[0]._b
        return cls(b, b.gt_multi_pow([x._h for x in bases], [e % R for e in exps]))


def _check_bytes(data: object, what: str, size: int) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"{what} must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) != size:
        raise DecodeError(f"{what} must be {size} bytes, got {len(data)}")
    return data


# --------------------------------------------------------------------- one backend's API


class Group:
    """G1 or G2 on one backend: its generator, identity and decoder."""

    __slots__ = ("element", "backend")

    def __init__(self, element: type[_ECPoint], backend: Backend):
        self.element = element
        self.backend = backend

    def generator(self):
        return self.element(self.backend, self.element._generator_handle(self.backend))

    def identity(self):
        return self.element(self.backend, self.element._identity_handle(self.backend))

    def from_bytes(self, data: bytes, *, allow_identity: bool = False):
        """Decode and fully validate a compressed point (see ``G1.from_bytes``)."""
        cls = self.element
        data = _check_bytes(data, f"{cls.__name__} point", cls.ENCODED_SIZE)
        point = cls(self.backend, cls._decode_handle(self.backend, data))
        if not allow_identity and point.is_identity():
            raise DecodeError(f"{cls.__name__} point is the identity where a key/capsule/share is expected")
        return point

    def generator_mul(self, k: int):
        """k g for a secret k: G1 uses the backend's fixed-base table (native:
        constant-time signed-digit comb, ~3x faster than ``generator() * k``);
        G2 a constant-time multiply."""
        if self.element is G1:
            return G1(self.backend, self.backend.g1_generator_mul(k % R))
        return self.generator() * k


class TargetGroup:
    """GT on one backend: one, its generator Z, fixed-base powers and the decoder."""

    __slots__ = ("backend",)

    def __init__(self, backend: Backend):
        self.backend = backend

    def one(self) -> GT:
        return GT(self.backend, self.backend.gt_one())

    def generator(self) -> GT:
        return GT(self.backend, self.backend.gt_generator())

    def generator_pow(self, k: int) -> GT:
        return GT(self.backend, self.backend.gt_generator_pow(k % R))

    def from_bytes(self, data: bytes) -> GT:
        data = _check_bytes(data, "GT element", GT.ENCODED_SIZE)
        return GT(self.backend, self.backend.gt_decode(data))

    def from_compressed(self, data: bytes) -> GT:
        """The element of a 288-byte T2 encoding (:meth:`GT.to_compressed`): decompressed
        to the 576-byte form, then decoded as :meth:`from_bytes` decodes (subgroup check)."""
        data = _check_bytes(data, "compressed GT element", GT.COMPRESSED_SIZE)
        return GT(self.backend, self.backend.gt_decode(_torus.decompress(data)))


class Curve:
    """The group API bound to one backend: ``api(b).G1.generator()`` is what
    ``G1.generator()`` is on the process's backend (py_ecc's model: the same
    names on each backend). Elements made here carry ``backend``."""

    __slots__ = ("backend", "G1", "G2", "GT")

    def __init__(self, backend: Backend):
        self.backend = backend
        self.G1 = Group(G1, backend)
        self.G2 = Group(G2, backend)
        self.GT = TargetGroup(backend)

    def group(self, element: type[_ECPoint]) -> Group:
        if element is G1:
            return self.G1
        if element is G2:
            return self.G2
        raise TypeError(f"{element.__name__} is not an elliptic-curve group of this API")

    def __repr__(self) -> str:
        return f"Curve({self.backend.name})"


_apis: dict[int, Curve] = {}


def api(backend: Backend | None = None) -> Curve:
    """The group API on ``backend``, or on the process's backend (core._backend)."""
    b = active_backend() if backend is None else backend
    curve = _apis.get(id(b))
    if curve is None or curve.backend is not b:
        curve = _apis[id(b)] = Curve(b)
    return curve


def pairing(p: G1, q: G2 | G2Prepared) -> GT:
    """e(p, q): bilinear, e(g1, g2) = Z; identical on both backends."""
    if not isinstance(p, G1):
        raise TypeError("pairing takes a G1 point first")
    if isinstance(q, G2Prepared):
        if q.point._b is not p._b:
            raise TypeError("pairing arguments from different backends")
        return GT(p._b, p._b.pairing_prepared(p._h, q._h))
    if not isinstance(q, G2):
        raise TypeError("pairing takes a G2 point (or G2Prepared) second")
    if q._b is not p._b:
        raise TypeError("pairing arguments from different backends")
    return GT(p._b, p._b.pairing(p._h, q._h))


def multi_pairing(pairs: Iterable[tuple[G1, G2]]) -> GT:
    """prod e(p_i, q_i), sharing one final exponentiation."""
    pairs = list(pairs)
    if not pairs:
        raise ValueError("multi_pairing of no pairs")
    b = pairs[0][0]._b
    for p, q in pairs:
        if not isinstance(p, G1) or not isinstance(q, G2):
            raise TypeError("multi_pairing takes (G1, G2) pairs")
        if p._b is not b or q._b is not b:
            raise TypeError("multi_pairing arguments from different backends")
    return GT(b, b.multi_pairing([p._h for p, _ in pairs], [q._h for _, q in pairs]))
