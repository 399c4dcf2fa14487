"""One load test from start to report (see :mod:`agents.bench.loadtest` for the options)."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import trio

from agents.bench.loadtest import costs, faults as faultmod, target as targetmod
from agents import gcpolicy
from agents.bench.loadtest.engine import Clock, RunSettings, run_load
from agents.bench.loadtest.gcwatch import GcWatch
from agents.bench.loadtest.metrics import Recorder, histogram
from agents.bench.loadtest.progress import Progress, SetupProgress
from agents.bench.loadtest.report import PAPER_BITS
from agents.bench.loadtest.workload import EmrWorkload, WorkloadSpec

ACCESS_PHASES = ("access", "read")


@dataclass
class Options:
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    run: RunSettings = field(default_factory=RunSettings)
    rate_half: bool = False  # open loop at half the measured saturation rate of the run's mix
    saturation: float = 0.0  # seconds of closed-loop access-only load (0: skip)
    saturation_concurrency: int = 16
    target_config: Path | None = None
    processes: bool = False
    swarm: dict = field(default_factory=dict)  # SwarmSpec settings for the embedded swarm
    data_dir: Path | None = None
    faults: str | None = None  # None, "tolerated", "severe"
    probes: int = 4
    unit_iterations: int = 200
    verify_concurrency: int = 4
    progress_stream: Any = None
    tty: bool | None = None


@contextlib.asynccontextmanager
async def _open_target(opts: Options):
    if opts.target_config is not None:
        async with targetmod.existing(opts.target_config) as t:
            yield t
        return
    tmp = None
    data = opts.data_dir
    if data is None:
        tmp = Path(tempfile.mkdtemp(prefix="emrshare-loadtest-"))
        data = tmp / "swarm"
    try:
        async with targetmod.embedded(data, processes=opts.processes or bool(opts.faults), **opts.swarm) as t:
            yield t
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _traffic(endpoints: list[Any], users: set[str]) -> dict[str, list[int]]:
    """Messages and bytes by kind over user endpoints, each user-to-user message counted once (sender side)."""
    out: dict[str, list[int]] = {}
    for ep in endpoints:
        st = ep.statistics()
        for kind, tr in st.sent_by_kind.items():
            e = out.setdefault(kind, [0, 0])
            e[0] += tr.messages
            e[1] += tr.bytes
        for kind, tr in st.received_by_kind.items():
            if kind.startswith("patient."):  # sent by a doctor endpoint: counted there
                continue
            e = out.setdefault(kind, [0, 0])
            e[0] += tr.messages
            e[1] += tr.bytes
    return out


def _diff(after: dict[str, list[int]], before: dict[str, list[int]]) -> dict[str, list[int]]:
    out = {}
    for k, (m, b) in after.items():
        m0, b0 = before.get(k, [0, 0])
        if m - m0 or b - b0:
            out[k] = [m - m0, b - b0]
    return out


async def _probe(wl: EmrWorkload, counter: costs.CryptoCounter | None, n: int, swarm: Any = None) -> dict:
    """Isolated operations (nothing else running): bus traffic and crypto calls per operation, the
    data keys the doctor's memo answered, and with an embedded swarm the re-encryptions its peers
    answered from their reply caches (which of a read's peers had answered this record under this
    grant before depends on the rotation)."""
    patient = wl.users.patients[0]
    doctor = wl.readers["cardiology"][0]
    ops: tuple[str, ...] = ("store", "access", "read")
    if wl.spec.patients_offline:  # no stores: probe the reads of a record stored during setup
        ops = ("access", "read")
        rec = next(r for r in wl.records if wl.readers[r.label])
        patient = next(p for p in wl.users.patients if p.subject == rec.patient)
        doctor = wl.readers[rec.label][0]
    eps = [patient.endpoint, doctor.endpoint]
    per: dict[str, dict] = {}
    for i in range(n):
        for op in ops:
            t0 = _traffic(eps, set())
            s0 = _commit_stats((patient, doctor))
            c0 = counter.snapshot() if counter else None
            r0 = await _peer_reencryptions(swarm) if counter else None
            k0 = doctor.data_keys.hits
            p0 = time.perf_counter()
            if op == "store":
                await wl._store(patient, "fhir", "cardiology", (wl.spec.seed << 40) + 0xF00 + i, 2048)
                rec = wl.by_patient[patient.subject][-1]
            else:
                data = await doctor.read(patient.subject, rec.record_id)
                if data != await trio.to_thread.run_sync(_payload_of, rec):
                    raise AssertionError("probe read returned different bytes")
            elapsed = time.perf_counter() - p0
            await trio.sleep(0.2)  # let trailing messages (access transactions, events) land
            d = _diff(_traffic(eps, set()), t0)
            s1 = _commit_stats((patient, doctor))
            # the first access of the pair also looks certificates up and subscribes (once per pair):
            # a row of its own, so the access row is what every later access costs
            key = "access-first" if op == "access" and i == 0 and n > 1 else op
            entry = per.setdefault(key, {"runs": 0, "messages": 0, "bytes": 0, "payload": 0, "kinds": {},
                                        "latency_s": 0.0, "crypto": None, "commits": {}, "reply_cache_hits": 0,
                                        "data_key_hits": 0})
            served = _served_between(r0, await _peer_reencryptions(swarm)) if counter else None
            if served is not None:
                entry["reply_cache_hits"] += served["reply_cache_hits"]
            entry["data_key_hits"] += doctor.data_keys.hits - k0
            for k, v in s1.items():
                entry["commits"][k] = entry["commits"].get(k, 0) + v - s0.get(k, 0)
            entry["runs"] += 1
            entry["messages"] += sum(m for m, _ in d.values())
            entry["bytes"] += sum(b for _, b in d.values())
            entry["payload"] += rec.length
            entry["latency_s"] += elapsed
            for k, (m, b) in d.items():
                kk = entry["kinds"].setdefault(k, [0, 0])
                kk[0] += m
                kk[1] += b
            if counter:
                delta = counter.snapshot() - c0
                entry["crypto"] = delta if entry["crypto"] is None else _add_counts(entry["crypto"], delta)
        doctor.forget_grants(patient.subject, rec.label)  # next round: full access again
    return per


def _commit_stats(agents: tuple[Any, ...]) -> dict[str, int]:
    """The user agents' commit counters summed (:attr:`agents.client.PeerClient.commit_stats`)."""
    out: dict[str, int] = {}
    for agent in agents:
        for k, v in agent.client.commit_stats.items():
            out[k] = out.get(k, 0) + v
    return out


