"""Importing core (and py-ecc through it) keeps the interpreter's recursion limit, so a
deeply nested hostile input raises RecursionError instead of killing the process."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import json, sys
before = sys.getrecursionlimit()
import core, core.ecdsa, core._pure, core._secp256k1
assert sys.getrecursionlimit() == before, (before, sys.getrecursionlimit())
try:
    json.loads("[" * 200_000)
except RecursionError:
    print("refused")
"""


@pytest.mark.parametrize("backend", ["native", "pure"])
def test_importing_core_keeps_the_recursion_limit_and_deep_json_is_an_error(backend):
    env = {"EMRSHARE_BACKEND": backend, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr  # a C stack overflow would be -11 (SIGSEGV)
    assert out.stdout.strip() == "refused"


@pytest.mark.crypto
def test_pure_arithmetic_stays_inside_the_default_limit():
    """The deepest recursion emrshare asks of py-ecc: double-and-add over a full-size scalar."""
    import core._pyecc  # noqa: F401
    from py_ecc.optimized_bls12_381 import G2, multiply
    from py_ecc.secp256k1 import secp256k1

    from core._constants import R

    assert sys.getrecursionlimit() <= 1000
    multiply(G2, R - 1)
    secp256k1.multiply(secp256k1.G, secp256k1.N - 1)
