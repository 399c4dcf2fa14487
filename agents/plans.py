"""The user agents' timing policies as sans-I/O plans: what to ask whom, and when to stop.

A plan decides; it does no I/O, never awaits and never reads a clock: time
comes in as an argument (seconds on any monotonic scale; the agents pass
:func:`trio.current_time`, tests pass plain numbers). :mod:`agents.driver`
runs a plan from trio. Every plan has the same surface:

* ``start(now)`` returns the first actions;
* ``on_reply(peer, result, now)`` takes what came back from a request the
  plan asked for (a :data:`Result`) and returns the next actions;
* ``on_timeout(now)`` is called once ``now`` reached :meth:`next_deadline`
  (a plan's own timers: hedging, giving up, grace; a request's timeout is the
  request's own and comes back as a :class:`Lost` reply);
* ``next_deadline()`` is when ``on_timeout`` is due (None: no timer);
* ``outcome`` is None while undecided, then :class:`Done` or :class:`GaveUp`;
* ``finished`` says the plan needs nothing more: the driver stops, cancelling
  requests still out. A plan is usually finished once decided; a share delivery
  decides (the patient answers) and then lets late deliveries finish.

Actions are plain data: :class:`Ask` (send the request to a peer, giving up
on it after a timeout) and, for submits, :class:`Confirm` (look the
transaction's effect up on the ledger). The plans:

* :class:`ShareCollection` (the doctor): ask t peers for re-encryption
  shares, hedge with the spare healthy peers on a failure or after
  :data:`HEDGE_S`, stop asking peers that failed lately once a peer says the
  grant is revoked or expired, give up :data:`GIVE_UP_GRACE_S` after t good
  shares are out of reach;
* :class:`ShareDelivery` (the patient): deliver the key shares to every
  target peer; answer once the grant committed and t peers acknowledged, after
  up to a grace for the others (:data:`DELIVERY_GRACE_S` for a standing
  delegation; none for a doctor's grant, whose answer names the acknowledging
  peers; late deliveries go on); fail once t acknowledgements are out of reach;
* :class:`SubmitFailover` (both): send the signed transaction to one peer at a
  time, the same bytes to the next when one does not answer, and confirm on
  the ledger a copy marked as a replay before counting it committed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from core.protocol import codes

__all__ = [
    "Ask",
    "Confirm",
    "Answer",
    "Refused",
    "Lost",
    "Invalid",
    "Result",
    "Done",
    "GaveUp",
    "ShareCollection",
    "ShareDelivery",
    "SubmitFailover",
    "HEDGE_S",
    "GIVE_UP_GRACE_S",
    "DELIVERY_GRACE_S",
    "COPY_MARKS",
    "RESEND_CODES",
]

HEDGE_S = 0.3  # without t good shares by then, the spare healthy peers are asked too
GIVE_UP_GRACE_S = 0.5  # when t shares are out of reach, how long the other requests may still take
DELIVERY_GRACE_S = 0.5  # after t acknowledgements, wait this long for the other peers' shares
# marks a re-sent copy of a transaction gets when the first copy committed
COPY_MARKS = ("replayed_nonce", "duplicate_in_block")
# a peer's refusals of a submit that mean "not committed through me in time": try the next
RESEND_CODES = (codes.SUBMIT_TIMEOUT, codes.SUBMIT_UNAVAILABLE)
_REVOKED = codes.ACCESS_BAD_STATE  # a peer's answer: the grant is revoked or expired
_SKIPPED = "skipped (did not answer lately)"


# ------------------------------------------------------------------ actions


@dataclass(frozen=True, slots=True)
class Ask:
    """Send the plan's request to ``peer``; give up on it after ``timeout`` seconds."""

    peer: str
    timeout: float


@dataclass(frozen=True, slots=True)
class Confirm:
    """Look up on the ledger whether the submitted transaction took effect, asking
    ``peer`` first (None: any peer); reply ``Answer(True)`` or ``Answer(False)``."""

    peer: str | None


# ------------------------------------------------------------------ results of a request


@dataclass(frozen=True, slots=True)
class Answer:
    """The peer answered (for shares: and the answer verified); ``value`` is the answer."""

    value: Any


@dataclass(frozen=True, slots=True)
class Refused:
    """The peer answered with an error: its ``code`` and ``message``; ``cause`` is
    whatever the caller wants back if the plan gives up on it (opaque to the plan)."""

    code: str
    message: str = ""
    cause: Any = None


@dataclass(frozen=True, slots=True)
class Lost:
    """No answer: the request timed out or the transport failed. ``reason`` names the
    failure (the exception's type name), ``message`` says more; ``maybe_delivered``
    is True when the request may have reached the peer (a timeout, a connection
    broken after sending)."""

    reason: str
    message: str = ""
    maybe_delivered: bool = False


