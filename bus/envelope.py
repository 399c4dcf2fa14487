"""Envelopes: the unit the bus moves between agents.

Two wire forms. The full (signed) form, version 1: a msgpack array of 11
elements, in this order::

    [version, type, kind, msg_id, correlation_id, sender, recipient,
     timestamp_ms, nonce, body, signature]

The compact form, version 2, what channels and agents of one node carry (the
channel authenticates and orders every frame, so no nonce, signature or
timestamp travels). Requests, fire-and-forget messages and events: a msgpack
array of 8 elements::

    [2, type, kind, msg_id, nil, sender, recipient, body]

where ``msg_id`` is an unsigned integer unique among the sending node's
envelopes while the node runs (:func:`encode_compact`) and ``kind`` a string,
or, on a request or a fire-and-forget message whose kind the application
registered a code for (:func:`register_kind_codes`), that code (an unsigned
int up to :data:`MAX_KIND_CODE`; an event's topic too, a per-recipient topic
family's as its prefix's code). On a channel, ``sender`` and ``recipient`` may
be the agents' aliases there (small ints, :mod:`bus.channel` "Aliases"),
read back to the names through the channel's tables (:func:`decode_envelope`'s
``aliases``). Replies and error replies: a msgpack array of 4 elements::

    [2, type, correlation_id, body]

with ``correlation_id`` the request's ``msg_id``, and no kind, id, sender or
recipient: the requester knows what it asked and whom, its node finds the
asking endpoint by the correlation id, and the endpoint accepts the reply only
on the connection its request left on (or from the agent asked, on the same
node). A decoded compact envelope has ``timestamp`` 0 and empty ``nonce`` and
``signature``; a decoded compact reply has ``msg_id`` 0 and an empty
``recipient`` and ``sender`` (the node fills the sender in for one from an
agent of its own). A request or message with a code no kind was registered for decodes
with the kind ``bus.code.<n>``, which no handler can have (``bus.`` kinds are
the bus's): it is refused as any unknown kind (``unknown-kind``).

The signature covers ``SIGNING_DOMAIN + msgpack([first 10 elements])``, where
the msgpack encoding is the canonical one produced by msgpack-python's packer
(``use_bin_type=True``: minimal integers, str for text, bin for bytes, maps in
their given order, float64). The receiver re-encodes the decoded fields: the
signature binds the values a handler will see, whatever wire encoding of
them arrived.

Values are msgpack's plain types only (nil, bool, int, float, str, bin, arrays,
maps): an envelope holding an extension type anywhere, the timestamp extension
(-1) included, is ``malformed``.

Everything here is sans-I/O: the clock, the signer, the key directory and the
verifier come in as arguments.
"""

from __future__ import annotations

__all__ = [
    "PROTOCOL_VERSION",
    "SIGNING_DOMAIN",
    "ID_SIZE",
    "NONCE_SIZE",
    "MAX_KIND_LENGTH",
    "MAX_AGENT_ID_LENGTH",
    "MAX_SIGNATURE_SIZE",
    "REJECT_REASONS",
    "MessageType",
    "Envelope",
    "Signer",
    "Directory",
    "Verifier",
    "decode_envelope",
    "verify_envelope",
    "sign_wire",
    "encode_compact",
    "encode_compact_reply",
    "COMPACT_VERSION",
    "MAX_KIND_CODE",
    "register_kind_codes",
    "kind_codes",
    "ReplayGuard",
]

import dataclasses
import enum
import heapq
import secrets
import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import msgpack

from .errors import EnvelopeError
from .limits import DEFAULT_MAX_DEPTH, DEFAULT_MAX_OBJECTS
from .structure import StructureError, check_structure

PROTOCOL_VERSION = 1
COMPACT_VERSION = 2
SIGNING_DOMAIN = b"emrshare/v1/envelope\x00"
ID_SIZE = 16
NONCE_SIZE = 16
MAX_KIND_LENGTH = 128
MAX_AGENT_ID_LENGTH = 256
MAX_SIGNATURE_SIZE = 512
_MAX_TIMESTAMP = 2**63 - 1
_MAX_COMPACT_ID = 2**64 - 1
_FIELD_COUNT = 11
_COMPACT_FIELD_COUNT = 8
_COMPACT_REPLY_FIELD_COUNT = 4
MAX_KIND_CODE = 2**16 - 1
"""The largest kind code (:func:`register_kind_codes`); codes up to 127 cost one byte."""
_UNKNOWN_CODE = "bus.code."
"""The kind of a compact request or message whose code no kind was registered for:
``bus.`` kinds are the bus's own, so no handler has it (refused ``unknown-kind``)."""

REJECT_REASONS = (
    "malformed",
    "version",
    "misaddressed",
    "stale",
    "unknown-sender",
    "bad-signature",
    "replay",
    "replay-cache-full",
    "unproven-sender",
)

