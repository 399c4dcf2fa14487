"""Admission: who a sender is, whether it may send a kind, and bounded waiting.

Each serving agent classifies a sender into a :class:`core.protocol.Sender`
class from what it knows, and :func:`agents.handlers.serve` refuses a sender
whose class is not in the kind's ``senders`` column (core.protocol.KINDS)
with ``forbidden`` before the body is parsed, before any wait, query or
crypto. The pieces:

* :class:`Classifier`: sender id -> class, from the consortium's node ids
  (peers, orderer, storage nodes: genesis and manifest), the ``enroll:``
  prefix, and a callable giving the role on a user's committed, unrevoked
  certificate (a peer: its ledger; a storage node: its light client; a
  patient: the certificates it looks up). Unknown senders have no class.
  :meth:`Classifier.classify_now` answers without an await whatever needs
  none (a consortium node, an enrolling id, a role looked up synchronously:
  the peer's and the storage node's); only a coroutine look-up (the patient's)
  leaves an awaitable to finish.
* :class:`Refusals`: counts every refusal by (kind, code) and logs each
  (sender, kind) once, so a flood does not flood the log.
* :class:`WaitGate`: caps, per sender and in total, the handlers waiting for
  something another agent is about to commit (a grant, a request); beyond the
  caps a request is refused at once with ``busy``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections import Counter
from types import MappingProxyType
from typing import Awaitable, Callable, Iterable, Iterator, Mapping

import bus
from core.protocol import Sender, admits_subscriber, codes

from agents.consortium import ENROLL_PREFIX

__all__ = ["Classifier", "Refusals", "WaitGate", "role_class", "MAX_WAITING_PER_SENDER", "MAX_WAITING", "NOT_NOW"]

log = logging.getLogger("agents.admission")

MAX_WAITING_PER_SENDER = 4
"""Default: how many of one sender's requests may wait (for a commit) at once."""
MAX_WAITING = 32
"""Default: how many requests in all may wait (for a commit) at once (half the bus's 64 request slots)."""
MAX_LOGGED = 10_000  # (sender, kind) pairs remembered for log-once; beyond, refusals are only counted


def role_class(role: str | None) -> Sender | None:
    """The class of a registered user by its certificate's role (None: not registered)."""
    if role is None:
        return None
    return Sender.PATIENT if role == "patient" else Sender.DOCTOR if role == "doctor" else Sender.USER


NOT_NOW = object()
"""What :meth:`Classifier.class_now` answers when finding the class would wait."""
_ASK = object()  # (Classifier._known: the role look-up decides)


async def _role_class_of(role: Awaitable[str | None]) -> Sender | None:
    return role_class(await role)