def _payload_of(rec: Any) -> bytes:
    from agents.bench.loadtest.workload import payload

    return payload(rec.kind, rec.seed, rec.size)


def _add_counts(a: costs.CryptoCounts, b: costs.CryptoCounts) -> costs.CryptoCounts:
    out = {k: costs.Tally(v.calls, v.cpu_ns) for k, v in a.by_primitive.items()}
    for k, v in b.by_primitive.items():
        t = out.setdefault(k, costs.Tally())
        t.calls += v.calls
        t.cpu_ns += v.cpu_ns
    return costs.CryptoCounts(out)


def _communication(probe: dict) -> dict:
    rows = []
    names = {"store": "store", "access-first": "access, first of a doctor-patient pair",
             "access": "access (request + grant + retrieval)", "read": "read (held grant)"}
    for op in sorted(probe, key=list(names).index):
        e = probe[op]
        runs = e["runs"]
        bits = e["bytes"] * 8 / runs
        payload_bits = e["payload"] * 8 / runs
        paper = PAPER_BITS["store"] if op == "store" else PAPER_BITS["access"]
        rows.append({"operation": names[op], "messages": round(e["messages"] / runs, 1), "bits": bits,
                     "bits_without_payload": bits - payload_bits, "paper_bits": paper,
                     "ratio_to_paper": (bits - payload_bits) / paper if paper else None,
                     "by_kind": {k: {"messages": m / runs, "bits": b * 8 / runs} for k, (m, b) in e["kinds"].items()},
                     "queries": e["kinds"].get("peer.query", [0, 0])[0] / 2 / runs,
                     "polls": e.get("commits", {}).get("polls", 0) / runs,
                     "notices": e.get("commits", {}).get("notices", 0) / runs,
                     "fallbacks": e.get("commits", {}).get("fallbacks", 0) / runs,
                     "probe_latency_ms": e["latency_s"] / runs * 1000})
    return {
        "per_operation": rows,
        "notes": [
            "access, first of a doctor-patient pair: the probe's first access, which also looks the other's "
            "certificate up and subscribes to commit notices (once per pair and agent run); the access row is "
            "the mean of the later ones (each with a fresh request and grant: the doctor's held grant is dropped "
            "between rounds)",
            "queries: peer.query round trips of the patient and the doctor; polls: queries repeated because a "
            "commit was not visible yet (PeerClient.commit_stats); notices: commits learned from a commit notice "
            "(topic commits/<subject>); fallbacks: submits whose notice did not come in time",
            "client-side bus bytes: every message a patient or doctor sends or receives (its encoded envelope, as "
            "the sending endpoint counts it), each message counted once; peer-orderer traffic, block distribution "
            "and storage replication are not included (the paper counts the client's messages too). In-process the "
            "users are agents of the swarm's own node: their envelopes name sender and recipient in full (no wire "
            "between them); with --processes the users reach the peers and storage nodes over channels, where the "
            "two names travel as the channel's aliases (what a deployment's users send)",
            "'w/o payload' subtracts the record's plaintext size from the total (the ciphertext carries it plus "
            "~40 B per 64 KiB chunk and a header, so a small remainder of payload stays in)",
            "the paper's 2,880 / 3,296 bits count bare group elements and hashes; ours carry compact msgpack "
            "envelopes (kind codes, ids, sender and recipient), full signed transactions "
            "(store: capsule, CID, metadata; access: request, grant with a digest per peer's share), t "
            "re-encryption shares of 292 bytes (a GT element compressed to 288 bytes on BLS12-381) each with a "
            "peer signature, the grant's t-of-n sealed key-share delivery, and the sealed record's header",
        ],
    }


