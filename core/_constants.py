"""The BLS12-381 constants that the backends, the encoding checks and the group
wrappers share (the native package keeps its own copy of r: it imports nothing
from core/)."""

from __future__ import annotations

#: Order r of G1, G2 and GT (the BLS12-381 scalar field modulus).
R = 0x73EDA753299D7D483339D80809A1D80553BDA402FFFE5BFEFFFFFFFF00000001
#: The base field modulus p.
P = 0x1A0111EA397FE69A4B1BA7B6434BACD764774B84F38512BF6730D2A0F6B0F6241EABFFFEB153FFFFB9FEFFFFFFFFAAAB
