"""Live progress of a load test on stderr.

* :class:`Progress`: the measured run, one line refreshed in place on a TTY,
  plain periodic lines otherwise (logs, CI).
* :class:`SetupProgress`: the setup (opening the agents, registering users,
  setting policies, storing the initial records) as ``rich`` progress bars,
  one per step; shown only when the stream is a terminal, and removed when the
  setup ends (the runner then prints one summary line). ``rich`` is the CLI's
  progress library; it is imported only when bars are shown.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

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


class SetupProgress:
    """Progress bars for the setup steps (see the module docstring). ``enabled``: None to show them
    when ``stream`` is a terminal; True forces them (tests), False never draws. ``counts`` holds
    each step's [done, total] either way."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = (bool(isatty and isatty())) if enabled is None else enabled
        self.counts: dict[str, list[int]] = {}
        self._bars: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> "SetupProgress":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            console = Console(file=self.stream, force_terminal=True, highlight=False)
            self._bars = Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=console, transient=True, refresh_per_second=8)
            self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None

    def stage(self, name: str, total: int) -> None:
        self.counts[name] = [0, total]
        if self._bars is not None:
            self._tasks[name] = self._bars.add_task(name, total=total)

    def advance(self, name: str) -> None:
        self.counts[name][0] += 1
        if self._bars is not None:
            self._bars.advance(self._tasks[name])
