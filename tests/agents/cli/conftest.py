"""A real swarm for the CLI tests: ``emrshare swarm up`` in its own process, users registered
through the CLI, a record stored and a policy set (module scope: started once per file)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from agents.testing.cli import run_cli, start_swarm, stop_process
from agents.testing.consortium import CARDIOLOGY_POLICY


@dataclass
class RunningSwarm:
    data: Path
    proc: subprocess.Popen
    tmp: Path

    def user(self, role: str, subject: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return run_cli(role, "--swarm", str(self.data), "--subject", subject, *args, env=env)


@pytest.fixture(scope="module")
def swarm(tmp_path_factory) -> RunningSwarm:
    tmp = tmp_path_factory.mktemp("cli")
    data = tmp / "swarm"
    proc = start_swarm(data)
    running = RunningSwarm(data, proc, tmp)
    try:
        for role, subject, org, extra in (("patient", "alice", "hospital-a", ()),
                                          ("doctor", "dr-h", "hospital-b", ("--attr", "department=cardiology"))):
            out = running.user(role, subject, "--org", org, "register", *extra)
            assert out.returncode == 0, out.stderr
        record = tmp / "bundle.json"
        record.write_text('{"resourceType": "Bundle", "type": "collection", "entry": []}')
        out = running.user("patient", "alice", "store", str(record), "--label", "cardiology", "--record-id", "rec-1")
        assert out.returncode == 0, out.stderr
        policy = tmp / "policy.txt"
        policy.write_text(CARDIOLOGY_POLICY)
        out = running.user("patient", "alice", "policy", str(policy))
        assert out.returncode == 0, out.stderr
        yield running
    finally:
        stop_process(proc)
