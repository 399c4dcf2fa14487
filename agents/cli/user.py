"""``emrshare patient ...`` and ``emrshare doctor ...``: act against a running swarm.

Each command opens the user's agent from ``DIR/users/<subject>`` (keys
encrypted at rest: passphrase from ``EMRSHARE_PASSPHRASE``, a prompt, or
``--key-file``), does one thing, and exits — except ``patient serve``, which
stays up answering doctors' access requests (its address is written to
``DIR/users/<subject>/address`` so doctors' commands can reach it).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from bus import open_node

from agents.errors import AgentError

if TYPE_CHECKING:  # imported where used, to keep the command's start quick
    from agents.client import UserAgent, UserConfig
    from agents.swarm import SwarmFiles
    from core.identity import Certificate

PASS_ENV = "EMRSHARE_PASSPHRASE"


def _user_parser(role: str, attr_help: str) -> tuple[argparse.ArgumentParser, Any, argparse.ArgumentParser]:
    """``emrshare ROLE``'s parser with the options every user takes, its subcommands
    (``dest="cmd"``) and their ``register`` (with ``--attr``): ``(parser, sub, register)``."""
    parser = argparse.ArgumentParser(prog=f"emrshare {role}", description=f"act as a {role} against a running swarm")
    parser.add_argument("--swarm", default="swarm-data", help="the swarm's data directory (default swarm-data)")
    parser.add_argument("--subject", required=True, help="your user id")
    parser.add_argument("--org", help="your hospital (e.g. hospital-a); needed to register")
    parser.add_argument("--key-file", type=Path, help="32-byte key file protecting your keys (instead of a passphrase)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    register = sub.add_parser("register", help="enroll at your hospital's peer")
    register.add_argument("--attr", action="append", default=[],
                          help=attr_help + " (integers, true and false are typed; e.g. officer=true)")
    return parser, sub, register


def _attrs(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"--attr needs NAME=VALUE, got {pair!r}")
        k, v = pair.split("=", 1)
        out[k] = int(v) if v.lstrip("-").isdigit() else {"true": True, "false": False}.get(v, v)
    return out


def _config(args: argparse.Namespace, role: str, attributes: dict[str, Any]):
    from agents.client import UserConfig
    from agents.swarm import SwarmFiles

    files = SwarmFiles(Path(args.swarm))
    if not files.exists:
        raise SystemExit(f"no swarm at {files.dir} (start one with `emrshare swarm up --data {args.swarm}`)")
    passphrase = None
    if args.key_file is None:
        passphrase = os.environ.get(PASS_ENV)
        if passphrase is None:
            if not sys.stdin.isatty():
                raise SystemExit(f"set {PASS_ENV} or give --key-file to unlock your keys")
            passphrase = getpass.getpass(f"passphrase for {args.subject}: ")
    org = args.org or _saved_org(files.user_dir(args.subject)) or ""
    return files, UserConfig(subject=args.subject, org=org, attributes={"role": role, **attributes},
                             data_dir=files.user_dir(args.subject), manifest=files.manifest(),
                             passphrase=passphrase, key_file=args.key_file)


def _saved_org(user_dir: Path) -> str | None:
    meta = user_dir / "cli.json"
    if meta.exists():
        return json.loads(meta.read_text()).get("org")
    return None


def _routes(files, manifest) -> dict[str, str]:
    routes = dict(manifest.agents)
    users = files.dir / "users"
    if users.exists():
        for d in users.iterdir():
            addr = d / "address"
            if addr.exists():
                routes[d.name] = addr.read_text().strip()
    return routes


def _print(obj: Any) -> None:
    def default(o: Any) -> Any:
        if isinstance(o, bytes):
            return o.hex()
        return str(o)

    print(json.dumps(obj, indent=2, sort_keys=True, default=default))


async def _approve_all(request: dict) -> bool:
    print(f"approving request {request.get('request_id')} from {request.get('doctor')}", flush=True)
    return True


async def _register(agent: "UserAgent", files: "SwarmFiles", config: "UserConfig") -> "Certificate":
    """Register ``agent`` with its organization's token (from the swarm's files) and
    remember the organization in the user's directory; returns the certificate."""
    if not config.org:
        raise SystemExit("--org is required to register")
    cert = await agent.register(files.token(config.subject, config.org, config.attributes, agent.enroll_id))
    (config.data_dir / "cli.json").write_text(json.dumps({"org": config.org}))
    return cert


