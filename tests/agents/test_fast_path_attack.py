"""Attack review, fourth wave: peer.reencrypt's fast companion (PeerHandlers._reencrypt_now)
answers a repeat read from the reply cache in the task that delivered it. A hostile
doctor (or the grant's own doctor, after the grant ended) replays a read whose signed
reply is cached: the companion makes the handler's ledger check first, so a revoked or
expired grant, another doctor, another record, a full access log or a stopping peer get
the handler's refusal and nothing is served or logged; a peer behind the asked height
defers before looking at anything."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import bus
from agents.admission import Refusals
from agents.peer._handlers import PeerHandlers
from core.errors import ValidationError
from core.protocol import PeerReencrypt, codes

GRANT = "g-1"


class _Ledger:
    """check_reencryption with the ledger's verdicts for one grant of dr-who on alice's r1."""

    def __init__(self):
        self.revoked = False
        self.expires_at = 1_000
        self.calls = 0

    def check_reencryption(self, grant_id, doctor, patient, record_id, now):
        self.calls += 1
        if grant_id != GRANT:
            raise ValidationError("not_found", f"no grant {grant_id}")
        if doctor != "dr-who" or patient != "alice":
            raise ValidationError("forbidden", "grant is for another doctor or patient")
        if self.revoked:
            raise ValidationError("bad_state", "grant revoked")
        if now >= self.expires_at:
            raise ValidationError("bad_state", "grant expired")
        if record_id != "r1":
            raise ValidationError("forbidden", "the grant covers record r1 only")
        grant = SimpleNamespace(request_id="req-1", share_digest=lambda peer_id: b"d" * 32, delegation=None)
        return grant, SimpleNamespace(cid="cid-1", capsule=b"capsule-1")


def _peer():
    logged = []
    peer = SimpleNamespace(
        refusals=Refusals("peer-x"), peer_id="peer-x", height=10, clock=lambda: 500, stopping=False,
        ledger=_Ledger(),
        audit=SimpleNamespace(full=False, add=lambda **entry: logged.append(entry)),
    )
    handlers = PeerHandlers(peer)
    handlers._cache_share(GRANT, object())  # a first read happened: share and signed reply cached
    reply = object()
    handlers._cache(handlers._replies, (GRANT, "req-1", "cid-1", b"capsule-1"),
                    (handlers._share_tokens[GRANT], reply))
    return peer, handlers, logged, reply


def _msg(sender="dr-who"):
    return bus.Message(sender=sender, kind="peer.reencrypt", body=None, msg_id=1, timestamp=0,
                       type=bus.MessageType.REQUEST)


def _request(**changes):
    fields = {"grant_id": GRANT, "patient": "alice", "record_id": "r1", "request_id": "req-1", **changes}
    return PeerReencrypt(**fields)


def test_a_repeat_read_is_answered_from_the_cache_and_logged():
    peer, handlers, logged, reply = _peer()
    assert handlers._reencrypt_now(_msg(), _request()) is reply
    assert [e["doctor"] for e in logged] == ["dr-who"] and handlers.reply_hits == 1


@pytest.mark.parametrize("attack, code", [
    ("revoked", codes.access_code("bad_state")),
    ("expired", codes.access_code("bad_state")),
    ("another doctor", codes.access_code("forbidden")),
    ("another record", codes.access_code("forbidden")),
    ("another request id", codes.ACCESS_FORBIDDEN),
    ("access log full", codes.BUSY),
    ("stopping", codes.BUSY),
])
def test_a_cached_reply_is_not_served_past_the_handlers_checks(attack, code):
    peer, handlers, logged, _ = _peer()
    msg, request = _msg(), _request()
    if attack == "revoked":
        peer.ledger.revoked = True  # (committed, but the share not forgotten yet: the ledger decides)
    elif attack == "expired":
        peer.clock = lambda: 1_000
    elif attack == "another doctor":
        msg = _msg("dr-evil")
    elif attack == "another record":
        request = _request(record_id="r2")
    elif attack == "another request id":
        request = _request(request_id="req-2")
    elif attack == "access log full":
        peer.audit.full = True
    else:
        peer.stopping = True
    with pytest.raises(bus.HandlerError) as refused:
        handlers._reencrypt_now(msg, request)
    assert refused.value.code == code
    assert logged == [] and handlers.reply_hits == 0 and handlers.reencryptions == 0


def test_a_peer_behind_the_asked_height_defers_before_any_check():
    peer, handlers, logged, _ = _peer()
    assert handlers._reencrypt_now(_msg(), _request(min_height=11)) is bus.DEFER
    assert peer.ledger.calls == 0 and logged == []
    peer.height = 11
    assert handlers._reencrypt_now(_msg(), _request(min_height=11)) is not bus.DEFER


def test_a_revoked_grant_forgotten_by_the_peer_defers_and_the_handler_refuses():
    """Once the peer forgot the revoked grant's share (agents.peer._agent on the commit), the
    companion has no token: it defers (the handler then makes the ledger check)."""
    peer, handlers, logged, _ = _peer()
    handlers.forget_share(GRANT)
    assert handlers._reencrypt_now(_msg(), _request()) is bus.DEFER
    assert peer.ledger.calls == 0 and logged == []


@pytest.mark.parametrize("path", ["fast", "handler"])
async def test_a_doctor_asking_again_and_again_for_a_grant_not_its_own_is_logged_once(path, caplog):
    """Each refused re-encryption was logged (an INFO line, what a node writes by default):
    a registered doctor asking for another doctor's grant in a loop wrote a line per
    ~100-byte request. Refusals are counted, and logged once per sender (as admission's)."""
    import logging

    peer, handlers, logged, _ = _peer()
    caplog.set_level(logging.INFO)
    for _ in range(50):
        with pytest.raises(bus.HandlerError) as refused:
            if path == "fast":
                handlers._reencrypt_now(_msg("dr-evil"), _request())
            else:
                await handlers._reencrypt(_msg("dr-evil"), _request())
        assert refused.value.code == codes.ACCESS_FORBIDDEN
    lines = [r for r in caplog.records if "dr-evil" in r.getMessage()]
    assert 1 <= len(lines) <= 2, len(lines)
    assert peer.refusals.counts()[("peer.reencrypt", codes.ACCESS_FORBIDDEN)] == 50
    assert logged == []


@pytest.mark.parametrize("reply_cache, pairings, hits", [(4096, 1, 2), (0, 3, 0)])
async def test_reply_cache_size_zero_makes_every_read_pair(reply_cache, pairings, hits):
    """``[peer] reply_cache`` (``--reply-cache`` in the load test): with 0 no signed reply is kept,
    so three reads of one record under one grant run three re-encryptions (the handler and its
    fast companion both find nothing); with the default the first runs one and the next two are hits.
    Every read is logged either way."""
    logged = []
    peer = SimpleNamespace(
        refusals=Refusals("peer-x"), peer_id="peer-x", height=10, clock=lambda: 500, stopping=False,
        ledger=_Ledger(), audit=SimpleNamespace(full=False, add=lambda **entry: logged.append(entry)),
    )
    handlers = PeerHandlers(peer, reply_cache=reply_cache)
    handlers._cache_share(GRANT, object())  # the key share, opened
    runs = []

    class _Batcher:
        async def run(self, job, *args):
            runs.append(args)
            return object()  # a fresh signed reply per re-encryption

    handlers.batcher = _Batcher()
    replies = []
    for _ in range(3):
        now = handlers._reencrypt_now(_msg(), _request())
        replies.append(now if now is not bus.DEFER else await handlers._reencrypt(_msg(), _request()))
    assert len(runs) == pairings and handlers.reply_hits == hits and len(logged) == 3
    assert len(handlers._replies) == (1 if reply_cache else 0)
    assert len({id(r) for r in replies}) == pairings  # a hit is the same signed reply as the first
    with pytest.raises(ValueError):
        PeerHandlers(peer, reply_cache=-1)