Signer = Callable[[bytes], bytes]
"""Signs the signing input; returns the signature bytes (agents pass ECDSA)."""
Directory = Callable[[str], "bytes | None"]
"""Agent id -> registered public key, or None when the agent is unknown."""
Verifier = Callable[[bytes, bytes, bytes], bool]
"""(public key, message, signature) -> valid?; must not raise (errors = False)."""


class MessageType(enum.IntEnum):
    """What an envelope is for; travels as a small integer."""

    SEND = 0  # fire-and-forget
    REQUEST = 1  # expects a REPLY or ERROR with correlation_id = its msg_id
    REPLY = 2
    ERROR = 3  # body {"code": str, "message": str}
    EVENT = 4  # publish/subscribe delivery; kind is the topic


_TYPE_CODES = frozenset(t.value for t in MessageType)
_TYPE_OF = tuple(MessageType)  # code -> MessageType without an enum call (codes are 0..4)
_REPLY_TYPES = (MessageType.REPLY, MessageType.ERROR)


_kind_codes: dict[str, int] = {}  # kind -> code (read without the lock: a dict lookup is atomic)
_code_kinds: dict[int, str] = {}  # code -> kind
_codes_lock = threading.Lock()


def register_kind_codes(codes: Mapping[str, int]) -> None:
    """Add ``codes`` (kind -> code) to the process's table of well-known kinds: a compact
    request or fire-and-forget message of such a kind carries the code (a small int)
    instead of the kind's string, and a received code is read back as its kind. The
    table is append-only: registering a pair again is a no-op; a kind or a code already
    registered with another partner raises ValueError (and nothing is added). The
    codes are the application's (both ends must register the same ones before they
    talk): never reuse one for another kind, never renumber. ``bus.`` kinds are never
    coded. An event topic registered travels as its code too; a registered "kind" that
    ends in ``/`` is a family of per-recipient topics: an event whose topic is it
    followed by the event's recipient id travels as its code (read back as the prefix
    and the recipient)."""
    items = list(codes.items())
    for kind, code in items:
        if type(kind) is not str or not 0 < len(kind) <= MAX_KIND_LENGTH or kind.startswith("bus."):
            raise ValueError(f"kind {kind!r} cannot be coded (a non-empty str of at most {MAX_KIND_LENGTH} "
                             f"chars, not a bus. kind)")
        if type(code) is not int or not 0 <= code <= MAX_KIND_CODE:
            raise ValueError(f"the code of {kind!r} must be an int in 0..{MAX_KIND_CODE}, not {code!r}")
    with _codes_lock:
        kinds, codes_ = dict(_kind_codes), dict(_code_kinds)
        for kind, code in items:
            if kinds.get(kind, code) != code:
                raise ValueError(f"{kind!r} has the code {kinds[kind]} already, not {code}")
            if codes_.get(code, kind) != kind:
                raise ValueError(f"code {code} belongs to {codes_[code]!r} already, not {kind!r}")
            kinds[kind], codes_[code] = code, kind
        _code_kinds.update(codes_)  # (the code first: a kind is never sent coded before it can be read back)
        _kind_codes.update(kinds)


def kind_codes() -> Mapping[str, int]:
    """A read-only copy of the process's kind codes (kind -> code)."""
    with _codes_lock:
        return MappingProxyType(dict(_kind_codes))


_packers = threading.local()
_KEEP_PACKER_BYTES = (4 << 20) + (64 << 10)
"""A thread keeps its msgpack packer (and the buffer it grew) after packing at most
this many bytes; after a larger value it starts a fresh one (the memory goes back).
A storage read's 2 MiB piece, with its envelope a little over 2 MiB, stays under it
(a fresh packer per piece grew its buffer by reallocation, each piece again)."""


def _packb(value: Any) -> bytes:
    """``msgpack.packb(value)`` through this thread's packer: packb makes a packer
    with a fresh 1 MiB buffer per call and grows it for a large body (a malloc, a
    realloc and page faults per envelope); a kept one packs into memory it has."""
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    try:
        packed = packer.pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        _packers.packer = None  # whatever it holds of the failed value goes with it
        raise EnvelopeError("malformed", f"body cannot be encoded as msgpack: {exc}") from None
    except BaseException:
        _packers.packer = None
        raise
    if len(packed) > _KEEP_PACKER_BYTES:
        _packers.packer = None
    return packed


def _reject_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


_PLAIN = frozenset((type(None), bool, int, float, str, bytes))  # (a set: one hash, not six comparisons)


