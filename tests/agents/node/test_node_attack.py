"""Attacks on a consortium node as `emrshare node start` runs it (security review,
issue 14; TLS: issue 15). A test marked ``xfail(strict=True)`` is an open finding.

The node here is the real thing built from its configuration
(:meth:`NodeService.from_config` of the swarm's ``DIR/nodes/orderer.toml``: mutual
TLS from ``[tls]``, the genesis's member CAs, :func:`agents.tls.admit_nodes`),
probed over real TCP on loopback by clients holding various certificates."""

from __future__ import annotations

import datetime
import shutil
import ssl
import tempfile
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

import bus
from agents.consortium import enroll_id
from agents.keys import AgentKeys
from agents.node.config import load_config
from agents.node.service import NodeService
from agents.org import _tls
from agents.runtime import make_endpoint
from agents.swarm import SwarmFiles, SwarmSpec
from agents.tls import AGENT_URI_PREFIX, NodeTls, genesis_cas, tls_transport
from bus.testing import connect_channel

NOW = datetime.datetime.now(datetime.timezone.utc)


@pytest.fixture(scope="module")
def swarm_files():
    root = Path(tempfile.mkdtemp(prefix="emrs-a-", dir="/tmp"))
    files = SwarmFiles(root / "s")
    files.create(SwarmSpec(data_dir=files.dir, processes=True))
    yield files
    shutil.rmtree(root, ignore_errors=True)


def _service(files: SwarmFiles, tmp: Path, **bus_options) -> NodeService:
    """The swarm's orderer as `node start` builds it, on a fresh data directory and any free port."""
    from agents.node.export import swarm_node_config

    config = load_config(swarm_node_config(files, "orderer"), environ={})
    config.listen, config.data_dir, config.ready_file = "tcp://127.0.0.1:0", tmp / "data", None
    service = NodeService.from_config(config)
    service.bus_options = bus_options
    return service


def _ca_key(files: SwarmFiles, org: str):
    return _tls.key_from_der(files.org_dir(org)._load("tls-ca.keys"))


def _client_cert(files: SwarmFiles, org: str | None, names: list[str]) -> tuple[bytes, bytes]:
    """A client certificate naming ``names[0]`` from ``org``'s TLS CA (None: a rogue CA no member knows)."""
    key = _tls.new_key()
    if org is None:
        ca_key = _tls.new_key()
        ca_pem = _tls.make_ca("rogue", ca_key, NOW)
    else:
        ca_key, ca_pem = _ca_key(files, org), files.org_dir(org).tls_ca_pem()
    cert = _tls.make_node_cert(org or "rogue", names[0], ["127.0.0.1"], key, ca_pem, ca_key, NOW)
    return cert, _tls.key_to_pem(_tls.key_to_der(key))


async def _ask(files: SwarmFiles, address: str, agent: str, keys: AgentKeys, tls: tuple[bytes, bytes] | None,
               *, attempts: int = 1) -> object:
    """Ask the orderer at ``address`` for its head as ``agent`` (proved with ``keys``) over a
    connection with the client certificate ``tls`` (None: TLS without one); the reply or the error."""
    transport = tls_transport(*(tls or (None, None)), files.trusted_cas())
    async with bus.open_node(transports={"tcp": transport}, routes={"orderer": address},
                             connect_attempts=attempts) as node:
        directory = files.manifest().directory()
        ep = make_endpoint(node, agent, keys.ecdsa_private, directory)
        try:
            return await ep.request("orderer", "orderer.head", {}, timeout=20)
        except bus.BusError as exc:
            return exc


async def _with_node(files: SwarmFiles, tmp: Path, body, **bus_options):
    service = _service(files, tmp, **bus_options)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        try:
            with trio.fail_after(60):
                await body(service)
        finally:
            nursery.cancel_scope.cancel()


async def test_a_consortium_node_refuses_a_channel_without_tls(swarm_files, tmp_path):
    async def body(service: NodeService) -> None:
        assert service.transport is not None  # [tls] is on: the config `swarm up --processes` writes
        with pytest.raises((bus.BusError, OSError, trio.BrokenResourceError)):
            conn = await connect_channel(service.address)  # plain TCP, no certificate
            await conn.aclose()

    await _with_node(swarm_files, tmp_path, body)


