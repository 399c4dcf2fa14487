"""The native arithmetic backend: BLS12-381 through mcl, bound with cffi.

Handles are ``bytes`` holding mcl's raw structs (``mclBnG1``, ``mclBnG2``,
``mclBnGT``; sizes read from the library) or, for a prepared G2 argument, the
``uint64`` words of ``mclBn_precomputeG2``. No cdata leaves this module.
Scalars arrive as Python ints in ``[0, r)`` and are passed to C as 32-byte
little-endian strings.

mcl is initialised once per process under a lock (:func:`_init_mcl`): curve
BLS12-381, the ETH (ZCash) serialization, order checks on deserialize turned
off (:meth:`NativeBackend.g1_decode` checks the order explicitly so that "not on
the curve" and "not in the subgroup" are told apart), and the fixed-base tables
for Z^k and k g1 built. A short self-test then checks the C++ helpers
(gt_membership.cpp) against mcl's own routines, so a header/library mismatch
fails loudly at load instead of silently accepting bad elements.

Decoders take encodings that core/ has already checked structurally (length,
flags, coordinates below p, the point at infinity: core/_encoding.py) and add
what needs mcl: on the curve, in the order-r subgroup. They raise
:class:`~native.errors.NativeDecodeError`, which core/ turns into its own
``DecodeError`` with the same text (core/_native.py); a stale or mismatched
extension raises :class:`~native.errors.NativeLoadError`. This package imports
nothing from core/: the group order r is a constant of its own.

GT membership on decode uses Scott's test (``emr_gt_is_valid``: cyclotomic
check plus x^p = x^u, ~70 us) instead of ``mclBnGT_isValid`` (x^r, ~450 us).

Every call into the extension releases the GIL (cffi's default), so worker
threads run native work in parallel.
"""

from __future__ import annotations

import threading
from typing import Sequence

from ._mcl_cffi import ffi, lib
from ._sources import source_hash
from .errors import NativeDecodeError, NativeLoadError

__all__ = ["NativeBackend", "G1_GENERATOR", "G2_GENERATOR", "R"]

#: Order r of G1, G2 and GT (the BLS12-381 scalar field modulus; core/ holds the same constant).
R = 0x73EDA753299D7D483339D80809A1D80553BDA402FFFE5BFEFFFFFFFF00000001

MCL_BLS12_381 = 5
MCLBN_COMPILED_TIME_VAR = 46  # bn_c384_256: 4 * 10 + 6

#: The standard BLS12-381 generators in the ZCash compressed encoding.
G1_GENERATOR = bytes.fromhex(
    "97f1d3a73197d7942695638c4fa9ac0fc3688c4f9774b905a14e3a3f171bac586c55e83ff97a1aeffb3af00adb22c6bb"
)
G2_GENERATOR = bytes.fromhex(
    "93e02b6052719f607dacd3a088274f65596bd0d09920b61ab5da61bbdc7f5049334cf11213945d57e5ac7d055d042b7e"
    "024aa2b2f08f0a91260805272dc51051c6e47ad4fa403b02b4510b647ae3d1770bac0326a805bbefd48056c8c121bdb8"
)

G1_SIZE = ffi.sizeof("mclBnG1")
G2_SIZE = ffi.sizeof("mclBnG2")
GT_SIZE = ffi.sizeof("mclBnGT")
_EXPECTED_SIZES = (144, 288, 576)
_from_buffer = ffi.from_buffer

_init_lock = threading.Lock()
_state: dict[str, object] = {}


def _le(k: int) -> bytes:
    """A scalar in [0, r) as the 32 little-endian bytes the C helpers take."""
    if not 0 <= k < R:
        raise ValueError("scalar out of range [0, r)")
    return k.to_bytes(32, "little")


