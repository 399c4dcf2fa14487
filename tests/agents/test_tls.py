"""Mutual TLS under the channels (agents.tls): real TCP on loopback, certificates from two
organizations' TLS CAs; a node certificate must name the agent its side proves."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import secrets

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import bus
from agents.tls import (AGENT_URI_PREFIX, NodeTls, admit_nodes, certificate_agents, genesis_cas, node_cas,
                        server_context, tls_transport)
from bus.testing import Keyring

NOW = datetime.datetime.now(datetime.timezone.utc)


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _ca(org: str):
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{org} TLS CA")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(secrets.randbits(64)).not_valid_before(NOW - datetime.timedelta(minutes=5))
            .not_valid_after(NOW + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _leaf(ca, agents: list[str]):
    ca_cert, ca_key = ca
    key = _key()
    names = [x509.UniformResourceIdentifier(AGENT_URI_PREFIX + a) for a in agents]
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, agents[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(secrets.randbits(64))
            .not_valid_before(NOW - datetime.timedelta(minutes=5)).not_valid_after(NOW + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


@pytest.fixture(scope="module")
def pki():
    a, b, rogue = _ca("hospital-a"), _ca("hospital-b"), _ca("rogue")
    pem = lambda ca: ca[0].public_bytes(serialization.Encoding.PEM)  # noqa: E731
    return {"a": a, "b": b, "rogue": rogue, "trusted": [pem(a), pem(b)]}


def _node_cas(pki):
    """Which organization's TLS CA vouches for each consortium node (the genesis says it)."""
    pem = lambda ca: ca[0].public_bytes(serialization.Encoding.PEM)  # noqa: E731
    return {"peer-a": pem(pki["a"]), "peer-b": pem(pki["b"]), "peer-c": pem(pki["a"])}


async def _echo(msg):
    return {"echo": msg.body, "from": msg.sender}


async def _serve(nursery, pki, *, agent="peer-a", names=None, require_client_cert=True):
    cert, key = _leaf(pki["a"], names or [agent])
    node = await nursery.start(_node, tls_transport(cert, key, pki["trusted"], require_client_cert=require_client_cert),
                               _node_cas(pki))
    address = await node.listen("tcp://127.0.0.1:0")
    return node, address


async def _node(transport, node_cas, task_status=trio.TASK_STATUS_IGNORED):
    async with bus.open_node(transports={"tcp": transport}, admit_peer=admit_nodes(node_cas), connect_attempts=1,
                             handshake_timeout=5) as node:
        task_status.started(node)
        await trio.sleep_forever()


async def _client(nursery, transport, address, routes=("peer-a",), node_cas=None):
    node = await nursery.start(_node, transport, node_cas)
    for r in routes:
        node.add_route(r, address)
    return node


@contextlib.asynccontextmanager
async def _link(pki, speaker, *, client_ca=None, client_names=None, server_names=None, require_client_cert=True,
                handler=_echo):
    """A hospital-a listener hosting peer-a (its certificate naming ``server_names``, default
    peer-a) and a client node with a certificate from ``client_ca`` naming ``client_names``
    (none without ``client_ca``); yields the client's endpoint ``speaker``, the client node
    and the keyring."""
    ring = Keyring()
    async with trio.open_nursery() as nursery:
        server, address = await _serve(nursery, pki, names=server_names, require_client_cert=require_client_cert)
        server.endpoint("peer-a", **ring.credentials("peer-a")).register("ping", handler)
        cert, key = _leaf(pki[client_ca], client_names) if client_ca else (None, None)
        client = await _client(nursery, tls_transport(cert, key, pki["trusted"]), address, node_cas=_node_cas(pki))
        yield client.endpoint(speaker, **ring.credentials(speaker)), client, ring
        nursery.cancel_scope.cancel()


async def test_two_hospitals_talk_over_mutual_tls_and_channels(pki):
    async with _link(pki, "peer-b", client_ca="b", client_names=["peer-b"]) as (peer_b, _, _):
        assert await peer_b.request("peer-a", "ping", "hi", timeout=10) == {"echo": "hi", "from": "peer-b"}


