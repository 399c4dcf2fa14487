"""emrshare loadtest: metrics, the engine against a fake workload, reports, counters, faults,
and a short real load test on a small in-process swarm (asserts correctness, not speed)."""

from __future__ import annotations

import io
import json
import math
import random
import re
from types import SimpleNamespace

import pytest
import trio
from hypothesis import given, strategies as st

from agents.bench.loadtest import Op, Recorder, Result, RunSettings, percentile, render_html, render_text, run_load, to_json
from agents.bench.loadtest import costs, faults
from agents.bench.loadtest.metrics import histogram
from agents.bench.loadtest.progress import Progress
from agents.bench.loadtest.report import breakdown_rows


# ------------------------------------------------------------------ metrics


def test_percentile_nearest_rank():
    values = sorted(float(i) for i in range(1, 101))
    assert percentile(values, 50) == 50.0
    assert percentile(values, 90) == 90.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(values, 101)


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=200),
       st.floats(min_value=0, max_value=100), st.floats(min_value=0, max_value=100))
def test_percentile_is_an_element_and_monotone(values, p, q):
    values.sort()
    lo, hi = sorted((p, q))
    assert percentile(values, p) in values
    assert percentile(values, lo) <= percentile(values, hi)


def test_recorder_excludes_warmup_and_groups_failures():
    rec = Recorder(warmup=1.0)
    rec.record("store", 0.5, 0.6, True)  # scheduled in the warm-up: not recorded
    rec.record("store", 1.0, 1.2, True, nbytes=10)
    rec.record("store", 1.5, 1.6, False, "Unavailable [unavailable]")
    rec.record("read", 2.0, 2.05, True)
    rec.record("read", 2.1, 2.3, False, "timeout")
    rec.record("read", 2.2, 2.4, False, "timeout")
    assert rec.warmup_ops == 1
    stats = rec.stats()
    assert (stats["store"].attempted, stats["store"].succeeded, stats["store"].failed) == (2, 1, 1)
    assert stats["store"].reasons == {"Unavailable [unavailable]": 1}
    assert stats["read"].reasons == {"timeout": 2}
    assert stats["store"].nbytes == 10
    s = stats["read"].summary(window=2.0)
    assert s["throughput_per_s"] == 0.5
    assert s["latency_ms"]["p99"] == pytest.approx(50.0)
    tl = rec.timeline(1.0)
    assert [b["ok"] for b in tl] == [1, 1]
    assert [b["failed"] for b in tl] == [1, 2]


def test_histogram_counts_everything():
    vals = [0.001 * (1 + i) for i in range(100)]
    bins = histogram(vals, bins=10)
    assert sum(n for _, _, n in bins) == 100
    assert bins[0][0] == pytest.approx(0.001) and bins[-1][1] == pytest.approx(0.1)
    assert histogram([]) == []


# ------------------------------------------------------------------ engine


class FakeWorkload:
    """Ops that sleep; every fifth fails; 'slow' ops for overload tests."""

    def __init__(self, delay: float = 0.005):
        self.delay = delay
        self.started = 0
        self.running = 0
        self.max_running = 0

    def classify(self, exc: BaseException) -> str:
        return f"{type(exc).__name__}: {exc}"

    def next_op(self, rng: random.Random) -> Op:
        self.started += 1
        n = self.started

        async def run() -> Result:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            try:
                await trio.sleep(self.delay)
                if n % 5 == 0:
                    raise RuntimeError("injected")
                return Result(phase="read" if n % 2 else None, nbytes=3)
            finally:
                self.running -= 1

        return Op("write", run)


async def test_closed_loop_concurrency_and_failures():
    wl = FakeWorkload()
    rec = Recorder()
    with trio.fail_after(10):
        await run_load(wl, RunSettings(duration=0.4, warmup=0.1, concurrency=3), rec)
    stats = rec.stats()
    assert wl.max_running == 3
    assert set(stats) <= {"read", "write"} and stats
    failed = sum(s.failed for s in stats.values())
    assert failed > 0
    assert all(r == "RuntimeError: injected" for s in stats.values() for r in s.reasons)
    assert rec.warmup_ops > 0
    assert all(s.start >= 0.1 for s in rec.samples)
    assert stats["read"].nbytes == 3 * stats["read"].succeeded


