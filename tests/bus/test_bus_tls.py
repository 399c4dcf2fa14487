"""TLS and mutual TLS on loopback (certificates made with the openssl CLI)."""

import shutil
import ssl
import subprocess

import pytest
import trio

from bus import BusError, TcpTransport
from bus.testing import Keyring, linked_pair

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def _run(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca", cwd=d)
    for name, san in (("server", "IP:127.0.0.1"), ("client", "DNS:client")):
        _run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        _run(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
            cwd=d,
        )
    return d


def server_context(pki, mutual):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki / "server.pem", pki / "server.key")
    if mutual:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki / "ca.pem")
    return ctx


def client_context(pki, with_cert):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.pem"))
    if with_cert:
        ctx.load_cert_chain(pki / "client.pem", pki / "client.key")
    return ctx


async def echo(msg):
    return msg.body


@pytest.mark.parametrize("mutual", [False, True])
async def test_request_reply_over_tls(pki, mutual):
    ring = Keyring()
    server_tcp = TcpTransport(server_ssl=server_context(pki, mutual))
    client_tcp = TcpTransport(client_ssl=client_context(pki, with_cert=mutual))
    client_options = {"transports": {"tcp": client_tcp}}
    async with linked_pair(ring, echo, server_options={"transports": {"tcp": server_tcp}},
                           client_options=client_options) as (server, client, alice, _):
        with trio.fail_after(10):
            for i in range(3):
                assert await alice.request("bob", "ping", {"i": i}) == {"i": i}


async def test_mutual_tls_refuses_a_client_without_certificate(pki):
    ring = Keyring()
    server_tcp = TcpTransport(server_ssl=server_context(pki, mutual=True))
    client_tcp = TcpTransport(client_ssl=client_context(pki, with_cert=False))
    client_options = {"transports": {"tcp": client_tcp}, "connect_attempts": 1}
    async with linked_pair(ring, echo, server_options={"transports": {"tcp": server_tcp}},
                           client_options=client_options) as (server, client, alice, _):
        with trio.fail_after(10):
            with pytest.raises(BusError):
                await alice.request("bob", "ping", 1, timeout=5)
        await trio.sleep(0.05)
        assert server.statistics().broken_connections >= 1


async def test_plain_client_cannot_talk_to_a_tls_server(pki):
    ring = Keyring()
    server_tcp = TcpTransport(server_ssl=server_context(pki, mutual=False))
    async with linked_pair(ring, echo, server_options={"transports": {"tcp": server_tcp}}) as (server, _, alice, _):
        with trio.fail_after(10):
            with pytest.raises(BusError):
                await alice.request("bob", "ping", 1, timeout=5)
