"""Publish/subscribe: both sides of one endpoint's topics, and the bus's own
messages that carry them.

The protocol, over an endpoint's ordinary messages:

- the subscriber asks with a request ``bus.subscribe {"topic": str}``; the
  reply (``None``) means the publisher now keeps an outbox for it; a second
  subscribe from the same agent replaces the first;
- the publisher sends each item as an event envelope whose kind is the topic
  and whose body is ``[seq, data]`` (``seq`` an int counting from 0 per
  subscription: a gap tells the subscriber it missed events; the map
  ``{"seq": int, "data": value}`` of earlier versions is still read);
- the subscriber ends it with ``bus.unsubscribe {"topic": str}`` (a send);
- a publisher that drops a subscriber which fell behind tells it with
  ``bus.dropped {"topic": str, "reason": str}`` (a send), after the events
  already queued for it.

:class:`_Topics` is the publisher's side (one bounded outbox per subscriber,
drained in order by a task of its own, so a slow subscriber never blocks
``publish``). :class:`_Subscriptions` is the subscriber's side; each
subscription's buffer is a :class:`_Feed` that it fills and the public
:class:`Subscription` empties (one state object shared by two faces, as trio's
memory channels do). Neither knows the endpoint: the endpoint hands them the
callables they need (``send``, ``request``, ``spawn``, ...).
"""

from __future__ import annotations

__all__ = ["Event", "Subscription"]

import contextlib
import dataclasses
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .envelope import MAX_KIND_LENGTH
from .errors import BrokenError, BusError, ClosedError, HandlerError, SubscriptionLagged
from .transport import Connection

log = logging.getLogger("bus")

SUBSCRIBE = "bus.subscribe"
UNSUBSCRIBE = "bus.unsubscribe"
DROPPED = "bus.dropped"

Send = Callable[[str, str, Any], Awaitable[None]]
"""``send(to, kind, body)``: the endpoint's fire-and-forget send."""


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One published item as a subscriber receives it."""

    publisher: str
    topic: str
    seq: int
    body: Any


def _topic_of(body: Any) -> str | None:
    topic = body.get("topic") if type(body) is dict else None
    return topic if isinstance(topic, str) else None


# ------------------------------------------------------------------ subscriber side


class _Lag:
    __slots__ = ("missed",)

    def __init__(self, missed: int):
        self.missed = missed


class _Feed:
    """The state of one subscription: a bounded buffer of events and lag marks,
    filled from the endpoint's side and emptied by :class:`Subscription`."""

    __slots__ = ("publisher", "topic", "conn", "lagged", "closed", "broken", "_buffer", "_items", "_count",
                 "_next_seq", "_lot")

    def __init__(self, publisher: str, topic: str, buffer: int):
        self.publisher = publisher
        self.topic = topic
        self.conn: Connection | None = None  # the connection the events arrive on, if any
        self.lagged = 0
        self.closed = False
        self.broken: str | None = None
        self._buffer = buffer
        self._items: deque[Event | _Lag] = deque()
        self._count = 0
        self._next_seq = 0
        self._lot = trio.lowlevel.ParkingLot()

    def _mark_lag(self, missed: int) -> None:
        self.lagged += missed
        if self._items and isinstance(self._items[-1], _Lag):
            self._items[-1].missed += missed
        else:
            self._items.append(_Lag(missed))

    def push(self, seq: int, body: Any) -> None:
        """Buffer event ``seq``; mark a lag for a gap or a full buffer."""
        if self.closed or self.broken or seq < self._next_seq:
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

    def fail(self, reason: str) -> None:
        """It broke: the reader gets BrokenError after the buffered events."""
        if not self.closed and not self.broken:
            self.broken = reason
            self._lot.unpark_all()

    def close(self) -> bool:
        """You closed it; return whether it was live (not broken) until now."""
        was_live = self.broken is None
        self.closed = True
        self._items.clear()
        self._lot.unpark_all()
        return was_live

    def take(self) -> Event:
        """The next event, or raise (closed, lagged, broken, or ``trio.WouldBlock``)."""
        if self.closed:
            raise ClosedError("subscription closed")
        if not self._items:
            if self.broken:
                raise BrokenError(f"subscription to {self.topic!r} at {self.publisher!r}: {self.broken}")
            raise trio.WouldBlock
        item = self._items.popleft()
        if isinstance(item, _Lag):
            raise SubscriptionLagged(item.missed)
        self._count -= 1
        return item

    async def wait(self) -> None:
        """Sleep until something changes (an event, a lag, a break, a close)."""
        await self._lot.park()


