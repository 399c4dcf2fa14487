"""One conformance suite, run against every transport (mem, tcp, tcp+tls).

In the spirit of ``trio.testing.check_two_way_stream``: a connected pair of
:class:`bus.Connection` objects must carry frames in order both ways, carry a
frame of exactly the size limit and refuse one byte more, survive a cancelled
``receive`` without losing bytes, and report a peer's disconnect (cleanly at a
frame boundary, as broken inside a frame or on an oversized header). The
stream transports are also fed raw bytes (a frame split anywhere, a header
announcing too much) by a raw client of the same kind.

The connection-level tests run twice per transport: on the bare connections
and on authenticated encrypted channels over them (``channel_handshake``, the
node's default), where the limit is the transport's minus
``CHANNEL_OVERHEAD``; channels must also refuse a replayed frame.
"""

import contextlib
import secrets

import pytest
import trio

from bus import (
    CHANNEL_OVERHEAD,
    BrokenError,
    ClosedError,
    FrameError,
    MemoryTransport,
    TcpTransport,
    channel_handshake,
    encode_frame,
    parse_address,
)

KINDS = ["mem", "tcp", "tls"]
STREAMS = ["tcp", "tls"]
LIMIT = 1 << 20


def _transport(kind, tls, max_frame_size):
    if kind == "mem":
        return MemoryTransport(max_frame_size=max_frame_size, buffer=4)
    if kind == "tcp":
        return TcpTransport(max_frame_size=max_frame_size)
    return TcpTransport(max_frame_size=max_frame_size, server_ssl=tls.server(False), client_ssl=tls.client(False))


@contextlib.asynccontextmanager
async def connected(kind, request, max_frame_size=LIMIT, raw=False, channel=False):
    """A served pair ``(client, server)``; with ``raw``, the client is a bare trio
    stream of the same kind (TCP, or TLS over TCP) instead of a Connection; with
    ``channel``, both are ChannelConnections after the channel handshake."""
    tls = request.getfixturevalue("tls") if kind == "tls" else None
    transport = _transport(kind, tls, max_frame_size)
    address = parse_address("mem://conformance" if kind == "mem" else "tcp://127.0.0.1:0")
    accepted_send, accepted = trio.open_memory_channel(1)

    async def handler(conn):
        await accepted_send.send(conn)
        await trio.sleep_forever()

    dialed_send, dialed = trio.open_memory_channel(1)

    async def dial():
        if raw:
            client = await trio.open_tcp_stream(bound.host, bound.port)
            if tls is not None:
                client = trio.SSLStream(client, tls.client(False), server_hostname="127.0.0.1")
            await client.send_all(encode_frame(b"hello"))
        else:
            client = await transport.connect(bound)
            await client.send(b"hello")
        await dialed_send.send(client)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            bound, close = await transport.serve(address, handler, nursery)
            nursery.start_soon(dial)
            server = await accepted.receive()
            assert await server.receive() == b"hello"  # (the server's side drives a TLS handshake)
            client = await dialed.receive()
            if channel:
                secured = {}

                async def secure(side, conn, initiator):
                    secured[side] = await channel_handshake(conn, initiator=initiator)

                async with trio.open_nursery() as handshakes:
                    handshakes.start_soon(secure, "client", client, True)
                    handshakes.start_soon(secure, "server", server, False)
                client, server = secured["client"], secured["server"]
            try:
                yield client, server
            finally:
                with trio.CancelScope(shield=True):
                    await client.aclose()
                    await server.aclose()
                    await close()
                nursery.cancel_scope.cancel()


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


@pytest.fixture(params=STREAMS)
def stream_kind(request):
    return request.param


@pytest.fixture(params=[False, True], ids=["bare", "channel"])
def channel(request):
    return request.param


def limit_of(channel, max_frame_size=LIMIT):
    """The largest payload a connection of the pair carries."""
    return max_frame_size - CHANNEL_OVERHEAD if channel else max_frame_size


async def _pump(conn, payloads):
    for p in payloads:
        await conn.send(p)


async def test_frames_arrive_in_order_both_ways(kind, channel, request):
    payloads = [i.to_bytes(4, "big") + secrets.token_bytes(secrets.randbelow(5000)) for i in range(300)]
    payloads.append(b"")  # the empty frame is a frame too
    async with connected(kind, request, channel=channel) as (client, server):
        for a, b in ((client, server), (server, client)):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pump, a, payloads)
                got = [await b.receive() for _ in payloads]
            assert got == payloads


async def test_a_frame_of_exactly_the_limit_passes_and_one_byte_more_is_refused(kind, channel, request):
    async with connected(kind, request, channel=channel) as (client, server):
        big = secrets.token_bytes(limit_of(channel))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send, big)
            assert await server.receive() == big
        with pytest.raises(FrameError):
            await client.send(big + b"x")


async def test_a_refused_oversized_frame_leaves_the_connection_usable(kind, channel, request):
    # (on a channel: refused before the frame is sealed, so no counter is used up)
    async with connected(kind, request, channel=channel) as (client, server):
        with pytest.raises(FrameError):
            await client.send(secrets.token_bytes(limit_of(channel) + 1))
        await client.send(b"still usable")
        assert await server.receive() == b"still usable"


