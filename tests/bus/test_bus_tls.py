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
