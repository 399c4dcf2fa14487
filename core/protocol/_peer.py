"""The consortium peer's kinds (``peer.*``) and its ``events`` topic."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Self

from core import enrollment, pre
from core.errors import DecodeError
from core.identity import MAX_ATTRIBUTES
from core.ledger import AUDIT_PAGE, REASON_CODES
from core.tx import Transaction

from core.protocol._orderer import (
    _HEIGHT, _TX, _TX_ID, MAX_TXS_PER_SUBMIT, BlockList, BlockRange, _OneOrList, _one_or_list,
)
from core.protocol._schema import (
    INT64_MAX, Bool, Bytes, Choice, Id, Int, ListOf, Map, Message, Nested, Optional, Text, wire,
)
from core.protocol._views import NOTICE_ROWS, NOTICE_VIEWS, QUERY_VIEWS, REQUEST_ROW, answer_from_row

__all__ = [
    "MAX_SUBMIT_BYTES", "MAX_SEALED_SHARE", "MAX_ENTRIES", "MAX_CID_LENGTH", "BOX_KEY_SIZE", "TOKEN_SIZE",
    "QUERY_FIELDS", "EVENT_TYPES",
    "PeerEnroll", "PeerEnrollReply", "PeerSubmit", "SubmitResult", "PeerSubmitReply", "PeerQuery",
    "PeerQueryReply", "PeerAudit", "PeerAuditReply", "PeerDeliverShare", "PeerDeliverShareReply",
    "PeerReencrypt", "PeerReencryptReply", "PeerBlocks", "PeerBlocksReply", "Decision", "PeerEvent",
    "CommitNotice", "COMMITS", "NOTICE_TX_ID", "commits_topic", "commits_owner", "MAX_EFFECT_ENTRIES", "MAX_ECHO_KEYS",
    "echo_compact", "echo_expand", "HELD_SIZE", "OWN_KEY",
]

MAX_SUBMIT_BYTES = 8 * 1024 * 1024
"""Bytes of transactions in one ``peer.submit`` (half a bus frame, so a peer's
coalesced forward to the orderer always fits in one message)."""
MAX_SEALED_SHARE = 4096
MAX_ENTRIES = 1 << 20
"""Entries of a list reply (audit events, records): more than a frame can hold."""
MAX_CID_LENGTH = 256
BOX_KEY_SIZE = 32
TOKEN_SIZE = enrollment.TOKEN_SIZE  # core.enrollment.EnrollmentToken.to_bytes
MAX_PROXY_INDEX = 2**32 - 1  # a re-encrypted share carries its index in 4 bytes
SIGNATURE_SIZE = 64
EVENT_TYPES = ("access_request", "grant", "deny_request", "revoke_grant", "break_glass")
"""Committed transaction types a peer publishes on topic ``events``."""

CID = Text(MAX_CID_LENGTH, min_len=1)
HELD_SIZE = 32
"""Bytes of ``PeerQuery.held``: the id (SHA-256) of the store transaction a reader holds."""
MAX_ECHO_KEYS = 64
"""Fields of a transaction body an echo mask can name (one bit each; see :func:`echo_compact`)."""
MAX_AUDIT_KEY = 512  # "audit/<patient id>/<height>/<index>.<entry>": an id is at most 128 characters
_INT64 = Int(-(2**63), INT64_MAX)
_PROXY_INDEX = Int(1, MAX_PROXY_INDEX)


# -- echoes: fields a reader already holds in a transaction body ----------------------


def _same(a: Any, b: Any) -> bool:
    """Exactly the same msgpack value (``True == 1`` and ``b"x" == "x"`` do not count)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        # (in the same order: a map's encoding is its items in order)
        return list(a) == list(b) and all(_same(v, b[k]) for k, v in a.items())
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def echo_compact(entry: dict, body: Mapping[str, Any]) -> tuple[dict, int]:
    """``entry`` without the fields whose value is exactly that of the transaction
    ``body``'s field of the same name, and the mask naming them (bit i: the i-th of
    ``body``'s keys in sorted order; only the first :data:`MAX_ECHO_KEYS`). A reader
    holding ``body`` restores the entry with :func:`echo_expand`."""
    keys = sorted(k for k in body if isinstance(k, str))[:MAX_ECHO_KEYS]
    kept = dict(entry)
    mask = 0
    for i, k in enumerate(keys):
        if k in kept and _same(kept[k], body[k]):
            del kept[k]
            mask |= 1 << i
    return kept, mask


