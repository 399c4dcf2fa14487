"""The registry: every kind -> its request type, reply type, server and senders.

The ``senders`` column is the set of sender classes (:class:`Sender`) that
may send a kind; the serving agent classifies each sender from what it knows
(its ledger's certificates and the genesis, the light client, the
certificates it looks up) and refuses every other class with ``forbidden``
*before* the body is parsed, before any wait, query or crypto
(:func:`agents.handlers.serve`). ``check`` names the object rule the handler
then checks on its first lines (the record's owner, the grant's patient or
doctor, the request's doctor, the put session's owner, ...): a sender of an
allowed class asking about someone else's data is refused there.

Sender classes: ``enrolling`` (a self-certifying ``enroll:<key>`` id, before
a certificate exists), ``patient`` and ``doctor`` (by the role on the
sender's committed, unrevoked certificate), ``user`` (a registered user of
any other role), ``peer``, ``orderer`` and ``storage`` (the consortium's
nodes, by the genesis and the manifest).

:data:`TOPICS` names each topic's subscribers the same way; a publisher
refuses (``forbidden``) a subscription from any other class, and to any
undeclared topic. A per-subject family (``commits``) is one topic per user,
``commits/<subject>``, which only that subject may subscribe to.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from core.protocol import _orderer as o
from core.protocol import _patient as pa
from core.protocol import _peer as p
from core.protocol import _storage as s
from core.protocol._schema import Message

__all__ = ["Sender", "ANYONE", "REGISTERED", "CONSORTIUM", "KNOWN", "KindSpec", "TopicSpec", "KINDS", "TOPICS",
           "KIND_CODES", "TOPIC_CODES", "RETIRED_KIND_CODES", "spec", "admits", "admits_subscriber"]


class Sender(enum.Enum):
    """The classes a sender can belong to on the bus (see the module docstring)."""

    ENROLLING = "enrolling"  # enroll:<hex ECDSA key>: a user before it has a certificate
    PATIENT = "patient"  # a registered user whose certificate's role is "patient"
    DOCTOR = "doctor"  # a registered user whose certificate's role is "doctor"
    USER = "user"  # a registered user of any other role (nurse, registrar, ...)
    PEER = "peer"
    ORDERER = "orderer"
    STORAGE = "storage"


ANYONE = frozenset(Sender)
REGISTERED = frozenset({Sender.PATIENT, Sender.DOCTOR, Sender.USER})
"""Every registered user (a committed, unrevoked certificate), whatever its role."""
CONSORTIUM = frozenset({Sender.PEER, Sender.ORDERER, Sender.STORAGE})
"""The consortium's own nodes (static keys in the manifest; peers and orderer in the genesis)."""
KNOWN = REGISTERED | CONSORTIUM
"""Anyone but an enrolling (not yet registered) sender."""


