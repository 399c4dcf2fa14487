"""``emrshare bench ledger``: committed transactions per second and commit latency.

Four consortium peers and the embedded orderer in one process on the in-memory
bus, each peer with its own SQLite ledger, every peer validating every
transaction (signatures included). Clients submit pre-signed transactions
through the peers (``peer.submit``, batches of ``--batch`` with at most
``--window`` transactions in flight) for two workloads: ``store`` (the
patient's signed CID) and ``access_request`` (certificate check plus policy
evaluation). A transaction counts as committed when all four peers committed
it; latency is from its submission to that moment. The share of CPU time in
ECDSA verification is measured by the crypto call counter the backends are
selected with (agents/bench/loadtest/costs.py).

``--ordering etcd`` orders with two etcd orderer nodes over a local 3-member
etcd cluster (agents.ordering) instead; ``--ordering both`` runs the embedded
orderer and then etcd ordering in the same run and prints the ratio.

    emrshare bench ledger [--quick] [--txs N] [--ordering embedded|etcd|both] [--json FILE]
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

import bus
from core import ecdsa, pre
from core.backend import backend_name
from core.cid import compute as compute_cid
from core.policy import parse as parse_policy
from core.tx import Transaction

from agents.bench._output import bench_parser, write_json
from agents.bench.loadtest import costs
from agents.peer import PeerAgent
from agents.consortium import enroll_id
from agents.keys import AgentKeys
from agents.runtime import make_endpoint
from agents.testing.consortium import CARDIOLOGY_POLICY as POLICY
from agents.testing.consortium import TestConsortium, split_peers

__all__ = ["main", "run_bench"]


class VerifyTimer:
    """Counts every ECDSA verification (ledger transactions, certificates, blocks, bus
    envelopes) and the CPU time it takes, from the process's crypto call counter
    (:func:`agents.bench.loadtest.costs.counting`)."""

    def __init__(self) -> None:
        self._counter = costs.counting()
        self._mark = self._counter.snapshot()

    def __enter__(self) -> "VerifyTimer":
        self.reset()
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def reset(self) -> tuple[float, int]:
        """(seconds, calls) of ECDSA verification since the last reset."""
        now = self._counter.snapshot()
        spent = (now - self._mark).by_primitive.get("ecdsa_verify")
        self._mark = now
        return (spent.cpu_ns / 1e9, spent.calls) if spent is not None else (0.0, 0)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def run_bench(n_txs: int, *, batch: int = 100, window: int = 4000, n_peers: int = 4,
                    users: int = 8, data_dir: Path | None = None, ordering: str = "embedded") -> dict[str, Any]:
    tmp = tempfile.TemporaryDirectory(prefix="emrshare-bench-ledger-") if data_dir is None else None
    root = Path(tmp.name) if tmp is not None else Path(data_dir)  # type: ignore[arg-type]
    try:
        return await _run(root, n_txs, batch, window, n_peers, users, ordering)
    finally:
        if tmp is not None:
            tmp.cleanup()


async def _start_ordering(nursery: trio.Nursery, node: bus.Node, consortium: TestConsortium, root: Path,
                          ordering: str, cluster: list) -> None:
    if ordering == "embedded":
        await nursery.start(consortium.orderer(root / "orderer").run, node)
        return
    from agents.ordering import EtcdCluster

    etcd = EtcdCluster(root / "etcd", members=3)
    cluster.append(etcd)
    etcd.start()
    await etcd.wait_ready()
    for node_id in consortium.orderer_nodes:
        await nursery.start(consortium.ordering_node(node_id, etcd.endpoints).run, node)


async def _run(root: Path, n_txs: int, batch: int, window: int, n_peers: int, n_users: int,
               ordering: str = "embedded") -> dict[str, Any]:
    cluster: list = []
    try:
        return await _run_with(root, n_txs, batch, window, n_peers, n_users, ordering, cluster)
    finally:
        for etcd in cluster:
            etcd.stop()


async def _run_with(root: Path, n_txs: int, batch: int, window: int, n_peers: int, n_users: int, ordering: str,
                    cluster: list) -> dict[str, Any]:
    consortium = TestConsortium.build(split_peers(n_peers), name="bench", orgs=("org-a", "org-b"),
                                      created_at=int(time.time() * 1000), orderers=2 if ordering == "etcd" else 0)
    manifest = consortium.manifest
    peers: dict[str, PeerAgent] = {}
    committed: dict[bytes, list] = {}  # tx id -> [submitted at, peers left, committed-by-all at, mark]

    def listener(block, result):
        now = time.perf_counter()
        for raw, mark in zip(block.txs, result.marks):
            entry = committed.get(hashlib.sha256(raw).digest())
            if entry is not None:
                entry[3] = mark
                entry[1] -= 1
                if entry[1] == 0:
                    entry[2] = now
                    done_count[0] += 1
                    if done_count[0] == target[0]:
                        all_done.set()

    done_count, target = [0], [0]
    all_done = trio.Event()
    async with bus.open_node() as node:
        async with trio.open_nursery() as nursery:
            await _start_ordering(nursery, node, consortium, root, ordering, cluster)
            for pid in consortium.peers:
                peers[pid] = consortium.peer(pid, root / pid)
                await nursery.start(peers[pid].run, node)
                peers[pid].add_commit_listener(listener)
            pids = list(peers)

            async def enroll(subject, org, attrs):
                keys = AgentKeys.generate()
                ep = make_endpoint(node, enroll_id(keys.ecdsa_public), keys.ecdsa_private, manifest.directory())
                recv = keys.receive
                reply = await ep.request(manifest.peer_orgs[org][0], "peer.enroll", {
                    "subject": subject, "org": org, "attributes": attrs, "box_key": keys.box_public,
                    "pre_key": recv.public.to_bytes(), "pre_proof": recv.prove(subject).to_bytes(),
                    "valid_s": 86400, "token": consortium.token(subject, org, attrs, enroll_id(keys.ecdsa_public))})
                await ep.aclose()
                for p in peers.values():
                    await p.wait_for_height(reply["height"])
                user_eps[subject] = (keys, make_endpoint(node, subject, keys.ecdsa_private, manifest.directory()))

            user_eps: dict[str, tuple[AgentKeys, bus.Endpoint]] = {}
            async with trio.open_nursery() as n:
                for i in range(n_users):
                    n.start_soon(enroll, f"patient-{i}", "org-a", {"role": "patient"})
                    n.start_soon(enroll, f"doctor-{i}", "org-b", {"role": "doctor", "department": "cardiology"})
            patients = [s for s in user_eps if s.startswith("patient")]
            doctors = [s for s in user_eps if s.startswith("doctor")]
            capsule = pre.encapsulate(user_eps[patients[0]][0].label_key("cardiology").public)[0].to_bytes()

            def sign(subject, tx_type, body):
                return Transaction.create(tx_type, subject, body, user_eps[subject][0].ecdsa_private,
                                          int(time.time() * 1000)).to_bytes()

            async def workload(name, txs: list[tuple[str, bytes]]) -> dict[str, Any]:
                committed.clear()
                done_count[0], target[0] = 0, len(txs)
                nonlocal all_done
                all_done = trio.Event()
                in_flight = trio.Semaphore(max(1, window // batch))
                timer.reset()
                cpu0, t0 = time.process_time(), time.perf_counter()

                async def send(k, chunk):
                    try:
                        now = time.perf_counter()
                        by_subject: dict[str, list[bytes]] = {}  # a peer takes only the sender's own txs
                        for subject, raw in chunk:
                            committed[hashlib.sha256(raw).digest()] = [now, len(peers), None, None]
                            by_subject.setdefault(subject, []).append(raw)
                        for subject, raws in by_subject.items():
                            await user_eps[subject][1].request(pids[k % len(pids)], "peer.submit",
                                                               {"txs": raws, "wait": False})
                    finally:
                        in_flight.release()

                async with trio.open_nursery() as n:
                    for k in range(0, len(txs), batch):
                        await in_flight.acquire()
                        n.start_soon(send, k // batch, txs[k:k + batch])
                await all_done.wait()
                wall = time.perf_counter() - t0
                cpu = time.process_time() - cpu0
                verify_s, verify_calls = timer.reset()
                lat = [(e[2] - e[0]) * 1000 for e in committed.values()]
                valid = sum(1 for e in committed.values() if e[3] == "ok")
                return {
                    "workload": name, "transactions": len(txs), "valid": valid, "seconds": round(wall, 3),
                    "tx_per_s": round(len(txs) / wall, 1),
                    "latency_ms": {"p50": round(_pct(lat, 0.5), 1), "p90": round(_pct(lat, 0.9), 1),
                                   "p99": round(_pct(lat, 0.99), 1)},
                    "verify_calls": verify_calls, "verify_s": round(verify_s, 3),
                    "cpu_s": round(cpu, 3), "verify_share_of_cpu": round(verify_s / cpu, 3) if cpu else None,
                }

            results = []
            with VerifyTimer() as timer:
                stores = [(p := patients[i % len(patients)], sign(p, "store", {
                    "record_id": f"rec-{i}", "label": "cardiology", "cid": compute_cid(b"%d" % i), "size": i,
                    "media_type": "application/fhir+json", "capsule": capsule})) for i in range(n_txs)]
                results.append(await workload("store", stores))
                # policies for every patient (not measured), then access requests against the stored records
                for p in patients:
                    await user_eps[p][1].request(pids[0], "peer.submit", {"tx": sign(p, "set_policy", {
                        "policy": parse_policy(POLICY).to_msgpack()}), "wait": True})
                for p in peers.values():
                    await p.wait_for_height(peers[pids[0]].height)
                reqs = [(d := doctors[i % len(doctors)], sign(d, "access_request", {
                    "request_id": f"req-{i}", "patient": patients[i % len(patients)], "record_id": f"rec-{i}",
                    "operation": "read", "purpose": None})) for i in range(n_txs)]
                results.append(await workload("access_request", reqs))
            # every peer ends at the same state
            heads = {p.ledger.head() for p in peers.values()}
            if len(heads) != 1:
                raise RuntimeError("peers disagree on the head after the benchmark")
            sample = peers[pids[0]].ledger.request("req-0")
            if sample is None or not sample.allowed:
                raise RuntimeError("access requests were not evaluated as expected")
            nursery.cancel_scope.cancel()
    return {"backend": backend_name(), "ecdsa": ecdsa.ecdsa_backend_name(), "peers": n_peers,
            "batch": batch, "window": window, "cores": os.cpu_count(), "ordering": ordering, "results": results}


def _table(report: dict[str, Any]) -> str:
    orderer = ("embedded orderer" if report.get("ordering", "embedded") == "embedded"
               else "2 etcd orderer nodes (3-member etcd cluster)")
    lines = [f"ledger commit: {report['peers']} peers + {orderer}, in-memory bus, one process "
             f"(pairing {report['backend']}, ECDSA {report['ecdsa']}, {report['cores']} cores)",
             f"{'workload':<16}{'txs':>8}{'tx/s':>10}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}"
             f"{'verifies':>10}{'verify/CPU':>12}"]
    for r in report["results"]:
        lat = r["latency_ms"]
        lines.append(f"{r['workload']:<16}{r['transactions']:>8}{r['tx_per_s']:>10.0f}{lat['p50']:>10.1f}"
                     f"{lat['p90']:>10.1f}{lat['p99']:>10.1f}{r['verify_calls']:>10}"
                     f"{r['verify_share_of_cpu'] * 100:>11.1f}%")
    lines.append("committed = applied and persisted by all peers; latency = submit -> last peer's commit")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("ledger", __doc__)
    parser.add_argument("--quick", action="store_true", help="1,000 transactions per workload (default 5,000)")
    parser.add_argument("--txs", type=int, default=None, help="transactions per workload")
    parser.add_argument("--batch", type=int, default=100, help="transactions per peer.submit")
    parser.add_argument("--window", type=int, default=4000, help="transactions in flight at most")
    parser.add_argument("--ordering", choices=("embedded", "etcd", "both"), default="embedded",
                        help="ordering service: the embedded orderer (default), etcd orderer nodes over a local "
                             "3-member etcd cluster (needs the etcd binary), or both in one run, compared")
    args = parser.parse_args(argv)
    if args.txs is not None and args.txs < 1:
        parser.error("--txs must be at least 1 (or drop it: 5,000, or 1,000 with --quick)")
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    if args.window < args.batch:  # (fewer in flight than one batch: it ran with one batch, and said otherwise)
        parser.error(f"--window must be at least --batch ({args.batch})")
    costs.counting()  # the verify counter is chosen with the backends, before any crypto runs
    n = args.txs or (1000 if args.quick else 5000)
    kinds = ("embedded", "etcd") if args.ordering == "both" else (args.ordering,)
    reports = [trio.run(lambda: run_bench(n, batch=args.batch, window=args.window, ordering=kind))
               for kind in kinds]
    if write_json(args.json, reports[0] if len(reports) == 1 else reports):
        return 0
    for report in reports:
        print(_table(report))
    if len(reports) == 2:
        for a, b in zip(reports[0]["results"], reports[1]["results"]):
            print(f"{a['workload']}: etcd ordering commits {b['tx_per_s'] / a['tx_per_s'] * 100:.0f} % of the "
                  f"embedded orderer's rate ({b['tx_per_s']:.0f} vs {a['tx_per_s']:.0f} tx/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
