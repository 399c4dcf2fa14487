"""``emrshare bench crypto``: pairing, group and ECDSA micro-benchmarks.

Times each operation through the public API (core.curve, core.ecdsa) on the
native backend and on the pure one (fewer iterations; an operation whose first
pure run takes longer than ``PURE_LIMIT_S`` is reported from that one run), and
next to them a *bare* time: the same operation in a C loop (native/helpers.c's
``emr_bench_*``; for ECDSA, coincurve's own sign/verify). ``wrapped/bare`` is
the cost of the Python layers on top of the library.

Reported, not asserted: wrapper overhead within 10 % of bare for pairing and
scalar multiplication; ECDSA verify within 1.5x of coincurve.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import sys
import time
from typing import Callable

DEFAULT_ITERATIONS = 200
PURE_LIMIT_S = 1.0
BARE_BATCHES = 25

_TARGETS = {
    "pairing": 1.10,
    "pairing (prepared G2)": 1.10,
    "G1 mul (CT)": 1.10,
    "G2 mul (CT)": 1.10,
    "ECDSA verify": 1.50,
}


def _median_us(fn: Callable[[], object], n: int) -> float:
    fn()  # warm-up (first call may build caches)
    times = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times) / 1000.0


def _pure_us(fn: Callable[[], object], n: int) -> tuple[float, int]:
    t0 = time.perf_counter_ns()
    fn()
    first = (time.perf_counter_ns() - t0) / 1000.0
    if first > PURE_LIMIT_S * 1e6 or n <= 1:
        return first, 1
    times = [first]
    for _ in range(n - 1):
        t0 = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t0) / 1000.0)
    return statistics.median(times), len(times)


def _bare_us(loop: Callable[[int], int], n: int) -> float:
    """Median over batches of a C loop returning elapsed ns for ``batch`` runs."""
    batch = max(1, n // BARE_BATCHES)
    loop(1)  # warm-up
    return statistics.median(loop(batch) / batch for _ in range(BARE_BATCHES)) / 1000.0


def _curve_ops(backend_name: str, k: int) -> dict[str, Callable[[], object]]:
    from core.backend import load
    from core.curve import GT, api, multi_pairing, pairing, random_scalar

    c = api(load(backend_name))
    g1 = c.G1.generator() * random_scalar()
    g2 = c.G2.generator() * random_scalar()
    prepared = g2.prepare()
    z = c.GT.generator()
    x = pairing(g1, g2)
    bases3 = [z ** random_scalar() for _ in range(3)]
    bases5 = bases3 + [z ** random_scalar() for _ in range(2)]
    exps5 = [random_scalar() for _ in range(5)]
    g1_bytes = g1.to_bytes()
    x_bytes = x.to_bytes()
    x_compressed = x.to_compressed()
    return {
        "pairing": lambda: pairing(g1, g2),
        "pairing (prepared G2)": lambda: pairing(g1, prepared),
        "multi-pairing of 2": lambda: multi_pairing([(g1, g2), (g1, g2)]),
        "G1 mul (CT)": lambda: g1 * k,
        "G1 mul (public)": lambda: g1.mul_public(k),
        "G2 mul (CT)": lambda: g2 * k,
        "GT pow (Z^k, mclBnGT_pow)": lambda: z ** k,
        "Z^k fixed-base table": lambda: c.GT.generator_pow(k),
        "GT multi-exp of 3": lambda: GT.multi_pow(bases3, exps5[:3]),
        "GT multi-exp of 5": lambda: GT.multi_pow(bases5, exps5),
        "G1 decode (subgroup check)": lambda: c.G1.from_bytes(g1_bytes),
        "GT decode (subgroup check)": lambda: c.GT.from_bytes(x_bytes),
        "GT compress (T2, 288 bytes)": lambda: x.to_compressed(),
        "GT decode T2 (subgroup check)": lambda: c.GT.from_compressed(x_compressed),
    }


def _bare_loops(k: int) -> dict[str, Callable[[int], int]]:
    """C timing loops over the same operations (native only)."""
    from core.backend import load
    from core.curve import api, random_scalar

    from native import timing

    be = load("native")
    c = api(be)
    g1 = (c.G1.generator() * random_scalar())._h
    g2 = (c.G2.generator() * random_scalar())._h
    qbuf = be.g2_prepare(g2)
    z = c.GT.generator()._h
    kb = k.to_bytes(32, "little")
    bases5 = b"".join((c.GT.generator() ** random_scalar())._h for _ in range(5))
    ks5 = b"".join(random_scalar().to_bytes(32, "little") for _ in range(5))
    keep = [g1, g2, qbuf, z, kb, bases5, ks5]
    loops = {
        "pairing": lambda n: timing.pairing(g1, g2, n),
        "pairing (prepared G2)": lambda n: timing.pairing_prepared(g1, qbuf, n),
        "G1 mul (CT)": lambda n: timing.g1_mul(g1, kb, True, n),
        "G1 mul (public)": lambda n: timing.g1_mul(g1, kb, False, n),
        "G2 mul (CT)": lambda n: timing.g2_mul(g2, kb, True, n),
        "GT pow (Z^k, mclBnGT_pow)": lambda n: timing.gt_pow(z, kb, n),
        "Z^k fixed-base table": lambda n: timing.gt_generator_pow(kb, n),
        "GT multi-exp of 3": lambda n: timing.gt_multi_pow(bases5, ks5, 3, n),
        "GT multi-exp of 5": lambda n: timing.gt_multi_pow(bases5, ks5, 5, n),
    }
    loops["_keep"] = keep  # type: ignore[assignment]
    return loops


def _ecdsa_ops() -> tuple[dict, dict, dict]:
    """(public API on the active ECDSA backend, pure implementation, coincurve) callables."""
    import coincurve

    from core import ecdsa
    from core.backend import load_ecdsa

    tag = "emrshare/v1/bench"
    msg = b"x" * 100
    priv = ecdsa.generate_private_key()
    pub = ecdsa.public_key(priv)
    sig = ecdsa.sign(priv, tag, msg)
    ecdsa.verify(pub, tag, msg, sig)

    pure = load_ecdsa("pure")
    digest = hashlib.sha256(ecdsa.tagged_message(tag, msg)).digest()
    api = {
        "ECDSA sign": lambda: ecdsa.sign(priv, tag, msg),
        "ECDSA verify": lambda: ecdsa.verify(pub, tag, msg, sig),
    }
    pure_ops = {
        "ECDSA sign": lambda: pure.sign_digest(priv, digest),
        "ECDSA verify": lambda: pure.is_valid_digest(pub, digest, sig),
    }
    cc_priv = coincurve.PrivateKey(priv)
    cc_sig = cc_priv.sign(ecdsa.tagged_message(tag, msg))  # DER, sha256 inside
    tagged = ecdsa.tagged_message(tag, msg)
    cc = {
        "ECDSA sign": lambda: cc_priv.sign(tagged),
        "ECDSA verify": lambda: coincurve.verify_signature(cc_sig, tagged, pub),
    }
    return api, pure_ops, cc


def run(json_path: str | None = None, iterations: int = DEFAULT_ITERATIONS, *, pure: bool = True,
        out=sys.stdout) -> dict:
    """Run the benchmark, print a table to ``out``, optionally write JSON; return the results."""
    from core import ecdsa
    from core.backend import available_backends
    from core.curve import random_scalar

    iterations = max(1, int(iterations))
    pure_iterations = max(1, iterations // 40)
    backends = available_backends()
    have_native = "native" in backends
    k = random_scalar()
    rows: list[dict] = []

    native_ops = _curve_ops("native", k) if have_native else {}
    bare = _bare_loops(k) if have_native else {}
    pure_ops = _curve_ops("pure", k) if pure else {}
    names = list((native_ops or pure_ops).keys())

    api_ecdsa, pure_ecdsa, cc_ecdsa = _ecdsa_ops()
    for name in names + list(api_ecdsa):
        row: dict = {"op": name}
        if name in api_ecdsa:
            wrapped, bare_fn, pure_fn = api_ecdsa[name], cc_ecdsa[name], pure_ecdsa[name]
            row["bare_kind"] = "coincurve"
            row["native_us"] = _median_us(wrapped, iterations)
            row["bare_us"] = _median_us(bare_fn, iterations)
        else:
            pure_fn = pure_ops.get(name)
            row["bare_kind"] = "C loop"
            if name in native_ops:
                row["native_us"] = _median_us(native_ops[name], iterations)
            if name in bare:
                row["bare_us"] = _bare_us(bare[name], iterations)
        if "native_us" in row:
            row["native_ops_s"] = 1e6 / row["native_us"]
        if "native_us" in row and "bare_us" in row:
            row["ratio"] = row["native_us"] / row["bare_us"]
            if name in _TARGETS:
                row["target"] = _TARGETS[name]
                row["meets_target"] = row["ratio"] <= _TARGETS[name]
        if pure and pure_fn is not None:
            row["pure_us"], row["pure_runs"] = _pure_us(pure_fn, pure_iterations)
            row["pure_ops_s"] = 1e6 / row["pure_us"]
        rows.append(row)

    result = {
        "benchmark": "crypto",
        "iterations": iterations,
        "pure_iterations": pure_iterations,
        "backends": backends,
        "ecdsa_backend": ecdsa.ecdsa_backend_name(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "rows": rows,
    }
    _print_table(result, out)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
    return result


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _print_table(result: dict, out) -> None:
    head = (f"{'operation':<28} {'native us':>10} {'ops/s':>9} {'bare us':>9} {'wrap/bare':>9} "
            f"{'pure us':>11} {'ops/s':>8}")
    print(f"emrshare bench crypto: {result['iterations']} iterations native, "
          f"{result['pure_iterations']} pure (ops over {PURE_LIMIT_S:.0f} s: 1 run); "
          f"bare = C loop, or coincurve for ECDSA", file=out)
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in result["rows"]:
        flag = ""
        if "meets_target" in r:
            flag = "  ok" if r["meets_target"] else f"  > {r['target']:.2f}x target"
        pure_s = _fmt(r.get("pure_us"), ",.0f")
        if r.get("pure_runs") == 1 and "pure_us" in r:
            pure_s += "*"
        print(
            f"{r['op']:<28} {_fmt(r.get('native_us'), ',.1f'):>10} {_fmt(r.get('native_ops_s'), ',.0f'):>9} "
            f"{_fmt(r.get('bare_us'), ',.1f'):>9} {_fmt(r.get('ratio'), '.3f'):>9} "
            f"{pure_s:>11} {_fmt(r.get('pure_ops_s'), ',.1f'):>8}{flag}",
            file=out,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emrshare bench crypto", description=__doc__.split("\n")[0])
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                        help=f"native iterations per operation (default {DEFAULT_ITERATIONS}; pure: 1/40 of it)")
    parser.add_argument("--no-pure", action="store_true", help="skip the pure-backend columns")
    args = parser.parse_args(argv)
    if args.iterations < 1:
        parser.error("--iterations must be at least 1")
    run(args.json, args.iterations, pure=not args.no_pure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
