"""The load test's HTML report: what a reader sees equals the JSON.

The report is rendered from a recorded result (tests/fixtures/loadtest/faults.json:
a real ``emrshare loadtest --faults --duration 30 --rate 10`` run, one process per
agent, five faults injected) and the page is parsed back: the summary tables'
numbers, one chart per phase family, the faults' marks on the time axes (where
the charts' own tick labels say those times are). test_loadtest.py renders the
report of a short live run too.
"""

from __future__ import annotations

import copy
import io
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from agents.bench.loadtest import charts  # noqa: E402
from agents.bench.loadtest.progress import SetupProgress  # noqa: E402
from agents.bench.loadtest.report import render_html, to_json  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "loadtest" / "faults.json"


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def page(recorded: dict) -> str:
    return render_html(recorded)


# ------------------------------------------------------------------ reading the page back


class _Tables(HTMLParser):
    """Every <table id=...> as rows of cell texts (the header row first)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id") or f"anon{len(self.tables)}", [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self._table[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def tables(page: str) -> dict[str, list[list[str]]]:
    p = _Tables()
    p.feed(page)
    return p.tables


def as_dicts(rows: list[list[str]]) -> list[dict[str, str]]:
    return [dict(zip(rows[0], r)) for r in rows[1:]]


def num(text: str) -> float:
    return float(text.replace(",", ""))


def figures(page: str) -> dict[str, str]:
    """data-family -> the <figure>'s markup."""
    return {m.group(1): m.group(2) for m in re.finditer(r'<figure data-family="([^"]+)">(.*?)</figure>', page, re.S)}


def svg_texts(svg: str) -> list[tuple[float, float, str]]:
    """(x, y, text) of every <text> element (the charts keep text as text)."""
    return [(float(m.group(1)), float(m.group(2)), m.group(3))
            for m in re.finditer(r'<text [^>]*?x="([\d.]+)" y="([\d.]+)"[^>]*>([^<]*)</text>', svg)]


def time_axis(svg: str) -> tuple[float, float]:
    """(slope, intercept) from seconds to SVG x, read off the bottom-most row of numeric tick labels."""
    texts = [t for t in svg_texts(svg) if re.fullmatch(r"[\d,]+", t[2])]
    bottom = max(y for _, y, _ in texts)
    row = sorted((x, num(s)) for x, y, s in texts if abs(y - bottom) < 0.5)
    assert len(row) >= 3, row
    (x0, v0), (x1, v1) = row[0], row[-1]
    slope = (x1 - x0) / (v1 - v0)
    for x, v in row:  # evenly spaced: a linear axis
        assert x == pytest.approx(x0 + (v - v0) * slope, abs=0.5)
    return slope, x0 - v0 * slope


# ------------------------------------------------------------------ the summary


def test_summary_comes_first_and_its_phase_table_equals_the_json(recorded, page):
    assert page.index('id="verdict"') < page.index('id="phases"') < page.index("<svg")
    rows = as_dicts(tables(page)["phases"])
    assert [r["phase"] for r in rows] == [p["phase"] for p in recorded["phases"]]
    for row, p in zip(rows, recorded["phases"]):
        assert num(row["attempted"]) == p["attempted"]
        assert num(row["ok"]) == p["succeeded"]
        assert num(row["failed"]) == p["failed"]
        assert num(row["ops/s"]) == pytest.approx(p["throughput_per_s"], abs=0.005)
        for col, key in (("p50 ms", "p50"), ("p90 ms", "p90"), ("p99 ms", "p99"), ("max ms", "max")):
            assert num(row[col]) == pytest.approx(p["latency_ms"][key], abs=0.05), (p["phase"], col)


