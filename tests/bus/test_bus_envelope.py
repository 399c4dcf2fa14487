"""Envelopes: canonical signing input, strict decoding, verification, replay."""

import dataclasses

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bus import (
    PROTOCOL_VERSION,
    SIGNING_DOMAIN,
    BusError,
    Envelope,
    EnvelopeError,
    MessageType,
    ReplayGuard,
    StaticDirectory,
    decode_envelope,
    verify_envelope,
)
from core import ecdsa

ALICE = ecdsa.generate_private_key()
BOB = ecdsa.generate_private_key()
DIRECTORY = StaticDirectory({"alice": ecdsa.public_key(ALICE), "bob": ecdsa.public_key(BOB)})
NOW = 1_700_000_000_000
SKEW = 30_000


def make(**overrides):
    args = dict(
        type=MessageType.REQUEST,
        kind="store",
        sender="alice",
        recipient="bob",
        body={"cid": b"\x01" * 36, "n": [1, 2, 3]},
        timestamp=NOW,
        signer=lambda m: ecdsa.sign_raw(ALICE, m),
    )
    args.update(overrides)
    return Envelope.create(**args)


def check(env, *, recipient="bob", now=NOW, guard=None, directory=DIRECTORY):
    verify_envelope(
        env,
        recipient=recipient,
        directory=directory,
        verifier=ecdsa.is_valid_raw,
        now_ms=now,
        skew_ms=SKEW,
        replay_guard=guard,
    )


def reason(env, **kw):
    with pytest.raises(EnvelopeError) as info:
        check(env, **kw)
    return info.value.reason


def test_round_trip_and_wire_layout():
    env = make()
    wire = env.encode()
    fields = msgpack.unpackb(wire)
    assert len(fields) == 11
    assert fields[0] == PROTOCOL_VERSION == 1
    assert fields[1] == 1 and fields[2] == "store"
    assert len(fields[3]) == 16 and fields[4] is None
    assert fields[5:8] == ["alice", "bob", NOW]
    assert len(fields[8]) == 16 and len(fields[10]) == 64
    assert decode_envelope(wire) == env
    check(decode_envelope(wire))


def test_signing_input_is_domain_tag_then_canonical_array():
    env = make()
    assert env.signing_input() == SIGNING_DOMAIN + msgpack.packb(
        msgpack.unpackb(env.encode())[:10], use_bin_type=True
    )
    assert SIGNING_DOMAIN == b"emrshare/v1/envelope\x00"
    assert ecdsa.is_valid_raw(ecdsa.public_key(ALICE), env.signing_input(), env.signature)


def test_fresh_ids_and_nonces():
    a, b = make(), make()
    assert a.msg_id != b.msg_id and a.nonce != b.nonce


@pytest.mark.parametrize(
    "field,value",
    [
        ("kind", "access"),
        ("sender", "bob"),
        ("recipient", "carol"),
        ("timestamp", NOW + 1),
        ("nonce", b"\x00" * 16),
        ("msg_id", b"\x00" * 16),
        ("body", {"cid": b"\x02" * 36, "n": [1, 2, 3]}),
        ("type", MessageType.SEND),
    ],
)
def test_any_changed_field_breaks_the_signature(field, value):
    tampered = dataclasses.replace(make(), **{field: value})
    wire = decode_envelope(tampered.encode())
    recipient = "carol" if field == "recipient" else "bob"
    assert reason(wire, recipient=recipient) == "bad-signature"


def test_signature_from_another_key_is_rejected():
    forged = make(signer=lambda m: ecdsa.sign_raw(BOB, m))  # bob claims to be alice
    assert reason(forged) == "bad-signature"


def test_misaddressed_stale_unknown_sender():
    assert reason(make(), recipient="carol") == "misaddressed"
    assert reason(make(timestamp=NOW - SKEW - 1)) == "stale"
    assert reason(make(timestamp=NOW + SKEW + 1)) == "stale"
    check(make(timestamp=NOW - SKEW))  # the window is inclusive
    assert reason(make(sender="mallory")) == "unknown-sender"


def test_directory_or_verifier_exceptions_mean_rejection():
    def broken_directory(agent):
        raise RuntimeError("registry down")

    assert reason(make(), directory=broken_directory) == "unknown-sender"
    with pytest.raises(EnvelopeError, match="bad-signature"):
        verify_envelope(
            make(),
            recipient="bob",
            directory=DIRECTORY,
            verifier=lambda *a: 1 / 0,
            now_ms=NOW,
            skew_ms=SKEW,
        )


