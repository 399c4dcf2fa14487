"""Nodes and endpoints: routing, request/reply, fire-and-forget, pub/sub.

A :class:`Node` is the I/O host of one process (or one part of it): it owns the
listeners, the outgoing connections, the static routing table (agent id ->
address) and any number of :class:`Endpoint` objects, one per agent identity.
Envelopes between endpoints of the same node are delivered in memory (the
in-memory hub); others travel over a transport chosen by address scheme.

Routing an envelope to agent ``R``, in order: a local endpoint ``R``; else the
live connection on which a verified envelope from ``R`` last arrived (so
replies and events reach clients that have no listener); else the address of
``R`` in the routing table (a pooled connection, reconnected with capped
exponential backoff); else :class:`UnreachableError`.

Every incoming envelope is verified by the recipient endpoint (addressing,
timestamp window, signature against the directory's key, replay) before any
handler sees it. A frame that does not decode closes its connection; a
rejected envelope is logged and counted, and answered with an error reply when
it was a request.
"""

from __future__ import annotations

__all__ = ["Node", "open_node", "Endpoint", "Message", "Event", "Subscription", "Handler"]

import contextlib
import dataclasses
import logging
import math
import secrets
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

import trio

from ._stats import EndpointStatistics, NodeStatistics, _Counter
from .envelope import (
    MAX_KIND_LENGTH,
    Directory,
    Envelope,
    EnvelopeError,
    MessageType,
    ReplayGuard,
    Signer,
    Verifier,
    decode_envelope,
    verify_envelope,
    _packb,
)
from .errors import (
    BrokenError,
    BusError,
    ClosedError,
    FrameError,
    RemoteError,
    RequestTimeout,
    SubscriptionLagged,
    UnreachableError,
)
from .framing import DEFAULT_MAX_FRAME_SIZE
from .transport import Address, Connection, TcpTransport, Transport, parse_address

log = logging.getLogger("bus")

