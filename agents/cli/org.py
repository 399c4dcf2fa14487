"""``emrshare org|consortium|registrar|user ...``: joining a consortium across machines.

Each hospital runs, on its own machine (:mod:`agents.org`):

* ``org init``: its admin, registrar and node keys, TLS CA and node certificates,
  encrypted under a passphrase file or key file kept outside the directory;
  ``org profile`` prints (or ``--out`` copies) the public profile to hand to the others;
* ``consortium genesis``: one member builds the draft from every profile;
  ``consortium sign``: each member signs it with its admin key;
  ``consortium seal``: checks every member signed and writes the genesis;
* ``registrar issue``: a token for one subject, bound to the key the subject
  enrolls from (``user init`` prints it), expiring, single use.

A user, on their own machine: ``user init --dir DIR`` (keys, prints the enrolling
key), then ``user enroll --dir DIR --token FILE --genesis FILE --peer ID=ADDRESS``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from agents.cli.base import (ENV_PASSPHRASE, CliError, UsageError, check_input_file, check_output_path, doing,
                              fail, parse_attributes, run, unlock_options)
from agents.cli.output import print_json
from agents.errors import AgentError

__all__ = ["consortium_manifest_main", "consortium_change_main", "consortium_sign_change_main", "consortium_genesis_main", "consortium_seal_main", "consortium_sign_main", "org_init_main",
           "org_profile_main", "registrar_issue_main", "user_enroll_main", "user_init_main"]

DEFAULT_PORT = 7400


class _OrgFailure(CliError):
    """An OrgError, whose message already reads "<what failed>: <why>; <what to do>"."""

    def __init__(self, message: str):
        AgentError.__init__(self, message)
        self.what, self.why, self.todo = message, "", ""


@contextlib.contextmanager
def _doing(what: str) -> Iterator[None]:
    """:func:`agents.cli.base.doing`, printing agents.org's own messages as they are."""
    from agents.org import OrgError

    with doing(what):
        try:
            yield
        except OrgError as exc:
            raise _OrgFailure(str(exc)) from None


def _parser(command: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"emrshare {command}", description=description)


def _parse(p: argparse.ArgumentParser, argv: list[str], *, json_help: str, unlock: str | None = None,
           org_dir: bool = False, creates: bool = False) -> argparse.Namespace:
    """Parse ``argv`` after adding the options org commands share: ``--json`` (``json_help``),
    ``--org-dir`` (with ``org_dir``) and the options that unlock ``unlock``'s keys (``creates``:
    the command creates those keys, and a missing key file)."""
    if org_dir:
        p.add_argument("--org-dir", required=True, type=Path, help="this organization's directory")
    p.add_argument("--json", action="store_true", help=json_help)
    if unlock is not None:
        unlock_options(
            p, passphrase_help=f"a file holding the passphrase of {unlock} keys (its first line; Argon2id)"
            + ("; write it before, e.g. `umask 077; openssl rand -base64 24 > F`" if creates else "")
            + "; not inside the directory",
            key_file_help=f"a 32-byte key file that unlocks {unlock} keys "
            + ("(created, 32 random bytes, if absent)" if creates else "(the one the keys were made with)")
            + "; not inside the directory")
    return p.parse_args(argv)


def _unlock(args: argparse.Namespace, what: str, *, create_key_file: bool = False,
            outside: Path | None = None) -> Any:
    """The Unlock the options give; ``outside``: refuse a key or passphrase file inside it
    (before a key file is created)."""
    from agents.keys import KeyStore
    from agents.org import Unlock

    if outside is not None and (args.key_file is not None or args.passphrase_file is not None):
        probe = Unlock(passphrase="-") if args.key_file is None else Unlock(key_file=args.key_file)
        with _doing(what):
            probe.check_outside(outside, what, passphrase_file=args.passphrase_file)
    if args.key_file is not None:
        if create_key_file and not args.key_file.exists():
            check_output_path(args.key_file, what)
            KeyStore.create_key_file(args.key_file)
            print(f"created key file {args.key_file} (32 random bytes): it unlocks the keys; keep it safe, "
                  "outside the directory", file=sys.stderr)
        check_input_file(args.key_file, what)
        return Unlock(key_file=args.key_file)
    if args.passphrase_file is not None:
        if create_key_file and not args.passphrase_file.exists():
            fail(what, f"{args.passphrase_file}: no such file (the passphrase is not made for you)",
                 f"write a passphrase on its first line first (`umask 077; openssl rand -base64 24 > "
                 f"{args.passphrase_file}`), or give --key-file F instead (created if absent)")
        check_input_file(args.passphrase_file, what)
        return Unlock.from_files(args.passphrase_file, None)
    passphrase = os.environ.get(ENV_PASSPHRASE)
    if passphrase:
        return Unlock(passphrase=passphrase)
    fail(what, f"no passphrase or key file to {'protect' if create_key_file else 'unlock'} the keys",
         f"give --passphrase-file or --key-file (kept outside the directory), or set {ENV_PASSPHRASE}")


