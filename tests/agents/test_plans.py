"""agents.plans: the timing policies as sans-I/O plans, driven with plain numbers for time.

Each rule of the doctor's share collection, the patient's share delivery and
the submit failover is checked by feeding a plan replies and times by hand and
looking at the actions it returns and the outcome it reaches.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.plans import (
    DELIVERY_GRACE_S,
    GIVE_UP_GRACE_S,
    HEDGE_S,
    Answer,
    Ask,
    Confirm,
    Done,
    GaveUp,
    Invalid,
    Lost,
    Refused,
    ShareCollection,
    ShareDelivery,
    SubmitFailover,
)

TIMEOUT = 10.0
SHORT = 2.0
TIMED_OUT = Lost("RequestTimeout", "no answer in time", maybe_delivered=True)
UNREACHABLE = Lost("UnreachableError", "connection refused", maybe_delivered=False)
REVOKED = Refused("access.bad-state", "grant revoked")


def _collection(healthy, suspects=(), need=2, rotation=0):
    return ShareCollection(list(healthy), list(suspects), need, timeout=TIMEOUT, suspect_timeout=SHORT,
                           rotation=rotation)


def _peers(actions):
    return [a.peer for a in actions]


# ------------------------------------------------------------------ share collection


def test_collection_asks_t_healthy_peers_first_rotating():
    plan = _collection("abcd", rotation=1)
    assert plan.start(0.0) == [Ask("b", TIMEOUT), Ask("c", TIMEOUT)]
    assert plan.rotated
    assert _peers(_collection("abcd", rotation=6).start(0.0)) == ["c", "d"]
    assert _peers(_collection("abcd", rotation=3).start(0.0)) == ["d", "a"]


def test_collection_asks_the_preferred_healthy_peers_first_keeping_the_rotation():
    def first(rotation, prefer, healthy="abcd", suspects=()):
        plan = ShareCollection(list(healthy), list(suspects), 2, timeout=TIMEOUT, suspect_timeout=SHORT,
                               rotation=rotation, prefer=prefer)
        return _peers(plan.start(0.0))

    assert first(0, "cd") == ["c", "d"]
    assert first(1, "bcd") == ["b", "c"] and first(2, "bcd") == ["c", "d"] and first(3, "bcd") == ["d", "b"]
    assert first(0, "d") == ["d", "a"]  # one preferred: the rotation fills up
    assert first(0, "ex", suspects="e") == ["a", "b"]  # a preferred suspect stays a suspect
    plan = ShareCollection(list("abcd"), [], 2, timeout=TIMEOUT, suspect_timeout=SHORT, prefer="bd")
    plan.start(0.0)
    assert plan.on_reply("b", Refused("share.missing"), 0.1) == [Ask("a", TIMEOUT)]  # the spares hedge


def test_delivery_without_grace_answers_at_t_acks_and_lets_the_rest_go_on():
    plan = ShareDelivery(list("abc"), 2, timeout=30.0, grace=0.0)
    plan.start(0.0)
    plan.on_reply("a", Answer(None), 0.1)
    plan.on_reply("b", Answer(None), 0.2)
    assert plan.outcome is None  # never before the grant committed
    plan.on_committed(0.3)
    assert plan.outcome == Done(["a", "b"], {}) and not plan.finished
    plan.on_reply("c", Answer(None), 0.4)
    assert plan.finished and plan.outcome == Done(["a", "b"], {})


def test_collection_hedges_with_the_spare_healthy_peers_after_0_3_s():
    plan = _collection("abcd", suspects="e")
    assert _peers(plan.start(5.0)) == ["a", "b"]
    assert plan.next_deadline() == pytest.approx(5.0 + HEDGE_S) and HEDGE_S == 0.3
    # the spare healthy peers, not the suspect
    assert plan.on_timeout(5.3) == [Ask("c", TIMEOUT), Ask("d", TIMEOUT)]
    assert plan.next_deadline() is None and plan.on_timeout(9.0) == []
    plan.on_reply("d", Answer("share-d"), 5.4)
    assert plan.outcome is None
    plan.on_reply("a", Answer("share-a"), 5.5)
    assert plan.outcome == Done(["share-d", "share-a"]) and plan.finished


def test_collection_hedges_with_one_spare_per_failure():
    plan = _collection("abcd")
    plan.start(0.0)
    assert plan.on_reply("a", TIMED_OUT, 0.1) == [Ask("c", TIMEOUT)]
    assert plan.on_reply("c", Refused("forbidden"), 0.2) == [Ask("d", TIMEOUT)]
    assert plan.on_timeout(0.3) == []  # the hedge finds no spare left
    assert plan.on_reply("b", Answer(1), 0.4) == [] and plan.outcome is None
    plan.on_reply("d", Answer(2), 0.5)
    assert plan.outcome == Done([1, 2], {"a": "unavailable (RequestTimeout)", "c": "forbidden"})


def test_collection_is_done_at_t_good_shares_and_ignores_late_replies():
    plan = _collection("abc", need=2)
    plan.start(0.0)
    plan.on_reply("b", Answer("B"), 0.1)
    plan.on_reply("a", Answer("A"), 0.2)
    assert plan.outcome == Done(["B", "A"]) and plan.next_deadline() is None
    assert plan.on_reply("c", Answer("C"), 0.3) == [] and plan.on_timeout(1.0) == []
    assert plan.outcome == Done(["B", "A"])


def test_collection_asks_suspects_only_when_the_healthy_cannot_make_t_with_a_short_leash():
    plan = _collection("ab", suspects="cd")
    assert plan.start(0.0) == [Ask("a", TIMEOUT), Ask("b", TIMEOUT)]
    assert plan.on_timeout(0.3) == []  # a hedge never reaches for a suspect
    assert plan.on_reply("a", UNREACHABLE, 0.4) == [Ask("c", SHORT)]
    assert plan.on_reply("c", TIMED_OUT, 2.4) == [Ask("d", SHORT)]


def test_collection_asks_everyone_at_once_when_fewer_than_t_are_healthy():
    plan = _collection("a", suspects="bc")
    assert plan.start(0.0) == [Ask("a", TIMEOUT), Ask("b", SHORT), Ask("c", SHORT)]
    assert not plan.rotated and plan.next_deadline() is None
    # every peer failed lately: they may all just be busy, no short leash
    plan = _collection("", suspects="abc")
    assert plan.start(0.0) == [Ask("a", TIMEOUT), Ask("b", TIMEOUT), Ask("c", TIMEOUT)]


def test_collection_stops_asking_once_a_peer_says_the_grant_is_revoked():
    plan = _collection("abcd", suspects="e")
    plan.start(0.0)
    assert plan.on_reply("a", REVOKED, 0.1) == []  # no spare, no suspect asked
    assert plan.on_timeout(0.3) == []  # nor by the hedge
    assert plan.next_deadline() == pytest.approx(0.1 + GIVE_UP_GRACE_S)
    plan.on_reply("b", REVOKED, 0.2)  # the last one out: no need to wait
    assert plan.outcome == GaveUp("revoked", {"a": "access.bad-state", "b": "access.bad-state"}, answered=0)


def test_collection_gives_up_0_5_s_after_t_good_shares_are_out_of_reach():
    plan = _collection("ab", need=2)
    plan.start(0.0)
    assert plan.on_reply("a", Invalid("share signature does not verify"), 0.2) == []
    assert plan.next_deadline() == pytest.approx(0.7) and GIVE_UP_GRACE_S == 0.5
    assert plan.on_timeout(0.69) == [] and plan.outcome is None  # early wake-ups change nothing
    plan.on_timeout(0.7)
    assert plan.outcome == GaveUp("not-enough", {"a": "integrity (share signature does not verify)"}, answered=0)
    assert plan.finished and plan.next_deadline() is None
    assert plan.on_reply("b", Answer("B"), 0.8) == [] and isinstance(plan.outcome, GaveUp)


def test_collection_counts_good_shares_when_giving_up():
    plan = _collection("abc", need=3)
    plan.start(0.0)
    plan.on_reply("a", Answer("A"), 0.1)
    plan.on_reply("b", UNREACHABLE, 0.2)  # 1 good + 1 out < 3: give up 0.5 s later
    plan.on_timeout(0.7)
    assert plan.outcome == GaveUp("not-enough", {"b": "unavailable (UnreachableError)"}, answered=1)


def test_collection_with_no_peers_gives_up_at_once():
    plan = _collection("", need=2)
    assert plan.start(0.0) == []
    assert plan.outcome == GaveUp("not-enough", {}, answered=0)


@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["good", "lost", "revoked", "invalid", "tick"])),
                max_size=40),
       st.integers(0, 5), st.integers(1, 4), st.integers(0, 100))
def test_collection_invariants(events, n_healthy, need, rotation):
    """Whatever the replies: no peer is asked twice, a good outcome has exactly t shares
    from distinct peers, and nothing is asked after a revoked verdict or the outcome."""
    peers = [f"p{i}" for i in range(6)]
    plan = ShareCollection(peers[:n_healthy], peers[n_healthy:], need, timeout=TIMEOUT, suspect_timeout=SHORT,
                           rotation=rotation)
    now = 0.0
    asked = _peers(plan.start(now))
    revoked = False
    for index, kind in events:
        now += 0.1
        if plan.finished:
            break
        if kind == "tick":
            new = plan.on_timeout(now)
        else:
            out = sorted(plan.in_flight)
            if not out:
                new = plan.on_timeout(now + 1.0)
            else:
                peer = out[index % len(out)]
                result = {"good": Answer(peer), "lost": TIMED_OUT, "revoked": REVOKED,
                          "invalid": Invalid("bad")}[kind]
                revoked = revoked or kind == "revoked"
                new = plan.on_reply(peer, result, now)
        if revoked:
            assert new == []
        asked += _peers(new)
        assert len(asked) == len(set(asked))
    if isinstance(plan.outcome, Done):
        assert len(plan.outcome.value) == need == len(set(plan.outcome.value))
    if isinstance(plan.outcome, GaveUp):
        assert plan.outcome.answered < need
        assert (plan.outcome.reason == "revoked") == ("access.bad-state" in plan.outcome.errors.values())


# ------------------------------------------------------------------ share delivery


def _delivery(targets="abcd", need=2, skipped=()):
    return ShareDelivery(list(targets), need, timeout=30.0, skipped=list(skipped))


def test_delivery_answers_0_5_s_after_t_acks_and_the_rest_go_on():
    plan = _delivery(skipped="e")
    assert plan.start(0.0) == [Ask(p, 30.0) for p in "abcd"]
    plan.on_reply("a", Answer(None), 0.1)
    plan.on_committed(0.15)
    assert plan.outcome is None and plan.next_deadline() is None
    plan.on_reply("b", Answer(None), 0.2)  # t acks, grant committed: the grace starts
    assert plan.next_deadline() == pytest.approx(0.2 + DELIVERY_GRACE_S) and DELIVERY_GRACE_S == 0.5
    plan.on_reply("c", Refused("deliver.bad_share"), 0.3)
    plan.on_timeout(0.7)
    errors = {"c": "deliver.bad_share", "e": "skipped (did not answer lately)"}
    assert plan.outcome == Done(["a", "b"], errors)
    assert not plan.finished  # d's delivery goes on in the background
    plan.on_reply("d", Answer(None), 3.0)
    assert plan.finished and plan.acks == {"a", "b", "d"}
    assert plan.outcome == Done(["a", "b"], errors)  # the answer does not change


def test_delivery_grace_starts_at_the_commit_when_the_acks_came_first():
    plan = _delivery()
    plan.start(0.0)
    plan.on_reply("a", Answer(None), 0.1)
    plan.on_reply("b", Answer(None), 0.2)
    assert plan.outcome is None  # never before the grant committed
    plan.on_committed(2.0)
    assert plan.next_deadline() == pytest.approx(2.5)
    plan.on_reply("c", Answer(None), 2.1)
    plan.on_reply("d", Answer(None), 2.2)  # every delivery over: answer at once
    assert plan.outcome == Done(["a", "b", "c", "d"], {}) and plan.finished


def test_delivery_gives_up_when_t_acks_are_out_of_reach():
    plan = _delivery("abc", need=2)
    plan.start(0.0)
    plan.on_reply("a", TIMED_OUT, 0.1)
    plan.on_reply("b", Refused("deliver.unknown_grant"), 0.2)  # 0 acks + 1 pending < 2
    assert plan.outcome is None  # not before the grant committed
    plan.on_committed(1.0)
    assert plan.outcome == GaveUp("not-enough", {"a": "unavailable (RequestTimeout)", "b": "deliver.unknown_grant"},
                                  answered=0)
    assert plan.finished  # c's delivery is abandoned


def test_delivery_with_no_targets_fails_at_the_commit():
    plan = _delivery("", need=1)
    assert plan.start(0.0) == []
    plan.on_committed(0.5)
    assert plan.outcome == GaveUp("not-enough", {}, answered=0)


# ------------------------------------------------------------------ submit failover

OK = {"tx_id": "t1", "height": 7, "mark": "ok"}


def test_submit_first_peer_answers():
    plan = SubmitFailover(["a", "b"], timeout=TIMEOUT)
    assert plan.start(0.0) == [Ask("a", TIMEOUT)]
    assert plan.on_reply("a", Answer(OK), 0.2) == []
    assert plan.outcome == Done(OK) and plan.finished and plan.next_deadline() is None


def test_submit_resends_after_a_timeout_within_twice_the_request_timeout():
    plan = SubmitFailover(["a", "b", "c"], timeout=TIMEOUT)
    plan.start(100.0)
    assert plan.on_reply("a", TIMED_OUT, 105.0) == [Ask("b", TIMEOUT)]
    assert plan.on_reply("b", UNREACHABLE, 115.0) == [Ask("c", 5.0)]  # what is left of 2 x 10 s
    assert plan.on_reply("c", TIMED_OUT, 120.0) == []
    assert plan.outcome == GaveUp("unavailable", {"a": "RequestTimeout: no answer in time",
                                                  "b": "UnreachableError: connection refused",
                                                  "c": "RequestTimeout: no answer in time"})


def test_submit_stops_when_the_peers_run_out():
    plan = SubmitFailover(["a"], timeout=TIMEOUT)
    plan.start(0.0)
    plan.on_reply("a", UNREACHABLE, 0.1)
    assert isinstance(plan.outcome, GaveUp) and plan.outcome.reason == "unavailable"
    plan = SubmitFailover([], timeout=TIMEOUT)
    assert plan.start(0.0) == [] and plan.outcome == GaveUp("unavailable")


@pytest.mark.parametrize("mark", ["replayed_nonce", "duplicate_in_block"])
def test_submit_confirms_a_replayed_copy_on_the_ledger(mark):
    plan = SubmitFailover(["a", "b"], timeout=TIMEOUT)
    plan.start(0.0)
    plan.on_reply("a", TIMED_OUT, 10.0)
    replay = {**OK, "mark": mark}
    assert plan.on_reply("b", Answer(replay), 10.2) == [Confirm("b")]
    assert plan.outcome is None and plan.copy_mark == mark
    plan.on_reply("b", Answer(True), 10.3)
    assert plan.outcome.value == {**OK, "resubmitted": True}

    plan = SubmitFailover(["a", "b"], timeout=TIMEOUT)
    plan.start(0.0)
    plan.on_reply("a", Refused("submit.timeout", "not committed in time"), 10.0)
    assert plan.on_reply("b", Answer(replay), 10.2) == [Confirm("b")]
    plan.on_reply("b", Answer(False), 10.3)  # the ledger does not show the first copy's effect
    assert plan.outcome == GaveUp("rejected", {"a": "[submit.timeout] not committed in time"}, detail=mark)


def test_submit_takes_a_replay_mark_at_its_word_when_no_copy_can_have_gone_through():
    plan = SubmitFailover(["a", "b"], timeout=TIMEOUT)
    plan.start(0.0)
    plan.on_reply("a", UNREACHABLE, 0.1)  # never reached the peer
    assert plan.on_reply("b", Answer({**OK, "mark": "replayed_nonce"}), 0.2) == []
    assert plan.outcome.reason == "rejected" and plan.outcome.detail == "replayed_nonce"


def test_submit_rejected_refused_and_malformed():
    plan = SubmitFailover(["a", "b"], timeout=TIMEOUT)
    plan.start(0.0)
    plan.on_reply("a", Answer({**OK, "mark": "bad_signature"}), 0.1)
    assert plan.outcome == GaveUp("rejected", detail="bad_signature")

    refusal = Refused("forbidden", "not yours", cause="the bus error")
    plan = SubmitFailover(["a", "b"], timeout=TIMEOUT)
    plan.start(0.0)
    assert plan.on_reply("a", refusal, 0.1) == []  # a refusal is final: not tried elsewhere
    assert plan.outcome == GaveUp("refused", detail=refusal)

    plan = SubmitFailover(["a", "b"], timeout=TIMEOUT)
    plan.start(0.0)
    plan.on_reply("a", Answer(["no", "mark"]), 0.1)
    assert plan.outcome == GaveUp("malformed")


def test_submit_ignores_replies_it_did_not_ask_for():
    plan = SubmitFailover(["a", "b"], timeout=TIMEOUT)
    plan.start(0.0)
    assert plan.on_reply("b", Answer(OK), 0.1) == [] and plan.outcome is None
    assert plan.on_timeout(50.0) == []


def test_plans_are_sans_io():
    """agents/plans.py imports nothing that does I/O or reads a clock."""
    import ast
    import inspect

    import agents.plans

    tree = ast.parse(inspect.getsource(agents.plans))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    # core is pure (no I/O, no clock: tests/test_architecture.py); the plans take its error codes
    assert {m.split(".")[0] for m in imported} <= {"__future__", "math", "dataclasses", "typing", "core"}, imported
