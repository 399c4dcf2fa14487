"""``emrshare patient ...`` and ``emrshare doctor ...``: act against a running swarm,
or a consortium, from your own key directory.

Each command opens the user's agent from ``DIR/users/<subject>`` of a swarm
(``--swarm``), or from the user's own directory (``--dir``, after ``emrshare
user init`` and ``user enroll``: :mod:`agents.cli.userdir`; subject, organization,
routes and TLS certificate come from there, and the node is reached over mutual
TLS when the directory holds a TLS certificate), with keys encrypted at rest
(passphrase from ``EMRSHARE_PASSPHRASE``, a prompt, or ``--key-file``), does
one thing, and exits — except ``patient serve``, which stays up answering
doctors' access requests (its address is written to
``DIR/users/<subject>/address`` so doctors' commands can reach it) until
Ctrl-C or SIGTERM; ``register`` and ``serve`` are swarm commands. Every bus
node a command opens goes through :func:`_open`.

The common options (``--swarm``, ``--dir``, ``--subject``, ``--org``,
``--key-file``) are accepted before or after the subcommand; ``--swarm``
defaults to ``EMRSHARE_SWARM`` and ``--subject`` to ``EMRSHARE_SUBJECT`` (with
``--dir``, the directory's subject; a different ``--subject`` is refused). Everything
that can be checked before the work starts is: the swarm directory and that
its swarm runs, that the subject has keys here (a mistyped subject creates
nothing), ``--org`` and that the organization exists (``register``), the
input file, a non-empty label, the ``--out`` directory. A failed ``register``
removes the key store it created. A new key store's passphrase, when typed
at a prompt, is asked twice.

Output: tables for a person (plain text when stdout is not a terminal),
``--json`` for machines; dates are ISO 8601 UTC. Long transfers (store,
read) show a progress bar on a terminal. Log lines go to
``DIR/logs/<subject>.log`` (and to the terminal only with ``--verbose``), so
``patient serve`` shows the requests it answers, not the bus's rejections.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agents.cli.base import (ENV_PASSPHRASE, ENV_SUBJECT, ENV_SWARM, CliError, UsageError, check_input_file,
                             check_output_path, doing, env_default, env_help, fail, no_such_subcommand,
                             parse_attributes, verbose)
from agents.cli.ledger import late_note
from agents.cli.output import print_json, progress, table, utc, utc_seconds

if TYPE_CHECKING:  # imported where used, to keep the command's start quick
    from agents.client import UserAgent, UserConfig
    from agents.swarm import SwarmFiles
    from core.identity import Certificate

__all__ = ["patient_main", "doctor_main", "PASS_ENV", "event_text"]

PASS_ENV = ENV_PASSPHRASE
DEFAULT_SWARM = "swarm-data"


# ------------------------------------------------------------------ parsers


def _common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options every user command takes. On subcommands they default to SUPPRESS so that
    the value given before the subcommand is kept when none is given after it."""

    def d(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--swarm", default=d(env_default(ENV_SWARM, DEFAULT_SWARM)), metavar="DIR",
                        help=env_help("the swarm's data directory", ENV_SWARM, DEFAULT_SWARM))
    parser.add_argument("--dir", type=Path, default=d(None), metavar="DIR",
                        help="your own key directory (`emrshare user init` and `user enroll` made it): no swarm, "
                             "the consortium's manifest and your TLS certificate there say where to connect; "
                             "wins over --swarm")
    parser.add_argument("--subject", default=d(env_default(ENV_SUBJECT)), metavar="ID",
                        help=env_help("your user id", ENV_SUBJECT))
    parser.add_argument("--org", default=d(None), metavar="ORG",
                        help="your hospital (e.g. hospital-a); needed to register, remembered after")
    parser.add_argument("--key-file", type=Path, default=d(None), metavar="FILE",
                        help=f"32-byte key file protecting your keys (instead of a passphrase: {ENV_PASSPHRASE} "
                             "or a prompt)")


