"""Traffic accounting: messages and bytes per kind and per peer."""

from __future__ import annotations

__all__ = ["Traffic", "EndpointStatistics", "NodeStatistics"]

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType


@dataclasses.dataclass(frozen=True, slots=True)
class Traffic:
    """A message count and their size in bytes (encoded envelopes; stream
    transports add a 4-byte frame header per message on the wire)."""

    messages: int = 0
    bytes: int = 0

    @property
    def bits(self) -> int:
        return 8 * self.bytes

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(self.messages + other.messages, self.bytes + other.bytes)


@dataclasses.dataclass(frozen=True, slots=True)
class EndpointStatistics:
    """A snapshot of one endpoint's traffic.

    ``*_by_kind`` keys are message kinds: a reply or error reply counts under
    the kind of its request, an event under its topic. ``rejected`` counts
    refused envelopes by reason (see :data:`bus.envelope.REJECT_REASONS`,
    plus ``unknown-kind``, ``unexpected-reply``, ``unexpected-event``).
    """

    identity: str
    sent_by_kind: Mapping[str, Traffic]
    received_by_kind: Mapping[str, Traffic]
    sent_by_peer: Mapping[str, Traffic]
    received_by_peer: Mapping[str, Traffic]
    rejected: Mapping[str, int]
    pending_requests: int
    inbox: int
    subscribers: int
    subscriptions: int

    @property
    def sent(self) -> Traffic:
        return sum(self.sent_by_kind.values(), Traffic())

    @property
    def received(self) -> Traffic:
        return sum(self.received_by_kind.values(), Traffic())


@dataclasses.dataclass(frozen=True, slots=True)
class NodeStatistics:
    """A snapshot of a node's connections and of frames no endpoint accepted."""

    endpoints: int
    connections: int
    incoming_connections: int
    outgoing_connections: int
    frames_received: int
    bytes_received: int
    rejected: Mapping[str, int]
    """Frames no endpoint took, by reason: one of :data:`bus.envelope.REJECT_REASONS`
    (undecodable; ``unproven-sender`` on a channel not vouched for), ``misaddressed``
    (for an agent not hosted here), ``unexpected-reply`` (a compact reply whose
    correlation id no request of this node waits for)."""
    broken_connections: int
    refused_connections: int
    dropped_connections: Mapping[str, int] = dataclasses.field(default_factory=dict)
    """Connections the node closed, by reason: ``send-queue-full``,
    ``write-timeout``, ``send-failed``, ``handshake-failed`` (not a channel
    hello, a bad key, a signed-mode peer), ``handshake-timeout`` (no hello
    within the handshake timeout), ``idle-timeout``, ``frame-timeout``."""
    handshaking: int = 0
    """Incoming connections still in the channel handshake (they count against
    the connection caps but are not yet in ``incoming_connections``)."""


MAX_COUNTED_KEYS = 4096
"""Distinct kinds (and distinct peers) an endpoint counts apart; traffic of any further
one is counted under :data:`OTHER` (a sender inventing kinds, or ids, grows nothing)."""
OTHER = "(other)"


class _KindPeerCounter:
    """Traffic counted by kind and by peer at once (one call per message); at most
    :data:`MAX_COUNTED_KEYS` of each apart (kinds are counted before any handler is
    looked up, so an unregistered one must not add an entry per message)."""

    __slots__ = ("_kinds", "_peers")

    def __init__(self) -> None:
        self._kinds: dict[str, list[int]] = {}
        self._peers: dict[str, list[int]] = {}

    def add(self, kind: str, peer: str, nbytes: int) -> None:
        entry = self._kinds.get(kind)
        if entry is None:
            if len(self._kinds) >= MAX_COUNTED_KEYS:
                kind = OTHER
            entry = self._kinds.setdefault(kind, [0, 0])
        entry[0] += 1
        entry[1] += nbytes
        entry = self._peers.get(peer)
        if entry is None:
            if len(self._peers) >= MAX_COUNTED_KEYS:
                peer = OTHER
            entry = self._peers.setdefault(peer, [0, 0])
        entry[0] += 1
        entry[1] += nbytes

    def by_kind(self) -> Mapping[str, Traffic]:
        return MappingProxyType({k: Traffic(m, b) for k, (m, b) in self._kinds.items()})

    def by_peer(self) -> Mapping[str, Traffic]:
        return MappingProxyType({k: Traffic(m, b) for k, (m, b) in self._peers.items()})
