"""A doctor's break-glass over FHIR: the ``$break-glass`` operation's Parameters (pure).

``POST /{Type}/{id}/$break-glass?patient=ID`` (a doctor's facade, docs/fhir.md)
commits a ``break_glass`` transaction for the record that ``Type/id`` names and
answers the resource, read under the time-boxed grant the ledger makes; later
reads and searches of that record's label through the facade are served under
the same grant until its window ends. The token must carry ``purpose_of_use``
ETREAT (IHE IUA's claim) and a read scope on the type. The body is a FHIR
``Parameters`` resource:

* ``reason`` (valueString, 1..512 characters): why, shown to the patient;
* ``breakGlassId`` (valueId): the id the officers signed;
* ``cosignature`` (one per officer), parts ``officer`` (valueString, the
  officer's subject id) and ``signature`` (valueBase64Binary, the 64-byte
  ECDSA signature :func:`agents.doctor.cosign_break_glass` makes over the id,
  the doctor, the patient, the record id and the reason; ``emrshare doctor
  cosign`` prints the same bytes in hex).

:func:`parse_break_glass` checks and reads it; :func:`break_glass_parameters`
writes it (for clients and tests). The officers sign with their own agents'
keys, out of band: FHIR and SMART have no form for several people approving
one request, so the facade only carries what they signed.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agents.fhir.errors import FhirError

__all__ = ["BreakGlassRequest", "parse_break_glass", "break_glass_parameters", "is_emergency_purpose",
           "MAX_COSIGNATURES", "MAX_REASON"]

MAX_COSIGNATURES = 16  #: as many as a policy's emergency clause may require
MAX_REASON = 512  #: characters, as the ledger allows
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@dataclass(frozen=True)
class BreakGlassRequest:
    """What a ``$break-glass`` call asks: the reason, the id the officers signed, their signatures."""

    reason: str
    break_glass_id: str
    cosigners: dict[str, bytes]


def is_emergency_purpose(claims: Mapping[str, Any]) -> bool:
    """Whether a token's ``purpose_of_use`` claim (a code or a list of codes) names ETREAT."""
    value = claims.get("purpose_of_use")
    codes = value if isinstance(value, list) else [value]
    return "ETREAT" in codes


def _fail(path: str, why: str) -> FhirError:
    return FhirError(f"$break-glass refused: {path}: {why}; see docs/fhir.md (Emergency access)", status=400,
                     issue="invalid", expression=path)


def parse_break_glass(params: Any) -> BreakGlassRequest:
    """The break-glass a ``Parameters`` resource (JSON form) asks for; FhirError (400) naming the element."""
    if not isinstance(params, Mapping) or params.get("resourceType") != "Parameters":
        raise _fail("Parameters", "a Parameters resource is expected")
    reason = bg_id = None
    cosigners: dict[str, bytes] = {}
    items = params.get("parameter") or []
    if not isinstance(items, list) or len(items) > 2 + MAX_COSIGNATURES:
        raise _fail("Parameters.parameter", f"at most {2 + MAX_COSIGNATURES} parameters")
    for i, p in enumerate(items):
        path = f"Parameters.parameter[{i}]"
        name = p.get("name") if isinstance(p, Mapping) else None
        if name == "reason" and reason is None and set(p) == {"name", "valueString"}:
            reason = p["valueString"]
            if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
                raise _fail(f"{path}.valueString", f"the reason is 1..{MAX_REASON} characters")
        elif name == "breakGlassId" and bg_id is None and len(p) == 2 and ("valueId" in p or "valueString" in p):
            bg_id = p.get("valueId", p.get("valueString"))
            if not isinstance(bg_id, str) or not _ID.match(bg_id):
                raise _fail(path, "the break-glass id is a FHIR id (letters, digits, '-', '.'; at most 64)")
        elif name == "cosignature" and set(p) == {"name", "part"}:
            officer, signature = _cosignature(p["part"], path)
            if officer in cosigners:
                raise _fail(path, f"officer {officer!r} co-signs once")
            cosigners[officer] = signature
        else:
            raise _fail(path, "parameters are one reason (valueString), one breakGlassId (valueId) and "
                              "cosignature (parts officer, signature)")
    if reason is None or bg_id is None:
        raise _fail("Parameters.parameter", "reason and breakGlassId are required")
    if not cosigners:
        raise _fail("Parameters.parameter", "a break-glass needs the officers' cosignatures")
    return BreakGlassRequest(reason, bg_id, cosigners)


def _cosignature(parts: Any, path: str) -> tuple[str, bytes]:
    values: dict[str, Any] = {}
    for j, part in enumerate(parts if isinstance(parts, list) else [None]):
        name = part.get("name") if isinstance(part, Mapping) else None
        key = {"officer": "valueString", "signature": "valueBase64Binary"}.get(name or "")
        if key is None or name in values or set(part) != {"name", key}:
            raise _fail(f"{path}.part[{j}]", "a cosignature has one officer (valueString) and one signature "
                                             "(valueBase64Binary)")
        values[name] = part[key]
    officer, encoded = values.get("officer"), values.get("signature")
    if not isinstance(officer, str) or not 0 < len(officer) <= 128 or not officer.isprintable():
        raise _fail(f"{path}.part", "the officer is a subject id")
    try:
        signature = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
    except (binascii.Error, ValueError):
        signature = b""
    if len(signature) != 64:
        raise _fail(f"{path}.part", "the signature is 64 bytes of ECDSA (r || s), base64")
    return officer, signature


def break_glass_parameters(reason: str, break_glass_id: str, cosigners: Mapping[str, bytes]) -> dict[str, Any]:
    """The ``Parameters`` body of a ``$break-glass`` call."""
    return {"resourceType": "Parameters", "parameter": [
        {"name": "reason", "valueString": reason},
        {"name": "breakGlassId", "valueId": break_glass_id},
        *({"name": "cosignature", "part": [{"name": "officer", "valueString": officer},
                                           {"name": "signature",
                                            "valueBase64Binary": base64.b64encode(sig).decode()}]}
          for officer, sig in sorted(cosigners.items()))]}
