"""Counting proxies: backends that count, and time, their expensive calls.

The load test reports how many pairings, exponentiations and ECDSA operations
each operation costs. It asks for that when the backends are chosen:
``core._backend.select(counter=CallCounter(clock))`` wraps every backend it
loads in these proxies, before anything uses one; nothing is patched later. A
proxy returns exactly what the backend it wraps returns (the same handles), so
elements made through it mix with nothing else: the process uses the proxies
throughout.

Counted, under the method's name: the curve backend's pairings
(``pairing``, ``pairing_prepared``, ``multi_pairing``), scalar multiplications
(``g1_mul``, ``g2_mul``, ``g1_generator_mul``, ``g1_msm``, ``g2_msm``), decodes
(``g1_decode``, ``g2_decode``, ``gt_decode``: they check the subgroup) and GT
exponentiations (``gt_pow``, ``gt_generator_pow``, ``gt_multi_pow``); the
ECDSA implementation's ``ecdsa.public_key``, ``ecdsa.sign_digest`` and
``ecdsa.is_valid_digest``. The cheap methods (additions, equality, encodings)
pass through uncounted. A call is counted even when it raises.

core/ reads no clock: the time spent in each call comes from the clock given to
:class:`CallCounter` (the load test gives ``time.thread_time_ns``); without
one, only calls are counted.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable

__all__ = ["CallCounter", "CountingBackend", "CountingEcdsa", "COUNTED_CURVE_METHODS", "COUNTED_ECDSA_METHODS"]

COUNTED_CURVE_METHODS = (
    "pairing",
    "pairing_prepared",
    "multi_pairing",
    "g1_mul",
    "g2_mul",
    "g1_generator_mul",
    "g1_msm",
    "g2_msm",
    "g1_decode",
    "g2_decode",
    "gt_decode",
    "gt_pow",
    "gt_generator_pow",
    "gt_multi_pow",
)
COUNTED_ECDSA_METHODS = ("ecdsa.public_key", "ecdsa.sign_digest", "ecdsa.is_valid_digest")


def _no_clock() -> int:
    return 0


class CallCounter:
    """Calls and time (in the clock's unit) per counted method, shared by the proxies."""

    def __init__(self, clock: Callable[[], int] | None = None) -> None:
        self._clock = clock if clock is not None else _no_clock
        self._lock = threading.Lock()
        self._tallies: dict[str, list[int]] = {
            name: [0, 0] for name in COUNTED_CURVE_METHODS + COUNTED_ECDSA_METHODS
        }

    def call(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, counted under ``name``."""
        clock = self._clock
        t0 = clock()
        try:
            return fn(*args)
        finally:
            dt = clock() - t0
            with self._lock:
                entry = self._tallies[name]
                entry[0] += 1
                entry[1] += dt

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """(calls, time) per counted method so far (zero for methods not called)."""
        with self._lock:
            return {name: (calls, t) for name, (calls, t) in self._tallies.items()}


class _Forward:
    """A method of the wrapped object: passed through, or counted under ``COUNT_PREFIX`` + its name.

    Declared once per method on the proxy class (``g1_add = _passed()``), so the
    proxy's methods are listed where a reader looks for them."""

    __slots__ = ("counted", "name", "key")

    def __init__(self, counted: bool) -> None:
        self.counted = counted

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.key = owner.COUNT_PREFIX + name  # type: ignore[attr-defined]

    def __get__(self, proxy: Any, owner: type | None = None) -> Any:
        if proxy is None:
            return self
        method = getattr(proxy.inner, self.name)
        if not self.counted:
            return method
        return functools.partial(proxy._call, self.key, method)


def _passed() -> Any:
    return _Forward(counted=False)


def _counted() -> Any:
    return _Forward(counted=True)


class _Proxy:
    """What both proxies share: the wrapped object, its name and the counter's ``call``."""

    COUNT_PREFIX = ""

    def __init__(self, inner: Any, counter: CallCounter) -> None:
        self.inner = inner
        self.name: str = inner.name
        self._call = counter.call

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"


class CountingBackend(_Proxy):
    """A curve backend (core._backend.Backend) that counts its expensive calls in ``counter``."""

    # --- G1 -----------------------------------------------------------
    g1_generator = _passed()
    g1_identity = _passed()
    g1_decode = _counted()
    g1_encode = _passed()
    g1_add = _passed()
    g1_neg = _passed()
    g1_mul = _counted()
    g1_generator_mul = _counted()
    g1_msm = _counted()
    g1_eq = _passed()
    g1_is_identity = _passed()

    # --- G2 -----------------------------------------------------------
    g2_generator = _passed()
    g2_identity = _passed()
    g2_decode = _counted()
    g2_encode = _passed()
    g2_add = _passed()
    g2_neg = _passed()
    g2_mul = _counted()
    g2_msm = _counted()
    g2_eq = _passed()
    g2_is_identity = _passed()

    # --- pairing --------------------------------------------------------
    pairing = _counted()
    multi_pairing = _counted()
    g2_prepare = _passed()
    pairing_prepared = _counted()

    # --- GT -------------------------------------------------------------
    gt_one = _passed()
    gt_generator = _passed()
    gt_decode = _counted()
    gt_encode = _passed()
    gt_mul = _passed()
    gt_inv = _passed()
    gt_pow = _counted()
    gt_multi_pow = _counted()
    gt_generator_pow = _counted()
    gt_eq = _passed()


class CountingEcdsa(_Proxy):
    """An ECDSA implementation (core._backend.EcdsaBackend) that counts its calls in ``counter``."""

    COUNT_PREFIX = "ecdsa."

    public_key = _counted()
    sign_digest = _counted()
    is_valid_digest = _counted()
    check_public_key = _passed()
