"""Users from their own key directories over mutual TLS (issue 15).

Two hospitals build a consortium with the CLI (org init, genesis, sign, seal,
manifest); its nodes run in this process from the organizations' own directories
on one bus node speaking mutual TLS 1.3 on loopback (a peer's certificate, the
genesis's CAs, client certificates required). Users run `user init`, get a token
and a TLS certificate from `registrar issue --request`, `user enroll` over TLS, and
then store, set a policy, list and read as a patient and read as a doctor with
`patient|doctor --dir`, no swarm. The refusals: a token used from another key, a
replayed token, an expired token, a certificate from another organization's CA (the
CLI's check) or from no member's CA (the node's TLS), and a user directory that is
not enrolled.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import trio

import bus
from agents.cli.userdir import tls_store, user_transport
from agents.consortium import Manifest, enroll_id
from agents.keys import AgentKeys, KeyStore
from agents.node.roles import RoleSettings, build_agent
from agents.org import OrgDir, TokenFile, Unlock, key_to_pem
from agents.ports import free_port
from agents.runtime import make_endpoint
from agents.testing.cli import cli_env, error_line, run_cli
from agents.testing.consortium import CARDIOLOGY_POLICY
from agents.tls import tls_transport
from core.protocol import PeerEnroll
from core.protocol import codes

pytestmark = pytest.mark.slow

ENV = cli_env()


async def cli(*args: str | Path, ok: bool = True):
    proc = await trio.to_thread.run_sync(lambda: run_cli(*map(str, args), env=ENV))
    if ok:
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc


NODES = {"h1": ["peer-h1-1", "storage-h1-1", "orderer-h1"], "h2": ["peer-h2-1", "storage-h2-1"]}


async def _consortium(t: Path, address: str) -> None:
    """Two organizations with the CLI, every node at ``address`` (one bus node here)."""
    for org, flags in (("h1", ["--orderer"]), ("h2", [])):
        places = [a for n in NODES[org] for a in ("--address", f"{n}={address}")]
        await cli("org", "init", "--org", org, "--dir", t / org, "--storage-nodes", "1", *flags, *places,
                  "--key-file", t / f"{org}.key")
    await cli("consortium", "genesis", "--profile", t / "h1", "--profile", t / "h2", "--threshold", "2",
              "--out", t / "g.draft")
    for org in ("h1", "h2"):
        await cli("consortium", "sign", "--org-dir", t / org, "--key-file", t / f"{org}.key", t / "g.draft")
    await cli("consortium", "seal", t / "g.draft", "--out", t / "genesis")
    await cli("consortium", "manifest", "--genesis", t / "genesis", "--profile", t / "h1", "--profile", t / "h2",
              "--out", t / "manifest.json")


async def _user(t: Path, name: str, org: str, *issue: str, out: str | None = None) -> Path:
    """``user init`` for ``name`` and a token from ``org``'s registrar (from the request)."""
    await cli("user", "init", "--dir", t / name, "--key-file", t / f"{name}.key", "--out", t / f"{name}.request")
    await cli("registrar", "issue", "--org-dir", t / org, "--key-file", t / f"{org}.key", "--subject", name,
              "--request", t / f"{name}.request", "--out", t / (out or f"{name}.token"), *issue)
    return t / (out or f"{name}.token")


def _enroll(t: Path, name: str, token: Path | str) -> tuple[str, ...]:
    return ("user", "enroll", "--dir", t / name, "--key-file", t / f"{name}.key", "--token", token,
            "--manifest", t / "manifest.json")


