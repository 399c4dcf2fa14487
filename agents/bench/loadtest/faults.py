"""Fault injection during a load test, and what the faults did to throughput.

``--faults`` (the ``tolerated`` schedule) runs, at fractions of the measured
window after the warm-up, on an embedded swarm with one process per agent:

====  =========================================================================
15%   SIGKILL one storage node (the write quorum still has enough replicas)
30%   SIGKILL one peer (n - 1 >= t peers remain: inside the threshold margin)
45%   SIGSTOP another peer: it stops answering without closing its connections
60%   SIGCONT the stalled peer
70%   restart the killed storage node and peer (same keys and data directory)
80%   SIGSTOP another storage node (after the restart above has completed)
88%   SIGCONT the stalled storage node
====  =========================================================================

With etcd ordering (``--ordering etcd``) the schedule also has, at 22 %,
SIGKILL of the orderer node that leads (read from its etcd election key), at
52 % SIGKILL of the etcd Raft leader, and at 75 % their restart.

``--faults severe`` adds, at 92 %, SIGKILL of enough peers that fewer than t
remain (operations must fail with clear errors, not hang) and, at 97 %, their
restart; the final read-back then shows whether anything was lost.

``--faults NAME,NAME,...`` runs the named faults (:data:`FAULTS`) one after
the other, each alone: the middle 80 % of the window is cut into one slot per
name; a fault comes at the start of its slot and is undone (restart, SIGCONT)
halfway through it, so every fault's effect is measured apart from the others'.

Events run one after the other: an event waits for the one before it (a
restart waits until the process reports ready), and when one overruns the
next event's time the rest move later by as much, so the planned spacing
(how long a node stays stalled, say) holds. An event the run's end cut short
is reported with that error; one it never reached is listed as not reached.

:func:`impact` measures, for each fault, the throughput dip (the worst
one-second throughput within 10 s of the fault, against the median before the
first fault), the recovery time (until a 3-second moving average is back to
90 % of that baseline), and the write gap: from the fault until the end of the
first successful write (``store``, ``revoke``) that started after it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import trio

from core.ledger import Block, parse_genesis

WRITE_PHASES = ("store", "revoke")

# the named faults of ``--faults NAME,...``: what each does (and how it is undone)
FAULTS = {
    "storage-kill": "SIGKILL a storage node, later restart it",
    "storage-stall": "SIGSTOP a storage node, later SIGCONT it",
    "peer-kill": "SIGKILL a peer, later restart it",
    "peer-stall": "SIGSTOP a peer, later SIGCONT it",
    "orderer-leader": "SIGKILL the leading orderer node, later restart it (etcd ordering)",
    "etcd-leader": "SIGKILL the etcd Raft leader, later restart it (etcd ordering)",
}
ETCD_FAULTS = ("orderer-leader", "etcd-leader")
SCHEDULES = ("tolerated", "severe")


@dataclass(frozen=True, slots=True)
class FaultEvent:
    at: float  # fraction of the measured window
    action: str  # kill | stall | resume | restart | kill-orderer-leader | kill-etcd-leader | restart-ordering
    agents: tuple[str, ...]
    why: str


def parse_spec(text: str) -> str:
    """``--faults``' value: a schedule name, or named faults separated by commas (normalized)."""
    text = text.strip()
    if text in SCHEDULES:
        return text
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FAULTS]
    if not names or unknown:
        raise ValueError(f"unknown fault {', '.join(unknown) or repr(text)}: use tolerated, severe or names "
                         f"separated by commas from {', '.join(FAULTS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a fault is named twice in {text!r}; name each once")
    return ",".join(names)


def _etcd_ordering(manifest: Any) -> bool:
    genesis = getattr(manifest, "genesis", None)
    return genesis is not None and bool(parse_genesis(genesis).config.orderers)


def schedule(manifest: Any, kind: str = "tolerated") -> list[FaultEvent]:
    """The events of a schedule (``tolerated``, ``severe``) or of named faults (see the module docstring)."""
    kind = parse_spec(kind)
    peers = list(manifest.peers)
    t = manifest.threshold
    if kind not in SCHEDULES:
        return _named(manifest, kind.split(","))
    if len(peers) - 2 < t:
        raise ValueError(f"the fault schedule needs n - 2 >= t peers (have {len(peers)}, t = {t})")
    if manifest.replicas - 1 < manifest.write_quorum or len(manifest.storage) < 2:
        raise ValueError("the fault schedule needs replicas - 1 >= write quorum and two storage nodes")
    storage = manifest.storage[-1]
    stalled_storage = manifest.storage[-2]
    killed = peers[-1]
    stalled = peers[-2]
    events = [
        FaultEvent(0.15, "kill", (storage,), "SIGKILL one storage node"),
        FaultEvent(0.30, "kill", (killed,), f"SIGKILL one peer ({len(peers) - 1} of {len(peers)} left, t = {t})"),
        FaultEvent(0.45, "stall", (stalled,), "SIGSTOP a peer (stops answering, connections stay open)"),
        FaultEvent(0.60, "resume", (stalled,), "SIGCONT the stalled peer"),
        FaultEvent(0.70, "restart", (storage, killed), "restart the killed storage node and peer"),
        FaultEvent(0.80, "stall", (stalled_storage,), "SIGSTOP a storage node (stops answering)"),
        FaultEvent(0.88, "resume", (stalled_storage,), "SIGCONT the stalled storage node"),
    ]
    if _etcd_ordering(manifest):
        events += [
            FaultEvent(0.22, "kill-orderer-leader", (), "SIGKILL the leading orderer node"),
            FaultEvent(0.52, "kill-etcd-leader", (), "SIGKILL the etcd Raft leader"),
            FaultEvent(0.75, "restart-ordering", (), "restart the killed orderer node and etcd member"),
        ]
    if kind == "severe":
        victims = tuple(peers[: len(peers) - t + 1])
        events += [
            FaultEvent(0.92, "kill", victims, f"SIGKILL {len(victims)} peers: {t - 1} left, fewer than t = {t}"),
            FaultEvent(0.97, "restart", victims, "restart them"),
        ]
    return sorted(events, key=lambda e: e.at)


