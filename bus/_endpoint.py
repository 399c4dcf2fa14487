"""Endpoints: one agent's presence on the bus.

An :class:`Endpoint` signs what its agent sends (requests, replies,
fire-and-forget messages, events) and verifies what it receives (addressing,
timestamp window, signature against the directory's key, replay) before any
handler sees it. It matches replies to pending requests, runs handlers
(requests concurrently up to a bound, and up to a smaller bound per sender, so
one sender cannot take every slot: beyond it, or when the inbox is full, a
request from a connection is answered at once with ``busy``; a handler's slot
is freed when its handler returns, before the reply is queued, and replies
never wait for a slow reader (the node drops it instead); fire-and-forget
messages one at a time in arrival order),
answers requests (with the handler's result, a typed error,
or, up to a bound in flight, the reason the request's envelope was rejected)
and counts its traffic. A request's handler runs on a worker task of its own
(a slow handler holds no other request); a worker that finished parks for the
next request (up to eight per endpoint), so a request costs a wake-up, not a new
task; a handler registered as ``quick`` (its registrant promises it never waits)
runs instead in the task that delivered the request, once it has its slots, and
its reply is written from there: no task switch at all. A handler may also have
a ``fast`` companion, a plain function run the same way (in the delivering task,
holding the request's slots) that answers at once or returns :data:`DEFER`:
then the request, still holding its slots, goes on to the handler on a worker
(the fast answer for what needs no wait, the handler for the rest), with what the
companion worked out if it returned :func:`defer` ``(carry)`` (``message.carried``).
A request's slots are a counter (the dispatcher, the one task that waits for a
slot, is handed the next one freed). Requests and fire-and-forget messages go through the node's
``route_now`` first (what needs no wait is written or queued there, without
the coroutines of the full route). A request sent so waits for its reply
parked on its slot, and one expiry task per endpoint fails the slots whose
deadline passed (no cancel scope and no Event per request); one that must wait
to be sent (connecting, a proof, queue room) waits under a timeout scope.
Publish/subscribe lives in :mod:`bus._pubsub`; the endpoint carries its
messages.

An endpoint does no I/O of its own: it hands encoded envelopes to the node
that hosts it and receives decoded ones from it, through two small interfaces
and nothing else: :class:`_Host`, what the endpoint asks of its node, and
:class:`_Attachment`, what the node may call on the endpoint.
"""

from __future__ import annotations

__all__ = ["Endpoint", "Message", "Handler", "FastHandler", "DEFER", "defer"]

import dataclasses
import logging
import math
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ._pubsub import DROPPED, SUBSCRIBE, UNSUBSCRIBE, Subscription, _Subscriptions, _Topics
from ._stats import EndpointStatistics, _KindPeerCounter
from .limits import logged_repeat
from .envelope import (
    ID_SIZE,
    MAX_AGENT_ID_LENGTH,
    MAX_KIND_LENGTH,
    Directory,
    Envelope,
    EnvelopeError,
    MessageType,
    ReplayGuard,
    Signer,
    Verifier,
    _packb,
    _slot_constructor,
    encode_compact,
    encode_compact_reply,
    verify_envelope,
)
from ._secure import ChannelConnection
from .errors import BrokenError, BusError, ClosedError, RemoteError, RequestTimeout
from .transport import Connection

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("bus")

_RESERVED_PREFIX = "bus."


class _Defer:
    __slots__ = ("carry",)

    def __init__(self, carry: Any = None) -> None:
        self.carry = carry

    def __repr__(self) -> str:
        return "bus.DEFER" if self.carry is None else f"bus.defer({self.carry!r})"


DEFER: Any = _Defer()
"""What a ``fast`` handler returns when it cannot answer without waiting (see
:meth:`Endpoint.register`): the request goes on to the kind's handler."""


def defer(carry: Any) -> Any:
    """What a ``fast`` handler returns to defer as with :data:`DEFER`, handing on
    ``carry`` (what it worked out that the handler would work out again: the
    parsed body, say): the handler receives it as ``message.carried``."""
    return _Defer(carry)

_MAX_ERROR_REPLIES_IN_FLIGHT = 64
_REQUEST, _REPLY, _EVENT = MessageType.REQUEST, MessageType.REPLY, MessageType.EVENT
_REPLY_TYPES = (MessageType.REPLY, MessageType.ERROR)
_MAX_ERROR_MESSAGE = 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """What a handler receives: a verified envelope's meaning."""

    sender: str
    kind: str
    body: Any
    msg_id: bytes | int
    """The envelope's id: an int (compact envelopes: channels, agents of one node) or
    16 bytes (signed mode)."""
    timestamp: int
    """Milliseconds since the Unix epoch: the sender's clock in signed mode; the
    receiving node's at delivery otherwise (compact envelopes carry no timestamp)."""
    type: MessageType
    carried: Any = None
    """What the kind's ``fast`` companion handed on when it deferred the request
    (:func:`defer`); None otherwise (also for one deferred before the endpoint's
    workers started, which goes the inbox way: the handler works out what it lacks).
    Set by the endpoint, never from the wire."""


Handler = Callable[[Message], Awaitable[Any]]
FastHandler = Callable[[Message], Any]  # the reply body, DEFER or defer(carry)
_new_message = _slot_constructor(Message)


