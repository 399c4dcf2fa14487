"""agents.node.processes.stop_processes on real child processes: SIGTERM for those that
stop, SIGKILL for one that ignores it, a stalled (SIGSTOPped) one resumed and stopped."""

from __future__ import annotations

import signal
import subprocess
import sys

from agents.node.processes import stop_processes

SLEEPER = "import sys, time; print('up', flush=True); time.sleep(600)"
STUBBORN = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
            "time.sleep(600)")


def _start(code: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"  # its handlers are in place
    return proc


def test_every_process_is_stopped_and_reaped():
    plain, stalled, stubborn = _start(SLEEPER), _start(SLEEPER), _start(STUBBORN)
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    stalled.send_signal(signal.SIGSTOP)
    try:
        stop_processes([plain, None, stalled, stubborn, done], grace=1.0)
        assert plain.returncode == -signal.SIGTERM
        assert stalled.returncode == -signal.SIGTERM  # resumed, so it could act on SIGTERM
        assert stubborn.returncode == -signal.SIGKILL  # ignored SIGTERM: killed after the grace period
        assert done.returncode == 0  # already exited: left alone
    finally:
        for proc in (plain, stalled, stubborn):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