def test_summary_settings_verdict_and_cost_figures_equal_the_json(recorded, page):
    t = tables(page)
    settings = {k: v for k, v in t["settings"]}
    w, s = recorded["workload"], recorded["settings"]
    assert settings["users"] == f"{w['patients']} patients, {w['doctors']} doctors"
    assert settings["load"] == f"open loop, {s['rate']:.2f} arrivals/s"
    assert settings["measured window"].startswith(f"{recorded['window_s']:.1f} s after a {s['warmup']:.1f} s warm-up")
    assert settings["target"] == recorded["target"]["description"]
    assert settings["seed"] == str(s["seed"])
    eff = {k: v for k, v in t["efficiency"]}
    acc = recorded["access_all"]
    p50, p99 = re.match(r"([\d.,]+) / ([\d.,]+) ms over ([\d,]+)", eff["access p50 / p99 (full accesses and reads)"]).groups()[:2]
    assert num(p50) == pytest.approx(acc["p50_ms"], abs=0.05) and num(p99) == pytest.approx(acc["p99_ms"], abs=0.05)
    share = eff["pairing + GT + ECDSA share of process CPU"]
    assert num(share.split(" %")[0]) == pytest.approx(recorded["crypto"]["bound_share_percent"], abs=0.05)
    store_bits = eff["bits per store (without payload)"]
    op = recorded["communication"]["per_operation"][0]
    assert num(store_bits.split(" = ")[0]) == pytest.approx(op["bits_without_payload"], abs=0.5)
    c = recorded["correctness"]
    verdict = re.search(r'id="verdict"><strong>([^<]*)<', page).group(1)
    assert verdict.startswith("PASS: ") and f"({c['verified']} of {c['acknowledged']} acknowledged" in verdict
    failed = sum(p["failed"] for p in recorded["phases"])
    attempted = sum(p["attempted"] for p in recorded["phases"])
    assert f"{failed} of {attempted} operations failed" in verdict
    targets = as_dicts(t["targets"])
    assert [r["verdict"] for r in targets] == ["met" if x["met"] else "n/a" if x["met"] is None else "MISSED"
                                              for x in recorded["targets"]]


def test_a_lost_record_turns_the_verdict_red_and_is_listed(recorded):
    r = copy.deepcopy(recorded)
    r["correctness"].update(lost=1, lost_records=[{"patient": "p<1>", "record_id": "r9", "label": "labs",
                                                     "size": 10, "last_error": "NotEnoughPeers"}])
    page = render_html(r)
    assert '<div class="verdict bad" id="verdict"><strong>FAIL: 1 lost' in page
    assert "LOST p&lt;1&gt;/r9" in page


def test_efficiency_chart_and_rows_when_the_run_measured_saturation(recorded):
    r = copy.deepcopy(recorded)
    bound = {"cores": 2, "calls_per_op": {"pairing": 2.0, "ecdsa_verify": 9.0}, "unit_cost_us": {"pairing": 400.0,
             "ecdsa_verify": 50.0}, "cost_per_op_ms": 1.25, "cost_breakdown_ms": {"pairing": 0.8, "ecdsa_verify": 0.45},
             "limit_per_s": 1600.0}
    r["efficiency"] = {"measured_per_s": 40.0, "percent": 2.5, "bound": bound, "process_cpu_per_access_ms": 30.0}
    page = render_html(r)
    eff = dict(tables(page)["efficiency"])
    assert eff["efficiency (accesses/s measured / crypto-bound limit)"] == "2.5 %"
    assert eff["crypto-bound limit (accesses/s)"].startswith("1,600.0 (2 cores / 1.25 ms)")
    assert "Crypto cost of one access: 1.25 ms" in page and "0.80 ms" in page


# ------------------------------------------------------------------ the charts


def test_every_phase_family_has_a_chart_with_its_phases(recorded, page):
    figs = figures(page)
    phases = [p["phase"] for p in recorded["phases"]]
    fams = charts.families(phases)
    assert [title for title, _ in fams] == list(figs)
    assert len(fams) == 3  # store; access and read; denied and revoke
    covered = set()
    for title, members in fams:
        svg = figs[title]
        assert svg.count("<svg") == 1
        labels = {s for _, _, s in svg_texts(svg)}
        for p in members:
            assert f"{p} p50" in labels and f"{p} p99" in labels  # the legend names each line
        covered.update(members)
    assert covered == set(phases)
    hist = page[page.index("<h2>Latency distributions</h2>"):]
    for p in recorded["phases"]:
        assert f"{p['phase']} (n = {p['succeeded']:,})" in hist


def test_faults_are_marked_where_the_time_axis_says_they_happened(recorded, page):
    faults = recorded["faults"]["faults"]
    assert len(faults) == 5
    rows = as_dicts(tables(page)["faults"])
    assert [(r["fault"], num(r["at (s)"]), r["action"]) for r in rows] == [
        (f"F{i}", round(f["t"], 1), f["action"]) for i, f in enumerate(faults, 1)]
    thr = page[page.index("<h2>Over time</h2>"):page.index("</figure>")]
    for svg in [thr, *figures(page).values()]:
        slope, icpt = time_axis(svg)
        marks = {s: x for x, _, s in svg_texts(svg) if re.fullmatch(r"F\d+", s)}
        assert sorted(marks) == [f"F{i}" for i in range(1, len(faults) + 1)]
        for i, f in enumerate(faults, 1):
            assert marks[f"F{i}"] == pytest.approx(slope * f["t"] + icpt, abs=1.0)
        assert "fault: kill" in {s for _, _, s in svg_texts(svg)}  # the legend says what the line styles are


