"""Agents named by their aliases on a channel (channel version 4, issue 14: bus bits per
access). A proof gives its agent a small int; envelopes a node sends without a wait carry
the sender's and recipient's aliases instead of their names, and the receiving node reads
them back before anything looks at the envelope. Hostile sides: an alias never given, a
proof that re-aliases an agent or gives an alias a second agent, an alias of an agent whose
proof does not verify; each while a legitimate client keeps working. Real TCP loopback
channels; the hostile side's channel done by hand (``raw_channel``)."""

import contextlib

import msgpack
import pytest
import trio

from bus import EnvelopeError, MessageType, decode_envelope, encode_compact
from bus.channel import MAX_CLAIMS, ChannelError, Handshake
from bus.testing import Keyring, eventually, linked_pair

pytestmark = pytest.mark.crypto


def _pair():
    i, r = Handshake(initiator=True), Handshake(initiator=False)
    return i.finish(r.hello), r.finish(i.hello)


def test_a_proof_gives_each_agent_one_alias_in_the_order_it_is_first_proved():
    ring = Keyring()
    ci, cr = _pair()
    for agent in ("alice", "carol", "alice"):  # (proving alice again is no new alias)
        assert cr.add_claim(ci.make_proof(agent, ring.add(agent))) == agent
    assert ci.aliases_here == {"alice": 0, "carol": 1} and ci.own_names == {0: "alice", 1: "carol"}
    assert cr.their_aliases == {"alice": 0, "carol": 1} and cr.their_names == {0: "alice", 1: "carol"}
    # a proof of the version before (no alias) is still read: its agent just has none
    cr.add_claim(msgpack.packb(["dave", b"\x01" * 64], use_bin_type=True))
    assert "dave" in cr.claims and "dave" not in cr.their_aliases


@pytest.mark.parametrize("alias", [-1, MAX_CLAIMS, "0", True, 1.0, None.__class__, b"\x00"])
def test_a_proof_with_an_alias_out_of_range_or_not_an_int_breaks_the_channel(alias):
    _, cr = _pair()
    payload = msgpack.packb(["mallory", b"\x01" * 64, alias if alias is not None.__class__ else [0]],
                            use_bin_type=True)
    with pytest.raises(ChannelError):
        cr.add_claim(payload)


def test_a_proof_that_re_aliases_breaks_the_channel():
    _, cr = _pair()
    cr.add_claim(msgpack.packb(["mallory", b"\x01" * 64, 0], use_bin_type=True))
    cr.add_claim(msgpack.packb(["mallory", b"\x02" * 64, 0], use_bin_type=True))  # (the same alias again: fine)
    with pytest.raises(ChannelError, match="alias"):
        cr.add_claim(msgpack.packb(["bob", b"\x01" * 64, 0], use_bin_type=True))  # alias 0 for another agent
    with pytest.raises(ChannelError, match="alias"):
        cr.add_claim(msgpack.packb(["mallory", b"\x01" * 64, 1], use_bin_type=True))  # a second alias
    assert cr.their_names == {0: "mallory"}


def test_an_alias_reads_back_only_through_the_channels_tables():
    data = encode_compact(MessageType.REQUEST, "ping", 7, None, "alice", "bob", 1, (3, 0))
    assert len(data) == len(encode_compact(MessageType.REQUEST, "ping", 7, None, "alice", "bob", 1)) - 8
    env = decode_envelope(data, aliases=({3: "alice"}, {0: "bob"}))
    assert (env.sender, env.recipient, env.kind, env.body) == ("alice", "bob", "ping", 1)
    for aliases in (None, ({}, {0: "bob"}), ({3: "alice"}, {}), ({0: "alice"}, {3: "bob"})):
        with pytest.raises(EnvelopeError) as info:
            decode_envelope(data, aliases=aliases)
        assert info.value.reason == "malformed"
    # a name is still a name; only an int is an alias (a bool is neither)
    assert decode_envelope(encode_compact(MessageType.REQUEST, "ping", 7, None, "alice", "bob", 1),
                           aliases=({}, {})).sender == "alice"
    with pytest.raises(EnvelopeError):
        decode_envelope(msgpack.packb([2, 1, "ping", 7, None, True, "bob", 1]), aliases=({1: "alice"}, {}))


async def _echo(msg):
    return [msg.sender, msg.body]


def _bob(server, ring):
    bob = server.endpoint("bob", **ring.credentials("bob"))
    bob.register("ping", _echo)
    return bob


