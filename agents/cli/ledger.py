"""``emrshare ledger verify`` and ``emrshare ledger audit``: offline checks of the peers' stored ledgers.

``--data`` is the swarm's data directory (default ``EMRSHARE_SWARM``; every
peer's ledger under ``agents/<peer>/``, or the one ``--peer`` names), a
peer's data directory, or its ``ledger.sqlite``.

``verify`` re-applies every stored block to a fresh in-memory ledger from the
stored genesis and checks, block by block: the block decodes, its stored hash
is its hash, it extends the previous one, its Merkle root and orderer
signature hold (``Ledger.apply``), and the validity marks and state root the
peer stored are the ones recomputed; at the end, the stored world state must
equal the replayed one key for key. It names the first bad block (exit 1) or
prints ``chain OK: N blocks, root <hex>``, one line per peer (``--json``).

``audit`` prints a patient's access history from the stored state: who
requested what, the policy decision and rule, who granted, which peers
re-encrypted, revocations, with ISO 8601 UTC dates; ``--json`` for machines; ``--fhir``
for a FHIR R4 Bundle of AuditEvents (agents.fhir.audit).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

from agents.cli.base import ENV_SWARM, env_default, env_help, fail
from agents.cli.output import print_json, table, utc
from core import canonical
from core.errors import CoreError, DecodeError, ValidationError
from core.ledger import Block, Ledger, MemoryKV, parse_genesis
from core.state import audit_prefix

from agents.ledger_store import LedgerStore, StoreError

__all__ = ["verify_main", "audit_main", "verify_store", "audit_events", "DB_NAME"]

DB_NAME = "ledger.sqlite"


class ChainError(Exception):
    def __init__(self, height: int | None, message: str):
        super().__init__(f"block {height}: {message}" if height is not None else message)
        self.height = height


def _open(data: Path) -> LedgerStore:
    path = data / DB_NAME if data.is_dir() else data
    return LedgerStore(path, readonly=True)


def verify_store(store: LedgerStore) -> tuple[int, bytes]:
    """Replay and check the whole stored chain; (last height, state root) or ChainError."""
    rows = list(store.block_rows())
    if not rows or rows[0][0] != 0:
        raise ChainError(0, "no genesis block stored")
    try:
        genesis = parse_genesis(rows[0][2])
    except (DecodeError, CoreError) as exc:
        raise ChainError(0, f"genesis does not verify: {exc}") from None
    if genesis.hash != rows[0][1]:
        raise ChainError(0, "stored hash is not the genesis block's hash")
    kv = MemoryKV()
    ledger = Ledger(genesis, kv)
    expected = 1
    for height, stored_hash, data, marks, root in rows[1:]:
        if height != expected:
            raise ChainError(expected, "missing from the store")
        try:
            block = Block.from_bytes(data)
        except DecodeError as exc:
            raise ChainError(height, f"does not decode: {exc}") from None
        if block.height != height:
            raise ChainError(height, f"stored at height {height} but says {block.height}")
        if block.hash != stored_hash:
            raise ChainError(height, "stored hash is not the block's hash")
        try:
            result = ledger.apply(block)
        except ValidationError as exc:
            raise ChainError(height, f"{exc.code}: {exc.message}") from None
        if marks is None or canonical.unpack(marks) != list(result.marks):
            raise ChainError(height, "stored validity marks differ from the recomputed ones")
        if root != result.state_root:
            raise ChainError(height, "stored state root differs from the recomputed one")
        kv.apply(result.writes)
        expected += 1
    stored = dict(store.state_items())
    if stored != kv.data:
        differing = sorted(set(stored) ^ set(kv.data) | {k for k in stored.keys() & kv.data.keys()
                                                           if stored[k] != kv.data[k]})
        raise ChainError(None, f"stored world state differs from the replayed chain at key {differing[0]!r}"
                               f" ({len(differing)} keys differ)")
    _verify_shares(store, ledger)
    height, _, root = ledger.head()
    return height, root


def _verify_shares(store: LedgerStore, ledger: Ledger) -> None:
    """Every sealed key share the peer keeps belongs to a committed grant (or standing
    delegation) and hashes to what the patient committed for this peer's proxy index
    (grant ``shares[peer id]``, delegation ``parts[peer id]``)."""
    by_index = {p.index: p.id for p in ledger.config.peers}
    for grant_id, index, sealed in store.share_rows():
        peer = by_index.get(index)
        if peer is None:
            raise ChainError(None, f"share for grant {grant_id!r} has index {index}, no peer's proxy index")
        grant = ledger.get(f"grant/{grant_id}")
        delegation = ledger.get(f"delegation/{grant_id}") if grant is None else None
        if grant is None and delegation is None:
            raise ChainError(None, f"a share is stored for grant {grant_id!r}, which is not on the ledger")
        expected = grant["shares"].get(peer) if grant is not None else delegation["parts"].get(peer)
        if expected is None or hashlib.sha256(sealed).digest() != expected:
            raise ChainError(None, f"the share stored for grant {grant_id!r} does not match the hash the patient "
                                   f"committed for {peer}")


def _ledgers(data: Path, peer: str | None, what: str) -> list[tuple[str, Path]]:
    """(name, ledger path) for ``--data``: a swarm directory (its peers, or ``--peer``),
    a peer's data directory, or a ledger file."""
    if not data.exists():
        fail(what, f"{data}: no such file or directory", f"give --data the swarm's directory (or set {ENV_SWARM})")
    if data.is_dir() and (data / "manifest.json").exists():
        from agents.swarm import SwarmFiles

        peers = SwarmFiles(data).manifest().peers
        if peer is not None:
            if peer not in peers:
                fail(what, f"no peer {peer!r} in the swarm at {data}", f"its peers: {', '.join(peers)}")
            peers = [peer]
        found = [(p, data / "agents" / p / DB_NAME) for p in peers if (data / "agents" / p / DB_NAME).exists()]
        if not found:
            fail(what, f"no peer of the swarm at {data} has a ledger yet", "start the swarm once (`emrshare swarm up`)")
        return found
    path = data / DB_NAME if data.is_dir() else data
    if not path.exists():
        fail(what, f"no ledger in {data} (no {DB_NAME}, no manifest.json)",
             "give --data a swarm directory, a peer's directory or its ledger.sqlite")
    return [(data.name if data.is_dir() else data.parent.name, path)]


