"""Rendering a load-test report: a terminal table, JSON, and a self-contained HTML page.

The report is one JSON-able dict (see :func:`agents.bench.loadtest.runner.run`);
the JSON output is that dict, with every number. The HTML page needs nothing
from the network: its plots are inline SVG drawn here (latency over time per
phase, throughput over time with the faults marked, latency histograms).
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
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return out


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


def render_text(r: dict) -> str:
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
    if r.get("setup"):
        out.append("")
        out.append("setup (not in the measured window):")
        out += ["  " + x for x in _table(PHASE_HEADERS, phase_rows(r["setup"]))]
    out.append("")
    out.append("measured window:")
    out += ["  " + x for x in _table(PHASE_HEADERS, phase_rows(r.get("phases", [])))]
    fails = [(p["phase"], reason, n) for p in r.get("phases", []) for reason, n in p["failures_by_reason"].items()]
    if fails:
        out.append("")
        out.append("failures by reason:")
        for phase, reason, n in fails:
            out.append(f"  {phase:<14} {n:>6}  {reason}")
    c = r.get("correctness", {})
    out.append("")
    out.append("correctness: " + correctness_line(c))
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
        out.append("")
        out.append("bus traffic per operation (client side; measured on isolated operations):")
        rows = []
        for op in comm.get("per_operation", []):
            rows.append([op["operation"], op["messages"], _f(op["bits"], 0), _f(op.get("bits_without_payload"), 0),
                         _f(op.get("paper_bits"), 0), _f(op.get("ratio_to_paper"), 1)])
        out += ["  " + x for x in _table(["operation", "messages", "bits", "bits w/o payload", "paper bits",
                                           "x paper"], rows)]
        for note in comm.get("notes", []):
            out.append(f"  - {note}")
    cr = r.get("crypto")
    if cr:
        out.append("")
        out.append(f"crypto CPU time ({cr.get('scope', '')}):")
        rows = [[name, _f(v["calls"], 0), _f(v["cpu_ms"] / 1000, 2)] for name, v in cr.get("run_totals", {}).items()]
        out += ["  " + x for x in _table(["primitive", "calls", "cpu s"], rows)]
        if cr.get("process_cpu_s") is not None:
            out.append(f"  pairing + GT + ECDSA: {_f(cr.get('bound_cpu_s'), 2)} s of {_f(cr['process_cpu_s'], 2)} s "
                       f"process CPU ({_f(cr.get('bound_share_percent'))} %)")
        per = cr.get("per_operation", {})
        for op, counts in per.items():
            items = ", ".join(f"{n} {v['calls']:g}" for n, v in counts.items())
            out.append(f"  per {op}: {items}")
    eff = r.get("efficiency")
    if eff:
        out.append("")
        b = eff.get("bound", {})
        out.append(f"efficiency: {_f(eff.get('measured_per_s'), 2)} accesses/s measured / "
                   f"{_f(b.get('limit_per_s'), 1)} crypto-bound ({b.get('cores')} cores / "
                   f"{_f(b.get('cost_per_op_ms'), 2)} ms per access) = {_f(eff.get('percent'))} %")
        if eff.get("process_cpu_per_access_ms") is not None:
            out.append(f"  this process used {_f(eff['process_cpu_per_access_ms'], 2)} ms CPU per access during "
                       f"saturation ({_f(eff.get('machine_share_used_percent'))} % of the machine's cores; "
                       f"the rest went to other processes)")
        out.append("  per access: " + ", ".join(
            f"{n} {b['calls_per_op'][n]:.1f} x {b['unit_cost_us'].get(n, 0):.0f} us" for n in b.get("calls_per_op", {})))
    fi = r.get("faults")
    if fi:
        out.append("")
        out.append(f"faults (baseline {_f(fi.get('baseline_per_s'), 1)} ops/s):")
        rows = [[f"{f['t']:.1f}s", f["action"], ",".join(f["agents"]), _f(f.get("min_throughput_per_s"), 1),
                 _f((f.get("dip_fraction") or 0) * 100 if f.get("dip_fraction") is not None else None, 0),
                 f["failed_within_window"], _f(f.get("recovery_s"), 1), f.get("error") or ""]
                for f in fi.get("faults", [])]
        out += ["  " + x for x in _table(["at", "action", "agents", "min ops/s", "dip %", "failed 10s",
                                           "recovery s", "error"], rows)]
    tg = r.get("targets")
    if tg:
        out.append("")
        out.append("targets:")
        for t in tg:
            mark = "met" if t["met"] else ("n/a" if t["met"] is None else "MISSED")
            out.append(f"  [{mark:^6}] {t['what']}: {t['value']} (target {t['target']})")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ HTML

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def _svg_lines(series: dict[str, list[tuple[float, float]]], *, title: str, ylabel: str, log_y: bool = False,
               markers: list[tuple[float, str]] | None = None, width: int = 760, height: int = 260) -> str:
    pts = [(x, y) for s in series.values() for x, y in s if y is not None and (y > 0 or not log_y)]
    if not pts:
        return f"<p><em>{html.escape(title)}: no data</em></p>"
    left, right, top, bottom = 60, 150, 24, 34
    xs = [p[0] for p in pts] + [m[0] for m in markers or []]
    x0, x1 = min(xs), max(xs)
    if x1 <= x0:
        x1 = x0 + 1
    ys = [p[1] for p in pts]
    fy = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    y0, y1 = (fy(min(ys)), fy(max(ys))) if log_y else (0.0, max(ys))
    if y1 <= y0:
        y1 = y0 + 1
    w, h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * w

    def py(y: float) -> float:
        return top + h - (fy(y) - y0) / (y1 - y0) * h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             f'<text x="{left}" y="14" font-weight="bold">{html.escape(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#999"/>']
    ticks = ([10 ** k for k in range(math.floor(y0), math.ceil(y1) + 1)] if log_y
             else [y0 + (y1 - y0) * i / 4 for i in range(5)])
    for t in ticks:
        if fy(t) < y0 - 1e-9 or fy(t) > y1 + 1e-9:
            continue
        y = py(t)
        parts.append(f'<line x1="{left}" x2="{left + w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{t:g}</text>')
    for i in range(6):
        x = x0 + (x1 - x0) * i / 5
        parts.append(f'<text x="{px(x):.1f}" y="{top + h + 14}" text-anchor="middle">{x:.0f}</text>')
    parts.append(f'<text x="{left + w / 2}" y="{height - 4}" text-anchor="middle">seconds</text>')
    parts.append(f'<text x="12" y="{top + h / 2}" transform="rotate(-90 12 {top + h / 2})" '
                 f'text-anchor="middle">{html.escape(ylabel)}</text>')
    for (mx, label) in markers or []:
        parts.append(f'<line x1="{px(mx):.1f}" x2="{px(mx):.1f}" y1="{top}" y2="{top + h}" stroke="#c00" '
                     f'stroke-dasharray="4 3"><title>{html.escape(label)}</title></line>')
    for i, (name, s) in enumerate(series.items()):
        color = _COLORS[i % len(_COLORS)]
        good = [(x, y) for x, y in s if y is not None and (y > 0 or not log_y)]
        if good:
            d = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in good)
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{d}"/>')
        ly = top + 12 + 14 * i
        parts.append(f'<rect x="{left + w + 10}" y="{ly - 8}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{left + w + 24}" y="{ly + 1}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _svg_histogram(bins: list[list[float]], *, title: str, width: int = 370, height: int = 200) -> str:
    if not bins:
        return f"<p><em>{html.escape(title)}: no data</em></p>"
    left, right, top, bottom = 40, 10, 24, 30
    w, h = width - left - right, height - top - bottom
    peak = max(b[2] for b in bins) or 1
    bw = w / len(bins)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="10">',
             f'<text x="{left}" y="14" font-weight="bold">{html.escape(title)}</text>']
    for i, (lo, hi, n) in enumerate(bins):
        bh = n / peak * h
        parts.append(f'<rect x="{left + i * bw:.1f}" y="{top + h - bh:.1f}" width="{max(bw - 1, 1):.1f}" '
                     f'height="{bh:.1f}" fill="#1f77b4"><title>{lo:.1f}-{hi:.1f} ms: {n}</title></rect>')
    parts.append(f'<text x="{left}" y="{top + h + 14}">{bins[0][0]:.1f} ms</text>')
    parts.append(f'<text x="{left + w}" y="{top + h + 14}" text-anchor="end">{bins[-1][1]:.0f} ms (log scale)</text>')
    parts.append(f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{peak}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _html_table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(r: dict) -> str:
    text = render_text(r)
    markers = [(f["t"], f"{f['action']} {','.join(f['agents'])}") for f in (r.get("faults") or {}).get("faults", [])]
    by_phase = r.get("timeline_by_phase", {})
    lat_series = {}
    for phase, tl in by_phase.items():
        lat_series[f"{phase} p50"] = [(b["t"], b["p50_ms"]) for b in tl]
        lat_series[f"{phase} p99"] = [(b["t"], b["p99_ms"]) for b in tl]
    thr_series = {"all ok": [(b["t"], b["throughput_per_s"]) for b in r.get("timeline", [])],
                  "failed": [(b["t"], float(b["failed"])) for b in r.get("timeline", [])]}
    plots = [
        _svg_lines(thr_series, title="Throughput over time (completed per second)", ylabel="ops/s",
                   markers=markers),
        _svg_lines(lat_series, title="Latency over time (per second, by phase)", ylabel="ms (log)", log_y=True,
                   markers=markers),
    ]
    hists = "".join(_svg_histogram(b, title=f"{phase} latency") for phase, b in r.get("histograms", {}).items())
    c = r.get("correctness", {})
    ok = c.get("lost") == 0 and c.get("corrupted") == 0
    verdict = (f'<p class="{"good" if ok else "bad"}"><strong>{html.escape(correctness_line(c))}</strong></p>')
    tables = "<h2>Measured window</h2>" + _html_table(PHASE_HEADERS, phase_rows(r.get("phases", [])))
    if r.get("setup"):
        tables += "<h2>Setup</h2>" + _html_table(PHASE_HEADERS, phase_rows(r["setup"]))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>emrshare loadtest {html.escape(str(r.get('started', '')))}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 12px; }}
.good {{ color: #060; }} .bad {{ color: #b00; }}
</style></head><body>
<h1>emrshare load test</h1>
{verdict}
{''.join(plots)}
<div>{hists}</div>
{tables}
<h2>Full report</h2>
<pre>{html.escape(text)}</pre>
<script type="application/json" id="report">{html.escape(to_json(r))}</script>
</body></html>
"""