def _init_mcl() -> dict[str, object]:
    """Initialise mcl once; return the generators, Z and the precompute size."""
    if _state:
        return _state
    with _init_lock:
        if _state:
            return _state
        compiled = ffi.string(lib.emr_source_hash()).decode()
        try:
            expected = source_hash()
        except OSError as exc:
            raise NativeLoadError(f"cannot hash native sources: {exc}") from exc
        if compiled != expected:
            raise NativeLoadError(
                "native extension was built from other sources than this package "
                "(rebuild with `python -m native.build`)"
            )
        if (G1_SIZE, G2_SIZE, GT_SIZE) != _EXPECTED_SIZES:
            raise NativeLoadError(f"unexpected mcl struct sizes {(G1_SIZE, G2_SIZE, GT_SIZE)}")
        if lib.mclBn_init(MCL_BLS12_381, MCLBN_COMPILED_TIME_VAR) != 0:
            raise NativeLoadError("mclBn_init(BLS12_381) failed: library/header mismatch")
        lib.mclBn_setETHserialization(1)
        lib.mclBn_verifyOrderG1(0)
        lib.mclBn_verifyOrderG2(0)
        g1 = ffi.new("mclBnG1 *")
        g2 = ffi.new("mclBnG2 *")
        if lib.mclBnG1_deserialize(g1, G1_GENERATOR, 48) != 48 or not lib.mclBnG1_isValidOrder(g1):
            raise NativeLoadError("mcl rejected the standard G1 generator")
        if lib.mclBnG2_deserialize(g2, G2_GENERATOR, 96) != 96 or not lib.mclBnG2_isValidOrder(g2):
            raise NativeLoadError("mcl rejected the standard G2 generator")
        z = ffi.new("mclBnGT *")
        lib.mclBn_pairing(z, g1, g2)
        lib.emr_gt_table_init(z)
        lib.emr_g1_table_init(g1)
        _self_test(g1, z)
        one = ffi.new("mclBnGT *")
        lib.mclBnGT_setInt32(one, 1)
        g1_zero = ffi.new("mclBnG1 *")
        g2_zero = ffi.new("mclBnG2 *")
        lib.mclBnG1_clear(g1_zero)
        lib.mclBnG2_clear(g2_zero)
        _state.update(
            g1=bytes(ffi.buffer(g1)),
            g2=bytes(ffi.buffer(g2)),
            z=bytes(ffi.buffer(z)),
            one=bytes(ffi.buffer(one)),
            g1_zero=bytes(ffi.buffer(g1_zero)),
            g2_zero=bytes(ffi.buffer(g2_zero)),
            qwords=lib.mclBn_getUint64NumToPrecompute(),
        )
        return _state


def _self_test(g1, z) -> None:
    """Cross-check the C/C++ helpers against mcl on fixed inputs (a few ms, once)."""
    two = ffi.new("mclBnGT *")
    lib.mclBnGT_setInt32(two, 2)
    one = ffi.new("mclBnGT *")
    lib.mclBnGT_setInt32(one, 1)
    if not (lib.emr_gt_is_valid(z) and lib.emr_gt_is_valid(one) and not lib.emr_gt_is_valid(two)):
        raise NativeLoadError("native GT membership test disagrees with mcl (rebuild the extension)")
    got, want = ffi.new("mclBnG1 *"), ffi.new("mclBnG1 *")
    for k in (1, 2, R - 1, 0x1234567890ABCDEF << 128):
        lib.emr_g1_generator_mul(got, _le(k))
        lib.emr_g1_mul(want, g1, _le(k), 1)
        if not lib.mclBnG1_isEqual(got, want):
            raise NativeLoadError("native fixed-base G1 table disagrees with mcl (rebuild the extension)")


def _gt(h: bytes):
    if len(h) != GT_SIZE:
        raise TypeError("not a native GT handle")
    return _from_buffer("mclBnGT *", h)


def _check_handles(handles: Sequence[bytes], size: int, what: str) -> None:
    for h in handles:
        if type(h) is not bytes or len(h) != size:
            raise TypeError(f"not a native {what} handle")


def _batch(handles: Sequence[bytes], others: Sequence, message: str, size: int, what: str) -> int:
    """The size of a batch operation's input: ``handles`` (native ``what`` handles of
    ``size`` bytes; TypeError for another) paired with as many ``others`` (scalars,
    exponents, points; ValueError(message) if their numbers differ)."""
    if len(handles) != len(others):
        raise ValueError(message)
    _check_handles(handles, size, what)
    return len(handles)


def _result(ctype: str, fn, *args, may_fail: str | None = None) -> bytes:
    """``fn(out, *args)`` into a fresh ``ctype`` struct, returned as a handle's bytes.
    ``may_fail`` names a C helper that returns nonzero when it cannot allocate its
    scratch memory (MemoryError then)."""
    out = ffi.new(ctype)
    rc = fn(out, *args)
    if may_fail is not None and rc != 0:
        raise MemoryError(may_fail)
    return bytes(ffi.buffer(out))


