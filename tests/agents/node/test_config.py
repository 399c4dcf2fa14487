"""agents.node.config and agents.node.export: a node's TOML file, environment overrides, unlocking."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agents.keys import KeyStore
from agents.node import NodeConfigError, export_node, load_config, swarm_node_config
from agents.node.config import ENV_PASSPHRASE
from agents.swarm import SwarmFiles, SwarmSpec


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SwarmFiles:
    data = tmp_path_factory.mktemp("node-config") / "swarm"
    files = SwarmFiles(data)
    files.create(SwarmSpec(data_dir=data, processes=True, batch_size=77, reply_cache=5))
    return files


def _export(files: SwarmFiles, tmp_path: Path, agent: str, **kw) -> Path:
    out = tmp_path / agent / "node.toml"
    out.parent.mkdir()
    export_node(files, agent, out, **kw)
    return out


def test_exported_config_rebuilds_the_swarm_manifest_and_unlocks_with_its_own_key(files, tmp_path):
    out = _export(files, tmp_path, "peer-a1")
    cfg = load_config(out, environ={})
    swarm = files.manifest()
    manifest = cfg.manifest()
    assert (cfg.id, cfg.role, cfg.listen) == ("peer-a1", "peer", swarm.agents["peer-a1"])
    assert manifest.genesis == swarm.genesis and manifest.orderer == swarm.orderer
    assert manifest.peers == swarm.peers and manifest.storage == swarm.storage
    assert manifest.keys == swarm.keys and manifest.agents == swarm.agents
    assert manifest.peer_orgs == swarm.peer_orgs and manifest.threshold == swarm.threshold
    assert cfg.orderer["batch_size"] == 77
    assert cfg.peer_settings["reply_cache"] == 5  # the swarm's [peer] setting, exported
    assert cfg.unlock().ecdsa_public == swarm.keys["peer-a1"]
    assert cfg.enrolls  # tokens are checked against the registrar keys in the genesis: no secret to export
    # a key file of its own: the swarm's key (which opens every agent's keys) is not what unlocks it
    assert cfg.key_file is not None and cfg.key_file.read_bytes() != files.key_file.read_bytes()
    for secret in (cfg.key_file, cfg.keystore):
        assert os.stat(secret).st_mode & 0o077 == 0, secret
    assert cfg.data_dir == (out.parent / "data-peer-a1").resolve()  # relative to the file


def test_swarm_node_config_refers_to_the_swarm_files(files):
    cfg = load_config(swarm_node_config(files, "storage-2"), environ={})
    assert cfg.role == "storage" and cfg.data_dir == files.agent_dir("storage-2")
    # storage nodes are placed in the hospitals round-robin: storage-2 is hospital-b's
    org = files.dir / "orgs" / "hospital-b"
    assert cfg.key_file == files.secrets / "hospital-b.key" and cfg.ready_file == files.dir / "run" / "storage-2.ready"
    assert cfg.keystore == org / "keys" / "storage-2.keys"
    assert cfg.manifest().keys["storage-2"] == files.manifest().keys["storage-2"]
    assert cfg.tls.enabled and cfg.tls.require_client_cert
    assert (cfg.tls.cert, cfg.tls.keystore) == (org / "tls" / "storage-2.pem", org / "keys" / "storage-2.tls.keys")
    assert cfg.tls.orgs == {"orderer": "hospital-a", "storage-1": "hospital-a", "storage-2": "hospital-b",
                            "storage-3": "hospital-a"}
    cert, key = cfg.tls_material()  # unlocked by the same key file as [node] keystore
    assert cert == (org / "tls" / "storage-2.pem").read_bytes() and key.startswith(b"\x30")


def test_exported_config_carries_its_tls_certificate_and_key(files, tmp_path):
    out = _export(files, tmp_path, "peer-b1")
    cfg = load_config(out, environ={})
    from agents.org import cert_agent_ids

    cert, key = cfg.tls_material()
    assert cfg.tls.cert == (out.parent / "peer-b1.pem").resolve() and cert_agent_ids(cert) == ["peer-b1"]
    assert os.stat(cfg.tls.keystore).st_mode & 0o077 == 0
    assert load_config(out, environ={"EMRSHARE_NODE_TLS__REQUIRE_CLIENT_CERT": "false"}).tls.require_client_cert \
        is False


def test_environment_overrides_every_table(files, tmp_path):
    out = _export(files, tmp_path, "orderer")
    env = {"EMRSHARE_NODE_LISTEN": "tcp://127.0.0.1:7999", "EMRSHARE_NODE_METRICS": "127.0.0.1:9464",
           "EMRSHARE_NODE_GRACE": "2.5", "EMRSHARE_NODE_ORDERER__BATCH_SIZE": "9",
           "EMRSHARE_NODE_ROUTES__PEER_A1": "tcp://10.0.0.7:7101", "EMRSHARE_NODE_CONSORTIUM__STORAGE": "s-1, s-2",
           "EMRSHARE_NODE_DATA_DIR": str(tmp_path / "elsewhere")}
    cfg = load_config(out, environ=env)
    assert cfg.listen == "tcp://127.0.0.1:7999" and cfg.metrics == "127.0.0.1:9464" and cfg.grace == 2.5
    assert cfg.orderer["batch_size"] == 9 and cfg.routes["peer-a1"] == "tcp://10.0.0.7:7101"
    assert cfg.storage == ["s-1", "s-2"] and cfg.data_dir == tmp_path / "elsewhere"
    assert sorted(cfg.overridden) == sorted(env)
    with pytest.raises(NodeConfigError, match="EMRSHARE_NODE_ORDERER__BATCH_SIZE must be a number"):
        load_config(out, environ={"EMRSHARE_NODE_ORDERER__BATCH_SIZE": "lots"})


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


MINIMAL = '[node]\nid = "orderer"\nrole = "orderer"\ngenesis = "g"\nkeystore = "k"\ndata_dir = "d"\n'
TLS = '[tls]\ncert = "c.pem"\nkeystore = "c.keys"\n'


def test_tls_table(tmp_path):
    cfg = load_config(_write(tmp_path, MINIMAL + TLS + '[tls.orgs]\nstorage-1 = "hospital-a"\n'), environ={})
    assert cfg.tls.enabled and cfg.tls.cert == tmp_path / "c.pem" and cfg.tls.keystore == tmp_path / "c.keys"
    assert cfg.tls.orgs == {"storage-1": "hospital-a"} and cfg.tls.require_client_cert
    plain = load_config(_write(tmp_path, MINIMAL + "[tls]\nenabled = false\n"), environ={})
    assert not plain.tls.enabled and plain.listen.startswith("tcp://127.0.0.1:")
    env = {"EMRSHARE_NODE_TLS__ENABLED": "false"}  # the environment alone may say it, on loopback
    minimal = load_config(_write(tmp_path, MINIMAL), environ=env)
    assert not minimal.tls.enabled
    assert minimal.peer_settings["reply_cache"] == 4096  # no [peer] table: the default reply cache


@pytest.mark.parametrize("text, needle", [
    ("[node\n", "is not valid TOML"),
    ('[node]\nid = "x"\n', "[node] role is missing; add it, or set EMRSHARE_NODE_ROLE"),
    (MINIMAL.replace('"orderer"\ngenesis', '"miner"\ngenesis'), "use one of peer, orderer, storage"),
    (MINIMAL + 'listen = "127.0.0.1:80"\n', "write tcp://HOST:PORT"),
    (MINIMAL + 'colour = "blue"\n', "unknown key(s) in [node]: colour"),
    (MINIMAL + "[extras]\n", "unknown table(s) extras"),
    (MINIMAL + "grace = -1\n", "grace must be >= 0"),
    (MINIMAL + 'metrics = "9464"\n', "write HOST:PORT"),
    (MINIMAL + 'listen = "tcp://127.0.0.2:99999"\n', "write tcp://HOST:PORT (a port 0..65535)"),  # (were
    (MINIMAL + 'listen = "tls://127.0.0.2:7100"\n', "write tcp://HOST:PORT"),  # tracebacks at the bind)
    (MINIMAL + 'metrics = "127.0.0.1:70000"\n', "a port 0..65535"),
    (MINIMAL + "[keys]\nstorage-1 = \"zz\"\n", "[keys] storage-1 is not hex"),
    (MINIMAL + "[consortium]\nreplicas = 1\nwrite_quorum = 2\n", "write_quorum <= replicas"),
    (MINIMAL + "[orderer]\nbatch_size = true\n", "must be a whole number; fix it"),
    (MINIMAL + "[orderer]\nbatch_size = 2.5\n", "must be a whole number"),
    (MINIMAL + "[peer]\nreply_cache = -1\n", "[peer] reply_cache must be >= 0"),
    (MINIMAL, "no [tls] table; add [tls] with cert and keystore"),
    (MINIMAL + 'listen = "tcp://10.0.0.5:7100"\n[tls]\nenabled = false\n',
     "enabled = false with listen tcp://10.0.0.5:7100, outside loopback"),
    (MINIMAL + '[tls]\ncert = "c.pem"\n', "[tls] keystore is missing"),
    (MINIMAL + TLS + 'ca = "ca.pem"\n', "unknown key(s) in [tls]: ca"),
    (MINIMAL + TLS + "require_client_cert = 3\n", "must be true or false"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path, text, needle):
    with pytest.raises(NodeConfigError) as info:
        load_config(_write(tmp_path, text), environ={})
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(NodeConfigError, match="no such file or directory; check the path"):
        load_config(tmp_path / "absent.toml", environ={})


def test_unlock_takes_exactly_one_secret(files, tmp_path, monkeypatch):
    out = _export(files, tmp_path, "storage-1", passphrase="correct horse")
    monkeypatch.delenv(ENV_PASSPHRASE, raising=False)
    cfg = load_config(out, environ={})
    assert cfg.key_file is None
    with pytest.raises(NodeConfigError, match="nothing unlocks the key store"):
        cfg.unlock()
    monkeypatch.setenv(ENV_PASSPHRASE, "wrong")
    with pytest.raises(NodeConfigError, match="wrong passphrase or key file; check the key file or passphrase"):
        cfg.unlock()
    monkeypatch.setenv(ENV_PASSPHRASE, "correct horse")
    assert cfg.unlock().ecdsa_public == files.manifest().keys["storage-1"]
    (tmp_path / "pass").write_text("correct horse\n")
    both = load_config(out, environ={"EMRSHARE_NODE_PASSPHRASE_FILE": str(tmp_path / "pass")})
    with pytest.raises(NodeConfigError, match="passphrase_file and EMRSHARE_NODE_PASSPHRASE are both given"):
        both.unlock()
    monkeypatch.delenv(ENV_PASSPHRASE)
    assert both.unlock().ecdsa_public == files.manifest().keys["storage-1"]


def test_wrong_key_file_and_bad_genesis(files, tmp_path):
    out = _export(files, tmp_path, "peer-b1")
    KeyStore.create_key_file(tmp_path / "other.key")
    cfg = load_config(out, environ={"EMRSHARE_NODE_KEY_FILE": str(tmp_path / "other.key")})
    with pytest.raises(NodeConfigError, match="wrong passphrase or key file"):
        cfg.unlock()
    (tmp_path / "bad.block").write_bytes(b"\x93not a block")
    cfg = load_config(out, environ={"EMRSHARE_NODE_GENESIS": str(tmp_path / "bad.block")})
    with pytest.raises(NodeConfigError, match="is not a valid genesis block"):
        cfg.manifest()
    cfg = load_config(out, environ={"EMRSHARE_NODE_GENESIS": str(tmp_path / "none.block")})
    with pytest.raises(NodeConfigError, match="no such file or directory; check \\[node\\] genesis"):
        cfg.manifest()


def test_check_role(files, tmp_path):
    out = _export(files, tmp_path, "peer-a2")
    cfg = load_config(out, environ={"EMRSHARE_NODE_ROLE": "storage"})
    with pytest.raises(NodeConfigError, match="'peer-a2' is not a storage of consortium"):
        cfg.check_role(cfg.manifest())


@pytest.mark.parametrize("listen, outside", [
    ("tcp://127.0.0.1:7101", False), ("tcp://127.0.0.2:7101", False), ("tcp://localhost:0", False),
    ("tcp://[::1]:7101", False), ("tcp://0.0.0.0:7101", True), ("tcp://10.0.0.5:7101", True),
    ("tcp://[::]:7101", True), ("tcp://node-a.example:7101", True),
])
def test_which_binds_are_outside_loopback(tmp_path, listen, outside):
    cfg = load_config(_write(tmp_path, MINIMAL + f'listen = "{listen}"\n' + TLS), environ={})
    assert cfg.binds_non_loopback is outside


# ------------------------------------------------------------------ [ordering]: etcd orderer nodes


@pytest.fixture(scope="module")
def etcd_files(tmp_path_factory) -> SwarmFiles:
    data = tmp_path_factory.mktemp("node-config-etcd") / "swarm"
    files = SwarmFiles(data)
    files.create(SwarmSpec(data_dir=data, processes=True, ordering="etcd", etcd_window=321))
    return files


def test_an_etcd_orderer_node_config_names_the_cluster_and_is_an_orderer_of_the_set(etcd_files):
    endpoints = etcd_files.etcd_cluster(etcd_files.spec()).endpoints
    for agent in ("orderer-1", "orderer-2"):
        cfg = load_config(swarm_node_config(etcd_files, agent), environ={})
        assert cfg.role == "orderer"
        assert cfg.ordering == {"kind": "etcd", "endpoints": endpoints, "window": 321, "lease_ttl": 1}
        manifest = cfg.manifest()
        cfg.check_role(manifest)  # orderer-2 too: any node of the genesis's orderer set
        assert manifest.keys[agent] == etcd_files.manifest().keys[agent]
    peer = load_config(swarm_node_config(etcd_files, "peer-a1"), environ={})
    assert peer.ordering["kind"] == "embedded"  # no [ordering] table for the other nodes
    # the manifest a node rebuilds from the genesis names every node of the orderer set with its key
    assert {k: peer.manifest().keys[k] for k in ("orderer-1", "orderer-2")} == \
        {k: etcd_files.manifest().keys[k] for k in ("orderer-1", "orderer-2")}


def test_ordering_environment_overrides(etcd_files):
    path = swarm_node_config(etcd_files, "orderer-2")
    cfg = load_config(path, environ={"EMRSHARE_NODE_ORDERING__ENDPOINTS": "http://10.0.0.5:2379, http://10.0.0.6:2379/",
                                     "EMRSHARE_NODE_ORDERING__WINDOW": "50"})
    assert cfg.ordering["endpoints"] == ["http://10.0.0.5:2379", "http://10.0.0.6:2379"]
    assert cfg.ordering["window"] == 50
    assert sorted(cfg.overridden) == ["EMRSHARE_NODE_ORDERING__ENDPOINTS", "EMRSHARE_NODE_ORDERING__WINDOW"]


def test_the_genesis_decides_which_orderers_order_on_etcd(etcd_files, files, tmp_path):
    # a node of the orderer set without [ordering] kind = "etcd"
    cfg = load_config(swarm_node_config(etcd_files, "orderer-1"), environ={"EMRSHARE_NODE_ORDERING__KIND": "embedded"})
    with pytest.raises(NodeConfigError, match="is a node of the genesis's orderer set, which orders on etcd; add "
                                              r"\[ordering\] kind = \"etcd\""):
        cfg.check_role(cfg.manifest())
    # the embedded orderer of a genesis without a set, told to order on etcd
    out = _export(files, tmp_path, "orderer")
    text = out.read_text() + '\n[ordering]\nkind = "etcd"\nendpoints = ["http://127.0.0.1:2379"]\n'
    out.write_text(text)
    cfg = load_config(out, environ={})
    with pytest.raises(NodeConfigError, match="has no orderer set: 'orderer' is its embedded orderer"):
        cfg.check_role(cfg.manifest())


@pytest.mark.parametrize("text, needle", [
    (MINIMAL + '[ordering]\nkind = "raft"\n', "[ordering] kind is 'raft'; use embedded or etcd"),
    (MINIMAL + '[ordering]\nkind = "etcd"\n', "[ordering] endpoints is missing; list the etcd cluster's client "
                                               "URLs (http://HOST:PORT), or set EMRSHARE_NODE_ORDERING__ENDPOINTS"),
    (MINIMAL + '[ordering]\nkind = "etcd"\nendpoints = ["10.0.0.5:2379"]\n', "is not http://HOST:PORT"),
    (MINIMAL + '[ordering]\nkind = "etcd"\nendpoints = "http://a:1"\nwindow = 0\n', "window and lease_ttl must be"),
    (MINIMAL.replace('role = "orderer"', 'role = "peer"') + '[ordering]\nkind = "etcd"\nendpoints = ["http://a:1"]\n',
     'kind = "etcd" is for orderer nodes, this is a peer'),
    (MINIMAL + "[ordering]\nwindow = 10\nleader = true\n", "unknown key(s) in [ordering]: leader"),
    (MINIMAL + "[tls]\nenabled = true\n", "[tls] cert is missing"),
])
def test_bad_ordering_is_one_line(tmp_path, text, needle):
    with pytest.raises(NodeConfigError) as info:
        load_config(_write(tmp_path, text), environ={})
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_the_reply_cache_default_is_one_number_everywhere(tmp_path):
    """The peers' reply-cache default is written where each layer needs it (the node config, the
    role settings, the swarm's spec, the peer itself, as with the orderer's batch_timeout); a change
    to one that misses another shows here."""
    import inspect

    from agents.node.roles import RoleSettings
    from agents.peer import PeerAgent
    from agents.swarm import SwarmSpec

    peer_default = inspect.signature(PeerAgent.__init__).parameters["reply_cache"].default
    minimal = load_config(_write(tmp_path, MINIMAL), environ={"EMRSHARE_NODE_TLS__ENABLED": "false"})
    assert peer_default > 0
    assert minimal.peer_settings["reply_cache"] == RoleSettings().reply_cache == \
        SwarmSpec(data_dir=tmp_path).reply_cache == peer_default
