"""Rendering a load-test report: a terminal table, JSON, and a self-contained HTML page.

The report is one JSON-able dict (see :func:`agents.bench.loadtest.runner.run`);
the JSON output is that dict, with every number. The HTML page needs nothing
from the network (no script, no CDN, no external file): the summary first
(verdict, settings, efficiency and cost, per-phase throughput and p50/p90/p99,
failures, targets, faults), then charts drawn with matplotlib as inline SVG
(:mod:`agents.bench.loadtest.charts`: throughput over time, one chart per
phase family, latency histograms, the crypto cost of an access), the detailed
tables, the text report and the JSON itself in a
``<script type="application/json" id="report">`` element.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any, Iterable

# The paper's Table 4 communication costs (bits per operation)
PAPER_BITS = {"store": 2880, "access": 3296}


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=False, default=_default)


def _default(o: Any) -> Any:
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, bytes):
        return o.hex()
    return str(o)


def _f(v: Any, nd: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _table(headers: list[str], rows: Iterable[list[Any]]) -> list[str]:
    """A text table's lines, indented two spaces under the heading of its section."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return ["  " + x for x in out]


def _section(out: list[str], heading: str) -> None:
    """Start a section of the text report: a blank line, then its heading."""
    out += ["", heading]


def phase_rows(phases: list[dict]) -> list[list[Any]]:
    rows = []
    for p in phases:
        lat = p["latency_ms"]
        rows.append([p["phase"], p["attempted"], p["succeeded"], p["failed"], _f(p["throughput_per_s"], 2),
                     _f(lat.get("p50")), _f(lat.get("p90")), _f(lat.get("p99")), _f(lat.get("max"))])
    return rows


PHASE_HEADERS = ["phase", "attempted", "ok", "failed", "ops/s", "p50 ms", "p90 ms", "p99 ms", "max ms"]


def correctness_line(c: dict) -> str:
    if not c:
        return "correctness: not checked"
    s = (f"{c.get('lost', '?')} lost, {c.get('corrupted', '?')} corrupted "
         f"({c.get('verified', 0)} of {c.get('acknowledged', 0)} acknowledged records read back byte-identical")
    if c.get("stores_not_acknowledged"):
        s += f"; {c['stores_not_acknowledged']} stores failed and were not acknowledged"
    return s + ")"


def breakdown_rows(comm: dict) -> list[list[Any]]:
    """Rows of the per-kind breakdown of the bus traffic per operation: (operation, kind,
    messages, bits, bits per message, share of the operation's bits), the largest first.
    A request and its reply count under the request's kind (both directions)."""
    rows: list[list[Any]] = []
    for op in comm.get("per_operation", []):
        kinds = op.get("by_kind") or {}
        total = sum(v["bits"] for v in kinds.values()) or 1.0
        for kind, v in sorted(kinds.items(), key=lambda kv: (-kv[1]["bits"], kv[0])):
            m = v["messages"]
            rows.append([op["operation"].split(" (")[0], kind, _f(round(m, 1), 1), _f(v["bits"], 0),
                         _f(v["bits"] / m, 0) if m else "-", _f(100.0 * v["bits"] / total, 1)])
    return rows


