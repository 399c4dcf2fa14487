"""``emrshare bench pre``: our threshold PRE next to NuCypher's Umbral (umbral-pre).

One run times, on the same message sizes (1 KiB and 1 MiB by default), each step
of ours and the matching Umbral call, and reports the median of N iterations and
the ratio ours/Umbral. Each pair of operations is timed *interleaved* (ours,
Umbral, ours, Umbral, ...) with the garbage collector off, so a change of load
on a shared machine hits both columns alike.

What each row contains
    encrypt             ours: the patient sealing its own record, ``record.seal``
                        with its label KeyPair and X25519 secret key (capsule
                        (k a_L) g1 from the fixed-base table, Z^k, HKDF, key
                        check, owner-box wrap (kind 2), AEAD, msgpack); Umbral:
                        ``encrypt``.
                        (A sealer other than the owner uses the public key and a
                        sealed-box wrap instead: see core/record.py.)
    rekey t-of-n        ours: ``pre.make_key_shares`` (t-1 random coefficients, n
                        G2 multiplications, each share sealed to its proxy's
                        X25519 key); Umbral: ``generate_kfrags`` (n signed kfrags,
                        *not* encrypted to the proxies: NuCypher does that later).
    standing parts 3-of-5
                        ours: ``pre.make_standing_parts`` (issue 16: the
                        patient's one-time delegation of a label, scalars f(x_i)
                        sealed to 5 proxies, no receiver); Umbral has no
                        equivalent (a kfrag set names its receiver). Context.
    derive share        ours: ``pre.derive_key_share`` (a peer's rk_i = f(x_i) P2_B
                        for a newly allowed doctor, once per doctor and label),
                        timed interleaved with one constant-time G2
                        multiplication by a secret scalar. Target: at most one G2
                        multiplication (+5 % for the call): with it a peer's first
                        share for a new doctor costs one G2 multiplication plus the
                        re-encryption below.
    re-encrypt, derived share
                        ``pre.reencrypt`` with the derived share prepared: the
                        same work as today's re-encrypt (context).
    capsule decode      ours: ``G1.from_bytes`` of the header's capsule (subgroup
                        check); Umbral: ``Capsule.from_bytes`` (checks the
                        capsule). Not part of the other rows.
    re-encrypt          ours: ``pre.reencrypt`` with a prepared share
                        (``KeyShare.prepare()`` once, outside the timer) plus
                        ``to_bytes``; Umbral: ``bytes(reencrypt(...))``. Target:
                        within 1.15x of one bare mcl pairing with a precomputed G2
                        (``emr_bench_pairing_prepared``, a C loop), timed
                        interleaved with it.
    share decode        the receiver's per-share step. Ours:
                        ``ReencryptedShare.from_bytes`` (GT subgroup check);
                        Umbral: ``CapsuleFrag.from_bytes(...).verify(...)``
                        (Umbral's API makes the receiver verify every cfrag).
    combine+decrypt     ours: ``record.open_record`` with a
                        ``ThresholdKeyProvider`` over t decoded shares (Lagrange,
                        one GT multi-exp, HKDF, key check, AEAD); Umbral:
                        ``decrypt_reencrypted`` with t verified cfrags.
    owner decrypt       ours: ``record.open_record`` with ``owner_key_provider``
                        (owner-box unwrap with the cached shared key, AEAD), and
                        the pairing path (``owner_pairing_key_provider``) as an
                        extra row; Umbral: ``decrypt_original``.
    whole access t      proxy work plus doctor work for t shares. Ours: t x
                        re-encrypt + t x share decode + combine+decrypt; Umbral:
                        t x reencrypt + t x cfrag verify + decrypt_reencrypted.
                        Timed as one sequence, not as a sum of medians.

At 1 MiB both sides are dominated by the AEAD pass and by fresh 1 MiB buffers
(each a new mmap and its page faults): expect more spread there than at 1 KiB.

Targets (issue 3): encrypt, rekey, combine+decrypt, owner decrypt (wrap) and
whole access at or below Umbral's time; re-encrypt within 1.15x of the bare
prepared pairing. Rows without a target are context.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

DEFAULT_ITERATIONS = 300
QUICK_ITERATIONS = 5
WARMUP = 3
DEFAULT_SIZES = (1 << 10, 1 << 20)
REENCRYPT_BARE_TARGET = 1.15
DERIVE_G2_TARGET = 1.05
NOT_INSTALLED = "umbral-pre not installed (pip install 'emrshare[bench]')"

_OWNER_ID = "patient-bench"
_LABEL = "bench"
_CONTEXT = b"emrshare/bench/grant"


@dataclass
class Row:
    """One table row. Times are medians in microseconds; ``met`` is None without a target."""

    op: str
    ours_us: float | None
    umbral_us: float | None = None
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    bare_ratio: float | None = None
    ours: str = ""
    umbral: str = ""


@dataclass
class SizeResult:
    size: int
    label: str
    rows: list[Row] = field(default_factory=list)


def _load_umbral():
    """The umbral_pre module, or None when the optional ``bench`` extra is missing."""
    try:
        import umbral_pre
    except ImportError:
        return None
    return umbral_pre


def _umbral_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("umbral-pre")
    except metadata.PackageNotFoundError:  # pragma: no cover - imported but not installed
        return "unknown version"


def _size_label(size: int) -> str:
    if size >= 1 << 20 and size % (1 << 20) == 0:
        return f"{size >> 20} MiB"
    if size >= 1 << 10 and size % (1 << 10) == 0:
        return f"{size >> 10} KiB"
    return f"{size} B"


def _measure(fns: dict[str, Callable[[], object]], n: int) -> dict[str, float]:
    """Median microseconds of each callable over ``n`` interleaved rounds.

    A callable may return an ``int`` tagged as ``_Elapsed`` to report its own
    elapsed nanoseconds (the C timing loops), otherwise the wall time of the
    call is used.
    """
    for fn in fns.values():
        for _ in range(WARMUP):
            fn()
    samples: dict[str, list[int]] = {k: [] for k in fns}
    clock = time.perf_counter_ns
    items = list(fns.items())
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(n):
            for key, fn in items:
                t0 = clock()
                out = fn()
                t1 = clock()
                samples[key].append(out if isinstance(out, _Elapsed) else t1 - t0)
    finally:
        if was_enabled:
            gc.enable()
    return {k: statistics.median(v) / 1000.0 for k, v in samples.items()}


class _Elapsed(int):
    """Nanoseconds measured inside C (the bare loops), not by the caller."""


def _bare_prepared_pairing(capsule, prepared) -> Callable[[], _Elapsed] | None:
    """One bare mcl pairing with a precomputed G2 (native only), timed in C."""
    if capsule.backend.name != "native":
        return None
    from native import timing

    g1, qbuf = capsule._h, prepared.rk._h

    def bare() -> _Elapsed:
        return _Elapsed(timing.pairing_prepared(g1, qbuf, 1))

    return bare


def _bare_pairing(capsule, rk) -> Callable[[], _Elapsed] | None:
    """One bare mcl pairing, G2 not precomputed (the issue's ~1,200 us figure)."""
    if capsule.backend.name != "native":
        return None
    from native import timing

    g1, g2 = capsule._h, rk._h

    def bare() -> _Elapsed:
        return _Elapsed(timing.pairing(g1, g2, 1))

    return bare


class _Ours:
    """Keys, proxies, a sealed record and prepared shares for one message."""

    def __init__(self, message: bytes):
        from core import pre, record
        from core.backend import active_backend

        self.pre, self.record = pre, record
        self.backend = active_backend()
        self.message = message
        self.owner = pre.KeyPair.derive(pre.new_master_secret(), _LABEL)
        self.owner_box_sk, self.owner_box_pk = pre.box_keypair()
        self.doctor = pre.KeyPair.derive(pre.new_master_secret(), pre.RECEIVE_LABEL)
        boxes = [pre.box_keypair() for _ in range(5)]
        self.proxies = [pre.Proxy(i + 1, pk) for i, (_, pk) in enumerate(boxes)]
        self.proxy_sks = {i + 1: sk for i, (sk, _) in enumerate(boxes)}
        self.blob = self.encrypt()
        self.capsule_bytes = record.peek_header(self.blob).capsule
        self.capsule = record.peek_header(self.blob).capsule_point()
        self.shares = {
            (1, 1): self._open(self.rekey(1, 1)),
            (3, 5): self._open(self.rekey(3, 5)),
        }
        self.prepared = {key: [s.prepare() for s in shares] for key, shares in self.shares.items()}
        sealed_parts = self.standing_parts()
        self.parts = [pre.open_standing_part(s, self.proxy_sks[s.index], expected_context=_CONTEXT,
                                             expected_index=s.index) for s in sealed_parts]
        self.derived = pre.derive_key_share(self.parts[0], self.doctor.public).prepare()
        # re-encrypted shares as the doctor receives them (bytes), per grant
        self.wire = {
            key: [pre.reencrypt(self.capsule, p).to_bytes() for p in prepared]
            for key, prepared in self.prepared.items()
        }

    def _open(self, sealed):
        return [
            self.pre.open_key_share(s, self.proxy_sks[s.index], expected_context=_CONTEXT,
                                    expected_index=s.index)
            for s in sealed
        ]

    def encrypt(self) -> bytes:
        return self.record.seal(self.message, self.owner, owner_id=_OWNER_ID, label=_LABEL,
                                record_id="record-1", owner_box_secret_key=self.owner_box_sk)

    def rekey(self, t: int, n: int):
        return self.pre.make_key_shares(self.owner, self.doctor.public, self.proxies[:n], t, _CONTEXT)

    def capsule_decode(self):
        from core.curve import G1

        return G1.from_bytes(self.capsule_bytes)

    def standing_parts(self):
        return self.pre.make_standing_parts(self.owner, self.proxies, 3, _CONTEXT)

    def derive(self):
        return self.pre.derive_key_share(self.parts[0], self.doctor.public)

    def g2_mul(self):
        return self.doctor.public.p2 * self.parts[0].scalar

    def reencrypt_derived(self) -> bytes:
        return self.pre.reencrypt(self.capsule, self.derived).to_bytes()

    def reencrypt(self) -> bytes:
        return self.pre.reencrypt(self.capsule, self.prepared[(1, 1)][0]).to_bytes()

    def share_decode(self):
        return self.pre.ReencryptedShare.from_bytes(self.wire[(1, 1)][0])

    def _combine_decrypt(self, shares, t: int) -> bytes:
        provider = self.record.ThresholdKeyProvider(shares, t, self.doctor.secret)
        return self.record.open_record(self.blob, provider)[1]

    def combine_decrypt(self, t: int, shares=None) -> bytes:
        grant = (1, 1) if t == 1 else (3, 5)
        if shares is None:
            shares = self._decoded[grant]
        return self._combine_decrypt(shares[:t], t)

    def decode_all(self) -> None:
        """Decode the wire shares once (for the combine+decrypt rows, outside the timer)."""
        self._decoded = {
            key: [self.pre.ReencryptedShare.from_bytes(w) for w in wire]
            for key, wire in self.wire.items()
        }

    def owner_decrypt(self) -> bytes:
        return self.record.open_record(self.blob, self.record.owner_key_provider(self.owner_box_sk))[1]

    def owner_decrypt_pairing(self) -> bytes:
        return self.record.open_record(self.blob, self.record.owner_pairing_key_provider(self.owner))[1]

    def whole_access(self, t: int) -> bytes:
        grant = (1, 1) if t == 1 else (3, 5)
        # proxy work: t re-encryptions (each proxy holds its prepared share)
        wire = [self.pre.reencrypt(self.capsule, p).to_bytes() for p in self.prepared[grant][:t]]
        # doctor work: decode each share, combine, decrypt
        shares = [self.pre.ReencryptedShare.from_bytes(w) for w in wire]
        return self._combine_decrypt(shares, t)


class _Umbral:
    """The same flow with umbral-pre."""

    def __init__(self, umbral, message: bytes):
        self.u = umbral
        self.message = message
        self.owner_sk = umbral.SecretKey.random()
        self.owner_pk = self.owner_sk.public_key()
        self.signer_sk = umbral.SecretKey.random()
        self.signer = umbral.Signer(self.signer_sk)
        self.verifying_pk = self.signer.verifying_key()
        self.doctor_sk = umbral.SecretKey.random()
        self.doctor_pk = self.doctor_sk.public_key()
        self.capsule, self.ciphertext = umbral.encrypt(self.owner_pk, message)
        self.capsule_bytes = bytes(self.capsule)
        self.kfrags = {(1, 1): self.rekey(1, 1), (3, 5): self.rekey(3, 5)}
        self.wire = {
            key: [bytes(umbral.reencrypt(self.capsule, kf)) for kf in kfrags]
            for key, kfrags in self.kfrags.items()
        }
        self.verified = {key: [self._verify(w) for w in wire] for key, wire in self.wire.items()}

    def encrypt(self):
        return self.u.encrypt(self.owner_pk, self.message)

    def rekey(self, t: int, n: int):
        return self.u.generate_kfrags(self.owner_sk, self.doctor_pk, self.signer, t, n, True, True)

    def capsule_decode(self):
        return self.u.Capsule.from_bytes(self.capsule_bytes)

    def reencrypt(self) -> bytes:
        return bytes(self.u.reencrypt(self.capsule, self.kfrags[(1, 1)][0]))

    def _verify(self, wire: bytes):
        return self.u.CapsuleFrag.from_bytes(wire).verify(
            self.capsule, self.verifying_pk, self.owner_pk, self.doctor_pk
        )

    def share_decode(self):
        return self._verify(self.wire[(1, 1)][0])

    def _decrypt(self, vcfrags) -> bytes:
        return self.u.decrypt_reencrypted(self.doctor_sk, self.owner_pk, self.capsule, vcfrags, self.ciphertext)

    def combine_decrypt(self, t: int) -> bytes:
        grant = (1, 1) if t == 1 else (3, 5)
        return self._decrypt(self.verified[grant][:t])

    def owner_decrypt(self) -> bytes:
        return self.u.decrypt_original(self.owner_sk, self.capsule, self.ciphertext)

    def whole_access(self, t: int) -> bytes:
        grant = (1, 1) if t == 1 else (3, 5)
        wire = [bytes(self.u.reencrypt(self.capsule, kf)) for kf in self.kfrags[grant][:t]]
        return self._decrypt([self._verify(w) for w in wire])


def _bench_size(size: int, iterations: int, umbral) -> SizeResult:
    message = os.urandom(size)
    ours = _Ours(message)
    ours.decode_all()
    um = _Umbral(umbral, message) if umbral is not None else None
    # sanity: both sides really decrypt what they encrypted before anything is timed
    for t in (1, 3):
        if ours.combine_decrypt(t) != message or ours.whole_access(t) != message:
            raise RuntimeError(f"our threshold path did not round-trip (t={t})")
        if um is not None and (um.combine_decrypt(t) != message or um.whole_access(t) != message):
            raise RuntimeError(f"Umbral's threshold path did not round-trip (t={t})")
    if ours.owner_decrypt() != message or ours.owner_decrypt_pairing() != message:
        raise RuntimeError("our owner path did not round-trip")
    if um is not None and um.owner_decrypt() != message:
        raise RuntimeError("Umbral's owner path did not round-trip")

    result = SizeResult(size, _size_label(size))

    def pair(op: str, ours_fn, um_fn, ours_what: str, um_what: str, *, target: bool,
             extra: dict | None = None) -> tuple[Row, dict[str, float]]:
        fns = {"ours": ours_fn}
        if um is not None and um_fn is not None:
            fns["umbral"] = um_fn
        fns.update(extra or {})
        med = _measure(fns, iterations)
        row = Row(op, med["ours"], med.get("umbral"), ours=ours_what, umbral=um_what if um_fn else "")
        if row.umbral_us:
            row.ratio = row.ours_us / row.umbral_us
        if target:
            row.target = "<= 1.00x umbral"
            row.met = None if row.ratio is None else row.ratio <= 1.0
        result.rows.append(row)
        return row, med

    pair("encrypt", ours.encrypt, um and um.encrypt,
         "record.seal by the owner (KeyPair, owner-box wrap)", "encrypt", target=True)
    pair("rekey 1-of-1", lambda: ours.rekey(1, 1), um and (lambda: um.rekey(1, 1)),
         "make_key_shares, 1 sealed share", "generate_kfrags, 1 signed kfrag", target=True)
    pair("rekey 3-of-5", lambda: ours.rekey(3, 5), um and (lambda: um.rekey(3, 5)),
         "make_key_shares, 5 sealed shares", "generate_kfrags, 5 signed kfrags", target=True)
    pair("standing parts 3-of-5", ours.standing_parts, None,
         "make_standing_parts, 5 sealed scalars (once per label)", "", target=False)
    row, med = pair("derive share (peer, 1 doctor)", ours.derive, None,
                    "derive_key_share: rk_i = f(x_i) P2_B", "", target=False, extra={"g2_mul": ours.g2_mul})
    row.target = f"<= {DERIVE_G2_TARGET:.2f}x one G2 mul"
    row.bare_ratio = row.ours_us / med["g2_mul"]
    row.met = row.bare_ratio <= DERIVE_G2_TARGET
    result.rows.append(Row("G2 mul, secret scalar (CT)", med["g2_mul"], ours="P2_B * k (timed with derive)"))
    pair("capsule decode (proxy)", ours.capsule_decode, um and um.capsule_decode,
         "G1.from_bytes (subgroup check)", "Capsule.from_bytes", target=False)

    extra = {}
    bare_prep = _bare_prepared_pairing(ours.capsule, ours.prepared[(1, 1)][0])
    bare_plain = _bare_pairing(ours.capsule, ours.shares[(1, 1)][0].rk)
    if bare_prep is not None:
        extra["bare_prepared"] = bare_prep
    if bare_plain is not None:
        extra["bare_plain"] = bare_plain
    row, med = pair("re-encrypt (1 share)", ours.reencrypt, um and um.reencrypt,
                    "pre.reencrypt, prepared share, + to_bytes", "bytes(reencrypt)", target=False,
                    extra=extra)
    row.target = f"<= {REENCRYPT_BARE_TARGET:.2f}x bare pairing"
    if "bare_prepared" in med:
        row.bare_ratio = row.ours_us / med["bare_prepared"]
        row.met = row.bare_ratio <= REENCRYPT_BARE_TARGET
        result.rows.append(Row("bare mcl pairing (prepared G2)", med["bare_prepared"],
                               ours="emr_bench_pairing_prepared, C loop (timed with re-encrypt)"))
        result.rows.append(Row("bare mcl pairing (plain)", med.get("bare_plain"),
                               ours="emr_bench_pairing, C loop (timed with re-encrypt)"))
    else:
        row.target += " (n/a: not native)"

    pair("re-encrypt, derived share", ours.reencrypt_derived, None,
         "pre.reencrypt, prepared derived share, + to_bytes", "", target=False)
    pair("share decode (doctor, 1 share)", ours.share_decode, um and um.share_decode,
         "ReencryptedShare.from_bytes (GT subgroup check)", "CapsuleFrag.from_bytes + verify",
         target=False)
    pair("combine+decrypt, 1 share", lambda: ours.combine_decrypt(1), um and (lambda: um.combine_decrypt(1)),
         "open_record, ThresholdKeyProvider t=1", "decrypt_reencrypted, 1 cfrag", target=True)
    pair("combine+decrypt, 3 shares", lambda: ours.combine_decrypt(3), um and (lambda: um.combine_decrypt(3)),
         "open_record, ThresholdKeyProvider t=3", "decrypt_reencrypted, 3 cfrags", target=True)
    pair("owner decrypt (X25519 wrap)", ours.owner_decrypt, um and um.owner_decrypt,
         "open_record, owner_key_provider (owner box)", "decrypt_original", target=True)
    pair("owner decrypt (pairing path)", ours.owner_decrypt_pairing, um and um.owner_decrypt,
         "open_record, owner_pairing_key_provider", "decrypt_original", target=False)
    pair("whole access, t=1", lambda: ours.whole_access(1), um and (lambda: um.whole_access(1)),
         "1 reencrypt + 1 decode + combine+decrypt",
         "1 reencrypt + 1 cfrag verify + decrypt_reencrypted", target=True)
    pair("whole access, t=3", lambda: ours.whole_access(3), um and (lambda: um.whole_access(3)),
         "3 reencrypt + 3 decode + combine+decrypt",
         "3 reencrypt + 3 cfrag verify + decrypt_reencrypted", target=True)
    return result


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 1
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        load = []
    return {"cpu": cpu, "nproc": usable, "loadavg": load, "python": platform.python_version()}


def run(json_path: str | None = None, iterations: int = DEFAULT_ITERATIONS, *,
        sizes: tuple[int, ...] = DEFAULT_SIZES, out=sys.stdout) -> dict:
    """Run the benchmark, print the tables to ``out``, optionally write JSON; return the results."""
    from core.backend import backend_name

    iterations = max(1, int(iterations))
    umbral = _load_umbral()
    machine = _machine()
    backend = backend_name()
    t0 = time.perf_counter()
    results = [_bench_size(size, iterations, umbral) for size in sizes]
    elapsed = time.perf_counter() - t0
    targeted = [r for s in results for r in s.rows if r.target]
    result = {
        "benchmark": "pre",
        "backend": backend,
        "machine": machine,
        "umbral_pre": _umbral_version() if umbral is not None else None,
        "iterations": iterations,
        "elapsed_s": round(elapsed, 1),
        # a target that could not be evaluated (no Umbral, not native) counts as not met
        "all_targets_met": bool(targeted) and all(r.met is True for r in targeted),
        "sizes": [{"size": s.size, "label": s.label, "rows": [asdict(r) for r in s.rows]} for s in results],
    }
    _print(result, umbral is not None, out)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return result


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _print(result: dict, have_umbral: bool, out) -> None:
    m = result["machine"]
    print(f"emrshare bench pre: backend {result['backend']}, {m['nproc']} cpu ({m['cpu']}), "
          f"load {'/'.join(map(str, m['loadavg'])) or '?'}, python {m['python']}", file=out)
    umbral = f"umbral-pre {result['umbral_pre']}" if have_umbral else NOT_INSTALLED
    print(f"median of {result['iterations']} interleaved iterations, microseconds; {umbral}", file=out)
    head = f"{'op':<32} {'ours us':>10} {'umbral us':>10} {'ours/umbral':>11}  {'target':<28} met?"
    for size in result["sizes"]:
        print(f"\nmessage {size['label']} ({size['size']:,} bytes)", file=out)
        print(head, file=out)
        print("-" * len(head), file=out)
        for r in size["rows"]:
            target = r["target"]
            if r["bare_ratio"] is not None:
                target += f" ({r['bare_ratio']:.2f}x)"
            met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
            print(f"{r['op']:<32} {_fmt(r['ours_us'], ',.1f'):>10} {_fmt(r['umbral_us'], ',.1f'):>10} "
                  f"{_fmt(r['ratio'], '.2f'):>11}  {target:<28} {met}", file=out)
    if not have_umbral:
        print(f"\n{NOT_INSTALLED}: only our numbers are shown; ours/umbral targets are not evaluated.",
              file=out)
    missed = [f"{s['label']} {r['op']}" for s in result["sizes"] for r in s["rows"] if r["met"] is False]
    unknown = sum(1 for s in result["sizes"] for r in s["rows"] if r["target"] and r["met"] is None)
    if result["all_targets_met"]:
        verdict = "all targets met"
    else:
        verdict = "targets missed: " + ("; ".join(missed) if missed else "none")
        if unknown:
            verdict += f"; {unknown} not evaluated"
    print(f"\n{verdict} ({result['elapsed_s']} s)", file=out)
    print("what each row contains: emrshare bench pre --help", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="emrshare bench pre", description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--iterations", type=int, default=None,
                       help=f"timed iterations per operation (default {DEFAULT_ITERATIONS})")
    group.add_argument("--quick", action="store_true",
                       help=f"{QUICK_ITERATIONS} iterations: a smoke run, not stable numbers")
    args = parser.parse_args(argv)
    if args.iterations is not None and args.iterations < 1:
        parser.error("--iterations must be at least 1")
    n = QUICK_ITERATIONS if args.quick else (args.iterations or DEFAULT_ITERATIONS)
    run(args.json, n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
