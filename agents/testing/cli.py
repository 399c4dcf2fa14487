"""A kit for testing the ``emrshare`` command as a person uses it: each call a subprocess.

* :func:`run_cli`: ``python -m agents.cli ARGS`` with stdin not a terminal and an
  environment without the caller's ``EMRSHARE_*`` variables (plus the test passphrase).
* :func:`start_swarm`: ``emrshare swarm up`` in the background, returned once it
  printed that every agent runs; :func:`stop_process` signals it and collects stderr.
* :func:`error_line`: the CLI's error shape, asserted (exit status, ONE stderr line
  ``emrshare: <what failed>: <why>; <what to do>``, no traceback).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

__all__ = ["PASSPHRASE", "cli_env", "run_cli", "start_swarm", "stop_process", "error_line"]

PASSPHRASE = "cli test passphrase"


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMRSHARE_")}
    env.update({"EMRSHARE_PASSPHRASE": PASSPHRASE, **extra})
    return env


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m agents.cli ARGS`` in a subprocess (stdin not a terminal); text output."""
    return subprocess.run([sys.executable, "-m", "agents.cli", *args], capture_output=True, text=True,
                          env=env if env is not None else cli_env(), timeout=timeout, stdin=subprocess.DEVNULL)


def start_swarm(data: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """``emrshare swarm up --data DATA ARGS`` in the background, returned once its agents run."""
    proc = subprocess.Popen([sys.executable, "-m", "agents.cli", "swarm", "up", "--data", str(data), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or cli_env(),
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    first = proc.stdout.readline()  # printed once every agent runs (EOF if it failed)
    if not first.startswith("swarm "):
        code, err = stop_process(proc)
        raise AssertionError(f"swarm up did not start ({code}): {first}{err}")
    return proc


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 30) -> tuple[int, str]:
    """Signal ``proc`` (if it still runs), wait; (exit status, its stderr)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    err = proc.stderr.read() if proc.stderr else ""
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return proc.returncode, err


def error_line(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """Assert the CLI's error shape and that every needle is in the line; return the line."""
    err = proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stdout, err)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("emrshare: ") and "; " in line, line
    for needle in needles:
        assert needle in line, line
    return line
