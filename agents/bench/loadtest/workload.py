"""The emrshare workload: patients and doctors doing the paper's phases under load.

Users: ``patients`` patient agents and ``doctors`` doctor agents, registered
at their hospitals' peers. Doctors' departments cycle through cardiology,
general practice, radiology and dermatology. Every patient sets the same
policy (auto approval)::

    cardiology records -> cardiology doctors
    labs records       -> general-practice doctors
    imaging records    -> radiology and cardiology doctors
    (dermatology doctors: nothing; everything else: default deny)

Operations (weights of the mix, ``--mix``):

* ``store``: a patient stores a record: a FHIR R4 transaction bundle of 2-200
  KiB (log-uniform size; label cardiology or labs), or with probability
  ``imaging_fraction`` a multi-MiB imaging blob (label imaging).
* ``access``: an authorized doctor reads a stored record. If the doctor holds
  no grant that covers the record (of its patient and label, and of the
  label-key epoch the record is sealed under: a revocation moves the label's
  new records to the next epoch) this is the full access path (access request
  committed, the patient grants, t peers re-encrypt: phase ``access``);
  otherwise the retrieval with a held grant (phase ``read``). The plaintext
  is checked against the stored record's SHA-256.
* ``denied``: a doctor outside the policy reads a record; the expected result
  is :class:`PolicyDenied`. Anything else is a failure (reason ``wrong
  outcome: ...``).
* ``revoke``: a patient revokes a grant a doctor holds, then that doctor's
  next read of the label must fail with :class:`GrantRevoked`.

Each (doctor, patient, label) is used by one operation at a time (a doctor's
grant cache is per such triple), so a revocation check is never raced by a
read of the same grant.

The load test's patients approve what the ledger leaves to them (a doctor
whose grant they revoked asks again under the unchanged policy: the ledger no
longer grants it by itself), for the label.

Patients-offline mode (``patients_offline``, ``emrshare loadtest
--patients-offline``): each patient sets the policy with its standing
delegation, stores its initial records and closes; the mix then has no
``store`` or ``revoke`` (both need the patient), and every grant is the one the
ledger makes from a standing delegation, served by the peers alone.

At the end, :meth:`EmrWorkload.verify` reads back every record whose store
was acknowledged, through an authorized doctor, and compares it byte for byte
with the data stored (regenerated from its seed).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import trio

import bus

from agents.errors import AgentError, GrantRevoked, PolicyDenied
from agents.bench.loadtest.engine import Op, Result

__all__ = ["WorkloadSpec", "EmrWorkload", "StoredRecord", "DEPARTMENTS", "payload", "POLICY"]

DEPARTMENTS = ("cardiology", "general-practice", "radiology", "dermatology")
LABEL_READERS = {
    "cardiology": ("cardiology",),
    "labs": ("general-practice",),
    "imaging": ("radiology", "cardiology"),
}
POLICY = """
policy "loadtest" version 1
default deny
rule cardiology-team:
  allow read on label "cardiology"
  when role == "doctor" and department == "cardiology"
  approval auto
rule labs-for-gps:
  allow read on label "labs"
  when role == "doctor" and department == "general-practice"
  approval auto
rule imaging-readers:
  allow read on label "imaging"
  when role == "doctor" and department in ["radiology", "cardiology"]
  approval auto
