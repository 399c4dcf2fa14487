"""``emrshare demo``: the paper's scenario end to end on a fresh embedded swarm.

Phases (the paper's, section 4): registration of two hospitals' users; a
patient stores FHIR records under labels; a cardiologist inside the policy's
time window reads one; a doctor outside the policy is denied; the patient
revokes and the next read fails; the audit trail is printed. Then issue 16's
access while the patient is offline: the patient sets a new policy (standing
delegation, an emergency clause) and stops; a newly registered cardiologist
reads without it; an emergency physician is refused with one officer's
co-signature and served with two (break-glass); the patient, back online, sees
both in one call. Every decrypted
record is compared byte for byte with the original. Exit status 0 only if
every check passed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

from core.backend import backend_name

from agents.cli.ledger import late_note
from agents.errors import AgentError, GrantRevoked, PolicyDenied
from agents.swarm import Swarm, SwarmSpec

SHARED_FHIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "fhir-r4"


async def _audit_with_accesses(patient: Any, threshold: int, *, wait_s: float = 30.0) -> list:
    """The patient's audit trail once the peers' batched access entries are on it.

    Peers log re-encryptions in batches (agents/peer/_audit.py), so the entries of a
    read land a moment after the read returns: read the trail until at least
    `threshold` peers' access entries show, for at most `wait_s`, then return what
    is there (the checks that follow say what is missing)."""
    with trio.move_on_after(wait_s):
        while True:
            events = await patient.audit()
            if len({e.get("peer") for e in events if e["event"] == "access"}) >= threshold:
                return events
            await trio.sleep(0.2)
    return await patient.audit()

def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


class Report:
    def __init__(self, out=None):
        self.out = out if out is not None else sys.stdout
        self.failures: list[str] = []
        self.checks = 0

    def phase(self, title: str) -> None:
        print(f"\n== {title}", file=self.out, flush=True)

    def line(self, text: str) -> None:
        print(f"   {text}", file=self.out, flush=True)

    def check(self, ok: bool, what: str) -> None:
        self.checks += 1
        mark = "ok " if ok else "FAIL"
        print(f"   [{mark}] {what}", file=self.out, flush=True)
        if not ok:
            self.failures.append(what)

    async def timed(self, what: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        t0 = time.perf_counter()
        result = await fn()
        self.line(f"{what} ({(time.perf_counter() - t0) * 1000:.0f} ms)")
        return result


def demo_records() -> list[tuple[str, str, bytes]]:
    """(label, record id, bytes): a real HL7 example and generated bundles."""
    from agents.testing.fhir import encode_bundle, generate_bundle

    records = []
    real = SHARED_FHIR / "hl7-r4-examples" / "Bundle-bundle-example.json"
    if real.exists():
        records.append(("general", "hl7-bundle-example", real.read_bytes()))
    for i, (label, kib) in enumerate((("cardiology", 24), ("cardiology", 60), ("labs", 8))):
        records.append((label, f"{label}-{i + 1}", encode_bundle(generate_bundle(seed=100 + i, size_kib=kib))))
    return records


def policy_text(now: float, version: int = 1, emergency: bool = False) -> str:
    clause = "emergency roles doctor cosign 2 window 900\n" if emergency else ""
    return f"""
policy "alice-sharing" version {version}
default deny
{clause}
rule cardiology-team:
  allow read on label "cardiology"
  when role == "doctor" and department == "cardiology"
  during {_utc(now - 3600)} .. {_utc(now + 6 * 3600)}
  approval auto
rule labs-for-my-gp:
  allow read on label "labs"
  when role == "doctor" and department == "general-practice" and organization == "hospital-a"
  approval auto