def _tx_body(raw: Any) -> dict | None:
    """The body of the encoded transaction ``raw`` (None when it is not one)."""
    if not isinstance(raw, bytes):
        return None
    try:
        return Transaction.from_bytes(raw).body
    except DecodeError:
        return None


def echo_expand(kept: dict, body: Mapping[str, Any], mask: int, what: str) -> dict:
    """The entry :func:`echo_compact` cut to ``kept`` and ``mask``, restored from ``body``
    (DecodeError when the mask names a field ``body`` does not have or ``kept`` has)."""
    if mask == 0:
        return kept
    keys = sorted(k for k in body if isinstance(k, str))[:MAX_ECHO_KEYS]
    if mask >> len(keys):
        raise DecodeError(f"{what}: the echo mask names fields the transaction does not have")
    out = dict(kept)
    for i, k in enumerate(keys):
        if mask >> i & 1:
            if k in out:
                raise DecodeError(f"{what}: field {k!r} is both sent and echoed")
            out[k] = body[k]
    return out


# -- peer.enroll ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerEnroll(Message, kind="peer.enroll"):
    """From ``enroll:<hex key>``. ``valid_s``: the requested validity in seconds (the
    peer accepts 1..10 years: ``enroll.invalid`` otherwise). ``token``: the
    registrar's :class:`core.enrollment.EnrollmentToken` for this subject, org,
    attributes and enrolling key (``agents.enrollment_token``)."""

    subject: str = wire(Id())
    org: str = wire(Id())
    attributes: dict = wire(Map(MAX_ATTRIBUTES))
    box_key: bytes = wire(Bytes(BOX_KEY_SIZE))
    pre_key: bytes = wire(Bytes(pre.PublicKey.SIZE))
    pre_proof: bytes = wire(Bytes(pre.Proof.SIZE))
    valid_s: int = wire(_INT64)
    token: bytes = wire(Bytes(TOKEN_SIZE))


@dataclass(frozen=True, slots=True)
class PeerEnrollReply(Message, kind="peer.enroll"):
    """The certificate (``core.identity.Certificate.to_dict``) once the ``register`` committed."""

    cert: dict = wire(Map())
    height: int = wire(_HEIGHT)


# -- peer.submit ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerSubmit(_OneOrList, kind="peer.submit"):
    """``{tx, wait}`` or ``{txs: [..] (1..1024, at most 8 MiB in all), wait}``; ``wait``
    may be absent (False)."""

    forms = ("tx", "txs", _TX)
    txs: tuple[bytes, ...]
    wait: bool = False
    batch: bool = False

    def to_wire(self) -> dict[str, Any]:
        out = _OneOrList.to_wire(self)
        if self.wait:  # absent: False
            out["wait"] = True
        return out

    @classmethod
    def from_wire(cls, obj: Any, *, what: str | None = None) -> Self:
        obj, what = cls._body(obj, what)
        txs, batch = _one_or_list(obj, what, *cls.forms)
        if sum(len(raw) for raw in txs) > MAX_SUBMIT_BYTES:
            raise DecodeError(f"{what}: a submit carries at most {MAX_SUBMIT_BYTES} bytes of transactions")
        wait = Bool().decode(obj["wait"], f"{what}: 'wait'") if "wait" in obj else False
        return cls(txs, wait, batch)


@dataclass(frozen=True, slots=True)
class SubmitResult(Message, kind="peer.submit"):
    """One transaction's outcome: with ``wait`` ``{tx_id, height, mark}`` (its block and
    ``"ok"`` or a core.ledger reason code); without, ``{}``: the orderer took it (its
    submitter knows its id, SHA-256 of the bytes it sent; ``tx_id`` is None then)."""

    tx_id: bytes | None = wire(Optional(_TX_ID), default=None, omit_none=True)
    height: int | None = wire(Optional(_HEIGHT), default=None, omit_none=True)
    mark: str | None = wire(Optional(Choice(tuple(REASON_CODES))), default=None, omit_none=True)


