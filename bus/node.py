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
exponential backoff); else :class:`UnreachableError`. Every envelope, local or
not, must fit the frame limit.

A frame that does not decode closes its connection; one addressed to an agent
not hosted here is dropped and counted. Either way other connections go on.
"""

from __future__ import annotations

__all__ = ["Node", "open_node"]

import contextlib
import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

import trio

from ._endpoint import Endpoint, _Attachment
from ._stats import NodeStatistics
from .envelope import Directory, EnvelopeError, Signer, Verifier, decode_envelope
from .errors import BrokenError, BusError, ClosedError, FrameError, UnreachableError
from .framing import DEFAULT_MAX_FRAME_SIZE
from .transport import Address, Connection, TcpTransport, Transport, parse_address

log = logging.getLogger("bus")


class _Link:
    """A pooled outgoing connection to one address, and its reconnect state."""

    __slots__ = ("address", "conn", "lock", "failed_at")

    def __init__(self, address: Address):
        self.address = address
        self.conn: Connection | None = None
        self.lock = trio.Lock()
        self.failed_at = -math.inf  # when the last connect loop gave up (trio time)


class Node:
    """Hosts endpoints, listeners and connections. Create with :func:`open_node`.

    Options (keyword arguments of :func:`open_node`): ``routes``, agent id ->
    address; ``transports``, scheme -> transport (default: plain ``tcp``;
    pass ``TcpTransport(client_ssl=..., server_ssl=...)`` for TLS and a shared
    :class:`MemoryTransport` as ``mem`` for in-process links between nodes);
    ``max_frame_size``, the largest envelope carried, locally too;
    ``max_connections``, incoming connections at once; ``connect_attempts``,
    ``backoff_base`` and ``backoff_cap`` (seconds), how an outgoing connection
    is retried; ``clock``, wall-clock seconds (``time.time``) for envelope
    timestamps.

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
        self._endpoints: dict[str, _Attachment] = {}
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

    def now_ms(self) -> int:
        return math.floor(self._clock() * 1000)

    def spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        self._nursery.start_soon(fn, *args)

    def attach(self, identity: str, attachment: _Attachment) -> None:
        self._endpoints[identity] = attachment

    def detach(self, identity: str) -> None:
        self._endpoints.pop(identity, None)

    def is_live(self, conn: Connection) -> bool:
        return conn in self._live

    def note_path(self, agent: str, conn: Connection) -> None:
        if conn in self._live:
            self._paths[agent] = conn

    def path_to(self, agent: str) -> Connection | None:
        return self._paths.get(agent)

    async def route(self, recipient: str, data: bytes, via: Connection | None) -> Connection | None:
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
            await local.deliver(env, len(data), None)
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

    # ------------------------------------------------------------ connections

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
                    await ep.deliver(env, len(data), conn)
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
                ep.connection_lost(conn)
            with trio.CancelScope(shield=True):
                await conn.aclose()


@contextlib.asynccontextmanager
async def open_node(**options: Any) -> AsyncIterator[Node]:
    """Run a :class:`Node` for the duration of the block.

    ``options`` are the node's (see :class:`Node`): ``routes``,
    ``transports``, ``max_frame_size``, ``max_connections``,
    ``connect_attempts``, ``backoff_base``, ``backoff_cap``, ``clock``.
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