def _open_ledger(path: Path, what: str) -> LedgerStore:
    try:
        return LedgerStore(path, readonly=True)
    except (StoreError, OSError) as exc:
        fail(what, f"cannot open {path}: {exc}", "check that it is a peer's ledger.sqlite")


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=env_default(ENV_SWARM, "swarm-data"), metavar="DIR",
                        help=env_help("the swarm's data directory, a peer's data directory or its ledger.sqlite",
                                      ENV_SWARM, "swarm-data"))
    parser.add_argument("--peer", help="in a swarm directory: only this peer's ledger (default: every peer's)")


def verify_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="emrshare ledger verify",
        description="Re-validate the peers' stored chains block by block; name the first bad block. "
                    "Exit status 1 if any chain is bad.")
    _data_options(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    results = []
    for name, path in _ledgers(args.data, args.peer, "ledger verify"):
        store = _open_ledger(path, "ledger verify")
        try:
            height, root = verify_store(store)
            results.append({"peer": name, "ok": True, "blocks": height + 1, "root": root.hex()})
        except ChainError as exc:
            results.append({"peer": name, "ok": False, "error": str(exc), "height": exc.height})
        finally:
            store.close()
    if args.json:
        print_json(results)
    else:
        for r in results:
            status = f"chain OK: {r['blocks']} blocks, root {r['root']}" if r["ok"] else f"chain BAD: {r['error']}"
            print(f"{r['peer']}: {status}" if len(results) > 1 else status)
    return 0 if all(r["ok"] for r in results) else 1


# ------------------------------------------------------------------ audit


def audit_events(store: LedgerStore, patient: str) -> list[dict[str, Any]]:
    return [canonical.unpack(v, max_size=1 << 22, what=k) for k, v in store.scan(audit_prefix(patient))]


def describe(event: dict[str, Any]) -> str:
    """One event as a line: its UTC date, block and what happened."""
    return f"{utc(event['time'])}  block {event['height']:>6}  {event_text(event)}"


def event_text(event: dict[str, Any]) -> str:
    """What happened, as a sentence (no date or block)."""
    kind, actor = event["event"], event["actor"]
    if kind == "store":
        what = f"{actor} stored record {event.get('record_id')} (label {event.get('label')}, cid {event.get('cid')})"
    elif kind == "set_policy":
        what = f"{actor} set policy {event.get('policy')!r} version {event.get('version')}"
    elif kind == "access_request":
        d = event.get("decision") or {}
        what = (f"{actor} requested record {event.get('record_id')} (request {event.get('request_id')}): "
                f"{d.get('effect', '?')} by rule {d.get('rule', '?')}"
                + (f", approval {d['approval']}" if d.get("approval") else "")
                + (f", grant {event['grant_id']}" if event.get("grant_id") else "")  # from a standing delegation
                + (f" - {d['reason']}" if d.get("reason") else ""))
    elif kind == "grant":
        what = (f"{actor} granted {event.get('doctor')} label {event.get('label')} (grant {event.get('grant_id')}, "
                f"request {event.get('request_id')}, shares at {', '.join(event.get('peers') or [])})")
    elif kind == "deny_request":
        what = f"{actor} rejected request {event.get('request_id')} of {event.get('doctor')}: {event.get('reason')}"
    elif kind == "revoke_grant":
        what = f"{actor} revoked grant {event.get('grant_id')} of {event.get('doctor')}: {event.get('reason')}"
    elif kind == "access":
        what = (f"{actor} re-encrypted record {event.get('record_id')} for {event.get('doctor')} "
                f"(grant {event.get('grant_id')}, share {event.get('share_index')})" + late_note(event))
    else:
        what = f"{kind} by {actor}"
    return what


def late_note(event: dict[str, Any]) -> str:
    """For an ``access`` the ledger flagged ``late``: the grant was revoked or had expired by
    the time the peer's access batch committed; the ledger took the entry because it was
    served before the peer applied the revocation (at most two clock skews after it) or
    at most one skew past the expiry (core.ledger, ``LATE_SERVE_SKEWS``)."""
    late = event.get("late")
    if late == "revoked":
        return " [logged after the grant was revoked: served before the serving peer had applied the revocation]"
    if late == "expired":
        return " [logged after the grant expired: served at most one clock skew past its expiry]"
    return ""


def audit_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emrshare ledger audit",
                                     description="A patient's access history, read from a peer's stored ledger.")
    _data_options(parser)
    parser.add_argument("--patient", required=True, help="the patient's id")
    parser.add_argument("--json", action="store_true", help="print JSON (times as Unix ms and as UTC text)")
    parser.add_argument("--fhir", action="store_true",
                        help="print a FHIR R4 Bundle of AuditEvents (IHE Basic Audit Log Patterns; docs/fhir.md)")
    args = parser.parse_args(argv)
    name, path = _ledgers(args.data, args.peer, "ledger audit")[0]  # one peer's view is the ledger's
    store = _open_ledger(path, "ledger audit")
    try:
        events = audit_events(store, args.patient)
    finally:
        store.close()
    if args.fhir:
        from agents.fhir import audit_bundle

        print_json(audit_bundle(events, args.patient))
        return 0
    if args.json:
        print_json([{**e, "utc": utc(e["time"])} for e in events])
        return 0
    if not events:
        print(f"no ledger events for {args.patient}")
        return 0
    table(["time (UTC)", "block", "event"], [[utc(e["time"]), e["height"], event_text(e)] for e in events],
          title=f"access history of {args.patient} ({len(events)} events, from {name}'s ledger)")
    return 0