async def _raw_enroll(t: Path, manifest: Manifest, keys_of: str, token: TokenFile, tls_of: str | None = None,
                      cert: bytes | None = None) -> str | None:
    """A client that skips the CLI's checks: ``peer.enroll`` from ``keys_of``'s keys with
    ``token``, over TLS with ``tls_of``'s key and certificate (or ``cert``); the error code
    ("unreachable": the node refused the connection)."""
    keys = AgentKeys.from_bytes(KeyStore(t / keys_of / "keys.bin", key_file=t / f"{keys_of}.key").load())
    tls_of = tls_of or keys_of
    key_der = tls_store(t / tls_of, passphrase=None, key_file=t / f"{tls_of}.key").load()
    cert = cert or (t / tls_of / "tls.pem").read_bytes()
    recv = keys.receive
    body = PeerEnroll(subject=token.subject, org=token.org, attributes=token.attributes, box_key=keys.box_public,
                      pre_key=recv.public.to_bytes(), pre_proof=recv.prove(token.subject).to_bytes(),
                      valid_s=86400, token=token.token).to_wire()
    async with bus.open_node(routes=dict(manifest.agents),
                             transports={"tcp": user_transport(cert, key_der, manifest.genesis)}) as node:
        ep = make_endpoint(node, enroll_id(keys.ecdsa_public), keys.ecdsa_private, manifest.keys.get)
        try:
            await ep.request("peer-h1-1", PeerEnroll.kind, body, timeout=10)
        except bus.RemoteError as exc:
            return exc.code
        except bus.UnreachableError:
            return "unreachable"
        finally:
            await ep.aclose()
    return None


def _expired_cert(org: OrgDir, t: Path) -> str:
    """A certificate of ``org``'s CA for alice's TLS key that expired a day ago."""
    import datetime
    import time

    from agents.org import EnrollRequest, issue_token, parse_tls_key

    request = EnrollRequest.from_json((t / "alice" / "request.json").read_text())
    then = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=3)
    return issue_token(org, subject="alice", attributes={"role": "patient"}, enroll_key=request.enroll_key,
                       expires=int(time.time()) + 60, tls_key=parse_tls_key(request.tls_key), cert_days=2,
                       now=then).tls_cert


