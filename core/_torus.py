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

# Fp6 = Fp2[v]/(v^3 - xi), xi = 1 + u, Fp2 = Fp[u]/(u^2 + 1), held flat as six ints
# (x0, y0, x1, y1, x2, y2) for (x0 + y0 u) + (x1 + y1 u) v + (x2 + y2 u) v^2; products
# are summed unreduced and reduced once (Python integers: fewer % p is what costs less).
Fp6 = tuple[int, int, int, int, int, int]


def _mul6(a: Fp6, b: Fp6) -> Fp6:
    """a b in Fp6, reduced once per output coefficient."""
    a0, a1, a2, a3, a4, a5 = a
    b0, b1, b2, b3, b4, b5 = b
    # Fp2 products (x + y u)(z + t u) = (xz - yt) + (xt + yz) u, unreduced
    t00x = a0 * b0 - a1 * b1; t00y = a0 * b1 + a1 * b0
    t11x = a2 * b2 - a3 * b3; t11y = a2 * b3 + a3 * b2
    t22x = a4 * b4 - a5 * b5; t22y = a4 * b5 + a5 * b4
    ux = a2 * b4 - a3 * b5 + a4 * b2 - a5 * b3; uy = a2 * b5 + a3 * b4 + a4 * b3 + a5 * b2
    c1x = a0 * b2 - a1 * b3 + a2 * b0 - a3 * b1; c1y = a0 * b3 + a1 * b2 + a2 * b1 + a3 * b0
    c2x = a0 * b4 - a1 * b5 + a4 * b0 - a5 * b1; c2y = a0 * b5 + a1 * b4 + a4 * b1 + a5 * b0
    return ((t00x + ux - uy) % P, (t00y + ux + uy) % P,
            (c1x + t22x - t22y) % P, (c1y + t22x + t22y) % P,
            (c2x + t11x) % P, (c2y + t11y) % P)

def _inv6(a: Fp6) -> Fp6:
    """1 / a in Fp6 (a != 0): the adjugate over the norm to Fp2, one Fp inversion."""
    a0, a1, a2, a3, a4, a5 = a
    # t0 = A0^2 - xi A1 A2
    px = a2 * a4 - a3 * a5; py = a2 * a5 + a3 * a4
    t0x = (a0 * a0 - a1 * a1 - (px - py)) % P; t0y = (2 * a0 * a1 - (px + py)) % P
    # t1 = xi A2^2 - A0 A1
    sx = a4 * a4 - a5 * a5; sy = 2 * a4 * a5
    t1x = (sx - sy - (a0 * a2 - a1 * a3)) % P; t1y = (sx + sy - (a0 * a3 + a1 * a2)) % P
    # t2 = A1^2 - A0 A2
    t2x = (a2 * a2 - a3 * a3 - (a0 * a4 - a1 * a5)) % P; t2y = (2 * a2 * a3 - (a0 * a5 + a1 * a4)) % P
    # f = A0 t0 + xi (A2 t1 + A1 t2)
    qx = a4 * t1x - a5 * t1y + a2 * t2x - a3 * t2y; qy = a4 * t1y + a5 * t1x + a2 * t2y + a3 * t2x
    fx = (a0 * t0x - a1 * t0y + qx - qy) % P; fy = (a0 * t0y + a1 * t0x + qx + qy) % P
    n = (fx * fx + fy * fy) % P
    if n == 0:
        raise ZeroDivisionError("inverse of zero in Fp6")
    ni = pow(n, -1, P)
    ix = fx * ni % P; iy = -fy * ni % P
    return ((t0x * ix - t0y * iy) % P, (t0x * iy + t0y * ix) % P,
            (t1x * ix - t1y * iy) % P, (t1x * iy + t1y * ix) % P,
            (t2x * ix - t2y * iy) % P, (t2x * iy + t2y * ix) % P)


def _read6(data: bytes) -> Fp6:
    """288 bytes -> Fp6 (each Fp2 as u-coefficient then constant); coefficients must be < p."""
    vals = [int.from_bytes(data[48 * i: 48 * (i + 1)], "big") for i in range(6)]
    if any(v >= P for v in vals):
        raise DecodeError("compressed GT element: a coefficient is not below the field modulus p")
    return vals[1], vals[0], vals[3], vals[2], vals[5], vals[4]


def _write6(a: Fp6) -> bytes:
    return b"".join(a[i ^ 1].to_bytes(48, "big") for i in range(6))


_ZERO6: Fp6 = (0, 0, 0, 0, 0, 0)
_ONE6: Fp6 = (1, 0, 0, 0, 0, 0)
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
    return _write6(_mul6(((a[0] + 1) % P,) + a[1:], _inv6(b)))


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
    d = _inv6((c2[0], c2[1], (c2[2] - 1) % P, c2[3], c2[4], c2[5]))  # 1 / (c^2 - v)
    a = _mul6((c2[0], c2[1], (c2[2] + 1) % P, c2[3], c2[4], c2[5]), d)  # (c^2 + v) / (c^2 - v)
    b = _mul6(tuple(2 * x % P for x in c), d)  # 2 c / (c^2 - v)
    return _write6(a) + _write6(b)
