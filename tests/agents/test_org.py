"""agents.org and its commands: each hospital's own keys, an org-signed genesis, registrar tokens.

The CLI flows run as subprocesses (``python -m agents.cli``); the consortium they
build runs in this process from the organizations' own directories, on real
loopback TCP, and users enroll into it from their own key directories.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

import bus
from agents.keys import KeyStore
from agents.org import (OrgDir, cert_agent_ids, OrgError, OrgProfile, TokenFile, Unlock, build_config, default_node_ids, draft,
                        init_org, manifest_for, seal, sign_draft)
from agents.ports import free_port
from core import ecdsa
from core.errors import DecodeError
from core.ledger import parse_genesis

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
ENV.pop("EMRSHARE_PASSPHRASE", None)


def cli(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "agents.cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emrshare: "), proc.stderr
    return lines[0]


def make_org(tmp: Path, org: str, **kw) -> tuple[OrgDir, OrgProfile]:
    key = tmp / f"{org}.key"
    KeyStore.create_key_file(key)
    unlock = Unlock(key_file=key)
    nodes = default_node_ids(org, kw.pop("peers", 1), kw.pop("storage", 0), kw.pop("orderer", False))
    profile = init_org(tmp / org, org, unlock, nodes=nodes,
                       addresses={n: f"tcp://127.0.0.1:{7000 + i}" for i, (n, _) in enumerate(nodes)}, **kw)
    return OrgDir(tmp / org, unlock), profile


# ------------------------------------------------------------------ material


def test_org_material_is_encrypted_and_the_profile_is_public(tmp_path):
    org, profile = make_org(tmp_path, "h1", peers=2, storage=1, orderer=True)
    secrets_ = [org.admin_key(), org.registrar_key(), *(org.node_keys(n.id).ecdsa_private for n in profile.nodes),
                *(org.node_keys(n.id).box_private for n in profile.nodes)]
    assert ecdsa.public_key(org.admin_key()) == profile.admin_key != profile.registrar_key
    assert ecdsa.public_key(org.registrar_key()) == profile.registrar_key
    for path in org.dir.rglob("*"):  # no private key is anywhere in the clear
        if path.is_file():
            data = path.read_bytes()
            assert not any(s in data for s in secrets_), path
            if path.suffix == ".keys":
                assert path.stat().st_mode & 0o077 == 0
    assert OrgProfile.from_json(org.profile_path.read_text()) == profile
    assert [(n.id, n.role) for n in profile.nodes] == [("peer-h1-1", "peer"), ("peer-h1-2", "peer"),
                                                      ("storage-h1-1", "storage"), ("orderer-h1", "orderer")]
    with pytest.raises(OrgError, match="wrong passphrase or key file"):
        other = tmp_path / "other.key"
        KeyStore.create_key_file(other)
        OrgDir(org.dir, Unlock(key_file=other)).registrar_key()
    with pytest.raises(OrgError, match="already holds an organization"):
        init_org(org.dir, "h1", org.unlock, nodes=[], addresses={})


def test_a_key_or_passphrase_file_inside_the_directory_is_refused(tmp_path):
    inside = tmp_path / "h1" / "sub" / "k.key"
    inside.parent.mkdir(parents=True)
    KeyStore.create_key_file(inside)
    with pytest.raises(OrgError, match="beside the keys"):
        init_org(tmp_path / "h1", "h1", Unlock(key_file=inside), nodes=[("peer-h1-1", "peer")],
                 addresses={"peer-h1-1": "tcp://127.0.0.1:1"})
    assert not (tmp_path / "h1" / "keys").exists()
    with pytest.raises(OrgError, match="beside the keys"):
        init_org(tmp_path / "h1", "h1", Unlock(passphrase="p"), nodes=[], addresses={},
                 passphrase_file=tmp_path / "h1" / "pw")
    # and from the command line, before anything is written
    proc = cli("org", "init", "--org", "h2", "--dir", tmp_path / "h2", "--key-file", tmp_path / "h2" / "k.key",
               check=False)
    assert "beside the keys it protects" in one_line_error(proc)
    assert not (tmp_path / "h2").exists()


def test_org_init_says_it_created_a_key_file_and_how_to_make_a_missing_passphrase_file(tmp_path):
    """A newcomer following docs/deploy.md step 1: the passphrase file is theirs to write (one line
    saying how, nothing created); a missing key file is created, and the command says so."""
    missing = tmp_path / "secrets" / "h1.passphrase"
    proc = cli("org", "init", "--org", "h1", "--dir", tmp_path / "h1", "--passphrase-file", missing, check=False)
    line = one_line_error(proc)
    assert "no such file" in line and "write a passphrase on its first line" in line and "--key-file" in line
    assert not (tmp_path / "h1").exists() and not missing.exists()
    key = tmp_path / "secrets" / "h2.key"
    key.parent.mkdir()
    proc = cli("org", "init", "--org", "h2", "--dir", tmp_path / "h2", "--key-file", key)
    assert f"created key file {key}" in proc.stderr and len(key.read_bytes()) == 32
    proc = cli("org", "init", "--org", "h3", "--dir", tmp_path / "h3", "--key-file", key)
    assert "created key file" not in proc.stderr  # an existing key file is used as it is
    (tmp_path / "draft").write_bytes(b"x")
    proc = cli("consortium", "sign", "--org-dir", tmp_path / "h2", tmp_path / "draft", check=False)
    assert "no passphrase or key file to unlock the keys" in one_line_error(proc)  # nothing is created here


def test_the_genesis_summary_names_the_etcd_orderer_set(tmp_path):
    for org in ("h1", "h2"):
        make_org(tmp_path, org, peers=1, orderer=True)
    profiles = [a for org in ("h1", "h2") for a in ("--profile", tmp_path / org / "profile.json")]
    etcd = cli("consortium", "genesis", *profiles, "--threshold", "1", "--ordering", "etcd", "--out", tmp_path / "d1")
    assert "orderer nodes orderer-h1, orderer-h2 (etcd ordering)" in etcd.stdout
    # each member's admin key, to compare with what the member's `org profile` shows
    h2_key = OrgProfile.from_json((tmp_path / "h2" / "profile.json").read_text()).admin_key.hex()
    assert f"h2               NOT signed   admin key {h2_key[:16]}..." in etcd.stdout
    embedded = cli("consortium", "genesis", *profiles, "--threshold", "1", "--out", tmp_path / "d2")
    assert "orderer orderer-h1\n" in embedded.stdout and "etcd" not in embedded.stdout


def _handshake(client: ssl.SSLObject, server: ssl.SSLObject, c_in: ssl.MemoryBIO, c_out: ssl.MemoryBIO,
               s_in: ssl.MemoryBIO, s_out: ssl.MemoryBIO) -> None:
    done = {"c": False, "s": False}
    for _ in range(20):
        for name, obj in (("c", client), ("s", server)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def test_tls_material_is_an_org_ca_and_node_certificates_for_mutual_tls_1_3(tmp_path):
    org, profile = make_org(tmp_path, "h1", peers=2)
    ca = x509.load_pem_x509_certificate(profile.tls_ca.encode())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for node in profile.nodes:
        cert = x509.load_pem_x509_certificate(org.tls_cert_pem(node.id))
        assert cert.public_bytes(ssl_encoding()) == node.tls_cert.encode()
        ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert node.id in san.get_values_for_type(x509.DNSName)
        assert f"emrshare:agent:{node.id}" in san.get_values_for_type(x509.UniformResourceIdentifier)
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        assert cert_agent_ids(org.tls_cert_pem(node.id)) == [node.id]
    # mutual TLS 1.3 between two of the org's nodes, each trusting only the org's CA
    pems = {}
    for node in ("peer-h1-1", "peer-h1-2"):
        (tmp_path / f"{node}.pem").write_bytes(org.tls_cert_pem(node))
        (tmp_path / f"{node}.key").write_bytes(org.tls_key_pem(node))
        pems[node] = (tmp_path / f"{node}.pem", tmp_path / f"{node}.key")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for ctx, node in ((server_ctx, "peer-h1-1"), (client_ctx, "peer-h1-2")):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(*pems[node])
        ctx.load_verify_locations(cadata=profile.tls_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    bios = [ssl.MemoryBIO() for _ in range(4)]
    client = client_ctx.wrap_bio(bios[0], bios[1], server_hostname="peer-h1-1")
    server = server_ctx.wrap_bio(bios[2], bios[3], server_side=True)
    _handshake(client, server, *bios)
    assert client.version() == "TLSv1.3"
    peer_cert = x509.load_der_x509_certificate(server.getpeercert(binary_form=True))
    assert peer_cert.subject.rfc4514_string().startswith("CN=peer-h1-2")
    # a client expecting another name refuses the server
    with pytest.raises(ssl.SSLCertVerificationError):
        b = [ssl.MemoryBIO() for _ in range(4)]
        other = client_ctx.wrap_bio(b[0], b[1], server_hostname="peer-h1-9")
        _handshake(other, server_ctx.wrap_bio(b[2], b[3], server_side=True), *b)


def ssl_encoding():
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.PEM


# ------------------------------------------------------------------ genesis


def test_genesis_from_profiles_needs_every_org_signature(tmp_path):
    h1, p1 = make_org(tmp_path, "h1", peers=2, orderer=True)
    h2, p2 = make_org(tmp_path, "h2", peers=1, storage=1)
    config = build_config([p1, p2], name="c", threshold=2, created_at=1_000)
    assert [(p.id, p.index) for p in config.peers] == [("peer-h1-1", 1), ("peer-h1-2", 2), ("peer-h2-1", 3)]
    assert config.orderer_id == "orderer-h1" and config.org("h2").registrar_key == p2.registrar_key
    raw = draft(config)
    with pytest.raises(DecodeError):
        parse_genesis(raw)
    once = sign_draft(raw, h1)
    with pytest.raises(OrgError, match="not signed by h2"):
        seal(once)
    with pytest.raises(DecodeError, match="lacks the signature of member organization"):
        parse_genesis(once)  # what a node does at start
    genesis = seal(sign_draft(once, h2))
    assert genesis.config == config
    assert seal(sign_draft(sign_draft(raw, h2), h1)).block == genesis.block  # order does not matter
    manifest = manifest_for(genesis.to_bytes(), [p1, p2])
    assert manifest.storage == ["storage-h2-1"] and manifest.agents["peer-h2-1"] == p2.nodes[0].address
    # an org outside the consortium cannot sign it
    h3, _ = make_org(tmp_path, "h3")
    with pytest.raises(OrgError, match="not a member"):
        sign_draft(raw, h3)
    with pytest.raises(OrgError, match="no profile has an orderer node"):
        build_config([p2], name="c", threshold=1, created_at=0)


# ------------------------------------------------------------------ the CLI, end to end


async def test_join_a_consortium_and_enroll_users_from_their_own_machines(tmp_path):
    """org init x2, genesis, sign x2, seal; the nodes run from the orgs' own directories;
    users init and enroll from their own directories with registrar tokens."""
    t = tmp_path
    port = free_port()
    run = trio.to_thread.run_sync

    def cli_(*args, check=True):
        return run(lambda: cli(*args, check=check))

    (t / "h1.pass").write_text("correct horse battery staple\n")
    await cli_("org", "init", "--org", "h1", "--dir", t / "h1", "--peers", "2", "--orderer",
               "--passphrase-file", t / "h1.pass", "--port", port)
    await cli_("org", "init", "--org", "h2", "--dir", t / "h2", "--peers", "1", "--key-file", t / "h2.key",
               "--port", port)
    out = await cli_("org", "profile", "--dir", t / "h2", "--out", t / "h2-profile.json")
    assert "written" in out.stderr and json.loads((t / "h2-profile.json").read_text())["org"] == "h2"
    assert "PRIVATE" not in (t / "h2-profile.json").read_text()
    out = await cli_("consortium", "genesis", "--profile", t / "h1", "--profile", t / "h2-profile.json",
                     "--threshold", "2", "--name", "joined", "--out", t / "g.draft", "--json")
    orgs = json.loads(out.stdout)["orgs"]
    assert [{k: o[k] for k in ("id", "name", "signed")} for o in orgs] == [
        {"id": "h1", "name": "h1", "signed": False}, {"id": "h2", "name": "h2", "signed": False}]
    assert orgs[1]["admin_key"] == json.loads((t / "h2-profile.json").read_text())["admin_key"]
    await cli_("consortium", "sign", "--org-dir", t / "h1", "--passphrase-file", t / "h1.pass", t / "g.draft")
    missing = await cli_("consortium", "seal", t / "g.draft", "--out", t / "genesis", check=False)
    assert "not signed by h2" in one_line_error(missing) and not (t / "genesis").exists()
    (t / "wrong.pass").write_text("not the passphrase")
    wrong = await cli_("consortium", "sign", "--org-dir", t / "h1", "--passphrase-file", t / "wrong.pass",
                       t / "g.draft", check=False)
    assert "wrong passphrase or key file" in one_line_error(wrong)
    await cli_("consortium", "sign", "--org-dir", t / "h2", "--key-file", t / "h2.key", t / "g.draft")
    out = await cli_("consortium", "seal", t / "g.draft", "--out", t / "genesis", "--json")
    genesis = (t / "genesis").read_bytes()
    assert json.loads(out.stdout)["genesis_hash"] == parse_genesis(genesis).hash.hex()

    # the nodes, each from its own organization's directory (one bus node here, real TCP)
    from agents.orderer import OrdererAgent
    from agents.peer import PeerAgent

    h1 = OrgDir(t / "h1", Unlock(passphrase="correct horse battery staple"))
    h2 = OrgDir(t / "h2", Unlock(key_file=t / "h2.key"))
    manifest = manifest_for(genesis, [h1.profile(), h2.profile()])
    with pytest.raises(DecodeError, match="lacks the signature"):  # a node refuses an unsigned genesis
        PeerAgent(peer_id="peer-h2-1", keys=h2.node_keys("peer-h2-1"), genesis=draft(parse_genesis(genesis).config),
                  data_dir=t / "x", manifest=manifest)
    async with bus.open_node() as node:
        address = await node.listen(f"tcp://127.0.0.1:{port}")
        async with trio.open_nursery() as nursery:
            orderer = OrdererAgent(orderer_id="orderer-h1", signing_key=h1.node_keys("orderer-h1").ecdsa_private,
                                   genesis=genesis, data_dir=t / "run" / "orderer", directory=manifest.directory(),
                                   storage=[])
            await nursery.start(orderer.run, node)
            for org, pid in ((h1, "peer-h1-1"), (h1, "peer-h1-2"), (h2, "peer-h2-1")):
                peer = PeerAgent(peer_id=pid, keys=org.node_keys(pid), genesis=genesis, data_dir=t / "run" / pid,
                                 manifest=manifest)
                await nursery.start(peer.run, node)

            # users, each on their own machine with their own key directory
            for user in ("alice", "mallory", "late"):
                await cli_("user", "init", "--dir", t / user, "--key-file", t / f"{user}.key")
            alice_key = (t / "alice" / "enroll.pub").read_text().strip()
            await cli_("registrar", "issue", "--org-dir", t / "h1", "--passphrase-file", t / "h1.pass",
                       "--subject", "alice", "--role", "patient", "--attr", "ward=3", "--enroll-key", alice_key,
                       "--expires", "1h", "--out", t / "alice.token")
            assert TokenFile.from_json((t / "alice.token").read_text()).attributes == {"role": "patient", "ward": 3}
            peer_arg = f"peer-h1-2={address}"

            # the token used with another key: the CLI says so, and a peer refuses it when the
            # holder of another key edits the file to pass the CLI's check
            theft = await cli_("user", "enroll", "--dir", t / "mallory", "--key-file", t / "mallory.key",
                               "--token", t / "alice.token", "--genesis", t / "genesis", "--peer", peer_arg,
                               check=False)
            assert "bound to another key" in one_line_error(theft)
            doc = json.loads((t / "alice.token").read_text())
            doc["enroll_key"] = (t / "mallory" / "enroll.pub").read_text().strip()
            (t / "stolen.token").write_text(json.dumps(doc))
            theft = await cli_("user", "enroll", "--dir", t / "mallory", "--key-file", t / "mallory.key",
                               "--token", t / "stolen.token", "--genesis", t / "genesis", "--peer", peer_arg,
                               check=False)
            assert "does not authorize this enrollment" in one_line_error(theft)

            # a token signed by another org's registrar (h2 issuing for h1) is refused
            await cli_("registrar", "issue", "--org-dir", t / "h2", "--key-file", t / "h2.key",
                       "--subject", "late", "--role", "doctor",
                       "--enroll-key-file", t / "late" / "enroll.pub", "--out", t / "late-h2.token")
            forged = json.loads((t / "late-h2.token").read_text())
            forged["org"] = "h1"
            (t / "late-forged.token").write_text(json.dumps(forged))
            refused = await cli_("user", "enroll", "--dir", t / "late", "--key-file", t / "late.key",
                                 "--token", t / "late-forged.token", "--genesis", t / "genesis",
                                 "--peer", peer_arg, check=False)
            assert "does not authorize" in one_line_error(refused)

            # an expired token is refused
            await cli_("registrar", "issue", "--org-dir", t / "h1", "--passphrase-file", t / "h1.pass",
                       "--subject", "late", "--role", "doctor", "--enroll-key-file", t / "late" / "enroll.pub",
                       "--expires", "1s", "--out", t / "late.token")
            await trio.sleep(1.5)
            expired = await cli_("user", "enroll", "--dir", t / "late", "--key-file", t / "late.key",
                                 "--token", t / "late.token", "--genesis", t / "genesis", "--peer", peer_arg,
                                 check=False)
            assert "expired" in one_line_error(expired)

            # alice enrolls with her own token and key
            out = await cli_("user", "enroll", "--dir", t / "alice", "--key-file", t / "alice.key",
                             "--token", t / "alice.token", "--genesis", t / "genesis", "--peer", peer_arg, "--json")
            cert = json.loads(out.stdout)
            assert (cert["subject"], cert["org"], cert["issuer"]) == ("alice", "h1", "peer-h1-2")
            assert cert["attributes"] == {"role": "patient", "ward": 3}
            assert (t / "alice" / "manifest.json").exists() and (t / "alice" / "genesis").read_bytes() == genesis

            # with the consortium's full manifest instead, the peer's address comes from it
            out = await cli_("consortium", "manifest", "--genesis", t / "genesis", "--profile", t / "h1",
                             "--profile", t / "h2-profile.json", "--out", t / "manifest.json")
            assert "3 peers, no storage nodes (no record can be stored)" in out.stdout, out.stdout
            assert json.loads((t / "manifest.json").read_text()) == json.loads(manifest.to_json())
            await cli_("user", "init", "--dir", t / "bob", "--key-file", t / "bob.key")
            await cli_("registrar", "issue", "--org-dir", t / "h2", "--key-file", t / "h2.key", "--subject", "dr-bob",
                       "--role", "doctor", "--attr", "department=cardiology",
                       "--enroll-key-file", t / "bob" / "enroll.pub", "--out", t / "bob.token")
            out = await cli_("user", "enroll", "--dir", t / "bob", "--key-file", t / "bob.key",
                             "--token", t / "bob.token", "--manifest", t / "manifest.json", "--json")
            assert (json.loads(out.stdout)["issuer"], json.loads(out.stdout)["org"]) == ("peer-h2-1", "h2")

            nursery.cancel_scope.cancel()


def test_the_embedded_swarm_makes_one_org_directory_per_hospital(tmp_path):
    from agents.swarm import SwarmFiles, SwarmSpec

    files = SwarmFiles(tmp_path / "s")
    manifest = files.create(SwarmSpec(data_dir=tmp_path / "s"))
    config = parse_genesis(manifest.genesis).config  # signed by both hospitals' admin keys
    assert [o.id for o in config.orgs] == ["hospital-a", "hospital-b"] == files.orgs()
    for org in config.orgs:
        directory = files.org_dir(org.id)
        profile = directory.profile()
        assert (profile.admin_key, profile.registrar_key, profile.tls_ca) == (org.admin_key, org.registrar_key,
                                                                              org.tls_ca)
        assert ecdsa.public_key(directory.registrar_key()) == org.registrar_key
        # the key file that unlocks it is the swarm's, outside the organization directory
        assert directory.unlock.key_file.parent == files.secrets and directory.dir not in directory.unlock.key_file.parents
        for peer in manifest.peer_orgs[org.id]:
            assert files.agent_keys(peer).ecdsa_public == manifest.keys[peer] == config.peer(peer).ecdsa_key
    assert not (files.secrets / "enroll.json").exists()  # no shared enrollment secret any more


def test_members_add_then_remove_an_org_with_change_files(tmp_path):
    """consortium change / sign-change (subprocesses), then the config transactions on a ledger."""
    from agents.org import ConfigChange, config_transaction
    from core.ledger import Block, Ledger, MemoryKV

    h1, p1 = make_org(tmp_path, "h1", peers=1, orderer=True)
    h2, p2 = make_org(tmp_path, "h2", peers=1)
    h3, p3 = make_org(tmp_path, "h3", peers=2)
    genesis = seal(sign_draft(sign_draft(draft(build_config([p1, p2], name="c", threshold=1, created_at=1000)), h1),
                              h2)).to_bytes()
    (tmp_path / "genesis").write_bytes(genesis)
    t = tmp_path
    out = cli("consortium", "change", "--genesis", t / "genesis", "--add", t / "h3", "--threshold", "2",
              "--out", t / "c1", "--json")
    summary = json.loads(out.stdout)
    assert summary["needs"] == 2  # more than half of the 2 current members
    # the approvers are the current members, not the new configuration's (h3 cannot sign its own joining)
    assert [(o["id"], o["signed"]) for o in summary["signers"]] == [("h1", False), ("h2", False)]
    assert summary["signers"][1]["admin_key"] == p2.admin_key.hex()
    assert [o["id"] for o in summary["orgs"]] == ["h1", "h2", "h3"] and summary["configuration"] == 1
    text = cli("consortium", "change", "--genesis", t / "genesis", "--add", t / "h3", "--out", t / "c1-text").stdout
    assert "members after the change: h1, h2, h3" in text and "2 of 2" in text
    assert "h3               NOT signed" not in text and "change to configuration 1 written" in text
    refused = cli("consortium", "sign-change", "--org-dir", t / "h3", "--key-file", t / "h3.key", t / "c1",
                  check=False)
    assert "not a current member" in one_line_error(refused)
    cli("consortium", "sign-change", "--org-dir", t / "h1", "--key-file", t / "h1.key", t / "c1")
    with pytest.raises(OrgError, match="needs more than half"):
        config_transaction(ConfigChange.from_json((t / "c1").read_text()), "peer-h1-1",
                           h1.node_keys("peer-h1-1").ecdsa_private)
    out = cli("consortium", "sign-change", "--org-dir", t / "h2", "--key-file", t / "h2.key", t / "c1", "--json")
    assert json.loads(out.stdout)["needs"] == 0
    add = ConfigChange.from_json((t / "c1").read_text())
    assert [(p.id, p.index) for p in add.new.peers] == [("peer-h1-1", 1), ("peer-h2-1", 2), ("peer-h3-1", 3),
                                                       ("peer-h3-2", 4)]

    kv = MemoryKV()
    ledger = Ledger(genesis, kv)
    orderer_key = h1.node_keys("orderer-h1").ecdsa_private

    def commit(tx) -> str:
        height, head, _ = ledger.head()
        block = Block.make(height + 1, head, tx.timestamp, [tx.to_bytes()], orderer_key)
        result = ledger.apply(block)
        kv.apply(result.writes)
        return result.marks[0]

    assert commit(config_transaction(add, "peer-h1-1", h1.node_keys("peer-h1-1").ecdsa_private)) == "ok"
    assert ledger.config == add.new and ledger.config.threshold == 2
    # the next change starts from the committed one: h2 leaves, h1 and h3 approve (2 of 3)
    text = cli("consortium", "change", "--after", t / "c1", "--remove", "h2", "--out", t / "c2").stdout
    # removing h2: h2 is still one of the members who approve it (2 of h1, h2, h3)
    assert "members after the change: h1, h3" in text and "h2               NOT signed" in text
    assert "2 of 3" in text and "change to configuration 2 written" in text
    for org in ("h1", "h3"):
        cli("consortium", "sign-change", "--org-dir", t / org, "--key-file", t / f"{org}.key", t / "c2")
    remove = ConfigChange.from_json((t / "c2").read_text())
    assert remove.seq == 1
    assert commit(config_transaction(remove, "peer-h3-2", h3.node_keys("peer-h3-2").ecdsa_private)) == "ok"
    assert [o.id for o in ledger.config.orgs] == ["h1", "h3"]
    # the removed org's peer submits nothing any more
    again = config_transaction(remove, "peer-h2-1", h2.node_keys("peer-h2-1").ecdsa_private)
    assert commit(again) == "unknown_submitter"


def test_a_change_of_an_etcd_ordered_consortium_keeps_its_orderer_set(tmp_path):
    """The ledger refuses a change that alters the orderer set; the draft must carry it over (it
    dropped it: every change of an etcd-ordered consortium was refused)."""
    from agents.org import change_draft, sign_change
    from core.ledger import check_config_change

    h1, p1 = make_org(tmp_path, "h1", peers=1, orderer=True)
    h2, p2 = make_org(tmp_path, "h2", peers=1, orderer=True)
    h3, p3 = make_org(tmp_path, "h3", peers=1)
    config = build_config([p1, p2], name="c", threshold=1, created_at=1000, orderer_set=True)
    assert [o.id for o in config.orderers] == ["orderer-h1", "orderer-h2"]
    genesis = seal(sign_draft(sign_draft(draft(config), h1), h2)).to_bytes()
    change = sign_change(sign_change(change_draft(genesis=genesis, add=p3), h1), h2)
    assert change.new.orderers == config.orderers
    check_config_change(change.current, change.seq, change.new, change.signatures)  # raises if refused


# ------------------------------------------------------------------ user TLS certificates


def _user_token(org: OrgDir, subject: str, tls_public: str, *, days: int = 30, now=None):
    import time as _time

    from agents.org import issue_token, parse_tls_key

    return issue_token(org, subject=subject, attributes={"role": "patient"},
                       enroll_key=ecdsa.public_key(ecdsa.generate_private_key()), expires=int(_time.time()) + 60,
                       tls_key=parse_tls_key(tls_public), cert_days=days, now=now)


def test_a_token_carries_a_tls_client_certificate_naming_the_subject_for_the_request_key(tmp_path):
    import datetime

    from cryptography.x509.oid import ExtendedKeyUsageOID

    from agents.org import check_user_cert, new_user_tls_key, parse_tls_key, key_to_pem, tls_public_pem
    from agents.tls import client_context, server_context

    h1, p1 = make_org(tmp_path, "h1")
    h2, p2 = make_org(tmp_path, "h2")
    der, public = new_user_tls_key()
    assert public == tls_public_pem(der)
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    token = _user_token(h1, "alice", public, days=30, now=now)
    assert TokenFile.from_json(token.to_json()) == token
    cert = x509.load_pem_x509_certificate(token.tls_cert.encode())
    ca = x509.load_pem_x509_certificate(p1.tls_ca.encode())
    cert.verify_directly_issued_by(ca)  # chains to the org's CA
    with pytest.raises(Exception):
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(p2.tls_ca.encode()))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["emrshare:agent:alice"]
    assert san.get_values_for_type(x509.DNSName) == [] and san.get_values_for_type(x509.IPAddress) == []
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.public_key().public_numbers() == parse_tls_key(public).public_numbers()  # bound to the request's key
    assert cert.not_valid_after_utc == now + datetime.timedelta(days=30)
    # never beyond the CA's own validity
    long = x509.load_pem_x509_certificate(_user_token(h1, "alice", public, days=9000, now=now).tls_cert.encode())
    assert long.not_valid_after_utc == ca.not_valid_after_utc

    # the user's own check
    check_user_cert(token.tls_cert, subject="alice", org="h1", ca_pem=p1.tls_ca, tls_key=parse_tls_key(public),
                    now=now)
    _, other_public = new_user_tls_key()
    for kw, why in (({"org": "h2", "ca_pem": p2.tls_ca}, "not issued by the TLS CA of h2"),
                    ({"subject": "bob"}, "does not name bob"),
                    ({"tls_key": parse_tls_key(other_public)}, "another TLS key"),
                    ({"now": now + datetime.timedelta(days=31)}, "not now")):
        args = {"subject": "alice", "org": "h1", "ca_pem": p1.tls_ca, "tls_key": parse_tls_key(public), "now": now,
                **kw}
        with pytest.raises(OrgError, match=why):
            check_user_cert(token.tls_cert, **args)

    # mutual TLS 1.3 with a node of h1 trusting the members' CAs; a node trusting only h2 refuses the user
    node_cert, node_key = h1.tls_cert_pem("peer-h1-1"), h1.tls_key_pem("peer-h1-1")
    user = client_context(token.tls_cert.encode(), key_to_pem(der), [p1.tls_ca.encode(), p2.tls_ca.encode()])
    for cas, ok in (([p1.tls_ca.encode(), p2.tls_ca.encode()], True), ([p2.tls_ca.encode()], False)):
        b = [ssl.MemoryBIO() for _ in range(4)]
        client = user.wrap_bio(b[0], b[1], server_hostname="127.0.0.1")
        server = server_context(node_cert, node_key, cas).wrap_bio(b[2], b[3], server_side=True)
        if ok:
            _handshake(client, server, *b)
            seen = server.getpeercert(binary_form=True)
            assert cert_agent_ids(x509.load_der_x509_certificate(seen).public_bytes(ssl_encoding())) == ["alice"]
        else:
            with pytest.raises(ssl.SSLError):
                _handshake(client, server, *b)
                client.write(b"x")  # TLS 1.3: the server's verdict on the client certificate comes after
                b[2].write(b[1].read())
                server.read()


def test_a_token_file_without_a_certificate_still_reads_and_requests_are_checked(tmp_path):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from agents.org import EnrollRequest, new_user_tls_key

    h1, _ = make_org(tmp_path, "h1")
    token = _user_token(h1, "alice", new_user_tls_key()[1])
    old = json.loads(token.to_json())
    del old["tls_cert"]  # a token file written before user TLS certificates
    assert TokenFile.from_json(json.dumps(old)).tls_cert == ""
    bad = {**json.loads(token.to_json()), "tls_cert": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}
    with pytest.raises(OrgError, match="ask the registrar for a new token"):
        TokenFile.from_json(json.dumps(bad))

    good = EnrollRequest(ecdsa.public_key(ecdsa.generate_private_key()), new_user_tls_key()[1])
    assert EnrollRequest.from_json(good.to_json()) == good
    fields = json.loads(good.to_json())

    @settings(max_examples=60, deadline=None)
    @given(st.sampled_from(sorted(fields)), st.one_of(st.none(), st.integers(), st.text(max_size=40),
                                                       st.just(fields["tls_key"][:-40])))
    def altered(name, value):
        doc = {**fields, name: value}
        if doc == fields:
            return
        try:
            EnrollRequest.from_json(json.dumps(doc))
        except OrgError as exc:
            assert str(exc).startswith("reading ")
        else:
            raise AssertionError(f"accepted {doc}")

    altered()


def test_a_registrar_issues_no_user_certificate_naming_one_of_its_nodes(tmp_path):
    """Attack review (issue 15): a user TLS certificate naming a node id (`registrar issue --subject
    peer-h1-1`) would name that node at the TLS layer; the registrar refuses the subject, for the
    token and for the swarm's and load test's in-memory user certificates."""
    from agents.org import new_user_tls_key, user_tls

    h1, p1 = make_org(tmp_path, "h1", peers=1, orderer=True)
    _, public = new_user_tls_key()
    for node in (n.id for n in p1.nodes):
        with pytest.raises(OrgError, match="is a node of this organization"):
            _user_token(h1, node, public)
        with pytest.raises(OrgError, match="is a node of this organization"):
            user_tls(h1, node)
    assert _user_token(h1, "alice", public).subject == "alice"  # a person is issued as before
