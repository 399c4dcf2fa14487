"""Running a sans-I/O plan (:mod:`agents.plans`) from trio.

:class:`PlanRun` is the thin loop around a plan: it starts one task per
action (``perform(action)`` does the I/O and returns a
:data:`agents.plans.Result`), feeds each result back with
:func:`trio.current_time` (so trio's autojump clock drives it in tests),
calls the plan's ``on_timeout`` when its :meth:`next_deadline` passes, and
ends once the plan is ``finished``, cancelling the requests still out. All
the plan's inputs go through one queue, in order: results, and events the
caller sends with :meth:`PlanRun.tell` (e.g. "the grant committed").

An exception from ``perform`` ends the run and comes out of :meth:`PlanRun.run`
unchanged (not wrapped in an exception group). :func:`run_plan` runs a plan
to its end and returns its outcome; :func:`result_of` turns a bus request's
answer or failure into a result.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from typing import Any, Awaitable, Callable

import trio

import bus
from agents.plans import Answer, Lost, Refused, Result

__all__ = ["PlanRun", "run_plan", "result_of"]

Perform = Callable[[Any], Awaitable[Result]]
Event = Callable[[float], list]  # now -> the plan's next actions


async def result_of(request: Awaitable[Any]) -> Result:
    """Await a bus request: its answer as :class:`Answer`, a peer's error as
    :class:`Refused` (``cause``: the :class:`bus.RemoteError`), a timeout or
    transport failure as :class:`Lost` (``maybe_delivered`` for a timeout or a
    broken connection). Other exceptions propagate."""
    try:
        return Answer(await request)
    except bus.RemoteError as exc:
        return Refused(exc.code, exc.message, exc)
    except (bus.RequestTimeout, bus.BrokenError) as exc:
        return Lost(type(exc).__name__, str(exc), maybe_delivered=True)
    except (bus.UnreachableError, bus.ClosedError) as exc:
        return Lost(type(exc).__name__, str(exc), maybe_delivered=False)


class _Inbox:
    """The run's unbounded single-consumer queue: a deque and a parking lot (a tenth of the
    cost of a memory channel's making, which a doctor's read paid once per share collection)."""

    __slots__ = ("_items", "_lot")

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._lot = trio.lowlevel.ParkingLot()

    def put(self, item: Any) -> None:
        self._items.append(item)
        self._lot.unpark_all()

    async def get(self) -> Any:
        """The next item; like a memory channel's ``receive``, a passed deadline wins over a
        queued item (the plan's timeout is applied first, the item stays queued)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._items:
            await self._lot.park()
        return self._items.popleft()


class PlanRun:
    """One run of ``plan``, performing its actions with ``perform`` (see the module docstring)."""

    def __init__(self, plan: Any, perform: Perform):
        self.plan = plan
        self._perform = perform
        self._inbox = _Inbox()
        self._decided = trio.Event()
        self._scope = trio.CancelScope()

    def tell(self, event: Event) -> None:
        """Queue ``event(now)`` (a plan method returning actions) for the run to apply."""
        self._inbox.put(event)

    def cancel(self) -> None:
        """Stop the run now (before or while it runs), cancelling the requests still out."""
        self._scope.cancel()

    async def wait_decided(self) -> Any:
        """Wait until the plan has an outcome (or the run ended without one); return it."""
        await self._decided.wait()
        return self.plan.outcome

    async def run(self) -> Any:
        """Drive the plan until it is finished (or :meth:`cancel`); return its outcome."""
        failure: list[BaseException] = []
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    self._apply(nursery, self.plan.start)
                    while not self.plan.finished:
                        deadline = self.plan.next_deadline()
                        event: Any = self.plan.on_timeout
                        with trio.move_on_at(math.inf if deadline is None else deadline):
                            event = await self._inbox.get()
                        if isinstance(event, BaseException):
                            failure.append(event)
                            break
                        self._apply(nursery, event)
                    nursery.cancel_scope.cancel()
        finally:
            self._decided.set()
        if failure:
            raise failure[0]
        return self.plan.outcome

    def _apply(self, nursery: trio.Nursery, event: Event) -> None:
        for action in event(trio.current_time()):
            nursery.start_soon(self._do, action)
        if self.plan.outcome is not None:
            self._decided.set()

    async def _do(self, action: Any) -> None:
        try:
            result = await self._perform(action)
        except Exception as exc:  # raised from run(), outside the nursery
            self._inbox.put(exc)
            return
        self._inbox.put(functools.partial(self.plan.on_reply, action.peer, result))


async def run_plan(plan: Any, perform: Perform) -> Any:
    """Run ``plan`` to its end with ``perform``; return its outcome."""
    return await PlanRun(plan, perform).run()
