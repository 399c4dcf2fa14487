"""The hostile network, third pass (issue 14, bus findings): nesting depth on small
frames, the frame limit of caller-supplied transports, and what a client that proved
nothing can make a node do (see docs/security.md, "Bus findings closed")."""

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from bus import (
    CHANNEL_OVERHEAD,
    BrokenError,
    ClosedError,
    EnvelopeError,
    FrameError,
    MemoryTransport,
    MessageType,
    RemoteError,
    UnreachableError,
    decode_envelope,
    open_node,
    parse_address,
)
from bus.channel import PROOF, WANT
from bus.envelope import encode_compact
from bus.limits import DEFAULT_MAX_DEPTH, DEFAULT_THREAD_DECODE_OBJECTS, MAX_PROOF_FAILURES
from bus.structure import StructureError, check_structure
from bus.testing import Keyring, eventually


def _nested(levels, leaf=1, kind="list"):
    """A body of ``levels`` nested non-empty arrays (or maps) around ``leaf``."""
    value = leaf
    for _ in range(levels):
        value = [value] if kind == "list" else {"k": value}
    return value


def _envelope(body, sender="mallory"):
    return encode_compact(MessageType.REQUEST, "ping", 7, None, sender, "bob", body)


# ------------------------------------------------------------ finding 1: depth on small frames


def test_a_small_envelope_one_level_too_deep_is_refused():
    # the envelope array is one level: a body of max_depth - 1 levels is the deepest allowed
    ok = _envelope(_nested(DEFAULT_MAX_DEPTH - 1))
    deep = _envelope(_nested(DEFAULT_MAX_DEPTH))
    assert len(deep) < DEFAULT_THREAD_DECODE_OBJECTS  # (no structure walk: the decoder's own check)
    assert decode_envelope(ok).body == _nested(DEFAULT_MAX_DEPTH - 1)
    with pytest.raises(EnvelopeError, match="deeper than 64") as info:
        decode_envelope(deep)
    assert info.value.reason == "malformed"
    with pytest.raises(EnvelopeError, match="deeper than 8"):
        decode_envelope(_envelope(_nested(8)), max_depth=8)


@settings(max_examples=150, deadline=None)
@given(levels=st.integers(0, 90), kind=st.sampled_from(["list", "map"]),
       leaf=st.one_of(st.integers(-(2**63), 2**64 - 1), st.binary(max_size=8), st.just([]), st.just({})),
       max_depth=st.integers(2, 80))
def test_small_and_large_frames_meet_the_same_depth_limit(levels, kind, leaf, max_depth):
    """A frame too short for the structure walk is refused exactly when the walk would
    refuse it (the walk runs on frames longer than max_objects bytes)."""
    data = _envelope(_nested(levels, leaf, kind))
    try:
        check_structure(data, max_objects=10**6, max_depth=max_depth)
        walk_ok = True
    except StructureError:
        walk_ok = False
    try:
        decode_envelope(data, max_depth=max_depth)  # (short: decoded, then its body's depth checked)
        small_ok = True
    except EnvelopeError:
        small_ok = False
    assert small_ok == walk_ok
    try:  # the same bytes through the walk (max_objects below their length)
        decode_envelope(data, max_objects=len(data) - 1, max_depth=max_depth)
        large_ok = True
    except EnvelopeError:
        large_ok = False
    # (unless the walk counts more objects than it was allowed: then it refuses for that)
    assert large_ok == walk_ok or len(data) - 1 < check_structure(data, max_objects=10**6, max_depth=10**6)


async def test_a_node_closes_a_channel_that_sends_a_small_frame_nested_too_deep(raw_channel):
    ring = Keyring()
    ring.add("mallory")
    calls = []

    async def ping(msg):
        calls.append(msg.body)
        return "pong"

    with trio.fail_after(30):
        async with open_node() as server:
            address = await server.listen("tcp://127.0.0.1:0")
            server.endpoint("bob", **ring.credentials("bob")).register("ping", ping)
            async with await raw_channel(address, prove={"mallory": ring.signer("mallory")}) as raw:
                await raw.send(_envelope(_nested(DEFAULT_MAX_DEPTH - 1)))
                reply = await raw.receive()
                assert reply.type == MessageType.REPLY and reply.body == "pong"
                deep = _envelope(_nested(500))  # 1.5 KB, within msgpack's own stack
                assert len(deep) < DEFAULT_THREAD_DECODE_OBJECTS
                msgpack.unpackb(deep)  # (msgpack alone would build it)
                await raw.send(deep)
                assert await raw.receive() is None  # closed
            await eventually(lambda: server.statistics().rejected.get("malformed", 0) == 1)
    assert calls == [_nested(DEFAULT_MAX_DEPTH - 1)]