class _Host(Protocol):
    """What an endpoint asks of the node that hosts it (:class:`Node` implements it)."""

    @property
    def max_frame_size(self) -> int:
        """The largest encoded envelope the node carries, locally or not."""
        ...

    def now_ms(self) -> int:
        """The node's wall clock, in milliseconds since the Unix epoch."""
        ...

    @property
    def signs_envelopes(self) -> bool:
        """Whether envelopes leave this node signed (signed mode), so they need a nonce."""
        ...

    def next_id(self) -> int:
        """A compact envelope id no other envelope of this node had while it runs."""
        ...

    @property
    def reply_routes(self) -> dict[int, str]:
        """Compact request id -> the hosted endpoint waiting for its reply: the endpoint
        adds its request's id before sending it and removes it when the request ends
        (a compact reply names no recipient; the node finds the endpoint here)."""
        ...

    def spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run ``fn(*args)`` in the background, for at most the node's lifetime."""
        ...

    def route_now(self, sender: str, recipient: str, data: bytes) -> Connection | None:
        """Send an encoded, unsigned envelope from ``sender`` over a connection if that
        takes no wait; the connection it left on, or None when it did not go (then
        :meth:`route` it)."""
        ...

    def route_now_compact(self, sender: str, recipient: str, mtype: int, kind: str, msg_id: int,
                          body: Any) -> tuple[Connection, bytes] | None:
        """Encode (compact, with the names' aliases on the channel it goes on) and send
        a request, message or event from ``sender`` if that takes no wait: (the
        connection, the bytes sent), or None when it did not go (then encode it with
        the names and :meth:`route` it)."""
        ...

    async def route(
        self, sender: str, recipient: str, data: bytes, via: Connection | None, *, wait: bool = True
    ) -> Connection | None:
        """Deliver an encoded, unsigned envelope from the hosted agent ``sender``
        (a reply: on ``via`` only, BrokenError if it is gone): as it is to an agent of this node
        or on a channel (after proving ``sender`` there), signed with the
        sender's signer otherwise; return the connection it left on, None when
        delivered locally. Without ``wait`` it never waits for a connection's
        send queue: a full one is dropped (BrokenError)."""
        ...

    def reply_now(self, sender: str, data: bytes, via: Connection) -> bool:
        """Send a reply from ``sender`` on ``via`` if that takes no wait; False: nothing
        sent (then :meth:`route` it)."""
        ...

    def note_path(self, agent: str, conn: Connection) -> None:
        """A verified envelope from ``agent`` arrived on ``conn``: route its replies there."""
        ...

    def path_to(self, agent: str) -> Connection | None:
        """The connection noted for ``agent``, if any."""
        ...

    def is_live(self, conn: Connection) -> bool:
        """Whether ``conn`` is still open."""
        ...

    def hosts(self, agent: str) -> bool:
        """Whether ``agent`` is hosted here: :meth:`route` delivers to it in memory, at once."""
        ...

    def attach(self, identity: str, attachment: _Attachment) -> None:
        """Host a new endpoint: deliver envelopes for ``identity`` to it."""
        ...

    def detach(self, identity: str) -> None:
        """The endpoint closed: stop delivering to it."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class _Attachment:
    """What the node may call on an endpoint it hosts."""

    deliver: Callable[[Envelope, int, Connection | None], Awaitable[None]]
    """``deliver(envelope, size, conn)``: verify and dispatch a decoded envelope
    (``conn`` None for one from this node); never raises BusError."""
    signer: Signer
    """Signs for the agent: its identity proofs on channels, its envelopes in signed mode."""
    directory: Directory
    """The agent's view of who holds which key (to check who the other side of a channel proved)."""
    verifier: Verifier
    connection_lost: Callable[[Connection], None]
    """A connection closed: fail what was waiting on it."""
    holds: Callable[[Connection], bool]
    """Whether the endpoint still needs the connection (a request waits on it,
    a subscriber or a subscription lives on it): idleness does not close it."""
    aclose: Callable[[], Awaitable[None]]


def _error_code(exc: BaseException) -> tuple[str, str]:
    """(code, message) for an exception raised by a handler."""
    for attr in ("remote_code", "code"):
        code = getattr(exc, attr, None)
        if isinstance(code, str) and code:
            message = getattr(exc, "message", None)
            if not isinstance(message, str):
                message = str(exc)
            return code[:MAX_KIND_LENGTH], message[:_MAX_ERROR_MESSAGE]
    return "internal", "internal error"


class _Expired(BusError):
    """A request's reply did not come before its deadline (raised as RequestTimeout)."""


class _Pending:
    """A request waiting for its reply: its requester parks on it (no Event, no
    cancel scope per request: the endpoint's expiry task times it out)."""

    __slots__ = ("to", "kind", "done", "envelope", "error", "conn", "local", "deadline", "waiter")

    def __init__(self, to: str, kind: str, deadline: float = math.inf):
        self.to = to
        self.kind = kind
        self.done = False
        self.envelope: Envelope | None = None
        self.error: BusError | None = None
        self.conn: Connection | None = None
        self.local = False
        """Whether the request went to an agent of this node (its reply comes from the node, not a
        connection); set before it is sent. A request still connecting has neither ``conn`` nor this."""
        self.deadline = deadline
        """trio time after which the expiry task fails it (inf: never)."""
        self.waiter: trio.lowlevel.Task | None = None
        """The requester's task while it waits (parked until finish reschedules it)."""

    def finish(self, envelope: Envelope | None = None, error: BusError | None = None) -> None:
        """Answer it (a reply envelope) or fail it (an error); the first call counts."""
        if self.done:
            return
        self.done = True
        self.envelope = envelope
        self.error = error
        task, self.waiter = self.waiter, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    def fail(self, error: BusError) -> None:
        self.finish(error=error)

    async def wait(self) -> None:
        """Return once it is answered or failed (at once if it is already): a
        checkpoint; cancellable."""
        if self.done:
            await trio.lowlevel.checkpoint()
            return
        self.waiter = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self.abort)

    def abort(self, _: object) -> trio.lowlevel.Abort:
        """The waiting requester is cancelled: it no longer waits."""
        self.waiter = None
        return trio.lowlevel.Abort.SUCCEEDED