@dataclass(frozen=True, slots=True)
class PeerSubmitReply(Message, kind="peer.submit"):
    """One :class:`SubmitResult` as the body, or ``{results: [..]}`` for the list form."""

    results: tuple[SubmitResult, ...]
    batch: bool = False

    def to_wire(self) -> dict[str, Any]:
        if self.batch:
            return {"results": [r.to_wire() for r in self.results]}
        return self.results[0].to_wire()

    @classmethod
    def from_wire(cls, obj: Any, *, what: str | None = None) -> Self:
        what = what or cls.kind
        if isinstance(obj, dict) and "results" in obj:
            results = ListOf(Nested(SubmitResult), min_len=1, max_len=MAX_TXS_PER_SUBMIT).decode(
                obj["results"], f"{what}: 'results'")
            return cls(results, True)
        return cls((SubmitResult.from_wire(obj, what=what),), False)


# -- peer.query -------------------------------------------------------------------

QUERY_FIELDS: dict[str, tuple[str, ...]] = {
    "cert": ("subject",),
    "record": ("patient", "record_id"),
    "records": ("patient", "label"),
    "request": ("request_id",),
    "grant": ("grant_id",),
    "policy": ("patient",),
    "head": (),
    "config": (),
}
"""``what`` -> the fields of that query (all ids, except ``label``: str or nil)."""

_LABEL = Optional(Text(128, min_len=1))  # core.ledger's bound on a record label


@dataclass(frozen=True, slots=True)
class PeerQuery(Message, kind="peer.query", row=True):
    """``{what, ...}``: the fields :data:`QUERY_FIELDS` names for ``what``; the others are None.
    ``min_height`` (optional, any ``what``): answer only from a state at least that
    high (read-your-writes: the height of a commit notice); a peer below it waits a
    bounded time for the block, then answers ``query.behind`` (ask another peer).
    ``owner_cert`` (optional, ``record`` only): see :attr:`OWNER_CERT`.
    ``held`` (optional, ``record`` only): the id (SHA-256, :data:`HELD_SIZE` bytes) of
    the record's store transaction the reader already holds and verified; when it is
    still the record's, the answer leaves the transaction out (:attr:`PeerQueryReply.HELD`).
    ``view`` (optional; ``request`` only: :data:`core.protocol.REQUEST_ANSWER`): answer
    with the fields that view names (:mod:`core.protocol._views`), not the whole entry."""

    what: str
    subject: str | None = None
    patient: str | None = None
    record_id: str | None = None
    label: str | None = None
    request_id: str | None = None
    grant_id: str | None = None
    min_height: int | None = None
    owner_cert: bool = False
    held: bytes | None = None
    view: str | None = None

    OWNER_CERT = "owner_cert"
    """``owner_cert: true`` (``record`` only): the answer, when the record exists and is
    shown, carries under this key the patient's certificate entry (``core.state``
    ``CertEntry``'s map, nil if none) read from the same committed state, so a doctor
    checks the store transaction's signature without a second (``cert``) round trip."""

    OPTIONS = ("min_height", OWNER_CERT, "held", "view")
    """The optional fields, in the row's order after the query's own."""

    def to_wire(self) -> list[Any]:  # type: ignore[override]
        """The row ``[what, <QUERY_FIELDS[what] in order>, min_height, owner_cert, held, view]``,
        the trailing options left out when nil / false (``["record", "alice", "r1"]``), an
        option before a given one sent as nil."""
        out: list[Any] = [self.what, *(getattr(self, name) for name in QUERY_FIELDS[self.what])]
        tail = [self.min_height, True if self.owner_cert else None, self.held, self.view]
        while tail and tail[-1] is None:
            tail.pop()
        out.extend(tail)
        return out

    @classmethod
    def _from_row(cls, obj: list, what: str) -> dict[str, Any]:
        if not obj or not isinstance(obj[0], str) or obj[0] not in QUERY_FIELDS:
            raise DecodeError(f"{what}: a query row starts with one of {', '.join(QUERY_FIELDS)}")
        names = ("what", *QUERY_FIELDS[obj[0]], *cls.OPTIONS)
        if len(obj) < len(names) - len(cls.OPTIONS):
            raise DecodeError(f"{what}: query {obj[0]!r} needs fields {', '.join(names[1:-len(cls.OPTIONS)])}")
        return dict(zip(names, obj))

    @classmethod
    def from_wire(cls, obj: Any, *, what: str | None = None) -> Self:
        """The row form, or the map ``{what, <fields>, min_height?, owner_cert?}``."""
        obj, where = cls._body(obj, what)
        if "what" not in obj:
            raise DecodeError(f"{where}: field 'what' is missing")
        form = Choice(tuple(QUERY_FIELDS)).decode(obj["what"], f"{where}: 'what'")
        values: dict[str, Any] = {}
        for name in QUERY_FIELDS[form]:
            if name == "label":
                values[name] = _LABEL.decode(obj.get(name), f"{where}: 'label'")
            elif name not in obj:
                raise DecodeError(f"{where}: query {form!r} needs field {name!r}")
            else:
                values[name] = Id().decode(obj[name], f"{where}: {name!r}")
        if obj.get("min_height") is not None:
            values["min_height"] = _HEIGHT.decode(obj["min_height"], f"{where}: 'min_height'")
        if obj.get(cls.OWNER_CERT) is not None:
            if form != "record":
                raise DecodeError(f"{where}: only a 'record' query takes 'owner_cert'")
            values["owner_cert"] = Bool().decode(obj[cls.OWNER_CERT], f"{where}: 'owner_cert'")
        if obj.get("held") is not None:
            if form != "record":
                raise DecodeError(f"{where}: only a 'record' query takes 'held'")
            values["held"] = Bytes(HELD_SIZE).decode(obj["held"], f"{where}: 'held'")
        if obj.get("view") is not None:
            views = QUERY_VIEWS.get(form)
            if not views:
                raise DecodeError(f"{where}: a {form!r} query takes no 'view'")
            values["view"] = Choice(tuple(views)).decode(obj["view"], f"{where}: 'view'")
        return cls(form, **values)