def render_text(r: dict, *, breakdown: bool = False) -> str:
    """The text report; ``breakdown``: also the bus traffic per message kind of each operation."""
    out: list[str] = []
    out.append(f"emrshare loadtest — {r.get('started', '')}")
    out.append(f"target:   {r.get('target', {}).get('description', '')}")
    out.append(f"backend:  {r.get('backend', '')}; {r.get('cores', '?')} cores")
    s = r.get("settings", {})
    mode = (f"open loop at {_f(s.get('rate'), 2)} op/s" if s.get("rate") else
            f"closed loop, concurrency {s.get('concurrency')}")
    out.append(f"load:     {mode}; {r.get('workload', {}).get('patients')} patients, "
               f"{r.get('workload', {}).get('doctors')} doctors; warm-up {_f(s.get('warmup'))} s excluded, "
               f"measured {_f(r.get('window_s'))} s; mix {r.get('workload', {}).get('mix')}")
    sat = r.get("saturation")
    if sat:
        out.append(f"saturation (closed loop, access only, concurrency {sat.get('concurrency')}): "
                   f"{_f(sat.get('access_per_s'), 2)} accesses/s")
        served = sat.get("peer_reencryptions")
        if served and served.get("served"):
            out.append(f"  the peers served {served['served']:,} re-encryption shares meanwhile (warm-up included), "
                       f"{_f(served.get('reply_cache_percent'))} % of them from their reply caches (a repeat read "
                       f"of a record under the same grant: no pairing, no signature)")
    msat = r.get("mix_saturation")
    if msat:
        out.append(f"saturation (closed loop, the run's mix, concurrency {msat.get('concurrency')}): "
                   f"{_f(msat.get('ops_per_s'), 2)} op/s (--rate half: half of this)")
    if r.get("setup"):
        _section(out, "setup (not in the measured window):")
        out += _table(PHASE_HEADERS, phase_rows(r["setup"]))
    _section(out, "measured window:")
    out += _table(PHASE_HEADERS, phase_rows(r.get("phases", [])))
    aw = r.get("access_windows")
    if aw:
        t0 = r.get("settings", {}).get("warmup", 0.0)
        _section(out, "access latency (full accesses and reads) per 5 s of the measured window, by completion:")
        out.append("  s:    " + "".join(f"{b['t'] - t0:>6.0f}" for b in aw))
        out.append("  n:    " + "".join(f"{b['ok']:>6}" for b in aw))
        out.append("  p50:  " + "".join(f"{_f(b['p50_ms'], 0):>6}" for b in aw))
        out.append("  p99:  " + "".join(f"{_f(b['p99_ms'], 0):>6}" for b in aw))
    fails = [(p["phase"], reason, n) for p in r.get("phases", []) for reason, n in p["failures_by_reason"].items()]
    if fails:
        _section(out, "failures by reason:")
        for phase, reason, n in fails:
            out.append(f"  {phase:<14} {n:>6}  {reason}")
    c = r.get("correctness", {})
    _section(out, "correctness: " + correctness_line(c))
    den = r.get("denials", {})
    if den:
        out.append(f"denials:     {den.get('denied_correctly', 0)} policy denials and "
                   f"{den.get('revoked_correctly', 0)} revocations refused for the right reason; "
                   f"{den.get('wrong_outcomes', 0)} wrong outcomes")
        for w in den.get("wrong", [])[:10]:
            out.append(f"  wrong: {w}")
    for item in c.get("lost_records", [])[:20]:
        out.append(f"  LOST {item['patient']}/{item['record_id']} ({item['label']}, {item['size']} B): "
                   f"{item['last_error']}")
    for item in c.get("corrupted_records", [])[:20]:
        out.append(f"  CORRUPTED {item['patient']}/{item['record_id']}")
    comm = r.get("communication")
    if comm:
        _section(out, "bus traffic per operation (client side; measured on isolated operations):")
        rows = []
        for op in comm.get("per_operation", []):
            rows.append([op["operation"], op["messages"], _f(op["bits"], 0), _f(op.get("bits_without_payload"), 0),
                         _f(op.get("paper_bits"), 0), _f(op.get("ratio_to_paper"), 1)])
        out += _table(["operation", "messages", "bits", "bits w/o payload", "paper bits", "x paper"], rows)
        rows = [[op["operation"], _f(op.get("queries"), 1), _f(op.get("polls"), 1), _f(op.get("notices"), 1),
                 _f(op.get("fallbacks"), 1)] for op in comm.get("per_operation", []) if "polls" in op]
        if rows:
            out += _table(["operation", "queries", "polls", "notices", "fallbacks"], rows)
        for note in comm.get("notes", []):
            out.append(f"  - {note}")
        if breakdown:
            _section(out, "bus traffic per operation and message kind (a request and its reply count under "
                          "the request's kind; commits/<subject>: commit notices):")
            out += _table(["operation", "kind", "messages", "bits", "bits/message", "% of op"],
                          breakdown_rows(comm))
    cl = r.get("commits_under_load")
    if cl:
        _section(out, "commits in the measured window (every patient and doctor): "
                 + ", ".join(f"{k} {v:,}" for k, v in sorted(cl.items())))
    cr = r.get("crypto")
    if cr:
        _section(out, f"crypto CPU time ({cr.get('scope', '')}):")
        rows = [[name, _f(v["calls"], 0), _f(v["cpu_ms"] / 1000, 2)] for name, v in cr.get("run_totals", {}).items()]
        out += _table(["primitive", "calls", "cpu s"], rows)
        if cr.get("process_cpu_s") is not None:
            out.append(f"  pairing + GT + ECDSA: {_f(cr.get('bound_cpu_s'), 2)} s of {_f(cr['process_cpu_s'], 2)} s "
                       f"process CPU ({_f(cr.get('bound_share_percent'))} %)")
        per = cr.get("per_operation", {})
        for op, counts in per.items():
            items = ", ".join(f"{n} {v['calls']:g}" for n, v in counts.items())
            out.append(f"  per {op}: {items}")
    g = r.get("gc")
    if g:
        _section(out, f"garbage collection in the measured window ({g.get('scope', '')}; "
                 f"{'kept: start-up state frozen, young threshold ' + str(g['thresholds'][0]) if g.get('kept') else 'default collector'}):")
        rows = [[gen, v["collections"], _f(v["p50_ms"], 2), _f(v["p99_ms"], 1), _f(v["max_ms"], 1), _f(v["total_ms"], 0),
                 _f(v.get("cpu_p50_ms"), 2), _f(v.get("cpu_max_ms"), 1), _f(v.get("cpu_total_ms"), 0)]
                for gen, v in g.get("by_generation", {}).items()]
        out += _table(["generation", "collections", "p50 ms", "p99 ms", "max ms", "total ms", "cpu p50 ms",
                       "cpu max ms", "cpu total ms"], rows)
        walked = g.get("walked_objects") or [None, None]
        out.append(f"  objects walked by a full collection: {walked[0]} at the start, {walked[1]} at the end; "
                   f"frozen {g.get('frozen_objects')}; full collections (s, ms): "
                   + ", ".join(f"{e[0]:g} {e[1]:.0f}" for e in g.get("full", [])[:20]))
    eff = r.get("efficiency")
    if eff:
        b = eff.get("bound", {})
        _section(out, f"efficiency: {_f(eff.get('measured_per_s'), 2)} accesses/s measured / "
                 f"{_f(b.get('limit_per_s'), 1)} crypto-bound ({b.get('cores')} cores / "
                 f"{_f(b.get('cost_per_op_ms'), 2)} ms per access) = {_f(eff.get('percent'))} %")
        e = eff.get("essential_bound")
        if e:
            out.append(f"  against the essential bound (the paper's pairings, "
                       f"{_f(e['calls_per_op'].get('pairing'), 1)} per access, and GT operations, and for each ledger "
                       f"transaction one signature and a verification per peer: "
                       f"{_f(e['calls_per_op'].get('ecdsa_sign'), 1)} and "
                       f"{_f(e['calls_per_op'].get('ecdsa_verify'), 1)} per access in this mix): "
                       f"{_f(e.get('limit_per_s'), 1)} accesses/s ({_f(e.get('cost_per_op_ms'), 2)} "
                       f"ms per access) = {_f(eff.get('essential_percent'))} %")
        if eff.get("process_cpu_per_access_ms") is not None:
            out.append(f"  this process used {_f(eff['process_cpu_per_access_ms'], 2)} ms CPU per access during "
                       f"saturation ({_f(eff.get('machine_share_used_percent'))} % of the machine's cores; "
                       f"the rest went to other processes)")
        out.append("  per access: " + ", ".join(
            f"{n} {b['calls_per_op'][n]:.1f} x {b['unit_cost_us'].get(n, 0):.0f} us" for n in b.get("calls_per_op", {})))
        hits = eff.get("probe_reply_cache_hits") or {}
        if any(hits.values()):
            out.append("  the probes' shares answered by a peer's reply cache, counted above as the pairing and "
                       "signature each stands for: " + ", ".join(f"{v:.2f} per {op}" for op, v in hits.items()))
        keys = eff.get("probe_data_key_hits") or {}
        if any(keys.values()):
            out.append("  the probes' data keys answered by the doctor's memo, counted above as the GT "
                       "multi-exponentiation each stands for: " + ", ".join(f"{v:.2f} per {op}" for op, v in keys.items()))
        sat = r.get("saturation") or {}
        ran = sum(v.get("cpu_ms", 0) for v in (sat.get("crypto") or {}).values()) / 1000
        if sat.get("process_cpu_s"):  # (in-process: every agent's crypto, counted where it ran)
            out.append(f"  the crypto the saturation run itself ran (counted calls, timed): {_f(ran, 2)} s of "
                       f"{_f(sat['process_cpu_s'], 2)} s CPU ({_f(ran / sat['process_cpu_s'] * 100)} %); the "
                       f"limit above counts the isolated probe operations' calls, which may run pairings and "
                       f"signatures the saturation run's reads do not (a peer's reply cache answers a repeat read; "
                       f"one access-log batch carries many reads)")
    fi = r.get("faults")
    if fi:
        _section(out, f"faults (baseline {_f(fi.get('baseline_per_s'), 1)} ops/s):")
        rows = [[f"{f['t']:.1f}s", f["action"], ",".join(f["agents"]), _f(f.get("min_throughput_per_s"), 1),
                 _f((f.get("dip_fraction") or 0) * 100 if f.get("dip_fraction") is not None else None, 0),
                 f["failed_within_window"], _f(f.get("recovery_s"), 1), _f(f.get("write_gap_s"), 2),
                 f.get("error") or ""]
                for f in fi.get("faults", [])]
        out += _table(["at", "action", "agents", "min ops/s", "dip %", "failed 10s", "recovery s", "write gap s",
                       "error"], rows)
        for ev in fi.get("not_reached", []):
            out.append(f"  not reached (the run ended first): {ev['why']} at {ev['at_fraction'] * 100:.0f} % "
                       "of the window")
    tg = r.get("targets")
    if tg:
        _section(out, "targets:")
        for t in tg:
            mark = "met" if t["met"] else ("n/a" if t["met"] is None else "MISSED")
            out.append(f"  [{mark:^6}] {t['what']}: {t['value']} (target {t['target']})")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ HTML