async def run(opts: Options) -> dict:
    clock = Clock()
    started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    stream = opts.progress_stream if opts.progress_stream is not None else sys.stderr
    from core.backend import backend_name

    counter = costs.counting()  # before anything selects the backends without counting
    cores = os.cpu_count() or 1
    report: dict[str, Any] = {"emrshare_loadtest": 1, "started": started, "backend": backend_name(), "cores": cores}
    in_process = opts.target_config is None and not (opts.processes or opts.faults)
    async with _open_target(opts) as target:
        report["target"] = {"description": target.description, **target.info}
        if opts.faults and target.swarm is None:
            raise ValueError("fault injection needs the embedded swarm (no --target)")
        events = faultmod.schedule(target.manifest, opts.faults) if opts.faults else []
        print(f"target: {target.description}", file=stream, flush=True)
        setup = Recorder(0.0)
        t_setup = clock()
        async with contextlib.AsyncExitStack() as stack:
            with SetupProgress(stream, enabled=opts.tty) as bars:
                wl = await stack.enter_async_context(EmrWorkload.open(opts.workload, target, setup, clock,
                                                                      progress=bars))
            print(f"setup: {len(wl.users.patients)} patients and {len(wl.users.doctors)} doctors registered, "
                  f"policies set, {len(wl.records)} records stored in {clock() - t_setup:.1f} s",
                  file=stream, flush=True)
            report["setup"] = [s.summary(clock() - t_setup) for s in setup.stats().values()]
            if gcpolicy.keeping():
                gcpolicy.settle()  # the users' keys, certificates and records: out of the collected generations
            probe = await _probe(wl, counter, opts.probes, target.swarm if in_process else None)
            report["communication"] = _communication(probe)
            unit = await trio.to_thread.run_sync(costs.measure_unit_costs, target.manifest.threshold,
                                                 opts.unit_iterations)
            settings = opts.run
            sat_result = None
            if opts.saturation > 0:
                served0 = await _peer_reencryptions(target.swarm)
                sat_result = await _saturate(wl.access_only(), opts, settings, stream, counter)
                sat_result["peer_reencryptions"] = _served_between(served0, await _peer_reencryptions(target.swarm))
                report["saturation"] = sat_result
                if in_process:
                    report["efficiency"] = _efficiency(sat_result, probe, unit, cores,
                                                       peers=len(target.manifest.peers),
                                                       threshold=target.manifest.threshold)
            if opts.rate_half:
                if sat_result is None or not sat_result["access_per_s"] > 0:
                    raise ValueError("--rate half needs a saturation measurement (--saturation SECONDS)")
                if not wl.access_only_mix:
                    # half of what the swarm carries of THIS mix: its other operations cost more than an access
                    mix_result = await _saturate(wl, opts, settings, stream, counter, label="saturation (mix)")
                    report["mix_saturation"] = {k: mix_result[k] for k in ("concurrency", "window_s", "ops_per_s",
                                                                            "phases")}
                    settings.rate = mix_result["ops_per_s"] / 2
                else:
                    settings.rate = sat_result["access_per_s"] / 2
            if gcpolicy.keeping():
                gcpolicy.settle()  # what the probes and saturation runs left (ledger state, caches) too
            rec = Recorder(settings.warmup)
            total = settings.warmup + settings.duration
            prog = Progress(rec, total, stream, tty=opts.tty, label="run")
            applied: list[dict] = []
            traffic0 = _traffic([u.endpoint for u in wl.users.patients + wl.users.doctors], set())
            commits0 = _commit_stats(tuple(wl.users.patients + wl.users.doctors))
            c0, cpu0 = counter.snapshot(), time.process_time()
            run_clock = Clock()
            watch = GcWatch(run_clock)
            with watch:
                async with trio.open_nursery() as nursery:
                    if events:
                        nursery.start_soon(functools.partial(faultmod.inject, target.swarm, events, settings.warmup,
                                                             settings.duration, run_clock, prog.event,
                                                             applied=applied))
                    await run_load(wl, settings, rec, clock=run_clock, on_tick=prog.tick)
                    nursery.cancel_scope.cancel()
            prog.finish()
            skipped = faultmod.not_reached(events, applied)
            c1, cpu1 = counter.snapshot(), time.process_time()
            traffic = _diff(_traffic([u.endpoint for u in wl.users.patients + wl.users.doctors], set()), traffic0)
            commits1 = _commit_stats(tuple(wl.users.patients + wl.users.doctors))
            report["commits_under_load"] = {k: v - commits0.get(k, 0) for k, v in commits1.items()}
            # faults that left nodes down: bring them back before the read-back
            if target.swarm is not None and opts.faults:
                for agent, proc in list(target.swarm.processes.items()):
                    with contextlib.suppress(Exception):
                        target.swarm.resume(agent)
                    if proc.poll() is not None:
                        await target.swarm.start_process(agent)
                etcd = target.swarm.etcd
                for member in range(len(etcd.names) if etcd is not None else 0):
                    if not etcd.running(member):
                        etcd.start_member(member)
            print(f"verifying {len(wl.records)} acknowledged records ...", file=stream, flush=True)
            report["correctness"] = await wl.verify(concurrency=opts.verify_concurrency)
            report["denials"] = {**wl.checks, "wrong": list(wl.wrong)}
            # what the agents were told was committed: a fault test checks each is on every peer exactly once
            report["acknowledged"] = {"store": [[r.patient, r.record_id] for r in wl.records],
                                      "revoke": list(wl.revoked)}
            report["workload"] = {k: v for k, v in asdict(opts.workload).items()}
            report["settings"] = asdict(settings)
            _fill_run(report, rec, settings, c1 - c0, cpu1 - cpu0, traffic, applied, in_process)
            report["gc"] = {**watch.summary(settings.warmup, report["window_s"] + settings.warmup),
                            "scope": "every agent (in-process swarm)" if in_process else "the load test's clients",
                            "kept": gcpolicy.keeping()}
            if skipped:
                report.setdefault("faults", {"baseline_per_s": None, "faults": []})["not_reached"] = skipped
    report["targets"] = _targets(report, opts)
    return report


