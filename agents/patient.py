"""The patient agent: encrypts and stores records, sets the policy, grants and revokes access.

Embedding (docs/embedding.md)::

    async with PatientAgent.open(config, approve=ask_the_user) as patient:
        await patient.register(registrar_token_for(patient.enroll_id))
        record_id = await patient.store(path, label="cardiology", media_type="application/fhir+json")
        await patient.set_policy(policy_text)
        ...

The agent answers ``patient.access_request`` from doctors while it is open
(docs/protocol.md; a sender whose certificate, looked up and cached, is not a
doctor's is refused ``forbidden`` before any work): it reads the request from the ledger, checks that it is
for this patient and from the sender (a request not committed yet is waited
for, at most a few per sender and in total: ``busy`` beyond), pending and
allowed by the policy, asks ``approve`` when the
policy wants the patient's approval (no callback: the request is rejected), and
then delegates: t-of-n re-encryption key shares for the doctor's receiving key
(after verifying its proof of possession), each sealed to its peer and
delivered with ``peer.deliver_share``, and a ``grant`` transaction carrying
the shares' hashes.

Degrading under faults: the shares go to every peer in parallel (peers that
failed lately are skipped while enough others are healthy) while the grant is
being committed; the patient answers a doctor's request once the grant
committed and t peers acknowledged their shares (a standing delegation waits a
short grace, :data:`agents.plans.DELIVERY_GRACE_S`, for the others), naming
the acknowledging peers (the doctor asks them first) and passing the committed
grant's terms on (the doctor does not read it back); the others' deliveries go
on in the background (a peer accepts its share after the grant committed: it
checks the hash against the grant); the policy is
:class:`agents.plans.ShareDelivery`. Stores return once ``write_quorum``
storage nodes hold the blob durably (:class:`agents.storage.StorageClient`
with the agent's nursery) and the ``store`` transaction committed; the local
state's copy of the record list is saved in the background (coalesced). A record of at most
:data:`agents.runtime.SMALL_RECORD_BYTES` is sealed on the event loop (small
crypto: a thread hop cost more than it saved), and the put takes the CID the
sealer computed (the nodes check the bytes against it); a doctor's receiving
key, once its proof of possession verified, is remembered for its next grants
(docs/security.md).

Standing delegation (docs/security.md): :meth:`PatientAgent.set_policy` also
hands the peers, once per label, its parts of a standing delegation
(:meth:`PatientAgent.deposit_standing`: f(x_i) sealed to each peer, a
``standing`` transaction with their hashes), so the ledger grants doctors that
the policy pre-authorizes (``approval auto``) and the peers serve them while the
patient is offline; labels it chooses only (``standing=``). A policy with an
``emergency`` clause makes it deposit emergency-only parts for its other labels,
usable under a co-signed ``break_glass`` only. :meth:`PatientAgent.while_away`
lists what happened without it.

Rotation: each label has a key epoch (core.pre: a_{L,e}); a revocation moves
new records of its label to the next epoch, and :meth:`PatientAgent.rotate`
re-seals the label's older records under a fresh one (``reseal``
transactions), so key material a revoked doctor (or peers) kept no longer
opens them.

Consent scope: a request the patient approves is granted for exactly what the
prompt showed (``scope`` in the approver's dict: the one record, unless the
approver answers ``"label"``, which grants the label with its future records
until the grant expires); the peers check the scope at every re-encryption.

The agent talks to the peers through its :class:`agents.client.PeerClient`
(``patient.client``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import trio

import bus
from core import cid as cidmod
from core import pre
from core import record as recordmod
from core.errors import CoreError, DecodeError
from core.identity import Certificate
from core.policy import Policy, Request as PolicyRequest, parse as parse_policy
from core.state import entry_key
from core.protocol import (
    GRANT_TERMS,
    REQUEST_ROW,
    PatientAccessRequest,
    PatientAccessRequestReply,
    PeerAudit,
    PeerAuditReply,
    PeerDeliverShare,
    PeerQuery,
    codes,
    share_context,
)

from agents.admission import Classifier, Refusals, WaitGate
from agents.client import (
    PeerClient, UserAgent, UserConfig, check_receiving_key, new_id, open_agent, remote_error,
)
from agents.driver import PlanRun, result_of
from agents.errors import (
    AgentError,
    IntegrityError,
    PolicyDenied,
    RecordNotFound,
    RequestRejected,
    TransactionRejected,
    Unavailable,
    UnknownRequest,
)
from agents.handlers import serve
from agents.plans import DELIVERY_GRACE_S, Done, GaveUp, ShareDelivery
from agents.runtime import SMALL_RECORD_BYTES, run_crypto

__all__ = ["PatientAgent", "Approver", "DEFAULT_GRANT_TTL_S", "narrowed_policy", "standing_labels"]

log = logging.getLogger("agents.patient")

Approver = Callable[[dict], Awaitable[bool | str]]
DEFAULT_GRANT_TTL_S = 24 * 3600
_READ_PIECE = 1 << 20
RECEIVERS_KEPT = 256
"""Doctors' receiving keys whose proof of possession a patient remembers as verified."""
ANSWERS_WAITING_PER_DOCTOR = 2
"""Access requests of one doctor that may read their request with the height the doctor
named at once (a peer below it waits): half of the waiting slots a peer gives this
patient (:data:`agents.admission.MAX_WAITING_PER_SENDER`), so a doctor naming heights the
ledger has not reached cannot take the patient's own height-bound reads' slots. Beyond
it a request is read without the height (no wait), ``busy`` if it is not there yet."""


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


