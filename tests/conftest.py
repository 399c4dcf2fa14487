"""Shared fixtures: the arithmetic backends available in this process.

``backend`` runs a test once per available backend (native first); build the
objects under test on it with ``core.curve.api(backend)`` / ``core.pre.Scheme(backend)``.
On the pure backend, tests marked ``slow`` are skipped unless EMRSHARE_SLOW=1.

The backends are selected here, before any test runs, with a call counter
(core/_counting.py), as ``emrshare loadtest`` selects them: the load-test tests
read the crypto call counts, and every other test runs through the counting
proxies, which must not change a result.
"""

from __future__ import annotations

import os
import time

import pytest
from hypothesis import HealthCheck, settings

from core._backend import available_backends, backend_name, load, select
from core._counting import CallCounter

select(counter=CallCounter(time.thread_time_ns))

settings.register_profile(
    "emrshare",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("emrshare")

AVAILABLE = available_backends()
ACTIVE = backend_name()


def _backend_params():
    # When a backend is forced, contract tests run on it alone.
    forced = os.environ.get("EMRSHARE_BACKEND", "").strip().lower()
    if forced in ("native", "pure"):
        return [forced]
    return AVAILABLE


@pytest.fixture(params=_backend_params())
def backend(request):
    return load(request.param)


@pytest.fixture
def other_backend(backend):
    """The other backend, for cross-backend checks (skips when only one loads)."""
    others = [n for n in AVAILABLE if n != backend.name]
    if not others:
        pytest.skip("only one backend available")
    return load(others[0])


def pytest_collection_modifyitems(config, items):
    if ACTIVE == "pure" and os.environ.get("EMRSHARE_SLOW") != "1":
        skip = pytest.mark.skip(reason="slow on the pure backend (set EMRSHARE_SLOW=1)")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)


def pytest_report_header(config):
    return f"emrshare backend: {ACTIVE} (available: {', '.join(AVAILABLE)})"


@pytest.fixture
def idle_clock():
    """Trio's autojump clock, jumping only after 0.1 s of real idleness: a worker thread
    hashing or writing a file does not let virtual time (and the timeouts) run away
    while it works. (pytest-trio runs a test on the clock a fixture returns.)"""
    import trio.testing

    return trio.testing.MockClock(autojump_threshold=0.1)
