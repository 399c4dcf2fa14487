"""agents.driver: the trio loop that runs a plan, on trio's autojump clock.

Fake peers answer after virtual delays (or time out at the request's
timeout); the tests assert the virtual times at which requests go out, the
plan decides, and the run ends.
"""

from __future__ import annotations

import pytest
import trio

import bus
from agents.driver import PlanRun, result_of, run_plan
from agents.plans import (
    Answer,
    Ask,
    Confirm,
    Done,
    GaveUp,
    Lost,
    Refused,
    ShareCollection,
    ShareDelivery,
    SubmitFailover,
)

NEVER = float("inf")


class FakePeers:
    """``perform`` for a plan: peer -> (delay, result); a delay at or beyond the request's
    timeout is a timeout. Records when each request went out (tasks start in no set
    order: compare sorted), and which were cancelled."""

    def __init__(self, script: dict, t0: float):
        self.script = script
        self.t0 = t0
        self.asked: list[tuple[float, str]] = []
        self.cancelled: list[str] = []
        self.confirms: list[str | None] = []

    def at(self) -> float:
        return round(trio.current_time() - self.t0, 6)

    async def __call__(self, action):
        if isinstance(action, Confirm):
            self.confirms.append(action.peer)
            return Answer(True)
        self.asked.append((self.at(), action.peer))
        delay, result = self.script[action.peer]
        try:
            if delay >= action.timeout:
                await trio.sleep(action.timeout)
                return Lost("RequestTimeout", f"{action.peer} did not answer", maybe_delivered=True)
            await trio.sleep(delay)
        except trio.Cancelled:
            self.cancelled.append(action.peer)
            raise
        return result


def _collection(healthy, suspects=(), need=2):
    return ShareCollection(list(healthy), list(suspects), need, timeout=10.0, suspect_timeout=2.0)


async def test_collection_hedges_at_0_3_s_and_cancels_the_slow_peer(autojump_clock):
    t0 = trio.current_time()
    peers = FakePeers({"a": (0.1, Answer("A")), "b": (NEVER, None), "c": (0.05, Answer("C")),
                       "d": (1.0, Answer("D"))}, t0)
    outcome = await run_plan(_collection("abcd"), peers)
    assert outcome == Done(["A", "C"])
    assert sorted(peers.asked) == [(0.0, "a"), (0.0, "b"), (0.3, "c"), (0.3, "d")]
    assert trio.current_time() - t0 == pytest.approx(0.35)
    assert sorted(peers.cancelled) == ["b", "d"]


async def test_collection_hedges_at_once_on_a_failure(autojump_clock):
    t0 = trio.current_time()
    peers = FakePeers({"a": (0.1, Lost("UnreachableError")), "b": (0.2, Answer("B")),
                       "c": (0.05, Answer("C")), "d": (0.05, Answer("D"))}, t0)
    outcome = await run_plan(_collection("abcd"), peers)
    assert outcome == Done(["C", "B"], {"a": "unavailable (UnreachableError)"})
    assert sorted(peers.asked) == [(0.0, "a"), (0.0, "b"), (0.1, "c")]
    assert trio.current_time() - t0 == pytest.approx(0.2)


async def test_collection_refusal_does_not_wait_for_a_stalled_peer(autojump_clock):
    """One peer says revoked, the other is stalled: the read is refused 0.5 s later,
    not after the 10 s request timeout, and the spares are never asked."""
    t0 = trio.current_time()
    peers = FakePeers({"a": (0.1, Refused("access.bad-state")), "b": (NEVER, None),
                       "c": (0.0, Answer("C")), "d": (0.0, Answer("D"))}, t0)
    outcome = await run_plan(_collection("abcd"), peers)
    assert outcome == GaveUp("revoked", {"a": "access.bad-state"}, answered=0)
    assert trio.current_time() - t0 == pytest.approx(0.6)
    assert sorted(peers.asked) == [(0.0, "a"), (0.0, "b")] and peers.cancelled == ["b"]


async def test_collection_suspect_gets_the_short_timeout(autojump_clock):
    t0 = trio.current_time()
    peers = FakePeers({"a": (0.0, Answer("A")), "b": (0.5, Lost("BrokenError")),
                       "c": (NEVER, None), "d": (0.1, Answer("D"))}, t0)
    outcome = await run_plan(_collection("ab", suspects="cd"), peers)
    # b fails at 0.5: suspect c is asked with a 2 s leash; it times out at 2.5, then d answers
    assert sorted(peers.asked) == [(0.0, "a"), (0.0, "b"), (0.5, "c"), (2.5, "d")]
    assert outcome.value == ["A", "D"]
    assert trio.current_time() - t0 == pytest.approx(2.6)


