"""``emrshare consortium submit-change CHANGE``: put a signed configuration change on the ledger.

The members prepared the change file (``consortium change``) and more than
half of them signed it (``consortium sign-change``). A member's peer must
submit the ``config`` transaction (the ledger takes it from a consortium peer
only): this command signs it with that peer's key (``--org-dir DIR --peer ID``
unlocks it from the organization's directory; ``--node-config FILE`` from the
peer's own node configuration, as ``emrshare node start`` does) with
:func:`agents.org.config_transaction`, after checking the change as every
peer's ledger will (``core.ledger.check_config_change``: the rules and each
member's signature; and that a new member's TLS CA is one CA certificate), so a
forged or spoiled file is refused in one line before any connection, and then:

1. asks the peers of the configuration in force (``peer.query {what:
   "config"}``, from a throwaway ``enroll:`` identity) which configuration is
   in force: a change prepared for another sequence number or configuration
   is refused as stale before anything is submitted; one already in force is
   reported as such;
2. submits the transaction to the ordering service (``orderer.submit``, the
   way the peer itself forwards transactions: the orderer nodes of the
   genesis's set in turn, else the embedded orderer), from a bus node of its
   own that speaks as the peer and is closed right after;
3. waits (``--timeout``) until the peers that answered in step 1 report the
   new configuration, and prints its digest, members, peers, threshold and
   the height each peer applied it at (``--json``: the same as JSON).

Trust: step 1 and 3 believe the peers' answers (as every client does); step
2 speaks with the peer's key from a second process: while that short-lived
connection is open, the orderer may route the peer's block events to it; the
peer catches up from its next gap or idle check. Both bus nodes speak mutual
TLS with the peer's own TLS certificate (from the organization directory, or the
node configuration's ``[tls]``), trusting the member organizations' TLS CAs of
the genesis; ``--plaintext`` (with ``--org-dir``) is for a consortium whose nodes
run without TLS (the embedded swarm).
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from agents.cli.base import CliError, check_input_file, doing, fail, run, unlock_options
from agents.cli.output import print_json

__all__ = ["submit_change_main", "submit_change", "ChangeOutcome"]

POLL_S = 0.25


@dataclass
class ChangeOutcome:
    """What :func:`submit_change` did: the new configuration, its sequence number, and per peer
    the height it applied it at (None: not seen applied before the timeout)."""

    config: Any  # core.identity.ConsortiumConfig
    seq: int
    applied: dict[str, int | None]
    submitted: bool  # False: it was already in force, nothing was submitted

    @property
    def height(self) -> int | None:
        heights = [h for h in self.applied.values() if h is not None]
        return min(heights) if heights else None

    def to_json(self) -> dict[str, Any]:
        c = self.config
        return {"consortium": c.name, "seq": self.seq, "digest": c.digest().hex(), "threshold": c.threshold,
                "height": self.height, "submitted": self.submitted,
                "orgs": [{"id": o.id, "name": o.name} for o in c.orgs],
                "peers": [{"id": p.id, "org": p.org, "index": p.index} for p in c.peers],
                "applied": self.applied}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="emrshare consortium submit-change",
        description="Submit a configuration change more than half of the members signed, as one of this "
                    "organization's peers, and wait until the peers apply it.")
    p.add_argument("change", help="the signed change file (`emrshare consortium change`, `sign-change`)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--org-dir", type=Path, help="this organization's directory (holds the peer's key); "
                                                  "with --peer and --manifest")
    src.add_argument("--node-config", type=Path, metavar="FILE",
                     help="the peer's node configuration (its key store, genesis and routes), as for "
                          "`emrshare node start`")
    p.add_argument("--peer", help="with --org-dir: the peer of this organization that submits (signs) it")
    p.add_argument("--manifest", type=Path,
                   help="with --org-dir: the consortium's manifest.json (every node's address)")
    unlock_options(p, passphrase_help="with --org-dir: a file holding the passphrase of the organization's keys",
                   key_file_help="with --org-dir: the key file that unlocks the organization's keys")
    p.add_argument("--plaintext", action="store_true",
                   help="with --org-dir: connect without TLS, for a consortium whose nodes run without it (the "
                        "embedded swarm, loopback tests); by default the peer's TLS certificate is presented "
                        "(mutual TLS), and with --node-config its [tls] table decides")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long to wait for the peers to apply it (default 30)")
    p.add_argument("--json", action="store_true", help="print the new configuration and the heights as JSON")
    return p


def _org_peer(args: argparse.Namespace, what: str) -> tuple[str, bytes, Any, Any]:
    """(peer id, its ECDSA private key, the manifest, its TLS transport or None with --plaintext)
    from --org-dir, --peer, --manifest."""
    from agents.consortium import Manifest
    from agents.org import OrgDir, OrgError, Unlock

    if not args.peer or args.manifest is None:
        fail(what, "--org-dir needs --peer ID and --manifest FILE", "name the peer that submits and the "
                                                                     "consortium's manifest.json")
    if args.key_file is not None:
        unlock = Unlock(key_file=check_input_file(args.key_file, what))
    elif args.passphrase_file is not None:
        unlock = Unlock.from_files(check_input_file(args.passphrase_file, what), None)
    else:
        fail(what, "no key file or passphrase file to unlock the organization's keys",
             "give --key-file or --passphrase-file")
    directory = OrgDir(args.org_dir, unlock)
    if not directory.exists():
        fail(what, f"no organization in {args.org_dir}", "give the directory `emrshare org init` made")
    try:
        manifest = Manifest.from_json(check_input_file(args.manifest, what).read_text())
    except (ValueError, KeyError, TypeError) as exc:
        fail(what, f"{args.manifest} is not a manifest ({exc})", "give the consortium's manifest.json")
    nodes = {n.id for n in directory.profile().nodes_with("peer")}
    if args.peer not in nodes:
        fail(what, f"{args.peer} is not a peer of {directory.profile().org}",
             f"its peers: {', '.join(sorted(nodes)) or 'none'}")
    try:
        keys = directory.node_keys(args.peer)
        transport = None if args.plaintext else _tls_transport(
            directory.tls_cert_pem(args.peer), directory.tls_key_pem(args.peer), manifest.genesis)
    except (OrgError, OSError) as exc:
        raise CliError(what, str(exc)) from None
    return args.peer, keys.ecdsa_private, manifest, transport


def _tls_transport(cert_pem: bytes, key_pem: bytes, genesis: bytes) -> Any:
    """Mutual TLS as the peer (its certificate), trusting the member organizations' TLS CAs."""
    from core.ledger import parse_genesis

    from agents.tls import genesis_cas, tls_transport

    return tls_transport(cert_pem, key_pem, genesis_cas(parse_genesis(genesis).config))


