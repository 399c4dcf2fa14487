"""The registry: every kind -> its request type, reply type, server and senders.

The ``senders`` column is who may send a kind *today*, as the code enforces
it: the bus accepts an envelope from anyone its receiver's key directory knows
(for a peer, a patient, a doctor or a storage node: the consortium's static
keys, every committed, unrevoked certificate, and every self-certifying
``enroll:<key>`` id; the orderer does not follow certificates, so no users),
and a few handlers refuse roles or check the sender against the object
(``check``). Issue 13 narrows these columns; the handlers will then refuse
other senders before any work.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from core.protocol import _orderer as o
from core.protocol import _patient as pa
from core.protocol import _peer as p
from core.protocol import _storage as s
from core.protocol._schema import Message

__all__ = ["Sender", "ANYONE", "KindSpec", "TopicSpec", "KINDS", "TOPICS", "spec"]


class Sender(enum.Enum):
    """The roles a sender can have on the bus."""

    ENROLLING = "enrolling"  # enroll:<hex ECDSA key>: a user before it has a certificate
    USER = "user"  # a registered patient, doctor, nurse, ... (its certificate subject)
    PEER = "peer"
    ORDERER = "orderer"
    STORAGE = "storage"


ANYONE = frozenset(Sender)
_NO_USERS = frozenset({Sender.ENROLLING, Sender.PEER, Sender.ORDERER, Sender.STORAGE})  # the orderer's directory


@dataclass(frozen=True, slots=True)
class KindSpec:
    kind: str
    request: type[Message]
    reply: type[Message]
    server: str  # who serves it: "orderer", "peer", "patient", "storage"
    senders: frozenset[Sender]  # today's effective rule (see the module docstring)
    check: str = ""  # what the handler checks about the sender beyond its role, today


@dataclass(frozen=True, slots=True)
class TopicSpec:
    topic: str
    payload: type[Message]
    publisher: str
    subscribers: frozenset[Sender]


def _kinds(*specs: KindSpec) -> Mapping[str, KindSpec]:
    out: dict[str, KindSpec] = {}
    for k in specs:
        if k.kind in out or k.request.kind != k.kind or k.reply.kind != k.kind:
            raise ValueError(f"registry entry {k.kind!r} is duplicated or names types of another kind")
        out[k.kind] = k
    return MappingProxyType(out)


_OWNER = "the put session's owner (the agent that began it)"

KINDS: Mapping[str, KindSpec] = _kinds(
    KindSpec("orderer.submit", o.OrdererSubmit, o.OrdererSubmitReply, "orderer", frozenset({Sender.PEER}),
             "a consortium peer (forbidden)"),
    KindSpec("orderer.blocks", o.OrdererBlocks, o.OrdererBlocksReply, "orderer", _NO_USERS),
    KindSpec("orderer.head", o.OrdererHead, o.OrdererHeadReply, "orderer", _NO_USERS),
    KindSpec("peer.enroll", p.PeerEnroll, p.PeerEnrollReply, "peer", frozenset({Sender.ENROLLING}),
             "an enroll:<key> id (enroll.invalid); the peer's own organization (enroll.denied)"),
    KindSpec("peer.submit", p.PeerSubmit, p.PeerSubmitReply, "peer", ANYONE,
             "none: the ledger marks transactions from non-users invalid"),
    KindSpec("peer.query", p.PeerQuery, p.PeerQueryReply, "peer", ANYONE,
             "enroll:<key> ids ask only cert and head (forbidden)"),
    KindSpec("peer.audit", p.PeerAudit, p.PeerAuditReply, "peer", ANYONE,
             "the sender is the patient (audit.forbidden)"),
    KindSpec("peer.deliver_share", p.PeerDeliverShare, p.PeerDeliverShareReply, "peer", ANYONE,
             "the sender is the grant's patient (share.forbidden)"),
    KindSpec("peer.reencrypt", p.PeerReencrypt, p.PeerReencryptReply, "peer", ANYONE,
             "the sender is the grant's doctor, with a valid certificate (access.*)"),
    KindSpec("peer.blocks", p.PeerBlocks, p.PeerBlocksReply, "peer", ANYONE),
    KindSpec("patient.access_request", pa.PatientAccessRequest, pa.PatientAccessRequestReply, "patient", ANYONE,
             "the sender is the request's doctor (request.unknown)"),
    KindSpec("storage.put", s.StoragePut, s.StoragePutReply, "storage", ANYONE),
    KindSpec("storage.put.begin", s.StoragePutBegin, s.StoragePutBeginReply, "storage", ANYONE),
    KindSpec("storage.put.chunk", s.StoragePutChunk, s.StoragePutChunkReply, "storage", ANYONE, _OWNER),
    KindSpec("storage.put.commit", s.StoragePutCommit, s.StoragePutCommitReply, "storage", ANYONE, _OWNER),
    KindSpec("storage.put.abort", s.StoragePutAbort, s.StoragePutAbortReply, "storage", ANYONE, _OWNER),
    KindSpec("storage.get", s.StorageGet, s.StorageGetReply, "storage", ANYONE),
    KindSpec("storage.leaves", s.StorageLeaves, s.StorageLeavesReply, "storage", ANYONE),
    KindSpec("storage.has", s.StorageHas, s.StorageHasReply, "storage", ANYONE),
    KindSpec("storage.pin", s.StoragePin, s.StoragePinReply, "storage", ANYONE),
    KindSpec("storage.unpin", s.StorageUnpin, s.StorageUnpinReply, "storage", ANYONE),
    KindSpec("storage.stat", s.StorageStat, s.StorageStatReply, "storage", ANYONE),
    KindSpec("storage.list", s.StorageList, s.StorageListReply, "storage", ANYONE),
)
"""Every request kind on the bus. Add a kind here, with its types, and in docs/protocol.md."""

TOPICS: Mapping[str, TopicSpec] = MappingProxyType({
    "blocks": TopicSpec("blocks", o.BlockEvent, "orderer", _NO_USERS),
    "events": TopicSpec("events", p.PeerEvent, "peer", ANYONE),
})
"""Every publish/subscribe topic: its event payload type."""


def spec(kind: str) -> KindSpec:
    """The registry entry of ``kind`` (KeyError if there is none)."""
    return KINDS[kind]