"""
DEFAULT_MIX = {"store": 25.0, "access": 60.0, "denied": 8.0, "revoke": 7.0}


@dataclass
class WorkloadSpec:
    patients: int = 20
    doctors: int = 5
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    fhir_kib: tuple[int, int] = (2, 200)
    imaging_fraction: float = 0.03
    imaging_mib: tuple[float, float] = (1.0, 4.0)
    initial_records: int = 1  # per patient, stored during setup
    setup_concurrency: int = 8
    request_timeout: float = 5.0
    seed: int = 1
    patients_offline: bool = False  # patients close after setup (standing delegations serve the doctors)

    def check(self) -> None:
        if self.patients < 1 or self.doctors < 1:
            raise ValueError("need at least one patient and one doctor")
        unknown = set(self.mix) - set(DEFAULT_MIX)
        if unknown:
            raise ValueError(f"unknown operations in the mix: {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(DEFAULT_MIX)})")
        if any(w < 0 for w in self.mix.values()) or not sum(self.mix.values()) > 0:
            raise ValueError("mix weights must be >= 0 with a positive sum")
        lo, hi = self.fhir_kib
        if not 2 <= lo <= hi <= 200:
            raise ValueError("FHIR bundle sizes must be within 2..200 KiB")
        if not 0 <= self.imaging_fraction <= 1:
            raise ValueError("imaging fraction must be within [0, 1]")
        if not 0 < self.imaging_mib[0] <= self.imaging_mib[1] <= 64:
            raise ValueError("imaging sizes must be within (0, 64] MiB")


@dataclass(frozen=True, slots=True)
class StoredRecord:
    patient: str
    record_id: str
    label: str
    kind: str  # "fhir" or "imaging"
    seed: int
    size: int  # the size asked of the generator: payload(kind, seed, size) gives the bytes again
    length: int  # the bytes actually stored
    sha256: bytes


_BUNDLE_HEAD = b'{"resourceType":"Bundle",'


@functools.lru_cache(maxsize=256)
def _fhir_template(kib: int) -> bytes:
    from agents.testing.fhir import encode_bundle, generate_bundle

    body = encode_bundle(generate_bundle(seed=kib, size_kib=kib))
    if not body.startswith(_BUNDLE_HEAD):
        raise ValueError("the FHIR generator's Bundle no longer starts with its resourceType")
    return body


def payload(kind: str, seed: int, size: int) -> bytes:
    """The bytes of a record, a pure function of (kind, seed, size).

    A FHIR record is the generated Bundle of its size (made once per size, at most 256 kept:
    ~10 MiB) with ``"id": "lt-<seed>"`` added, so every record differs while the load test
    spends its CPU on the system under test, not on making test data (generating a 50 KiB
    Bundle costs ~3 ms of the GIL the in-process swarm shares)."""
    if kind == "fhir":
        body = _fhir_template(max(2, min(200, size // 1024)))
        return _BUNDLE_HEAD + b'"id":"lt-%x",' % seed + body[len(_BUNDLE_HEAD):]
    if kind == "imaging":
        # a DICOM-like preamble and deterministic pixel noise (not secret: test data)
        head = b"\x00" * 128 + b"DICM" + f"emrshare-loadtest imaging seed={seed}".encode()
        return head + random.Random(seed).randbytes(max(0, size - len(head)))
    raise ValueError(f"unknown record kind {kind!r}")


class WrongOutcome(Exception):
    """An operation's result contradicts what the policy/ledger state requires."""


class Corrupted(Exception):
    """A read returned bytes that differ from what was stored."""


def classify(exc: BaseException) -> str:
    if isinstance(exc, WrongOutcome):
        return f"wrong outcome: {exc}"
    if isinstance(exc, Corrupted):
        return "corrupted read"
    if isinstance(exc, AgentError):
        return f"{type(exc).__name__} [{exc.code}]"
    if isinstance(exc, bus.BusError):
        return f"bus {type(exc).__name__}"
    if isinstance(exc, trio.TooSlowError):
        return "timeout"
    return f"{type(exc).__name__}: {str(exc)[:80]}"


@dataclass
class Users:
    patients: list[Any]
    doctors: list[Any]
    departments: dict[str, str]  # doctor subject -> department