@dataclass(frozen=True, slots=True)
class PeerQueryReply(Message, kind="peer.query"):
    """The peer's committed state entry (a map), a list (``records``) or nil. Unlike
    the other replies the body is the value itself; its fields are the ledger's
    (core.ledger's state keys) and are checked by whoever reads them. A ``record``
    query with ``owner_cert`` gets the record's entry plus the key
    :attr:`PeerQuery.OWNER_CERT` (the patient's certificate entry or nil). ``held``: the
    entry's store transaction is the one the query named (:attr:`PeerQuery.held`), so it
    travels without it (:attr:`HELD`)."""

    value: dict | list | None
    held: bool = False

    HELD = "held"
    """``held: true`` in a record's answer: its ``tx`` is left out because it is the one the
    query's ``held`` named (the record is unchanged since the reader verified it); the
    other fields travel as always (those its body gives echoed). :meth:`from_wire` puts
    back the transaction the reader holds (``held=``), and refuses such an answer to a
    query that held none."""

    ECHO = "echo"
    """An entry that carries its transaction (``tx``: a record's ``store``) travels without
    the fields that are that transaction's body fields (:func:`echo_compact`), with the
    mask naming them under this key; :meth:`from_wire` restores them from the ``tx`` the
    reader checks anyway."""

    def to_wire(self) -> Any:  # type: ignore[override]
        value = self.value
        if isinstance(value, dict) and isinstance(value.get("tx"), bytes) and self.ECHO not in value:
            body = _tx_body(value["tx"])
            if body is not None:
                kept, mask = echo_compact(value, body)
                if mask:
                    kept[self.ECHO] = mask
                if self.held:
                    kept.pop("tx", None)
                    kept[self.HELD] = True
                if mask or self.held:
                    return kept
        return value

    @classmethod
    def from_wire(cls, obj: Any, *, what: str | None = None, held: bytes | None = None,
                  view: str | None = None) -> Self:
        """The reply's value; ``held``: the store transaction (its bytes) whose id the query
        sent as ``held``, put back into an answer that left it out; ``view``: the query's
        (:data:`core.protocol.REQUEST_ROW`: the array read back into the answer view's map)."""
        what = what or cls.kind
        if view == REQUEST_ROW:
            return cls(answer_from_row(obj))
        if isinstance(obj, dict) and cls.HELD in obj:
            obj = dict(Map().decode(obj, what))
            if Bool().decode(obj.pop(cls.HELD), f"{what}: {cls.HELD!r}") is not True:
                raise DecodeError(f"{what}: {cls.HELD!r} is true or absent")
            if held is None:
                raise DecodeError(f"{what}: the answer leaves out a transaction the query did not hold")
            if "tx" in obj:
                raise DecodeError(f"{what}: the answer both leaves out and sends the transaction")
            obj["tx"] = held
            if cls.ECHO not in obj:
                return cls(obj)
        if isinstance(obj, dict) and cls.ECHO in obj:
            obj = dict(Map().decode(obj, what))
            mask = Int(0, 2**MAX_ECHO_KEYS - 1).decode(obj.pop(cls.ECHO), f"{what}: {cls.ECHO!r}")
            body = _tx_body(obj.get("tx"))
            if body is None:
                raise DecodeError(f"{what}: an echoing entry needs its transaction ('tx')")
            return cls(echo_expand(obj, body, mask, what))
        if obj is None or isinstance(obj, dict):
            return cls(None if obj is None else Map().decode(obj, what))
        if isinstance(obj, list):
            return cls(list(ListOf(Map(), max_len=MAX_ENTRIES).decode(obj, what)))
        raise DecodeError(f"{what}: the reply must be a map, a list or nil")


