"""Session 12's attack review of channel version 4's aliases and of coded event topics
(issue 14), as a hostile client or publisher would try them: an alias that is an int
used elsewhere (negative, huge, a bool, a float), an alias before any proof, an alias
of an agent the node does not know, a proof replayed on another channel or reflected,
more aliases than MAX_CLAIMS, an alias where only a request, message or event has a
sender and recipient, names and aliases mixed; a per-recipient topic family's code
for a subscriber from someone who is not its publisher, and event bodies that are not
``[seq, data]``. Each refused with a clear error; where a connection is involved, a
legitimate client on the same node keeps working. Real TCP loopback channels; the
hostile side's channel done by hand (``raw_channel``)."""

import contextlib

import msgpack
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from bus import EnvelopeError, MessageType, decode_envelope, encode_compact, encode_compact_reply
from bus import register_kind_codes
from bus.channel import MAX_CLAIMS, ChannelError, Handshake
from bus.testing import Keyring, eventually, linked_pair

pytestmark = pytest.mark.crypto


def _pair():
    i, r = Handshake(initiator=True), Handshake(initiator=False)
    return i.finish(r.hello), r.finish(i.hello)


def _malformed(data, aliases):
    with pytest.raises(EnvelopeError) as info:
        decode_envelope(data, aliases=aliases)
    assert info.value.reason == "malformed"


# ------------------------------------------------------------------ codec level

_TABLES = ({0: "mallory", 1: "trudy"}, {0: "bob"})


@given(alias=st.one_of(st.integers(-(2**63), 2**64 - 1), st.booleans(), st.floats(allow_nan=False)),
       which=st.sampled_from([5, 6]))
@settings(max_examples=300, deadline=None)
def test_an_alias_is_an_int_the_channel_gave_or_the_envelope_is_malformed(alias, which):
    """Any int msgpack can carry, a bool or a float in the sender's or recipient's place
    either reads back to the name the channel's table gives it, or the envelope is
    malformed: no int used elsewhere (a kind code, an id, a negative, 2**64-1) and no
    True/1.0 is taken for alias 1."""
    fields = [2, int(MessageType.REQUEST), "ping", 7, None, "mallory", "bob", 1]
    fields[which] = alias
    data = msgpack.packb(fields, use_bin_type=True)
    table = _TABLES[0] if which == 5 else _TABLES[1]
    if type(alias) is int and alias in table:
        env = decode_envelope(data, aliases=_TABLES)
        assert (env.sender if which == 5 else env.recipient) == table[alias]
    else:
        _malformed(data, _TABLES)
    _malformed(data, None)  # (no tables: every alias is unknown)


def test_an_alias_before_any_proof_is_malformed():
    """A channel whose other side proved nothing has empty tables: alias 0 names nobody."""
    _, cr = _pair()
    data = encode_compact(MessageType.REQUEST, "ping", 1, None, "mallory", "bob", 1, (0, None))
    _malformed(data, (cr.their_names, cr.own_names))


def test_the_two_sides_tables_are_never_mixed():
    """Alias 0 of the sender's side and alias 0 of ours name different agents: a sender
    alias reads the other side's table, a recipient alias ours, never the reverse (a
    client cannot send as the node's agent by giving its alias as the sender)."""
    ring = Keyring()
    ci, cr = _pair()
    cr.add_claim(ci.make_proof("mallory", ring.add("mallory")))
    cr.make_proof("bob", ring.add("bob"))
    assert cr.their_names == {0: "mallory"} and cr.own_names == {0: "bob"}
    env = decode_envelope(encode_compact(MessageType.REQUEST, "ping", 1, None, "bob", "mallory", 1, (0, 0)),
                          aliases=(cr.their_names, cr.own_names))
    assert (env.sender, env.recipient) == ("mallory", "bob")


@pytest.mark.parametrize("mtype", [MessageType.REPLY, MessageType.ERROR])
def test_a_reply_has_no_place_for_an_alias(mtype):
    """A compact reply is [2, type, correlation_id, body]: an 8-field envelope of a reply
    type (where aliases could stand) is malformed, whatever its sender and recipient."""
    for sender, recipient in (("mallory", "bob"), (0, 0), (0, "bob")):
        data = msgpack.packb([2, int(mtype), "ping", 1, None, sender, recipient, {"code": "x", "message": ""}])
        _malformed(data, _TABLES)
    # the reply form itself has four fields: an int in the correlation id's place is just the id
    env = decode_envelope(encode_compact_reply(MessageType.REPLY, 0, 1), aliases=_TABLES)
    assert (env.sender, env.recipient, env.correlation_id) == ("", "", 0)


@pytest.mark.parametrize("aliases", [(0, None), (None, 0), (0, 0), (None, None)])
def test_names_and_aliases_mix_in_one_envelope(aliases):
    data = encode_compact(MessageType.REQUEST, "ping", 1, None, "mallory", "bob", 1, aliases)
    env = decode_envelope(data, aliases=_TABLES)
    assert (env.sender, env.recipient) == ("mallory", "bob")


