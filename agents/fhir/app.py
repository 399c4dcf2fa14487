"""The FHIR R4 facade: a Starlette app over a patient's or doctors' agents, served by Hypercorn on trio.

:class:`Facade` runs in the trio process of the agents it acts for (a patient
app's backend: one :class:`~agents.PatientAgent`; a hospital's doctor
connector: one :class:`~agents.DoctorAgent` per doctor), so a request is
plain trio code calling the Python API, with no asyncio bridge: Starlette is
anyio-based and Hypercorn's trio worker (``hypercorn.trio.serve``) runs it
on trio. The token's subject picks the agent (:mod:`agents.fhir.auth`).

Routes (docs/fhir.md):

* ``GET /metadata``: the CapabilityStatement of what this instance serves.
* ``POST /``: a transaction Bundle (patient), validated with the R4B models of
  ``fhir.resources`` and stored entry by entry (:mod:`agents.fhir.bundles`).
* ``GET /Consent``, ``GET /Consent/{id}``, ``PUT /Consent/{id}`` (patient): the
  policy as a Consent (:mod:`agents.fhir.consent`).
* ``GET /Patient/{id}/$everything``, ``GET /{Type}?patient=&category=&_id=``,
  ``GET /{Type}/{id}`` (doctor: request, collect shares, decrypt; the patient
  reads its own): searchset Bundles; a policy's denial is HTTP 403 with an
  OperationOutcome naming the deciding rule.
* ``GET /AuditEvent?patient=`` (patient): the ledger's audit trail
  (:mod:`agents.fhir.audit`).
* ``POST /{Type}/{id}/$break-glass?patient=`` (doctor, token purpose ETREAT):
  emergency access with officers' co-signatures (:mod:`agents.fhir.emergency`).

Every request needs a bearer token; every answer that is not a resource is
an OperationOutcome. Bounds (:class:`FacadeConfig`): body size, entries per
transaction, one deadline per request, records and bytes per answer, requests
in flight (429 beyond), and Hypercorn's read and keep-alive timeouts.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from core.errors import DecodeError
from core.identity import MAX_ID, check_id
from core.policy import Policy
from core.protocol import PeerQuery

from agents import errors
from agents.doctor import DoctorAgent
from agents.fhir.audit import audit_bundle
from agents.fhir.auth import Principal, TokenVerifier
from agents.fhir.bundles import plan_transaction, resource_bytes, searchset, transaction_response
from agents.fhir.consent import FHIR_BASE, consent_to_policy, policy_to_consent
from agents.fhir.emergency import is_emergency_purpose, parse_break_glass
from agents.fhir.errors import FhirError, ScopeError, operation_outcome
from agents.fhir.labels import FHIR_MEDIA_TYPE, LabelMap, record_id_for
from agents.patient import PatientAgent

__all__ = ["Facade", "FacadeConfig", "FhirResponse", "validate_resource", "FHIR_VERSION"]

log = logging.getLogger("agents.fhir")

FHIR_VERSION = "4.0.1"
FHIR_JSON = "application/fhir+json"
_SEARCH_PARAMS = {"patient", "category", "_id", "_format"}
_TYPE_NAME = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
BREAK_GLASS_OPERATION = f"{FHIR_BASE}/OperationDefinition/break-glass"
MAX_JSON_DEPTH = 100  # nesting of a body or a record (FHIR resources nest a few levels)
GRANTS_AT_ONCE = 3  # labels whose first read (a possible new grant) runs at once, see read_records


@dataclass
class FacadeConfig:
    """Where the facade is and its bounds. ``base_url`` is the public base (fullUrls, and the
    default token audience)."""

    base_url: str
    labels: LabelMap = field(default_factory=LabelMap.default_map)
    max_body_bytes: int = 16 << 20
    max_entries: int = 1000
    request_timeout: float = 120.0
    max_results: int = 1000
    max_result_bytes: int = 64 << 20
    max_in_flight: int = 16
    parallel: int = 8  # records stored or read at once within one request
    read_timeout: int = 30  # seconds Hypercorn waits for request bytes
    keep_alive_timeout: float = 5.0


class FhirResponse(Response):
    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def validate_resource(resource: Any, path: str = "") -> None:
    """Validate a resource (JSON form) with fhir.resources' R4B model of its type; FhirError (422)
    listing the first problems. R4B is wire-compatible with R4 for the resources served here."""
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    rtype = resource.get("resourceType") if isinstance(resource, Mapping) else None
    where = path or str(rtype or "resource")
    try:
        model = get_fhir_model_class(rtype) if isinstance(rtype, str) else None
    except KeyError:
        model = None
    if model is None:
        raise FhirError(f"{where}: {rtype!r} is not an R4 resource type; send FHIR R4 JSON",
                        status=422, issue="structure", expression=where)
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or rtype}: {e['msg']}"
                             for e in exc.errors()[:5])
        raise FhirError(f"{where} is not valid FHIR R4: {problems}; fix the resource", status=422,
                        issue="structure", expression=where) from None


def _patient_param(value: str | None) -> str | None:
    if value is None:
        return None
    return _patient_id(value.split("/", 1)[1] if value.startswith("Patient/") else value)


def _patient_id(value: str) -> str:
    """``value`` if the ledger can name a user so (core.identity.check_id), else FhirError 400."""
    try:
        return check_id(value, "patient id")
    except DecodeError:
        raise FhirError(f"patient id {value[:80]!r} refused: ids are 1..{MAX_ID} characters of "
                        "[A-Za-z0-9._:@-]; name an emrshare patient", issue="value") from None


class Facade:
    """The facade over ``agents`` (subject -> PatientAgent or DoctorAgent); ``app`` is the ASGI app,
    :meth:`serve` serves it with Hypercorn on trio."""

    def __init__(self, config: FacadeConfig, agents: Mapping[str, PatientAgent | DoctorAgent],
                 verifier: TokenVerifier):
        self.config = config
        self.agents = dict(agents)
        self.verifier = verifier
        self.labels = config.labels
        self.base_url = config.base_url.rstrip("/")
        self._in_flight = trio.CapacityLimiter(config.max_in_flight)
        self._started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        e = self._endpoint
        routes = [
            Route("/metadata", e(self._metadata), methods=["GET"]),
            Route("/", e(self._transaction), methods=["POST"]),
            Route("/Consent", e(self._consent_search), methods=["GET"]),
            Route("/Consent/{rid}", e(self._consent_read), methods=["GET"]),
            Route("/Consent/{rid}", e(self._consent_put), methods=["PUT"]),
            Route("/AuditEvent", e(self._audit), methods=["GET"]),
            Route("/Patient/{pid}/$everything", e(self._everything), methods=["GET"]),
            Route("/{rtype}/{rid}/$break-glass", e(self._break_glass), methods=["POST"]),
            Route("/{rtype}", e(self._search), methods=["GET"]),
            Route("/{rtype}/{rid}", e(self._read), methods=["GET"]),
        ]
        self.app = Starlette(routes=routes, exception_handlers={HTTPException: self._http_error})

    # ------------------------------------------------------------ plumbing

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        issue = "not-found" if status == 404 else "not-supported"
        return FhirResponse(operation_outcome(f"{request.method} {request.url.path}: {getattr(exc, 'detail', '')}; "
                                              "see GET /metadata for what this server does", issue=issue),
                            status_code=status)

    def _endpoint(self, handler: Callable[..., Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                self._in_flight.acquire_nowait()
            except trio.WouldBlock:
                return FhirResponse(operation_outcome(
                    f"busy: {self.config.max_in_flight} requests in flight; retry shortly", issue="throttled"),
                    status_code=429, headers={"Retry-After": "1"})
            try:
                with trio.fail_after(self.config.request_timeout):
                    principal = await self.verifier.verify(request.headers.get("authorization"))
                    agent = self.agents.get(principal.subject)
                    if agent is None:
                        raise ScopeError(f"forbidden: this server does not act for {principal.subject!r}; "
                                         "use the facade of your own agent")
                    result = await handler(request, principal, agent)
                if isinstance(result, Response):
                    return result
                return FhirResponse(result)
            except trio.TooSlowError:
                return self._error(FhirError(f"timeout: the request took longer than {self.config.request_timeout:g} s; "
                                             "narrow it (category, _id) or retry", status=504, issue="timeout"))
            except FhirError as exc:
                return self._error(exc)
            except errors.AgentError as exc:
                return self._error(_agent_error(exc))
            except Exception:  # a bug: logged with its traceback here, never sent to the client
                log.exception("FHIR facade: %s %s failed", request.method, request.url.path)
                return self._error(FhirError("internal error: see the facade's log", status=500, issue="exception"))
            finally:
                self._in_flight.release()
        return run

    def _error(self, exc: FhirError) -> Response:
        headers = {}
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        elif exc.status == 403 and isinstance(exc, ScopeError):
            headers["WWW-Authenticate"] = 'Bearer error="insufficient_scope"'
        return FhirResponse(exc.outcome(), status_code=exc.status, headers=headers)

    @staticmethod
    def _require(principal: Principal, rtype: str, perm: str, patient: str | None) -> None:
        if not principal.may(rtype, perm, patient):
            names = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
            raise ScopeError(f"forbidden: the token's scopes do not allow {names[perm]} of {rtype}"
                             + (f" for patient {patient}" if patient else "")
                             + f"; ask for a scope such as user/{rtype}.{perm}")

    async def _body(self, request: Request) -> Any:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise FhirError(f"request body refused: {declared} bytes, more than {limit}; split it",
                            status=413, issue="too-costly")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in (FHIR_JSON, "application/json"):
            raise FhirError(f"request body refused: content type {ctype!r}; send {FHIR_JSON}", status=415,
                            issue="not-supported")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise FhirError(f"request body refused: more than {limit} bytes; split it", status=413,
                                issue="too-costly")
            chunks.append(chunk)
        body = b"".join(chunks)
        if not _nesting_ok(body):
            raise FhirError(f"request body refused: not JSON (nested deeper than {MAX_JSON_DEPTH} levels); "
                            "send FHIR R4 JSON", issue="structure")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise FhirError(f"request body refused: not JSON ({exc}); send FHIR R4 JSON", issue="structure") from None

    @staticmethod
    def _patient_agent(agent: Any, what: str) -> PatientAgent:
        if not isinstance(agent, PatientAgent):
            raise ScopeError(f"forbidden: {what} is done by the patient's own facade, not a doctor's")
        return agent

    # ------------------------------------------------------------ metadata

    async def _metadata(self, request: Request, principal: Principal, agent: Any) -> dict[str, Any]:
        return self.capability_statement()

    def capability_statement(self) -> dict[str, Any]:
        """The CapabilityStatement of this instance (what its agents can do, nothing more)."""
        has_patient = any(isinstance(a, PatientAgent) for a in self.agents.values())
        has_doctor = any(isinstance(a, DoctorAgent) for a in self.agents.values())
        params = [{"name": "patient", "type": "reference"}, {"name": "category", "type": "token"},
                  {"name": "_id", "type": "token"}]
        resources = []
        for rtype in sorted(self.labels.types):
            entry: dict[str, Any] = {"type": rtype, "interaction": [{"code": "read"}, {"code": "search-type"}],
                                     "searchParam": params}
            operations = []
            if rtype == "Patient":
                operations.append({"name": "everything",
                                   "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"})
            if has_doctor:
                operations.append({"name": "break-glass", "definition": BREAK_GLASS_OPERATION})
            if operations:
                entry["operation"] = operations
            resources.append(entry)
        if has_patient:
            resources.append({"type": "Consent", "interaction": [{"code": "read"}, {"code": "update"},
                                                                 {"code": "search-type"}]})
            resources.append({"type": "AuditEvent", "interaction": [{"code": "search-type"}],
                              "searchParam": [{"name": "patient", "type": "reference"}]})
        rest: dict[str, Any] = {
            "mode": "server",
            "documentation": "emrshare: records sealed with threshold proxy re-encryption; reads are decided by the "
                             "patient's policy on the consortium ledger",
            "security": {"service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                                  "code": "SMART-on-FHIR"}]}],
                         "description": f"Bearer JWT access tokens from {self.verifier.issuer} (keys from its JWKS), "
                                        "SMART v2 scopes; no anonymous access"},
            "resource": resources,
        }
        if has_patient:
            rest["interaction"] = [{"code": "transaction"}]
        kinds = " and ".join(k for k, on in (("patient", has_patient), ("doctor", has_doctor)) if on)
        return {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": self._started,
            "kind": "instance",
            "software": {"name": "emrshare FHIR facade"},
            "implementation": {"description": f"emrshare FHIR facade for {kinds or 'no'} agents",
                               "url": self.base_url},
            "fhirVersion": FHIR_VERSION,
            "format": [FHIR_JSON],
            "rest": [rest],
        }

    # ------------------------------------------------------------ patient: store

    async def _transaction(self, request: Request, principal: Principal, agent: Any) -> Response:
        patient = self._patient_agent(agent, "storing records")
        if not any("c" in s.perms for s in principal.scopes if s.context != "patient"
                   or principal.patient in (None, patient.subject)):
            raise ScopeError("forbidden: the token's scopes allow creating nothing; ask for a scope such as "
                             "patient/*.c")
        bundle = await self._body(request)
        if not isinstance(bundle, dict):
            raise FhirError("POST /: a Bundle is expected", expression="Bundle")
        await trio.to_thread.run_sync(validate_resource, bundle, "Bundle")
        entries = plan_transaction(bundle, self.labels, max_entries=self.config.max_entries)
        for i, e in enumerate(entries):
            await trio.to_thread.run_sync(validate_resource, e.resource, f"Bundle.entry[{i}].resource")
            self._require(principal, e.resource_type, "c", patient.subject)
        await store_entries(patient, entries, parallel=self.config.parallel)
        return FhirResponse(transaction_response(entries), status_code=200)

    # ------------------------------------------------------------ patient: Consent

    async def _current_policy(self, patient: PatientAgent) -> Policy | None:
        entry = await patient.client.query(PeerQuery("policy", patient=patient.subject))
        if entry is None:
            return None
        try:
            return Policy.from_msgpack(entry["policy"])
        except (DecodeError, KeyError, TypeError) as exc:
            raise errors.IntegrityError(f"the ledger's policy of {patient.subject} does not decode: {exc}") from None

    async def _consent(self, agent: Any, principal: Principal, perm: str) -> dict[str, Any] | None:
        patient = self._patient_agent(agent, "reading the Consent")
        self._require(principal, "Consent", perm, patient.subject)
        policy = await self._current_policy(patient)
        return None if policy is None else policy_to_consent(policy, patient=patient.subject)

    async def _consent_search(self, request: Request, principal: Principal, agent: Any) -> dict[str, Any]:
        wanted = _patient_param(request.query_params.get("patient"))
        if wanted is not None and wanted != agent.subject:
            raise ScopeError(f"forbidden: this facade holds the Consent of {agent.subject} only")
        consent = await self._consent(agent, principal, "s")
        return searchset([consent] if consent else [], self.base_url, self_link=str(request.url))

    async def _consent_read(self, request: Request, principal: Principal, agent: Any) -> dict[str, Any]:
        consent = await self._consent(agent, principal, "r")
        if consent is None or consent["id"] != request.path_params["rid"]:
            raise FhirError(f"Consent/{request.path_params['rid']}: not found; GET /Consent lists the patient's",
                            status=404, issue="not-found")
        return consent

    async def _consent_put(self, request: Request, principal: Principal, agent: Any) -> dict[str, Any]:
        patient = self._patient_agent(agent, "setting the Consent")
        self._require(principal, "Consent", "u", patient.subject)
        consent = await self._body(request)
        await trio.to_thread.run_sync(validate_resource, consent, "Consent")
        rid = request.path_params["rid"]
        if consent.get("id") != rid:
            raise FhirError(f"PUT Consent/{rid}: the resource's id is {consent.get('id')!r}; they must match",
                            expression="Consent.id")
        current = await self._current_policy(patient)
        version = 1 if current is None else current.version + 1
        policy = consent_to_policy(consent, labels=self.labels, patient=patient.subject, version=version)
        await patient.set_policy(policy.to_text())
        return policy_to_consent(policy, patient=patient.subject)

    # ------------------------------------------------------------ patient: audit

    async def _audit(self, request: Request, principal: Principal, agent: Any) -> dict[str, Any]:
        patient = self._patient_agent(agent, "reading the audit trail")
        wanted = _patient_param(request.query_params.get("patient")) or patient.subject
        if wanted != patient.subject:
            raise ScopeError(f"forbidden: the ledger shows an audit trail to its patient only ({patient.subject})")
        self._require(principal, "AuditEvent", "s", patient.subject)
        events = await patient.audit()
        if len(events) > self.config.max_results:
            events = events[-self.config.max_results:]
        return audit_bundle(events, patient.subject, bundle_type="searchset", base_url=self.base_url)

    # ------------------------------------------------------------ reading records

    async def _everything(self, request: Request, principal: Principal, agent: Any) -> dict[str, Any]:
        patient = _patient_id(request.path_params["pid"])
        if not principal.may_any("r", patient):
            raise ScopeError(f"forbidden: the token's scopes allow reading nothing of {patient}; "
                             "ask for a scope such as user/*.rs")
        found, denials, listed = await self._collect(agent, principal, patient, None, None)
        found = [r for r in found if principal.may(r["resourceType"], "r", patient)]
        return self._answer(request, found, denials, listed=listed, agent=agent, patient=patient)

    async def _search(self, request: Request, principal: Principal, agent: Any) -> dict[str, Any]:
        rtype = _resource_type(request.path_params["rtype"])
        params = request.query_params
        unknown = sorted(set(params) - _SEARCH_PARAMS)
        if unknown:
            raise FhirError(f"search refused: parameter {unknown[0]!r} is not supported; use patient, category, _id",
                            issue="not-supported")
        patient = _patient_param(params.get("patient")) or principal.patient or (
            agent.subject if isinstance(agent, PatientAgent) else None)
        if patient is None:
            raise FhirError(f"search of {rtype} refused: name the patient (?patient=ID)", issue="required")
        self._require(principal, rtype, "s", patient)
        category, rid = params.get("category"), params.get("_id")
        found, denials, listed = await self._collect(agent, principal, patient, rtype, category, rid)
        return self._answer(request, found, denials, listed=listed, agent=agent, patient=patient)

    async def _read(self, request: Request, principal: Principal, agent: Any) -> dict[str, Any]:
        rtype, rid = _resource_type(request.path_params["rtype"]), request.path_params["rid"]
        if not _FHIR_ID.match(rid):
            raise FhirError(f"read of {rtype}/{rid[:80]!r} refused: not a FHIR id", issue="value")
        patient = _patient_param(request.query_params.get("patient")) or principal.patient or (
            agent.subject if isinstance(agent, PatientAgent) else None)
        if patient is None:
            raise FhirError(f"read of {rtype}/{rid} refused: no patient in the token's launch context; "
                            f"add ?patient=ID", issue="required")
        self._require(principal, rtype, "r", patient)
        data = await read_record(agent, patient, record_id_for(rtype, rid), principal.purpose)
        resource = _decode_resource(data, f"{rtype}/{rid}")
        if resource.get("resourceType") != rtype or resource.get("id") != rid:
            raise errors.IntegrityError(
                f"record of {rtype}/{rid} holds {resource.get('resourceType')}/{resource.get('id')}")
        return resource

    async def _break_glass(self, request: Request, principal: Principal, agent: Any) -> dict[str, Any]:
        rtype, rid = _resource_type(request.path_params["rtype"]), request.path_params["rid"]
        if not _FHIR_ID.match(rid):
            raise FhirError(f"$break-glass on {rtype}/{rid[:80]!r} refused: not a FHIR id", issue="value")
        if not isinstance(agent, DoctorAgent):
            raise ScopeError("forbidden: a break-glass is a doctor's emergency access; a patient reads its own "
                             "records with GET")
        if not is_emergency_purpose(principal.claims):
            raise ScopeError("forbidden: a break-glass needs a token whose purpose_of_use is ETREAT (emergency "
                             "treatment); ask the authorization server for one")
        patient = _patient_param(request.query_params.get("patient")) or principal.patient
        if patient is None:
            raise FhirError(f"$break-glass on {rtype}/{rid} refused: no patient in the token's launch context; "
                            "add ?patient=ID", issue="required")
        self._require(principal, rtype, "r", patient)
        params = await self._body(request)
        asked = parse_break_glass(params)
        validate_resource(params, "Parameters")
        try:
            data = await agent.break_glass(patient, record_id_for(rtype, rid), asked.reason, asked.cosigners,
                                           break_glass_id=asked.break_glass_id)
        except errors.TransactionRejected as exc:
            status = {"duplicate": 409, "not_found": 404, "malformed": 400}.get(exc.reason, 403)
            raise FhirError(f"$break-glass refused by the ledger ({exc.reason or 'rejected'}): {exc}; "
                            "check the officers, their signatures over this id, doctor, patient, record and "
                            "reason, and the patient's emergency clause", status=status,
                            issue="forbidden" if status == 403 else "business-rule") from None
        resource = _decode_resource(data, f"{rtype}/{rid}")
        if resource.get("resourceType") != rtype or resource.get("id") != rid:
            raise errors.IntegrityError(
                f"record of {rtype}/{rid} holds {resource.get('resourceType')}/{resource.get('id')}")
        return resource

    def _answer(self, request: Request, found: list[dict], denials: list[errors.AgentError], *, listed: int,
                agent: Any, patient: str) -> dict:
        if denials and not found:
            raise _agent_error(denials[0])
        outcome = None
        if not listed and isinstance(agent, DoctorAgent):
            outcome = operation_outcome(
                f"no record of {patient} is visible to you: the peers list a patient's records only to doctors "
                "the patient's policy could allow (or there are none); a read by id gets the policy's decision",
                issue="informational", severity="information")
        if denials:
            text = "; ".join(f"{d}" for d in denials[:8])
            outcome = operation_outcome(f"some records were not released: {text}", issue="suppressed",
                                        severity="warning", rule=getattr(denials[0], "rule", None) or None)
        return searchset(found, self.base_url, outcome=outcome, self_link=str(request.url))

    async def _collect(self, agent: Any, principal: Principal, patient: str, rtype: str | None,
                       category: str | None, rid: str | None = None) -> tuple[list[dict], list[errors.AgentError], int]:
        """The FHIR resources of ``patient`` this agent may read (of ``rtype``/``category``/``_id``
        when given), the denials met on the way, and how many records the peers listed."""
        listing = await list_records(agent, patient)
        records = [r for r in listing if str(r.get("media_type", "")).startswith(FHIR_JSON)]
        if rtype is not None:
            labels = set(self.labels.labels_for_type(rtype, category))
            records = [r for r in records if r.get("label") in labels]
            if rid is not None:
                wanted = record_id_for(rtype, rid)
                records = [r for r in records if r.get("record_id") == wanted]
        if len(records) > self.config.max_results:
            raise FhirError(f"search refused: {len(records)} records match, more than {self.config.max_results}; "
                            "narrow it with category or _id", issue="too-costly")
        total = sum(int(r.get("size") or 0) for r in records)
        if total > self.config.max_result_bytes:
            raise FhirError(f"search refused: {total} bytes of records match, more than "
                            f"{self.config.max_result_bytes}; narrow it with category or _id", issue="too-costly")
        plain, denials = await read_records(agent, patient, records, principal.purpose, parallel=self.config.parallel)
        out = []
        for rec in records:
            data = plain.get(rec["record_id"])
            if data is None:
                continue
            res = _decode_resource(data, rec["record_id"])
            if rtype is not None and res.get("resourceType") != rtype:
                continue
            if category is not None and category not in _categories(res):
                continue
            out.append(res)
        out.sort(key=lambda r: (r.get("resourceType") != "Patient", r.get("resourceType", ""), r.get("id", "")))
        return out, denials, len(listing)

    # ------------------------------------------------------------ serving

    async def serve(self, bind: list[str], *, certfile: str | None = None, keyfile: str | None = None,
                    client_ca: str | None = None,
                    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the app with Hypercorn's trio worker until cancelled; ``task_status`` gets the bound URLs.
        ``certfile``/``keyfile``: HTTPS; ``client_ca``: also require client certificates (mutual TLS)
        signed by that CA, on top of the bearer token."""
        from hypercorn.config import Config
        from hypercorn.trio import serve

        cfg = Config()
        cfg.bind = list(bind)
        cfg.accesslog = None
        cfg.errorlog = logging.getLogger("agents.fhir.http")
        cfg.read_timeout = self.config.read_timeout
        cfg.keep_alive_timeout = self.config.keep_alive_timeout
        cfg.graceful_timeout = 2.0
        cfg.include_server_header = False
        if certfile:
            cfg.certfile, cfg.keyfile = certfile, keyfile
            if client_ca:
                cfg.ca_certs = client_ca
                cfg.verify_mode = ssl.CERT_REQUIRED
        await serve(self.app, cfg, task_status=task_status)


