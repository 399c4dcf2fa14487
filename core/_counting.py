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

import threading
from typing import Any, Callable, Sequence

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


class CountingBackend:
    """A curve backend (core._backend.Backend) that counts its expensive calls in ``counter``."""

    def __init__(self, inner: Any, counter: CallCounter) -> None:
        self.inner = inner
        self.name: str = inner.name
        self._call = counter.call

    def __repr__(self) -> str:
        return f"CountingBackend({self.inner!r})"

    # --- G1 -----------------------------------------------------------
    def g1_generator(self) -> Any:
        return self.inner.g1_generator()

    def g1_identity(self) -> Any:
        return self.inner.g1_identity()

    def g1_decode(self, data: bytes) -> Any:
        return self._call("g1_decode", self.inner.g1_decode, data)

    def g1_encode(self, a: Any) -> bytes:
        return self.inner.g1_encode(a)

    def g1_add(self, a: Any, b: Any) -> Any:
        return self.inner.g1_add(a, b)

    def g1_neg(self, a: Any) -> Any:
        return self.inner.g1_neg(a)

    def g1_mul(self, a: Any, k: int, secret: bool) -> Any:
        return self._call("g1_mul", self.inner.g1_mul, a, k, secret)

    def g1_generator_mul(self, k: int) -> Any:
        return self._call("g1_generator_mul", self.inner.g1_generator_mul, k)

    def g1_msm(self, points: Sequence[Any], scalars: Sequence[int]) -> Any:
        return self._call("g1_msm", self.inner.g1_msm, points, scalars)

    def g1_eq(self, a: Any, b: Any) -> bool:
        return self.inner.g1_eq(a, b)

    def g1_is_identity(self, a: Any) -> bool:
        return self.inner.g1_is_identity(a)

    # --- G2 -----------------------------------------------------------
    def g2_generator(self) -> Any:
        return self.inner.g2_generator()

    def g2_identity(self) -> Any:
        return self.inner.g2_identity()

    def g2_decode(self, data: bytes) -> Any:
        return self._call("g2_decode", self.inner.g2_decode, data)

    def g2_encode(self, a: Any) -> bytes:
        return self.inner.g2_encode(a)

    def g2_add(self, a: Any, b: Any) -> Any:
        return self.inner.g2_add(a, b)

    def g2_neg(self, a: Any) -> Any:
        return self.inner.g2_neg(a)

    def g2_mul(self, a: Any, k: int, secret: bool) -> Any:
        return self._call("g2_mul", self.inner.g2_mul, a, k, secret)

    def g2_msm(self, points: Sequence[Any], scalars: Sequence[int]) -> Any:
        return self._call("g2_msm", self.inner.g2_msm, points, scalars)

    def g2_eq(self, a: Any, b: Any) -> bool:
        return self.inner.g2_eq(a, b)

    def g2_is_identity(self, a: Any) -> bool:
        return self.inner.g2_is_identity(a)

    # --- pairing --------------------------------------------------------
    def pairing(self, p: Any, q: Any) -> Any:
        return self._call("pairing", self.inner.pairing, p, q)

    def multi_pairing(self, ps: Sequence[Any], qs: Sequence[Any]) -> Any:
        return self._call("multi_pairing", self.inner.multi_pairing, ps, qs)

    def g2_prepare(self, q: Any) -> Any:
        return self.inner.g2_prepare(q)

    def pairing_prepared(self, p: Any, prepared: Any) -> Any:
        return self._call("pairing_prepared", self.inner.pairing_prepared, p, prepared)

    # --- GT -------------------------------------------------------------
    def gt_one(self) -> Any:
        return self.inner.gt_one()

    def gt_generator(self) -> Any:
        return self.inner.gt_generator()

    def gt_decode(self, data: bytes) -> Any:
        return self._call("gt_decode", self.inner.gt_decode, data)

    def gt_encode(self, a: Any) -> bytes:
        return self.inner.gt_encode(a)

    def gt_mul(self, a: Any, b: Any) -> Any:
        return self.inner.gt_mul(a, b)

    def gt_inv(self, a: Any) -> Any:
        return self.inner.gt_inv(a)

    def gt_pow(self, a: Any, k: int) -> Any:
        return self._call("gt_pow", self.inner.gt_pow, a, k)

    def gt_multi_pow(self, bases: Sequence[Any], exps: Sequence[int]) -> Any:
        return self._call("gt_multi_pow", self.inner.gt_multi_pow, bases, exps)

    def gt_generator_pow(self, k: int) -> Any:
        return self._call("gt_generator_pow", self.inner.gt_generator_pow, k)

    def gt_eq(self, a: Any, b: Any) -> bool:
        return self.inner.gt_eq(a, b)


class CountingEcdsa:
    """An ECDSA implementation (core._backend.EcdsaBackend) that counts its calls in ``counter``."""

    def __init__(self, inner: Any, counter: CallCounter) -> None:
        self.inner = inner
        self.name: str = inner.name
        self._call = counter.call

    def __repr__(self) -> str:
        return f"CountingEcdsa({self.inner!r})"

    def public_key(self, private_key: bytes) -> bytes:
        return self._call("ecdsa.public_key", self.inner.public_key, private_key)

    def sign_digest(self, private_key: bytes, digest: bytes) -> bytes:
        return self._call("ecdsa.sign_digest", self.inner.sign_digest, private_key, digest)

    def is_valid_digest(self, public_key: bytes, digest: bytes, signature: bytes) -> bool:
        return self._call("ecdsa.is_valid_digest", self.inner.is_valid_digest, public_key, digest, signature)

    def check_public_key(self, public_key: bytes) -> bytes:
        return self.inner.check_public_key(public_key)