async def test_ops_limit_stops_the_run():
    wl = FakeWorkload()
    rec = Recorder()
    with trio.fail_after(10):
        await run_load(wl, RunSettings(duration=60, warmup=0, concurrency=2, ops=20), rec)
    assert 20 <= len(rec.samples) <= 22  # the in-flight ones finish


async def test_open_loop_records_overload_and_cuts_off_stragglers():
    wl = FakeWorkload(delay=5.0)  # far slower than the run
    rec = Recorder()
    with trio.fail_after(10):
        await run_load(wl, RunSettings(duration=0.3, warmup=0, rate=50, concurrency=None, max_inflight=4,
                                       grace=0.1), rec)
    reasons = {r for s in rec.stats().values() for r in s.reasons}
    assert "overload (in-flight cap)" in reasons
    assert "cut off at end of run" in reasons
    assert wl.max_running <= 4
    # latency counts from the scheduled arrival
    assert all(s.end >= s.start for s in rec.samples)


def test_settings_are_checked():
    with pytest.raises(ValueError):
        RunSettings(rate=None, concurrency=0).check()
    with pytest.raises(ValueError):
        RunSettings(rate=-1).check()
    with pytest.raises(ValueError):
        RunSettings(duration=0, ops=None).check()


def test_progress_plain_lines():
    rec = Recorder(warmup=1.0)
    out = io.StringIO()
    prog = Progress(rec, 10, out, tty=False, plain_every=1.0)
    prog.tick(0.5)
    rec.record("read", 1.1, 1.3, True)
    rec.record("read", 1.2, 1.9, False, "timeout")
    prog.tick(2.0)
    prog.tick(2.1)  # too soon: no line
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "warm-up" in lines[0]
    assert "errors 1" in lines[1] and "p50 200ms" in lines[1]


# ------------------------------------------------------------------ reports


def test_breakdown_lists_each_operations_kinds_largest_first():
    comm = {"per_operation": [
        {"operation": "access (request + grant + retrieval)", "messages": 4.0, "bits": 3000.0, "by_kind": {
            "peer.query": {"messages": 2.0, "bits": 1000.0}, "storage.get": {"messages": 2.0, "bits": 2000.0}}},
        {"operation": "read (held grant)", "messages": 0.0, "bits": 0.0, "by_kind": {}}]}
    rows = breakdown_rows(comm)
    assert rows == [["access", "storage.get", "2.0", "2,000", "1,000", "66.7"],
                    ["access", "peer.query", "2.0", "1,000", "500", "33.3"]]
    report = {"communication": comm}
    assert "storage.get" in render_text(report, breakdown=True)
    assert "storage.get" not in render_text(report)


def _synthetic_report() -> dict:
    rec = Recorder(warmup=0.0)
    for i in range(50):
        rec.record("read", i * 0.1, i * 0.1 + 0.01 * (1 + i % 7), i % 10 != 0, "timeout")
    st_ = rec.stats()
    return {
        "started": "now", "backend": "native", "cores": 2,
        "target": {"description": "test <target>"},
        "settings": {"rate": None, "concurrency": 2, "warmup": 0.0},
        "workload": {"patients": 1, "doctors": 1, "mix": {"access": 1}},
        "window_s": 5.0,
        "phases": [s.summary(5.0) for s in st_.values()],
        "timeline": rec.timeline(1.0),
        "timeline_by_phase": {"read": rec.timeline(1.0, phases=["read"])},
        "histograms": {"read": [[lo * 1e3, hi * 1e3, n] for lo, hi, n in histogram(st_["read"].latencies)]},
        "correctness": {"acknowledged": 3, "verified": 2, "lost": 1, "corrupted": 0,
                        "lost_records": [{"patient": "p", "record_id": "r1", "label": "labs", "size": 9,
                                          "last_error": "NotEnoughPeers"}], "corrupted_records": []},
        "faults": faults.impact(rec.timeline(1.0), [{"t": 2.0, "done": 2.1, "action": "kill", "agents": ["peer-a1"],
                                                     "why": "x", "error": None}]),
        "targets": [{"what": "lost", "value": "1 lost", "target": "0", "met": False}],
    }