class _Role:
    """``emrshare ROLE``'s parser: the common options (also after the subcommand),
    ``register``, and :meth:`add` for the role's other subcommands."""

    def __init__(self, role: str, attr_help: str):
        self.role = role
        self.parser = argparse.ArgumentParser(
            prog=f"emrshare {role}", description=f"Act as a {role} against a running swarm (--swarm), or from "
                                                 "your own enrolled key directory (--dir) over mutual TLS.",
            epilog=f"Your keys are unlocked with {ENV_PASSPHRASE}, a prompt, or --key-file. "
                   f"`emrshare {role} SUBCOMMAND --help` describes a subcommand's options.")
        _common(self.parser, suppress=False)
        self.shared = argparse.ArgumentParser(add_help=False)
        _common(self.shared, suppress=True)
        self.sub = self.parser.add_subparsers(dest="cmd", metavar="SUBCOMMAND", title="subcommands")
        self.register = self.add("register", "enroll at your hospital's peer (creates your keys)", json_=True)
        self.register.add_argument("--attr", action="append", default=[], metavar="NAME=VALUE",
                                   help=attr_help + " (integers, true and false are typed; e.g. officer=true)")

    def add(self, name: str, help_: str, *, json_: bool = False) -> argparse.ArgumentParser:
        p = self.sub.add_parser(name, help=help_, description=help_[:1].upper() + help_[1:] + ".",
                                parents=[self.shared], prog=f"emrshare {self.role} {name}")
        if json_:
            p.add_argument("--json", action="store_true", help="print JSON")
        return p

    def parse(self, argv: list[str]) -> argparse.Namespace:
        self._check_subcommand(argv)
        args = self.parser.parse_args(argv)
        if not args.cmd:
            raise UsageError(self.role, "a subcommand is needed", f"see `emrshare {self.role} --help`")
        if not args.subject and args.dir is None:
            raise UsageError(f"{self.role} {args.cmd}", "--subject is required",
                             f"give --subject ID or set {ENV_SUBJECT} (or --dir DIR, your own key directory)")
        return args

    def _check_subcommand(self, argv: list[str]) -> None:
        """A mistyped subcommand gets "did you mean", as `emrshare GROUP SUBCOMMAND` does
        (the common options may come before it; any other mistake is the parser's to report)."""
        probe = argparse.ArgumentParser(add_help=False, exit_on_error=False)
        _common(probe, suppress=True)
        probe.add_argument("cmd", nargs="?")
        try:
            cmd = probe.parse_known_args(argv)[0].cmd
        except argparse.ArgumentError:
            return
        if cmd is not None and cmd not in self.sub.choices:
            raise no_such_subcommand(self.role, cmd, self.sub.choices)


# ------------------------------------------------------------------ checks before any work


def _swarm_files(args: argparse.Namespace, what: str) -> "SwarmFiles":
    from agents.swarm import SwarmFiles

    path = Path(args.swarm)
    if path.exists() and not path.is_dir():
        fail(what, f"--swarm {path} is a file, not a directory", "give the swarm's data directory")
    files = SwarmFiles(path)
    if not files.exists:
        fail(what, f"no swarm in {files.dir}", f"start one with `emrshare swarm up --data {args.swarm}` "
                                               f"or give --swarm (or {ENV_SWARM})")
    if files.running() is None:
        fail(what, f"the swarm in {files.dir} is not running", f"start it with `emrshare swarm up --data {args.swarm}`")
    return files


def _known_users(files: "SwarmFiles") -> list[str]:
    from agents.client import KEY_FILE

    users = files.dir / "users"
    return sorted(d.name for d in users.iterdir() if (d / KEY_FILE).exists()) if users.is_dir() else []


def _check_subject(files: "SwarmFiles", args: argparse.Namespace, what: str, *, registering: bool) -> bool:
    """Whether the subject's key store exists; for any command but register it must."""
    from agents.client import KEY_FILE

    subject = args.subject
    if not subject.strip() or "/" in subject or subject in (".", ".."):
        raise UsageError(what, f"{subject!r} is not a user id", "give --subject a name without '/'")
    exists = (files.user_dir(subject) / KEY_FILE).exists()
    if not exists and not registering:
        known = _known_users(files)
        close = [u for u in known if _similar(u, subject)]
        fail(what, f"no user {subject!r} in {files.dir}",
             (f"did you mean --subject {close[0]}? " if close else "")
             + f"register first with `emrshare {args.role} --subject {subject} --org ORG register`")
    return exists


def _similar(a: str, b: str) -> bool:
    import difflib

    return difflib.SequenceMatcher(None, a, b).ratio() >= 0.6


def _check_org(files: "SwarmFiles", org: str | None, what: str) -> str:
    orgs = files.orgs()
    if not org:
        raise UsageError(what, "--org is required to register", f"give your hospital: --org {' or --org '.join(orgs)}")
    if org not in orgs:
        fail(what, f"unknown organization {org!r}", f"this swarm has {', '.join(orgs)}")
    return org