# ------------------------------------------------------------------ the agents' side


async def store_entries(patient: PatientAgent, entries: list, *, parallel: int = 8,
                        on_stored: Callable[[Any], None] | None = None) -> None:
    """Seal and store each planned entry as a record (at most ``parallel`` at once; ``on_stored(entry)``
    after each); the first failure stops the others and is raised as itself (not in an exception group)."""
    limiter = trio.CapacityLimiter(parallel)
    failures: list[errors.AgentError] = []

    async def one(e: Any, scope: trio.CancelScope) -> None:
        async with limiter:
            try:
                await patient.store(resource_bytes(e.resource), label=e.label, media_type=FHIR_MEDIA_TYPE,
                                    record_id=e.record_id)
                if on_stored is not None:
                    on_stored(e)
            except errors.TransactionRejected as exc:
                if exc.reason == "duplicate":
                    failures.append(FhirError(f"{e.resource_type}/{e.resource_id} is already stored; records are "
                                              "immutable, store a new resource id", status=409, issue="duplicate"))
                else:
                    failures.append(exc)
                scope.cancel()
            except errors.AgentError as exc:
                failures.append(exc)
                scope.cancel()

    async with trio.open_nursery() as nursery:
        for e in entries:
            nursery.start_soon(one, e, nursery.cancel_scope)
    if failures:
        raise failures[0]