def test_replay_is_rejected_within_the_window_and_forgotten_after():
    guard = ReplayGuard(SKEW)
    env = make()
    check(env, guard=guard)
    assert reason(env, guard=guard) == "replay"
    assert len(guard) == 1
    # a forged copy never enters the cache
    forged = dataclasses.replace(make(), signature=b"\x01" * 64)
    assert reason(forged, guard=guard) == "bad-signature"
    assert len(guard) == 1
    # once the envelope is out of the window, its nonce is dropped (bounded memory)
    later = make(timestamp=NOW + 2 * SKEW + 1)
    check(later, now=NOW + 2 * SKEW + 1, guard=guard)
    assert len(guard) == 1
    assert reason(env, now=NOW + 2 * SKEW + 1, guard=guard) == "stale"


def test_replay_guard_fails_closed_when_full():
    guard = ReplayGuard(SKEW, max_entries=2)
    check(make(), guard=guard)
    check(make(), guard=guard)
    assert reason(make(), guard=guard) == "replay-cache-full"


def test_error_replies_need_code_and_message():
    corr = b"\x07" * 16
    ok = make(type=MessageType.ERROR, correlation_id=corr, body={"code": "x", "message": "y"})
    assert decode_envelope(ok.encode()).body == {"code": "x", "message": "y"}
    with pytest.raises(EnvelopeError, match="error reply body"):
        make(type=MessageType.ERROR, correlation_id=corr, body={"code": 1, "message": "y"})
    with pytest.raises(EnvelopeError, match="correlation_id"):
        make(type=MessageType.REPLY)
    with pytest.raises(EnvelopeError, match="correlation_id"):
        make(type=MessageType.REQUEST, correlation_id=corr)


def test_create_rejects_bad_fields_and_unencodable_bodies():
    with pytest.raises(EnvelopeError):
        make(kind="")
    with pytest.raises(EnvelopeError):
        make(kind="k" * 129)
    with pytest.raises(EnvelopeError):
        make(nonce=b"short")
    with pytest.raises(EnvelopeError, match="msgpack"):
        make(body={"x": object()})
    with pytest.raises(EnvelopeError, match="signer"):
        make(signer=lambda m: None)


def _wire(fields):
    return msgpack.packb(fields, use_bin_type=True)


def _fields():
    return msgpack.unpackb(make().encode())


@pytest.mark.parametrize(
    "index,value",
    [
        (1, 9),
        (1, "1"),
        (2, b"store"),
        (3, b"short"),
        (4, "x" * 16),
        (5, ""),
        (6, None),
        (7, -1),
        (7, 1.5),
        (8, b"\x00" * 15),
        (10, "sig"),
    ],
)
def test_decoder_rejects_wrong_shapes(index, value):
    fields = _fields()
    fields[index] = value
    with pytest.raises(EnvelopeError) as info:
        decode_envelope(_wire(fields))
    assert info.value.reason == "malformed"


def test_decoder_rejects_other_versions_and_structures():
    fields = _fields()
    fields[0] = 2
    with pytest.raises(EnvelopeError) as info:
        decode_envelope(_wire(fields))
    assert info.value.reason == "version"
    for bad in (_wire(fields[:10]), _wire({"a": 1}), b"", b"\xc1", _wire(_fields()) + b"\x00"):
        with pytest.raises(EnvelopeError):
            decode_envelope(bad)
    ext = _fields()
    ext[9] = msgpack.ExtType(5, b"x")
    with pytest.raises(EnvelopeError, match="msgpack"):
        decode_envelope(_wire(ext))


def test_signature_binds_decoded_values_not_wire_bytes():
    env = make(body=5)
    fields = msgpack.unpackb(env.encode())
    head = _wire(fields[:9])[1:]  # fields 0..8 without the array header
    sig = msgpack.packb(fields[10], use_bin_type=True)
    # the int 5 written as uint32 (0xce) instead of a fixint: same value, so the
    # canonical re-encoding (and the signature) is the same
    wide = decode_envelope(b"\x9b" + head + b"\xce\x00\x00\x00\x05" + sig)
    assert wide.body == 5
    check(wide)
    # a different value under the same signature is refused
    six = decode_envelope(b"\x9b" + head + b"\xce\x00\x00\x00\x06" + sig)
    assert reason(six) == "bad-signature"


