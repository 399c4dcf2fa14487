"""No client can stall others: hostile clients against a node while a legitimate
client keeps doing request/reply round trips that must keep completing.

Each attack runs on real loopback TCP (the transport is what the attacker
abuses) against a node with the default authenticated channels: the attacker
either attacks the channel handshake itself (a huge or half-sent first frame,
connections that never say hello) or does the handshake by hand
(``raw_channel``, conftest) and attacks after it. Attacks start before the
legitimate client's rounds and are kept up during them; every round has a generous liveness bound (a frozen node fails it), not a
latency assertion. The timeout logic itself is also tested on the in-memory
transport with trio's autojump clock.
"""

import resource
import pytest
import trio
import trio.testing

from bus import (
    BrokenError,
    DEFAULT_MAX_FRAME_SIZE,
    Handshake,
    MemoryTransport,
    TcpTransport,
    encode_frame,
    open_node,
    parse_address,
)
from bus.testing import Keyring, eventually, linked_pair

ROUNDS = 30
BIG = 64 * 1024


class Scene:
    """A server node with ``bob`` (``ping`` echoes, ``big`` answers 64 KiB) and a
    legitimate client ``alice`` on her own node, connecting from 127.0.0.2."""

    def __init__(self, ring, server, alice, address, calls):
        self.ring, self.server, self.alice, self.address, self.calls = ring, server, alice, address, calls

    @property
    def host_port(self):
        a = parse_address(self.address)
        return a.host, a.port

    async def keep_working(self, rounds=ROUNDS):
        for i in range(rounds):
            assert await self.alice.request("bob", "ping", i, timeout=15) == i


async def run_scene(test, **server_options):
    ring = Keyring()
    for who in ("mallory", "mallory1", "mallory2"):
        ring.add(who)
    calls = []

    async def ping(msg):
        calls.append(msg.sender)
        return msg.body

    async def big(msg):
        calls.append(msg.sender)
        return b"\xab" * BIG

    with trio.fail_after(120):
        async with linked_pair(ring, None, server_options=server_options, client_address="127.0.0.2") as (
                server, _, alice, address):
            bob = server.endpoint("bob", **ring.credentials("bob"))
            bob.register("ping", ping)
            bob.register("big", big)
            scene = Scene(ring, server, alice, address, calls)
            scene.bob = bob
            assert await alice.request("bob", "ping", "hello", timeout=15) == "hello"
            await test(scene)


async def while_attacked(scene, attack, then=None):
    """Start ``attack(scene, ready)``; once it calls ready.set() (or returns), the legitimate
    client does its rounds, then ``await then()`` if given; then the attack is cancelled."""

    async def attacking(ready):
        await attack(scene, ready)
        ready.set()

    async with trio.open_nursery() as nursery:
        ready = trio.Event()
        nursery.start_soon(attacking, ready)
        await ready.wait()
        await scene.keep_working()
        if then is not None:
            await then()
        nursery.cancel_scope.cancel()


async def send_until_closed(stream, data):
    """Send ``data``, then read until the node closes the connection: all it sent after what
    the caller already read (b"" when nothing), or b"" when it closed it while we were sending.
    (Reading one byte is not enough: on a channel the node's identity proofs may still be on
    their way after its hello, and closing early would cut the frame under test short.)"""
    answered = b""
    try:
        await stream.send_all(data)
        while chunk := await stream.receive_some(65536):
            answered += chunk
    except (trio.BrokenResourceError, OSError):
        pass
    return answered


def dropped_then_others_go_on(scene, reason):
    """A ``then`` for :func:`while_attacked`: the node drops a connection for ``reason``, then
    the legitimate client still gets answers."""

    async def then():
        await eventually(lambda: scene.server.statistics().dropped_connections.get(reason, 0) >= 1, timeout=30)
        await scene.keep_working(5)

    return then


