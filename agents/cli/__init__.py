"""The ``emrshare`` command line.

Subcommands are registered in ``_COMMANDS``; each names a module and a function
``main(argv: list[str]) -> int`` so that heavy modules are imported only when
their command runs. Help comes from the registry (argparse, nothing imported):
``emrshare --help`` lists the commands, ``emrshare GROUP --help`` (swarm,
ledger, bench) a group's subcommands, ``emrshare COMMAND --help`` a command's
own options. Global options, accepted anywhere on the line: ``-v/--verbose``
(log lines, and a traceback with every error), ``--version``.

Every command runs through one error path (:mod:`agents.cli.base`): an
expected failure is one line ``emrshare: <what failed>: <why>; <what to do>``
on stderr, exit status 2 for usage errors and 1 for failures.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import logging
import sys

from agents.cli.base import UsageError, no_such_subcommand, report, run, set_verbose

# (subcommand path) -> (module, function, one-line help)
_COMMANDS: dict[tuple[str, ...], tuple[str, str, str]] = {
    ("backend",): ("agents.cli", "backend_main", "print the active arithmetic backend and why"),
    ("bench", "crypto"): ("agents.bench.crypto", "main", "pairing/EC/ECDSA micro-benchmarks, native vs pure"),
    ("bench", "pre"): ("agents.bench.pre", "main", "threshold PRE benchmark against Umbral"),
    ("bench", "bus"): ("agents.bench.bus", "main", "message bus round trips and throughput"),
    ("bench", "storage"): ("agents.bench.storage", "main", "storage put/get throughput vs bare disk and sha256"),
    ("bench", "ledger"): ("agents.bench.ledger", "main", "ledger commit throughput and latency"),
    ("bench", "fhir"): ("agents.bench.fhir", "main", "FHIR facade overhead: $everything over HTTP vs the Python API"),
    ("bench", "heal"): ("agents.bench.heal", "main", "seconds until storage has r copies again (CLI killed, node wiped)"),
    ("ledger", "verify"): ("agents.cli.ledger", "verify_main", "verify the peers' stored chains end to end"),
    ("ledger", "audit"): ("agents.cli.ledger", "audit_main", "print the access history of a patient's records"),
    ("swarm", "up"): ("agents.cli.swarm", "up_main", "launch a local consortium (peers, orderer, storage)"),
    ("swarm", "status"): ("agents.cli.swarm", "status_main", "is the swarm running; its agents and their addresses"),
    ("swarm", "down"): ("agents.cli.swarm", "down_main", "stop the swarm running on a data directory"),
    ("storage", "status"): ("agents.cli.storage", "status_main", "storage copies per record, repair progress"),
    ("patient",): ("agents.cli.user", "patient_main", "act as a patient: against a local swarm, or from your enrolled directory (--dir)"),
    ("doctor",): ("agents.cli.user", "doctor_main", "act as a doctor: against a local swarm, or from your enrolled directory (--dir)"),
    ("demo",): ("agents.cli.demo", "main", "run the paper's scenario end to end on a fresh embedded swarm"),
    ("fhir", "serve"): ("agents.cli.fhir", "serve_main", "serve a FHIR R4 facade (SMART tokens) for your agent"),
    ("loadtest",): ("agents.bench.loadtest", "main", "load test a swarm, with optional fault injection"),
    ("node", "start"): ("agents.cli.node", "start_main", "run one peer, orderer or storage node from its config"),
    ("node", "status"): ("agents.cli.node", "status_main", "ask a running node: height, connections, queues"),
    ("node", "config"): ("agents.cli.node", "config_main", "export a node config + key store for a swarm's agent"),
    ("org", "init"): ("agents.cli.org", "org_init_main", "create a hospital's keys, TLS CA and public profile"),
    ("org", "profile"): ("agents.cli.org", "org_profile_main", "print or export a hospital's public profile"),
    ("org", "node-config"): ("agents.cli.orgnode", "main", "write a node's config (keys, [tls], routes) from the org dir"),
    ("consortium", "genesis"): ("agents.cli.org", "consortium_genesis_main", "build a genesis draft from profiles"),
    ("consortium", "sign"): ("agents.cli.org", "consortium_sign_main", "sign a genesis draft as this hospital"),
    ("consortium", "seal"): ("agents.cli.org", "consortium_seal_main", "check every member signed; write genesis"),
    ("consortium", "manifest"): ("agents.cli.org", "consortium_manifest_main",
                                 "write manifest.json (genesis, node addresses) for clients"),
    ("consortium", "change"): ("agents.cli.org", "consortium_change_main", "prepare adding or removing a member"),
    ("consortium", "sign-change"): ("agents.cli.org", "consortium_sign_change_main",
                                    "approve a configuration change as this hospital"),
    ("consortium", "submit-change"): ("agents.cli.orgchange", "submit_change_main", "submit a signed change; wait for the peers"),
    ("registrar", "issue"): ("agents.cli.org", "registrar_issue_main", "issue an enrollment token for a subject"),
    ("user", "init"): ("agents.cli.org", "user_init_main", "create your keys; print your enrolling key"),
    ("user", "enroll"): ("agents.cli.org", "user_enroll_main", "enroll with your hospital's peer using a token"),
}


def backend_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="emrshare backend", description=_COMMANDS[("backend",)][2])
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    from core import ecdsa
    from core.backend import available_backends, backend_name, selection_reason

    if args.json:
        from agents.cli.output import print_json

        print_json({"pairing": backend_name(), "reason": selection_reason(), "ecdsa": ecdsa.ecdsa_backend_name(),
                    "available": list(available_backends())})
        return 0
    print(f"pairing backend: {backend_name()} ({selection_reason()})")
    print(f"ecdsa backend:   {ecdsa.ecdsa_backend_name()}")
    print(f"available:       {', '.join(available_backends())}")
    return 0



_GROUP_HELP = {
    "bench": "benchmarks (each prints its numbers; --json FILE saves them)",
    "consortium": "the genesis: built from the members' profiles, signed by each",
    "org": "a hospital's own keys and public profile",
    "registrar": "a hospital's registrar: enrollment tokens",
    "user": "a user's own keys and enrollment, on their own machine",
    "fhir": "a FHIR front end to the swarm",
    "ledger": "offline checks of the peers' stored ledgers",
    "node": "one consortium node as a service (config, start, status)",
    "storage": "the storage nodes: copies per record, repair",
    "swarm": "run and inspect a local consortium",
}


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _help_parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level and group parsers, built from ``_COMMANDS`` for help only (nothing imported)."""
    top = argparse.ArgumentParser(
        prog="emrshare", description="Share medical records between patients and doctors of several hospitals.",
        epilog="`emrshare COMMAND --help` describes a command's options. Environment: EMRSHARE_SWARM (the swarm "
               "directory for --swarm/--data), EMRSHARE_SUBJECT (--subject), EMRSHARE_PASSPHRASE (unlocks your keys).")
    _global_options(top)
    sub = top.add_subparsers(title="commands", metavar="COMMAND")
    groups: dict[str, argparse.ArgumentParser] = {}
    group_subs: dict[str, argparse._SubParsersAction] = {}
    for path, (module, _, help_) in _COMMANDS.items():
        if not _available(module):
            continue
        if len(path) == 1:
            sub.add_parser(path[0], help=help_, add_help=False)
            continue
        head = path[0]
        if head not in groups:
            groups[head] = sub.add_parser(head, help=_GROUP_HELP.get(head, f"{head} commands"),
                                          description=_GROUP_HELP.get(head), prog=f"emrshare {head}",
                                          epilog=f"`emrshare {head} SUBCOMMAND --help` describes its options.")
            _global_options(groups[head])
            group_subs[head] = groups[head].add_subparsers(title="subcommands", metavar="SUBCOMMAND")
        group_subs[head].add_parser(path[1], help=help_, add_help=False)
    return top, groups