@given(st.binary(max_size=512))
@settings(max_examples=500, deadline=None)
def test_arbitrary_bytes_raise_only_envelope_error(data):
    try:
        decode_envelope(data)
    except EnvelopeError:
        pass


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=5),
    max_leaves=20,
)


@given(st.lists(msgpack_values, min_size=9, max_size=12))
@settings(max_examples=300, deadline=None)
def test_arbitrary_msgpack_arrays_raise_only_envelope_error(fields):
    try:
        env = decode_envelope(_wire(fields))
    except EnvelopeError:
        return
    with pytest.raises(EnvelopeError):  # nothing random carries alice's signature
        check(env)


@given(body=msgpack_values)
@settings(max_examples=200, deadline=None)
def test_any_body_round_trips_and_verifies(body):
    env = make(body=body)
    decoded = decode_envelope(env.encode())
    check(decoded)


def test_envelope_error_is_a_value_error_and_bus_error():
    with pytest.raises(ValueError):
        decode_envelope(b"")
    with pytest.raises(BusError):
        decode_envelope(b"")


@given(body=msgpack_values, corr=st.none() | st.binary(min_size=16, max_size=16))
@settings(max_examples=100, deadline=None)
def test_create_encoded_wire_equals_encode(body, corr):
    mtype = MessageType.REPLY if corr is not None else MessageType.SEND
    env, wire = Envelope.create_encoded(
        type=mtype,
        kind="k",
        sender="alice",
        recipient="bob",
        body=body,
        timestamp=NOW,
        signer=lambda m: ecdsa.sign_raw(ALICE, m),
        correlation_id=corr,
    )
    assert wire == env.encode()
    assert decode_envelope(wire).encode() == wire  # (NaN bodies never compare equal)


ext_values = st.builds(msgpack.Timestamp, st.integers(-(2**34), 2**34 - 1), st.integers(0, 999_999_999)) | st.builds(
    msgpack.ExtType, st.integers(0, 127), st.binary(max_size=16))


@given(body=msgpack_values, ext=ext_values, where=st.sampled_from(["body", "value", "key", "nested"]))
@settings(max_examples=200, deadline=None)
def test_extension_types_anywhere_are_malformed(body, ext, where):
    """The format allows nil, bool, int, float, str, bin, arrays and maps only: the
    timestamp extension (-1), which msgpack decodes without the ext hook, included."""
    env = make(body=body)
    fields = [env.version, int(env.type), env.kind, env.msg_id, env.correlation_id, env.sender, env.recipient,
              env.timestamp, env.nonce, env.body, env.signature]
    if where == "body":
        fields[9] = ext
    elif where == "value":
        fields[9] = {"x": ext, "y": body}
    elif where == "key":
        fields[9] = {ext: body} if isinstance(ext, msgpack.Timestamp) else {"k": [body, ext]}
    else:
        fields[9] = [body, {"deep": [[ext]]}]
    wire = msgpack.packb(fields, use_bin_type=True)
    with pytest.raises(EnvelopeError) as info:
        decode_envelope(wire)
    assert info.value.reason == "malformed"
    # the same envelope without the extension decodes
    fields[9] = body
    check(decode_envelope(msgpack.packb(fields, use_bin_type=True)))


@given(body=st.one_of(st.binary(max_size=200_000), st.dictionaries(st.text(max_size=5), st.binary(max_size=2000))))
@settings(max_examples=50, deadline=None)
def test_unsigned_encoding_is_the_signed_layout_with_an_empty_signature(body):
    import msgpack

    from bus import decode_envelope, sign_wire

    fields = dict(type=MessageType.REPLY, kind="k", sender="a", recipient="b", body=body, timestamp=5,
                  correlation_id=b"c" * 16, msg_id=b"m" * 16, nonce=b"")
    env, wire = Envelope.create_encoded(signer=None, **fields)
    ten = msgpack.packb([1, int(MessageType.REPLY), "k", b"m" * 16, b"c" * 16, "a", "b", 5, b"", body],
                        use_bin_type=True)
    assert wire == b"\x9b" + ten[1:] + b"\xc4\x00"
    assert decode_envelope(wire) == env
    signed_env, signed_wire = Envelope.create_encoded(signer=lambda m: b"S" + m[:3], **fields)
    assert signed_wire == sign_wire(wire, lambda m: b"S" + m[:3]) and decode_envelope(signed_wire) == signed_env


