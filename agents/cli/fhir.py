"""``emrshare fhir serve`` (the FHIR R4 facade next to one agent) and the FHIR side of ``patient store``.

``fhir serve`` opens the user's agent from ``DIR/users/<subject>`` (as
``emrshare patient|doctor`` do), serves :class:`agents.fhir.app.Facade` for it
on ``--listen`` until Ctrl-C and, for a patient, also answers doctors' access
requests (like ``patient serve``). Tokens are checked against ``--issuer`` with
keys from ``--jwks-file`` or ``--jwks-url`` (docs/fhir.md).

:func:`store_path` is what ``emrshare patient store`` does with a FHIR file: a
transaction Bundle, a single resource, or a directory of them goes through the
facade's mapping (validated, one record per resource of a transaction Bundle,
one for any other resource; labels from the label table unless ``--label``
names one; record ids from ``Type/id``), unless ``--record-id`` names one record: then the
one file, validated as FHIR, is stored whole under that id and ``--label``. Any other file
is stored under the media type and label the caller names, and is never labelled FHIR.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Callable

import trio

from agents.cli.base import ENV_SUBJECT, ENV_SWARM, env_default, env_help
from agents.errors import AgentError

__all__ = ["serve_main", "store_path", "is_fhir_media_type"]


class FhirCliError(AgentError):
    """An expected failure of a FHIR command (bad options, unreadable files)."""


def is_fhir_media_type(media_type: str | None) -> bool:
    return bool(media_type) and media_type.split(";")[0].strip().lower() == "application/fhir+json"


class _Progress:
    """One line on stderr, rewritten in place, when stderr is a terminal (``stored 12/66``); silent otherwise."""

    def __init__(self, total: int, what: str):
        self.total, self.what, self.done = total, what, 0
        self.tty = sys.stderr.isatty()

    def step(self, _: Any = None) -> None:
        self.done += 1
        if self.tty:
            print(f"\r{self.what} {self.done}/{self.total}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty and self.done:
            print(file=sys.stderr)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


async def store_path(patient: Any, path: Path, *, label: str | None, media_type: str | None,
                     record_id: str | None, labels_file: Path | None = None,
                     progress: Callable[..., Any] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Store ``path`` for ``patient`` (see the module docstring): returns the stored records
    (``record_id``, ``label``, ``media_type``, ``file``) and the lines to print. Every file is
    classified and checked before anything is stored. ``progress(description, total)`` is a
    context manager yielding ``update(done, total)`` (bytes of a non-FHIR file)."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    if path.is_dir() and record_id:
        raise FhirCliError(f"{path} is a directory of several records; drop --record-id")
    fhir_docs = []
    plain = []
    for f in files:
        doc = _load_json(f) if f.suffix.lower() == ".json" or is_fhir_media_type(media_type) else None
        if isinstance(doc, dict) and isinstance(doc.get("resourceType"), str):
            fhir_docs.append((f, doc))
        else:
            plain.append(f)
    for f in plain:
        if media_type is None or is_fhir_media_type(media_type):
            raise FhirCliError(f"{f} is not FHIR R4 JSON, so it is not stored as {media_type or 'FHIR'}; "
                               "name its media type (--media-type text/plain, application/pdf, ...)")
        if not label:
            raise FhirCliError(f"{f} is not FHIR, so no label can be derived; give --label")
    stored: list[dict[str, Any]] = []
    lines: list[str] = []
    if record_id and fhir_docs:  # one FHIR file stored whole, as one record the caller names
        plain, fhir_docs = [f for f, _ in fhir_docs], []
        await _validate_whole(plain[0], label)
        media_type = "application/fhir+json"
    if fhir_docs:
        entries = await _store_fhir(patient, fhir_docs, label=label, record_id=record_id, labels_file=labels_file)
        stored += [{"record_id": e.record_id, "label": e.label, "media_type": "application/fhir+json",
                    "resource": f"{e.resource_type}/{e.resource_id}"} for e in entries]
        by_label: dict[str, int] = {}
        for e in entries:
            by_label[e.label] = by_label.get(e.label, 0) + 1
        lines.append(f"stored {len(entries)} FHIR resources from {len(fhir_docs)} file(s): "
                     + ", ".join(f"{n} under {lab}" for lab, n in sorted(by_label.items())))
    for f in plain:
        bar = progress(f"storing {f.name}", f.stat().st_size) if progress else contextlib.nullcontext(None)
        with bar as update:
            rid = await patient.store(f, label=label, media_type=media_type, record_id=record_id,
                                      progress=update)
        stored.append({"record_id": rid, "label": label, "media_type": media_type, "file": str(f)})
        lines.append(f"stored {rid} under label {label} ({media_type})")
    return stored, lines


async def _validate_whole(f: Path, label: str | None) -> None:
    """A FHIR file stored whole (``--record-id``): valid FHIR R4, under the label the caller names."""
    from agents.fhir import FhirError
    from agents.fhir.app import validate_resource

    if not label:
        raise FhirCliError(f"{f} stored whole as one record needs a label; give --label (or drop --record-id to store each "
                           "resource under the label table's label)")
    try:
        await trio.to_thread.run_sync(validate_resource, json.loads(f.read_bytes()), f.name)
    except FhirError as exc:
        raise FhirCliError(f"{f}: {exc} (docs/fhir.md)") from None


async def _store_fhir(patient: Any, docs: list[tuple[Path, dict]], *, label: str | None, record_id: str | None,
                      labels_file: Path | None) -> list[Any]:
    from agents.fhir import FhirError, LabelMap, LabelMapError, plan_transaction
    from agents.fhir.app import store_entries, validate_resource

    try:
        labels = LabelMap.load(labels_file) if labels_file else LabelMap.default_map()
    except LabelMapError as exc:
        raise FhirCliError(f"label table {labels_file}: {exc}; fix the JSON file (docs/fhir.md)") from None
    entries = []
    for f, doc in docs:
        try:
            await trio.to_thread.run_sync(validate_resource, doc, f.name)
            if doc["resourceType"] == "Bundle" and doc.get("type") == "transaction":
                planned = plan_transaction(doc, labels, max_entries=100_000)
            else:  # one resource (a collection Bundle too): a transaction of one POST
                planned = plan_transaction({"resourceType": "Bundle", "type": "transaction",
                                            "entry": [{"resource": doc, "request": {"method": "POST",
                                                                                    "url": doc["resourceType"]}}]},
                                           labels, max_entries=1)
            for i, e in enumerate(planned):
                await trio.to_thread.run_sync(validate_resource, e.resource, f"{f.name} entry {i}")
        except FhirError as exc:
            raise FhirCliError(f"{f}: {exc} (docs/fhir.md)") from None
        if label:  # the caller names the label of everything in this call
            planned = [dataclasses.replace(e, label=label) for e in planned]
        entries += planned
    progress = _Progress(len(entries), "stored")
    try:
        await store_entries(patient, entries, on_stored=progress.step)
    finally:
        progress.close()
    return entries


# ------------------------------------------------------------------ fhir serve


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emrshare fhir serve",
                                description="serve a FHIR R4 facade for your agent (docs/fhir.md)")
    p.add_argument("--swarm", default=env_default(ENV_SWARM, "swarm-data"),
                   help=env_help("the swarm's data directory", ENV_SWARM, "swarm-data"))
    p.add_argument("--subject", required=env_default(ENV_SUBJECT) is None, default=env_default(ENV_SUBJECT),
                   help=env_help("the user the facade acts for (a registered patient or doctor)", ENV_SUBJECT))
    p.add_argument("--role", choices=("patient", "doctor"), required=True, help="the user's agent kind")
    p.add_argument("--org", help="the user's hospital (default: remembered at registration)")
    p.add_argument("--key-file", type=Path, help="32-byte key file protecting the user's keys (instead of a passphrase)")
    p.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT to serve HTTP on (default 127.0.0.1:8080)")
    p.add_argument("--base-url", help="the public base URL (default http(s)://LISTEN); also the token audience")
    p.add_argument("--issuer", required=True, help="the token issuer (the 'iss' every token must carry)")
    p.add_argument("--audience", help="the 'aud' every token must carry (default: the base URL)")
    keys = p.add_mutually_exclusive_group(required=True)
    keys.add_argument("--jwks-file", type=Path, help="the issuer's signing keys as a JWKS JSON file")
    keys.add_argument("--jwks-url", help="where to fetch the issuer's JWKS (cached; refreshed on an unknown key)")
    p.add_argument("--subject-claim", default="sub", help="the token claim naming the user (default sub)")
    p.add_argument("--labels", type=Path, help="JSON label table (resource type/category -> label; docs/fhir.md)")
    p.add_argument("--certfile", help="TLS certificate (PEM) to serve HTTPS")
    p.add_argument("--keyfile", help="TLS private key (PEM) for --certfile")
    p.add_argument("--client-ca", help="also require client certificates signed by this CA (mutual TLS)")
    p.add_argument("--max-body-mib", type=int, default=16, help="largest request body in MiB (default 16)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds one request may take (default 120)")
    p.add_argument("--max-results", type=int, default=1000, help="most resources in one answer (default 1000)")
    p.add_argument("--approve", action="store_true",
                   help="patient: approve access requests whose policy asks for the patient's approval")
    return p


def serve_main(argv: list[str]) -> int:
    from agents.cli.base import doing

    args = _parser().parse_args(argv)
    args.cmd = "serve"  # for the checks `emrshare patient|doctor` make before any work
    with doing(f"fhir serve {args.subject}"):
        return trio.run(_serve, args) or 0


async def _serve(args: argparse.Namespace) -> int:
    from agents.cli.user import _approve_all, _open_bus, _prepare
    from agents.doctor import DoctorAgent
    from agents.fhir import LabelMap, LabelMapError
    from agents.fhir.app import Facade, FacadeConfig
    from agents.fhir.auth import TokenVerifier
    from agents.patient import PatientAgent

    if bool(args.certfile) != bool(args.keyfile) or (args.client_ca and not args.certfile):
        raise FhirCliError("TLS needs --certfile and --keyfile together; give both (and --client-ca only with them)")
    scheme = "https" if args.certfile else "http"
    base = (args.base_url or f"{scheme}://{args.listen}").rstrip("/")
    try:
        labels = LabelMap.load(args.labels) if args.labels else LabelMap.default_map()
    except LabelMapError as exc:
        raise FhirCliError(f"label table {args.labels}: {exc}; fix the file (docs/fhir.md)") from None
    verifier = TokenVerifier(issuer=args.issuer, audience=args.audience or base, jwks_file=args.jwks_file,
                             jwks_url=args.jwks_url, subject_claim=args.subject_claim)
    files, config, _ = _prepare(args, {})
    kind = PatientAgent if args.role == "patient" else DoctorAgent
    async with _open_bus(files, config) as node:
        address = await node.listen("tcp://127.0.0.1:0") if args.role == "patient" else None
        extra = {"approve": _approve_all if args.approve else None} if args.role == "patient" else {}
        async with kind.open(config, node=node, **extra) as agent:
            if not agent.registered:
                raise FhirCliError(f"{args.subject} is not registered; run "
                                   f"`emrshare {args.role} --subject {args.subject} --org ORG register` first")
            facade = Facade(FacadeConfig(base_url=base, labels=labels, max_body_bytes=args.max_body_mib << 20,
                                         request_timeout=args.timeout, max_results=args.max_results),
                            {args.subject: agent}, verifier)
            if address is not None:
                (config.data_dir / "address").write_text(address)
            try:
                async with trio.open_nursery() as nursery:
                    binds = await nursery.start(lambda task_status: facade.serve(
                        [args.listen], certfile=args.certfile, keyfile=args.keyfile, client_ca=args.client_ca,
                        task_status=task_status))
                    print(f"FHIR R4 facade for {args.role} {args.subject} at {', '.join(binds)} "
                          f"(base URL {base}; Ctrl-C stops)", flush=True)
            finally:
                if address is not None:
                    (config.data_dir / "address").unlink(missing_ok=True)
    return 0