async def _run_patient(args: argparse.Namespace) -> int:
    from agents.patient import PatientAgent

    files, config = _config(args, "patient", _attrs(getattr(args, "attr", [])))
    if args.cmd == "serve":
        config.listen = args.listen
    async with open_node(routes=_routes(files, config.manifest)) as node:
        if args.cmd == "serve":
            address = await node.listen(args.listen)
        approve = _approve_all if args.cmd == "serve" and args.approve else None
        async with PatientAgent.open(config, node=node, approve=approve) as p:
            if args.cmd == "register":
                cert = await _register(p, files, config)
                print(f"registered {cert.subject} at {cert.org} (certificate {cert.serial})")
            elif args.cmd == "store":
                data = Path(args.file)
                rid = await p.store(data, label=args.label, media_type=args.media_type, record_id=args.record_id)
                print(f"stored {rid} under label {args.label}")
            elif args.cmd == "policy":
                standing = () if args.no_standing else (args.standing or None)
                deposited = await p.set_policy(Path(args.file).read_text(), standing=standing)
                print("policy committed")
                for label, mode in sorted(deposited.items()):
                    what = ("the peers may now serve doctors this policy pre-authorizes without you"
                            if mode == "auto" else "usable only under a co-signed emergency access")
                    print(f"standing delegation of {label!r} ({mode}): {what}")
            elif args.cmd == "revoke":
                outcome = await p.revoke(args.grant_id, args.reason, narrow=args.narrow)
                print(f"revoked {args.grant_id}" + (" and narrowed the policy" if args.narrow else ""))
                if outcome["still_allowed"]:
                    print("warning: your policy still allows that doctor; the ledger will not grant it again "
                          "by itself, but you will be asked. To close the door, rerun with --narrow on the "
                          "next revocation or set a narrower policy (higher version)", file=sys.stderr)
            elif args.cmd == "rotate":
                rotated = await p.rotate(args.label)
                if args.json:
                    _print(rotated)
                else:
                    print(f"{args.label}: label key epoch {rotated['epoch']}, re-sealed "
                          f"{len(rotated['resealed'])} records; older grants and standing parts no longer open them")
            elif args.cmd == "away":
                away = await p.while_away(args.since)
                if args.json:
                    _print(away)
                else:
                    _print_away(away)
            elif args.cmd == "records":
                _print(await p.records())
            elif args.cmd == "grants":
                _print(p.grants)
            elif args.cmd == "audit":
                from agents.cli.demo import describe_event

                for e in await p.audit():
                    print(describe_event(e))
            elif args.cmd == "serve":
                (config.data_dir / "address").write_text(address)
                print(f"{config.subject} answering access requests at {address} (Ctrl-C stops)", flush=True)
                try:
                    await trio.sleep_forever()
                finally:
                    (config.data_dir / "address").unlink(missing_ok=True)
    return 0


async def _run_doctor(args: argparse.Namespace) -> int:
    from agents.doctor import DoctorAgent

    attrs = _attrs(getattr(args, "attr", []))
    files, config = _config(args, args.role if hasattr(args, "role") and args.role else "doctor", attrs)
    async with open_node(routes=_routes(files, config.manifest)) as node:
        async with DoctorAgent.open(config, node=node) as d:
            if args.cmd == "register":
                cert = await _register(d, files, config)
                print(f"registered {cert.subject} at {cert.org} with {dict(cert.attributes)}")
            elif args.cmd == "records":
                _print(await d.records(args.patient, args.label))
            elif args.cmd == "request":
                _print(await d.request(args.patient, args.record_id, purpose=args.purpose))
            elif args.cmd == "cosign":
                from agents.doctor import cosign_break_glass

                sig = cosign_break_glass(d.keys.ecdsa_private, args.id, args.doctor, args.patient, args.record_id,
                                         args.reason)
                print(f"{config.subject}={sig.hex()}")
            elif args.cmd == "break-glass":
                cosigners = {}
                for pair in args.cosign:
                    officer, _, sig = pair.partition("=")
                    try:
                        cosigners[officer] = bytes.fromhex(sig)
                    except ValueError:
                        raise SystemExit(f"--cosign needs OFFICER=HEX_SIGNATURE, got {pair!r}") from None
                data = await d.break_glass(args.patient, args.record_id, args.reason, cosigners,
                                           break_glass_id=args.id)
                if args.out:
                    Path(args.out).write_bytes(data)
                    print(f"wrote {len(data)} bytes to {args.out} (emergency access, the patient is notified)")
                else:
                    sys.stdout.buffer.write(data)
            elif args.cmd == "read":
                data = await d.read(args.patient, args.record_id, purpose=args.purpose)
                if args.out:
                    Path(args.out).write_bytes(data)
                    print(f"wrote {len(data)} bytes to {args.out}")
                else:
                    sys.stdout.buffer.write(data)
    return 0


def _print_away(away: dict) -> None:
    from agents.cli.demo import describe_event

    print(f"since block {away['since']} (now {away['height']}):")
    for title, key in (("emergency accesses", "emergencies"), ("read under emergency access", "emergency_reads"),
                       ("granted from your standing delegation", "standing_grants"),
                       ("re-encrypted under standing grants", "standing_reads"),
                       ("denied by your policy", "denied"), ("waiting for you", "waiting")):
        events = away[key]
        print(f"  {title}: {len(events)}")
        for e in events:
            print(f"    {describe_event(e)}")