class Subscription:
    """A bounded stream of a publisher's events on one topic.

    ``receive()`` returns the next :class:`Event`. When the subscriber fell
    behind (its buffer was full, or the publisher's sequence skipped), it raises
    :class:`SubscriptionLagged` once, at the place of the gap, and goes on.
    When the publisher dropped this subscriber, or the connection to it broke,
    it raises :class:`BrokenError` after the buffered events; after
    :meth:`aclose`, :class:`ClosedError` (``async for`` just stops).
    Create with :meth:`Endpoint.subscribe`.
    """

    def __init__(self, feed: _Feed, release: Callable[[_Feed, bool], Awaitable[None]]):
        self._feed = feed
        self._release = release
        self.publisher = feed.publisher
        self.topic = feed.topic

    @property
    def lagged(self) -> int:
        """How many events this subscription missed in all."""
        return self._feed.lagged

    async def receive(self) -> Event:
        await trio.lowlevel.checkpoint()
        while True:
            try:
                return self._feed.take()
            except trio.WouldBlock:
                await self._feed.wait()

    def receive_nowait(self) -> Event:
        """Like :meth:`receive`, but raise ``trio.WouldBlock`` when empty."""
        return self._feed.take()

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
        if self._feed.closed:
            return
        was_live = self._feed.close()
        await self._release(self._feed, was_live)


class _Subscriptions:
    """One endpoint's subscriptions, by (publisher, topic)."""

    def __init__(
        self,
        *,
        request: Callable[..., Awaitable[Any]],
        send: Send,
        path_to: Callable[[str], Connection | None],
    ):
        self._request = request  # the endpoint's request(to, kind, body, *, timeout)
        self._send = send
        self._path_to = path_to  # the connection a verified message from an agent came on
        self._feeds: dict[tuple[str, str], _Feed] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self._feeds)

    async def subscribe(self, publisher: str, topic: str, buffer: int, timeout: float) -> Subscription:
        if buffer < 1:
            raise BusError("subscription buffer must be at least 1")
        key = (publisher, topic)
        if key in self._feeds:
            raise BusError(f"already subscribed to {topic!r} at {publisher!r}")
        feed = self._feeds[key] = _Feed(publisher, topic, buffer)
        try:
            await self._request(publisher, SUBSCRIBE, {"topic": topic}, timeout=timeout)
        except BaseException:
            self._feeds.pop(key, None)
            raise
        feed.conn = self._path_to(publisher)
        return Subscription(feed, self._release)

    async def _release(self, feed: _Feed, was_live: bool) -> None:
        """A subscription was closed: forget it and tell its publisher."""
        key = (feed.publisher, feed.topic)
        if self._feeds.get(key) is feed:
            del self._feeds[key]
        if was_live and not self._closed:
            with trio.move_on_after(1) as scope:
                scope.shield = True
                with contextlib.suppress(BusError):
                    await self._send(feed.publisher, UNSUBSCRIBE, {"topic": feed.topic})

    def on_event(self, publisher: str, topic: str, body: Any) -> bool:
        """Buffer a verified event; False if no subscription expects it."""
        feed = self._feeds.get((publisher, topic))
        if feed is None:
            return False
        if type(body) is list and len(body) == 2:
            seq, data = body
        elif type(body) is dict and "data" in body:  # (the form before the array)
            seq, data = body.get("seq"), body["data"]
        else:
            return False
        if type(seq) is not int or seq < 0:
            return False
        feed.push(seq, data)
        return True

    def on_dropped(self, publisher: str, body: Any) -> None:
        """The publisher dropped us (``bus.dropped``)."""
        topic = _topic_of(body)
        feed = self._feeds.get((publisher, topic)) if topic is not None else None
        if feed is not None:
            reason = body.get("reason")
            feed.fail(f"dropped by the publisher ({reason if isinstance(reason, str) else '?'})")

    def holds(self, conn: Connection) -> bool:
        return any(feed.conn is conn for feed in self._feeds.values())

    def connection_lost(self, conn: Connection) -> None:
        for feed in self._feeds.values():
            if feed.conn is conn:
                feed.fail(f"connection {conn.peer} to the publisher broke")

    def close(self) -> None:
        """The endpoint closed: every subscription is closed, silently."""
        self._closed = True
        for feed in self._feeds.values():
            feed.close()
        self._feeds.clear()


# ------------------------------------------------------------------ publisher side


class _Outbox:
    __slots__ = ("send", "receive", "seq", "drop_reason", "cancelled")

    def __init__(self, size: int):
        self.send, self.receive = trio.open_memory_channel[tuple[int, Any]](size)
        self.seq = 0
        self.drop_reason: str | None = None
        self.cancelled = False


