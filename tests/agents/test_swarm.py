"""The swarm launcher: resume from a data directory, and one process per agent with faults."""

from __future__ import annotations

import gc
import json
import os
import time

import pytest
import trio

from agents import gcpolicy
from agents.doctor import DoctorAgent
from agents.errors import NotEnoughPeers, PolicyDenied
from agents.testing.fhir import encode_bundle, generate_bundle
from agents.patient import PatientAgent
from agents.testing.consortium import CARDIOLOGY_POLICY as POLICY
from agents.testing.consortium import swarm_user_config
from agents.swarm import Swarm, SwarmFiles, SwarmSpec


PATIENT = ("alice", "hospital-a", {"role": "patient"})
DOCTOR = ("dr-h", "hospital-b", {"role": "doctor", "department": "cardiology"})


async def test_swarm_resumes_from_its_data_directory(tmp_path):
    spec = SwarmSpec(data_dir=tmp_path / "swarm")
    record = encode_bundle(generate_bundle(seed=7, size_kib=20))
    with trio.fail_after(60):
        async with Swarm.open(spec, fresh=True) as swarm:
            genesis = swarm.manifest.genesis
            # every agent shares this interpreter: its start-up state is frozen out of the collections
            assert gcpolicy.keeping() and gc.get_freeze_count() > 0
            async with PatientAgent.open(swarm_user_config(swarm, *PATIENT), node=swarm.node) as p, \
                    DoctorAgent.open(swarm_user_config(swarm, *DOCTOR), node=swarm.node) as d:
                await p.register(swarm.token(*PATIENT, p.enroll_id))
                await d.register(swarm.token(*DOCTOR, d.enroll_id))
                rid = await p.store(record, label="cardiology", media_type="application/fhir+json")
                await p.set_policy(POLICY, standing=())
                assert await d.read("alice", rid) == record
        assert not gcpolicy.keeping() and gc.get_freeze_count() == 0  # the swarm's end undid it
        # a second start from the same directory: same consortium, same state
        async with Swarm.open(SwarmSpec(data_dir=tmp_path / "swarm")) as swarm:
            assert swarm.manifest.genesis == genesis
            async with PatientAgent.open(swarm_user_config(swarm, *PATIENT), node=swarm.node) as p, \
                    DoctorAgent.open(swarm_user_config(swarm, *DOCTOR), node=swarm.node) as d:
                assert [r["record_id"] for r in await p.records()] == [rid]
                assert await d.read("alice", rid) == record
                rid2 = await p.store(b"after restart", label="cardiology", media_type="text/plain")
                assert await d.read("alice", rid2) == b"after restart"
    with pytest.raises(FileExistsError):
        async with Swarm.open(SwarmSpec(data_dir=tmp_path / "swarm"), fresh=True):
            pass


async def test_one_swarm_per_directory(tmp_path):
    """The directory's lock: a second open of a running swarm is refused and names the holder;
    once the first stops, the lock is free and the swarm resumes."""
    from agents.swarm import SwarmRunning

    spec = SwarmSpec(data_dir=tmp_path / "swarm")
    files = SwarmFiles(tmp_path / "swarm")
    assert files.running() is None
    with trio.fail_after(60):
        async with Swarm.open(spec):
            holder = files.running()
            assert holder is not None and holder["pid"] == os.getpid() and holder["processes"] is False
            with pytest.raises(SwarmRunning, match="already running") as info:
                async with Swarm.open(SwarmSpec(data_dir=tmp_path / "swarm")):
                    pass
            assert info.value.holder["pid"] == os.getpid()
        assert files.running() is None
        async with Swarm.open(SwarmSpec(data_dir=tmp_path / "swarm")):
            assert files.running() is not None


