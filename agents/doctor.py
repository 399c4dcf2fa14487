"""The doctor agent: requests access, collects re-encryption shares, reads and verifies records.

Embedding (docs/embedding.md)::

    async with DoctorAgent.open(config) as doctor:
        await doctor.register(registrar_token_for(doctor.enroll_id))
        for rec in await doctor.records("alice", label="cardiology"):
            data = await doctor.read("alice", rec["record_id"], purpose="treatment")

:meth:`DoctorAgent.read` follows docs/protocol.md's Read flow. It reuses a
grant it holds for (patient, label) and the label-key epoch the record is sealed
under (a revocation moves the label's new records to the next epoch; grants of
earlier epochs are kept beside the newest, :attr:`DoctorAgent.epoch_grants`)
while the peers honour it; when they
answer that the grant is revoked or expired it forgets the grant and raises
:class:`GrantRevoked` (it never asks again behind the caller's back). Without a
grant it submits an ``access_request`` (:class:`PolicyDenied` when the policy
says no; the decision is the requester's view its commit notice carries,
``core.protocol.requester_view``, while :meth:`DoctorAgent.request` reads the
whole entry back); when the ledger granted it from the patient's standing delegation
(the policy pre-authorizes this doctor, ``approval auto``) it goes straight on,
without the patient; otherwise it asks the patient (:class:`RequestRejected`
when the patient says no; its answer carries the committed grant's terms and the
peers holding their key shares, so the doctor neither reads the grant back nor
asks a peer still without its share first), and then asks the peers for their
re-encryption shares, keeping the first t
that verify (:class:`NotEnoughPeers` when fewer come back; the policy is
:class:`agents.plans.ShareCollection`). Before plaintext is
returned: the blob matches the CID on the ledger (each 256 KiB chunk is checked
against the CID's leaf digests as it arrives, nothing unverified is used), the ledger's store
transaction carries the patient's signature (checked against the patient's
certificate, which the record's answer carries from the same committed state:
``PeerQuery.owner_cert``, unless a peer showed it less than ``client.cert_fresh_s``
ago (a minute, :data:`agents.client.CERT_FRESH_S`); signatures verified once are
remembered by their bytes; the store transaction accepted for a record is kept,
for the latest :data:`HELD_TXS` records, and named by its id in the next query of
that record, ``PeerQuery.held``, which then answers without it while it is still
the record's, and it is checked as a sent one), the record opens with the combined key (authenticated
encryption), and the header names the same owner, label, record id and capsule
as the ledger.

:meth:`DoctorAgent.read_to_file` does the same in bounded memory, streaming the
blob through the record opener into a file (:mod:`agents.recordio`); the header
is checked against the ledger before the first chunk is decrypted.

A grant scoped to one record (what the patient approved) is used for that
record only. :meth:`DoctorAgent.break_glass` is the emergency path: a
``break_glass`` transaction co-signed by officers of the doctor's hospital
(:func:`cosign_break_glass`), then a read under the grant the ledger made.

The agent talks to the peers through its :class:`agents.client.PeerClient`
(``doctor.client``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import time
from collections import OrderedDict
from typing import Any, AsyncIterator, Callable

import trio

import bus
from core import canonical, pre
from core import record as recordmod
from core.errors import CoreError, DecodeError
from core.identity import Certificate
from core.protocol import (
    REENCRYPTION_TAG,
    PatientAccessRequest,
    PatientAccessRequestReply,
    PeerQuery,
    PeerReencrypt,
    PeerReencryptReply,
    codes,
    verify_reencrypt_reply,
)
from core import ecdsa
from core.ledger import BREAK_GLASS_TAG, break_glass_grant_id, break_glass_message
from core.state import entry_key
from core.tx import Transaction

from agents.client import SUSPECT_TIMEOUT, PeerClient, UserAgent, UserConfig, new_id, open_agent, remote_error
from agents.driver import result_of, run_plan
from agents.errors import (
    AgentError,
    GrantRevoked,
    IntegrityError,
    NotEnoughPeers,
    PolicyDenied,
    RecordNotFound,
    RegistrationError,
    RequestRejected,
    Unavailable,
    UnknownAgent,
)
from agents.plans import Answer, Done, Invalid, ShareCollection
from agents.runtime import SMALL_RECORD_BYTES, run_crypto
from agents.storage import NotFound as StorageNotFound
from agents.storage import StorageError

__all__ = ["DoctorAgent", "REENCRYPTION_TAG", "cosign_break_glass"]

log = logging.getLogger("agents.doctor")

OWNER_CERT = PeerQuery.OWNER_CERT
_ABSENT: Any = object()  # no owner_cert in the record's answer (a peer that does not send it)
PATIENT_TIMEOUT_FACTOR = 3  # how many request timeouts a doctor waits for a patient's answer
HELD_TXS = 1024  # records whose verified store transaction a doctor keeps (PeerQuery.held), latest used
EPOCH_GRANTS_KEPT = 8
"""Grants of a label's earlier key epochs a doctor keeps besides its newest one for the label
(:attr:`DoctorAgent.epoch_grants`, newest kept): a revocation moves the label's new records to
the next epoch, so the label's records span several epochs and one held grant covers one."""
_UNKNOWN_SENDER_RETRIES = 8


