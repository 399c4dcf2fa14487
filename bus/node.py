"""Nodes: the I/O host of one process (or one part of it).

A :class:`Node` owns the listeners, the outgoing connections, the static
routing table (agent id -> address) and any number of endpoints
(:class:`Endpoint`, one per agent identity). Envelopes between endpoints of
the same node are delivered in memory (the in-memory hub); others travel over
a transport chosen by address scheme. The node decodes what arrives and hands
it to the addressed endpoint, which verifies it; endpoints reach the node only
through the host interface (``_Host`` in :mod:`bus._endpoint`).

Routing an envelope to agent ``R``, in order: a local endpoint ``R``; else the
live connection on which a verified envelope from ``R`` last arrived (so
replies and events reach clients that have no listener); else the address of
``R`` in the routing table (a pooled connection, reconnected with capped
exponential backoff); else :class:`UnreachableError`. An endpoint first asks :meth:`Node.route_now`,
which sends only what needs no wait (a known live connection whose other side
proved the recipient, with queue room), and takes the full route otherwise. A reply to a request
that came on a connection goes back on that connection only, never re-routed
by name (the request's sender may be one nobody proved). Every envelope, local or
not, must fit the frame limit.

A frame that does not decode closes its connection; one addressed to an agent
not hosted here is dropped and counted. Either way other connections go on.

No client can stall others (the limits are in :mod:`bus.limits`):

* Every connection has a bounded send queue drained by its own writer task,
  whose every frame must be written within ``write_timeout``; a connection
  that does not read is dropped, not waited on. Replies and error replies
  never wait for queue room (a full queue drops the connection); requests,
  fire-and-forget messages and events wait for room, bounded by the write
  timeout that empties the queue.
* A frame of more than ``max_objects`` msgpack objects, or nested deeper than
  ``max_depth``, is refused by structure before msgpack builds anything from
  it (one shorter than ``max_objects`` bytes cannot hold more objects than
  bytes: it is decoded, and its body's depth checked by the walk that refuses
  extension types); one that holds more than
  ``thread_decode_objects`` objects (found by a structure walk of at most that
  many steps on the event loop) is checked and decoded in a worker thread, one
  at a time per node.
* An incoming connection must complete its first frame within
  ``handshake_timeout`` (a channel: prove an agent the node knows within it,
  after the handshake), is closed after ``idle_timeout`` without a frame
  either way (unless an endpoint still needs it), and any connection is
  closed when a frame takes longer than ``frame_timeout`` from its first byte
  to its last.
* At most ``max_connections`` incoming connections, and at most
  ``max_connections_per_source`` from one remote address (an IPv6 address
  counted by its /64).
* Nothing costs the node a signature before the other side proved an agent
  it knows: on an incoming channel the node proves its agents (a signature
  each) only once a proof the client sent verifies under the key a hosted
  endpoint's directory holds; until then the client's WANTs wait (for at most
  ``handshake_timeout``) and its envelopes reach no endpoint. A refused proof
  is checked once, and a channel with ``MAX_PROOF_FAILURES`` refused proofs is
  dropped. The connecting side proves its sender first.
"""

from __future__ import annotations

__all__ = ["Node", "open_node"]

import contextlib
import functools
import ipaddress
import itertools
import logging
import math
import secrets
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

import trio

from ._endpoint import Endpoint, _Attachment
from ._secure import ChannelConnection, channel_handshake
from .channel import (
    CHANNEL_OVERHEAD,
    ENVELOPE,
    MAX_CLAIMS,
    MAX_PROVED_AT_HANDSHAKE,
    PROOF,
    WANT,
    ChannelError,
    is_channel_hello,
)
from ._stats import NodeStatistics
from .envelope import (
    Aliases,
    Directory,
    Envelope,
    EnvelopeError,
    Signer,
    Verifier,
    _decode_checked,
    decode_envelope,
    decode_reply_in_place,
    _decode_local,
    encode_compact,
    sign_wire,
)
from .errors import BrokenError, BusError, ClosedError, FrameError, UnreachableError
from .framing import DEFAULT_MAX_FRAME_SIZE
from .structure import StructureError, TooManyObjects, check_structure
from .limits import (
    DEFAULT_FRAME_TIMEOUT,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_HANDSHAKES_PER_SOURCE,
    DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_OBJECTS,
    DEFAULT_SEND_QUEUE_BYTES,
    DEFAULT_SEND_QUEUE_FRAMES,
    DEFAULT_THREAD_DECODE_OBJECTS,
    DEFAULT_WRITE_TIMEOUT,
    MAX_PROOF_FAILURES,
    logged_repeat,
)
from .transport import TRY_SEND_BYTES, Address, Connection, TcpTransport, Transport, parse_address

log = logging.getLogger("bus")


def _make_room(transport: Transport, max_frame_size: int, wire_max: int) -> None:
    """Give a caller-supplied transport that takes envelopes of ``max_frame_size``
    room for the channel's overhead too (``wire_max``), so an envelope of exactly
    the node's frame limit crosses it as it crosses the node's own TCP transport.
    Only raised, never lowered, and only for a limit of at least ``max_frame_size``:
    a transport deliberately smaller keeps its limit (less the channel's overhead).
    A transport that does not say its limit (no ``max_frame_size``) keeps it."""
    limit = getattr(transport, "max_frame_size", None)
    if type(limit) is int and max_frame_size <= limit < wire_max:
        transport.max_frame_size = wire_max  # type: ignore[attr-defined]


def _source_key(source: str) -> str:
    """What the per-source limits count ``source`` (a connection's remote address) as:
    an IPv6 address by its /64 network (the least a site or a subscriber is given,
    so one client does not get a limit per address of its 2**64), an IPv4-mapped
    one as its IPv4 address; anything else (a memory connection's name) as it is."""
    try:
        ip = ipaddress.ip_address(source)
    except ValueError:
        return source
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return source


class _HandshakeTimeout(ChannelError):
    """An incoming connection did not finish the channel handshake in time."""


class _ChannelFull(BusError):
    """The channel proved MAX_CLAIMS agents already: route the sender on another."""


class _Unvouched(BrokenError):
    """An incoming channel whose other side proved no agent this node knows: nothing
    of ours is proved on it (no signature spent), so nothing of ours is sent on it."""


