"""The CLI as a person uses it: group and subcommand help, options anywhere, --version,
environment options, --json that parses, every option with help text; swarm status/down and
the directory's lock; Ctrl-C and SIGTERM stop `swarm up` (also its child processes with
--processes) and `patient serve` cleanly with one line."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from agents.cli import _COMMANDS, main
from agents.testing.cli import cli_env, error_line, run_cli, start_swarm, stop_process

# ------------------------------------------------------------------ help, version, options (in process)


@pytest.mark.parametrize("group,subcommands", [
    ("swarm", ("up", "status", "down")),
    ("ledger", ("verify", "audit")),
    ("bench", ("crypto", "pre", "bus", "storage", "ledger")),
])
def test_group_help_lists_subcommands(capsys, group, subcommands):
    for argv in ([group, "--help"], [group], ["help", group]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: emrshare {group} ")
        for sub in subcommands:
            assert f"\n    {sub} " in out, out


def test_top_help_and_version(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for word in ("swarm", "ledger", "patient", "doctor", "EMRSHARE_SWARM", "EMRSHARE_SUBJECT", "EMRSHARE_PASSPHRASE"):
        assert word in out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("emrshare ")
    assert main(["swarm", "status", "--version"]) == 0  # a global option, anywhere on the line
    assert capsys.readouterr().out.startswith("emrshare ")


@pytest.mark.parametrize("role,subcommands", [
    ("patient", ("register", "store", "read", "policy", "revoke", "records", "grants", "audit", "serve")),
    ("doctor", ("register", "records", "request", "read")),
])
def test_user_help(capsys, role, subcommands):
    assert main([role, "--help"]) == 0
    out = capsys.readouterr().out
    for sub in subcommands:
        assert f"\n    {sub} " in out, out
    assert "EMRSHARE_SUBJECT" in out and "EMRSHARE_SWARM" in out and "EMRSHARE_PASSPHRASE" in out
    assert main([role, subcommands[-1], "--help"]) == 0  # subcommand help
    out = capsys.readouterr().out
    assert out.startswith(f"usage: emrshare {role} {subcommands[-1]} ")
    assert "--subject" in out  # the common options are accepted after the subcommand too


def test_every_option_has_help_text(monkeypatch, capsys):
    """Build every registered command's parser (``--help``) and record options without help."""
    missing: list[str] = []
    original = argparse.ArgumentParser.add_argument

    def add_argument(self, *names, **kwargs):
        if names and names[0].startswith("-") and kwargs.get("help") in (None, "") and "-h" not in names:
            missing.append(f"{getattr(self, 'prog', getattr(self, 'title', '?'))} {names[0]}")
        return original(self, *names, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "add_argument", add_argument)
    monkeypatch.setattr(argparse._ArgumentGroup, "add_argument", add_argument)
    for path, (module, func, help_) in _COMMANDS.items():
        assert help_, path
        fn = getattr(importlib.import_module(module), func)
        with pytest.raises(SystemExit) as info:
            fn(["--help"])
        assert info.value.code == 0, path
    capsys.readouterr()
    assert missing == []


def test_user_options_anywhere_and_from_the_environment(monkeypatch):
    from agents.cli import user

    seen = {}

    def fake_run(args, body, attributes):
        seen.update(vars(args))
        return 0

    monkeypatch.setattr(user, "_run", fake_run)
    assert user.patient_main(["records", "--json", "--swarm", "S", "--subject", "alice"]) == 0
    assert (seen["swarm"], seen["subject"], seen["json"]) == ("S", "alice", True)
    assert user.patient_main(["--swarm", "S1", "--subject", "bob", "grants"]) == 0
    assert (seen["swarm"], seen["subject"]) == ("S1", "bob")
    assert user.patient_main(["--swarm", "S1", "records", "--swarm", "S2", "--subject", "c"]) == 0
    assert seen["swarm"] == "S2"  # the later one wins
    monkeypatch.setenv("EMRSHARE_SWARM", "from-env")
    monkeypatch.setenv("EMRSHARE_SUBJECT", "eve")
    assert user.doctor_main(["records", "alice"]) == 0
    assert (seen["swarm"], seen["subject"], seen["patient"]) == ("from-env", "eve", "alice")
    assert user.doctor_main(["records", "alice", "--subject", "dr-x"]) == 0
    assert seen["subject"] == "dr-x"  # a flag beats the environment


