"""FHIR R4 Consent <-> emrshare policy (pure: no I/O, no clock; docs/fhir.md has the table).

:func:`consent_to_policy` turns a patient-privacy Consent (a dict, the JSON
form) into a :class:`core.policy.Policy`; :func:`policy_to_consent` turns a
policy back into a Consent in canonical form. Whatever one side cannot express
is refused with :class:`~agents.fhir.errors.ConsentMappingError` naming the
element (a FHIRPath) and why; nothing that changes who may read is dropped.
Elements that only describe the consent (``text``, ``category``,
``dateTime``, ``performer``, ``organization``, ``source[x]``,
``verification``, other identifiers) are accepted and not kept: the ledger's
``set_policy`` event records who set the policy and when.

The mapping, briefly (R4 semantics; see docs/fhir.md for the whole table):

* ``policyRule`` v3-ActCode ``OPTIN`` (or absent) -> ``default deny``;
  ``OPTOUT`` -> ``default allow approval auto``.
* The root ``provision`` has no ``type`` (R4). With nested provisions, the
  root may carry only a ``period``, which bounds every rule; each nested
  provision (one level) is a rule: ``type`` permit/deny -> allow/deny, ``id``
  -> the rule id. Without nested provisions the root itself is the one rule
  ``root``, permitting under OPTIN and denying under OPTOUT. No provision at
  all: no rules, the default alone.
* ``actor`` (role PRCP or IRCP, the recipients) -> ``when``: several actors
  are alternatives (``or``); ``Organization/x`` -> ``organization == "x"``,
  ``Practitioner/x`` -> ``id == "x"``, a contained ``Group`` -> the ``and``
  of its characteristics (code in :data:`ATTRIBUTE_SYSTEM` = the attribute,
  ``exclude`` -> ``not``).
* ``action`` consentaction ``access`` -> ``read``; no action -> ``any``.
* ``class`` (resource types through the label table, or emrshare labels),
  ``securityLabel`` (through the label table) -> ``label`` objects;
  ``data`` (meaning ``instance``) -> ``record`` objects; none -> ``all``.
* ``period`` -> ``during`` from .. until (FHIR's end is inclusive: the end
  second, or the end day, is inside).
* ``purpose`` v3-ActReason -> ``purpose in [...]`` (TREAT -> treatment, ...).
* A nested permit provision whose one purpose is v3-ActReason ETREAT
  (emergency treatment) is the policy's emergency clause (break-glass,
  docs/policy.md): its actors are contained Groups whose one characteristic is
  the requester's ``role`` (the clause's roles), and the extension
  :data:`BREAK_GLASS_EXTENSION` gives ``cosign`` (valuePositiveInt) and
  ``window`` (valueDuration); without that extension it is refused (emrshare
  does not choose how many officers co-sign for the patient). Anything that
  would narrow it (labels, records, a period, other purposes, organizations or
  people as actors) is refused: the clause opens every label for its window and
  the policy's rules, deny rules included, do not apply to a break-glass.
* The extension :data:`APPROVAL_EXTENSION` on a permit provision ->
  ``approval auto|patient`` (absent: auto, the patient consented).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from core.errors import PolicyError
from core.policy import And, Compare, Emergency, Not, ObjectSpec, Or, Policy, Rule, TimeWindow

from agents.fhir.errors import ConsentMappingError
from agents.fhir.labels import RESOURCE_TYPES_SYSTEM, LabelMap, record_id_for

__all__ = [
    "consent_to_policy", "policy_to_consent", "PURPOSES", "LABEL_SYSTEM", "RECORD_SYSTEM", "ATTRIBUTE_SYSTEM",
    "PURPOSE_SYSTEM", "POLICY_SYSTEM", "SUBJECT_SYSTEM", "APPROVAL_EXTENSION", "BREAK_GLASS_EXTENSION",
    "fhir_instant", "parse_fhir_time", "FHIR_BASE",
]

FHIR_BASE = "https://emrshare.org/fhir"
"""The namespace of emrshare's own FHIR code systems, naming systems, extensions and operations."""
LABEL_SYSTEM = f"{FHIR_BASE}/CodeSystem/label"
ATTRIBUTE_SYSTEM = f"{FHIR_BASE}/CodeSystem/attribute"
PURPOSE_SYSTEM = f"{FHIR_BASE}/CodeSystem/purpose"
RECORD_SYSTEM = f"{FHIR_BASE}/NamingSystem/record-id"
POLICY_SYSTEM = f"{FHIR_BASE}/NamingSystem/policy-name"
SUBJECT_SYSTEM = f"{FHIR_BASE}/NamingSystem/subject"
APPROVAL_EXTENSION = f"{FHIR_BASE}/StructureDefinition/approval"
#: complex extension on an ETREAT permit provision: ``cosign`` (valuePositiveInt), ``window`` (valueDuration)
BREAK_GLASS_EXTENSION = f"{FHIR_BASE}/StructureDefinition/break-glass"
UCUM_SYSTEM = "http://unitsofmeasure.org"
_DURATION_SECONDS = {"s": 1, "min": 60, "h": 3600, "d": 86400}

SCOPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentscope"
ACTION_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentaction"
ACTCODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ACTREASON_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PARTICIPATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
RECIPIENT_ROLES = ("PRCP", "IRCP")

# v3 ActReason (purpose of use) <-> the policy's purpose strings
PURPOSES: dict[str, str] = {
    "TREAT": "treatment",
    "HPAYMT": "payment",
    "HOPERAT": "operations",
    "HRESCH": "research",
    "PUBHLTH": "public-health",
    "HMARKT": "marketing",
    "PATRQT": "patient-request",
    "CAREMGT": "care-management",
    "HDIRECT": "directory",
    "FAMRQT": "family-request",
}
_PURPOSE_CODES = {v: k for k, v in PURPOSES.items()}
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_CODE = re.compile(r"^[^\s]+( [^\s]+)*$")
_DATETIME = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?"
                       r"(Z|[+-]\d{2}:\d{2}))?)?)?$")
_INFORMATIVE = {"resourceType", "id", "meta", "text", "identifier", "category", "dateTime", "performer",
                "organization", "sourceAttachment", "sourceReference", "verification", "language"}
_RULE_KEYS = {"id", "extension", "type", "period", "actor", "action", "purpose", "class", "data", "securityLabel"}


def _fail(path: str, why: str) -> ConsentMappingError:
    return ConsentMappingError(f"{path}: {why}", expression=path)


# ------------------------------------------------------------------ time


def parse_fhir_time(value: Any, path: str, *, end: bool = False) -> int:
    """Unix seconds of a FHIR date/dateTime: its first instant, or with ``end`` the first instant
    after it (FHIR's period end includes the whole of its last unit)."""
    m = _DATETIME.match(value) if isinstance(value, str) else None
    if m is None:
        raise _fail(path, f"{value!r} is not a FHIR date or dateTime")
    year, month, day, hh, mm, ss, frac, tz = m.groups()
    if hh is not None and tz is None:
        raise _fail(path, "a dateTime with a time needs a time zone")
    try:
        offset = timezone.utc
        if tz and tz != "Z":
            sign = 1 if tz[0] == "+" else -1
            offset = timezone(sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))
        t = datetime(int(year), int(month or 1), int(day or 1), int(hh or 0), int(mm or 0), int(ss or 0),
                     tzinfo=offset)
        if end:
            if day is None and month is None:
                t = t.replace(year=t.year + 1)
            elif day is None:
                t = t.replace(year=t.year + (t.month == 12), month=t.month % 12 + 1)
            elif hh is None:
                t = t + timedelta(days=1)
            elif ss is None:
                t = t + timedelta(minutes=1)
            else:
                t = t + timedelta(seconds=1)
    except (ValueError, OverflowError) as exc:
        raise _fail(path, f"{value!r}: {exc}") from None
    return int(t.timestamp())


def fhir_instant(seconds: int, path: str = "time") -> str:
    """Unix seconds as a FHIR dateTime in UTC (``YYYY-MM-DDThh:mm:ssZ``)."""
    try:
        t = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=seconds)
    except OverflowError:
        raise _fail(path, f"{seconds} is outside the years FHIR can write") from None
    if not 1 <= t.year <= 9999:
        raise _fail(path, f"{seconds} is outside the years FHIR can write")
    return t.strftime("%Y-%m-%dT%H:%M:%SZ").rjust(20, "0")


# ------------------------------------------------------------------ Consent -> policy


def _codings(concept: Any, path: str) -> list[tuple[str | None, str | None]]:
    if not isinstance(concept, Mapping):
        raise _fail(path, "a CodeableConcept is expected")
    return [(c.get("system"), c.get("code")) for c in concept.get("coding") or [] if isinstance(c, Mapping)]


def _has_code(concept: Any, path: str, system: str, codes: tuple[str, ...]) -> str | None:
    for s, c in _codings(concept, path):
        if s == system and c in codes:
            return c
    return None


def _walk_modifiers(value: Any, path: str) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key in ("modifierExtension", "implicitRules"):
                raise _fail(f"{path}.{key}", "modifiers change the meaning of the consent and are not understood")
            _walk_modifiers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _walk_modifiers(item, f"{path}[{i}]")


