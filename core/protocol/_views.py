"""Views: what one reader of a ledger entry needs of it, and nothing else.

A view is a pure function of a committed entry (core.state's maps, as the ledger
wrote them) giving the subset of its fields one reader checks or uses; the reader
holds the rest (its own transaction's body, the ids it chose, the notice's height)
or does not read it. Nested maps (an access request's ``decision``) are cut the
same way. An entry that is not a map, or a field that is absent, is left out; a
view never adds or changes a value, so whatever the reader checks on the full entry
it checks on the view the same way.

Two uses (docs/protocol.md, "Consortium peer"):

* ``peer.query`` with ``view`` (:data:`QUERY_VIEWS`): ``request`` with
  :data:`REQUEST_ANSWER`, the fields a patient checks before it answers a doctor's
  ``patient.access_request`` (:func:`request_answer_view`); with :data:`REQUEST_ROW`,
  the same fields as one positional array (:func:`request_row_view`, read back by
  :func:`answer_from_row`: no field names on the wire, about 75 bytes fewer). Without
  ``view`` a query returns the whole entry (audit, CLI, an older reader).
* commit notices (:data:`NOTICE_VIEWS`): the entry a transaction of a listed type
  wrote, as its submitter needs it: the doctor's ``access_request``
  (:func:`requester_view`: status, effect, rule, the ledger's grant or hold, and the
  policy's reason only when it did not allow) and the patient's ``grant``
  (:func:`grant_terms_view`: the terms the patient passes on to the doctor).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from core.errors import DecodeError
from core.protocol._patient import GRANT_TERMS

__all__ = ["REQUEST_ANSWER", "REQUEST_ROW", "QUERY_VIEWS", "NOTICE_VIEWS", "NOTICE_ROWS", "request_answer_view",
           "request_row_view", "answer_from_row", "requester_view", "requester_row", "requester_from_row",
           "grant_terms_view", "query_view"]

REQUEST_ANSWER = "answer"
"""``peer.query request`` ``view``: what the request's patient checks before it grants."""


