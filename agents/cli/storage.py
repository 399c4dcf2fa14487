"""``emrshare storage status``: copies per record and repair progress of a swarm's storage nodes.

Every storage node's reconciler (:mod:`agents.storage.reconcile`) writes its
view after each round to ``DIR/agents/<node>/status.json``; this command merges
those files (it needs the swarm's directory, not a connection): for each CID a
committed ``store`` transaction names, its owner, record, the nodes holding a
verified copy and the copies wanted (r); for each node, its last reconcile
time, the height its light client reached, the copies pending and being
pulled, the partial uploads open, and its counters. A node without a status
file (not started yet, or wiped) is shown as such.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agents.cli.base import ENV_SWARM, env_default, env_help
from agents.errors import AgentError
from agents.storage.reconcile import STATUS_FILE

__all__ = ["StatusError", "StorageStatus", "read_status", "status_main"]


class StatusError(AgentError):
    """``storage status`` cannot read the swarm."""


@dataclass
class StorageStatus:
    """The merged view: ``nodes`` (id -> its status, None if it has none) and
    ``records`` (one dict per committed CID, with ``holders``)."""

    replicas: int
    nodes: dict[str, dict[str, Any] | None]
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every committed CID has r verified copies (as the nodes last reported)."""
        return all(len(r["holders"]) >= min(self.replicas, len(r["placement"])) for r in self.records)

    def to_json(self) -> dict[str, Any]:
        return {"replicas": self.replicas, "complete": self.complete, "records": self.records,
                "nodes": {n: _node_summary(s) for n, s in self.nodes.items()}}


def _node_summary(status: dict[str, Any] | None) -> dict[str, Any] | None:
    if status is None:
        return None
    keys = ("time", "height", "interval", "grace", "rounds", "pulled", "pull_failures", "collected",
            "quarantined", "partial_uploads")
    out = {k: status.get(k) for k in keys}
    out["pending"] = len(status.get("pending", []))
    out["active"] = len(status.get("active", []))
    out["unnamed"] = len(status.get("unnamed", []))
    out["held"] = sum(1 for r in status.get("records", []) if r.get("held"))
    return out


def read_status(data_dir: Path) -> StorageStatus:
    """Merge the storage nodes' status files of the swarm in ``data_dir``."""
    from agents.swarm import SwarmFiles

    files = SwarmFiles(data_dir)
    if not files.exists:
        raise StatusError(f"no swarm at {files.dir}; start one with `emrshare swarm up --data {data_dir}` "
                          f"or give its directory with --swarm (or {ENV_SWARM})")
    manifest = files.manifest()
    nodes: dict[str, dict[str, Any] | None] = {}
    records: dict[str, dict[str, Any]] = {}
    for node in manifest.storage:
        path = files.agent_dir(node) / STATUS_FILE
        try:
            status = json.loads(path.read_text())
        except FileNotFoundError:
            status = None
        except (OSError, ValueError) as exc:
            raise StatusError(f"{path} is unreadable ({exc}); "
                              "it is rewritten after the node's next reconcile round") from None
        nodes[node] = status
        for rec in (status or {}).get("records", []):
            merged = records.setdefault(rec["cid"], {k: rec[k] for k in ("cid", "owner", "record_id", "size",
                                                                        "height", "placement")} | {"holders": []})
            if rec.get("held") and rec.get("verified"):
                merged["holders"].append(node)
    out = sorted(records.values(), key=lambda r: (r["height"], r["cid"]))
    for rec in out:
        rec["holders"].sort()
    return StorageStatus(manifest.replicas, nodes, out)


def _when(t: float | None, now: float) -> str:
    if t is None:
        return "-"
    stamp = datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{stamp} ({max(0, now - t):.0f}s ago)"


def render(status: StorageStatus, *, now: float | None = None) -> str:
    now = time.time() if now is None else now
    lines = []
    header = f"{'node':<12} {'last reconcile':<34} {'height':>6} {'pending':>7} {'active':>6} " \
             f"{'partial':>7} {'pulled':>6} {'collected':>9}"
    lines.append(header)
    for node, s in status.nodes.items():
        if s is None:
            lines.append(f"{node:<12} no status yet (not started, or its directory was wiped)")
            continue
        n = _node_summary(s)
        lines.append(f"{node:<12} {_when(n['time'], now):<34} {n['height'] if n['height'] is not None else '-':>6} "
                     f"{n['pending']:>7} {n['active']:>6} {n['partial_uploads'] or 0:>7} {n['pulled']:>6} "
                     f"{n['collected']:>9}")
    lines.append("")
    if not status.records:
        lines.append("no records stored on the ledger yet")
    else:
        width = max(len(r["cid"]) for r in status.records)
        lines.append(f"{'CID':<{width}} {'owner':<16} {'record':<24} {'copies':>6}  holders")
        for r in status.records:
            wanted = min(status.replicas, len(r["placement"]))
            lines.append(f"{r['cid']:<{width}} {r['owner']:<16} {r['record_id']:<24} "
                         f"{len(r['holders'])}/{wanted:<4}  {', '.join(r['holders']) or '-'}")
        missing = sum(1 for r in status.records if len(r["holders"]) < min(status.replicas, len(r["placement"])))
        lines.append("")
        lines.append(f"{len(status.records)} records, {missing} with fewer than r={status.replicas} verified copies")
    return "\n".join(lines)


def status_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="emrshare storage status",
        description="copies per record (CID, owner, nodes holding a verified copy, r) and repair progress "
                    "(pending and active copies, last reconcile time), from the storage nodes' status files")
    parser.add_argument("--swarm", "--data", dest="swarm", default=env_default(ENV_SWARM, "swarm-data"),
                        help=env_help("the swarm's data directory", ENV_SWARM, "swarm-data"))
    parser.add_argument("--json", action="store_true", help="print the merged status as JSON")
    args = parser.parse_args(argv)
    status = read_status(Path(args.swarm))
    if args.json:
        print(json.dumps(status.to_json(), indent=2, sort_keys=True))
    else:
        print(render(status))
    return 0