_MAX_VOUCH_DIRECTORIES = 8
"""Distinct directories (of the hosted endpoints) asked for the key of an agent an
unvouched client proved (the endpoints of one node share one, as a rule)."""


class _Unproven:
    """An incoming channel not vouched for yet: the proofs tried, the agents asked for."""

    __slots__ = ("seen", "tried", "failures", "wants", "watching")

    def __init__(self) -> None:
        self.seen: dict[str, bytes] = {}  # agent -> the proof looked at (again only on the timer)
        self.tried: dict[str, tuple[bytes, bytes]] = {}  # agent -> (key, signature) that failed
        self.failures = 0
        self.wants: set[str] = set()  # hosted agents the client asked us to prove (WANT)
        self.watching = False


class _Link:
    """A pooled outgoing connection to one address, and its reconnect state."""

    __slots__ = ("address", "conn", "lock", "failed_at")

    def __init__(self, address: Address):
        self.address = address
        self.conn: Connection | None = None
        self.lock = trio.Lock()
        self.failed_at = -math.inf  # when the last connect loop gave up (trio time)


_RAW = -1
"""An outbox item that is the rest of a frame begun by a write at once (sent as it is)."""


class _Outbox:
    """One connection's send queue: bounded in frames and bytes, drained by one writer."""

    __slots__ = ("_frames", "_bytes", "_max_frames", "_max_bytes", "_writer", "_room", "closed",
                 "last_sent", "writing_since")

    def __init__(self, max_frames: int, max_bytes: int):
        self._frames: deque[tuple[bytes, int]] = deque()  # (payload, channel frame type)
        self._bytes = 0
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._writer = trio.lowlevel.ParkingLot()
        self._room = trio.lowlevel.ParkingLot()
        self.closed: str | None = None
        self.last_sent = trio.current_time()
        self.writing_since: float | None = None
        """When the frame being written began to be written (None: no write under
        way); the connection's watchdog drops it ``write_timeout`` after."""

    def has_room(self, size: int) -> bool:
        if not self._frames:
            return True  # an empty queue always takes one frame
        return len(self._frames) < self._max_frames and self._bytes + size <= self._max_bytes

    def put_nowait(self, data: bytes, frame_type: int = ENVELOPE) -> None:
        self._frames.append((data, frame_type))
        self._bytes += len(data)
        self._writer.unpark_all()

    @property
    def idle(self) -> bool:
        """Nothing queued and no write under way: a frame may be written at once."""
        return not self._frames and self.writing_since is None and self.closed is None

    async def wait_room(self, size: int) -> None:
        while self.closed is None and not self.has_room(size):
            await self._room.park()

    async def take(self) -> tuple[bytes, int] | None:
        """The next frame to write and its channel frame type (ENVELOPE for an
        envelope, else an identity proof or request); None once closed."""
        while not self._frames:
            if self.closed is not None:
                return None
            await self._writer.park()
        if self.closed is not None:
            return None
        item = self._frames.popleft()
        self._bytes -= len(item[0])
        self._room.unpark_all()
        return item

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
        self._frames.clear()
        self._bytes = 0
        self._writer.unpark_all()
        self._room.unpark_all()


