"""What the cryptography costs: unit times measured in the run, and call counters.

Two tools:

* :func:`measure_unit_costs` times, in this process and in the same run as the
  load, each primitive on the access path: a pairing (prepared G2, as the
  peers re-encrypt), a GT decode (576 bytes with the subgroup check, what a
  doctor does per share), a GT multi-exponentiation of ``t`` bases (combining
  t shares), ECDSA sign and verify (secp256k1; transactions, envelopes, share
  signatures). Median of ``iterations`` runs each.
* :func:`counting` returns the process's :class:`CryptoCounter`: every call of
  those primitives, and the CPU time spent in them (``time.thread_time_ns``
  around the call, so waiting for the GIL or being descheduled does not
  count). The counting is chosen with the backends, before any crypto runs
  (``core.backend.select(counter=...)`` wraps them in counting proxies,
  core/_counting.py): ``emrshare loadtest`` and ``emrshare bench ledger`` call
  :func:`counting` first thing. It sees everything in this process: with the
  embedded in-process swarm that is every agent (patients, doctors, peers,
  orderer, storage). With agents in other processes it sees only the clients.

The crypto-bound limit of an operation is ``cores / sum(count_i * unit_i)``:
how many such operations per second this machine could do if it did nothing
but their pairings, GT operations and ECDSA.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from core import backend as _backend
from core.backend import CallCounter

# counted method (core/_counting.py) -> the primitive it is reported as
_PRIMITIVES = {
    "pairing": "pairing",
    "pairing_prepared": "pairing",
    "multi_pairing": "multi_pairing",
    "gt_decode": "gt_decode",
    "gt_multi_pow": "gt_multi_pow",
    "gt_pow": "gt_pow",
    "gt_generator_pow": "gt_pow",
    "g1_mul": "g1_mul",
    "g2_mul": "g2_mul",
    "g1_decode": "g1_decode",
    "g2_decode": "g2_decode",
    "ecdsa.sign_digest": "ecdsa_sign",
    "ecdsa.is_valid_digest": "ecdsa_verify",
}

# primitives whose unit cost is timed and that make up the crypto-bound limit
BOUND_PRIMITIVES = ("pairing", "gt_decode", "gt_multi_pow", "ecdsa_sign", "ecdsa_verify")


@dataclass
class Tally:
    calls: int = 0
    cpu_ns: int = 0


@dataclass
class CryptoCounts:
    by_primitive: dict[str, Tally] = field(default_factory=dict)

    def __sub__(self, other: "CryptoCounts") -> "CryptoCounts":
        out: dict[str, Tally] = {}
        for name, t in self.by_primitive.items():
            o = other.by_primitive.get(name, Tally())
            if t.calls - o.calls:
                out[name] = Tally(t.calls - o.calls, t.cpu_ns - o.cpu_ns)
        return CryptoCounts(out)

    def calls(self, name: str) -> int:
        return self.by_primitive.get(name, Tally()).calls

    def cpu_s(self, names: tuple[str, ...] | None = None) -> float:
        return sum(t.cpu_ns for n, t in self.by_primitive.items() if names is None or n in names) / 1e9

    def to_dict(self, per: float = 1.0) -> dict[str, dict[str, float]]:
        return {n: {"calls": t.calls / per, "cpu_ms": t.cpu_ns / 1e6 / per}
                for n, t in sorted(self.by_primitive.items())}


class CryptoCounter:
    """The process's crypto calls by primitive; ``snapshot()`` at any time, subtract two for a period."""

    def __init__(self, calls: CallCounter) -> None:
        self._calls = calls

    def snapshot(self) -> CryptoCounts:
        out = {primitive: Tally() for primitive in _PRIMITIVES.values()}
        for method, (calls, ns) in self._calls.snapshot().items():
            primitive = _PRIMITIVES.get(method)
            if primitive is not None:
                out[primitive].calls += calls
                out[primitive].cpu_ns += ns
        return CryptoCounts(out)


def counting() -> CryptoCounter:
    """The process's crypto call counter, selecting the backends with counting
    if nothing has selected them yet. Raises BackendError when they were
    selected without: call this before any crypto runs."""
    current = _backend.selected()
    if current is None or current.counter is None:
        current = _backend.select(counter=CallCounter(time.thread_time_ns))
    assert current.counter is not None
    return CryptoCounter(current.counter)


def measure_unit_costs(threshold: int, iterations: int = 200) -> dict[str, float]:
    """Median seconds per call of each primitive in :data:`BOUND_PRIMITIVES` (blocking; run in a thread)."""
    from core import ecdsa
    from core.curve import G1, G2, GT, pairing, random_scalar

    g1 = G1.generator() * random_scalar()
    q = (G2.generator() * random_scalar()).prepare()
    gts = [GT.generator() ** random_scalar() for _ in range(max(1, threshold))]
    encoded = gts[0].to_bytes()
    exps = [random_scalar() for _ in gts]
    key = ecdsa.generate_private_key()
    pub = ecdsa.public_key(key)
    msg = os.urandom(200)
    sig = ecdsa.sign_raw(key, msg)
    ops: dict[str, Callable[[], object]] = {
        "pairing": lambda: pairing(g1, q),
        "gt_decode": lambda: GT.from_bytes(encoded),
        "gt_multi_pow": lambda: GT.multi_pow(gts, exps),
        "ecdsa_sign": lambda: ecdsa.sign_raw(key, msg),
        "ecdsa_verify": lambda: ecdsa.is_valid_raw(pub, msg, sig),
    }
    out: dict[str, float] = {}
    for name, fn in ops.items():
        fn()
        times = []
        for _ in range(iterations):
            t0 = time.perf_counter_ns()
            fn()
            times.append(time.perf_counter_ns() - t0)
        out[name] = statistics.median(times) / 1e9
    return out


def crypto_bound(counts_per_op: dict[str, float], unit_s: dict[str, float], cores: int) -> dict[str, Any]:
    """The crypto-bound limit (operations per second) from per-operation call counts and unit costs."""
    parts = {n: counts_per_op.get(n, 0.0) * unit_s[n] for n in BOUND_PRIMITIVES if n in unit_s}
    cost = sum(parts.values())
    return {
        "cores": cores,
        "calls_per_op": {n: counts_per_op.get(n, 0.0) for n in BOUND_PRIMITIVES},
        "unit_cost_us": {n: unit_s[n] * 1e6 for n in BOUND_PRIMITIVES if n in unit_s},
        "cost_per_op_ms": cost * 1e3,
        "cost_breakdown_ms": {n: v * 1e3 for n, v in parts.items()},
        "limit_per_s": cores / cost if cost > 0 else None,
    }