def test_text_report_lists_lost_records_and_failures():
    text = render_text(_synthetic_report())
    assert "1 lost, 0 corrupted" in text
    assert "LOST p/r1" in text
    assert "timeout" in text
    assert "MISSED" in text


def test_text_report_shows_the_access_latency_of_each_5_s_window():
    rec = Recorder(warmup=1.0)
    for i in range(40):  # reads and accesses finishing in 0-5 s take 10 ms, in 5-10 s 50 ms; stores are left out
        t = 1.0 + i * 0.25
        rec.record("read" if i % 2 else "access", t, t + (0.01 if t + 0.01 < 6.0 else 0.05), True)
        rec.record("store", t, t + 1.0, True)
    report = _synthetic_report()
    report["settings"]["warmup"] = 1.0
    report["access_windows"] = rec.timeline(5.0, phases=("access", "read"), until=11.0)
    lines = render_text(report).splitlines()
    at = lines.index("access latency (full accesses and reads) per 5 s of the measured window, by completion:")
    assert [line.split() for line in lines[at + 1:at + 5]] == [
        ["s:", "0", "5"], ["n:", "20", "20"], ["p50:", "10", "50"], ["p99:", "10", "50"]]


def test_a_read_counts_as_one_with_a_held_grant_only_when_the_grant_covers_the_records_epoch():
    from agents.bench.loadtest.workload import EmrWorkload, StoredRecord
    from agents.doctor import DoctorAgent

    patient = SimpleNamespace(state={"records": {"r0": {"epoch": 0}, "r1": {"epoch": 1}}})
    wl = SimpleNamespace(patients={"alice": patient})
    rec = {rid: StoredRecord("alice", rid, "cardiology", "fhir", 1, 10, 10, b"") for rid in ("r0", "r1", "r9")}
    assert [EmrWorkload._epoch(wl, r) for r in rec.values()] == [0, 1, None]
    assert EmrWorkload._epoch(wl, StoredRecord("bob", "r0", "labs", "fhir", 1, 10, 10, b"")) is None
    grant = {"patient": "alice", "label": "cardiology", "grant_id": "g", "request_id": "q", "threshold": 2,
             "expires_at": 2**40, "scope": "label", "record_id": None, "epoch": 1, "height": 3}
    doctor = SimpleNamespace(grant_cache={"alice\x00cardiology": grant}, epoch_grants={})
    held = [DoctorAgent.cached_grant(doctor, "alice", "cardiology", r.record_id, EmrWorkload._epoch(wl, r))
            for r in rec.values()]
    assert held == [None, grant, grant]  # r0 is of epoch 0: a new grant, a full access


def test_html_is_self_contained_and_json_round_trips():
    r = _synthetic_report()
    page = render_html(r)
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") >= 3  # throughput, latency, a histogram
    namespaces = ('xmlns="http://www.w3.org/2000/svg"', 'xmlns:xlink="http://www.w3.org/1999/xlink"')
    assert "src=" not in page and "http://" not in page.replace(namespaces[0], "").replace(namespaces[1], "")
    assert "test &lt;target&gt;" in page
    assert json.loads(to_json(r))["correctness"]["lost"] == 1


def test_fault_impact_dip_and_recovery():
    timeline = [{"t": float(t), "throughput_per_s": 10.0 if not 5 <= t < 8 else 2.0, "failed": 0} for t in range(15)]
    out = faults.impact(timeline, [{"t": 5.0, "action": "kill", "agents": ["x"]}])
    f = out["faults"][0]
    assert out["baseline_per_s"] == 10.0
    assert f["min_throughput_per_s"] == 2.0
    assert f["dip_fraction"] == pytest.approx(0.8)
    assert f["recovery_s"] == pytest.approx(3.0)