def test_spec_validation_and_toml(tmp_path, capsys):
    from agents.cli import main
    from agents.cli.swarm import _settings

    with pytest.raises(ValueError, match="threshold"):
        SwarmSpec(data_dir=tmp_path, peers=4, threshold=5).check()
    with pytest.raises(ValueError, match="replicas"):
        SwarmSpec(data_dir=tmp_path, storage_nodes=2, replicas=3).check()
    cfg = tmp_path / "swarm.toml"
    cfg.write_text("[swarm]\nhospitals = 3\npeers = 6\nthreshold = 3\n")
    import argparse

    args = argparse.Namespace(data=str(tmp_path / "d"), config=str(cfg), hospitals=None, peers=None,
                              threshold=4, storage_nodes=None, replicas=None, write_quorum=None, port=None,
                              batch_size=None, reconcile_interval=None, processes=False)
    settings, source = _settings(args)
    spec = SwarmSpec.from_mapping(settings, tmp_path / "d")
    assert (spec.hospitals, spec.peers, spec.threshold) == (3, 6, 4)  # flags override the file
    assert source["threshold"] == "--threshold 4" and source["peers"].startswith("peers = 6 in ")
    cfg.write_text("[swarm]\npeerz = 3\n")
    assert main(["swarm", "up", "--data", str(tmp_path / "e"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err == "emrshare: swarm up: unknown swarm settings: peerz; see `emrshare swarm up --help`\n"
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("flags, needle", [
    (["--port", "-5"], "port must be 0..65535"),
    (["--port", "99999"], "port must be 0..65535"),
    (["--batch-size", "0"], "batch size must be 1..10000"),
    (["--reconcile-interval", "0"], "reconcile interval"),
])
def test_bad_swarm_settings_are_refused_before_the_directory_is_made(tmp_path, capsys, flags, needle):
    # (the port and the batch size were saved first and failed later, with a traceback, in every start)
    from agents.cli import main

    assert main(["swarm", "up", "--data", str(tmp_path / "s"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("emrshare: swarm up: ") and needle in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("text, needle", [
    ('peers = "4"', "peers must be a whole number, not '4'"),
    ("processes = 1", "processes must be true or false, not 1"),
    ("threshold = 2.0", "threshold must be a whole number, not 2.0"),
])
def test_a_config_value_of_the_wrong_type_is_named(tmp_path, capsys, text, needle):
    from agents.cli import main

    cfg = tmp_path / "swarm.toml"
    cfg.write_text(f"[swarm]\n{text}\n")
    assert main(["swarm", "up", "--data", str(tmp_path / "s"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("emrshare: swarm up: ") and needle in err and err.count("\n") == 1
    assert SwarmSpec.from_mapping({"reconcile_interval": 30}, tmp_path).check() is None  # a TOML 30 for 30.0


def test_a_resumed_in_process_swarm_takes_this_starts_port_and_refuses_a_broken_saved_spec(tmp_path, capsys,
                                                                                           monkeypatch):
    from agents.cli import main
    from agents.cli import swarm as swarm_cli

    files = SwarmFiles(tmp_path / "s")
    files.create(SwarmSpec(data_dir=files.dir, port=1))  # made once with a port now taken
    started = []
    monkeypatch.setattr(swarm_cli, "_run_swarm", lambda spec, port=None: started.append((spec.port, port)) or 0)
    monkeypatch.setattr(swarm_cli, "_log_to_file", lambda path: None)  # (no handler left on the root logger)
    assert main(["swarm", "up", "--data", str(files.dir), "--port", "40123"]) == 0
    assert main(["swarm", "up", "--data", str(files.dir)]) == 0
    assert started == [(40123, 40123), (1, None)]  # this start's --port (to Swarm.open); else the saved one
    assert main(["swarm", "up", "--data", str(files.dir), "--port", "-1"]) == 2
    assert "port must be 0..65535" in capsys.readouterr().err
    saved = json.loads((files.dir / "swarm.json").read_text())
    (files.dir / "swarm.json").write_text(json.dumps({**saved, "port": 99999}))
    assert main(["swarm", "up", "--data", str(files.dir), "--port", "7000"]) == 0  # a bad saved port, rescued
    assert started[-1] == (7000, 7000)
    (files.dir / "swarm.json").write_text(json.dumps({**saved, "batch_size": 0}))
    assert main(["swarm", "up", "--data", str(files.dir)]) == 2
    err = capsys.readouterr().err
    assert "swarm.json holds invalid settings: batch size must be 1..10000" in err and err.count("\n") == 1
    (files.dir / "swarm.json").write_text(json.dumps({**saved, "colour": "blue"}))
    assert main(["swarm", "up", "--data", str(files.dir)]) == 2
    err = capsys.readouterr().err
    assert "swarm.json is unreadable: unknown swarm settings: colour" in err and err.count("\n") == 1
    assert len(started) == 3


async def test_swarm_open_listens_on_this_starts_port_when_resumed(tmp_path):
    # (the CLI's --port reached Swarm.open, which re-read the saved spec and listened on its port)
    from agents.ports import free_port

    files = SwarmFiles(tmp_path / "s")
    files.create(SwarmSpec(data_dir=files.dir, port=1))  # a port this test cannot bind
    port = free_port()
    with trio.fail_after(60):
        async with Swarm.open(SwarmSpec(data_dir=files.dir), port=port) as swarm:
            assert set(swarm.manifest.agents.values()) == {f"tcp://127.0.0.1:{port}"}
            assert swarm.spec.port == port
    assert SwarmFiles(files.dir).spec().port == 1  # this start's only


async def _every_node_speaks_tls_only(swarm: Swarm) -> None:
    """Each node process runs with its organization's TLS certificate ([tls] in its config) and
    refuses a channel opened over plain TCP; the swarm's own clients (below) speak mutual TLS."""
    from agents.node.config import load_config
    from bus.testing import connect_channel

    orgs = swarm.files.node_orgs()
    for agent in swarm.processes:
        config = load_config(swarm.files.dir / "nodes" / f"{agent}.toml")
        assert config.tls.enabled and config.tls.require_client_cert
        assert config.tls.cert == swarm.files.dir / "orgs" / orgs[agent] / "tls" / f"{agent}.pem"
        with pytest.raises(Exception):
            conn = await connect_channel(swarm.manifest.agents[agent])
            await conn.aclose()
    # orderer and storage nodes are placed in the hospitals round-robin
    assert orgs["orderer"] == "hospital-a" and orgs["storage-2"] == "hospital-b"


@pytest.mark.slow
async def test_processes_mode_tolerates_faults(tmp_path):
    """Each agent in its own process on loopback TCP; SIGKILL a peer and a storage node, stall a
    peer: reads keep working while t peers answer, fail clearly below t, and nothing is lost."""
    spec = SwarmSpec(data_dir=tmp_path / "swarm", processes=True)
    records = {}
    with trio.fail_after(240):
        async with Swarm.open(spec, fresh=True) as swarm:
            assert len(swarm.processes) == 8  # orderer, 4 peers, 3 storage nodes
            await _every_node_speaks_tls_only(swarm)
            async with PatientAgent.open(swarm_user_config(swarm, *PATIENT), node=swarm.node) as p, \
                    DoctorAgent.open(swarm_user_config(swarm, *DOCTOR), node=swarm.node) as d, \
                    DoctorAgent.open(swarm_user_config(swarm, "dr-x", "hospital-a", {"role": "doctor", "department": "x"}),
                                     node=swarm.node) as other:
                await p.register(swarm.token(*PATIENT, p.enroll_id))
                await d.register(swarm.token(*DOCTOR, d.enroll_id))
                await other.register(swarm.token("dr-x", "hospital-a", {"role": "doctor", "department": "x"},
                                                  other.enroll_id))
                await p.set_policy(POLICY, standing=())
                for i in range(4):
                    data = encode_bundle(generate_bundle(seed=i, size_kib=8 + i))
                    records[await p.store(data, label="cardiology", media_type="application/fhir+json")] = data
                first = next(iter(records))
                assert await d.read("alice", first) == records[first]
                with pytest.raises(PolicyDenied):
                    await other.read("alice", first)

                # SIGKILL one peer and one storage node: still t = 2 of 4 peers, 2 of 3 replicas
                swarm.kill("peer-b2")
                swarm.kill("storage-1")
                for rid, data in records.items():
                    assert await d.read("alice", rid) == data
                # a stalled peer (SIGSTOP: connections stay open, nothing answers)
                swarm.stall("peer-a2")
                t0 = time.monotonic()
                assert await d.read("alice", first) == records[first]
                # below the threshold: a clear error, not a hang
                swarm.kill("peer-b1")
                with pytest.raises(NotEnoughPeers):
                    await d.read("alice", first)
                assert time.monotonic() - t0 < 60
                swarm.resume("peer-a2")
                # bring the dead back: they catch up and the swarm is whole again
                for agent in ("peer-b1", "peer-b2", "storage-1"):
                    await swarm.start_process(agent)
                for rid, data in records.items():
                    assert await d.read("alice", rid) == data
                rid = await p.store(b"after the faults", label="cardiology", media_type="text/plain")
                assert await d.read("alice", rid) == b"after the faults"
        # every peer's stored chain verifies and the peers agree on the head
        from agents.cli import ledger as ledger_cli

        files = SwarmFiles(tmp_path / "swarm")
        for peer in files.manifest().peers:
            assert ledger_cli.verify_main(["--data", str(files.agent_dir(peer))]) == 0


@pytest.mark.slow
async def test_processes_mode_oversize_batches_do_not_halt_the_ledger(tmp_path):
    """Across processes on loopback TCP (the frame limits of a multi-host deployment): about
    20 MB of 60 KiB transactions reach the peers at once. The orderer cuts them into blocks
    bounded in bytes, every peer commits them, and the ledger keeps advancing (stores and
    reads still commit afterwards). Before blocks were bounded in bytes, this made one
    19.6 MB block that no peer could ever fetch."""
    from core.ledger import MAX_BLOCK_BYTES
    from core.tx import Transaction

    spec = SwarmSpec(data_dir=tmp_path / "swarm", processes=True)
    with trio.fail_after(240):
        async with Swarm.open(spec, fresh=True) as swarm:
            async with PatientAgent.open(swarm_user_config(swarm, *PATIENT), node=swarm.node) as p, \
                    DoctorAgent.open(swarm_user_config(swarm, *DOCTOR), node=swarm.node) as d:
                await p.register(swarm.token(*PATIENT, p.enroll_id))
                await d.register(swarm.token(*DOCTOR, d.enroll_id))
                await p.set_policy(POLICY, standing=())
                start = (await p.endpoint.request("peer-a1", "peer.query", {"what": "head"}))["height"]
                peers = list(swarm.manifest.peers)
                junk = [Transaction.create("store", "alice", {"junk": "x" * 60_000, "i": i}, p.keys.ecdsa_private,
                                           int(time.time() * 1000)).to_bytes() for i in range(330)]
                async with trio.open_nursery() as nursery:
                    for n, i in enumerate(range(0, len(junk), 110)):
                        nursery.start_soon(p.endpoint.request, peers[n % len(peers)], "peer.submit",
                                           {"txs": junk[i:i + 110], "wait": False})
                rid = await p.store(b"after the flood", label="cardiology", media_type="text/plain")
                assert await d.read("alice", rid) == b"after the flood"
                for peer in peers:  # 20 MB is at least 5 blocks of MAX_BLOCK_BYTES
                    while (await p.endpoint.request(peer, "peer.query", {"what": "head"}))["height"] < start + 6:
                        await trio.sleep(0.1)
        # every junk transaction was ordered (as invalid) by every peer, in blocks within the bound
        import sqlite3

        from agents.cli import ledger as ledger_cli
        from core.ledger import Block

        files = SwarmFiles(tmp_path / "swarm")
        for peer in files.manifest().peers:
            db = sqlite3.connect(files.agent_dir(peer) / "ledger.sqlite")
            rows = db.execute("SELECT data FROM blocks WHERE height > ?", (start,)).fetchall()
            db.close()
            assert all(len(data) <= MAX_BLOCK_BYTES for (data,) in rows)
            ordered = {tx for (data,) in rows for tx in Block.from_bytes(data).txs}
            assert ordered.issuperset(junk)
            assert ledger_cli.verify_main(["--data", str(files.agent_dir(peer))]) == 0


@pytest.mark.slow
def test_the_user_cli_against_a_processes_swarm_speaks_mutual_tls(tmp_path):
    """`patient`/`doctor` commands against `swarm up --processes`: each user connects with a client
    certificate the swarm minted from its hospital's TLS CA (kept encrypted in the swarm's secrets);
    `patient serve` listens with it, and the doctor's read goes through (grant from the serving patient)."""
    import signal
    import subprocess
    import sys

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from agents.keys import KeyStore
    from agents.tls import certificate_agents
    from agents.testing.cli import cli_env, run_cli, start_swarm, stop_process
    from agents.testing.consortium import CARDIOLOGY_POLICY

    data = tmp_path / "swarm"
    swarm = start_swarm(data, "--processes")
    serve = None
    try:
        def user(role: str, subject: str, *args: str) -> subprocess.CompletedProcess:
            out = run_cli(role, "--swarm", str(data), "--subject", subject, *args)
            assert out.returncode == 0, out.stderr
            return out

        user("patient", "alice", "--org", "hospital-a", "register")
        user("doctor", "dr-h", "--org", "hospital-b", "register", "--attr", "department=cardiology")
        record, policy = tmp_path / "bundle.json", tmp_path / "policy.txt"
        record.write_text('{"resourceType": "Bundle", "type": "collection", "entry": []}')
        policy.write_text(CARDIOLOGY_POLICY)
        user("patient", "alice", "store", str(record), "--label", "cardiology", "--record-id", "rec-1")
        user("patient", "alice", "policy", str(policy))
        serve = subprocess.Popen([sys.executable, "-m", "agents.cli", "patient", "serve", "--swarm", str(data),
                                  "--subject", "alice"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=cli_env(), stdin=subprocess.DEVNULL)
        assert serve.stdout.readline().startswith("alice answering access requests at tcp://")
        user("doctor", "dr-h", "read", "alice", "rec-1", "--out", str(tmp_path / "read.json"))
        assert (tmp_path / "read.json").read_bytes() == record.read_bytes()
    finally:
        if serve is not None:
            stop_process(serve, signal.SIGTERM)
        stop_process(swarm)
    files = SwarmFiles(data)
    for subject, org in (("alice", "hospital-a"), ("dr-h", "hospital-b")):
        store = KeyStore(files.secrets / "tls-users" / f"{subject}.keys", key_file=files.key_file)
        assert b"PRIVATE" not in store.path.read_bytes()  # encrypted under the swarm's key file
        cert = x509.load_pem_x509_certificate(json.loads(store.load())["cert"].encode())
        assert cert.issuer == x509.load_pem_x509_certificate(files.org_dir(org).tls_ca_pem()).subject
        assert certificate_agents(cert.public_bytes(Encoding.DER)) == {subject}


def test_status_names_every_nodes_hospital(tmp_path):
    # (the orderer and the storage nodes showed a blank hospital: only peers were looked up)
    from agents.cli.swarm import status

    files = SwarmFiles(tmp_path / "s")
    files.create(SwarmSpec(data_dir=files.dir))
    orgs = {a["id"]: a["org"] for a in status(files)["agents"]}
    assert orgs == {"orderer": "hospital-a", "peer-a1": "hospital-a", "peer-a2": "hospital-a",
                    "peer-b1": "hospital-b", "peer-b2": "hospital-b", "storage-1": "hospital-a",
                    "storage-2": "hospital-b", "storage-3": "hospital-a"}
    (files.dir / "orgs" / "hospital-a" / "profile.json").write_text("{")  # damaged: the peers' still show
    assert {a["id"]: a["org"] for a in status(files)["agents"]}["peer-b1"] == "hospital-b"