async def list_records(agent: Any, patient: str) -> list[dict]:
    if isinstance(agent, PatientAgent):
        if patient != agent.subject:
            raise ScopeError(f"forbidden: a patient's facade reads {agent.subject}'s records only")
        return await agent.records()
    return await agent.records(patient)


async def read_record(agent: Any, patient: str, record_id: str, purpose: str | None) -> bytes:
    if isinstance(agent, PatientAgent):
        if patient != agent.subject:
            raise ScopeError(f"forbidden: a patient's facade reads {agent.subject}'s records only")
        return await agent.read(record_id)
    try:
        return await agent.read(patient, record_id, purpose=purpose)
    except errors.GrantRevoked:  # the doctor's request stands: ask once more under the current policy
        return await agent.read(patient, record_id, purpose=purpose)


async def read_records(agent: Any, patient: str, records: list[dict], purpose: str | None, *,
                       parallel: int = 8) -> tuple[dict[str, bytes], list[errors.AgentError]]:
    """Read ``records`` (the first of each label first, so one grant serves the label's others);
    a label whose first read is refused by the policy or the patient is not asked again. Any other
    failure stops the reads and is raised as itself. At most :data:`GRANTS_AT_ONCE` first reads
    (each may need a new grant) run at once: a peer holds at most
    :data:`agents.admission.MAX_WAITING_PER_SENDER` of one patient's share deliveries waiting for
    their grant to commit."""
    limiter = trio.CapacityLimiter(parallel)
    firsts = trio.CapacityLimiter(GRANTS_AT_ONCE)
    plain: dict[str, bytes] = {}
    denials: list[errors.AgentError] = []
    failures: list[errors.AgentError] = []
    by_label: dict[str, list[dict]] = {}
    for rec in records:
        by_label.setdefault(str(rec.get("label")), []).append(rec)

    async with trio.open_nursery() as nursery:
        async def one(rec: dict) -> bool:
            async with limiter:
                try:
                    plain[rec["record_id"]] = await read_record(agent, patient, rec["record_id"], purpose)
                    return True
                except (errors.PolicyDenied, errors.RequestRejected) as exc:
                    denials.append(exc)
                except errors.AgentError as exc:
                    failures.append(exc)
                    nursery.cancel_scope.cancel()
                return False

        async def label(group: list[dict]) -> None:
            async with firsts:
                ok = await one(group[0])
            if ok:
                for rec in group[1:]:
                    nursery.start_soon(one, rec)

        for group in by_label.values():
            nursery.start_soon(label, group)
    if failures:
        raise failures[0]
    return plain, denials