def test_no_fault_marks_without_faults(recorded):
    r = copy.deepcopy(recorded)
    del r["faults"]
    page = render_html(r)
    assert 'id="faults"' not in page
    assert not re.search(r">F\d+<", page) and "fault: kill" not in page


def test_down_intervals_pair_kills_and_stalls_with_their_end(recorded):
    got = charts.fault_intervals(recorded["faults"]["faults"], 35.0)
    by_agent = {a: (round(s, 1), round(e, 1)) for s, e, a in got}
    assert by_agent == {"storage-3": (9.5, 26.0), "peer-b2": (14.0, 26.0), "peer-a2": (18.5, 23.0)}
    # a kill never undone lasts until the end of the window
    assert charts.fault_intervals([{"t": 3.0, "action": "kill", "agents": ["x"]}], 9.0) == [(3.0, 9.0, "x")]


def test_the_page_is_self_contained_and_embeds_the_json(recorded, page):
    without_ns = page.replace('xmlns="http://www.w3.org/2000/svg"', "").replace(
        'xmlns:xlink="http://www.w3.org/1999/xlink"', "")
    assert not re.search(r"https?://", without_ns)
    assert "<script src" not in page and "<img" not in page and "<link" not in page
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S)
    assert [attrs for attrs, _ in scripts] == [' type="application/json" id="report"']  # data only, no code
    assert json.loads(scripts[0][1]) == json.loads(to_json(recorded))
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # several SVGs on one page: no clashing ids
    refs = set(re.findall(r"url\(#([^)]+)\)", page)) | set(re.findall(r'xlink:href="#([^"]+)"', page))
    assert refs <= set(ids)


def test_a_hostile_string_in_the_json_stays_text(recorded):
    r = copy.deepcopy(recorded)
    r["target"]["description"] = "</script><script>alert(1)</script>"
    page = render_html(r)
    assert "<script>alert" not in page
    body = re.search(r'<script type="application/json" id="report">(.*?)</script>', page, re.S).group(1)
    assert json.loads(body)["target"]["description"] == r["target"]["description"]


def _mantissa(v: float) -> float:
    return round(v / 10 ** math.floor(math.log10(v)), 6)


def test_axis_ticks_are_round_numbers(page):
    """Every axis's tick labels: evenly spaced in steps of 1, 2, 2.5 or 5 x 10^k (no 26.75), or on a log
    axis 1-2-5 (or 1-2-3-5-7) x 10^k."""
    checked = 0
    for svg in re.findall(r"<svg.*?</svg>", page, re.S):
        # matplotlib writes each axes as <g id="...axes_N">, its x and y axis as <g id="...matplotlib.axis_1|2">
        for axes in re.split(r'<g id="[^"]*-axes_\d+">', svg)[1:]:
            for axis in re.split(r'<g id="[^"]*-matplotlib\.axis_\d+">', axes)[1:3]:
                vals = sorted({num(s) for _, _, s in svg_texts(axis) if re.fullmatch(r"[\d,.]+", s)})
                if len(vals) < 3:
                    continue
                checked += 1
                steps = {round(b - a, 6) for a, b in zip(vals, vals[1:])}
                if len(steps) == 1:
                    assert _mantissa(steps.pop()) in (1, 2, 2.5, 5), vals
                else:
                    assert all(_mantissa(v) in (1, 2, 3, 5, 7) for v in vals if v), vals
    assert checked >= 10


# ------------------------------------------------------------------ setup progress bars


def test_setup_progress_draws_nothing_when_not_a_terminal():
    out = io.StringIO()
    with SetupProgress(out) as bars:
        assert not bars.enabled
        bars.stage("registering users", 3)
        for _ in range(3):
            bars.advance("registering users")
    assert out.getvalue() == ""
    assert bars.counts == {"registering users": [3, 3]}


