"""The bus's resource limits: named constants, their defaults and why.

Every limit is a keyword option of :func:`bus.open_node` (the name in
parentheses) or of a transport, and is listed in docs/security.md. The
defaults are chosen so that no single client (one connection, or one remote
address) can hold what every other client needs: request slots, the event
loop, memory, or connection slots.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_CONNECTIONS_PER_SOURCE",
    "DEFAULT_HANDSHAKES_PER_SOURCE",
    "DEFAULT_SEND_QUEUE_FRAMES",
    "DEFAULT_SEND_QUEUE_BYTES",
    "DEFAULT_WRITE_TIMEOUT",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_FRAME_TIMEOUT",
    "DEFAULT_MAX_OBJECTS",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_THREAD_DECODE_OBJECTS",
    "MAX_PROOF_FAILURES",
    "LOGGED_REPEATS",
]

DEFAULT_MAX_CONNECTIONS = 1024
"""Incoming connections a node holds at once (``max_connections``)."""

DEFAULT_MAX_CONNECTIONS_PER_SOURCE = 64
"""Incoming connections from one remote address (IP) at once
(``max_connections_per_source``), so one address cannot hold the global cap."""

DEFAULT_HANDSHAKES_PER_SOURCE = (100.0, 1000)
"""Channel handshakes one remote address may start: ``(per second, burst)``
(``handshakes_per_source``, a token bucket). A handshake costs the node an
X25519 exchange (its agents' proofs come only once the client proved an agent
the node knows): an address that opens connections only to drop them cannot
make the node spend more than this on it; the burst lets a load test or a
hospital's NAT connect its clients at once."""

DEFAULT_SEND_QUEUE_FRAMES = 4096
"""Frames queued for one connection's writer (``send_queue_frames``). A reply or
event that finds the queue full drops the connection instead of waiting."""

DEFAULT_SEND_QUEUE_BYTES = 64 * 1024 * 1024
"""Bytes queued for one connection's writer (``send_queue_bytes``); an empty
queue always takes one frame, so this never refuses a frame the frame limit allows."""

DEFAULT_WRITE_TIMEOUT = 20.0
"""Seconds one frame may take to be written (``write_timeout``); a connection
whose peer does not read for that long is dropped."""

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
"""Seconds an incoming connection has to deliver its first complete frame
(TLS handshake included) (``handshake_timeout``)."""

DEFAULT_IDLE_TIMEOUT = 300.0
"""Seconds an incoming connection may carry no frame either way before it is
closed (``idle_timeout``); a connection an endpoint still needs (a subscriber
or subscription on it, a request waiting on it) is kept."""

DEFAULT_FRAME_TIMEOUT = 60.0
"""Seconds from a frame's first byte to its last (``frame_timeout``): a
half-sent frame is not held open longer."""

DEFAULT_MAX_OBJECTS = 262_144
"""msgpack objects in one envelope (``max_objects``): every array or map item
counts one (a map entry two). A frame with more is refused by its structure
before anything is built from it."""

DEFAULT_MAX_DEPTH = 64
"""Nesting depth of arrays and maps in one envelope (``max_depth``; the envelope
array is one level), checked on every frame: with the object count by structure
for frames longer than ``max_objects`` bytes, and on the decoded body of shorter
ones (which cannot hold more objects than bytes, so msgpack builds at most that
many before the walk that refuses extension types counts the levels too)."""

DEFAULT_THREAD_DECODE_OBJECTS = 4096
"""A frame found (by structure, on the event loop, within this many steps) to hold
more msgpack objects than this is checked and decoded in a worker thread, one at a
time per node (``thread_decode_objects``); the event loop's share of any frame is
bounded by this count, whatever the frame's length (a large binary body is a few
objects and stays on the loop)."""

MAX_PROOF_FAILURES = 4
"""Identity proofs that fail to verify on one incoming channel before the node
drops it (``bad-proofs``). A node proves its own agents on an incoming channel
only once the other side proved one the node knows (see :class:`bus.Node`);
checking a proof costs a signature verification, and a client proves one or
two agents, so a client sending proofs under registered names with a key not
theirs costs at most this many verifications per connection."""

LOGGED_REPEATS = 8
"""A refusal that a client can repeat at will for the cost of a small envelope (one
from an unknown or unproved sender, to an agent not hosted here, a reply nobody
asked for, a fire-and-forget message of a kind nobody handles) is logged its first
this many times for one endpoint or node and reason, then at each power of two
(with the count): every one is counted in the statistics, so a flood cannot fill
the node's log at one line per ~40 bytes sent."""


def logged_repeat(count: int) -> bool:
    """Whether the ``count``-th refusal of one reason is logged (:data:`LOGGED_REPEATS`)."""
    return count <= LOGGED_REPEATS or not count & (count - 1)
