"""py-ecc, imported with the interpreter's recursion limit kept.

py_ecc's package ``__init__`` raises ``sys``'s recursion limit to 100,000 when it
is first imported (for its recursive pure-Python arithmetic). With that limit a
deeply nested hostile input (``json.loads`` of 100,000 ``[``, for one) overflows
the C stack and kills the whole process instead of raising ``RecursionError``.
What emrshare calls recurses at most once per scalar bit (py-ecc's
double-and-add ``multiply``: 256 levels for a secp256k1 or BLS12-381 scalar),
well inside Python's default limit of 1,000, so the limit in force before the
import is restored. Import this module before any ``py_ecc`` submodule
(core._pure and core._secp256k1 do).
"""

from __future__ import annotations

import sys

_before = sys.getrecursionlimit()

import py_ecc  # noqa: E402,F401  (the import whose side effect is undone below)

if sys.getrecursionlimit() > _before:
    sys.setrecursionlimit(_before)
