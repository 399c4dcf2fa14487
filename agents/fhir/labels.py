"""Which label a FHIR resource is sealed under, and which record id it gets (pure).

A patient's records are sealed under **labels** (the unit of a grant and of a
policy's ``label "x"`` object). :class:`LabelMap` derives a resource's label
from its ``resourceType`` and, where the resource has one, its ``category``
codes, by a table that a deployment may replace (``emrshare fhir serve
--labels FILE``, a JSON file of the same shape as :data:`DEFAULT_LABELS`)::

    {"types": {"Observation": {"laboratory": "labs", "vital-signs": "vitals", "*": "observations"},
               "Condition": "conditions", ...},
     "default": "other",
     "security": {"http://terminology.hl7.org/CodeSystem/v3-ActCode|PSY": "mental-health", ...}}

A type maps to one label, or to a map from category code to label with ``"*"``
for the rest. The first category code (in the resource's order) found in the
type's map decides. ``default`` labels every type the table does not name (None:
such resources are refused). ``security`` maps Consent security labels
(``system|code``) to labels (docs/fhir.md).

Record ids are derived from the resource's type and id (:func:`record_id_for`),
so a doctor's facade finds ``Observation/123`` of a patient without a listing;
the id is a hash, so the ledger does not show FHIR ids (anyone can still
confirm a guessed ``Type/id``: docs/security.md).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LabelMap", "LabelMapError", "DEFAULT_LABELS", "record_id_for", "FHIR_MEDIA_TYPE", "RESOURCE_TYPES_SYSTEM"]

FHIR_MEDIA_TYPE = "application/fhir+json; fhirVersion=4.0"
RESOURCE_TYPES_SYSTEM = "http://hl7.org/fhir/resource-types"
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_V3 = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

DEFAULT_LABELS: dict[str, Any] = {
    "types": {
        "Patient": "demographics",
        "Observation": {"laboratory": "labs", "vital-signs": "vitals", "*": "observations"},
        "DiagnosticReport": {"LAB": "labs", "*": "reports"},
        "Condition": "conditions",
        "AllergyIntolerance": "allergies",
        "MedicationRequest": "medications",
        "MedicationStatement": "medications",
        "MedicationAdministration": "medications",
        "Immunization": "immunizations",
        "Procedure": "procedures",
        "Encounter": "encounters",
        "CarePlan": "care-plans",
        "Goal": "care-plans",
        "Claim": "billing",
        "ExplanationOfBenefit": "billing",
        "Organization": "directory",
        "Practitioner": "directory",
        "PractitionerRole": "directory",
        "Location": "directory",
        "DocumentReference": "documents",
    },
    "default": "other",
    "security": {
        f"{_V3}|PSY": "mental-health",
        f"{_V3}|HIV": "hiv",
        f"{_V3}|ETH": "substance-use",
        f"{_V3}|SEX": "sexual-health",
        f"{_V3}|SDV": "sexual-health",
    },
}


class LabelMapError(ValueError):
    """A label table that is not well formed, or a resource it cannot label."""


def record_id_for(resource_type: str, resource_id: str) -> str:
    """The record id of ``resource_type/resource_id``: ``fhir-`` and 32 hex digits of SHA-256."""
    return "fhir-" + hashlib.sha256(f"{resource_type}/{resource_id}".encode()).hexdigest()[:32]


def _check_label(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _LABEL.match(value):
        raise LabelMapError(f"{where}: a label is 1..64 characters of [A-Za-z0-9._-], got {value!r}")
    return value


@dataclass(frozen=True)
class LabelMap:
    """The label table (see the module docstring). Build with :meth:`from_dict` or :meth:`load`."""

    types: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    default: str | None = None
    security: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, table: Mapping[str, Any]) -> "LabelMap":
        if not isinstance(table, Mapping) or set(table) - {"types", "default", "security"}:
            raise LabelMapError("a label table is a map with keys types, default, security")
        types: dict[str, dict[str, str]] = {}
        for rtype, spec in dict(table.get("types") or {}).items():
            if not isinstance(rtype, str) or not _TYPE.match(rtype):
                raise LabelMapError(f"types: {rtype!r} is not a FHIR resource type name")
            if isinstance(spec, str):
                types[rtype] = {"*": _check_label(spec, f"types.{rtype}")}
            elif isinstance(spec, Mapping) and spec:
                types[rtype] = {str(code): _check_label(label, f"types.{rtype}.{code}") for code, label in spec.items()}
            else:
                raise LabelMapError(f"types.{rtype}: a label or a non-empty map from category code to label")
        default = table.get("default")
        if default is not None:
            _check_label(default, "default")
        security = {}
        for key, label in dict(table.get("security") or {}).items():
            if not isinstance(key, str) or key.count("|") != 1:
                raise LabelMapError(f"security: keys are 'system|code', got {key!r}")
            security[key] = _check_label(label, f"security.{key}")
        return cls(types=types, default=default, security=security)

    @classmethod
    def load(cls, path: Path) -> "LabelMap":
        try:
            table = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise LabelMapError(f"cannot read the label table {path}: {exc}") from None
        return cls.from_dict(table)

    @classmethod
    def default_map(cls) -> "LabelMap":
        return cls.from_dict(DEFAULT_LABELS)

    def label_for(self, resource: Mapping[str, Any]) -> str:
        """The label of ``resource`` (a FHIR resource as JSON); LabelMapError if none applies."""
        rtype = resource.get("resourceType")
        spec = self.types.get(rtype) if isinstance(rtype, str) else None
        if spec is None:
            if self.default is None:
                raise LabelMapError(f"no label for resource type {rtype!r} (the label table has no default)")
            return self.default
        for code in _category_codes(resource):
            if code in spec:
                return spec[code]
        if "*" in spec:
            return spec["*"]
        raise LabelMapError(f"no label for {rtype} with categories {_category_codes(resource)}")

    def labels_for_type(self, resource_type: str, category: str | None = None) -> list[str]:
        """Every label a resource of ``resource_type`` (with ``category``, when given) may carry, sorted."""
        spec = self.types.get(resource_type)
        if spec is None:
            return [] if self.default is None else [self.default]
        if category is not None:
            label = spec.get(category, spec.get("*"))
            return [] if label is None else [label]
        return sorted(set(spec.values()))

    def label_for_security(self, system: str, code: str) -> str | None:
        return self.security.get(f"{system}|{code}")


def _category_codes(resource: Mapping[str, Any]) -> list[str]:
    cats = resource.get("category")
    if isinstance(cats, Mapping):  # a few resources have one category
        cats = [cats]
    out = []
    for cat in cats if isinstance(cats, list) else []:
        for coding in (cat.get("coding") or []) if isinstance(cat, Mapping) else []:
            if isinstance(coding, Mapping) and isinstance(coding.get("code"), str):
                out.append(coding["code"])
    return out
