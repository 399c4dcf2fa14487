"""`emrshare org node-config`: two hospitals' nodes configured from their own organization
directories, started as real processes, linked by mutual TLS; and the command's one-line errors."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from agents.node.config import load_config
from agents.testing.cli import cli_env, error_line, run_cli, stop_process


def start_node(config: Path) -> subprocess.Popen:
    """``emrshare node start --config CONFIG`` in the background, returned once it serves."""
    proc = subprocess.Popen([sys.executable, "-m", "agents.cli", "node", "start", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
                            stdin=subprocess.DEVNULL)
    first = proc.stdout.readline()
    if " serving at " not in first:
        code, err = stop_process(proc)
        raise AssertionError(f"node did not start ({code}): {first}{err}")
    return proc


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ok(*args: object) -> str:
    out = run_cli(*map(str, args))
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def consortium():
    """h1 (a peer and the orderer) and h2 (a peer, a storage node): org init, genesis, sign, seal, manifest."""
    t = Path(tempfile.mkdtemp(prefix="emrs-on-", dir="/tmp"))
    p = _ports(4)
    _ok("org", "init", "--org", "h1", "--dir", t / "h1", "--peers", "1", "--orderer", "--key-file", t / "h1.key",
        "--address", f"peer-h1-1=tcp://127.0.0.1:{p[0]}", "--address", f"orderer-h1=tcp://127.0.0.1:{p[1]}")
    _ok("org", "init", "--org", "h2", "--dir", t / "h2", "--peers", "1", "--storage-nodes", "1",
        "--key-file", t / "h2.key", "--address", f"peer-h2-1=tcp://127.0.0.1:{p[2]}",
        "--address", f"storage-h2-1=tcp://127.0.0.1:{p[3]}")
    _ok("consortium", "genesis", "--profile", t / "h1", "--profile", t / "h2", "--threshold", "1", "--name", "two",
        "--out", t / "g.draft")
    for org in ("h1", "h2"):
        _ok("consortium", "sign", "--org-dir", t / org, "--key-file", t / f"{org}.key", t / "g.draft")
    _ok("consortium", "seal", t / "g.draft", "--out", t / "genesis")
    _ok("consortium", "manifest", "--genesis", t / "genesis", "--profile", t / "h1", "--profile", t / "h2",
        "--replicas", "1", "--write-quorum", "1", "--out", t / "manifest.json")
    yield t
    shutil.rmtree(t, ignore_errors=True)


def _node_config(t: Path, org: str, node: str, *extra: object) -> Path:
    out = t / f"{node}.toml"
    _ok("org", "node-config", "--org-dir", t / org, "--id", node, "--genesis", t / "genesis",
        "--manifest", t / "manifest.json", "--out", out, "--key-file", t / f"{org}.key", *extra)
    return out


def test_node_config_points_at_the_organization_directory(consortium):
    t = consortium
    cfg = load_config(_node_config(t, "h2", "storage-h2-1"), environ={})
    assert (cfg.id, cfg.role) == ("storage-h2-1", "storage")
    assert cfg.keystore == t / "h2" / "keys" / "storage-h2-1.keys" and cfg.key_file == t / "h2.key"
    assert (cfg.tls.cert, cfg.tls.keystore) == (t / "h2" / "tls" / "storage-h2-1.pem",
                                                t / "h2" / "keys" / "storage-h2-1.tls.keys")
    # every orderer and storage node placed (the manifest's node_orgs, from the profiles): h1's orderer too
    assert cfg.tls.orgs == {"orderer-h1": "h1", "storage-h2-1": "h2"}
    assert cfg.storage == ["storage-h2-1"] and set(cfg.routes) == {"peer-h1-1", "peer-h2-1", "orderer-h1"}
    assert cfg.unlock().ecdsa_public == cfg.manifest().keys["storage-h2-1"]
    cert, _ = cfg.tls_material()
    assert cert == (t / "h2" / "tls" / "storage-h2-1.pem").read_bytes()
    assert "PRIVATE" not in (t / "storage-h2-1.toml").read_text()


@pytest.mark.slow
def test_two_hospitals_nodes_link_over_mutual_tls(consortium):
    """h1's orderer and h2's peer, each from its own organization's directory, as processes: the peer
    reaches the orderer over TLS (it hears it on an open connection, and `node status` works)."""
    t = consortium
    procs = []
    try:
        for org, node in (("h1", "orderer-h1"), ("h2", "peer-h2-1")):
            procs.append(start_node(_node_config(t, org, node, "--data-dir", t / f"data-{node}")))
        deadline = time.monotonic() + 60
        while True:
            out = run_cli("node", "status", "--config", str(t / "peer-h2-1.toml"), "--json")
            assert out.returncode == 0, out.stderr
            status = json.loads(out.stdout)
            if "orderer-h1" in (status.get("agents_connected") or []):
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
    finally:
        errors = [stop_process(proc, signal.SIGTERM) for proc in procs]
    for code, err in errors:
        assert code == 0 and "Traceback" not in err, err
        assert "handshake from" not in err, err  # no TLS or channel handshake was refused on the way


def test_node_config_errors_are_one_line(consortium):
    t = consortium
    base = ["org", "node-config", "--genesis", str(t / "genesis"), "--manifest", str(t / "manifest.json"),
            "--out", str(t / "x.toml")]
    error_line(run_cli(*base, "--org-dir", str(t / "h1"), "--id", "peer-h2-1"), 2, "h1 has no node 'peer-h2-1'")
    error_line(run_cli(*base, "--org-dir", str(t / "nowhere"), "--id", "peer-h1-1"), 1, "no organization in")
    (t / "bad.block").write_bytes(b"\x93not a block")
    error_line(run_cli("org", "node-config", "--org-dir", str(t / "h1"), "--id", "peer-h1-1", "--genesis",
                       str(t / "bad.block"), "--manifest", str(t / "manifest.json"), "--out", str(t / "x.toml")), 1,
               "is not a sealed genesis")
    error_line(run_cli(*base, "--org-dir", str(t / "h1"), "--id", "peer-h1-1", "--key-file", str(t / "none.key")), 1,
               "none.key: no such file")
    error_line(run_cli(*base, "--org-dir", str(t / "h1"), "--id", "peer-h1-1", "--listen", "10.0.0.1:7"), 2,
               "write tcp://HOST:PORT")


def test_another_hospitals_ca_cannot_vouch_for_an_orderer_or_storage_node(consortium):
    """Attack review (issue 15): `org node-config` wrote [tls.orgs] for its own organization's nodes
    only, so any member's CA vouched for another hospital's orderer or storage node (with that
    node's stolen ledger key, h2 could speak as h1's orderer to h2's and third hospitals' nodes).
    Now every node the manifest places is bound to its organization's CA: the admission h2's peer
    builds from its configuration refuses h2's certificate naming orderer-h1 and hears h1's."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from agents.org import OrgDir, Unlock, _tls
    from agents.tls import admit_nodes, node_cas
    from core.ledger import parse_genesis

    t = consortium
    cfg = load_config(_node_config(t, "h2", "peer-h2-1"), environ={})
    assert cfg.tls.orgs == {"orderer-h1": "h1", "storage-h2-1": "h2"}
    admit = admit_nodes(node_cas(parse_genesis(cfg.genesis_bytes()).config, cfg.tls.orgs, cfg.storage))
    h2 = OrgDir(t / "h2", Unlock(key_file=t / "h2.key"))
    key = _tls.new_key()
    forged = _tls.make_node_cert("h2", "orderer-h1", ["127.0.0.1"], key, h2.tls_ca_pem(),
                                 _tls.key_from_der(h2._load("tls-ca.keys")), datetime.datetime.now(datetime.timezone.utc))
    der = lambda pem: x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)  # noqa: E731
    assert not admit("orderer-h1", der(forged))
    assert admit("orderer-h1", der((t / "h1" / "tls" / "orderer-h1.pem").read_bytes()))
    # a manifest from before node_orgs: the organization's own nodes only, the residual docs/security.md keeps
    manifest = json.loads((t / "manifest.json").read_text())
    assert manifest["node_orgs"] == {"orderer-h1": "h1", "storage-h2-1": "h2"}
    del manifest["node_orgs"]
    (t / "old-manifest.json").write_text(json.dumps(manifest))
    out = t / "old-peer-h2-1.toml"
    _ok("org", "node-config", "--org-dir", t / "h2", "--id", "peer-h2-1", "--genesis", t / "genesis",
        "--manifest", t / "old-manifest.json", "--out", out, "--key-file", t / "h2.key")
    assert load_config(out, environ={}).tls.orgs == {"storage-h2-1": "h2"}