def _cache_key(patient: str, label: str) -> str:
    return f"{patient}\x00{label}"


def _usable(entry: dict | None, record_id: str | None, epoch: int | None) -> dict | None:
    """``entry`` if it is live and covers ``record_id`` and ``epoch`` (when given)."""
    if entry is None or entry["expires_at"] <= time.time():
        return None
    if record_id is not None and entry.get("scope") == "record" and entry.get("record_id") != record_id:
        return None
    if epoch is not None and entry.get("epoch", 0) != epoch:
        return None  # the record was re-sealed (or stored) under another key: a new grant
    return entry


_GRANT_FIELDS = {"patient": str, "label": str, "grant_id": str, "request_id": str, "threshold": int,
                 "expires_at": int, "epoch": int}


def valid_epoch_grants(raw: Any) -> dict[str, dict[int, dict]]:
    """The well-formed part of a state file's ``epoch_grants`` (:attr:`DoctorAgent.epoch_grants`):
    entries under their own (patient, label) key and epoch, label-scoped, with the fields a read
    uses of the right types, at most :data:`EPOCH_GRANTS_KEPT` a label (the last ones); the rest
    is dropped (an older file has none: empty)."""
    out: dict[str, dict[int, dict]] = {}
    if not isinstance(raw, dict):
        return out
    for key, held in raw.items():
        if not isinstance(key, str) or not isinstance(held, dict):
            continue
        kept: dict[int, dict] = {}
        for epoch, grant in held.items():
            if (type(epoch) is not int or epoch < 0 or not isinstance(grant, dict)
                    or any(type(grant.get(f)) is not t for f, t in _GRANT_FIELDS.items())
                    or grant["epoch"] != epoch or grant.get("scope", "label") != "label"
                    or _cache_key(grant["patient"], grant["label"]) != key):
                continue
            kept[epoch] = grant
        if kept:
            out[key] = dict(list(kept.items())[-EPOCH_GRANTS_KEPT:])
    return out