def _only_plain(value: Any, max_depth: int = DEFAULT_MAX_DEPTH - 1) -> bool:
    """Whether ``value`` holds nothing but nil, bool, int, float, str, bin, arrays and
    maps, nested at most ``max_depth`` non-empty arrays or maps deep. msgpack decodes
    the timestamp extension (-1) itself, without calling the ``ext_hook`` that refuses
    every other extension type: this catches it. The walk goes level by level, so the
    depth costs nothing extra (a frame too short for a structure walk is bounded here)."""
    level = [value]
    while level:
        if max_depth < 0:
            return False
        max_depth -= 1
        below: list[Any] = []
        for v in level:
            t = type(v)
            if t is list:
                below.extend(v)
            elif t is dict:
                below.extend(v.keys())
                below.extend(v.values())
            elif t not in _PLAIN:
                return False
        level = below
    return True


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    """One message. ``timestamp`` is integer milliseconds since the Unix epoch
    (exact and canonical in msgpack, unlike floats). A compact one (``version``
    2) has an int ``msg_id`` (and ``correlation_id``), no ``kind`` if it is a
    reply, ``timestamp`` 0 and empty ``nonce`` and ``signature``."""

    version: int
    type: MessageType
    kind: str | None
    msg_id: bytes | int
    correlation_id: bytes | int | None
    sender: str
    recipient: str
    timestamp: int
    nonce: bytes
    body: Any
    signature: bytes

    def _signed_fields(self) -> list[Any]:
        return [
            self.version,
            int(self.type),
            self.kind,
            self.msg_id,
            self.correlation_id,
            self.sender,
            self.recipient,
            self.timestamp,
            self.nonce,
            self.body,
        ]

    def signing_input(self) -> bytes:
        """The exact bytes the sender signs: domain tag + canonical fields."""
        return SIGNING_DOMAIN + _packb(self._signed_fields())

    def encode(self) -> bytes:
        """The wire form (a frame payload), in the envelope's own form (full or compact)."""
        if self.version == COMPACT_VERSION:
            return encode_compact(self.type, self.kind, self.msg_id, self.correlation_id, self.sender,  # type: ignore[arg-type]
                                  self.recipient, self.body)
        return _packb([*self._signed_fields(), self.signature])

    @classmethod
    def create(cls, **fields: Any) -> Envelope:
        """A new envelope signed with ``signer``; fresh random id and nonce
        unless given. Takes the keyword arguments of :meth:`create_encoded`."""
        return cls.create_encoded(**fields)[0]

    @classmethod
    def create_encoded(
        cls,
        *,
        type: MessageType,
        kind: str,
        sender: str,
        recipient: str,
        body: Any,
        timestamp: int,
        signer: Signer | None,
        correlation_id: bytes | None = None,
        msg_id: bytes | None = None,
        nonce: bytes | None = None,
        with_nonce: bool = True,
    ) -> tuple[Envelope, bytes]:
        """A new envelope signed with ``signer`` and its wire bytes (one encoding
        pass); ``msg_id`` and ``nonce`` are fresh random bytes unless given.
        ``signer=None`` leaves the signature empty: an envelope for a channel or
        for an agent of the same node (:func:`sign_wire` signs it later);
        ``with_nonce=False`` leaves the nonce empty too (it only feeds signed
        mode's replay cache: a channel's counters stop replays)."""
        if nonce is None and not with_nonce:
            nonce = b""
        if msg_id is None or nonce is None:
            fresh = secrets.token_bytes(ID_SIZE + NONCE_SIZE)
            msg_id = fresh[:ID_SIZE] if msg_id is None else msg_id
            nonce = fresh[ID_SIZE:] if nonce is None else nonce
        mtype = MessageType(type)
        _check_values(PROTOCOL_VERSION, mtype, kind, msg_id, correlation_id, sender, recipient, timestamp, nonce, body)
        fields = [PROTOCOL_VERSION, int(mtype), kind, msg_id, correlation_id, sender, recipient, timestamp, nonce, body]
        if signer is None:  # one pass: a large body is copied once, not three times
            env = cls(PROTOCOL_VERSION, mtype, kind, msg_id, correlation_id, sender, recipient, timestamp, nonce, body, b"")
            return env, _packb([*fields, b""])
        packed = _packb(fields)
        signature = _signature(signer, packed)
        env = cls(PROTOCOL_VERSION, mtype, kind, msg_id, correlation_id, sender, recipient, timestamp, nonce, body, signature)
        # fixarray(10) -> fixarray(11): the same fields, then the signature
        return env, b"".join((b"\x9b", memoryview(packed)[1:], _packb(signature)))