def _etreat_index(p: Any) -> int | None:
    """The index of the v3-ActReason ETREAT coding in a provision's purposes, or None."""
    if not isinstance(p, Mapping) or not isinstance(p.get("purpose"), list):
        return None
    for i, coding in enumerate(p["purpose"]):
        if isinstance(coding, Mapping) and coding.get("system") == ACTREASON_SYSTEM and coding.get("code") == "ETREAT":
            return i
    return None


_EMERGENCY_FORM = ("the emergency clause is a nested permit provision of its own: purpose ETREAT alone, actors "
                   "naming requester roles, and the break-glass extension (cosign, window)")


def _emergency(p: Mapping[str, Any], path: str, contained: Mapping[str, Mapping[str, Any]],
               used: set[str]) -> Emergency:
    """The emergency clause an ETREAT provision says (see the module docstring)."""
    if p.get("provision"):
        raise _fail(f"{path}.provision", "provisions nest one level only")
    extra = sorted(set(p) - {"id", "type", "purpose", "actor", "action", "extension"})
    if extra:
        raise _fail(f"{path}.{extra[0]}", "the emergency clause opens every label for its window and nothing "
                                          "narrows it (the policy's rules do not apply to a break-glass); "
                                          f"{_EMERGENCY_FORM}")
    if p.get("type") != "permit":
        raise _fail(f"{path}.type", "an ETREAT provision is the emergency clause, which permits; to allow no "
                                    "break-glass, leave ETREAT out")
    if len(p.get("purpose") or []) != 1:
        raise _fail(f"{path}.purpose", f"ETREAT stands alone: {_EMERGENCY_FORM}; write other purposes in a "
                                       "provision of their own")
    _operations(p.get("action"), f"{path}.action")  # access or none: a break-glass reads
    actors = p.get("actor") or []
    if not actors:
        raise _fail(f"{path}.actor", f"an emergency provision names the roles that may invoke it; {_EMERGENCY_FORM}")
    roles: list[str] = []
    for i, actor in enumerate(actors):
        apath = f"{path}.actor[{i}]"
        if not isinstance(actor, Mapping):
            raise _fail(apath, "an actor is expected")
        if _has_code(actor.get("role"), f"{apath}.role", PARTICIPATION_SYSTEM, RECIPIENT_ROLES) is None:
            raise _fail(f"{apath}.role", "the emergency actors are the recipients (PRCP, IRCP) who may invoke it")
        target = (actor.get("reference") or {}).get("reference")
        cond = (_actor_condition(actor.get("reference") or {}, f"{apath}.reference", contained, used)
                if isinstance(target, str) and target.startswith("#") else None)
        if not (isinstance(cond, Compare) and cond.attribute == "role" and isinstance(cond.value, str)):
            raise _fail(f"{apath}.reference", "the emergency clause names requester roles only: a contained Group "
                                              "whose one characteristic is the attribute 'role', not excluded "
                                              "(not organizations, people or other attributes)")
        if cond.value not in roles:
            roles.append(cond.value)
    cosign = window = None
    for j, ext in enumerate(p.get("extension") or []):
        epath = f"{path}.extension[{j}]"
        if not isinstance(ext, Mapping) or ext.get("url") != BREAK_GLASS_EXTENSION:
            raise _fail(epath, "an ETREAT provision carries only the break-glass extension (a break-glass does not "
                               "ask the patient, so it has no approval)")
        if cosign is not None:
            raise _fail(epath, "one break-glass extension per emergency provision")
        cosign, window = _break_glass_extension(ext, epath)
    if cosign is None or window is None:
        raise _fail(f"{path}.extension", f"an ETREAT permit needs the extension {BREAK_GLASS_EXTENSION} with "
                                         "'cosign' (how many officers of the requester's hospital co-sign) and "
                                         "'window' (how long the access lasts); emrshare does not choose them for "
                                         "the patient")
    try:
        return Emergency(tuple(roles), cosign, window)
    except PolicyError as exc:
        raise _fail(path, str(exc)) from None


def _break_glass_extension(ext: Mapping[str, Any], path: str) -> tuple[int, int]:
    if set(ext) - {"url", "extension"}:
        raise _fail(path, "the break-glass extension is complex: its values are the sub-extensions cosign, window")
    cosign = window = None
    for k, sub in enumerate(ext.get("extension") or []):
        spath = f"{path}.extension[{k}]"
        url = sub.get("url") if isinstance(sub, Mapping) else None
        if url == "cosign" and cosign is None and set(sub) == {"url", "valuePositiveInt"}:
            value = sub["valuePositiveInt"]
            if type(value) is not int or value < 1:
                raise _fail(f"{spath}.valuePositiveInt", "a positive integer is expected")
            cosign = value
        elif url == "window" and window is None and set(sub) <= {"url", "valueDuration"}:
            d = sub.get("valueDuration")
            if not isinstance(d, Mapping) or set(d) - {"value", "unit", "system", "code"} \
                    or d.get("system") != UCUM_SYSTEM or d.get("code") not in _DURATION_SECONDS \
                    or type(d.get("value")) is not int or d["value"] < 1:
                raise _fail(f"{spath}.valueDuration", "a Duration of a positive whole number of UCUM s, min, h or d "
                                                      "is expected")
            window = d["value"] * _DURATION_SECONDS[d["code"]]
        else:
            raise _fail(spath, "the break-glass extension has one 'cosign' (valuePositiveInt) and one 'window' "
                               "(valueDuration)")
    if cosign is None or window is None:
        raise _fail(path, "the break-glass extension needs both 'cosign' and 'window'")
    return cosign, window


