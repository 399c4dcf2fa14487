"""Transaction Bundles in, searchset Bundles out (pure).

:func:`plan_transaction` turns a posted ``transaction`` Bundle into the
records to store: one record per entry (:class:`Entry`), under the label the
:class:`~agents.fhir.labels.LabelMap` gives it, with the record id
:func:`~agents.fhir.labels.record_id_for` derives from ``Type/id``. A client's
ids are kept: ``PUT Type/id`` uses that id, ``POST Type`` keeps
``resource.id`` when the resource has one (records are immutable and keyed by
``Type/id``; a resource without an id gets a fresh random one). As FHIR's
transaction rules require, references to an entry's ``fullUrl``
(``urn:uuid:...``) are rewritten to ``Type/id``; nothing else in a resource
changes. The stored bytes are the resource's compact JSON
(:func:`resource_bytes`).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agents.fhir.errors import FhirError
from agents.fhir.labels import LabelMap, LabelMapError, record_id_for

__all__ = ["Entry", "plan_transaction", "resource_bytes", "rewrite_references", "searchset", "transaction_response"]

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")


@dataclass(frozen=True)
class Entry:
    """One resource of a transaction: its type, id, label, record id and (rewritten) JSON."""

    resource_type: str
    resource_id: str
    label: str
    record_id: str
    resource: Mapping[str, Any]


def resource_bytes(resource: Mapping[str, Any]) -> bytes:
    """The bytes a resource is stored as: compact UTF-8 JSON, keys in their given order."""
    return json.dumps(resource, separators=(",", ":"), ensure_ascii=False).encode()


def rewrite_references(value: Any, mapping: Mapping[str, str]) -> Any:
    """``value`` with every ``reference`` string found in ``mapping`` replaced (a new object)."""
    if isinstance(value, Mapping):
        return {k: (mapping.get(v, v) if k == "reference" and isinstance(v, str)
                    else rewrite_references(v, mapping)) for k, v in value.items()}
    if isinstance(value, list):
        return [rewrite_references(v, mapping) for v in value]
    return value


def plan_transaction(bundle: Mapping[str, Any], labels: LabelMap, *, max_entries: int) -> list[Entry]:
    """The entries of a transaction Bundle (see the module docstring); FhirError (400/422) naming
    the entry at fault."""
    if bundle.get("resourceType") != "Bundle":
        raise FhirError("POST /: a Bundle is expected; post a transaction Bundle", expression="Bundle")
    if bundle.get("type") != "transaction":
        raise FhirError(f"POST /: Bundle.type is {bundle.get('type')!r}; this server takes transaction Bundles",
                        expression="Bundle.type", issue="not-supported")
    entries = bundle.get("entry") or []
    if len(entries) > max_entries:
        raise FhirError(f"POST /: {len(entries)} entries, more than {max_entries}; split the Bundle",
                        status=413, issue="too-costly")
    planned: list[tuple[str, str, str | None, Mapping[str, Any]]] = []
    for i, e in enumerate(entries):
        path = f"Bundle.entry[{i}]"
        res = e.get("resource")
        req = e.get("request") or {}
        if not isinstance(res, Mapping):
            raise FhirError(f"{path}: no resource; every entry of a transaction creates one", expression=path)
        rtype = res.get("resourceType")
        method, url = req.get("method"), str(req.get("url", ""))
        if method == "POST" and url == rtype:
            rid = res.get("id") or str(uuid.uuid4())
        elif method == "PUT" and url.startswith(f"{rtype}/") and "?" not in url:
            rid = url.split("/", 1)[1]
            if res.get("id") not in (None, rid):
                raise FhirError(f"{path}: resource id {res.get('id')!r} differs from {url}", expression=f"{path}.resource.id")
        else:
            raise FhirError(f"{path}.request: {method} {url!r}; entries are POST <Type> or PUT <Type>/<id> of "
                            "their resource (records are never read, changed or deleted by a transaction)",
                            expression=f"{path}.request", issue="not-supported")
        if not isinstance(rtype, str) or not _TYPE.match(rtype) or not _ID.match(str(rid)):
            raise FhirError(f"{path}: resource type {rtype!r} / id {rid!r} is not a FHIR type and id",
                            expression=f"{path}.resource")
        planned.append((rtype, str(rid), e.get("fullUrl"), res))
    mapping = {full: f"{t}/{rid}" for t, rid, full, _ in planned if isinstance(full, str) and full.startswith("urn:")}
    seen: set[str] = set()
    out = []
    for i, (rtype, rid, _, res) in enumerate(planned):
        key = f"{rtype}/{rid}"
        if key in seen:
            raise FhirError(f"Bundle.entry[{i}]: {key} appears twice", expression=f"Bundle.entry[{i}]")
        seen.add(key)
        resource = rewrite_references(res, mapping)
        if resource.get("id") != rid:
            resource = {"resourceType": rtype, "id": rid, **{k: v for k, v in resource.items()
                                                             if k not in ("resourceType", "id")}}
        try:
            label = labels.label_for(resource)
        except LabelMapError as exc:
            raise FhirError(f"Bundle.entry[{i}]: {exc}; add the type to the label table",
                            expression=f"Bundle.entry[{i}]", issue="not-supported", status=422) from None
        out.append(Entry(rtype, rid, label, record_id_for(rtype, rid), resource))
    return out


def transaction_response(entries: list[Entry]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction-response",
            "entry": [{"response": {"status": "201 Created", "location": f"{e.resource_type}/{e.resource_id}/_history/1",
                                    "etag": 'W/"1"'}} for e in entries]}


def searchset(resources: list[Mapping[str, Any]], base_url: str, *, outcome: Mapping[str, Any] | None = None,
              self_link: str | None = None) -> dict[str, Any]:
    """A searchset Bundle of ``resources`` (``search.mode`` match), plus an OperationOutcome entry
    (``search.mode`` outcome) when given."""
    base = base_url.rstrip("/")
    entries: list[dict[str, Any]] = [
        {"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
        for r in resources]
    if outcome is not None:
        entries.append({"resource": outcome, "search": {"mode": "outcome"}})
    out: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(resources)}
    if self_link:
        out["link"] = [{"relation": "self", "url": self_link}]
    out["entry"] = entries
    return out