async def test_who_may_speak_to_a_node_over_tls(swarm_files, tmp_path):
    files = swarm_files
    peer_a1, peer_a2 = files.agent_keys("peer-a1"), files.agent_keys("peer-a2")
    user = AgentKeys.generate()

    async def body(service: NodeService) -> None:
        address = service.address
        # peer-a1 with its own certificate from hospital-a's CA: answered
        own = files.org_dir("hospital-a")
        reply = await _ask(files, address, "peer-a1", peer_a1, (own.tls_cert_pem("peer-a1"),
                                                                own.tls_key_pem("peer-a1")))
        assert isinstance(reply, dict) and reply["height"] >= 0, reply
        # a certificate from a CA no member knows: the TLS handshake fails, nothing is asked
        assert isinstance(await _ask(files, address, "peer-a1", peer_a1, _client_cert(files, None, ["peer-a1"])),
                          bus.UnreachableError)
        # no certificate at all where one is required
        assert isinstance(await _ask(files, address, "peer-a1", peer_a1, None), bus.UnreachableError)
        # hospital-b's CA names hospital-a's peer (a valid chain, the right name, the peer's real key)
        reply = await _ask(files, address, "peer-a1", peer_a1, _client_cert(files, "hospital-b", ["peer-a1"]))
        assert isinstance(reply, bus.RemoteError) and reply.code == "unproven-sender", reply
        # hospital-a's own certificate for peer-a2, proving peer-a1
        reply = await _ask(files, address, "peer-a1", peer_a1, (own.tls_cert_pem("peer-a2"),
                                                                own.tls_key_pem("peer-a2")))
        assert isinstance(reply, bus.RemoteError) and reply.code == "unproven-sender", reply
        # ... while peer-a2 on that certificate is heard
        reply = await _ask(files, address, "peer-a2", peer_a2, (own.tls_cert_pem("peer-a2"),
                                                                own.tls_key_pem("peer-a2")))
        assert isinstance(reply, dict), reply
        # a user with a client certificate from its hospital's CA: through TLS and the channel, and the
        # orderer's own admission answers (users may not read the orderer's head)
        cert, key = _tls.user_tls(files.org_dir("hospital-b"), "carol")
        reply = await _ask(files, address, enroll_id(user.ecdsa_public), user, (cert, _tls.key_to_pem(key)))
        assert isinstance(reply, bus.RemoteError) and reply.code == "forbidden", reply

    await _with_node(files, tmp_path, body)


async def test_hostile_tls_handshakes_are_bounded_and_others_are_served(swarm_files, tmp_path):
    """Garbage instead of a ClientHello is dropped at once; a ClientHello cut short and held open is
    dropped at the handshake timeout; meanwhile a valid peer is served."""
    files = swarm_files
    own = files.org_dir("hospital-a")
    good = (own.tls_cert_pem("peer-a1"), own.tls_key_pem("peer-a1"))
    peer_a1 = files.agent_keys("peer-a1")

    async def body(service: NodeService) -> None:
        host, port = service.address.removeprefix("tcp://").rsplit(":", 1)
        garbage = await trio.open_tcp_stream(host, int(port))
        await garbage.send_all(b"GET / HTTP/1.1\r\n\r\n" + bytes(range(256)) * 4)
        assert await _read_until_closed(garbage) < 4096  # closed: no TLS, no channel
        # a half handshake: the first bytes of a genuine ClientHello, then silence
        half = await trio.open_tcp_stream(host, int(port))
        await half.send_all(_client_hello()[:40])
        assert isinstance(await _ask(files, service.address, "peer-a1", peer_a1, good), dict)
        await _read_until_closed(half)  # the node hangs up at its handshake timeout (fail_after bounds it)
        dropped = service.bus_node.statistics().dropped_connections
        assert dropped.get("handshake-failed", 0) >= 1 and dropped.get("handshake-timeout", 0) >= 1, dropped
        assert isinstance(await _ask(files, service.address, "peer-a1", peer_a1, good), dict)

    await _with_node(files, tmp_path, body, handshake_timeout=2.0)