class Classifier:
    """sender id -> :class:`Sender` class (None: unknown), see the module docstring.

    ``role(sender)`` returns the role on the sender's committed, unrevoked
    certificate, or None; it may be a coroutine function (then use
    :meth:`classify`, which awaits it).
    """

    def __init__(self, *, peers: Iterable[str] = (), orderer: str | None = None, storage: Iterable[str] = (),
                 role: Callable[[str], str | None | Awaitable[str | None]] | None = None,
                 orderers: Iterable[str] = ()):
        self._nodes: dict[str, Sender] = {p: Sender.PEER for p in peers}
        self._nodes.update({s: Sender.STORAGE for s in storage})
        self._nodes.update({o: Sender.ORDERER for o in orderers})  # the nodes of an etcd ordering service
        if orderer is not None:
            self._nodes[orderer] = Sender.ORDERER
        self._role = role

    def set_peers(self, peers: Iterable[str]) -> None:
        """The consortium's peers from now on (a configuration change added or removed some)."""
        self._nodes = {n: c for n, c in self._nodes.items() if c is not Sender.PEER}
        self._nodes.update({p: Sender.PEER for p in peers})

    async def classify(self, sender: str) -> Sender | None:
        cls = self.classify_now(sender)
        if cls is None or isinstance(cls, Sender):
            return cls
        return await cls

    def _known(self, sender: str) -> Sender | None | object:
        """A node's class, an enrolling id's, None (no role look-up to ask), or ``_ASK``."""
        node = self._nodes.get(sender)
        if node is not None:
            return node
        if sender.startswith(ENROLL_PREFIX):
            return Sender.ENROLLING
        if self._role is None:
            return None
        return _ASK

    def classify_now(self, sender: str) -> Sender | None | Awaitable[Sender | None]:
        """The sender's class at once when finding it takes no wait (a node, an enrolling
        id, a user whose role the synchronous ``role`` look-up gives); else an awaitable
        of it (``role`` returned one: a coroutine look-up). The same answer as
        :meth:`classify`, without a coroutine per request where none is needed."""
        known = self._known(sender)
        if known is not _ASK:
            return known
        role = self._role(sender)
        if role is None or isinstance(role, str) or not inspect.isawaitable(role):
            return role_class(role)  # type: ignore[arg-type]
        return _role_class_of(role)

    def class_now(self, sender: str) -> Sender | None | object:
        """Like :meth:`classify_now` without ever starting a look-up: the class, or
        :data:`NOT_NOW` when it would take a waiting one (the caller defers to a path
        that awaits :meth:`classify_now`; nothing is left un-awaited)."""
        known = self._known(sender)
        if known is not _ASK:
            return known
        if inspect.iscoroutinefunction(self._role):
            return NOT_NOW
        role = self._role(sender)
        if role is None or isinstance(role, str) or not inspect.isawaitable(role):
            return role_class(role)  # type: ignore[arg-type]
        close = getattr(role, "close", None)
        if close is not None:
            close()  # a coroutine, never started: dropped without a warning
        return NOT_NOW

    def node_class(self, sender: str) -> Sender | None:
        """The class of a consortium node or an enrolling id, without asking about certificates."""
        node = self._nodes.get(sender)
        if node is not None:
            return node
        return Sender.ENROLLING if sender.startswith(ENROLL_PREFIX) else None

    def subscriber_admitter(self, refusals: Refusals | None = None) -> Callable[[str, str], bool]:
        """``admit(sender, topic)`` for :class:`bus.Endpoint`: a declared topic, and a sender
        of a class the topic's ``subscribers`` admits; a user only to its own
        ``commits/<subject>`` (core.protocol.admits_subscriber). Users are classified by
        the synchronous ``role`` look-up (a coroutine look-up admits no user)."""

        def admit(sender: str, topic: str) -> bool:
            cls = self.node_class(sender)
            if cls is None and self._role is not None:
                role = self._role(sender)
                cls = role_class(role) if isinstance(role, str) else None
            ok = admits_subscriber(topic, cls, sender)
            if not ok and refusals is not None:
                refusals.refuse(sender, f"bus.subscribe {topic[:64]}", codes.FORBIDDEN, "may not subscribe")
            return ok

        return admit


class Refusals:
    """Counts refusals by (kind, code); logs each (sender, kind) once."""

    def __init__(self, agent: str):
        self._agent = agent
        self._counts: Counter[tuple[str, str]] = Counter()
        self._logged: set[tuple[str, str]] = set()

    def refuse(self, sender: str, kind: str, code: str, why: str) -> bus.HandlerError:
        """Count and (once per sender and kind) log a refusal; return the error to raise."""
        self._counts[(kind, code)] += 1
        key = (sender, kind)
        if key not in self._logged and len(self._logged) < MAX_LOGGED:
            self._logged.add(key)
            log.warning("%s refused %s from %r: %s (%s; logged once per sender and kind)", self._agent, kind,
                        sender, code, why)
        return bus.HandlerError(code, why)

    def counts(self) -> Mapping[tuple[str, str], int]:
        """(kind, code) -> how many requests were refused so."""
        return MappingProxyType(dict(self._counts))

    def total(self, code: str | None = None) -> int:
        return sum(n for (_, c), n in self._counts.items() if code is None or c == code)


class WaitGate:
    """Caps the requests waiting for a commit, per sender and in total (see the module docstring)."""

    def __init__(self, refusals: Refusals, *, per_sender: int = MAX_WAITING_PER_SENDER,
                 total: int = MAX_WAITING):
        if per_sender < 1 or total < per_sender:
            raise ValueError("need 1 <= per_sender <= total")
        self._refusals = refusals
        self._per_sender = per_sender
        self._total = total
        self._waiting: Counter[str] = Counter()

    @property
    def waiting(self) -> int:
        return sum(self._waiting.values())

    def has_room(self, sender: str) -> bool:
        """Whether :meth:`slot` would take a slot for ``sender`` now (no refusal counted)."""
        return self._waiting[sender] < self._per_sender and self.waiting < self._total

    @contextlib.contextmanager
    def slot(self, sender: str, kind: str) -> Iterator[None]:
        """Hold a waiting slot, or raise ``busy`` at once when the caps are reached."""
        if self._waiting[sender] >= self._per_sender or self.waiting >= self._total:
            raise self._refusals.refuse(sender, kind, codes.BUSY, "too many requests waiting; retry later")
        self._waiting[sender] += 1
        try:
            yield
        finally:
            self._waiting[sender] -= 1
            if not self._waiting[sender]:
                del self._waiting[sender]
