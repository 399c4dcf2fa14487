"""The once-per-process choice of backends (core/_backend.py).

This process's choice was made by tests/conftest.py (with a call counter);
what a fresh process does is checked in subprocesses.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from core._backend import (
    active_backend,
    active_ecdsa,
    available_backends,
    load,
    load_ecdsa,
    select,
    selected,
    selection,
)
from core._counting import CallCounter, CountingBackend, CountingEcdsa
from core.errors import BackendError

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _fresh(code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter at the repository root; its stdout."""
    environ = {k: v for k, v in os.environ.items() if k != "EMRSHARE_BACKEND"} | env
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_the_choice_is_made_once():
    current = selection()
    assert selected() is current and select() is current and select("auto") is current
    assert select(current.name) is current and select(counter=current.counter) is current
    assert active_backend() is current.curve and active_ecdsa() is current.ecdsa
    other = "pure" if current.name == "native" else "native"
    with pytest.raises(BackendError, match="already selected"):
        select(other)
    with pytest.raises(BackendError, match="call counter"):
        select(counter=CallCounter())
    with pytest.raises(BackendError, match="not one of"):
        select("fast")


def test_one_object_per_name_and_counting_throughout():
    for name in available_backends():
        assert load(name) is load(name) and isinstance(load(name), CountingBackend)
    for name in ("native", "pure"):
        assert load_ecdsa(name) is load_ecdsa(name) and isinstance(load_ecdsa(name), CountingEcdsa)
    assert active_backend() is load(selection().name)
    with pytest.raises(BackendError, match="unknown backend"):
        load("gmp")
    with pytest.raises(BackendError, match="unknown ECDSA backend"):
        load_ecdsa("gmp")


def test_a_fresh_process_chooses_on_first_use_and_importing_selects_nothing():
    out = _fresh(
        "import core.ecdsa, core.curve, core.pre, core._backend as b\n"
        "print(b.selected() is None)\n"
        "core.ecdsa.public_key(b'\\x01' * 32)\n"
        "s = b.selected()\n"
        "print(s is not None and s.counter is None and b.load(s.name) is s.curve)\n"
    )
    assert out.splitlines() == ["True", "True"]


def test_the_environment_forces_both_backends():
    out = _fresh(
        "import core._backend as b\n"
        "s = b.selection()\n"
        "print(s.curve.name, s.ecdsa.name, s.reason)\n",
        EMRSHARE_BACKEND="pure",
    )
    assert out == "pure pure forced by EMRSHARE_BACKEND=pure"
    out = _fresh(
        "import core._backend as b\n"
        "try:\n    b.selection()\nexcept b.BackendError as exc:\n    print(exc)\n",
        EMRSHARE_BACKEND="fast",
    )
    assert out == "EMRSHARE_BACKEND='fast' is not one of auto, native, pure"


def test_native_unavailable_fails_loudly_when_asked_for_and_falls_back_in_auto():
    out = _fresh(
        "import sys\n"
        "sys.modules['native._mcl_cffi'] = None  # as if the extension were not built\n"
        "import core._backend as b\n"
        "try:\n    b.select('native')\nexcept b.BackendError as exc:\n    print('refused:', exc)\n"
        "s = b.select()\n"
        "print(s.name, s.reason.startswith('native backend unavailable'))\n"
    )
    refused, chosen = out.splitlines()
    assert refused.startswith("refused: the native backend is not available") and "native.build" in refused
    assert chosen == "pure True"


def test_counting_must_be_chosen_before_any_backend_loads():
    out = _fresh(
        "import core._backend as b\n"
        "from core._counting import CallCounter, CountingBackend\n"
        "b.load('pure')\n"
        "try:\n    b.select(counter=CallCounter())\nexcept b.BackendError as exc:\n    print(exc)\n"
    )
    assert out == "select(counter=...) must come before any backend is loaded"
    out = _fresh(
        "import core._backend as b\n"
        "from core._counting import CallCounter, CountingBackend, CountingEcdsa\n"
        "c = CallCounter()\n"
        "s = b.select('pure', counter=c)\n"
        "print(s.counter is c, isinstance(s.curve, CountingBackend), isinstance(s.ecdsa, CountingEcdsa))\n"
        "import core.ecdsa\n"
        "core.ecdsa.sign(b'\\x01' * 32, 't', b'm')\n"
        "print(c.snapshot()['ecdsa.sign_digest'][0])\n"
    )
    assert out.splitlines() == ["True True True", "1"]
