"""The CLI's bad-input table: each mistake a person makes, run as a subprocess against a real
swarm, gives exit status 2 (usage) or 1 (failure), ONE line on stderr
(``emrshare: <what failed>: <why>; <what to do>``), no traceback, and leaves nothing
half-written (no key store for a failed register or a mistyped subject, no fetch before a
bad ``--out`` is refused)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from agents.testing.cli import cli_env as base_env
from agents.testing.cli import error_line as one_line
from agents.testing.cli import run_cli as cli

pytestmark = pytest.mark.slow


def _access_requests(swarm) -> int:
    out = cli("ledger", "audit", "--data", str(swarm.data), "--patient", "alice", "--json")
    assert out.returncode == 0, out.stderr
    return sum(1 for e in json.loads(out.stdout) if e["event"] == "access_request")


def _users(swarm) -> set[str]:
    users = swarm.data / "users"
    return {p.name for p in users.iterdir()} if users.exists() else set()


# (id, argv after `--swarm DIR`-style prefix is added by the runner, exit status, needles)
# `P` and `D` are the patient's and the doctor's prefixes; `{tmp}` and `{data}` are filled in.
CASES: list[tuple[str, list[str], int, tuple[str, ...]]] = [
    ("missing file", ["P", "store", "{tmp}/nope.json", "--label", "x"], 1, ("nope.json: no such file",)),
    ("directory as file", ["P", "policy", "{tmp}"], 1, ("is a directory",)),
    ("store: empty directory", ["P", "store", "{tmp}/empty"], 1, ("holds no files",)),
    ("store: non-FHIR without media type", ["P", "store", "{tmp}/binary.bin", "--label", "x"], 1,
     ("not FHIR R4 JSON", "--media-type")),
    ("store: non-FHIR without label", ["P", "store", "{tmp}/binary.bin", "--media-type", "text/plain"], 1,
     ("no label can be derived",)),
    ("store: bundle whole without label", ["P", "store", "{tmp}/bundle.json", "--record-id", "rec-9"], 1,
     ("give --label",)),
    ("malformed policy", ["P", "policy", "{tmp}/bad-policy.txt"], 1,
     ("line 6, column 13: a single '=' is not an operator",)),
    ("missing policy file", ["P", "policy", "{tmp}/none.txt"], 1, ("none.txt: no such file",)),
    ("policy file not text", ["P", "policy", "{tmp}/binary.bin"], 1, ("not a text file",)),
    ("empty --label", ["P", "store", "{tmp}/bundle.json", "--label", ""], 2, ("the label is empty",)),
    ("bad --attr", ["doctor", "--swarm", "{data}", "--subject", "dr-z", "--org", "hospital-b", "register",
                    "--attr", "x"], 2, ("--attr needs NAME=VALUE",)),
    ("unknown option", ["P", "records", "--colour"], 2, ("unrecognized arguments: --colour",)),
    ("no subcommand option value", ["P", "store"], 2, ("the following arguments are required",)),
    ("doctor: unknown patient", ["D", "records", "bob"], 1, ("no patient 'bob' is registered",)),
    ("doctor: unknown record", ["D", "read", "alice", "rec-404"], 1, ("doctor read alice rec-404",)),
    ("unknown command", ["swarn", "up"], 2, ("did you mean `emrshare swarm`",)),
    ("unknown subcommand", ["swarm", "upp"], 2, ("did you mean `emrshare swarm up`",)),
    ("ledger verify: no such dir", ["ledger", "verify", "--data", "{tmp}/nowhere"], 1, ("no such file",)),
    ("swarm status: no swarm", ["swarm", "status", "--data", "{tmp}/nowhere"], 1, ("no swarm in",)),
    ("no swarm at --swarm", ["patient", "--swarm", "{tmp}/nowhere", "--subject", "alice", "records"], 1,
     ("no swarm in", "swarm up")),
    ("--swarm is a file", ["patient", "--swarm", "{tmp}/bundle.json", "--subject", "alice", "records"], 1,
     ("is a file",)),
    ("--subject missing", ["patient", "--swarm", "{data}", "records"], 2, ("--subject is required",)),
    ("swarm up: --data is a file", ["swarm", "up", "--data", "{tmp}/bundle.json"], 1, ("is a file",)),
    ("swarm up: unrelated non-empty --data", ["swarm", "up", "--data", "{tmp}/stuff"], 1,
     ("is not empty and holds no swarm",)),
    ("swarm up: already running", ["swarm", "up", "--data", "{data}"], 1, ("already running (pid ",)),
    ("swarm up: resume with other flags", ["swarm", "up", "--data", "{data}", "--peers", "6", "--threshold", "3"], 2,
     ("--peers 6 (saved: 4)", "--threshold 3 (saved: 2)", "drop these flags")),
    ("swarm up: bad settings", ["swarm", "up", "--data", "{tmp}/new-swarm", "--threshold", "9"], 2,
     ("threshold must be between",)),
    ("swarm up: bad TOML", ["swarm", "up", "--data", "{tmp}/new-swarm", "--config", "{tmp}/bad-policy.txt"], 1,
     ("not valid TOML",)),
    ("patient: unknown record", ["P", "read", "nope"], 1,
     ("no record nope", "list your records with `emrshare patient records`")),
    ("patient: unknown grant", ["P", "revoke", "bogus"], 1,
     ("no grant 'bogus' exists", "`emrshare patient grants`", "(sg-...) with `emrshare ledger audit --data ",
      " --patient alice`")),
    ("patient: mistyped subcommand", ["P", "stor", "{tmp}/bundle.json"], 2,
     ("patient stor: no such subcommand", "did you mean `emrshare patient store`?")),
    ("doctor: mistyped subcommand", ["D", "reed", "alice", "rec-1"], 2, ("did you mean `emrshare doctor read`?",)),
]


@pytest.fixture(scope="module")
def files(swarm) -> Path:
    tmp = swarm.tmp
    (tmp / "bad-policy.txt").write_text((swarm.tmp / "policy.txt").read_text().replace("==", "=", 1))
    (tmp / "binary.bin").write_bytes(b"\xff\xfe\x00policy")
    (tmp / "empty").mkdir(exist_ok=True)
    (tmp / "stuff").mkdir(exist_ok=True)
    (tmp / "stuff" / "notes.txt").write_text("not a swarm")
    return tmp


def _expand(argv: list[str], swarm) -> list[str]:
    prefix = {"P": ["patient", "--swarm", str(swarm.data), "--subject", "alice"],
              "D": ["doctor", "--swarm", str(swarm.data), "--subject", "dr-h"]}
    out: list[str] = []
    for a in argv:
        out.extend(prefix.get(a, [a.format(tmp=swarm.tmp, data=swarm.data)]))
    return out


@pytest.mark.parametrize("name,argv,code,needles", CASES, ids=[c[0] for c in CASES])
def test_bad_input(swarm, files, name, argv, code, needles):
    users = _users(swarm)
    one_line(cli(*_expand(argv, swarm)), code, *needles)
    assert _users(swarm) == users  # no user directory appears
    assert not (swarm.tmp / "new-swarm").exists()


def test_a_patient_is_not_sent_to_the_doctor_commands(swarm):
    line = one_line(swarm.user("patient", "alice", "read", "nope"), 1, "patient read nope")
    assert "doctor records" not in line


def test_the_ledger_audit_names_a_standing_grant(swarm):
    """`patient revoke` sends a patient there for the grants made from a standing delegation."""
    decision = json.loads(swarm.user("doctor", "dr-h", "request", "alice", "rec-1", "--json").stdout)
    grant = decision["grant_id"]
    assert grant.startswith("sg-")
    audit = cli("ledger", "audit", "--data", str(swarm.data), "--patient", "alice")
    assert audit.returncode == 0 and f"grant {grant}" in audit.stdout
    assert grant not in swarm.user("patient", "alice", "grants").stdout  # only the grants alice issued


def test_unknown_organization_leaves_no_key_store(swarm):
    one_line(swarm.user("patient", "bob", "--org", "hospital-z", "register"), 1,
             "unknown organization 'hospital-z'", "hospital-a, hospital-b")
    assert "bob" not in _users(swarm)


def test_register_without_org_leaves_no_key_store(swarm):
    one_line(swarm.user("patient", "bob", "register"), 2, "--org is required", "--org hospital-a")
    assert "bob" not in _users(swarm)


def test_mistyped_subject_leaves_no_key_store(swarm):
    line = one_line(swarm.user("patient", "alcie", "records"), 1, "no user 'alcie'", "did you mean --subject alice")
    assert "register" in line
    assert "alcie" not in _users(swarm)


def test_failed_register_removes_its_key_store(swarm):
    # carol registers, loses her directory, registers again with new keys: the peer refuses
    assert swarm.user("patient", "carol", "--org", "hospital-a", "register").returncode == 0
    shutil.rmtree(swarm.data / "users" / "carol")
    one_line(swarm.user("patient", "carol", "--org", "hospital-a", "register"), 1, "patient register")
    assert "carol" not in _users(swarm)


def test_read_into_missing_directory_is_refused_before_fetching(swarm):
    before = _access_requests(swarm)
    one_line(swarm.user("doctor", "dr-h", "read", "alice", "rec-1", "--out", str(swarm.tmp / "no" / "such" / "x")),
             1, "directory", "does not exist")
    assert _access_requests(swarm) == before  # nothing was asked of the ledger


def test_passphrase_missing_or_wrong(swarm):
    env = base_env()
    del env["EMRSHARE_PASSPHRASE"]
    one_line(swarm.user("patient", "alice", "records", env=env), 1, "EMRSHARE_PASSPHRASE")
    one_line(swarm.user("patient", "alice", "records", env=base_env(EMRSHARE_PASSPHRASE="wrong")), 1,
             "wrong passphrase")


def test_port_in_use(swarm):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        line = one_line(cli("swarm", "up", "--data", str(swarm.tmp / "port-swarm"), "--port", str(port)), 1,
                        "address already in use", "--port", f"port {port}")
    assert "swarm up" in line


def test_verbose_adds_the_traceback(swarm):
    out = cli("-v", "patient", "--swarm", str(swarm.data), "--subject", "alice", "store")
    assert out.returncode == 2  # the file missing: a usage error even with -v
    out = cli("patient", "--swarm", str(swarm.data), "--subject", "alcie", "records", "--verbose")
    assert out.returncode == 1 and "Traceback" in out.stderr
    assert out.stderr.splitlines()[-1].startswith("emrshare: patient records: no user 'alcie'")


def test_a_bug_says_it_is_a_bug(monkeypatch, capsys):
    """An exception nobody raised on purpose: the traceback, then one line saying it is a bug."""
    from agents import cli as cli_mod

    def broken(argv: list[str]) -> int:
        raise ZeroDivisionError("boom")

    monkeypatch.setitem(cli_mod._COMMANDS, ("backend",), ("agents.cli", "broken_for_test", "x"))
    monkeypatch.setattr(cli_mod, "broken_for_test", broken, raising=False)
    assert cli_mod.main(["backend"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: boom" in err
    assert err.splitlines()[-1].startswith("emrshare: backend: this is a bug in emrshare: ZeroDivisionError: boom")


def test_a_closed_output_pipe_is_quiet():
    """`emrshare ... | head`: the reader leaves; the command stops with SIGPIPE's status
    and prints no error line (a real pipe, a real process)."""
    import subprocess
    import sys

    code = ("import sys\nfrom agents import cli\n"
            "def flood(argv):\n    while True:\n        print('x' * 1000)\n"
            "cli.flood = flood\n"
            "cli._COMMANDS[('backend',)] = ('agents.cli', 'flood', 'x')\n"
            "sys.exit(cli.main(['backend']))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(10)
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141
    assert err == b""


def test_unwrap_finds_the_error_inside_trio_groups():
    import trio

    from agents.cli.base import explain, unwrap
    from agents.errors import Unavailable

    async def fails() -> None:
        async with trio.open_nursery() as n:
            n.start_soon(trio.sleep_forever)
            raise Unavailable("no peer answered")

    with pytest.raises(BaseExceptionGroup) as info:
        trio.run(fails)
    leaf = unwrap(info.value)
    assert isinstance(leaf, Unavailable)
    assert str(explain(leaf, "doctor read")) == ("doctor read: no peer answered (unavailable); check that the swarm "
                                                 "runs (`emrshare swarm status`) and retry")
    group = BaseExceptionGroup("x", [ValueError("a"), KeyboardInterrupt()])
    assert isinstance(unwrap(group), KeyboardInterrupt)


def test_interrupt_inside_a_group_is_one_line():
    import io

    from agents.cli.base import report

    out = io.StringIO()
    assert report(BaseExceptionGroup("g", [KeyboardInterrupt()]), "doctor read", stream=out) == 130
    assert out.getvalue() == "emrshare: interrupted\n"


# ------------------------------------------------------------------ numbers, addresses and paths, before any work


def _in_process(capsys, *argv: str) -> subprocess.CompletedProcess:
    """``emrshare ARGV`` run by the CLI's main in this process, as a CompletedProcess."""
    from agents.cli import main

    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out.out, out.err)