@dataclass(frozen=True, slots=True)
class Invalid:
    """The peer answered, but the answer did not verify (``detail`` says why)."""

    detail: str


Result = Answer | Refused | Lost | Invalid


# ------------------------------------------------------------------ outcomes


@dataclass(frozen=True, slots=True)
class Done:
    """The plan succeeded: ``value`` (per plan); ``errors``: peer -> what went wrong
    with it on the way (empty when nothing did)."""

    value: Any = None
    errors: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GaveUp:
    """The plan failed. ``reason`` is a short code (per plan), ``errors`` peer -> what
    went wrong, ``answered`` how many peers gave what was needed, ``detail`` more
    (per plan)."""

    reason: str
    errors: dict[str, str] = field(default_factory=dict)
    answered: int = 0
    detail: Any = None


def _error_text(result: Result) -> str:
    """How a failed request appears in a share plan's error report."""
    if isinstance(result, Refused):
        return result.code
    if isinstance(result, Lost):
        return f"unavailable ({result.reason})"
    if isinstance(result, Invalid):
        return f"integrity ({result.detail})"
    raise TypeError(f"not a failure: {result!r}")


# ------------------------------------------------------------------ the doctor's share collection


class ShareCollection:
    """Collect ``need`` (t) re-encryption shares from the peers.

    ``healthy`` and ``suspects`` are the peers to use and the peers that failed
    lately (:meth:`agents.health.AgentHealth.split`). When at least t are
    healthy, t of them are asked at once, starting at index ``rotation`` (the
    caller moves its rotation on when :attr:`rotated`, so the pairings spread
    over the consortium); the other healthy peers are a hedge, asked one more
    each time a request fails, or all at once after ``hedge_after`` seconds
    without t good shares. Suspects are asked only when the others cannot make t
    (one more each time a request fails), with the short ``suspect_timeout``
    while some peer is healthy (when every peer failed lately they may all just
    be busy). With fewer than t healthy peers every peer is asked at once.
    ``prefer``: peers known to hold their key share (those that acknowledged it to
    the patient): among the healthy ones, they come first (rotation order kept
    within each group), so a grant answered before every delivery was in does not
    send the first requests to a peer still without its share.

    Once a peer answers that the grant is revoked or expired (``access.bad-state``:
    ledger state only moves forward) nobody else is asked. Once t good shares are
    out of reach, the requests still out get ``give_up_after`` seconds (their
    answers make the error precise), then the plan gives up.

    Outcome: ``Done(shares)`` (the first t good answers' values, in arrival
    order) or ``GaveUp("revoked" | "not-enough", errors, answered)``; ``errors``
    maps a peer to its error code, ``"unavailable (<reason>)"`` or
    ``"integrity (<detail>)"``.
    """

    def __init__(self, healthy: list[str], suspects: list[str], need: int, *, timeout: float,
                 suspect_timeout: float, rotation: int = 0, hedge_after: float = HEDGE_S,
                 give_up_after: float = GIVE_UP_GRACE_S, prefer: Iterable[str] = ()):
        if need < 1:
            raise ValueError("need must be at least 1")
        self.need = need
        self.timeout = timeout
        self.hedge_after = hedge_after
        self.give_up_after = give_up_after
        # the short leash only while some peer is healthy
        self._short = min(timeout, suspect_timeout)
        self._suspects = set(suspects) if healthy else set()
        self.rotated = len(healthy) >= need
        if not self.rotated:  # not enough healthy peers: ask everyone at once
            self._first, self._reserve = list(healthy) + list(suspects), []
        else:
            k = rotation % len(healthy)
            order = healthy[k:] + healthy[:k]
            preferred = set(prefer)
            if preferred:
                order = [p for p in order if p in preferred] + [p for p in order if p not in preferred]
            self._first, self._reserve = order[:need], order[need:] + list(suspects)
        self.good: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.in_flight: set[str] = set()
        self._hedge_at: float | None = None
        self._give_up_at: float | None = None
        self.outcome: Done | GaveUp | None = None

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    def next_deadline(self) -> float | None:
        if self.outcome is not None:
            return None
        times = [t for t in (self._hedge_at, self._give_up_at) if t is not None]
        return min(times) if times else None

    def start(self, now: float) -> list[Ask]:
        actions = [self._ask(peer) for peer in self._first]
        if self._reserve:
            self._hedge_at = now + self.hedge_after
        return actions + self._top_up(now)

    def on_reply(self, peer: str, result: Result, now: float) -> list[Ask]:
        if self.outcome is not None or peer not in self.in_flight:
            return []
        self.in_flight.discard(peer)
        if isinstance(result, Answer):
            self.good[peer] = result.value
            if len(self.good) >= self.need:
                self.outcome = Done(list(self.good.values())[:self.need], dict(self.errors))
                return []
        else:
            self.errors[peer] = _error_text(result)
        return self._top_up(now)

    def on_timeout(self, now: float) -> list[Ask]:
        if self.outcome is not None:
            return []
        if self._give_up_at is not None and now >= self._give_up_at:
            self._give_up()
            return []
        actions: list[Ask] = []
        if self._hedge_at is not None and now >= self._hedge_at:
            self._hedge_at = None
            while self._reserve and self._reserve[0] not in self._suspects:
                actions.append(self._ask(self._reserve.pop(0)))
        return actions

    def _ask(self, peer: str) -> Ask:
        self.in_flight.add(peer)
        return Ask(peer, self._short if peer in self._suspects else self.timeout)

    def _top_up(self, now: float) -> list[Ask]:
        if _REVOKED in self.errors.values():
            # a peer says the grant is revoked or expired: do not go looking for
            # a peer that has not heard yet
            self._reserve.clear()
        actions = []
        while self._reserve and len(self.good) + len(self.in_flight) < self.need:
            actions.append(self._ask(self._reserve.pop(0)))
        if len(self.good) + len(self.in_flight) < self.need:
            # t good shares are out of reach: a stalled peer must not hold the answer up
            if not self.in_flight:
                self._give_up()
            elif self._give_up_at is None:
                self._give_up_at = now + self.give_up_after
        return actions

    def _give_up(self) -> None:
        errors = dict(self.errors)
        for peer in self._reserve:
            errors[peer] = _SKIPPED
        reason = "revoked" if _REVOKED in errors.values() else "not-enough"
        self.outcome = GaveUp(reason, errors, answered=len(self.good))


