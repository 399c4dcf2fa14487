"""Synthetic FHIR R4 patient bundles for tests, demos and benchmarks, and a structural checker.

:func:`generate_bundle` builds a realistic ``transaction`` Bundle (as Synthea
writes them): a Patient with an MRN, name, address and birth date; the
managing Organization and a Practitioner; Encounters, each with vital signs
(LOINC, UCUM units; blood pressure as a panel with components) and lab
results; Conditions (SNOMED CT) and MedicationRequests (RxNorm). Every
cross-reference is a ``urn:uuid:`` full URL inside the bundle. The output is a
pure function of ``seed`` and ``size_kib`` (``random.Random(seed)``: this is
test data, not cryptography) — entries are added until the compact JSON
encoding (:func:`encode_bundle`) reaches ``size_kib`` KiB (2..200).

:func:`check_bundle` is a structural validator grounded in the HL7 examples
and Synthea bundles under ``shared/data/fhir-r4``: Bundle.type from the R4
value set, entry shape (request/response by bundle type), resource types and
ids, R4's mandatory elements of the common clinical resources, codings, and
references (``urn:uuid:``/``urn:oid:`` and ``#contained`` references must
resolve; with ``require_resolved`` relative ``Type/id`` references must too).
It raises :class:`BundleError` naming the path of the first problems found.

Command line: ``python -m agents.testing.fhir SEED SIZE_KIB > bundle.json``.
"""

from __future__ import annotations

import json
import random
import re
import sys
import uuid
from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterator

__all__ = ["generate_bundle", "encode_bundle", "check_bundle", "BundleError", "BUNDLE_TYPES",
           "MIN_SIZE_KIB", "MAX_SIZE_KIB"]

MIN_SIZE_KIB = 2
MAX_SIZE_KIB = 200

BUNDLE_TYPES = frozenset({"document", "message", "transaction", "transaction-response", "batch",
                          "batch-response", "history", "searchset", "collection"})
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"})
_RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_RELATIVE_REF = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/[A-Za-z0-9\-.]{1,64})?$")

# R4 elements with minimum cardinality 1 ("x" suffix: a choice type, any variant)
REQUIRED: dict[str, tuple[str, ...]] = {
    "Encounter": ("status", "class"),
    "Observation": ("status", "code"),
    "Condition": ("subject",),
    "MedicationRequest": ("status", "intent", "subject", "medication[x]"),
    "DiagnosticReport": ("status", "code"),
    "Immunization": ("status", "vaccineCode", "patient", "occurrence[x]"),
    "Procedure": ("status", "subject"),
    "AllergyIntolerance": ("patient",),
    "Claim": ("status", "type", "use", "patient", "created", "provider", "priority", "insurance"),
    "ExplanationOfBenefit": ("status", "type", "use", "patient", "created", "insurer", "provider",
                             "outcome", "insurance"),
    "Consent": ("status", "scope", "category"),
    "AuditEvent": ("type", "recorded", "agent", "source"),
    "Provenance": ("target", "recorded", "agent"),
    "Medication": (),
}
STATUS_VALUES: dict[str, frozenset[str]] = {
    "Observation": frozenset({"registered", "preliminary", "final", "amended", "corrected", "cancelled",
                              "entered-in-error", "unknown"}),
    "Encounter": frozenset({"planned", "arrived", "triaged", "in-progress", "onleave", "finished",
                            "cancelled", "entered-in-error", "unknown"}),
    "MedicationRequest": frozenset({"active", "on-hold", "cancelled", "completed", "entered-in-error",
                                    "stopped", "draft", "unknown"}),
}

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

