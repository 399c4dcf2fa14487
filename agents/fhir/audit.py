"""Ledger audit events -> FHIR R4 AuditEvent, after IHE Basic Audit Log Patterns (pure).

Every event the ledger writes under ``audit/<patient>/...`` (core.ledger,
``emrshare ledger audit``) becomes one AuditEvent (:func:`audit_event`);
:func:`audit_bundle` wraps a patient's trail in a Bundle. Following IHE BALP
where it applies: the patient is an entity (type Person, role Patient), the
record, policy, request or grant is an entity naming it by identifier, the
signer of the transaction is the requesting agent, the doctor a grant or a
re-encryption is for is the information recipient (IRCP), the observer is the
consortium ledger (an application server), and the transaction's hash and
block height are an entity of their own so the AuditEvent can be checked
against the chain. ``id`` is ``<height>-<first 16 hex of the tx hash>``, and
``-<n>`` after it for the n-th entry of a transaction that records several
events (a peer's ``access_batch``: the event's ``entry``).

=============  =======================  ==========================  ======  ============================
ledger event   type                     subtype                     action  outcome
=============  =======================  ==========================  ======  ============================
store          audit-event-type rest    restful-interaction create  C       0
set_policy     audit-event-type rest    restful-interaction update  U       0
access_request DCM 110110 Patient Rec.  ledger-event access_request E       0 allowed, 4 denied (+reason)
grant          DCM 110110               ledger-event grant          E       0
deny_request   DCM 110110               ledger-event deny_request   E       0 (the patient said no)
revoke_grant   DCM 110110               ledger-event revoke_grant   D       0
access         audit-event-type rest    restful-interaction read    R       0 (a peer re-encrypted)
break_glass    DCM 110113 Security Al.  DCM 110127 Emergency Over-  E       0
                                        ride Started + ledger-event
other          DCM 110110               ledger-event <its name>     E       0
=============  =======================  ==========================  ======  ============================

Emergency access (issue 16): a ``break_glass`` AuditEvent has v3-ActReason
ETREAT with the doctor's stated reason as its text (``purposeOfEvent``, R4's
name, and the ``purposeOfUse`` of the doctor's agent: the requestor, IRCP), each co-signing officer as an
agent of type v3-ParticipationType VRF (verifier), and an entity for the
break-glass (its id, reason, co-signers, expiry). Every re-encryption served
under it (an ``access`` event the ledger flags ``emergency``) carries the same
purpose and, when the break-glass is in the same trail
(:func:`audit_bundle`), its reason and id. Both are flagged in ``meta.tag``
(:data:`FLAG_SYSTEM` ``emergency``; a re-encryption under a standing
delegation: ``standing``). An access whose grant was revoked, or had expired,
by the time the peer's batch committed (the ledger's ``late`` flag: the share
was served before the peer saw that) is tagged ``late-revoked`` /
``late-expired``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from agents.fhir.consent import (
    ACTREASON_SYSTEM, FHIR_BASE, PARTICIPATION_SYSTEM, POLICY_SYSTEM, RECORD_SYSTEM, SUBJECT_SYSTEM,
)

__all__ = ["audit_event", "audit_bundle", "LEDGER_EVENT_SYSTEM", "TX_SYSTEM", "FLAG_SYSTEM", "BREAK_GLASS_SYSTEM"]

LEDGER_EVENT_SYSTEM = f"{FHIR_BASE}/CodeSystem/ledger-event"
TX_SYSTEM = f"{FHIR_BASE}/NamingSystem/ledger-tx"
REQUEST_SYSTEM = f"{FHIR_BASE}/NamingSystem/request-id"
GRANT_SYSTEM = f"{FHIR_BASE}/NamingSystem/grant-id"
BREAK_GLASS_SYSTEM = f"{FHIR_BASE}/NamingSystem/break-glass-id"
FLAG_SYSTEM = f"{FHIR_BASE}/CodeSystem/audit-flag"
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_SECURITY_ALERT = {"system": _DCM, "code": "110113", "display": "Security Alert"}
_OVERRIDE_STARTED = {"system": _DCM, "code": "110127", "display": "Emergency Override Started"}
_REST = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
         "display": "Restful Operation"}
_PATIENT_RECORD = {"system": _DCM, "code": "110110", "display": "Patient Record"}
_INTERACTION = "http://hl7.org/fhir/restful-interaction"
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"

# event -> (type, subtype coding, action)
_KINDS: dict[str, tuple[dict, dict, str]] = {
    "store": (_REST, {"system": _INTERACTION, "code": "create"}, "C"),
    "set_policy": (_REST, {"system": _INTERACTION, "code": "update"}, "U"),
    "access": (_REST, {"system": _INTERACTION, "code": "read"}, "R"),
    "revoke_grant": (_PATIENT_RECORD, {"system": LEDGER_EVENT_SYSTEM, "code": "revoke_grant"}, "D"),
    "break_glass": (_SECURITY_ALERT, _OVERRIDE_STARTED, "E"),
}


def _instant(ms: int) -> str:
    t = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _who(subject: str) -> dict[str, Any]:
    return {"identifier": {"system": SUBJECT_SYSTEM, "value": subject}, "display": subject}


def _agent(subject: str, role: str, requestor: bool) -> dict[str, Any]:
    return {"type": {"coding": [{"system": PARTICIPATION_SYSTEM, "code": role}]}, "who": _who(subject),
            "requestor": requestor}


def _detail(name: str, value: Any) -> dict[str, Any]:
    return {"type": name, "valueString": str(value)}


def _entity(system: str, value: str, type_code: str, role_code: str | None, details: dict[str, Any],
            name: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"what": {"identifier": {"system": system, "value": value}},
                           "type": {"system": _ENTITY_TYPE, "code": type_code}}
    if role_code is not None:
        out["role"] = {"system": _OBJECT_ROLE, "code": role_code}
    if name:
        out["name"] = name
    kept = [_detail(k, v) for k, v in details.items() if v is not None and v != ""]
    if kept:
        out["detail"] = kept
    return out


def _emergency_purpose(reason: Any) -> list[dict[str, Any]]:
    out: dict[str, Any] = {"coding": [{"system": ACTREASON_SYSTEM, "code": "ETREAT", "display": "Emergency Treatment"}]}
    if isinstance(reason, str) and reason.strip():
        out["text"] = reason
    return [out]


def audit_event(event: Mapping[str, Any], patient: str, *, site: str | None = None,
                break_glass: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The AuditEvent (JSON form) of one ledger audit event of ``patient``'s trail.

    ``break_glass``: for an ``access`` event the ledger flags ``emergency``, the
    ``break_glass`` event whose grant it was served under (its reason and id are added)."""
    kind = str(event.get("event"))
    actor = str(event.get("actor"))
    tx = event.get("tx") or b""
    tx_hex = tx.hex() if isinstance(tx, (bytes, bytearray)) else str(tx)
    height = int(event.get("height", 0))
    type_, subtype, action = _KINDS.get(kind, (_PATIENT_RECORD, {"system": LEDGER_EVENT_SYSTEM, "code": kind}, "E"))
    outcome, outcome_desc = "0", None
    agents = []
    entities = [{"what": {"reference": f"Patient/{patient}"} if _fhir_id(patient)
                 else {"identifier": {"system": SUBJECT_SYSTEM, "value": patient}},
                 "type": {"system": _ENTITY_TYPE, "code": "1"}, "role": {"system": _OBJECT_ROLE, "code": "1"}}]
    doctor = event.get("doctor")
    emergency = bool(event.get("emergency"))
    if kind != "break_glass" and break_glass is not None and break_glass.get("grant_id") != event.get("grant_id"):
        break_glass = None
    if kind == "break_glass":
        break_glass = event
    reason = break_glass.get("reason") if emergency and break_glass is not None else None
    if kind == "access":
        agents.append(_agent(actor, "CST", False))  # the peer that re-encrypted (custodian of a key share)
        if doctor:
            agents.append(_agent(str(doctor), "IRCP", True))
    elif kind == "break_glass":
        agents.append(_agent(actor, "IRCP", True))  # the doctor who broke the glass reads
        for officer in event.get("cosigners") or []:
            agents.append(_agent(str(officer), "VRF", False))  # a co-signing officer of the doctor's hospital
    else:
        agents.append(_agent(actor, "IRCP" if kind == "access_request" else "AUT", True))
        if doctor:
            agents.append(_agent(str(doctor), "IRCP", False))
    if event.get("record_id"):
        entities.append(_entity(RECORD_SYSTEM, str(event["record_id"]), "2", "4",
                                {"label": event.get("label"), "cid": event.get("cid")}))
    if kind == "set_policy":
        entities.append(_entity(POLICY_SYSTEM, str(event.get("policy")), "2", "4",
                                {"version": event.get("version")}, name="Consent"))
    if event.get("request_id"):
        decision = event.get("decision") if isinstance(event.get("decision"), Mapping) else {}
        entities.append(_entity(REQUEST_SYSTEM, str(event["request_id"]), "2", None,
                                {"effect": decision.get("effect"), "rule": decision.get("rule"),
                                 "approval": decision.get("approval"),
                                 "reason": event.get("reason") or decision.get("reason")}))
        if kind == "access_request" and decision.get("effect") != "allow":
            outcome = "4"
            outcome_desc = f"denied by rule {decision.get('rule')!r}: {decision.get('reason', '')}"
    if event.get("grant_id"):
        entities.append(_entity(GRANT_SYSTEM, str(event["grant_id"]), "2", None,
                                {"label": event.get("label") if not event.get("record_id") else None,
                                 "peers": ", ".join(event.get("peers") or []) or None,
                                 "share-index": event.get("share_index"),
                                 "reason": event.get("reason") if kind == "revoke_grant" else None}))
    if emergency and break_glass is not None and break_glass.get("break_glass_id"):
        expires = break_glass.get("expires_at")
        entities.append(_entity(BREAK_GLASS_SYSTEM, str(break_glass["break_glass_id"]), "2", None,
                                {"reason": break_glass.get("reason"),
                                 "cosigners": ", ".join(break_glass.get("cosigners") or []) or None,
                                 "expires-at": _instant(int(expires) * 1000) if isinstance(expires, int) else None},
                                name="break-glass"))
    entities.append(_entity(TX_SYSTEM, tx_hex, "2", None, {"block-height": height}, name=kind))
    out: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"{height}-{tx_hex[:16]}" + (f"-{int(event['entry'])}" if event.get("entry") is not None else ""),
        "type": type_,
        "subtype": [subtype],
        "action": action,
        "recorded": _instant(int(event.get("time", 0))),
        "outcome": outcome,
        "agent": agents,
        "source": {"observer": {"display": "emrshare consortium ledger"},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}]},
        "entity": entities,
    }
    if emergency:
        out["purposeOfEvent"] = _emergency_purpose(reason)
        for agent in agents:
            if agent["requestor"]:
                agent["purposeOfUse"] = _emergency_purpose(reason)
    tags = [{"system": FLAG_SYSTEM, "code": flag} for flag in ("emergency", "standing") if event.get(flag)]
    if event.get("late") in ("revoked", "expired"):
        tags.append({"system": FLAG_SYSTEM, "code": f"late-{event['late']}"})
    if tags:
        out = {"resourceType": "AuditEvent", "id": out["id"], "meta": {"tag": tags},
               **{k: v for k, v in out.items() if k not in ("resourceType", "id")}}
    if site:
        out["source"]["site"] = site
    if outcome_desc:
        out["outcomeDesc"] = outcome_desc
    return out


def audit_bundle(events: Iterable[Mapping[str, Any]], patient: str, *, bundle_type: str = "collection",
                 base_url: str | None = None, site: str | None = None) -> dict[str, Any]:
    """A Bundle (``collection``, or ``searchset``) of the AuditEvents of ``patient``'s trail, oldest first."""
    entries = []
    events = list(events)
    glass = {e.get("grant_id"): e for e in events if e.get("event") == "break_glass" and e.get("grant_id")}
    for e in events:
        res = audit_event(e, patient, site=site, break_glass=glass.get(e.get("grant_id")))
        entry: dict[str, Any] = {"resource": res}
        if base_url:
            entry["fullUrl"] = f"{base_url.rstrip('/')}/AuditEvent/{res['id']}"
        if bundle_type == "searchset":
            entry["search"] = {"mode": "match"}
        entries.append(entry)
    out: dict[str, Any] = {"resourceType": "Bundle", "type": bundle_type}
    if bundle_type == "searchset":
        out["total"] = len(entries)
    out["entry"] = entries
    return out


def _fhir_id(value: str) -> bool:
    return 0 < len(value) <= 64 and all(c.isascii() and (c.isalnum() or c in "-.") for c in value)
