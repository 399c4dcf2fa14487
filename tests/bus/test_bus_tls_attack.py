"""Attack review, second wave: bus.transport._TlsStream (our TLS record handling on
ssl.SSLObject) against a hostile TLS peer that writes raw records: records
dribbled a byte at a time, records after close_notify, and a flood of TLS 1.3
KeyUpdate requests from a peer that never reads (the answers must not pile up
without bound)."""

import ctypes
import sys
import os
import shutil
import socket
import ssl

import pytest
import trio

from bus import BrokenError, TcpTransport, encode_frame, parse_address

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


async def _connected(tls, nursery):
    """(client, server) _StreamConnections over loopback TLS 1.3, handshake done."""
    server_tcp = TcpTransport(server_ssl=tls.server(True))
    client_tcp = TcpTransport(client_ssl=tls.client(with_cert=True))
    send, receive = trio.open_memory_channel(1)

    async def handler(conn):
        assert await conn.receive() == b"hello"
        await send.send(conn)
        await trio.sleep_forever()

    bound, close = await server_tcp.serve(parse_address("tcp://127.0.0.1:0"), handler, nursery)
    client = await client_tcp.connect(bound)
    await client.send(b"hello")
    server = await receive.receive()
    assert client._tls._tls.version() == "TLSv1.3"
    return client, server, close


def _records(client, payload: bytes) -> bytes:
    """The ciphertext of one frame, made by the client's SSLObject but not sent."""
    client._tls._tls.write(encode_frame(payload))
    return client._tls._outgoing.read()


async def test_records_dribbled_a_byte_at_a_time_arrive_whole(tls):
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            client, server, close = await _connected(tls, nursery)
            wire = _records(client, b"first" * 100) + _records(client, b"second")
            fd = client._tls.socket.fileno()
            got = []

            async def read():
                for _ in range(2):
                    got.append(await server.receive())

            nursery.start_soon(read)
            for i in range(len(wire)):  # every split point of both records, header and body
                os.write(fd, wire[i:i + 1])
                await trio.sleep(0)
            while len(got) < 2:
                await trio.sleep(0.01)
            assert got == [b"first" * 100, b"second"]
            await client.aclose()
            await server.aclose()
            await close()
            nursery.cancel_scope.cancel()


async def test_records_after_close_notify_are_never_delivered(tls):
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            client, server, close = await _connected(tls, nursery)
            before = _records(client, b"before")
            after = _records(client, b"after the end")  # made before the close, sent after it
            try:
                client._tls._tls.unwrap()
            except ssl.SSLWantReadError:
                pass
            close_notify = client._tls._outgoing.read()
            assert close_notify
            os.write(client._tls.socket.fileno(), before + close_notify + after)
            assert await server.receive() == b"before"
            # the clean end (or a stream broken by the record past it): "after" never comes
            for _ in range(2):
                try:
                    assert await server.receive() is None
                except BrokenError:
                    pass
            await client.aclose()
            await server.aclose()
            await close()
            nursery.cancel_scope.cancel()


def _libssl():
    with open("/proc/self/maps") as maps:
        paths = [line.split()[-1] for line in maps if "libssl.so" in line]
    for path in paths[:1]:
            lib = ctypes.CDLL(path)
            lib.SSL_key_update.argtypes = [ctypes.c_void_p, ctypes.c_int]
            lib.SSL_key_update.restype = ctypes.c_int
            return lib
    pytest.skip("libssl is not a shared library here")


def _ssl_pointer(obj: ssl.SSLObject, lib) -> int:
    # CPython's PySSLSocket: PyObject_HEAD (16 bytes), the socket's weakref (8), then SSL *: the
    # layout of CPython 3.11 (read from its Modules/_ssl.c); on another interpreter the test is
    # skipped rather than hand libssl a pointer read at a guessed offset
    if sys.implementation.name != "cpython" or sys.version_info[:2] != (3, 11):
        pytest.skip("reaches the SSL * inside CPython 3.11's _ssl object")
    ptr = ctypes.c_void_p.from_address(id(obj._sslobj) + 24).value
    lib.SSL_version.argtypes = [ctypes.c_void_p]
    lib.SSL_version.restype = ctypes.c_int
    assert ptr and lib.SSL_version(ptr) == 0x0304  # TLS1_3_VERSION: the pointer is this connection's SSL
    return ptr


async def _hostile_tls_client(tls, bound) -> tuple[trio.socket.SocketType, ssl.SSLObject, ssl.MemoryBIO]:
    """A TLS 1.3 client done by hand on a socket whose receive buffer is small from the start."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((bound.host, bound.port))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = tls.client(with_cert=True).wrap_bio(incoming, outgoing, server_hostname=bound.host)
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            if outgoing.pending:
                await sock.send(outgoing.read())
            incoming.write(await sock.recv(65536))
    if outgoing.pending:
        await sock.send(outgoing.read())
    return sock, obj, outgoing


async def test_a_key_update_flood_from_a_peer_that_never_reads_is_bounded(tls):
    """A TLS 1.3 KeyUpdate with update_requested obliges the receiver to answer with a
    KeyUpdate of its own, which OpenSSL produces while it reads (~27 bytes each). A peer
    that asks for one with every small frame and never reads its socket: once the socket
    buffers are full the answers must not pile up in the TLS stream's backlog without
    bound; the stream breaks instead (as a send queue that is not drained breaks)."""
    lib = _libssl()
    server_tcp = TcpTransport(server_ssl=tls.server(True))
    accepted_send, accepted = trio.open_memory_channel(1)

    async def handler(conn):
        await accepted_send.send(conn)
        await trio.sleep_forever()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            bound, close = await server_tcp.serve(parse_address("tcp://127.0.0.1:0"), handler, nursery)
            first = []

            async def first_frame():  # (the server's handshake runs in its first receive)
                conn = await accepted.receive()
                first.append((conn, await conn.receive()))

            nursery.start_soon(first_frame)
            sock, obj, outgoing = await _hostile_tls_client(tls, bound)
            obj.write(encode_frame(b"hello"))
            await sock.send(outgoing.read())
            while not first:
                await trio.sleep(0.01)
            server, hello = first[0]
            assert hello == b"hello"
            server._stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            ptr = _ssl_pointer(obj, lib)
            broken = False
            for i in range(20_000):
                assert lib.SSL_key_update(ptr, 1) == 1  # SSL_KEY_UPDATE_REQUESTED, sent with the next write
                obj.write(encode_frame(b"k"))
                await sock.send(outgoing.read())
                try:
                    with trio.fail_after(5):
                        assert await server.receive() == b"k", i
                except BrokenError:
                    broken = True
                    break
                backlog = sum(len(c) for c in server._tls._backlog)
                assert backlog <= 2 * 65536, f"{backlog} bytes of key-update answers queued after {i + 1} frames"
            assert broken, "the stream still serves a peer that reads nothing"
            sock.close()
            await server.aclose()
            await close()
            nursery.cancel_scope.cancel()