# (LOINC, display, UCUM unit, mean, sd, decimals)
VITALS = [
    ("8867-4", "Heart rate", "/min", 74, 10, 0),
    ("9279-1", "Respiratory rate", "/min", 15, 2, 0),
    ("8310-5", "Body temperature", "Cel", 36.8, 0.3, 1),
    ("29463-7", "Body weight", "kg", 78, 14, 1),
    ("8302-2", "Body height", "cm", 171, 9, 1),
    ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", 97, 1.2, 0),
]
BP_PANEL = ("85354-9", "Blood pressure panel with all children optional")
BP_PARTS = [("8480-6", "Systolic blood pressure", 124, 14), ("8462-4", "Diastolic blood pressure", 79, 9)]
LABS = [
    ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 98, 18, 0),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 5.8, 0.7, 1),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 190, 32, 0),
    ("2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "mg/dL", 52, 12, 0),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.95, 0.2, 2),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 14.1, 1.3, 1),
    ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 7.1, 1.8, 1),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 4.2, 0.35, 1),
]
CONDITIONS = [
    ("38341003", "Hypertension", [("314076", "lisinopril 10 MG Oral Tablet"),
                                   ("197361", "amlodipine 5 MG Oral Tablet")]),
    ("44054006", "Diabetes mellitus type 2 (disorder)",
     [("860975", "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet")]),
    ("55822004", "Hyperlipidemia", [("259255", "atorvastatin 80 MG Oral Tablet")]),
    ("195967001", "Asthma", [("895994", "120 ACTUAT Fluticasone propionate 0.044 MG/ACTUAT Metered Dose Inhaler")]),
    ("49436004", "Atrial fibrillation (disorder)", [("855332", "Warfarin Sodium 5 MG Oral Tablet")]),
    ("53741008", "Coronary Heart Disease", [("308136", "amlodipine 2.5 MG Oral Tablet")]),
    ("162864005", "Body mass index 30+ - obesity (finding)", []),
    ("40055000", "Chronic sinusitis (disorder)", []),
]
ENCOUNTER_TYPES = [("185349003", "Encounter for check up (procedure)", "AMB"),
                   ("185345009", "Encounter for symptom", "AMB"),
                   ("50849002", "Emergency room admission (procedure)", "EMER"),
                   ("32485007", "Hospital admission (procedure)", "IMP")]
GIVEN = ["Ana", "Luis", "Mei", "Omar", "Grace", "Ivan", "Sara", "Tomas", "Lena", "Kofi", "Noor", "Eli"]
FAMILY = ["Hoeger", "Okafor", "Lindqvist", "Moreau", "Tanaka", "Rossi", "Kowalski", "Haddad", "Silva"]
CITIES = [("Boston", "MA", "02118"), ("Worcester", "MA", "01608"), ("Springfield", "MA", "01103"),
          ("Lowell", "MA", "01852")]


class BundleError(ValueError):
    """A bundle failed :func:`check_bundle`; ``problems`` lists every finding (path: message)."""

    def __init__(self, problems: list[str]):
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} problems)" if len(problems) > 5 else "")
        super().__init__(shown)
        self.problems = problems


# ------------------------------------------------------------------ generator


class _Gen:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def value(self, mean: float, sd: float, decimals: int) -> float | int:
        v = self.rng.gauss(mean, sd)
        return round(v) if decimals == 0 else round(v, decimals)

    def coding(self, system: str, code: str, display: str) -> dict:
        return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S+00:00")


def encode_bundle(bundle: dict) -> bytes:
    """The compact UTF-8 JSON encoding (what ``size_kib`` measures)."""
    return json.dumps(bundle, separators=(",", ":"), ensure_ascii=False).encode()


