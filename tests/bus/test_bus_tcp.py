"""Real loopback TCP: request/reply, volume and order, faulty peers, reconnects."""

import time

import pytest
import trio
import trio.testing

from bus import (
    BrokenError,
    Envelope,
    MessageType,
    RemoteError,
    decode_envelope,
    encode_frame,
    open_node,
    FrameDecoder,
    Handshake,
)
from bus.testing import Keyring, eventually, linked_pair
from core import ecdsa


async def echo(msg):
    return {"echo": msg.body, "from": msg.sender}


def signed(ring, sender, recipient, body=1, kind="ping", mtype=MessageType.REQUEST):
    return Envelope.create(
        type=mtype,
        kind=kind,
        sender=sender,
        recipient=recipient,
        body=body,
        timestamp=int(time.time() * 1000),
        signer=ring.signer(sender),
    )


async def read_envelope(stream, decoder):
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return None
        frames = decoder.feed(data)
        if frames:
            assert len(frames) == 1
            return decode_envelope(frames[0])


async def test_request_reply_over_tcp_with_ecdsa():
    ring = Keyring(
        generate=ecdsa.generate_private_key,
        public_key=ecdsa.public_key,
        sign=ecdsa.sign_raw,
        verify=ecdsa.is_valid_raw,
    )
    async with open_node() as server, open_node() as client:
        address = await server.listen("tcp://127.0.0.1:0")
        assert address.startswith("tcp://127.0.0.1:") and not address.endswith(":0")
        client.add_route("bob", address)
        bob = server.endpoint("bob", **ring.credentials("bob"))
        bob.register("ping", echo)
        alice = client.endpoint("alice", **ring.credentials("alice"))
        with trio.fail_after(10):
            for i in range(20):
                assert await alice.request("bob", "ping", i) == {"echo": i, "from": "alice"}
            big = bytes(64 * 1024)
            assert (await alice.request("bob", "ping", big))["echo"] == big
            with pytest.raises(RemoteError, match="unknown-kind"):
                await alice.request("bob", "other", None)
        assert client.statistics().outgoing_connections == 1  # pooled
        assert server.statistics().incoming_connections == 1
        assert server.statistics().bytes_received == bob.statistics().received.bytes


async def test_ten_thousand_messages_in_order_one_connection():
    ring = Keyring()
    got = []
    async with open_node() as server, open_node() as client:
        client.add_route("bob", await server.listen("tcp://127.0.0.1:0"))
        bob = server.endpoint("bob", **ring.credentials("bob"))

        async def record(msg):
            got.append(msg.body)

        bob.register("n", record)
        alice = client.endpoint("alice", **ring.credentials("alice"))
        with trio.fail_after(30):
            for i in range(10_000):
                await alice.send("bob", "n", i)
            await eventually(lambda: len(got) == 10_000, timeout=30)
        assert got == list(range(10_000))
        assert bob.statistics().received_by_kind["n"].messages == 10_000
        assert not bob.statistics().rejected


async def served_then_raw(alice, address):
    """Check that ``alice`` is served by bob, then open a raw TCP connection to bob's node."""
    assert (await alice.request("bob", "ping", 1))["echo"] == 1
    return await trio.open_tcp_stream("127.0.0.1", int(address.rsplit(":", 1)[1]))