def _manifest(threshold: int = 2) -> SimpleNamespace:
    """What faults.schedule reads of a manifest: 4 peers, 3 storage nodes, 3 replicas, write quorum 2."""
    return SimpleNamespace(peers=["p1", "p2", "p3", "p4"], storage=["s1", "s2", "s3"], threshold=threshold,
                           replicas=3, write_quorum=2)


def test_fault_schedule_checks_the_margin():
    ev = faults.schedule(_manifest(), "severe")
    kills = [e for e in ev if e.action == "kill" and e.agents[0].startswith("p")]
    assert len(kills[0].agents) == 1 and len(kills[-1].agents) == 3  # 4 - 3 = 1 < t
    with pytest.raises(ValueError):
        faults.schedule(_manifest(threshold=3))


def test_fault_schedule_with_etcd_ordering_kills_the_leaders():
    from agents.testing.consortium import TestConsortium

    manifest = TestConsortium.build(orderers=2, storage=["s1", "s2", "s3"]).manifest
    actions = [e.action for e in faults.schedule(manifest)]
    assert {"kill-orderer-leader", "kill-etcd-leader", "restart-ordering"} <= set(actions)
    plain = TestConsortium.build(storage=["s1", "s2", "s3"]).manifest
    assert not {a for a in (e.action for e in faults.schedule(plain)) if "ordering" in a or "leader" in a}


def test_named_faults_run_one_after_the_other_each_undone_before_the_next():
    from agents.testing.consortium import TestConsortium

    manifest = TestConsortium.build(orderers=2, storage=["s1", "s2", "s3"]).manifest
    spec = faults.parse_spec(" orderer-leader, etcd-leader,peer-kill,storage-stall ")
    assert spec == "orderer-leader,etcd-leader,peer-kill,storage-stall"
    ev = faults.schedule(manifest, spec)
    assert [e.action for e in ev] == ["kill-orderer-leader", "restart-ordering", "kill-etcd-leader",
                                      "restart-ordering", "kill", "restart", "stall", "resume"]
    ats = [e.at for e in ev]
    assert ats == sorted(ats) and 0 < ats[0] and ats[-1] < 1
    assert ev[4].agents == ev[5].agents == (manifest.peers[-1],)
    assert ev[6].agents == ev[7].agents == ("s2",)
    # each fault is undone before the next one comes, at the same spacing
    assert ats[1] - ats[0] == pytest.approx(ats[2] - ats[1]) == pytest.approx(0.1)
    plain = TestConsortium.build(storage=["s1", "s2", "s3"]).manifest
    with pytest.raises(ValueError, match="need etcd ordering"):
        faults.schedule(plain, "peer-kill,etcd-leader")
    assert [e.action for e in faults.schedule(plain, "storage-kill")] == ["kill", "restart"]


@pytest.mark.parametrize("text, error", [("peer-kill,bogus", "unknown fault bogus"), ("", "unknown fault"),
                                         ("peer-kill,peer-kill", "named twice")])
def test_fault_names_are_checked(text, error):
    with pytest.raises(ValueError, match=error):
        faults.parse_spec(text)


def test_the_tolerated_schedule_stalls_a_storage_node_after_the_restart():
    ev = faults.schedule(_manifest())
    restart = next(e for e in ev if e.action == "restart")
    stall = next(e for e in ev if e.action == "stall" and e.agents == ("s2",))
    resume = next(e for e in ev if e.action == "resume" and e.agents == ("s2",))
    assert "s3" in restart.agents and restart.at < stall.at < resume.at  # never two of three replicas away


class _FakeSwarm:
    def __init__(self, slow_restart: float):
        self.calls: list[tuple[str, str, float]] = []
        self.slow_restart = slow_restart

        class P:
            def poll(self):
                return -9

        self.processes = {"p4": P()}

    def kill(self, agent):
        self.calls.append(("kill", agent, trio.current_time()))

    async def start_process(self, agent):
        await trio.sleep(self.slow_restart)
        self.calls.append(("restart", agent, trio.current_time()))