def _passphrase(args: argparse.Namespace, new: bool, what: str) -> str | None:
    if args.key_file is not None:
        check_input_file(args.key_file, what)
        return None
    passphrase = os.environ.get(ENV_PASSPHRASE)
    if passphrase is not None:
        return passphrase
    if not sys.stdin.isatty():
        fail(what, "no passphrase to unlock your keys", f"set {ENV_PASSPHRASE} or give --key-file")
    if not new:
        return getpass.getpass(f"passphrase for {args.subject}: ")
    first = getpass.getpass(f"new passphrase for {args.subject}'s keys: ")
    if not first:
        raise UsageError(what, "an empty passphrase", "type a passphrase, or give --key-file")
    if getpass.getpass("the same passphrase again: ") != first:
        raise UsageError(what, "the two passphrases differ", "run the command again")
    return first


def _saved_org(user_dir: Path) -> str | None:
    meta = user_dir / "cli.json"
    try:
        return json.loads(meta.read_text()).get("org")
    except (OSError, ValueError, AttributeError):
        return None


def _prepare(args: argparse.Namespace, attributes: dict[str, Any]) -> tuple["SwarmFiles | None", "UserConfig", bool]:
    """(files, config, key store existed) after every check that needs no network;
    files is None with ``--dir`` (:func:`_prepare_dir`)."""
    from agents.client import UserConfig

    what = f"{args.role} {args.cmd}"
    if getattr(args, "dir", None) is not None:  # `fhir serve` shares this with a namespace of its own
        return None, _prepare_dir(args, what), True
    files = _swarm_files(args, what)
    registering = args.cmd == "register"
    existed = _check_subject(files, args, what, registering=registering)
    user_dir = files.user_dir(args.subject)
    org = args.org or _saved_org(user_dir) or ""
    if registering:
        org = _check_org(files, org, what)
    args.transport = files.client_tls(args.subject, org or None)  # None: the in-process swarm (plaintext)
    passphrase = _passphrase(args, new=not existed, what=what)
    _log_to_file(files.dir / "logs", args.subject)
    role = getattr(args, "cert_role", args.role)
    return files, UserConfig(subject=args.subject, org=org, attributes={"role": role, **attributes},
                             data_dir=user_dir, manifest=files.manifest(), passphrase=passphrase,
                             key_file=args.key_file), existed


def _prepare_dir(args: argparse.Namespace, what: str) -> "UserConfig":
    """The config of the user enrolled in ``--dir`` (and ``args.transport``: mutual TLS
    with its certificate, when it holds one), after every check that needs no network."""
    from agents.cli.userdir import read_enrolled, tls_store, user_transport
    from agents.client import UserConfig
    from agents.keys import KeyStoreError

    if args.cmd == "register":
        raise UsageError(what, "--dir is enrolled with `emrshare user enroll`, not register",
                         f"run `emrshare user enroll --dir {args.dir} --token FILE --manifest FILE`")
    if args.cmd == "serve":
        raise UsageError(what, "serve needs an address doctors can reach, which a user directory does not "
                               "publish yet", "let your policy delegate standing access (`approval auto` rules, "
                                             "docs/crypto-standing.md) so doctors read while you are offline")
    enrolled = read_enrolled(args.dir, what)
    if args.subject and args.subject != enrolled.subject:
        fail(what, f"{args.dir} is enrolled as {enrolled.subject!r}, not {args.subject!r}",
             "drop --subject or give the directory of that user")
    args.subject = enrolled.subject
    if not enrolled.full:
        peers = ", ".join(enrolled.manifest.agents) or "no node"
        fail(what, f"{args.dir} knows the address of {peers} only (you enrolled with --genesis and --peer)",
             f"get the consortium's manifest.json from your organization and save it with "
             f"`emrshare user enroll --dir {args.dir} --manifest manifest.json`")
    passphrase = _passphrase(args, new=False, what=what)
    args.transport = None
    if enrolled.tls_cert is not None:
        _check_tls_cert_dates(enrolled.tls_cert, args.dir, what)
        store = tls_store(args.dir, passphrase=passphrase, key_file=args.key_file)
        try:
            key_der = store.load()
        except FileNotFoundError:
            fail(what, f"{args.dir} holds a TLS certificate but no TLS key",
                 f"run `emrshare user init --dir {args.dir}` and enroll again with a token issued from its request")
        except KeyStoreError as exc:
            fail(what, str(exc), "give the passphrase or --key-file your keys were created with")
        args.transport = user_transport(enrolled.tls_cert, key_der, enrolled.manifest.genesis)
    _log_to_file(args.dir / "logs", enrolled.subject)
    return UserConfig(subject=enrolled.subject, org=enrolled.org, attributes={"role": args.role},
                      data_dir=args.dir, manifest=enrolled.manifest, passphrase=passphrase, key_file=args.key_file)