# ------------------------------------------------------------------ the patient's share delivery


class ShareDelivery:
    """Deliver a grant's key shares to the ``targets`` and decide when the patient answers.

    Every target is asked at once (each request bounded by ``timeout``);
    ``skipped`` peers (failed lately) appear in the errors. The grant
    transaction is committed meanwhile; :meth:`on_committed` says it did. The
    plan decides once the grant committed and *enough* happened (t
    acknowledgements, t out of reach, or every delivery over): with t
    acknowledgements it answers ``Done(sorted acks, errors)`` when every delivery
    is over or ``grace`` seconds after that moment, whichever comes first, and
    lets the rest finish (:attr:`finished` once every delivery is over); with
    fewer it gives up at once: ``GaveUp("not-enough", errors, answered)``.
    ``errors`` maps a peer to its error code or ``"unavailable (<reason>)"``.
    """

    def __init__(self, targets: list[str], need: int, *, timeout: float, grace: float = DELIVERY_GRACE_S,
                 skipped: Iterable[str] = ()):
        if need < 1:
            raise ValueError("need must be at least 1")
        self.targets = list(targets)
        self.need = need
        self.timeout = timeout
        self.grace = grace
        self.pending: set[str] = set()
        self.acks: set[str] = set()
        self.errors: dict[str, str] = {peer: _SKIPPED for peer in skipped}
        self._committed_at: float | None = None
        self._enough_at: float | None = None
        self.outcome: Done | GaveUp | None = None

    @property
    def settled(self) -> bool:
        """Every delivery is over (acknowledged or failed)."""
        return not self.pending

    @property
    def finished(self) -> bool:
        return isinstance(self.outcome, GaveUp) or (self.outcome is not None and self.settled)

    def _answer_from(self) -> float | None:
        if self._committed_at is None or self._enough_at is None:
            return None
        return max(self._committed_at, self._enough_at)

    def next_deadline(self) -> float | None:
        start = self._answer_from()
        if self.outcome is not None or start is None:
            return None
        return start + self.grace

    def start(self, now: float) -> list[Ask]:
        self.pending = set(self.targets)
        actions = [Ask(peer, self.timeout) for peer in self.targets]
        self._update(now)
        return actions

    def on_committed(self, now: float) -> list[Ask]:
        """The grant transaction committed."""
        if self._committed_at is None:
            self._committed_at = now
        self._update(now)
        return []

    def on_reply(self, peer: str, result: Result, now: float) -> list[Ask]:
        if peer not in self.pending:
            return []
        self.pending.discard(peer)
        if isinstance(result, Answer):
            self.acks.add(peer)
            self.errors.pop(peer, None)
        else:
            self.errors[peer] = _error_text(result)
        self._update(now)
        return []

    def on_timeout(self, now: float) -> list[Ask]:
        self._update(now)
        return []

    def _update(self, now: float) -> None:
        acks = len(self.acks)
        if self._enough_at is None and (not self.pending or acks >= self.need
                                        or acks + len(self.pending) < self.need):
            self._enough_at = now  # t acknowledged, t out of reach, or every delivery is over
        start = self._answer_from()
        if self.outcome is not None or start is None:
            return
        if acks < self.need:
            self.outcome = GaveUp("not-enough", dict(self.errors), answered=acks)
        elif self.settled or now >= start + self.grace:
            self.outcome = Done(sorted(self.acks), dict(self.errors))