def _named(manifest: Any, names: list[str]) -> list[FaultEvent]:
    peers = list(manifest.peers)
    t = manifest.threshold
    if any(n.startswith("peer-") for n in names) and len(peers) - 1 < t:
        raise ValueError(f"a peer fault needs n - 1 >= t peers (have {len(peers)}, t = {t})")
    if any(n.startswith("storage-") for n in names) and (manifest.replicas - 1 < manifest.write_quorum
                                                         or len(manifest.storage) < 2):
        raise ValueError("a storage fault needs replicas - 1 >= write quorum and two storage nodes")
    if any(n in ETCD_FAULTS for n in names) and not _etcd_ordering(manifest):
        raise ValueError(f"the faults {', '.join(ETCD_FAULTS)} need etcd ordering (--ordering etcd)")
    slot = 0.8 / len(names)
    events = []
    for i, name in enumerate(names):
        at, undo = 0.1 + i * slot, 0.1 + (i + 0.5) * slot
        if name == "storage-kill":
            who = (manifest.storage[-1],)
            events += [FaultEvent(at, "kill", who, "SIGKILL a storage node"),
                       FaultEvent(undo, "restart", who, "restart the killed storage node")]
        elif name == "storage-stall":
            who = (manifest.storage[-2],)
            events += [FaultEvent(at, "stall", who, "SIGSTOP a storage node (stops answering)"),
                       FaultEvent(undo, "resume", who, "SIGCONT the stalled storage node")]
        elif name == "peer-kill":
            who = (peers[-1],)
            events += [FaultEvent(at, "kill", who, f"SIGKILL a peer ({len(peers) - 1} of {len(peers)} left, "
                                                   f"t = {t})"),
                       FaultEvent(undo, "restart", who, "restart the killed peer")]
        elif name == "peer-stall":
            who = (peers[-2],)
            events += [FaultEvent(at, "stall", who, "SIGSTOP a peer (stops answering, connections stay open)"),
                       FaultEvent(undo, "resume", who, "SIGCONT the stalled peer")]
        elif name == "orderer-leader":
            events += [FaultEvent(at, "kill-orderer-leader", (), "SIGKILL the leading orderer node"),
                       FaultEvent(undo, "restart-ordering", (), "restart the killed orderer node")]
        elif name == "etcd-leader":
            events += [FaultEvent(at, "kill-etcd-leader", (), "SIGKILL the etcd Raft leader"),
                       FaultEvent(undo, "restart-ordering", (), "restart the killed etcd member")]
    return events


async def inject(swarm: Any, events: list[FaultEvent], start: float, length: float,
                 clock: Callable[[], float], log: Callable[[float, str], None],
                 *, applied: list[dict]) -> None:
    """Run ``events`` at ``start + at * length`` (clock seconds), one after the other; append what
    happened to ``applied`` as each starts (an event the caller cancels keeps an error saying so)."""
    killed_orderers: list[str] = []
    killed_members: list[int] = []
    ordered = sorted(events, key=lambda e: e.at)
    shift = 0.0  # how far an event that overran (a slow restart) pushed the rest
    for i, ev in enumerate(ordered):
        when = start + ev.at * length + shift
        delay = when - clock()
        if delay > 0:
            await trio.sleep(delay)
        t = clock()
        entry = {"t": t, "done": None, "action": ev.action, "agents": list(ev.agents), "why": ev.why,
                 "error": "cut short: the run ended before it completed"}
        applied.append(entry)
        error = None
        try:
            if ev.action == "kill-orderer-leader":
                from agents.ordering import current_leader

                leader = await current_leader(swarm.etcd.endpoints, Block.from_bytes(swarm.manifest.genesis),
                                              swarm.manifest.consortium)
                if leader is None:
                    raise RuntimeError("no orderer node leads")
                entry["agents"] = [leader]
                swarm.kill(leader)
                killed_orderers.append(leader)
            elif ev.action == "kill-etcd-leader":
                member = await swarm.etcd.leader()
                if member is None:
                    raise RuntimeError("the etcd cluster has no leader")
                entry["agents"] = [swarm.etcd.names[member]]
                swarm.etcd.kill(member)
                killed_members.append(member)
            elif ev.action == "restart-ordering":
                entry["agents"] = killed_orderers + [swarm.etcd.names[m] for m in killed_members]
                for agent in killed_orderers:
                    if swarm.processes[agent].poll() is not None:
                        await swarm.start_process(agent)
                for member in killed_members:
                    if not swarm.etcd.running(member):
                        swarm.etcd.start_member(member)
                killed_orderers, killed_members = [], []
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
        entry.update(done=done, error=error)
        if i + 1 < len(ordered):  # keep the planned spacing after an overrun (a stall lasts its planned time)
            shift += max(0.0, done - (start + ordered[i + 1].at * length + shift))
        log(t, f"fault: {ev.why} [{', '.join(entry['agents'])}]" + (f" FAILED: {error}" if error else
                                                                     f" ({(done - t) * 1000:.0f} ms)"))


def not_reached(events: list[FaultEvent], applied: list[dict]) -> list[dict]:
    """The events :func:`inject` never started (the run ended first), in the report's terms."""
    return [{"at_fraction": ev.at, "action": ev.action, "agents": list(ev.agents), "why": ev.why}
            for ev in sorted(events, key=lambda e: e.at)[len(applied):]]


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