"""


async def run_demo(data_dir: Path, report: Report) -> None:
    from agents.doctor import DoctorAgent
    from agents.patient import PatientAgent
    from agents.client import UserConfig

    spec = SwarmSpec(data_dir=data_dir)
    report.phase(f"Consortium: {spec.hospitals} hospitals, {spec.peers} peers (threshold {spec.threshold}), "
                 f"{spec.storage_nodes} storage nodes, backend {backend_name()}")
    t0 = time.perf_counter()
    async with Swarm.open(spec, fresh=True) as swarm:
        report.line(f"swarm up in {(time.perf_counter() - t0) * 1000:.0f} ms")
        for line in swarm.describe().splitlines()[2:]:
            report.line(line.strip())

        def config(subject: str, org: str, attributes: dict[str, Any]) -> UserConfig:
            return UserConfig(subject=subject, org=org, attributes=attributes,
                              data_dir=swarm.files.user_dir(subject), manifest=swarm.manifest,
                              passphrase=f"demo passphrase of {subject}", fast_kdf=True)

        users = {
            "alice": ("hospital-a", {"role": "patient"}),
            "dr-heart": ("hospital-b", {"role": "doctor", "department": "cardiology", "specialty": "cardiology"}),
            "dr-skin": ("hospital-a", {"role": "doctor", "department": "dermatology"}),
        }
        async with PatientAgent.open(config("alice", *users["alice"]), node=swarm.node) as alice, \
                DoctorAgent.open(config("dr-heart", *users["dr-heart"]), node=swarm.node) as heart, \
                DoctorAgent.open(config("dr-skin", *users["dr-skin"]), node=swarm.node) as skin:
            report.phase("1. Registration (certificates issued by each hospital's peer, committed on the ledger)")
            for agent, subject in ((alice, "alice"), (heart, "dr-heart"), (skin, "dr-skin")):
                org, attrs = users[subject]
                cert = await report.timed(f"{subject:<9} registered at {org}",
                                          lambda a=agent, s=subject, o=org, at=attrs: a.register(swarm.token(s, o, at, a.enroll_id)))
                report.check(cert.subject == subject and cert.org == org, f"{subject} holds a certificate of {org}")

            report.phase("2. Storage (seal under a label, upload to storage, sign the CID onto the ledger)")
            originals: dict[str, bytes] = {}
            for label, record_id, data in demo_records():
                await report.timed(f"{record_id:<20} label {label:<10} {len(data):>7,} bytes",
                                   lambda d=data, l=label, r=record_id: alice.store(
                                       d, label=l, media_type="application/fhir+json", record_id=r))
                originals[record_id] = data
            listed = {r["record_id"] for r in await alice.records()}
            report.check(listed == set(originals), f"the ledger lists all {len(originals)} records")
            now = time.time()
            await report.timed("policy set: cardiology doctors may read 'cardiology' records "
                               f"from {_utc(now - 3600)} to {_utc(now + 6 * 3600)}",
                               lambda: alice.set_policy(policy_text(now), standing=()))

            report.phase("3-5. Access request, authorization, retrieval (cardiologist inside the policy)")
            target = "cardiology-1"
            plain = await report.timed(f"dr-heart reads alice/{target}", lambda: heart.read("alice", target))
            report.check(plain == originals[target], f"decrypted {target} is byte-identical to the original")
            plain2 = await report.timed("dr-heart reads alice/cardiology-2 (same grant)",
                                        lambda: heart.read("alice", "cardiology-2"))
            report.check(plain2 == originals["cardiology-2"], "second record byte-identical")

            report.phase("Denial (a doctor outside the policy)")
            try:
                await skin.read("alice", target)
                report.check(False, "dr-skin is denied")
            except PolicyDenied as exc:
                report.check(True, f"dr-skin is denied: {exc}")
            try:
                await heart.read("alice", "labs-3")
                report.check(False, "dr-heart is denied the labs record")
            except PolicyDenied as exc:
                report.check(True, f"dr-heart is denied alice/labs-3: {exc}")

            report.phase("6. Revocation")
            grants = [g for g, info in alice.grants.items() if info.get("doctor") == "dr-heart" and not info.get("revoked")]
            report.check(len(grants) == 1, "alice has one active grant for dr-heart")
            for grant in grants:
                await report.timed(f"alice revokes {grant}", lambda g=grant: alice.revoke(g))
            try:
                await heart.read("alice", target)
                report.check(False, "dr-heart's next read fails")
            except GrantRevoked as exc:
                report.check(True, f"dr-heart's next read fails: {exc}")

            report.phase("Audit trail (alice's records, from the ledger)")
            events = await _audit_with_accesses(alice, spec.threshold)
            for e in events:
                report.line(describe_event(e))
            kinds = [e["event"] for e in events]
            for needed in ("store", "set_policy", "access_request", "grant", "access", "revoke_grant"):
                report.check(needed in kinds, f"audit trail has {'an' if needed[0] in 'aeiou' else 'a'} {needed} event")
            accesses = [e for e in events if e["event"] == "access"]
            report.check(len({e.get("peer") for e in accesses}) >= spec.threshold,
                         f"at least {spec.threshold} peers re-encrypted (logged as access transactions)")

            report.phase("7. Going offline: standing delegation and an emergency clause (docs/security.md)")
            deposited = await report.timed(
                "alice sets policy v2 (emergency: 2 officers, 15 min) and deposits standing parts",
                lambda: alice.set_policy(policy_text(now, version=2, emergency=True)))
            for label, mode in sorted(deposited.items()):
                report.line(f"standing parts of {label!r} at the peers, mode {mode}")
            report.check(deposited.get("cardiology") == "auto", "cardiology: the peers may serve the policy alone")
        report.line("alice's process stops")
        await offline_phases(swarm, config, originals, report)


async def offline_phases(swarm: Any, config: Any, originals: dict[str, bytes], report: Report) -> None:
    """Phases 8-10: doctors served while the patient is offline, a break-glass, the patient's return."""
    from agents.doctor import DoctorAgent, cosign_break_glass
    from agents.errors import TransactionRejected
    from agents.patient import PatientAgent

    users = {
        "dr-new": ("hospital-a", {"role": "doctor", "department": "cardiology"}),
        "dr-er": ("hospital-b", {"role": "doctor", "department": "emergency"}),
        "olga": ("hospital-b", {"role": "nurse", "officer": True}),
        "oscar": ("hospital-b", {"role": "nurse", "officer": True}),
    }
    agents: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        report.phase("8. A cardiologist registered after the patient left reads (no message to the patient)")
        for subject, (org, attrs) in users.items():
            agent = agents[subject] = await stack.enter_async_context(
                DoctorAgent.open(config(subject, org, attrs), node=swarm.node))
            await agent.register(swarm.token(subject, org, attrs, agent.enroll_id))
        report.line("registered dr-new (cardiology, hospital-a), dr-er (emergency, hospital-b), officers olga "
                    "and oscar (hospital-b)")
        plain = await report.timed("dr-new reads alice/cardiology-1", lambda: agents["dr-new"].read(
            "alice", "cardiology-1"))
        report.check(plain == originals["cardiology-1"], "byte-identical, served by the peers from their parts")

        report.phase("9. Break-glass: an emergency physician outside the policy")
        target = "hl7-bundle-example" if "hl7-bundle-example" in originals else "labs-3"
        er = agents["dr-er"]
        try:
            await er.read("alice", target)
            report.check(False, "dr-er is denied by the policy")
        except PolicyDenied:
            report.check(True, f"dr-er is denied alice/{target} by the policy")
        reason = "unconscious on arrival, no family reachable"

        def cosign(officer: str, bg_id: str) -> bytes:
            return cosign_break_glass(agents[officer].keys.ecdsa_private, bg_id, "dr-er", "alice", target, reason)

        try:
            await er.break_glass("alice", target, reason, {"olga": cosign("olga", "bg-demo-1")},
                                 break_glass_id="bg-demo-1")
            report.check(False, "one officer's co-signature is refused")
        except TransactionRejected as exc:
            report.check(exc.reason == "not_allowed", f"one officer's co-signature is refused ({exc.reason})")
        plain = await report.timed(
            f"dr-er breaks the glass on alice/{target} with olga and oscar co-signing",
            lambda: er.break_glass("alice", target, reason,
                                   {o: cosign(o, "bg-demo-2") for o in ("olga", "oscar")},
                                   break_glass_id="bg-demo-2"))
        report.check(plain == originals[target], f"{target} byte-identical, for 15 minutes")

    report.phase("10. alice comes back: what happened while she was away")
    async with PatientAgent.open(config("alice", "hospital-a", {"role": "patient"}), node=swarm.node) as alice:
        away = await alice.while_away(0)
        with trio.move_on_after(5):  # the peers log their re-encryptions a moment after serving them
            while not away["emergency_reads"]:
                await trio.sleep(0.1)
                away = await alice.while_away(0)
        for key in ("standing_grants", "standing_reads", "emergencies", "emergency_reads"):
            for e in away[key]:
                report.line(describe_event(e))
        report.check([e["actor"] for e in away["standing_grants"]] == ["dr-new"],
                     "alice sees dr-new's request, granted from her standing delegation")
        report.check(any(e.get("reason") == reason and e.get("cosigners") == ["olga", "oscar"]
                         for e in away["emergencies"]), "alice sees the emergency access: who, why, co-signers")
        report.check(bool(away["emergency_reads"]), "and the re-encryptions made under it")


