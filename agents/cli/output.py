"""What the ``emrshare`` command prints for a person: tables, dates, JSON, progress.

Tables and progress bars use ``rich`` when the stream is a terminal; when it
is not (a pipe, a file, a test), tables are plain aligned text with the same
columns and progress is not shown at all. Dates are ISO 8601 in UTC
(``2026-11-30T05:44:51Z``). ``--json`` output is :func:`print_json`: sorted
keys, bytes as hex, times as Unix milliseconds next to their UTC text.
"""

from __future__ import annotations

import contextlib
import json
import sys
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Sequence

__all__ = ["utc", "utc_seconds", "jsonable", "print_json", "table", "progress", "is_terminal"]


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def utc(ms: int | float | None) -> str:
    """Unix milliseconds as ``YYYY-MM-DDTHH:MM:SSZ`` (empty for None)."""
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_seconds(s: int | float | None) -> str:
    """Unix seconds as ``YYYY-MM-DDTHH:MM:SSZ`` (empty for None)."""
    return "" if s is None else utc(s * 1000)


def jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def print_json(obj: Any, *, stream: Any = None) -> None:
    print(json.dumps(jsonable(obj), indent=2, sort_keys=True), file=stream or sys.stdout)


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None,
          stream: Any = None) -> None:
    """A table: rich when ``stream`` is a terminal, else plain text (title line, header, rows)."""
    stream = stream or sys.stdout
    cells = [["" if c is None else str(c) for c in row] for row in rows]
    if is_terminal(stream):
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title, title_justify="left", header_style="bold")
        for c in columns:
            t.add_column(c, overflow="fold")
        for row in cells:
            t.add_row(*row)
        Console(file=stream).print(t)
        return
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    if title:
        print(title, file=stream)
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip(), file=stream)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip(), file=stream)


@contextlib.contextmanager
def progress(description: str, total: int | None = None, *, stream: Any = None,
             enabled: bool | None = None) -> Iterator[Callable[[int, int | None], None]]:
    """A progress bar on ``stream`` (stderr) while the block runs; yields
    ``update(done, total)`` (bytes). Nothing is shown unless ``stream`` is a terminal."""
    stream = stream or sys.stderr
    if enabled is None:
        enabled = is_terminal(stream)
    if not enabled:
        yield lambda done, total=None: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=Console(file=stream), transient=True) as bar:
        task = bar.add_task(description, total=total)

        def update(done: int, total_: int | None = None) -> None:
            if total_ is not None:
                bar.update(task, total=total_)
            bar.update(task, completed=done)

        yield update