def _slot_constructor(cls: type) -> Callable[..., Any]:
    """A constructor of the frozen, slotted dataclass ``cls`` taking its fields in order,
    for the hot paths. It fills a twin instance of a plain class with the same slots
    (plain attribute stores, no descriptor calls) and then makes it a ``cls``
    (``__class__`` assignment, which Python allows between classes of one memory
    layout: the same slots in the same order, and checks): about half the cost of
    filling the slots through their descriptors, a third of the generated
    ``__init__``'s (``object.__setattr__`` per field). The instance is the same:
    equal, hashed, frozen and replaced as any other. Where the twin is refused, the
    slots are filled through their descriptors."""
    names = [f.name for f in dataclasses.fields(cls)]
    twin = type(f"_{cls.__name__}Fill", (), {"__slots__": tuple(names)})
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls, "_twin": twin}
    for i, name in enumerate(names):
        namespace[f"_set{i}"] = getattr(cls, name).__set__
    args = ", ".join(names)
    try:
        probe = object.__new__(twin)
        probe.__class__ = cls  # (a layout Python refuses to swap raises TypeError here)
        lines = [f"def new({args}):", "    obj = _new(_twin)"]
        lines += [f"    obj.{name} = {name}" for name in names]
        lines += ["    obj.__class__ = _cls", "    return obj"]
    except TypeError:
        lines = [f"def new({args}):", "    obj = _new(_cls)"]
        lines += [f"    _set{i}(obj, {name})" for i, name in enumerate(names)]
        lines.append("    return obj")
    exec("\n".join(lines), namespace)  # (the names are the dataclass's own fields)
    return namespace["new"]


_new_envelope = _slot_constructor(Envelope)


def encode_compact(mtype: int, kind: str | None, msg_id: int, correlation_id: int | None, sender: str,
                   recipient: str, body: Any, aliases: tuple[int | None, int | None] | None = None) -> bytes:
    """A compact (version 2) envelope's wire bytes: what a channel or an agent of the
    same node carries. A reply or error reply is :func:`encode_compact_reply`'s form
    (``kind``, ``msg_id``, ``sender`` and ``recipient`` are dropped); a request's or
    fire-and-forget message's kind with a registered code travels as the code. The
    values are checked as :func:`decode_envelope` checks them, except the body's
    content (msgpack refuses what it cannot encode: EnvelopeError ``malformed``).
    ``aliases``: (the sender's, the recipient's) alias on the channel that will carry
    it (:mod:`bus.channel`, "Aliases"), written in place of the name where not None;
    the names are checked all the same."""
    if mtype not in _TYPE_CODES:
        raise EnvelopeError("malformed", "unknown message type")
    if mtype == 2 or mtype == 3:  # a reply or an error reply
        return encode_compact_reply(mtype, correlation_id, body)  # type: ignore[arg-type]
    if correlation_id is not None:
        raise EnvelopeError("malformed", "correlation_id must be set exactly on replies and error replies")
    if type(kind) is not str or not 0 < len(kind) <= MAX_KIND_LENGTH:
        _check_str("kind", kind, MAX_KIND_LENGTH)
    code = _kind_codes.get(kind)  # type: ignore[arg-type]
    if code is not None:
        kind = code  # type: ignore[assignment]
    elif mtype == 4 and type(recipient) is str and kind.endswith(recipient):  # type: ignore[union-attr]
        # an event of a per-recipient topic family ("<prefix>/<recipient>"): the prefix's code
        prefix = kind[:len(kind) - len(recipient)]  # type: ignore[index]
        if prefix.endswith("/"):
            kind = _kind_codes.get(prefix, kind)  # type: ignore[arg-type]
    if type(msg_id) is not int or not 0 <= msg_id <= _MAX_COMPACT_ID:
        raise EnvelopeError("malformed", "msg_id must be an unsigned 64-bit int")
    if type(sender) is not str or not 0 < len(sender) <= MAX_AGENT_ID_LENGTH:
        _check_str("sender", sender, MAX_AGENT_ID_LENGTH)
    if type(recipient) is not str or not 0 < len(recipient) <= MAX_AGENT_ID_LENGTH:
        _check_str("recipient", recipient, MAX_AGENT_ID_LENGTH)
    if aliases is not None:
        s_alias, r_alias = aliases
        if s_alias is not None:
            sender = s_alias  # type: ignore[assignment]
        if r_alias is not None:
            recipient = r_alias  # type: ignore[assignment]
    return _packb([COMPACT_VERSION, int(mtype), kind, msg_id, None, sender, recipient, body])


def encode_compact_reply(mtype: int, correlation_id: int, body: Any) -> bytes:
    """A compact reply's or error reply's wire bytes, ``[2, type, correlation_id, body]``:
    no kind, id, sender or recipient (see the module docstring)."""
    if mtype != 2 and mtype != 3:
        raise EnvelopeError("malformed", "a compact reply is a reply or an error reply")
    if type(correlation_id) is not int or not 0 <= correlation_id <= _MAX_COMPACT_ID:
        raise EnvelopeError("malformed", "a reply's correlation_id must be an unsigned 64-bit int")
    if mtype == 3:
        _check_error_body(body)
    elif (type(body) is list and 0 < len(body) <= 15 and type(body[0]) in _BULK_TYPES
          and len(body[0]) >= IN_PLACE_BIN):
        return _pack_bulk_reply(correlation_id, body)
    return _packb([COMPACT_VERSION, int(mtype), correlation_id, body])


_BULK_TYPES = (bytes, bytearray)