def _node_peer(args: argparse.Namespace, what: str) -> tuple[str, bytes, Any, Any]:
    from agents.node.config import load_config
    from agents.org import key_to_pem

    if args.peer or args.manifest or args.key_file or args.passphrase_file or args.plaintext:
        fail(what, "--node-config takes the peer, addresses, key store and TLS from the file",
             "drop --peer, --manifest, --key-file, --passphrase-file and --plaintext")
    config = load_config(check_input_file(args.node_config, what))
    if config.role != "peer":
        fail(what, f"{args.node_config} configures a {config.role}, not a peer", "give a peer's node configuration")
    manifest = config.manifest()
    transport = None
    if config.tls.enabled:
        cert_pem, key_der = config.tls_material()
        transport = _tls_transport(cert_pem, key_to_pem(key_der), manifest.genesis)
    return config.id, config.unlock().ecdsa_private, manifest, transport


def submit_change_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    what = f"consortium submit-change {args.change}"

    def body() -> int:
        from agents.org import ConfigChange, OrgError

        if not 0 < args.timeout <= 3600:
            fail(what, f"--timeout {args.timeout:g} is out of range", "give 1..3600 seconds")
        path = check_input_file(args.change, what)
        try:
            change = ConfigChange.from_json(path.read_text(), source=str(path))
        except OrgError as exc:
            raise CliError(what, str(exc)) from None
        with doing(what):
            peer_id, key, manifest, transport = (_org_peer if args.org_dir is not None else _node_peer)(args, what)
            outcome = trio.run(submit_change, change, peer_id, key, manifest, what, args.timeout, transport)
        if args.json:
            print_json(outcome.to_json())
            return 0
        c = outcome.config
        print(("already in force" if not outcome.submitted else "committed")
              + f": configuration {outcome.seq} of {c.name}, digest {c.digest().hex()}")
        print(f"  members: {', '.join(o.id for o in c.orgs)}; threshold {c.threshold} of {len(c.peers)} peers")
        for p in c.peers:
            print(f"  peer {p.id:<20} {p.org:<16} proxy index {p.index}")
        for peer, height in outcome.applied.items():
            print(f"  {peer}: " + (f"applied at height {height}" if height is not None else "not yet applied"))
        return 0

    return run(body, what)