_CSS = """
:root { --ink: #1d1d1f; --muted: #5f6368; --line: #d9d9de; --good: #00694d; --bad: #b3261e; }
* { box-sizing: border-box; }
body { font-family: "DejaVu Sans", Arial, Helvetica, sans-serif; color: var(--ink); margin: 0 auto;
       padding: 24px 28px 48px; max-width: 1180px; font-size: 14px; line-height: 1.4; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 14px 0 6px; }
.sub { color: var(--muted); margin: 0 0 14px; overflow-wrap: anywhere; }
.verdict { border-radius: 6px; padding: 10px 14px; margin: 10px 0 6px; font-size: 15px; border: 1px solid; }
.verdict.good { background: #e8f5ef; border-color: #9fd3bd; color: var(--good); }
.verdict.bad { background: #fdecea; border-color: #f1aca6; color: var(--bad); }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); gap: 8px 24px; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 4px 0 12px; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: right; vertical-align: top; }
th { background: #f4f4f6; font-weight: 600; white-space: nowrap; }
td:first-child, th:first-child { text-align: left; }
table.kv { width: 100%; }
table.kv th { background: none; text-align: left; font-weight: normal; color: var(--muted); width: 42%;
              white-space: normal; }
table.kv td { text-align: left; overflow-wrap: anywhere; }
td.text, th.text { text-align: left; overflow-wrap: break-word; min-width: 8em; }
td.wide { min-width: 18em; }
.met { color: var(--good); font-weight: 600; } .missed { color: var(--bad); font-weight: 600; }
.na { color: var(--muted); }
.bad-num { color: var(--bad); font-weight: 600; }
.note { color: var(--muted); font-size: 12.5px; margin: 2px 0 10px; }
figure { margin: 8px 0 18px; }
svg.chart { width: 100%; height: auto; display: block; }
details { margin-top: 24px; }
summary { cursor: pointer; font-weight: 600; }
pre { background: #f6f6f8; padding: 12px; overflow-x: auto; font-size: 12px; max-width: 100%; }
"""