@pytest.mark.parametrize("client_ca, speaker", [("rogue", "peer-b"), (None, "alice")],
                         ids=["certificate-from-an-unknown-ca", "no-certificate-where-one-is-required"])
async def test_a_client_without_a_member_certificate_is_refused(pki, client_ca, speaker):
    async with _link(pki, speaker, client_ca=client_ca, client_names=[speaker]) as (agent, _, _):
        with pytest.raises(bus.DeliveryError):
            await agent.request("peer-a", "ping", "hi", timeout=10)


async def test_a_user_without_certificate_where_none_is_required_proves_itself_by_key(pki):
    async with _link(pki, "alice", require_client_cert=False) as (alice, client, ring):
        assert await alice.request("peer-a", "ping", 1, timeout=10) == {"echo": 1, "from": "alice"}
        # ... but nobody without a certificate naming it may speak as a consortium node
        impostor = client.endpoint("peer-c", **ring.credentials("peer-c"))
        with pytest.raises(bus.RemoteError) as info:
            await impostor.request("peer-a", "ping", 2, timeout=10)
        assert info.value.code == "unproven-sender"


async def test_a_node_certificate_that_does_not_name_the_agent_it_proves_is_refused(pki):
    # a valid hospital-b certificate for peer-b, on a node proving peer-c
    async with _link(pki, "peer-c", client_ca="b", client_names=["peer-b"]) as (peer_c, _, _):
        with pytest.raises(bus.RemoteError) as info:
            await peer_c.request("peer-a", "ping", "x", timeout=10)
        assert info.value.code == "unproven-sender"


async def test_a_node_certificate_from_another_members_ca_is_refused(pki):
    # hospital-b's CA issues a certificate naming hospital-a's peer-c: a valid chain, the right
    # name, and still refused, since only hospital-a's CA vouches for hospital-a's nodes
    async with _link(pki, "peer-c", client_ca="b", client_names=["peer-c"]) as (peer_c, _, _):
        with pytest.raises(bus.RemoteError) as info:
            await peer_c.request("peer-a", "ping", "x", timeout=10)
        assert info.value.code == "unproven-sender"


async def test_a_server_whose_certificate_names_another_agent_gets_nothing(pki):
    got = []

    async def record(msg):
        got.append(msg.body)
        return "ok"

    # the listener holds peer-a's key but a certificate for peer-c only
    async with _link(pki, "peer-b", client_ca="b", client_names=["peer-b"], server_names=["peer-c"],
                     handler=record) as (peer_b, _, _):
        with pytest.raises(bus.UnreachableError):
            await peer_b.request("peer-a", "ping", "secret", timeout=10)
    assert got == []


def test_certificate_agents_reads_the_uri_sans(pki):
    pem, _ = _leaf(pki["a"], ["peer-a", "storage-1"])
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    assert certificate_agents(der) == {"peer-a", "storage-1"}
    ca_a = pki["a"][0].public_bytes(serialization.Encoding.PEM)
    ca_b = pki["b"][0].public_bytes(serialization.Encoding.PEM)
    admit = admit_nodes({"peer-a": ca_a, "storage-1": ca_b, "orderer": ca_a})
    assert admit("peer-a", der)
    assert not admit("storage-1", der)  # named, but its organization's CA did not issue it
    assert not admit("orderer", der) and not admit("peer-a", None)
    assert admit("alice", None)  # users prove themselves by key


