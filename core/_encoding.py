"""Structural checks of the ZCash compressed point encoding, shared by both backends.

Byte 0 carries three flags in its top bits: C (0x80, compressed: must be set),
I (0x40, point at infinity) and S (0x20, sign: y is the lexicographically
larger root). The rest is x big-endian (G2: x = x_c1 || x_c0, imaginary part
first), each Fp coordinate below p. The infinity encoding is exactly 0xC0 then
zeros. Curve and subgroup membership are checked by the backend afterwards.
"""

from __future__ import annotations

from ._constants import P
from .errors import DecodeError

FLAG_COMPRESSED = 0x80
FLAG_INFINITY = 0x40
FLAG_SIGN = 0x20


def parse_compressed(data: bytes, group: str, nfp: int) -> tuple[bool, bool, tuple[int, ...]]:
    """Return (is_infinity, sign, x coordinates as ints: (x,) for G1, (x_c1, x_c0) for G2)."""
    size = 48 * nfp
    if len(data) != size:
        raise DecodeError(f"{group} point must be {size} bytes, got {len(data)}")
    flags = data[0] & 0xE0
    if not flags & FLAG_COMPRESSED:
        raise DecodeError(f"{group} point: compression flag not set (uncompressed encodings are not accepted)")
    body = bytes([data[0] & 0x1F]) + data[1:]
    if flags & FLAG_INFINITY:
        if flags & FLAG_SIGN or any(body):
            raise DecodeError(f"{group} point: malformed point-at-infinity encoding")
        return True, False, (0,) * nfp
    xs = tuple(int.from_bytes(body[48 * i : 48 * (i + 1)], "big") for i in range(nfp))
    for x in xs:
        if x >= P:
            raise DecodeError(f"{group} point: x coordinate is not below the field modulus p")
    return False, bool(flags & FLAG_SIGN), xs


def check_gt_coefficients(data: bytes) -> tuple[int, ...]:
    """Split 576 GT bytes into twelve Fp ints (encoding order), each checked < p."""
    if len(data) != 576:
        raise DecodeError(f"GT element must be 576 bytes, got {len(data)}")
    coeffs = tuple(int.from_bytes(data[48 * i : 48 * (i + 1)], "big") for i in range(12))
    for c in coeffs:
        if c >= P:
            raise DecodeError("GT element: a coefficient is not below the field modulus p")
    return coeffs