# -- peer.audit -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerAudit(Message, kind="peer.audit"):
    """Only the patient itself may ask (``audit.forbidden``). One page of the trail:
    the events after ``after`` (the ``next`` of the previous page; omitted: from the
    start), at most :data:`core.ledger.AUDIT_PAGE` of them."""

    patient: str = wire(Id())
    after: str | None = wire(Optional(Text(MAX_AUDIT_KEY, min_len=1)), default=None, omit_none=True)


@dataclass(frozen=True, slots=True)
class PeerAuditReply(Message, kind="peer.audit"):
    """core.ledger audit entries, oldest first; ``next``: ask again with ``after = next``
    for the rest (omitted: this page ends the trail)."""

    events: tuple[dict, ...] = wire(ListOf(Map(), max_len=AUDIT_PAGE))
    next: str | None = wire(Optional(Text(MAX_AUDIT_KEY, min_len=1)), default=None, omit_none=True)


# -- peer.deliver_share -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerDeliverShare(Message, kind="peer.deliver_share", row=True):
    """A re-encryption key share sealed to the peer (``core.pre.SealedKeyShare``)."""

    grant_id: str = wire(Id())
    index: int = wire(_PROXY_INDEX)
    sealed: bytes = wire(Bytes(max_size=MAX_SEALED_SHARE))


@dataclass(frozen=True, slots=True)
class PeerDeliverShareReply(Message, kind="peer.deliver_share", row=True):
    ok: bool = wire(Bool(), default=True)


# -- peer.reencrypt ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)  # (optional fields between required ones)
class PeerReencrypt(Message, kind="peer.reencrypt", row=True):
    """``min_height`` (optional): the grant's block; a peer below it waits a bounded
    time for it (``query.behind`` after), so a grant just committed is found.
    ``patient`` and ``request_id`` (optional, nil in the row): the grant's own, which
    the peer reads from the committed grant (a doctor sends nil; given, they must be
    the grant's). The reply's signature covers the grant's request id, which the
    doctor checks against the one it holds."""

    grant_id: str = wire(Id())
    patient: str | None = wire(Optional(Id()), default=None)
    record_id: str = wire(Id())
    request_id: str | None = wire(Optional(Id()), default=None)
    min_height: int | None = wire(Optional(_HEIGHT), default=None, omit_none=True)


@dataclass(frozen=True, slots=True)
class PeerReencryptReply(Message, kind="peer.reencrypt", row=True):
    """The re-encrypted share (its proxy index is the share's first 4 bytes, its GT
    value compressed) and the peer's signature over it, which also covers the
    request id and the record's CID that the doctor already holds
    (:func:`core.protocol.make_reencrypt_reply`, :func:`core.protocol.verify_reencrypt_reply`)."""

    share: bytes = wire(Bytes(pre.ReencryptedShare.SIZE))
    signature: bytes = wire(Bytes(SIGNATURE_SIZE))


