"""The patient agent's kind (``patient.access_request``)."""

from __future__ import annotations

from dataclasses import dataclass

from core.protocol._schema import Id, Message, wire

__all__ = ["PatientAccessRequest", "PatientAccessRequestReply"]


@dataclass(frozen=True, slots=True)
class PatientAccessRequest(Message):
    """From the doctor of a committed ``access_request``: please grant it."""

    kind = "patient.access_request"
    request_id: str = wire(Id())


@dataclass(frozen=True, slots=True)
class PatientAccessRequestReply(Message):
    """Once the ``grant`` committed and t peers acknowledged their key shares."""

    kind = "patient.access_request"
    grant_id: str = wire(Id())