# (id, loadtest options, exit status, needles); each run also gets `--data {tmp}/lt`, which must not appear
LOADTEST_CASES: list[tuple[str, list[str], int, tuple[str, ...]]] = [
    ("negative saturation", ["--saturation", "-1", "--rate", "half"], 2, ("--saturation must be >= 0",)),
    ("rate half without saturation", ["--saturation", "0", "--rate", "half"], 2,
     ("--rate half needs a saturation measurement", "--saturation SECONDS > 0")),
    ("negative request timeout", ["--request-timeout", "-1"], 2, ("--request-timeout must be > 0",)),
    ("no concurrency", ["--concurrency", "0"], 2, ("--concurrency must be >= 1",)),
    ("no operation in flight", ["--max-inflight", "0", "--rate", "5"], 2, ("--max-inflight",)),
    ("a duration that is not a number", ["--duration", "nan"], 2, ("duration must be a number of seconds",)),
    ("an infinite rate", ["--rate", "inf"], 2, ("rate must be a number > 0",)),
    ("no probes", ["--probes", "0"], 2, ("--probes must be >= 1",)),
    ("JSON report in a missing directory", ["--json", "{tmp}/nowhere/x.json"], 1,
     ("directory {tmp}/nowhere does not exist", "choose another --json")),
    ("HTML report in a missing directory", ["--html", "{tmp}/nowhere/x.html"], 1,
     ("directory {tmp}/nowhere does not exist", "choose another --html")),
]