def _pick(entry: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The fields of ``entry`` named (those present and not nil)."""
    return {k: entry[k] for k in names if entry.get(k) is not None}


def _decision(entry: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The request entry's decision cut to ``names``, with its ``reason`` only when the
    policy did not allow or the request is denied (what a refusal shows its reader)."""
    decision = entry.get("decision")
    if not isinstance(decision, Mapping):
        return {}
    out = _pick(decision, names)
    if decision.get("effect") != "allow" or entry.get("status") == "denied":
        out.update(_pick(decision, ("reason",)))
    return out


def requester_view(entry: Any) -> Any:
    """An ``access_request``'s entry as its doctor needs it in the commit notice:
    ``status``, the decision's ``effect`` and ``rule`` (and ``reason`` when refused),
    ``grant_id`` when the ledger granted it (standing delegation), ``hold`` when held
    for the patient. The doctor knows the rest: its own request's fields and id, and
    the block (the notice's height)."""
    if not isinstance(entry, Mapping):
        return entry
    out = _pick(entry, ("status", "grant_id", "hold"))
    out["decision"] = _decision(entry, ("effect", "rule"))
    return out


def request_answer_view(entry: Any) -> Any:
    """A request entry as its patient checks it before answering the doctor
    (agents/patient.py ``_answer``): who asks whom for which record and label, the
    operation and purpose it shows for approval, the status and hold, and the
    decision's effect, approval and rule (and reason when refused). Not: the policy's
    name and version, the allowed reason's text, the time and height."""
    if not isinstance(entry, Mapping):
        return entry
    out = _pick(entry, ("doctor", "patient", "record_id", "label", "operation", "purpose", "status", "hold"))
    out["decision"] = _decision(entry, ("effect", "approval", "rule"))
    return out


REQUEST_ROW = "row"
"""``peer.query request`` ``view``: :data:`REQUEST_ANSWER`'s fields as a positional array."""

ANSWER_FIELDS = ("doctor", "patient", "record_id", "label", "operation", "purpose", "status", "hold")
"""The request fields of :func:`request_answer_view`, in :func:`request_row_view`'s order."""
ANSWER_DECISION = ("effect", "approval", "rule", "reason")
"""The decision fields of :func:`request_answer_view`, in :func:`request_row_view`'s order."""
_MAX_ROW_TEXT = 4096


def _row(values: list[Any]) -> list[Any]:
    while values and values[-1] is None:  # (trailing absent fields cost nothing)
        values.pop()
    return values


def request_row_view(entry: Any) -> Any:
    """:func:`request_answer_view` as one array: ``[<ANSWER_FIELDS>..., [<ANSWER_DECISION>...]]``,
    an absent field nil, trailing nils left out (of the decision array too)."""
    if not isinstance(entry, Mapping):
        return entry
    return _to_row(request_answer_view(entry), ANSWER_FIELDS, ANSWER_DECISION)


def _to_row(view: Mapping[str, Any], fields: tuple[str, ...], decision_fields: tuple[str, ...]) -> list[Any]:
    decision = view.get("decision") or {}
    return _row([view.get(k) for k in fields] + [_row([decision.get(k) for k in decision_fields]) or None])


def _from_row(row: Any, fields: tuple[str, ...], decision_fields: tuple[str, ...], what: str) -> dict[str, Any]:
    """The view map a row of ``fields`` then the decision's stands for; DecodeError when it is
    not such an array (text fields str or nil, at most 4,096 characters)."""
    n = len(fields)
    if type(row) is not list or len(row) > n + 1:
        raise DecodeError(f"{what} must be an array of at most {n + 1} fields")
    decision = row[n] if len(row) > n else None
    if decision is not None and (type(decision) is not list or len(decision) > len(decision_fields)):
        raise DecodeError(f"{what}'s decision must be an array of at most {len(decision_fields)} fields")
    for value in row[:n] + (decision or []):
        if value is not None and (type(value) is not str or len(value) > _MAX_ROW_TEXT):
            raise DecodeError(f"{what}'s fields must be text")
    out = {k: v for k, v in zip(fields, row) if v is not None}
    out["decision"] = {k: v for k, v in zip(decision_fields, decision or ()) if v is not None}
    return out


def answer_from_row(row: Any) -> dict[str, Any] | None:
    """The :func:`request_answer_view` map a :func:`request_row_view` array stands for (None
    for None); DecodeError when it is not such an array (text fields str or nil, at most
    4,096 characters; the decision an array of them)."""
    if row is None:
        return None
    return _from_row(row, ANSWER_FIELDS, ANSWER_DECISION, "a request row")


REQUESTER_FIELDS = ("status", "grant_id", "hold")
"""The fields of :func:`requester_view`, in its row's order (then the decision's)."""
REQUESTER_DECISION = ("effect", "rule", "reason")


def requester_row(view: Any) -> Any:
    """A :func:`requester_view` map as the array a commit notice carries it in:
    ``[status, grant_id, hold, [effect, rule, reason]]``, trailing nils left out."""
    if not isinstance(view, Mapping):
        return view
    return _to_row(view, REQUESTER_FIELDS, REQUESTER_DECISION)


def requester_from_row(row: Any) -> dict[str, Any]:
    """The :func:`requester_view` map a :func:`requester_row` array stands for (DecodeError
    for anything else)."""
    return _from_row(row, REQUESTER_FIELDS, REQUESTER_DECISION, "a requester row")


def grant_terms_view(entry: Any) -> Any:
    """A ``grant``'s entry as the patient who committed it needs it in the commit
    notice: the terms it passes on to the doctor (``core.protocol.GRANT_TERMS``: the
    threshold, expiry and scope its own transaction set, and the label-key epoch the
    ledger recorded). The doctor, patient, label and record are the request's, which
    the patient read before granting."""
    if not isinstance(entry, Mapping):
        return entry
    return _pick(entry, GRANT_TERMS)


QUERY_VIEWS: dict[str, dict[str, Callable[[Any], Any]]] = {
    "request": {REQUEST_ANSWER: request_answer_view, REQUEST_ROW: request_row_view},
}
"""``peer.query`` ``what`` -> the views it takes (``view``) -> the view's function."""

NOTICE_VIEWS: dict[str, Callable[[Any], Any]] = {
    "access_request": requester_view,
    "grant": grant_terms_view,
}
"""Transaction type -> the view of its own effect entry (``core.ledger.effect_key``) its
commit notice carries (:meth:`core.protocol.CommitNotice.for_submitter`); types not
listed carry the whole entry."""

NOTICE_ROWS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], dict[str, Any]]]] = {
    "access_request": (requester_row, requester_from_row),
}
"""Transaction type -> (to the row, back to the map) of its :data:`NOTICE_VIEWS` view: the
own entry travels as that array (no field names); :meth:`CommitNotice.expand` reads it back."""


def query_view(what: str, view: str | None, entry: Any) -> Any:
    """``entry`` as a ``peer.query`` of ``what`` with ``view`` returns it (the whole entry
    without a view; ``view`` was checked by :class:`core.protocol.PeerQuery`)."""
    if view is None or entry is None:
        return entry
    return QUERY_VIEWS[what][view](entry)
