"""The doctor agent: requests access, collects re-encryption shares, reads and verifies records.

Embedding (docs/embedding.md)::

    async with DoctorAgent.open(config) as doctor:
        await doctor.register(token)
        for rec in await doctor.records("alice", label="cardiology"):
            data = await doctor.read("alice", rec["record_id"], purpose="treatment")

:meth:`DoctorAgent.read` follows docs/protocol.md's Read flow. It reuses a
grant it holds for (patient, label) while the peers honour it; when they
answer that the grant is revoked or expired it forgets the grant and raises
:class:`GrantRevoked` (it never asks again behind the caller's back). Without a
grant it submits an ``access_request`` (:class:`PolicyDenied` when the policy
says no), asks the patient (:class:`RequestRejected` when the patient says
no), and then asks every peer for its re-encryption share, keeping the first t
that verify (:class:`NotEnoughPeers` when fewer come back). Before plaintext is
returned: the blob matches the CID on the ledger, the ledger's store
transaction carries the patient's signature (checked against the patient's
certificate), the record opens with the combined key (authenticated
encryption), and the header names the same owner, label, record id and capsule
as the ledger.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from typing import Any, AsyncIterator

import trio

import bus
from core import canonical, ecdsa
from core import cid as cidmod
from core import pre
from core import record as recordmod
from core.errors import CoreError, DecodeError
from core.identity import Certificate
from core.tx import Transaction

from agents.client import SUSPECT_TIMEOUT, UserAgent, UserConfig, remote_error
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
)
from agents.runtime import run_crypto
from agents.storage import NotFound as StorageNotFound
from agents.storage import StorageClient, StorageError

__all__ = ["DoctorAgent", "REENCRYPTION_TAG"]

log = logging.getLogger("agents.doctor")

REENCRYPTION_TAG = "emrshare/v1/reencryption"
PATIENT_TIMEOUT_FACTOR = 3  # how many request timeouts a doctor waits for a patient's answer
_UNKNOWN_SENDER_RETRIES = 8
_GIVE_UP_GRACE_S = 0.5  # when t shares are out of reach, how long the other requests may still take
_HEDGE_S = 0.3  # without t good shares by then, the spare healthy peers are asked too


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def _cache_key(patient: str, label: str) -> str:
    return f"{patient}\x00{label}"


class DoctorAgent(UserAgent):
    """A doctor (or nurse, ...): see the module docstring. Open with :meth:`open`."""

    def __init__(self, config: UserConfig, keys, node, nursery):
        super().__init__(config, keys, node, nursery)
        self.storage = StorageClient(self.endpoint, self.manifest.storage, replicas=self.manifest.replicas,
                                     write_quorum=self.manifest.write_quorum, timeout=config.request_timeout,
                                     health=self.health, background=nursery)
        self.reencrypt_timeout = min(10.0, config.request_timeout)
        self._rotation = secrets.randbelow(1 << 16)  # which t peers go first (spread, not secret)
        # the patient's answer is several round trips (read the request, commit the
        # grant, deliver the shares), any of which may fail over from a peer that
        # just stopped answering after ``request_timeout``
        self.patient_timeout = PATIENT_TIMEOUT_FACTOR * config.request_timeout

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, config: UserConfig, *, node: bus.Node | None = None,
                   approve: Any = None) -> AsyncIterator["DoctorAgent"]:
        """Open the doctor agent (keys created on first use); yields it, closes on exit.

        ``node``: attach to this bus node (default: open a TCP node routed by the
        manifest and ``config.routes``). ``approve`` is accepted for symmetry with
        :meth:`PatientAgent.open` and ignored.
        """
        async with cls._open(config, node) as agent:
            agent.state.setdefault("grant_cache", {})
            yield agent

    @property
    def grant_cache(self) -> dict[str, dict]:
        """(patient, label) -> the grant this doctor holds: {patient, label, grant_id, request_id,
        threshold, expires_at}. Keys are ``"patient\\0label"``."""
        return self.state["grant_cache"]

    def cached_grant(self, patient: str, label: str) -> dict | None:
        entry = self.grant_cache.get(_cache_key(patient, label))
        if entry is not None and entry["expires_at"] <= time.time():
            return None
        return entry

    # ------------------------------------------------------------ queries

    async def records(self, patient: str, label: str | None = None) -> list[dict]:
        """A patient's records on the ledger (optionally one label):
        ``[{record_id, label, cid, size, media_type, height}]``."""
        self._require_registered()
        out = await self.query({"what": "records", "patient": patient, "label": label})
        return list(out or [])

    async def request(self, patient: str, record_id: str, *, purpose: str | None = None) -> dict:
        """Submit an ``access_request`` and wait for its block; return the ledger's decision:
        ``{request_id, status, effect, approval, rule, reason, policy, version}``.

        Raises RecordNotFound when the ledger has no such record, TransactionRejected
        when the request itself is invalid (e.g. ``cert_revoked``).
        """
        self._require_registered()
        request_id = _new_id("req")
        from agents.errors import TransactionRejected

        try:
            await self.submit("access_request", {"request_id": request_id, "patient": patient,
                                                 "record_id": record_id, "operation": "read",
                                                 "purpose": purpose})
        except TransactionRejected as exc:
            if exc.reason == "not_found":
                raise RecordNotFound(f"no record {patient}/{record_id} on the ledger") from None
            raise
        # committed through whichever peer answered the submit: poll if ours is behind
        req = await self.query_committed({"what": "request", "request_id": request_id}, wait=self.commit_wait)
        if not isinstance(req, dict):
            raise Unavailable(f"request {request_id} committed but the peer does not show it")
        decision = dict(req.get("decision") or {})
        return {**decision, "request_id": request_id, "status": req.get("status")}

    # ------------------------------------------------------------ read

    async def read(self, patient: str, record_id: str, *, purpose: str | None = None) -> bytes:
        """The plaintext of ``patient``'s record, verified end to end (see the module docstring).

        Errors: RecordNotFound, PolicyDenied, RequestRejected, GrantRevoked,
        NotEnoughPeers, IntegrityError, Unavailable, TransactionRejected,
        CertificateRevoked (this doctor's own certificate was revoked).
        """
        try:
            return await self._read(patient, record_id, purpose=purpose)
        except RegistrationError as exc:
            raise await self.explain_unknown(exc) from None

    async def _read(self, patient: str, record_id: str, *, purpose: str | None = None) -> bytes:
        self._require_registered()
        # a record stored a moment ago through another peer may be a block away
        rec = await self.query_committed({"what": "record", "patient": patient, "record_id": record_id},
                                         wait=1.0)
        if rec is None:
            raise RecordNotFound(f"no record {patient}/{record_id} on the ledger")
        store_tx = await self._check_store_tx(patient, record_id, rec)
        label = store_tx.body["label"]
        grant = self.cached_grant(patient, label)
        if grant is not None:
            try:
                shares = await self._collect(grant, patient, record_id, rec)
            except GrantRevoked:
                self.grant_cache.pop(_cache_key(patient, label), None)
                await self.save_state()
                raise
        else:
            grant = await self._obtain_grant(patient, record_id, label, purpose)
            shares = await self._collect(grant, patient, record_id, rec)
        blob = await self._fetch(rec["cid"])
        provider = recordmod.ThresholdKeyProvider(shares, grant["threshold"], self.keys.receive.secret)
        try:
            header, plain = await run_crypto(recordmod.open_record, blob, provider)
        except CoreError as exc:
            suspects = ", ".join(str(i) for i in provider.suspects) or "unknown"
            raise IntegrityError(f"record {record_id} does not open with the peers' shares "
                                 f"(suspect proxy indices: {suspects}): {exc}") from None
        expected = (patient, label, record_id, store_tx.body["capsule"])
        if (header.owner_id, header.label, header.record_id, header.capsule) != expected:
            raise IntegrityError(f"record {record_id}: the sealed header does not match the ledger")
        return plain

    async def _patient_cert(self, patient: str) -> Certificate:
        cert = await self.lookup_certificate(patient)
        if cert is None:
            raise IntegrityError(f"{patient} has no valid certificate on the ledger")
        return cert

    async def _check_store_tx(self, patient: str, record_id: str, rec: dict) -> Transaction:
        """The committed store transaction, signed by the patient, agreeing with the state entry."""
        try:
            tx = Transaction.from_bytes(rec["tx"])
        except (DecodeError, KeyError, TypeError) as exc:
            raise IntegrityError(f"record {record_id}: malformed store transaction: {exc}") from None
        body = tx.body
        if (tx.type != "store" or tx.submitter != patient or body.get("record_id") != record_id
                or body.get("cid") != rec.get("cid") or body.get("label") != rec.get("label")
                or body.get("capsule") != rec.get("capsule")):
            raise IntegrityError(f"record {record_id}: the store transaction does not match the ledger entry")
        cert = await self._patient_cert(patient)
        if not await run_crypto(tx.is_valid_signature, cert.ecdsa_key):
            raise IntegrityError(f"record {record_id}: the store transaction is not signed by {patient}")
        return tx

    async def _obtain_grant(self, patient: str, record_id: str, label: str, purpose: str | None) -> dict:
        decision = await self.request(patient, record_id, purpose=purpose)
        if decision.get("effect") != "allow" or decision.get("status") != "pending":
            raise PolicyDenied(f"{patient}'s policy denies this request: {decision.get('reason', '')}",
                               rule=str(decision.get("rule", "")), reason=str(decision.get("reason", "")))
        request_id = decision["request_id"]
        await self._patient_cert(patient)  # so the patient's reply envelope verifies
        reply = await self._ask_patient(patient, request_id)
        grant_id = reply.get("grant_id") if isinstance(reply, dict) else None
        if not isinstance(grant_id, str):
            raise AgentError(f"{patient} answered without a grant id", code="integrity")
        g = await self.query_committed({"what": "grant", "grant_id": grant_id}, wait=self.commit_wait)
        if not isinstance(g, dict) or g.get("doctor") != self.subject or g.get("patient") != patient \
                or g.get("label") != label or g.get("revoked"):
            raise IntegrityError(f"grant {grant_id} on the ledger is not a live grant of {label} for us")
        grant = {"patient": patient, "label": label, "grant_id": grant_id, "request_id": request_id,
                 "threshold": int(g["threshold"]), "expires_at": int(g["expires_at"])}
        self.grant_cache[_cache_key(patient, label)] = grant
        await self.save_state()
        return grant

    async def _ask_patient(self, patient: str, request_id: str) -> Any:
        delay = 0.05
        for attempt in range(_UNKNOWN_SENDER_RETRIES):
            try:
                return await self.endpoint.request(patient, "patient.access_request", {"request_id": request_id},
                                                   timeout=self.patient_timeout)
            except bus.RemoteError as exc:
                if exc.code == "unknown-sender" and attempt + 1 < _UNKNOWN_SENDER_RETRIES:
                    await trio.sleep(delay)  # the patient is looking our certificate up
                    delay = min(delay * 2, 1.0)
                    continue
                if exc.code == "request.denied":
                    raise PolicyDenied(f"{patient}: {exc.message}") from None
                if exc.code == "request.rejected":
                    raise RequestRejected(f"{patient}: {exc.message}") from None
                raise remote_error(exc, f"asking {patient}") from None
            except (bus.RequestTimeout, bus.UnreachableError, bus.BrokenError, bus.ClosedError) as exc:
                raise Unavailable(f"patient {patient} did not answer: {exc}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _collect(self, grant: dict, patient: str, record_id: str, rec: dict) -> list[pre.ReencryptedShare]:
        """Ask the peers for their shares in parallel; return ``threshold`` verified ones.

        t healthy peers are asked at once (rotating between reads, so the
        pairings spread over the consortium); the other healthy peers are asked
        when one of those fails, or all at once after :data:`_HEDGE_S` without t
        good shares. The read goes on as soon as t good shares are in (slower
        requests are cancelled). Peers that failed
        lately are asked only when the others cannot make t (one more each time
        a request fails; all at once when fewer than t are healthy), with a
        short timeout (:data:`agents.client.SUSPECT_TIMEOUT`) while some peer is healthy."""
        need = grant["threshold"]
        good: dict[str, pre.ReencryptedShare] = {}
        errors: dict[str, str] = {}
        body = {"grant_id": grant["grant_id"], "patient": patient, "record_id": record_id,
                "request_id": grant["request_id"]}
        cid = rec["cid"]
        ask_now, reserve = self.health.split(self.manifest.peers, self._probe_peer)
        # the short leash only while some peer is healthy (when every peer failed
        # lately they may all just be busy)
        suspects = set(reserve) if ask_now else set()
        if len(ask_now) < need:  # not enough healthy peers: ask everyone at once
            ask_now, reserve = ask_now + reserve, []
        else:
            # ask exactly t healthy peers (rotating, to spread the pairings); the other
            # healthy ones are a hedge: asked at once on a failure, or after _HEDGE_S
            k = self._rotation % len(ask_now)
            self._rotation += 1
            ask_now = ask_now[k:] + ask_now[:k]
            ask_now, reserve = ask_now[:need], ask_now[need:] + reserve
        in_flight = 0

        async def hedge(nursery: trio.Nursery) -> None:
            nonlocal in_flight
            await trio.sleep(_HEDGE_S)
            while reserve and reserve[0] not in suspects:
                in_flight += 1
                nursery.start_soon(ask, reserve.pop(0), nursery)

        async def ask(peer: str, nursery: trio.Nursery) -> None:
            nonlocal in_flight
            # a peer that failed lately gets a short leash
            timeout = min(self.reencrypt_timeout, SUSPECT_TIMEOUT) if peer in suspects else self.reencrypt_timeout
            try:
                try:
                    reply = await self.peer_request(peer, "peer.reencrypt", body, timeout=timeout)
                except bus.RemoteError as exc:
                    errors[peer] = exc.code
                    return
                except (bus.RequestTimeout, bus.UnreachableError, bus.BrokenError, bus.ClosedError) as exc:
                    errors[peer] = f"unavailable ({type(exc).__name__})"
                    return
                try:
                    share = await run_crypto(self._check_share, peer, reply, grant["request_id"], cid)
                except (IntegrityError, CoreError) as exc:
                    errors[peer] = f"integrity ({exc})"
                    return
                good[peer] = share
                if len(good) >= need:
                    nursery.cancel_scope.cancel()
            finally:
                in_flight -= 1
                top_up(nursery)

        def top_up(nursery: trio.Nursery) -> None:
            nonlocal in_flight
            if "access.bad_state" in errors.values():
                # a peer says the grant is revoked or expired (ledger state only moves
                # forward): do not go looking for a peer that has not heard yet
                reserve.clear()
            while reserve and len(good) + in_flight < need:
                in_flight += 1
                nursery.start_soon(ask, reserve.pop(0), nursery)
            if len(good) + in_flight < need:
                # t good shares are out of reach (e.g. the others say the grant is
                # revoked): a stalled peer must not hold the answer up; the ones
                # still out get a moment (their answers make the error precise)
                scope = nursery.cancel_scope
                scope.deadline = min(scope.deadline, trio.current_time() + _GIVE_UP_GRACE_S)

        async with trio.open_nursery() as nursery:
            for peer in ask_now:
                in_flight += 1
                nursery.start_soon(ask, peer, nursery)
            if reserve:
                nursery.start_soon(hedge, nursery)
            top_up(nursery)
        for peer in reserve:
            errors[peer] = "skipped (did not answer lately)"
        if len(good) >= need:
            return list(good.values())[:need]
        if any(code == "access.bad_state" for code in errors.values()):
            raise GrantRevoked(f"the peers refuse grant {grant['grant_id']}: it is revoked or expired")
        detail = ", ".join(f"{p}: {e}" for p, e in sorted(errors.items()))
        raise NotEnoughPeers(f"{len(good)} of the {need} needed peers returned a valid share ({detail})",
                             answered=len(good), needed=need, errors=dict(errors))

    def _check_share(self, peer: str, reply: Any, request_id: str, cid: str) -> pre.ReencryptedShare:
        info = self._peer_info.get(peer)
        key = self.peer_key(peer)
        if info is None or key is None:
            raise IntegrityError(f"{peer} is not a consortium peer")
        if not isinstance(reply, dict):
            raise IntegrityError("malformed reply")
        index, raw, sig = reply.get("index"), reply.get("share"), reply.get("signature")
        if reply.get("cid") != cid:
            raise IntegrityError("share for another CID")
        if type(index) is not int or index != info.index:
            raise IntegrityError(f"wrong proxy index {index!r}")
        if not isinstance(raw, bytes) or not isinstance(sig, bytes):
            raise IntegrityError("malformed share or signature")
        if not ecdsa.is_valid(key, REENCRYPTION_TAG, canonical.pack([request_id, cid, index, raw]), sig):
            raise IntegrityError("share signature does not verify")
        share = pre.ReencryptedShare.from_bytes(raw)
        if share.index != index:
            raise IntegrityError("share index does not match the reply")
        return share

    async def _fetch(self, cid: str) -> bytes:
        try:
            blob = await self.storage_retry(lambda: self.storage.get(cid))
        except StorageNotFound:
            raise Unavailable(f"no reachable storage node holds {cid}") from None
        except StorageError as exc:
            raise Unavailable(f"storage: {exc}") from None
        if not await run_crypto(cidmod.is_valid, cid, blob):
            raise IntegrityError(f"blob does not match its CID {cid}")
        return blob