def _org_dir(args: argparse.Namespace, what: str) -> Any:
    from agents.org import OrgDir

    directory = OrgDir(args.org_dir if hasattr(args, "org_dir") else args.dir)
    if not directory.exists():
        fail(what, f"no organization in {directory.dir}", f"create it with `emrshare org init --dir {directory.dir}`")
    directory.unlock = _unlock(args, what)
    return directory


# ------------------------------------------------------------------ org


def org_init_main(argv: list[str]) -> int:
    p = _parser("org init", "Create a hospital's keys, TLS CA and node "
                "certificates on its own machine, and its public profile (DIR/profile.json).")
    p.add_argument("--org", required=True, help="the organization id (e.g. h1; [A-Za-z0-9._:@-])")
    p.add_argument("--name", default=None, help="display name (default: the id)")
    p.add_argument("--dir", required=True, type=Path, help="the organization directory to create (must be new)")
    p.add_argument("--peers", type=int, default=1, help="peers (default 1), ids peer-ORG-N")
    p.add_argument("--storage-nodes", type=int, default=0, help="storage nodes (default 0), ids storage-ORG-N")
    p.add_argument("--orderer", action="store_true", help="also an orderer node, id orderer-ORG")
    p.add_argument("--host", default="127.0.0.1", help="the host nodes listen on (in addresses and TLS SANs)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"first port; nodes take consecutive ports (default {DEFAULT_PORT})")
    p.add_argument("--address", action="append", default=[], metavar="ID=tcp://HOST:PORT",
                   help="one node's address (repeatable; overrides --host/--port for it)")
    args = _parse(p, argv, json_help="print the profile as JSON", unlock="the organization's", creates=True)
    what = f"org init {args.org}"

    def body() -> int:
        from agents.org import default_node_ids, init_org

        if args.peers < 0 or args.storage_nodes < 0 or not 0 < args.port < 65536:
            raise UsageError(what, "--peers and --storage-nodes must be >= 0, --port 1..65535", "fix the numbers")
        nodes = default_node_ids(args.org, args.peers, args.storage_nodes, args.orderer)
        if not nodes:
            raise UsageError(what, "no nodes", "give --peers, --storage-nodes or --orderer")
        addresses = {n: f"tcp://{args.host}:{args.port + i}" for i, (n, _) in enumerate(nodes)}
        for item in args.address:
            node, sep, address = item.partition("=")
            if not sep or node not in addresses or not address.startswith("tcp://"):
                raise UsageError(what, f"--address {item!r}", f"give ID=tcp://HOST:PORT for one of "
                                                              f"{', '.join(addresses)}")
            addresses[node] = address
        if args.dir.exists() and not args.dir.is_dir():
            fail(what, f"--dir {args.dir} is a file", "give a new directory")
        if args.dir.is_dir() and any(args.dir.iterdir()):
            held = "already holds an organization" if (args.dir / "profile.json").exists() else "is not empty"
            fail(what, f"--dir {args.dir} {held}", "give a new (or empty) directory")
        unlock = _unlock(args, what, create_key_file=True, outside=args.dir)
        with _doing(what):
            profile = init_org(args.dir, args.org, unlock, nodes=nodes, addresses=addresses, name=args.name,
                               passphrase_file=args.passphrase_file)
        if args.json:
            print(profile.to_json())
            return 0
        print(f"organization {profile.org} created in {args.dir}")
        for n in profile.nodes:
            print(f"  {n.id:<24} {n.role:<8} {n.address}")
        print(f"public profile: {args.dir / 'profile.json'} (send it to the other members)")
        print("keep the passphrase or key file away from this directory; it unlocks every key in it")
        return 0

    return run(body, what)


def org_profile_main(argv: list[str]) -> int:
    p = _parser("org profile", "Print (or copy with --out) an organization's public profile.")
    p.add_argument("--dir", required=True, type=Path, help="the organization directory")
    p.add_argument("--out", default=None, help="write the profile to this file instead of printing it")
    args = _parse(p, argv, json_help="print the profile as JSON (the default with --out)")
    what = "org profile"

    def body() -> int:
        from agents.org import OrgDir

        with _doing(what):
            profile = OrgDir(args.dir).profile()
        if args.out:
            check_output_path(args.out, what)
            Path(args.out).write_text(profile.to_json())
            print(f"profile of {profile.org} written to {args.out}", file=sys.stderr)
        elif args.json:
            print(profile.to_json())
        else:
            print(f"organization {profile.org} ({profile.name})")
            print(f"  admin key      {profile.admin_key.hex()}")
            print(f"  registrar key  {profile.registrar_key.hex()}")
            for n in profile.nodes:
                print(f"  {n.id:<24} {n.role:<8} {n.address}  ecdsa {n.ecdsa_key.hex()[:16]}...")
        return 0

    return run(body, what)


# ------------------------------------------------------------------ consortium


def _read_profiles(paths: list[str], what: str) -> list[Any]:
    from agents.org import OrgProfile

    out = []
    for path in paths:
        p = Path(path)
        p = check_input_file(p / "profile.json" if p.is_dir() else p, what)
        with _doing(what):
            out.append(OrgProfile.from_json(p.read_text(), source=str(p)))
    return out


def _summary(config: Any, signatures: dict[str, bytes]) -> dict[str, Any]:
    return {"consortium": config.name, "digest": config.digest().hex(), "threshold": config.threshold,
            "orderer": config.orderer_id, "orderers": list(config.orderer_ids),
            "ordering": "etcd" if config.orderers else "embedded", "max_skew_ms": config.max_skew_ms, "created_at": config.created_at,
            "orgs": [{"id": o.id, "name": o.name, "signed": o.id in signatures, "admin_key": o.admin_key.hex()}
                     for o in config.orgs],
            "peers": [{"id": p.id, "org": p.org, "index": p.index} for p in config.peers]}


def _print_summary(s: dict[str, Any]) -> None:
    orderers = (f"orderer nodes {', '.join(s['orderers'])} (etcd ordering)" if s["ordering"] == "etcd"
                else f"orderer {s['orderer']}")
    print(f"consortium {s['consortium']}: threshold {s['threshold']} of {len(s['peers'])} peers, {orderers}")
    print(f"  configuration digest {s['digest']}")
    if "signers" in s:  # a change: the current members approve it, whatever it adds or removes
        print(f"  members after the change: {', '.join(o['id'] for o in s['orgs'])}")
        print(f"  approvals (more than half of the current members, {s['signers_needed']} of {len(s['signers'])}):")
        orgs = s["signers"]
    else:
        orgs = s["orgs"]
    for o in orgs:  # the admin key's start, to compare with the member's `emrshare org profile`
        print(f"  {o['id']:<16} {'signed' if o['signed'] else 'NOT signed':<11}  admin key {o['admin_key'][:16]}...")
    for p in s["peers"]:
        print(f"  peer {p['id']:<20} {p['org']:<16} proxy index {p['index']}")


def _change_summary(change: Any) -> dict[str, Any]:
    """The summary of a configuration change: the new configuration, and who of the current
    members (those who approve it) signed."""
    return {**_summary(change.new, change.signatures), "seq": change.seq, "configuration": change.seq + 1,
            "signers": [{"id": o.id, "signed": o.id in change.signatures, "admin_key": o.admin_key.hex()}
                        for o in change.current.orgs],
            "signers_needed": len(change.current.orgs) // 2 + 1,
            "signed_by": sorted(change.signatures), "needs": change.missing()}


def _show_summary(args: argparse.Namespace, summary: dict[str, Any], then: str) -> None:
    """Print ``summary`` as JSON with ``--json``, else as text and the line ``then``."""
    if args.json:
        print_json(summary)
    else:
        _print_summary(summary)
        print(then)


def consortium_genesis_main(argv: list[str]) -> int:
    p = _parser("consortium genesis", "Build the unsigned genesis draft from the members' profiles.")
    p.add_argument("--profile", action="append", required=True, metavar="FILE",
                   help="a member's profile.json (repeat for each member; proxy indices follow this order)")
    p.add_argument("--threshold", type=int, required=True, help="re-encryption shares needed (t of the peers)")
    p.add_argument("--name", default="emrshare", help="consortium name (default emrshare)")
    p.add_argument("--orderer", default=None, help="the orderer node id (default: the first profile's orderer)")
    p.add_argument("--ordering", choices=("embedded", "etcd"), default="embedded",
                   help="etcd: every profile's orderer node joins the orderer set, ordering on an etcd cluster "
                        "(docs/ordering.md); embedded (default): the one --orderer node")
    p.add_argument("--max-skew-ms", type=int, default=120_000,
                   help="how far a transaction's time may be from its block's (ms, default 120000)")
    p.add_argument("--out", required=True, help="where to write the draft")
    args = _parse(p, argv, json_help="print the draft's summary as JSON")
    what = "consortium genesis"

    def body() -> int:
        from agents.org import build_config, draft

        profiles = _read_profiles(args.profile, what)
        check_output_path(args.out, what)
        with _doing(what):
            config = build_config(profiles, name=args.name, threshold=args.threshold, orderer=args.orderer,
                                  created_at=int(time.time() * 1000), max_skew_ms=args.max_skew_ms,
                                  orderer_set=args.ordering == "etcd")
        Path(args.out).write_bytes(draft(config))
        _show_summary(args, _summary(config, {}),
                      f"draft written to {args.out}; each member runs `emrshare consortium sign --org-dir DIR {args.out}`")
        return 0

    return run(body, what)


def consortium_sign_main(argv: list[str]) -> int:
    p = _parser("consortium sign", "Add this organization's signature (its admin key) to a genesis draft.")
    p.add_argument("draft", help="the genesis draft (signed in place unless --out)")
    p.add_argument("--out", default=None, help="write the signed draft here instead of in place")
    args = _parse(p, argv, json_help="print the summary as JSON", unlock="the organization's", org_dir=True)
    what = f"consortium sign {args.draft}"

    def body() -> int:
        from agents.org import read_draft, sign_draft

        path = check_input_file(args.draft, what)
        out = Path(args.out) if args.out else path
        check_output_path(out, what)
        org_dir = _org_dir(args, what)
        with _doing(what):
            signed = sign_draft(path.read_bytes(), org_dir, source=str(path))
            config, signatures = read_draft(signed)
        from agents.keys import atomic_write

        atomic_write(out, signed, mode=0o644)
        summary = _summary(config, signatures)
        _show_summary(args, summary, f"signed draft written to {out}")
        return 0

    return run(body, what)


def consortium_seal_main(argv: list[str]) -> int:
    p = _parser("consortium seal", "Check that every member signed the draft; write the genesis.")
    p.add_argument("draft", help="the signed genesis draft")
    p.add_argument("--out", required=True, help="where to write the genesis (what every node and user takes)")
    args = _parse(p, argv, json_help="print the summary as JSON")
    what = f"consortium seal {args.draft}"

    def body() -> int:
        from agents.org import read_draft, seal

        path = check_input_file(args.draft, what)
        check_output_path(args.out, what)
        raw = path.read_bytes()
        with _doing(what):
            genesis = seal(raw, source=str(path))
            _, signatures = read_draft(raw)
        Path(args.out).write_bytes(genesis.to_bytes())
        summary = {**_summary(genesis.config, signatures), "genesis_hash": genesis.hash.hex()}
        _show_summary(args, summary, f"genesis {genesis.hash.hex()} written to {args.out}")
        return 0

    return run(body, what)


def consortium_manifest_main(argv: list[str]) -> int:
    p = _parser("consortium manifest", "Write the clients' manifest.json (the genesis and every node's "
                "address and key) from the sealed genesis and the members' profiles.")
    p.add_argument("--genesis", required=True, type=Path, help="the sealed genesis")
    p.add_argument("--profile", action="append", required=True, metavar="FILE",
                   help="a member's profile.json (repeat for each member)")
    p.add_argument("--replicas", type=int, default=3, help="storage copies per blob (default 3, at most the nodes)")
    p.add_argument("--write-quorum", type=int, default=2, help="copies a put waits for (default 2)")
    p.add_argument("--out", required=True, help="where to write manifest.json")
    args = _parse(p, argv, json_help="print the manifest")
    what = "consortium manifest"

    def body() -> int:
        from agents.org import manifest_for
        from core.errors import DecodeError

        genesis = check_input_file(args.genesis, what).read_bytes()
        profiles = _read_profiles(args.profile, what)
        check_output_path(args.out, what)
        try:
            with _doing(what):
                manifest = manifest_for(genesis, profiles, replicas=args.replicas, write_quorum=args.write_quorum)
        except DecodeError as exc:
            fail(what, f"{args.genesis} is not a sealed genesis: {exc}", "seal it with `emrshare consortium seal`")
        Path(args.out).write_text(manifest.to_json())
        if args.json:
            print(manifest.to_json())
        else:
            n = len(manifest.storage)
            storage = ("no storage nodes (no record can be stored)" if not n else
                       f"{n} storage node{'' if n == 1 else 's'} ({manifest.replicas} "
                       f"cop{'y' if manifest.replicas == 1 else 'ies'} per record, puts wait for "
                       f"{manifest.write_quorum})")
            print(f"manifest of {manifest.consortium}: {len(manifest.peers)} peers, {storage}, "
                  f"orderer {manifest.orderer}; written to {args.out}")
        return 0

    return run(body, what)


def consortium_change_main(argv: list[str]) -> int:
    p = _parser("consortium change", "Prepare adding or removing one member organization (a change file "
                "the members sign with `emrshare consortium sign-change`).")
    base = p.add_mutually_exclusive_group(required=True)
    base.add_argument("--genesis", type=Path, default=None, help="change the genesis's configuration (first change)")
    base.add_argument("--after", type=Path, default=None,
                      help="change the configuration a committed change file made (every later change)")
    what_ = p.add_mutually_exclusive_group(required=True)
    what_.add_argument("--add", type=Path, default=None, metavar="PROFILE",
                       help="add the organization of this profile.json (its peers take the next proxy indices)")
    what_.add_argument("--remove", default=None, metavar="ORG", help="remove this member organization")
    p.add_argument("--threshold", type=int, default=None, help="the new threshold (default: unchanged)")
    p.add_argument("--out", required=True, help="where to write the change file")
    args = _parse(p, argv, json_help="print the new configuration's summary as JSON")
    what = "consortium change"

    def body() -> int:
        from agents.org import ConfigChange, change_draft

        genesis = check_input_file(args.genesis, what).read_bytes() if args.genesis else None
        after = None
        if args.after is not None:
            with _doing(what):
                after = ConfigChange.from_json(check_input_file(args.after, what).read_text(), source=str(args.after))
        add = _read_profiles([str(args.add)], what)[0] if args.add is not None else None
        check_output_path(args.out, what)
        with _doing(what):
            change = change_draft(genesis=genesis, after=after, add=add, remove=args.remove,
                                  threshold=args.threshold)
        Path(args.out).write_text(change.to_json())
        _show_summary(args, _change_summary(change),
                      f"the change to configuration {change.seq + 1} written to {args.out}; it needs "
                      f"{change.missing()} member signature(s), each member running "
                      f"`emrshare consortium sign-change --org-dir DIR {args.out}`")
        return 0

    return run(body, what)


def consortium_sign_change_main(argv: list[str]) -> int:
    p = _parser("consortium sign-change", "Approve a configuration change as this organization (its admin key).")
    p.add_argument("change", help="the change file (signed in place)")
    args = _parse(p, argv, json_help="print the summary as JSON", unlock="the organization's", org_dir=True)
    what = f"consortium sign-change {args.change}"

    def body() -> int:
        from agents.keys import atomic_write
        from agents.org import ConfigChange, sign_change

        path = check_input_file(args.change, what)
        org_dir = _org_dir(args, what)
        with _doing(what):
            change = sign_change(ConfigChange.from_json(path.read_text(), source=str(path)), org_dir)
        atomic_write(path, change.to_json().encode(), mode=0o644)
        then = ("enough signatures: a member's peer can submit it (`emrshare consortium submit-change`)"
                if not change.missing() else f"needs {change.missing()} more")
        _show_summary(args, _change_summary(change), f"signed by {', '.join(sorted(change.signatures))}; {then}")
        return 0

    return run(body, what)


# ------------------------------------------------------------------ registrar


def _duration(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1:] in units:
            value = float(text[:-1]) * units[text[-1]]
        else:
            value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 30m, 1h, 7d") from None
    if not 0 < value <= 366 * 86400:
        raise argparse.ArgumentTypeError("a token lives more than 0 s and at most a year")
    return int(value)


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if not 0 < value <= 3650:
        raise argparse.ArgumentTypeError("a certificate lives 1 to 3650 days")
    return value


def registrar_issue_main(argv: list[str]) -> int:
    p = _parser("registrar issue", "Issue an enrollment token for one subject, bound to the key it "
                "enrolls from, and its TLS client certificate from this organization's TLS CA (from the "
                "request `emrshare user init` wrote).")
    p.add_argument("--subject", required=True, help="the user id to enroll")
    p.add_argument("--role", required=True, help="the certificate's role (patient, doctor, nurse, ...)")
    p.add_argument("--attr", action="append", default=[], metavar="K=V",
                   help="another certificate attribute (repeatable; e.g. department=cardiology)")
    key = p.add_mutually_exclusive_group(required=True)
    key.add_argument("--request", type=Path, default=None, metavar="FILE",
                     help="the subject's request.json (enrolling key and TLS public key): the token also "
                          "carries a TLS client certificate")
    key.add_argument("--enroll-key", default=None, metavar="HEX",
                     help="the subject's enrolling public key (hex or enroll:<hex>); no TLS certificate: "
                          "enrolls only at nodes running without TLS")
    key.add_argument("--enroll-key-file", type=Path, default=None, metavar="FILE",
                     help="a file holding the enrolling public key (DIR/enroll.pub after `user init`); "
                          "no TLS certificate, as --enroll-key")
    p.add_argument("--expires", type=_duration, default=86400, metavar="DURATION",
                   help="how long the token is valid: 90s, 30m, 1h, 7d (default 1d)")
    p.add_argument("--cert-days", type=_days, default=365, metavar="DAYS",
                   help="how long the TLS certificate is valid, in days (default 365; never beyond the CA's)")
    p.add_argument("--out", required=True, help="where to write the token file (hand it to the subject)")
    args = _parse(p, argv, json_help="print the token file's fields as JSON", unlock="the organization's",
                  org_dir=True)
    what = f"registrar issue {args.subject}"

    def body() -> int:
        from agents.org import EnrollRequest, issue_token, parse_enroll_key, parse_tls_key

        attributes = {"role": args.role, **parse_attributes(args.attr, what)}
        request = None
        if args.request is not None:
            text = check_input_file(args.request, what).read_text()
        elif args.enroll_key_file is not None:
            text = check_input_file(args.enroll_key_file, what).read_text()
        else:
            text = args.enroll_key
        check_output_path(args.out, what)
        org_dir = _org_dir(args, what)
        with _doing(what):
            if args.request is not None:
                request = EnrollRequest.from_json(text, source=str(args.request))
                enroll_key, tls_key = request.enroll_key, parse_tls_key(request.tls_key, source=str(args.request))
            else:
                enroll_key, tls_key = parse_enroll_key(text), None
            token = issue_token(org_dir, subject=args.subject, attributes=attributes, enroll_key=enroll_key,
                                expires=int(time.time()) + args.expires, tls_key=tls_key, cert_days=args.cert_days)
        from agents.keys import atomic_write

        atomic_write(Path(args.out), token.to_json().encode(), mode=0o600)
        if args.json:
            print(token.to_json())
        else:
            shown = ", ".join(f"{k}={v}" for k, v in attributes.items())
            print(f"token for {token.subject} of {token.org} ({shown}) written to {args.out}; "
                  f"valid until {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(token.expires))}, once, "
                  f"from enrolling public key {token.enroll_key.hex()} only (compare it with the one "
                  "`user init` printed for the person: a request swapped on its way enrolls its swapper)"
                  + (f"; with a TLS client certificate for {args.cert_days} days" if token.tls_cert else
                     "; no TLS certificate (give --request for one)"))
        return 0

    return run(body, what)


# ------------------------------------------------------------------ user


def _user_store(directory: Path, unlock: Any) -> Any:
    """The user's key store in ``directory``, under ``unlock`` (agents.org.Unlock)."""
    from agents.client import KEY_FILE
    from agents.keys import KeyStore

    return KeyStore(directory / KEY_FILE, passphrase=unlock.passphrase, key_file=unlock.key_file)


def user_init_main(argv: list[str]) -> int:
    p = _parser("user init", "Create your keys (and your TLS key) in your own directory and write the "
                "public request your registrar issues your enrollment token and TLS certificate from.")
    p.add_argument("--dir", required=True, type=Path, help="your key directory (e.g. ~/.emrshare)")
    p.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="also write the request (public: enrolling key and TLS public key) to FILE for the "
                        "registrar (it is always in DIR/request.json)")
    args = _parse(p, argv, json_help="print JSON", unlock="your", creates=True)
    what = f"user init {args.dir}"

    def body() -> int:
        from agents.cli.userdir import REQUEST_FILE, tls_store
        from agents.consortium import enroll_id
        from agents.keys import AgentKeys, atomic_write
        from agents.org import EnrollRequest, new_user_tls_key, tls_public_pem

        if args.out is not None:
            check_output_path(args.out, what)
        unlock = _unlock(args, what, create_key_file=True, outside=args.dir)
        store = _user_store(args.dir, unlock)
        tls = tls_store(args.dir, passphrase=unlock.passphrase, key_file=unlock.key_file)
        created = []
        if store.exists():
            with _doing(what):
                keys = AgentKeys.from_bytes(store.load())
        else:
            args.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            keys = AgentKeys.generate()
            store.save(keys.to_bytes())
            created.append("keys")
        if tls.exists():  # an older directory may lack it: made below, under the same unlock
            with _doing(what):
                tls_public = tls_public_pem(tls.load())
        else:
            der, tls_public = new_user_tls_key()
            tls.save(der)
            created.append("TLS key")
        request = EnrollRequest(keys.ecdsa_public, tls_public).to_json().encode()
        atomic_write(args.dir / "enroll.pub", (keys.ecdsa_public.hex() + "\n").encode(), mode=0o644)
        atomic_write(args.dir / REQUEST_FILE, request, mode=0o644)
        if args.out is not None:
            atomic_write(args.out, request, mode=0o644)
        if args.json:
            print_json({"dir": str(args.dir), "created": created, "enroll_key": keys.ecdsa_public.hex(),
                        "enroll_id": enroll_id(keys.ecdsa_public), "tls_key": tls_public,
                        "request": str(args.out or args.dir / REQUEST_FILE)})
        else:
            print(f"{'created ' + ' and '.join(created) if created else 'found keys'} in {args.dir}")
            print(f"enrolling public key: {keys.ecdsa_public.hex()}")
            print(f"give your registrar {args.out or args.dir / REQUEST_FILE} (your enrolling key and TLS public "
                  "key, nothing secret); they issue your token and TLS certificate with "
                  "`emrshare registrar issue --request FILE`")
        return 0

    return run(body, what)