def _fill_run(report: dict, rec: Recorder, settings: RunSettings, crypto: costs.CryptoCounts, cpu: float,
              traffic: dict, applied: list[dict], in_process: bool) -> None:
    st = rec.stats()
    _, last = rec.window()
    end = min(last, settings.warmup + settings.duration) if settings.duration > 0 else last
    window = max(1e-9, end - settings.warmup)
    report["window_s"] = window
    report["warmup_ops_excluded"] = rec.warmup_ops
    order = ["store", "access", "read", "denied", "revoke", "revoke-skipped"]
    report["phases"] = [st[p].summary(window) for p in sorted(st, key=lambda p: (order.index(p) if p in order else 99, p))]
    acc = [lat for p in ACCESS_PHASES if p in st for lat in st[p].latencies]
    acc.sort()
    from agents.bench.loadtest.metrics import percentile

    report["access_all"] = {"count": len(acc), "p50_ms": percentile(acc, 50) * 1000 if acc else None,
                            "p99_ms": percentile(acc, 99) * 1000 if acc else None}
    report["timeline"] = rec.timeline(1.0, until=end)
    # does the access latency drift over the run (issue 14)? p50/p99 of accesses and reads per 5 s
    report["access_windows"] = rec.timeline(5.0, phases=ACCESS_PHASES, until=end)
    report["timeline_by_phase"] = {p: rec.timeline(1.0, phases=[p], until=end) for p in st}
    report["histograms"] = {p: [[lo * 1000, hi * 1000, n] for lo, hi, n in histogram(s.latencies)]
                            for p, s in st.items() if s.latencies}
    bound = crypto.cpu_s(costs.BOUND_PRIMITIVES)
    report["crypto"] = {
        "scope": "every agent (in-process swarm)" if in_process else "this process only (the load test's clients)",
        "method": "calls to the backend's pairing/GT/EC methods and secp256k1 sign/verify counted and timed "
                  "with time.thread_time around each call, during the measured window",
        "run_totals": crypto.to_dict(),
        "bound_cpu_s": bound,
        "process_cpu_s": cpu,
        "bound_share_percent": bound / cpu * 100 if cpu > 0 else None,
    }
    report["bus_traffic_run"] = {
        "by_kind": {k: {"messages": m, "bytes": b} for k, (m, b) in sorted(traffic.items())},
        "total_bytes": sum(b for _, b in traffic.values()),
        "bytes_per_s": sum(b for _, b in traffic.values()) / window,
    }
    if applied:
        from agents.bench.loadtest.faults import impact

        report["faults"] = impact(report["timeline"], applied, samples=rec.samples)