def _pack_bulk_reply(correlation_id: int, body: list[Any]) -> bytes:
    """``_packb([2, 2, correlation_id, body])`` for a body array whose first item is a
    large bin (a storage read's piece), the same bytes: the bin is copied once, into
    the result, not into the packer's buffer and then out of it."""
    data = body[0]
    n = len(data)
    if n > 0xFFFFFFFF:
        return _packb([COMPACT_VERSION, 2, correlation_id, body])  # (msgpack refuses it as usual)
    head = _packb([COMPACT_VERSION, 2, correlation_id])  # 0x93 ...: made a 4-item array below
    rest = [_packb(item) for item in body[1:]]
    return b"".join([b"\x94", memoryview(head)[1:], bytes((0x90 | len(body), _BIN32)), n.to_bytes(4, "big"),
                     data, *rest])


def _signature(signer: Signer, packed_fields: bytes) -> bytes:
    signature = signer(SIGNING_DOMAIN + packed_fields)
    if not isinstance(signature, bytes) or not 0 < len(signature) <= MAX_SIGNATURE_SIZE:
        raise EnvelopeError("malformed", "signer returned no valid signature bytes")
    return signature


_UNSIGNED_TAIL = b"\xc4\x00"  # msgpack bin 8 of length 0: the empty signature


def sign_wire(unsigned: bytes, signer: Signer) -> bytes:
    """The signed wire form of an unsigned envelope's wire bytes (as
    :meth:`Envelope.create_encoded` makes them without a signer): what signed
    mode sends where a channel would carry the unsigned bytes."""
    if unsigned[:1] != b"\x9b" or not unsigned.endswith(_UNSIGNED_TAIL):
        raise EnvelopeError("malformed", "not an unsigned envelope")
    fields = unsigned[1:-len(_UNSIGNED_TAIL)]
    return unsigned[:-len(_UNSIGNED_TAIL)] + _packb(_signature(signer, b"\x9a" + fields))


def _check_str(name: str, value: Any, max_len: int) -> None:
    if type(value) is not str or not 0 < len(value) <= max_len:
        raise EnvelopeError("malformed", f"{name} must be a non-empty str of at most {max_len} chars")


def _check_bytes(name: str, value: Any, size: int) -> None:
    if type(value) is not bytes or len(value) != size:
        raise EnvelopeError("malformed", f"{name} must be {size} bytes")


def _check_values(version, mtype, kind, msg_id, corr, sender, recipient, timestamp, nonce, body) -> None:
    if type(version) is not int:
        raise EnvelopeError("malformed", "version must be an int")
    if version != PROTOCOL_VERSION:
        raise EnvelopeError("version", f"unsupported protocol version {version}")
    _check_str("kind", kind, MAX_KIND_LENGTH)
    _check_bytes("msg_id", msg_id, ID_SIZE)
    if corr is not None:
        _check_bytes("correlation_id", corr, ID_SIZE)
    needs_corr = mtype in (MessageType.REPLY, MessageType.ERROR)
    if needs_corr != (corr is not None):
        raise EnvelopeError(
            "malformed", "correlation_id must be set exactly on replies and error replies"
        )
    _check_str("sender", sender, MAX_AGENT_ID_LENGTH)
    _check_str("recipient", recipient, MAX_AGENT_ID_LENGTH)
    if type(timestamp) is not int or not 0 <= timestamp <= _MAX_TIMESTAMP:
        raise EnvelopeError("malformed", "timestamp must be a non-negative int64 (ms)")
    if type(nonce) is not bytes or len(nonce) not in (0, NONCE_SIZE):
        raise EnvelopeError("malformed", f"nonce must be empty or {NONCE_SIZE} bytes")
    if mtype == MessageType.ERROR:
        _check_error_body(body)


def _check_error_body(body: Any) -> None:
    if (
        type(body) is not dict
        or len(body) != 2
        or type(body.get("code")) is not str
        or type(body.get("message")) is not str
    ):
        raise EnvelopeError("malformed", "error reply body must be {code: str, message: str}")


