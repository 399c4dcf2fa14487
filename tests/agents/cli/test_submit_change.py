"""`emrshare consortium submit-change` against a running swarm (in this process, on loopback TCP):
the CLI runs as a subprocess from the hospitals' own organization directories. A change adding a
third hospital is refused with one member's signature, committed with both (every peer applies it
at the same height, as the peers themselves answer), reported as already in force when submitted
again (from a peer's node configuration); a change prepared for the old configuration is refused as stale; unreachable peers give a
clear error."""

from __future__ import annotations

import json
import os
import socket
import sys
import tomllib
from pathlib import Path

import trio

from agents.consortium import Manifest, enroll_id
from agents.keys import KeyStore
from agents.node.config import render_config
from agents.org import Unlock, default_node_ids, init_org
from agents.runtime import make_endpoint
from agents.swarm import Swarm, SwarmSpec
from core import ecdsa
from core.identity import ConsortiumConfig

ENV = {k: v for k, v in os.environ.items() if k != "EMRSHARE_PASSPHRASE"}
ROOT = Path(__file__).resolve().parents[3]


async def cli(*args: str | Path, ok: bool = True) -> tuple[int, str, str]:
    proc = await trio.run_process([sys.executable, "-m", "agents.cli", *map(str, args)], capture_stdout=True,
                                  capture_stderr=True, check=False, env=ENV, cwd=ROOT)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    if ok:
        assert proc.returncode == 0, (args, out, err)
    else:
        assert proc.returncode != 0 and "Traceback" not in err, (args, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("emrshare: consortium submit-change "), err
    return proc.returncode, out, err


async def test_submit_change_adds_a_hospital_on_every_peer_at_one_height(tmp_path):
    data = tmp_path / "swarm"
    with trio.fail_after(240):
        async with Swarm.open(SwarmSpec(data_dir=data), fresh=True) as swarm:
            t = tmp_path
            (t / "genesis").write_bytes(swarm.manifest.genesis)
            KeyStore.create_key_file(t / "h3.key")
            init_org(t / "h3", "h3", Unlock(key_file=t / "h3.key"), nodes=default_node_ids("h3", 1, 0, False),
                     addresses={"peer-h3-1": "tcp://127.0.0.1:7999"})
            await cli("consortium", "change", "--genesis", t / "genesis", "--add", t / "h3",
                      "--out", t / "c1")
            org_a = ("--org-dir", data / "orgs" / "hospital-a", "--key-file", data / "secrets" / "hospital-a.key")
            org_b = ("--org-dir", data / "orgs" / "hospital-b", "--key-file", data / "secrets" / "hospital-b.key")
            await cli("consortium", "sign-change", *org_a, t / "c1")
            # the in-process swarm runs without TLS (the multi-host test submits one over mutual TLS)
            submit = ("consortium", "submit-change", "--manifest", data / "manifest.json", "--timeout", "30",
                      "--plaintext")

            # one of two members signed: refused before anything is submitted
            _, _, err = await cli(*submit, *org_a, "--peer", "peer-a1", t / "c1", ok=False)
            assert "not enough signatures: 1 of the 2 members signed (hospital-a)" in err
            assert "sign-change" in err

            await cli("consortium", "sign-change", *org_b, t / "c1")
            _, out, _ = await cli(*submit, *org_b, "--peer", "peer-b1", t / "c1", "--json")
            result = json.loads(out)
            new = ConsortiumConfig.from_bytes(bytes.fromhex(json.loads((t / "c1").read_text())["new"]))
            assert (result["seq"], result["digest"], result["submitted"]) == (1, new.digest().hex(), True)
            assert [o["id"] for o in result["orgs"]] == ["hospital-a", "hospital-b", "h3"]
            assert [p["id"] for p in result["peers"]][-1] == "peer-h3-1"
            assert set(result["applied"]) == set(swarm.manifest.peers)
            assert len(set(result["applied"].values())) == 1 and result["height"] > 0

            # the peers say so themselves: the new configuration, applied at the same height
            key = ecdsa.generate_private_key()
            ep = make_endpoint(swarm.node, enroll_id(ecdsa.public_key(key)), key, swarm.manifest.directory())
            answers = [await ep.request(p, "peer.query", {"what": "config"}) for p in swarm.manifest.peers]
            assert {(a["seq"], a["height"], a["config"]) for a in answers} == {(1, result["height"], new.to_bytes())}

            # the same change again, from a peer's node configuration: already in force, nothing submitted
            (t / "node").mkdir()
            await cli("node", "config", "--swarm", data, "--id", "peer-a2", "--out", t / "node" / "peer-a2.toml")
            exported = tomllib.loads((t / "node" / "peer-a2.toml").read_text())
            assert exported["tls"]["cert"]  # an exported node speaks TLS; this swarm runs in-process, in plaintext
            exported["tls"] = {"enabled": False}
            exported.pop("tls.orgs", None)
            (t / "node" / "peer-a2.toml").write_text(render_config(exported, "peer-a2, plaintext on loopback"))
            _, out, _ = await cli("consortium", "submit-change", "--node-config", t / "node" / "peer-a2.toml",
                                  t / "c1")
            assert out.startswith(f"already in force: configuration 1 of {new.name}, digest {new.digest().hex()}")
            assert f"applied at height {result['height']}" in out

            # a change prepared from the genesis (configuration 0) is stale now
            await cli("consortium", "change", "--genesis", t / "genesis", "--remove", "hospital-b",
                      "--out", t / "c2")
            for org in (org_a, org_b):
                await cli("consortium", "sign-change", *org, t / "c2")
            _, _, err = await cli(*submit, *org_a, "--peer", "peer-a1", t / "c2", ok=False)
            assert "stale sequence: the consortium is at configuration 1" in err and "--after" in err

            # no peer reachable: said so, with what to check
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                dead = f"tcp://127.0.0.1:{s.getsockname()[1]}"
            manifest = Manifest.from_json((data / "manifest.json").read_text())
            manifest.agents = {a: dead for a in manifest.agents}
            (t / "dead.json").write_text(manifest.to_json())
            _, _, err = await cli("consortium", "submit-change", "--manifest", t / "dead.json", "--timeout", "3",
                                  "--plaintext", *org_a, "--peer", "peer-a1", t / "c1", ok=False)
            assert "no peer answered" in err and "addresses" in err

            # a peer of another hospital is not this organization's to sign with
            _, _, err = await cli(*submit, *org_a, "--peer", "peer-b1", t / "c1", ok=False)
            assert "peer-b1 is not a peer of hospital-a" in err