@pytest.mark.parametrize("name,options,code,needles", LOADTEST_CASES, ids=[c[0] for c in LOADTEST_CASES])
def test_loadtest_refuses_bad_options_before_any_work(tmp_path, name, options, code, needles):
    if "--html" in options:
        pytest.importorskip("matplotlib")
    fill = [a.format(tmp=tmp_path) for a in options]
    one_line(cli("loadtest", *fill, "--data", str(tmp_path / "lt")), code, *(n.format(tmp=tmp_path) for n in needles))
    assert not (tmp_path / "lt").exists()  # no swarm was started


def test_loadtest_data_needs_an_existing_parent(tmp_path):
    one_line(cli("loadtest", "--data", str(tmp_path / "nowhere" / "swarm")), 1,
             f"directory {tmp_path / 'nowhere'} does not exist", "--data")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("module,work,argv,needle", [
    ("agents.bench.ledger", "run_bench", ["bench", "ledger", "--txs", "-5"], "--txs must be at least 1"),
    ("agents.bench.ledger", "run_bench", ["bench", "ledger", "--txs", "0"], "--txs must be at least 1"),
    ("agents.bench.heal", "measure", ["bench", "heal", "--interval", "-1"], "--interval must be more than 0"),
    ("agents.bench.heal", "measure", ["bench", "heal", "--size-mib", "-1"], "--size-mib must be at least 1"),
    ("agents.bench.crypto", "run", ["bench", "crypto", "--iterations", "0"], "--iterations must be at least 1"),
    ("agents.bench.ledger", "run_bench", ["bench", "ledger", "--window", "0"], "--window must be at least --batch"),
], ids=["ledger txs -5", "ledger txs 0", "heal interval -1", "heal size -1", "crypto iterations 0", "ledger window 0"])
def test_benchmarks_refuse_bad_numbers_before_any_work(capsys, monkeypatch, module, work, argv, needle):
    import importlib

    def ran(*args, **kwargs):
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr(importlib.import_module(module), work, ran)
    command = " ".join(argv[:2])
    one_line(_in_process(capsys, *argv), 2, f"{command}: {needle}", f"see `emrshare {command} --help`")