async def test_inject_keeps_the_planned_spacing_after_a_slow_restart(autojump_clock):
    swarm = _FakeSwarm(slow_restart=4.0)
    swarm.stall = lambda agent: swarm.calls.append(("stall", agent, trio.current_time()))
    swarm.resume = lambda agent: swarm.calls.append(("resume", agent, trio.current_time()))
    events = [faults.FaultEvent(0.1, "restart", ("p4",), "restart"), faults.FaultEvent(0.2, "stall", ("s2",), "stall"),
              faults.FaultEvent(0.3, "resume", ("s2",), "resume")]
    applied: list[dict] = []
    t0 = trio.current_time()
    await faults.inject(swarm, events, 0.0, 10.0, lambda: trio.current_time() - t0, lambda t, text: None,
                        applied=applied)
    # the restart (at 1 s) took 4 s, past the stall's 2 s: the stall comes when it is done, and the
    # resume the planned 1 s after the stall, not at once
    assert [(c[0], c[2] - t0) for c in swarm.calls] == [("restart", pytest.approx(5.0)), ("stall", pytest.approx(5.0)),
                                                       ("resume", pytest.approx(6.0))]
    assert [a["error"] for a in applied] == [None, None, None]


async def test_inject_reports_an_event_the_run_cut_short_and_those_never_reached(autojump_clock):
    swarm = _FakeSwarm(slow_restart=30.0)
    events = [faults.FaultEvent(0.1, "kill", ("p4",), "kill"), faults.FaultEvent(0.2, "restart", ("p4",), "restart"),
              faults.FaultEvent(0.9, "kill", ("p4",), "kill again")]
    applied: list[dict] = []
    logged: list[str] = []
    t0 = trio.current_time()
    with trio.move_on_after(20.0):  # the run ends while the restart waits for the process
        await faults.inject(swarm, events, 0.0, 10.0, lambda: trio.current_time() - t0,
                            lambda t, text: logged.append(text), applied=applied)
    assert swarm.calls == [("kill", "p4", pytest.approx(t0 + 1.0))]
    assert [(a["action"], a["t"], a["error"]) for a in applied] == [
        ("kill", pytest.approx(1.0), None), ("restart", pytest.approx(2.0), "cut short: the run ended before it completed")]
    assert applied[1]["done"] is None and len(logged) == 1
    assert faults.not_reached(events, applied) == [{"at_fraction": 0.9, "action": "kill", "agents": ["p4"],
                                                    "why": "kill again"}]
    fi = faults.impact([{"t": float(i), "throughput_per_s": 5.0, "failed": 0} for i in range(10)], applied)
    assert [f["action"] for f in fi["faults"]] == ["kill", "restart"]


# ------------------------------------------------------------------ crypto counters


def test_crypto_counter_counts_the_process_crypto_by_primitive():
    from core import ecdsa
    from core.curve import G1, G2, GT, pairing

    counter = costs.counting()  # tests/conftest.py selected the backends with a call counter
    key = ecdsa.generate_private_key()
    before = counter.snapshot()
    pairing(G1.generator(), G2.generator().prepare())
    z = GT.generator_pow(5) ** 3
    GT.from_bytes(z.to_bytes())
    sig = ecdsa.sign(key, "t", b"m")
    assert ecdsa.is_valid(ecdsa.public_key(key), "t", b"m", sig)
    spent = counter.snapshot() - before
    assert {n: t.calls for n, t in spent.by_primitive.items()} == {
        "pairing": 1, "gt_pow": 2, "gt_decode": 1, "ecdsa_sign": 1, "ecdsa_verify": 1}
    assert spent.cpu_s() > 0


def test_crypto_bound_arithmetic():
    b = costs.crypto_bound({"pairing": 2, "ecdsa_verify": 10}, {"pairing": 1e-3, "gt_decode": 1e-4,
                                                                 "gt_multi_pow": 1e-4, "ecdsa_sign": 1e-5,
                                                                 "ecdsa_verify": 1e-4}, cores=2)
    assert b["cost_per_op_ms"] == pytest.approx(3.0)
    assert b["limit_per_s"] == pytest.approx(2 / 3e-3)