def consent_to_policy(consent: Mapping[str, Any], *, labels: LabelMap, patient: str | None = None,
                      version: int | None = None) -> Policy:
    """The policy a FHIR R4 Consent (JSON form) says; ConsentMappingError naming what cannot be expressed.

    ``patient``: when given, ``Consent.patient`` must name this patient
    (``Patient/<patient>`` or the subject identifier). ``version``: the policy
    version when ``meta.versionId`` is not an integer (default 1).
    """
    if not isinstance(consent, Mapping) or consent.get("resourceType") != "Consent":
        raise _fail("Consent", "a Consent resource is expected")
    _walk_modifiers(consent, "Consent")
    etreat = _etreat_index(consent.get("provision"))
    if etreat is not None:  # checked first: the reason a reader of an emergency Consent wants
        raise _fail(f"Consent.provision.purpose[{etreat}]", f"ETREAT on the root provision would bound every "
                                                            f"rule; {_EMERGENCY_FORM}")
    unknown = sorted(set(consent) - _INFORMATIVE - {"status", "scope", "patient", "policyRule", "policy",
                                                     "provision", "contained"})
    if unknown:
        raise _fail(f"Consent.{unknown[0]}", "not understood by the policy mapping")
    if consent.get("status") != "active":
        raise _fail("Consent.status", f"only an active Consent is a policy in force, not {consent.get('status')!r}")
    if _has_code(consent.get("scope"), "Consent.scope", SCOPE_SYSTEM, ("patient-privacy",)) is None:
        raise _fail("Consent.scope", "only a patient-privacy Consent maps to an access policy")
    if patient is not None:
        ref = consent.get("patient")
        ident = (ref or {}).get("identifier") or {}
        if not isinstance(ref, Mapping) or not (
                ref.get("reference") == f"Patient/{patient}"
                or (ident.get("system") == SUBJECT_SYSTEM and ident.get("value") == patient)):
            raise _fail("Consent.patient", f"the Consent is not about patient {patient!r}")
    if consent.get("policy"):
        raise _fail("Consent.policy", "external policy documents cannot be evaluated by the peers")
    base = "OPTIN"
    if consent.get("policyRule") is not None:
        code = _has_code(consent["policyRule"], "Consent.policyRule", ACTCODE_SYSTEM, ("OPTIN", "OPTOUT"))
        if code is None:
            raise _fail("Consent.policyRule", "only v3-ActCode OPTIN and OPTOUT map to a policy's default")
        base = code
    contained = _contained(consent.get("contained"))
    used: set[str] = set()
    root = consent.get("provision")
    if root is None:  # no provision: the base alone (the form of a policy without rules)
        root = {"provision": []}
    if not isinstance(root, Mapping):
        raise _fail("Consent.provision", "a provision is expected")
    if "type" in root:
        raise _fail("Consent.provision.type", "R4 allows no type on the root provision; use policyRule")
    nested = root.get("provision") or []
    rules: list[Rule] = []
    emergency: Emergency | None = None
    if "provision" not in root:
        effect = "allow" if base == "OPTIN" else "deny"
        rules.append(_rule(root, "Consent.provision", effect, "root", labels, contained, used, None))
    else:
        extra = sorted(set(root) - {"id", "period", "provision"})
        if extra:
            raise _fail(f"Consent.provision.{extra[0]}",
                        "with nested provisions the root may carry only a period (it bounds every rule)")
        scope = _period(root.get("period"), "Consent.provision.period")
        for i, p in enumerate(nested):
            path = f"Consent.provision.provision[{i}]"
            if not isinstance(p, Mapping):
                raise _fail(path, "a provision is expected")
            if _etreat_index(p) is not None:
                if emergency is not None:
                    raise _fail(f"{path}.purpose", "a policy has one emergency clause: one ETREAT provision")
                if scope != (None, None):
                    raise _fail("Consent.provision.period", "the emergency clause has no period, so a root period "
                                                            "cannot bound it; give the rules their own periods")
                emergency = _emergency(p, path, contained, used)
                continue
            if p.get("type") not in ("permit", "deny"):
                raise _fail(f"{path}.type", "a nested provision must say permit or deny")
            effect = "allow" if p["type"] == "permit" else "deny"
            rules.append(_rule(p, path, effect, f"provision-{i + 1}", labels, contained, used, scope))
    unused = sorted(set(contained) - used)
    if unused:
        raise _fail("Consent.contained", f"contained resource #{unused[0]} is not an actor of any provision")
    name = _policy_name(consent)
    if version is None:
        vid = (consent.get("meta") or {}).get("versionId")
        version = int(vid) if isinstance(vid, str) and vid.isascii() and vid.isdigit() and len(vid) < 19 else 1
    try:
        if base == "OPTIN":
            return Policy(name, version, tuple(rules), emergency=emergency)
        return Policy(name, version, tuple(rules), default_effect="allow", default_approval="auto",
                      emergency=emergency)
    except PolicyError as exc:
        raise _fail("Consent", f"the policy it makes is not valid: {exc}") from None