# -- peer.blocks ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerBlocks(BlockRange, kind="peer.blocks"):
    """Catch-up from another peer: ``{from, limit}`` (both required)."""


@dataclass(frozen=True, slots=True)
class PeerBlocksReply(BlockList, kind="peer.blocks"):
    pass


# -- topic events -----------------------------------------------------------------

_TEXT = Optional(Text(1024))


@dataclass(frozen=True, slots=True)
class Decision(Message, kind="events"):
    """The policy decision of an ``access_request`` (core.ledger's, cut to four fields)."""

    effect: str | None = wire(_TEXT)
    approval: str | None = wire(_TEXT)
    rule: str | None = wire(_TEXT)
    reason: str | None = wire(_TEXT)


@dataclass(frozen=True, slots=True)
class PeerEvent(Message, kind="events"):
    """Topic ``events``: a committed ``access_request``, ``grant``, ``deny_request``,
    ``revoke_grant`` or ``break_glass`` (``type``) concerning ``patient``."""

    height: int = wire(_HEIGHT)
    type: str = wire(Choice(EVENT_TYPES))
    patient: str = wire(Id())
    doctor: str | None = wire(Optional(Id()))
    request_id: str | None = wire(Optional(Id()))
    grant_id: str | None = wire(Optional(Id()))
    decision: Decision | None = wire(Optional(Nested(Decision)))


# -- topic family commits/<subject> ------------------------------------------------

NOTICE_TX_ID = 8
"""Bytes of the transaction id a commit notice carries (:meth:`CommitNotice.echoing`):
its first 8, enough for the submitter to tell its own pending transactions apart."""
COMMITS = "commits"
"""The topic family of commit notices: ``commits/<subject>`` carries :class:`CommitNotice`
for the transactions ``subject`` submitted, to ``subject`` only."""
MAX_EFFECT_ENTRIES = 4
OWN_KEY = ""
"""The effect key standing, in a commit notice, for the transaction's own effect key
(core.ledger ``effect_key``: ``request/<id>`` for an ``access_request``), which its
submitter derives from the transaction it holds (:meth:`CommitNotice.expand`)."""


def commits_topic(subject: str) -> str:
    """The topic on which a peer tells ``subject`` that its transactions committed."""
    return f"{COMMITS}/{subject}"


def commits_owner(topic: str) -> str | None:
    """The subject of a ``commits/<subject>`` topic (None for any other topic)."""
    prefix = COMMITS + "/"
    if not topic.startswith(prefix) or len(topic) == len(prefix):
        return None
    return topic[len(prefix):]