def test_usage_errors_are_one_line(capsys):
    assert main(["swarm", "up", "--peers", "many"]) == 2
    err = capsys.readouterr().err
    assert err == ("emrshare: swarm up: argument --peers: invalid int value: 'many'; "
                   "see `emrshare swarm up --help`\n")
    assert main(["patient", "--subject", "a", "--swarm", "x", "store"]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_backend_json(capsys):
    assert main(["backend", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["pairing"] in doc["available"]


# ------------------------------------------------------------------ against a real swarm


@pytest.mark.slow
def test_json_outputs_parse(swarm):
    reg = swarm.user("doctor", "dr-j", "--org", "hospital-a", "register", "--attr", "department=oncology", "--json")
    cert = json.loads(reg.stdout)
    assert (cert["subject"], cert["org"], cert["attributes"]["department"]) == ("dr-j", "hospital-a", "oncology")
    assert cert["valid_from"] < cert["valid_until"] and cert["valid_until"].endswith("Z")
    (stored,) = json.loads(swarm.user("patient", "alice", "store", str(swarm.tmp / "bundle.json"), "--label", "labs",
                                      "--record-id", "rec-labs", "--json").stdout)  # the bundle whole, one record
    assert stored == {"record_id": "rec-labs", "label": "labs", "media_type": "application/fhir+json",
                      "file": str(swarm.tmp / "bundle.json")}
    dr = swarm.user("doctor", "dr-h", "records", "alice", "--json")
    assert [r["record_id"] for r in json.loads(dr.stdout)] == ["rec-1"]  # the cardiologist sees cardiology only
    own = json.loads(swarm.user("patient", "alice", "records", "--json").stdout)
    assert {r["record_id"]: r["label"] for r in own} == {"rec-1": "cardiology", stored["record_id"]: "labs"}
    decision = json.loads(swarm.user("doctor", "dr-h", "request", "alice", "rec-1", "--json").stdout)
    assert decision["effect"] == "allow" and decision["rule"]
    grants = json.loads(swarm.user("patient", "alice", "grants", "--json").stdout)
    assert isinstance(grants, dict)
    audit = json.loads(swarm.user("patient", "alice", "audit", "--json").stdout)
    assert {"store", "set_policy", "access_request"} <= {e["event"] for e in audit}
    assert all(e["utc"].endswith("Z") and e["utc"][:4].isdigit() and "T" in e["utc"] for e in audit)
    status = json.loads(run_cli("swarm", "status", "--data", str(swarm.data), "--json").stdout)
    assert status["running"] and status["pid"] == swarm.proc.pid and len(status["agents"]) == 8
    verify = json.loads(run_cli("ledger", "verify", "--data", str(swarm.data), "--json").stdout)
    assert len(verify) == 4 and all(v["ok"] for v in verify)
    ledger_audit = json.loads(run_cli("ledger", "audit", "--data", str(swarm.data), "--patient", "alice",
                                      "--json").stdout)
    assert len(ledger_audit) >= 3


@pytest.mark.slow
def test_human_output_has_dates_and_tables(swarm):
    audit = swarm.user("patient", "alice", "audit").stdout
    lines = audit.splitlines()
    assert lines[0].startswith("audit trail of alice") and lines[1].split()[:3] == ["TIME", "(UTC)", "BLOCK"]
    assert lines[2][:4].isdigit() and lines[2][10] == "T" and lines[2][19] == "Z"  # 2026-11-30T05:51:15Z
    unknown = swarm.user("doctor", "dr-h", "records", "alice", "--label", "dermatology")
    assert unknown.returncode == 0 and unknown.stdout == "alice has no records under label dermatology\n"


@pytest.mark.slow
def test_environment_options(swarm):
    env = cli_env(EMRSHARE_SWARM=str(swarm.data), EMRSHARE_SUBJECT="alice")
    out = run_cli("patient", "records", "--json", env=env)
    assert out.returncode == 0, out.stderr
    assert "rec-1" in [r["record_id"] for r in json.loads(out.stdout)]
    assert run_cli("swarm", "status", env=env).returncode == 0
    assert run_cli("ledger", "verify", env=env).returncode == 0


@pytest.mark.slow
def test_read_and_serve_stop_cleanly(swarm):
    serve = subprocess.Popen([sys.executable, "-m", "agents.cli", "patient", "serve", "--swarm", str(swarm.data),
                              "--subject", "alice"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=cli_env(), stdin=subprocess.DEVNULL)
    try:
        assert serve.stdout.readline().startswith("alice answering access requests at tcp://")
        out_file = swarm.tmp / "read.json"
        read = swarm.user("doctor", "dr-h", "read", "alice", "rec-1", "--out", str(out_file))
        assert read.returncode == 0, read.stderr
        assert out_file.read_bytes() == (swarm.tmp / "bundle.json").read_bytes()
        assert read.stderr == ""  # no progress bar, no log lines when not a terminal
    finally:
        code, err = stop_process(serve, signal.SIGTERM)
    assert code == 0 and err == "stopped\n", err
    assert not (swarm.data / "users" / "alice" / "address").exists()
    assert (swarm.data / "logs" / "alice.log").exists()  # the log went to the file, not the terminal


@pytest.mark.slow
def test_swarm_lock_status_down_and_sigint(tmp_path):
    data = tmp_path / "swarm"
    proc = start_swarm(data)
    try:
        assert run_cli("swarm", "status", "--data", str(data)).returncode == 0
        error_line(run_cli("swarm", "up", "--data", str(data)), 1, "already running")
        # SIGINT (Ctrl-C): one line, exit 0
        code, err = stop_process(proc, signal.SIGINT)
        assert (code, err) == (0, "swarm stopped\n")
        stopped = run_cli("swarm", "status", "--data", str(data))
        assert stopped.returncode == 3 and ": stopped" in stopped.stdout
        # resumed, then `swarm down`
        proc = start_swarm(data)
        down = run_cli("swarm", "down", "--data", str(data))
        assert down.returncode == 0 and down.stdout == "swarm stopped\n"
        assert proc.wait(timeout=30) == 0
        assert run_cli("swarm", "down", "--data", str(data)).stdout.endswith("is not running\n")
    finally:
        stop_process(proc)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_sigterm_on_processes_mode_stops_every_child(tmp_path):
    data = tmp_path / "swarm"
    proc = start_swarm(data, "--processes")
    children = [int(p.read_text()) for p in (data / "run").glob("*.ready")]
    assert len(children) == 8 and all(_alive(pid) for pid in children)
    code, err = stop_process(proc, signal.SIGTERM, timeout=60)
    assert (code, err) == (0, "swarm stopped\n")
    deadline = time.monotonic() + 10  # reaped by the parent before it exited; allow the kernel a moment
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in children)
    assert run_cli("swarm", "status", "--data", str(data)).returncode == 3


def _on_terminal(argv: list[str], answers: list[str], env: dict, timeout: float = 60) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as its controlling terminal, typing ``answers`` at its
    prompts; (exit status, everything it wrote)."""
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its terminal
        os.execve(sys.executable, [sys.executable, "-m", "agents.cli", *argv], env)
    out = b""
    pending = list(answers)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            if pending and chunk.endswith(b": "):  # a prompt (getpass flushes what is typed ahead)
                os.write(fd, pending.pop(0).encode() + b"\n")
    else:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


@pytest.mark.slow
def test_new_key_store_passphrase_is_confirmed_at_a_prompt(swarm):
    env = cli_env()
    del env["EMRSHARE_PASSPHRASE"]
    argv = ["patient", "--swarm", str(swarm.data), "--subject", "pat-tty", "--org", "hospital-a", "register"]
    code, out = _on_terminal(argv, ["one passphrase", "another one"], env)
    assert code == 2 and "the two passphrases differ" in out, out
    assert not (swarm.data / "users" / "pat-tty").exists()
    code, out = _on_terminal(argv, ["same passphrase", "same passphrase"], env)
    assert code == 0 and "registered pat-tty at hospital-a" in out, out
    # an existing key store is asked for once
    code, out = _on_terminal(["patient", "--swarm", str(swarm.data), "--subject", "pat-tty", "records"],
                             ["same passphrase"], env)
    assert code == 0 and out.count("passphrase") == 1, out


@pytest.mark.slow
def test_an_agent_that_cannot_start_is_one_line_and_stops_the_others(tmp_path):
    data = tmp_path / "swarm"
    code, err = stop_process(start_swarm(data, "--processes"), signal.SIGTERM, timeout=60)
    assert code == 0
    (data / "orgs" / "hospital-a" / "keys" / "storage-3.keys").write_bytes(b"not a key store")  # its hospital's
    out = run_cli("swarm", "up", "--data", str(data))
    line = error_line(out, 1, "agent storage-3 exited with", "storage-3.log")
    assert line.startswith("emrshare: swarm up: ")
    started = [int(p.read_text()) for p in (data / "run").glob("*.ready")]
    assert started and not any(_alive(pid) for pid in started)


@pytest.mark.slow
def test_sigkill_of_swarm_up_leaves_no_agent_process(tmp_path):
    """Even without a chance to clean up, the agent processes follow their parent (PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    data = tmp_path / "swarm"
    proc = start_swarm(data, "--processes")
    children = [int(p.read_text()) for p in (data / "run").glob("*.ready")]
    assert len(children) == 8
    proc.kill()
    stop_process(proc)
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in children)
    assert run_cli("swarm", "status", "--data", str(data)).returncode == 3  # the lock went with it
