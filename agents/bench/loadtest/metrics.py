"""Per-operation measurements of a load test: outcomes, latencies, a timeline.

Every completed operation is one :class:`Sample` (phase, when it was
scheduled and when it finished, relative to the start of the run, whether it
succeeded, and why not). Lists are exact: a 60 s run at a few hundred
operations a second is a few tens of thousands of samples, so percentiles are
computed from the sorted latencies (nearest-rank), not from buckets.

Operations scheduled inside the warm-up window are run but not recorded.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

PERCENTILES = (50.0, 90.0, 99.0)


@dataclass(frozen=True, slots=True)
class Sample:
    phase: str
    start: float  # seconds since the run started (the scheduled time for open-loop arrivals)
    end: float
    ok: bool
    reason: str = ""  # failure reason ("" when ok)
    nbytes: int = 0  # payload size (stores and reads)

    @property
    def latency(self) -> float:
        return self.end - self.start


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (``nan`` when empty)."""
    if not sorted_values:
        return math.nan
    if not 0 <= p <= 100:
        raise ValueError("percentile must be within [0, 100]")
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class PhaseStats:
    phase: str
    attempted: int = 0
    succeeded: int = 0
    failed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # successful operations, sorted
    nbytes: int = 0

    def latency(self, p: float) -> float:
        return percentile(self.latencies, p)

    def throughput(self, window: float) -> float:
        return self.succeeded / window if window > 0 else 0.0

    def summary(self, window: float) -> dict:
        lat = self.latencies
        return {
            "phase": self.phase,
            "attempted": self.attempted,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "failures_by_reason": dict(sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
            "throughput_per_s": self.throughput(window),
            "latency_ms": {
                "mean": (sum(lat) / len(lat) * 1000) if lat else None,
                **{f"p{p:g}": _ms(percentile(lat, p)) for p in PERCENTILES},
                "max": _ms(lat[-1]) if lat else None,
                "min": _ms(lat[0]) if lat else None,
            },
            "payload_bytes": self.nbytes,
        }


def _ms(seconds: float) -> float | None:
    return None if math.isnan(seconds) else seconds * 1000.0


class Recorder:
    """Collects samples; answers progress questions while the run goes on."""

    def __init__(self, warmup: float = 0.0):
        self.warmup = warmup
        self.samples: list[Sample] = []
        self.warmup_ops = 0
        self.not_started: Counter[str] = Counter()  # arrivals dropped before running (by reason)

    def record(self, phase: str, start: float, end: float, ok: bool, reason: str = "", nbytes: int = 0) -> None:
        if start < self.warmup:
            self.warmup_ops += 1
            return
        self.samples.append(Sample(phase, start, end, ok, reason if not ok else "", nbytes))

    def phases(self) -> list[str]:
        seen: dict[str, None] = {}
        for s in self.samples:
            seen.setdefault(s.phase)
        return list(seen)

    def stats(self, samples: Iterable[Sample] | None = None) -> dict[str, PhaseStats]:
        out: dict[str, PhaseStats] = {}
        for s in self.samples if samples is None else samples:
            st = out.get(s.phase)
            if st is None:
                st = out[s.phase] = PhaseStats(s.phase)
            st.attempted += 1
            if s.ok:
                st.succeeded += 1
                st.latencies.append(s.latency)
                st.nbytes += s.nbytes
            else:
                st.failed += 1
                st.reasons[s.reason] = st.reasons.get(s.reason, 0) + 1
        for st in out.values():
            st.latencies.sort()
        return out

    def window(self) -> tuple[float, float]:
        """(first start, last end) of the recorded samples; (warmup, warmup) when empty."""
        if not self.samples:
            return self.warmup, self.warmup
        return min(s.start for s in self.samples), max(s.end for s in self.samples)

    def progress(self, now: float, last: float = 5.0) -> dict:
        """Rate and errors over the last ``last`` seconds, p50/p99 of everything so far."""
        recent = [s for s in self.samples if s.end >= now - last]
        ok_lat = sorted(s.latency for s in self.samples if s.ok)
        return {
            "t": now,
            "ops": len(self.samples),
            "rate": len(recent) / last if now > self.warmup else 0.0,
            "errors": sum(1 for s in self.samples if not s.ok),
            "recent_errors": sum(1 for s in recent if not s.ok),
            "p50_ms": _ms(percentile(ok_lat, 50)),
            "p99_ms": _ms(percentile(ok_lat, 99)),
            "warming_up": now < self.warmup,
        }

    def timeline(self, step: float = 1.0, phases: Sequence[str] | None = None,
                 until: float | None = None) -> list[dict]:
        """Per ``step`` seconds (by completion time): completed ok/failed and p50/p99 latency."""
        chosen = [s for s in self.samples if phases is None or s.phase in phases]
        end = until if until is not None else (max((s.end for s in chosen), default=self.warmup))
        n = max(0, math.ceil((end - self.warmup) / step))
        buckets: list[list[Sample]] = [[] for _ in range(n)]
        for s in chosen:
            i = int((s.end - self.warmup) // step)
            if 0 <= i < n:
                buckets[i].append(s)
        out = []
        for i, b in enumerate(buckets):
            lat = sorted(s.latency for s in b if s.ok)
            out.append({
                "t": self.warmup + i * step,
                "ok": sum(1 for s in b if s.ok),
                "failed": sum(1 for s in b if not s.ok),
                "throughput_per_s": sum(1 for s in b if s.ok) / step,
                "p50_ms": _ms(percentile(lat, 50)),
                "p99_ms": _ms(percentile(lat, 99)),
            })
        return out


def histogram(values: Sequence[float], bins: int = 30) -> list[tuple[float, float, int]]:
    """Log-spaced histogram of positive values: [(low, high, count)]."""
    vals = [v for v in values if v > 0]
    if not vals:
        return []
    lo, hi = min(vals), max(vals)
    if hi <= lo * 1.0001:
        return [(lo, hi, len(vals))]
    a, b = math.log(lo), math.log(hi)
    width = (b - a) / bins
    counts = [0] * bins
    for v in vals:
        i = min(bins - 1, int((math.log(v) - a) / width))
        counts[i] += 1
    return [(math.exp(a + i * width), math.exp(a + (i + 1) * width), c) for i, c in enumerate(counts)]
