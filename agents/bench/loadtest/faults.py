"""Fault injection during a load test, and what the faults did to throughput.

``--faults`` (the ``tolerated`` schedule) runs, at fractions of the measured
window after the warm-up, on an embedded swarm with one process per agent:

====  =========================================================================
15%   SIGKILL one storage node (the write quorum still has enough replicas)
30%   SIGKILL one peer (n - 1 >= t peers remain: inside the threshold margin)
45%   SIGSTOP another peer: it stops answering without closing its connections
60%   SIGCONT the stalled peer
70%   restart the killed storage node and peer (same keys and data directory)
====  =========================================================================

With etcd ordering (``--ordering etcd``) the schedule also has, at 22 %,
SIGKILL of the orderer node that leads (read from its etcd election key), at
52 % SIGKILL of the etcd Raft leader, and at 75 % their restart; for every
fault :func:`impact` also gives the write gap: from the fault until the first
successful write (``store``, ``revoke``) that started after it.

``--faults severe`` adds, at 80 %, SIGKILL of enough peers that fewer than t
remain (operations must fail with clear errors, not hang) and, at 90 %, their
restart; the final read-back then shows whether anything was lost.

:func:`impact` measures, for each fault, the throughput dip (the worst
one-second throughput within 10 s of the fault, against the median before the
first fault) and the recovery time (until a 3-second moving average is back
to 90 % of that baseline).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import trio

from core.ledger import Block, parse_genesis

WRITE_PHASES = ("store", "revoke")


@dataclass(frozen=True, slots=True)
class FaultEvent:
    at: float  # fraction of the measured window
    action: str  # kill | stall | resume | restart
    agents: tuple[str, ...]
    why: str


def schedule(manifest: Any, kind: str = "tolerated") -> list[FaultEvent]:
    if kind not in ("tolerated", "severe"):
        raise ValueError(f"unknown fault schedule {kind!r} (tolerated or severe)")
    peers = list(manifest.peers)
    t = manifest.threshold
    if len(peers) - 2 < t:
        raise ValueError(f"the fault schedule needs n - 2 >= t peers (have {len(peers)}, t = {t})")
    if manifest.replicas - 1 < manifest.write_quorum:
        raise ValueError("the fault schedule needs replicas - 1 >= write quorum")
    storage = manifest.storage[-1]
    killed = peers[-1]
    stalled = peers[-2]
    events = [
        FaultEvent(0.15, "kill", (storage,), "SIGKILL one storage node"),
        FaultEvent(0.30, "kill", (killed,), f"SIGKILL one peer ({len(peers) - 1} of {len(peers)} left, t = {t})"),
        FaultEvent(0.45, "stall", (stalled,), "SIGSTOP a peer (stops answering, connections stay open)"),
        FaultEvent(0.60, "resume", (stalled,), "SIGCONT the stalled peer"),
        FaultEvent(0.70, "restart", (storage, killed), "restart the killed storage node and peer"),
    ]
    genesis = getattr(manifest, "genesis", None)
    if genesis is not None and parse_genesis(genesis).config.orderers:  # etcd ordering
        events += [
            FaultEvent(0.22, "kill-orderer-leader", (), "SIGKILL the leading orderer node"),
            FaultEvent(0.52, "kill-etcd-leader", (), "SIGKILL the etcd Raft leader"),
            FaultEvent(0.75, "restart-ordering", (), "restart the killed orderer node and etcd member"),
        ]
    if kind == "severe":
        victims = tuple(peers[: len(peers) - t + 1])
        events += [
            FaultEvent(0.80, "kill", victims, f"SIGKILL {len(victims)} peers: {t - 1} left, fewer than t = {t}"),
            FaultEvent(0.90, "restart", victims, "restart them"),
        ]
    return events


async def inject(swarm: Any, events: list[FaultEvent], start: float, length: float,
                 clock: Callable[[], float], log: Callable[[float, str], None],
                 *, applied: list[dict]) -> None:
    """Run ``events`` at ``start + at * length`` (clock seconds); append what happened to ``applied``."""
    killed_orderers: list[str] = []
    killed_members: list[int] = []
    for ev in sorted(events, key=lambda e: e.at):
        when = start + ev.at * length
        delay = when - clock()
        if delay > 0:
            await trio.sleep(delay)
        t = clock()
        error = None
        agents = list(ev.agents)
        try:
            if ev.action == "kill-orderer-leader":
                from agents.ordering import current_leader

                leader = await current_leader(swarm.etcd.endpoints, Block.from_bytes(swarm.manifest.genesis),
                                              swarm.manifest.consortium)
                if leader is None:
                    raise RuntimeError("no orderer node leads")
                swarm.kill(leader)
                killed_orderers.append(leader)
                agents = [leader]
            elif ev.action == "kill-etcd-leader":
                member = await swarm.etcd.leader()
                if member is None:
                    raise RuntimeError("the etcd cluster has no leader")
                swarm.etcd.kill(member)
                killed_members.append(member)
                agents = [swarm.etcd.names[member]]
            elif ev.action == "restart-ordering":
                for agent in killed_orderers:
                    if swarm.processes[agent].poll() is not None:
                        await swarm.start_process(agent)
                for member in killed_members:
                    if not swarm.etcd.running(member):
                        swarm.etcd.start_member(member)
                agents = killed_orderers + [swarm.etcd.names[m] for m in killed_members]
            for agent in ev.agents:
                if ev.action == "kill":
                    swarm.kill(agent)
                elif ev.action == "stall":
                    swarm.stall(agent)
                elif ev.action == "resume":
                    swarm.resume(agent)
                elif ev.action == "restart":
                    if swarm.processes[agent].poll() is not None:
                        await swarm.start_process(agent)
                else:
                    raise ValueError(ev.action)
        except Exception as exc:  # a fault that could not be applied is reported, the run goes on
            error = f"{type(exc).__name__}: {exc}"
        done = clock()
        applied.append({"t": t, "done": done, "action": ev.action, "agents": agents, "why": ev.why,
                        "error": error})
        log(t, f"fault: {ev.why} [{', '.join(agents)}]" + (f" FAILED: {error}" if error else
                                                             f" ({(done - t) * 1000:.0f} ms)"))


def write_gap(samples: Iterable[Any], at: float) -> float | None:
    """Seconds from ``at`` until the first successful write (WRITE_PHASES) started at or after it ended."""
    ends = [s.end for s in samples if s.ok and s.phase in WRITE_PHASES and s.start >= at]
    return min(ends) - at if ends else None


def impact(timeline: list[dict], applied: list[dict], *, window: float = 10.0,
           recovered_at: float = 0.9, samples: Iterable[Any] = ()) -> dict:
    """Baseline throughput, and per fault the dip, recovery time and write gap (see the module docstring)."""
    samples = list(samples)
    if not applied or not timeline:
        return {"baseline_per_s": None, "faults": []}
    first = min(a["t"] for a in applied)
    before = [b["throughput_per_s"] for b in timeline if b["t"] + 1 <= first]
    baseline = statistics.median(before) if before else None
    out = []
    for a in applied:
        after = [b for b in timeline if a["t"] - 1 < b["t"] <= a["t"] + window]
        worst = min((b["throughput_per_s"] for b in after), default=None)
        failed = sum(b["failed"] for b in after)
        recovery = None
        if baseline:
            later = [b for b in timeline if b["t"] >= a["t"] - 1]
            for i in range(len(later)):
                avg = sum(b["throughput_per_s"] for b in later[i:i + 3]) / len(later[i:i + 3])
                if avg >= recovered_at * baseline:
                    recovery = max(0.0, later[i]["t"] - a["t"])
                    break
        out.append({**a, "min_throughput_per_s": worst,
                    "dip_fraction": (1 - worst / baseline) if baseline and worst is not None else None,
                    "failed_within_window": failed, "recovery_s": recovery,
                    "write_gap_s": write_gap(samples, a["t"]) if samples else None})
    return {"baseline_per_s": baseline, "faults": out}
