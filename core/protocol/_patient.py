"""The patient agent's kind (``patient.access_request``)."""

from __future__ import annotations

from dataclasses import dataclass

from core.protocol._orderer import _HEIGHT
from core.protocol._schema import INT64_MAX, Choice, Id, Int, ListOf, Map, Message, Optional, Row, wire

__all__ = ["PatientAccessRequest", "PatientAccessRequestReply", "GRANT_REPLY_FIELDS", "GRANT_TERMS"]

# the grant entry's fields an older patient's reply passed on (``grant``; read, no longer sent)
GRANT_REPLY_FIELDS = ("doctor", "patient", "label", "record_id", "threshold", "expires_at", "scope", "epoch",
                      "revoked")
GRANT_TERMS = ("threshold", "expires_at", "scope", "epoch")
"""The committed grant entry's fields a patient's reply passes on as ``terms`` (in this
order): those the doctor cannot know from its own request (its doctor, patient, label
and record id are the request's; a grant passed on is never revoked)."""


@dataclass(frozen=True, slots=True)
class PatientAccessRequest(Message, kind="patient.access_request", row=True):
    """From the doctor of a committed ``access_request``: please grant it. ``height``
    (optional): the block the request committed in (its commit notice's), so the
    patient reads it with ``min_height`` and does not poll. A row: ``[request_id, height]``."""

    request_id: str = wire(Id())
    height: int | None = wire(Optional(_HEIGHT), default=None, omit_none=True)


@dataclass(frozen=True, slots=True)
class PatientAccessRequestReply(Message, kind="patient.access_request", row=True):
    """Once the ``grant`` committed and t peers acknowledged their key shares;
    ``height`` (optional): the grant's block, for the doctor's ``min_height`` reads.
    ``terms`` (optional): the committed grant entry's :data:`GRANT_TERMS` as the
    patient's commit notice carried them, ``[threshold, expires_at, scope, epoch]``,
    so the doctor need not read the grant back (the entry's other fields are the
    doctor's own request's); ``peers`` (optional): the peers that acknowledged their
    key shares when the patient answered (the doctor asks them first). ``grant``
    (optional, read only): what an older patient sent instead of ``terms``, the
    entry trimmed to :data:`GRANT_REPLY_FIELDS`. A row:
    ``[grant_id, height, grant, peers, terms]``."""

    grant_id: str = wire(Id())
    height: int | None = wire(Optional(_HEIGHT), default=None, omit_none=True)
    grant: dict | None = wire(Optional(Map(len(GRANT_REPLY_FIELDS))), default=None, omit_none=True)
    peers: tuple | None = wire(Optional(ListOf(Id(), max_len=64)), default=None, omit_none=True)
    terms: tuple | None = wire(Optional(Row(Int(1, 1 << 16), Int(0, INT64_MAX), Choice(("label", "record")),
                                            Int(0, INT64_MAX))), default=None, omit_none=True)

    def grant_entry(self, doctor: str, patient: str, label: str, record_id: str) -> dict | None:
        """The committed grant entry this reply stands for (its ``terms`` with the request's
        doctor, patient, label and record id; or an older patient's ``grant``), None without."""
        if self.terms is not None:
            entry = dict(zip(GRANT_TERMS, self.terms))
            return {**entry, "doctor": doctor, "patient": patient, "label": label, "revoked": False,
                    "record_id": record_id}
        return self.grant
