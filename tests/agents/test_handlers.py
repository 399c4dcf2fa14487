"""agents.handlers.serve, and every registry kind served by its server in a running swarm."""

from __future__ import annotations

import contextlib

import pytest
import trio

import bus
from agents.client import UserConfig
from agents.consortium import ConsortiumDirectory, enroll_id
from agents.handlers import serve
from agents.keys import AgentKeys
from agents.patient import PatientAgent
from agents.runtime import make_endpoint
from agents.swarm import Swarm, SwarmSpec
from core import ecdsa
from core.protocol import KINDS, PeerAudit, PeerAuditReply, PeerBlocksReply, codes


@contextlib.asynccontextmanager
async def _pair():
    keys = {name: ecdsa.generate_private_key() for name in ("server", "client")}
    directory = ConsortiumDirectory({name: ecdsa.public_key(k) for name, k in keys.items()})
    async with bus.open_node() as node:
        server = make_endpoint(node, "server", keys["server"], directory)
        client = make_endpoint(node, "client", keys["client"], directory)
        try:
            yield server, client
        finally:
            await server.aclose()
            await client.aclose()


async def test_serve_parses_requests_and_checks_replies():
    seen = []

    async def audit(msg: bus.Message, request: PeerAudit) -> PeerAuditReply:
        seen.append((msg.sender, request))
        if request.patient == "wrong-reply":
            return PeerBlocksReply(())  # a bug: not the kind's reply type
        return PeerAuditReply(({"event": "store"},))

    with trio.fail_after(10):
        async with _pair() as (server, client):
            serve(server, {PeerAudit: audit})
            reply = await client.request("server", "peer.audit", {"patient": "alice"})
            assert reply == {"events": [{"event": "store"}]}
            assert seen == [("client", PeerAudit("alice"))]
            with pytest.raises(bus.RemoteError) as info:
                await client.request("server", "peer.audit", {"patient": "a/b"})
            assert info.value.code == codes.BAD_REQUEST and "'patient'" in info.value.message
            with pytest.raises(bus.RemoteError) as info:
                await client.request("server", "peer.audit", {"patient": "wrong-reply"})
            assert info.value.code == codes.INTERNAL  # the details stay on the server
            assert len(seen) == 2  # the malformed body never reached the handler
            with pytest.raises(TypeError):
                serve(server, {PeerAuditReply: audit})  # a reply type is not a request type


async def test_serve_uses_the_agents_own_decode_error():
    async def audit(msg, request):
        raise AssertionError("not reached")

    with trio.fail_after(10):
        async with _pair() as (server, client):
            serve(server, {PeerAudit: audit},
                  on_decode_error=lambda exc: bus.HandlerError("storage.bad-request", str(exc)))
            with pytest.raises(bus.RemoteError) as info:
                await client.request("server", "peer.audit", [])
            assert info.value.code == "storage.bad-request"


async def test_every_registry_kind_is_served_by_its_server(tmp_path, monkeypatch):
    registered: dict[str, set[str]] = {}
    original = bus.Endpoint.register

    def recording(self, kind, handler, **options):
        registered.setdefault(self.identity, set()).add(kind)
        return original(self, kind, handler, **options)

    monkeypatch.setattr(bus.Endpoint, "register", recording)
    with trio.fail_after(60):
        async with Swarm.open(SwarmSpec(data_dir=tmp_path / "swarm"), fresh=True) as swarm:
            m = swarm.manifest
            cfg = UserConfig(subject="alice", org="hospital-a", attributes={"role": "patient"},
                             data_dir=tmp_path / "alice", manifest=m, passphrase="pw", fast_kdf=True)
            async with PatientAgent.open(cfg, node=swarm.node) as alice:
                await alice.register(swarm.token("alice", "hospital-a", {"role": "patient"}, alice.enroll_id))
                servers = {"orderer": [m.orderer], "peer": m.peers, "storage": m.storage, "patient": ["alice"]}
                # what each agent registered is exactly its server's kinds in the registry
                for server, agents in servers.items():
                    expected = {k for k, spec in KINDS.items() if spec.server == server}
                    for agent in agents:
                        assert registered[agent] == expected, agent
                # and each answers every one of them (an empty body: anything but unknown-kind)
                keys = AgentKeys.generate()
                directory = m.directory()
                directory.set_certificate("alice", alice.keys.ecdsa_public)  # so alice's replies verify
                probe = make_endpoint(swarm.node, enroll_id(keys.ecdsa_public), keys.ecdsa_private, directory)
                try:
                    for kind, spec in KINDS.items():
                        try:
                            await probe.request(servers[spec.server][0], kind, {}, timeout=10)
                        except bus.RemoteError as exc:
                            assert exc.code != codes.UNKNOWN_KIND, kind
                finally:
                    await probe.aclose()
