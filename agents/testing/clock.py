"""A clock that moves only when told: for timing logic that reads a clock callable
(:class:`agents.health.AgentHealth`'s ``clock``) inside tests that run on trio's
real clock (real TCP, real crypto, where trio's autojump clock would jump over
I/O waits). The health marks then expire exactly when the test says, however
long a loaded machine takes between two steps.
"""

from __future__ import annotations

__all__ = ["ManualClock"]


class ManualClock:
    """``clock()`` is the current time in seconds; :meth:`advance` moves it forward."""

    def __init__(self, start: float = 0.0):
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self.now += seconds