def patient_main(argv: list[str]) -> int:
    parser, sub, _ = _user_parser("patient", "extra attribute NAME=VALUE")
    s = sub.add_parser("store", help="seal and store a record")
    s.add_argument("file")
    s.add_argument("--label", required=True)
    s.add_argument("--media-type", default="application/fhir+json")
    s.add_argument("--record-id")
    p = sub.add_parser("policy", help="set your access policy from a policy text file (docs/policy.md)")
    p.add_argument("file")
    p.add_argument("--standing", action="append", metavar="LABEL",
                   help="let the peers serve doctors the policy pre-authorizes for LABEL while you are offline "
                        "(repeatable; default: every label an 'approval auto' rule names; docs/security.md)")
    p.add_argument("--no-standing", action="store_true",
                   help="no standing delegation: every new doctor waits for your agent")
    v = sub.add_parser("revoke", help="revoke a grant")
    v.add_argument("grant_id")
    v.add_argument("--reason", default="revoked by patient")
    v.add_argument("--narrow", action="store_true",
                   help="in the same transaction, commit your policy with a rule denying that doctor the label")
    ro = sub.add_parser("rotate", help="re-seal a label's records under a fresh label key (after a revocation)")
    ro.add_argument("label", help="the label to rotate")
    ro.add_argument("--json", action="store_true", help="print JSON")
    a = sub.add_parser("away", help="what happened while you were offline (standing grants, emergency accesses)")
    a.add_argument("--since", type=int, default=None, help="from this block height (default: since the last call)")
    a.add_argument("--json", action="store_true", help="print JSON")
    sub.add_parser("records", help="list your records on the ledger")
    sub.add_parser("grants", help="list the grants you issued")
    sub.add_parser("audit", help="print your audit trail")
    sv = sub.add_parser("serve", help="stay up and answer doctors' access requests")
    sv.add_argument("--listen", default="tcp://127.0.0.1:0")
    sv.add_argument("--approve", action="store_true",
                    help="approve requests whose policy asks for the patient's approval (default: refuse them)")
    args = parser.parse_args(argv)
    return _guard(lambda: trio.run(_run_patient, args))


def doctor_main(argv: list[str]) -> int:
    parser, sub, r = _user_parser("doctor", "attribute NAME=VALUE (e.g. department=cardiology)")
    r.add_argument("--role", default="doctor")
    rs = sub.add_parser("records", help="list a patient's records")
    rs.add_argument("patient")
    rs.add_argument("--label")
    for name, help_ in (("request", "submit an access request and print the decision"),
                        ("read", "read a record (request, authorization, re-encryption, decryption)")):
        c = sub.add_parser(name, help=help_)
        c.add_argument("patient")
        c.add_argument("record_id")
        c.add_argument("--purpose")
        if name == "read":
            c.add_argument("--out", help="write the record here (default: stdout)")
    cs = sub.add_parser("cosign", help="as an officer: co-sign a doctor's emergency access (prints OFFICER=SIG)")
    bg = sub.add_parser("break-glass", help="emergency access without the patient, with officers' co-signatures")
    for c in (cs, bg):
        c.add_argument("patient", help="the patient")
        c.add_argument("record_id", help="the record")
        c.add_argument("--reason", required=True, help="why (the patient will read it)")
        c.add_argument("--id", required=True, help="the break-glass id every co-signer signs (e.g. bg-0042)")
    cs.add_argument("--doctor", required=True, help="the requesting doctor")
    bg.add_argument("--cosign", action="append", default=[], metavar="OFFICER=SIG",
                    help="an officer's co-signature from `emrshare doctor cosign` (repeat per officer)")
    bg.add_argument("--out", help="write the record here (default: stdout)")
    args = parser.parse_args(argv)
    return _guard(lambda: trio.run(_run_doctor, args))


def _leaf(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of ``kinds`` in ``exc``, looking inside (trio) exception groups."""
    if isinstance(exc, kinds):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _leaf(inner, kinds)
            if found is not None:
                return found
    return None


def _guard(fn) -> int:
    from agents.keys import KeyStoreError

    try:
        return fn() or 0
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        found = _leaf(exc, (AgentError, KeyboardInterrupt))
        if isinstance(found, KeyStoreError):  # an AgentError, reported without its code
            print(f"error: {found}", file=sys.stderr)
            return 1
        if isinstance(found, AgentError):
            print(f"error ({found.code}): {found}", file=sys.stderr)
            return 1
        if isinstance(found, KeyboardInterrupt):
            return 130
        raise