class _Points:
    """G1 or G2 on mcl: the point operations, written once for both groups.

    ``name`` ("G1" or "G2") selects mcl's struct (``mclBnG1``) and routines
    (``mclBnG1_add``) and the C helpers' (``emr_g1_mul``); the messages name the
    group. :class:`NativeBackend` exposes these as its ``g1_*``/``g2_*`` methods.
    """

    def __init__(self, name: str, encoded_size: int) -> None:
        self.name = name
        self.key = name.lower()  # the generator's key in _state, and the C helpers' prefix
        self.ctype = f"mclBn{name} *"
        self.size = ffi.sizeof(f"mclBn{name}")
        self.encoded_size = encoded_size
        self._lib_add = getattr(lib, f"mclBn{name}_add")
        self._lib_neg = getattr(lib, f"mclBn{name}_neg")
        self._lib_is_equal = getattr(lib, f"mclBn{name}_isEqual")
        self._lib_is_zero = getattr(lib, f"mclBn{name}_isZero")
        self._lib_serialize = getattr(lib, f"mclBn{name}_serialize")
        self._lib_deserialize = getattr(lib, f"mclBn{name}_deserialize")
        self._lib_is_valid_order = getattr(lib, f"mclBn{name}_isValidOrder")
        self._emr_mul = getattr(lib, f"emr_{self.key}_mul")
        self._emr_msm_name = f"emr_{self.key}_msm"
        self._emr_msm = getattr(lib, self._emr_msm_name)

    def handle(self, h: bytes):
        """A cdata pointer onto a handle's bytes (no copy); TypeError for a wrong size."""
        if len(h) != self.size:
            raise TypeError(f"not a native {self.name} handle")
        return _from_buffer(self.ctype, h)

    def generator(self) -> bytes:
        return _state[self.key]  # type: ignore[return-value]

    def identity(self) -> bytes:
        return _state[self.key + "_zero"]  # type: ignore[return-value]

    def decode(self, data: bytes) -> bytes:
        """A point from a compressed encoding that passed the structural checks
        (length, flags, x < p: core/_encoding.py), not the point at infinity;
        mcl checks the curve, this the subgroup."""
        n = self.encoded_size
        out = ffi.new(self.ctype)
        if len(data) != n or self._lib_deserialize(out, bytes(data), n) != n:
            raise NativeDecodeError(f"{self.name} point: not on the curve")
        if not self._lib_is_valid_order(out):
            raise NativeDecodeError(f"{self.name} point: not in the order-r subgroup")
        return bytes(ffi.buffer(out))

    def encode(self, a: bytes) -> bytes:
        n = self.encoded_size
        buf = ffi.new("char[]", n)
        if self._lib_serialize(buf, n, self.handle(a)) != n:
            raise ValueError(f"mcl could not serialize a {self.name} point")
        return ffi.unpack(buf, n)

    def add(self, a: bytes, b: bytes) -> bytes:
        return _result(self.ctype, self._lib_add, self.handle(a), self.handle(b))

    def neg(self, a: bytes) -> bytes:
        return _result(self.ctype, self._lib_neg, self.handle(a))

    def mul(self, a: bytes, k: int, secret: bool) -> bytes:
        return _result(self.ctype, self._emr_mul, self.handle(a), _le(k), 1 if secret else 0)

    def msm(self, points: Sequence[bytes], scalars: Sequence[int]) -> bytes:
        n = _batch(points, scalars, "msm needs as many scalars as points", self.size, self.name)
        if n == 0:
            return self.identity()
        pts = ffi.new(f"mclBn{self.name}[]", n)  # mulVec may normalize its input: give it a copy
        ffi.memmove(pts, b"".join(points), n * self.size)
        return _result(self.ctype, self._emr_msm, pts, b"".join(_le(k) for k in scalars), n,
                       may_fail=self._emr_msm_name)

    def eq(self, a: bytes, b: bytes) -> bool:
        return bool(self._lib_is_equal(self.handle(a), self.handle(b)))

    def is_identity(self, a: bytes) -> bool:
        return bool(self._lib_is_zero(self.handle(a)))


_G1 = _Points("G1", 48)
_G2 = _Points("G2", 96)
_g1 = _G1.handle
_g2 = _G2.handle