def test_a_proof_replayed_on_another_channel_or_reflected_proves_nothing():
    """A proof signs this channel's transcript and the prover's role: copied onto another
    channel (with its alias) or sent back to the side that made it, its alias is taken
    (it reads back to the name) but the name is not proved, so nothing is heard as it."""
    ring = Keyring()
    key = ring.add("alice")
    ring_key = ring.credentials("alice")["directory"]("alice")
    verifier = ring.credentials("alice")["verifier"]
    ci1, cr1 = _pair()
    _, cr2 = _pair()
    proof = ci1.make_proof("alice", key)
    cr1.add_claim(proof)
    assert cr1.claim_ok("alice", ring_key, verifier) is None  # (on its own channel it proves alice)
    cr2.add_claim(proof)  # replayed on another channel
    assert cr2.their_names == {0: "alice"}
    assert cr2.claim_ok("alice", ring_key, verifier) == "unproven-sender"
    ci1.add_claim(proof)  # reflected to its maker (the responder's role byte differs)
    assert ci1.claim_ok("alice", ring_key, verifier) == "unproven-sender"


def test_more_aliases_than_max_claims_break_the_channel():
    _, cr = _pair()
    for alias in range(MAX_CLAIMS):
        cr.add_claim(msgpack.packb([f"agent{alias}", b"\x01", alias], use_bin_type=True))
    assert len(cr.their_names) == MAX_CLAIMS
    for payload in (msgpack.packb(["one-more", b"\x01", 0], use_bin_type=True),  # (an alias taken)
                    msgpack.packb(["one-more", b"\x01"], use_bin_type=True)):  # (no alias: still a claim)
        with pytest.raises(ChannelError):
            cr.add_claim(payload)
    # an agent proved without an alias holds a claim: its later alias is bounded the same way
    _, cr = _pair()
    for n in range(MAX_CLAIMS):
        cr.add_claim(msgpack.packb([f"agent{n}", b"\x01"], use_bin_type=True))
    cr.add_claim(msgpack.packb(["agent3", b"\x01", 255], use_bin_type=True))  # (an agent it has: fine)
    with pytest.raises(ChannelError):
        cr.add_claim(msgpack.packb(["agent256", b"\x01", 0], use_bin_type=True))


# ------------------------------------------------------------------ over TCP


async def _echo(msg):
    return [msg.sender, msg.body]


async def _legit_still_works(alice):
    with trio.fail_after(10):
        assert await alice.request("bob", "ping", "ok", timeout=10) == ["alice", "ok"]


@contextlib.asynccontextmanager
async def _server_with_bob(*more):
    """A server with bob (echo), alice's node working with it (from 127.0.0.2):
    ``(server, alice, address, ring, bob)``; alice still works after the block."""
    ring = Keyring()
    for agent in ("mallory", *more):
        ring.add(agent)
    with trio.fail_after(60):
        async with linked_pair(ring, None, client_address="127.0.0.2") as (server, _, alice, address):
            bob = server.endpoint("bob", **ring.credentials("bob"))
            bob.register("ping", _echo)
            await _legit_still_works(alice)
            yield server, alice, address, ring, bob
            await _legit_still_works(alice)


@pytest.mark.parametrize("alias", [-1, 2**64 - 1, True, 0.0])
async def test_an_alias_that_is_not_one_the_channel_gave_closes_the_hostile_connection_only(raw_channel, alias):
    async with _server_with_bob() as (server, alice, address, ring, _):
        async with await raw_channel(address, prove={"mallory": ring.signer("mallory")}) as raw:
            await raw.send(encode_compact(MessageType.REQUEST, "ping", 1, None, "mallory", "bob", "named"))
            assert (await raw.receive()).body == ["mallory", "named"]  # (bob proved, with his alias)
            await raw.send(msgpack.packb([2, 1, "ping", 2, None, alias, "bob", "x"], use_bin_type=True))
            assert await raw.receive() is None
        assert server.statistics().rejected.get("malformed", 0) >= 1


async def test_an_alias_before_any_proof_closes_the_connection(raw_channel):
    async with _server_with_bob() as (server, alice, address, ring, bob):
        async with await raw_channel(address) as raw:  # (proves nothing)
            await raw.send(encode_compact(MessageType.REQUEST, "ping", 1, None, "mallory", "bob", "x", (0, 0)))
            assert await raw.receive() is None
        assert server.statistics().rejected.get("malformed", 0) >= 1