async def test_a_client_that_never_reads_is_dropped_and_stalls_no_one(raw_channel, unsigned_envelope):
    sent = 0

    async def attack(scene, ready):
        nonlocal sent
        senders = ("mallory", "mallory1", "mallory2")  # with their replies pending, enough to fill every slot
        raw = await raw_channel(scene.address, prove={m: scene.ring.signer(m) for m in senders})
        async with raw.stream as stream:
            try:
                while True:
                    await stream.send_all(raw.sealed(unsigned_envelope(senders[sent % 3], kind="big")))
                    sent += 1
                    if sent == 300:
                        ready.set()
                    await trio.sleep(0)
            except (trio.BrokenResourceError, OSError):
                ready.set()  # the node dropped us: now prove the others go on
                await trio.sleep_forever()

    async def test(scene):
        await while_attacked(scene, attack)
        await eventually(lambda: sum(scene.server.statistics().dropped_connections.values()) >= 1, timeout=30)
        dropped = scene.server.statistics().dropped_connections
        assert dropped.get("send-queue-full", 0) + dropped.get("write-timeout", 0) >= 1

    await run_scene(test, write_timeout=2.0, send_queue_bytes=1 << 20)


def _tiny_arrays(shape):
    n = DEFAULT_MAX_FRAME_SIZE
    payload = {
        "wide": b"\xdd" + (n - 5).to_bytes(4, "big") + b"\x90" * (n - 5),
        "deep": b"\x91" * (n - 1) + b"\xc0",
        "many-arrays": b"\xdc\xff\xff" + (b"\xdc\x00\xff" + b"\xc0" * 255) * 0xFFFF,
    }[shape][:n]
    return payload + b"\xc0" * (n - len(payload))


@pytest.mark.parametrize("shape", ["wide", "deep", "many-arrays"])
async def test_a_16_mib_frame_of_tiny_arrays_is_refused_without_stalling(shape, raw_channel):
    payload = _tiny_arrays(shape)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    async def attack(scene, ready):
        for _ in range(3):
            # on an authenticated channel (mallory proved): the frame reaches the decoder
            raw = await raw_channel(scene.address, prove={"mallory": scene.ring.signer("mallory")})
            async with raw.stream as stream:
                await send_until_closed(stream, raw.sealed(payload))
            ready.set()

    async def test(scene):
        await while_attacked(scene, attack)
        await eventually(lambda: scene.server.statistics().rejected.get("malformed", 0) >= 1, timeout=30)

    await run_scene(test)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 300  # the frames themselves are 16 MiB each; the unbounded decode took 1.2 GB


async def test_a_16_mib_first_frame_is_refused_under_the_hello_limit():
    payload = _tiny_arrays("wide")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    async def attack(scene, ready):
        for _ in range(3):
            async with await trio.open_tcp_stream(*scene.host_port) as stream:
                assert await send_until_closed(stream, encode_frame(payload)) == b""  # the node answers nothing
            ready.set()

    async def test(scene):
        await while_attacked(scene, attack)
        await eventually(lambda: scene.server.statistics().dropped_connections.get("handshake-failed", 0) >= 3,
                         timeout=30)
        assert not scene.server.statistics().rejected  # nothing of it was ever decoded

    await run_scene(test)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 100  # refused on its header: not even buffered


