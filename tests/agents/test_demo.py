"""`emrshare demo` (the README's run command) passes end to end and cleans up after itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agents.cli import demo


@pytest.mark.slow
def test_demo_passes_in_process(tmp_path, capsys):
    assert demo.main(["--data", str(tmp_path / "swarm")]) == 0
    out = capsys.readouterr().out
    assert "demo passed" in out
    assert "byte-identical" in out and "denied" in out and "revoke" in out
    # the swarm's state stays behind when a data directory is given: the chain verifies
    from agents.cli import ledger as ledger_cli

    peer_dir = tmp_path / "swarm" / "agents" / "peer-a1"
    assert ledger_cli.verify_main(["--data", str(peer_dir)]) == 0


@pytest.mark.slow
def test_demo_cli_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "agents.cli", "demo"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "demo passed" in proc.stdout