def _policy_name(consent: Mapping[str, Any]) -> str:
    for ident in consent.get("identifier") or []:
        if isinstance(ident, Mapping) and ident.get("system") == POLICY_SYSTEM and isinstance(ident.get("value"), str):
            return ident["value"]
    cid = consent.get("id")
    return cid if isinstance(cid, str) and cid else "consent"


def _contained(items: Any) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for i, res in enumerate(items or []):
        path = f"Consent.contained[{i}]"
        if not isinstance(res, Mapping) or res.get("resourceType") != "Group" or not isinstance(res.get("id"), str):
            raise _fail(path, "only contained Groups (the actors' attributes) are understood")
        out[res["id"]] = res
    return out


def _period(period: Any, path: str) -> tuple[int | None, int | None]:
    if period is None:
        return None, None
    if not isinstance(period, Mapping) or set(period) - {"start", "end"}:
        raise _fail(path, "a Period with start and/or end is expected")
    start = parse_fhir_time(period["start"], f"{path}.start") if "start" in period else None
    end = parse_fhir_time(period["end"], f"{path}.end", end=True) if "end" in period else None
    if start is not None and start <= 0:
        start = None  # every request is after 1970: a start before it bounds nothing
    return start, end


def _rule(p: Mapping[str, Any], path: str, effect: str, default_id: str, labels: LabelMap,
          contained: Mapping[str, Mapping[str, Any]], used: set[str],
          scope: tuple[int | None, int | None] | None) -> Rule:
    if p.get("provision"):
        raise _fail(f"{path}.provision", "provisions nest one level only")
    extra = sorted(set(p) - _RULE_KEYS - {"provision"})
    if extra:
        raise _fail(f"{path}.{extra[0]}", "not expressible in the policy language")
    rule_id = p.get("id") or default_id
    approval = "auto" if effect == "allow" else None
    for j, ext in enumerate(p.get("extension") or []):
        epath = f"{path}.extension[{j}]"
        if not isinstance(ext, Mapping) or ext.get("url") != APPROVAL_EXTENSION:
            raise _fail(epath, "an extension the policy mapping does not know")
        if effect != "allow":
            raise _fail(epath, "only a permit asks for an approval")
        if ext.get("valueCode") not in ("auto", "patient"):
            raise _fail(epath, "the approval is 'auto' or 'patient'")
        approval = ext["valueCode"]
    operations = _operations(p.get("action"), f"{path}.action")
    objects = _objects(p, path, labels)
    condition = _actors(p.get("actor"), f"{path}.actor", contained, used)
    start, end = _period(p.get("period"), f"{path}.period")
    if scope is not None:
        if scope[0] is not None:
            start = scope[0] if start is None else max(start, scope[0])
        if scope[1] is not None:
            end = scope[1] if end is None else min(end, scope[1])
    purposes = _purposes(p.get("purpose"), f"{path}.purpose")
    try:
        window = None if start is None and end is None else TimeWindow(valid_from=start, valid_until=end)
        return Rule(rule_id, effect, operations, objects, condition, window, purposes, approval)
    except PolicyError as exc:
        raise _fail(path, str(exc)) from None


def _operations(actions: Any, path: str) -> tuple[str, ...]:
    if not actions:
        return ("any",)
    for i, action in enumerate(actions):
        codes = [c for s, c in _codings(action, f"{path}[{i}]") if s == ACTION_SYSTEM]
        if codes != ["access"]:
            raise _fail(f"{path}[{i}]", f"only consentaction 'access' (read) is an operation of emrshare, not {codes}")
    return ("read",)