def decode_envelope(
    data: bytes, *, max_objects: int = DEFAULT_MAX_OBJECTS, max_depth: int = DEFAULT_MAX_DEPTH,
    aliases: Aliases | None = None,
) -> Envelope:
    """Parse and shape-check a wire envelope (does not verify the signature).

    At most ``max_objects`` msgpack objects are decoded: longer data is first
    checked by structure (:func:`bus.structure.check_structure`, also bounding
    the nesting depth), so nothing is built from a frame over the limits.
    Raises only :class:`EnvelopeError` (reason ``malformed`` or ``version``).
    ``aliases``: (the sending side's alias -> name, ours) on the channel it came on:
    a compact envelope's sender or recipient given as an alias is read back to the
    name (an alias not in them is malformed; without them every alias is).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EnvelopeError("malformed", f"envelope must be bytes, not {type(data).__name__}")
    if len(data) > max_objects:
        try:
            check_structure(data, max_objects=max_objects, max_depth=max_depth)
        except StructureError as exc:
            raise EnvelopeError("malformed", f"refused by structure: {exc}") from None
    return _decode_checked(data, max_objects, max_depth, aliases)


Aliases = tuple[Mapping[int, str], Mapping[int, str]]
"""(the other side's aliases, ours) of a channel: alias -> agent id."""


def _decode_checked(data: bytes, max_objects: int, max_depth: int = DEFAULT_MAX_DEPTH,
                    aliases: Aliases | None = None) -> Envelope:
    """decode_envelope for bytes holding at most ``max_objects`` objects (no longer
    than that, or counted by structure); the body's nesting is checked here."""
    try:  # (raw=False, use_list=True, strict_map_key=True: msgpack's defaults from 1.0, not passed per call)
        fields = msgpack.unpackb(
            data, ext_hook=_reject_ext, max_array_len=max_objects, max_map_len=max_objects, max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types (ValueError, ExtraData, ...)
        raise EnvelopeError("malformed", f"not a msgpack value: {type(exc).__name__}") from None
    count = len(fields) if type(fields) is list else -1
    if count == _COMPACT_FIELD_COUNT:
        env = _compact_fields(fields, aliases)
    elif count == _COMPACT_REPLY_FIELD_COUNT:
        env = _compact_reply_fields(fields)
    elif count != _FIELD_COUNT:
        raise EnvelopeError("malformed", f"envelope must be an array of {_FIELD_COUNT} fields "
                                         f"(or compact: {_COMPACT_FIELD_COUNT}, a reply {_COMPACT_REPLY_FIELD_COUNT})")
    else:
        version, mtype, kind, msg_id, corr, sender, recipient, ts, nonce, body, sig = fields
        if type(mtype) is not int or mtype not in _TYPE_CODES:
            raise EnvelopeError("malformed", "unknown message type")
        if type(sig) is not bytes or len(sig) > MAX_SIGNATURE_SIZE:
            raise EnvelopeError("malformed", f"signature must be 0..{MAX_SIGNATURE_SIZE} bytes")
        mtype = _TYPE_OF[mtype]
        _check_values(version, mtype, kind, msg_id, corr, sender, recipient, ts, nonce, body)
        env = _new_envelope(version, mtype, kind, msg_id, corr, sender, recipient, ts, nonce, body, sig)
    # every field but the body was checked for its exact plain type above
    body = env.body
    if type(body) not in _PLAIN and not ((type(body) is list or type(body) is dict)
                                         and _only_plain(body, max_depth - 1)):  # (the envelope is one level)
        raise EnvelopeError("malformed", f"the body holds a msgpack extension type (e.g. a timestamp) "
                                         f"or nests deeper than {max_depth}")
    return env


IN_PLACE_BIN = 256 * 1024
"""A compact reply whose body is an array starting with a bin of at least this many
bytes, decoded from a frame only the receiver holds (a bytearray), gets that bin as
the frame itself, trimmed to it (:func:`decode_reply_in_place`): no copy of it."""
_UINT_TAIL = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}  # msgpack uint 8/16/32/64: the bytes after the tag
_BIN32 = 0xC6


def decode_reply_in_place(frame: bytearray, max_objects: int = DEFAULT_MAX_OBJECTS,
                          max_depth: int = DEFAULT_MAX_DEPTH) -> Envelope | None:
    """The compact reply in ``frame`` (a bytearray nobody else holds, within the limits:
    its structure was checked), when it is ``[2, 2, correlation_id, [bin, ...]]`` with a
    first bin of at least :data:`IN_PLACE_BIN` bytes: that bin is ``frame`` itself, cut
    down to it in place (O(1) at both ends), and the body's other items are decoded and
    checked as :func:`decode_envelope` checks a body. None, with ``frame`` untouched,
    for anything else (the caller decodes it the usual way, which judges it)."""
    size = len(frame)
    if size < IN_PLACE_BIN or frame[0] != 0x94 or frame[1] != COMPACT_VERSION or frame[2] != 2:
        return None  # (not a 4-item array [2, REPLY, ...])
    tag = frame[3]
    if tag < 0x80:
        corr, pos = tag, 4
    else:
        width = _UINT_TAIL.get(tag)
        if width is None:
            return None
        corr, pos = int.from_bytes(frame[4 : 4 + width], "big"), 4 + width
    head = frame[pos]
    if not 0x91 <= head <= 0x9F or frame[pos + 1] != _BIN32:  # a fixarray of 1..15 items, a bin32 first
        return None
    n = int.from_bytes(frame[pos + 2 : pos + 6], "big")
    start = pos + 6
    end = start + n
    if n < IN_PLACE_BIN or end > size:
        return None
    others: list[Any] = []
    if head > 0x91 or end < size:
        unpacker = msgpack.Unpacker(ext_hook=_reject_ext, max_array_len=max_objects, max_map_len=max_objects,
                                    max_ext_len=0, max_buffer_size=max(size - end, 1))
        try:
            with memoryview(frame) as view:
                unpacker.feed(view[end:])
            for _ in range(head - 0x91):
                others.append(unpacker.unpack())
            if unpacker.tell() != size - end:
                return None  # bytes after the reply
        except Exception:  # (msgpack raises many types; the usual decode judges the frame)
            return None
        if not _only_plain(others, max_depth - 1):
            return None
    del frame[end:]
    del frame[:start]  # (O(1): a bytearray drops its first bytes by moving its start)
    return _new_envelope(COMPACT_VERSION, MessageType.REPLY, None, 0, corr, "", "", 0, b"", [frame, *others], b"")


def _compact_fields(fields: list[Any], aliases: Aliases | None = None) -> Envelope:
    """The Envelope a decoded compact (version 2) request, message or event array holds, checked
    (a sender or recipient given as an alias read back through ``aliases``)."""
    version, mtype, kind, msg_id, corr, sender, recipient, body = fields
    mtype = _compact_type(version, mtype)
    if type(msg_id) is not int or not 0 <= msg_id <= _MAX_COMPACT_ID:
        raise EnvelopeError("malformed", "msg_id must be an unsigned 64-bit int")
    if mtype in _REPLY_TYPES:
        raise EnvelopeError("malformed", f"a compact reply is an array of {_COMPACT_REPLY_FIELD_COUNT} fields")
    family = False
    if type(kind) is int:
        kind = _kind_of(kind)
        family = kind[-1] == "/" and mtype is MessageType.EVENT  # (completed with the recipient below)
    elif type(kind) is not str or not 0 < len(kind) <= MAX_KIND_LENGTH:
        _check_str("kind", kind, MAX_KIND_LENGTH)
    if corr is not None:
        raise EnvelopeError("malformed", "correlation_id must be set exactly on replies and error replies")
    if type(sender) is not str or not 0 < len(sender) <= MAX_AGENT_ID_LENGTH:
        if type(sender) is int:
            sender = _aliased("sender", sender, aliases[0] if aliases is not None else None)
        else:
            _check_str("sender", sender, MAX_AGENT_ID_LENGTH)
    if type(recipient) is not str or not 0 < len(recipient) <= MAX_AGENT_ID_LENGTH:
        if type(recipient) is int:
            recipient = _aliased("recipient", recipient, aliases[1] if aliases is not None else None)
        else:
            _check_str("recipient", recipient, MAX_AGENT_ID_LENGTH)
    if family:
        kind = _family_topic(kind, recipient)
    return _new_envelope(COMPACT_VERSION, mtype, kind, msg_id, corr, sender, recipient, 0, b"", body, b"")


def _family_topic(prefix: str, recipient: str) -> str:
    """The topic a coded per-recipient topic family stands for in an event to ``recipient``."""
    topic = prefix + recipient
    if len(topic) > MAX_KIND_LENGTH:
        raise EnvelopeError("malformed", f"kind must be a non-empty str of at most {MAX_KIND_LENGTH} chars")
    return topic


def _aliased(field: str, alias: int, names: Mapping[int, str] | None) -> str:
    """The agent id ``alias`` stands for on the channel (EnvelopeError if it stands for none)."""
    name = names.get(alias) if names is not None else None
    if name is None:
        raise EnvelopeError("malformed", f"the {field} is an alias this channel never gave")
    return name


def _compact_type(version: Any, mtype: Any) -> MessageType:
    """A compact envelope's message type, after checking its version and type fields."""
    if type(version) is not int:
        raise EnvelopeError("malformed", "version must be an int")
    if version != COMPACT_VERSION:
        raise EnvelopeError("version", f"unsupported compact envelope version {version}")
    if type(mtype) is not int or mtype not in _TYPE_CODES:
        raise EnvelopeError("malformed", "unknown message type")
    return _TYPE_OF[mtype]


def _kind_of(code: int) -> str:
    """The kind a received code stands for (``bus.code.<n>`` for one never registered)."""
    if not 0 <= code <= MAX_KIND_CODE:
        raise EnvelopeError("malformed", f"a kind code must be in 0..{MAX_KIND_CODE}")
    kind = _code_kinds.get(code)
    return kind if kind is not None else _UNKNOWN_CODE + str(code)


def _compact_reply_fields(fields: list[Any]) -> Envelope:
    """The Envelope a decoded compact reply (or error reply) array holds, checked."""
    version, mtype, corr, body = fields
    mtype = _compact_type(version, mtype)
    if mtype not in _REPLY_TYPES:
        raise EnvelopeError("malformed", f"an array of {_COMPACT_REPLY_FIELD_COUNT} fields is a compact reply")
    if type(corr) is not int or not 0 <= corr <= _MAX_COMPACT_ID:
        raise EnvelopeError("malformed", "a reply's correlation_id must be an unsigned 64-bit int")
    if mtype is MessageType.ERROR:
        _check_error_body(body)
    return _new_envelope(COMPACT_VERSION, mtype, None, 0, corr, "", "", 0, b"", body, b"")


def _decode_local(data: bytes, sender: str = "") -> Envelope:
    """The envelope in wire bytes this node's own endpoint built (full or compact), for
    delivery to an agent of the same node: a fresh copy of every value (sender and
    handler share nothing mutable), with no re-check of what the sender's endpoint
    checked when it encoded them. Extension types are still refused (the packer
    writes any ``msgpack.ExtType`` it is given) except the timestamp (-1), which
    msgpack decodes without asking: only code of this process can put one there.
    A compact reply is given ``sender`` (the node knows it: the hosted agent that sent
    it) and, as any compact reply, an empty ``recipient``; a kind code is read back."""
    try:
        f = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True, ext_hook=_reject_ext)
    except Exception as exc:
        raise EnvelopeError("malformed", f"not a msgpack value: {type(exc).__name__}") from None
    count = len(f)
    if count == _COMPACT_REPLY_FIELD_COUNT:
        return _new_envelope(COMPACT_VERSION, _TYPE_OF[f[1]], None, 0, f[2], sender, "", 0, b"", f[3], b"")
    if count == _COMPACT_FIELD_COUNT:
        kind = f[2]
        if type(kind) is int:
            kind = _kind_of(kind)
            if kind[-1] == "/" and f[1] == 4:  # (an event of a coded topic family)
                kind += f[6]
        return _new_envelope(COMPACT_VERSION, _TYPE_OF[f[1]], kind, f[3], f[4], f[5], f[6], 0, b"", f[7], b"")
    return _new_envelope(f[0], _TYPE_OF[f[1]], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10])


