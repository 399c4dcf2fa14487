"""The fast companion of a handler (issue 14): bus.Endpoint.register(fast=...) and
agents.handlers.serve(fast=...). It answers in the task that delivered the request, after
the same admission as the handler, or defers (bus.DEFER) to the handler with the request's
slots. Hostile senders on a real bus pair (and over TCP on loopback): unknown, wrong class,
malformed body, a flood; each refused before the companion or the handler does any work."""

from __future__ import annotations

import gc
import warnings

import pytest
import trio

import bus
from agents.admission import NOT_NOW, Classifier, Refusals
from agents.consortium import ENROLL_PREFIX, ConsortiumDirectory
from agents.handlers import serve
from agents.testing.hostile import endpoints, refusal_code
from agents.runtime import make_endpoint
from core import ecdsa
from core.protocol import PeerAudit, PeerAuditReply, PeerBlocks, PeerBlocksReply, codes

ROLES = {"alice": "patient", "dr-h": "doctor"}
NAMES = ("server", "peer-x", "orderer", "store-1", "alice", "dr-h", "mallory", ENROLL_PREFIX + "cd" * 33)


def _code(ep: bus.Endpoint, kind: str, body):
    """The code of the server's error reply (None: answered): agents.testing.hostile.refusal_code."""
    return refusal_code(ep, "server", kind, body, timeout=20)
WAIT_FROM = 1000  # a peer.blocks request from this block on defers: "it must wait"


def _classifier(synchronous: bool) -> Classifier:
    if synchronous:
        return Classifier(peers=["peer-x"], orderer="orderer", storage=["store-1"], role=ROLES.get)

    async def role(sender: str) -> str | None:
        await trio.lowlevel.checkpoint()  # a look-up that really waits
        return ROLES.get(sender)

    return Classifier(peers=["peer-x"], orderer="orderer", storage=["store-1"], role=role)


class _Server:
    """peer.audit (patients) and peer.blocks (peers), each with a fast companion; records
    every call, and holds deferred peer.blocks requests until ``release`` is set."""

    def __init__(self) -> None:
        self.fast: list[tuple[str, str]] = []
        self.slow: list[tuple[str, str]] = []
        self.release = trio.Event()

    async def audit(self, msg: bus.Message, request: PeerAudit) -> PeerAuditReply:
        self.slow.append((msg.sender, PeerAudit.kind))
        return PeerAuditReply(())

    def audit_now(self, msg: bus.Message, request: PeerAudit) -> PeerAuditReply:
        self.fast.append((msg.sender, PeerAudit.kind))
        return PeerAuditReply(())

    async def blocks(self, msg: bus.Message, request: PeerBlocks) -> PeerBlocksReply:
        self.slow.append((msg.sender, PeerBlocks.kind))
        if request.start >= WAIT_FROM:
            await self.release.wait()
        return PeerBlocksReply(())

    def blocks_now(self, msg: bus.Message, request: PeerBlocks):
        if request.start >= WAIT_FROM:
            return bus.DEFER
        self.fast.append((msg.sender, PeerBlocks.kind))
        return PeerBlocksReply(())

    def serve(self, ep: bus.Endpoint, classifier: Classifier, refusals: Refusals) -> None:
        serve(ep, {PeerAudit: self.audit, PeerBlocks: self.blocks}, classifier=classifier, refusals=refusals,
              fast={PeerAudit: self.audit_now, PeerBlocks: self.blocks_now})


@pytest.mark.parametrize("tcp", [False, True], ids=["local", "tcp"])
@pytest.mark.parametrize("synchronous", [True, False], ids=["sync-role", "async-role"])
async def test_hostile_senders_are_refused_before_the_fast_companion_runs(synchronous, tcp):
    server, refusals = _Server(), Refusals("server")
    good_audit, good_blocks = {"patient": "alice"}, {"from": 1, "limit": 4}
    with trio.fail_after(60), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with endpoints(NAMES, tcp=tcp) as eps:
            server.serve(eps["server"], _classifier(synchronous), refusals)
            assert await _code(eps["alice"], PeerAudit.kind, good_audit) is None
            assert await _code(eps["peer-x"], PeerBlocks.kind, good_blocks) is None
            if synchronous:  # answered by the companions, the handlers never ran
                assert server.fast == [("alice", PeerAudit.kind), ("peer-x", PeerBlocks.kind)] and not server.slow
                assert eps["server"].fast_runs == 2 and eps["server"].fast_deferred == 0
            else:  # a user's class needs a waiting look-up: deferred (before anything else) to the handler
                assert server.fast == [("peer-x", PeerBlocks.kind)] and server.slow == [("alice", PeerAudit.kind)]
                assert eps["server"].fast_deferred == 1
            done = (list(server.fast), list(server.slow))
            # unknown sender, enrolling id, wrong class: forbidden, nothing ran
            for sender in ("mallory", NAMES[-1], "dr-h", "orderer", "store-1", "peer-x"):
                assert await _code(eps[sender], PeerAudit.kind, good_audit) == codes.FORBIDDEN, sender
            for sender in ("alice", "dr-h", "mallory", "orderer", NAMES[-1]):
                assert await _code(eps[sender], PeerBlocks.kind, good_blocks) == codes.FORBIDDEN, sender
            # malformed bodies: forbidden from a refused class (never parsed), bad-request from an admitted one
            assert await _code(eps["mallory"], PeerAudit.kind, ["not", "a", "map"]) == codes.FORBIDDEN
            assert await _code(eps["alice"], PeerAudit.kind, ["not", "a", "map"]) == codes.BAD_REQUEST
            assert await _code(eps["peer-x"], PeerBlocks.kind, {"from": -1, "limit": 4}) == codes.BAD_REQUEST
            assert (server.fast, server.slow) == done
            assert refusals.total(codes.FORBIDDEN) == 12
        gc.collect()
    # a deferred look-up's coroutine is closed, never left un-awaited
    assert not [w for w in caught if "never awaited" in str(w.message)]