def generate_bundle(seed: int, size_kib: int = 16) -> dict:
    """A deterministic FHIR R4 transaction Bundle of about ``size_kib`` KiB (see the module docstring)."""
    if type(size_kib) is not int or not MIN_SIZE_KIB <= size_kib <= MAX_SIZE_KIB:
        raise ValueError(f"size_kib must be an integer in [{MIN_SIZE_KIB}, {MAX_SIZE_KIB}]")
    g = _Gen(seed)
    target = size_kib * 1024
    entries: list[dict] = []
    size = [len(encode_bundle({"resourceType": "Bundle", "type": "transaction", "entry": []}))]

    def add(resource: dict) -> str:
        full = f"urn:uuid:{resource['id']}"
        entry = {"fullUrl": full, "resource": resource,
                 "request": {"method": "POST", "url": resource["resourceType"]}}
        entries.append(entry)
        size[0] += len(encode_bundle(entry)) + 1
        return full

    rng = g.rng
    birth = date(1940, 1, 1) + timedelta(days=rng.randrange(0, 365 * 60))
    city, state, postal = rng.choice(CITIES)
    given, family = rng.choice(GIVEN), rng.choice(FAMILY)
    gender = rng.choice(["female", "male"])
    patient_id = g.uuid()
    patient = add({
        "resourceType": "Patient", "id": patient_id,
        "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                             "code": "MR", "display": "Medical Record Number"}]},
                        "system": "http://hospital.example.org/mrn", "value": f"MRN{rng.randrange(10**7, 10**8)}"}],
        "name": [{"use": "official", "family": family, "given": [given]}],
        "telecom": [{"system": "phone", "value": f"555-{rng.randrange(100, 999)}-{rng.randrange(1000, 9999)}",
                     "use": "home"}],
        "gender": gender, "birthDate": birth.isoformat(),
        "address": [{"line": [f"{rng.randrange(1, 999)} {rng.choice(['Main', 'Elm', 'Oak', 'Harbor'])} St"],
                     "city": city, "state": state, "postalCode": postal, "country": "US"}],
    })
    org = add({"resourceType": "Organization", "id": g.uuid(), "active": True,
               "name": f"{city} General Hospital",
               "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type",
                                     "code": "prov", "display": "Healthcare Provider"}]}]})
    doc = add({"resourceType": "Practitioner", "id": g.uuid(), "active": True,
               "name": [{"family": rng.choice(FAMILY), "given": [rng.choice(GIVEN)], "prefix": ["Dr."]}],
               "gender": rng.choice(["female", "male"])})
    conditions = rng.sample(CONDITIONS, k=rng.randrange(1, 4))
    when = datetime(2018, 1, 1, 8, tzinfo=timezone.utc) + timedelta(days=rng.randrange(0, 365 * 3))
    problems_added = 0
    while size[0] < target:
        kind = rng.choice(ENCOUNTER_TYPES)
        start = when
        end = start + timedelta(minutes=rng.choice([15, 30, 45, 60, 240]))
        enc = add({
            "resourceType": "Encounter", "id": g.uuid(), "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": kind[2]},
            "type": [g.coding(SNOMED, kind[0], kind[1])],
            "subject": {"reference": patient}, "participant": [{"individual": {"reference": doc}}],
            "period": {"start": _ts(start), "end": _ts(end)}, "serviceProvider": {"reference": org},
        })
        for resource in _encounter_items(g, patient, enc, start, conditions, problems_added):
            if resource["resourceType"] == "Condition":
                problems_added += 1
            add(resource)
            if size[0] >= target:
                break
        when += timedelta(days=rng.randrange(30, 200), hours=rng.randrange(0, 8))
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _encounter_items(g: _Gen, patient: str, enc: str, t: datetime, conditions: list, problems_added: int
                     ) -> Iterator[dict]:
    rng = g.rng
    when = _ts(t)

    def obs(category: str, code: str, display: str, **value: Any) -> dict:
        return {"resourceType": "Observation", "id": g.uuid(), "status": "final",
                "category": [{"coding": [{"system": OBS_CATEGORY, "code": category,
                                          "display": category.replace("-", " ").title()}]}],
                "code": g.coding(LOINC, code, display), "subject": {"reference": patient},
                "encounter": {"reference": enc}, "effectiveDateTime": when, "issued": when, **value}

    def quantity(v: float | int, unit: str) -> dict:
        return {"value": v, "unit": unit, "system": UCUM, "code": unit}

    for code, display, unit, mean, sd, dec in VITALS:
        yield obs("vital-signs", code, display, valueQuantity=quantity(g.value(mean, sd, dec), unit))
    yield obs("vital-signs", BP_PANEL[0], BP_PANEL[1], component=[
        {"code": g.coding(LOINC, c, d), "valueQuantity": quantity(g.value(m, s, 0), "mm[Hg]")}
        for c, d, m, s in BP_PARTS])
    for code, display, unit, mean, sd, dec in rng.sample(LABS, k=rng.randrange(2, len(LABS) + 1)):
        yield obs("laboratory", code, display, valueQuantity=quantity(g.value(mean, sd, dec), unit))
    if problems_added < len(conditions):
        code, display, meds = conditions[problems_added]
        cond_id = g.uuid()
        yield {"resourceType": "Condition", "id": cond_id,
               "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                              "code": "active"}]},
               "verificationStatus": {"coding": [{
                   "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
               "code": g.coding(SNOMED, code, display), "subject": {"reference": patient},
               "encounter": {"reference": enc}, "onsetDateTime": when, "recordedDate": when}
        for rx, rx_display in meds:
            yield {"resourceType": "MedicationRequest", "id": g.uuid(), "status": "active", "intent": "order",
                   "medicationCodeableConcept": g.coding(RXNORM, rx, rx_display),
                   "subject": {"reference": patient}, "encounter": {"reference": enc}, "authoredOn": when,
                   "reasonReference": [{"reference": f"urn:uuid:{cond_id}"}],
                   "dosageInstruction": [{"sequence": 1, "text": "Take as directed",
                                          "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                                          "asNeededBoolean": False}]}


# ------------------------------------------------------------------ checker


def _has(resource: dict, name: str) -> bool:
    if name.endswith("[x]"):
        stem = name[:-3]
        return any(k.startswith(stem) and k[len(stem):len(stem) + 1].isupper() and resource[k] not in (None, [], {})
                   for k in resource)
    return resource.get(name) not in (None, "", [], {})


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any, str]]:
    """(key, value, path) for every key in nested dicts, not descending into contained resources."""
    if isinstance(value, dict):
        for k, v in value.items():
            p = f"{path}.{k}"
            yield k, v, p
            if k != "contained":
                yield from _walk(v, p)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, f"{path}[{i}]")


def _check_resource(res: Any, path: str, problems: list[str], refs: list[tuple[str, str, set[str]]]) -> None:
    if not isinstance(res, dict):
        problems.append(f"{path}: a resource must be a JSON object")
        return
    rtype = res.get("resourceType")
    if not isinstance(rtype, str) or not _RESOURCE_TYPE.match(rtype):
        problems.append(f"{path}.resourceType: missing or not a resource type name")
        return
    if "id" in res and (not isinstance(res["id"], str) or not _ID.match(res["id"])):
        problems.append(f"{path}.id: {res['id']!r} is not a FHIR id")
    for name in REQUIRED.get(rtype, ()):
        if not _has(res, name):
            problems.append(f"{path} ({rtype}): required element {name} is missing")
    status = res.get("status")
    if rtype in STATUS_VALUES and isinstance(status, str) and status not in STATUS_VALUES[rtype]:
        problems.append(f"{path}.status: {status!r} is not an R4 {rtype} status")
    contained = res.get("contained") or []
    contained_ids = set()
    if not isinstance(contained, list):
        problems.append(f"{path}.contained: must be a list")
        contained = []
    for i, c in enumerate(contained):
        _check_resource(c, f"{path}.contained[{i}]", problems, refs)
        if isinstance(c, dict) and isinstance(c.get("id"), str):
            contained_ids.add(c["id"])
    if rtype == "Bundle":
        _check_bundle_body(res, path, problems, refs)
        return
    for key, value, p in _walk(res, path):
        if key == "coding":
            if not isinstance(value, list):
                problems.append(f"{p}: coding must be a list")
                continue
            for i, c in enumerate(value):
                if not isinstance(c, dict) or not any(k in c for k in ("code", "system", "display")):
                    problems.append(f"{p}[{i}]: a Coding needs a code, system or display")
                elif any(k in c and not isinstance(c[k], str) for k in ("code", "system", "display")):
                    problems.append(f"{p}[{i}]: Coding code/system/display must be strings")
        elif key == "reference" and not isinstance(value, dict):  # a dict: an element named
            if not isinstance(value, str) or not value:                # "reference" (Consent.provision)
                problems.append(f"{p}: a reference must be a non-empty string")
            else:
                refs.append((p, value, contained_ids))


def _check_bundle_body(bundle: dict, path: str, problems: list[str],
                       refs: list[tuple[str, str, set[str]]]) -> None:
    btype = bundle.get("type")
    if btype not in BUNDLE_TYPES:
        problems.append(f"{path}.type: {btype!r} is not an R4 Bundle.type")
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        problems.append(f"{path}.entry: must be a list")
        return
    for i, entry in enumerate(entries):
        p = f"{path}.entry[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{p}: an entry must be a JSON object")
            continue
        req, resp = entry.get("request"), entry.get("response")
        if btype in ("transaction", "batch"):
            if not isinstance(req, dict) or req.get("method") not in HTTP_METHODS or not isinstance(req.get("url"), str):
                problems.append(f"{p}.request: {btype} entries need a request with a method and url")
            elif "resource" not in entry and req["method"] in ("POST", "PUT"):
                problems.append(f"{p}: a {req['method']} entry needs a resource")
        elif req is not None and btype != "history":
            problems.append(f"{p}.request: only transaction, batch and history entries carry a request")
        if btype in ("transaction-response", "batch-response") and (
                not isinstance(resp, dict) or not isinstance(resp.get("status"), str)):
            problems.append(f"{p}.response: {btype} entries need a response with a status")
        if "resource" in entry:
            _check_resource(entry["resource"], f"{p}.resource", problems, refs)
        elif btype not in ("transaction", "batch", "transaction-response", "batch-response", "history"):
            problems.append(f"{p}: a {btype} entry needs a resource")


def check_bundle(obj: Any, *, require_resolved: bool = False) -> None:
    """Raise :class:`BundleError` unless ``obj`` (parsed JSON) is a structurally valid R4 Bundle.

    ``require_resolved``: every relative or absolute reference must point at an
    entry of the bundle (the generator's bundles are self-contained).
    """
    problems: list[str] = []
    if not isinstance(obj, dict) or obj.get("resourceType") != "Bundle":
        raise BundleError(["$: not a Bundle (resourceType must be 'Bundle')"])
    refs: list[tuple[str, str, set[str]]] = []
    _check_resource(obj, "$", problems, refs)
    full_urls: set[str] = set()
    by_type_id: set[str] = set()
    for i, entry in enumerate(obj.get("entry") or []):
        if not isinstance(entry, dict):
            continue
        full = entry.get("fullUrl")
        if full is not None:
            if not isinstance(full, str):
                problems.append(f"$.entry[{i}].fullUrl: must be a string")
            elif full in full_urls:
                problems.append(f"$.entry[{i}].fullUrl: {full} appears twice")
            else:
                full_urls.add(full)
        res = entry.get("resource")
        if isinstance(res, dict) and isinstance(res.get("id"), str):
            rtype = res.get("resourceType")
            by_type_id.add(f"{rtype}/{res['id']}")
            if isinstance(full, str) and not full.startswith("urn:") and not full.endswith(f"{rtype}/{res['id']}"):
                problems.append(f"$.entry[{i}].fullUrl: {full} does not end with {rtype}/{res['id']}")
    for path, ref, contained in refs:
        if ref.startswith("#"):
            if ref[1:] not in contained:
                problems.append(f"{path}: {ref} names no contained resource")
        elif ref.startswith(("urn:uuid:", "urn:oid:")):
            if ref not in full_urls:
                problems.append(f"{path}: {ref} does not resolve within the bundle")
        elif (m := _RELATIVE_REF.match(ref)) is not None:
            target = f"{m.group(1)}/{m.group(2)}"
            if require_resolved and target not in by_type_id:
                problems.append(f"{path}: {ref} does not resolve within the bundle")
        elif ref.startswith(("http://", "https://")):
            if require_resolved and ref not in full_urls:
                problems.append(f"{path}: {ref} does not resolve within the bundle")
        else:
            problems.append(f"{path}: {ref!r} is not a FHIR reference")
    if problems:
        raise BundleError(problems)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m agents.testing.fhir SEED SIZE_KIB", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(encode_bundle(generate_bundle(int(argv[0]), int(argv[1]))) + b"\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