class ReplayGuard:
    """Remembers (sender, nonce) pairs for the skew window, with bounded memory.

    A nonce is kept until its envelope's timestamp falls out of the window
    (after which :func:`verify_envelope` rejects the envelope as stale anyway).
    Past ``max_entries`` live nonces it fails closed (``replay-cache-full``).
    """

    __slots__ = ("_skew_ms", "_max", "_seen", "_expiry")

    def __init__(self, skew_ms: int, max_entries: int = 1_000_000):
        if skew_ms < 0 or max_entries < 1:
            raise ValueError("skew_ms must be >= 0 and max_entries >= 1")
        self._skew_ms = skew_ms
        self._max = max_entries
        self._seen: set[tuple[str, bytes]] = set()
        self._expiry: list[tuple[int, str, bytes]] = []

    def __len__(self) -> int:
        return len(self._seen)

    def _expire(self, now_ms: int) -> None:
        heap = self._expiry
        while heap and heap[0][0] < now_ms:
            _, sender, nonce = heapq.heappop(heap)
            self._seen.discard((sender, nonce))

    def check_and_add(self, sender: str, nonce: bytes, timestamp: int, now_ms: int) -> None:
        """Record the nonce, or raise ``EnvelopeError('replay')`` if seen."""
        self._expire(now_ms)
        key = (sender, nonce)
        if key in self._seen:
            raise EnvelopeError("replay", f"nonce from {sender!r} already seen")
        if len(self._seen) >= self._max:
            raise EnvelopeError("replay-cache-full", "too many live nonces; try later")
        self._seen.add(key)
        heapq.heappush(self._expiry, (timestamp + self._skew_ms, sender, nonce))