async def _read_until_closed(stream: trio.SocketStream) -> int:
    got = 0
    try:
        while chunk := await stream.receive_some(65536):
            got += len(chunk)
    except trio.BrokenResourceError:
        pass
    await stream.aclose()
    return got


def _client_hello() -> bytes:
    """The bytes of a real TLS 1.3 ClientHello (an in-memory handshake's first flight)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="orderer")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    assert hello[0] == 0x16 and len(hello) > 40  # a TLS handshake record, longer than the part sent
    return hello


async def test_the_load_tests_client_of_an_existing_deployment_speaks_tls(swarm_files, tmp_path):
    """`loadtest --target FILE` mints its client certificate from the first registrar's organization
    (in memory) when the genesis names TLS CAs: a node lets it through to the channel layer."""
    from agents.bench.loadtest.target import _tls as loadtest_tls

    files = swarm_files
    user = AgentKeys.generate()
    registrars = {org: (files.dir / "orgs" / org, files.secrets / f"{org}.key") for org in files.orgs()}
    options = loadtest_tls(files.manifest(), registrars)

    async def body(service: NodeService) -> None:
        async with bus.open_node(routes={"orderer": service.address}, connect_attempts=1, **options) as node:
            ep = make_endpoint(node, enroll_id(user.ecdsa_public), user.ecdsa_private, files.manifest().directory())
            with pytest.raises(bus.RemoteError) as info:
                await ep.request("orderer", "orderer.head", {}, timeout=20)
            assert info.value.code == "forbidden"  # past TLS and the channel: the orderer's own admission

    await _with_node(files, tmp_path, body)


# ---------------------------------------------------------------- attack review of issue 15's surfaces


def _user_cert_naming(files: SwarmFiles, org: str, subject: str) -> tuple[bytes, bytes]:
    """A user (client-only) certificate naming ``subject`` straight from ``org``'s TLS CA: what a
    registrar's `issue --request` made for a subject that is a node id before it refused them."""
    key = _tls.new_key()
    cert = _tls.make_user_cert(org, subject, key.public_key(), files.org_dir(org).tls_ca_pem(), _ca_key(files, org),
                               NOW)
    return cert, _tls.key_to_pem(_tls.key_to_der(key))


async def test_a_user_certificate_never_proves_a_consortium_node(swarm_files, tmp_path):
    """Finding: a user TLS certificate (clientAuth only) from the node's own organization's CA, naming
    the node's id, was accepted as that node's certificate. A node certificate must be allowed to
    serve (serverAuth); the same holder with the node's real certificate is heard."""
    files = swarm_files
    peer_a1 = files.agent_keys("peer-a1")

    async def body(service: NodeService) -> None:
        reply = await _ask(files, service.address, "peer-a1", peer_a1, _user_cert_naming(files, "hospital-a", "peer-a1"))
        assert isinstance(reply, bus.RemoteError) and reply.code == "unproven-sender", reply
        own = files.org_dir("hospital-a")
        reply = await _ask(files, service.address, "peer-a1", peer_a1, (own.tls_cert_pem("peer-a1"),
                                                                        own.tls_key_pem("peer-a1")))
        assert isinstance(reply, dict), reply

    await _with_node(files, tmp_path, body)