_IDLE_WORKERS = 8
"""Request workers an endpoint keeps parked for the next requests (more than that
finish when their request is done)."""


class _Worker:
    """A task that runs request handlers one after the other: started for a request
    when no parked worker is free, parked after it (up to :data:`_IDLE_WORKERS` per
    endpoint) to take the next one, so a request costs a wake-up, not a new task."""

    __slots__ = ("task", "work")

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.work: tuple[Envelope, Connection | None, Any] | None = None  # (request, connection, carried)


class Endpoint:
    """One agent's presence on the bus: identity, keys, handlers, statistics.

    Create with :meth:`Node.endpoint`. Requests are handled concurrently (up
    to ``max_concurrent`` (default 64) in all and ``max_concurrent_per_sender``
    (default 32) per sender: a sender's request beyond that, or one that
    arrives on a connection while the inbox (``inbox_size``) is full, is
    answered at once with the error ``busy``); fire-and-forget messages are handled one at
    a time in arrival order. Publishing: at most ``max_subscribers`` (default
    1024) subscriptions in all and ``max_topics_per_subscriber`` (default 4)
    per subscriber; ``admit_subscriber(sender, topic) -> bool`` (default:
    everyone, every topic) decides who may subscribe to what (refused:
    ``forbidden``); a subscriber's slots are freed when the connection it
    subscribed on closes. Handlers return the reply body; to answer with a typed
    error raise :class:`HandlerError` (or any exception with a string
    ``remote_code``/``code``); other exceptions become ``internal`` errors.
    """

    def __init__(
        self,
        host: _Host,
        identity: str,
        *,
        signer: Signer,
        directory: Directory,
        verifier: Verifier,
        skew: float = 30.0,
        inbox_size: int = 256,
        max_concurrent: int = 64,
        max_concurrent_per_sender: int = 32,
        max_pending: int = 4096,
        max_subscribers: int = 1024,
        max_topics_per_subscriber: int = 4,
        admit_subscriber: Callable[[str, str], bool] | None = None,
        subscriber_queue: int = 128,
        replay_max_entries: int = 1_000_000,
    ):
        if not isinstance(identity, str) or not 0 < len(identity) <= MAX_AGENT_ID_LENGTH:
            raise BusError(f"endpoint identity must be a non-empty str of at most {MAX_AGENT_ID_LENGTH} chars")
        self._host = host
        self._signs = host.signs_envelopes  # (the node's mode and frame limit never change: read once)
        self._max_frame = host.max_frame_size
        self._now_ms = host.now_ms  # (a compact request's Message.timestamp: the node's clock at delivery)
        self._identity = identity
        self._signer = signer
        self._directory = directory
        self._verifier = verifier
        self._skew_ms = int(skew * 1000)
        self._replay = ReplayGuard(self._skew_ms, replay_max_entries)
        self._handlers: dict[str, Handler] = {}
        self._quick: set[str] = set()  # kinds whose handler runs in the delivering task
        self._fast: dict[str, FastHandler] = {}  # kinds with a fast companion (register's fast=)
        self._inbox_send, self._inbox_recv = trio.open_memory_channel[
            tuple[Envelope, Connection | None]
        ](inbox_size)
        self._inbox_queued = 0  # handed to the inbox, not yet taken by _dispatch
        if not 1 <= max_concurrent_per_sender <= max_concurrent:
            raise BusError("need 1 <= max_concurrent_per_sender <= max_concurrent")
        self._free = max_concurrent  # request slots free (a plain counter: no Semaphore per request)
        self._slot_waiter: trio.lowlevel.Task | None = None  # _dispatch, parked for a slot
        self._max_per_sender = max_concurrent_per_sender
        self._in_flight: dict[str, int] = {}  # requests being handled, by sender (no zero entries)
        self._max_pending = max_pending
        self._pending: dict[bytes | int, _Pending] = {}
        self._reply_routes = host.reply_routes  # (the node's: compact request id -> the endpoint asking)
        self._expiry_at = math.inf  # when _expire wakes next (trio time)
        self._expiry_scope: trio.CancelScope | None = None  # the scope it sleeps in
        self._topics = _Topics(
            identity,
            max_subscribers=max_subscribers,
            max_topics_per_subscriber=max_topics_per_subscriber,
            admit=admit_subscriber,
            path_to=host.path_to,
            queue=subscriber_queue,
            spawn=host.spawn,
            emit=self._emit,
            send=self.send,
        )
        self._subscriptions = _Subscriptions(request=self.request, send=self.send, path_to=host.path_to)
        self._sent = _KindPeerCounter()
        self._received = _KindPeerCounter()
        self._rejected: Counter[str] = Counter()
        self._error_replies = 0
        self._quick_runs = 0  # requests answered by a quick handler in the delivering task
        self.fast_runs = 0  # requests answered (or refused) by a fast handler in the delivering task
        self.fast_deferred = 0  # requests a fast handler passed on to the kind's handler
        self._handler_nursery: trio.Nursery | None = None  # set once _dispatch runs
        self._idle_workers: list[_Worker] = []  # parked request workers, the last parked first
        self._id_prefix = secrets.token_bytes(ID_SIZE - 8)
        self._id_counter = 0
        self._now = trio.lowlevel.current_clock().current_time  # trio.current_time() without its two calls
        self._closed = False
        host.attach(identity, _Attachment(self._receive, signer, directory, verifier, self._connection_lost,
                                          self._holds, self.aclose))
        host.spawn(self._dispatch)
        host.spawn(self._expire)

    # ------------------------------------------------------------ public API

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def node(self) -> Node:
        return self._host  # type: ignore[return-value]  # Node is the only _Host

    def sign(self, message: bytes) -> bytes:
        """``message`` signed with this agent's signer (the one its channel proofs use),
        for evidence the agent hands out; give it a domain tag of its own so it can
        never pass for a proof or an envelope."""
        return self._signer(message)

    def register(self, kind: str, handler: Handler, *, quick: bool = False,
                 fast: FastHandler | None = None) -> None:
        """Handle messages of ``kind`` with ``async handler(message) -> reply``.

        ``quick``: the registrant promises the handler never waits (it awaits
        nothing, or only work that does not block: no I/O, no lock, no sleep). A
        quick request handler runs in the task that delivered the request (a
        connection's reader, or a local sender's task) and its reply is written at
        once, with no task switch; it still takes the request slots first (who may
        ask and how many per sender: a request that finds none goes the usual
        way, to be queued or refused ``busy``), and one that raises is answered
        with the usual error. While it runs the connection reads nothing else, so
        a handler that can block must not be quick.

        ``fast``: ``fn(message) -> reply body | DEFER``, a plain function (it cannot
        wait) run like a quick handler, in the delivering task once the request has
        its slots: what it returns is the reply, what it raises the error (as for a
        handler); :data:`DEFER` hands the request, with its slots, to ``handler``
        on a worker, which must then answer it as if ``fast`` had not run (so
        ``fast`` changes nothing before it defers); :func:`defer` ``(carry)`` does
        the same and the handler's message has ``carried`` set to ``carry`` (what
        ``fast`` worked out, e.g. the parsed body, not worked out again). A
        request that finds no free slot goes the usual way without ``fast``."""
        if not isinstance(kind, str) or not 0 < len(kind) <= MAX_KIND_LENGTH:
            raise BusError(f"kind must be a non-empty str of at most {MAX_KIND_LENGTH} chars")
        if kind.startswith(_RESERVED_PREFIX):
            raise BusError(f"kinds starting with {_RESERVED_PREFIX!r} are reserved for the bus")
        if kind in self._handlers:
            raise BusError(f"a handler for {kind!r} is already registered")
        if fast is not None and quick:
            raise BusError("a handler is quick or has a fast companion, not both")
        self._handlers[kind] = handler
        if quick:
            self._quick.add(kind)
        if fast is not None:
            self._fast[kind] = fast

    def unregister(self, kind: str) -> None:
        self._handlers.pop(kind, None)
        self._quick.discard(kind)
        self._fast.pop(kind, None)

    async def request(self, to: str, kind: str, body: Any, *, timeout: float | None = 30.0) -> Any:
        """Send a request and return the reply body.

        Raises :class:`RemoteError` for an error reply, :class:`RequestTimeout`
        when no reply arrives in ``timeout`` seconds (connecting included),
        :class:`BrokenError` if the connection carrying it broke first,
        :class:`UnreachableError` when there is no route.
        """
        if self._closed:
            self._check_open()
        if len(self._pending) >= self._max_pending:
            raise BusError(f"too many pending requests ({self._max_pending})")
        host = self._host
        if self._signs:
            msg_id, data = self._make(_REQUEST, kind, to, body)
        else:  # compact: encoded where it goes (aliases on a channel), below
            msg_id, data = host.next_id(), None
        now = self._now()
        slot = _Pending(to, kind, math.inf if timeout is None else now + timeout)
        self._pending[msg_id] = slot
        routes = self._reply_routes
        routes[msg_id] = self._identity  # type: ignore[index]  # (a compact reply finds us by its id; in
        # signed mode the id is bytes, which no compact reply can name: kept all the same, for one code path)
        try:
            if data is None:
                sent = host.route_now_compact(self._identity, to, _REQUEST, kind, msg_id, body)  # type: ignore[arg-type]
                if sent is not None:
                    conn, data = sent
                else:
                    conn, data = None, encode_compact(_REQUEST, kind, msg_id, None, self._identity, to, body)  # type: ignore[arg-type]
            else:
                conn = host.route_now(self._identity, to, data)
            if conn is not None:
                # sent without a wait: the expiry task times the reply wait out
                self._sent.add(kind, to, len(data))
                slot.conn = conn
                if slot.deadline < self._expiry_at:
                    self._expiry_at = slot.deadline
                    if self._expiry_scope is not None:
                        self._expiry_scope.deadline = slot.deadline
                if slot.done:  # (slot.wait(), without its coroutine)
                    await trio.lowlevel.checkpoint()
                else:
                    slot.waiter = trio.lowlevel.current_task()
                    await trio.lowlevel.wait_task_rescheduled(slot.abort)
            else:  # connecting, waiting for a proof or for queue room: all under the timeout
                # (route delivers to a hosted agent before any wait: it is hosted now or not at all)
                slot.local = self._host.hosts(to)
                with trio.move_on_after(slot.deadline - now):
                    slot.conn = await self._transmit(to, kind, data)
                    if slot.conn is not None and not self._host.is_live(slot.conn):
                        slot.fail(BrokenError(f"connection to {to!r} broke before the reply"))
                    await slot.wait()
        finally:
            del self._pending[msg_id]
            del routes[msg_id]  # type: ignore[arg-type]
        if not slot.done or isinstance(slot.error, _Expired):
            raise RequestTimeout(f"no reply from {to!r} to {kind!r} within {timeout} s")
        if slot.error is not None:
            raise slot.error
        reply = slot.envelope
        assert reply is not None
        if reply.type == MessageType.ERROR:
            raise RemoteError(reply.body["code"], reply.body["message"], to)  # (the agent asked answered it)
        return reply.body

    async def send(self, to: str, kind: str, body: Any) -> None:
        """Fire-and-forget: returns once the message is handed to the route."""
        self._check_open()
        if not self._signs:
            msg_id = self._host.next_id()
            sent = self._host.route_now_compact(self._identity, to, MessageType.SEND, kind, msg_id, body)
            if sent is not None:  # sent without a wait (with the names' aliases on its channel)
                self._sent.add(kind, to, len(sent[1]))
                return
            data = encode_compact(MessageType.SEND, kind, msg_id, None, self._identity, to, body)
        else:
            _, data = self._make(MessageType.SEND, kind, to, body)
            if self._host.route_now(self._identity, to, data) is not None:  # sent without a wait
                self._sent.add(kind, to, len(data))
                return
        await self._transmit(to, kind, data)

    async def publish(self, topic: str, body: Any) -> int:
        """Queue ``body`` for every subscriber of ``topic``; return how many.

        Never blocks on a slow subscriber: one whose queue is full is dropped
        and told so (after the events already queued for it).
        """
        self._check_open()
        if not isinstance(topic, str) or not 0 < len(topic) <= MAX_KIND_LENGTH:
            raise BusError(f"topic must be a non-empty str of at most {MAX_KIND_LENGTH} chars")
        _packb(body)  # fail here, not in each subscriber's task
        await trio.lowlevel.checkpoint()
        return self._topics.publish(topic, body)

    async def subscribe(
        self, publisher: str, topic: str, *, buffer: int = 64, timeout: float = 30.0
    ) -> Subscription:
        """Subscribe to ``topic`` at ``publisher``; events buffer up to ``buffer``."""
        self._check_open()
        return await self._subscriptions.subscribe(publisher, topic, buffer, timeout)

    def statistics(self) -> EndpointStatistics:
        return EndpointStatistics(
            identity=self._identity,
            sent_by_kind=self._sent.by_kind(),
            received_by_kind=self._received.by_kind(),
            sent_by_peer=self._sent.by_peer(),
            received_by_peer=self._received.by_peer(),
            rejected=MappingProxyType(dict(self._rejected)),
            pending_requests=len(self._pending),
            inbox=self._inbox_send.statistics().current_buffer_used,
            subscribers=len(self._topics),
            subscriptions=len(self._subscriptions),
        )

    async def aclose(self) -> None:
        """Detach from the node; pending requests fail with ClosedError."""
        if self._closed:
            return
        self._closed = True
        self._host.detach(self._identity)
        for slot in self._pending.values():
            slot.fail(ClosedError("endpoint closed"))
        self._topics.close()
        self._subscriptions.close()
        if self._expiry_scope is not None:
            self._expiry_scope.cancel()  # the expiry task sees the endpoint closed and ends
        idle, self._idle_workers = self._idle_workers, []
        for worker in idle:  # parked workers finish (a worker woken without work returns)
            trio.lowlevel.reschedule(worker.task)  # type: ignore[arg-type]
        await self._inbox_send.aclose()
        await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------ sending

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"endpoint {self._identity!r} is closed")

    def _make(
        self,
        mtype: MessageType,
        kind: str,
        to: str,
        body: Any,
        correlation_id: bytes | int | None = None,
    ) -> tuple[bytes | int, bytes]:
        """(msg_id, wire bytes) of a new envelope from this agent: compact, unless the
        node signs envelopes (signed mode) or it answers a request in the full form."""
        if self._signs or type(correlation_id) is bytes:
            env, data = Envelope.create_encoded(
                type=mtype,
                kind=kind,
                sender=self._identity,
                recipient=to,
                body=body,
                timestamp=self._host.now_ms(),
                signer=None,  # the node signs it only where no channel carries it
                correlation_id=correlation_id,
                msg_id=self._next_id(),
                with_nonce=self._signs,
            )
            return env.msg_id, data
        msg_id = self._host.next_id()
        return msg_id, encode_compact(mtype, kind, msg_id, correlation_id, self._identity, to, body)

    def _next_id(self) -> bytes:
        """A message id unique to this endpoint: a random prefix drawn once and a
        counter (ids only match replies to requests, and a reply is accepted only
        from the agent asked, so they need not be unpredictable; no system call
        per message, which on a busy event loop costs a trip through the GIL)."""
        self._id_counter += 1
        return self._id_prefix + self._id_counter.to_bytes(8, "big")

    async def _transmit(
        self, to: str, kind: str, data: bytes, via: Connection | None = None, wait: bool = True,
    ) -> Connection | None:
        conn = await self._host.route(self._identity, to, data, via, wait=wait)
        self._sent.add(kind, to, len(data))
        return conn

    async def _expire(self) -> None:
        """Fail the requests whose reply did not come in time (those sent without a
        wait: the others wait under a timeout of their own). Sleeps until the
        earliest deadline it knows (a request with an earlier one moves it); the
        pending requests are looked through only when it wakes, about once per
        request timeout under steady traffic."""
        while not self._closed:
            with trio.CancelScope(deadline=self._expiry_at) as scope:
                self._expiry_scope = scope
                await trio.sleep_forever()
            self._expiry_scope = None
            now = trio.current_time()
            soonest = math.inf
            for slot in list(self._pending.values()):
                if slot.deadline <= now:
                    slot.fail(_Expired())
                elif not slot.done:
                    soonest = min(soonest, slot.deadline)
            self._expiry_at = soonest

    async def _emit(self, subscriber: str, topic: str, body: Any) -> None:
        """Send one event of ``topic`` to ``subscriber`` (for the publisher side; one task per
        subscription sends its events one after the other, so they keep their order)."""
        if not self._signs:
            msg_id = self._host.next_id()
            sent = self._host.route_now_compact(self._identity, subscriber, _EVENT, topic, msg_id, body)
            if sent is not None:  # sent without a wait (with the names' aliases on its channel)
                self._sent.add(topic, subscriber, len(sent[1]))
                return
            data = encode_compact(_EVENT, topic, msg_id, None, self._identity, subscriber, body)
        else:
            _, data = self._make(MessageType.EVENT, topic, subscriber, body)
        await self._transmit(subscriber, topic, data)

    async def _reply(
        self, request: Envelope, conn: Connection | None, mtype: MessageType, body: Any
    ) -> None:
        data = self._reply_data(request, mtype, body)
        if not self._reply_now(request, conn, data):
            await self._send_reply(request, conn, data)

    def _reply_now(self, request: Envelope, conn: Connection | None, data: bytes) -> bool:
        """Send an encoded reply if that takes no wait (no coroutine); False: not sent."""
        if conn is not None and self._host.reply_now(self._identity, data, conn):
            self._sent.add(request.kind, request.sender, len(data))
            return True
        return False

    async def _send_reply(self, request: Envelope, conn: Connection | None, data: bytes) -> None:
        """Send an encoded reply, waiting where needed (when :meth:`_reply_now` could not)."""
        try:
            await self._transmit(request.sender, request.kind, data, via=conn, wait=False)
        except BusError as exc:
            log.info("bus: %s could not reply to %s: %s", self._identity, request.sender, exc)

    def _reply_data(self, request: Envelope, mtype: MessageType, body: Any) -> bytes:
        """The encoded reply (or error reply) to ``request``; an ``internal`` or ``too-large``
        error reply when the reply cannot be encoded or carried."""
        try:
            if type(request.msg_id) is int and not self._signs:  # compact: no detour
                data = encode_compact_reply(mtype, request.msg_id, body)
            else:
                data = self._full_reply(request, mtype, body)
        except EnvelopeError:
            log.warning("bus: %s: reply to %r cannot be encoded", self._identity, request.kind)
            data = self._full_reply(request, MessageType.ERROR, {"code": "internal", "message": "internal error"})
        if len(data) > self._max_frame:
            # A reply that cannot be carried becomes an error the requester receives,
            # not a silent timeout.
            log.warning("bus: %s: reply to %r is %d bytes, over the frame limit", self._identity, request.kind,
                        len(data))
            data = self._full_reply(
                request, MessageType.ERROR,
                {"code": "too-large", "message": f"the reply ({len(data)} bytes) exceeds the frame limit"},
            )
        return data

    def _full_reply(self, request: Envelope, mtype: MessageType, body: Any) -> bytes:
        return self._make(mtype, request.kind, request.sender, body, request.msg_id)[1]

    async def _error_reply(self, request: Envelope, conn: Connection | None, code: str, message: str) -> None:
        try:
            await self._reply(request, conn, MessageType.ERROR, {"code": code, "message": message})
        finally:
            self._error_replies -= 1

    # ------------------------------------------------------------ receiving

    def _reject(self, reason: str, env: Envelope, conn: Connection | None, detail: str) -> None:
        count = self._rejected[reason] = self._rejected[reason] + 1
        if logged_repeat(count):  # (a client repeats these at will: counted, logged now and then)
            where = conn.peer if conn is not None else "local"
            log.warning("bus: %s rejected %s from %r via %s: %s (%s #%d)", self._identity, env.type.name,
                        env.sender, where, detail, reason, count)
        if env.type == MessageType.REQUEST and self._error_replies < _MAX_ERROR_REPLIES_IN_FLIGHT:
            self._error_replies += 1
            self._host.spawn(self._error_reply, env, conn, reason, detail)

    async def _receive(self, env: Envelope, size: int, conn: Connection | None) -> None:
        """Verify and dispatch one decoded envelope. Never raises BusError."""
        if self._closed:
            return
        if not env.recipient:  # a compact reply: it names no recipient (nor a sender, unless from this node)
            self._compact_reply(env, size, conn)
            return
        if conn is None:  # from an agent of this node: authentic, no crypto; still one we know
            if env.recipient != self._identity:
                self._reject("misaddressed", env, conn, f"addressed to {env.recipient!r}")
                return
            try:
                known = self._directory(env.sender) is not None
            except Exception:
                known = False
            if not known:
                self._reject("unknown-sender", env, conn, f"no public key registered for {env.sender!r}")
                return
        elif isinstance(conn, ChannelConnection):
            # the channel authenticated every frame and stops replays; the sender
            # must be an agent the other side proved under the key we know
            if env.recipient != self._identity:
                self._reject("misaddressed", env, conn, f"addressed to {env.recipient!r}")
                return
            try:
                key = self._directory(env.sender)
            except Exception:
                key = None
            reason = conn.channel.claim_ok(env.sender, key, self._verifier)
            if reason is not None:
                self._reject(reason, env, conn, f"{env.sender!r} is not proved on this channel")
                return
        else:
            try:
                verify_envelope(
                    env,
                    recipient=self._identity,
                    directory=self._directory,
                    verifier=self._verifier,
                    now_ms=self._host.now_ms(),
                    skew_ms=self._skew_ms,
                    replay_guard=self._replay,
                )
            except EnvelopeError as exc:
                self._reject(exc.reason, env, conn, exc.message)
                return
        sender = env.sender
        if conn is not None:
            self._host.note_path(sender, conn)
        mtype = env.type
        if mtype in _REPLY_TYPES:
            slot = self._pending.get(env.correlation_id)  # type: ignore[arg-type]
            if slot is None or slot.to != sender or slot.done:
                self._reject("unexpected-reply", env, conn, "reply matches no pending request")
                return
            self._received.add(slot.kind, sender, size)
            slot.finish(env)
            return
        self._received.add(env.kind, sender, size)
        if mtype == _EVENT:
            if not self._subscriptions.on_event(sender, env.kind, env.body):
                self._rejected["unexpected-event"] += 1
            return
        if mtype == _REQUEST:
            fast = self._fast.get(env.kind) if self._fast else None
            if fast is not None and self._take_slots(env):
                deferred = await self._fast_request(fast, env, conn)
                if deferred is None:
                    return
                nursery = self._handler_nursery
                if nursery is not None:  # deferred: to the handler on a worker, with its slots
                    self._run_request(nursery, env, conn, deferred.carry)
                    return
                self._free_slots(env)  # (before _dispatch started: the inbox path below)
            elif env.kind in self._quick and self._take_slots(env):
                self._quick_runs += 1
                await self._handle_request(env, conn)  # no task switch: answered from here
                return
            if self._start_now(env, conn):
                return
        try:
            if mtype == MessageType.REQUEST and conn is not None:
                # A connection's reader never waits on one endpoint: a request that
                # finds the inbox full is refused at once.
                try:
                    self._inbox_send.send_nowait((env, conn))
                    self._inbox_queued += 1
                except trio.WouldBlock:
                    self._busy(env, conn)
                return
            await self._inbox_send.send((env, conn))
            self._inbox_queued += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def _compact_reply(self, env: Envelope, size: int, conn: Connection | None) -> None:
        """Accept a compact reply (or error reply) for the pending request it names only
        if it came the way that request went: on the very channel the request left on
        (whose other side proved the agent asked, checked again as for any envelope on
        a channel), or, for a request delivered on this node, from the agent asked (the
        node names the hosted agent that sent it). Its sender is then the agent asked.
        A reply from anywhere else (another connection, a co-hosted agent, the node for
        a request that went to a connection or is still connecting: its connection not
        known yet) answers nothing."""
        slot = self._pending.get(env.correlation_id)  # type: ignore[arg-type]
        if slot is None or slot.done:
            self._reject("unexpected-reply", env, conn, "reply matches no pending request")
            return
        to = slot.to
        if conn is None:
            if not slot.local or env.sender != to:
                self._reject("unexpected-reply", env, conn, f"a reply from {env.sender!r} on this node, "
                                                            f"not from {to!r} the way the request went")
                return
        else:
            if slot.conn is not conn or not isinstance(conn, ChannelConnection):
                self._reject("unexpected-reply", env, conn, "reply on another connection than its request")
                return
            try:
                key = self._directory(to)
            except Exception:
                key = None
            reason = conn.channel.claim_ok(to, key, self._verifier)
            if reason is not None:
                self._reject(reason, env, conn, f"{to!r} is not proved on this channel")
                return
            self._host.note_path(to, conn)
        self._received.add(slot.kind, to, size)
        slot.finish(env)

    def _holds(self, conn: Connection) -> bool:
        return (
            any(slot.conn is conn for slot in self._pending.values())
            or self._topics.holds(conn)
            or self._subscriptions.holds(conn)
        )

    def _connection_lost(self, conn: Connection) -> None:
        for slot in self._pending.values():
            if slot.conn is conn:
                slot.fail(BrokenError(f"connection {conn.peer} broke before the reply"))
        self._subscriptions.connection_lost(conn)
        self._topics.connection_lost(conn)

    # ------------------------------------------------------------ handlers

    def _start_now(self, env: Envelope, conn: Connection | None) -> bool:
        """Start a request's handler at once when nothing waits in the inbox ahead
        of it and it gets a slot without waiting (one task hop less than going
        through the inbox); False: take the inbox path."""
        nursery = self._handler_nursery
        if nursery is None or self._inbox_queued or not self._take_slots(env):
            return False
        self._run_request(nursery, env, conn)
        return True

    def _take_slots(self, env: Envelope) -> bool:
        """Take a request's slots (one of the endpoint's, one of its sender's) if both
        are free now; False: nothing taken."""
        sender = env.sender
        held = self._in_flight.get(sender, 0)
        if held >= self._max_per_sender:
            return False
        if self._free <= 0:  # (0 also while _dispatch waits: a freed slot is handed to it)
            return False
        self._free -= 1
        self._in_flight[sender] = held + 1
        return True

    def _run_request(self, nursery: trio.Nursery, env: Envelope, conn: Connection | None,
                     carried: Any = None) -> None:
        """Run a request that holds its slots: on a parked worker, else on a new one
        (``carried``: what a deferring fast handler handed on, for the handler's message)."""
        if self._idle_workers:
            worker = self._idle_workers.pop()
            worker.work = (env, conn, carried)
            trio.lowlevel.reschedule(worker.task)  # type: ignore[arg-type]
        else:
            nursery.start_soon(self._work, _Worker(), env, conn, carried)

    async def _work(self, worker: _Worker, env: Envelope, conn: Connection | None, carried: Any) -> None:
        """A request worker: handle, then park for the next request while fewer than
        :data:`_IDLE_WORKERS` others are parked (each handler runs on a worker of its
        own: a slow one holds no other request)."""
        worker.task = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:  # cancelled while parked (the endpoint closes)
            if worker in self._idle_workers:
                self._idle_workers.remove(worker)
            return trio.lowlevel.Abort.SUCCEEDED

        while True:
            await self._handle_request(env, conn, carried)
            if self._closed or len(self._idle_workers) >= _IDLE_WORKERS:
                return
            self._idle_workers.append(worker)
            await trio.lowlevel.wait_task_rescheduled(abort)
            if worker.work is None:  # woken by aclose
                return
            (env, conn, carried), worker.work = worker.work, None

    async def _dispatch(self) -> None:
        """Run handlers: requests concurrently (bounded), sends in order."""
        async with trio.open_nursery() as nursery:
            self._handler_nursery = nursery
            async for env, conn in self._inbox_recv:
                self._inbox_queued -= 1
                if env.type == MessageType.REQUEST:
                    held = self._in_flight.get(env.sender, 0)
                    if held >= self._max_per_sender:
                        self._busy(env, conn)
                        continue
                    self._in_flight[env.sender] = held + 1
                    await self._acquire_slot()
                    self._run_request(nursery, env, conn)
                else:
                    await self._handle_send(env, conn)

    async def _acquire_slot(self) -> None:
        """Take a slot for the dispatcher (the only task that waits for one), as a
        Semaphore's acquire does: a checkpoint either way (handlers that are done
        free their slots meanwhile), else parked until :meth:`_free_slots` hands it
        the next freed slot (never taken by a request arriving meanwhile: a queued
        request is not overtaken)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._free > 0:
            self._free -= 1
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        self._slot_waiter = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:  # cancelled (the endpoint closes): no slot taken
            self._slot_waiter = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def _free_slots(self, env: Envelope) -> None:
        waiter = self._slot_waiter
        if waiter is None:
            self._free += 1
        else:  # the dispatcher waits for a slot: this one is its
            self._slot_waiter = None
            trio.lowlevel.reschedule(waiter)
        held = self._in_flight[env.sender] - 1
        if held:
            self._in_flight[env.sender] = held
        else:
            del self._in_flight[env.sender]

    async def _handle_request(self, env: Envelope, conn: Connection | None, carried: Any = None) -> None:
        """Run the request's handler (the request holds its slots) and send the reply
        (``carried``: see :meth:`_run_request`)."""
        try:  # (the handler is run here, not in a coroutine of its own)
            handler = self._serve_subscribe if env.kind == SUBSCRIBE else self._handlers.get(env.kind)
            if handler is None:
                self._rejected["unknown-kind"] += 1
                mtype, body = MessageType.ERROR, {
                    "code": "unknown-kind",
                    "message": f"{self._identity!r} has no handler for {env.kind!r}",
                }
            else:
                try:
                    mtype, body = _REPLY, await handler(self._message(env, carried))
                except Exception as exc:
                    code, message = _error_code(exc)
                    if code == "internal":
                        log.error("bus: %s: handler for %r failed", self._identity, env.kind, exc_info=True)
                    mtype, body = MessageType.ERROR, {"code": code, "message": message}
        finally:
            # the slots are freed before the reply is sent: sending never holds them
            self._free_slots(env)
        data = self._reply_data(env, mtype, body)  # (_reply, with no coroutine when it goes at once)
        if not self._reply_now(env, conn, data):
            await self._send_reply(env, conn, data)

    async def _fast_request(self, fast: FastHandler, env: Envelope, conn: Connection | None) -> _Defer | None:
        """Run a request's fast handler (it holds its slots): answered (None, slots freed),
        or deferred (what it returned, DEFER or ``defer(carry)``: slots still held)."""
        try:
            body = fast(self._message(env))
        except Exception as exc:
            code, message = _error_code(exc)
            if code == "internal":
                log.error("bus: %s: fast handler for %r failed", self._identity, env.kind, exc_info=True)
            mtype, body = MessageType.ERROR, {"code": code, "message": message}
        else:
            if type(body) is _Defer:
                self.fast_deferred += 1
                return body
            mtype = MessageType.REPLY
        self.fast_runs += 1
        self._free_slots(env)
        await self._reply(env, conn, mtype, body)
        return None

    def _busy(self, env: Envelope, conn: Connection | None) -> None:
        """Refuse a request at once: its sender has too many in flight here, or it came
        on a connection and the inbox is full."""
        self._rejected["busy"] += 1
        if self._error_replies < _MAX_ERROR_REPLIES_IN_FLIGHT:
            self._error_replies += 1
            self._host.spawn(self._busy_reply, env, conn)

    async def _busy_reply(self, request: Envelope, conn: Connection | None) -> None:
        try:
            await self._reply(request, conn, MessageType.ERROR,
                              {"code": "busy", "message": "too many requests in flight; retry later"})
        finally:
            self._error_replies -= 1

    async def _serve_subscribe(self, msg: Message) -> None:
        self._topics.subscribe(msg.sender, msg.body)

    async def _handle_send(self, env: Envelope, conn: Connection | None) -> None:
        if env.kind == UNSUBSCRIBE:
            self._topics.unsubscribe(env.sender, env.body)
            return
        if env.kind == DROPPED:
            self._subscriptions.on_dropped(env.sender, env.body)
            return
        handler = self._handlers.get(env.kind)
        if handler is None:
            count = self._rejected["unknown-kind"] = self._rejected["unknown-kind"] + 1
            if logged_repeat(count):  # (a sender repeats it at will: counted, logged now and then)
                log.warning("bus: %s has no handler for %r (from %r; unknown-kind #%d)", self._identity, env.kind,
                            env.sender, count)
            return
        try:
            await handler(self._message(env))
        except Exception:
            log.error("bus: %s: handler for %r failed", self._identity, env.kind, exc_info=True)

    def _message(self, env: Envelope, carried: Any = None) -> Message:
        return _new_message(env.sender, env.kind, env.body, env.msg_id, env.timestamp or self._now_ms(), env.type,
                            carried)
