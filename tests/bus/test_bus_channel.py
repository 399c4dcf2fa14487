"""Authenticated encrypted channels (bus.channel): the sans-I/O protocol under
hypothesis, then hostile clients against a real TCP node while a legitimate
client keeps working, the two modes refusing each other, no crypto between
agents of one node, and routing to an agent the remote node does not host.

The hostile clients do the handshake by hand (``raw_channel``, conftest) so
that each attack comes after it; the legitimate client's rounds have generous
liveness bounds, never a latency assertion.
"""


import msgpack
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bus import (
    MAX_CLAIMS,
    MAX_PROVED_AT_HANDSHAKE,
    ChannelError,
    DeliveryError,
    Handshake,
    MemoryTransport,
    MessageType,
    RemoteError,
    TcpTransport,
    UnreachableError,
    FrameError,
    encode_frame,
    open_node,
)
from bus.channel import CHANNEL_PROTOCOL, CHANNEL_VERSION, ENVELOPE, PROOF, WANT
from bus.envelope import encode_compact
from bus.testing import Keyring, eventually, linked_pair

pytestmark = pytest.mark.crypto

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
keys = st.binary(min_size=32, max_size=32)
payloads = st.binary(max_size=4096)


def pair(e_i=None, e_r=None):
    """(initiator's channel, responder's channel) after a clean handshake."""
    hs_i, hs_r = Handshake(initiator=True, ephemeral=e_i), Handshake(initiator=False, ephemeral=e_r)
    return hs_i.finish(hs_r.hello), hs_r.finish(hs_i.hello)


def assert_refused(channel, frame):
    """``channel`` refuses to open ``frame`` (ChannelError)."""
    with pytest.raises(ChannelError):
        channel.open(frame)


# ------------------------------------------------------------ handshake and frames (sans-I/O)


@SETTINGS
@given(keys, keys, st.lists(payloads, max_size=5), st.lists(payloads, max_size=5))
def test_both_sides_derive_the_same_binding_and_keys(e_i, e_r, to_r, to_i):
    ci, cr = pair(e_i, e_r)
    assert ci.binding == cr.binding and len(ci.binding) == 32
    assert ci.initiator and not cr.initiator
    for p in to_r:  # i -> r, in order
        assert cr.open(ci.seal(ENVELOPE, p)) == (ENVELOPE, p)
    for p in to_i:  # r -> i
        assert ci.open(cr.seal(PROOF, p)) == (PROOF, p)


large_sizes = st.integers(min_value=64 * 1024 - 40, max_value=300_000)  # around and above the in-place size


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(large_sizes, min_size=1, max_size=3), st.booleans(), st.integers(0, 255))
def test_a_large_bytearray_frame_is_opened_in_place_and_others_as_before(sizes, framed, fill):
    """A frame from 64 KiB that comes as a bytearray is decrypted in place: the payload is
    that bytearray (type byte and tag cut off), with the bytes sealed; as bytes (or a
    view) the same frame opens to the same bytes without being changed."""
    ci, cr = pair()
    ci2, cr2 = pair()
    for n in sizes:
        payload = bytes([fill]) * n
        sealed = bytes(ci.seal(ENVELOPE, payload, framed=framed))[4 if framed else 0 :]
        frame = bytearray(sealed)
        frame_type, opened = cr.open(frame)
        assert frame_type == ENVELOPE and opened == payload
        assert opened is frame if n + 17 >= 64 * 1024 else type(opened) is bytes
        kept = bytes(ci2.seal(ENVELOPE, payload))
        assert cr2.open(kept) == (ENVELOPE, payload) and cr2.open(memoryview(bytes(ci2.seal(ENVELOPE, payload)))) == (
            ENVELOPE, payload)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(large_sizes, st.data())