# ------------------------------------------------------------------ the real thing, small


async def _small_swarm_run(tmp_path, workload, settings: RunSettings, *, saturation: float,
                           rate_half: bool = False, swarm: dict | None = None) -> tuple[dict, io.StringIO]:
    """A real load test on a small in-process swarm, as the end-to-end tests below run it:
    (its report, checked for no lost or corrupted record and no wrong denial outcome; its progress stream)."""
    from agents.bench.loadtest import Options, run

    opts = Options(workload=workload, run=settings, saturation=saturation, saturation_concurrency=2, rate_half=rate_half,
                   data_dir=tmp_path / "swarm", probes=1, unit_iterations=10, progress_stream=io.StringIO(), tty=False,
                   swarm=swarm or {})
    with trio.fail_after(240):
        report = await run(opts)
    c = report["correctness"]
    assert c["lost"] == 0 and c["corrupted"] == 0, c
    d = report["denials"]
    assert d.get("wrong_outcomes", 0) == 0, d["wrong"]
    return report, opts.progress_stream


async def test_short_loadtest_on_a_small_swarm(tmp_path, monkeypatch):
    from agents.bench.loadtest import WorkloadSpec, runner
    from agents.bench.loadtest.progress import SetupProgress

    seen: list[SetupProgress] = []

    class Recording(SetupProgress):
        def __enter__(self) -> SetupProgress:
            seen.append(self)
            return super().__enter__()

    monkeypatch.setattr(runner, "SetupProgress", Recording)

    report, stream = await _small_swarm_run(
        tmp_path, WorkloadSpec(patients=3, doctors=4, imaging_fraction=0.1, imaging_mib=(1.0, 1.2),
                               fhir_kib=(2, 20), mix={"store": 3, "access": 5, "denied": 2, "revoke": 2}),
        RunSettings(duration=3.0, warmup=0.5, concurrency=3, seed=3), saturation=1.5)
    c = report["correctness"]
    # the setup's progress: every step counted to its end; no bars drawn (the stream is not a terminal)
    assert [b.counts for b in seen] == [{"opening agents": [7, 7], "registering users": [7, 7],
                                         "setting policies": [3, 3], "storing initial records": [3, 3]}]
    assert not seen[0].enabled and "━" not in stream.getvalue()
    assert c["acknowledged"] > 0 and c["verified"] == c["acknowledged"]
    d = report["denials"]
    assert d["denied_correctly"] > 0 and d["revoked_correctly"] > 0
    phases = {p["phase"]: p for p in report["phases"]}
    assert phases["store"]["succeeded"] > 0
    assert report["communication"]["per_operation"][0]["bits"] > 2880
    # the peers' re-encryptions during the saturation run, read from the peer agents: t per successful
    # read at least (a read that failed over asked more), the reply cache's share of them said
    sat = report["saturation"]
    served = sat["peer_reencryptions"]
    assert served["served"] >= report["target"]["threshold"] * sum(sat["by_phase"].values())
    assert 0 <= served["reply_cache_hits"] <= served["served"]
    assert served["reply_cache_percent"] == pytest.approx(served["reply_cache_hits"] / served["served"] * 100)
    assert f"the peers served {served['served']:,} re-encryption shares meanwhile" in render_text(report)
    ran = sum(v["cpu_ms"] for v in sat["crypto"].values()) / 1000
    assert 0 < ran < sat["process_cpu_s"]
    assert f"the crypto the saturation run itself ran (counted calls, timed): {ran:,.2f} s" in render_text(report)
    # pairings: t per access at least, those a probe's peers answered from their reply caches included
    # (a hedged read asks more)
    assert report["efficiency"]["bound"]["calls_per_op"]["pairing"] >= report["target"]["threshold"] - 1e-9
    assert set(report["efficiency"]["probe_reply_cache_hits"]) >= {"access", "read"}
    # the essential bound: the paper's t pairings per access (one per re-encryption), and per ledger
    # transaction one signature and 4 verifications (the swarm's peers)
    essential = report["efficiency"]["essential_bound"]
    assert essential["calls_per_op"]["pairing"] == report["target"]["threshold"]
    assert essential["calls_per_op"]["ecdsa_verify"] == pytest.approx(4 * essential["calls_per_op"]["ecdsa_sign"])
    assert essential["calls_per_op"]["ecdsa_sign"] <= report["efficiency"]["bound"]["calls_per_op"]["ecdsa_sign"]
    assert "against the essential bound" in render_text(report)
    # the access latency per 5 s: the accesses and reads that finished within the window
    assert 0 < sum(w["ok"] for w in report["access_windows"]) <= sum(
        p["succeeded"] for p in report["phases"] if p["phase"] in ("access", "read"))
    assert "0 lost, 0 corrupted" in render_text(report)
    # --breakdown: every probed operation's kinds, whose bits add up to the operation's
    assert "message kind" not in render_text(report)
    text = render_text(report, breakdown=True)
    for op in report["communication"]["per_operation"]:
        assert sum(v["bits"] for v in op["by_kind"].values()) == pytest.approx(op["bits"])
    access = next(op for op in report["communication"]["per_operation"] if op["operation"].startswith("access"))
    assert "peer.reencrypt" in access["by_kind"] and "storage.get" in access["by_kind"]
    assert re.search(r"^  access +peer\.reencrypt +\d", text, re.M)
    # the collector in the measured window: every agent's (one interpreter), kept by the swarm's keeper;
    # the setup's state was frozen before the run, so a full collection walks far less than the process holds
    g = report["gc"]
    assert g["kept"] and g["scope"].startswith("every agent") and g["frozen_objects"] > g["walked_objects"][0]
    assert all(v["collections"] >= 0 for v in g["by_generation"].values())
    assert "garbage collection in the measured window" in render_text(report)
    # the HTML summary of this live run: one row per phase, its numbers those of the JSON
    page = render_html(json.loads(to_json(report)))
    assert page.index('id="phases"') < page.index("<svg")
    for p in report["phases"]:
        lat = p["latency_ms"]
        row = "".join(f"<td>{c}</td>" for c in (p["phase"], f"{p['attempted']:,}", f"{p['succeeded']:,}"))
        row += f"<td>{p['failed']:,}</td>" if not p["failed"] else f'<td class="bad-num">{p["failed"]:,}</td>'
        row += "".join(f"<td>{v:,.{nd}f}</td>" for v, nd in ((p["throughput_per_s"], 2), (lat["p50"], 1),
                                                               (lat["p90"], 1), (lat["p99"], 1), (lat["max"], 1)))
        assert f"<tr>{row}</tr>" in page, p["phase"]