def test_setup_progress_draws_bars_on_a_terminal():
    out = io.StringIO()
    with SetupProgress(out, enabled=True) as bars:
        bars.stage("storing initial records", 4)
        bars.advance("storing initial records")
        bars._bars.refresh()
        drawn = out.getvalue()
    assert "storing initial records" in drawn and "1/4" in drawn


def test_peer_reencryptions_between_two_readings():
    """The reply-cache share of the saturation run: counted per peer between two readings;
    left out when a peer did not answer or restarted (its counters went back)."""
    from agents.bench.loadtest.runner import _served_between

    before = {"p1": (10, 4), "p2": (0, 0)}
    assert _served_between(before, {"p1": (30, 20), "p2": (20, 18)}) == {
        "served": 40, "reply_cache_hits": 34, "reply_cache_percent": 85.0}
    assert _served_between(before, {"p1": (10, 4), "p2": (0, 0)})["reply_cache_percent"] is None
    assert _served_between(None, before) is None and _served_between(before, None) is None
    assert _served_between(before, {"p1": (30, 20)}) is None  # a peer missing
    assert _served_between(before, {"p1": (5, 1), "p2": (20, 18)}) is None  # p1 restarted


def test_the_crypto_bound_limit_counts_a_reply_cache_hit_as_the_pairing_it_stands_for():
    """Whether a probe read's peers had answered that record under that grant before depends on the
    rotation (session 12: 1.25 and 0.75 pairings per probe read in two runs, efficiency 69 % and
    42 %): a share from a peer's reply cache counts as its pairing and signature, so two probes that
    differ only in which peers they asked give the same limit."""
    from agents.bench.loadtest import costs
    from agents.bench.loadtest.runner import _efficiency

    def probe(pairings: int, signs: int, hits: int) -> dict:
        counts = costs.CryptoCounts({"pairing": costs.Tally(pairings, 0), "ecdsa_sign": costs.Tally(signs, 0),
                                     "ecdsa_verify": costs.Tally(40, 0)})
        return {"runs": 4, "crypto": counts, "kinds": {"peer.submit": [8, 0]}, "reply_cache_hits": hits}

    sat = {"by_phase": {"access": 30, "read": 10}, "access_per_s": 100.0, "process_cpu_s": 4.0, "window_s": 2.0}
    unit = {"pairing": 0.0006, "ecdsa_sign": 0.00005, "ecdsa_verify": 0.0001, "gt_decode": 0.0001,
            "gt_multi_pow": 0.0003}
    # 4 probe reads of t = 2 shares each: all computed, or 3 of the 8 from the reply caches
    computed = _efficiency(sat, {"access": probe(8, 20, 0), "read": probe(8, 8, 0)}, unit, 2, peers=4, threshold=2)
    cached = _efficiency(sat, {"access": probe(8, 20, 0), "read": probe(5, 5, 3)}, unit, 2, peers=4, threshold=2)
    assert cached["bound"]["calls_per_op"] == pytest.approx(computed["bound"]["calls_per_op"])
    assert cached["percent"] == pytest.approx(computed["percent"])
    assert cached["bound"]["calls_per_op"]["pairing"] == pytest.approx(2.0)
    assert cached["probe_reply_cache_hits"] == {"access": 0.0, "read": 0.75}
    # without the hits counted the read would look cheaper, the limit higher
    uncounted = _efficiency(sat, {"access": probe(8, 20, 0), "read": probe(5, 5, 0)}, unit, 2, peers=4, threshold=2)
    assert uncounted["bound"]["limit_per_s"] > computed["bound"]["limit_per_s"]
    # a data key from the doctor's memo counts as the GT multi-exponentiation it stands for
    combined = probe(8, 8, 0)
    combined["crypto"].by_primitive["gt_multi_pow"] = costs.Tally(4, 0)
    memo = probe(8, 8, 0)
    memo["crypto"].by_primitive["gt_multi_pow"] = costs.Tally(1, 0)
    memo["data_key_hits"] = 3
    a = _efficiency(sat, {"access": probe(8, 20, 0), "read": combined}, unit, 2, peers=4, threshold=2)
    b = _efficiency(sat, {"access": probe(8, 20, 0), "read": memo}, unit, 2, peers=4, threshold=2)
    assert a["bound"]["calls_per_op"] == pytest.approx(b["bound"]["calls_per_op"])
    assert b["probe_data_key_hits"] == {"access": 0.0, "read": 0.75}