@given(values=st.lists(st.one_of(st.binary(max_size=3 << 20).map(lambda b: b * 2), st.integers(), st.text(),
                                 st.just(object())), max_size=6))
@example(values=[2**64, 1, -(2**63) - 1, b"x" * (3 << 20), 2])  # out of range, then the packer goes on
@settings(max_examples=30, deadline=None)
def test_kept_packer_packs_as_packb_after_large_values_and_failures(values):
    import msgpack

    from bus import envelope as envmod

    for value in values:
        try:
            expected = msgpack.packb([value, {"k": value}], use_bin_type=True)
        except (TypeError, ValueError, OverflowError):  # an object, an integer outside msgpack's 64 bits
            with pytest.raises(envmod.EnvelopeError):
                envmod._packb([1, value])
            continue
        assert envmod._packb([value, {"k": value}]) == expected


# ------------------------------------------------------------ compact envelopes (version 2)

ids = st.integers(0, 2**64 - 1)
names = st.text(min_size=1, max_size=40)


@given(mtype=st.sampled_from(list(MessageType)), kind=st.text(min_size=1, max_size=128), msg_id=ids, corr=ids,
       sender=names, recipient=names, body=msgpack_values)
@settings(max_examples=300, deadline=None)
def test_compact_envelopes_round_trip_and_local_decoding_agrees(mtype, kind, msg_id, corr, sender, recipient, body):
    from bus import COMPACT_VERSION, encode_compact
    from bus.envelope import _decode_local

    reply = mtype in (MessageType.REPLY, MessageType.ERROR)
    if mtype == MessageType.ERROR:
        body = {"code": kind, "message": sender}
    wire = encode_compact(mtype, kind, msg_id, corr if reply else None, sender, recipient, body)
    env = decode_envelope(wire)
    if reply:  # a compact reply carries its type, the request's id and the body: nothing else
        assert (env.version, env.type, env.kind, env.msg_id, env.correlation_id, env.sender, env.recipient) == (
            COMPACT_VERSION, mtype, None, 0, corr, "", "")
        assert wire == msgpack.packb([2, int(mtype), corr, body], use_bin_type=True)
        local = _decode_local(wire, sender)  # the node names the hosted agent that sent it
        assert (local.sender, local.recipient, local.correlation_id) == (sender, "", corr)
    else:
        assert (env.version, env.type, env.msg_id, env.sender, env.recipient) == (
            COMPACT_VERSION, mtype, msg_id, sender, recipient)
        assert env.kind == kind and env.correlation_id is None
        local = _decode_local(wire)
        assert (local.kind, local.sender, local.recipient) == (kind, sender, recipient)
    assert (env.timestamp, env.nonce, env.signature) == (0, b"", b"")
    assert env.encode() == wire
    assert local.encode() == wire  # (NaN bodies never compare equal: compare bytes)
    assert len(wire) < len(Envelope.create_encoded(type=mtype, kind=kind, sender=sender, recipient=recipient,
                                                   body=body, timestamp=NOW, signer=None,
                                                   correlation_id=b"c" * 16 if reply else None)[1])
    with pytest.raises(EnvelopeError):  # compact envelopes carry no nonce: signed mode refuses them
        check(env)


# kinds coded by these tests (the table is the process's and append-only: codes no application kind uses)
_TEST_CODES = {"test.coded.ping": 60001, "test.coded.other": 60002, "test.coded.long" + "x" * 100: 60003}


@given(code_of=st.sampled_from(sorted(_TEST_CODES)), mtype=st.sampled_from([MessageType.SEND, MessageType.REQUEST]),
       msg_id=ids, sender=names, recipient=names, body=msgpack_values)
@settings(max_examples=200, deadline=None)
def test_coded_kinds_travel_as_their_code_and_decode_to_their_kind(code_of, mtype, msg_id, sender, recipient, body):
    from bus import encode_compact, register_kind_codes
    from bus.envelope import _decode_local

    register_kind_codes(_TEST_CODES)  # (again: a no-op)
    kind, code = code_of, _TEST_CODES[code_of]
    wire = encode_compact(mtype, kind, msg_id, None, sender, recipient, body)
    assert wire == msgpack.packb([2, int(mtype), code, msg_id, None, sender, recipient, body], use_bin_type=True)
    for env in (decode_envelope(wire), _decode_local(wire)):
        assert (env.type, env.kind, env.msg_id, env.sender, env.recipient) == (mtype, kind, msg_id, sender, recipient)
        assert env.encode() == wire
    # an event's kind is its topic: a registered one travels as its code too
    event = encode_compact(MessageType.EVENT, kind, msg_id, None, sender, recipient, body)
    assert event == msgpack.packb([2, 4, code, msg_id, None, sender, recipient, body], use_bin_type=True)
    assert decode_envelope(event).kind == kind == _decode_local(event).kind