async def _saturate(workload, opts: Options, settings: RunSettings, stream, counter, *,
                    label: str = "saturation") -> dict[str, Any]:
    """A closed-loop run of ``workload`` at ``opts.saturation_concurrency`` for ``opts.saturation``
    seconds: accesses (and all operations) completed per second, and the process's CPU and crypto."""
    sat_rec = Recorder()
    sat = RunSettings(duration=opts.saturation, warmup=min(3.0, opts.saturation / 3),
                      concurrency=opts.saturation_concurrency, seed=settings.seed + 7, grace=settings.grace)
    prog = Progress(sat_rec, sat.warmup + sat.duration, stream, tty=opts.tty, label=label)
    c0, cpu0 = counter.snapshot(), time.process_time()
    await run_load(workload, sat, sat_rec, on_tick=prog.tick)
    prog.finish()
    c1, cpu1 = counter.snapshot(), time.process_time()
    st = sat_rec.stats()
    a, b = sat_rec.window()
    win = max(1e-9, min(b, sat.warmup + sat.duration) - sat.warmup)
    ok = {p: st[p].succeeded for p in ACCESS_PHASES if p in st}
    return {"concurrency": sat.concurrency, "window_s": win,
            "access_per_s": sum(ok.values()) / win, "by_phase": ok,
            "ops_per_s": sum(x.succeeded for x in st.values()) / win,
            "phases": [x.summary(win) for x in st.values()],
            "process_cpu_s": cpu1 - cpu0, "crypto": (c1 - c0).to_dict()}