class EmrWorkload:
    """See the module docstring. Create with :meth:`open` (opens and registers the agents)."""

    def __init__(self, spec: WorkloadSpec, users: Users):
        self.spec = spec
        self.users = users
        self.patients = {p.subject: p for p in users.patients}
        self.doctors = {d.subject: d for d in users.doctors}
        self.records: list[StoredRecord] = []
        self.by_patient: dict[str, list[StoredRecord]] = {}
        self.store_attempts = 0
        self.unacknowledged: list[tuple[str, str, str]] = []  # (patient, record id, reason)
        self.revoked: list[str] = []  # grant ids whose revocation was acknowledged
        self._locks: dict[tuple[str, str, str], trio.Lock] = {}
        self._counter = 0
        self.checks: dict[str, int] = {"denied_correctly": 0, "revoked_correctly": 0, "reads_verified": 0}
        self.wrong: list[str] = []  # wrong outcomes (first few kept verbatim)
        self.corrupted_reads: list[str] = []
        self._mix = [(k, w) for k, w in spec.mix.items()
                     if w > 0 and not (spec.patients_offline and k in ("store", "revoke"))]
        if not self._mix:
            raise ValueError("with patients offline the mix needs access or denied operations")
        self.readers = {label: [d for d in users.doctors if users.departments[d.subject] in depts]
                        for label, depts in LABEL_READERS.items()}
        self.non_readers = {label: [d for d in users.doctors if users.departments[d.subject] not in depts]
                            for label, depts in LABEL_READERS.items()}

    # ------------------------------------------------------------ setup

    @property
    def access_only_mix(self) -> bool:
        """Whether every operation of the mix is an access (then the access saturation is the mix's)."""
        return all(k == "access" for k, _ in self._mix)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, spec: WorkloadSpec, target: Any, setup_recorder: Any = None,
                   clock: Any = None, progress: Any = None) -> AsyncIterator["EmrWorkload"]:
        """Open every agent on ``target`` (see :mod:`agents.bench.loadtest.target`), register them,
        set the policies and store the initial records (timed into ``setup_recorder``; each step
        reported to ``progress``, a :class:`agents.bench.loadtest.progress.SetupProgress`, if given)."""
        from agents.client import UserConfig
        from agents.doctor import DoctorAgent
        from agents.patient import PatientAgent

        spec.check()
        orgs = list(target.manifest.peer_orgs)
        run_id = secrets.token_hex(3)
        clock = clock or (lambda: time.perf_counter())

        def config(subject: str, org: str, attrs: dict) -> UserConfig:
            return UserConfig(subject=subject, org=org, attributes=attrs, data_dir=target.user_dir(subject),
                              manifest=target.manifest, passphrase=f"loadtest {subject}", fast_kdf=True,
                              request_timeout=spec.request_timeout)

        async with contextlib.AsyncExitStack() as stack:
            plan: list[tuple[str, str, dict, bool]] = []
            departments: dict[str, str] = {}
            for i in range(spec.patients):
                plan.append((f"lt{run_id}-p{i + 1}", orgs[i % len(orgs)], {"role": "patient"}, True))
            for i in range(spec.doctors):
                dept = DEPARTMENTS[i % len(DEPARTMENTS)]
                subject = f"lt{run_id}-d{i + 1}"
                departments[subject] = dept
                plan.append((subject, orgs[(i + 1) % len(orgs)], {"role": "doctor", "department": dept}, False))
            patients, doctors = [], []
            stage = progress.stage if progress is not None else (lambda name, total: None)
            advance = progress.advance if progress is not None else (lambda name: None)
            stage("opening agents", len(plan))

            async def approve(info: dict) -> str:
                return "label"

            for subject, org, attrs, is_patient in plan:
                opening = (PatientAgent.open(config(subject, org, attrs), node=target.node, approve=approve)
                           if is_patient else DoctorAgent.open(config(subject, org, attrs), node=target.node))
                agent = await stack.enter_async_context(opening)
                (patients if is_patient else doctors).append((agent, org, attrs))
                advance("opening agents")
            self = cls(spec, Users([a for a, _, _ in patients], [a for a, _, _ in doctors], departments))

            async def timed(phase: str, fn) -> None:
                t0 = clock()
                try:
                    await fn()
                except Exception as exc:
                    if setup_recorder is not None:
                        setup_recorder.record(phase, t0, clock(), False, classify(exc))
                    raise
                if setup_recorder is not None:
                    setup_recorder.record(phase, t0, clock(), True)

            limiter = trio.CapacityLimiter(spec.setup_concurrency)

            async def each(name: str, items, fn) -> None:
                stage(name, len(items))

                async def one(item) -> None:
                    async with limiter:
                        await fn(item)
                    advance(name)

                async with trio.open_nursery() as nursery:
                    for item in items:
                        nursery.start_soon(one, item)

            await each("registering users", patients + doctors, lambda a: timed(
                "register", lambda: a[0].register(target.token(a[0].subject, a[1], a[2], a[0].enroll_id))))
            rng = random.Random(spec.seed ^ 0x5EED)
            initial = [(p, self._choose_record(rng)) for p in self.users.patients for _ in range(spec.initial_records)]
            standing = None if spec.patients_offline else ()  # offline: standing parts for the policy's labels
            await each("setting policies", self.users.patients,
                       lambda p: timed("set_policy", lambda: p.set_policy(POLICY, standing=standing)))
            await each("storing initial records", initial,
                       lambda pr: timed("store", lambda: self._store(pr[0], *pr[1])))
            if spec.patients_offline:
                for p in self.users.patients:  # the patients go offline: nothing reaches or answers them
                    await p.endpoint.aclose()
            yield self

    # ------------------------------------------------------------ helpers

    def _lock(self, doctor: str, patient: str, label: str) -> trio.Lock:
        key = (doctor, patient, label)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = trio.Lock()
        return lock

    def _choose_record(self, rng: random.Random) -> tuple[str, str, int, int]:
        """(kind, label, seed, size) of a new record."""
        self._counter += 1
        seed = (self.spec.seed << 32) + self._counter
        if rng.random() < self.spec.imaging_fraction:
            lo, hi = self.spec.imaging_mib
            return "imaging", "imaging", seed, int(rng.uniform(lo, hi) * (1 << 20))
        lo, hi = self.spec.fhir_kib
        kib = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
        return "fhir", rng.choice(("cardiology", "labs")), seed, kib * 1024

    async def _store(self, patient: Any, kind: str, label: str, seed: int, size: int) -> int:
        data = await trio.to_thread.run_sync(payload, kind, seed, size)
        record_id = f"r{seed:x}"
        self.store_attempts += 1
        media = "application/fhir+json" if kind == "fhir" else "application/dicom"
        try:
            await patient.store(data, label=label, media_type=media, record_id=record_id)
        except Exception as exc:
            self.unacknowledged.append((patient.subject, record_id, classify(exc)))
            raise
        rec = StoredRecord(patient.subject, record_id, label, kind, seed, size, len(data), hashlib.sha256(data).digest())
        self.records.append(rec)
        self.by_patient.setdefault(patient.subject, []).append(rec)
        return len(data)

    def _pick_record(self, rng: random.Random, need_readers: bool = True) -> StoredRecord | None:
        if not self.records:
            return None
        for _ in range(8):
            rec = self.records[rng.randrange(len(self.records))]
            if not need_readers or self.readers[rec.label]:
                return rec
        return None

    async def _read_checked(self, doctor: Any, rec: StoredRecord) -> bytes:
        data = await doctor.read(rec.patient, rec.record_id)
        if len(data) != rec.length or hashlib.sha256(data).digest() != rec.sha256:
            self.corrupted_reads.append(f"{doctor.subject} read {rec.patient}/{rec.record_id}")
            raise Corrupted(rec.record_id)
        return data

    # ------------------------------------------------------------ operations

    def classify(self, exc: BaseException) -> str:
        return classify(exc)

    def next_op(self, rng: random.Random) -> Op:
        r = rng.random() * sum(w for _, w in self._mix)
        name = self._mix[-1][0]
        for k, w in self._mix:
            r -= w
            if r < 0:
                name = k
                break
        return getattr(self, f"_op_{name}")(rng)

    def _op_store(self, rng: random.Random) -> Op:
        patient = rng.choice(self.users.patients)
        choice = self._choose_record(rng)

        async def run() -> Result:
            return Result(nbytes=await self._store(patient, *choice))

        return Op("store", run)

    def _op_access(self, rng: random.Random) -> Op:
        rec = self._pick_record(rng)
        if rec is None:
            return self._op_store(rng)
        doctor = rng.choice(self.readers[rec.label])

        async def run() -> Result:
            async with self._lock(doctor.subject, rec.patient, rec.label):
                phase = "read" if doctor.cached_grant(rec.patient, rec.label, rec.record_id,
                                                      self._epoch(rec)) else "access"
                data = await self._read_checked(doctor, rec)
            return Result(phase=phase, nbytes=len(data))

        return Op("access", run)

    def _epoch(self, rec: StoredRecord) -> int | None:
        """The label-key epoch ``rec`` is sealed under, as its patient noted it (None: not known here)."""
        patient = self.patients.get(rec.patient)
        note = patient.state["records"].get(rec.record_id) if patient is not None else None
        return int(note.get("epoch", 0)) if isinstance(note, dict) else None

    def _op_denied(self, rng: random.Random) -> Op:
        rec = self._pick_record(rng, need_readers=False)
        if rec is None or not self.non_readers[rec.label]:
            return self._op_store(rng)
        doctor = rng.choice(self.non_readers[rec.label])

        async def run() -> None:
            async with self._lock(doctor.subject, rec.patient, rec.label):
                if await self._refused(doctor, rec.patient, rec.record_id, PolicyDenied, "denied_correctly",
                                       f"{doctor.subject} ({self.users.departments[doctor.subject]}) on {rec.label}"):
                    return None
            self._wrong(f"{doctor.subject} ({self.users.departments[doctor.subject]}) read a "
                        f"{rec.label} record the policy denies")
            raise WrongOutcome("granted to a doctor outside the policy")

        return Op("denied", run)

    async def _refused(self, doctor: Any, patient: str, record_id: str, refusal: type[AgentError], check: str,
                       who: str) -> bool:
        """Read a record that must be refused with ``refusal``: True (and ``check``
        counted) when it is; another error is recorded as a wrong outcome and raised;
        False when the read succeeded (the caller records that)."""
        try:
            await doctor.read(patient, record_id)
        except refusal:
            self.checks[check] += 1
            return True
        except AgentError as exc:
            self._wrong(f"{who}: {type(exc).__name__} instead of {refusal.__name__}", exc)
            raise
        return False

    def _op_revoke(self, rng: random.Random) -> Op:
        held = []
        for d in self.users.doctors:
            for entry in d.grant_cache.values():
                if entry["expires_at"] > time.time() and entry["patient"] in self.patients:
                    held.append((d, entry))
        if not held:
            return self._op_access(rng)
        doctor, entry = held[rng.randrange(len(held))]
        patient = self.patients[entry["patient"]]
        label = entry["label"]

        async def run() -> Result | None:
            async with self._lock(doctor.subject, patient.subject, label):
                current = doctor.cached_grant(patient.subject, label)
                if current is None or current["grant_id"] != entry["grant_id"]:
                    return Result(phase="revoke-skipped")  # already consumed by another revocation
                # a record the revoked grant covered: same label and label-key epoch (records stored after an
                # earlier revocation are under a later epoch: a new grant, not this one, would serve them)
                epochs = {rid: r.get("epoch", 0) for rid, r in patient.state["records"].items()}
                recs = [r for r in self.by_patient.get(patient.subject, [])
                        if r.label == label and epochs.get(r.record_id, 0) == entry.get("epoch", 0)]
                await patient.revoke(entry["grant_id"], "load test revocation")
                self.revoked.append(entry["grant_id"])
                if not recs:
                    return None
                if await self._refused(doctor, patient.subject, recs[0].record_id, GrantRevoked, "revoked_correctly",
                                       f"{doctor.subject} after revocation of {entry['grant_id']}"):
                    return None
                self._wrong(f"{doctor.subject} still read with revoked grant {entry['grant_id']}")
                raise WrongOutcome("read succeeded with a revoked grant")

        return Op("revoke", run)

    def _wrong(self, text: str, exc: BaseException | None = None) -> None:
        if exc is not None and not _counts_as_wrong(exc):
            return  # unavailable/timeout: the check could not be made, not a wrong answer
        if len(self.wrong) < 50:
            self.wrong.append(text + (f": {exc}" if exc is not None else ""))
        self.checks.setdefault("wrong_outcomes", 0)
        self.checks["wrong_outcomes"] = self.checks.get("wrong_outcomes", 0) + 1

    # ------------------------------------------------------------ workloads for saturation

    def access_only(self) -> "AccessOnly":
        return AccessOnly(self)

    # ------------------------------------------------------------ final check

    async def verify(self, *, concurrency: int = 4, attempts: int = 4, retry_delay: float = 2.0,
                     on_progress: Any = None) -> dict:
        """Read back every acknowledged record through an authorized doctor; compare byte for byte."""
        lost: list[dict] = []
        corrupted: list[dict] = []
        ok = 0
        retried = 0
        limiter = trio.CapacityLimiter(concurrency)
        done = 0

        async def check(rec: StoredRecord) -> None:
            nonlocal ok, retried, done
            readers = self.readers[rec.label]
            async with limiter:
                last = ""
                for attempt in range(attempts):
                    doctor = readers[(hash(rec.record_id) + attempt) % len(readers)]
                    try:
                        async with self._lock(doctor.subject, rec.patient, rec.label):
                            data = await doctor.read(rec.patient, rec.record_id)
                    except AgentError as exc:
                        last = classify(exc)
                        retried += 1
                        await trio.sleep(retry_delay)
                        continue
                    expected = await trio.to_thread.run_sync(payload, rec.kind, rec.seed, rec.size)
                    if data == expected:
                        ok += 1
                    else:
                        corrupted.append({"patient": rec.patient, "record_id": rec.record_id,
                                          "expected_bytes": len(expected), "got_bytes": len(data)})
                    break
                else:
                    lost.append({"patient": rec.patient, "record_id": rec.record_id, "label": rec.label,
                                 "size": rec.length, "last_error": last})
                done += 1
                if on_progress is not None:
                    on_progress(done, len(self.records))

        async with trio.open_nursery() as nursery:
            for rec in list(self.records):
                nursery.start_soon(check, rec)
        return {
            "acknowledged": len(self.records),
            "verified": ok,
            "lost": len(lost),
            "corrupted": len(corrupted),
            "lost_records": lost,
            "corrupted_records": corrupted,
            "read_retries": retried,
            "store_attempts": self.store_attempts,
            "stores_not_acknowledged": len(self.unacknowledged),
            "corrupted_reads_during_run": list(self.corrupted_reads),
        }


def _counts_as_wrong(exc: BaseException) -> bool:
    from agents.errors import NotEnoughPeers, Unavailable

    return not isinstance(exc, (Unavailable, NotEnoughPeers))


class AccessOnly:
    """Reads by authorized doctors only (for the saturation measurement)."""

    def __init__(self, parent: EmrWorkload):
        self.parent = parent

    def classify(self, exc: BaseException) -> str:
        return classify(exc)

    def next_op(self, rng: random.Random) -> Op:
        return self.parent._op_access(rng)