# ------------------------------------------------------------------ submit failover


class SubmitFailover:
    """Submit one signed transaction through the ``peers`` (in order), failing over.

    Each peer gets the same bytes with ``timeout`` (less when the overall
    ``total`` budget, default twice ``timeout``, runs short; none is asked once
    it is spent). A peer that does not answer (:class:`Lost`) or answers one of
    :data:`RESEND_CODES` is followed by the next; those that may have taken the
    transaction (a timeout, a broken connection, a resend code) make a later
    :data:`COPY_MARKS` mark mean "the first copy committed", which a
    :class:`Confirm` checks on the ledger before the plan counts it as
    committed (``resubmitted``). Any other refusal ends the plan.

    Outcome: ``Done(reply)`` (the peer's reply, ``mark`` "ok"; after a confirmed
    replay with ``"mark": "ok", "resubmitted": True``) or ``GaveUp(reason)`` with
    reason ``"unavailable"`` (no peer answered in time; ``errors``),
    ``"refused"`` (``detail``: the :class:`Refused` reply), ``"malformed"``
    (a reply without a mark) or ``"rejected"`` (``detail``: the ledger's mark).
    """

    def __init__(self, peers: list[str], *, timeout: float, total: float | None = None):
        self.peers = list(peers)
        self.timeout = timeout
        self.total = 2 * timeout if total is None else total
        self.errors: dict[str, str] = {}
        self.may_be_queued = False  # a copy may have reached the orderer
        self._next = 0
        self._deadline = math.inf
        self._asking: str | None = None
        self._reply: dict | None = None  # the reply being confirmed
        self.copy_mark: str | None = None  # the mark of a re-sent copy that had to be confirmed
        self.outcome: Done | GaveUp | None = None

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    def next_deadline(self) -> float | None:
        return None  # a request's timeout is the request's own

    def on_timeout(self, now: float) -> list[Ask | Confirm]:
        return []

    def start(self, now: float) -> list[Ask | Confirm]:
        self._deadline = now + self.total
        return self._ask_next(now)

    def on_reply(self, peer: str | None, result: Result, now: float) -> list[Ask | Confirm]:
        if self.outcome is not None:
            return []
        if self._reply is not None:  # the answer to Confirm
            reply, self._reply = self._reply, None
            if isinstance(result, Answer) and result.value is True:
                self.outcome = Done({**reply, "mark": "ok", "resubmitted": True}, dict(self.errors))
            else:
                self.outcome = GaveUp("rejected", dict(self.errors), detail=reply["mark"])
            return []
        if peer != self._asking:
            return []
        self._asking = None
        if isinstance(result, Answer):
            reply = result.value
            if not isinstance(reply, dict) or "mark" not in reply:
                self.outcome = GaveUp("malformed", dict(self.errors))
            elif reply["mark"] in COPY_MARKS and self.may_be_queued:
                self._reply, self.copy_mark = reply, reply["mark"]
                return [Confirm(peer)]
            elif reply["mark"] != "ok":
                self.outcome = GaveUp("rejected", dict(self.errors), detail=reply["mark"])
            else:
                self.outcome = Done(reply, dict(self.errors))
            return []
        if isinstance(result, Lost):
            self.errors[peer] = f"{result.reason}: {result.message}"
            self.may_be_queued = self.may_be_queued or result.maybe_delivered
        elif isinstance(result, Refused) and result.code in RESEND_CODES:
            self.errors[peer] = f"[{result.code}] {result.message}"
            self.may_be_queued = True
        else:
            self.outcome = GaveUp("refused", dict(self.errors), detail=result)
            return []
        return self._ask_next(now)

    def _ask_next(self, now: float) -> list[Ask | Confirm]:
        left = self._deadline - now
        if self._next >= len(self.peers) or left <= 0:
            self.outcome = GaveUp("unavailable", dict(self.errors))
            return []
        peer = self.peers[self._next]
        self._next += 1
        self._asking = peer
        return [Ask(peer, min(self.timeout, left))]