class PatientAgent(UserAgent):
    """A patient: see the module docstring. Open with :meth:`open`."""

    grant_ttl_s: int = DEFAULT_GRANT_TTL_S

    def __init__(self, client: PeerClient, *, approve: Approver | None = None):
        super().__init__(client)
        self._approve = approve
        # called with (request id, doctor, the answer's fields or the refusal) after each access
        # request this patient answered, on the event loop: keep it quick (``emrshare patient
        # serve`` prints a line for each); an exception in it is logged, the answer stands
        self.answered: Callable[[str, str, dict | AgentError], None] | None = None
        self._label_keys: dict[tuple[str, int], pre.KeyPair] = {}
        self._receivers: collections.OrderedDict[bytes, pre.PublicKey] = collections.OrderedDict()
        self._answering: dict[str, trio.Lock] = {}
        self.refusals = Refusals(self.subject)
        # access requests waiting for their request to commit: at most 2 per doctor, so that one doctor
        # holds at most half of this patient's waiting slots at a peer (its per-sender cap is 4)
        self.waiting = WaitGate(self.refusals, per_sender=ANSWERS_WAITING_PER_DOCTOR)
        serve(self.endpoint, self.handlers(),
              on_decode_error=lambda exc: UnknownRequest(f"patient.access_request needs a request_id: {exc}"),
              classifier=Classifier(peers=self.manifest.peers, orderer=self.manifest.orderer,
                                    storage=self.manifest.storage, role=self._role),
              refusals=self.refusals)

    async def _role(self, sender: str) -> str | None:
        """The role on ``sender``'s committed, unrevoked certificate (looked up once, then cached)."""
        try:
            cert = await self.client.lookup_certificate(sender, fresh=False)
        except AgentError:
            return None
        return None if cert is None else cert.role

    def handlers(self) -> dict[type, Any]:
        """The kinds a patient serves: request type -> typed handler."""
        return {PatientAccessRequest: self._on_access_request}

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, config: UserConfig, *, node: bus.Node | None = None,
                   approve: Approver | None = None) -> AsyncIterator["PatientAgent"]:
        """Open the patient agent (keys created on first use); yields it, closes on exit.

        ``node``: attach to this bus node (default: open a TCP node routed by
        the manifest, listening at ``config.listen``). ``approve(request)`` is
        awaited when the policy asks for the patient's approval (or the ledger
        holds a revoked doctor's request); it gets a dict (request_id, doctor,
        doctor_org, doctor_attributes, record_id, label, operation, purpose,
        rule, scope, hold, expires_in_s) and returns True to grant that record,
        ``"label"`` to grant the label with its future records until expiry.
        """
        async with open_agent(config, node, lambda client: cls(client, approve=approve)) as agent:
            agent.state.setdefault("records", {})
            agent.state.setdefault("grants", {})
            agent.state.setdefault("standing", {})
            yield agent

    # identity (certificate, register, revoke_certificate, lookup_certificate): UserAgent

    # ------------------------------------------------------------ local views

    @property
    def grants(self) -> dict[str, dict]:
        """Grants this patient issued: grant id -> {request_id, doctor, label, record_id,
        expires_at, threshold, peers, revoked, height}."""
        return self.state["grants"]

    def _label_key(self, label: str, epoch: int | None = None) -> pre.KeyPair:
        """The label's key pair at ``epoch`` (default: the label's current epoch)."""
        epoch = self.epoch(label) if epoch is None else epoch
        kp = self._label_keys.get((label, epoch))
        if kp is None:
            kp = self._label_keys[(label, epoch)] = self.keys.label_key(label, epoch)
        return kp

    async def _label_key_async(self, label: str, epoch: int | None = None) -> pre.KeyPair:
        """:meth:`_label_key` from the event loop: a cached key at once, a derivation
        (~0.25 ms: HKDF and two fixed-base multiplications) as small crypto."""
        epoch = self.epoch(label) if epoch is None else epoch
        kp = self._label_keys.get((label, epoch))
        if kp is None:
            kp = await run_crypto(self._label_key, label, epoch, small=True)
        return kp

    def epoch(self, label: str) -> int:
        """The label-key epoch new records of ``label`` are sealed under (a revocation and
        :meth:`rotate` move it on)."""
        return int(self.state.setdefault("epochs", {}).get(label, 0))

    # ------------------------------------------------------------ store

    async def store(self, data: bytes | Path, *, label: str, media_type: str,
                    record_id: str | None = None, progress: Callable[[int, int], None] | None = None) -> str:
        """Encrypt ``data`` (bytes, or a file path: streamed in bounded memory), put the
        ciphertext to storage, commit a signed ``store`` transaction; return the record id.
        ``progress(done, size)`` follows a file's upload (bytes of ciphertext).

        Raises TransactionRejected if the ledger marks it invalid (e.g. ``duplicate``
        record id), Unavailable if storage or peers do not answer.

        It returns once the ``store`` transaction committed (read-your-writes: the
        ledger, which is the record's source of truth, lists it); the local state's
        entry for the record (``state["records"]``, a cache of the ledger's) is saved
        in the background, one save for the stores that finish while one is being
        written, and at the latest when the agent closes.
        """
        self.client.require_registered()
        record_id = record_id or _new_id("rec")
        epoch = self.epoch(label)
        kp = await self._label_key_async(label, epoch)
        common = dict(owner_id=self.subject, label=label, record_id=record_id, media_type=media_type,
                      owner_box_public_key=self.keys.box_public,
                      # the owner's own fast path: fixed-base capsule (it knows a_L) and a
                      # static owner box instead of a sealed box (core/record.py, version 2)
                      owner_box_secret_key=self.keys.box_private)
        tmp: Path | None = None
        try:
            if isinstance(data, (str, os.PathLike)):
                path = Path(data)
                tmp = self.client.data_dir / "tmp" / f"{record_id}.{secrets.token_hex(4)}.sealed"
                header, cid, size = await run_crypto(_seal_file, path, tmp, kp, **common)
                # the sealer computed the CID while writing the file: not hashed again before the put
                stored = await self._storage_call(lambda: self.storage.put_file(tmp, progress=progress, cid=cid))
            else:
                plain = bytes(data)
                # a small record seals in ~0.3 ms (one fixed-base G1 multiplication, the owner box,
                # the AEAD): inline, the thread hop cost more than it saved
                header, blob, cid = await run_crypto(_seal_bytes, plain, kp, small=len(plain) <= SMALL_RECORD_BYTES,
                                                     **common)
                size = len(plain)
                # the sealer computed the CID: the put does not hash the blob again (the nodes check it)
                stored = await self._storage_call(lambda: self.storage.put(blob, cid=cid))
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        if stored != cid:
            raise IntegrityError(f"storage returned CID {stored}, expected {cid}")
        body = {"record_id": record_id, "label": label, "cid": cid, "size": size,
                "media_type": media_type, "capsule": header.capsule, **({"epoch": epoch} if epoch else {})}
        reply = await self.client.submit("store", body)
        self.state["records"][record_id] = {"label": label, "cid": cid, "size": size,
                                            "media_type": media_type, "height": reply.get("height"),
                                            "epoch": epoch}
        self.client.save_state_soon()
        return record_id

    async def _storage_call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        from agents.storage import StorageError

        try:
            return await self.client.storage_retry(fn)
        except StorageError as exc:
            raise Unavailable(f"storage: {exc}") from exc

    async def records(self) -> list[dict]:
        """This patient's records on the ledger: ``[{record_id, label, cid, size, media_type, height}]``
        (and ``epoch``, the label-key epoch, when not 0)."""
        self.client.require_registered()
        out = await self.client.query(PeerQuery("records", patient=self.subject, label=None))
        return list(out or [])

    async def read(self, record_id: str, *, progress: Callable[[int, int], None] | None = None) -> bytes:
        """Read one of this patient's own records (owner key path, no pairing);
        ``progress(done, size)`` follows the download."""
        self.client.require_registered()
        rec = await self.client.query(PeerQuery("record", patient=self.subject, record_id=record_id))
        if rec is None:
            raise RecordNotFound(f"no record {record_id} of {self.subject}")
        # every chunk the storage client releases hashed to the CID: no second whole-blob check
        blob = await self._storage_call(lambda: self.storage.get(rec["cid"], progress=progress))
        header, plain = await run_crypto(recordmod.open_record, blob,
                                         recordmod.owner_key_provider(self.keys.box_private),
                                         small=len(blob) <= SMALL_RECORD_BYTES)
        self._check_own_header(header, record_id)
        return plain

    def _check_own_header(self, header: recordmod.RecordHeader, record_id: str) -> None:
        if header.record_id != record_id or header.owner_id != self.subject:
            raise IntegrityError("record header does not match the ledger")

    async def read_to_file(self, record_id: str, out: str | os.PathLike[str], *,
                           progress: Callable[[int, int], None] | None = None) -> int:
        """Like :meth:`read`, writing the plaintext to the file ``out`` in bounded memory
        (:func:`agents.recordio.read_record_to_file`: nothing is left under ``out``'s name
        unless the whole record authenticated); returns the bytes written."""
        from agents.recordio import read_record_to_file
        from agents.storage import StorageError

        self.client.require_registered()
        rec = await self.client.query(PeerQuery("record", patient=self.subject, record_id=record_id))
        if rec is None:
            raise RecordNotFound(f"no record {record_id} of {self.subject}")
        try:
            _, written = await self.client.storage_retry(lambda: read_record_to_file(
                self.storage, rec["cid"], recordmod.owner_key_provider(self.keys.box_private), out,
                check_header=lambda h: self._check_own_header(h, record_id), progress=progress))
        except StorageError as exc:
            raise Unavailable(f"storage: {exc}") from exc
        return written

    # ------------------------------------------------------------ policy, grants, audit

    async def set_policy(self, text: str, *, standing: Any = None) -> dict[str, str]:
        """Parse the policy (docs/policy.md; PolicySyntaxError on bad text) and commit it;
        then deposit standing parts where needed. Returns ``{label: mode}`` deposited.

        ``standing``: the labels whose doctors the peers may serve without this
        patient (default: every label an ``approval auto`` rule names; ``()``:
        none). With an ``emergency`` clause, the labels of this patient's records
        not in ``standing`` get emergency-only parts (break-glass needs them).
        Labels already deposited in that mode are not deposited again. Committing
        the committed policy again is a no-op; another policy must carry a higher
        version (TransactionRejected ``bad_state`` otherwise).
        """
        self.client.require_registered()
        policy = parse_policy(text)
        committed = await self.client.query(PeerQuery("policy", patient=self.subject))
        if not (isinstance(committed, dict) and committed.get("policy") == policy.to_msgpack()):
            # the same policy again is a no-op; another one must raise the version (ledger rule)
            await self.client.submit("set_policy", {"policy": policy.to_msgpack()})
        self.state["policy"] = policy.to_msgpack()
        await self.client.save_state()
        return await self._deposit_for(policy, standing)

    async def _deposit_for(self, policy: Policy, standing: Any = None) -> dict[str, str]:
        auto = set(standing_labels(policy) if standing is None else standing)
        wanted = {label: "auto" for label in auto}
        # every label-key epoch that has records (older ones until rotated), and the current one
        epochs: dict[str, set[int]] = {}
        for r in await self.records():
            epochs.setdefault(r["label"], set()).add(int(r.get("epoch", 0)))
        if policy.emergency is not None:
            wanted.update({label: "emergency" for label in epochs if label not in auto})
        done = {}
        for label, mode in sorted(wanted.items()):
            if "/" in label:
                continue
            for epoch in sorted(epochs.get(label, set()) | {self.epoch(label)}):
                entry = self.standing.get(label, {})
                if entry.get("mode") == mode and epoch in entry.get("epochs", []):
                    continue
                await self.deposit_standing(label, mode, epoch=epoch)
                done[label] = mode
        return done

    @property
    def standing(self) -> dict[str, dict]:
        """Standing delegations this patient made: label -> {delegation_id, mode, threshold, peers, height,
        epoch (of the latest), epochs (every label-key epoch delegated in that mode)}."""
        return self.state.setdefault("standing", {})

    async def deposit_standing(self, label: str, mode: str = "auto", *, epoch: int | None = None) -> str:
        """Hand the peers this label's standing parts (t of n, each sealed to its peer) and
        commit the ``standing`` transaction; return the delegation id. ``mode`` "auto":
        the ledger grants doctors the policy pre-authorizes; "emergency": co-signed
        break-glass accesses only. The trust this costs: docs/security.md."""
        self.client.require_registered()
        epoch = self.epoch(label) if epoch is None else epoch
        kp = await self._label_key_async(label, epoch)
        peers = list(self.client.consortium.peers)
        threshold = self.manifest.threshold
        delegation_id = _new_id("std")
        proxies = [pre.Proxy(p.index, p.box_key) for p in peers]
        sealed = await run_crypto(pre.make_standing_parts, kp, proxies, threshold, share_context(delegation_id))
        by_peer = {p.id: s for p, s in zip(peers, sealed)}
        parts = {pid: hashlib.sha256(s.sealed).digest() for pid, s in by_peer.items()}
        reply, acks, outcome = await self._commit_and_deliver(
            delegation_id, by_peer, threshold, "standing",
            {"delegation_id": delegation_id, "label": label, "mode": mode, "threshold": threshold, "parts": parts,
             **({"epoch": epoch} if epoch else {})})
        entry = self.standing.get(label, {})
        epochs = sorted((set(entry.get("epochs", [])) if entry.get("mode") == mode else set()) | {epoch})
        self.standing[label] = {"delegation_id": delegation_id, "mode": mode, "threshold": threshold,
                                "peers": acks, "height": reply.get("height"), "epoch": epoch, "epochs": epochs}
        await self.client.save_state()
        if not isinstance(outcome, Done):
            with contextlib.suppress(AgentError):
                await self.withdraw_standing(label)
            raise Unavailable(f"only {len(acks)} of {len(peers)} peers accepted their standing parts "
                              f"(need {threshold})")
        log.info("%s: standing delegation %s of %s (%s) at %d peers", self.subject, delegation_id, label, mode,
                 len(acks))
        return delegation_id

    async def withdraw_standing(self, label: str, epochs: Any = None) -> None:
        """Withdraw the label's standing delegations (of ``epochs``; default every epoch this
        agent delegated): the peers stop serving grants made from them."""
        self.client.require_registered()
        entry = self.standing.get(label, {})
        for epoch in sorted(entry.get("epochs", [entry.get("epoch", 0)]) if epochs is None else epochs):
            with contextlib.suppress(TransactionRejected):  # not_found: withdrawn already
                await self.client.submit("standing", {"delegation_id": _new_id("off"), "label": label,
                                                      "mode": "off", "threshold": 0, "parts": {},
                                                      **({"epoch": epoch} if epoch else {})})
        if epochs is None:
            self.standing.pop(label, None)
        elif label in self.standing:
            self.standing[label]["epochs"] = sorted(set(entry.get("epochs", [])) - set(epochs))
        await self.client.save_state()

    async def rotate(self, label: str) -> dict:
        """Move ``label`` to a fresh label-key epoch and re-seal its records under it.

        Each record of the label sealed under an older epoch is downloaded once
        (the owner path: no pairing), sealed again under a_{L,e+1} with the same
        record id and media type, uploaded, and committed with a ``reseal``
        transaction; grants and standing parts of the older epochs no longer open
        it (the peers refuse them, and their key material is for another key). A
        standing delegation of the label is deposited again for the new epoch
        and the older epochs' are withdrawn. What a doctor read before stays read.
        Returns ``{label, epoch, resealed: [record ids]}``.
        """
        self.client.require_registered()
        new = self.epoch(label) + 1
        self.state.setdefault("epochs", {})[label] = new
        await self.client.save_state()
        resealed = []
        for listed in await self.records():
            if listed["label"] != label:
                continue
            rec = await self.client.query(PeerQuery("record", patient=self.subject, record_id=listed["record_id"]))
            if not isinstance(rec, dict) or int(rec.get("epoch", 0)) >= new:
                continue
            plain = await self.read(listed["record_id"])
            await self._reseal(listed["record_id"], label, rec["media_type"], plain, new)
            resealed.append(listed["record_id"])
        mode = self.standing.get(label, {}).get("mode")
        if mode is not None:
            old = [e for e in self.standing[label].get("epochs", []) if e < new]
            await self.deposit_standing(label, mode, epoch=new)
            await self.withdraw_standing(label, old)
        log.info("%s: rotated %s to epoch %d, re-sealed %d records", self.subject, label, new, len(resealed))
        return {"label": label, "epoch": new, "resealed": resealed}

    async def _reseal(self, record_id: str, label: str, media_type: str, plain: bytes, epoch: int) -> None:
        kp = await self._label_key_async(label, epoch)
        header, blob, cid = await run_crypto(
            _seal_bytes, plain, kp, owner_id=self.subject, label=label, record_id=record_id, media_type=media_type,
            owner_box_public_key=self.keys.box_public, owner_box_secret_key=self.keys.box_private,
            small=len(plain) <= SMALL_RECORD_BYTES)
        stored = await self._storage_call(lambda: self.storage.put(blob, cid=cid))
        if stored != cid:
            raise IntegrityError(f"storage returned CID {stored}, expected {cid}")
        reply = await self.client.submit("reseal", {"record_id": record_id, "label": label, "cid": cid,
                                                    "size": len(plain), "media_type": media_type,
                                                    "capsule": header.capsule, "epoch": epoch})
        self.state["records"][record_id] = {"label": label, "cid": cid, "size": len(plain),
                                            "media_type": media_type, "height": reply.get("height"),
                                            "epoch": epoch}
        await self.client.save_state()

    async def still_allowed(self, grant_id: str) -> bool:
        """Whether the committed policy would still allow the grant's doctor its label
        (revoking then leaves the door open until the policy is narrowed)."""
        grant = await self.client.query(PeerQuery("grant", grant_id=grant_id))
        raw = self.state.get("policy")
        if not isinstance(grant, dict) or raw is None:
            return False
        doctor = await self.client.lookup_certificate(grant["doctor"])
        if doctor is None:
            return False
        attributes = {**doctor.attributes, "organization": doctor.org, "id": doctor.subject}
        req = await self.client.query(PeerQuery("request", request_id=grant["request_id"]))
        purpose = req.get("purpose") if isinstance(req, dict) else None
        request = PolicyRequest(attributes, "read", grant["record_id"], grant["label"], int(time.time()), purpose)
        return Policy.from_msgpack(raw).evaluate(request).effect == "allow"

    async def revoke(self, grant_id: str, reason: str = "revoked by patient", *, narrow: bool = False) -> dict:
        """Commit a ``revoke_grant``; peers refuse the grant's shares from that block on.

        The ledger will not grant that doctor automatically again until the policy
        changes. ``narrow``: commit, in the same transaction, this patient's policy
        with a rule denying that doctor the grant's label (:func:`narrowed_policy`).
        Returns ``{still_allowed}``: whether the policy still allows the doctor
        afterwards (the CLI warns and offers ``--narrow``).

        Returns once every reachable peer has applied the block (or after
        ``request_timeout``), so no peer that is up still serves the grant.
        """
        self.client.require_registered()
        body: dict[str, Any] = {"grant_id": grant_id, "reason": reason}
        if narrow:
            grant = await self.client.query(PeerQuery("grant", grant_id=grant_id))
            raw = self.state.get("policy")
            if not isinstance(grant, dict) or raw is None:
                raise AgentError("revoke: cannot narrow the policy: no committed policy or grant known here; "
                                 "revoke without narrowing and set a new policy", code=codes.BAD_REQUEST)
            narrowed = narrowed_policy(Policy.from_msgpack(raw), grant["doctor"], grant["label"])
            body["policy"] = narrowed.to_msgpack()
        reply = await self.client.submit("revoke_grant", body)
        if "policy" in body:
            self.state["policy"] = body["policy"]
        revoked = await self.client.query(PeerQuery("grant", grant_id=grant_id))
        if isinstance(revoked, dict) and isinstance(revoked.get("label"), str):
            # new records of the label go under a fresh key the revoked doctor's shares cannot open
            await self._next_epoch(revoked["label"])
        if isinstance(reply.get("height"), int):
            await self.client.wait_for_peers(reply["height"], timeout=self.config.request_timeout)
        if grant_id in self.grants:
            self.grants[grant_id]["revoked"] = True
        await self.client.save_state()
        return {"still_allowed": await self.still_allowed(grant_id)}

    async def _next_epoch(self, label: str) -> None:
        """Move new records of ``label`` to the next epoch (after a revocation); a standing
        delegation is deposited for it too, so those records are served alike."""
        new = self.epoch(label) + 1
        self.state.setdefault("epochs", {})[label] = new
        await self.client.save_state()
        mode = self.standing.get(label, {}).get("mode")
        if mode is not None:
            await self.deposit_standing(label, mode, epoch=new)

    async def while_away(self, since_height: int | None = None) -> dict:
        """What happened without this patient since ``since_height`` (default: since
        the last call): requests granted from standing delegations, re-encryptions
        served under them, emergency (break-glass) accesses and what was read under
        them, requests denied by the policy, and requests waiting for the patient.
        Returns ``{since, height, standing_grants, standing_reads, emergencies,
        emergency_reads, denied, waiting}`` (lists of audit events)."""
        events = await self.audit()
        since = self.state.get("seen_height", 0) if since_height is None else since_height
        new = [e for e in events if e.get("height", 0) > since]
        out: dict[str, Any] = {"since": since, "height": max([since] + [e.get("height", 0) for e in events])}
        out["standing_grants"] = [e for e in new if e["event"] == "access_request" and e.get("standing")]
        out["standing_reads"] = [e for e in new if e["event"] == "access" and e.get("standing")
                                 and not e.get("emergency")]
        out["emergencies"] = [e for e in new if e["event"] == "break_glass"]
        out["emergency_reads"] = [e for e in new if e["event"] == "access" and e.get("emergency")]
        out["denied"] = [e for e in new if e["event"] == "access_request"
                         and (e.get("decision") or {}).get("effect") == "deny"]
        answered = {e.get("request_id") for e in events if e["event"] in ("grant", "deny_request")}
        out["waiting"] = [e for e in new if e["event"] == "access_request" and not e.get("grant_id")
                          and (e.get("decision") or {}).get("effect") == "allow"
                          and e.get("request_id") not in answered]
        if since_height is None:
            self.state["seen_height"] = out["height"]
            await self.client.save_state()
        return out

    async def audit(self) -> list[dict]:
        """This patient's audit trail from the ledger, oldest first (read a page of
        :data:`core.ledger.AUDIT_PAGE` events at a time from one peer)."""
        self.client.require_registered()
        events: list[dict] = []
        after: str | None = None
        while True:
            try:
                reply = await self.client.call_peer(PeerAudit.kind, PeerAudit(self.subject, after).to_wire())
            except bus.RemoteError as exc:
                raise remote_error(exc, "audit") from None
            try:
                page = PeerAuditReply.from_wire(reply)
            except DecodeError as exc:
                raise IntegrityError(f"malformed audit reply: {exc}") from None
            events.extend(page.events)
            if page.next is None:
                return events
            if after is not None and page.next <= after:
                raise IntegrityError("audit reply: the next page does not follow the previous one")
            after = page.next

    # ------------------------------------------------------------ access requests

    async def _on_access_request(self, msg: bus.Message, request: PatientAccessRequest) -> PatientAccessRequestReply:
        request_id = request.request_id
        lock = self._answering.setdefault(request_id, trio.Lock())
        try:
            async with lock:
                try:
                    answer = await self._answer(request_id, msg.sender, request.height)
                except AgentError as exc:
                    self._tell_answered(request_id, msg.sender, exc)
                    raise
                self._tell_answered(request_id, msg.sender, answer)
                return PatientAccessRequestReply(**answer)
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._answering.pop(request_id, None)

    def _tell_answered(self, request_id: str, doctor: str, outcome: dict | AgentError) -> None:
        """:attr:`answered`, which never changes the answer the doctor gets (an exception in it is logged)."""
        if self.answered is None:
            return
        try:
            self.answered(request_id, doctor, outcome)
        except Exception:
            log.exception("%s: the answered callback failed (the answer to %s stands)", self.subject, request_id)

    async def _answer(self, request_id: str, sender: str, height: int | None = None) -> dict:
        self.client.require_registered()
        for gid, g in self.grants.items():  # a retry after we already granted
            if g.get("request_id") == request_id and g.get("doctor") == sender and not g.get("revoked"):
                return {"grant_id": gid, "height": g.get("height")}  # the doctor reads the grant back
        # the fields checked below (and shown for approval) only, as one array (the client reads it
        # back into the answer view's map): core.protocol.request_row_view
        query = PeerQuery("request", request_id=request_id, view=REQUEST_ROW)
        try:
            if height is None:
                req = await self.client.query(query)
            elif self.waiting.has_room(sender):  # the doctor said where it committed: read there or later
                with self.waiting.slot(sender, PatientAccessRequest.kind):
                    req = await self.client.query(PeerQuery("request", request_id=request_id, min_height=height,
                                                            view=REQUEST_ROW))
            else:
                # this doctor's other requests hold its waiting slots: read without waiting (a peer at
                # the height answers at once, as usual); not there yet: busy (the doctor retries)
                req = await self.client.query(query)
                if req is None:
                    with self.waiting.slot(sender, PatientAccessRequest.kind):  # (busy, unless one just ended)
                        req = await self.client.query(PeerQuery("request", request_id=request_id,
                                                                min_height=height, view=REQUEST_ROW))
        except AgentError as exc:
            if exc.code != codes.FORBIDDEN:
                raise
            req = {}  # another patient's request: the peers do not show it to us
        if req is None and height is None:
            # the doctor committed it through its own peer: ours may be a block behind; the waiting is
            # capped per sender and in total (busy beyond), so unknown ids cannot hold every slot
            with self.waiting.slot(sender, PatientAccessRequest.kind):
                req = await self.client.query_committed(query, wait=self.client.commit_wait)
        if req is None or req.get("patient") != self.subject or req.get("doctor") != sender:
            raise UnknownRequest(f"no request {request_id} from {sender} to {self.subject} on the ledger")
        decision = req.get("decision") or {}
        if decision.get("effect") != "allow" or req.get("status") == "denied":
            raise PolicyDenied(f"the policy denies this request: {decision.get('reason', '')}",
                               rule=str(decision.get("rule", "")), reason=str(decision.get("reason", "")))
        if req.get("status") == "rejected":
            raise RequestRejected("the patient rejected this request")
        if req.get("status") != "pending":
            raise UnknownRequest(f"request {request_id} is {req.get('status')}")
        # the certificate a peer showed at most cert_fresh_s (CERT_FRESH_S) ago (the admission looked it up): the
        # peers read it fresh at every re-encryption, so a revoked doctor is refused there at once
        doctor = await self.client.lookup_certificate(sender, max_age=self.client.cert_fresh_s)
        if doctor is None:
            await self._deny(request_id, "requester's certificate is revoked or unknown")
            raise RequestRejected("the requester's certificate is revoked or unknown")
        scope = "label"  # the policy pre-authorized the label
        if decision.get("approval") == "patient" or req.get("hold"):
            # a doctor revoked under this policy is the patient's to decide again (the ledger holds it)
            info = {"request_id": request_id, "doctor": sender, "doctor_org": doctor.org,
                    "doctor_attributes": dict(doctor.attributes), "record_id": req.get("record_id"),
                    "label": req.get("label"), "operation": req.get("operation"),
                    "purpose": req.get("purpose"), "rule": decision.get("rule"), "scope": "record",
                    "hold": req.get("hold"), "expires_in_s": self.grant_ttl_s}
            answer: bool | str = False
            if self._approve is not None:
                try:
                    answer = await self._approve(info)
                except Exception:
                    log.exception("%s: the approval callback failed; rejecting %s", self.subject, request_id)
                    answer = False
            if not answer:
                await self._deny(request_id, "declined by the patient")
                raise RequestRejected("the patient declined the request")
            # exactly what the prompt showed: the record, or the label if the patient said so
            scope = "label" if answer == "label" else "record"
        return await self._grant(request_id, req, doctor, scope)

    async def _deny(self, request_id: str, reason: str) -> None:
        try:
            await self.client.submit("deny_request", {"request_id": request_id, "reason": reason})
        except AgentError as exc:
            log.warning("%s: deny_request for %s not committed: %s", self.subject, request_id, exc)

    async def _grant(self, request_id: str, req: dict, doctor: Certificate, scope: str = "label") -> dict:
        """Commit a grant for ``req`` and deliver its key shares; the reply's fields:
        ``{grant_id, height, terms, peers}`` (``terms``: the committed entry's
        :data:`core.protocol.GRANT_TERMS` as our commit notice carried them, None without
        a notice; ``peers``: those that acknowledged their shares by then). The answer does
        not wait for the peers beyond the first t (no delivery grace): the doctor asks the
        acknowledged ones first, and the others' deliveries go on in the background."""
        try:
            receiver = await self._receiving_key(doctor)
        except CoreError as exc:
            await self._deny(request_id, "requester's receiving key does not verify")
            raise RequestRejected(f"the doctor's receiving key does not verify: {exc}") from None
        label = req["label"]
        # the label-key epoch the record is sealed under: our own store/reseal noted it (no query);
        # checked against the committed grant below (another process of ours may have re-sealed it)
        known = self.state["records"].get(req["record_id"], {}).get("epoch")
        epoch = int(known) if isinstance(known, int) else await self._record_epoch(req["record_id"])
        kp = await self._label_key_async(label, epoch)  # the key the requested record is sealed under
        peers = list(self.client.consortium.peers)
        threshold = self.manifest.threshold
        grant_id = new_id("g")
        proxies = [pre.Proxy(p.index, p.box_key) for p in peers]
        # bound (version 4): each share's sha256 in the grant transaction, and its rk masked with the
        # grant id and the peer's index inside the seal, bind it to the grant and peer
        sealed = await run_crypto(pre.make_key_shares, kp, receiver, proxies, threshold, share_context(grant_id),
                                  bound=True)
        by_peer = {p.id: s for p, s in zip(peers, sealed)}
        shares = {pid: hashlib.sha256(s.sealed).digest() for pid, s in by_peer.items()}
        expires_at = int(time.time()) + self.grant_ttl_s
        reply, acks, outcome = await self._commit_and_deliver(grant_id, by_peer, threshold, "grant", {
            "grant_id": grant_id, "request_id": request_id, "threshold": threshold,
            "expires_at": expires_at, "shares": shares, "scope": scope,
        }, grace=0.0)
        errors = dict(outcome.errors) if outcome is not None else {}
        entry = (reply.get("effect") or {}).get(entry_key("grant", grant_id))
        committed = (int(entry.get("epoch", 0)) if isinstance(entry, dict)
                     else await self._record_epoch(req["record_id"], reply.get("height")))
        stale = None
        if committed != epoch:  # our note was stale: these shares are of another epoch's key
            stale = f"the record is sealed under label-key epoch {committed}, the key shares were made for {epoch}"
            self.state["records"].get(req["record_id"], {})["epoch"] = committed
        self.grants[grant_id] = {
            "request_id": request_id, "doctor": req["doctor"], "label": label, "record_id": req["record_id"],
            "expires_at": expires_at, "threshold": threshold, "peers": acks, "revoked": False,
            "height": reply.get("height"), "scope": scope,
        }
        # (off the answer's path: the ledger holds the grant; a crash before the save loses the local
        # note of it, see docs/security.md)
        self.client.save_state_soon()
        if stale is not None:
            # not revoked (a revocation would hold the doctor's next request for the patient): the
            # peers re-encrypt only the grant's records, whose capsules these shares do not open
            raise Unavailable(f"grant {grant_id} for request {request_id}: {stale}; the doctor asks again "
                              "(the patient now knows the record's epoch)")
        if not isinstance(outcome, Done):
            with contextlib.suppress(AgentError):
                await self.revoke(grant_id, "too few peers accepted their key shares")
            raise Unavailable(f"only {len(acks)} of {len(peers)} peers accepted their key shares "
                              f"(need {threshold}): {errors}")
        if errors:
            log.info("%s: grant %s: peers without their share yet: %s", self.subject, grant_id, errors)
        terms = (tuple(entry.get(k, 0 if k == "epoch" else None) for k in GRANT_TERMS)
                 if isinstance(entry, dict) else None)
        if terms is not None and None in terms:
            terms = None  # not the entry we know: the doctor reads the grant back
        return {"grant_id": grant_id, "height": int(reply["height"]), "terms": terms, "peers": list(acks)}

    async def _record_epoch(self, record_id: str, height: int | None = None) -> int:
        """The label-key epoch our record is sealed under, as a peer's committed state says."""
        rec = await self.client.query(PeerQuery("record", patient=self.subject, record_id=record_id,
                                                min_height=height))
        return int(rec.get("epoch", 0)) if isinstance(rec, dict) else 0

    async def _receiving_key(self, doctor: Certificate) -> pre.PublicKey:
        """``check_receiving_key(doctor)`` (two pairings, in a worker thread), remembered
        for the latest :data:`RECEIVERS_KEPT` (subject, key, proof): the check depends on
        those bytes alone, so a doctor's next grant skips it (a failure is never kept).
        Whether the certificate is still valid is the caller's fresh lookup."""
        memo_key = hashlib.sha256(b"\0".join((doctor.subject.encode(), len(doctor.pre_key).to_bytes(4, "big"),
                                               bytes(doctor.pre_key), bytes(doctor.pre_proof)))).digest()
        receiver = self._receivers.get(memo_key)
        if receiver is not None:
            self._receivers.move_to_end(memo_key)
            return receiver
        receiver = await run_crypto(check_receiving_key, doctor)
        self._receivers[memo_key] = receiver
        while len(self._receivers) > RECEIVERS_KEPT:
            self._receivers.popitem(last=False)
        return receiver

    async def _commit_and_deliver(self, object_id: str, by_peer: dict[str, pre.SealedKeyShare], threshold: int,
                                  tx_type: str, body: dict, *, grace: float = DELIVERY_GRACE_S,
                                  ) -> tuple[dict, list[str], Any]:
        """Deliver sealed shares or parts (``peer.deliver_share`` under ``object_id``) while the
        transaction naming their hashes commits; (submit reply, acknowledging peers, plan outcome).
        ``grace``: how long after t acknowledgements the answer waits for the other peers."""
        # peers that failed lately are skipped while t others can take the shares
        targets, skipped = self.health.split(by_peer, self.client.probe_peer)
        if len(targets) < threshold:
            targets, skipped = targets + skipped, []
        plan = ShareDelivery(targets, threshold, timeout=self.config.request_timeout, grace=grace, skipped=skipped)

        async def deliver(action: Any) -> Any:
            share = by_peer[action.peer]
            wire = PeerDeliverShare(object_id, share.index, share.sealed).to_wire()
            return await result_of(self.client.peer_request(action.peer, PeerDeliverShare.kind, wire,
                                                            timeout=action.timeout))

        delivery = PlanRun(plan, deliver)
        # peers wait (<= 10 s) for the transaction to commit before accepting a share,
        # so deliver while it is being ordered; late deliveries finish in
        # the background (bounded by the request timeout)
        self.client.nursery.start_soon(self._deliver_all, object_id, delivery)
        try:
            reply = await self.client.submit(tx_type, body)
        except BaseException:
            delivery.cancel()  # not committed: the peers would refuse the shares anyway
            raise
        delivery.tell(plan.on_committed)
        outcome = await delivery.wait_decided()
        if isinstance(outcome, Done):
            acks = list(outcome.value)
        else:  # fewer than t acknowledgements
            acks = sorted(plan.acks)
            if outcome is None:
                outcome = GaveUp("not-enough", dict(plan.errors), len(acks))
        return reply, acks, outcome

    async def _deliver_all(self, grant_id: str, delivery: PlanRun) -> None:  # a grant's or a delegation's
        """Run the grant's share deliveries (``peer.deliver_share`` to each peer in
        parallel; a background task); once every delivery is over, record (and
        save) the shares acknowledged after the answer."""
        outcome = await delivery.run()
        acks = sorted(delivery.plan.acks)
        grant = self.grants.get(grant_id)
        if grant is None or (isinstance(outcome, Done) and acks == sorted(outcome.value)):
            return  # nothing came after the answer
        grant["peers"] = acks  # shares that arrived after the answer
        try:
            await self.client.save_state()
        except OSError as exc:
            log.warning("%s: could not save state: %s", self.subject, exc)


