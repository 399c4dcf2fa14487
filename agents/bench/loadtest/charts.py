"""The load-test report's charts: matplotlib figures rendered to inline SVG strings.

matplotlib is in the ``bench`` extra; it is imported here only, and this module
only by :func:`agents.bench.loadtest.report.render_html`, so the load test runs
(and prints its text report) without it being imported. Figures are built with
``matplotlib.figure.Figure`` and saved as SVG: no pyplot, no global backend, no
display. Text stays text in the SVG (``svg.fonttype = none``), so the page is
small, its labels are searchable, and tests can read them.

Every chart plots the measured window on the run's time axis (seconds since
the run started, warm-up excluded) and marks the injected faults on it:
a numbered vertical line per fault (``F1``, ``F2``, ... as in the faults table)
and a shaded band while an agent was killed or stalled.

Colours: the Okabe-Ito palette (distinguishable with the common colour-vision
deficiencies); each phase keeps its colour on every chart; p50 is a solid
line, p99 a dashed one, so nothing depends on colour alone.
"""

from __future__ import annotations

import io
import math
import re
from typing import Any, Iterable, Sequence

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

# Okabe & Ito (2008), without yellow (too pale on white)
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000"]
PHASE_COLORS = {"store": "#0072B2", "access": "#E69F00", "read": "#009E73", "denied": "#CC79A7",
                "revoke": "#D55E00", "revoke-skipped": "#56B4E9", "register": "#0072B2",
                "set_policy": "#E69F00"}
FAILED_COLOR = "#D55E00"
FAULT_STYLE = {"kill": "-", "stall": "--", "resume": ":", "restart": "-."}

# phase families: one chart each (phases not named here get a chart of their own)
FAMILIES: list[tuple[str, tuple[str, ...]]] = [
    ("Store", ("store",)),
    ("Access (full access and reads with a held grant)", ("access", "read")),
    ("Refusals (denied access, revocation)", ("denied", "revoke", "revoke-skipped")),
]

_RC = {
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": 10.0,
    "axes.titlesize": 11.0,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e3e3e3",
    "grid.linewidth": 0.8,
    "axes.axisbelow": True,
    "legend.frameon": False,
    "legend.fontsize": 9.0,
    "xtick.labelsize": 9.0,
    "ytick.labelsize": 9.0,
}

WIDTH_IN = 10.0  # figure width in inches (72 SVG units each); the page scales it to its column


def phase_color(phase: str, index: int = 0) -> str:
    return PHASE_COLORS.get(phase, OKABE_ITO[index % len(OKABE_ITO)])


def families(phases: Iterable[str]) -> list[tuple[str, list[str]]]:
    """The phase families present in ``phases`` (in :data:`FAMILIES` order), then any other phase alone."""
    present = list(dict.fromkeys(phases))
    out: list[tuple[str, list[str]]] = []
    named: set[str] = set()
    for title, members in FAMILIES:
        named.update(members)
        got = [p for p in members if p in present]
        if got:
            out.append((title, got))
    out += [(p, [p]) for p in present if p not in named]
    return out


# ------------------------------------------------------------------ SVG output