_FAMILY = {"test.family/": 60004}


@given(msg_id=ids, sender=names, recipient=names, body=msgpack_values, other=names)
@settings(max_examples=200, deadline=None)
def test_a_topic_family_travels_as_its_code_for_its_recipient_only(msg_id, sender, recipient, body, other):
    """A registered kind ending in "/" codes the events whose topic is it followed by the
    event's own recipient: read back as prefix + recipient (the alias's name on a channel);
    another recipient's topic of the family, or a request of that kind, is not shortened."""
    from bus import encode_compact, register_kind_codes
    from bus.envelope import _decode_local

    register_kind_codes(_FAMILY)
    (prefix, code), = _FAMILY.items()
    topic = prefix + recipient
    if len(topic) > 128:
        return
    wire = encode_compact(MessageType.EVENT, topic, msg_id, None, sender, recipient, body)
    assert wire == msgpack.packb([2, 4, code, msg_id, None, sender, recipient, body], use_bin_type=True)
    for env in (decode_envelope(wire), _decode_local(wire)):
        assert (env.type, env.kind, env.recipient) == (MessageType.EVENT, topic, recipient)
    aliased = encode_compact(MessageType.EVENT, topic, msg_id, None, sender, recipient, body, (0, 1))
    assert decode_envelope(aliased, aliases=({0: sender}, {1: recipient})).kind == topic
    if other != recipient:  # someone else's topic of the family: as a string
        elsewhere = encode_compact(MessageType.EVENT, prefix + other, msg_id, None, sender, recipient, body)
        assert decode_envelope(elsewhere).kind == prefix + other and msgpack.unpackb(elsewhere)[2] == prefix + other
    request = encode_compact(MessageType.REQUEST, prefix, msg_id, None, sender, recipient, body)
    assert decode_envelope(request).kind == prefix  # (no handler has it: refused as an unknown kind)


def test_a_topic_family_code_never_makes_a_topic_over_the_kind_limit():
    from bus import register_kind_codes

    register_kind_codes(_FAMILY)
    long = "r" * 120  # "test.family/" + 120 chars: 132 > 128
    wire = msgpack.packb([2, 4, _FAMILY["test.family/"], 1, None, "s", long, None], use_bin_type=True)
    with pytest.raises(EnvelopeError) as info:
        decode_envelope(wire)
    assert info.value.reason == "malformed"


@given(code=st.integers(0, 2**16 - 1), mtype=st.sampled_from([MessageType.SEND, MessageType.REQUEST]))
@settings(max_examples=200, deadline=None)
def test_a_code_no_kind_was_registered_for_decodes_to_a_kind_no_handler_can_have(code, mtype):
    from bus import kind_codes

    if code in kind_codes().values():
        return
    env = decode_envelope(_wire([2, int(mtype), code, 1, None, "a", "b", None]))
    assert env.kind == f"bus.code.{code}"  # a bus. kind: no handler can be registered for it (unknown-kind)


def test_kind_codes_are_append_only():
    from bus import kind_codes, register_kind_codes

    register_kind_codes(_TEST_CODES)
    before = dict(kind_codes())
    for bad in ({"test.coded.ping": 60009},  # a kind renumbered
                {"test.coded.new": 60001},  # a code reused
                {"test.coded.new": 60010, "test.coded.new2": 60010},  # one code twice in one call
                {"test.coded.new": 60011, "test.coded.ping": 60012},  # nothing is added when one pair is refused
                {"bus.subscribe": 60013}, {"": 60014}, {"k" * 129: 60015},  # not a kind that can be coded
                {"test.coded.new": -1}, {"test.coded.new": 2**16}, {"test.coded.new": True}, {"test.coded.new": "1"}):
        with pytest.raises(ValueError):
            register_kind_codes(bad)
        assert dict(kind_codes()) == before
    with pytest.raises(TypeError):
        kind_codes()["test.coded.ping"] = 1  # type: ignore[index]  # a read-only copy


def _reply_wire(fields):
    return msgpack.packb(fields, use_bin_type=True)