def verify_envelope(
    env: Envelope,
    *,
    recipient: str,
    directory: Directory,
    verifier: Verifier,
    now_ms: int,
    skew_ms: int,
    replay_guard: ReplayGuard | None = None,
) -> None:
    """Accept ``env`` for ``recipient`` at ``now_ms`` or raise EnvelopeError.

    Order: addressing, freshness, signature, then replay (so a forged envelope
    never enters the nonce cache). Exceptions from the injected directory or
    verifier count as rejection, never escape.
    """
    if env.recipient != recipient:
        raise EnvelopeError("misaddressed", f"addressed to {env.recipient!r}, not {recipient!r}")
    if len(env.nonce) != NONCE_SIZE:
        raise EnvelopeError("malformed", f"a signed envelope needs a {NONCE_SIZE}-byte nonce")
    if abs(now_ms - env.timestamp) > skew_ms:
        raise EnvelopeError(
            "stale", f"timestamp {env.timestamp} is outside {skew_ms} ms of now ({now_ms})"
        )
    try:
        key = directory(env.sender)
    except Exception:
        key = None
    if key is None:
        raise EnvelopeError("unknown-sender", f"no public key registered for {env.sender!r}")
    try:
        ok = verifier(key, env.signing_input(), env.signature) is True
    except EnvelopeError:
        raise
    except Exception:
        ok = False
    if not ok:
        raise EnvelopeError("bad-signature", f"signature of {env.sender!r} does not verify")
    if replay_guard is not None:
        replay_guard.check_and_add(env.sender, env.nonce, env.timestamp, now_ms)