def user_enroll_main(argv: list[str]) -> int:
    p = _parser("user enroll", "Enroll with your organization's peer using the registrar's token, over "
                "mutual TLS with the certificate the token carries; your certificates and the consortium's "
                "files go in your directory. Without --token, in a directory already enrolled: save the "
                "consortium's manifest (--manifest) there.")
    p.add_argument("--dir", required=True, type=Path, help="your key directory (made by `emrshare user init`)")
    p.add_argument("--token", type=Path, default=None,
                   help="the token file your registrar gave you (needed unless already enrolled)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--genesis", type=Path, default=None, help="the consortium's genesis file")
    src.add_argument("--manifest", type=Path, default=None,
                     help="the consortium's manifest.json (genesis and every node's address), kept in your directory")
    p.add_argument("--peer", default=None, metavar="[ID=]tcp://HOST:PORT",
                   help="a peer of your organization (ID defaults to its first peer in the genesis; "
                        "with --manifest, its address there)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the peer (default 30)")
    args = _parse(p, argv, json_help="print the certificate as JSON", unlock="your")
    what = f"user enroll {args.dir}"

    def body() -> int:
        import datetime

        import trio

        from agents.cli.user import _open
        from agents.cli.userdir import META_FILE, TLS_CERT_FILE, tls_store, user_transport
        from agents.client import UserConfig, open_agent
        from agents.consortium import Manifest, enroll_id
        from agents.keys import AgentKeys, atomic_write
        from agents.org import TokenFile, check_user_cert, genesis_manifest, parse_tls_key, tls_public_pem
        from core.errors import DecodeError
        from core.ledger import parse_genesis

        full = None
        if args.manifest is not None:
            try:
                full = Manifest.from_json(check_input_file(args.manifest, what).read_text())
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                fail(what, f"{args.manifest} is not a manifest ({exc})", "ask your organization for manifest.json")
            genesis = full.genesis
        else:
            genesis = check_input_file(args.genesis, what).read_bytes()
        if args.token is None:
            return _save_manifest(args, full, what)
        token_text = check_input_file(args.token, what).read_text()
        if full is None and args.peer is None:
            raise UsageError(what, "--peer is needed with --genesis", "give --peer [ID=]tcp://HOST:PORT")
        unlock = _unlock(args, what)
        store = _user_store(args.dir, unlock)
        if not store.exists():
            fail(what, f"no keys in {args.dir}", f"create them with `emrshare user init --dir {args.dir}`")
        with _doing(what):
            token = TokenFile.from_json(token_text, source=str(args.token))
            keys = AgentKeys.from_bytes(store.load())
        if token.enroll_key != keys.ecdsa_public:
            fail(what, f"the token is bound to another key than the one in {args.dir}",
                 "give the registrar the request `emrshare user init` wrote in this directory")
        try:
            config = parse_genesis(genesis).config
        except DecodeError as exc:
            fail(what, f"{args.genesis or args.manifest} does not hold a sealed genesis: {exc}",
                 "ask your organization for the genesis")
        transport = None
        if token.tls_cert:  # mutual TLS: the certificate must be ours, from our organization's CA
            tls = tls_store(args.dir, passphrase=unlock.passphrase, key_file=unlock.key_file)
            if not tls.exists():
                fail(what, f"no TLS key in {args.dir} for the token's certificate",
                     f"run `emrshare user init --dir {args.dir}` and have the registrar issue the token from "
                     "the request it writes")
            org_info = config.org(token.org)
            if org_info is None or not org_info.tls_ca:
                fail(what, f"{token.org} is not a member with a TLS CA in the genesis",
                     "check the token and the genesis")
            with _doing(what):
                tls_der = tls.load()
                check_user_cert(token.tls_cert, subject=token.subject, org=token.org, ca_pem=org_info.tls_ca,
                                tls_key=parse_tls_key(tls_public_pem(tls_der)),
                                now=datetime.datetime.now(datetime.timezone.utc))
            transport = user_transport(token.tls_cert.encode(), tls_der, genesis)
        peer_id, sep, address = (args.peer or "").rpartition("=")
        if full is not None and not address:
            peer_id = next((p for p in full.peer_orgs.get(token.org, []) if p in full.agents), "")
            address, sep = full.agents.get(peer_id, ""), "="
        if not sep:
            peers = [p.id for p in config.peers if p.org == token.org]
            if not peers:
                fail(what, f"{token.org} has no peer in the genesis", "check the genesis and the token")
            peer_id = peers[0]
        if config.peer(peer_id) is None or config.peer(peer_id).org != token.org:
            fail(what, f"{peer_id} is not a peer of {token.org}", "give --peer ID=ADDRESS for one of its peers")
        if not address.startswith("tcp://"):
            raise UsageError(what, f"--peer {args.peer!r}", "give [ID=]tcp://HOST:PORT")
        if full is not None:
            manifest = full
            manifest.agents = {**manifest.agents, peer_id: address}
        else:
            manifest = genesis_manifest(genesis, {peer_id: address})
        user = UserConfig(subject=token.subject, org=token.org, attributes=dict(token.attributes),
                          data_dir=args.dir, manifest=manifest, passphrase=unlock.passphrase,
                          key_file=unlock.key_file, peer=peer_id, request_timeout=args.timeout)

        async def enroll() -> Any:
            async with _open(dict(manifest.agents), transport) as node:
                async with open_agent(user, node, lambda client: client) as client:
                    return await client.register(token.token)

        with _doing(what):
            cert = trio.run(enroll)
        if token.tls_cert:
            atomic_write(args.dir / TLS_CERT_FILE, token.tls_cert.encode(), mode=0o644)
        atomic_write(args.dir / "genesis", genesis, mode=0o644)
        atomic_write(args.dir / "manifest.json", manifest.to_json().encode(), mode=0o644)
        atomic_write(args.dir / META_FILE, json.dumps({"subject": cert.subject, "org": cert.org,
                                                       "manifest": "full" if full else "peer"}).encode(),
                     mode=0o644)
        tls_until = None  # the TLS client certificate's own expiry (renewing it changes this only)
        if token.tls_cert:
            from cryptography import x509

            tls_until = int(x509.load_pem_x509_certificate(token.tls_cert.encode()).not_valid_after_utc.timestamp())
        if args.json:
            print_json({"subject": cert.subject, "org": cert.org, "attributes": dict(cert.attributes),
                        "serial": cert.serial, "issuer": cert.issuer, "valid_until": cert.valid_until,
                        "enroll_id": enroll_id(keys.ecdsa_public), "tls": bool(token.tls_cert),
                        "tls_valid_until": tls_until})
        else:
            print(f"enrolled {cert.subject} of {cert.org} ({cert.role}): certificate {cert.serial} issued by "
                  f"{cert.issuer}, valid until {time.strftime('%Y-%m-%d', time.gmtime(cert.valid_until))}"
                  + (f"; TLS client certificate ({TLS_CERT_FILE}) valid until "
                     f"{time.strftime('%Y-%m-%d', time.gmtime(tls_until))} (over mutual TLS)" if tls_until else ""))
            if not full:
                print(f"your directory knows only {peer_id}'s address: before daily use, save the consortium's "
                      f"manifest with `emrshare user enroll --dir {args.dir} --manifest manifest.json`",
                      file=sys.stderr)
        return 0

    return run(body, what)


