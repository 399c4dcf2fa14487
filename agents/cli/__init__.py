"""The ``emrshare`` command line.

Subcommands are registered in ``_COMMANDS``; each names a module and a function
``main(argv: list[str]) -> int`` so that heavy modules are imported only when
their command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

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
    ("ledger", "verify"): ("agents.cli.ledger", "verify_main", "verify a peer's stored chain end to end"),
    ("ledger", "audit"): ("agents.cli.ledger", "audit_main", "print the access history of a patient's records"),
    ("swarm", "up"): ("agents.cli.swarm", "up_main", "launch a local consortium (peers, orderer, storage)"),
    ("storage", "status"): ("agents.cli.storage", "status_main", "storage copies per record, repair progress"),
    ("patient",): ("agents.cli.user", "patient_main", "act as a patient against a running swarm"),
    ("doctor",): ("agents.cli.user", "doctor_main", "act as a doctor against a running swarm"),
    ("demo",): ("agents.cli.demo", "main", "run the paper's scenario end to end on a fresh embedded swarm"),
    ("fhir", "serve"): ("agents.cli.fhir", "serve_main", "serve a FHIR R4 facade (SMART tokens) for your agent"),
    ("loadtest",): ("agents.bench.loadtest", "main", "load test a swarm, with optional fault injection"),
}


def backend_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="emrshare backend", description=_COMMANDS[("backend",)][2])
    parser.parse_args(argv)
    from core import ecdsa
    from core.backend import available_backends, backend_name, selection_reason

    print(f"pairing backend: {backend_name()} ({selection_reason()})")
    print(f"ecdsa backend:   {ecdsa.ecdsa_backend_name()}")
    print(f"available:       {', '.join(available_backends())}")
    return 0


def _usage() -> str:
    lines = ["usage: emrshare COMMAND [ARGS...]", "", "commands:"]
    for path, (module, _, help_) in _COMMANDS.items():
        if importlib.util.find_spec(module) is None:  # not built yet
            continue
        lines.append(f"  {' '.join(path):<16} {help_}")
    lines.append("")
    lines.append("`emrshare COMMAND --help` describes a command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    for length in (2, 1):
        key = tuple(argv[:length])
        if key in _COMMANDS:
            module, func, _ = _COMMANDS[key]
            try:
                mod = importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name == module:
                    print(f"emrshare: '{' '.join(key)}' is not available in this build", file=sys.stderr)
                    return 2
                raise
            try:
                return int(getattr(mod, func)(argv[length:]) or 0)
            except KeyboardInterrupt:
                print("interrupted", file=sys.stderr)
                return 130
    print(f"emrshare: unknown command {' '.join(argv[:2])!r}\n", file=sys.stderr)
    print(_usage(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
