"""core.protocol's wire types: every type round-trips through msgpack, garbage only ever
raises DecodeError, and malformed bodies get errors that name the kind and the field."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import core.protocol as protocol
from core.errors import DecodeError
from core.protocol import (
    KINDS,
    TOPICS,
    OrdererBlocks,
    OrdererSubmit,
    OrdererSubmitReply,
    PeerBlocks,
    PeerDeliverShare,
    PeerEvent,
    PeerQuery,
    PeerQueryReply,
    PeerReencryptReply,
    PeerSubmit,
    PeerSubmitReply,
    StorageGetReply,
    StorageList,
    StoragePut,
    StorageStat,
    StorageStatReply,
    SubmitResult,
)
from core.protocol._schema import (
    Bool, Bytes, Choice, Codec, Id, Int, ListOf, Map, Message, Nested, Optional, Row, Text, _fields, wire,
)

ID_CHARS = "abcXYZ019._:@-"

# -- strategies derived from the declared codecs ------------------------------------------

from core.cid import DAG_PB, RAW, SHA2_256, Cid  # noqa: E402
from core.protocol._storage import _BinaryCid  # noqa: E402

_SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8) | st.binary(max_size=8)
MSGPACK_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def for_codec(codec: Codec) -> st.SearchStrategy:
    if isinstance(codec, Id):
        return st.text(ID_CHARS, min_size=1, max_size=128)
    if isinstance(codec, Text):
        return st.text(min_size=codec.min_len, max_size=min(codec.max_len, 40))
    if isinstance(codec, Bytes):
        if codec.multiple > 1:
            most = min(codec.max_size // codec.multiple, 4)
            return st.integers(0, most).flatmap(lambda k: st.binary(min_size=k * codec.multiple,
                                                                     max_size=k * codec.multiple))
        return st.binary(min_size=codec.min_size, max_size=min(codec.max_size, max(codec.min_size, 64)))
    if isinstance(codec, Int):
        return st.integers(codec.lo, codec.hi)
    if isinstance(codec, Bool):
        return st.booleans()
    if isinstance(codec, Choice):
        return st.sampled_from(codec.choices)
    if isinstance(codec, Optional):
        return st.none() | for_codec(codec.inner)
    if isinstance(codec, ListOf):
        return st.lists(for_codec(codec.item), min_size=codec.min_len, max_size=min(codec.max_len, 4)).map(tuple)
    if isinstance(codec, Row):
        return st.tuples(*(for_codec(c) for c in codec.items))
    if isinstance(codec, Map):
        return st.dictionaries(st.text(max_size=8), MSGPACK_VALUES, max_size=min(codec.max_entries, 4))
    if isinstance(codec, Nested):
        return for_type(codec.type)
    if isinstance(codec, _BinaryCid):  # (a CID's text: it travels binary and reads back as the text)
        return st.builds(lambda d, raw: str(Cid(1, RAW if raw else DAG_PB, SHA2_256, d)),
                         st.binary(min_size=32, max_size=32), st.booleans())
    raise AssertionError(f"no strategy for {codec!r}")


_TX = st.binary(min_size=1, max_size=40)
_TX_ID = st.binary(min_size=32, max_size=32)


def _one_or_list(item: st.SearchStrategy) -> st.SearchStrategy:
    """(items, batch): one item, or a list form of 1..4."""
    return st.booleans().flatmap(lambda batch: st.tuples(
        st.lists(item, min_size=1, max_size=4 if batch else 1).map(tuple), st.just(batch)))


def _query() -> st.SearchStrategy:
    def build(what: str) -> st.SearchStrategy:
        fields = {name: (for_codec(Optional(Text(128, min_len=1))) if name == "label" else for_codec(Id()))
                  for name in protocol.QUERY_FIELDS[what]}
        if what == "record":  # a record query may ask for its owner's certificate, and name the tx it holds
            fields["owner_cert"] = st.booleans()
            fields["held"] = st.none() | st.binary(min_size=protocol.HELD_SIZE, max_size=protocol.HELD_SIZE)
        if what in protocol.QUERY_VIEWS:  # a request query may ask for a view of the entry
            fields["view"] = st.none() | st.sampled_from(tuple(protocol.QUERY_VIEWS[what]))
        return st.builds(PeerQuery, st.just(what), **fields)

    return st.sampled_from(tuple(protocol.QUERY_FIELDS)).flatmap(build)


_MAPS = for_codec(Map())

CUSTOM: dict[type, st.SearchStrategy] = {
    OrdererSubmit: _one_or_list(_TX).map(lambda t: OrdererSubmit(*t)),
    OrdererSubmitReply: _one_or_list(_TX_ID).map(lambda t: OrdererSubmitReply(*t)),
    PeerSubmit: st.tuples(_one_or_list(_TX), st.booleans()).map(lambda t: PeerSubmit(t[0][0], t[1], t[0][1])),
    PeerSubmitReply: st.deferred(lambda: _one_or_list(for_type(SubmitResult)).map(lambda t: PeerSubmitReply(*t))),
    PeerQuery: _query(),
    PeerQueryReply: (st.none() | _MAPS | st.lists(_MAPS, max_size=3)).map(PeerQueryReply),
    StorageStatReply: st.deferred(lambda: (for_type(protocol.BlobStatistics) | for_type(protocol.NodeStatistics))
                                  .map(StorageStatReply)),
}


def for_type(cls: type) -> st.SearchStrategy:
    if cls in CUSTOM:
        return CUSTOM[cls]
    return st.builds(cls, **{f.attr: for_codec(f.codec) for f in _fields(cls)})


def _all_types() -> list[type]:
    types = []
    for spec in KINDS.values():
        types += [spec.request, spec.reply]
    types += [t.payload for t in TOPICS.values()]
    types += [SubmitResult, protocol.Decision, protocol.BlobStatistics, protocol.NodeStatistics]
    return types


ALL_TYPES = _all_types()


def _over_msgpack(value):
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False, strict_map_key=False)


# -- round trips and garbage ---------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
@settings(max_examples=40)
@given(data=st.data())
def test_round_trip_through_msgpack(cls, data):
    value = data.draw(for_type(cls))
    assert cls.from_wire(_over_msgpack(value.to_wire())) == value


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
@settings(max_examples=60)
@given(garbage=MSGPACK_VALUES)
def test_garbage_only_raises_decode_error(cls, garbage):
    _decodes_or_raises_decode_error(cls, garbage)


def _decodes_or_raises_decode_error(cls, body) -> None:
    """``cls.from_wire(body)`` returns an instance or raises DecodeError, nothing else."""
    try:
        assert isinstance(cls.from_wire(body), cls)
    except DecodeError:
        pass


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
@settings(max_examples=60)
@given(data=st.data())
def test_a_valid_body_with_one_field_broken_only_raises_decode_error(cls, data):
    body = data.draw(for_type(cls)).to_wire()
    if not isinstance(body, dict) or not body:
        return
    key = data.draw(st.sampled_from(sorted(body)))
    if data.draw(st.booleans()):
        del body[key]
    else:
        body[key] = data.draw(MSGPACK_VALUES)
    _decodes_or_raises_decode_error(cls, body)


ROW_TYPES = [cls for cls in ALL_TYPES if cls.row]


def test_the_access_path_kinds_travel_as_rows():
    names = {cls.__name__ for cls in ROW_TYPES}
    assert {"PeerQuery", "PeerReencrypt", "PeerReencryptReply", "PeerDeliverShare", "PeerDeliverShareReply",
            "PatientAccessRequest", "PatientAccessRequestReply", "CommitNotice", "StorageGet"} <= names
    assert protocol.PeerDeliverShareReply().to_wire() == []  # ok at its default: an empty row


@pytest.mark.parametrize("cls", [c for c in ROW_TYPES if c is not PeerQuery], ids=lambda c: c.__name__)
@settings(max_examples=40)
@given(data=st.data())
def test_a_row_kind_takes_its_map_form_and_ignores_items_past_its_fields(cls, data):
    value = data.draw(for_type(cls))
    as_map = {f.name: f.codec.encode(getattr(value, f.attr)) for f in _fields(cls)
              if not (getattr(value, f.attr) is None and f.omit_none)}
    assert cls.from_wire(_over_msgpack(as_map)) == value
    row = value.to_wire()
    assert isinstance(row, list) and len(row) <= len(_fields(cls))
    padded = row + [None] * (len(_fields(cls)) - len(row)) + data.draw(st.lists(MSGPACK_VALUES, max_size=3))
    if all(v is None for v in padded[len(row):len(_fields(cls))]) and all(
            isinstance(f.codec, Optional) or f.default is None for f in _fields(cls)[len(row):]):
        assert cls.from_wire(_over_msgpack(padded)) == value


@pytest.mark.parametrize("cls", ROW_TYPES, ids=lambda c: c.__name__)
@settings(max_examples=60)
@given(data=st.data())
def test_a_valid_row_with_one_item_broken_only_raises_decode_error(cls, data):
    row = data.draw(for_type(cls)).to_wire()
    if not row:
        return
    i = data.draw(st.integers(0, len(row) - 1))
    if data.draw(st.booleans()):
        del row[i:]
    else:
        row[i] = data.draw(MSGPACK_VALUES)
    _decodes_or_raises_decode_error(cls, row)


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
@settings(max_examples=3)
@given(data=st.data())
def test_types_are_frozen_slotted_dataclasses_with_a_kind(cls, data):
    assert dataclasses.is_dataclass(cls) and "__slots__" in cls.__dict__
    assert issubclass(cls, Message) and isinstance(cls.kind, str) and cls.kind
    value = data.draw(for_type(cls))
    fields = dataclasses.fields(cls)
    if not fields:  # nothing to set; no instance dict either
        assert not hasattr(value, "__dict__")
        return
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, fields[0].name, None)


# -- what bad bodies get --------------------------------------------------------------


def _error(cls, body) -> str:
    with pytest.raises(DecodeError) as info:
        cls.from_wire(body)
    return str(info.value)


def test_errors_name_the_kind_and_the_field():
    good = {"grant_id": "g-1", "index": 2, "sealed": b"x" * 100}
    assert PeerDeliverShare.from_wire(good) == PeerDeliverShare("g-1", 2, b"x" * 100)
    assert PeerDeliverShare.from_wire({**good, "extra": 1}) == PeerDeliverShare("g-1", 2, b"x" * 100)
    msg = _error(PeerDeliverShare, {k: v for k, v in good.items() if k != "sealed"})
    assert "peer.deliver_share" in msg and "'sealed'" in msg and "missing" in msg
    assert "'grant_id'" in _error(PeerDeliverShare, {**good, "grant_id": 7})
    assert "outside" in _error(PeerDeliverShare, {**good, "grant_id": "g/1"})
    assert "'index'" in _error(PeerDeliverShare, {**good, "index": True})  # a bool is not an int
    assert "'index'" in _error(PeerDeliverShare, {**good, "index": 0})
    assert "4096" in _error(PeerDeliverShare, {**good, "sealed": b"x" * 4097})
    assert "must be a row or a map" in _error(PeerDeliverShare, "x")
    assert "'grant_id'" in _error(PeerDeliverShare, [1, 2])  # a row: checked field by field
    assert "'sealed'" in _error(PeerDeliverShare, ["g-1", 2]) and "missing" in _error(PeerDeliverShare, ["g-1", 2])
    assert "must be a map" in _error(protocol.PeerAudit, ["alice"])  # a kind without the row form


def test_sizes_ranges_and_list_bounds():
    reply = {"share": b"s" * 292, "signature": b"g" * 64}
    assert PeerReencryptReply.from_wire(reply).share == b"s" * 292
    assert "64 bytes" in _error(PeerReencryptReply, {**reply, "signature": b"g" * 63})
    assert "292 bytes" in _error(PeerReencryptReply, {**reply, "share": b"s" * 293})
    # a version-1 reply (GT uncompressed, 580-byte share) is refused, not misread
    assert "292 bytes" in _error(PeerReencryptReply, {"index": 1, "share": b"s" * 580, "cid": "bafy",
                                                       "signature": b"g" * 64})
    assert "'from'" in _error(OrdererBlocks, {"from": 2**63, "limit": 1})
    assert "'limit'" in _error(OrdererBlocks, {"from": 0, "limit": 0})
    assert OrdererBlocks.from_wire({"from": 4}) == OrdererBlocks(4, protocol.MAX_BLOCKS_PER_REPLY)
    assert "'limit'" in _error(PeerBlocks, {"from": 4})  # required at a peer
    assert "1..1024 items" in _error(OrdererSubmit, {"txs": [b"t"] * 1025})
    assert "1..1024 items" in _error(OrdererSubmit, {"txs": []})
    assert "'tx'" in _error(OrdererSubmit, {})
    assert "'txs'[1]" in _error(OrdererSubmit, {"txs": [b"t", "not bytes"]})
    assert "'limit'" in _error(StorageList, {"after": None, "limit": 10_001})


def test_the_two_forms_of_submit_and_their_replies():
    assert OrdererSubmit.from_wire({"tx": b"t"}).to_wire() == {"tx": b"t"}
    assert OrdererSubmit.from_wire({"txs": [b"t", b"u"]}).to_wire() == {"txs": [b"t", b"u"]}
    assert OrdererSubmitReply((b"i" * 32,), batch=True).to_wire() == {"tx_ids": [b"i" * 32]}
    one = PeerSubmit.from_wire({"tx": b"t"})
    assert one == PeerSubmit((b"t",), wait=False, batch=False)
    assert "'wait'" in _error(PeerSubmit, {"tx": b"t", "wait": None})
    big = [b"x" * 60_000] * 140  # 8.4 MB: over the 8 MiB a peer accepts in one submit
    assert "bytes of transactions" in _error(PeerSubmit, {"txs": big})
    waited = PeerSubmitReply((SubmitResult(b"i" * 32, 3, "ok"),))
    assert waited.to_wire() == {"tx_id": b"i" * 32, "height": 3, "mark": "ok"}
    assert PeerSubmitReply((SubmitResult(b"i" * 32),)).to_wire() == {"tx_id": b"i" * 32}
    assert PeerSubmitReply((SubmitResult(),)).to_wire() == {}  # taken, without wait
    assert PeerSubmitReply.from_wire({}).results == (SubmitResult(),)
    assert "'mark'" in _error(PeerSubmitReply, {"tx_id": b"i" * 32, "height": 3, "mark": "made-up"})
    assert PeerSubmitReply.from_wire({"results": [waited.to_wire()]}).batch


def test_queries_take_exactly_their_forms_fields():
    assert PeerQuery.from_wire({"what": "head"}).to_wire() == ["head"]
    q = PeerQuery.from_wire({"what": "records", "patient": "alice", "subject": "ignored"})
    assert q == PeerQuery("records", patient="alice", label=None)
    assert q.to_wire() == ["records", "alice", None]
    assert PeerQuery.from_wire(["records", "alice", None]) == q
    behind = PeerQuery("request", request_id="q1", min_height=7)
    assert behind.to_wire() == ["request", "q1", 7] and PeerQuery.from_wire(behind.to_wire()) == behind
    assert "needs fields patient, record_id" in _error(PeerQuery, ["record", "alice"])
    assert "a query row starts with" in _error(PeerQuery, [["record"]])
    assert "needs field 'record_id'" in _error(PeerQuery, {"what": "record", "patient": "alice"})
    assert "'what'" in _error(PeerQuery, {"what": "everything"})
    assert "'subject'" in _error(PeerQuery, {"what": "cert", "subject": "a b"})
    record = {"what": "record", "patient": "alice", "record_id": "r"}
    assert PeerQuery.from_wire({**record, "owner_cert": True}) == PeerQuery("record", patient="alice", record_id="r",
                                                                            owner_cert=True)
    assert PeerQuery.from_wire({**record, "owner_cert": False}).to_wire() == ["record", "alice", "r"]  # false: left out
    assert PeerQuery("record", patient="alice", record_id="r", owner_cert=True).to_wire() == [
        "record", "alice", "r", None, True]
    assert "'owner_cert'" in _error(PeerQuery, {**record, "owner_cert": 1})
    assert "only a 'record' query" in _error(PeerQuery, {"what": "cert", "subject": "a", "owner_cert": True})
    assert PeerQueryReply.from_wire(None).value is None
    assert "map, a list or nil" in _error(PeerQueryReply, 5)


def test_optional_fields_and_defaults():
    assert StoragePut.from_wire({"data": b"d"}) == StoragePut(b"d", None, True)
    assert "'pin'" in _error(StoragePut, {"data": b"d", "pin": None})
    assert StorageStat.from_wire({}) == StorageStat(None)
    assert StorageGetReply(b"d", 1).to_wire() == [b"d", 1]  # a row; digests only when asked
    assert "multiple of 32" in _error(StorageGetReply, {"data": b"", "size": 0, "digests": b"x" * 33})
    node = StorageStatReply.from_wire({"node": "s1", "blobs": 0, "used_bytes": 0, "reserved_bytes": 0,
                                       "quota_bytes": None, "max_blob": 10, "corruptions": 0})
    assert isinstance(node.stat, protocol.NodeStatistics)


def test_events_carry_a_typed_decision():
    body = {"height": 5, "type": "access_request", "patient": "alice", "doctor": "dr", "request_id": "r",
            "grant_id": None, "decision": {"effect": "allow", "approval": "auto", "rule": "cardio", "reason": "ok"}}
    event = PeerEvent.from_wire(body)
    assert event.decision == protocol.Decision("allow", "auto", "cardio", "ok")
    assert event.to_wire() == body
    assert "'type'" in _error(PeerEvent, {**body, "type": "store"})


def test_kinds_built_on_a_shared_field_group_keep_their_own_names_and_field_order():
    # storage kinds on _OneBlob / _OneSession / _Done, the submits on _OneOrList
    assert "storage.pin: field 'cid' is missing" in _error(protocol.StoragePin, {})
    assert "storage.put.commit: 'session'" in _error(protocol.StoragePutCommit, {"session": b"s" * 15})
    get = protocol.StorageGet("bafy", 3, 4, True)  # cid first, then the kind's own fields (a row)
    assert get.to_wire() == ["bafy", 3, 4, True]
    assert protocol.StorageGet("bafy", 3, 4).to_wire() == ["bafy", 3, 4]  # leaves at its default: left out
    assert protocol.StorageGet.from_wire({"cid": "bafy", "offset": 3, "length": 4, "leaves": True}) == get
    # a real CID travels in its binary form (23 bytes fewer) and reads back as its text; text is still read
    from core.cid import compute, parse
    text = compute(b"hello")
    wire = protocol.StorageGet(text, 0, 9).to_wire()
    assert wire == [parse(text).to_bytes(), 0, 9] and len(wire[0]) == len(text) - 23
    assert protocol.StorageGet.from_wire(wire) == protocol.StorageGet(text, 0, 9)
    assert protocol.StorageGet.from_wire([text, 0, 9]) == protocol.StorageGet(text, 0, 9)
    for bad in (b"\x01\x55\x12\x20" + bytes(31), b"\x01" * 36, b""):
        assert "storage.get" in _error(protocol.StorageGet, [bad, 0, 9])
    chunk = protocol.StoragePutChunk(b"s" * 16, 0, b"d")
    assert chunk.to_wire() == {"session": b"s" * 16, "offset": 0, "data": b"d"}
    assert protocol.StoragePinReply().to_wire() == {} and protocol.StoragePinReply.from_wire({"x": 1})
    assert "'tx_id' (or 'tx_ids') is missing" in _error(OrdererSubmitReply, {"tx": b"t"})
    assert "'tx_ids'[0] must be 32 bytes" in _error(OrdererSubmitReply, {"tx_ids": [b"i"]})
    assert PeerSubmit((b"t", b"u"), wait=True, batch=True).to_wire() == {"txs": [b"t", b"u"], "wait": True}


def test_the_kind_named_in_the_class_header_survives_the_slotted_dataclass():
    @dataclasses.dataclass(frozen=True, slots=True)
    class Ping(Message, kind="test.ping"):
        n: int = wire(Int(0, 9))

    @dataclasses.dataclass(frozen=True, slots=True)
    class Pong(Ping):  # no kind=: the base's
        pass

    assert Ping.kind == Pong.kind == "test.ping" and "__slots__" in Ping.__dict__
    assert Ping.from_wire({"n": 3}) == Ping(3)
    with pytest.raises(DecodeError, match="test.ping: 'n'"):
        Ping.from_wire({"n": 10})
    assert not hasattr(protocol.BlockRange, "kind")  # a base declared without kind=
    assert {spec.request.kind for spec in KINDS.values()} == set(KINDS)


def test_a_bytearray_is_kept_for_bulk_data_and_copied_to_bytes_elsewhere():
    """A large bin the bus handed over as the frame itself (a bytearray) stays one where
    the field is bulk data (a read piece), and becomes bytes in any other bytes field."""
    piece = bytearray(b"x" * 1000)
    reply = protocol.StorageGetReply.from_wire([piece, 1000, bytearray(b"d" * 32)])
    assert reply.data is piece
    assert type(reply.digests) is bytes and reply.digests == b"d" * 32
    with pytest.raises(DecodeError):
        protocol.StorageGetReply.from_wire([memoryview(piece), 1000])
