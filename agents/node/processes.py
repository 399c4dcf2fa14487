"""Stopping node processes this process started (the swarm's ``--processes``
children, an etcd cluster's members, the multi-host test's nodes).

:func:`stop_processes` stops them together: every one still running gets
SIGCONT (a stalled one, SIGSTOPped by fault injection, could not act on
SIGTERM) and SIGTERM, so each starts its graceful stop at once; then they
share one ``grace`` period, and whichever still runs after it is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from typing import Iterable

__all__ = ["stop_processes"]


def stop_processes(procs: Iterable[subprocess.Popen | None], grace: float = 5.0) -> None:
    """SIGCONT and SIGTERM each of ``procs`` still running (None entries are skipped), wait
    for them all until ``grace`` seconds have passed, SIGKILL those left; every one is reaped."""
    procs = [p for p in procs if p is not None]
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
