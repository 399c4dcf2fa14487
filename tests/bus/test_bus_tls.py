"""TLS and mutual TLS on loopback (certificates made with the openssl CLI, in conftest)."""

import shutil

import pytest
import trio

from bus import BusError, TcpTransport
from bus.testing import Keyring, eventually, linked_pair

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


async def echo(msg):
    return msg.body


@pytest.mark.parametrize("mutual", [False, True])
async def test_request_reply_over_tls(tls, mutual):
    ring = Keyring()
    server_tcp = TcpTransport(server_ssl=tls.server(mutual))
    client_tcp = TcpTransport(client_ssl=tls.client(with_cert=mutual))
    client_options = {"transports": {"tcp": client_tcp}}
    async with linked_pair(ring, echo, server_options={"transports": {"tcp": server_tcp}},
                           client_options=client_options) as (server, client, alice, _):
        with trio.fail_after(10):
            for i in range(3):
                assert await alice.request("bob", "ping", {"i": i}) == {"i": i}


async def test_mutual_tls_refuses_a_client_without_certificate(tls):
    ring = Keyring()
    server_tcp = TcpTransport(server_ssl=tls.server(mutual=True))
    client_tcp = TcpTransport(client_ssl=tls.client(with_cert=False))
    client_options = {"transports": {"tcp": client_tcp}, "connect_attempts": 1}
    async with linked_pair(ring, echo, server_options={"transports": {"tcp": server_tcp}},
                           client_options=client_options) as (server, client, alice, _):
        with trio.fail_after(10):
            with pytest.raises(BusError):
                await alice.request("bob", "ping", 1, timeout=5)
        # the TLS handshake runs inside the channel handshake's first read: the node counts it there
        await eventually(lambda: server.statistics().dropped_connections.get("handshake-failed", 0) >= 1)


async def test_plain_client_cannot_talk_to_a_tls_server(tls):
    ring = Keyring()
    server_tcp = TcpTransport(server_ssl=tls.server(mutual=False))
    async with linked_pair(ring, echo, server_options={"transports": {"tcp": server_tcp}}) as (server, _, alice, _):
        with trio.fail_after(10):
            with pytest.raises(BusError):
                await alice.request("bob", "ping", 1, timeout=5)


async def _tls_pair(tls, nursery, mutual=True):
    """(client connection, server connection, close the listener) over loopback TLS, the
    handshake done (the client sent b"hello", which the server received)."""
    from bus import parse_address

    server_tcp = TcpTransport(server_ssl=tls.server(mutual))
    client_tcp = TcpTransport(client_ssl=tls.client(with_cert=mutual))
    send, receive = trio.open_memory_channel(1)

    async def handler(conn):  # (the server's handshake runs in its first receive)
        assert await conn.receive() == b"hello"
        await send.send(conn)
        await trio.sleep_forever()

    bound, close = await server_tcp.serve(parse_address("tcp://127.0.0.1:0"), handler, nursery)
    client = await client_tcp.connect(bound)
    await client.send(b"hello")
    return client, await receive.receive(), close


async def test_tls_frames_written_at_once_stay_whole_and_in_order_past_a_full_socket(tls):
    """The TLS write path encrypts and writes in the sending task (try_send) while the
    socket takes it; once the other side stops reading, what the socket did not take
    is sent first (send_raw), then the frames queued behind it: all arrive whole, in
    order, and the certificate the client presented is seen by the server."""
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            client, server, close = await _tls_pair(tls, nursery)
            assert server.peer_certificate is not None
            assert server.can_try_send()
            frames = [bytes([i % 256]) * 60_000 for i in range(400)]
            sent = 0
            rest = b""
            while sent < len(frames) and not rest:  # the client reads nothing: the socket fills
                assert server.can_try_send()
                rest = server.try_send(frames[sent])
                sent += 1
            assert rest, "the socket never filled"
            assert not server.can_try_send()  # unsent bytes wait: nothing may jump ahead of them

            async def send_rest():
                await server.send_raw(rest)
                for frame in frames[sent:sent + 20]:
                    await server.send(frame)

            nursery.start_soon(send_rest)
            for i in range(sent + 20):
                assert await client.receive() == frames[i]
            await client.aclose()
            assert await server.receive() is None  # close_notify: a clean end
            await server.aclose()
            await close()
            nursery.cancel_scope.cancel()


async def test_a_tls_record_changed_on_the_wire_breaks_the_connection(tls):
    """A flipped bit in a TLS record fails its authentication: the receiver's
    connection breaks (no frame from it is delivered)."""
    import os

    from bus import BrokenError

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            client, server, close = await _tls_pair(tls, nursery)
            tls_stream = client._tls
            tls_stream._tls.write(b"\x00\x00\x00\x05world")
            record = bytearray(tls_stream._outgoing.read())
            record[-3] ^= 1
            os.write(tls_stream.socket.fileno(), bytes(record))
            with pytest.raises(BrokenError):
                await server.receive()
            await client.aclose()
            await server.aclose()
            await close()
            nursery.cancel_scope.cancel()


async def test_a_tls_handshake_left_half_done_is_dropped_and_others_are_served(tls):
    """A client that opens TCP to a TLS node and sends half a ClientHello is dropped
    at the handshake timeout (the TLS handshake runs inside it); a real client is
    served meanwhile."""
    ring = Keyring()
    server_tcp = TcpTransport(server_ssl=tls.server(True))
    client_tcp = TcpTransport(client_ssl=tls.client(with_cert=True))
    async with linked_pair(ring, echo, server_options={"transports": {"tcp": server_tcp}, "handshake_timeout": 1.0},
                           client_options={"transports": {"tcp": client_tcp}}) as (server, _, alice, address):
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        with trio.fail_after(20):
            stalled = await trio.open_tcp_stream(host, int(port))
            await stalled.send_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's first bytes
            assert await alice.request("bob", "ping", "still served") == "still served"
            assert await stalled.receive_some(1024) == b""  # dropped: the server closed it
            await eventually(lambda: server.statistics().dropped_connections.get("handshake-timeout", 0) >= 1)
            await stalled.aclose()