def test_a_large_bytearray_frame_with_a_bit_flipped_is_refused_and_moves_nothing(n, data):
    ci, cr = pair()
    payload = bytes(range(256)) * (n // 256) + bytes(n % 256)
    sealed = bytes(ci.seal(ENVELOPE, payload))
    frame = bytearray(sealed)
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    frame[bit // 8] ^= 1 << (bit % 8)
    assert_refused(cr, frame)
    assert cr.open(bytearray(sealed)) == (ENVELOPE, payload)  # the counter did not move


def test_fresh_ephemerals_give_fresh_bindings():
    (a, _), (b, _) = pair(), pair()
    assert a.binding != b.binding


@SETTINGS
@given(payloads, st.data())
def test_any_single_bit_flipped_is_refused(payload, data):
    ci, cr = pair()
    frame = bytearray(ci.seal(ENVELOPE, payload))
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    frame[bit // 8] ^= 1 << (bit % 8)
    assert_refused(cr, bytes(frame))


@SETTINGS
@given(payloads, st.data())
def test_a_truncated_or_extended_frame_is_refused(payload, data):
    ci, cr = pair()
    frame = ci.seal(ENVELOPE, payload)
    cut = data.draw(st.integers(0, len(frame) - 1))
    assert_refused(cr, frame[:cut])
    assert_refused(cr, frame + data.draw(st.binary(min_size=1, max_size=8)))
    assert cr.open(frame) == (ENVELOPE, payload)  # a refused frame moved nothing


@SETTINGS
@given(payloads, payloads)
def test_a_replayed_frame_is_refused(p1, p2):
    ci, cr = pair()
    f1, f2 = ci.seal(ENVELOPE, p1), ci.seal(ENVELOPE, p2)
    assert cr.open(f1) == (ENVELOPE, p1)
    assert_refused(cr, f1)
    assert cr.open(f2) == (ENVELOPE, p2)
    assert_refused(cr, f2)
    assert_refused(cr, f1)


@SETTINGS
@given(payloads, payloads)
def test_two_frames_swapped_are_refused(p1, p2):
    ci, cr = pair()
    f1, f2 = ci.seal(ENVELOPE, p1), ci.seal(ENVELOPE, p2)
    assert_refused(cr, f2)
    assert cr.open(f1) == (ENVELOPE, p1)  # (in order they open)
    assert cr.open(f2) == (ENVELOPE, p2)


@SETTINGS
@given(payloads)
def test_a_frame_from_the_other_direction_or_another_channel_is_refused(payload):
    ci, cr = pair()
    own = ci.seal(ENVELOPE, payload)
    assert_refused(ci, own)  # reflected back to its sender
    # the responder's first frame has the same counter (0) as the initiator's:
    # only the per-direction key tells them apart
    assert_refused(ci, bytes([ENVELOPE]) + own[1:])
    other_i, other_r = pair()
    assert_refused(other_r, own)


@SETTINGS
@given(payloads)
def test_the_frame_type_is_authenticated(payload):
    ci, cr = pair()
    frame = ci.seal(ENVELOPE, payload)
    assert_refused(cr, bytes([PROOF]) + frame[1:])
    assert_refused(cr, bytes([7]) + frame[1:])


# ------------------------------------------------------------ identity proofs


agent_ids = st.text(min_size=1, max_size=64)


def agent_and_channels(agent):
    """A keyring holding ``agent``, its signer, and a fresh (initiator's, responder's) channel pair."""
    ring = Keyring()
    return (ring, ring.add(agent), *pair())


def claim(channel, proof, ring, agent):
    """Present ``proof`` (of ``agent``) on ``channel``: what claim_ok then says (None: proven)."""
    channel.add_claim(proof)
    return channel.claim_ok(agent, ring.directory(agent), ring.verifier)


def test_a_proof_verifies_on_its_channel_under_the_right_key_only():
    ring = Keyring()
    alice, mallory = ring.add("alice"), ring.add("mallory")
    ci, cr = pair()
    assert cr.add_claim(ci.make_proof("alice", alice)) == "alice"
    assert "alice" in ci.proven_here
    assert cr.claim_ok("alice", ring.directory("mallory"), ring.verifier) == "unproven-sender"  # wrong key
    assert cr.claim_ok("alice", None, ring.verifier) == "unknown-sender"
    assert cr.claim_ok("carol", ring.directory("mallory"), ring.verifier) == "unproven-sender"  # no proof
    assert cr.claim_ok("alice", ring.directory("alice"), ring.verifier) is None
    # a proof of alice made with mallory's key never verifies as alice
    ci2, cr2 = pair()
    cr2.add_claim(ci2.make_proof("alice", mallory))
    assert cr2.claim_ok("alice", ring.directory("alice"), ring.verifier) == "unproven-sender"
    # a verifier that raises is a refusal, not a crash
    cr3 = pair()[1]
    cr3.add_claim(pair()[0].make_proof("alice", alice))

    def boom(key, message, signature):
        raise ValueError("bad key")

    assert cr3.claim_ok("alice", ring.directory("alice"), boom) == "unproven-sender"


@SETTINGS
@given(agent_ids)
def test_a_proof_made_for_one_channel_does_not_verify_on_another(agent):
    ring, signer, ci, cr = agent_and_channels(agent)
    proof = ci.make_proof(agent, signer)
    other_i, other_r = pair()
    assert claim(other_r, proof, ring, agent) == "unproven-sender"  # replayed onto another channel (same role)
    assert claim(cr, proof, ring, agent) is None


@SETTINGS
@given(agent_ids)
def test_a_reflected_proof_does_not_verify(agent):
    ring, signer, ci, cr = agent_and_channels(agent)
    # the initiator's proof, presented back to the initiator as the responder's
    assert claim(ci, ci.make_proof(agent, signer), ring, agent) == "unproven-sender"
    # and the responder's presented back to the responder
    assert claim(cr, cr.make_proof(agent, signer), ring, agent) == "unproven-sender"


def test_more_than_max_claims_identities_are_refused():
    ci, cr = pair()
    signer = Keyring().add("x")
    for i in range(MAX_CLAIMS):
        cr.add_claim(ci.make_proof(f"agent-{i}", signer))
    cr.add_claim(ci.make_proof("agent-0", signer))  # proving one again is no new identity
    with pytest.raises(ChannelError):
        cr.add_claim(ci.make_proof("one-too-many", signer))


@SETTINGS
@given(st.one_of(
    st.binary(max_size=1100),
    st.builds(lambda v: msgpack.packb(v, use_bin_type=True), st.one_of(
        st.lists(st.one_of(st.text(max_size=8), st.binary(max_size=8), st.integers(-2**63, 2**64 - 1), st.none()),
                 max_size=4),
        st.tuples(st.text(max_size=3), st.binary(max_size=4)),
        st.tuples(st.just(""), st.binary(min_size=1, max_size=4)),
        st.tuples(st.text(min_size=1, max_size=3), st.just(b"")),
    )),
))
def test_malformed_proofs_are_refused(payload):
    cr = pair()[1]
    try:
        agent = cr.add_claim(payload)
    except ChannelError:
        return
    # accepted only if it really is [non-empty str, non-empty bin]
    agent_, signature = msgpack.unpackb(payload, raw=False)
    assert agent == agent_ and isinstance(agent, str) and agent and isinstance(signature, bytes) and signature


# ------------------------------------------------------------ hellos and ephemeral keys

_P = 2**255 - 19
LOW_ORDER = [
    bytes(32),  # 0
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),  # order 8
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),  # order 8
    (_P - 1).to_bytes(32, "little"),  # order 2
    _P.to_bytes(32, "little"),  # 0 again, not reduced
    (_P + 1).to_bytes(32, "little"),  # 1 again, not reduced
]


def hello(*fields):
    return msgpack.packb(list(fields), use_bin_type=True)


@pytest.mark.parametrize("point", LOW_ORDER, ids=range(len(LOW_ORDER)))
def test_low_order_and_zero_ephemeral_keys_are_refused(point):
    with pytest.raises(ChannelError):
        Handshake(initiator=False).finish(hello(CHANNEL_PROTOCOL, CHANNEL_VERSION, point))
    with pytest.raises(ChannelError):
        Handshake(initiator=True).finish(hello(CHANNEL_PROTOCOL, CHANNEL_VERSION, point))


@pytest.mark.parametrize("bad", [
    b"",
    b"\xc1",
    hello(CHANNEL_PROTOCOL, CHANNEL_VERSION),
    hello(CHANNEL_PROTOCOL, CHANNEL_VERSION, b"\x09" * 32)[:-1],  # cut inside its key
    hello(CHANNEL_PROTOCOL, CHANNEL_VERSION, b"\x09" * 31),
    hello(CHANNEL_PROTOCOL, CHANNEL_VERSION, b"\x09" * 33),
    hello(CHANNEL_PROTOCOL, CHANNEL_VERSION, "\x09" * 32),
    hello(CHANNEL_PROTOCOL, 1, b"\x09" * 32),  # a node of channel version 1 (full envelopes)
    hello(CHANNEL_PROTOCOL, 2, b"\x09" * 32),  # version 2 (compact replies with names, no kind codes)
    hello(CHANNEL_PROTOCOL, 3, b"\x09" * 32),  # version 3 (proofs give no aliases, envelopes use none)
    hello(CHANNEL_PROTOCOL, 5, b"\x09" * 32),
    hello(CHANNEL_PROTOCOL, True, b"\x09" * 32),
    hello(CHANNEL_PROTOCOL, 1.0, b"\x09" * 32),
    hello("emrshare/channel2", CHANNEL_VERSION, b"\x09" * 32),
    hello(CHANNEL_PROTOCOL.encode(), CHANNEL_VERSION, b"\x09" * 32),
    hello(CHANNEL_PROTOCOL, CHANNEL_VERSION, b"\x09" * 32, b""),
    msgpack.packb({"p": CHANNEL_PROTOCOL}),
    hello(CHANNEL_PROTOCOL, CHANNEL_VERSION, b"\x09" * 32) + b"\xc0",  # trailing bytes
    hello(CHANNEL_PROTOCOL, CHANNEL_VERSION, b"\x09" * 32) + bytes(40),  # over the 64-byte limit
])
def test_malformed_hellos_are_refused(bad):
    with pytest.raises(ChannelError):
        Handshake(initiator=False).finish(bad)


@SETTINGS
@given(st.one_of(
    st.binary(max_size=100),
    st.builds(lambda v: msgpack.packb(v, use_bin_type=True), st.lists(
        st.one_of(st.just(CHANNEL_PROTOCOL), st.just(CHANNEL_VERSION), st.binary(min_size=30, max_size=34),
                  st.text(max_size=20), st.integers(-2, 3), st.none(), st.booleans()),
        max_size=5,
    )),
))
def test_fuzzed_hellos_are_refused_or_are_hellos(data):
    try:
        Handshake(initiator=False).finish(data)
    except ChannelError:
        return
    # accepted only if it really is one
    fields = msgpack.unpackb(data, raw=False)
    assert fields[:2] == [CHANNEL_PROTOCOL, CHANNEL_VERSION] and type(fields[1]) is int
    assert type(fields[2]) is bytes and len(fields[2]) == 32 and len(fields) == 3


@SETTINGS
@given(keys)
@example(bytes(31) + b"\x80")  # 0 with the top bit set: refused as 0 is
def test_any_well_formed_hello_with_a_random_key_is_taken(point):
    try:
        ci = Handshake(initiator=False).finish(hello(CHANNEL_PROTOCOL, CHANNEL_VERSION, point))
    except ChannelError:
        u = int.from_bytes(point, "little") & ((1 << 255) - 1)  # (X25519 ignores the top bit)
        assert u.to_bytes(32, "little") in LOW_ORDER or u % _P in (0, 1, _P - 1)
        return
    assert len(ci.binding) == 32


# ------------------------------------------------------------ hostile clients on a real TCP node

ROUNDS = 20


class Scene:
    def __init__(self, ring, server, bob, alice, address, calls):
        self.ring, self.server, self.bob, self.alice, self.address, self.calls = (
            ring, server, bob, alice, address, calls)

    async def keep_working(self, rounds=ROUNDS):
        for i in range(rounds):
            assert await self.alice.request("bob", "ping", i, timeout=15) == i


async def run_scene(test, **server_options):
    """Server node with bob (ping echoes, records senders); legitimate client
    alice on her own node (from 127.0.0.2); mallory has a registered key."""
    ring = Keyring()
    ring.add("mallory")
    calls = []

    async def ping(msg):
        calls.append((msg.sender, msg.body))
        return msg.body

    with trio.fail_after(60):
        async with linked_pair(ring, None, server_options=server_options, client_address="127.0.0.2") as (
                server, _, alice, address):
            bob = server.endpoint("bob", **ring.credentials("bob"))
            bob.register("ping", ping)
            scene = Scene(ring, server, bob, alice, address, calls)
            assert await alice.request("bob", "ping", "hello", timeout=15) == "hello"
            await test(scene)


async def while_attacked(scene, attack):
    """Run ``attack(scene, ready)``; once ready, the legitimate client does its rounds."""
    async with trio.open_nursery() as nursery:
        ready = trio.Event()
        nursery.start_soon(attack, scene, ready)
        await ready.wait()
        await scene.keep_working()
        nursery.cancel_scope.cancel()


def mallory_calls(scene):
    return [c for c in scene.calls if c[0] != "alice"]


async def test_a_replayed_frame_breaks_its_channel_only(raw_channel, unsigned_envelope):
    outcome = []

    async def attack(scene, ready):
        async with await raw_channel(scene.address, prove={"mallory": scene.ring.signer("mallory")}) as raw:
            wire = raw.sealed(unsigned_envelope("mallory", body="once"))
            await raw.stream.send_all(wire)
            reply = await raw.receive()
            assert reply.type == MessageType.REPLY and reply.body == "once"
            await raw.stream.send_all(wire)  # the same sealed bytes again
            outcome.append(await raw.receive())  # the node closes the channel
            ready.set()
            await trio.sleep_forever()

    async def test(scene):
        await while_attacked(scene, attack)
        assert outcome == [None]
        assert mallory_calls(scene) == [("mallory", "once")]
        assert scene.server.statistics().broken_connections == 1

    await run_scene(test)


async def test_a_forged_sender_is_refused(raw_channel, unsigned_envelope):
    async def attack(scene, ready):
        # proved as mallory, sends as alice
        async with await raw_channel(scene.address, prove={"mallory": scene.ring.signer("mallory")}) as raw:
            for i in range(20):
                await raw.send(unsigned_envelope("alice", body=f"forged-{i}"))
            await raw.send(unsigned_envelope("mallory", body="own"))  # its own name still works
            replies = [await raw.receive() for _ in range(21)]
            codes = [r.body["code"] for r in replies if r.type == MessageType.ERROR]
            assert codes == ["unproven-sender"] * 20
            assert [r.body for r in replies if r.type == MessageType.REPLY] == ["own"]
            ready.set()
            await trio.sleep_forever()

    async def test(scene):
        await while_attacked(scene, attack)
        assert not [body for sender, body in scene.calls if str(body).startswith("forged")]
        assert scene.bob.statistics().rejected["unproven-sender"] == 20

    await run_scene(test)


async def test_a_proof_signed_with_the_wrong_key_proves_nothing(raw_channel, unsigned_envelope):
    async def attack(scene, ready):
        ring = scene.ring
        # alice's name proved with mallory's key; mallory's name with a key of nobody's
        stranger = Keyring().add("mallory")
        async with await raw_channel(scene.address,
                                     prove={"alice": ring.signer("mallory"), "mallory": stranger}) as raw:
            await raw.send(unsigned_envelope("alice", body="as-alice"))
            await raw.send(unsigned_envelope("mallory", body="as-mallory"))
            ready.set()
            await trio.sleep_forever()

    async def test(scene):
        await while_attacked(scene, attack)
        # refused by the node: a channel that proved no agent it knows reaches no endpoint
        await eventually(lambda: scene.server.statistics().rejected.get("unproven-sender", 0) == 2)
        assert not scene.bob.statistics().rejected
        assert mallory_calls(scene) == []

    await run_scene(test)


async def test_bytes_after_a_failed_handshake_are_never_read(unsigned_envelope):
    async def attack(scene, ready):
        host, port = scene.address.removeprefix("tcp://").rsplit(":", 1)
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            # a well-formed hello with a low-order key, then what would follow a handshake
            ci, _ = pair()
            wire = encode_frame(hello(CHANNEL_PROTOCOL, CHANNEL_VERSION, bytes(32)))
            wire += encode_frame(ci.seal(PROOF, ci.make_proof("mallory", scene.ring.signer("mallory"))))
            wire += encode_frame(ci.seal(ENVELOPE, unsigned_envelope("mallory")))
            await stream.send_all(wire)
            with trio.fail_after(15):
                assert await stream.receive_some(65536) == b""  # no hello back, closed
        ready.set()
        await trio.sleep_forever()

    async def test(scene):
        await while_attacked(scene, attack)
        assert mallory_calls(scene) == []
        stats = scene.server.statistics()
        assert stats.dropped_connections["handshake-failed"] == 1
        assert not stats.rejected

    await run_scene(test)


async def test_a_client_that_proves_nothing_is_refused(raw_channel, unsigned_envelope):
    async def attack(scene, ready):
        async with await raw_channel(scene.address) as raw:
            await raw.send(unsigned_envelope("mallory", body="unproven"))  # registered, not proved here
            await raw.send(unsigned_envelope("nobody", body="unknown"))  # not in the directory at all
            ready.set()
            await trio.sleep_forever()

    async def test(scene):
        await while_attacked(scene, attack)
        # refused by the node before any endpoint (or verification) sees them
        await eventually(lambda: scene.server.statistics().rejected.get("unproven-sender", 0) == 2)
        assert not scene.bob.statistics().rejected
        assert mallory_calls(scene) == []

    await run_scene(test)


async def test_a_client_that_proves_nothing_gets_no_reply_and_costs_no_signature(raw_channel, unsigned_envelope):
    # an error reply would need bob's proof on the channel (a signature for anyone who
    # completes a handshake): the node sends none until the client proved an agent it knows
    ring = Keyring()
    ring.add("mallory")
    signed = []
    bob_sign = ring.add("bob")

    def counting(message):
        signed.append(message)
        return bob_sign(message)

    async with open_node(handshake_timeout=1) as server:
        address = await server.listen("tcp://127.0.0.1:0")
        server.endpoint("bob", signer=counting, directory=ring.directory, verifier=ring.verifier).register(
            "ping", _echo)
        async with await raw_channel(address) as raw:
            await raw.send(unsigned_envelope("mallory", body="unproven"))
            await eventually(lambda: server.statistics().rejected.get("unproven-sender", 0) == 1)
            assert signed == []
            await raw.prove("mallory", ring.signer("mallory"))
            await raw.send(unsigned_envelope("mallory", body="proved"))
            with trio.fail_after(5):  # (a liveness bound: the reply is due at once)
                reply = await raw.receive()
        # the first envelope the node sends on the channel: nothing answered the unproven one
        assert reply is not None and reply.type == MessageType.REPLY and reply.body == "proved"
        assert len(signed) == 1  # bob proved once, to the client that proved mallory


async def test_a_client_that_proves_more_than_max_claims_is_dropped(raw_channel):
    async def attack(scene, ready):
        async with await raw_channel(scene.address) as raw:
            signer = scene.ring.signer("mallory")
            wire = b"".join(raw.sealed(raw.channel.make_proof(f"m{i}", signer), frame_type=PROOF)
                            for i in range(MAX_CLAIMS + 1))
            await raw.stream.send_all(wire)
            with trio.fail_after(15):
                assert await raw.receive() is None  # dropped
            ready.set()
            await trio.sleep_forever()

    async def test(scene):
        await while_attacked(scene, attack)
        assert scene.server.statistics().broken_connections == 1

    await run_scene(test)


# ------------------------------------------------------------ the two modes refuse each other


@pytest.mark.parametrize("server_channels", [True, False], ids=["channel-server", "signed-server"])
async def test_channel_and_signed_nodes_refuse_each_other_cleanly(server_channels):
    ring = Keyring()
    calls = []

    async def ping(msg):
        calls.append(msg.sender)
        return msg.body

    with trio.fail_after(30):
        async with open_node(channels=server_channels) as server, \
                open_node(channels=not server_channels, connect_attempts=1) as client:
            address = await server.listen("tcp://127.0.0.1:0")
            server.endpoint("bob", **ring.credentials("bob")).register("ping", ping)
            client.add_route("bob", address)
            alice = client.endpoint("alice", **ring.credentials("alice"))
            # a channel client learns at its handshake that the node is not one (UnreachableError);
            # a signed-mode client, which has no handshake, sees the connection close (BrokenError)
            with pytest.raises(DeliveryError) as info:
                await alice.request("bob", "ping", 1, timeout=10)
            if not server_channels:
                assert isinstance(info.value, UnreachableError)
            # the signed envelope is no hello; the hello is no envelope
            await eventually(lambda: server.statistics().dropped_connections.get("handshake-failed") == 1)
            assert not server.statistics().rejected
            assert calls == []
            # a client of the right mode is served by the same node
            async with open_node(channels=server_channels) as good:
                good.add_route("bob", address)
                carol = good.endpoint("carol", **ring.credentials("carol"))
                assert await carol.request("bob", "ping", 2, timeout=10) == 2


# ------------------------------------------------------------ no crypto inside one node


async def test_agents_of_one_node_exchange_messages_with_no_crypto():
    ring = Keyring()
    calls = {"sign": 0, "verify": 0}

    def signer(message):
        calls["sign"] += 1
        raise AssertionError("signed a message between agents of one node")

    def verifier(key, message, signature):
        calls["verify"] += 1
        raise AssertionError("verified a message between agents of one node")

    got = []

    async def note(msg):
        got.append(msg.body)

    async with open_node() as node:
        await node.listen("tcp://127.0.0.1:0")  # channels open or not, local delivery stays local
        ring.add("alice")
        ring.add("bob")
        alice = node.endpoint("alice", signer=signer, directory=ring.directory, verifier=verifier)
        bob = node.endpoint("bob", signer=signer, directory=ring.directory, verifier=verifier)
        bob.register("ping", _echo)
        bob.register("note", note)
        with trio.fail_after(10):
            for i in range(50):
                assert await alice.request("bob", "ping", i) == i
            with pytest.raises(RemoteError, match="unknown-kind"):
                await alice.request("bob", "nothing", 0)
            await alice.send("bob", "note", "sent")
            sub = await alice.subscribe("bob", "news")
            await bob.publish("news", "event")
            assert (await sub.receive()).body == "event"
            await eventually(lambda: got == ["sent"])
    assert calls == {"sign": 0, "verify": 0}


async def _echo(msg):
    return msg.body


# ------------------------------------------------------------ routing to an agent the remote node does not host


async def test_routing_to_an_agent_the_remote_node_does_not_host(autojump_clock):
    ring = Keyring()
    mem = MemoryTransport()
    async with open_node(transports={"mem": mem}) as server, \
            open_node(transports={"mem": mem}, handshake_timeout=10,
                      routes={"bob": "mem://srv", "carol": "mem://srv"}) as client:
        await server.listen("mem://srv")
        server.endpoint("bob", **ring.credentials("bob")).register("ping", _echo)
        ring.add("carol")  # a known key, but the node at mem://srv does not host carol
        alice = client.endpoint("alice", **ring.credentials("alice"))
        assert await alice.request("bob", "ping", 1) == 1
        started = trio.current_time()
        with pytest.raises(UnreachableError, match="carol"):
            await alice.request("carol", "ping", 1, timeout=None)
        assert trio.current_time() - started <= 10 + 1  # bounded by the handshake timeout
        assert await alice.request("bob", "ping", 2) == 2  # the channel is still good for bob


# ------------------------------------------------------------ near the limit on caller-supplied transports


@pytest.mark.parametrize("kind", ["mem", "tcp"])
async def test_an_envelope_of_exactly_the_frame_limit_crosses_a_supplied_transport(kind):
    ring = Keyring()
    limit = 1 << 20
    transport = MemoryTransport(max_frame_size=limit) if kind == "mem" else TcpTransport(max_frame_size=limit)

    async def size(msg):
        return len(msg.body)

    with trio.fail_after(30):
        async with open_node(transports={kind: transport}, max_frame_size=limit) as server, \
                open_node(transports={kind: transport}, max_frame_size=limit) as client:
            address = await server.listen("mem://srv" if kind == "mem" else "tcp://127.0.0.1:0")
            server.endpoint("bob", **ring.credentials("bob")).register("size", size)
            client.add_route("bob", address)
            alice = client.endpoint("alice", **ring.credentials("alice"))
            assert await alice.request("bob", "size", b"") == 0
            # the body whose envelope is exactly the limit
            n = limit - (len(_request(b"x" * (limit - 200))) - (limit - 200))
            assert len(_request(b"x" * n)) == limit
            try:
                outcome = await alice.request("bob", "size", b"x" * n)
            except FrameError as exc:
                outcome = exc
    # (before the node gave supplied transports room for CHANNEL_OVERHEAD: FrameError,
    # "message of ... bytes exceeds the ...-byte limit of ...")
    assert outcome == n


def _request(body):
    # what alice's second request is on the wire: a compact envelope whose id is the
    # client node's second (ids below 128 take one byte)
    return encode_compact(MessageType.REQUEST, "size", 2, None, "alice", "bob", body)


def test_secret_keys_are_not_reused_between_handshakes():
    # two handshakes from fresh OS randomness never share an ephemeral
    hellos = {Handshake(initiator=True).hello for _ in range(64)}
    assert len(hellos) == 64


async def test_forged_envelopes_do_not_silence_busy_replies(raw_channel, unsigned_envelope):
    ring = Keyring()
    ring.add("mallory")  # (a registered user: her channel reaches bob, her forgeries are his to refuse)
    release = trio.Event()

    async def stuck(msg):
        await release.wait()
        return "late"

    async with open_node(handshake_timeout=8) as server, open_node() as client:
        address = await server.listen("tcp://127.0.0.1:0")
        bob = server.endpoint("bob", max_concurrent_per_sender=1, **ring.credentials("bob"))
        bob.register("stuck", stuck)
        client.add_route("bob", address)
        alice = client.endpoint("alice", **ring.credentials("alice"))
        async with await raw_channel(address, prove={"mallory": ring.signer("mallory")}) as raw, trio.open_nursery() as nursery:
            for i in range(70):
                await raw.send(unsigned_envelope(f"nobody-{i}", kind="stuck"))
            await eventually(lambda: sum(bob.statistics().rejected.values()) >= 70)
            nursery.start_soon(alice.request, "bob", "stuck", 1)  # takes alice's one slot
            await eventually(lambda: bob.statistics().received_by_kind.get("stuck") is not None)
            try:
                with pytest.raises(RemoteError, match="busy"):  # her second is refused at once
                    await alice.request("bob", "stuck", 2, timeout=4)
            finally:
                release.set()


async def test_more_than_max_claims_agents_of_one_node_can_all_use_one_peer():
    ring = Keyring()
    async with open_node() as server, open_node() as client:
        address = await server.listen("tcp://127.0.0.1:0")
        server.endpoint("bob", **ring.credentials("bob")).register("ping", _echo)
        client.add_route("bob", address)
        users = [client.endpoint(f"u{i}", **ring.credentials(f"u{i}")) for i in range(MAX_CLAIMS + 10)]
        with trio.fail_after(60):
            for i, user in enumerate(users):
                assert await user.request("bob", "ping", i, timeout=15) == i
        assert server.statistics().broken_connections == 0


async def test_a_listener_hosting_more_agents_than_a_channel_hears_proves_each_on_demand():
    # a hospital integration service embedding many patients behind one listener: past
    # MAX_PROVED_AT_HANDSHAKE hosted agents it proves each only when asked (WANT), so a
    # client reaches any of them, and no channel is asked to hear more than MAX_CLAIMS
    ring = Keyring()
    async with open_node() as server, open_node() as client:
        address = await server.listen("tcp://127.0.0.1:0")
        hosted = [f"p{i}" for i in range(MAX_CLAIMS + 20)]
        for agent in hosted:
            server.endpoint(agent, **ring.credentials(agent)).register("ping", _echo)
        for agent in hosted:
            client.add_route(agent, address)
        doctor = client.endpoint("doctor", **ring.credentials("doctor"))
        with trio.fail_after(60):
            for agent in (hosted[0], hosted[MAX_PROVED_AT_HANDSHAKE + 1], hosted[-1]):
                assert await doctor.request(agent, "ping", agent, timeout=15) == agent
        assert server.statistics().broken_connections == 0
        assert client.statistics().broken_connections == 0


async def test_wants_for_unhosted_or_proven_agents_cost_nothing(raw_channel, unsigned_envelope):
    ring = Keyring()
    alice = ring.add("alice")
    async with open_node() as server:
        address = await server.listen("tcp://127.0.0.1:0")
        server.endpoint("bob", **ring.credentials("bob")).register("ping", _echo)
        async with await raw_channel(address, prove={"alice": alice}) as raw:
            for i in range(500):
                await raw.stream.send_all(raw.sealed(f"nobody-{i}".encode(), frame_type=2))
                await raw.stream.send_all(raw.sealed(b"bob", frame_type=2))
            await raw.send(unsigned_envelope("alice", body="still here"))
            with trio.fail_after(10):
                reply = await raw.receive()
            assert reply.body == "still here" and "bob" in raw.channel.claims
    assert server.statistics().broken_connections == 0


async def test_handshakes_from_one_address_are_rate_limited():
    # each completed handshake costs the node an X25519 exchange and a signature per agent it
    # proves at once: one address gets a bucket of them, then is refused until it refills
    from bus import BusError
    from bus.testing import connect_channel

    ring = Keyring()
    async with open_node(handshakes_per_source=(0.01, 3)) as server:
        address = await server.listen("tcp://127.0.0.1:0")
        server.endpoint("bob", **ring.credentials("bob")).register("ping", _echo)
        alice = {"alice": ring.add("alice")}
        opened = [await connect_channel(address, prove=alice) for _ in range(3)]
        with pytest.raises(BusError):
            await connect_channel(address, prove=alice)
        assert server.statistics().dropped_connections["handshake-rate"] == 1
        for conn in opened:  # the admitted ones are channels the node proves bob on (asked, to alice)
            await conn.send_control(WANT, b"bob")
            with trio.move_on_after(10):  # (until the proof is recorded; no envelope comes)
                while "bob" not in conn.channel.claims:
                    with trio.move_on_after(0.05):  # (a receive cancelled mid-frame loses nothing)
                        await conn.receive()
            assert "bob" in conn.channel.claims
            await conn.aclose()


@pytest.mark.parametrize("size", [0, 100, 64 * 1024, 1 << 20])
def test_sealing_into_one_buffer_gives_the_same_frame(size, monkeypatch):
    """A large frame is sealed into one buffer with its type byte: the same bytes as
    ``type || AES-GCM(...)``, opened by the other side."""
    import bus.channel as channelmod
    from bus.channel import Channel

    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    k1, k2 = b"\x01" * 32, b"\x02" * 32
    fast = Channel(b"h" * 32, True, k1, k2)
    monkeypatch.setattr(channelmod, "_ENCRYPT_INTO", False)
    plain = Channel(b"h" * 32, True, k1, k2)
    reference = plain.seal(channelmod.ENVELOPE, payload)
    monkeypatch.undo()
    frame = fast.seal(channelmod.ENVELOPE, payload)
    assert bytes(frame) == bytes(reference)
    assert Channel(b"h" * 32, False, k2, k1).open(bytes(frame)) == (channelmod.ENVELOPE, payload)