# ------------------------------------------------------------------ policies


def standing_labels(policy: Policy) -> list[str]:
    """The labels an ``approval auto`` allow rule of ``policy`` names (what
    :meth:`PatientAgent.set_policy` deposits standing parts for by default)."""
    out: list[str] = []
    for rule in policy.rules:
        if rule.effect == "allow" and rule.approval == "auto":
            out.extend(o.value for o in rule.objects if o.kind == "label" and o.value not in out)
    return out


def narrowed_policy(policy: Policy, doctor: str, label: str) -> Policy:
    """``policy`` with its version raised by one and a rule denying ``doctor`` every
    operation on ``label`` (deny overrides allow; docs/policy.md)."""
    base = "revoked-" + "".join(c if c.isalnum() or c in "_-" else "-" for c in doctor)
    names = {r.id for r in policy.rules}
    name, n = base, 1
    while name in names:
        n += 1
        name = f"{base}-{n}"
    text = (f"policy \"x\" version 1\nrule {name}:\n  deny any on label {_quote(label)}\n"
            f"  when id == {_quote(doctor)}\n")
    rule = parse_policy(text).rules[0]
    return dataclasses.replace(policy, version=policy.version + 1, rules=(rule, *policy.rules))


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ------------------------------------------------------------------ sealing (worker threads)