async def test_peer_disconnecting_mid_frame_affects_no_one_else(raw_channel, unsigned_envelope):
    ring = Keyring()
    async with linked_pair(ring, echo) as (server, client, alice, address):
        with trio.fail_after(10):
            assert (await alice.request("bob", "ping", 1))["echo"] == 1
            raw = await raw_channel(address, prove={"mallory": ring.add("mallory")})
            frame = raw.sealed(unsigned_envelope("mallory"))
            await raw.stream.send_all(frame[: len(frame) // 2])
            await raw.aclose()
            await eventually(lambda: server.statistics().broken_connections == 1)
            assert (await alice.request("bob", "ping", 2))["echo"] == 2


@pytest.mark.parametrize(
    "garbage,reason",
    [
        (b"\xc1not msgpack", "malformed"),
        (b"\x93\x01\x02\x03", "malformed"),  # wrong shape
        (None, None),  # oversized frame
        (b"unsealed", None),  # a frame the channel did not seal
    ],
)
async def test_garbage_closes_only_its_connection(garbage, reason, raw_channel):
    """Garbage after the channel handshake: sealed (reaches the decoder), an
    oversized header, or bytes not sealed on the channel."""
    ring = Keyring()
    async with linked_pair(ring, echo) as (server, client, alice, address):
        with trio.fail_after(10):
            assert (await alice.request("bob", "ping", 1))["echo"] == 1
            raw = await raw_channel(address, prove={"mallory": ring.add("mallory")})
            if reason:
                wire = raw.sealed(garbage)
            elif garbage is None:
                wire = (2**31).to_bytes(4, "big") + b"xx"
            else:
                wire = encode_frame(b"\x00" + garbage + bytes(16))
            await raw.stream.send_all(wire)
            assert await raw.receive() is None  # the server hung up
            await raw.aclose()
            assert (await alice.request("bob", "ping", 2))["echo"] == 2
        stats = server.statistics()
        if reason:
            assert stats.rejected[reason] == 1
        else:
            assert stats.broken_connections == 1


@pytest.mark.parametrize("garbage", [b"\xc1not msgpack", b"\x93\x01\x02\x03", (2**31).to_bytes(4, "big")])
async def test_garbage_instead_of_a_hello_fails_the_handshake_only(garbage):
    ring = Keyring()
    async with linked_pair(ring, echo) as (server, client, alice, address):
        with trio.fail_after(10):
            raw = await served_then_raw(alice, address)
            await raw.send_all(garbage if len(garbage) == 4 else encode_frame(garbage))
            assert await raw.receive_some(100) == b""  # the server hung up
            await raw.aclose()
            assert (await alice.request("bob", "ping", 2))["echo"] == 2
        assert server.statistics().dropped_connections["handshake-failed"] == 1


async def test_rejected_envelopes_get_error_replies_on_the_same_connection():
    """Signed mode (``channels=False``): a badly signed envelope gets an error
    reply on the connection it came on, which stays usable."""
    ring = Keyring()
    ring.add("alice")
    async with open_node(channels=False) as server:
        address = await server.listen("tcp://127.0.0.1:0")
        port = int(address.rsplit(":", 1)[1])
        bob = server.endpoint("bob", **ring.credentials("bob"))
        bob.register("ping", echo)
        with trio.fail_after(10):
            raw = await trio.open_tcp_stream("127.0.0.1", port)
            decoder = FrameDecoder()
            # misaddressed: no "carol" here; nobody can answer for her
            await raw.send_all(encode_frame(signed(ring, "alice", "carol").encode()))
            # badly signed: alice's envelope with a corrupted signature
            good = signed(ring, "alice", "bob")
            bad = Envelope(**{**{f: getattr(good, f) for f in good.__slots__}, "signature": b"\x00" * 32})
            await raw.send_all(encode_frame(bad.encode()))
            reply = await read_envelope(raw, decoder)
            assert reply.type == MessageType.ERROR and reply.body["code"] == "bad-signature"
            assert reply.correlation_id == good.msg_id
            # the connection is still usable for a valid request
            await raw.send_all(encode_frame(good.encode()))
            reply = await read_envelope(raw, decoder)
            assert reply.type == MessageType.REPLY and reply.body["echo"] == 1
            await raw.aclose()
        assert server.statistics().rejected["misaddressed"] == 1
        assert bob.statistics().rejected["bad-signature"] == 1


async def test_reconnecting_peer():
    ring = Keyring()
    async with open_node(backoff_base=0.02, connect_attempts=40) as client:
        alice = client.endpoint("alice", **ring.credentials("alice"))
        async with open_node() as server:
            address = await server.listen("tcp://127.0.0.1:0")
            client.add_route("bob", address)
            server.endpoint("bob", **ring.credentials("bob")).register("ping", echo)
            with trio.fail_after(10):
                assert (await alice.request("bob", "ping", 1))["echo"] == 1
        # the server is gone: the next request waits (backoff) until it is back
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                result = []

                async def call():
                    result.append(await alice.request("bob", "ping", 2, timeout=15))

                nursery.start_soon(call)
                await trio.sleep(0.2)
                async with open_node() as server2:
                    assert await server2.listen(address) == address
                    server2.endpoint("bob", **ring.credentials("bob")).register("ping", echo)
                    await eventually(lambda: bool(result), timeout=15)
        assert result[0]["echo"] == 2


async def test_broken_connection_fails_pending_request_fast():
    ring = Keyring()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with open_node() as client:
        client.add_route("bob", f"tcp://127.0.0.1:{port}")
        alice = client.endpoint("alice", **ring.credentials("alice"))
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:

                async def hang_up_after_request():
                    # a "bob" that does the channel handshake and proves bob, reads
                    # the request, then hangs up
                    stream = await listeners[0].accept()
                    decoder = FrameDecoder()
                    frames = []
                    while not frames:
                        frames += decoder.feed(await stream.receive_some(65536))
                    hs = Handshake(initiator=False)
                    channel = hs.finish(frames.pop(0))
                    proof = channel.seal(1, channel.make_proof("bob", ring.add("bob")))
                    await stream.send_all(encode_frame(hs.hello) + encode_frame(proof))
                    while not frames:
                        frames += decoder.feed(await stream.receive_some(65536))
                    while True:  # alice's proof, then the request
                        kind, payload = channel.open(frames.pop(0))
                        if kind == 0:
                            break
                        while not frames:
                            frames += decoder.feed(await stream.receive_some(65536))
                    assert decode_envelope(payload).kind == "ping"
                    await stream.aclose()

                nursery.start_soon(hang_up_after_request)
                with pytest.raises(BrokenError):
                    await alice.request("bob", "ping", 1, timeout=60)
    await listeners[0].aclose()


async def test_connection_limit():
    ring = Keyring()
    async with open_node(max_connections=1) as server, open_node() as client:
        address = await server.listen("tcp://127.0.0.1:0")
        port = int(address.rsplit(":", 1)[1])
        client.add_route("bob", address)
        server.endpoint("bob", **ring.credentials("bob")).register("ping", echo)
        alice = client.endpoint("alice", **ring.credentials("alice"))
        with trio.fail_after(10):
            assert (await alice.request("bob", "ping", 1))["echo"] == 1
            extra = await trio.open_tcp_stream("127.0.0.1", port)
            assert await extra.receive_some(10) == b""
            await extra.aclose()
            assert (await alice.request("bob", "ping", 2))["echo"] == 2
        assert server.statistics().refused_connections == 1


async def test_a_signed_mode_node_refuses_unsigned_envelopes():
    """The empty signature field that channels use is no signature in signed mode."""
    ring = Keyring()
    ring.add("alice")
    calls = []

    async def record(msg):
        calls.append(msg.body)
        return msg.body

    async with open_node(channels=False) as server:
        address = await server.listen("tcp://127.0.0.1:0")
        bob = server.endpoint("bob", **ring.credentials("bob"))
        bob.register("ping", record)
        with trio.fail_after(10):
            raw = await trio.open_tcp_stream("127.0.0.1", int(address.rsplit(":", 1)[1]))
            env, data = Envelope.create_encoded(type=MessageType.REQUEST, kind="ping", sender="alice",
                                                recipient="bob", body="unsigned",
                                                timestamp=int(time.time() * 1000), signer=None)
            assert env.signature == b""
            await raw.send_all(encode_frame(data))
            reply = await read_envelope(raw, FrameDecoder())
            assert reply.type == MessageType.ERROR and reply.body["code"] == "bad-signature"
            await raw.aclose()
        assert calls == []
        assert bob.statistics().rejected["bad-signature"] == 1


@pytest.mark.parametrize("channels", [True, False], ids=["channel", "signed"])
async def test_large_envelopes_cross_tcp_in_both_directions(channels):
    """Envelopes from a few bytes to several MiB over real loopback TCP, on a channel and
    signed (a channel frame sealed behind its length prefix and written as one buffer;
    reads sized to the frame's rest; a large body received in place)."""
    import os

    ring = Keyring()
    sizes = [1, 65_535, 65_536, 1 << 20, (4 << 20) + 3, 9 << 20]
    blobs = {n: os.urandom(n) for n in sizes}

    async def mirror(msg):
        assert msg.body == blobs[len(msg.body)]
        return msg.body[::-1]

    async with open_node(channels=channels) as server, open_node(channels=channels) as client:
        address = await server.listen("tcp://127.0.0.1:0")
        client.add_route("bob", address)
        server.endpoint("bob", **ring.credentials("bob")).register("mirror", mirror)
        alice = client.endpoint("alice", **ring.credentials("alice"))
        with trio.fail_after(60):
            for n in sizes:
                assert await alice.request("bob", "mirror", blobs[n], timeout=60) == blobs[n][::-1]
