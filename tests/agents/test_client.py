"""agents.client.PeerClient's submit failover, its thin trio loop on trio's autojump clock.

Fake peers on one in-memory bus node answer ``peer.submit`` (or stall) and
``peer.query``; the tests assert the virtual times at which the same signed
bytes go to the next peer and the outcome is known.
"""

from __future__ import annotations

import hashlib

import pytest
import trio

import bus
from agents.client import PeerClient, UserConfig, open_agent
from agents.consortium import Manifest
from agents.errors import Unavailable
from agents.runtime import make_endpoint
from agents.testing.consortium import TestConsortium
from core.protocol import PeerQuery

PEERS = (("peer-a1", "hospital-a"), ("peer-a2", "hospital-a"), ("peer-b1", "hospital-b"))
POLICY = b"policy bytes"


class FakePeers:
    """Peers that record each submission and answer it, or never answer (``stalled``).
    The first submission commits; later copies get ``replayed_nonce``."""

    def __init__(self, node: bus.Node, users: dict):
        self.consortium = TestConsortium.build(list(PEERS), name="test")
        self.keys = self.consortium.peer_keys
        self.stalled: set[str] = set()
        self.submissions: list[tuple[float, str, bytes]] = []
        for pid, _ in PEERS:
            ep = make_endpoint(node, pid, self.keys[pid].ecdsa_private, users.get)
            ep.register("peer.submit", self._submit(pid))
            ep.register("peer.query", self._query)

    def _submit(self, pid: str):
        async def handle(msg: bus.Message) -> dict:
            self.submissions.append((trio.current_time(), pid, msg.body["tx"]))
            if pid in self.stalled:
                await trio.sleep_forever()
            mark = "ok" if len(self.submissions) == 1 else "replayed_nonce"
            return {"tx_id": hashlib.sha256(msg.body["tx"]).digest(), "height": 7, "mark": mark}

        return handle

    async def _query(self, msg: bus.Message) -> dict | None:
        if PeerQuery.from_wire(msg.body).what == "policy":
            return {"policy": POLICY, "version": 1, "name": "p", "height": 7}  # a policy entry (core.state)
        return None

    def manifest(self) -> Manifest:
        return self.consortium.manifest


@pytest.fixture
async def world(tmp_path):
    users: dict[str, bytes] = {}
    async with bus.open_node() as node:
        peers = FakePeers(node, users)
        config = UserConfig("alice", "hospital-a", {"role": "patient"}, tmp_path / "alice", peers.manifest(),
                            passphrase="pw", fast_kdf=True)
        async with open_agent(config, node, lambda client: client) as client:
            users["alice"] = client.keys.ecdsa_public
            yield client, peers


async def test_submit_resends_the_same_bytes_after_the_timeout_and_confirms_the_replay(world, autojump_clock):
    client, peers = world
    assert isinstance(client, PeerClient) and client.config.request_timeout == 30.0
    peers.stalled.add("peer-a1")  # it commits the first copy but never answers
    t0 = trio.current_time()
    reply = await client.submit("set_policy", {"policy": POLICY})
    assert reply == {"tx_id": hashlib.sha256(peers.submissions[0][2]).digest(), "height": 7, "mark": "ok",
                     "resubmitted": True}
    assert 30.0 <= trio.current_time() - t0 < 30.5
    (t1, p1, raw1), (t2, p2, raw2) = peers.submissions
    assert (p1, p2) == ("peer-a1", "peer-a2") and raw1 == raw2  # the same signed bytes
    assert t1 - t0 < 0.5 and 30.0 <= t2 - t0 < 30.5
    # peer-a1 is tried last now: the next submit goes to peer-a2 at once
    peers.submissions.clear()
    t0 = trio.current_time()
    assert (await client.submit("set_policy", {"policy": POLICY}))["mark"] == "ok"
    assert trio.current_time() - t0 < 0.5 and [p for _, p, _ in peers.submissions] == ["peer-a2"]


async def test_submit_gives_up_after_twice_the_request_timeout(world, autojump_clock):
    client, peers = world
    peers.stalled.update(p for p, _ in PEERS)
    t0 = trio.current_time()
    with pytest.raises(Unavailable, match="no peer committed it in time") as info:
        await client.submit("set_policy", {"policy": POLICY})
    assert 60.0 <= trio.current_time() - t0 < 60.5
    assert [p for _, p, _ in peers.submissions] == ["peer-a1", "peer-a2"]  # none left for peer-b1
    assert "peer-a1: RequestTimeout" in str(info.value)
