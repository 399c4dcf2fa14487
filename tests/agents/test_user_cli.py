"""`emrshare swarm up` in one process, patient and doctor commands from others (real loopback TCP)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.testing.cli import stop_process
from agents.testing.consortium import CARDIOLOGY_POLICY as POLICY

pytestmark = pytest.mark.slow


def _cli(*args: str, env: dict, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "agents.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _wait_for(path: Path, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited: {proc.stdout.read() if proc.stdout else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not ready")
        time.sleep(0.1)


def test_swarm_up_and_user_commands(tmp_path):
    data = tmp_path / "swarm"
    env = {**os.environ, "EMRSHARE_PASSPHRASE": "cli test passphrase"}
    swarm = subprocess.Popen([sys.executable, "-m", "agents.cli", "swarm", "up", "--data", str(data)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    serve = None
    try:
        _wait_for(data / "manifest.json", swarm, "swarm")
        # the manifest is rewritten with the bound address once the node listens
        deadline = time.monotonic() + 60
        while ":0" in json.loads((data / "manifest.json").read_text())["agents"]["orderer"]:
            assert time.monotonic() < deadline and swarm.poll() is None
            time.sleep(0.1)
        time.sleep(1.0)  # agents started after the manifest was rewritten
        common = ["--swarm", str(data)]
        out = _cli("patient", *common, "--subject", "alice", "--org", "hospital-a", "register", env=env)
        assert "registered alice at hospital-a" in out.stdout
        _cli("doctor", *common, "--subject", "dr-h", "--org", "hospital-b", "register",
             "--attr", "department=cardiology", env=env)
        _cli("doctor", *common, "--subject", "dr-x", "--org", "hospital-a", "register",
             "--attr", "department=dermatology", env=env)
        record = tmp_path / "ecg.txt"
        record.write_bytes(b"ECG 2026-01-05: sinus rhythm, 64 bpm")
        out = _cli("patient", *common, "--subject", "alice", "store", str(record), "--label", "cardiology",
                   "--media-type", "text/plain", "--record-id", "rec-1", env=env)
        assert "stored rec-1" in out.stdout
        policy = tmp_path / "policy.txt"
        policy.write_text(POLICY)
        _cli("patient", *common, "--subject", "alice", "policy", str(policy), env=env)
        listed = json.loads(_cli("doctor", *common, "--subject", "dr-h", "records", "alice", "--json",
                                 env=env).stdout)
        assert [r["record_id"] for r in listed] == ["rec-1"]

        serve = subprocess.Popen([sys.executable, "-m", "agents.cli", "patient", *common, "--subject", "alice",
                                  "serve"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        _wait_for(data / "users" / "alice" / "address", serve, "patient serve")
        out_file = tmp_path / "read.json"
        _cli("doctor", *common, "--subject", "dr-h", "read", "alice", "rec-1", "--out", str(out_file), env=env)
        assert out_file.read_bytes() == record.read_bytes()
        denied = _cli("doctor", *common, "--subject", "dr-x", "read", "alice", "rec-1", env=env, check=False)
        assert denied.returncode == 1 and "request.denied" in denied.stderr
        wrong = _cli("patient", *common, "--subject", "alice", "records", check=False,
                     env={**env, "EMRSHARE_PASSPHRASE": "wrong"})
        assert wrong.returncode != 0 and "passphrase" in (wrong.stderr + wrong.stdout)
        # the peers log a read in their next access batch (agents.peer._audit): wait for it
        deadline = time.monotonic() + 60
        while True:
            audit = _cli("patient", *common, "--subject", "alice", "audit", env=env).stdout
            if "re-encrypted rec-1 for dr-h" in audit or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert "re-encrypted rec-1 for dr-h" in audit and "deny by rule default" in audit
        away = json.loads(_cli("patient", *common, "--subject", "alice", "away", "--json", env=env).stdout)
        assert [e["actor"] for e in away["standing_grants"]] == ["dr-h"]  # served from the standing parts
        assert [e["actor"] for e in away["denied"]] == ["dr-x"]

        # break-glass from the command line: two officers of dr-e's hospital co-sign
        policy.write_text(POLICY.replace("version 1", "version 2").replace(
            "default deny", "default deny\nemergency roles doctor cosign 2 window 600"))
        _cli("patient", *common, "--subject", "alice", "policy", str(policy), env=env)
        _cli("doctor", *common, "--subject", "dr-e", "--org", "hospital-b", "register",
             "--attr", "department=emergency", env=env)
        sigs = []
        for officer in ("o1", "o2"):
            _cli("doctor", *common, "--subject", officer, "--org", "hospital-b", "register", "--role", "nurse",
                 "--attr", "officer=true", env=env)
            sigs.append(_cli("doctor", *common, "--subject", officer, "cosign", "alice", "rec-1", "--doctor", "dr-e",
                             "--reason", "cardiac arrest", "--id", "bg-1", env=env).stdout.strip())
        refused = _cli("doctor", *common, "--subject", "dr-e", "break-glass", "alice", "rec-1", "--reason",
                       "cardiac arrest", "--id", "bg-1", "--cosign", sigs[0], env=env, check=False)
        assert refused.returncode == 1 and "not_allowed" in refused.stderr
        _cli("doctor", *common, "--subject", "dr-e", "break-glass", "alice", "rec-1", "--reason", "cardiac arrest",
             "--id", "bg-2", "--cosign", sigs[0], "--cosign", sigs[1], env=env, check=False)  # signed bg-1: refused
        out_file.unlink()
        sigs = [_cli("doctor", *common, "--subject", o, "cosign", "alice", "rec-1", "--doctor", "dr-e", "--reason",
                     "cardiac arrest", "--id", "bg-3", env=env).stdout.strip() for o in ("o1", "o2")]
        _cli("doctor", *common, "--subject", "dr-e", "break-glass", "alice", "rec-1", "--reason", "cardiac arrest",
             "--id", "bg-3", "--cosign", sigs[0], "--cosign", sigs[1], "--out", str(out_file), env=env)
        assert out_file.read_bytes() == record.read_bytes()
        away = _cli("patient", *common, "--subject", "alice", "away", env=env).stdout
        assert "emergency accesses: 1" in away and "cardiac arrest" in away and "o1, o2" in away
        rotated = json.loads(_cli("patient", *common, "--subject", "alice", "rotate", "cardiology", "--json",
                                  env=env).stdout)
        assert rotated == {"label": "cardiology", "epoch": 1, "resealed": ["rec-1"]}
        out_file.unlink()
        _cli("doctor", *common, "--subject", "dr-h", "read", "alice", "rec-1", "--out", str(out_file), env=env)
        assert out_file.read_bytes() == record.read_bytes()  # served from the new epoch's standing parts
    finally:
        for proc in (serve, swarm):
            if proc is not None:
                stop_process(proc, timeout=20)
    # resumable: the peers' chains verify after the stop
    from agents.cli import ledger as ledger_cli

    assert ledger_cli.verify_main(["--data", str(data / "agents" / "peer-a1")]) == 0