def _save_manifest(args: argparse.Namespace, manifest: Any, what: str) -> int:
    """``user enroll --manifest FILE`` without a token, in an enrolled directory: keep the
    consortium's manifest there (same genesis only)."""
    from agents.cli.userdir import META_FILE, read_enrolled
    from agents.keys import atomic_write

    if manifest is None:
        raise UsageError(what, "--token is required", "give the token file your registrar gave you (or, once "
                         "enrolled, --manifest FILE to save the consortium's manifest)")
    enrolled = read_enrolled(args.dir, what)
    if manifest.genesis != enrolled.manifest.genesis:
        fail(what, f"{args.manifest} is of another consortium (another genesis) than the one you enrolled in",
             "ask your organization for this consortium's manifest.json")
    atomic_write(args.dir / "manifest.json", manifest.to_json().encode(), mode=0o644)
    atomic_write(args.dir / META_FILE, json.dumps({"subject": enrolled.subject, "org": enrolled.org,
                                                   "manifest": "full"}).encode(), mode=0o644)
    if args.json:
        print_json({"subject": enrolled.subject, "org": enrolled.org, "manifest": str(args.dir / "manifest.json")})
    else:
        print(f"manifest of {manifest.consortium} saved in {args.dir} for {enrolled.subject}")
    return 0