async def _peer_reencryptions(swarm: Any) -> dict[str, tuple[int, int]] | None:
    """(shares served, of them answered from the reply cache) per peer of the embedded swarm:
    in-process from the peer agents, with --processes from each node's ``/status`` (its control
    socket); None without an embedded swarm or when a peer does not say."""
    if swarm is None:
        return None
    out: dict[str, tuple[int, int]] = {}
    for peer in swarm.manifest.peers:
        runner = swarm.runners.get(peer)
        try:
            if runner is not None:
                status = runner.status()
            else:
                from agents.cli.node import ask_node
                from agents.node import load_config

                config = load_config(swarm.files.dir / "nodes" / f"{peer}.toml")
                status = await trio.to_thread.run_sync(ask_node, config, "/status", 5.0)
            out[peer] = (int(status["reencryptions"]), int(status["reencryption_reply_cache_hits"]))
        except Exception:  # (a peer that does not answer, or an older one: the figure is left out)
            return None
    return out


def _served_between(before: dict[str, tuple[int, int]] | None,
                    after: dict[str, tuple[int, int]] | None) -> dict[str, Any] | None:
    """The peers' re-encryptions between two :func:`_peer_reencryptions` readings, and how many the
    reply cache answered (a repeat read of the same record under the same grant: no pairing)."""
    if before is None or after is None or before.keys() != after.keys() or any(
            after[p][0] < before[p][0] or after[p][1] < before[p][1] for p in after):  # (a peer restarted)
        return None
    served = sum(after[p][0] - before[p][0] for p in after)
    hits = sum(after[p][1] - before[p][1] for p in after)
    return {"served": served, "reply_cache_hits": hits,
            "reply_cache_percent": hits / served * 100 if served else None}


