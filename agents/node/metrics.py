"""Metrics in the Prometheus text exposition format (version 0.0.4), bounded.

A :class:`Family` is one metric: name, type (``counter`` or ``gauge``), help
and its samples, each a small label set and a value. :func:`render` writes
families as the text format (``# HELP``, ``# TYPE``, then ``name{labels} value``
lines; label values escaped). Label values come only from bounded sets: a
role, a bus kind, a bus or ledger code, a connection direction, a queue name;
never a client's id, so the number of series does not grow with clients.
:data:`MAX_SERIES` caps what one scrape carries anyway.

:func:`node_families` reads a running node: its role agent
(:class:`agents.node.roles.RoleAgent`) and its bus node's statistics.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

__all__ = ["Family", "render", "node_families", "MAX_SERIES", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REFUSAL_SERIES = 200  # (kind, code) pairs; beyond: one "other" series
MAX_SERIES = 2000  # samples in one scrape (a bound, not a budget: a node has a few dozen)
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclass
class Family:
    name: str
    type: str
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> "Family":
        self.samples.append((labels, float(value)))
        return self


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def render(families: Iterable[Family]) -> str:
    """The text exposition of ``families`` (at most :data:`MAX_SERIES` samples)."""
    out: list[str] = []
    left = MAX_SERIES
    for fam in families:
        if not _NAME.match(fam.name) or fam.type not in ("counter", "gauge"):
            raise ValueError(f"bad metric {fam.name!r} ({fam.type})")
        out.append(f"# HELP {fam.name} {fam.help.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}")
        out.append(f"# TYPE {fam.name} {fam.type}")
        for labels, value in fam.samples[:left]:
            if any(not _LABEL.match(k) for k in labels):
                raise ValueError(f"bad label name in {fam.name}: {sorted(labels)}")
            text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
            out.append(f"{fam.name}{{{text}}} {_number(value)}" if text else f"{fam.name} {_number(value)}")
        left -= min(left, len(fam.samples))
    return "\n".join(out) + "\n"


def _counts(stats: Any, name: str) -> Mapping[str, int]:
    value = getattr(stats, name, None)
    return value if isinstance(value, Mapping) else {}


def node_families(role: str, node_id: str, agent: Any, bus_node: Any, started: float) -> list[Family]:
    """Every metric of a running node (see docs/deploy.md, "Metrics")."""
    fams = [
        Family("emrshare_node_info", "gauge", "the node's id and role (always 1)").add(1, id=node_id, role=role),
        Family("emrshare_node_start_time_seconds", "gauge", "when the node started (Unix time)").add(started),
        Family("emrshare_ledger_height", "gauge", "the last block this node committed, cut or followed")
        .add(agent.height()),
    ]
    fams += agent.families()
    own = Family("emrshare_queue_depth", "gauge", "work waiting in the node's own queues, by queue")
    for queue, depth in sorted(agent.queues().items()):
        own.add(depth, queue=queue)
    fams.append(own)
    stats = bus_node.statistics() if bus_node is not None else None
    if stats is not None:
        conns = Family("emrshare_bus_connections", "gauge", "bus connections open, by direction")
        conns.add(getattr(stats, "incoming_connections", 0), direction="incoming")
        conns.add(getattr(stats, "outgoing_connections", 0), direction="outgoing")
        fams.append(conns)
        broken = Family("emrshare_bus_connection_events_total", "counter",
                        "bus connections broken, refused at accept, or dropped, by event")
        broken.add(getattr(stats, "broken_connections", 0), event="broken")
        broken.add(getattr(stats, "refused_connections", 0), event="refused")
        for reason, n in sorted(_counts(stats, "dropped_connections").items()):
            broken.add(n, event=f"dropped-{reason}")
        fams.append(broken)
        fams.append(Family("emrshare_bus_received_bytes_total", "counter", "bytes of frames received")
                    .add(getattr(stats, "bytes_received", 0)))
        rejected = Family("emrshare_bus_rejected_total", "counter",
                          "envelopes the bus node or endpoint refused, by reason (a bus code)")
        merged: dict[str, int] = dict(_counts(stats, "rejected"))
        ep = agent.endpoint_statistics()
        for reason, n in _counts(ep, "rejected").items():
            merged[reason] = merged.get(reason, 0) + n
        for reason, n in sorted(merged.items()):
            rejected.add(n, reason=str(reason))
        fams.append(rejected)
        if ep is not None:
            queues = Family("emrshare_bus_queue_depth", "gauge", "messages waiting in the node's bus queues, by queue")
            queues.add(getattr(ep, "inbox", 0), queue="inbox")
            queues.add(getattr(ep, "pending_requests", 0), queue="pending_requests")
            fams.append(queues)
            fams.append(Family("emrshare_bus_subscribers", "gauge", "subscriptions to this node's topics")
                        .add(getattr(ep, "subscribers", 0)))
    refusals = Family("emrshare_refusals_total", "counter",
                      "requests the node's handlers refused before any work, by kind and code")
    merged_refusals: dict[tuple[str, str], int] = {}
    for (kind, code), n in agent.refusals().items():
        # "bus.subscribe <topic>": the topic is the client's; the label keeps only the kind
        key = (kind.split(" ", 1)[0][:64], code[:64])
        if key not in merged_refusals and len(merged_refusals) >= MAX_REFUSAL_SERIES:
            key = ("other", "other")
        merged_refusals[key] = merged_refusals.get(key, 0) + n
    for (kind, code), n in sorted(merged_refusals.items()):
        refusals.add(n, kind=kind, code=code)
    fams.append(refusals)
    return fams