# ------------------------------------------------------------ finding 3: supplied transports


async def test_a_supplied_transport_gets_room_for_the_channel_overhead_and_no_more():
    limit = 4096
    shared = MemoryTransport(max_frame_size=limit)
    async with open_node(transports={"mem": shared}, max_frame_size=limit):
        assert shared.max_frame_size == limit + CHANNEL_OVERHEAD
        async with open_node(transports={"mem": shared}, max_frame_size=limit):
            assert shared.max_frame_size == limit + CHANNEL_OVERHEAD  # a second node adds nothing
    roomy = MemoryTransport(max_frame_size=10 * limit)
    async with open_node(transports={"mem": roomy}, max_frame_size=limit):
        assert roomy.max_frame_size == 10 * limit  # never lowered


async def test_a_transport_deliberately_smaller_than_the_frame_limit_keeps_its_limit():
    ring = Keyring()
    small = 2048
    mem = MemoryTransport(max_frame_size=small)

    async def size(msg):
        return len(msg.body)

    with trio.fail_after(30):
        async with open_node(transports={"mem": mem}) as server, open_node(transports={"mem": mem}) as client:
            assert mem.max_frame_size == small
            await server.listen("mem://srv")
            server.endpoint("bob", **ring.credentials("bob")).register("size", size)
            client.add_route("bob", "mem://srv")
            alice = client.endpoint("alice", **ring.credentials("alice"))
            assert await alice.request("bob", "size", b"") == 0
            # (a request after the first names alice and bob by their aliases on the channel: 0 and 0)
            overhead = len(encode_compact(MessageType.REQUEST, "size", 2, None, "alice", "bob", b"", (0, 0))) - 2
            fits = small - CHANNEL_OVERHEAD - overhead - 3  # (a bin 16 header: 3 bytes)
            assert await alice.request("bob", "size", b"x" * fits) == fits
            with pytest.raises(FrameError, match="limit"):
                await alice.request("bob", "size", b"x" * (fits + 1))


# ------------------------------------------------------------ finding 2: nothing proved to an anonymous client


async def _echo(msg):
    return msg.body


def _counting(ring, agent, log):
    sign = ring.add(agent)

    def signer(message):
        log.append(agent)
        return sign(message)
    return signer


async def test_a_want_is_answered_only_once_the_client_proved_an_agent_the_node_knows(
        raw_channel, unsigned_envelope):
    ring = Keyring()
    ring.add("mallory")
    signed = []
    with trio.fail_after(30):
        async with open_node() as server:
            address = await server.listen("tcp://127.0.0.1:0")
            server.endpoint("bob", signer=_counting(ring, "bob", signed), directory=ring.directory,
                            verifier=ring.verifier).register("ping", _echo)
            async with await raw_channel(address) as raw:
                await raw.stream.send_all(raw.sealed(b"bob", frame_type=WANT))
                # an envelope after it: once the node counted it, it has seen the WANT too
                await raw.send(unsigned_envelope("mallory", body="first"))
                await eventually(lambda: server.statistics().rejected.get("unproven-sender", 0) == 1)
                assert signed == [] and "bob" not in raw.channel.claims
                await raw.prove("mallory", ring.signer("mallory"))
                await raw.send(unsigned_envelope("mallory", body="second"))
                reply = await raw.receive()
                assert reply.type == MessageType.REPLY and reply.body == "second"
                assert "bob" in raw.channel.claims  # (proved ahead of the reply)
    assert signed == ["bob"]


async def test_proofs_that_do_not_verify_cost_a_few_verifications_then_the_channel(raw_channel):
    ring = Keyring()
    victims = [f"user-{i}" for i in range(MAX_PROOF_FAILURES + 3)]
    for name in ["mallory", *victims]:
        ring.add(name)
    verified = []

    def verifier(key, message, signature):
        verified.append(key)
        return ring.verifier(key, message, signature)

    signed = []
    with trio.fail_after(30):
        async with open_node() as server:
            address = await server.listen("tcp://127.0.0.1:0")
            server.endpoint("bob", signer=_counting(ring, "bob", signed), directory=ring.directory,
                            verifier=verifier)
            async with await raw_channel(address) as raw:
                # every registered user's name, proved with mallory's key; then a WANT
                for victim in victims:
                    await raw.prove(victim, ring.signer("mallory"))
                await raw.prove("stranger", ring.signer("mallory"))  # unknown here: not verified at all
                await raw.stream.send_all(raw.sealed(b"bob", frame_type=WANT))
                assert await raw.receive() is None  # dropped
            await eventually(lambda: server.statistics().dropped_connections.get("bad-proofs", 0) == 1)
    assert len(verified) == MAX_PROOF_FAILURES
    assert signed == []