async def test_users_enroll_over_tls_and_work_from_their_own_directories(tmp_path):
    t = tmp_path
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    await _consortium(t, address)
    orgs = {o: OrgDir(t / o, Unlock(key_file=t / f"{o}.key")) for o in NODES}
    manifest = Manifest.from_json((t / "manifest.json").read_text())
    cas = [orgs[o].tls_ca_pem() for o in NODES]
    server = tls_transport(orgs["h1"].tls_cert_pem("peer-h1-1"), orgs["h1"].tls_key_pem("peer-h1-1"), cas)

    # every server agent on this one node (they reach each other inside it); users connect over TLS
    async with bus.open_node(transports={"tcp": server}) as node:
        await node.listen(address)
        async with trio.open_nursery() as nursery:
            for org, ids in NODES.items():
                for agent_id in ids:
                    role = agent_id.split("-")[0]
                    agent = build_agent(agent_id, role, orgs[org].node_keys(agent_id), manifest, t / "run" / agent_id,
                                        RoleSettings())
                    await nursery.start(agent.run, node)

            # a directory that is not enrolled: one line saying what to do
            await cli("user", "init", "--dir", t / "alice", "--key-file", t / "alice.key")
            error_line(await cli("patient", "--dir", t / "alice", "--key-file", t / "alice.key", "records", ok=False),
                       1, "holds keys but no enrollment", "emrshare user enroll")
            error_line(await cli("doctor", "--dir", t / "nobody", "records", "alice", ok=False),
                       1, "no keys in", "emrshare user init")

            # the registrar's token carries a TLS certificate for the request's key, naming the subject
            token_path = await _user(t, "alice", "h1", "--role", "patient", "--cert-days", "30")
            token = TokenFile.from_json(token_path.read_text())
            request = json.loads((t / "alice.request").read_text())
            assert request == json.loads((t / "alice" / "request.json").read_text())
            assert "PRIVATE" not in (t / "alice.request").read_text() and token.tls_cert

            # a token used from another key: the CLI says so; a client skipping that check is refused by the peer
            await cli("user", "init", "--dir", t / "mallory", "--key-file", t / "mallory.key")
            error_line(await cli(*_enroll(t, "mallory", token_path), ok=False), 1, "bound to another key")
            await _user(t, "mallory", "h1", "--role", "patient")
            await cli(*_enroll(t, "mallory", t / "mallory.token"))
            mallory = ("patient", "--dir", t / "mallory", "--key-file", t / "mallory.key", "records")
            assert (await cli(*mallory)).stdout.startswith("mallory has no records yet; store one with")
            assert json.loads((await cli(*mallory, "--json")).stdout) == []
            assert await _raw_enroll(t, manifest, "mallory", token) == codes.ENROLL_DENIED

            # a certificate from another member's CA, put in this organization's token: the CLI refuses it
            other = TokenFile.from_json((await _user(t, "alice", "h2", "--role", "patient",
                                                     out="alice-h2.token")).read_text())
            mixed = json.loads(token_path.read_text())
            mixed["tls_cert"] = other.tls_cert
            (t / "mixed.token").write_text(json.dumps(mixed))
            error_line(await cli(*_enroll(t, "alice", t / "mixed.token"), ok=False), 1,
                       "not issued by the TLS CA of h1")
            # ... and one from an organization outside the consortium: the node's TLS refuses the connection
            await cli("org", "init", "--org", "h3", "--dir", t / "h3", "--key-file", t / "h3.key",
                      "--address", f"peer-h3-1={address}")
            outsider = await _user(t, "alice", "h3", "--role", "patient", out="alice-h3.token")
            assert await _raw_enroll(t, manifest, "alice", token, cert=TokenFile.from_json(
                outsider.read_text()).tls_cert.encode()) == "unreachable"

            # an expired token is refused by the peer
            await cli("user", "init", "--dir", t / "late", "--key-file", t / "late.key")
            late = await _user(t, "late", "h1", "--role", "doctor", "--expires", "1s")
            await trio.sleep(1.5)
            error_line(await cli(*_enroll(t, "late", late), ok=False), 1, "expired")

            # alice enrolls over mutual TLS; her certificate goes in her directory
            out = json.loads((await cli(*_enroll(t, "alice", token_path), "--json")).stdout)
            assert (out["subject"], out["org"], out["tls"]) == ("alice", "h1", True)
            assert (t / "alice" / "tls.pem").read_text() == token.tls_cert
            # the token again, from her own key (a replay): the peer refuses to enroll anyone with it
            assert await _raw_enroll(t, manifest, "alice", token) == codes.ENROLL_EXISTS

            # a doctor of h2
            bob = await _user(t, "dr-bob", "h2", "--role", "doctor", "--attr", "department=cardiology")
            await cli(*_enroll(t, "dr-bob", bob))

            # daily use, entirely from the users' directories
            alice = ("patient", "--dir", t / "alice", "--key-file", t / "alice.key")
            doctor = ("doctor", "--dir", t / "dr-bob", "--key-file", t / "dr-bob.key")
            record = t / "ecg.txt"
            record.write_bytes(b"ECG 2026-11-30: sinus rhythm, 61 bpm")
            await cli(*alice, "store", record, "--label", "cardiology", "--media-type", "text/plain",
                      "--record-id", "ecg-1")
            (t / "policy.txt").write_text(CARDIOLOGY_POLICY)
            await cli(*alice, "policy", t / "policy.txt")
            listed = json.loads((await cli(*alice, "records", "--json")).stdout)
            assert [r["record_id"] for r in listed] == ["ecg-1"]
            assert (await cli(*alice, "read", "ecg-1")).stdout.encode() == record.read_bytes()
            decision = json.loads((await cli(*doctor, "request", "alice", "ecg-1", "--json")).stdout)
            assert decision["effect"] == "allow", decision
            await cli(*doctor, "read", "alice", "ecg-1", "--out", t / "read.txt")
            assert (t / "read.txt").read_bytes() == record.read_bytes()
            error_line(await cli(*doctor, "--subject", "alice", "records", "alice", ok=False), 1,
                       "enrolled as 'dr-bob'")

            # renewing the TLS certificate: the registrar issues again from the same request, `user enroll`
            # replaces tls.pem (alice is enrolled already: the new token is not spent)
            days = {time.strftime("%Y-%m-%d", time.gmtime(time.time() + 2 * 86400))}
            renewed = await _user(t, "alice", "h1", "--role", "patient", "--cert-days", "2", out="renew.token")
            days.add(time.strftime("%Y-%m-%d", time.gmtime(time.time() + 2 * 86400)))  # (if midnight passed)
            out = (await cli(*_enroll(t, "alice", renewed))).stdout
            # it says when the new TLS certificate expires, not only the ledger certificate (a year away)
            assert any(f"TLS client certificate (tls.pem) valid until {d}" in out for d in days), out
            assert (t / "alice" / "tls.pem").read_text() == TokenFile.from_json(renewed.read_text()).tls_cert
            assert [r["record_id"] for r in json.loads((await cli(*alice, "records", "--json")).stdout)] == ["ecg-1"]
            # an expired certificate in the directory: one line saying how to renew, before any connection
            (t / "alice" / "tls.pem").write_text(_expired_cert(orgs["h1"], t))
            error_line(await cli(*alice, "records", ok=False), 1, "not now", "registrar issue --request")
            nursery.cancel_scope.cancel()