def _efficiency(sat: dict, probe: dict, unit: dict, cores: int, *, peers: int, threshold: int) -> dict:
    n_access = sat["by_phase"].get("access", 0)
    n_read = sat["by_phase"].get("read", 0)
    total = n_access + n_read
    per: dict[str, float] = {}
    essential: dict[str, float] = {}
    for op, n in (("access", n_access), ("read", n_read)):
        e = probe.get(op)
        if not e or not e["crypto"] or not total:
            continue
        weight = n / total
        for name in costs.BOUND_PRIMITIVES:
            per[name] = per.get(name, 0.0) + e["crypto"].calls(name) / e["runs"] * weight
        # a share a peer's reply cache answered counts as the pairing and signature it stands for:
        # the limit is the crypto an access calls for, whichever peers a probe read happened to ask
        hits = e.get("reply_cache_hits", 0) / e["runs"]
        for name in ("pairing", "ecdsa_sign"):
            per[name] = per.get(name, 0.0) + hits * weight
        # likewise a data key the doctor's memo answered, as the GT multi-exponentiation it stands for
        per["gt_multi_pow"] = per.get("gt_multi_pow", 0.0) + e.get("data_key_hits", 0) / e["runs"] * weight
        # the essential bound: the paper's pairings (one per re-encryption: t per access, also where
        # a peer answers a repeat read from its reply cache without one), the GT operations as
        # counted, and for each ledger transaction the operation submits one signature and one
        # verification per peer
        txs = e["kinds"].get("peer.submit", [0, 0])[0] / 2 / e["runs"]
        essential["pairing"] = essential.get("pairing", 0.0) + threshold * weight
        for name in ("gt_decode", "gt_multi_pow"):
            essential[name] = essential.get(name, 0.0) + e["crypto"].calls(name) / e["runs"] * weight
        essential["ecdsa_sign"] = essential.get("ecdsa_sign", 0.0) + txs * weight
        essential["ecdsa_verify"] = essential.get("ecdsa_verify", 0.0) + txs * peers * weight
    bound = costs.crypto_bound(per, unit, cores)
    essential_bound = costs.crypto_bound(essential, unit, cores)
    measured = sat["access_per_s"]
    done = max(1, total)
    return {
        "essential_bound": essential_bound,
        "essential_percent": (measured / essential_bound["limit_per_s"] * 100
                              if essential_bound["limit_per_s"] else None),
        "measured_per_s": measured,
        "process_cpu_per_access_ms": sat["process_cpu_s"] / done * 1000,
        "machine_share_used_percent": sat["process_cpu_s"] / (sat["window_s"] * cores) * 100,
        "bound": bound,
        "percent": measured / bound["limit_per_s"] * 100 if bound["limit_per_s"] else None,
        "method": "calls per access: counted on isolated probe operations (every agent in this process; a "
                  "re-encryption share a peer's reply cache answered counts as the pairing and signature it "
                  "stands for, a data key the doctor's memo answered as its GT multi-exponentiation), "
                  f"weighted by the saturation run's mix of full accesses ({n_access}) and reads with a held grant "
                  f"({n_read}); unit costs: medians timed in this run; limit = cores / sum(calls x unit cost)",
        "probe_reply_cache_hits": {op: e.get("reply_cache_hits", 0) / e["runs"] for op, e in probe.items()},
        "probe_data_key_hits": {op: e.get("data_key_hits", 0) / e["runs"] for op, e in probe.items()},
        "probe_per_op": {op: (e["crypto"].to_dict(per=e["runs"]) if e["crypto"] else {}) for op, e in probe.items()},
    }


def _targets(r: dict, opts: Options) -> list[dict]:
    out = []
    c = r.get("correctness", {})
    out.append({"what": "lost or corrupted records", "value": f"{c.get('lost')} lost, {c.get('corrupted')} corrupted",
                "target": "0 lost, 0 corrupted", "met": c.get("lost") == 0 and c.get("corrupted") == 0})
    d = r.get("denials", {})
    out.append({"what": "denials for the wrong reason", "value": d.get("wrong_outcomes", 0), "target": 0,
                "met": d.get("wrong_outcomes", 0) == 0})
    p99 = (r.get("access_all") or {}).get("p99_ms")
    out.append({"what": "access p99 (full accesses and reads) at half the saturation rate (of the run's mix)",
                "value": f"{p99:.0f} ms" if p99 is not None else "-", "target": "< 250 ms",
                "met": (p99 is not None and p99 < 250) if opts.rate_half else None})
    eff = (r.get("efficiency") or {}).get("percent")
    out.append({"what": "efficiency (access throughput / crypto-bound limit)",
                "value": f"{eff:.1f} %" if eff is not None else "-", "target": ">= 50 %",
                "met": (eff >= 50) if eff is not None else None})
    ess = (r.get("efficiency") or {}).get("essential_percent")
    out.append({"what": "efficiency against the essential bound (the paper's pairings and GT operations, one "
                        "signature and its verifications per ledger transaction)",
                "value": f"{ess:.1f} %" if ess is not None else "-", "target": ">= 25 %",
                "met": (ess >= 25) if ess is not None else None})
    return out