async def test_a_client_the_node_learns_a_moment_later_is_answered(autojump_clock):
    """A user registered a block ago: the node's directory does not know her yet when
    she asks; her WANT waits (at most the handshake timeout) and is answered once it does."""
    ring = Keyring()
    mem = MemoryTransport()
    hidden = {"carol"}

    def server_directory(agent):
        return None if agent in hidden else ring.directory(agent)

    async def learn():
        await trio.sleep(3)
        hidden.clear()

    async with open_node(transports={"mem": mem}, handshake_timeout=10) as server, \
            open_node(transports={"mem": mem}, handshake_timeout=10, routes={"bob": "mem://srv"}) as client:
        await server.listen("mem://srv")
        bob_creds = ring.credentials("bob")
        server.endpoint("bob", signer=bob_creds["signer"], directory=server_directory,
                        verifier=ring.verifier).register("ping", _echo)
        carol = client.endpoint("carol", **ring.credentials("carol"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(learn)
            assert await carol.request("bob", "ping", "late", timeout=None) == "late"
        # on carol's channel (vouched for) an unknown agent is the endpoint's to refuse ...
        hidden.add("dave")
        dave = client.endpoint("dave", **ring.credentials("dave"))
        with pytest.raises(RemoteError, match="unknown-sender"):
            await dave.request("bob", "ping", "refused", timeout=None)
        # ... while on a channel of its own, never learnt, nothing is proved to it
        async with open_node(transports={"mem": mem}, handshake_timeout=10, routes={"bob": "mem://srv"}) as other:
            alone = other.endpoint("dave", **ring.credentials("dave"))
            with pytest.raises(UnreachableError, match="did not prove"):
                await alone.request("bob", "ping", "never", timeout=None)


# ------------------------------------------------------------ review: a proof that fails, checked once


async def test_a_registered_client_forging_a_proof_costs_a_bounded_number_of_verifications(
        raw_channel, unsigned_envelope):
    """Mallory (registered, proved as herself) sends a junk proof of alice, then many
    envelopes as alice: each was checked against the proof again (one signature
    verification per ~40-byte envelope). A failed (agent, key, proof) is now
    remembered, and a channel whose proofs fail MAX_PROOF_FAILURES times is dropped."""
    ring = Keyring()
    for name in ("mallory", "alice", "carol", "dave", "erin", "frank"):
        ring.add(name)
    verified = []

    def verifier(key, message, signature):
        verified.append(key)
        return ring.verifier(key, message, signature)

    with trio.fail_after(30):
        async with open_node() as server:
            address = await server.listen("tcp://127.0.0.1:0")
            bob = server.endpoint("bob", signer=ring.add("bob"), directory=ring.directory, verifier=verifier)
            bob.register("ping", _echo)
            async with await raw_channel(address, prove={"mallory": ring.signer("mallory")}) as raw:
                await raw.send(unsigned_envelope("mallory", body="own"))
                assert (await raw.receive()).body == "own"
                await raw.prove("alice", ring.signer("mallory"))
                for i in range(50):
                    await raw.send(unsigned_envelope("alice", body=i, mtype=MessageType.EVENT, kind="note"))
                await raw.send(unsigned_envelope("mallory", body="still here"))
                reply = await raw.receive()
                assert reply.type == MessageType.REPLY and reply.body == "still here"
                before = len(verified)
                assert before <= 3  # mallory's own proof (node, endpoint) and alice's once
                # more forged proofs under other registered names: the channel is dropped
                try:
                    for name in ("carol", "dave", "erin", "frank"):
                        await raw.prove(name, ring.signer("mallory"))
                        await raw.send(unsigned_envelope(name, body=name, mtype=MessageType.EVENT, kind="note"))
                    assert await raw.receive() is None
                except trio.BrokenResourceError:
                    pass  # (reset: the node closed it while she was still sending)
            await eventually(lambda: server.statistics().dropped_connections.get("bad-proofs", 0) == 1)
    assert len(verified) <= before + MAX_PROOF_FAILURES


async def test_wants_from_a_client_proving_many_unknown_agents_do_not_rescan_its_proofs(
        raw_channel, unsigned_envelope):
    """Before it is vouched for, a channel's proofs are looked at when they arrive (and
    on a timer, for agents the node may learn): a WANT or an envelope does not make the
    node look up every proof again (200 proofs x 500 WANTs were 100,000 look-ups)."""
    ring = Keyring()
    looked_up = []

    def directory(agent):
        looked_up.append(agent)
        return ring.directory(agent)

    with trio.fail_after(60):
        async with open_node() as server:
            address = await server.listen("tcp://127.0.0.1:0")
            server.endpoint("bob", signer=ring.add("bob"), directory=directory, verifier=ring.verifier)
            async with await raw_channel(address) as raw:
                stranger = Keyring().add("stranger")
                await raw.stream.send_all(b"".join(
                    raw.sealed(raw.channel.make_proof(f"stranger-{i}", stranger), frame_type=PROOF)
                    for i in range(200)))
                await raw.stream.send_all(b"".join(raw.sealed(b"bob", frame_type=WANT) for _ in range(500)))
                await raw.send(unsigned_envelope("stranger-0"))
                await eventually(lambda: server.statistics().rejected.get("unproven-sender", 0) == 1)
    # the first look at each proof, and the timer's looks again (each at least 50 ms apart)
    assert len(looked_up) <= 200 * 12, len(looked_up)


# ------------------------------------------------------------ review: per-source limits and IPv6


class _FromAddresses:
    """A MemoryTransport whose incoming connections come from the given remote IPs
    (what a TCP listener reports as their source)."""

    scheme = "mem"

    def __init__(self, sources):
        self.inner = MemoryTransport()
        self.sources = iter(sources)

    async def connect(self, address):
        return await self.inner.connect(address)

    async def serve(self, address, handler, nursery):
        async def from_address(conn):
            conn.source = next(self.sources)
            await handler(conn)
        return await self.inner.serve(address, from_address, nursery)


async def test_the_addresses_of_one_ipv6_network_share_one_per_source_limit():
    """A client given an IPv6 /64 (the least a site or subscriber gets) has 2**64
    addresses: counted one by one it had a per-source limit per address. Limits now
    count an IPv6 address by its /64 (an IPv4-mapped one as the IPv4 address)."""
    sources = ["2001:db8:1:2::1", "2001:db8:1:2::ffff:2", "::ffff:192.0.2.7", "192.0.2.7", "2001:db8:1:3::1"]
    mem = _FromAddresses(sources)
    with trio.fail_after(30):
        async with open_node(transports={"mem": mem}, max_connections_per_source=1) as server:
            await server.listen("mem://srv")
            opened = []
            for _ in sources:
                conn = await mem.connect(parse_address("mem://srv"))
                opened.append(conn)
                await trio.testing.wait_all_tasks_blocked()
            # one of the /64, one of 192.0.2.7 (mapped or not), one of the other /64
            assert server.statistics().refused_connections == 2
            for conn in opened:
                await conn.aclose()


async def test_a_channel_that_never_proves_an_agent_the_node_knows_is_not_kept(autojump_clock):
    """An anonymous client kept a connection slot as long as it sent an envelope within
    the idle timeout (one every 299 s, refused: for ever, 64 per address). A channel not
    vouched for within the handshake timeout is now dropped (``unproven-timeout``)."""
    from bus import channel_handshake

    ring = Keyring()
    mem = MemoryTransport()
    async with open_node(transports={"mem": mem}, handshake_timeout=10, idle_timeout=100) as server, \
            open_node(transports={"mem": mem}, routes={"bob": "mem://srv"}) as client:
        await server.listen("mem://srv")
        server.endpoint("bob", **ring.credentials("bob")).register("ping", _echo)
        anonymous = await channel_handshake(await mem.connect(parse_address("mem://srv")), initiator=True)
        for i in range(30):  # an envelope every 5 s: never idle
            try:
                await anonymous.send(_envelope(i))
            except (BrokenError, ClosedError):
                break
            await trio.sleep(5)
        assert server.statistics().dropped_connections == {"unproven-timeout": 1}
        assert "bob" not in anonymous.channel.claims
        # a client that proved itself keeps its channel past that
        alice = client.endpoint("alice", **ring.credentials("alice"))
        assert await alice.request("bob", "ping", 1) == 1
        await trio.sleep(60)
        assert server.statistics().incoming_connections == 1
        assert await alice.request("bob", "ping", 2) == 2
        assert server.statistics().dropped_connections == {"unproven-timeout": 1}