class NativeBackend:
    """BLS12-381 arithmetic on mcl (constant-time multiplication for secrets)."""

    name = "native"

    def __init__(self) -> None:
        st = _init_mcl()
        self._z: bytes = st["z"]  # type: ignore[assignment]
        self._one: bytes = st["one"]  # type: ignore[assignment]
        self._qwords: int = st["qwords"]  # type: ignore[assignment]
        self._qbytes = 8 * self._qwords

    def __repr__(self) -> str:
        return "NativeBackend(mcl v3.04, BLS12-381)"

    # ------------------------------------------------------------------ G1 and G2
    # One implementation for both groups (_Points), under the protocol's names.

    g1_generator, g2_generator = _G1.generator, _G2.generator
    g1_identity, g2_identity = _G1.identity, _G2.identity
    g1_decode, g2_decode = _G1.decode, _G2.decode
    g1_encode, g2_encode = _G1.encode, _G2.encode
    g1_add, g2_add = _G1.add, _G2.add
    g1_neg, g2_neg = _G1.neg, _G2.neg
    g1_mul, g2_mul = _G1.mul, _G2.mul
    g1_msm, g2_msm = _G1.msm, _G2.msm
    g1_eq, g2_eq = _G1.eq, _G2.eq
    g1_is_identity, g2_is_identity = _G1.is_identity, _G2.is_identity

    def g1_generator_mul(self, k: int) -> bytes:
        """k g1 for a secret k from the fixed-base table (constant time, ~3x mulCT)."""
        return _result("mclBnG1 *", lib.emr_g1_generator_mul, _le(k))

    # ------------------------------------------------------------------ pairing

    def pairing(self, p: bytes, q: bytes) -> bytes:
        return _result("mclBnGT *", lib.mclBn_pairing, _g1(p), _g2(q))

    def multi_pairing(self, ps: Sequence[bytes], qs: Sequence[bytes]) -> bytes:
        n = _batch(ps, qs, "multi_pairing needs as many G2 as G1 points", G1_SIZE, "G1")
        _check_handles(qs, G2_SIZE, "G2")
        if n == 0:
            return self._one
        return _result("mclBnGT *", lib.emr_multi_pairing, ffi.from_buffer("mclBnG1[]", b"".join(ps)),
                       ffi.from_buffer("mclBnG2[]", b"".join(qs)), n)

    def g2_prepare(self, q: bytes) -> bytes:
        buf = ffi.new("uint64_t[]", self._qwords)
        lib.mclBn_precomputeG2(buf, _g2(q))
        return bytes(ffi.buffer(buf))

    def pairing_prepared(self, p: bytes, prepared: bytes) -> bytes:
        if type(prepared) is not bytes or len(prepared) != self._qbytes:
            raise TypeError("not a native prepared G2 handle")
        return _result("mclBnGT *", lib.emr_pairing_prepared, _g1(p), ffi.from_buffer("uint64_t[]", prepared))

    # ------------------------------------------------------------------ GT

    def gt_one(self) -> bytes:
        return self._one

    def gt_generator(self) -> bytes:
        return self._z

    def gt_decode(self, data: bytes) -> bytes:
        """A GT element from 576 bytes whose twelve coefficients were checked
        below p (core/_encoding.py); this checks the order-r subgroup."""
        out = ffi.new("mclBnGT *")
        if len(data) != GT_SIZE or lib.mclBnGT_deserialize(out, bytes(data), GT_SIZE) != GT_SIZE:
            raise NativeDecodeError("GT element: mcl could not deserialize the coefficients")
        if not lib.emr_gt_is_valid(out):
            raise NativeDecodeError("GT element: not in the order-r subgroup")
        return bytes(ffi.buffer(out))

    def gt_encode(self, a: bytes) -> bytes:
        buf = ffi.new("char[]", GT_SIZE)
        if lib.mclBnGT_serialize(buf, GT_SIZE, _gt(a)) != GT_SIZE:
            raise ValueError("mcl could not serialize a GT element")
        return ffi.unpack(buf, GT_SIZE)

    def gt_mul(self, a: bytes, b: bytes) -> bytes:
        return _result("mclBnGT *", lib.mclBnGT_mul, _gt(a), _gt(b))

    def gt_inv(self, a: bytes) -> bytes:
        # Conjugation: the inverse for every element of the order-r subgroup,
        # which is all a GT handle can hold (decode checks membership).
        return _result("mclBnGT *", lib.mclBnGT_inv, _gt(a))

    def gt_pow(self, a: bytes, k: int) -> bytes:
        return _result("mclBnGT *", lib.emr_gt_pow, _gt(a), _le(k))

    def gt_multi_pow(self, bases: Sequence[bytes], exps: Sequence[int]) -> bytes:
        n = _batch(bases, exps, "multi_pow needs as many exponents as bases", GT_SIZE, "GT")
        if n == 0:
            return self._one
        return _result("mclBnGT *", lib.emr_gt_multi_pow, ffi.from_buffer("mclBnGT[]", b"".join(bases)),
                       b"".join(_le(e) for e in exps), n, may_fail="emr_gt_multi_pow")

    def gt_generator_pow(self, k: int) -> bytes:
        return _result("mclBnGT *", lib.emr_gt_generator_pow, _le(k))

    def gt_eq(self, a: bytes, b: bytes) -> bool:
        return bool(lib.mclBnGT_isEqual(_gt(a), _gt(b)))
