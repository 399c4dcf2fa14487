"""``emrshare org node-config``: one node's configuration from its hospital's own directory.

A hospital that made its material with ``emrshare org init`` and holds the
sealed genesis and the consortium's manifest (``emrshare consortium seal`` and
``manifest``) writes each node's TOML (:mod:`agents.node.config`) with::

    emrshare org node-config --org-dir DIR --id NODE --genesis genesis.block \\
        --manifest manifest.json --out NODE.toml [--listen tcp://HOST:PORT] \\
        [--data-dir PATH] [--passphrase-file F | --key-file F] [--etcd http://HOST:PORT ...]

The file points at the organization directory's own key stores (nothing is
copied or re-encrypted): ``[node] keystore`` = ``DIR/keys/NODE.keys``, ``[tls]
cert`` = ``DIR/tls/NODE.pem``, ``[tls] keystore`` = ``DIR/keys/NODE.tls.keys``,
both unlocked by the organization's key file or passphrase file (or, with
neither, ``EMRSHARE_NODE_PASSPHRASE`` when the node starts). Routes (every
other node's address) and the public keys the genesis does not hold (storage
nodes) come from the manifest; ``[tls.orgs]`` names the organization of every
orderer and storage node the manifest places (``Manifest.node_orgs``, from the
members' profiles; this organization's own from its profile), so only that
organization's TLS CA vouches for each (one the manifest does not place, from
a manifest made before it did, is vouched for by any member CA: docs/security.md). An orderer node of an etcd-ordered consortium also gets
``[ordering]`` with the etcd members' client URLs (``--etcd``, once per member).
:func:`write_node_config` does the work.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agents.cli.base import UsageError, check_input_file, check_output_path, fail, run, unlock_options

__all__ = ["main", "write_node_config"]

WHAT = "org node-config"


def write_node_config(org_dir: Path, node: str, genesis: Path, manifest: Path, out: Path, *,
                      listen: str | None = None, data_dir: str = "", key_file: Path | None = None,
                      passphrase_file: Path | None = None, etcd: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Write ``out``, the TOML of ``node`` of the organization in ``org_dir``; return its tables.
    ``etcd``: the etcd cluster's client URLs, for an orderer node of the genesis's orderer set
    (``[ordering]``). CliError (one line) when the node, genesis or manifest do not agree."""
    from core.errors import DecodeError
    from core.ledger import parse_genesis

    from agents.consortium import Manifest
    from agents.keys import atomic_write
    from agents.node.config import render_config
    from agents.node.export import consortium_tables
    from agents.org import OrgDir, cert_agent_ids

    what = f"{WHAT} {node}"
    if not OrgDir(org_dir).exists():
        fail(what, f"no organization in {org_dir} (no profile.json)", "give --org-dir the directory `emrshare org init` made")
    profile = OrgDir(org_dir).profile()  # OrgError (one line) if it does not read
    mine = {n.id: n for n in profile.nodes}
    if node not in mine:
        raise UsageError(what, f"{profile.org} has no node {node!r}", f"choose one of {', '.join(mine) or 'none'}")
    raw = check_input_file(genesis, what).read_bytes()
    try:
        config = parse_genesis(raw).config
    except (DecodeError, ValueError) as exc:
        fail(what, f"{genesis} is not a sealed genesis ({exc})", "give the file `emrshare consortium seal` wrote")
    try:
        clients = Manifest.from_json(check_input_file(manifest, what).read_text())
    except (ValueError, KeyError, TypeError) as exc:
        fail(what, f"{manifest} is not a manifest ({exc})", "give the file `emrshare consortium manifest` wrote")
    if clients.genesis != raw:
        fail(what, f"{manifest} was written for another genesis than {genesis}",
             "give the manifest of this genesis (`emrshare consortium manifest`)")
    me = mine[node]
    in_genesis = {p.id: p.ecdsa_key for p in config.peers}
    in_genesis.update({o.id: o.key for o in config.orderers} or {config.orderer_id: config.orderer_key})
    known = in_genesis.get(node, clients.keys.get(node))
    if known is None:
        fail(what, f"{node} is not a node of consortium {config.name} (not in its genesis or manifest)",
             "add it to the consortium first, or choose another --id")
    if known != me.ecdsa_key:
        fail(what, f"the consortium knows another key for {node} than {org_dir}'s",
             "use this organization's current directory, or rebuild the manifest from its profile")
    org = OrgDir(org_dir)
    cert, tls_keys, keystore = org.dir / "tls" / f"{node}.pem", org.dir / "keys" / f"{node}.tls.keys", \
        org.dir / "keys" / f"{node}.keys"
    for path in (cert, tls_keys, keystore):
        check_input_file(path, what)
    try:
        named = cert_agent_ids(cert.read_bytes())
    except ValueError as exc:
        fail(what, f"{cert} is not a certificate ({exc})", "make the organization again with `emrshare org init`")
    if node not in named:
        fail(what, f"{cert} names {', '.join(named) or 'no agent'}, not {node}", "check the organization directory")
    others = {*config.orderer_ids, *clients.storage}
    tables: dict[str, dict[str, Any]] = {
        "node": {"id": node, "role": me.role, "listen": listen or me.address, "genesis": str(genesis.resolve()),
                 "keystore": str(keystore.resolve()),
                 "key_file": str(key_file.resolve()) if key_file else None,
                 "passphrase_file": str(passphrase_file.resolve()) if passphrase_file else None,
                 "data_dir": data_dir or f"data-{node}"},
        **consortium_tables(clients, node),
        "tls": {"cert": str(cert.resolve()), "keystore": str(tls_keys.resolve()), "require_client_cert": True},
        # every orderer and storage node's organization: the manifest's (from the members' profiles), this
        # organization's own profile for its own nodes; a node named nowhere is vouched for by any member CA
        "tls.orgs": {a: org for a, org in sorted({**clients.node_orgs,
                                                  **{n.id: profile.org for n in profile.nodes}}.items())
                     if a in others},
    }
    etcd_set = {o.id for o in config.orderers}
    if node in etcd_set:
        if not etcd:
            raise UsageError(what, f"{node} is an orderer node of an etcd-ordered consortium",
                             "give the etcd cluster's client URLs with --etcd http://HOST:PORT (once per member)")
        tables["ordering"] = {"kind": "etcd", "endpoints": list(etcd)}
    elif etcd:
        raise UsageError(what, f"--etcd is for the orderer nodes of an etcd-ordered consortium, not {node}",
                         "drop --etcd")
    unlock = ("" if key_file or passphrase_file else
              "\nThe key stores open with EMRSHARE_NODE_PASSPHRASE (the organization's passphrase).")
    comment = (f"node {node} ({me.role}) of {profile.org} in consortium {config.name}, from {org.dir.resolve()}.\n"
               f"Start it with: emrshare node start --config {out.name}{unlock}")
    atomic_write(out, render_config(tables, comment).encode(), mode=0o644)
    return tables


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="emrshare org node-config",
        description="Write one node's configuration (TOML for `emrshare node start`) from this organization's "
        "directory, the sealed genesis and the manifest: its key stores, TLS certificate and key ([tls]), every "
        "other node's address and the storage nodes' keys. Nothing secret is copied: the file points at the "
        "organization directory's key stores.")
    p.add_argument("--org-dir", required=True, type=Path, help="the organization directory (`emrshare org init`)")
    p.add_argument("--id", required=True, metavar="NODE", help="the node (one of the organization's nodes)")
    p.add_argument("--genesis", required=True, type=Path, help="the sealed genesis (`emrshare consortium seal`)")
    p.add_argument("--manifest", required=True, type=Path,
                   help="the consortium's manifest.json (`emrshare consortium manifest`)")
    p.add_argument("--out", required=True, type=Path, help="the configuration file to write")
    p.add_argument("--listen", metavar="tcp://HOST:PORT",
                   help="the address the node binds (default: its address in the organization's profile)")
    p.add_argument("--data-dir", default="", metavar="PATH",
                   help="the node's ledger or blob directory (default data-NODE, relative to --out)")
    unlock_options(p, passphrase_help="the file holding the organization's passphrase (the node reads it at start)",
                   key_file_help="the organization's 32-byte key file (the node reads it at start)")
    p.add_argument("--etcd", action="append", default=[], metavar="http://HOST:PORT",
                   help="an etcd member's client URL (repeat for each): required for an orderer node of an "
                   "etcd-ordered consortium ([ordering])")
    p.add_argument("--json", action="store_true", help="print the configuration's tables as JSON")
    args = p.parse_args(argv)

    def body() -> int:
        if args.listen is not None and not args.listen.startswith("tcp://"):
            raise UsageError(WHAT, f"--listen {args.listen!r}", "write tcp://HOST:PORT")
        for secret in (args.key_file, args.passphrase_file):
            if secret is not None:
                check_input_file(secret, WHAT)
        check_output_path(args.out, WHAT)
        tables = write_node_config(args.org_dir, args.id, args.genesis, args.manifest, args.out,
                                   listen=args.listen, data_dir=args.data_dir, key_file=args.key_file,
                                   passphrase_file=args.passphrase_file, etcd=args.etcd)
        if args.json:
            from agents.cli.output import print_json

            print_json(tables)
        else:
            print(f"wrote {args.out} for {args.id} ({tables['node']['role']}, TLS from "
                  f"{tables['tls']['cert']}); start it with `emrshare node start --config {args.out}`")
        return 0

    return run(body, WHAT)