def _objects(p: Mapping[str, Any], path: str, labels: LabelMap) -> tuple[ObjectSpec, ...]:
    given = [k for k in ("class", "data", "securityLabel") if p.get(k)]
    if len(given) > 1:
        raise _fail(f"{path}.{given[1]}", f"FHIR requires both {given[0]} and {given[1]} to match; a policy rule "
                                          "names labels or records, either of which matches")
    out: list[ObjectSpec] = []

    def add(spec: ObjectSpec) -> None:
        if spec not in out:
            out.append(spec)

    for i, coding in enumerate(p.get("class") or []):
        cpath = f"{path}.class[{i}]"
        system, code = coding.get("system"), coding.get("code")
        if system == LABEL_SYSTEM and isinstance(code, str):
            add(ObjectSpec("label", code))
        elif system == RESOURCE_TYPES_SYSTEM and isinstance(code, str):
            found = labels.labels_for_type(code)
            if not found:
                raise _fail(cpath, f"the label table labels no {code} resources")
            for label in found:
                add(ObjectSpec("label", label))
        else:
            raise _fail(cpath, f"class {system}|{code} is neither a resource type nor an emrshare label")
    for i, coding in enumerate(p.get("securityLabel") or []):
        label = labels.label_for_security(coding.get("system"), coding.get("code"))
        if label is None:
            raise _fail(f"{path}.securityLabel[{i}]", f"security label {coding.get('system')}|{coding.get('code')} "
                                                      "has no label in the label table")
        add(ObjectSpec("label", label))
    for i, data in enumerate(p.get("data") or []):
        dpath = f"{path}.data[{i}]"
        if data.get("meaning") != "instance":
            raise _fail(f"{dpath}.meaning", f"only 'instance' maps to a record, not {data.get('meaning')!r}")
        ref = data.get("reference") or {}
        ident = ref.get("identifier") or {}
        target = ref.get("reference")
        if ident.get("system") == RECORD_SYSTEM and isinstance(ident.get("value"), str):
            add(ObjectSpec("record", ident["value"]))
        elif isinstance(target, str) and re.match(r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}$", target):
            add(ObjectSpec("record", record_id_for(*target.split("/"))))
        else:
            raise _fail(f"{dpath}.reference", "a relative Type/id reference or an emrshare record identifier")
    try:
        return tuple(out) or (ObjectSpec("all"),)
    except PolicyError as exc:  # pragma: no cover - ObjectSpec checks above
        raise _fail(path, str(exc)) from None


def _purposes(codings: Any, path: str) -> tuple[str, ...] | None:
    if not codings:
        return None
    out: list[str] = []
    for i, coding in enumerate(codings):
        system, code = coding.get("system"), coding.get("code")
        if system == ACTREASON_SYSTEM and code in PURPOSES:
            purpose = PURPOSES[code]
        elif system == PURPOSE_SYSTEM and isinstance(code, str):
            purpose = code
        else:
            raise _fail(f"{path}[{i}]", f"purpose {system}|{code} has no policy purpose")
        if purpose not in out:
            out.append(purpose)
    return tuple(out)


def _actors(actors: Any, path: str, contained: Mapping[str, Mapping[str, Any]], used: set[str]):
    if not actors:
        return None
    conditions = []
    for i, actor in enumerate(actors):
        apath = f"{path}[{i}]"
        if _has_code(actor.get("role"), f"{apath}.role", PARTICIPATION_SYSTEM, RECIPIENT_ROLES) is None:
            roles = [c for _, c in _codings(actor.get("role"), f"{apath}.role")]
            raise _fail(f"{apath}.role", f"role {roles} is not a recipient (PRCP, IRCP); a policy says only "
                                         "who may receive records")
        conditions.append(_actor_condition(actor.get("reference") or {}, f"{apath}.reference", contained, used))
    try:
        return conditions[0] if len(conditions) == 1 else Or(tuple(conditions))
    except PolicyError as exc:
        raise _fail(path, str(exc)) from None


def _actor_condition(ref: Mapping[str, Any], path: str, contained: Mapping[str, Mapping[str, Any]], used: set[str]):
    target = ref.get("reference")
    if not isinstance(target, str):
        raise _fail(path, "an actor is an Organization/x, Practitioner/x or contained Group reference")
    if target.startswith("Organization/"):
        return Compare("organization", "==", target.split("/", 1)[1])
    if target.startswith("Practitioner/"):
        return Compare("id", "==", target.split("/", 1)[1])
    if target.startswith("#") and target[1:] in contained:
        used.add(target[1:])
        return _group_condition(contained[target[1:]], f"Consent.contained.where(id='{target[1:]}')")
    raise _fail(path, f"{target!r}: an actor is an Organization/x, Practitioner/x or contained Group reference")