def test_a_secret_file_other_users_can_read_is_warned_at_start(swarm_files, tmp_path, caplog):
    """Finding: `node start` opened a key file or passphrase file that every local user could read
    (a `0644` file from `echo ... > pass`) without a word; whoever reads it and the key stores is the
    node. It now warns once per file at start (not refused: ssh-style refusal would break configs
    that work today); a 0600 file is silent."""
    import logging
    import os

    from agents.node.export import swarm_node_config
    from agents.node.service import exposed_secrets

    config = load_config(swarm_node_config(swarm_files, "orderer"), environ={})
    assert config.key_file is not None and exposed_secrets(config) == []  # the swarm's key file is 0600
    shared = tmp_path / "shared.key"
    shared.write_bytes(config.key_file.read_bytes())
    os.chmod(shared, 0o644)
    config.key_file, config.data_dir, config.ready_file = shared, tmp_path / "data", None
    with caplog.at_level(logging.WARNING, logger="agents.node"):
        NodeService.from_config(config)
    warned = [r.getMessage() for r in caplog.records if "open to other users" in r.getMessage()]
    assert len(warned) == 1 and "mode 0644" in warned[0] and str(shared) in warned[0], warned
    assert config.key_file.read_bytes() not in "".join(warned).encode()  # the secret itself never logged
    os.chmod(shared, 0o600)
    assert exposed_secrets(config) == []


NOT_A_CA = ("-----BEGIN CERTIFICATE-----\nTUlJQnNqQ0NBVmVnQXdJQkFnSVVkZWFk\n-----END CERTIFICATE-----\n")


def test_a_member_tls_ca_that_is_not_a_certificate_stops_no_node(swarm_files, tmp_path):
    """Finding: a configuration change may add a member whose `tls_ca` is any text (the ledger checks
    its length only). On commit, every running peer handed it to OpenSSL (`NodeTls.trust` from its
    commit listener) and the SSLError escaped the listener, out of the peer's block-commit path; a
    node restarted on such a configuration failed its admission the same way at the first connection.
    Now a CA OpenSSL cannot load is skipped (logged once), the others are trusted."""
    import dataclasses
    import logging
    from types import SimpleNamespace

    from agents.node.service import _admission
    from core.identity import OrgInfo
    from core.ledger import parse_genesis

    files = swarm_files
    from agents.node.export import swarm_node_config

    config = load_config(swarm_node_config(files, "peer-a1"), environ={})
    genesis = parse_genesis(config.genesis_bytes()).config
    own = files.org_dir("hospital-a")
    tls = NodeTls(own.tls_cert_pem("peer-a1"), own.tls_key_pem("peer-a1"), genesis_cas(genesis))
    listeners = []
    agent = SimpleNamespace(config=genesis, consortium_config=lambda: agent.config, on_commit=listeners.append)
    admit = _admission(config, agent, tls, genesis, config.storage)
    b = files.org_dir("hospital-b")
    peer_b1 = x509.load_pem_x509_certificate(b.tls_cert_pem("peer-b1")).public_bytes(Encoding.DER)
    assert admit("peer-b1", peer_b1)
    # a change commits a new member "h9" whose tls_ca is not a certificate (and hospital-b stays)
    rogue = OrgInfo("h9", "Nine", genesis.orgs[0].admin_key, genesis.orgs[0].registrar_key, NOT_A_CA)
    agent.config = dataclasses.replace(genesis, orgs=(*genesis.orgs, rogue))
    logging.getLogger("agents.tls").setLevel(logging.WARNING)
    for listener in listeners:
        listener()  # the peer's commit listener: must not raise
    assert admit("peer-b1", peer_b1)  # the other members are still trusted
    assert NOT_A_CA.encode() not in tls.trusted
    # a node starting with it trusts the others (and says which it skipped)
    started = NodeTls(own.tls_cert_pem("peer-a1"), own.tls_key_pem("peer-a1"), [*genesis_cas(genesis),
                                                                                NOT_A_CA.encode()])
    assert started.trusted == set(genesis_cas(genesis))
    with pytest.raises(ValueError, match="no TLS CA certificate"):
        NodeTls(own.tls_cert_pem("peer-a1"), own.tls_key_pem("peer-a1"), [NOT_A_CA.encode()])
    # nor can a member slip a second CA (a public web CA, say) or a non-CA certificate into the trust store
    rogue_ca = _tls.make_ca("rogue", _tls.new_key(), NOW)
    bundle = _tls.make_ca("h9", _tls.new_key(), NOW) + rogue_ca
    leaf = own.tls_cert_pem("peer-a2")
    for bad in (bundle, leaf):
        assert tls.trust([bad]) == [] and bad not in tls.trusted