class _Topics:
    """One endpoint's topics: a bounded outbox per subscriber, and a task per
    outbox that sends its events in order."""

    def __init__(
        self,
        identity: str,
        *,
        max_subscribers: int,
        max_topics_per_subscriber: int,
        admit: Callable[[str, str], bool] | None,
        path_to: Callable[[str], Connection | None],
        queue: int,
        spawn: Callable[..., None],
        emit: Send,
        send: Send,
    ):
        self._identity = identity  # for the logs
        self._max_subscribers = max_subscribers
        self._max_topics = max_topics_per_subscriber
        self._admit = admit  # admit(subscriber, topic) -> bool; None: anyone, any topic
        self._path_to = path_to  # the connection a subscriber's request came on (None: this node)
        self._conns: dict[tuple[str, str], Connection] = {}  # (topic, subscriber) -> its connection
        self._queue = queue
        self._spawn = spawn  # start a background task
        self._emit = emit  # emit(subscriber, topic, body): send one event envelope
        self._send = send
        self._topics: dict[str, dict[str, _Outbox]] = {}
        self._closed = False

    def __len__(self) -> int:
        """How many subscribers, over all topics."""
        return sum(len(s) for s in self._topics.values())

    def publish(self, topic: str, body: Any) -> int:
        """Queue ``body`` for every subscriber of ``topic``; drop any whose
        outbox is full. Return how many it was queued for."""
        queued = 0
        for subscriber, outbox in list(self._topics.get(topic, {}).items()):
            try:
                outbox.send.send_nowait((outbox.seq, body))
            except trio.WouldBlock:
                log.warning("bus: %s drops lagging subscriber %s of %r", self._identity, subscriber, topic)
                self._drop(topic, subscriber, "lagged")
                continue
            outbox.seq += 1
            queued += 1
        return queued

    def subscribe(self, subscriber: str, body: Any) -> None:
        """Serve ``bus.subscribe``; raise HandlerError to refuse."""
        topic = _topic_of(body)
        if topic is None or not 0 < len(topic) <= MAX_KIND_LENGTH:
            raise HandlerError("bad-request", "subscribe needs a topic")
        if self._admit is not None and not self._admit(subscriber, topic):
            raise HandlerError("forbidden", "you may not subscribe to this topic here")
        if subscriber in self._topics.get(topic, {}):
            # a re-subscription (say, from a restarted subscriber) replaces the old one
            self._drop(topic, subscriber, None)
        if len(self) >= self._max_subscribers:
            raise HandlerError("overloaded", "too many subscribers")
        if sum(subscriber in subs for subs in self._topics.values()) >= self._max_topics:
            raise HandlerError("overloaded", "too many topics for this subscriber")
        outbox = _Outbox(self._queue)
        # looked up after the drop, which deletes a topic left without subscribers
        self._topics.setdefault(topic, {})[subscriber] = outbox
        conn = self._path_to(subscriber)
        if conn is not None:
            self._conns[(topic, subscriber)] = conn
        self._spawn(self._drain, topic, subscriber, outbox)

    def unsubscribe(self, subscriber: str, body: Any) -> None:
        """Serve ``bus.unsubscribe``."""
        topic = _topic_of(body)
        if topic is not None and subscriber in self._topics.get(topic, {}):
            self._drop(topic, subscriber, None)

    def holds(self, conn: Connection) -> bool:
        return any(c is conn for c in self._conns.values())

    def connection_lost(self, conn: Connection) -> None:
        """A connection closed: free the slots of the subscribers that subscribed on it."""
        for (topic, subscriber), c in list(self._conns.items()):
            if c is conn:
                self._drop(topic, subscriber, None)

    def close(self) -> None:
        """The endpoint closed: drop every subscriber, silently."""
        self._closed = True
        for topic in list(self._topics):
            for subscriber in list(self._topics.get(topic, {})):
                self._drop(topic, subscriber, None)

    def _drop(self, topic: str, subscriber: str, reason: str | None) -> None:
        """Stop serving ``subscriber``: silently (``reason`` None: it left, or we
        closed), or telling it ``reason`` after the events already queued."""
        subscribers = self._topics.get(topic)
        if not subscribers:
            return
        outbox = subscribers.pop(subscriber, None)
        self._conns.pop((topic, subscriber), None)
        if not subscribers:
            del self._topics[topic]
        if outbox is None:
            return
        if reason is None:
            outbox.cancelled = True
        outbox.drop_reason = reason
        outbox.send.close()

    async def _drain(self, topic: str, subscriber: str, outbox: _Outbox) -> None:
        async with outbox.receive:
            async for seq, body in outbox.receive:
                if outbox.cancelled or self._closed:
                    return
                try:
                    await self._emit(subscriber, topic, [seq, body])
                except BusError as exc:
                    log.info("bus: %s drops subscriber %s of %r: %s", self._identity, subscriber, topic, exc)
                    self._drop(topic, subscriber, None)
                    return
            if outbox.drop_reason is not None and not self._closed:
                with contextlib.suppress(BusError):
                    await self._send(subscriber, DROPPED, {"topic": topic, "reason": outbox.drop_reason})