class DoctorAgent(UserAgent):
    """A doctor (or nurse, ...): see the module docstring. Open with :meth:`open`."""

    def __init__(self, client: PeerClient):
        super().__init__(client)
        self.reencrypt_timeout = min(10.0, self.config.request_timeout)
        self._rotation = secrets.randbelow(1 << 16)  # which t peers go first (spread, not secret)
        # the patient's answer is several round trips (read the request, commit the
        # grant, deliver the shares), any of which may fail over from a peer that
        # just stopped answering after ``request_timeout``
        self.patient_timeout = PATIENT_TIMEOUT_FACTOR * self.config.request_timeout
        # (patient, record id) -> the store transaction (bytes) _check_store_tx last accepted for it:
        # its id goes with the next query of the record (PeerQuery.held), which then leaves it out
        self._held_txs: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        # data keys recovered from t shares, by the shares, our secret and the record's capsule:
        # a repeat read of a record under a grant gets the same shares, so no GT multi-exponentiation
        self.data_keys = recordmod.DataKeyMemo(HELD_TXS)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, config: UserConfig, *, node: bus.Node | None = None,
                   approve: Any = None) -> AsyncIterator["DoctorAgent"]:
        """Open the doctor agent (keys created on first use); yields it, closes on exit.

        ``node``: attach to this bus node (default: open a TCP node routed by the
        manifest and ``config.routes``). ``approve`` is accepted for symmetry with
        :meth:`PatientAgent.open` and ignored.
        """
        async with open_agent(config, node, cls) as agent:
            agent.state.setdefault("grant_cache", {})
            # the state file is this agent's own, but a damaged or older one must not break reads
            agent.state["epoch_grants"] = valid_epoch_grants(agent.state.get("epoch_grants"))
            yield agent

    # identity (certificate, register, revoke_certificate, lookup_certificate): UserAgent

    @property
    def grant_cache(self) -> dict[str, dict]:
        """(patient, label) -> the newest grant this doctor holds for the label: {patient, label,
        grant_id, request_id, threshold, expires_at, scope, record_id, epoch, height}. Keys are
        ``"patient\\0label"``. Grants of the label's other key epochs: :attr:`epoch_grants`."""
        return self.state["grant_cache"]

    @property
    def epoch_grants(self) -> dict[str, dict[int, dict]]:
        """(patient, label) -> {label-key epoch: a label-scoped grant held for that epoch}: the
        grants of the label's other epochs, kept when a grant for a newer one replaced them in
        :attr:`grant_cache` (at most :data:`EPOCH_GRANTS_KEPT` a label, newest kept). A
        revocation moves the label's new records to the next epoch and a grant's key shares
        open one epoch's records, so a doctor reading the label's records of several epochs
        would otherwise ask for a new grant at every switch between them. Keys as
        :attr:`grant_cache`'s; never the epoch of the label's entry there."""
        return self.state["epoch_grants"]

    def cached_grant(self, patient: str, label: str, record_id: str | None = None,
                     epoch: int | None = None) -> dict | None:
        """The live grant held for (patient, label), if it covers ``record_id`` and the
        label-key ``epoch`` the record is sealed under (when given): the newest one held
        for the label, or one held for that epoch (:attr:`epoch_grants`)."""
        key = _cache_key(patient, label)
        entry = _usable(self.grant_cache.get(key), record_id, epoch)
        if entry is None and epoch is not None:
            entry = _usable(self.epoch_grants.get(key, {}).get(epoch), record_id, epoch)
        return entry

    def forget_grants(self, patient: str, label: str) -> None:
        """Drop every grant held for (patient, label) (the next read asks for a new one)."""
        key = _cache_key(patient, label)
        self.grant_cache.pop(key, None)
        self.epoch_grants.pop(key, None)

    def _forget_grant(self, patient: str, label: str, grant_id: str) -> None:
        """Drop the grant ``grant_id`` held for (patient, label) (the peers refused it: revoked
        or expired), wherever it is held."""
        key = _cache_key(patient, label)
        held = self.epoch_grants.get(key, {})
        for epoch in [e for e, g in held.items() if g.get("grant_id") == grant_id]:
            del held[epoch]
        if self.grant_cache.get(key, {}).get("grant_id") == grant_id:
            del self.grant_cache[key]
            if held:  # the newest kept one is now the label's newest
                self.grant_cache[key] = held.pop(next(reversed(held)))
        if not held:
            self.epoch_grants.pop(key, None)

    def _keep_grant(self, grant: dict) -> None:
        """Hold ``grant`` as the newest for its (patient, label); the one it replaces is kept
        in :attr:`epoch_grants` when it is a live label-scoped grant of another epoch (the
        oldest beyond :data:`EPOCH_GRANTS_KEPT` and the expired are dropped)."""
        key = _cache_key(grant["patient"], grant["label"])
        held = self.epoch_grants.get(key, {})
        old = self.grant_cache.get(key)
        now = time.time()
        if old is not None and old.get("epoch", 0) != grant["epoch"] and old.get("scope", "label") == "label" \
                and old["expires_at"] > now:
            held.pop(old.get("epoch", 0), None)
            held[old.get("epoch", 0)] = old  # (re-inserted: the newest last)
        held.pop(grant["epoch"], None)  # superseded by the new grant
        for epoch in [e for e, g in held.items() if g["expires_at"] <= now]:
            del held[epoch]
        while len(held) > EPOCH_GRANTS_KEPT:
            del held[next(iter(held))]
        if held:
            self.epoch_grants[key] = held
        else:
            self.epoch_grants.pop(key, None)
        self.grant_cache[key] = grant

    # ------------------------------------------------------------ queries

    async def records(self, patient: str, label: str | None = None) -> list[dict]:
        """A patient's records on the ledger (optionally one label):
        ``[{record_id, label, cid, size, media_type, height}]``."""
        self.client.require_registered()
        out = await self.client.query(PeerQuery("records", patient=patient, label=label))
        return list(out or [])

    async def request(self, patient: str, record_id: str, *, purpose: str | None = None) -> dict:
        """Submit an ``access_request`` and wait for its block; return the ledger's decision:
        ``{request_id, status, effect, approval, rule, reason, policy, version}``.

        Raises RecordNotFound when the ledger has no such record, TransactionRejected
        when the request itself is invalid (e.g. ``cert_revoked``).
        """
        return await self._request(patient, record_id, purpose=purpose, full=True)

    async def _request(self, patient: str, record_id: str, *, purpose: str | None = None, full: bool = False) -> dict:
        """:meth:`request`; ``full`` false (a read's own request): the decision as the commit
        notice carries it for the requester (``core.protocol.requester_view``: ``effect``,
        ``rule``, ``reason`` when refused, ``status``, ``grant_id``, ``hold``), without reading
        the whole entry back; true: the whole decision (read at the commit's height when the
        notice carried the view)."""
        self.client.require_registered()
        request_id = new_id("q")
        from agents.errors import TransactionRejected

        try:
            reply = await self.client.submit("access_request", {"request_id": request_id, "patient": patient,
                                                                "record_id": record_id, "operation": "read",
                                                                "purpose": purpose})
        except TransactionRejected as exc:
            if exc.reason == "not_found":
                raise RecordNotFound(f"no record {patient}/{record_id} on the ledger") from None
            raise
        height = reply.get("height")
        effect = reply.get("effect") or {}
        req = effect.get(entry_key("request", request_id))
        if not isinstance(req, dict) or (full and reply.get("projected")):
            # no commit notice (its fallback), or the whole decision asked for: read it from a peer
            # at least at the commit's height
            req = await self.client.query(PeerQuery("request", request_id=request_id, min_height=height))
        if not isinstance(req, dict):
            raise Unavailable(f"request {request_id} committed but the peer does not show it")
        decision = dict(req.get("decision") or {})
        grant_id = req.get("grant_id")
        grant = effect.get(entry_key("grant", grant_id)) if isinstance(grant_id, str) else None
        return {**decision, "request_id": request_id, "status": req.get("status"), "grant_id": grant_id,
                "hold": req.get("hold"), "height": height, "grant": grant}

    # ------------------------------------------------------------ read

    async def read(self, patient: str, record_id: str, *, purpose: str | None = None,
                   progress: Callable[[int, int], None] | None = None) -> bytes:
        """The plaintext of ``patient``'s record, verified end to end (see the module docstring).
        ``progress(done, size)`` follows the blob's download.

        Errors: RecordNotFound, PolicyDenied, RequestRejected, GrantRevoked,
        NotEnoughPeers, IntegrityError, Unavailable, TransactionRejected,
        CertificateRevoked (this doctor's own certificate was revoked).
        """
        try:
            return await self._read(patient, record_id, purpose=purpose, progress=progress)
        except RegistrationError as exc:
            raise await self.client.explain_unknown(exc) from None

    async def read_to_file(self, patient: str, record_id: str, out: str | os.PathLike[str], *,
                           purpose: str | None = None, progress: Callable[[int, int], None] | None = None) -> int:
        """Like :meth:`read`, writing the plaintext to the file ``out`` in bounded memory
        (:func:`agents.recordio.read_record_to_file`: nothing is left under ``out``'s name
        unless the whole record authenticated and its header matched the ledger);
        returns the bytes written. Same errors as :meth:`read`."""
        from agents.recordio import read_record_to_file

        try:
            prepared = await self._prepare_read(patient, record_id, purpose)
            rec, provider, check = prepared
            try:
                _, written = await self.client.storage_retry(lambda: read_record_to_file(
                    self.storage, rec["cid"], provider, out, check_header=check, progress=progress))
            except StorageNotFound:
                raise Unavailable(f"no reachable storage node holds {rec['cid']}") from None
            except StorageError as exc:
                raise Unavailable(f"storage: {exc}") from None
            except CoreError as exc:
                raise self._open_failed(record_id, provider, exc) from None
            return written
        except RegistrationError as exc:
            raise await self.client.explain_unknown(exc) from None

    async def _read(self, patient: str, record_id: str, *, purpose: str | None = None,
                    progress: Callable[[int, int], None] | None = None) -> bytes:
        rec, provider, check = await self._prepare_read(patient, record_id, purpose)
        blob = await self._fetch(rec["cid"], progress)
        try:
            # t shares combine in one GT multi-exponentiation (~0.3 ms) + AEAD: inline when small
            header, plain = await run_crypto(recordmod.open_record, blob, provider,
                                             small=len(blob) <= SMALL_RECORD_BYTES)
        except CoreError as exc:
            raise self._open_failed(record_id, provider, exc) from None
        check(header)
        return plain

    @staticmethod
    def _open_failed(record_id: str, provider: recordmod.ThresholdKeyProvider, exc: Exception) -> IntegrityError:
        suspects = ", ".join(str(i) for i in provider.suspects) or "unknown"
        return IntegrityError(f"record {record_id} does not open with the peers' shares "
                              f"(suspect proxy indices: {suspects}): {exc}")

    async def _prepare_read(self, patient: str, record_id: str, purpose: str | None) -> tuple[
            dict, recordmod.ThresholdKeyProvider, Callable[[recordmod.RecordHeader], None]]:
        """Everything before the blob: the ledger entry, its store transaction, a grant and
        t verified shares; returns (ledger entry, key provider, header check)."""
        self.client.require_registered()
        # a record stored a moment ago through another peer may be a block away; the answer
        # carries the patient's certificate entry from the same state (one round trip)
        # (not when a peer showed it at most cert_fresh_s ago, CERT_FRESH_S: the one held is used)
        held = self.client.recent_certificate(patient, self.client.cert_fresh_s)
        # the store transaction we verified at our last read of this record: the answer leaves it
        # out while it is still the record's (PeerQuery.held), and is checked below all the same
        held_tx = self._held_txs.get((patient, record_id))
        held_id = hashlib.sha256(held_tx).digest() if held_tx is not None else None
        query = PeerQuery("record", patient=patient, record_id=record_id, owner_cert=held is None, held=held_id)
        decision = None
        try:
            rec = await self.client.query_committed(query, wait=1.0, held_tx=held_tx)
        except AgentError as exc:
            if exc.code != codes.FORBIDDEN:
                raise
            # the peers show a record only to doctors the patient's policy could allow (and a peer may
            # not have the newest policy yet): ask the ledger, so the policy decides (and the audit
            # shows) the request; when it allows, the peers that committed it show the record
            decision = await self._request(patient, record_id, purpose=purpose)
            _check_allowed(patient, decision)
            rec = await self.client.query(PeerQuery("record", patient=patient, record_id=record_id,
                                                    min_height=decision.get("height"), owner_cert=held is None,
                                                    held=held_id), held_tx=held_tx)
        if rec is None:
            raise RecordNotFound(f"no record {patient}/{record_id} on the ledger")
        owner = rec.pop(OWNER_CERT, _ABSENT) if isinstance(rec, dict) else _ABSENT
        if owner is _ABSENT and held is not None:
            owner = held
        store_tx = await self._check_store_tx(patient, record_id, rec, owner)
        self._hold_store_tx(patient, record_id, bytes(rec["tx"]))
        label = store_tx.body["label"]
        grant = self.cached_grant(patient, label, record_id, int(rec.get("epoch", 0)))
        if grant is not None:
            try:
                shares = await self._collect(grant, patient, record_id, rec)
            except GrantRevoked:
                self._forget_grant(patient, label, grant["grant_id"])
                await self.client.save_state()
                raise
        else:
            grant = await self._obtain_grant(patient, record_id, label, purpose, decision)
            shares = await self._collect(grant, patient, record_id, rec)
        provider = recordmod.ThresholdKeyProvider(shares, grant["threshold"], self.keys.receive.secret,
                                                  memo=self.data_keys)
        expected = (patient, label, record_id, store_tx.body["capsule"])

        def check(header: recordmod.RecordHeader) -> None:
            if (header.owner_id, header.label, header.record_id, header.capsule) != expected:
                raise IntegrityError(f"record {record_id}: the sealed header does not match the ledger")

        return rec, provider, check

    def _hold_store_tx(self, patient: str, record_id: str, raw: bytes) -> None:
        """Keep ``raw``, the store transaction just accepted for the record (the latest
        :data:`HELD_TXS` records)."""
        key = (patient, record_id)
        self._held_txs[key] = raw
        self._held_txs.move_to_end(key)
        while len(self._held_txs) > HELD_TXS:
            self._held_txs.popitem(last=False)

    async def break_glass(self, patient: str, record_id: str, reason: str, cosigners: dict[str, bytes], *,
                          break_glass_id: str) -> bytes:
        """Emergency access without the patient: commit a ``break_glass`` (``reason``,
        ``cosigners``: officer id -> :func:`cosign_break_glass` signature over this very
        ``break_glass_id``, doctor, patient, record and reason), then read the record
        under the time-boxed grant the ledger made. TransactionRejected with the
        ledger's reason when refused (``not_allowed``: too few officers or no
        emergency clause; ``forbidden``: not an officer of this hospital, or a role
        the clause does not name; ``not_found``: the patient deposited no parts)."""
        self.client.require_registered()
        await self.client.submit("break_glass", {"break_glass_id": break_glass_id, "patient": patient,
                                                 "record_id": record_id, "reason": reason,
                                                 "cosigners": dict(cosigners)})
        rec = await self.client.query_committed(PeerQuery("record", patient=patient, record_id=record_id),
                                                wait=self.client.commit_wait)
        if rec is None:
            raise RecordNotFound(f"no record {patient}/{record_id} on the ledger")
        await self._hold_grant(patient, rec["label"], break_glass_grant_id(break_glass_id), break_glass_id)
        return await self.read(patient, record_id)

    async def _patient_cert(self, patient: str, *, fresh: bool = True) -> Certificate:
        cert = await self.client.lookup_certificate(patient, fresh=fresh)
        if cert is None:
            raise IntegrityError(f"{patient} has no valid certificate on the ledger")
        return cert

    async def _check_store_tx(self, patient: str, record_id: str, rec: dict, owner: Any = _ABSENT) -> Transaction:
        """The committed store transaction, signed by the patient, agreeing with the state entry.

        ``owner``: the patient's certificate entry as the record's answer carried it
        (``PeerQuery.owner_cert``: read from the same committed state); looked up with
        a ``cert`` query when the peer did not send one. Either way the certificate is
        checked against its issuer's key, and a revoked one refused. The signature
        checks are memoized (:class:`agents.runtime.VerifiedMemo`): a repeat read of
        the same record re-verifies nothing that cannot have changed."""
        try:
            tx = Transaction.from_bytes(rec["tx"])
        except (DecodeError, KeyError, TypeError) as exc:
            raise IntegrityError(f"record {record_id}: malformed store transaction: {exc}") from None
        body = tx.body
        if (tx.type not in ("store", "reseal") or tx.submitter != patient or body.get("record_id") != record_id
                or body.get("cid") != rec.get("cid") or body.get("label") != rec.get("label")
                or body.get("capsule") != rec.get("capsule")):
            raise IntegrityError(f"record {record_id}: the store transaction does not match the ledger entry")
        if owner is _ABSENT:
            cert = await self._patient_cert(patient)
        elif isinstance(owner, Certificate):  # held: a peer showed it at most cert_fresh_s ago
            cert = owner
        else:
            cert = self.client.accept_cert_entry(owner, patient)
            if cert is None:
                raise IntegrityError(f"{patient} has no valid certificate on the ledger")
        key = cert.ecdsa_key
        if not await self.client.verified.run_valid("tx", key, bytes(rec["tx"]), lambda: tx.is_valid_signature(key)):
            raise IntegrityError(f"record {record_id}: the store transaction is not signed by {patient}")
        return tx

    async def _obtain_grant(self, patient: str, record_id: str, label: str, purpose: str | None,
                            decision: dict | None = None) -> dict:
        if decision is None:
            decision = await self._request(patient, record_id, purpose=purpose)
        _check_allowed(patient, decision)
        request_id = decision["request_id"]
        grant_id = decision.get("grant_id")
        height = decision.get("height")
        if decision.get("status") == "granted" and isinstance(grant_id, str):
            # the ledger granted it (standing delegation): the commit notice carried the grant
            return await self._hold_grant(patient, label, grant_id, request_id, height=height,
                                          entry=decision.get("grant"))
        # not pre-authorized (or held after a revocation): the patient decides
        # so the patient's reply envelope verifies (looked up fresh by _check_store_tx a moment ago)
        await self._patient_cert(patient, fresh=False)
        raw = await self._ask_patient(patient, request_id, height)
        try:
            reply = PatientAccessRequestReply.from_wire(raw)
        except DecodeError as exc:
            raise IntegrityError(f"{patient}'s answer does not decode: {exc}") from None
        # the patient's word for its committed grant (its terms; the rest is our request's): no
        # read-back (the peers check the ledger's grant on every re-encryption); a reply without: read it
        grant = await self._hold_grant(patient, label, reply.grant_id, request_id, height=reply.height,
                                       entry=reply.grant_entry(self.subject, patient, label, record_id))
        return {**grant, "peers": list(reply.peers or ())}

    async def _hold_grant(self, patient: str, label: str, grant_id: str, request_id: str, *,
                          height: int | None = None, entry: dict | None = None) -> dict:
        """Check the committed grant is a live one of ``label`` for us; cache and return it.
        ``entry``: the grant as our own commit notice carried it; else it is read from a
        peer at least at ``height`` (the grant's block, as the patient said), and polled
        for only when no height is known."""
        if isinstance(entry, dict):
            g: Any = entry
        elif height is not None:
            g = await self.client.query(PeerQuery("grant", grant_id=grant_id, min_height=height))
        else:
            g = await self.client.query_committed(PeerQuery("grant", grant_id=grant_id),
                                                  wait=self.client.commit_wait)
        if not isinstance(g, dict) or g.get("doctor") != self.subject or g.get("patient") != patient \
                or g.get("label") != label or g.get("revoked"):
            raise IntegrityError(f"grant {grant_id} on the ledger is not a live grant of {label} for us")
        try:
            grant = {"patient": patient, "label": label, "grant_id": grant_id, "request_id": request_id,
                     "threshold": int(g["threshold"]), "expires_at": int(g["expires_at"]),
                     "scope": g.get("scope") or "label", "record_id": g.get("record_id"),
                     "epoch": int(g.get("epoch", 0)), "height": height}
        except (KeyError, TypeError, ValueError):
            raise IntegrityError(f"grant {grant_id}: malformed entry") from None
        self._keep_grant(grant)
        self.client.save_state_soon()  # (off the read's path: a crash before it costs a new request, no more)
        return grant

    async def _ask_patient(self, patient: str, request_id: str, height: int | None = None) -> Any:
        delay = 0.05
        for attempt in range(_UNKNOWN_SENDER_RETRIES):
            try:
                return await self.endpoint.request(patient, PatientAccessRequest.kind,
                                                   PatientAccessRequest(request_id, height).to_wire(),
                                                   timeout=self.patient_timeout)
            except bus.RemoteError as exc:
                error = remote_error(exc, f"asking {patient}")
                if (isinstance(error, UnknownAgent) or exc.code == codes.BUSY) and \
                        attempt + 1 < _UNKNOWN_SENDER_RETRIES:
                    # the patient is looking our certificate up, or waits for our other requests already
                    await trio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                if isinstance(error, PolicyDenied):
                    raise PolicyDenied(f"{patient}: {exc.message}") from None
                if isinstance(error, RequestRejected):
                    raise RequestRejected(f"{patient}: {exc.message}") from None
                raise error from None
            except bus.DeliveryError as exc:
                raise Unavailable(f"patient {patient} did not answer: {exc}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _collect(self, grant: dict, patient: str, record_id: str, rec: dict) -> list[pre.ReencryptedShare]:
        """Ask the peers for their shares in parallel; return ``threshold`` verified ones.

        The policy is :class:`agents.plans.ShareCollection`: t healthy peers
        first (rotating between reads, so the pairings spread over the
        consortium), the spare healthy ones on a failure or after
        :data:`agents.plans.HEDGE_S`, peers that failed lately only when the
        others cannot make t, with a short timeout
        (:data:`agents.client.SUSPECT_TIMEOUT`) while some peer is healthy. The
        read goes on as soon as t good shares are in (slower requests are
        cancelled)."""
        need = grant["threshold"]
        # (no patient or request id: the peer reads the grant's; its signed reply names the
        # request id, checked against ours in _check_share)
        body = PeerReencrypt(grant_id=grant["grant_id"], record_id=record_id,
                             min_height=grant.get("height")).to_wire()
        cid = rec["cid"]
        healthy, suspects = self.health.split(self.manifest.peers, self.client.probe_peer)
        plan = ShareCollection(healthy, suspects, need, timeout=self.reencrypt_timeout,
                               suspect_timeout=SUSPECT_TIMEOUT, rotation=self._rotation,
                               prefer=grant.get("peers") or ())
        if plan.rotated:
            self._rotation += 1

        async def ask(action: Any) -> Any:
            result = await result_of(self.client.peer_request(action.peer, PeerReencrypt.kind, body,
                                                              timeout=action.timeout))
            if not isinstance(result, Answer):
                return result
            try:
                share = await self._check_share(action.peer, result.value, grant["request_id"], cid)
            except (IntegrityError, CoreError) as exc:
                return Invalid(str(exc))
            return Answer(share)

        outcome = await run_plan(plan, ask)
        if isinstance(outcome, Done):
            return outcome.value
        if outcome.reason == "revoked":
            raise GrantRevoked(f"the peers refuse grant {grant['grant_id']}: it is revoked or expired")
        detail = ", ".join(f"{p}: {e}" for p, e in sorted(outcome.errors.items()))
        raise NotEnoughPeers(f"{outcome.answered} of the {need} needed peers returned a valid share ({detail})",
                             answered=outcome.answered, needed=need, errors=dict(outcome.errors))

    async def _check_share(self, peer: str, reply: Any, request_id: str, cid: str) -> pre.ReencryptedShare:
        """The verified share of ``peer``'s reply (core.protocol.verify_reencrypt_reply: one
        ECDSA verify and a GT decode, ~0.17 ms: small crypto, inline). Memoized by the
        signed bytes: the share e(U, rk_i) and the peer's deterministic signature are the
        same for every read of a record under one grant, so a repeat read decodes nothing."""
        info = self.client.peer_info.get(peer)
        key = self.client.peer_key(peer)
        if info is None or key is None:
            raise IntegrityError(f"{peer} is not a consortium peer")
        parsed = PeerReencryptReply.from_wire(reply)
        # everything the check reads besides the key: what was asked, and the whole reply
        signed = canonical.pack([request_id, cid, info.index, parsed.share, parsed.signature])
        return await self.client.verified.run_value(
            "reencryption", key, signed,
            lambda: verify_reencrypt_reply(key, parsed, request_id=request_id, cid=cid, index=info.index))

    async def _fetch(self, cid: str, progress: Callable[[int, int], None] | None = None) -> bytes:
        try:
            blob = await self.client.storage_retry(lambda: self.storage.get(cid, progress=progress))
        except StorageNotFound:
            raise Unavailable(f"no reachable storage node holds {cid}") from None
        except StorageError as exc:
            raise Unavailable(f"storage: {exc}") from None
        return blob  # every chunk the storage client released hashed to the CID


def cosign_break_glass(officer_key: bytes, break_glass_id: str, doctor: str, patient: str, record_id: str,
                       reason: str) -> bytes:
    """An officer's co-signature of a doctor's break-glass (core.ledger ``break_glass_message``),
    made with the officer's own ECDSA key (``agent.keys.ecdsa_private``) after it has
    heard the doctor's reason. The ledger counts it for officers of the doctor's hospital only."""
    return ecdsa.sign(officer_key, BREAK_GLASS_TAG,
                      break_glass_message(break_glass_id, doctor, patient, record_id, reason))


def _check_allowed(patient: str, decision: dict) -> None:
    """PolicyDenied unless the ledger's decision on our request allows it and it is pending
    (or granted by the ledger from a standing delegation)."""
    if decision.get("effect") != "allow" or decision.get("status") not in ("pending", "granted"):
        raise PolicyDenied(f"{patient}'s policy denies this request: {decision.get('reason', '')}",
                           rule=str(decision.get("rule", "")), reason=str(decision.get("reason", "")))
