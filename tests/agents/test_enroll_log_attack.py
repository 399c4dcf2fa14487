"""Attack review, fourth wave: a refused enrollment costs the peer a log line. enroll:<key>
ids are free (a key of one's own), and a token that does not even decode is refused
before any crypto, so an outsider sending such requests in a loop made the peer write
an INFO line (what a node logs by default) per ~450-byte request. Refusals are counted,
and logged once per sender (at most agents.admission.MAX_LOGGED in all)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

import bus
from agents.admission import Refusals
from agents.consortium import enroll_id
from agents.peer._handlers import PeerHandlers
from core import ecdsa, pre
from core.protocol import PeerEnroll, codes
from core.protocol._peer import BOX_KEY_SIZE, TOKEN_SIZE


def _peer():
    org = SimpleNamespace(registrar_key=b"\x02" * 33)
    return SimpleNamespace(refusals=Refusals("peer-x"), peer_id="peer-x", info=SimpleNamespace(org="org1"),
                           enrolls=True, config=SimpleNamespace(org=lambda name: org if name == "org1" else None),
                           clock=lambda: 1_000)


def _request(token: bytes) -> PeerEnroll:
    return PeerEnroll(subject="mallory", org="org1", attributes={}, box_key=b"\0" * BOX_KEY_SIZE,
                      pre_key=b"\0" * pre.PublicKey.SIZE, pre_proof=b"\0" * pre.Proof.SIZE, valid_s=86_400,
                      token=token)


async def test_junk_enrollments_in_a_loop_are_counted_and_logged_once_per_sender(caplog):
    peer = _peer()
    handlers = PeerHandlers(peer)
    caplog.set_level(logging.INFO)
    sender = enroll_id(ecdsa.public_key(ecdsa.generate_private_key()))
    msg = bus.Message(sender=sender, kind="peer.enroll", body=None, msg_id=1, timestamp=0,
                      type=bus.MessageType.REQUEST)
    for _ in range(50):
        with pytest.raises(bus.HandlerError) as refused:
            await handlers._enroll(msg, _request(b"\xff" * TOKEN_SIZE))  # does not decode: no crypto
        assert refused.value.code == codes.ENROLL_DENIED
    lines = [r for r in caplog.records if sender in r.getMessage()]
    assert len(lines) == 1, len(lines)
    assert peer.refusals.counts()[("peer.enroll", codes.ENROLL_DENIED)] == 50