def _seal_bytes(plain: bytes, owner: pre.PublicKey | pre.KeyPair, **kw: Any) -> tuple[recordmod.RecordHeader, bytes, str]:
    sealer = recordmod.RecordSealer(owner, size=len(plain), **kw)
    parts = [sealer.start()]
    step = sealer.header.chunk_size
    for off in range(0, len(plain), step):
        parts.append(sealer.update(plain[off:off + step]))
    parts.append(sealer.finish())
    blob = b"".join(parts)
    return sealer.header, blob, cidmod.compute(blob)


def _seal_file(path: Path, out: Path, owner: pre.PublicKey | pre.KeyPair, **kw: Any) -> tuple[recordmod.RecordHeader, str, int]:
    """Stream-seal ``path`` into ``out`` computing the CID on the way; bounded memory."""
    size = path.stat().st_size
    sealer = recordmod.RecordSealer(owner, size=size, **kw)
    builder = cidmod.CidBuilder()
    out.parent.mkdir(parents=True, exist_ok=True)
    fed = 0
    with open(path, "rb") as src, open(out, "wb") as dst:
        def emit(data: bytes) -> None:
            if data:
                builder.update(data)
                dst.write(data)

        emit(sealer.start())
        while fed < size:
            piece = src.read(min(_READ_PIECE, size - fed))
            if not piece:
                raise AgentError(f"{path} shrank while being read", code=codes.STORE_IO)
            fed += len(piece)
            emit(sealer.update(piece))
        emit(sealer.finish())
        dst.flush()
    return sealer.header, builder.finish(), size
