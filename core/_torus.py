"""Compressed GT elements: the algebraic torus T2 over Fp6 (288 bytes instead of 576).

Backend-independent: it works on the canonical 576-byte GT encoding (CRYPTO.md,
:mod:`core.curve`), so both backends produce and accept the same bytes by
construction. The arithmetic is Python integers mod p; nothing here is secret
(GT elements on the wire are public), so variable time is fine.

Why it works. ``Fp12 = Fp6[w]/(w^2 - v)``, and ``x = a + b w`` in GT (inside the
cyclotomic subgroup) has norm ``x * conj(x) = a^2 - b^2 v = 1``, where ``conj`` is
the p^6 Frobenius ``a + b w -> a - b w``. For ``b != 0`` put ``c = (1 + a) / b`` in
Fp6; then ``x = (c + w) / (c - w)``, which, with ``d = c^2 - v``, is
``a = (c^2 + v) / d`` and ``b = 2 c / d`` (``d != 0``: ``v`` is not a square in Fp6,
else Fp12 would not be a field). ``b = 0`` forces ``a^2 = 1``, so ``x = 1`` or
``x = -1``; -1 has order 2 and is not in GT (r is odd), so only the identity has
``b = 0``. ``c = 0`` would decode to -1, so no GT element but the identity is
written as zero: the identity is the all-zero encoding. The map is injective,
so every GT element has exactly one 288-byte encoding.

Encoding: the six Fp coefficients of ``c`` in the layout of one Fp6 half of the
576-byte form (v^0, v^1, v^2; in each Fp2 the u-coefficient, then the constant;
48-byte big-endian each), each below p. :func:`decompress` returns the 576-byte
form of ``x``; the backend's ``gt_decode`` then checks the order-r subgroup as it
does for every received GT element (a point of the torus that is not in GT is
refused there).
"""

from __future__ import annotations

from ._constants import P
from .errors import DecodeError

__all__ = ["COMPRESSED_SIZE", "compress", "decompress"]

COMPRESSED_SIZE = 288

Fp2 = tuple[int, int]  # (constant, u-coefficient), u^2 = -1
Fp6 = tuple[Fp2, Fp2, Fp2]  # c0 + c1 v + c2 v^2, v^3 = xi = 1 + u

_ZERO2: Fp2 = (0, 0)
_ONE2: Fp2 = (1, 0)


def _add2(a: Fp2, b: Fp2) -> Fp2:
    return (a[0] + b[0]) % P, (a[1] + b[1]) % P


def _sub2(a: Fp2, b: Fp2) -> Fp2:
    return (a[0] - b[0]) % P, (a[1] - b[1]) % P


def _mul2(a: Fp2, b: Fp2) -> Fp2:
    return (a[0] * b[0] - a[1] * b[1]) % P, (a[0] * b[1] + a[1] * b[0]) % P


def _mul_xi(a: Fp2) -> Fp2:
    """a (1 + u)."""
    return (a[0] - a[1]) % P, (a[0] + a[1]) % P


def _inv2(a: Fp2) -> Fp2:
    n = (a[0] * a[0] + a[1] * a[1]) % P
    if n == 0:
        raise ZeroDivisionError("inverse of zero in Fp2")
    ni = pow(n, -1, P)
    return a[0] * ni % P, -a[1] * ni % P


def _add6(a: Fp6, b: Fp6) -> Fp6:
    return _add2(a[0], b[0]), _add2(a[1], b[1]), _add2(a[2], b[2])


def _sub6(a: Fp6, b: Fp6) -> Fp6:
    return _sub2(a[0], b[0]), _sub2(a[1], b[1]), _sub2(a[2], b[2])


def _mul6(a: Fp6, b: Fp6) -> Fp6:
    a0, a1, a2 = a
    b0, b1, b2 = b
    t0, t1, t2 = _mul2(a0, b0), _mul2(a1, b1), _mul2(a2, b2)
    c0 = _add2(t0, _mul_xi(_add2(_mul2(a1, b2), _mul2(a2, b1))))
    c1 = _add2(_add2(_mul2(a0, b1), _mul2(a1, b0)), _mul_xi(t2))
    c2 = _add2(_add2(_mul2(a0, b2), _mul2(a2, b0)), t1)
    return c0, c1, c2


def _mul_v(a: Fp6) -> Fp6:
    """a v: (a0, a1, a2) -> (xi a2, a0, a1)."""
    return _mul_xi(a[2]), a[0], a[1]


def _inv6(a: Fp6) -> Fp6:
    a0, a1, a2 = a
    t0 = _sub2(_mul2(a0, a0), _mul_xi(_mul2(a1, a2)))
    t1 = _sub2(_mul_xi(_mul2(a2, a2)), _mul2(a0, a1))
    t2 = _sub2(_mul2(a1, a1), _mul2(a0, a2))
    f = _add2(_mul2(a0, t0), _mul_xi(_add2(_mul2(a2, t1), _mul2(a1, t2))))
    fi = _inv2(f)
    return _mul2(t0, fi), _mul2(t1, fi), _mul2(t2, fi)


def _read6(data: bytes) -> Fp6:
    """288 bytes -> Fp6 (each Fp2 as u-coefficient then constant); coefficients must be < p."""
    vals = [int.from_bytes(data[48 * i: 48 * (i + 1)], "big") for i in range(6)]
    if any(v >= P for v in vals):
        raise DecodeError("compressed GT element: a coefficient is not below the field modulus p")
    return (vals[1], vals[0]), (vals[3], vals[2]), (vals[5], vals[4])


def _write6(a: Fp6) -> bytes:
    out = bytearray()
    for x, y in a:
        out += y.to_bytes(48, "big")
        out += x.to_bytes(48, "big")
    return bytes(out)


_ZERO6: Fp6 = (_ZERO2, _ZERO2, _ZERO2)
_ONE6: Fp6 = (_ONE2, _ZERO2, _ZERO2)
_ZERO_BYTES = bytes(COMPRESSED_SIZE)
_ONE_FULL = _write6(_ONE6) + bytes(COMPRESSED_SIZE)


def compress(full: bytes) -> bytes:
    """The 288-byte T2 form of a GT element given in its canonical 576-byte form.

    ``full`` must encode an element of norm 1 (every GT element does);
    anything else is a ValueError, since the caller holds a decoded element."""
    if len(full) != 576:
        raise ValueError("compress takes the 576-byte form of a GT element")
    a, b = _read6(full[:288]), _read6(full[288:])
    if b == _ZERO6:
        if a != _ONE6:
            raise ValueError("not a GT element: b = 0 and a != 1")
        return _ZERO_BYTES
    return _write6(_mul6(_add6(_ONE6, a), _inv6(b)))


def decompress(data: bytes) -> bytes:
    """The canonical 576-byte form of the element a 288-byte T2 encoding names.

    Refuses (DecodeError) a wrong length or a coefficient not below p. The result
    has norm 1 but may lie outside GT: decode it with the backend's ``gt_decode``,
    which checks the order-r subgroup."""
    if len(data) != COMPRESSED_SIZE:
        raise DecodeError(f"compressed GT element must be {COMPRESSED_SIZE} bytes, got {len(data)}")
    c = _read6(data)
    if c == _ZERO6:
        return _ONE_FULL
    c2 = _mul6(c, c)
    v = _mul_v(_ONE6)
    di = _inv6(_sub6(c2, v))
    a = _mul6(_add6(c2, v), di)
    b = _mul6(_add6(c, c), di)
    return _write6(a) + _write6(b)