@given(st.lists(msgpack_values, min_size=4, max_size=4), st.sampled_from([2, 1, 3, True, 2.0]))
@settings(max_examples=300, deadline=None)
def test_arbitrary_compact_reply_arrays_raise_only_envelope_error(fields, version):
    fields[0] = version
    try:
        env = decode_envelope(_reply_wire(fields))
    except EnvelopeError as exc:
        assert exc.reason in ("malformed", "version")
        return
    assert env.version == 2 and env.type in (MessageType.REPLY, MessageType.ERROR)
    assert type(env.correlation_id) is int and (env.kind, env.msg_id, env.sender, env.recipient) == (None, 0, "", "")


@pytest.mark.parametrize("fields,reason", [
    ([2, 1, 7, None], "malformed"),  # four fields are a reply or an error reply
    ([2, 0, 7, None], "malformed"),
    ([2, 4, 7, None], "malformed"),
    ([2, 2, None, None], "malformed"),  # a reply needs the id it answers
    ([2, 2, -1, None], "malformed"),  # unsigned
    ([2, 2, 1.0, None], "malformed"),  # an int, not a float
    ([2, 2, b"\x00" * 16, None], "malformed"),  # an int
    ([2, 2, True, None], "malformed"),
    ([2, 3, 7, {"code": "x"}], "malformed"),  # an error reply's body
    ([2, 3, 7, "busy"], "malformed"),
    ([2, 9, 7, None], "malformed"),  # no such type
    ([1, 2, 7, None], "version"),  # four fields are version 2
    ([3, 2, 7, None], "version"),
    ([2.0, 2, 7, None], "malformed"),
    ([2, 2, 7], "malformed"),  # three fields are nothing
    ([2, 2, 7, None, None], "malformed"),  # five neither
])
def test_malformed_compact_replies_are_refused_with_their_reason(fields, reason):
    with pytest.raises(EnvelopeError) as info:
        decode_envelope(_reply_wire(fields))
    assert info.value.reason == reason


@pytest.mark.parametrize("fields", [
    [2, 4, -1, 1, None, "a", "b", None],  # an event's topic code too
    [2, 1, -1, 1, None, "a", "b", None],  # codes are unsigned
    [2, 1, 2**16, 1, None, "a", "b", None],  # and at most MAX_KIND_CODE
    [2, 0, 2**64 - 1, 1, None, "a", "b", None],
    [2, 1, True, 1, None, "a", "b", None],  # a bool is no code
    [2, 1, 1.0, 1, None, "a", "b", None],
])
def test_malformed_kind_codes_are_refused(fields):
    with pytest.raises(EnvelopeError) as info:
        decode_envelope(_wire(fields))
    assert info.value.reason == "malformed"


@given(st.lists(msgpack_values, min_size=8, max_size=8), st.sampled_from([2, 1, 3, True, 2.0]))
@settings(max_examples=300, deadline=None)
def test_arbitrary_compact_arrays_raise_only_envelope_error(fields, version):
    fields[0] = version
    try:
        env = decode_envelope(_wire(fields))
    except EnvelopeError as exc:
        assert exc.reason in ("malformed", "version")
        return
    assert env.version == 2 and type(env.msg_id) is int and (env.kind is None or type(env.kind) is str)


@pytest.mark.parametrize("fields", [
    [2, 2, "ping", 1, 1, "a", "b", None],  # a compact reply is four fields, not eight
    [2, 2, None, 1, 1, "a", "b", None],
    [2, 3, None, 1, 1, "a", "b", {"code": "x", "message": "y"}],
    [2, 1, None, 1, None, "a", "b", None],  # a request needs a kind
    [2, 1, "ping", 1, 1, "a", "b", None],  # a request has no correlation id
    [2, 2, None, 1, None, "a", "b", None],  # a reply needs one
    [2, 1, "ping", -1, None, "a", "b", None],  # ids are unsigned
    [2, 1, "ping", b"\x00" * 16, None, "a", "b", None],  # and integers
    [2, 3, None, 1, 1, "a", "b", {"code": "x"}],  # an error reply's body
    [2, 5, "ping", 1, None, "a", "b", None],  # no such type
    [2, 1, "ping", 1, None, "", "b", None],  # an empty sender
    [1, 1, "ping", 1, None, "a", "b", None],  # eight fields are version 2
])
def test_malformed_compact_envelopes(fields):
    with pytest.raises(EnvelopeError):
        decode_envelope(_wire(fields))