async def test_an_alias_of_an_agent_the_node_does_not_know_is_refused_as_unknown(raw_channel):
    """Mallory also proves "ghost" (no key anywhere) with an alias: a request under that
    alias is refused ``unknown-sender``, as it is under the name; the channel goes on and
    mallory's own requests by alias are answered."""
    async with _server_with_bob() as (server, alice, address, ring, bob):
        async with await raw_channel(address, prove={"mallory": ring.signer("mallory")}) as raw:
            await raw.send(encode_compact(MessageType.REQUEST, "ping", 1, None, "mallory", "bob", "named"))
            assert (await raw.receive()).body == ["mallory", "named"]
            await raw.prove("ghost", Keyring().add("ghost"))
            ghost, me, b = (raw.channel.aliases_here["ghost"], raw.channel.aliases_here["mallory"],
                            raw.channel.their_aliases["bob"])
            await raw.send(encode_compact(MessageType.REQUEST, "ping", 2, None, "ghost", "bob", "x", (ghost, b)))
            reply = await raw.receive()
            assert reply.type == MessageType.ERROR and reply.body["code"] == "unknown-sender"
            await raw.send(encode_compact(MessageType.REQUEST, "ping", 3, None, "mallory", "bob", "y", (me, None)))
            assert (await raw.receive()).body == ["mallory", "y"]
            await raw.send(encode_compact(MessageType.REQUEST, "ping", 4, None, "mallory", "bob", "z", (None, b)))
            assert (await raw.receive()).body == ["mallory", "z"]
        await eventually(lambda: bob.statistics().rejected.get("unknown-sender") == 1)


# ------------------------------------------------------------------ coded topics, event bodies

_FAMILY = {"test.hostile/": 60011}


@contextlib.asynccontextmanager
async def _subscribed_to_mallory(raw_channel):
    """Alice's node listens; mallory (a hand-made channel) connects, proves itself and
    answers alice's ``bus.subscribe`` of ``test.hostile/alice``: ``(raw, alice, sub,
    bob_raw)`` where bob_raw is a second hand-made client, proved as bob, that is not the
    publisher."""
    from bus import open_node

    register_kind_codes(_FAMILY)
    ring = Keyring()
    for agent in ("mallory", "bob"):
        ring.add(agent)
    with trio.fail_after(60):
        async with open_node() as node:
            address = await node.listen("tcp://127.0.0.1:0")
            alice = node.endpoint("alice", **ring.credentials("alice"))
            async with await raw_channel(address, prove={"mallory": ring.signer("mallory")}) as raw, \
                    await raw_channel(address, prove={"bob": ring.signer("bob")}) as bob_raw, \
                    trio.open_nursery() as nursery:
                # a first message makes the node learn mallory's path
                await raw.send(encode_compact(MessageType.SEND, "hello", 1, None, "mallory", "alice", None))
                await bob_raw.send(encode_compact(MessageType.SEND, "hello", 1, None, "bob", "alice", None))
                await eventually(lambda: node.path_to("mallory") is not None and node.path_to("bob") is not None)
                got = []

                async def subscribe():
                    got.append(await alice.subscribe("mallory", "test.hostile/alice", buffer=8, timeout=10))

                nursery.start_soon(subscribe)
                request = await raw.receive()
                assert request.kind == "bus.subscribe" and request.body == {"topic": "test.hostile/alice"}
                await raw.send(encode_compact_reply(MessageType.REPLY, request.msg_id, None))
                await eventually(lambda: bool(got))
                yield raw, alice, got[0], bob_raw
                nursery.cancel_scope.cancel()


def _event(sender, seq_body, msg_id, kind=60011, recipient="alice"):
    return msgpack.packb([2, int(MessageType.EVENT), kind, msg_id, None, sender, recipient, seq_body],
                         use_bin_type=True)


async def test_a_family_code_event_counts_only_from_the_publisher_and_with_a_seq_data_body(raw_channel):
    """The family code to alice reads as ``test.hostile/alice`` (the envelope's recipient,
    which an endpoint requires to be itself); only the publisher's events
    reach the subscription: bob sending the same code to alice is an unexpected event. A
    body that is not ``[seq, data]`` (seq not an int, a bool, negative; a map without
    data; a 3-array) is dropped; the map form of earlier versions is still read."""
    async with _subscribed_to_mallory(raw_channel) as (raw, alice, sub, bob_raw):
        stats = alice.statistics
        await bob_raw.send(_event("bob", [0, "forged"], 2))
        for n, body in enumerate(([0.0, "x"], [True, "x"], [-1, "x"], ["0", "x"], [0, "x", "y"],
                                  {"seq": 0}, {"seq": "0", "data": 1}, 5)):
            await raw.send(_event("mallory", body, 10 + n))
        await raw.send(_event("mallory", [0, "first"], 30))
        await raw.send(_event("mallory", {"seq": 1, "data": "second", "extra": 1}, 31))
        await raw.send(_event("mallory", [2, "third"], 32, kind="test.hostile/alice"))
        await raw.send(_event("mallory", [3, "elsewhere"], 33, kind="test.hostile/bob"))  # (not this topic)
        await raw.send(_event("mallory", [3, "never"], 34, kind=60999))  # (a code never assigned)
        with trio.fail_after(10):
            seen = [(await sub.receive()).body for _ in range(3)]
        assert seen == ["first", "second", "third"]
        await eventually(lambda: stats().rejected.get("unexpected-event", 0) == 1 + 8 + 2)
        await raw.send(_event("mallory", [3, "fourth"], 40))
        with trio.fail_after(10):
            assert (await sub.receive()).body == "fourth"