class Node:
    """Hosts endpoints, listeners and connections. Create with :func:`open_node`.

    Options (keyword arguments of :func:`open_node`): ``routes``, agent id ->
    address; ``transports``, scheme -> transport (default: plain ``tcp``;
    pass ``TcpTransport(client_ssl=..., server_ssl=...)`` for TLS and a shared
    :class:`MemoryTransport` as ``mem`` for in-process links between nodes; one
    whose frame limit is at least ``max_frame_size`` is raised by the channel's
    overhead, so an envelope of exactly ``max_frame_size`` crosses it);
    ``max_frame_size``, the largest envelope carried, locally too;
    ``max_connections``, incoming connections at once, and
    ``max_connections_per_source``, from one remote address; ``handshakes_per_source``,
    (per second, burst) channel handshakes one address may start; ``send_queue_frames``,
    ``send_queue_bytes`` and ``write_timeout``, each connection's send queue;
    ``handshake_timeout``, ``idle_timeout`` and ``frame_timeout`` (seconds);
    ``max_objects`` and ``max_depth``, what one envelope's msgpack may hold;
    ``thread_decode_objects``, above which frames are decoded off the event loop
    (defaults and reasons in :mod:`bus.limits`); ``connect_attempts``,
    ``backoff_base`` and ``backoff_cap`` (seconds), how an outgoing connection
    is retried; ``clock``, wall-clock seconds (``time.time``) for envelope
    timestamps; ``channels`` (default True), whether connections are
    authenticated encrypted channels (:mod:`bus.channel`: unsigned envelopes,
    agents proved once per connection) or carry signed envelopes in the clear
    (False: every envelope signed and verified, kept for comparison; a node of
    one mode refuses connections of the other); ``admit_peer(agent,
    certificate)``, on a channel, whether an agent the other side proved may
    speak on that connection given the TLS certificate (DER, or None) it
    presented under the channel (mutual TLS: a node certificate must name the
    agent it proves); checked once per agent and connection, refused as
    ``unproven-sender``.

    The methods under "host interface" are what its endpoints call (the
    ``_Host`` protocol of :mod:`bus._endpoint`); agents need only
    :meth:`endpoint`, :meth:`listen`, :meth:`add_route` and :meth:`statistics`.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        routes: Mapping[str, str] | None = None,
        transports: Mapping[str, Transport] | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_connections_per_source: int = DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
        handshakes_per_source: tuple[float, int] = DEFAULT_HANDSHAKES_PER_SOURCE,
        send_queue_frames: int = DEFAULT_SEND_QUEUE_FRAMES,
        send_queue_bytes: int = DEFAULT_SEND_QUEUE_BYTES,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        frame_timeout: float = DEFAULT_FRAME_TIMEOUT,
        max_objects: int = DEFAULT_MAX_OBJECTS,
        max_depth: int = DEFAULT_MAX_DEPTH,
        thread_decode_objects: int = DEFAULT_THREAD_DECODE_OBJECTS,
        connect_attempts: int = 6,
        backoff_base: float = 0.05,
        backoff_cap: float = 2.0,
        clock: Callable[[], float] = time.time,
        channels: bool = True,
        admit_peer: Callable[[str, bytes | None], bool] | None = None,
    ):
        self._nursery = nursery
        self._max_frame_size = max_frame_size
        self._channels = channels
        self._admit_peer = admit_peer
        wire_max = max_frame_size + (CHANNEL_OVERHEAD if channels else 0)
        self._transports: dict[str, Transport] = {"tcp": TcpTransport(max_frame_size=wire_max)}
        if transports:
            for transport in transports.values():
                _make_room(transport, max_frame_size, wire_max)
            self._transports.update(transports)
        self._routes: dict[str, Address] = {}
        for agent, address in (routes or {}).items():
            self.add_route(agent, address)
        self._max_connections = max_connections
        self._max_per_source = max_connections_per_source
        self._handshake_rate, self._handshake_burst = handshakes_per_source
        self._handshake_buckets: dict[str, tuple[float, float]] = {}  # source -> (tokens, at)
        self._send_queue = (send_queue_frames, send_queue_bytes)
        self._write_timeout = write_timeout
        self._handshake_timeout = handshake_timeout
        self._idle_timeout = idle_timeout
        self._frame_timeout = frame_timeout
        self._decode = functools.partial(decode_envelope, max_objects=max_objects, max_depth=max_depth)
        self._max_objects = max_objects
        self._max_depth = max_depth
        self._thread_objects = min(thread_decode_objects, max_objects)
        self._decode_limiter = trio.CapacityLimiter(1)
        self._outboxes: dict[Connection, _Outbox] = {}
        self._scopes: dict[Connection, trio.CancelScope] = {}
        self._sources: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        self._connect_attempts = max(1, connect_attempts)
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._clock = clock
        self._endpoints: dict[str, _Attachment] = {}
        self._paths: dict[str, Connection] = {}
        self._links: dict[tuple[Address, int], _Link] = {}  # (address, shard) -> link
        self._live: set[Connection] = set()
        self._incoming: set[Connection] = set()
        self._handshaking = 0  # incoming connections in the channel handshake (count toward the cap)
        self._vouched: set[Connection] = set()  # incoming channels whose other side proved an agent we know
        self._unproven: dict[Connection, _Unproven] = {}
        self._listeners: list[Callable[[], Awaitable[None]]] = []
        self._frames_received = 0
        self._bytes_received = 0
        self._rejected: Counter[str] = Counter()
        self._broken = 0
        self._refused = 0
        self._ids = itertools.count(1)  # compact envelope ids (see next_id)
        self._reply_routes: dict[int, str] = {}  # compact request id -> the hosted endpoint asking
        self._now = trio.lowlevel.current_clock().current_time  # trio.current_time() without its two calls
        self._closed = False

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
        return Endpoint(self, identity, signer=signer, directory=directory, verifier=verifier, **options)

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
            dropped_connections=MappingProxyType(dict(self._dropped)),
            handshaking=self._handshaking,
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

    # ------------------------------------------------------------ host interface (for endpoints)

    @property
    def max_frame_size(self) -> int:
        return self._max_frame_size

    @property
    def signs_envelopes(self) -> bool:
        return not self._channels

    def now_ms(self) -> int:
        return math.floor(self._clock() * 1000)

    def next_id(self) -> int:
        """The next compact envelope id: one counter for all the node's endpoints, so
        an id is never reused while the node runs (a reply is matched to a request
        by its id at the requesting endpoint, and only from the agent asked: ids
        need to be unique, not unpredictable). A restarted node counts from 1
        again on new connections: a reply goes back only on the connection its
        request came on, so no reply to the old node's requests reaches it."""
        return next(self._ids)

    @property
    def reply_routes(self) -> dict[int, str]:
        """Compact request id -> the hosted endpoint waiting for its reply (kept by the
        endpoints): a compact reply names no recipient, it goes to the one asking."""
        return self._reply_routes

    def spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        self._nursery.start_soon(fn, *args)

    def attach(self, identity: str, attachment: _Attachment) -> None:
        self._endpoints[identity] = attachment
        if len(self._endpoints) <= MAX_PROVED_AT_HANDSHAKE:
            for conn in list(self._vouched):  # prove the newcomer on the (vouched) channels already open
                if isinstance(conn, ChannelConnection) and len(conn.channel.proven_here) < MAX_CLAIMS:
                    self._prove(conn, identity, attachment)

    def detach(self, identity: str) -> None:
        self._endpoints.pop(identity, None)

    def is_live(self, conn: Connection) -> bool:
        return conn in self._live

    def hosts(self, agent: str) -> bool:
        return agent in self._endpoints

    def note_path(self, agent: str, conn: Connection) -> None:
        if conn in self._live:
            self._paths[agent] = conn

    def path_to(self, agent: str) -> Connection | None:
        return self._paths.get(agent)

    async def route(
        self, sender: str, recipient: str, data: bytes, via: Connection | None, *, wait: bool = True
    ) -> Connection | None:
        if self._closed:
            raise ClosedError("node is closed")
        if len(data) > self._max_frame_size:
            # Enforced for local delivery too, so an in-process swarm meets the limits
            # a multi-host deployment meets.
            raise FrameError(f"message of {len(data)} bytes exceeds the {self._max_frame_size}-byte frame limit")
        if via is not None:
            # a reply goes back on the connection its request came on, to whoever
            # sent it there, or nowhere: an error reply may answer a sender nobody
            # proved (re-routed by name it would reach the real agent, answering its
            # own pending request with an error a forger provoked), and a requester
            # whose connection is gone has already failed the request
            if via not in self._live:
                raise BrokenError(f"connection {via.peer} closed before the reply")
            try:
                await self._enqueue(via, sender, recipient, data, wait, check_recipient=False)
            except _ChannelFull:
                raise BrokenError(f"connection {via.peer} has no room to prove {sender!r}") from None
            return via
        local = self._endpoints.get(recipient)
        if local is not None:
            # no crypto between agents of one node: a decoded copy (so sender and
            # handler share no mutable body), delivered as from this node; the
            # sender's endpoint built and checked it, so it is not checked again
            env = _decode_local(data, sender)  # (a compact reply: named as from the agent that sent it)
            await local.deliver(env, len(data), None)
            return None
        conn = self._paths.get(recipient)
        if conn is not None:
            try:
                await self._enqueue(conn, sender, recipient, data, wait)
                return conn
            except _ChannelFull:
                pass  # the recipient's connection has no room to prove this sender: another one
            except (BrokenError, ClosedError):
                self._paths.pop(recipient, None)
        address = self._routes.get(recipient)
        if address is None:
            raise UnreachableError(f"no route to {recipient!r}")
        attempt = 0
        while True:
            attempt += 1
            shard = self._shard_for(address, sender)
            conn = await self._connect(address, shard)
            try:
                await self._enqueue(conn, sender, recipient, data, wait)
                return conn
            except _ChannelFull:
                attempt -= 1  # another sender took the last place meanwhile: the next shard
                continue
            except (BrokenError, ClosedError):
                link = self._links.get((address, shard))
                if link is not None and link.conn is conn:
                    link.conn = None
                if attempt == 2:
                    raise

    def _known_conn(self, sender: str, recipient: str) -> Connection | None:
        """The connection ``recipient`` is reached on without a wait: its known path, else the
        live link to its address (the shard of ``sender``); None when there is none yet."""
        conn = self._paths.get(recipient)
        if conn is None:
            address = self._routes.get(recipient)
            link = None if address is None else self._links.get((address, self._shard_for(address, sender)))
            conn = None if link is None else link.conn
            if conn is None or conn not in self._live:
                return None
        return conn

    def route_now_compact(self, sender: str, recipient: str, mtype: int, kind: str, msg_id: int,
                          body: Any) -> tuple[Connection, bytes] | None:
        """:meth:`route_now` for a compact request, message or event the node encodes
        itself: on the channel it goes on, with the sender's and recipient's aliases
        there (:mod:`bus.channel`, "Aliases") in place of their names. (connection,
        wire bytes) when it went; None when it did not (nothing sent, nothing encoded
        where the reason was known before: the caller encodes it with the names and
        :meth:`route` s it). Encoding errors (EnvelopeError) are raised."""
        if self._closed or recipient in self._endpoints:
            return None
        conn = self._known_conn(sender, recipient)
        if conn is None:
            return None
        if not isinstance(conn, ChannelConnection):
            return None  # (signed mode: the endpoint sends full envelopes)
        own = self._endpoints.get(sender)
        box = self._outboxes.get(conn)
        if own is None or box is None or box.closed is not None:
            return None
        channel = conn.channel
        if self._claim_problem(conn, own, recipient) is not None:
            return None
        if sender not in channel.proven_here:  # (proved first: the proof gives the sender's alias)
            if len(channel.proven_here) >= MAX_CLAIMS or not self._may_prove(conn):
                return None
            self._prove_sender(conn, sender, own)
        data = encode_compact(mtype, kind, msg_id, None, sender, recipient, body,
                              (channel.aliases_here.get(sender), channel.their_aliases.get(recipient)))
        room = None if len(data) > self._max_frame_size else self._room_now(conn, sender, data)
        if room is None:
            return None
        self._put(conn, room[0], data, room[3])
        return conn, data

    def route_now(self, sender: str, recipient: str, data: bytes) -> Connection | None:
        """Deliver an encoded, unsigned envelope from the hosted agent ``sender`` to an
        agent reached over a connection when that takes no wait: write it at once or
        queue it (the connection's route is known and live, the other side proved
        ``recipient``, its queue has room); return the connection it left on, or None
        when it did not go (nothing sent: :meth:`route` then does it, waiting where
        needed, or says why it cannot)."""
        if self._closed or len(data) > self._max_frame_size or recipient in self._endpoints:
            return None
        conn = self._known_conn(sender, recipient)
        if conn is None:
            return None
        room = self._room_now(conn, sender, data)
        if room is None:
            return None
        box, own, channel, idle = room
        if channel:
            if self._claim_problem(conn, own, recipient) is not None:  # type: ignore[arg-type]
                return None
            if sender not in conn.channel.proven_here:  # type: ignore[attr-defined]
                if len(conn.channel.proven_here) >= MAX_CLAIMS or not self._may_prove(conn):  # type: ignore[attr-defined]
                    return None
                self._prove_sender(conn, sender, own)  # type: ignore[arg-type]
                idle = False  # (the proof is queued ahead of the envelope)
        else:
            data = sign_wire(data, own.signer)
        self._put(conn, box, data, idle)
        return conn

    def reply_now(self, sender: str, data: bytes, via: Connection) -> bool:
        """Send a reply (an encoded, unsigned envelope from the hosted agent ``sender``)
        on ``via``, the connection its request came on, when that takes no wait: the
        connection is live, ``sender`` is proved on it (a channel) and its queue has
        room (or nothing is ahead of it: written at once). False: nothing sent
        (:meth:`route` then does it, or says why it cannot)."""
        if self._closed or len(data) > self._max_frame_size or via not in self._live:
            return False
        room = self._room_now(via, sender, data)
        if room is None:
            return False
        box, own, channel, idle = room
        if channel:
            if sender not in via.channel.proven_here:  # type: ignore[attr-defined]
                return False
        else:
            data = sign_wire(data, own.signer)
        return self._put(via, box, data, idle)

    def _room_now(self, conn: Connection, sender: str, data: bytes) -> tuple[Any, _Attachment, bool, bool] | None:
        """(outbox, the hosted sender, whether ``conn`` is a channel, whether the outbox is
        idle) when ``data`` from ``sender`` can go on ``conn`` without a wait (its outbox
        open and with room, or idle; within the connection's payload limit); None otherwise."""
        box = self._outboxes.get(conn)
        own = self._endpoints.get(sender)
        if box is None or box.closed is not None or own is None:
            return None
        channel = isinstance(conn, ChannelConnection)
        size = len(data) + (0 if channel else 80)  # (signed mode adds the signature, at most 80 bytes)
        limit = getattr(conn, "max_payload", None)
        if limit is not None and size > limit:
            return None
        idle = box.idle
        if not (idle or box.has_room(size)):
            return None
        return box, own, channel, idle

    def _frame_for(self, conn: Connection, own: _Attachment, sender: str, data: bytes) -> bytes:
        """What ``conn`` carries for an unsigned envelope from ``sender``: on a channel the
        envelope as it is (the proof of ``sender`` queued ahead of it the first time:
        _ChannelFull when the channel has no room for it), else the envelope signed."""
        if isinstance(conn, ChannelConnection):
            if sender not in conn.channel.proven_here:
                self._prove_sender(conn, sender, own)
            return data
        return sign_wire(data, own.signer)

    def _prove_sender(self, conn: ChannelConnection, sender: str, own: _Attachment) -> None:
        """Queue the proof of ``sender`` on ``conn`` unless it was proved there:
        _ChannelFull when the channel has no room for it, _Unvouched on an incoming
        channel whose other side proved no agent this node knows."""
        if sender in conn.channel.proven_here:
            return
        if len(conn.channel.proven_here) >= MAX_CLAIMS:
            raise _ChannelFull()
        if not self._may_prove(conn):
            raise _Unvouched(f"{conn.peer} proved no agent this node knows; {sender!r} is not proved to it")
        self._prove(conn, sender, own)

    def _put(self, conn: Connection, box: _Outbox, data: bytes, idle: bool | None = None) -> bool:
        """Write ``data`` at once when nothing is ahead of it (no writer woken; what the
        socket does not take goes first in the queue, for the writer), else queue it
        if the queue has room; False: no room (nothing done). ``idle``: ``box.idle``
        if the caller just looked (nothing changed since)."""
        if (box.idle if idle is None else idle) and len(data) < TRY_SEND_BYTES and getattr(
                conn, "can_try_send", bool)():
            rest = conn.try_send(data)  # type: ignore[attr-defined]
            box.last_sent = self._now()
            if rest:
                box.put_nowait(rest, _RAW)
            return True
        if not box.has_room(len(data)):
            return False
        box.put_nowait(data)
        return True

    async def _enqueue(self, conn: Connection, sender: str, recipient: str, data: bytes, wait: bool, *,
                       check_recipient: bool = True) -> None:
        """Queue ``data`` (an unsigned envelope from ``sender``) on ``conn``'s
        writer: on a channel, after the proof of ``sender`` the first time and
        only once the other side proved ``recipient``; else signed. Without
        ``wait``, a full queue drops the connection (its reader is too slow to
        be waited on)."""
        box = self._outboxes.get(conn)
        if box is None or box.closed is not None:
            raise BrokenError(f"connection to {conn.peer} is closed")
        own = self._endpoints.get(sender)
        if own is None:
            raise ClosedError(f"endpoint {sender!r} is not attached")
        limit = getattr(conn, "max_payload", None)
        if limit is not None and len(data) + (0 if isinstance(conn, ChannelConnection) else 80) > limit:
            # (signed mode adds the signature, at most 80 bytes with its header)
            raise FrameError(f"message of {len(data)} bytes exceeds the {limit}-byte limit of {conn.peer}")
        if isinstance(conn, ChannelConnection) and check_recipient:
            # our proof first: the other side proves its agents only to a client that
            # proved one it knows (its WANT answered once it has checked ours)
            self._prove_sender(conn, sender, own)
            await self._check_recipient(conn, own, recipient)
        data = self._frame_for(conn, own, sender, data)
        if self._put(conn, box, data):
            return
        if not wait:
            self._drop(conn, "send-queue-full")
            raise BrokenError(f"connection to {conn.peer} dropped: its send queue is full")
        await box.wait_room(len(data))
        if box.closed is not None:
            raise BrokenError(f"connection to {conn.peer} dropped: {box.closed}")
        box.put_nowait(data)

    @staticmethod
    def _claim_problem(conn: ChannelConnection, own: _Attachment, recipient: str) -> str | None:
        """Why ``recipient`` is not (yet) proved on ``conn`` under the key ``own``'s
        directory holds for it (None: it is)."""
        try:
            key = own.directory(recipient)
        except Exception:
            key = None
        return conn.channel.claim_ok(recipient, key, own.verifier)

    async def _check_recipient(self, conn: ChannelConnection, own: _Attachment, recipient: str) -> None:
        """Wait (bounded by the handshake timeout) until the other side of ``conn``
        proved ``recipient`` under the key ``own``'s directory holds for it."""
        reason = self._claim_problem(conn, own, recipient)
        if reason is None:
            return
        if recipient not in conn.channel.claims:
            if recipient not in conn.wanted and len(conn.wanted) < MAX_CLAIMS:
                conn.wanted.add(recipient)
                self._want(conn, recipient)
            with trio.move_on_after(self._handshake_timeout):
                await conn.wait_claim(recipient)
            reason = self._claim_problem(conn, own, recipient)
        if reason is not None:
            raise UnreachableError(
                f"{conn.peer} did not prove it hosts {recipient!r} ({reason}); not sending to it"
            )

    def _prove(self, conn: ChannelConnection, agent: str, attachment: _Attachment) -> None:
        """Queue the proof that we speak for ``agent`` on ``conn`` (ahead of its envelopes)."""
        box = self._outboxes.get(conn)
        if box is None or box.closed is not None or agent in conn.channel.proven_here:
            return
        box.put_nowait(conn.channel.make_proof(agent, attachment.signer), PROOF)

    def _want(self, conn: ChannelConnection, agent: str) -> None:
        """Ask the other side of ``conn`` to prove ``agent``."""
        box = self._outboxes.get(conn)
        if box is not None and box.closed is None:
            box.put_nowait(agent.encode(), WANT)

    def _on_want(self, conn: ChannelConnection, agent: str) -> None:
        """The other side asks us to prove ``agent``: if we host it (within the
        channel's MAX_CLAIMS), once, and (an incoming channel) once the other side
        proved an agent this node knows: until then the want waits, for at most the
        handshake timeout (the node may learn the client's key meanwhile)."""
        attachment = self._endpoints.get(agent)
        if (attachment is None or agent in conn.channel.proven_here
                or len(conn.channel.proven_here) >= MAX_CLAIMS):
            return
        if conn in self._incoming and conn not in self._vouched:
            pending = self._unproven.setdefault(conn, _Unproven())
            if len(pending.wants) < MAX_CLAIMS:
                pending.wants.add(agent)
            if not self._vouch(conn) and not pending.watching and conn in self._unproven:
                pending.watching = True
                self._nursery.start_soon(self._await_vouch, conn, pending)
            return
        self._prove(conn, agent, attachment)

    def _unvouched(self, conn: Connection) -> bool:
        """Whether ``conn`` is an incoming channel not vouched for (yet)."""
        return conn not in self._vouched and isinstance(conn, ChannelConnection) and conn in self._incoming

    def _may_prove(self, conn: ChannelConnection) -> bool:
        """Whether the node may prove its agents on ``conn``: one it opened, or an
        incoming channel vouched for (see :meth:`_vouch`)."""
        return conn in self._vouched or conn not in self._incoming or self._vouch(conn)

    def _key_of(self, agent: str) -> tuple[bytes, Verifier] | None:
        """The key a hosted endpoint's directory holds for ``agent``, and that
        endpoint's verifier (None: no directory asked knows it)."""
        asked: list[Directory] = []
        for attachment in list(self._endpoints.values()):
            directory = attachment.directory
            if directory in asked:
                continue
            if len(asked) >= _MAX_VOUCH_DIRECTORIES:
                break
            asked.append(directory)
            try:
                key = directory(agent)
            except Exception:
                key = None
            if key is not None:
                return key, attachment.verifier
        return None

    def _vouch(self, conn: ChannelConnection, again: bool = False) -> bool:
        """Whether the other side of the incoming channel ``conn`` proved an agent this
        node knows (a proof that verifies under the key a hosted endpoint's directory
        holds for it; admission, e.g. by TLS certificate, is the endpoint's to check).
        The first time it does, the agents it asked for are proved (and all hosted
        ones, when at most MAX_PROVED_AT_HANDSHAKE). Each (key, proof) is verified
        once; after MAX_PROOF_FAILURES proofs that do not verify the channel is
        dropped. Agents with no key here cost a directory look-up, no verification:
        each proof is looked at when it is new, and ``again`` (the timer of
        :meth:`_await_vouch`) for those whose agent had no key then."""
        if conn in self._vouched:
            return True
        if conn not in self._live:
            return False
        pending = self._unproven.setdefault(conn, _Unproven())
        if pending.failures >= MAX_PROOF_FAILURES:
            return False  # (dropped already)
        channel = conn.channel
        seen = pending.seen
        for agent, signature in list(channel.claims.items()):
            if not again and seen.get(agent) == signature:
                continue
            seen[agent] = signature
            found = self._key_of(agent)
            if found is None:
                continue
            key, verifier = found
            if pending.tried.get(agent) == (key, signature):
                continue
            if channel.proof_verifies(agent, key, verifier):
                self._vouched.add(conn)
                del self._unproven[conn]
                self._prove_vouched(conn, pending.wants)
                return True
            pending.tried[agent] = (key, signature)
            pending.failures += 1
            if pending.failures >= MAX_PROOF_FAILURES:
                self._drop(conn, "bad-proofs")
                return False
        return False

    def _prove_vouched(self, conn: ChannelConnection, wanted: set[str]) -> None:
        """Prove on a channel just vouched for what it asked for, and every hosted
        agent when there are at most MAX_PROVED_AT_HANDSHAKE (saving it the asking)."""
        agents = list(wanted)
        if len(self._endpoints) <= MAX_PROVED_AT_HANDSHAKE:
            agents += [a for a in self._endpoints if a not in wanted]
        for agent in agents:
            attachment = self._endpoints.get(agent)
            if attachment is not None and len(conn.channel.proven_here) < MAX_CLAIMS:
                self._prove(conn, agent, attachment)

    async def _await_vouch(self, conn: ChannelConnection, pending: _Unproven) -> None:
        """Look again, for at most the handshake timeout, whether a channel whose
        wants wait was vouched for (the node may learn a key from the ledger meanwhile:
        a user registered a block ago); then forget its wants."""
        deadline = trio.current_time() + self._handshake_timeout
        delay = 0.05
        while trio.current_time() < deadline:
            await trio.sleep(min(delay, max(0.0, deadline - trio.current_time())))
            if conn not in self._live or self._vouch(conn, again=True):
                return
            delay = min(delay * 2, 1.0)
        pending.wants.clear()
        pending.watching = False

    def _drop(self, conn: Connection, reason: str) -> None:
        """Close ``conn`` now for ``reason`` (counted in statistics)."""
        box = self._outboxes.get(conn)
        if box is not None and box.closed is not None:
            return
        self._dropped[reason] += 1
        log.warning("bus: dropping connection %s: %s", conn.peer, reason)
        if box is not None:
            box.close(reason)
        scope = self._scopes.get(conn)
        if scope is not None:
            scope.cancel()

    async def _write(self, conn: Connection, box: _Outbox) -> None:
        """The connection's writer: every frame within the write timeout, or the
        connection's watchdog drops it (closing the connection wakes a write stuck
        on a reader that does not read; no timer is set up per frame)."""
        send_control = conn.send_control if isinstance(conn, ChannelConnection) else None
        while True:
            item = await box.take()
            if item is None:
                return
            data, frame_type = item
            box.writing_since = trio.current_time()
            try:
                if frame_type == _RAW:
                    await conn.send_raw(data)  # type: ignore[attr-defined]
                elif frame_type != ENVELOPE:
                    assert send_control is not None
                    await send_control(frame_type, data)
                else:
                    await conn.send(data)
            except FrameError as exc:  # checked when queued: a bug, not the peer's doing
                log.error("bus: a frame for %s was refused by its transport: %s", conn.peer, exc)
                if box.closed is None:
                    self._drop(conn, "send-failed")
                return
            except (BrokenError, ClosedError, ChannelError) as exc:
                if box.closed is None:
                    self._drop(conn, "send-failed")
                    log.info("bus: sending on %s failed: %s", conn.peer, exc)
                return
            box.last_sent = trio.current_time()
            box.writing_since = None

    # ------------------------------------------------------------ connections

    def _shard_for(self, address: Address, sender: str) -> int:
        """Which of the connections to ``address`` carries ``sender``: the first
        that proved it or has room to (the other side hears at most MAX_CLAIMS
        agents per channel, so a node hosting more opens more connections)."""
        shard = 0
        while True:
            link = self._links.get((address, shard))
            conn = None if link is None else link.conn
            if (not isinstance(conn, ChannelConnection) or conn not in self._live
                    or sender in conn.channel.proven_here or len(conn.channel.proven_here) < MAX_CLAIMS):
                return shard
            shard += 1

    async def _connect(self, address: Address, shard: int = 0) -> Connection:
        link = self._links.get((address, shard))
        if link is None:
            link = self._links[(address, shard)] = _Link(address)
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
                    if self._channels:
                        conn = await self._secure(conn, initiator=True)
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
            self._open(conn)
            self._nursery.start_soon(self._serve_connection, conn, link)
            return conn

    async def _secure(self, conn: Connection, *, initiator: bool) -> ChannelConnection:
        """Run the channel handshake on ``conn`` within the handshake timeout
        (closing it on failure: UnreachableError for ours, ChannelError for theirs)."""
        try:
            with trio.fail_after(self._handshake_timeout):
                secured = await channel_handshake(conn, initiator=initiator)
            if self._admit_peer is not None:
                admit_peer, certificate = self._admit_peer, secured.peer_certificate
                secured.channel.admit = lambda agent: admit_peer(agent, certificate)
            secured.on_want = lambda agent: self._on_want(secured, agent)
            return secured
        except (ChannelError, BrokenError, ClosedError, FrameError, trio.TooSlowError) as exc:
            with trio.CancelScope(shield=True):
                await conn.aclose()
            timed_out = isinstance(exc, trio.TooSlowError)
            what = "timed out" if timed_out else str(exc)
            if initiator:
                raise UnreachableError(f"channel handshake with {conn.peer} failed: {what}") from None
            raise (_HandshakeTimeout if timed_out else ChannelError)(
                f"channel handshake from {conn.peer} failed: {what}") from None
        except BaseException:  # cancelled (a request's timeout, the node closing): the socket is ours to close
            with trio.CancelScope(shield=True):
                await conn.aclose()
            raise

    def _open(self, conn: Connection) -> None:
        self._live.add(conn)
        box = self._outboxes[conn] = _Outbox(*self._send_queue)
        self._scopes[conn] = trio.CancelScope()
        self._nursery.start_soon(self._write, conn, box)

    async def _accept(self, conn: Connection) -> None:
        source = _source_key(getattr(conn, "source", conn.peer))
        if self._closed or len(self._incoming) + self._handshaking >= self._max_connections:
            self._refused += 1
            log.warning("bus: refusing connection from %s (limit %d)", conn.peer, self._max_connections)
            await conn.aclose()
            return
        if self._channels and not self._take_handshake_token(source):
            self._refused += 1
            self._dropped["handshake-rate"] += 1
            log.warning("bus: refusing connection from %s (over %g handshakes/s)", conn.peer, self._handshake_rate)
            await conn.aclose()
            return
        if self._sources[source] >= self._max_per_source:
            self._refused += 1
            log.warning("bus: refusing connection from %s (limit %d per source)", conn.peer, self._max_per_source)
            await conn.aclose()
            return
        self._sources[source] += 1
        try:
            if self._channels:
                self._handshaking += 1
                try:
                    conn = await self._secure(conn, initiator=False)
                except ChannelError as exc:
                    self._dropped["handshake-timeout" if isinstance(exc, _HandshakeTimeout) else "handshake-failed"] += 1
                    log.warning("bus: %s", exc)
                    return
                finally:
                    self._handshaking -= 1
            self._incoming.add(conn)
            self._open(conn)
            # nothing proved yet: our agents are proved once the client proved one we know
            await self._serve_connection(conn, None)
        finally:
            self._sources[source] -= 1
            if not self._sources[source]:
                del self._sources[source]

    def _take_handshake_token(self, source: str) -> bool:
        """Whether ``source`` may start a handshake now (a token bucket per address;
        at most 4,096 addresses remembered, the least recently seen forgotten first)."""
        now = trio.current_time()
        tokens, at = self._handshake_buckets.pop(source, (float(self._handshake_burst), now))
        tokens = min(float(self._handshake_burst), tokens + (now - at) * self._handshake_rate)
        ok = tokens >= 1.0
        self._handshake_buckets[source] = (tokens - 1.0 if ok else tokens, now)
        if len(self._handshake_buckets) > 4096:
            del self._handshake_buckets[next(iter(self._handshake_buckets))]
        return ok

    def _held(self, conn: Connection) -> bool:
        """Whether an endpoint still needs ``conn`` (so idleness does not close it)."""
        return any(ep.holds(conn) for ep in self._endpoints.values())

    def _timed_out(self, conn: Connection, incoming: bool, started: float, last_frame: float | None) -> str | None:
        """The timeout that expired for ``conn``, if any (None: keep waiting)."""
        now = trio.current_time()
        box = self._outboxes.get(conn)
        writing = None if box is None else box.writing_since
        if writing is not None and now >= writing + self._write_timeout:
            return "write-timeout"
        partial = getattr(conn, "partial_since", None)
        if partial is not None and now >= partial + self._frame_timeout:
            return "frame-timeout"
        if not incoming:
            return None
        if last_frame is None:
            return "handshake-timeout" if now >= started + self._handshake_timeout else None
        if now >= started + self._handshake_timeout and self._unvouched(conn):
            return "unproven-timeout"  # (its envelopes are refused: they must not keep it open)
        last = max(last_frame, box.last_sent if box is not None else last_frame)
        if now >= last + self._idle_timeout and not self._held(conn):
            return "idle-timeout"
        return None

    def _deadline(self, conn: Connection, incoming: bool, started: float, last_frame: float | None) -> float:
        """When to look at ``conn``'s timeouts next (at least every ``frame_timeout``
        and every ``write_timeout``, so a frame that begins to arrive or to be written
        while the node waits is timed too: a write is dropped at most
        ``write_timeout`` after it began)."""
        now = trio.current_time()
        deadline = now + min(self._frame_timeout, self._write_timeout)
        box = self._outboxes.get(conn)
        writing = None if box is None else box.writing_since
        if writing is not None:
            deadline = min(deadline, writing + self._write_timeout)
        partial = getattr(conn, "partial_since", None)
        if partial is not None:
            deadline = min(deadline, partial + self._frame_timeout)
        if incoming:
            if last_frame is None or self._unvouched(conn):
                deadline = min(deadline, started + self._handshake_timeout)
            else:
                idle_at = max(last_frame, box.last_sent if box is not None else last_frame) + self._idle_timeout
                if idle_at > now:  # else held by an endpoint: the frame-timeout tick looks again
                    deadline = min(deadline, idle_at)
        return deadline

    async def _watch(self, conn: Connection, incoming: bool, started: float, seen: list[float | None]) -> None:
        """``conn``'s timeouts, in a task of their own (the reader sets up no timer per
        frame): sleep to the next deadline, drop the connection if one expired."""
        while True:
            await trio.sleep_until(self._deadline(conn, incoming, started, seen[0]))
            reason = self._timed_out(conn, incoming, started, seen[0])
            if reason is not None:
                self._drop(conn, reason)
                return

    async def _decode_frame(self, data: bytes, aliases: Aliases | None) -> Envelope:
        """Decode on the event loop what holds at most ``thread_decode_objects``
        objects (a frame no longer than that cannot hold more); the rest in a thread."""
        if len(data) <= self._thread_objects:
            return self._decode(data, aliases=aliases)
        try:
            check_structure(data, max_objects=self._thread_objects, max_depth=self._max_depth)
        except TooManyObjects:
            return await trio.to_thread.run_sync(functools.partial(self._decode, data, aliases=aliases),
                                                 limiter=self._decode_limiter)
        except StructureError as exc:
            raise EnvelopeError("malformed", f"refused by structure: {exc}") from None
        if type(data) is bytearray:  # a frame only this node holds: a reply's large bin is not copied
            env = decode_reply_in_place(data, self._max_objects, self._max_depth)
            if env is not None:
                return env
        return _decode_checked(data, self._max_objects, self._max_depth, aliases)

    async def _read(self, conn: Connection, seen: list[float | None]) -> None:
        """Receive, decode and deliver ``conn``'s frames until it ends or must close."""
        frames = 0
        now = self._now
        # an incoming channel: its envelopes reach no endpoint before it is vouched for
        unvouched = isinstance(conn, ChannelConnection) and conn in self._incoming
        channel = conn.channel if isinstance(conn, ChannelConnection) else None
        # (the channel's alias tables: a sender or recipient named by alias is read back to its name)
        aliases = None if channel is None else (channel.their_names, channel.own_names)
        refused = 0
        endpoints = self._endpoints
        reply_routes = self._reply_routes
        small, max_objects, max_depth = self._thread_objects, self._max_objects, self._max_depth
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
            seen[0] = now()
            frames += 1
            size = len(data)
            self._frames_received += 1
            self._bytes_received += size
            try:  # (a small frame decoded here, as decode_envelope would: no coroutine per frame)
                if size <= small:  # (<= max_objects: no structure walk needed)
                    env = _decode_checked(data, max_objects, max_depth, aliases)
                else:
                    env = await self._decode_frame(data, aliases)
            except EnvelopeError as exc:
                if frames == 1 and not self._channels and is_channel_hello(data):
                    self._dropped["handshake-failed"] += 1  # a channel node calling a signed-mode one
                    log.warning("bus: %s asked for a channel; this node runs signed mode", conn.peer)
                    break
                self._rejected[exc.reason] += 1
                log.warning("bus: closing %s after an undecodable envelope: %s", conn.peer, exc)
                break
            if unvouched:
                if not self._vouch(conn):  # type: ignore[arg-type]
                    # no endpoint looks at it (no verification per envelope), no error
                    # reply (it would need a proof of ours: a signature)
                    self._rejected["unproven-sender"] += 1
                    if not refused:  # (once per connection: its refusals are counted, not logged)
                        log.warning("bus: refusing envelopes via %s (from %r): it proved no agent this "
                                    "node knows", conn.peer, env.sender)
                    refused += 1
                    if conn not in self._live:
                        break
                    continue
                unvouched = False
            recipient = env.recipient
            if not recipient:  # a compact reply: to the endpoint whose request it names
                ep = endpoints.get(reply_routes.get(env.correlation_id))  # type: ignore[arg-type]
                if ep is None:
                    count = self._rejected["unexpected-reply"] = self._rejected["unexpected-reply"] + 1
                    if logged_repeat(count):
                        log.warning("bus: a reply via %s answers no pending request here (#%d)", conn.peer, count)
                    continue
            else:
                ep = endpoints.get(recipient)
            if ep is None:
                count = self._rejected["misaddressed"] = self._rejected["misaddressed"] + 1
                if logged_repeat(count):  # (a client repeats it at will: counted, logged now and then)
                    log.warning("bus: envelope from %r via %s for %r, who is not hosted here (#%d)", env.sender,
                                conn.peer, env.recipient, count)
                continue
            try:
                await ep.deliver(env, size, conn)
            except Exception:  # a bug must not take the node down
                log.error("bus: failure handling an envelope from %s", conn.peer, exc_info=True)
                break
            if channel is not None and channel.failed_proofs >= MAX_PROOF_FAILURES:
                self._drop(conn, "bad-proofs")  # (each refused proof cost the endpoint a verification)
                break

    async def _serve_connection(self, conn: Connection, link: _Link | None) -> None:
        incoming = link is None
        started = trio.current_time()
        scope = self._scopes.get(conn) or trio.CancelScope()
        seen: list[float | None] = [None]  # when the last frame arrived (for the watchdog)
        try:
            with scope:
                async with trio.open_nursery() as watchdog:
                    watchdog.start_soon(self._watch, conn, incoming, started, seen)
                    await self._read(conn, seen)
                    watchdog.cancel_scope.cancel()
        finally:
            self._live.discard(conn)
            self._incoming.discard(conn)
            self._vouched.discard(conn)
            self._unproven.pop(conn, None)
            self._scopes.pop(conn, None)
            box = self._outboxes.pop(conn, None)
            if box is not None:
                box.close("connection closed")
            if link is not None and link.conn is conn:
                link.conn = None
            for agent in [a for a, c in self._paths.items() if c is conn]:
                del self._paths[agent]
            for ep in list(self._endpoints.values()):
                ep.connection_lost(conn)
            with trio.CancelScope(shield=True):
                await conn.aclose()


@contextlib.asynccontextmanager
async def open_node(**options: Any) -> AsyncIterator[Node]:
    """Run a :class:`Node` for the duration of the block.

    ``options`` are the node's (see :class:`Node`): ``routes``,
    ``transports``, ``max_frame_size``, ``max_connections``,
    ``max_connections_per_source``, ``handshakes_per_source``, ``send_queue_frames``,
    ``send_queue_bytes``, ``write_timeout``, ``handshake_timeout``,
    ``idle_timeout``, ``frame_timeout``, ``max_objects``, ``max_depth``,
    ``thread_decode_objects``, ``connect_attempts``, ``backoff_base``,
    ``backoff_cap``, ``clock``, ``channels``, ``admit_peer``.
    Leaving the block closes every endpoint, listener and connection.
    """
    async with trio.open_nursery() as nursery:
        node = Node(nursery, **options)
        try:
            yield node
        finally:
            with trio.CancelScope(shield=True):
                await node.aclose()
            nursery.cancel_scope.cancel()