async def test_delivery_answers_after_the_grace_and_finishes_in_the_background(autojump_clock):
    t0 = trio.current_time()
    peers = FakePeers({"a": (0.1, Answer(None)), "b": (0.2, Answer(None)), "c": (4.0, Answer(None)),
                       "d": (0.3, Refused("deliver.bad_share"))}, t0)
    plan = ShareDelivery(list("abcd"), 2, timeout=30.0)
    run = PlanRun(plan, peers)
    ended: list[float] = []

    async def background() -> None:
        await run.run()
        ended.append(trio.current_time() - t0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(background)
        await trio.sleep(1.0)  # the grant commits at 1.0 (t acks came at 0.2)
        run.tell(plan.on_committed)
        outcome = await run.wait_decided()
        assert trio.current_time() - t0 == pytest.approx(1.5)
        assert outcome == Done(["a", "b"], {"d": "deliver.bad_share"})
    assert ended == [pytest.approx(4.0)] and plan.acks == {"a", "b", "c"}


async def test_delivery_fails_as_soon_as_t_acks_are_out_of_reach(autojump_clock):
    t0 = trio.current_time()
    peers = FakePeers({"a": (0.1, Lost("UnreachableError")), "b": (NEVER, None),
                       "c": (0.2, Refused("deliver.unknown_grant"))}, t0)
    plan = ShareDelivery(list("abc"), 2, timeout=30.0)
    run = PlanRun(plan, peers)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.run)
        await trio.sleep(0.05)
        run.tell(plan.on_committed)
        outcome = await run.wait_decided()
    assert isinstance(outcome, GaveUp) and outcome.answered == 0
    assert trio.current_time() - t0 == pytest.approx(0.2)
    assert peers.cancelled == ["b"]  # the stalled delivery is abandoned with the run


async def test_delivery_cancelled_before_it_starts(autojump_clock):
    peers = FakePeers({"a": (1.0, Answer(None))}, trio.current_time())
    run = PlanRun(ShareDelivery(["a"], 1, timeout=30.0), peers)
    run.cancel()  # e.g. the grant could not be committed
    assert await run.run() is None
    assert await run.wait_decided() is None


async def test_submit_resends_after_the_timeout_and_confirms_the_replay(autojump_clock):
    t0 = trio.current_time()
    replay = {"tx_id": "t", "height": 3, "mark": "replayed_nonce"}
    peers = FakePeers({"a": (NEVER, None), "b": (0.25, Answer(replay))}, t0)
    outcome = await run_plan(SubmitFailover(["a", "b"], timeout=10.0), peers)
    assert peers.asked == [(0.0, "a"), (10.0, "b")] and peers.confirms == ["b"]
    assert outcome.value == {**replay, "mark": "ok", "resubmitted": True}
    assert trio.current_time() - t0 == pytest.approx(10.25)


async def test_an_error_in_perform_comes_out_unwrapped_and_cancels_the_rest(autojump_clock):
    cancelled: list[str] = []

    async def perform(action):
        if action.peer == "a":
            await trio.sleep(0.1)
            raise KeyError("bug")
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(action.peer)
            raise

    with pytest.raises(KeyError):
        await run_plan(_collection("ab"), perform)
    assert cancelled == ["b"]


async def test_result_of_maps_the_bus_failures():
    async def raises(exc):
        raise exc

    async def answers():
        return {"ok": 1}

    assert await result_of(answers()) == Answer({"ok": 1})
    refused = await result_of(raises(bus.RemoteError("forbidden", "no", peer="p")))
    assert (refused.code, refused.message, type(refused.cause)) == ("forbidden", "no", bus.RemoteError)
    assert await result_of(raises(bus.RequestTimeout("slow"))) == Lost("RequestTimeout", "slow", True)
    assert await result_of(raises(bus.UnreachableError("down"))) == Lost("UnreachableError", "down", False)
    with pytest.raises(ValueError):
        await result_of(raises(ValueError("not a bus error")))


def test_ask_is_plain_data():
    assert Ask("a", 1.0) == Ask("a", 1.0) and hash(Ask("a", 1.0)) == hash(Ask("a", 1.0))