def _global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log what happens, and print a traceback with any error (anywhere on the line)")
    parser.add_argument("--version", action="store_true", help="print emrshare's version and exit")


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("emrshare")
    except PackageNotFoundError:
        return "unknown"


def _split_globals(argv: list[str]) -> tuple[bool, bool, list[str]]:
    """(verbose, version, the rest): global options are taken anywhere before a ``--``."""
    verbose = show_version = False
    rest: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg in ("-v", "--verbose"):
            verbose = True
        elif arg == "--version":
            show_version = True
        else:
            rest.append(arg)
    return verbose, show_version, rest


def _command(argv: list[str]) -> tuple[tuple[str, ...], list[str]] | None:
    for length in (2, 1):
        key = tuple(argv[:length])
        if key in _COMMANDS:
            return key, argv[length:]
    return None


def _dispatch(argv: list[str]) -> int:
    top, groups = _help_parsers()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    if argv[0] == "help":  # `emrshare help [COMMAND...]`
        return _dispatch([*argv[1:], "--help"]) if argv[1:] else _dispatch([])
    found = _command(argv)
    if found is None:
        head = argv[0]
        if head in groups:
            if len(argv) == 1 or argv[1] in ("-h", "--help"):
                groups[head].print_help()
                return 0
            raise no_such_subcommand(head, argv[1], (p[1] for p in _COMMANDS if p[0] == head and len(p) == 2))
        heads = sorted({p[0] for p in _COMMANDS})
        close = difflib.get_close_matches(head, heads, n=1)
        raise UsageError(head, "no such command",
                         (f"did you mean `emrshare {close[0]}`? " if close else "") + "see `emrshare --help`")
    key, rest = found
    module, func, _ = _COMMANDS[key]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            raise UsageError(' '.join(key), "not available in this build",
                             "see `emrshare --help`") from None
        raise
    return int(getattr(mod, func)(rest) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose, show_version, argv = _split_globals(argv)
    if show_version:
        print(f"emrshare {version()}")
        return 0
    set_verbose(verbose)
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    found = _command(argv)
    what = " ".join(found[0]) if found else "emrshare"
    try:
        return run(lambda: _dispatch(argv), what)
    except BaseException as exc:  # noqa: BLE001 - a failure while reporting a failure
        return report(exc, what)


if __name__ == "__main__":
    sys.exit(main())