def describe_event(e: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(e["time"] / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    kind = e["event"]
    if kind == "store":
        what = f"stored {e.get('record_id')} ({e.get('label')})"
    elif kind == "set_policy":
        what = f"policy {e.get('policy')} v{e.get('version')}"
    elif kind == "access_request":
        d = e.get("decision", {})
        what = f"{e['actor']} asked for {e.get('record_id')}: {d.get('effect')} by rule {d.get('rule')}"
        what += " [granted by the ledger from the standing delegation]" if e.get("standing") else ""
    elif kind == "grant":
        what = f"granted {e.get('label')} to {e.get('doctor')} via {', '.join(e.get('peers', []))}"
    elif kind == "access":
        what = f"{e.get('peer')} re-encrypted {e.get('record_id')} for {e.get('doctor')}"
        what += " [emergency]" if e.get("emergency") else " [standing]" if e.get("standing") else ""
        what += late_note(e)
    elif kind == "revoke_grant":
        what = f"revoked {e.get('grant_id')} of {e.get('doctor')}"
    elif kind == "deny_request":
        what = f"rejected request {e.get('request_id')} of {e.get('doctor')}"
    elif kind == "standing":
        what = (f"standing delegation of {e.get('label')} withdrawn" if e.get("mode") == "off" else
                f"standing delegation of {e.get('label')} ({e.get('mode')}) to {', '.join(e.get('peers', []))}")
    elif kind == "break_glass":
        what = (f"EMERGENCY: {e.get('doctor')} opened {e.get('label')} ({e.get('record_id')}) because "
                f"{e.get('reason')!r}, co-signed by {', '.join(e.get('cosigners', []))}")
    else:
        what = kind
    return f"{when}  block {e.get('height', '?'):>3}  {e['actor']:<12} {what}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emrshare demo", description=__doc__.splitlines()[0].replace("``emrshare demo``: ", "").capitalize())
    parser.add_argument("--data", help="a new or empty data directory (default: a fresh temporary one, removed after)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    args = parser.parse_args(argv or [])
    from agents.cli.base import fail, verbose

    logging.basicConfig(level=logging.INFO if verbose() else logging.ERROR,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    tmp = None
    if args.data:
        data_dir = Path(args.data)
        if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
            fail("demo", f"{data_dir} is not an empty directory", "give --data a new or empty directory")
    else:
        tmp = Path(tempfile.mkdtemp(prefix="emrshare-demo-"))
        data_dir = tmp / "swarm"
    report = Report()
    t0 = time.perf_counter()
    try:
        trio.run(run_demo, data_dir, report)
    except AgentError as exc:
        report.failures.append(f"unexpected {type(exc).__name__}: {exc}")
        print(f"\nFAILED: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp is not None:
            print(f"data kept in {data_dir}")
    total = time.perf_counter() - t0
    if report.failures:
        print(f"\ndemo FAILED: {len(report.failures)} of {report.checks} checks failed in {total:.1f} s:",
              file=sys.stderr)
        for f in report.failures:
            print(f"  - {f}", file=sys.stderr)
        return 1
    print(f"\ndemo passed: {report.checks} checks in {total:.1f} s")
    return 0