def _esc(v: Any) -> str:
    return html.escape(str(v))


def _html_table(headers: list[str], rows: list[list[Any]], *, id: str | None = None,
                text_cols: tuple[int, ...] = (), wide_cols: tuple[int, ...] = ()) -> str:
    """A table (wrapped so that a wide one scrolls inside the page rather than overflowing it).
    Cells may be (text, css class) pairs."""
    head = "".join(f'<th class="text">{_esc(h)}</th>' if i in text_cols else f"<th>{_esc(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for r in rows:
        cells = []
        for i, c in enumerate(r):
            text, cls = c if isinstance(c, tuple) else (c, "")
            if i in text_cols:
                cls = (cls + " text").strip()
            if i in wide_cols:
                cls = (cls + " wide").strip()
            cells.append(f'<td class="{cls}">{_esc(text)}</td>' if cls else f"<td>{_esc(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    ident = f' id="{id}"' if id else ""
    return f'<div class="scroll"><table{ident}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _kv_table(rows: list[tuple[str, Any]], *, id: str | None = None) -> str:
    ident = f' id="{id}"' if id else ""
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows if v not in (None, ""))
    return f'<table class="kv"{ident}><tbody>{body}</tbody></table>'


def _load_mode(r: dict) -> str:
    s = r.get("settings", {})
    if s.get("rate"):
        return f"open loop, {_f(s.get('rate'), 2)} arrivals/s" + (" (Poisson)" if s.get("poisson") else "")
    return f"closed loop, {s.get('concurrency')} operations in flight"


def settings_rows(r: dict) -> list[tuple[str, Any]]:
    s = r.get("settings", {})
    w = r.get("workload", {})
    mix = w.get("mix") or {}
    rows: list[tuple[str, Any]] = [
        ("started (UTC)", r.get("started", "")),
        ("target", (r.get("target") or {}).get("description", "")),
        ("crypto backend, cores", f"{r.get('backend', '')}, {r.get('cores', '?')} cores"),
        ("load", _load_mode(r)),
        ("measured window", f"{_f(r.get('window_s'))} s after a {_f(s.get('warmup'))} s warm-up "
                            f"({_f(r.get('warmup_ops_excluded'))} warm-up operations excluded)"),
        ("users", f"{w.get('patients')} patients, {w.get('doctors')} doctors"),
        ("operation mix (weights)", ", ".join(f"{k} {v:g}" for k, v in mix.items())),
    ]
    if w.get("imaging_fraction") is not None:
        lo, hi = (w.get("imaging_mib") or (None, None))[:2]
        rows.append(("record sizes", f"{w['imaging_fraction'] * 100:g} % imaging of {lo:g}-{hi:g} MiB, "
                                     f"the rest FHIR bundles" if lo is not None else ""))
    if w.get("request_timeout") is not None:
        rows.append(("request timeout", f"{w['request_timeout']:g} s"))
    if s.get("seed") is not None:
        rows.append(("seed", s["seed"]))
    sat = r.get("saturation")
    if sat:
        rows.append(("access saturation", f"{_f(sat.get('access_per_s'), 2)} accesses/s "
                                          f"(closed loop, concurrency {sat.get('concurrency')})"))
    return rows


def efficiency_rows(r: dict) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    eff = r.get("efficiency")
    if eff:
        b = eff.get("bound", {})
        rows.append(("efficiency (accesses/s measured / crypto-bound limit)", f"{_f(eff.get('percent'))} %"))
        rows.append(("accesses/s at saturation", _f(eff.get("measured_per_s"), 2)))
        rows.append(("crypto-bound limit (accesses/s)",
                     f"{_f(b.get('limit_per_s'), 1)} ({b.get('cores')} cores / {_f(b.get('cost_per_op_ms'), 2)} ms)"))
        e = eff.get("essential_bound")
        if e:
            rows.append(("efficiency against the essential bound", f"{_f(eff.get('essential_percent'))} % of "
                         f"{_f(e.get('limit_per_s'), 1)} accesses/s ({_f(e.get('cost_per_op_ms'), 2)} ms)"))
        if eff.get("process_cpu_per_access_ms") is not None:
            rows.append(("process CPU per access", f"{_f(eff['process_cpu_per_access_ms'], 2)} ms"))
    acc = r.get("access_all") or {}
    if acc.get("count"):
        rows.append(("access p50 / p99 (full accesses and reads)",
                     f"{_f(acc.get('p50_ms'))} / {_f(acc.get('p99_ms'))} ms over {_f(acc['count'])}"))
    cr = r.get("crypto")
    if cr and cr.get("process_cpu_s") is not None:
        rows.append(("pairing + GT + ECDSA share of process CPU",
                     f"{_f(cr.get('bound_share_percent'))} % ({_f(cr.get('bound_cpu_s'), 2)} s of "
                     f"{_f(cr.get('process_cpu_s'), 2)} s; {cr.get('scope', '')})"))
    bus = r.get("bus_traffic_run")
    if bus:
        rows.append(("client bus traffic in the window", f"{_f(bus.get('bytes_per_s', 0) / 1e6, 2)} MB/s"))
    for op in (r.get("communication") or {}).get("per_operation", []):
        rows.append((f"bits per {op['operation'].split(' ')[0]} (without payload)",
                     f"{_f(op.get('bits_without_payload'), 0)} = {_f(op.get('ratio_to_paper'), 1)} x the paper's "
                     f"{_f(op.get('paper_bits'), 0)}"))
    return rows


def _num_cell(v: Any, nd: int, bad: bool = False) -> Any:
    text = _f(float(v), nd) if isinstance(v, (int, float)) and nd else _f(v, nd)
    return (text, "bad-num") if bad else text


def phase_html_rows(phases: list[dict]) -> list[list[Any]]:
    rows = []
    for p in phases:
        lat = p["latency_ms"]
        rows.append([p["phase"], _f(p["attempted"]), _f(p["succeeded"]), _num_cell(p["failed"], 0, p["failed"] > 0),
                     _f(p["throughput_per_s"], 2), _f(lat.get("p50")), _f(lat.get("p90")), _f(lat.get("p99")),
                     _f(lat.get("max"))])
    return rows


def fault_rows(fi: dict) -> list[list[Any]]:
    rows = []
    for i, f in enumerate(fi.get("faults", []), 1):
        dip = f.get("dip_fraction")
        rows.append([f"F{i}", _f(float(f["t"]), 1), f["action"], ", ".join(f["agents"]),
                     _f(f.get("min_throughput_per_s"), 1), _f(dip * 100, 0) if dip is not None else "-",
                     _num_cell(f["failed_within_window"], 0, f["failed_within_window"] > 0),
                     _f(f.get("recovery_s"), 1), _f(f.get("write_gap_s"), 2), f.get("why") or "",
                     f.get("error") or ""])
    return rows


FAULT_HEADERS = ["fault", "at (s)", "action", "agents", "min ops/s in 10 s", "dip %", "failed in 10 s",
                 "recovery (s)", "write gap (s)", "what", "error"]
PHASE_HTML_HEADERS = ["phase", "attempted", "ok", "failed", "ops/s", "p50 ms", "p90 ms", "p99 ms", "max ms"]


def _verdict(r: dict) -> tuple[bool, str]:
    c = r.get("correctness", {})
    den = r.get("denials", {})
    ok = c.get("lost") == 0 and c.get("corrupted") == 0 and not den.get("wrong_outcomes")
    parts = [correctness_line(c)]
    if den:
        parts.append(f"{_f(den.get('denied_correctly', 0))} policy denials and "
                     f"{_f(den.get('revoked_correctly', 0))} revocations refused for the right reason, "
                     f"{_f(den.get('wrong_outcomes', 0))} wrong outcomes")
    failed = sum(p["failed"] for p in r.get("phases", []))
    attempted = sum(p["attempted"] for p in r.get("phases", []))
    parts.append(f"{_f(failed)} of {_f(attempted)} operations failed in the measured window")
    return ok, ("PASS: " if ok else "FAIL: ") + "; ".join(parts)


def render_html(r: dict) -> str:
    """The self-contained HTML page: summary tables first, then the charts (inline SVG, matplotlib),
    the detailed tables, the text report and the JSON (in a ``<script type="application/json">``)."""
    from agents.bench.loadtest import charts

    faults = (r.get("faults") or {}).get("faults", [])
    phases = r.get("phases", [])
    ok, verdict = _verdict(r)
    out: list[str] = []
    out.append(f'<h1>emrshare load test</h1><p class="sub">{_esc(r.get("started", ""))} · '
               f'{_esc((r.get("target") or {}).get("description", ""))}</p>')
    out.append(f'<div class="verdict {"good" if ok else "bad"}" id="verdict"><strong>{_esc(verdict)}</strong></div>')
    for item in (r.get("correctness") or {}).get("lost_records", [])[:20]:
        out.append(f'<p class="note">LOST {_esc(item["patient"])}/{_esc(item["record_id"])} ({_esc(item["label"])}, '
                   f'{_f(item["size"])} B): {_esc(item["last_error"])}</p>')
    for item in (r.get("correctness") or {}).get("corrupted_records", [])[:20]:
        out.append(f'<p class="note">CORRUPTED {_esc(item["patient"])}/{_esc(item["record_id"])}</p>')
    for w in (r.get("denials") or {}).get("wrong", [])[:10]:
        out.append(f'<p class="note">wrong outcome: {_esc(w)}</p>')

    out.append("<h2>Summary</h2>")
    out.append('<div class="grid"><section><h3>Settings</h3>' + _kv_table(settings_rows(r), id="settings") +
               "</section><section><h3>Efficiency and cost</h3>" +
               (_kv_table(efficiency_rows(r), id="efficiency") or "") + "</section></div>")
    out.append("<h3>Measured window, per phase</h3>")
    out.append(_html_table(PHASE_HTML_HEADERS, phase_html_rows(phases), id="phases"))
    out.append('<p class="note">ops/s: operations completed successfully per second of the measured window; '
               "latencies of successful operations (nearest-rank percentiles), from the scheduled start.</p>")
    fails = [[p["phase"], _f(n), reason] for p in phases for reason, n in p["failures_by_reason"].items()]
    if fails:
        out.append("<h3>Failures by reason</h3>" + _html_table(["phase", "count", "reason"], fails, id="failures",
                                                               text_cols=(2,), wide_cols=(2,)))
    tg = r.get("targets")
    if tg:
        rows = []
        for t in tg:
            mark = ("met", "met") if t["met"] else (("n/a", "na") if t["met"] is None else ("MISSED", "missed"))
            rows.append([t["what"], t["value"], t["target"], mark])
        out.append("<h3>Targets</h3>" + _html_table(["what", "value", "target", "verdict"], rows, id="targets"))
    fi = r.get("faults")
    if fi:
        out.append(f"<h3>Faults injected (baseline {_f(fi.get('baseline_per_s'), 1)} ops/s)</h3>")
        rows = fault_rows(fi)
        headers = FAULT_HEADERS
        if not any(r[-1] for r in rows):  # no fault failed to apply: no empty error column
            headers, rows = headers[:-1], [r[:-1] for r in rows]
        out.append(_html_table(headers, rows, id="faults", text_cols=(3, 9, 10), wide_cols=(9, 10)))
        out.append('<p class="note">F1, F2, ... mark the faults on the charts\' time axes; grey bands: an agent '
                   "was down (killed until restarted, or stalled until resumed). Dip: worst 1 s throughput within "
                   "10 s of the fault against the median before the first fault; recovery: until a 3 s moving "
                   "average is back to 90 % of it; write gap: from the fault until the first successful store or "
                   "revoke that started after it.</p>")
        for ev in fi.get("not_reached", []):
            out.append(f'<p class="note">Not reached (the run ended first): {html.escape(ev["why"])} at '
                       f'{ev["at_fraction"] * 100:.0f} % of the window.</p>')

    out.append("<h2>Over time</h2>")
    if r.get("timeline"):
        out.append(f"<figure>{charts.throughput_chart(r['timeline'], faults, salt='thr')}</figure>")
    by_phase = r.get("timeline_by_phase", {})
    order = [p["phase"] for p in phases] + [p for p in by_phase if p not in {q["phase"] for q in phases}]
    for i, (title, members) in enumerate(charts.families(p for p in order if p in by_phase)):
        out.append(f'<figure data-family="{_esc(title)}">'
                   f"{charts.family_chart(title, members, by_phase, faults, salt=f'fam{i}')}</figure>")
    hist = {p: b for p, b in (r.get("histograms") or {}).items() if b}
    if hist:
        out.append("<h2>Latency distributions</h2>")
        out.append('<p class="note">Successful operations of the measured window; the solid line marks the p50, '
                   "the dashed one the p99.</p>")
        out.append(f"<figure>{charts.histograms_chart(hist, {p['phase']: p for p in phases}, salt='hist')}</figure>")
    crypto_chart = charts.crypto_cost_chart(r.get("efficiency") or {}, salt="crypto")
    if crypto_chart:
        out.append("<h2>Crypto cost</h2>" + f"<figure>{crypto_chart}</figure>")

    out.append("<h2>Details</h2>")
    if r.get("setup"):
        out.append("<h3>Setup (not in the measured window)</h3>")
        out.append(_html_table(PHASE_HTML_HEADERS, phase_html_rows(r["setup"]), id="setup"))
    comm = r.get("communication")
    if comm:
        rows = [[op["operation"], _f(op["messages"]), _f(op["bits"], 0), _f(op.get("bits_without_payload"), 0),
                 _f(op.get("paper_bits"), 0), _f(op.get("ratio_to_paper"), 1)] for op in comm.get("per_operation", [])]
        out.append("<h3>Bus traffic per operation (client side, isolated operations)</h3>")
        out.append(_html_table(["operation", "messages", "bits", "bits w/o payload", "paper bits", "x paper"], rows,
                               id="communication"))
        out += [f'<p class="note">{_esc(n)}</p>' for n in comm.get("notes", [])]
    cr = r.get("crypto")
    if cr:
        rows = [[name, _f(v["calls"], 0), _f(v["cpu_ms"] / 1000, 2)] for name, v in cr.get("run_totals", {}).items()]
        out.append(f"<h3>Crypto CPU time in the measured window ({_esc(cr.get('scope', ''))})</h3>")
        out.append(_html_table(["primitive", "calls", "CPU s"], rows, id="crypto"))
    out.append(f"<details><summary>Plain-text report</summary><pre>{_esc(render_text(r))}</pre></details>")
    title = f"emrshare load test {r.get('started', '')}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(out) +
            f'\n<script type="application/json" id="report">{_json_in_html(r)}</script>\n</body></html>\n')


def _json_in_html(r: dict) -> str:
    # inside <script> nothing is unescaped: keep the JSON valid and make "</script>" impossible
    return to_json(r).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