def test_loadtest_html_without_matplotlib_is_one_line_before_any_work(capsys, monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # (import matplotlib raises ImportError)
    one_line(_in_process(capsys, "loadtest", "--html", str(tmp_path / "r.html"), "--data", str(tmp_path / "s")), 2,
             "loadtest: cannot write the HTML report: matplotlib is not installed", "drop --html")
    assert not (tmp_path / "s").exists()


@pytest.fixture(scope="module")
def node_config(tmp_path_factory) -> Path:
    """A storage node's configuration exported from a swarm directory (not started)."""
    from agents.swarm import SwarmFiles, SwarmSpec

    tmp = tmp_path_factory.mktemp("node")
    SwarmFiles(tmp / "swarm").create(SwarmSpec(data_dir=tmp / "swarm", processes=True))
    out = cli("node", "config", "--swarm", str(tmp / "swarm"), "--id", "storage-2", "--out", str(tmp / "node.toml"),
              "--listen", "tcp://127.0.0.1:0")
    assert out.returncode == 0, out.stderr
    return tmp / "node.toml"


@pytest.mark.parametrize("option,value", [("--listen", "tcp://127.0.0.2:99999"), ("--listen", "tcp://127.0.0.2:-5"),
                                          ("--listen", "127.0.0.1:7101"), ("--metrics", "nonsense"),
                                          ("--metrics", "127.0.0.1:70000"), ("--listen", "tcp://127.0.0.2:\u00b2"),
                                          ("--metrics", "127.0.0.1:\u00b2")])
def test_node_start_refuses_a_bad_address(node_config, option, value):
    one_line(cli("node", "start", "--config", str(node_config), option, value), 2,
             f"{option} {value!r} is not", "port 0..65535", f"write e.g. {option} ")


def test_node_start_refuses_a_plaintext_listen_outside_loopback(node_config, tmp_path):
    # (the config file's listen is checked against [tls] enabled = false at load; --listen came after)
    text = node_config.read_text()
    plain = tmp_path / "plain.toml"
    plain.write_text(text[:text.index("[tls]")] + "[tls]\nenabled = false\n")
    for name in ("genesis.block", "storage-2.key", "storage-2.keys"):
        shutil.copy(node_config.parent / name, tmp_path / name)
    one_line(cli("node", "start", "--config", str(plain), "--listen", "tcp://0.0.0.0:7101"), 2,
             "--listen tcp://0.0.0.0:7101 is outside loopback", "enable TLS in the config")


@pytest.mark.parametrize("option", ["--listen", "--metrics"])
def test_node_start_names_the_address_in_use(node_config, option):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        address = f"tcp://127.0.0.1:{port}" if option == "--listen" else f"127.0.0.1:{port}"
        line = one_line(cli("node", "start", "--config", str(node_config), option, address, "--log-level", "error"),
                        1, f"{address}: address already in use", f"choose another {option},")
    assert "--port" not in line


def test_org_init_refuses_a_directory_that_is_not_new(capsys, tmp_path):
    (tmp_path / "h1").mkdir()
    (tmp_path / "h1" / "notes.txt").write_text("mine")
    one_line(_in_process(capsys, "org", "init", "--org", "h1", "--dir", tmp_path / "h1", "--key-file",
                         tmp_path / "h1.key"), 1, f"--dir {tmp_path / 'h1'} is not empty", "give a new")
    assert [p.name for p in (tmp_path / "h1").iterdir()] == ["notes.txt"]
    assert not (tmp_path / "h1.key").exists()  # no key file made for it


def test_storage_status_reads_the_swarm_from_the_environment(capsys, monkeypatch, tmp_path):
    from agents.swarm import SwarmFiles, SwarmSpec

    monkeypatch.setenv("EMRSHARE_SWARM", str(tmp_path / "nowhere"))
    line = one_line(_in_process(capsys, "storage", "status"), 1, f"no swarm at {tmp_path / 'nowhere'}")
    assert line.count("storage status:") == 1
    SwarmFiles(tmp_path / "swarm").create(SwarmSpec(data_dir=tmp_path / "swarm", processes=True))
    monkeypatch.setenv("EMRSHARE_SWARM", str(tmp_path / "swarm"))
    out = _in_process(capsys, "storage", "status")
    assert out.returncode == 0 and "storage-1" in out.stdout, out.stderr
    assert _in_process(capsys, "storage", "status", "--data", tmp_path / "swarm").returncode == 0