@pytest.mark.parametrize("tcp", [False, True], ids=["local", "tcp"])
async def test_a_deferred_request_keeps_its_slots_and_a_flood_beyond_them_is_busy(tcp):
    """Deferred requests hold their sender's slots while their handler waits: a flood from
    one sender beyond max_concurrent_per_sender is refused busy, and while the slots are
    taken not even a request the companion could answer at once runs it."""
    server, refusals = _Server(), Refusals("server")
    with trio.fail_after(60):
        async with endpoints(NAMES, tcp=tcp) as eps:
            server.serve(eps["server"], _classifier(True), refusals)
            per_sender = eps["server"]._max_per_sender
            results: list[str | None] = []

            async def one(start: int) -> None:
                results.append(await _code(eps["peer-x"], PeerBlocks.kind, {"from": start, "limit": 1}))

            async with trio.open_nursery() as nursery:
                for _ in range(per_sender + 8):
                    nursery.start_soon(one, WAIT_FROM)
                # wait (no clock) until the slots are full and the rest were refused
                while len(server.slow) < per_sender or results.count("busy") < 8:
                    await trio.sleep(0.01)
                assert eps["server"]._in_flight == {"peer-x": per_sender}
                assert await _code(eps["peer-x"], PeerBlocks.kind, {"from": 1, "limit": 1}) == "busy"
                assert server.fast == []  # no slot: the companion did not run
                assert len(server.slow) == per_sender  # nor did a handler beyond the slots
                # other senders have their own slots: answered (or refused) at once
                assert await _code(eps["store-1"], PeerBlocks.kind, {"from": 1, "limit": 1}) is None
                assert await _code(eps["alice"], PeerBlocks.kind, {"from": 1, "limit": 1}) == codes.FORBIDDEN
                assert server.fast == [("store-1", PeerBlocks.kind)]
                server.release.set()
            assert results.count(None) == per_sender and results.count("busy") == 8
            # the slots came back: the companion answers again
            assert await _code(eps["peer-x"], PeerBlocks.kind, {"from": 1, "limit": 1}) is None
            assert server.fast == [("store-1", PeerBlocks.kind), ("peer-x", PeerBlocks.kind)]
            assert eps["server"]._in_flight == {}


async def test_a_fast_companion_that_raises_is_an_error_reply_and_frees_its_slots():
    keys = {name: ecdsa.generate_private_key() for name in ("server", "client")}
    directory = ConsortiumDirectory({name: ecdsa.public_key(k) for name, k in keys.items()})
    calls = []

    async def handler(msg: bus.Message):
        calls.append("handler")
        return "slow"

    def fast(msg: bus.Message):
        calls.append("fast")
        if msg.body == "boom":
            raise bus.HandlerError("custom", "refused at once")
        if msg.body == "bug":
            raise RuntimeError("a bug")
        return bus.DEFER if msg.body == "later" else "now"

    with trio.fail_after(30):
        async with bus.open_node() as node:
            server = make_endpoint(node, "server", keys["server"], directory)
            client = make_endpoint(node, "client", keys["client"], directory)
            with pytest.raises(bus.BusError):
                server.register("k", handler, quick=True, fast=fast)  # one or the other
            server.register("k", handler, fast=fast)
            assert await client.request("server", "k", "x") == "now"
            assert await client.request("server", "k", "later") == "slow"
            for body, code in (("boom", "custom"), ("bug", "internal")):
                with pytest.raises(bus.RemoteError) as info:
                    await client.request("server", "k", body)
                assert info.value.code == code
            assert calls == ["fast", "fast", "handler", "fast", "fast"]
            assert server._in_flight == {}  # every slot given back
            server.unregister("k")
            with pytest.raises(bus.RemoteError) as info:
                await client.request("server", "k", "x")
            assert info.value.code == "unknown-kind"
            await client.aclose()
            await server.aclose()


async def test_class_now_never_starts_a_look_up():
    """Classifier.class_now: the class where no look-up waits (as classify_now), else NOT_NOW
    with nothing started: a coroutine look-up is not called, an awaitable one is closed."""
    sync = _classifier(True)
    for sender in NAMES:
        assert sync.class_now(sender) is sync.classify_now(sender)
    asked: list[str] = []

    async def role(sender: str) -> str | None:
        asked.append(sender)
        return ROLES.get(sender)

    lazy = Classifier(peers=["peer-x"], orderer="orderer", storage=["store-1"], role=role)
    assert lazy.class_now("peer-x") is sync.class_now("peer-x") and lazy.class_now(NAMES[-1]) is not NOT_NOW
    assert lazy.class_now("alice") is NOT_NOW and lazy.class_now("mallory") is NOT_NOW and asked == []
    made: list = []

    def role_returning_awaitable(sender: str):  # a plain function handing back a coroutine
        made.append(role(sender))
        return made[-1]

    odd = Classifier(peers=["peer-x"], orderer="orderer", storage=["store-1"], role=role_returning_awaitable)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert odd.class_now("alice") is NOT_NOW
        assert made[0].cr_frame is None  # closed before it ran
        made.clear()
        gc.collect()
    assert asked == [] and not [w for w in caught if "never awaited" in str(w.message)]