def test_compact_encoding_checks_what_decoding_checks():
    from bus import encode_compact

    for args in [(1, "", 1, None, "a", "b", 0), (1, "k", -1, None, "a", "b", 0), (1, "k", 1, 5, "a", "b", 0),
                 (2, "k", 1, None, "a", "b", 0), (3, "k", 1, 1, "a", "b", {"code": 1}), (9, "k", 1, None, "a", "b", 0),
                 (2, None, 1, -1, "a", "b", 0), (2, None, 1, 2**64, "a", "b", 0), (3, None, 1, b"x", "a", "b", 0),
                 (1, "k", 1, None, "a" * 257, "b", 0), (1, "k", 2**64, None, "a", "b", 0),
                 (1, "k", 1, None, "a", "b", object())]:
        with pytest.raises(EnvelopeError):
            encode_compact(*args)


@given(body=msgpack_values, ext=ext_values, where=st.sampled_from(["body", "nested", *range(8)]),
       mtype=st.sampled_from([MessageType.REQUEST, MessageType.REPLY]))
@settings(max_examples=200, deadline=None)
def test_extension_types_anywhere_in_a_compact_envelope_are_malformed(body, ext, where, mtype):
    """Compact envelopes too: an extension in the body (at any depth) or in place of
    any other field is refused as malformed (the decoder walks only the body; every
    other field is checked for its exact plain type)."""
    from bus import encode_compact

    reply = mtype == MessageType.REPLY
    fields = [2, 2, 3, body] if reply else [2, int(mtype), "kind", 7, None, "alice", "bob", body]
    if where == "body":
        fields[-1] = ext
    elif where == "nested":
        fields[-1] = [body, {"deep": [[ext]]}]
    else:
        fields[where % len(fields)] = ext
    with pytest.raises(EnvelopeError) as info:
        decode_envelope(msgpack.packb(fields, use_bin_type=True))
    assert info.value.reason == "malformed"
    wire = encode_compact(mtype, None if reply else "kind", 7, 3 if reply else None, "alice", "bob", body)
    env = decode_envelope(wire)
    assert (env.sender, env.recipient) == (("", "") if reply else ("alice", "bob")) and env.encode() == wire


def test_decoded_envelopes_are_the_same_frozen_dataclass_as_constructed_ones():
    """The decoder builds envelopes through their slots (a faster constructor): they are
    still equal to, hash like, and are as frozen as ones made by ``Envelope(...)``."""
    from bus import encode_compact

    env = decode_envelope(encode_compact(MessageType.REQUEST, "kind", 7, None, "alice", "bob", {"a": [1, b"x"]}))
    same = Envelope(2, MessageType.REQUEST, "kind", 7, None, "alice", "bob", 0, b"", {"a": [1, b"x"]}, b"")
    assert env == same and type(env) is Envelope and env.type is MessageType.REQUEST
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.body = "changed"  # type: ignore[misc]
    assert dataclasses.replace(env, kind="other").kind == "other"
    hashable = Envelope(2, MessageType.REQUEST, "kind", 7, None, "alice", "bob", 0, b"", b"x", b"")
    assert hash(decode_envelope(encode_compact(MessageType.REQUEST, "kind", 7, None, "alice", "bob", b"x"))) == hash(hashable)


def test_slot_constructors_build_the_dataclass_itself_or_fall_back_to_its_slots():
    """The fast constructor fills a twin of the same layout and swaps its class; a
    dataclass whose layout cannot be swapped (here: a base class with a ``__dict__``)
    gets one that fills the slots through their descriptors. Either way the object is
    the frozen dataclass, equal to and hashed like one built by its ``__init__``."""
    from bus._endpoint import Message
    from bus.envelope import _slot_constructor

    class Base:  # (instances get a __dict__: no twin of only slots has that layout)
        pass

    @dataclasses.dataclass(frozen=True, slots=True)
    class Odd(Base):
        a: int
        b: str

    for cls, args, field in ((Message, ("alice", "kind", b"x", 7, 12, MessageType.REQUEST, None), "kind"),
                             (Odd, (1, "b"), "a")):
        made = _slot_constructor(cls)(*args)
        assert type(made) is cls and made == cls(*args) and hash(made) == hash(cls(*args))
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(made, field, "changed")
        assert dataclasses.replace(made) == made
    assert "_twin" in _slot_constructor(Message).__code__.co_names  # (the fast one where it can)
    assert "_twin" not in _slot_constructor(Odd).__code__.co_names