def _big_client_cert(files: SwarmFiles, org: str, sans: int) -> tuple[bytes, bytes]:
    """A client certificate from ``org``'s CA (a hostile member) stuffed with ``sans`` URI SANs."""
    from cryptography.hazmat.primitives import hashes

    key = _tls.new_key()
    ca = x509.load_pem_x509_certificate(files.org_dir(org).tls_ca_pem())
    names = [x509.UniformResourceIdentifier(f"{AGENT_URI_PREFIX}u{i:06d}{'x' * 20}") for i in range(sans)]
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW - datetime.timedelta(minutes=5))
            .not_valid_after(NOW + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False).sign(_ca_key(files, org), hashes.SHA256()))
    return cert.public_bytes(Encoding.PEM), _tls.key_to_pem(_tls.key_to_der(key))


async def test_a_huge_member_client_certificate_is_refused_at_the_handshake(swarm_files, tmp_path):
    """Holds: a member's CA may sign any certificate, a 120 KB one too; OpenSSL's limit on the peer's
    certificate list (100 KiB) refuses it in the TLS handshake, before the channel or the admission
    parses it; one of 6 KB goes through to the node's own admission; a peer is served after both."""
    files = swarm_files
    user = AgentKeys.generate()
    own = files.org_dir("hospital-a")
    good = (own.tls_cert_pem("peer-a1"), own.tls_key_pem("peer-a1"))

    async def body(service: NodeService) -> None:
        huge = _big_client_cert(files, "hospital-b", 2000)
        assert len(huge[0]) > 110_000
        assert isinstance(await _ask(files, service.address, enroll_id(user.ecdsa_public), user, huge),
                          bus.UnreachableError)
        small = _big_client_cert(files, "hospital-b", 100)
        reply = await _ask(files, service.address, enroll_id(user.ecdsa_public), user, small)
        assert isinstance(reply, bus.RemoteError) and reply.code == "forbidden", reply  # the orderer's own rule
        assert isinstance(await _ask(files, service.address, "peer-a1", files.agent_keys("peer-a1"), good), dict)

    await _with_node(files, tmp_path, body)


async def test_a_node_accepting_clients_without_certificates_says_so(swarm_files, tmp_path, caplog):
    """Finding: `[tls] require_client_cert = false` (or EMRSHARE_NODE_TLS__REQUIRE_CLIENT_CERT=false in
    the service's environment) let every machine reach the channel handshake without a word, where
    `enabled = false` warns. It now warns at start; a client without a certificate gets through TLS
    to the node's own admission, as that setting means."""
    import logging

    from agents.node.export import swarm_node_config

    config = load_config(swarm_node_config(swarm_files, "orderer"),
                         environ={"EMRSHARE_NODE_TLS__REQUIRE_CLIENT_CERT": "false"})
    config.listen, config.data_dir, config.ready_file = "tcp://127.0.0.1:0", tmp_path / "data", None
    service = NodeService.from_config(config)
    user = AgentKeys.generate()
    async with trio.open_nursery() as nursery:
        with caplog.at_level(logging.WARNING, logger="agents.node"):
            await nursery.start(service.run)
        reply = await _ask(swarm_files, service.address, enroll_id(user.ecdsa_public), user, None)
        assert isinstance(reply, bus.RemoteError) and reply.code == "forbidden", reply
        nursery.cancel_scope.cancel()
    warned = [r.getMessage() for r in caplog.records if "require_client_cert = false" in r.getMessage()]
    assert len(warned) == 1 and service.address in warned[0], warned


async def test_the_control_socket_is_the_nodes_users_only(swarm_files, tmp_path):
    """Holds: the status socket (`DATA_DIR/run/node.sock`) is 0600 in a 0700 directory while the node
    runs, even when the run directory was left 0777 (by a previous run or another tool)."""
    import os
    import stat

    (tmp_path / "data" / "run").mkdir(parents=True)
    os.chmod(tmp_path / "data" / "run", 0o777)

    async def body(service: NodeService) -> None:
        sock = service.config.control_socket
        assert stat.S_ISSOCK(os.stat(sock).st_mode)
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700

    await _with_node(swarm_files, tmp_path, body)