@dataclass(frozen=True, slots=True)
class CommitNotice(Message, kind="commits", row=True):
    """Topic ``commits/<subject>``: a transaction ``subject`` submitted was ordered
    into block ``height`` with ``mark`` (``"ok"`` or a core.ledger reason code).
    ``effect``: state key -> entry, as committed at ``height``, of the entries the
    transaction wrote that show its effect (core.ledger ``effect_key``: the request
    with its decision, the grant, the record, ...; for an ``access_request`` the
    ledger granted, the grant too); empty when the mark is not ``"ok"``."""

    tx_id: bytes = wire(Bytes(min_size=NOTICE_TX_ID, max_size=32))
    """The transaction's id (SHA-256 of its bytes), or its first :data:`NOTICE_TX_ID`
    bytes (:meth:`echoing`: the submitter holds the rest)."""
    height: int = wire(_HEIGHT)
    type: str | None = wire(Optional(Text(64, min_len=1)))
    """The transaction's type; nil in what :meth:`for_submitter` sends (its submitter knows it)."""
    mark: str = wire(Choice(tuple(REASON_CODES)))
    effect: dict = wire(Map(MAX_EFFECT_ENTRIES))
    echo: tuple[int, ...] | None = wire(Optional(ListOf(Int(0, 2**MAX_ECHO_KEYS - 1), max_len=MAX_EFFECT_ENTRIES)),
                                        default=None, omit_none=True)
    """Per effect entry (in order), the mask of the fields left out because they are the
    transaction body's own (:meth:`echoing`, :func:`echo_compact`); absent: none left out."""
    projected: bool = wire(Bool(), default=False)
    """The transaction's own effect entry (key :data:`OWN_KEY`) is its type's view for the
    submitter (:data:`core.protocol.NOTICE_VIEWS`), not the whole entry (a ``peer.query``
    reads that); false: whole entries."""

    def for_submitter(self, tx_type: str, body: Mapping[str, Any], own_key: str | None) -> "CommitNotice":
        """This notice as its submitter needs it: the entry under the transaction's own
        effect key ``own_key`` (core.ledger ``effect_key``) sent under :data:`OWN_KEY` and cut
        to the view :data:`core.protocol.NOTICE_VIEWS` names for ``tx_type`` (if any:
        :attr:`projected`), then :meth:`echoing` ``body``. Other entries (the grant the ledger
        made for an ``access_request``) stay whole. :meth:`expand` restores the key. The type is
        left out (nil): the submitter matches the notice to its own transaction by id."""
        notice = dataclasses.replace(self, type=None)
        if own_key is not None and own_key in self.effect and OWN_KEY not in self.effect:
            view = NOTICE_VIEWS.get(tx_type)
            row = NOTICE_ROWS.get(tx_type)
            if view is not None and row is not None:  # the view as its array (no field names)
                view = (lambda entry, v=view, r=row[0]: r(v(entry)))
            effect = {(OWN_KEY if key == own_key else key): (view(entry) if key == own_key and view else entry)
                      for key, entry in self.effect.items()}
            notice = dataclasses.replace(notice, effect=effect, projected=view is not None)
        return notice.echoing(body)

    def echoing(self, body: Mapping[str, Any]) -> "CommitNotice":
        """This notice with what its submitter holds left out: each effect entry's fields
        that repeat the transaction's ``body`` (:meth:`expand` puts them back), and the
        transaction id past its first :data:`NOTICE_TX_ID` bytes (:meth:`names`)."""
        effect: dict[str, Any] = {}
        masks = []
        for key, entry in self.effect.items():
            kept, mask = echo_compact(entry, body) if isinstance(entry, dict) else (entry, 0)
            effect[key] = kept
            masks.append(mask)
        if not any(masks):
            return dataclasses.replace(self, tx_id=self.tx_id[:NOTICE_TX_ID])
        return dataclasses.replace(self, tx_id=self.tx_id[:NOTICE_TX_ID], effect=effect, echo=tuple(masks))

    def names(self, tx_id: bytes) -> bool:
        """Whether this notice is about the transaction ``tx_id`` (its id, or the id's
        first bytes as :meth:`echoing` leaves them)."""
        return tx_id[:len(self.tx_id)] == self.tx_id

    def expand(self, body: Mapping[str, Any], own_key: str | None = None, tx_type: str | None = None) -> dict:
        """The effect with the echoed fields restored from the submitted transaction's
        ``body`` and the entry under :data:`OWN_KEY` put back under ``own_key`` (the
        transaction's core.ledger ``effect_key``), read back into its map when it came as
        its type's row (``tx_type``: :data:`core.protocol._views.NOTICE_ROWS`); DecodeError
        for masks that do not fit it, or an :data:`OWN_KEY` entry that cannot be put back."""
        what = f"{self.kind}: 'echo'"
        masks = self.echo if self.echo is not None else (0,) * len(self.effect)
        if len(masks) != len(self.effect):
            raise DecodeError(f"{what} must have one mask per effect entry")
        if OWN_KEY in self.effect and (own_key is None or own_key == OWN_KEY or own_key in self.effect):
            raise DecodeError(f"{self.kind}: an own-key entry needs the transaction's effect key, once")
        out = {}
        row = NOTICE_ROWS.get(tx_type) if tx_type is not None and self.projected else None
        for (key, entry), mask in zip(self.effect.items(), masks):
            if key == OWN_KEY and isinstance(entry, list):  # its view as a row
                if row is None:
                    raise DecodeError(f"{self.kind}: an own entry as an array needs its type's row")
                entry = row[1](entry)
            if mask and not isinstance(entry, dict):
                raise DecodeError(f"{what}: only a map entry echoes fields")
            out[own_key if key == OWN_KEY else key] = echo_expand(entry, body, mask, what) if mask else entry
        return out