# -- a reply's large bin handed over as the frame itself (no copy) ------------------------------

from bus.envelope import IN_PLACE_BIN, _packb, decode_reply_in_place  # noqa: E402

_small_plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@given(corr=st.integers(0, 2**64 - 1), extra=st.integers(0, 5000), others=st.lists(_small_plain, max_size=4))
@settings(max_examples=40, deadline=None)
def test_a_replys_large_bin_is_the_frame_itself_and_the_rest_decodes_as_usual(corr, extra, others):
    data = bytes([corr % 251]) * (IN_PLACE_BIN + extra)
    wire = _packb([2, 2, corr, [data, *others]])
    usual = decode_envelope(wire)
    frame = bytearray(wire)
    env = decode_reply_in_place(frame)
    assert env is not None and env.body[0] is frame and frame == data  # cut down to the bin, in place
    assert env.type == MessageType.REPLY and env.correlation_id == corr == usual.correlation_id
    assert env.body == usual.body and env.recipient == usual.recipient == ""


def _nested(depth):
    value = [1]
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("make", [
    lambda d: _packb([2, 3, 7, [d]]),  # an error reply
    lambda d: _packb([2, 1, "k", 7, None, "a", "b", [d]]),  # a request
    lambda d: _packb([2, 2, 7, [d[: IN_PLACE_BIN - 1]]]) + bytes(10),  # a bin under the size, then bytes
    lambda d: _packb([2, 2, 7, {"data": d}]),  # a map body
    lambda d: _packb([2, 2, 7, [1, d]]),  # the bin not first
    lambda d: _packb([2, 2, 7, [d, 1]])[:-1],  # an item missing
    lambda d: _packb([2, 2, 7, [d, 1]]) + b"\x01",  # bytes after the reply
    lambda d: _packb([2, 2, 7, [d]])[: IN_PLACE_BIN // 2],  # the bin cut short
    lambda d: _packb([2, 2, 7, [d, msgpack.ExtType(5, b"x")]]),  # an extension type
    lambda d: _packb([2, 2, 7, [d, _nested(70)]]),  # nested deeper than the limit
    lambda d: _packb([3, 2, 7, [d]]),  # another version
    lambda d: _packb([2, 2, -7, [d]]),  # a negative correlation id
])
def test_anything_but_a_plain_reply_with_a_large_first_bin_is_left_untouched(make):
    frame = bytearray(make(bytes(IN_PLACE_BIN)))
    before = bytes(frame)
    assert decode_reply_in_place(frame) is None
    assert frame == before  # the usual decode judges it, from the same bytes


async def test_a_large_reply_crosses_a_channel_as_the_frame_and_a_request_as_bytes():
    from bus import open_node
    from bus.testing import Keyring

    ring = Keyring()
    ring.add("alice")
    ring.add("bob")
    big = bytes(range(256)) * 2048  # 512 KiB
    got = {}

    async def handler(msg):
        got["request"] = msg.body
        return [big, len(big), b"tail"]

    async with open_node() as server, open_node() as client:
        address = await server.listen("tcp://127.0.0.1:0")
        client.add_route("bob", address)
        server.endpoint("bob", **ring.credentials("bob")).register("blob", handler)
        alice = client.endpoint("alice", **ring.credentials("alice"))
        reply = await alice.request("bob", "blob", [big, 1])
        assert reply == [big, len(big), b"tail"] and type(reply[0]) is bytearray  # not copied
        assert type(got["request"][0]) is bytes  # a request's bin: decoded as usual


@given(corr=st.integers(0, 2**64 - 1), extra=st.integers(0, 5000), others=st.lists(_small_plain, max_size=4),
       mutable=st.booleans())
@settings(max_examples=40, deadline=None)
def test_a_reply_with_a_large_first_bin_is_packed_as_msgpack_packs_it(corr, extra, others, mutable):
    from bus.envelope import encode_compact_reply

    data = bytes([corr % 251]) * (IN_PLACE_BIN + extra)
    body = [bytearray(data) if mutable else data, *others]
    wire = encode_compact_reply(2, corr, body)
    assert wire == msgpack.packb([2, 2, corr, body], use_bin_type=True)
    env = decode_reply_in_place(bytearray(wire))
    assert env is not None and env.body == [data, *others]
