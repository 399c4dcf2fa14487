"""Admission without an await (issue 14): Classifier.classify_now, and serve's wrapper
that refuses before any work whether the class came at once or from a waiting look-up.

Hostile senders on a real bus pair: unknown, wrong class, malformed body, a flood."""

from __future__ import annotations

import inspect
import logging

import pytest
import trio

import bus
from agents.admission import Classifier, Refusals
from agents.consortium import ENROLL_PREFIX
from agents.handlers import serve
from agents.testing.hostile import endpoints, refusal_code
from core.protocol import PeerAudit, PeerAuditReply, PeerBlocks, PeerBlocksReply, Sender, codes

ROLES = {"alice": "patient", "dr-h": "doctor", "nurse": "nurse"}
NAMES = ("server", "peer-x", "orderer", "store-1", "alice", "dr-h", "nurse", "mallory", ENROLL_PREFIX + "ab" * 33)


def _code(ep: bus.Endpoint, kind: str, body):
    """The code of the server's error reply (None: answered): agents.testing.hostile.refusal_code."""
    return refusal_code(ep, "server", kind, body, timeout=20)


def _sync_classifier() -> Classifier:
    return Classifier(peers=["peer-x"], orderer="orderer", storage=["store-1"], role=ROLES.get)


def _async_classifier(calls: list[str]) -> Classifier:
    async def role(sender: str) -> str | None:
        calls.append(sender)
        await trio.lowlevel.checkpoint()  # a look-up that really waits
        return ROLES.get(sender)

    return Classifier(peers=["peer-x"], orderer="orderer", storage=["store-1"], role=role)


EXPECTED = {"peer-x": Sender.PEER, "orderer": Sender.ORDERER, "store-1": Sender.STORAGE, "alice": Sender.PATIENT,
            "dr-h": Sender.DOCTOR, "nurse": Sender.USER, "mallory": None, NAMES[-1]: Sender.ENROLLING}


async def test_classify_now_answers_at_once_what_needs_no_wait():
    classifier = _sync_classifier()
    for sender, cls in EXPECTED.items():
        now = classifier.classify_now(sender)
        assert now is cls  # no awaitable for a synchronous look-up
        assert await classifier.classify(sender) is cls


async def test_classify_now_leaves_an_awaitable_only_for_a_waiting_look_up():
    calls: list[str] = []
    classifier = _async_classifier(calls)
    for sender, cls in EXPECTED.items():
        now = classifier.classify_now(sender)
        if sender in ("peer-x", "orderer", "store-1", NAMES[-1]):
            assert now is cls  # nodes and enrolling ids: never a look-up
        else:
            assert inspect.isawaitable(now)
            assert await now is cls
        assert await classifier.classify(sender) is cls
    assert set(calls) == {"alice", "dr-h", "nurse", "mallory"}  # the users only


@pytest.mark.parametrize("synchronous", [True, False], ids=["sync-role", "async-role"])
async def test_hostile_senders_are_refused_before_any_work(synchronous, caplog):
    calls: list[str] = []
    classifier = _sync_classifier() if synchronous else _async_classifier(calls)
    refusals = Refusals("server")
    work: list[tuple[str, str]] = []

    async def audit(msg: bus.Message, request: PeerAudit) -> PeerAuditReply:  # admits patients only
        work.append((msg.sender, PeerAudit.kind))
        return PeerAuditReply(())

    async def blocks(msg: bus.Message, request: PeerBlocks) -> PeerBlocksReply:  # admits peers only
        work.append((msg.sender, PeerBlocks.kind))
        return PeerBlocksReply(())

    caplog.set_level(logging.WARNING, logger="agents.admission")
    with trio.fail_after(30):
        async with endpoints(NAMES) as eps:
            serve(eps["server"], {PeerAudit: audit, PeerBlocks: blocks}, classifier=classifier, refusals=refusals)
            good_audit, good_blocks = {"patient": "alice"}, {"from": 1, "limit": 4}
            # admitted classes reach their handlers
            assert await _code(eps["alice"], PeerAudit.kind, good_audit) is None
            assert await _code(eps["peer-x"], PeerBlocks.kind, good_blocks) is None
            assert work == [("alice", PeerAudit.kind), ("peer-x", PeerBlocks.kind)]
            # unknown sender, enrolling id, wrong class: forbidden, no handler ran
            for sender in ("mallory", NAMES[-1], "dr-h", "nurse", "orderer", "store-1", "peer-x"):
                assert await _code(eps[sender], PeerAudit.kind, good_audit) == codes.FORBIDDEN, sender
            for sender in ("alice", "dr-h", "mallory", "orderer"):
                assert await _code(eps[sender], PeerBlocks.kind, good_blocks) == codes.FORBIDDEN, sender
            # a malformed body from a refused sender is refused as forbidden (class first, never parsed);
            # from an admitted one it is a bad request, still before the handler
            assert await _code(eps["mallory"], PeerAudit.kind, ["not", "a", "map"]) == codes.FORBIDDEN
            assert await _code(eps["alice"], PeerAudit.kind, ["not", "a", "map"]) == codes.BAD_REQUEST
            assert await _code(eps["alice"], PeerAudit.kind, {"patient": "a/b"}) == codes.BAD_REQUEST
            assert len(work) == 2
            # a flood from an unknown sender: every request refused, counted, logged once
            before = refusals.total(codes.FORBIDDEN)
            async with trio.open_nursery() as nursery:
                results: list[str | None] = []

                async def one() -> None:
                    results.append(await _code(eps["mallory"], PeerBlocks.kind, good_blocks))

                for _ in range(100):
                    nursery.start_soon(one)
            assert set(results) <= {codes.FORBIDDEN, "busy"} and results.count(codes.FORBIDDEN) >= 1
            assert refusals.total(codes.FORBIDDEN) - before == results.count(codes.FORBIDDEN)
            assert len(work) == 2
    logged = [r for r in caplog.records if "mallory" in r.getMessage() and PeerBlocks.kind in r.getMessage()]
    assert len(logged) == 1  # the flood logged once per (sender, kind)
    if not synchronous:
        assert "mallory" in calls  # the waiting look-up was asked (and its answer awaited)