def _resource_type(name: str) -> str:
    if not _TYPE_NAME.match(name):
        raise FhirError(f"{name[:80]!r} is not a resource type; see GET /metadata", status=404, issue="not-found")
    return name


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NESTING = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[{]}")


def _nesting_ok(data: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``data``'s arrays and objects nest at most ``limit`` deep (strings skipped).

    Checked before ``json.loads``, whose C decoder recurses once per level: every
    process that imports py_ecc (core's ECDSA fallback) runs with a recursion limit
    of 100 000, so a body of 100 000 ``[`` overflowed the C stack and killed the
    process instead of raising RecursionError."""
    skeleton = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS).translate(_NESTING)
    return max(itertools.accumulate(memoryview(skeleton).cast("b")), default=0) <= limit


def _decode_resource(data: bytes, what: str) -> dict[str, Any]:
    if not _nesting_ok(data):
        raise errors.IntegrityError(f"record {what} is labelled FHIR but nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        res = json.loads(data)
    except ValueError:
        raise errors.IntegrityError(f"record {what} is labelled FHIR but is not JSON") from None
    if not isinstance(res, dict):
        raise errors.IntegrityError(f"record {what} is labelled FHIR but is not a resource")
    return res


def _categories(resource: Mapping[str, Any]) -> set[str]:
    cats = resource.get("category")
    cats = [cats] if isinstance(cats, Mapping) else cats if isinstance(cats, list) else []
    return {c.get("code") for cat in cats if isinstance(cat, Mapping)
            for c in cat.get("coding") or [] if isinstance(c, Mapping)}


def _agent_error(exc: errors.AgentError) -> FhirError:
    """The HTTP form of an agent's expected failure."""
    if isinstance(exc, errors.PolicyDenied):
        return FhirError(f"forbidden: {exc}; the patient's policy decides (rule {exc.rule or '?'})", status=403,
                         issue="forbidden", rule=exc.rule or None)
    if isinstance(exc, (errors.RequestRejected, errors.GrantRevoked)):
        return FhirError(f"forbidden: {exc}; ask the patient", status=403, issue="forbidden")
    if isinstance(exc, errors.RecordNotFound):
        return FhirError(f"not found: {exc}", status=404, issue="not-found")
    if isinstance(exc, errors.RegistrationError):
        return FhirError(f"the facade's agent cannot act: {exc}; register it (emrshare patient|doctor register)",
                         status=503, issue="security")
    if isinstance(exc, (errors.Unavailable, errors.NotEnoughPeers)):
        return FhirError(f"unavailable: {exc}; retry later", status=503, issue="transient")
    if isinstance(exc, errors.IntegrityError):
        return FhirError(f"integrity check failed: {exc}", status=502, issue="processing")
    if isinstance(exc, errors.TransactionRejected):
        return FhirError(f"the ledger refused the transaction: {exc}", status=422, issue="business-rule")
    return FhirError(f"{exc}", status=500, issue="exception")