async def test_a_node_trusts_a_member_ca_added_while_it_runs(pki):
    """NodeTls.trust: a hospital a configuration change adds can connect without a restart."""
    pem = lambda ca: ca[0].public_bytes(serialization.Encoding.PEM)  # noqa: E731
    ring = Keyring()
    cert, key = _leaf(pki["a"], ["peer-a"])
    server_tls = NodeTls(cert, key, [pem(pki["a"])])  # hospital-b is not a member yet
    async with trio.open_nursery() as nursery:
        server = await nursery.start(_node, server_tls.transport, _node_cas(pki))
        address = await server.listen("tcp://127.0.0.1:0")
        server.endpoint("peer-a", **ring.credentials("peer-a")).register("ping", _echo)
        b_cert, b_key = _leaf(pki["b"], ["peer-b"])

        async def ask() -> object:
            client = await nursery.start(_node, tls_transport(b_cert, b_key, pki["trusted"]), _node_cas(pki))
            client.add_route("peer-a", address)
            try:
                return await client.endpoint("peer-b", **ring.credentials("peer-b")).request("peer-a", "ping", 1,
                                                                                           timeout=10)
            except bus.DeliveryError as exc:
                return exc

        assert isinstance(await ask(), bus.DeliveryError)
        assert server_tls.trust([pem(pki["b"]), pem(pki["a"])]) == [pem(pki["b"])]  # only the new one
        assert await ask() == {"echo": 1, "from": "peer-b"}
        nursery.cancel_scope.cancel()


def test_node_cas_places_peers_by_the_configuration_and_others_by_tls_orgs(pki):
    from types import SimpleNamespace

    pem = lambda ca: ca[0].public_bytes(serialization.Encoding.PEM)  # noqa: E731
    org = lambda i, ca: SimpleNamespace(id=i, tls_ca=pem(ca).decode())  # noqa: E731
    config = SimpleNamespace(orgs=[org("hospital-a", pki["a"]), org("hospital-b", pki["b"])],
                             peers=[SimpleNamespace(id="peer-a", org="hospital-a"),
                                    SimpleNamespace(id="peer-b", org="hospital-b")],
                             orderer_ids=("orderer",))
    assert genesis_cas(config) == [pem(pki["a"]), pem(pki["b"])]
    cas = node_cas(config, {"storage-1": "hospital-b"}, ["storage-1", "storage-2"])
    assert (cas["peer-a"], cas["peer-b"], cas["storage-1"]) == (pem(pki["a"]), pem(pki["b"]), pem(pki["b"]))
    assert cas["orderer"] == cas["storage-2"] == (pem(pki["a"]), pem(pki["b"]))  # any member (the residual)
    cert, _ = _leaf(pki["a"], ["storage-2"])
    der = x509.load_pem_x509_certificate(cert).public_bytes(serialization.Encoding.DER)
    admit = admit_nodes(cas)
    assert admit("storage-2", der) and not admit("storage-1", der)
    cert, _ = _leaf(pki["a"], ["storage-1"])  # named, but hospital-b runs storage-1
    assert not admit("storage-1", x509.load_pem_x509_certificate(cert).public_bytes(serialization.Encoding.DER))


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_a_request_timing_out_in_a_handshake_leaves_no_socket_open(pki, tls):
    """A node that accepts but never answers (a stopped process): the request times out while
    the connection is in its TLS or channel handshake, and the client's socket is closed, not left
    to the garbage collector (it was, when cancelled during the channel handshake)."""
    import gc
    import warnings

    held = []

    async def hold(stream):
        if tls:  # complete TLS, then say nothing on the channel
            cert, key = _leaf(pki["a"], ["peer-a"])
            stream = trio.SSLStream(stream, server_context(cert, key, pki["trusted"]), server_side=True)
            await stream.do_handshake()
        held.append(stream)
        await trio.sleep_forever()

    ring = Keyring()
    cert, key = _leaf(pki["b"], ["peer-b"])
    options = {"transports": {"tcp": tls_transport(cert, key, pki["trusted"])}} if tls else {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            nursery.start_soon(trio.serve_listeners, hold, listeners)
            async with bus.open_node(routes={"peer-a": f"tcp://127.0.0.1:{port}"}, connect_attempts=1,
                                     **options) as node:
                ep = node.endpoint("peer-b", **ring.credentials("peer-b"))
                with pytest.raises(bus.RequestTimeout):
                    await ep.request("peer-a", "ping", 1, timeout=1)
            nursery.cancel_scope.cancel()
        gc.collect()
    assert held and not [w for w in caught if issubclass(w.category, ResourceWarning)], caught