def _refusal(change: Any) -> str:
    """Why the ledger would refuse ``change`` (its rules and every signature, checked here as every
    peer will: a forged or spoiled file is said so at once instead of timing out), or ""; also a new
    member's TLS CA that is not one CA certificate (which nodes would not trust)."""
    from core.errors import ValidationError
    from core.ledger import check_config_change

    from agents.tls import check_ca_pem

    try:
        check_config_change(change.current, change.seq, change.new, change.signatures)
    except ValidationError as exc:
        return str(exc)
    for org in change.new.orgs:
        if change.current.org(org.id) is None and org.tls_ca:
            try:
                check_ca_pem(org.tls_ca)
            except ValueError as exc:
                return f"the TLS CA of {org.id}: {exc}"
    return ""


async def _config_of(endpoint: Any, peer: str, timeout: float) -> tuple[Any, int, int]:
    """(configuration in force, its seq, the height it was committed at) as ``peer`` answers."""
    from core.identity import ConsortiumConfig

    reply = await endpoint.request(peer, "peer.query", {"what": "config"}, timeout=timeout)
    return ConsortiumConfig.from_bytes(reply["config"]), reply["seq"], reply["height"]


async def submit_change(change: Any, peer_id: str, peer_key: bytes, manifest: Any, what: str,
                        timeout: float = 30.0, transport: Any = None) -> ChangeOutcome:
    """Check, submit and follow ``change`` (see the module docstring); CliError for every expected failure.
    ``transport``: the bus's ``tcp`` transport (mutual TLS as the peer), None for plain TCP."""
    import bus
    from core import ecdsa
    from core.errors import DecodeError
    from core.ledger import parse_genesis

    from agents.consortium import enroll_id
    from agents.org import OrgError, config_transaction
    from agents.runtime import make_endpoint

    current = change.current
    members = [o.id for o in current.orgs]
    if change.missing():
        fail(what, f"not enough signatures: {len(change.signatures)} of the {len(members)} members signed "
                   f"({', '.join(sorted(change.signatures)) or 'none'}); more than half must",
             f"collect {change.missing()} more with `emrshare consortium sign-change --org-dir DIR {what.split()[-1]}`")
    if current.peer(peer_id) is None:
        fail(what, f"{peer_id} is not a peer of the configuration the change starts from",
             "submit it from a current member's peer")
    refused = _refusal(change)
    if refused:
        fail(what, f"the ledger would refuse this change ({refused})",
             "prepare it again with `emrshare consortium change` and have the members sign that "
             "(`consortium sign-change`)")
    try:
        tx = config_transaction(change, peer_id, peer_key)
    except OrgError as exc:
        raise CliError(what, str(exc)) from None
    peers = [p.id for p in current.peers if p.id in manifest.agents]
    if not peers:
        fail(what, "the manifest has no address for any peer of the configuration in force",
             "give the consortium's current manifest.json")
    genesis = parse_genesis(manifest.genesis).config
    orderers = list(genesis.orderer_ids) if genesis.orderers else [manifest.orderer]
    directory = manifest.directory()
    asker = ecdsa.generate_private_key()
    ask = min(5.0, max(1.0, timeout / 3))
    new_bytes = change.new.to_bytes()
    tcp = {"transports": {"tcp": transport}} if transport is not None else {}
    async with bus.open_node(routes=manifest.agents, **tcp) as node:
        ep = make_endpoint(node, enroll_id(ecdsa.public_key(asker)), asker, directory)
        # 1. what is in force, as the peers say
        answered: dict[str, tuple[Any, int, int]] = {}
        errors: list[str] = []

        async def first(peer: str) -> None:
            try:
                answered[peer] = await _config_of(ep, peer, ask)
            except (bus.BusError, DecodeError, KeyError, TypeError) as exc:
                errors.append(f"{peer}: {type(exc).__name__}")

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(first, peer)
        if not answered:
            fail(what, f"no peer answered ({'; '.join(sorted(errors))})",
                 "check that the consortium's peers run and that the manifest's addresses reach them")
        config, seq, height = max(answered.values(), key=lambda a: a[1])
        if seq == change.seq + 1 and config.to_bytes() == new_bytes:
            return ChangeOutcome(change.new, seq, {p: a[2] for p, a in answered.items() if a[1] == seq}, False)
        if seq != change.seq or config.digest() != current.digest():
            fail(what, f"stale sequence: the consortium is at configuration {seq} (digest {config.digest().hex()[:16]}"
                       f"..., committed at height {height}); the change was prepared for configuration {change.seq}",
                 "prepare it again from the last committed change (`emrshare consortium change --after FILE`) "
                 "and have the members sign that")
        # 2. submit as the peer, from a node of its own that closes right after
        submitted = False
        refusals: list[str] = []
        async with bus.open_node(routes=manifest.agents, **tcp) as as_peer:
            sender = make_endpoint(as_peer, peer_id, peer_key, directory)
            for orderer in orderers:
                try:
                    await sender.request(orderer, "orderer.submit", {"tx": tx.to_bytes()}, timeout=ask)
                    submitted = True
                    break
                except bus.RemoteError as exc:
                    refusals.append(f"{orderer}: {exc.code}")
                except bus.BusError as exc:
                    refusals.append(f"{orderer}: {type(exc).__name__}")
        if not submitted:
            fail(what, f"the ordering service did not take the transaction ({'; '.join(refusals)})",
                 "check that the orderer nodes run, then run this command again")
        # 3. wait for the peers that answered to apply it
        applied: dict[str, int | None] = {p: None for p in answered}
        with trio.move_on_after(timeout):
            while any(h is None for h in applied.values()):
                for peer in [p for p, h in applied.items() if h is None]:
                    with contextlib.suppress(bus.BusError, DecodeError, KeyError, TypeError):
                        config, seq, height = await _config_of(ep, peer, ask)
                        if seq > change.seq and config.to_bytes() != new_bytes:
                            fail(what, f"another change committed first ({peer} is at configuration {seq}, digest "
                                       f"{config.digest().hex()[:16]}...); this one was not applied",
                                 "prepare the change again from the configuration in force")
                        if seq == change.seq + 1:
                            applied[peer] = height
                if any(h is None for h in applied.values()):
                    await trio.sleep(POLL_S)
        if all(h is None for h in applied.values()):
            fail(what, f"submitted, but no peer applied it within {timeout:g} s",
                 "run the command again later: it reports a change already in force, or that it was not applied")
        return ChangeOutcome(change.new, change.seq + 1, applied, True)
