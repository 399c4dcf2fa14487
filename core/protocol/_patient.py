"""The patient agent's kind (``patient.access_request``)."""

from __future__ import annotations

from dataclasses import dataclass

from core.protocol._schema import Id, Message, wire

__all__ = ["PatientAccessRequest", "PatientAccessRequestReply"]


@dataclass(frozen=True, slots=True)
class PatientAccessRequest(Message, kind="patient.access_request"):
    """From the doctor of a committed ``access_request``: please grant it."""

    request_id: str = wire(Id())


@dataclass(frozen=True, slots=True)
class PatientAccessRequestReply(Message, kind="patient.access_request"):
    """Once the ``grant`` committed and t peers acknowledged their key shares."""

    grant_id: str = wire(Id())