async def test_half_tls_handshakes_from_one_source_hold_only_its_share(swarm_files, tmp_path):
    """Holds: a client holding TLS handshakes open (the first bytes of a ClientHello, then silence)
    counts against its address's connection cap while the handshake lasts (the TLS handshake runs
    inside the channel handshake): past the cap its next connection is closed at once, and a peer
    from another address is served meanwhile."""
    from bus import TcpTransport
    from agents.tls import client_context

    files = swarm_files
    own = files.org_dir("hospital-a")
    hello = _client_hello()[:40]

    async def body(service: NodeService) -> None:
        host, port = service.address.removeprefix("tcp://").rsplit(":", 1)
        held = []
        for _ in range(4):
            s = await trio.open_tcp_stream(host, int(port))
            await s.send_all(hello)
            held.append(s)
        with trio.fail_after(30):  # the node has accepted them (counted per source)
            while service.bus_node.statistics().handshaking < 4:
                await trio.sleep(0.01)
        extra = await trio.open_tcp_stream(host, int(port))
        await extra.send_all(hello)
        with trio.fail_after(30):  # closed at once, not at the handshake timeout (60 s here)
            await _read_until_closed(extra)
        ctx = client_context(own.tls_cert_pem("peer-a1"), own.tls_key_pem("peer-a1"), files.trusted_cas())
        transport = TcpTransport(client_ssl=ctx, local_address="127.0.0.2")
        async with bus.open_node(transports={"tcp": transport}, routes={"orderer": service.address},
                                 connect_attempts=1) as node:
            ep = make_endpoint(node, "peer-a1", files.agent_keys("peer-a1").ecdsa_private,
                               files.manifest().directory())
            assert isinstance(await ep.request("orderer", "orderer.head", {}, timeout=20), dict)
        assert service.bus_node.statistics().refused_connections >= 1
        for s in held:
            await s.aclose()

    await _with_node(files, tmp_path, body, max_connections_per_source=4, handshake_timeout=60.0)


def test_a_removed_members_machines_are_refused_at_once(swarm_files):
    """Finding (was a documented residual): a change removing a member leaves its CA in every running
    node's TLS trust store (OpenSSL contexts only grow), so its machines kept completing handshakes and
    speaking as users until the nodes restarted. The admission now wants a user's certificate issued
    by a member of the configuration in force: refused from the commit that removes the member on."""
    import dataclasses
    from types import SimpleNamespace

    from agents.node.export import swarm_node_config
    from agents.node.service import _admission
    from core.ledger import parse_genesis

    files = swarm_files
    config = load_config(swarm_node_config(files, "peer-a1"), environ={})
    genesis = parse_genesis(config.genesis_bytes()).config
    own = files.org_dir("hospital-a")
    tls = NodeTls(own.tls_cert_pem("peer-a1"), own.tls_key_pem("peer-a1"), genesis_cas(genesis))
    agent = SimpleNamespace(config=genesis, consortium_config=lambda: agent.config, on_commit=lambda listener: None)
    admit = _admission(config, agent, tls, genesis, config.storage)
    der = lambda pem: x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)  # noqa: E731
    carol = der(_tls.user_tls(files.org_dir("hospital-b"), "carol")[0])
    alice = der(_tls.user_tls(own, "alice")[0])
    user = enroll_id(AgentKeys.generate().ecdsa_public)
    assert admit(user, carol) and admit(user, alice) and admit(user, None)
    # hospital-b is removed (with its peers)
    agent.config = dataclasses.replace(genesis, orgs=tuple(o for o in genesis.orgs if o.id != "hospital-b"),
                                       peers=tuple(p for p in genesis.peers if p.org != "hospital-b"), threshold=1)
    assert not admit(user, carol)
    assert admit(user, alice) and admit(user, None)  # a member's user, and one without a certificate
    assert x509.load_pem_x509_certificate(files.org_dir("hospital-b").tls_ca_pem()).public_bytes(Encoding.PEM) \
        in tls.trusted  # still in the TLS trust store: the admission is what stops it
