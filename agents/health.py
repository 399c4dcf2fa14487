"""Which remote agents (peers, storage nodes) answered lately: a small circuit breaker.

A user agent talks to a handful of server agents. When one of them is dead
(connection refused: the bus retries its connect for a while before it says
"unreachable") or stalled (connections open, nothing answers: only the request
timeout tells), asking it first again costs every later operation that
delay. :class:`AgentHealth` remembers failures: a remote agent that timed out
or could not be reached is *open* (tried last, or skipped where others can do
the job) for ``cooldown`` seconds; after that it is *half-open*: one probe at a
time finds out whether it is back, while everyone else keeps treating it as
open until the probe's outcome is reported (or ``probe_window`` passes). The
probe is a cheap background request when the caller passes a ``probe``
callback to :meth:`AgentHealth.split` (the user agents do: real operations
never wait for a probe), else the caller's own request in its normal place. A
success closes the circuit again, a failure opens it for another ``cooldown``.

Agents on the same bus node share one tracker (:meth:`AgentHealth.for_node`):
they share that node's connections, so what one of them learnt about a route
holds for all of them (the load test runs hundreds of users on one node).
"""

from __future__ import annotations

import weakref
from typing import Callable, Iterable

import trio

__all__ = ["AgentHealth"]

_SHARED: "weakref.WeakKeyDictionary[object, AgentHealth]" = weakref.WeakKeyDictionary()


class AgentHealth:
    """Circuit breaker over remote agent ids (see the module docstring).

    Times come from ``clock()``, in seconds: :func:`trio.current_time` unless
    given (so by default use it inside trio). :attr:`clock` may be replaced while
    no agent is marked (tests hold the marks still with a manual clock:
    :class:`agents.testing.clock.ManualClock`).
    """

    def __init__(self, cooldown: float = 10.0, probe_window: float = 10.0, *,
                 clock: Callable[[], float] = trio.current_time):
        if cooldown <= 0 or probe_window <= 0:
            raise ValueError("cooldown and probe_window must be positive")
        self.clock = clock
        self.cooldown = cooldown
        self.probe_window = probe_window
        self._open_until: dict[str, float] = {}  # agent -> end of its cooldown
        self._probe_until: dict[str, float] = {}  # agent -> a probe is out until then
        self.failures = 0  # counters (statistics)
        self.recoveries = 0

    @classmethod
    def for_node(cls, node: object) -> "AgentHealth":
        """The tracker shared by every agent on bus node ``node`` (created on first use)."""
        health = _SHARED.get(node)
        if health is None:
            health = _SHARED[node] = cls()
        return health

    # ------------------------------------------------------------ outcomes

    def failure(self, agent: str) -> None:
        """``agent`` timed out or could not be reached: open its circuit for ``cooldown`` s."""
        self.failures += 1
        self._open_until[agent] = self.clock() + self.cooldown
        self._probe_until.pop(agent, None)

    def success(self, agent: str) -> None:
        """``agent`` answered (an error reply counts: it is alive): close its circuit."""
        if self._open_until.pop(agent, None) is not None:
            self.recoveries += 1
        self._probe_until.pop(agent, None)

    # ------------------------------------------------------------ views

    def state(self, agent: str) -> str:
        """``"closed"`` (healthy), ``"open"`` (failed within ``cooldown``) or ``"half-open"``."""
        until = self._open_until.get(agent)
        if until is None:
            return "closed"
        return "open" if self.clock() < until else "half-open"

    def _admit(self, agent: str, probe: Callable[[str], None] | None) -> bool:
        """Whether a caller may use ``agent`` now: closed; or half-open with no probe
        out and no ``probe`` callback (this caller's request is the probe). With a
        callback, a half-open agent is probed by ``probe(agent)`` and not used."""
        until = self._open_until.get(agent)
        if until is None:
            return True
        now = self.clock()
        if now < until or now < self._probe_until.get(agent, -1.0):
            return False
        self._probe_until[agent] = now + self.probe_window
        if probe is None:
            return True
        probe(agent)
        return False

    def split(self, agents: Iterable[str], probe: Callable[[str], None] | None = None) -> tuple[list[str], list[str]]:
        """``(use, avoid)``: the agents to use now (in the given order) and the ones to
        use only if those do not do (the one whose cooldown ends first, first).

        ``probe(agent)``, if given, must start a background request to a half-open
        agent whose outcome is reported to :meth:`success`/:meth:`failure`."""
        use: list[str] = []
        avoid: list[str] = []
        for agent in agents:
            (use if self._admit(agent, probe) else avoid).append(agent)
        avoid.sort(key=lambda a: self._open_until.get(a, 0.0))
        return use, avoid

    def order(self, agents: Iterable[str], probe: Callable[[str], None] | None = None) -> list[str]:
        """The agents in the order to try them: usable first (given order), avoided last."""
        use, avoid = self.split(agents, probe)
        return use + avoid

    def is_down(self, agent: str) -> bool:
        """Open, or half-open with a probe out (without admitting a probe)."""
        until = self._open_until.get(agent)
        if until is None:
            return False
        now = self.clock()
        return now < until or now < self._probe_until.get(agent, -1.0)