_RESERVED_PREFIX = "bus."
_SUBSCRIBE = "bus.subscribe"
_UNSUBSCRIBE = "bus.unsubscribe"
_DROPPED = "bus.dropped"
_MAX_ERROR_REPLIES_IN_FLIGHT = 64
_MAX_ERROR_MESSAGE = 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """What a handler receives: a verified envelope's meaning."""

    sender: str
    kind: str
    body: Any
    msg_id: bytes
    timestamp: int
    type: MessageType


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One published item as a subscriber receives it."""

    publisher: str
    topic: str
    seq: int
    body: Any


Handler = Callable[[Message], Awaitable[Any]]


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


class _Pending:
    __slots__ = ("to", "kind", "done", "envelope", "error", "conn")

    def __init__(self, to: str, kind: str):
        self.to = to
        self.kind = kind
        self.done = trio.Event()
        self.envelope: Envelope | None = None
        self.error: BusError | None = None
        self.conn: Connection | None = None

    def fail(self, error: BusError) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


class _Lag:
    __slots__ = ("missed",)

    def __init__(self, missed: int):
        self.missed = missed


class Subscription:
    """A bounded stream of a publisher's events on one topic.

    ``receive()`` returns the next :class:`Event`. When the subscriber fell
    behind (its buffer was full, or the publisher's sequence skipped), it raises
    :class:`SubscriptionLagged` once, at the place of the gap, and goes on.
    When the publisher dropped this subscriber, or the connection to it broke,
    it raises :class:`BrokenError` after the buffered events; after
    :meth:`aclose`, :class:`ClosedError` (``async for`` just stops).
    """

    def __init__(self, endpoint: Endpoint, publisher: str, topic: str, buffer: int):
        self._endpoint = endpoint
        self.publisher = publisher
        self.topic = topic
        self._buffer = buffer
        self._items: deque[Event | _Lag] = deque()
        self._count = 0
        self._next_seq = 0
        self._closed = False
        self._broken: str | None = None
        self._lot = trio.lowlevel.ParkingLot()
        self.conn: Connection | None = None
        self.lagged = 0

    def _mark_lag(self, missed: int) -> None:
        self.lagged += missed
        if self._items and isinstance(self._items[-1], _Lag):
            self._items[-1].missed += missed
        else:
            self._items.append(_Lag(missed))

    def _push(self, seq: int, body: Any) -> None:
        if self._closed or self._broken or seq < self._next_seq:
            return
        if seq > self._next_seq:
            self._mark_lag(seq - self._next_seq)
        self._next_seq = seq + 1
        if self._count >= self._buffer:
            self._mark_lag(1)
        else:
            self._items.append(Event(self.publisher, self.topic, seq, body))
            self._count += 1
        self._lot.unpark_all()

    def _break(self, reason: str) -> None:
        if not self._closed and not self._broken:
            self._broken = reason
            self._lot.unpark_all()

    async def receive(self) -> Event:
        await trio.lowlevel.checkpoint()
        while True:
            if self._closed:
                raise ClosedError("subscription closed")
            if self._items:
                item = self._items.popleft()
                if isinstance(item, _Lag):
                    raise SubscriptionLagged(item.missed)
                self._count -= 1
                return item
            if self._broken:
                raise BrokenError(f"subscription to {self.topic!r} at {self.publisher!r}: {self._broken}")
            await self._lot.park()

    def receive_nowait(self) -> Event:
        """Like :meth:`receive`, but raise ``trio.WouldBlock`` when empty."""
        if self._closed:
            raise ClosedError("subscription closed")
        if not self._items:
            if self._broken:
                raise BrokenError(f"subscription to {self.topic!r} at {self.publisher!r}: {self._broken}")
            raise trio.WouldBlock
        item = self._items.popleft()
        if isinstance(item, _Lag):
            raise SubscriptionLagged(item.missed)
        self._count -= 1
        return item

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.receive()
        except ClosedError:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop receiving and tell the publisher (best effort)."""
        if self._closed:
            return
        was_live = self._broken is None
        self._closed = True
        self._items.clear()
        self._lot.unpark_all()
        self._endpoint._subscriptions.pop((self.publisher, self.topic), None)
        if was_live and not self._endpoint._closed:
            with trio.move_on_after(1) as scope:
                scope.shield = True
                try:
                    await self._endpoint.send(self.publisher, _UNSUBSCRIBE, {"topic": self.topic})
                except BusError:
                    pass


class _Outbox:
    __slots__ = ("send", "receive", "seq", "drop_reason", "cancelled")

    def __init__(self, size: int):
        self.send, self.receive = trio.open_memory_channel[tuple[int, Any]](size)
        self.seq = 0
        self.drop_reason: str | None = None
        self.cancelled = False


class Endpoint:
    """One agent's presence on the bus: identity, keys, handlers, statistics.

    Create with :meth:`Node.endpoint`. Requests are handled concurrently (up
    to ``max_concurrent``); fire-and-forget messages are handled one at a time
    in arrival order. Handlers return the reply body; to answer with a typed
    error raise :class:`HandlerError` (or any exception with a string
    ``remote_code``/``code``); other exceptions become ``internal`` errors.
    """

    def __init__(
        self,
        node: Node,
        identity: str,
        *,
        signer: Signer,
        directory: Directory,
        verifier: Verifier,
        skew: float = 30.0,
        inbox_size: int = 256,
        max_concurrent: int = 64,
        max_pending: int = 4096,
        max_subscribers: int = 1024,
        subscriber_queue: int = 128,
        replay_max_entries: int = 1_000_000,
    ):
        if not isinstance(identity, str) or not identity:
            raise BusError("endpoint identity must be a non-empty str")
        self._node = node
        self._identity = identity
        self._signer = signer
        self._directory = directory
        self._verifier = verifier
        self._skew_ms = int(skew * 1000)
        self._replay = ReplayGuard(self._skew_ms, replay_max_entries)
        self._handlers: dict[str, Handler] = {}
        self._inbox_send, self._inbox_recv = trio.open_memory_channel[
            tuple[Envelope, Connection | None]
        ](inbox_size)
        self._concurrency = trio.Semaphore(max_concurrent)
        self._max_pending = max_pending
        self._pending: dict[bytes, _Pending] = {}
        self._max_subscribers = max_subscribers
        self._subscriber_queue = subscriber_queue
        self._topics: dict[str, dict[str, _Outbox]] = {}
        self._subscriptions: dict[tuple[str, str], Subscription] = {}
        self._sent_kind = _Counter()
        self._sent_peer = _Counter()
        self._recv_kind = _Counter()
        self._recv_peer = _Counter()
        self._rejected: Counter[str] = Counter()
        self._error_replies = 0
        self._closed = False

    # ------------------------------------------------------------ public API

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def node(self) -> Node:
        return self._node

    def register(self, kind: str, handler: Handler) -> None:
        """Handle messages of ``kind`` with ``async handler(message) -> reply``."""
        if not isinstance(kind, str) or not 0 < len(kind) <= MAX_KIND_LENGTH:
            raise BusError(f"kind must be a non-empty str of at most {MAX_KIND_LENGTH} chars")
        if kind.startswith(_RESERVED_PREFIX):
            raise BusError(f"kinds starting with {_RESERVED_PREFIX!r} are reserved for the bus")
        if kind in self._handlers:
            raise BusError(f"a handler for {kind!r} is already registered")
        self._handlers[kind] = handler

    def unregister(self, kind: str) -> None:
        self._handlers.pop(kind, None)

    async def request(self, to: str, kind: str, body: Any, *, timeout: float | None = 30.0) -> Any:
        """Send a request and return the reply body.

        Raises :class:`RemoteError` for an error reply, :class:`RequestTimeout`
        when no reply arrives in ``timeout`` seconds (connecting included),
        :class:`BrokenError` if the connection carrying it broke first,
        :class:`UnreachableError` when there is no route.
        """
        self._check_open()
        if len(self._pending) >= self._max_pending:
            raise BusError(f"too many pending requests ({self._max_pending})")
        env, data = self._make(MessageType.REQUEST, kind, to, body)
        slot = _Pending(to, kind)
        self._pending[env.msg_id] = slot
        try:
            with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
                slot.conn = await self._transmit(env, data)
                if slot.conn is not None and slot.conn not in self._node._live:
                    slot.fail(BrokenError(f"connection to {to!r} broke before the reply"))
                await slot.done.wait()
        finally:
            del self._pending[env.msg_id]
        if scope.cancelled_caught and not slot.done.is_set():
            raise RequestTimeout(f"no reply from {to!r} to {kind!r} within {timeout} s")
        if slot.error is not None:
            raise slot.error
        reply = slot.envelope
        assert reply is not None
        if reply.type == MessageType.ERROR:
            raise RemoteError(reply.body["code"], reply.body["message"], reply.sender)
        return reply.body

    async def send(self, to: str, kind: str, body: Any) -> None:
        """Fire-and-forget: returns once the message is handed to the route."""
        self._check_open()
        env, data = self._make(MessageType.SEND, kind, to, body)
        await self._transmit(env, data)

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
        queued = 0
        for subscriber, outbox in list(self._topics.get(topic, {}).items()):
            try:
                outbox.send.send_nowait((outbox.seq, body))
            except trio.WouldBlock:
                log.warning("bus: %s drops lagging subscriber %s of %r", self._identity, subscriber, topic)
                self._drop_subscriber(topic, subscriber, "lagged")
                continue
            outbox.seq += 1
            queued += 1
        return queued

    async def subscribe(
        self, publisher: str, topic: str, *, buffer: int = 64, timeout: float = 30.0
    ) -> Subscription:
        """Subscribe to ``topic`` at ``publisher``; events buffer up to ``buffer``."""
        self._check_open()
        if buffer < 1:
            raise BusError("subscription buffer must be at least 1")
        key = (publisher, topic)
        if key in self._subscriptions:
            raise BusError(f"already subscribed to {topic!r} at {publisher!r}")
        sub = Subscription(self, publisher, topic, buffer)
        self._subscriptions[key] = sub
        try:
            await self.request(publisher, _SUBSCRIBE, {"topic": topic}, timeout=timeout)
        except BaseException:
            self._subscriptions.pop(key, None)
            raise
        sub.conn = self._node._paths.get(publisher)
        return sub

    def statistics(self) -> EndpointStatistics:
        return EndpointStatistics(
            identity=self._identity,
            sent_by_kind=self._sent_kind.snapshot(),
            received_by_kind=self._recv_kind.snapshot(),
            sent_by_peer=self._sent_peer.snapshot(),
            received_by_peer=self._recv_peer.snapshot(),
            rejected=MappingProxyType(dict(self._rejected)),
            pending_requests=len(self._pending),
            inbox=self._inbox_send.statistics().current_buffer_used,
            subscribers=sum(len(s) for s in self._topics.values()),
            subscriptions=len(self._subscriptions),
        )

    async def aclose(self) -> None:
        """Detach from the node; pending requests fail with ClosedError."""
        if self._closed:
            return
        self._closed = True
        self._node._endpoints.pop(self._identity, None)
        for slot in self._pending.values():
            slot.fail(ClosedError("endpoint closed"))
        for topic in list(self._topics):
            for subscriber in list(self._topics.get(topic, {})):
                self._drop_subscriber(topic, subscriber, None)
        for sub in list(self._subscriptions.values()):
            sub._closed = True
            sub._lot.unpark_all()
        self._subscriptions.clear()
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
        correlation_id: bytes | None = None,
    ) -> tuple[Envelope, bytes]:
        return Envelope.create_encoded(
            type=mtype,
            kind=kind,
            sender=self._identity,
            recipient=to,
            body=body,
            timestamp=self._node._now_ms(),
            signer=self._signer,
            correlation_id=correlation_id,
        )

    async def _transmit(
        self, env: Envelope, data: bytes, via: Connection | None = None, count_as: str | None = None
    ) -> Connection | None:
        conn = await self._node._route(env.recipient, data, via)
        kind = count_as or env.kind
        self._sent_kind.add(kind, len(data))
        self._sent_peer.add(env.recipient, len(data))
        return conn

    async def _reply(
        self, request: Envelope, conn: Connection | None, mtype: MessageType, body: Any
    ) -> None:
        try:
            env, data = self._make(mtype, request.kind, request.sender, body, request.msg_id)
        except EnvelopeError:
            log.warning("bus: %s: reply to %r cannot be encoded", self._identity, request.kind)
            env, data = self._make(
                MessageType.ERROR,
                request.kind,
                request.sender,
                {"code": "internal", "message": "internal error"},
                request.msg_id,
            )
        if len(data) > self._node._max_frame_size:
            # A reply that cannot be carried becomes an error the requester receives,
            # not a silent timeout.
            log.warning("bus: %s: reply to %r is %d bytes, over the frame limit", self._identity, request.kind,
                        len(data))
            env, data = self._make(
                MessageType.ERROR,
                request.kind,
                request.sender,
                {"code": "too-large", "message": f"the reply ({len(data)} bytes) exceeds the frame limit"},
                request.msg_id,
            )
        try:
            await self._transmit(env, data, via=conn)
        except BusError as exc:
            log.info("bus: %s could not reply to %s: %s", self._identity, request.sender, exc)

    async def _error_reply(self, request: Envelope, conn: Connection | None, code: str, message: str) -> None:
        try:
            await self._reply(request, conn, MessageType.ERROR, {"code": code, "message": message})
        finally:
            self._error_replies -= 1

    # ------------------------------------------------------------ receiving

    def _reject(self, reason: str, env: Envelope, conn: Connection | None, detail: str) -> None:
        self._rejected[reason] += 1
        where = conn.peer if conn is not None else "local"
        log.warning("bus: %s rejected %s from %r via %s: %s", self._identity, env.type.name, env.sender, where, detail)
        if env.type == MessageType.REQUEST and self._error_replies < _MAX_ERROR_REPLIES_IN_FLIGHT:
            self._error_replies += 1
            self._node._nursery.start_soon(self._error_reply, env, conn, reason, detail)

    async def _receive(self, env: Envelope, size: int, conn: Connection | None) -> None:
        """Verify and dispatch one decoded envelope. Never raises BusError."""
        if self._closed:
            return
        try:
            verify_envelope(
                env,
                recipient=self._identity,
                directory=self._directory,
                verifier=self._verifier,
                now_ms=self._node._now_ms(),
                skew_ms=self._skew_ms,
                replay_guard=self._replay,
            )
        except EnvelopeError as exc:
            self._reject(exc.reason, env, conn, exc.message)
            return
        if conn is not None:
            self._node._note_path(env.sender, conn)
        mtype = env.type
        if mtype in (MessageType.REPLY, MessageType.ERROR):
            slot = self._pending.get(env.correlation_id)  # type: ignore[arg-type]
            if slot is None or slot.to != env.sender or slot.done.is_set():
                self._reject("unexpected-reply", env, conn, "reply matches no pending request")
                return
            self._count_received(slot.kind, env.sender, size)
            slot.envelope = env
            slot.done.set()
            return
        self._count_received(env.kind, env.sender, size)
        if mtype == MessageType.EVENT:
            self._on_event(env, conn)
            return
        try:
            await self._inbox_send.send((env, conn))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def _count_received(self, kind: str, peer: str, size: int) -> None:
        self._recv_kind.add(kind, size)
        self._recv_peer.add(peer, size)

    def _on_event(self, env: Envelope, conn: Connection | None) -> None:
        sub = self._subscriptions.get((env.sender, env.kind))
        body = env.body
        if (
            sub is None
            or type(body) is not dict
            or type(body.get("seq")) is not int
            or body["seq"] < 0
            or "data" not in body
        ):
            self._rejected["unexpected-event"] += 1
            return
        sub._push(body["seq"], body["data"])

    async def _dispatch(self) -> None:
        """Run handlers: requests concurrently (bounded), sends in order."""
        async with trio.open_nursery() as nursery:
            async for env, conn in self._inbox_recv:
                if env.type == MessageType.REQUEST:
                    await self._concurrency.acquire()
                    nursery.start_soon(self._handle_request, env, conn)
                else:
                    await self._handle_send(env, conn)

    async def _handle_request(self, env: Envelope, conn: Connection | None) -> None:
        try:
            if env.kind == _SUBSCRIBE:
                mtype, body = self._on_subscribe(env)
            else:
                handler = self._handlers.get(env.kind)
                if handler is None:
                    self._rejected["unknown-kind"] += 1
                    mtype, body = MessageType.ERROR, {
                        "code": "unknown-kind",
                        "message": f"{self._identity!r} has no handler for {env.kind!r}",
                    }
                else:
                    try:
                        result = await handler(self._message(env))
                        mtype, body = MessageType.REPLY, result
                    except Exception as exc:
                        code, message = _error_code(exc)
                        if code == "internal":
                            log.error(
                                "bus: %s: handler for %r failed", self._identity, env.kind, exc_info=True
                            )
                        mtype, body = MessageType.ERROR, {"code": code, "message": message}
            await self._reply(env, conn, mtype, body)
        finally:
            self._concurrency.release()

    async def _handle_send(self, env: Envelope, conn: Connection | None) -> None:
        if env.kind == _UNSUBSCRIBE:
            topic = env.body.get("topic") if type(env.body) is dict else None
            if isinstance(topic, str) and env.sender in self._topics.get(topic, {}):
                self._drop_subscriber(topic, env.sender, None)
            return
        if env.kind == _DROPPED:
            topic = env.body.get("topic") if type(env.body) is dict else None
            sub = self._subscriptions.get((env.sender, topic)) if isinstance(topic, str) else None
            if sub is not None:
                reason = env.body.get("reason")
                sub._break(f"dropped by the publisher ({reason if isinstance(reason, str) else '?'})")
            return
        handler = self._handlers.get(env.kind)
        if handler is None:
            self._rejected["unknown-kind"] += 1
            log.warning("bus: %s has no handler for %r (from %r)", self._identity, env.kind, env.sender)
            return
        try:
            await handler(self._message(env))
        except Exception:
            log.error("bus: %s: handler for %r failed", self._identity, env.kind, exc_info=True)

    @staticmethod
    def _message(env: Envelope) -> Message:
        return Message(env.sender, env.kind, env.body, env.msg_id, env.timestamp, env.type)

    # ------------------------------------------------------------ pub/sub (publisher side)

    def _on_subscribe(self, env: Envelope) -> tuple[MessageType, Any]:
        topic = env.body.get("topic") if type(env.body) is dict else None
        if not isinstance(topic, str) or not 0 < len(topic) <= MAX_KIND_LENGTH:
            return MessageType.ERROR, {"code": "bad-request", "message": "subscribe needs a topic"}
        if env.sender in self._topics.get(topic, {}):
            # a re-subscription (say, from a restarted subscriber) replaces the old one
            self._drop_subscriber(topic, env.sender, None)
        total = sum(len(s) for s in self._topics.values())
        if total >= self._max_subscribers:
            return MessageType.ERROR, {"code": "overloaded", "message": "too many subscribers"}
        outbox = _Outbox(self._subscriber_queue)
        # looked up after the drop, which deletes a topic left without subscribers
        self._topics.setdefault(topic, {})[env.sender] = outbox
        self._node._nursery.start_soon(self._outbox_loop, topic, env.sender, outbox)
        return MessageType.REPLY, None

    def _drop_subscriber(self, topic: str, subscriber: str, reason: str | None) -> None:
        subscribers = self._topics.get(topic)
        if not subscribers:
            return
        outbox = subscribers.pop(subscriber, None)
        if not subscribers:
            del self._topics[topic]
        if outbox is None:
            return
        if reason is None:
            outbox.cancelled = True
        outbox.drop_reason = reason
        outbox.send.close()

    async def _outbox_loop(self, topic: str, subscriber: str, outbox: _Outbox) -> None:
        async with outbox.receive:
            async for seq, body in outbox.receive:
                if outbox.cancelled or self._closed:
                    return
                try:
                    env, data = self._make(
                        MessageType.EVENT, topic, subscriber, {"seq": seq, "data": body}
                    )
                    await self._transmit(env, data)
                except BusError as exc:
                    log.info("bus: %s drops subscriber %s of %r: %s", self._identity, subscriber, topic, exc)
                    self._drop_subscriber(topic, subscriber, None)
                    return
            if outbox.drop_reason is not None and not self._closed:
                with contextlib.suppress(BusError):
                    await self.send(subscriber, _DROPPED, {"topic": topic, "reason": outbox.drop_reason})

    # ------------------------------------------------------------ connection events

    def _connection_lost(self, conn: Connection) -> None:
        for slot in self._pending.values():
            if slot.conn is conn:
                slot.fail(BrokenError(f"connection {conn.peer} broke before the reply"))
        for sub in self._subscriptions.values():
            if sub.conn is conn:
                sub._break(f"connection {conn.peer} to the publisher broke")


