"""``emrshare loadtest``: load testing, fault injection and the performance report.

What it does, in order:

1. Target: an embedded swarm it starts (default: in-process; ``--processes``
   or ``--faults``: one process per agent), or an existing deployment
   (``--target FILE``, format in :mod:`agents.bench.loadtest.target`).
2. Setup: opens ``--patients`` patient and ``--doctors`` doctor agents,
   registers them, sets every patient's policy and stores one record each
   (timed, reported as setup phases, outside the measured window; progress
   bars on stderr when it is a terminal).
3. Probe: a few isolated store / access / read operations, measuring bus
   bytes per operation (next to the paper's Table 4) and, with an in-process
   swarm, every pairing, GT and ECDSA call they cause (a share a peer's reply
   cache answered, and a data key the doctor's memo answered, count as the
   pairing and signature, and the GT multi-exponentiation, they stand for: which
   of them a probe read meets depends on which peers it asked).
4. Unit costs of pairing, GT decode, GT multi-exponentiation and ECDSA
   sign/verify, timed now, in this run.
5. Optional saturation run (``--saturation SECONDS``): closed loop, accesses
   only, at ``--saturation-concurrency``; gives the access saturation rate and
   the efficiency figure (throughput / crypto-bound limit, see
   :mod:`agents.bench.loadtest.costs`), and, on the embedded swarm, how many
   re-encryption shares the peers served meanwhile and what share of them their
   reply caches answered (a repeat read of a record under the same grant makes
   no pairing: with 20 records and 5 doctors nearly every saturation read is one).
6. The run: the workload mix (:mod:`agents.bench.loadtest.workload`) closed-loop at
   ``--concurrency`` or open-loop at ``--rate`` (``--rate half``: half the
   saturation rate of the run's own mix, measured closed loop like the access
   saturation right before the run: a store costs several accesses, so half
   the ACCESS saturation offered as the default mix overloads the swarm), for ``--duration`` seconds or ``--ops`` operations after
   ``--warmup`` seconds that are not recorded; live progress on stderr;
   faults injected on schedule (``--faults``, :mod:`agents.bench.loadtest.faults`).
7. Read-back: every acknowledged record is read by an authorized doctor and
   compared byte for byte; the report says "0 lost, 0 corrupted" or lists them.
8. Report: terminal table (with the access latency, full accesses and reads,
   p50/p99 of each 5 s of the measured window: does it drift over the run; the cycle collections of the measured window,
   :mod:`agents.bench.loadtest.gcwatch`: with the embedded swarm, whose process
   runs :func:`agents.gcpolicy.gc_keeper`, the setup's and the saturation runs'
   state is frozen right before the run), ``--json FILE``, ``--html FILE`` (a self-contained
   page: summary tables, then matplotlib charts as inline SVG; needs the
   ``bench`` extra).

Exit status: 0 when no record was lost or corrupted and every denial had the
right reason; 1 otherwise; 2 for bad options.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from agents.cli.base import UsageError, check_output_path, fail

from .faults import FAULTS, parse_spec as parse_faults
from .engine import Op as Op, Result as Result, RunSettings as RunSettings, run_load as run_load
from .metrics import Recorder as Recorder, Sample as Sample, percentile as percentile
from .report import render_html as render_html, render_text as render_text, to_json as to_json
from .runner import Options as Options, run as run
from .workload import DEFAULT_MIX, WorkloadSpec as WorkloadSpec

__all__ = ["main", "run", "Options", "WorkloadSpec", "RunSettings", "Recorder", "Sample", "Op", "Result",
           "run_load", "percentile", "render_text", "render_html", "to_json"]


def _mix(text: str) -> dict[str, float]:
    out = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, weight = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"mix entries look like store=25, not {part!r}")
        try:
            out[name.strip()] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad weight in {part!r}") from None
    return out


def _faults(text: str) -> str:
    try:
        return parse_faults(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="emrshare loadtest", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Load test a swarm (the paper's phases under load), with optional fault injection.",
        epilog="examples:\n"
               "  emrshare loadtest                                    # 20 patients, 5 doctors, 30 s\n"
               "  emrshare loadtest --patients 200 --doctors 50 --duration 60 --saturation 15 --rate half \\\n"
               "                    --json report.json --html report.html\n"
               "  emrshare loadtest --faults --duration 60 --rate 10   # kill/stall/restart during the run\n"
               "  emrshare loadtest --ordering etcd --faults orderer-leader,etcd-leader,peer-kill,storage-stall \\\n"
               "                    --duration 20 --rate 6              # four faults, one after the other\n"
               "  emrshare loadtest --target deployment.toml           # an existing deployment\n\n"
               "deployment.toml: manifest = \"manifest.json\", [registrars.<org>] org_dir = \"...\" and\n"
               "key_file = \"...\" per organization (its registrar signs the test users' tokens), optional\n"
               "users_dir; paths relative to the file.")
    g = p.add_argument_group("workload")
    g.add_argument("--patients", type=int, default=20, help="simulated patients (default 20)")
    g.add_argument("--doctors", type=int, default=5, help="simulated doctors (default 5)")
    g.add_argument("--mix", type=_mix, default=None,
                   help="operation weights, default " + ",".join(f"{k}={v:g}" for k, v in DEFAULT_MIX.items()))
    g.add_argument("--imaging-fraction", type=float, default=0.03,
                   help="share of stores that are multi-MiB imaging blobs (default 0.03)")
    g.add_argument("--imaging-mib", type=float, nargs=2, default=(1.0, 4.0), metavar=("MIN", "MAX"),
                   help="size range of imaging blobs in MiB (default 1 4)")
    g.add_argument("--request-timeout", type=float, default=5.0, help="agents' request timeout, seconds")
    g.add_argument("--seed", type=int, default=1, help="seed of the workload's random choices (default 1)")
    g.add_argument("--patients-offline", action="store_true",
                   help="patients set their policy with a standing delegation, store their initial records and "
                        "stop; doctors are served by the peers alone (no store or revoke operations)")
    g = p.add_argument_group("load")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--concurrency", type=int, default=None, help="closed loop: operations in flight (default 8)")
    mode.add_argument("--rate", default=None,
                      help="open loop: arrivals per second, or 'half' (half the saturation rate measured with the run's "
                           "mix, closed loop; the access saturation is measured as well)")
    g.add_argument("--poisson", action="store_true", help="open loop: Poisson arrivals instead of evenly spaced")
    g.add_argument("--duration", type=float, default=30.0, help="measured seconds after the warm-up (default 30)")
    g.add_argument("--warmup", type=float, default=5.0, help="seconds not recorded at the start (default 5)")
    g.add_argument("--ops", type=int, default=None, help="stop after this many recorded operations")
    g.add_argument("--max-inflight", type=int, default=512,
                   help="open loop: most operations in flight before arrivals are dropped (default 512)")
    g.add_argument("--saturation", type=float, default=None, metavar="SECONDS",
                   help="first measure the access saturation rate (and with --rate half, the mix's) for this long "
                        "(default 0, or 15 with --rate half)")
    g.add_argument("--saturation-concurrency", type=int, default=16,
                   help="operations in flight while measuring saturation (default 16)")
    g = p.add_argument_group("target")
    g.add_argument("--target", type=Path, help="existing deployment config (TOML/JSON); default: embedded swarm")
    g.add_argument("--processes", action="store_true", help="embedded swarm with one process per agent")
    g.add_argument("--hospitals", type=int, help="embedded swarm: hospitals (default 2)")
    g.add_argument("--peers", type=int, help="embedded swarm: peers (default 4)")
    g.add_argument("--threshold", type=int, help="embedded swarm: peers needed to re-encrypt (default 2)")
    g.add_argument("--storage-nodes", type=int, help="embedded swarm: storage nodes (default 3)")
    g.add_argument("--data", type=Path, help="embedded swarm data directory (kept; default: temporary, removed)")
    g.add_argument("--batch-timeout", type=float, metavar="SECONDS",
                   help="embedded swarm: the orderer's least time between two block cuts under load (default "
                        "the swarm's, 0.03; a transaction reaching an idle orderer is cut at once)")
    g.add_argument("--reply-cache", type=int, metavar="N",
                   help="embedded swarm: signed re-encryption replies each peer keeps for repeat reads (default "
                        "the swarm's, 4096; 0: none, every read runs its pairings: the saturation phase repeats "
                        "its reads, and this measures it without that help)")
    g.add_argument("--ordering", choices=("embedded", "etcd"),
                   help="embedded swarm: ordering service (default embedded; etcd: two orderer nodes over a local "
                        "3-member etcd cluster, and --faults also kills the leading orderer node and the etcd leader)")
    g.add_argument("--faults", nargs="?", const="tolerated", type=_faults, metavar="SCHEDULE|NAME,...",
                   help="inject faults during the run (implies --processes): the schedule tolerated (default) or "
                        "severe, or named faults one after the other, each undone before the next: "
                        + ", ".join(FAULTS))
    g = p.add_argument_group("output")
    g.add_argument("--json", type=Path, help="write the JSON report here")
    g.add_argument("--html", type=Path,
                   help="write the HTML report here: one offline page, summary tables first, then charts "
                        "with the faults marked (needs matplotlib, from the bench extra)")
    g.add_argument("--probes", type=int, default=4, help="isolated probe operations of each kind (default 4; the first access is reported in a row of its own)")
    g.add_argument("--breakdown", action="store_true",
                   help="also print the bus traffic of each probed operation by message kind (messages, bits, "
                        "bits per message, share); the JSON report always has it (by_kind)")
    g.add_argument("--verbose", "-v", action="store_true", help="log what happens (emrshare's global -v)")
    return p


def options_from_args(args: argparse.Namespace) -> Options:
    wspec = WorkloadSpec(patients=args.patients, doctors=args.doctors, imaging_fraction=args.imaging_fraction,
                         imaging_mib=tuple(args.imaging_mib), request_timeout=args.request_timeout, seed=args.seed,
                         patients_offline=args.patients_offline)
    if args.mix is not None:
        wspec.mix = args.mix
    wspec.check()
    if not 0 < args.request_timeout < math.inf:
        raise ValueError("--request-timeout must be > 0 seconds")
    if args.concurrency is not None and args.concurrency < 1:
        raise ValueError("--concurrency must be >= 1")
    if args.max_inflight < 1 or args.saturation_concurrency < 1:
        raise ValueError("--max-inflight and --saturation-concurrency must be >= 1")
    if args.probes < 1:
        raise ValueError("--probes must be >= 1")
    if args.saturation is not None and not 0 <= args.saturation < math.inf:
        raise ValueError("--saturation must be >= 0 seconds (0: no saturation run)")
    rate_half = args.rate == "half"
    if rate_half and args.saturation == 0:
        raise ValueError("--rate half needs a saturation measurement: give --saturation SECONDS > 0 (default 15)")
    rate = None
    if args.rate is not None and not rate_half:
        try:
            rate = float(args.rate)
        except ValueError:
            raise ValueError(f"--rate must be a number or 'half', not {args.rate!r}") from None
    settings = RunSettings(duration=args.duration, warmup=args.warmup,
                           concurrency=None if (rate or rate_half) else (args.concurrency or 8),
                           rate=rate if not rate_half else 1.0, poisson=args.poisson, ops=args.ops,
                           max_inflight=args.max_inflight, seed=args.seed)
    settings.check()
    saturation = args.saturation if args.saturation is not None else (15.0 if rate_half else 0.0)
    if args.batch_timeout is not None and not args.batch_timeout > 0:
        raise ValueError("--batch-timeout must be positive")
    if args.reply_cache is not None and args.reply_cache < 0:
        raise ValueError("--reply-cache must be >= 0 (0: no reply cache)")
    swarm = {k: getattr(args, k) for k in ("hospitals", "peers", "threshold", "storage_nodes", "ordering",
                                           "batch_timeout", "reply_cache")
             if getattr(args, k, None) is not None}
    if args.target and (args.faults or args.processes or swarm or args.data):
        raise ValueError("--target excludes the embedded swarm's options (--faults, --processes, --peers, ...)")
    return Options(workload=wspec, run=settings, rate_half=rate_half, saturation=saturation,
                   saturation_concurrency=args.saturation_concurrency, target_config=args.target,
                   processes=args.processes, swarm=swarm, data_dir=args.data, faults=args.faults,
                   probes=args.probes)


def main(argv: list[str] | None = None) -> int:
    import trio

    from agents.bench.loadtest.costs import counting

    counting()  # the crypto call counters are chosen with the backends, before any crypto runs
    args = parser().parse_args(argv if argv is not None else sys.argv[1:])
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        opts = options_from_args(args)
    except ValueError as exc:
        raise UsageError("loadtest", str(exc), "see `emrshare loadtest --help`") from None
    if args.html:
        try:
            import matplotlib  # noqa: F401  (before the run, not after it)
        except ImportError:
            raise UsageError("loadtest", "cannot write the HTML report: matplotlib is not installed",
                             "install the bench extra (pip install -e '.[bench]') or drop --html") from None
    for option, path in (("--json", args.json), ("--html", args.html)):  # not after the run
        if path is not None:
            check_output_path(path, "loadtest", option=option)
    if args.data is not None:  # a new directory is made in an existing one
        if args.data.exists() and not args.data.is_dir():
            fail("loadtest", f"--data {args.data} is a file", "give the swarm's data directory")
        if not args.data.exists() and not args.data.parent.is_dir():
            fail("loadtest", f"directory {args.data.parent} does not exist",
                 "create it first, or choose another --data")
    try:
        report = trio.run(run, opts)
    except ValueError as exc:  # (what only the run finds, e.g. --rate half after a saturation run of 0 accesses)
        raise UsageError("loadtest", str(exc), "see `emrshare loadtest --help`") from None
    sys.stdout.write(render_text(report, breakdown=args.breakdown))
    if args.json:
        args.json.write_text(to_json(report))
        print(f"JSON report: {args.json}")
    if args.html:
        args.html.write_text(render_html(report))
        print(f"HTML report: {args.html}")
    c = report.get("correctness", {})
    good = c.get("lost") == 0 and c.get("corrupted") == 0 and not report.get("denials", {}).get("wrong_outcomes")
    return 0 if good else 1
