"""The patient agent's kind (``patient.access_request``)."""

from __future__ import annotations

from dataclasses import dataclass

from core.protocol._orderer import _HEIGHT
from core.protocol._schema import Id, ListOf, Map, Message, Optional, wire

__all__ = ["PatientAccessRequest", "PatientAccessRequestReply", "GRANT_REPLY_FIELDS"]

# the grant entry's fields a patient's reply passes on (the doctor's checks and cache need these)
GRANT_REPLY_FIELDS = ("doctor", "patient", "label", "record_id", "threshold", "expires_at", "scope", "epoch",
                      "revoked")


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
    ``height`` (optional): the grant's block, for the doctor's ``min_height`` reads.
    ``grant`` (optional): the committed grant entry as the patient's commit notice
    carried it, without its share hashes (:data:`GRANT_REPLY_FIELDS`), so the doctor
    need not read it back; ``peers`` (optional): the peers that acknowledged their
    key shares when the patient answered (the doctor asks them first)."""

    grant_id: str = wire(Id())
    height: int | None = wire(Optional(_HEIGHT), default=None, omit_none=True)
    grant: dict | None = wire(Optional(Map(len(GRANT_REPLY_FIELDS))), default=None, omit_none=True)
    peers: tuple | None = wire(Optional(ListOf(Id(), max_len=64)), default=None, omit_none=True)
