"""Every error code that crosses the bus, defined once, and the registry that turns a
received ``(code, message)`` back into a typed exception.

Style: lowercase words joined by ``-``, with an optional area prefix and a dot
(``bad-request``, ``enroll.denied``, ``access.bad-state``). Agents name codes
with the constants below and catch the typed exceptions an
:class:`ErrorRegistry` rebuilds, never string literals.

:data:`CODES` maps each code to a :class:`Code` (who sends it, what it means).
The ``bus`` codes are the bus's own rejections (``bus/``, which knows nothing
of this module, defines them; a test keeps the two in step). The codes of the
``agent`` origin are the ``code`` of :class:`agents.AgentError` and its
subclasses: a patient agent's handler may send any of them.

Ledger reason codes (:data:`core.ledger.REASON_CODES`, e.g. ``cert_revoked``)
are ledger data, stored in blocks: they keep their spelling. A peer that relays
one (re-encryption refused by :meth:`core.ledger.Ledger.check_reencryption`)
sends :func:`access_code` of it, e.g. ``access.cert-revoked``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Generic, Iterable, TypeVar

from core.ledger import REASON_CODES

__all__ = ["Code", "CODES", "ErrorRegistry", "REENCRYPTION_REASONS", "ACCESS_CODES", "access_code", "check_code"]

_STYLE = re.compile(r"^([a-z][a-z0-9]*(-[a-z0-9]+)*\.)?[a-z][a-z0-9]*(-[a-z0-9]+)*$")


@dataclass(frozen=True, slots=True)
class Code:
    code: str
    origin: str  # "bus", "peer", "orderer", "storage", "agent" (patient/doctor agents, and local errors)
    meaning: str


_TABLE: list[Code] = []


def _code(code: str, origin: str, meaning: str) -> str:
    if not _STYLE.match(code):
        raise ValueError(f"error code {code!r} is not in the house style")
    _TABLE.append(Code(code, origin, meaning))
    return code


# -- the bus's own (bus/node.py, bus.REJECT_REASONS) -------------------------------------
MALFORMED = _code("malformed", "bus", "the envelope does not decode")
VERSION = _code("version", "bus", "unsupported envelope version")
MISADDRESSED = _code("misaddressed", "bus", "the envelope is addressed to another agent")
STALE = _code("stale", "bus", "the envelope's timestamp is outside the skew window")
UNKNOWN_SENDER = _code("unknown-sender", "bus", "the receiver's key directory does not know the sender")
BAD_SIGNATURE = _code("bad-signature", "bus", "the envelope's signature does not verify")
UNPROVEN_SENDER = _code("unproven-sender", "bus", "the other side of the channel did not prove the sender under the "
                        "key the receiver's directory holds")
REPLAY = _code("replay", "bus", "the (sender, nonce) pair was seen within the window")
REPLAY_CACHE_FULL = _code("replay-cache-full", "bus", "the receiver's replay cache is full")
UNKNOWN_KIND = _code("unknown-kind", "bus", "the receiver has no handler for the kind")
INTERNAL = _code("internal", "bus", "the handler failed unexpectedly (details stay with the receiver)")
TOO_LARGE = _code("too-large", "bus", "the reply exceeds the frame limit")
OVERLOADED = _code("overloaded", "bus", "too many subscribers")
BUSY = _code("busy", "bus", "the sender has too many requests in flight (or waiting) at this agent; retry later")

# -- common to the server agents ------------------------------------------------------
BAD_REQUEST = _code("bad-request", "peer", "the body does not decode to the kind's request (core.protocol)")
FORBIDDEN = _code("forbidden", "bus", "the sender's class may not send this kind, ask this query, subscribe to this "
                  "topic, or act on this object")

# -- orderer ------------------------------------------------------------------------
ORDERER_BUSY = _code("orderer.busy", "orderer", "too many transactions queued; retry later")
ORDERER_NO_LEADER = _code("orderer.no-leader", "orderer", "no orderer node leads right now (etcd ordering); "
                          "retry shortly or ask another orderer node")
ORDERER_PRUNED = _code("orderer.pruned", "orderer", "the block is older than the orderer's window (etcd "
                       "ordering); ask a peer")

# -- peer ---------------------------------------------------------------------------
ENROLL_DENIED = _code("enroll.denied", "peer", "the token, the organization or the peer refuses the enrollment")
ENROLL_EXISTS = _code("enroll.exists", "peer", "the subject is already registered")
ENROLL_INVALID = _code("enroll.invalid", "peer", "the enrollment is malformed (keys, proof, attributes, validity)")
ENROLL_EXPIRED = _code("enroll.expired", "peer", "the enrollment token has expired (the registrar issues a new one)")
SUBMIT_TIMEOUT = _code("submit.timeout", "peer", "the transaction was not committed in time")
QUERY_BEHIND = _code("query.behind", "peer", "the peer has not reached the query's min_height yet (ask another)")
SUBMIT_UNAVAILABLE = _code("submit.unavailable", "peer", "the orderer did not take the transaction")
AUDIT_FORBIDDEN = _code("audit.forbidden", "peer", "only the patient reads its audit trail")
SHARE_MISMATCH = _code("share.mismatch", "peer", "the key share does not match the grant, the peer or its index")
SHARE_UNKNOWN_GRANT = _code("share.unknown-grant", "peer", "the grant was not committed in time")
SHARE_FORBIDDEN = _code("share.forbidden", "peer", "only the grant's patient delivers its shares")
SHARE_MISSING = _code("share.missing", "peer", "the peer holds no usable key share of the grant")


REENCRYPTION_REASONS = ("not_found", "forbidden", "bad_state", "not_allowed", "unknown_submitter", "cert_revoked",
                        "cert_expired")
"""The ledger reasons :meth:`core.ledger.Ledger.check_reencryption` refuses with."""


def access_code(reason: str) -> str:
    """The bus code a peer sends when it refuses to re-encrypt for ledger reason ``reason``
    (one of :data:`REENCRYPTION_REASONS`): ``access.`` and the reason with ``-``."""
    if reason not in REENCRYPTION_REASONS:
        raise ValueError(f"{reason!r} is not a reason a re-encryption is refused for")
    return "access." + reason.replace("_", "-")


ACCESS_CODES = {
    reason: _code(access_code(reason), "peer", f"re-encryption refused: {REASON_CODES[reason]}")
    for reason in REENCRYPTION_REASONS
}
"""Ledger reason -> the ``access.*`` code a peer relays it as."""

ACCESS_NOT_FOUND = ACCESS_CODES["not_found"]
ACCESS_FORBIDDEN = ACCESS_CODES["forbidden"]
ACCESS_BAD_STATE = ACCESS_CODES["bad_state"]
ACCESS_NOT_ALLOWED = ACCESS_CODES["not_allowed"]
ACCESS_CERT_REVOKED = ACCESS_CODES["cert_revoked"]

# -- storage nodes ----------------------------------------------------------------------
STORAGE_ERROR = _code("storage.error", "storage", "a storage failure with no more precise code")
STORAGE_NOT_FOUND = _code("storage.not-found", "storage", "the node does not hold the blob")
STORAGE_CORRUPT = _code("storage.corrupt", "storage", "the bytes on disk do not hash to the CID (quarantined)")
STORAGE_CID_MISMATCH = _code("storage.cid-mismatch", "storage", "the uploaded bytes do not hash to the claimed CID")
STORAGE_TOO_LARGE = _code("storage.too-large", "storage", "the blob exceeds the node's maximum")
STORAGE_QUOTA_EXCEEDED = _code("storage.quota-exceeded", "storage", "the node's quota is used up")
STORAGE_DISK_FULL = _code("storage.disk-full", "storage", "the node's disk is full")
STORAGE_BAD_REQUEST = _code("storage.bad-request", "storage", "the request is malformed (body, CID, session, range)")
STORAGE_FORBIDDEN = _code("storage.forbidden", "storage", "the sender may not do this on a storage node "
                                                           "(not registered, not the blob's owner, not a node)")
STORAGE_BUSY = _code("storage.busy", "storage", "too many put sessions open (the sender's or the node's); retry later")
STORAGE_UNAVAILABLE = _code("storage.unavailable", "storage", "not enough replicas answered (client side)")

# -- patient and doctor agents (agents.AgentError's codes) ----------------------------
AGENT_ERROR = _code("agent.error", "agent", "an agent error with no more precise code")
AGENT_UNKNOWN = _code("agent.unknown", "agent", "peers do not know this agent (not registered, or revoked)")
AGENT_UNREGISTERED = _code("agent.unregistered", "agent", "the agent is not registered yet")
AGENT_CERT_REVOKED = _code("agent.cert-revoked", "agent", "the agent's own certificate is revoked")
REQUEST_DENIED = _code("request.denied", "agent", "the patient's policy denies the request")
REQUEST_REJECTED = _code("request.rejected", "agent", "the patient declined the request")
REQUEST_UNKNOWN = _code("request.unknown", "agent", "no such pending request from the sender on the ledger")
RECORD_NOT_FOUND = _code("record.not-found", "agent", "no such record on the ledger")
ACCESS_NOT_ENOUGH_PEERS = _code("access.not-enough-peers", "agent", "fewer than t peers returned a valid share")
INTEGRITY = _code("integrity", "agent", "a signature, CID, share or header failed verification")
TX_REJECTED = _code("tx.rejected", "agent", "the ledger marked the transaction invalid")
UNAVAILABLE = _code("unavailable", "agent", "a needed agent (peer, patient, storage) did not answer in time")
STORE_IO = _code("store.io", "agent", "the file being stored changed while it was read")
KEY_STORE = _code("key-store", "agent", "the key store does not open (wrong passphrase or key file, corrupt)")
LEDGER_STORE = _code("ledger-store", "agent", "the ledger database belongs to another chain or is inconsistent")

CODES: dict[str, Code] = {}
for _entry in _TABLE:
    if _entry.code in CODES:
        raise ValueError(f"error code {_entry.code!r} is defined twice")
    CODES[_entry.code] = _entry
del _entry


def check_code(code: str) -> str:
    """``code`` if it is a defined error code, else ValueError."""
    if code not in CODES:
        raise ValueError(f"{code!r} is not a defined error code (core.protocol.codes)")
    return code


E = TypeVar("E", bound=BaseException)


class ErrorRegistry(Generic[E]):
    """Received ``(code, message)`` -> a typed exception.

    ``register(cls)`` maps ``cls.code`` (or the codes given) to ``cls``; every
    code must be defined in :data:`CODES`. ``rebuild(code, message)`` returns
    ``cls(message)`` for a registered code (its ``code`` is the class's), else
    ``default(code, message)``, so a code from a newer sender still comes out
    as the family's root type, carrying that code.
    """

    def __init__(self, default: Callable[[str, str], E]):
        self._default = default
        self._types: dict[str, type[E]] = {}

    def register(self, cls: type[E], *, codes: Iterable[str] | None = None) -> type[E]:
        for code in (codes if codes is not None else (getattr(cls, "code"),)):
            check_code(code)
            if code in self._types:
                raise ValueError(f"error code {code!r} is already mapped to {self._types[code].__name__}")
            self._types[code] = cls
        return cls

    def type_for(self, code: str) -> type[E] | None:
        """The class registered for ``code`` (None: the default applies)."""
        return self._types.get(code)

    def rebuild(self, code: str, message: str) -> E:
        cls = self._types.get(code)
        if cls is None:
            return self._default(code, message)
        return cls(message)

    def codes(self) -> dict[str, type[E]]:
        return dict(self._types)