def _check_tls_cert_dates(cert_pem: bytes, directory: Path, what: str) -> None:
    """A one-line failure when the directory's TLS certificate is not valid now (the node would
    only break the handshake)."""
    import datetime

    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        fail(what, f"{directory}/tls.pem is not a certificate", "enroll again with a new token from your registrar")
    now = datetime.datetime.now(datetime.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        fail(what, f"your TLS certificate is valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
                   f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not now",
             f"ask your registrar to issue again from {directory}/request.json (`registrar issue --request`) "
             f"and run `emrshare user enroll --dir {directory} --token FILE --manifest FILE`")


def _log_to_file(logs: Path, subject: str) -> None:
    """Log lines go to LOGS/<subject>.log; the terminal sees them only with --verbose."""
    root = logging.getLogger()
    if verbose():
        return
    logs.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(logs / f"{subject}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _open(routes: dict[str, str], transport: Any = None) -> Any:
    """The user's bus node (an async context manager): ``routes``; its ``tcp`` over
    ``transport`` (mutual TLS, :func:`agents.tls.tls_transport`) when given, else plain TCP
    (the embedded swarm)."""
    from bus import open_node

    if transport is None:
        return open_node(routes=routes)
    return open_node(routes=routes, transports={"tcp": transport})


def _routes(files: "SwarmFiles | None", manifest: Any) -> dict[str, str]:
    """The manifest's routes, and in a swarm where its patients listen (``patient serve``)."""
    routes = dict(manifest.agents)
    users = files.dir / "users" if files is not None else None
    if users is not None and users.exists():
        for d in users.iterdir():
            addr = d / "address"
            if addr.exists():
                routes[d.name] = addr.read_text().strip()
    return routes


def _open_bus(files: "SwarmFiles", config: "UserConfig") -> Any:
    """A swarm user's bus node (:func:`_open`) routed by the manifest and the listening users'
    addresses; against a ``--processes`` swarm, mutual TLS with the user's client certificate from
    its hospital's TLS CA (:meth:`agents.swarm.SwarmFiles.client_tls`)."""
    return _open(_routes(files, config.manifest), files.client_tls(config.subject, config.org))


async def _register(agent: "UserAgent", files: "SwarmFiles", config: "UserConfig") -> "Certificate":
    """Register ``agent`` with its organization's token (from the swarm's files) and
    remember the organization in the user's directory; returns the certificate."""
    cert = await agent.register(files.token(config.subject, config.org, config.attributes, agent.enroll_id))
    (config.data_dir / "cli.json").write_text(json.dumps({"org": config.org}))
    return cert


def _run(args: argparse.Namespace, body: Any, attributes: dict[str, Any]) -> int:
    """Prepare, run ``await body(files, config, args)`` under trio, report errors as one line;
    a register that fails removes the user directory it created."""
    import trio

    from agents.runtime import return_freed_memory

    return_freed_memory()  # a streamed read stays within its bounded working set
    files, config, existed = _prepare(args, attributes)
    user_dir = config.data_dir
    created = not user_dir.exists()
    what = _what(args)
    try:
        with doing(what):
            return trio.run(body, files, config, args) or 0
    except BaseException:
        if args.cmd == "register" and not existed:  # leave no key store behind
            from agents.client import KEY_FILE

            if created:
                shutil.rmtree(user_dir, ignore_errors=True)
            else:
                for name in (KEY_FILE, "cli.json"):
                    (user_dir / name).unlink(missing_ok=True)
        raise


def _what(args: argparse.Namespace) -> str:
    parts = [args.role, args.cmd]
    for name in ("file", "patient", "record_id", "grant_id"):
        value = getattr(args, name, None)
        if value:
            parts.append(str(value))
    return " ".join(parts)


# ------------------------------------------------------------------ output


def event_text(e: dict[str, Any]) -> str:
    """One audit event as a sentence (without its time and block)."""
    kind = e.get("event")
    actor = e.get("actor")
    if kind == "store":
        return f"{actor} stored {e.get('record_id')} ({e.get('label')})"
    if kind == "set_policy":
        return f"{actor} set policy {e.get('policy')} v{e.get('version')}"
    if kind == "access_request":
        d = e.get("decision") or {}
        return f"{actor} asked for {e.get('record_id')}: {d.get('effect')} by rule {d.get('rule')}"
    if kind == "grant":
        return f"{actor} granted {e.get('label')} to {e.get('doctor')} via {', '.join(e.get('peers') or [])}"
    if kind == "access":
        return f"{e.get('peer') or actor} re-encrypted {e.get('record_id')} for {e.get('doctor')}" + late_note(e)
    if kind == "revoke_grant":
        return f"{actor} revoked {e.get('grant_id')} of {e.get('doctor')}"
    if kind == "deny_request":
        return f"{actor} rejected request {e.get('request_id')} of {e.get('doctor')}"
    return f"{kind} by {actor}"


def _print_cert(cert: Any, as_json: bool, text: str) -> None:
    if not as_json:
        print(text)
        return
    print_json({"subject": cert.subject, "org": cert.org, "serial": cert.serial, "attributes": dict(cert.attributes),
                "valid_from": utc_seconds(cert.valid_from), "valid_until": utc_seconds(cert.valid_until)})


def _print_records(records: list[dict], as_json: bool, title: str) -> None:
    if as_json:
        print_json(records)
        return
    table(["record", "label", "size", "media type", "block"],
          [[r.get("record_id"), r.get("label"), _size(r.get("size")), r.get("media_type"), r.get("height")]
           for r in records], title=title)


def _size(n: Any) -> str:
    if not isinstance(n, int):
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _print_audit(events: list[dict], as_json: bool, subject: str) -> None:
    if as_json:
        print_json([{**e, "utc": utc(e.get("time"))} for e in events])
        return
    if not events:
        print(f"no ledger events for {subject}")
        return
    table(["time (UTC)", "block", "event"], [[utc(e.get("time")), e.get("height"), event_text(e)] for e in events],
          title=f"audit trail of {subject} ({len(events)} events)")


def _print_grants(grants: dict[str, dict], as_json: bool) -> None:
    if as_json:
        print_json({gid: {**g, "expires": utc_seconds(g.get("expires_at"))} for gid, g in grants.items()})
        return
    if not grants:
        print("no grants issued")
        return
    table(["grant", "doctor", "label", "record", "expires (UTC)", "peers", "state"],
          [[gid, g.get("doctor"), g.get("label"), g.get("record_id"), utc_seconds(g.get("expires_at")),
            f"{len(g.get('peers') or [])} (t={g.get('threshold')})", "revoked" if g.get("revoked") else "active"]
           for gid, g in grants.items()])


# ------------------------------------------------------------------ patient


async def _patient(files: "SwarmFiles | None", config: "UserConfig", args: argparse.Namespace) -> int:
    from agents.patient import PatientAgent

    if args.cmd == "serve":
        config.listen = args.listen
    async with _open(_routes(files, config.manifest), args.transport) as node:
        if args.cmd == "serve":
            address = await node.listen(args.listen)
        approve = _approve_all if args.cmd == "serve" and args.approve else None
        async with PatientAgent.open(config, node=node, approve=approve) as p:
            if args.cmd == "register":
                cert = await _register(p, files, config)
                _print_cert(cert, args.json, f"registered {cert.subject} at {cert.org} (certificate {cert.serial})")
            elif args.cmd == "store":  # FHIR Bundles, resources and directories go through the FHIR mapping
                from agents.cli.fhir import store_path

                stored, lines = await store_path(p, Path(args.file), label=args.label, media_type=args.media_type,
                                                 record_id=args.record_id, labels_file=args.labels,
                                                 progress=progress)
                if args.json:
                    print_json(stored)
                else:
                    for line in lines:
                        print(line)
            elif args.cmd == "read":
                from agents.errors import RecordNotFound

                try:
                    with progress(f"reading {args.record_id}") as update:
                        if args.out:  # streamed to the file in bounded memory
                            written = await p.read_to_file(args.record_id, args.out, progress=update)
                        else:
                            data = await p.read(args.record_id, progress=update)
                except RecordNotFound as exc:  # the generic hint is a doctor's
                    raise CliError(_what(args), str(exc), "list your records with `emrshare patient records`") from exc
                if args.out:
                    print(f"wrote {written} bytes to {args.out}")
                else:
                    _write_out(data, None)
            elif args.cmd == "policy":
                standing = () if args.no_standing else (args.standing or None)
                deposited = await p.set_policy(args.text, standing=standing)
                print("policy committed")
                for label, mode in sorted(deposited.items()):
                    what = ("the peers may now serve doctors this policy pre-authorizes without you"
                            if mode == "auto" else "usable only under a co-signed emergency access")
                    print(f"standing delegation of {label!r} ({mode}): {what}")
            elif args.cmd == "revoke":
                from agents.errors import TransactionRejected

                try:
                    outcome = await p.revoke(args.grant_id, args.reason, narrow=args.narrow)
                except TransactionRejected as exc:
                    if exc.reason != "not_found":
                        raise
                    audit = (f"`emrshare ledger audit --data {files.dir} --patient {config.subject}`" if files
                             else "`emrshare patient audit --json` (their grant_id)")
                    raise CliError(_what(args), f"no grant {args.grant_id!r} exists",
                                   "list the grants you issued with `emrshare patient grants`, and those made from "
                                   f"your standing delegation (sg-...) with {audit}") from exc
                print(f"revoked {args.grant_id}" + (" and narrowed the policy" if args.narrow else ""))
                if outcome["still_allowed"]:
                    print("warning: your policy still allows that doctor; the ledger will not grant it again "
                          "by itself, but you will be asked. To close the door, rerun with --narrow on the "
                          "next revocation or set a narrower policy (higher version)", file=sys.stderr)
            elif args.cmd == "rotate":
                rotated = await p.rotate(args.label)
                if args.json:
                    print_json(rotated)
                else:
                    print(f"{args.label}: label key epoch {rotated['epoch']}, re-sealed "
                          f"{len(rotated['resealed'])} records; older grants and standing parts no longer open them")
            elif args.cmd == "away":
                away = await p.while_away(args.since)
                if args.json:
                    print_json(away)
                else:
                    _print_away(away)
            elif args.cmd == "records":
                records = await p.records()
                if not records and not args.json:
                    print(f"{config.subject} has no records yet; store one with "
                          "`emrshare patient store FILE --label LABEL`")
                else:
                    _print_records(records, args.json, f"records of {config.subject}")
            elif args.cmd == "grants":
                _print_grants(p.grants, args.json)
            elif args.cmd == "audit":
                _print_audit(await p.audit(), args.json, config.subject)
            elif args.cmd == "serve":
                await _serve(p, config, address)
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


async def _serve(p: Any, config: "UserConfig", address: str) -> None:
    import trio

    (config.data_dir / "address").write_text(address)
    p.answered = _AnswerPrinter()
    print(f"{config.subject} answering access requests at {address} (Ctrl-C stops)", flush=True)
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
    finally:
        (config.data_dir / "address").unlink(missing_ok=True)
    print("stopped", file=sys.stderr)


class _AnswerPrinter:
    """``patient serve``'s line per access request answered: a grant, a refusal (the
    policy's, or the patient's) with why, or an answer that failed. A request the ledger
    does not hold prints nothing (any doctor could send those in a loop; they are logged
    once per doctor). The first failed write (a closed pipe) ends the printing, never the
    answers."""

    def __init__(self) -> None:
        self.closed = False

    def __call__(self, request_id: str, doctor: str, outcome: Any) -> None:
        from agents.errors import PolicyDenied, RequestRejected, UnknownRequest

        if isinstance(outcome, UnknownRequest) or self.closed:
            return
        when = utc_seconds(time.time())
        if isinstance(outcome, dict):
            line = f"{when}  granted request {request_id} of {doctor} (grant {outcome.get('grant_id')})"
        elif isinstance(outcome, (PolicyDenied, RequestRejected)):
            line = f"{when}  refused request {request_id} of {doctor}: {outcome}"
        else:
            line = f"{when}  could not answer request {request_id} of {doctor}: {outcome}"
        try:
            print(line, flush=True)
        except OSError:
            self.closed = True


async def _approve_all(request: dict) -> bool:
    print(f"approving request {request.get('request_id')} from {request.get('doctor')}", flush=True)
    return True


def _write_out(data: bytes, out: str | None) -> None:
    if out:
        Path(out).write_bytes(data)
        print(f"wrote {len(data)} bytes to {out}")
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


def patient_main(argv: list[str]) -> int:
    r = _Role("patient", "extra attribute NAME=VALUE for your certificate")
    s = r.add("store", "seal and store a record, a FHIR Bundle or resource, or a directory of them", json_=True)
    s.add_argument("file", help="a file, or a directory whose files are stored one by one")
    s.add_argument("--label", help="the label a non-FHIR file is sealed under (grants are per label); FHIR "
                   "resources get theirs from the label table (docs/fhir.md) unless this names one")
    s.add_argument("--media-type", help="the media type of a non-FHIR file (required for it: text/plain, "
                   "application/pdf, ...); FHIR JSON is recognised as such")
    s.add_argument("--record-id", help="the record id of a non-FHIR file (default: a new random one); FHIR "
                   "resources get theirs from Type/id")
    s.add_argument("--labels", type=Path, metavar="FILE", help="JSON label table for FHIR resources (docs/fhir.md)")
    rd = r.add("read", "read one of your own records")
    rd.add_argument("record_id", help="the record's id")
    rd.add_argument("--out", help="write the record to this file, streamed in bounded memory (default: stdout)")
    p = r.add("policy", "set your access policy from a policy text file (docs/policy.md)")
    p.add_argument("file", help="the policy text")
    p.add_argument("--standing", action="append", metavar="LABEL",
                   help="let the peers serve doctors the policy pre-authorizes for LABEL while you are offline "
                        "(repeatable; default: every label an 'approval auto' rule names; docs/security.md)")
    p.add_argument("--no-standing", action="store_true",
                   help="no standing delegation: every new doctor waits for your agent")
    v = r.add("revoke", "revoke a grant")
    v.add_argument("grant_id", help="the grant's id: `emrshare patient grants` lists those you issued; a grant made "
                   "from your standing delegation (sg-...) is in `emrshare ledger audit --patient YOU`")
    v.add_argument("--reason", default="revoked by patient", help="why (recorded on the ledger)")
    v.add_argument("--narrow", action="store_true",
                   help="in the same transaction, commit your policy with a rule denying that doctor the label")
    ro = r.add("rotate", "re-seal a label's records under a fresh label key (after a revocation)", json_=True)
    ro.add_argument("label", help="the label to rotate")
    a = r.add("away", "what happened while you were offline (standing grants, emergency accesses)", json_=True)
    a.add_argument("--since", type=int, default=None, help="from this block height (default: since the last call)")
    r.add("records", "list your records on the ledger", json_=True)
    r.add("grants", "list the grants you issued, with their expiry", json_=True)
    r.add("audit", "print your audit trail (who asked for what, who read it)", json_=True)
    sv = r.add("serve", "stay up and answer doctors' access requests (Ctrl-C stops)")
    sv.add_argument("--listen", default="tcp://127.0.0.1:0", help="bus address to listen on (default %(default)s)")
    sv.add_argument("--approve", action="store_true",
                    help="approve requests whose policy asks for the patient's approval (default: refuse them)")
    args = r.parse(argv)
    args.role = "patient"
    what = f"patient {args.cmd}"
    attrs = parse_attributes(getattr(args, "attr", []), what)
    if args.cmd == "store":
        check_input_file(args.file, what, directory=True)
        if args.label is not None and not args.label.strip():
            raise UsageError(what, "the label is empty", "give --label a name, e.g. --label cardiology")
        if args.labels is not None:
            check_input_file(args.labels, what)
    elif args.cmd == "policy":
        args.text = _policy_text(args.file, what)
    elif args.cmd == "read" and args.out:
        check_output_path(args.out, f"{what} {args.record_id}")
    return _run(args, _patient, attrs)


def _policy_text(path: str, what: str) -> str:
    """The policy file's text, parsed here first so a syntax error names its line and column."""
    from core.errors import PolicyError
    from core.policy import parse as parse_policy

    p = check_input_file(path, what)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        fail(what, f"{p} is not a text file (UTF-8)", "give the policy text")
    try:
        parse_policy(text)
    except PolicyError as exc:  # its first line is "line L, column C: why" (then the line and a caret)
        fail(what, f"{p}: {str(exc).splitlines()[0]}", "fix the policy text (syntax: docs/policy.md)")
    return text


# ------------------------------------------------------------------ doctor


async def _doctor(files: "SwarmFiles | None", config: "UserConfig", args: argparse.Namespace) -> int:
    from agents.doctor import DoctorAgent

    async with _open(_routes(files, config.manifest), args.transport) as node:
        async with DoctorAgent.open(config, node=node) as d:
            if args.cmd == "register":
                cert = await _register(d, files, config)
                _print_cert(cert, args.json, f"registered {cert.subject} at {cert.org} with {dict(cert.attributes)}")
            elif args.cmd == "records":
                records = await d.records(args.patient, args.label)
                if not records and await d.client.lookup_certificate(args.patient) is None:
                    fail(f"doctor records {args.patient}", f"no patient {args.patient!r} is registered in this swarm",
                         "check the patient's id")
                if not records and not args.json:
                    print(f"{args.patient} has no records" + (f" under label {args.label}" if args.label else ""))
                else:
                    _print_records(records, args.json, f"records of {args.patient}")
            elif args.cmd == "request":
                decision = await d.request(args.patient, args.record_id, purpose=args.purpose)
                if args.json:
                    print_json(decision)
                else:
                    table(["field", "value"], [[k, decision.get(k)] for k in
                                               ("request_id", "status", "effect", "rule", "approval", "reason")
                                               if decision.get(k) not in (None, "")])
            elif args.cmd == "read":
                from agents.errors import Unavailable

                try:
                    with progress(f"reading {args.record_id}") as update:
                        if args.out:  # streamed to the file in bounded memory
                            written = await d.read_to_file(args.patient, args.record_id, args.out,
                                                           purpose=args.purpose, progress=update)
                        else:
                            data = await d.read(args.patient, args.record_id, purpose=args.purpose,
                                                progress=update)
                except Unavailable as exc:
                    if files is None:
                        raise CliError(_what(args), str(exc), f"a patient grants access while online, or through a "
                                       f"standing delegation: ask {args.patient} to set a policy whose `approval "
                                       f"auto` rule covers you (standing delegation)") from exc
                    if (files.user_dir(args.patient) / "address").exists():
                        raise
                    raise CliError(_what(args), str(exc), f"a patient grants access while online, or through a standing "
                                   f"delegation: ask {args.patient} to run `emrshare patient --subject {args.patient} "
                                   f"serve` (or to set a policy with standing delegation)") from exc
                if args.out:
                    print(f"wrote {written} bytes to {args.out}")
                else:
                    _write_out(data, None)
            elif args.cmd == "cosign":
                from agents.doctor import cosign_break_glass

                sig = cosign_break_glass(d.keys.ecdsa_private, args.id, args.doctor, args.patient, args.record_id,
                                         args.reason)
                print(f"{config.subject}={sig.hex()}")
            elif args.cmd == "break-glass":
                data = await d.break_glass(args.patient, args.record_id, args.reason, args.cosigners,
                                           break_glass_id=args.id)
                _write_out(data, args.out)
                if args.out:
                    print("(an emergency access: the patient is notified)")
    return 0


def _cosigners(pairs: list[str], what: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for pair in pairs:
        officer, _, sig = pair.partition("=")
        try:
            out[officer] = bytes.fromhex(sig)
        except ValueError:
            raise UsageError(what, f"--cosign needs OFFICER=HEX_SIGNATURE, got {pair!r}",
                             "paste the line `emrshare doctor cosign` printed") from None
        if not officer:
            raise UsageError(what, f"--cosign needs OFFICER=HEX_SIGNATURE, got {pair!r}",
                             "paste the line `emrshare doctor cosign` printed")
    return out


def doctor_main(argv: list[str]) -> int:
    r = _Role("doctor", "attribute NAME=VALUE for your certificate (e.g. department=cardiology)")
    r.register.add_argument("--role", default="doctor", help="your role on the certificate (default %(default)s)")
    rs = r.add("records", "list a patient's records", json_=True)
    rs.add_argument("patient", help="the patient's id")
    rs.add_argument("--label", help="only records under this label")
    rq = r.add("request", "submit an access request and print the ledger's decision", json_=True)
    rd = r.add("read", "read a record (request, authorization, re-encryption, decryption)")
    for c in (rq, rd):
        c.add_argument("patient", help="the patient's id")
        c.add_argument("record_id", help="the record's id (see `records`)")
        c.add_argument("--purpose", help="the purpose of use the policy may ask for (e.g. treatment)")
    rd.add_argument("--out", help="write the record to this file, streamed in bounded memory (default: stdout)")
    cs = r.add("cosign", "as an officer: co-sign a doctor's emergency access (prints OFFICER=SIG)")
    bg = r.add("break-glass", "emergency access without the patient, with officers' co-signatures")
    for c in (cs, bg):
        c.add_argument("patient", help="the patient's id")
        c.add_argument("record_id", help="the record's id")
        c.add_argument("--reason", required=True, help="why (the patient will read it)")
        c.add_argument("--id", required=True, help="the break-glass id every co-signer signs (e.g. bg-0042)")
    cs.add_argument("--doctor", required=True, help="the requesting doctor")
    bg.add_argument("--cosign", action="append", default=[], metavar="OFFICER=SIG",
                    help="an officer's co-signature from `emrshare doctor cosign` (repeat per officer)")
    bg.add_argument("--out", help="write the record to this file (default: stdout)")
    args = r.parse(argv)
    what = f"doctor {args.cmd}"
    if args.cmd == "break-glass":
        args.cosigners = _cosigners(args.cosign, what)
    attrs = parse_attributes(getattr(args, "attr", []), what)
    args.cert_role = getattr(args, "role", None) or "doctor"  # `register --role nurse`
    args.role = "doctor"
    if args.cmd in ("read", "break-glass") and args.out:
        check_output_path(args.out, f"{what} {args.patient} {args.record_id}")
    return _run(args, _doctor, attrs)
