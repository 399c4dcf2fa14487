"""`emrshare node start|status|config` as real processes: swarm nodes, an exported node on its own,
SIGTERM and SIGINT, metrics that move after work, environment overrides, bad configurations."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agents.testing.cli import cli_env, error_line, run_cli, start_swarm, stop_process
from agents.testing.promtext import parse, value


@pytest.fixture
def short_dir():
    """A short directory: a node's control socket path must fit a Unix socket address."""
    path = Path(tempfile.mkdtemp(prefix="emrs-node-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def unix_get(sock_path: Path, route: str) -> tuple[int, bytes]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(sock_path))
        s.sendall(f"GET {route} HTTP/1.1\r\nHost: node\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def metrics_of(data: Path, agent: str) -> dict:
    status, body = unix_get(data / "agents" / agent / "run" / "node.sock", "/metrics")
    assert status == 200
    return parse(body.decode())


def start_node(config: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """``emrshare node start --config CONFIG`` in the background; (process, its first stdout line)."""
    proc = subprocess.Popen([sys.executable, "-m", "agents.cli", "node", "start", "--config", str(config), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or cli_env(),
                            stdin=subprocess.DEVNULL)
    first = proc.stdout.readline()
    if " serving at " not in first:
        code, err = stop_process(proc)
        raise AssertionError(f"node did not start ({code}): {first}{err}")
    return proc, first


def stop_node(proc: subprocess.Popen, sig: int) -> tuple[int, str, str]:
    """Signal the node; (exit status, the rest of its stdout, its stderr)."""
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


@pytest.mark.slow
def test_swarm_processes_are_nodes_whose_metrics_move_after_work(short_dir):
    data = short_dir / "swarm"
    swarm = start_swarm(data, "--processes")
    try:
        status = run_cli("node", "status", "--config", str(data / "nodes" / "peer-a1.toml"), "--json")
        assert status.returncode == 0, status.stderr
        st = json.loads(status.stdout)
        assert (st["id"], st["role"], st["state"]) == ("peer-a1", "peer", "serving")
        assert st["connections"]["outgoing"] >= 1 and st["queues"]["forward"] == 0
        text = run_cli("node", "status", "--config", str(data / "nodes" / "orderer.toml"))
        assert text.returncode == 0 and text.stdout.startswith("node orderer (orderer) serving at tcp://127.0.0.1:")
        orderer = json.loads(run_cli("node", "status", "--config", str(data / "nodes" / "orderer.toml"),
                                     "--json").stdout)
        # every peer and storage node follows the orderer's blocks over its own connection
        assert orderer["agents_connected"] == sorted(["peer-a1", "peer-a2", "peer-b1", "peer-b2", "storage-1",
                                                      "storage-2", "storage-3"])
        before = {a: metrics_of(data, a) for a in ("orderer", "peer-a1", "peer-b2")}
        health = unix_get(data / "agents" / "storage-1" / "run" / "node.sock", "/health")
        assert health[0] == 200 and json.loads(health[1])["status"] == "ok"
        out = run_cli("patient", "--swarm", str(data), "--subject", "alice", "--org", "hospital-a", "register")
        assert out.returncode == 0, out.stderr
        after = {a: metrics_of(data, a) for a in ("orderer", "peer-a1", "peer-b2")}
        assert value(after["orderer"], "emrshare_ledger_height") > value(before["orderer"], "emrshare_ledger_height")
        for peer in ("peer-a1", "peer-b2"):  # every peer commits the registration, not only the one asked
            moved = (value(after[peer], "emrshare_transactions_committed_total", outcome="valid")
                     - value(before[peer], "emrshare_transactions_committed_total", outcome="valid"))
            assert moved >= 1, peer
            assert value(after[peer], "emrshare_ledger_height") == value(after["orderer"], "emrshare_ledger_height")
        assert value(after["orderer"], "emrshare_bus_connections", direction="incoming") >= 4
        storage = metrics_of(data, "storage-1")
        assert value(storage, "emrshare_storage_bytes", state="used") >= 0
        assert value(storage, "emrshare_node_info", id="storage-1", role="storage") == 1
    finally:
        code, err = stop_process(swarm, signal.SIGTERM, timeout=60)
    assert (code, err) == (0, "swarm stopped\n")
    for agent in ("orderer", "peer-a1", "storage-3"):  # each node process ended with its one line
        assert (data / "logs" / f"{agent}.log").read_text().rstrip().endswith(f"node {agent} stopped (SIGTERM)")
    assert run_cli("node", "status", "--config", str(data / "nodes" / "peer-a1.toml")).returncode == 3


def new_swarm_dir(data: Path) -> Path:
    """A swarm directory (keys, genesis, manifest), not started."""
    from agents.swarm import SwarmFiles, SwarmSpec

    SwarmFiles(data).create(SwarmSpec(data_dir=data, processes=True))
    return data


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_exported_node_serves_on_its_own_and_stops_with_one_line(short_dir, sig):
    data = new_swarm_dir(short_dir / "swarm")
    out_dir = short_dir / "export"
    out_dir.mkdir()
    config = out_dir / "node.toml"
    exported = run_cli("node", "config", "--swarm", str(data), "--id", "orderer", "--out", str(config),
                       "--listen", "tcp://127.0.0.1:0", "--json")
    assert exported.returncode == 0, exported.stderr
    assert {Path(p).name for p in json.loads(exported.stdout)["files"]} == {
        "genesis.block", "orderer.key", "orderer.keys", "orderer.tls.keys", "orderer.pem", "node.toml"}
    # environment overrides: the swarm's orderer state (its chain), and a metrics endpoint
    env = cli_env(EMRSHARE_NODE_DATA_DIR=str(data / "agents" / "orderer"), EMRSHARE_NODE_GRACE="3")
    proc, first = start_node(config, "--metrics", "127.0.0.1:0", env=env)
    try:
        assert first.startswith("node orderer (orderer) serving at tcp://127.0.0.1:")
        url = first.rsplit(" ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            metrics = parse(response.read().decode())
        assert value(metrics, "emrshare_ledger_height") >= 0
        assert metrics["emrshare_ledger_height"]["type"] == "gauge"
        with urllib.request.urlopen(url.replace("/metrics", "/health"), timeout=10) as response:
            assert json.loads(response.read())["status"] == "ok"
        for method in ("POST", "DELETE"):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(urllib.request.Request(url, method=method, data=b"x"), timeout=10)
            assert info.value.code == 405
            info.value.close()
        status = run_cli("node", "status", "--config", str(config), "--json", env=env)
        assert status.returncode == 0 and json.loads(status.stdout)["role"] == "orderer"
        # a second node on the same data directory is refused before it opens the chain
        error_line(run_cli("node", "start", "--config", str(config), env=env), 1,
                   "another node runs on data directory")
    finally:
        code, out, err = stop_node(proc, sig)
    assert code == 0, err
    assert out == f"node orderer stopped ({signal.Signals(sig).name})\n"
    assert "Traceback" not in err
    # EMRSHARE_NODE_DATA_DIR applied: the chain went to the swarm's orderer directory, not data-orderer
    assert (data / "agents" / "orderer" / "orderer.sqlite").exists() and not (out_dir / "data-orderer").exists()


@pytest.mark.slow
def test_bad_configurations_are_one_line(short_dir):
    data = new_swarm_dir(short_dir / "swarm")
    config = short_dir / "node.toml"
    assert run_cli("node", "config", "--swarm", str(data), "--id", "storage-2", "--out", str(config),
                   "--listen", "tcp://127.0.0.1:0").returncode == 0
    error_line(run_cli("node", "start", "--config", str(short_dir / "absent.toml")), 1,
               "node start --config", "no such file or directory")
    (short_dir / "bad.toml").write_text("[node\n")
    error_line(run_cli("node", "start", "--config", str(short_dir / "bad.toml")), 1, "not valid TOML")
    (short_dir / "wrong.key").write_bytes(b"\x00" * 32)
    error_line(run_cli("node", "start", "--config", str(config), env=cli_env(
        EMRSHARE_NODE_KEY_FILE=str(short_dir / "wrong.key"))), 1, "wrong passphrase or key file")
    error_line(run_cli("node", "start", "--config", str(config), env=cli_env(
        EMRSHARE_NODE_KEYSTORE=str(short_dir / "none.keys"))), 1, "none.keys: no such file")
    error_line(run_cli("node", "start", "--config", str(config), env=cli_env(
        EMRSHARE_NODE_GENESIS=str(short_dir / "wrong.key"))), 1, "is not a valid genesis block")
    error_line(run_cli("node", "start", "--config", str(config), env=cli_env(
        EMRSHARE_NODE_KEYSTORE=str(data / "orgs" / "hospital-a" / "keys" / "storage-1.keys"),
        EMRSHARE_NODE_KEY_FILE=str(data / "secrets" / "hospital-a.key"))), 1, "does not hold storage-2's key")
    error_line(run_cli("node", "start", "--config", str(config), env=cli_env(
        EMRSHARE_NODE_TLS__CERT=str(data / "orgs" / "hospital-a" / "tls" / "storage-1.pem"))), 1,
        "names storage-1, not storage-2")
    error_line(run_cli("node", "start", "--config", str(config), env=cli_env(
        EMRSHARE_NODE_TLS__CERT=str(short_dir / "none.pem"))), 1, "none.pem: no such file")
    error_line(run_cli("node", "start", "--config", str(config), env=cli_env(
        EMRSHARE_NODE_LISTEN="tcp://0.0.0.0:0", EMRSHARE_NODE_TLS__ENABLED="false")), 1,
        "enabled = false with listen tcp://0.0.0.0:0, outside loopback")
    error_line(run_cli("node", "start", "--config", str(config), env=cli_env(EMRSHARE_NODE_ROLE="peer")), 1,
               "'storage-2' is not a peer of consortium")
    error_line(run_cli("node", "config", "--swarm", str(data), "--id", "nobody", "--out", str(config)), 2,
               "'nobody' is not a node of the swarm")
    (short_dir / "empty.pass").write_text("\n")
    error_line(run_cli("node", "config", "--swarm", str(data), "--id", "storage-2", "--out", str(short_dir / "n2.toml"),
                       "--passphrase-file", str(short_dir / "empty.pass")), 1,
               "node config: passphrase file", "empty.pass is empty; write the passphrase in it")
    error_line(run_cli("node", "status", "--config", str(config)), 3, "does not answer")


EARLY_SIGNAL = """
import os, signal, sys
from agents.node import load_config, service

real = service.NodeService.from_config.__func__

def from_config(cls, config):
    os.kill(os.getpid(), signal.SIGTERM)  # as if it came while the key store was being unlocked
    return real(cls, config)

service.NodeService.from_config = classmethod(from_config)
sys.exit(service.start_node(load_config(sys.argv[1])))
"""


def test_a_signal_before_the_node_listens_is_not_lost(short_dir):
    """A SIGTERM while the node starts (keys, genesis, ledger) stops it once it runs: one line, exit 0."""
    from agents.node import export_node
    from agents.swarm import SwarmFiles

    files = SwarmFiles(new_swarm_dir(short_dir / "swarm"))
    config = short_dir / "node.toml"
    export_node(files, "orderer", config, listen="tcp://127.0.0.1:0")
    out = subprocess.run([sys.executable, "-c", EARLY_SIGNAL, str(config)], capture_output=True, text=True,
                         env=cli_env(), timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("node orderer (orderer) serving at ")
    assert lines[1] == "node orderer stopped (SIGTERM)"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_whole_process_group_stops_swarm_and_nodes_with_their_lines(short_dir, sig):
    """systemd (KillMode=control-group) and a terminal's Ctrl-C signal every process of the group: the
    nodes get the signal twice (from the group, then from the swarm) and still stop cleanly."""
    import os

    data = short_dir / "swarm"
    proc = subprocess.Popen([sys.executable, "-m", "agents.cli", "swarm", "up", "--data", str(data), "--processes"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        assert proc.stdout.readline().startswith("swarm ")
        children = [int(p.read_text()) for p in (data / "run").glob("*.ready")]
        assert len(children) == 8
        os.killpg(proc.pid, sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert (proc.returncode, err) == (0, "swarm stopped\n")
    name = signal.Signals(sig).name
    for log in sorted((data / "logs").glob("*.log")):
        if log.name == "swarm.log":
            continue
        text = log.read_text()
        assert "Traceback" not in text, log
        # the group's signal, or the swarm's SIGTERM when it reaches the node's handler first (both are
        # delivered at once; which one a node's event loop reads first is not ordered)
        assert text.rstrip().endswith((f"node {log.stem} stopped ({name})", f"node {log.stem} stopped (SIGTERM)")), \
            (log, text[-300:])