class _Link:
    __slots__ = ("address", "conn", "lock", "failed_at")

    def __init__(self, address: Address):
        self.address = address
        self.conn: Connection | None = None
        self.lock = trio.Lock()
        self.failed_at = -math.inf  # when the last connect loop gave up (trio time)


class Node:
    """Hosts endpoints, listeners and connections. Create with :func:`open_node`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        routes: Mapping[str, str] | None = None,
        transports: Mapping[str, Transport] | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_connections: int = 1024,
        connect_attempts: int = 6,
        backoff_base: float = 0.05,
        backoff_cap: float = 2.0,
        clock: Callable[[], float] = time.time,
    ):
        self._nursery = nursery
        self._max_frame_size = max_frame_size
        self._transports: dict[str, Transport] = {"tcp": TcpTransport(max_frame_size=max_frame_size)}
        if transports:
            self._transports.update(transports)
        self._routes: dict[str, Address] = {}
        for agent, address in (routes or {}).items():
            self.add_route(agent, address)
        self._max_connections = max_connections
        self._connect_attempts = max(1, connect_attempts)
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._clock = clock
        self._endpoints: dict[str, Endpoint] = {}
        self._paths: dict[str, Connection] = {}
        self._links: dict[Address, _Link] = {}
        self._live: set[Connection] = set()
        self._incoming: set[Connection] = set()
        self._listeners: list[Callable[[], Awaitable[None]]] = []
        self._frames_received = 0
        self._bytes_received = 0
        self._rejected: Counter[str] = Counter()
        self._broken = 0
        self._refused = 0
        self._closed = False

    def _now_ms(self) -> int:
        return math.floor(self._clock() * 1000)

    # ------------------------------------------------------------ public API

    def add_route(self, agent: str, address: str) -> None:
        """Route envelopes for ``agent`` to ``address`` (``tcp://h:p``, ``mem://n``)."""
        parsed = parse_address(address)
        if parsed.scheme not in self._transports:
            raise BusError(f"no transport for {parsed.scheme!r} addresses")
        self._routes[agent] = parsed

    def endpoint(
        self,
        identity: str,
        *,
        signer: Signer,
        directory: Directory,
        verifier: Verifier,
        **options: Any,
    ) -> Endpoint:
        """Create and attach the endpoint of agent ``identity`` (see Endpoint)."""
        if self._closed:
            raise ClosedError("node is closed")
        if identity in self._endpoints:
            raise BusError(f"an endpoint {identity!r} already exists on this node")
        ep = Endpoint(self, identity, signer=signer, directory=directory, verifier=verifier, **options)
        self._endpoints[identity] = ep
        self._nursery.start_soon(ep._dispatch)
        return ep

    async def listen(self, address: str) -> str:
        """Accept connections at ``address``; return the bound address (the
        actual port when ``tcp://host:0`` was asked)."""
        if self._closed:
            raise ClosedError("node is closed")
        parsed = parse_address(address)
        transport = self._transports.get(parsed.scheme)
        if transport is None:
            raise BusError(f"no transport for {parsed.scheme!r} addresses")
        bound, close = await transport.serve(parsed, self._accept, self._nursery)
        self._listeners.append(close)
        return str(bound)

    def statistics(self) -> NodeStatistics:
        outgoing = sum(1 for link in self._links.values() if link.conn is not None)
        return NodeStatistics(
            endpoints=len(self._endpoints),
            connections=len(self._live),
            incoming_connections=len(self._incoming),
            outgoing_connections=outgoing,
            frames_received=self._frames_received,
            bytes_received=self._bytes_received,
            rejected=MappingProxyType(dict(self._rejected)),
            broken_connections=self._broken,
            refused_connections=self._refused,
        )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for ep in list(self._endpoints.values()):
            await ep.aclose()
        for close in self._listeners:
            await close()
        for conn in list(self._live):
            await conn.aclose()
        self._nursery.cancel_scope.cancel()

    # ------------------------------------------------------------ routing

    def _note_path(self, agent: str, conn: Connection) -> None:
        if conn in self._live:
            self._paths[agent] = conn

    async def _route(self, recipient: str, data: bytes, via: Connection | None) -> Connection | None:
        if self._closed:
            raise ClosedError("node is closed")
        if len(data) > self._max_frame_size:
            # Enforced for local delivery too, so an in-process swarm meets the limits
            # a multi-host deployment meets.
            raise FrameError(f"message of {len(data)} bytes exceeds the {self._max_frame_size}-byte frame limit")
        if via is not None and via in self._live:
            try:
                await via.send(data)
                return via
            except (BrokenError, ClosedError):
                pass
        local = self._endpoints.get(recipient)
        if local is not None:
            try:
                env = decode_envelope(data)
            except EnvelopeError:  # pragma: no cover - we just encoded it
                raise
            await local._receive(env, len(data), None)
            return None
        conn = self._paths.get(recipient)
        if conn is not None:
            try:
                await conn.send(data)
                return conn
            except (BrokenError, ClosedError):
                self._paths.pop(recipient, None)
        address = self._routes.get(recipient)
        if address is None:
            raise UnreachableError(f"no route to {recipient!r}")
        for attempt in (1, 2):
            conn = await self._connect(address)
            try:
                await conn.send(data)
                return conn
            except (BrokenError, ClosedError):
                link = self._links.get(address)
                if link is not None and link.conn is conn:
                    link.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _connect(self, address: Address) -> Connection:
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = _Link(address)
        asked_at = trio.current_time()
        async with link.lock:
            if link.conn is not None and link.conn in self._live:
                return link.conn
            if link.failed_at > asked_at:
                # the connect loop we queued behind just gave up: share its verdict
                # instead of running a whole loop of our own per queued request
                raise UnreachableError(f"cannot connect to {address} (failed just now)")
            transport = self._transports[address.scheme]
            delay = self._backoff_base
            for attempt in range(1, self._connect_attempts + 1):
                try:
                    conn = await transport.connect(address)
                    break
                except UnreachableError as exc:
                    if attempt == self._connect_attempts:
                        link.failed_at = trio.current_time()
                        raise UnreachableError(
                            f"cannot connect to {address} after {attempt} attempts: {exc}"
                        ) from None
                    jitter = 0.5 + secrets.randbelow(1001) / 2000  # 0.5 .. 1.0
                    await trio.sleep(delay * jitter)
                    delay = min(delay * 2, self._backoff_cap)
            link.conn = conn
            self._live.add(conn)
            self._nursery.start_soon(self._serve_connection, conn, link)
            return conn

    async def _accept(self, conn: Connection) -> None:
        if self._closed or len(self._incoming) >= self._max_connections:
            self._refused += 1
            log.warning("bus: refusing connection from %s (limit %d)", conn.peer, self._max_connections)
            await conn.aclose()
            return
        self._incoming.add(conn)
        self._live.add(conn)
        await self._serve_connection(conn, None)

    async def _serve_connection(self, conn: Connection, link: _Link | None) -> None:
        try:
            while True:
                try:
                    data = await conn.receive()
                except BrokenError as exc:
                    self._broken += 1
                    log.warning("bus: connection %s broke: %s", conn.peer, exc)
                    break
                except ClosedError:
                    break
                if data is None:
                    break
                self._frames_received += 1
                self._bytes_received += len(data)
                try:
                    env = decode_envelope(data)
                except EnvelopeError as exc:
                    self._rejected[exc.reason] += 1
                    log.warning("bus: closing %s after an undecodable envelope: %s", conn.peer, exc)
                    break
                ep = self._endpoints.get(env.recipient)
                if ep is None:
                    self._rejected["misaddressed"] += 1
                    log.warning(
                        "bus: envelope from %r via %s for %r, who is not hosted here",
                        env.sender,
                        conn.peer,
                        env.recipient,
                    )
                    continue
                try:
                    await ep._receive(env, len(data), conn)
                except Exception:  # a bug must not take the node down
                    log.error("bus: failure handling an envelope from %s", conn.peer, exc_info=True)
                    break
        finally:
            self._live.discard(conn)
            self._incoming.discard(conn)
            if link is not None and link.conn is conn:
                link.conn = None
            for agent in [a for a, c in self._paths.items() if c is conn]:
                del self._paths[agent]
            for ep in list(self._endpoints.values()):
                ep._connection_lost(conn)
            with trio.CancelScope(shield=True):
                await conn.aclose()


@contextlib.asynccontextmanager
async def open_node(
    *,
    routes: Mapping[str, str] | None = None,
    transports: Mapping[str, Transport] | None = None,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    max_connections: int = 1024,
    connect_attempts: int = 6,
    backoff_base: float = 0.05,
    backoff_cap: float = 2.0,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[Node]:
    """Run a :class:`Node` for the duration of the block.

    ``routes``: agent id -> address. ``transports``: scheme -> transport
    (default: plain ``tcp``; pass ``TcpTransport(client_ssl=..., server_ssl=...)``
    for TLS and a shared :class:`MemoryTransport` as ``mem`` for in-process
    links between nodes). ``clock`` is wall-clock seconds (``time.time``).
    Leaving the block closes every endpoint, listener and connection.
    """
    async with trio.open_nursery() as nursery:
        node = Node(
            nursery,
            routes=routes,
            transports=transports,
            max_frame_size=max_frame_size,
            max_connections=max_connections,
            connect_attempts=connect_attempts,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            clock=clock,
        )
        try:
            yield node
        finally:
            with trio.CancelScope(shield=True):
                await node.aclose()
            nursery.cancel_scope.cancel()