async def test_the_default_limit_carries_16_mib(kind, channel, request):
    from bus import DEFAULT_MAX_FRAME_SIZE

    # a node gives its own transport room for the channel's overhead on top of the 16 MiB
    wire = DEFAULT_MAX_FRAME_SIZE + (CHANNEL_OVERHEAD if channel else 0)
    async with connected(kind, request, max_frame_size=wire, channel=channel) as (client, server):
        big = b"\x01" * DEFAULT_MAX_FRAME_SIZE
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send, big)
            assert await server.receive() == big


async def test_a_cancelled_receive_loses_nothing(kind, channel, request):
    async with connected(kind, request, channel=channel) as (client, server):
        with trio.move_on_after(0.05) as scope:
            await server.receive()
        assert scope.cancelled_caught
        await client.send(b"after the cancel")
        assert await server.receive() == b"after the cancel"


async def test_peer_close_at_a_frame_boundary_is_a_clean_end(kind, channel, request):
    async with connected(kind, request, channel=channel) as (client, server):
        await client.send(b"last")
        await client.aclose()
        assert await server.receive() == b"last"
        assert await server.receive() is None
        with pytest.raises(ClosedError):
            await client.send(b"x")
        with pytest.raises(ClosedError):
            await client.receive()


async def test_sending_to_a_peer_that_left_breaks(kind, channel, request):
    async with connected(kind, request, channel=channel) as (client, server):
        await server.aclose()
        with trio.fail_after(10), pytest.raises(BrokenError):
            for _ in range(10_000):  # TCP may buffer a few writes before the reset
                await client.send(b"y" * 4096)
                await trio.sleep(0.001)


async def test_a_replayed_channel_frame_breaks_the_connection(kind, request):
    async with connected(kind, request, channel=True) as (client, server):
        sealed = client.channel.seal(0, b"recorded")
        await client.inner.send(sealed)
        assert await server.receive() == b"recorded"
        await client.inner.send(sealed)  # the same sealed frame again, on the same connection
        with pytest.raises(BrokenError):
            await server.receive()


async def test_channel_frames_reordered_or_from_the_wrong_direction_break_the_connection(kind, request):
    async with connected(kind, request, channel=True) as (client, server):
        client.channel.seal(0, b"1")  # sealed first, never sent
        second = client.channel.seal(0, b"2")
        await client.inner.send(second)
        with pytest.raises(BrokenError):
            await server.receive()
    async with connected(kind, request, channel=True) as (client, server):
        await server.send(b"to the client")
        assert await client.receive() == b"to the client"
        await client.inner.send(server.channel.seal(0, b"reflected"))  # sealed for the other direction
        with pytest.raises(BrokenError):
            await server.receive()


async def test_a_stream_split_anywhere_gives_the_same_frames(stream_kind, request):
    frames = [secrets.token_bytes(n) for n in (0, 1, 3, 700, 70_000)]
    wire = b"".join(encode_frame(f) for f in frames)
    async with connected(stream_kind, request, raw=True) as (raw, server):
        got = []
        pos = 0
        while pos < len(wire):
            step = 1 + secrets.randbelow(9000)
            await raw.send_all(wire[pos : pos + step])
            pos += step
            while len(got) < len(frames):
                with trio.move_on_after(0.01) as scope:  # a receive cancelled mid-frame loses nothing
                    got.append(await server.receive())
                if scope.cancelled_caught:
                    break
        while len(got) < len(frames):
            got.append(await server.receive())
        assert got == frames


async def test_a_half_sent_frame_is_visible_as_partial(stream_kind, request):
    async with connected(stream_kind, request, raw=True) as (raw, server):
        assert server.partial_since is None
        await raw.send_all(encode_frame(b"z" * 100)[:50])
        with trio.move_on_after(10):  # (until the server has read the half frame; a receive cancelled mid-frame loses nothing)
            while server.partial_since is None:
                with trio.move_on_after(0.05):
                    await server.receive()
        assert server.partial_since is not None
        await raw.send_all(encode_frame(b"z" * 100)[50:])
        assert await server.receive() == b"z" * 100
        assert server.partial_since is None


async def test_a_peer_leaving_inside_a_frame_breaks_the_connection(stream_kind, request):
    async with connected(stream_kind, request, raw=True) as (raw, server):
        await raw.send_all(encode_frame(b"w" * 100)[:60])
        await raw.aclose()
        with pytest.raises(BrokenError):
            await server.receive()


async def test_an_oversized_header_breaks_the_connection(stream_kind, request):
    async with connected(stream_kind, request, raw=True) as (raw, server):
        await raw.send_all((LIMIT + 1).to_bytes(4, "big") + b"\0" * 10)
        with pytest.raises(BrokenError):
            await server.receive()


async def test_memory_connections_report_their_source_and_no_partial_frames(request):
    async with connected("mem", request) as (client, server):
        assert server.source and server.partial_since is None


async def test_tcp_connections_name_the_remote_ip_as_source(request):
    async with connected("tcp", request) as (client, server):
        assert server.source == "127.0.0.1"


async def test_a_cancelled_channel_receive_still_lets_proofs_be_awaited(kind, request):
    from bus.testing import Keyring

    signer = Keyring().add("alice")
    async with connected(kind, request, channel=True) as (client, server):
        with trio.move_on_after(0.05):
            await server.receive()
        proved = []

        async def wait_for_alice():
            proved.append(await server.wait_claim("alice"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for_alice)
            await client.send_proof(client.channel.make_proof("alice", signer))
            await client.send(b"after the proof")
            assert await server.receive() == b"after the proof"
        assert proved == [True]