def _svg(fig: Figure, salt: str, alt: str) -> str:
    """The figure as an inline ``<svg>`` element that scales to its container's width."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": salt}):  # unique ids per figure: several share one page
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, flags=re.S)  # RDF boilerplate
    # every id unique on the page (matplotlib numbers its groups figure_1, axes_1, ... in each SVG)
    text = re.sub(r'\bid="([^"]+)"', rf'id="{salt}-\1"', text)
    text = re.sub(r'url\(#([^)]+)\)', rf"url(#{salt}-\1)", text)
    text = re.sub(r'xlink:href="#([^"]+)"', rf'xlink:href="#{salt}-\1"', text)
    # drop the fixed size (pt): the viewBox keeps the aspect ratio, CSS sets the width
    head_end = text.index(">")
    head = re.sub(r'\s(width|height)="[^"]*"', "", text[:head_end])
    head += f' role="img" aria-label="{_attr(alt)}" class="chart"'
    return head + text[head_end:]


def _attr(s: str) -> str:
    return s.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


# ------------------------------------------------------------------ axes helpers


def _fmt_num(v: float, _pos: Any = None) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:g}"


def _time_axis(ax: Any, x0: float, x1: float, label: bool = True) -> None:
    ax.set_xlim(x0, x1 if x1 > x0 else x0 + 1)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=10, steps=[1, 2, 5, 10], integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(_fmt_num))
    if label:
        ax.set_xlabel("time since the run started (s); warm-up not shown")


def _count_axis(ax: Any, label: str) -> None:
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10], integer=True))
    ax.yaxis.set_major_formatter(FuncFormatter(_fmt_num))
    ax.set_ylabel(label)


def _latency_axis(ax: Any, values: Sequence[float], label: str = "latency (ms)") -> None:
    """Log scale with 1-2-5 ticks when the values span more than a decade and a half, else linear from 0."""
    pos = [v for v in values if v and v > 0]
    if pos and max(pos) / min(pos) > 30:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
        ax.yaxis.set_minor_formatter(NullFormatter())
        label += ", log scale"
    else:
        ax.set_ylim(bottom=0, top=(max(pos) * 1.1) if pos else 1)
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
    ax.yaxis.set_major_formatter(FuncFormatter(_fmt_num))
    ax.set_ylabel(label)


def fault_intervals(faults: Sequence[dict], end: float) -> list[tuple[float, float, str]]:
    """(start, end, agent) while an agent was killed (until restarted) or stalled (until resumed)."""
    down: dict[str, float] = {}
    out = []
    for f in sorted(faults, key=lambda f: f["t"]):
        for agent in f.get("agents", []):
            if f["action"] in ("kill", "stall", "kill-orderer-leader", "kill-etcd-leader"):
                down.setdefault(agent, f["t"])
            elif f["action"] in ("restart", "resume", "restart-ordering") and agent in down:
                out.append((down.pop(agent), f["t"], agent))
    out += [(t, end, agent) for agent, t in down.items()]
    return sorted(out)


def _mark_faults(ax: Any, faults: Sequence[dict], end: float, numbered: bool) -> None:
    for a, b, _agent in fault_intervals(faults, end):
        ax.axvspan(a, b, color="#000000", alpha=0.05, linewidth=0)
    for i, f in enumerate(faults, 1):
        ax.axvline(f["t"], color="#333333", linestyle=FAULT_STYLE.get(f["action"], "-"), linewidth=1.1)
        if numbered:
            ax.annotate(f"F{i}", xy=(f["t"], 1.0), xycoords=("data", "axes fraction"), xytext=(0, 3),
                        textcoords="offset points", ha="center", va="bottom", fontsize=9, fontweight="bold",
                        color="#333333")


def _fault_legend(faults: Sequence[dict]) -> list[Any]:
    from matplotlib.lines import Line2D

    from matplotlib.patches import Patch

    seen = list(dict.fromkeys(f["action"] for f in faults))
    out: list[Any] = [Line2D([], [], color="#333333", linestyle=FAULT_STYLE.get(a, "-"), label=f"fault: {a}")
                      for a in seen]
    if fault_intervals(faults, math.inf):
        out.append(Patch(color="#000000", alpha=0.12, linewidth=0, label="an agent down"))
    return out


def _edges(timeline: Sequence[dict]) -> list[float]:
    """Bucket edges of a 1 s timeline (each bucket starts at its ``t``)."""
    return [b["t"] for b in timeline] + [timeline[-1]["t"] + 1.0] if timeline else []


def _span(timeline: Sequence[dict], faults: Sequence[dict]) -> tuple[float, float]:
    xs = [b["t"] for b in timeline] + [b["t"] + 1 for b in timeline] + [f["t"] for f in faults]
    return (min(xs), max(xs)) if xs else (0.0, 1.0)


# ------------------------------------------------------------------ the charts


def throughput_chart(timeline: Sequence[dict], faults: Sequence[dict], salt: str = "thr") -> str:
    """Completed (ok) and failed operations per second, all phases together."""
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(WIDTH_IN, 3.2), layout="constrained")
        ax = fig.add_subplot()
        x0, x1 = _span(timeline, faults)
        edges = _edges(timeline)
        ax.stairs([b["throughput_per_s"] for b in timeline], edges, baseline=None, color="#0072B2",
                  linewidth=1.6, label="completed ok")
        ax.stairs([float(b["failed"]) for b in timeline], edges, baseline=None, color=FAILED_COLOR,
                  linewidth=1.4, linestyle="--", label="failed")
        _mark_faults(ax, faults, x1, numbered=True)
        _time_axis(ax, x0, x1)
        _count_axis(ax, "operations per second")
        ax.set_title("Throughput, all operations (per 1 s)", pad=16 if faults else 6)
        fig.legend(handles=ax.get_legend_handles_labels()[0] + _fault_legend(faults), loc="outside right upper")
        return _svg(fig, salt, "throughput over time, all operations")


def family_chart(title: str, phases: Sequence[str], by_phase: dict[str, list[dict]], faults: Sequence[dict],
                 salt: str) -> str:
    """Two panels on one time axis: throughput per phase, then p50 (solid) and p99 (dashed) latency per phase."""
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(WIDTH_IN, 5.0), layout="constrained")
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1, 1.3])
        spans = [_span(by_phase.get(p, []), faults) for p in phases]
        x0, x1 = min(s[0] for s in spans), max(s[1] for s in spans)
        lat_values: list[float] = []
        for i, p in enumerate(phases):
            tl = by_phase.get(p, [])
            color = phase_color(p, i)
            if tl:
                top.stairs([b["throughput_per_s"] for b in tl], _edges(tl), baseline=None, color=color,
                           linewidth=1.6, label=p)
            for key, style in (("p50_ms", "-"), ("p99_ms", "--")):
                # a second with no completion is a gap in the line (NaN), not a straight segment across it
                ys = [math.nan if b.get(key) is None else b[key] for b in tl]
                lat_values += [v for v in ys if not math.isnan(v)]
                bottom.plot([b["t"] + 0.5 for b in tl], ys, color=color, linestyle=style,
                            linewidth=1.5 if style == "-" else 1.2, marker="." if len(tl) < 40 else None,
                            markersize=4, label=f"{p} {key[:3]}")
        _mark_faults(top, faults, x1, numbered=True)
        _mark_faults(bottom, faults, x1, numbered=False)
        _time_axis(top, x0, x1, label=False)
        _time_axis(bottom, x0, x1)
        _count_axis(top, "completed ok per s")
        _latency_axis(bottom, lat_values)
        top.set_title(title, pad=16 if faults else 6)
        bottom.set_title("latency of completed operations per 1 s: p50 solid, p99 dashed", fontweight="normal",
                         fontsize=9.5)
        handles = bottom.get_legend_handles_labels()[0] + _fault_legend(faults)
        fig.legend(handles=handles, loc="outside right upper")
        return _svg(fig, salt, f"{title}: throughput and latency over time")


def histograms_chart(histograms: dict[str, list[list[float]]], phases: dict[str, dict], salt: str = "hist") -> str:
    """One small latency histogram per phase (log-spaced bins, in ms), with the p50 (solid line) and the
    p99 (dashed) marked."""
    names = [p for p in phases if histograms.get(p)] + [p for p in histograms if histograms[p] and p not in phases]
    cols = min(3, max(1, len(names)))
    rows = math.ceil(len(names) / cols)
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(WIDTH_IN, 2.7 * rows + 0.3), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False)
        for i, name in enumerate(names):
            ax = axes[i // cols][i % cols]
            bins = histograms[name]
            edges = [bins[0][0]] + [b[1] for b in bins]
            counts = [b[2] for b in bins]
            color = phase_color(name, i)
            ax.stairs(counts, edges, fill=True, color=color, alpha=0.85)
            lat = (phases.get(name) or {}).get("latency_ms", {})
            marks = []
            for key, style in (("p50", "-"), ("p99", "--")):
                if lat.get(key) is not None:
                    ax.axvline(lat[key], color="#333333", linestyle=style, linewidth=1.1)
                    marks.append(f"{key} {_fmt_ms(lat[key])}")
            lo, hi = edges[0], edges[-1]
            if hi <= lo * 1.0001:  # one value: a bin around it
                lo, hi = lo * 0.9, hi * 1.1
            if hi / lo > 8:  # the bins are log-spaced; a log axis when they span most of a decade or more
                ax.set_xscale("log")
                subs = (1.0, 2.0, 5.0) if hi / lo > 20 else (1.0, 2.0, 3.0, 5.0, 7.0)
                ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs, numticks=30))
                ax.xaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10)), numticks=30))
                ax.xaxis.set_minor_formatter(NullFormatter())
            else:
                ax.xaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
            ax.set_xlim(lo, hi)
            ax.xaxis.set_major_formatter(FuncFormatter(_fmt_num))
            _count_axis(ax, "operations" if i % cols == 0 else "")
            ax.set_xlabel("latency (ms)")
            ax.set_title(f"{name} (n = {sum(counts):,})\n" + ", ".join(marks), fontsize=9.5)
        for j in range(len(names), rows * cols):
            axes[j // cols][j % cols].set_visible(False)
        return _svg(fig, salt, "latency histograms per phase")


def crypto_cost_chart(eff: dict, salt: str = "crypto") -> str | None:
    """Where one access's crypto time goes: calls per access x unit cost, per primitive (ms)."""
    b = (eff or {}).get("bound") or {}
    parts = b.get("cost_breakdown_ms") or {}
    if not parts:
        return None
    names = list(parts)
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(WIDTH_IN, 0.45 * len(names) + 1.1), layout="constrained")
        ax = fig.add_subplot()
        y = list(range(len(names)))[::-1]
        ax.barh(y, [parts[n] for n in names], color=OKABE_ITO[: len(names)], height=0.6)
        calls = b.get("calls_per_op", {})
        unit = b.get("unit_cost_us", {})
        ax.set_yticks(y, [f"{n}  ({calls.get(n, 0):.1f} × {unit.get(n, 0):,.0f} µs)" for n in names])
        for yi, n in zip(y, names):
            ax.annotate(f"{parts[n]:.2f} ms", xy=(parts[n], yi), xytext=(4, 0), textcoords="offset points",
                        va="center", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
        ax.xaxis.set_major_formatter(FuncFormatter(_fmt_num))
        ax.set_xlim(0, max(parts.values()) * 1.18 or 1)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel("crypto time per access (ms, one core)")
        ax.set_title(f"Crypto cost of one access: {b.get('cost_per_op_ms', 0):.2f} ms")
        return _svg(fig, salt, "crypto cost per access by primitive")


def _fmt_ms(v: float) -> str:
    return f"{v:,.0f} ms" if v >= 10 else f"{v:.1f} ms"