async def test_requests_after_the_first_carry_aliases_and_arrive_named():
    ring = Keyring()
    with trio.fail_after(60):
        async with linked_pair(ring, None) as (server, client, alice, _):
            bob = _bob(server, ring)
            assert await alice.request("bob", "ping", "x", timeout=10) == ["alice", "x"]  # (connects: names)
            first = alice.statistics().sent_by_kind["ping"].bytes
            assert await alice.request("bob", "ping", "x", timeout=10) == ["alice", "x"]
            second = alice.statistics().sent_by_kind["ping"].bytes - first
            assert second == first - len("alice") - len("bob")  # (two one-byte aliases for two fixstr names)
            # the other way: bob asks alice on the same channel, with aliases too, and she sees bob
            alice.register("who", _echo)
            # (both proofs are made by then: even bob's first request carries aliases)
            for _ in range(2):
                assert await bob.request("alice", "who", 1, timeout=10) == ["bob", 1]
            total = bob.statistics().sent_by_kind["who"].bytes
            assert total <= 2 * len(encode_compact(MessageType.REQUEST, "who", 2**16, None, "bob", "alice", 1, (0, 0)))
            assert total < 2 * len(encode_compact(MessageType.REQUEST, "who", 0, None, "bob", "alice", 1))


async def _legit_still_works(alice):
    with trio.fail_after(10):
        assert await alice.request("bob", "ping", "ok", timeout=10) == ["alice", "ok"]


@contextlib.asynccontextmanager
async def _mallory_beside_alice(raw_channel, *more):
    """A server with bob, alice's node working with it, and mallory's hand-made channel that has
    proved mallory and been answered once by name (so bob is proved to it, with his alias):
    ``(server, alice, raw, bob)``. Alice still works once the block ends."""
    ring = Keyring()
    for agent in ("mallory", *more):
        ring.add(agent)
    with trio.fail_after(60):
        async with linked_pair(ring, None, client_address="127.0.0.2") as (server, _, alice, address):
            bob = _bob(server, ring)
            await _legit_still_works(alice)
            async with await raw_channel(address, prove={"mallory": ring.signer("mallory")}) as raw:
                await raw.send(encode_compact(MessageType.REQUEST, "ping", 1, None, "mallory", "bob", "named"))
                assert (await raw.receive()).body == ["mallory", "named"]
                raw.ring = ring
                yield server, alice, raw, bob
            await _legit_still_works(alice)


async def test_a_hostile_client_with_its_own_aliases_is_heard_as_the_agent_it_proved(raw_channel):
    async with _mallory_beside_alice(raw_channel) as (server, alice, raw, _):
        bob = raw.channel.their_aliases["bob"]
        await raw.send(encode_compact(MessageType.REQUEST, "ping", 2, None, "mallory", "bob", "aliased",
                                      (raw.channel.aliases_here["mallory"], bob)))
        assert (await raw.receive()).body == ["mallory", "aliased"]


@pytest.mark.parametrize("which", ["sender", "recipient"])
async def test_an_alias_never_given_closes_the_hostile_connection_only(raw_channel, which):
    async with _mallory_beside_alice(raw_channel) as (server, alice, raw, _):
        aliases = (200, None) if which == "sender" else (None, 200)
        await raw.send(encode_compact(MessageType.REQUEST, "ping", 2, None, "mallory", "bob", "x", aliases))
        assert await raw.receive() is None  # the node closed the connection
        assert server.statistics().rejected.get("malformed", 0) >= 1


async def test_a_proof_re_aliasing_an_agent_closes_the_hostile_connection(raw_channel):
    async with _mallory_beside_alice(raw_channel, "trudy") as (server, alice, raw, _):
        # trudy's proof under mallory's alias: were it taken, alias 0 would now name trudy
        signature = msgpack.unpackb(raw.channel.make_proof("trudy", raw.ring.signer("trudy")))[1]
        await raw.stream.send_all(raw.sealed(msgpack.packb(["trudy", signature, 0], use_bin_type=True),
                                             frame_type=1))
        assert await raw.receive() is None


async def test_an_alias_of_an_agent_whose_proof_does_not_verify_is_refused_as_the_name_is(raw_channel):
    """Mallory proves "alice" with its own key (alias 1): the alias reads back to "alice", whose
    proof does not verify under alice's key, so the request is refused as unproven, as it is
    when it names her; the real alice is not affected."""
    async with _mallory_beside_alice(raw_channel) as (server, alice, raw, bob_endpoint):
        await raw.prove("alice", raw.ring.signer("mallory"))  # a forged proof of alice
        forged = raw.channel.aliases_here["alice"]
        bob = raw.channel.their_aliases["bob"]
        for msg_id, aliases in ((2, (forged, bob)), (3, None)):
            await raw.send(encode_compact(MessageType.REQUEST, "ping", msg_id, None, "alice", "bob", "x", aliases))
            reply = await raw.receive()
            assert reply.type == MessageType.ERROR and reply.body["code"] == "unproven-sender"
        await eventually(lambda: bob_endpoint.statistics().rejected.get("unproven-sender") == 2)