def _group_condition(group: Mapping[str, Any], path: str):
    extra = sorted(set(group) - {"resourceType", "id", "type", "actual", "characteristic"})
    if extra:
        raise _fail(f"{path}.{extra[0]}", "a Group actor is described by its characteristics only")
    if group.get("actual") is not False:
        raise _fail(f"{path}.actual", "a Group actor describes a class of people (actual = false)")
    atoms = []
    for i, ch in enumerate(group.get("characteristic") or []):
        cpath = f"{path}.characteristic[{i}]"
        extra = sorted(set(ch) - {"code", "valueCodeableConcept", "valueBoolean", "valueQuantity", "exclude"})
        if extra:
            raise _fail(f"{cpath}.{extra[0]}", "not expressible as an attribute condition")
        names = [c for s, c in _codings(ch.get("code"), f"{cpath}.code") if s == ATTRIBUTE_SYSTEM]
        if len(names) != 1:
            raise _fail(f"{cpath}.code", f"one code of {ATTRIBUTE_SYSTEM} names the attribute")
        if "valueBoolean" in ch and isinstance(ch["valueBoolean"], bool):
            value: Any = ch["valueBoolean"]
        elif isinstance((ch.get("valueCodeableConcept") or {}).get("text"), str) \
                and set(ch["valueCodeableConcept"]) == {"text"}:
            value = ch["valueCodeableConcept"]["text"]
        elif isinstance(ch.get("valueQuantity"), Mapping) and set(ch["valueQuantity"]) == {"value"} \
                and isinstance(ch["valueQuantity"]["value"], int) and not isinstance(ch["valueQuantity"]["value"], bool):
            value = ch["valueQuantity"]["value"]
        else:
            raise _fail(cpath, "the value is a valueCodeableConcept with text only, a valueBoolean or an "
                               "integer valueQuantity without unit")
        try:
            atom = Compare(names[0], "==", value)
            atoms.append(Not(atom) if ch.get("exclude") else atom)
        except PolicyError as exc:
            raise _fail(cpath, str(exc)) from None
    if not atoms:
        raise _fail(f"{path}.characteristic", "a Group actor needs at least one characteristic")
    try:
        return atoms[0] if len(atoms) == 1 else And(tuple(atoms))
    except PolicyError as exc:
        raise _fail(path, str(exc)) from None


# ------------------------------------------------------------------ policy -> Consent