async def test_a_directory_enrolled_with_a_peer_only_says_to_save_the_manifest(tmp_path):
    """`user enroll --genesis --peer` knows one address; daily use asks for the manifest, and
    `user enroll --manifest` (no token) saves it."""
    from agents.cli.userdir import META_FILE

    t = tmp_path
    await cli("user", "init", "--dir", t / "u", "--key-file", t / "u.key")
    manifest = Manifest("c", b"genesis", "orderer", ["p"], [], 1, {"p": "tcp://127.0.0.1:1"}, {}, {})
    (t / "u" / "manifest.json").write_text(manifest.to_json())
    (t / "u" / META_FILE).write_text(json.dumps({"subject": "u", "org": "o", "manifest": "peer"}))
    error_line(await cli("patient", "--dir", t / "u", "--key-file", t / "u.key", "records", ok=False), 1,
               "knows the address of p only", "--manifest manifest.json")
    other = Manifest("c", b"other genesis", "orderer", ["p"], [], 1, {"p": "tcp://127.0.0.1:1"}, {}, {})
    (t / "other.json").write_text(other.to_json())
    error_line(await cli("user", "enroll", "--dir", t / "u", "--key-file", t / "u.key", "--manifest",
                         t / "other.json", ok=False), 1, "another consortium")
    full = Manifest("c", b"genesis", "orderer", ["p"], ["s"], 1, {"p": "tcp://127.0.0.1:1", "s": "tcp://h:2"},
                    {}, {})
    (t / "full.json").write_text(full.to_json())
    await cli("user", "enroll", "--dir", t / "u", "--key-file", t / "u.key", "--manifest", t / "full.json")
    assert json.loads((t / "u" / META_FILE).read_text())["manifest"] == "full"
    assert Manifest.from_json((t / "u" / "manifest.json").read_text()).storage == ["s"]
    error_line(await cli("patient", "--dir", t / "u", "--key-file", t / "u.key", "register", ok=False), 2,
               "user enroll")


def test_the_user_tls_key_is_encrypted_and_the_request_is_public(tmp_path):
    proc = run_cli("user", "init", "--dir", str(tmp_path / "u"), "--key-file", str(tmp_path / "u.key"), "--json",
                   env=ENV)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["created"] == ["keys", "TLS key"]
    raw = (tmp_path / "u" / "tls.keys").read_bytes()
    assert b"PRIVATE" not in raw
    der = tls_store(tmp_path / "u", passphrase=None, key_file=tmp_path / "u.key").load()
    assert b"BEGIN PRIVATE KEY" in key_to_pem(der)
    again = json.loads(run_cli("user", "init", "--dir", str(tmp_path / "u"), "--key-file", str(tmp_path / "u.key"),
                               "--json", env=ENV).stdout)
    assert again["created"] == [] and again["tls_key"] == out["tls_key"]