@dataclass(frozen=True, slots=True)
class KindSpec:
    kind: str
    request: type[Message]
    reply: type[Message]
    server: str  # who serves it: "orderer", "peer", "patient", "storage"
    senders: frozenset[Sender]  # the classes admitted (refused otherwise with "forbidden", before any work)
    check: str = ""  # the object rule the handler checks on its first lines (see the module docstring)
    code: int = field(kw_only=True)
    """The kind's code on the bus (a compact request carries it instead of the kind's
    string: ``bus.register_kind_codes``). Append-only: a new kind takes the next unused
    code; a code is never renumbered, and a removed kind's code goes to
    :data:`RETIRED_KIND_CODES`, never to another kind. 1..127 cost one byte."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    topic: str
    payload: type[Message]
    publisher: str
    subscribers: frozenset[Sender]
    per_subject: bool = False  # a family: each subscriber only to ``<topic>/<its own id>``
    code: int = field(default=0, kw_only=True)
    """The topic's code on the bus, from the kinds' numbering (an event carries it instead of
    the topic's string; a family's, ``<topic>/``, stands for ``<topic>/<the event's recipient>``):
    append-only like :attr:`KindSpec.code`."""


RETIRED_KIND_CODES: frozenset[int] = frozenset()
"""Codes of kinds that were removed: never given to another kind."""
_MAX_CODE = 2**16 - 1  # (bus.MAX_KIND_CODE; core does not import the bus)


def _kinds(*specs: KindSpec) -> Mapping[str, KindSpec]:
    out: dict[str, KindSpec] = {}
    codes: set[int] = set()
    for k in specs:
        if k.kind in out or k.request.kind != k.kind or k.reply.kind != k.kind:
            raise ValueError(f"registry entry {k.kind!r} is duplicated or names types of another kind")
        if not k.senders or not k.senders <= ANYONE:
            raise ValueError(f"registry entry {k.kind!r} admits no sender class")
        if type(k.code) is not int or not 0 < k.code <= _MAX_CODE or k.code in codes or k.code in RETIRED_KIND_CODES:
            raise ValueError(f"registry entry {k.kind!r} has a code that is out of range, taken or retired")
        codes.add(k.code)
        out[k.kind] = k
    return MappingProxyType(out)


_BLOB_OWNER = ("the blob's owner (the registered user whose put stored it first, recorded by the node) or a "
               "storage node, for repair (storage.forbidden)")
_OWNER = "the put session's owner (the agent that began it): storage.bad-request otherwise"
_NODES = frozenset({Sender.PEER, Sender.STORAGE})  # the ledger's followers
_PEERS = frozenset({Sender.PEER})
_SUBMITTERS = frozenset({Sender.PEER, Sender.ORDERER})  # peers; an etcd orderer node forwarding to its leader
_PATIENTS = frozenset({Sender.PATIENT})
_DOCTORS = frozenset({Sender.DOCTOR})
_STORAGE_USERS = REGISTERED | frozenset({Sender.STORAGE})  # users, and nodes repairing replicas

KINDS: Mapping[str, KindSpec] = _kinds(
    KindSpec("orderer.submit", o.OrdererSubmit, o.OrdererSubmitReply, "orderer", _SUBMITTERS, code=1),
    KindSpec("orderer.blocks", o.OrdererBlocks, o.OrdererBlocksReply, "orderer", _NODES, code=2),
    KindSpec("orderer.head", o.OrdererHead, o.OrdererHeadReply, "orderer", _NODES, code=3),
    KindSpec("peer.enroll", p.PeerEnroll, p.PeerEnrollReply, "peer", frozenset({Sender.ENROLLING}),
             "a valid enrollment token for the peer's own organization (enroll.denied, enroll.invalid)", code=4),
    KindSpec("peer.submit", p.PeerSubmit, p.PeerSubmitReply, "peer", REGISTERED,
             "every transaction's submitter is the sender (forbidden)", code=5),
    KindSpec("peer.query", p.PeerQuery, p.PeerQueryReply, "peer", ANYONE,
             "by `what` (forbidden): cert, head and config for anyone (enrolling senders too); policy for its patient "
             "and peers; record/records for the patient, peers, and a doctor the patient's policy may allow "
             "for the record's label (fields the request needs only); request and grant for their patient "
             "and doctor, and peers", code=6),
    KindSpec("peer.audit", p.PeerAudit, p.PeerAuditReply, "peer", _PATIENTS,
             "the sender is the patient (audit.forbidden)", code=7),
    KindSpec("peer.deliver_share", p.PeerDeliverShare, p.PeerDeliverShareReply, "peer", _PATIENTS,
             "the sender is the grant's (or standing delegation's) patient (share.forbidden); waiting for an "
             "uncommitted grant or delegation is capped per sender and in total (busy)", code=8),
    KindSpec("peer.reencrypt", p.PeerReencrypt, p.PeerReencryptReply, "peer", _DOCTORS,
             "the sender is the grant's doctor, with a valid certificate (access.*)", code=9),
    KindSpec("peer.blocks", p.PeerBlocks, p.PeerBlocksReply, "peer", _NODES, code=10),
    KindSpec("patient.access_request", pa.PatientAccessRequest, pa.PatientAccessRequestReply, "patient",
             _DOCTORS, "the sender is the request's doctor (request.unknown); waiting for an uncommitted "
                       "request is capped per sender and in total (busy)", code=11),
    KindSpec("storage.put", s.StoragePut, s.StoragePutReply, "storage", _STORAGE_USERS, code=12),
    KindSpec("storage.put.begin", s.StoragePutBegin, s.StoragePutBeginReply, "storage", _STORAGE_USERS, code=13),
    KindSpec("storage.put.chunk", s.StoragePutChunk, s.StoragePutChunkReply, "storage", _STORAGE_USERS, _OWNER,
             code=14),
    KindSpec("storage.put.commit", s.StoragePutCommit, s.StoragePutCommitReply, "storage", _STORAGE_USERS,
             _OWNER, code=15),
    KindSpec("storage.put.abort", s.StoragePutAbort, s.StoragePutAbortReply, "storage", _STORAGE_USERS, _OWNER,
             code=16),
    KindSpec("storage.get", s.StorageGet, s.StorageGetReply, "storage", KNOWN, code=17),
    KindSpec("storage.leaves", s.StorageLeaves, s.StorageLeavesReply, "storage", KNOWN, code=18),
    KindSpec("storage.has", s.StorageHas, s.StorageHasReply, "storage", KNOWN, code=19),
    KindSpec("storage.pin", s.StoragePin, s.StoragePinReply, "storage", _STORAGE_USERS, _BLOB_OWNER, code=20),
    KindSpec("storage.unpin", s.StorageUnpin, s.StorageUnpinReply, "storage", _STORAGE_USERS, _BLOB_OWNER,
             code=21),
    KindSpec("storage.stat", s.StorageStat, s.StorageStatReply, "storage", KNOWN, code=22),
    KindSpec("storage.list", s.StorageList, s.StorageListReply, "storage", CONSORTIUM, code=23),
)
"""Every request kind on the bus. Add a kind here, with its types and the next unused code, and in
docs/protocol.md."""

KIND_CODES: Mapping[str, int] = MappingProxyType({k: spec.code for k, spec in KINDS.items()})
"""Kind -> its code on the bus (what ``agents`` registers with ``bus.register_kind_codes``)."""

TOPICS: Mapping[str, TopicSpec] = MappingProxyType({
    "blocks": TopicSpec("blocks", o.BlockEvent, "orderer", _NODES, code=24),
    "events": TopicSpec("events", p.PeerEvent, "peer", _PEERS, code=25),
    "commits": TopicSpec("commits", p.CommitNotice, "peer", REGISTERED, per_subject=True, code=26),
})
"""Every publish/subscribe topic: its event payload type and who may subscribe."""

TOPIC_CODES: Mapping[str, int] = MappingProxyType(
    {(t.topic + "/" if t.per_subject else t.topic): t.code for t in TOPICS.values()})
"""Topic (a family's as ``<topic>/``) -> its code on the bus (registered with the kinds' codes)."""
if (set(TOPIC_CODES.values()) & (set(KIND_CODES.values()) | RETIRED_KIND_CODES)
        or len(set(TOPIC_CODES.values())) != len(TOPICS)):
    raise ValueError("a topic's code is a kind's, retired or another topic's")


def admits(kind: str, sender: Sender | None) -> bool:
    """Whether ``sender``'s class may send ``kind`` (False for an unknown kind or class)."""
    entry = KINDS.get(kind)
    return entry is not None and sender is not None and sender in entry.senders


def admits_subscriber(topic: str, sender: Sender | None, subscriber: str | None = None) -> bool:
    """Whether ``sender``'s class may subscribe to ``topic`` (False for an undeclared topic).

    A per-subject family (``commits``) is subscribed as ``<family>/<subscriber id>``:
    only by ``subscriber`` itself, never by its bare name."""
    family, _, owner = topic.partition("/")
    entry = TOPICS.get(family)
    if entry is None or sender is None or sender not in entry.subscribers:
        return False
    if entry.per_subject:
        return bool(owner) and owner == subscriber
    return not owner


def spec(kind: str) -> KindSpec:
    """The registry entry of ``kind`` (KeyError if there is none)."""
    return KINDS[kind]