def test_payload_regenerates_from_the_requested_size():
    from agents.bench.loadtest.workload import payload

    import json

    for seed in range(20):  # generated bundles are not exactly size_kib KiB: regenerate from the request
        assert payload("fhir", seed, 48 * 1024) == payload("fhir", seed, 48 * 1024)
    # every record differs (its Bundle id names the seed) and stays a FHIR Bundle
    records = [payload("fhir", seed, kib * 1024) for seed, kib in ((1, 2), (2, 2), (3, 48), (4, 200))]
    assert len(set(records)) == 4
    for seed, raw in enumerate(records, 1):
        bundle = json.loads(raw)
        assert bundle["resourceType"] == "Bundle" and bundle["id"] == f"lt-{seed:x}" and bundle["entry"]
    img = payload("imaging", 7, 300_000)
    assert len(img) == 300_000 and img == payload("imaging", 7, 300_000) and img != payload("imaging", 8, 300_000)


async def test_patients_offline_loadtest_keeps_its_correctness_checks(tmp_path):
    """--patients-offline: the patients stop after setup; every access is served from standing delegations."""
    from agents.bench.loadtest import WorkloadSpec

    report, _ = await _small_swarm_run(
        tmp_path, WorkloadSpec(patients=3, doctors=4, imaging_fraction=0.0, fhir_kib=(2, 20), initial_records=2,
                               mix={"store": 3, "access": 5, "denied": 2, "revoke": 2}, patients_offline=True),
        RunSettings(duration=2.0, warmup=0.5, concurrency=3, seed=4), saturation=1.0)
    c = report["correctness"]
    assert c["acknowledged"] == 6 and c["verified"] == 6  # the setup's records only: no store while offline
    d = report["denials"]
    assert d["denied_correctly"] > 0
    phases = {p["phase"]: p for p in report["phases"]}
    reads = [phases[p] for p in ("access", "read") if p in phases]
    assert "revoke" not in phases and "store" not in phases and sum(p["succeeded"] for p in reads) > 0
    assert sum(p["failed"] for p in reads) == 0