async def test_two_thousand_idle_connections_from_one_address_lock_no_one_out():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 8192)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    count = min(2000, (want - 200) // 2)
    streams = []

    async def attack(scene, ready):
        for _ in range(count):
            streams.append(await trio.open_tcp_stream(*scene.host_port))
        ready.set()
        await trio.sleep_forever()

    async def test(scene):
        try:
            await while_attacked(scene, attack)
            stats = scene.server.statistics()
            assert stats.incoming_connections <= 64 + 1
            assert stats.refused_connections >= count - 64
            # a new client from another address still gets in (the global cap is not held)
            async with open_node(transports={"tcp": TcpTransport(local_address="127.0.0.3")}) as other:
                other.add_route("bob", scene.address)
                carol = other.endpoint("carol", **scene.ring.credentials("carol"))
                assert await carol.request("bob", "ping", "in", timeout=15) == "in"
            # the admitted idle ones never said hello: the handshake timeout closes them
            await eventually(
                lambda: scene.server.statistics().dropped_connections.get("handshake-timeout", 0) >= 60, timeout=30
            )
            assert scene.server.statistics().incoming_connections <= 2
            with trio.fail_after(15):
                assert await streams[0].receive_some(1) == b""  # closed by the node
            await scene.keep_working(5)
        finally:
            for s in streams:
                await trio.aclose_forcefully(s)

    await run_scene(test, handshake_timeout=8.0)  # longer than opening the 2,000 connections takes


async def test_a_half_sent_frame_held_open_is_closed(raw_channel, unsigned_envelope):
    async def attack(scene, ready):
        raw = await raw_channel(scene.address, prove={"mallory": scene.ring.signer("mallory")})
        async with raw.stream as stream:
            await raw.send(unsigned_envelope("mallory"))  # past the handshake, one whole envelope
            half = raw.sealed(unsigned_envelope("mallory", body="x" * 1000))
            await stream.send_all(half[: len(half) // 2])
            ready.set()
            await trio.sleep_forever()

    async def test(scene):
        await while_attacked(scene, attack, then=dropped_then_others_go_on(scene, "frame-timeout"))
        assert "mallory" in scene.calls  # the whole envelope before the half one was served

    await run_scene(test, frame_timeout=1.0)


async def test_a_half_sent_hello_held_open_is_closed():
    async def attack(scene, ready):
        async with await trio.open_tcp_stream(*scene.host_port) as stream:
            hello = encode_frame(Handshake(initiator=True).hello)
            await stream.send_all(hello[: len(hello) // 2])
            ready.set()
            with trio.fail_after(30):
                assert await stream.receive_some(1) == b""  # the node hangs up
            await trio.sleep_forever()

    async def test(scene):
        await while_attacked(scene, attack, then=dropped_then_others_go_on(scene, "handshake-timeout"))

    await run_scene(test, handshake_timeout=1.0)


async def test_a_forged_sender_is_refused_and_hijacks_nothing(raw_channel, unsigned_envelope):
    async def attack(scene, ready):
        # proves mallory on the channel, then claims to be alice
        raw = await raw_channel(scene.address, prove={"mallory": scene.ring.signer("mallory")})
        async with raw.stream as stream:
            while True:
                await stream.send_all(raw.sealed(unsigned_envelope("alice", body="forged")))
                ready.set()
                await trio.sleep(0.01)

    async def test(scene):
        await while_attacked(scene, attack)
        assert "forged" not in [c for c in scene.calls if c != "alice"]
        assert scene.calls.count("alice") == ROUNDS + 1  # every forged request was refused
        assert scene.bob.statistics().rejected["unproven-sender"] >= 1
        assert scene.server.statistics().rejected.get("misaddressed", 0) == 0

    await run_scene(test)


async def test_bytes_after_a_failed_first_frame_are_never_read():
    async def attack(scene, ready):
        async with await trio.open_tcp_stream(*scene.host_port) as stream:
            good = encode_frame(Handshake(initiator=True).hello)
            await stream.send_all(encode_frame(b"\xc1 not msgpack") + good * 5)
            with trio.fail_after(15):
                assert await stream.receive_some(65536) == b""  # closed, nothing answered

    async def test(scene):
        await while_attacked(scene, attack)
        assert "mallory" not in scene.calls
        assert scene.server.statistics().dropped_connections["handshake-failed"] == 1

    await run_scene(test)


async def test_bytes_after_an_undecodable_envelope_on_a_channel_are_never_read(raw_channel, unsigned_envelope):
    async def attack(scene, ready):
        raw = await raw_channel(scene.address, prove={"mallory": scene.ring.signer("mallory")})
        async with raw.stream as stream:
            wire = raw.sealed(b"\xc1 not msgpack")
            for _ in range(5):
                wire += raw.sealed(unsigned_envelope("mallory"))
            await stream.send_all(wire)
            with trio.fail_after(15):
                assert await raw.receive() is None  # closed, nothing answered

    async def test(scene):
        await while_attacked(scene, attack)
        assert "mallory" not in scene.calls
        assert scene.server.statistics().rejected["malformed"] == 1

    await run_scene(test)


async def test_bodies_of_many_objects_and_large_binaries_still_travel():
    async def test(scene):
        many = list(range(50_000))  # decoded in the worker thread
        assert await scene.alice.request("bob", "ping", many, timeout=15) == many
        blob = b"\x90" * (4 << 20)  # a few objects: decoded on the loop
        assert await scene.alice.request("bob", "ping", blob, timeout=15) == blob
        with pytest.raises(BrokenError):  # over the object limit: the receiver closes the connection
            await scene.alice.request("bob", "ping", [0] * 300_000, timeout=15)
        assert scene.server.statistics().rejected["malformed"] == 1
        assert await scene.alice.request("bob", "ping", "again", timeout=15) == "again"

    await run_scene(test)


# ------------------------------------------------------------ timeout logic, autojump clock


async def test_handshake_idle_and_held_connections(autojump_clock):
    ring = Keyring()
    mem = MemoryTransport()
    async with open_node(transports={"mem": mem}, handshake_timeout=10, idle_timeout=100) as server, \
            open_node(transports={"mem": mem}) as client:
        await server.listen("mem://srv")
        bob = server.endpoint("bob", **ring.credentials("bob"))
        bob.register("ping", _echo)
        client.add_route("bob", "mem://srv")
        alice = client.endpoint("alice", **ring.credentials("alice"))

        silent = await mem.connect(parse_address("mem://srv"))  # never sends a frame
        await trio.sleep(9)
        # (a connection still in the channel handshake is not in incoming_connections)
        assert server.statistics().dropped_connections == {}
        await trio.sleep(2)
        assert server.statistics().dropped_connections == {"handshake-timeout": 1}
        assert await silent.receive() is None

        assert await alice.request("bob", "ping", 1) == 1  # a connection that did its first frame
        await trio.sleep(99)
        assert server.statistics().incoming_connections == 1
        await trio.sleep(102)  # then nothing either way for the idle timeout
        assert server.statistics().dropped_connections["idle-timeout"] == 1
        assert server.statistics().incoming_connections == 0
        assert await alice.request("bob", "ping", 2) == 2  # (the client reconnects)

        sub = await alice.subscribe("bob", "news")  # a connection an endpoint needs is kept
        await trio.sleep(1000)
        assert server.statistics().incoming_connections == 1
        await bob.publish("news", "still here")
        assert (await sub.receive()).body == "still here"


async def _echo(msg):
    return msg.body


async def test_a_full_inbox_answers_remote_requests_busy_instead_of_blocking_the_reader(autojump_clock):
    ring = Keyring()
    mem = MemoryTransport()
    release = trio.Event()

    async def stuck(msg):
        await release.wait()
        return "late"

    async with open_node(transports={"mem": mem}) as server, open_node(transports={"mem": mem}) as client:
        await server.listen("mem://srv")
        bob = server.endpoint("bob", inbox_size=2, max_concurrent=2, max_concurrent_per_sender=2,
                              **ring.credentials("bob"))
        bob.register("stuck", stuck)
        bob.register("ping", _echo)
        client.add_route("bob", "mem://srv")
        alice = client.endpoint("alice", **ring.credentials("alice"))
        dave = client.endpoint("dave", **ring.credentials("dave"))
        carol = client.endpoint("carol", **ring.credentials("carol"))
        results = []

        async def ask(who, kind):
            try:
                results.append(await who.request("bob", kind, 0, timeout=50))
            except Exception as exc:  # noqa: BLE001 - the test records what came back
                results.append(getattr(exc, "code", type(exc).__name__))

        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(ask, alice, "stuck")  # both slots
            await trio.sleep(1)
            for _ in range(3):
                nursery.start_soon(ask, dave, "stuck")  # one waits for a slot, two fill the inbox
            await trio.sleep(1)
            assert results == []
            nursery.start_soon(ask, carol, "ping")
            await trio.sleep(1)
            assert results == ["busy"]  # answered at once, not left waiting behind a full inbox
            release.set()
        assert results.count("late") == 5


async def test_a_write_stuck_on_a_reader_that_never_reads_is_dropped_at_the_write_timeout(autojump_clock,
                                                                                         unsigned_envelope):
    # no timer per frame: the connection's watchdog times the write under way
    from bus import channel_handshake

    ring = Keyring()
    mem = MemoryTransport(buffer=1)
    async with open_node(transports={"mem": mem}, write_timeout=7, idle_timeout=1000, frame_timeout=1000) as server:
        await server.listen("mem://srv")
        server.endpoint("bob", **ring.credentials("bob")).register("ping", _echo)
        await trio.sleep(50)  # the watchdog sleeps at most a write timeout at a time
        conn = await channel_handshake(await mem.connect(parse_address("mem://srv")), initiator=True)
        await conn.send_proof(conn.channel.make_proof("mallory", ring.add("mallory")))
        for i in range(4):  # replies it never reads: the first fills the buffer, the next write waits
            await conn.send(unsigned_envelope("mallory", body=i))
        sent_at = trio.current_time()
        await eventually(lambda: server.statistics().dropped_connections.get("write-timeout") == 1, timeout=100)
        dropped_at = trio.current_time()
        assert sent_at + 7 - 1 <= dropped_at <= sent_at + 7 + 1  # the write began about when the requests came
        assert server.statistics().incoming_connections == 0
