"""What a load test runs against: an embedded swarm it starts, or an existing deployment.

An existing deployment is described by a TOML (or JSON) file::

    # loadtest-target.toml
    manifest = "/srv/emrshare/manifest.json"        # what `emrshare swarm up` writes:
                                                    # peers, orderer and storage nodes with
                                                    # their bus addresses and public keys
    [registrars.hospital-a]                         # per organization: its directory
    org_dir = "/srv/emrshare/orgs/hospital-a"       # (`emrshare org init`) and the key file
    key_file = "/root/hospital-a.key"               # that unlocks it, so the load test can
                                                    # issue its users' enrollment tokens
    users_dir = "/tmp/emrshare-loadtest-users"      # optional: where the test users' keys go
    tls = true                                      # optional: false for nodes running without
                                                    # TLS (an in-process `swarm up`)

Relative paths are relative to the file. The manifest lists every peer and
storage endpoint (``agents``: id -> ``tcp://host:port``); the load test opens
one bus node routed by it. Unless ``tls = false``, that node speaks mutual TLS with
a client certificate it mints in memory from the first registrar's
organization's TLS CA (:func:`agents.org.user_tls`; the key never touches disk). Fault injection needs the embedded swarm (it owns
the processes it kills).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import bus

from agents.consortium import Manifest, enrollment_token


@dataclass
class Target:
    manifest: Manifest
    node: Any  # bus.Node the users attach to
    token: Callable[[str, str, dict, str], bytes]  # (subject, org, attributes, enroll id) -> token
    user_dir: Callable[[str], Path]
    description: str
    swarm: Any = None  # agents.swarm.Swarm when embedded
    info: dict = field(default_factory=dict)


@contextlib.asynccontextmanager
async def embedded(data_dir: Path, *, processes: bool = False, **spec_settings: Any) -> AsyncIterator[Target]:
    from agents.swarm import Swarm, SwarmSpec

    spec = SwarmSpec(data_dir=data_dir, processes=processes, **spec_settings)
    async with Swarm.open(spec, fresh=True) as swarm:
        yield Target(swarm.manifest, swarm.node, swarm.token, swarm.files.user_dir,
                     f"embedded swarm ({'one process per agent' if processes else 'in-process'}): "
                     f"{spec.hospitals} hospitals, {spec.peers} peers, threshold {spec.threshold}, "
                     f"{spec.storage_nodes} storage nodes (replicas {spec.replicas}, write quorum "
                     f"{spec.write_quorum})" + ("" if spec.reply_cache else "; the peers keep no reply cache"),
                     swarm,
                     {"kind": "embedded", "processes": processes, "hospitals": spec.hospitals, "peers": spec.peers,
                      "threshold": spec.threshold, "storage_nodes": spec.storage_nodes, "replicas": spec.replicas,
                      "write_quorum": spec.write_quorum, "batch_timeout": spec.batch_timeout,
                      "reply_cache": spec.reply_cache})


def load_config(path: Path) -> dict[str, Any]:
    path = Path(path)
    text = path.read_bytes()
    doc = json.loads(text) if path.suffix == ".json" else tomllib.loads(text.decode())
    doc = doc.get("target", doc)
    if not isinstance(doc.get("manifest"), str):
        raise ValueError(f"{path}: needs a string 'manifest' (see `emrshare loadtest --help`)")
    registrars = doc.get("registrars")
    if not isinstance(registrars, dict) or not all(
            isinstance(r, dict) and isinstance(r.get("org_dir"), str) and isinstance(r.get("key_file"), str)
            for r in registrars.values()):
        raise ValueError(f"{path}: needs a table [registrars.<org>] with org_dir and key_file for each organization")
    base = path.resolve().parent
    out: dict[str, Any] = {"manifest": base / doc["manifest"]}
    out["registrars"] = {org: (base / r["org_dir"], base / r["key_file"]) for org, r in registrars.items()}
    out["users_dir"] = base / doc["users_dir"] if isinstance(doc.get("users_dir"), str) else None
    if not isinstance(doc.get("tls", True), bool):
        raise ValueError(f"{path}: 'tls' is true or false")
    out["tls"] = doc.get("tls", True)
    return out


def _tls(manifest: Manifest, registrars: dict[str, tuple[Path, Path]]) -> dict[str, Any]:
    """``open_node`` options for a deployment: mutual TLS, trusting the TLS CAs its genesis names."""
    from core.ledger import parse_genesis

    from agents.org import OrgDir, Unlock, key_to_pem, user_tls
    from agents.tls import genesis_cas, tls_transport

    cas = genesis_cas(parse_genesis(manifest.genesis).config)
    if not cas:
        raise ValueError("the deployment's genesis names no TLS CA (made without `emrshare org init`?); "
                         "set tls = false in the target file if its nodes run without TLS")
    org_dir, key_file = next(iter(registrars.values()))
    cert, key = user_tls(OrgDir(org_dir, Unlock(key_file=key_file)), "loadtest", days=2)
    return {"transports": {"tcp": tls_transport(cert, key_to_pem(key), cas)}}


@contextlib.asynccontextmanager
async def existing(config_path: Path) -> AsyncIterator[Target]:
    cfg = load_config(config_path)
    manifest = Manifest.from_json(cfg["manifest"].read_text())
    from agents.org import OrgDir, Unlock

    registrars = {org: OrgDir(d, Unlock(key_file=k)).registrar_key() for org, (d, k) in cfg["registrars"].items()}
    users = cfg["users_dir"] or Path(tempfile.mkdtemp(prefix="emrshare-loadtest-users-"))

    def token(subject: str, org: str, attributes: dict, enrolling: str) -> bytes:
        if org not in registrars:
            raise ValueError(f"no registrar for {org!r} in {config_path}")
        return enrollment_token(registrars[org], subject, org, attributes, enrolling)

    tls = _tls(manifest, cfg["registrars"]) if cfg["tls"] else {}
    async with bus.open_node(routes=manifest.agents, **tls) as node:
        yield Target(manifest, node, token, lambda s: users / s,
                     f"deployment {manifest.consortium} from {config_path}: {len(manifest.peers)} peers "
                     f"(threshold {manifest.threshold}), {len(manifest.storage)} storage nodes",
                     None, {"kind": "existing", "config": str(config_path), "peers": len(manifest.peers),
                            "threshold": manifest.threshold, "storage_nodes": len(manifest.storage)})