async def test_rate_half_is_half_the_saturation_of_the_runs_own_mix(tmp_path):
    """--rate half: a store costs several accesses, so the open-loop rate is half of what the swarm
    carries of the run's mix (measured closed loop), not half the access-only saturation."""
    from agents.bench.loadtest import WorkloadSpec

    report, _ = await _small_swarm_run(
        tmp_path, WorkloadSpec(patients=3, doctors=3, imaging_fraction=0.0, fhir_kib=(2, 8),
                               mix={"store": 3, "access": 5, "denied": 1}),
        RunSettings(duration=1.5, warmup=0.5, rate=1.0, seed=5), saturation=1.5, rate_half=True)
    access, mix = report["saturation"], report["mix_saturation"]
    assert access["access_per_s"] > 0 and mix["ops_per_s"] > 0
    assert {p["phase"] for p in mix["phases"]} >= {"store"}  # the mix ran, stores included
    assert report["settings"]["rate"] == pytest.approx(mix["ops_per_s"] / 2)
    text = render_text(report)
    assert "saturation (closed loop, the run's mix" in text and "access only" in text


def test_batch_timeout_goes_to_the_embedded_swarm_and_is_checked():
    from agents.bench.loadtest import options_from_args, parser

    opts = options_from_args(parser().parse_args(["--batch-timeout", "0.01"]))
    assert opts.swarm == {"batch_timeout": 0.01}
    assert options_from_args(parser().parse_args([])).swarm == {}
    with pytest.raises(ValueError, match="--batch-timeout must be positive"):
        options_from_args(parser().parse_args(["--batch-timeout", "0"]))
    with pytest.raises(ValueError, match="--target excludes"):
        options_from_args(parser().parse_args(["--batch-timeout", "0.01", "--target", "t.toml"]))


def test_reply_cache_goes_to_the_embedded_swarm_and_is_checked():
    from agents.bench.loadtest import options_from_args, parser

    assert options_from_args(parser().parse_args(["--reply-cache", "0"])).swarm == {"reply_cache": 0}
    with pytest.raises(ValueError, match="--reply-cache must be >= 0"):
        options_from_args(parser().parse_args(["--reply-cache", "-1"]))
    with pytest.raises(ValueError, match="--target excludes"):
        options_from_args(parser().parse_args(["--reply-cache", "0", "--target", "t.toml"]))


async def test_saturation_without_the_peers_reply_caches(tmp_path):
    """--reply-cache 0: the saturation run's repeat reads are not answered from the peers' reply
    caches (none is kept): every share served was a re-encryption, and the report says so."""
    from agents.bench.loadtest import WorkloadSpec

    report, _ = await _small_swarm_run(
        tmp_path, WorkloadSpec(patients=2, doctors=2, imaging_fraction=0.0, mix={"access": 1}),
        RunSettings(duration=1.0, warmup=0.5, concurrency=2, seed=6), saturation=2.0, swarm={"reply_cache": 0})
    served = report["saturation"]["peer_reencryptions"]
    assert served["served"] > 0 and served["reply_cache_hits"] == 0
    assert report["target"]["reply_cache"] == 0 and "the peers keep no reply cache" in report["target"]["description"]
