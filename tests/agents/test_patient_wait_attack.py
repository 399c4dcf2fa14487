"""Attack review, fourth wave: a doctor spends its patient's waiting slots at the peers.

A ``patient.access_request`` may name the height its request committed at; the patient
reads the request with ``min_height`` there, and a peer below that height waits for the
block under its per-sender cap, which counts the *patient* (4 waits). A doctor naming
heights the chain has not reached keeps the patient's 4 waits busy at one peer after
another (each peer 2 s, then ``query.behind`` sends the read to the next): the
patient's own reads that needed that peer to wait were refused ``busy`` and failed
there. A ``busy`` peer now sends a height-bound read to the next peer, as ``behind``
does (docs/security.md, "Fourth wave")."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import bus
from agents.client import PeerClient, Unavailable
from core.protocol import PeerQuery, codes


def _client(answers):
    """A PeerClient's query over peers answering as ``answers`` says (a RemoteError code, or a value)."""
    asked = []

    async def peer_request(peer, kind, body, *, timeout=None):
        asked.append(peer)
        answer = answers[peer]
        if isinstance(answer, str):
            raise bus.RemoteError(answer, "as told", peer)
        return answer

    return SimpleNamespace(peers_by_health=lambda: list(answers), peer_request=peer_request), asked


async def test_a_peer_whose_waiting_slots_are_taken_sends_a_height_bound_read_to_the_next():
    fake, asked = _client({"peer-1": codes.BUSY, "peer-2": {"policy": "p"}})
    entry = await PeerClient.query(fake, PeerQuery("policy", patient="alice", min_height=7))
    assert entry == {"policy": "p"} and asked == ["peer-1", "peer-2"]


async def test_when_every_peer_is_busy_or_behind_the_read_is_unavailable():
    fake, asked = _client({"peer-1": codes.BUSY, "peer-2": codes.QUERY_BEHIND, "peer-3": codes.BUSY})
    with pytest.raises(Unavailable):
        await PeerClient.query(fake, PeerQuery("policy", patient="alice", min_height=7))
    assert asked == ["peer-1", "peer-2", "peer-3"]


async def test_any_other_refusal_still_ends_the_read():
    fake, asked = _client({"peer-1": codes.FORBIDDEN, "peer-2": {"policy": "p"}})
    with pytest.raises(Exception) as refused:
        await PeerClient.query(fake, PeerQuery("policy", patient="alice", min_height=7))
    assert not isinstance(refused.value, Unavailable) and asked == ["peer-1"]
