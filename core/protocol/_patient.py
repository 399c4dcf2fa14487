"""The patient agent's kind (``patient.access_request``)."""

from __future__ import annotations

from dataclasses import dataclass

from core.protocol._orderer import _HEIGHT
from core.protocol._schema import Id, Message, Optional, wire

__all__ = ["PatientAccessRequest", "PatientAccessRequestReply"]


@dataclass(frozen=True, slots=True)
class PatientAccessRequest(Message, kind="patient.access_request"):
    """From the doctor of a committed ``access_request``: please grant it. ``height``
    (optional): the block the request committed in (its commit notice's), so the
    patient reads it with ``min_height`` and does not poll."""

    request_id: str = wire(Id())
    height: int | None = wire(Optional(_HEIGHT), default=None, omit_none=True)


@dataclass(frozen=True, slots=True)
class PatientAccessRequestReply(Message, kind="patient.access_request"):
    """Once the ``grant`` committed and t peers acknowledged their key shares;
    ``height`` (optional): the grant's block, for the doctor's ``min_height`` reads."""

    grant_id: str = wire(Id())
    height: int | None = wire(Optional(_HEIGHT), default=None, omit_none=True)