def policy_to_consent(policy: Policy, *, patient: str) -> dict[str, Any]:
    """The canonical FHIR R4 Consent of ``policy`` for ``patient``; ConsentMappingError naming the rule
    (``Policy.rules[i]...``) that Consent cannot express."""
    if policy.default_effect == "deny":
        base = "OPTIN"
    elif policy.default_approval == "auto":
        base = "OPTOUT"
    else:
        raise _fail("Policy.default", "'default allow approval patient' has no Consent form (OPTOUT pre-approves)")
    groups: list[dict[str, Any]] = []
    root_effect = "allow" if base == "OPTIN" else "deny"
    if (policy.emergency is None and len(policy.rules) == 1 and policy.rules[0].id == "root"
            and policy.rules[0].effect == root_effect):
        root = _provision(policy.rules[0], "Policy.rules[0]", groups, nested=False)
    else:
        nested = [] if policy.emergency is None else [_emergency_provision(policy, groups)]
        root = {"provision": nested + [_provision(r, f"Policy.rules[{i}]", groups, nested=True)
                                       for i, r in enumerate(policy.rules)]}
    consent: dict[str, Any] = {
        "resourceType": "Consent",
        "id": policy.name if _FHIR_ID.match(policy.name) else "policy",
        "meta": {"versionId": str(policy.version)},
        "identifier": [{"system": POLICY_SYSTEM, "value": policy.name}],
        "status": "active",
        "scope": {"coding": [{"system": SCOPE_SYSTEM, "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": ({"reference": f"Patient/{patient}"} if _FHIR_ID.match(patient)
                    else {"identifier": {"system": SUBJECT_SYSTEM, "value": patient}}),
        "policyRule": {"coding": [{"system": ACTCODE_SYSTEM, "code": base}]},
    }
    if groups:
        consent["contained"] = groups
    if root:
        consent["provision"] = root
    return consent


def _emergency_provision(policy: Policy, groups: list[dict[str, Any]]) -> dict[str, Any]:
    e = policy.emergency
    assert e is not None
    out: dict[str, Any] = {}
    if all(r.id != "emergency" for r in policy.rules):
        out["id"] = "emergency"
    out.update({
        "type": "permit",
        "actor": [_actor(Compare("role", "==", role), "Policy.emergency.roles", groups)
                  for role in e.roles],
        "action": [{"coding": [{"system": ACTION_SYSTEM, "code": "access"}]}],
        "purpose": [{"system": ACTREASON_SYSTEM, "code": "ETREAT"}],
        "extension": [{"url": BREAK_GLASS_EXTENSION, "extension": [
            {"url": "cosign", "valuePositiveInt": e.cosign},
            {"url": "window", "valueDuration": {"value": e.window, "unit": "s", "system": UCUM_SYSTEM,
                                                "code": "s"}}]}],
    })
    return out


def _code(value: str, path: str) -> str:
    if not _CODE.match(value) or len(value) > 256:
        raise _fail(path, f"{value!r} is not a FHIR code (no leading, trailing or double spaces)")
    return value


def _provision(rule: Rule, path: str, groups: list[dict[str, Any]], *, nested: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"id": rule.id}
    if nested:
        out["type"] = "permit" if rule.effect == "allow" else "deny"
    if rule.window is not None:
        w = rule.window
        if w.hours is not None or w.days is not None:
            raise _fail(f"{path}.during", "hours of the day and days of the week have no Consent form")
        period = {}
        if w.valid_from is not None:
            period["start"] = fhir_instant(w.valid_from, f"{path}.during")
        if w.valid_until is not None:
            period["end"] = fhir_instant(w.valid_until - 1, f"{path}.during")
        out["period"] = period
    if rule.condition is not None:
        alternatives = rule.condition.operands if isinstance(rule.condition, Or) else (rule.condition,)
        out["actor"] = [_actor(c, f"{path}.when", groups) for c in alternatives]
    if rule.operations == ("read",):
        out["action"] = [{"coding": [{"system": ACTION_SYSTEM, "code": "access"}]}]
    elif rule.operations != ("any",):
        raise _fail(f"{path}.operations", f"only read (consentaction access) and any map to Consent, "
                                          f"not {list(rule.operations)}")
    if rule.purposes is not None:
        out["purpose"] = [{"system": ACTREASON_SYSTEM, "code": _PURPOSE_CODES[p]} if p in _PURPOSE_CODES
                          else {"system": PURPOSE_SYSTEM, "code": _code(p, f"{path}.purpose")}
                          for p in rule.purposes]
    kinds = {o.kind for o in rule.objects}
    if kinds == {"label"}:
        out["class"] = [{"system": LABEL_SYSTEM, "code": _code(o.value, f"{path}.on")} for o in rule.objects]
    elif kinds == {"record"}:
        out["data"] = [{"meaning": "instance", "reference": {"identifier": {"system": RECORD_SYSTEM,
                                                                            "value": o.value}}}
                       for o in rule.objects]
    elif kinds != {"all"}:
        raise _fail(f"{path}.on", "a Consent provision names data classes or instances, not both")
    if rule.effect == "allow":
        out["extension"] = [{"url": APPROVAL_EXTENSION, "valueCode": rule.approval}]
    return out


def _actor(cond: Any, path: str, groups: list[dict[str, Any]]) -> dict[str, Any]:
    atoms = cond.operands if isinstance(cond, And) else (cond,)
    role = {"coding": [{"system": PARTICIPATION_SYSTEM, "code": "PRCP"}]}
    chars = []
    for atom in atoms:
        negated = isinstance(atom, Not)
        inner = atom.operand if negated else atom
        if not isinstance(inner, Compare) or inner.op != "==":
            raise _fail(path, "a Consent actor is an 'and' of 'attr == value' and 'not attr == value'; "
                              "alternatives are 'or' at the top of the condition")
        if len(atoms) == 1 and not negated and isinstance(inner.value, str) and _FHIR_ID.match(inner.value):
            if inner.attribute == "organization":
                return {"role": role, "reference": {"reference": f"Organization/{inner.value}"}}
            if inner.attribute == "id":
                return {"role": role, "reference": {"reference": f"Practitioner/{inner.value}"}}
        value = inner.value
        ch: dict[str, Any] = {"code": {"coding": [{"system": ATTRIBUTE_SYSTEM, "code": inner.attribute}]}}
        if isinstance(value, bool):
            ch["valueBoolean"] = value
        elif isinstance(value, int):
            ch["valueQuantity"] = {"value": value}
        elif value and value.strip() == value:
            ch["valueCodeableConcept"] = {"text": value}
        else:
            raise _fail(path, f"{value!r}: FHIR strings are not empty and not padded with spaces")
        ch["exclude"] = negated
        chars.append(ch)
    gid = f"actor-{len(groups) + 1}"
    groups.append({"resourceType": "Group", "id": gid, "type": "practitioner", "actual": False,
                   "characteristic": chars})
    return {"role": role, "reference": {"reference": f"#{gid}"}}
