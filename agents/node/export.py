"""Node configurations for the agents of a swarm directory.

* :func:`export_node` (``emrshare node config --swarm DIR --id AGENT --out
  node.toml``): a self-contained node for one agent of an existing swarm, to
  run on its own (another machine): beside the config it writes the genesis,
  the agent's keys and TLS key re-encrypted in key stores of their own under a
  NEW key file (or a passphrase), never the key that opens the swarm's other
  keys, and its TLS certificate (``[tls]``).
  Secret files are mode 0600. (Users enroll with tokens their hospital's
  registrar signs; a peer checks them against the genesis, so it needs no secret
  for that.)
* :func:`swarm_node_config` (``swarm up --processes``): the config of one of
  the swarm's node processes, referring to the swarm's own files (its key
  store and key file, its agent directory, its ready file, and with
  its organization's TLS certificate and key store: ``[tls]``).

Both write what :func:`agents.node.config.load_config` reads, so every node
process goes through ``emrshare node start``; :func:`consortium_tables` is the
part every node configuration takes from the manifest (``emrshare org
node-config`` too).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from core.ledger import parse_genesis

from agents.errors import AgentError
from agents.keys import KeyStore, atomic_write
from agents.node.config import render_config
from agents.node.roles import role_of

__all__ = ["consortium_tables", "export_node", "swarm_node_config", "GENESIS_FILE"]

GENESIS_FILE = "genesis.block"


def consortium_tables(manifest: Any, agent: str) -> dict[str, dict[str, Any]]:
    """``[consortium]``, ``[routes]`` and ``[keys]`` of ``agent``'s configuration from the
    consortium's manifest: the storage nodes and their replication, every other agent's
    address, and the public keys the genesis does not hold (storage nodes')."""
    config = parse_genesis(manifest.genesis).config
    in_genesis = {p.id for p in config.peers} | set(config.orderer_ids) | {config.orderer_id}
    return {
        "consortium": {"storage": list(manifest.storage), "replicas": manifest.replicas,
                       "write_quorum": manifest.write_quorum},
        "routes": {a: addr for a, addr in manifest.agents.items() if a != agent},
        "keys": {a: k.hex() for a, k in manifest.keys.items() if a not in in_genesis},
    }


def _tables(files: Any, agent: str, *, listen: str, genesis: Path, keystore: Path, data_dir: Path,
            key_file: Path | None = None, passphrase_file: Path | None = None,
            ready_file: Path | None = None, metrics: str = "") -> dict[str, dict[str, Any]]:
    manifest = files.manifest()
    spec = files.spec()
    config = parse_genesis(manifest.genesis).config
    node: dict[str, Any] = {
        "id": agent, "role": role_of(agent, manifest), "listen": listen, "genesis": str(genesis),
        "keystore": str(keystore), "key_file": str(key_file) if key_file else None,
        "passphrase_file": str(passphrase_file) if passphrase_file else None, "data_dir": str(data_dir),
        "metrics": metrics or None,
        "ready_file": str(ready_file) if ready_file else None,
    }
    tables: dict[str, dict[str, Any]] = {
        "node": node,
        **consortium_tables(manifest, agent),
        "orderer": {"batch_size": spec.batch_size, "batch_timeout": spec.batch_timeout},
        "peer": {"reply_cache": spec.reply_cache},
        "storage": {"reconcile_interval": spec.reconcile_interval, "collect_grace": spec.collect_grace,
                    "upload_timeout": spec.upload_timeout},
    }
    if agent in {o.id for o in config.orderers}:  # an etcd orderer node: on the swarm's etcd cluster
        tables["ordering"] = {"kind": "etcd", "endpoints": files.etcd_cluster(spec).endpoints,
                              "window": spec.etcd_window}
    return tables


def _keystore_of(files: Any, agent: str) -> tuple[Path, Path]:
    """The key store holding ``agent``'s keys in a swarm directory, and the key file that opens
    it: in its hospital's organization directory (in a directory made before orderer and
    storage nodes had organizations, the swarm's)."""
    org = files.node_org(agent)
    if org is not None:
        return files.org_dir(org).dir / "keys" / f"{agent}.keys", files.secrets / f"{org}.key"
    return files.keystore(agent).path, files.key_file


def _tls_table(files: Any, agent: str, cert: Path, keystore: Path) -> dict[str, dict[str, Any]]:
    """``[tls]`` and ``[tls.orgs]`` (the organization of each orderer and storage node)."""
    orgs = files.node_orgs()
    others = [*parse_genesis(files.manifest().genesis).config.orderer_ids, *files.manifest().storage]
    return {"tls": {"cert": str(cert), "keystore": str(keystore), "require_client_cert": True},
            "tls.orgs": {a: orgs[a] for a in others if a in orgs}}


def swarm_node_config(files: Any, agent: str) -> Path:
    """Write ``DIR/nodes/AGENT.toml`` for the swarm's node process ``agent``; return its path."""
    manifest = files.manifest()
    genesis = files.dir / GENESIS_FILE
    if not genesis.exists() or genesis.read_bytes() != manifest.genesis:
        atomic_write(genesis, manifest.genesis, mode=0o644)
    keystore, key_file = _keystore_of(files, agent)
    path = files.dir / "nodes" / f"{agent}.toml"
    tables = _tables(files, agent, listen=manifest.agents[agent], genesis=genesis, keystore=keystore,
                     key_file=key_file, data_dir=files.agent_dir(agent),
                     ready_file=files.dir / "run" / f"{agent}.ready")
    org = files.node_org(agent)
    if org is None:
        raise AgentError(f"configuring {agent}: no hospital of the swarm in {files.dir} holds it, so it has no TLS "
                         "certificate (the directory predates TLS for orderer and storage nodes); recreate the swarm "
                         "in a new directory")
    org_dir = files.org_dir(org).dir
    tables.update(_tls_table(files, agent, org_dir / "tls" / f"{agent}.pem", org_dir / "keys" / f"{agent}.tls.keys"))
    text = render_config(tables, f"node {agent} of the swarm in {files.dir} (written by `swarm up --processes`)")
    atomic_write(path, text.encode(), mode=0o644)
    return path


def export_node(files: Any, agent: str, out: Path, *, listen: str | None = None, data_dir: str = "",
                passphrase: str | None = None, metrics: str = "") -> list[Path]:
    """Write a self-contained node configuration for ``agent`` to ``out`` and its files beside it
    (see the module docstring); return the files written. ``passphrase``: encrypt the key store
    under it (the config then expects ``EMRSHARE_NODE_PASSPHRASE`` or a passphrase_file) instead
    of a new key file."""
    manifest = files.manifest()
    role_of(agent, manifest)  # ValueError for an unknown agent
    out = Path(out)
    base = out.parent if str(out.parent) else Path(".")
    written = []
    genesis = base / GENESIS_FILE
    atomic_write(genesis, manifest.genesis, mode=0o644)
    written.append(genesis)
    keys = files.agent_keys(agent).to_bytes()
    org = files.node_org(agent)
    if org is None:
        raise ValueError(f"{agent} has no organization in {files.dir}, so no TLS certificate: the directory "
                         "predates TLS for orderer and storage nodes; recreate the swarm")
    org_dir = files.org_dir(org)
    tls_key = serialization.load_pem_private_key(org_dir.tls_key_pem(agent), None).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    keystore, tls_keystore, cert = base / f"{agent}.keys", base / f"{agent}.tls.keys", base / f"{agent}.pem"
    key_file = None
    if passphrase is None:
        key_file = base / f"{agent}.key"
        KeyStore.create_key_file(key_file)
        written.append(key_file)
    for path, secret in ((keystore, keys), (tls_keystore, tls_key)):
        (KeyStore(path, key_file=key_file) if key_file else KeyStore(path, passphrase=passphrase)).save(secret)
        written.append(path)
    atomic_write(cert, org_dir.tls_cert_pem(agent), mode=0o644)
    written.append(cert)
    def rel(p: Path | None) -> Path | None:
        return Path(os.path.relpath(p, base)) if p is not None else None

    tables = _tables(files, agent, listen=listen or manifest.agents[agent], genesis=rel(genesis),
                     keystore=rel(keystore), key_file=rel(key_file), data_dir=Path(data_dir or f"data-{agent}"),
                     metrics=metrics)
    tables.update(_tls_table(files, agent, rel(cert), rel(tls_keystore)))
    comment = (f"node {agent} of consortium {manifest.consortium}, exported from {files.dir}.\n"
               "Start it with: emrshare node start --config " + out.name
               + ("" if key_file else f"   (passphrase in {json.dumps('EMRSHARE_NODE_PASSPHRASE')} or "
                  "[node] passphrase_file)"))
    atomic_write(out, render_config(tables, comment).encode(), mode=0o644)
    written.append(out)
    return written
