"""Live progress of a load test on stderr: one line refreshed in place on a TTY,
plain periodic lines otherwise (logs, CI)."""

from __future__ import annotations

import sys
from typing import TextIO

from agents.bench.loadtest.metrics import Recorder


def _fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}ms" if v >= 10 else f"{v:.1f}ms"


class Progress:
    def __init__(self, recorder: Recorder, total: float, stream: TextIO | None = None,
                 *, tty: bool | None = None, every: float = 1.0, plain_every: float = 5.0,
                 label: str = "") -> None:
        self.recorder = recorder
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = every if self.tty else plain_every
        self.label = label
        self._last = -1e9
        self.lines: list[str] = []  # what was shown (tests read this)
        self.events: list[str] = []

    def line(self, now: float) -> str:
        p = self.recorder.progress(now)
        state = "warm-up" if p["warming_up"] else f"{p['rate']:.1f} op/s"
        prefix = f"[{self.label}] " if self.label else ""
        return (f"{prefix}{now:5.1f}/{self.total:.0f}s  {state}  ops {p['ops']}  errors {p['errors']}"
                f" (last 5s {p['recent_errors']})  p50 {_fmt_ms(p['p50_ms'])}  p99 {_fmt_ms(p['p99_ms'])}")

    def tick(self, now: float) -> None:
        if now - self._last < self.every - 1e-6:
            return
        self._last = now
        text = self.line(now)
        self.lines.append(text)
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def event(self, now: float, text: str) -> None:
        """A one-off line (a fault injected, a phase started) that stays on screen."""
        msg = f"{now:5.1f}s  {text}"
        self.events.append(msg)
        if self.tty:
            self.stream.write("\r\x1b[2K" + msg + "\n")
        else:
            self.stream.write(msg + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
