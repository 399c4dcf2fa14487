"""Channels over connections: the handshake run on a :class:`Connection`, and the
connection that seals and opens every frame after it (:mod:`bus.channel` has the
protocol; the node decides when to prove whom).

:func:`channel_handshake` exchanges the two hellos within a deadline and returns a
:class:`ChannelConnection`, a :class:`Connection` whose ``send`` carries an
envelope and whose ``receive`` returns the next envelope, recording on the way
the identity proofs the other side sends (``channel.claims``). A frame that
fails authentication (forged, changed, replayed, reordered) breaks the
connection. On a byte stream (a transport with ``send_frame``) a frame is sealed
behind its length prefix and written as it is. Frames larger than
:data:`THREAD_SEAL_BYTES` are sealed and opened
in a worker thread, one at a time per direction, so
the order of counters is the order on the wire.
"""

from __future__ import annotations

__all__ = ["ChannelConnection", "channel_handshake", "THREAD_SEAL_BYTES"]

from collections.abc import Callable

import trio

from .channel import CHANNEL_OVERHEAD, ENVELOPE, MAX_HELLO_SIZE, PROOF, WANT, Channel, ChannelError, Handshake
from .errors import BrokenError, ClosedError, FrameError
from .transport import Connection

THREAD_SEAL_BYTES = 4 * 1024 * 1024
"""Frames at least this large are sealed/opened off the event loop (AES-GCM takes
well under a millisecond per MiB: smaller frames are not worth a thread hop). A
storage read's 1 MiB pieces stay on the loop: sealing one takes ~0.13 ms and
opening ~0.2 ms (``emrshare bench storage``), less than a hop to a worker thread
and back costs on a busy machine."""


class ChannelConnection:
    """A :class:`Connection` whose frames travel sealed on an established channel."""

    def __init__(self, conn: Connection, channel: Channel):
        self.inner = conn
        self.channel = channel
        self.on_want: Callable[[str], None] | None = None
        """Set by the node: the other side asks us to prove an agent (WANT)."""
        self.wanted: set[str] = set()
        """Agents we asked the other side to prove (each asked once)."""
        self.peer = conn.peer
        self.source = getattr(conn, "source", conn.peer)
        self._claimed = trio.lowlevel.ParkingLot()
        self._ended = False
        inner = getattr(conn, "max_payload", None)
        self._limit = None if inner is None else inner - CHANNEL_OVERHEAD  # (a transport's limit is fixed)
        self.max_payload: int | None = self._limit
        """The largest envelope this connection carries (the transport's frame
        limit less the channel's overhead), None if the transport does not say
        (an attribute: the node asks before every send)."""
        # a byte stream takes whole frames sealed behind their length prefix (no copy to frame them)
        self._send_frame = getattr(conn, "send_frame", None)
        self._try_send_frame = getattr(conn, "try_send_frame", None)
        self._can_try_send = getattr(conn, "can_try_send", None)
        if self._can_try_send is not None:  # asked before every write: the transport's own, no call around it
            self.can_try_send = self._can_try_send  # type: ignore[method-assign]

    @property
    def partial_since(self) -> float | None:
        return getattr(self.inner, "partial_since", None)

    @property
    def peer_certificate(self) -> bytes | None:
        """The TLS certificate (DER) the other side presented under the channel, if any."""
        return getattr(self.inner, "peer_certificate", None)

    async def _seal(self, frame_type: int, payload: bytes, framed: bool = False) -> bytes | bytearray:
        if len(payload) >= THREAD_SEAL_BYTES:
            return await trio.to_thread.run_sync(lambda: self.channel.seal(frame_type, payload, framed=framed))
        return self.channel.seal(frame_type, payload, framed=framed)

    async def _send_sealed(self, frame_type: int, payload: bytes) -> None:
        if self._send_frame is not None:  # sealed behind the frame header: one buffer, written as it is
            await self._send_frame(await self._seal(frame_type, payload, True))
        else:
            await self.inner.send(await self._seal(frame_type, payload))

    async def send(self, payload: bytes) -> None:
        """Send one envelope (called by one writer task, in order). FrameError,
        before any counter is used, when it would not fit the transport's frame."""
        limit = self._limit
        if limit is not None and len(payload) > limit:
            raise FrameError(f"envelope of {len(payload)} bytes exceeds this channel's {limit}-byte limit")
        await self._send_sealed(ENVELOPE, payload)

    def can_try_send(self) -> bool:
        """Whether :meth:`try_send` may be called now (the transport can write at once)."""
        return self._can_try_send is not None and self._can_try_send()

    def try_send(self, payload: bytes) -> bytes:
        """Seal one envelope and write it at once (see the transport's ``try_send``,
        whose conditions apply); returns the rest of the sealed frame to send with
        :meth:`send_raw` before any other frame. FrameError, before any counter is
        used, when it would not fit the transport's frame."""
        limit = self._limit
        if limit is not None and len(payload) > limit:
            raise FrameError(f"envelope of {len(payload)} bytes exceeds this channel's {limit}-byte limit")
        if self._try_send_frame is not None:
            return self._try_send_frame(self.channel.seal(ENVELOPE, payload, framed=True))
        return self.inner.try_send(self.channel.seal(ENVELOPE, payload))  # type: ignore[attr-defined]

    async def send_raw(self, data: bytes) -> None:
        """Send the rest of a frame :meth:`try_send` began, as it is."""
        await self.inner.send_raw(data)  # type: ignore[attr-defined]

    async def send_proof(self, payload: bytes) -> None:
        """Send one identity proof (a PROOF payload made by the channel)."""
        await self._send_sealed(PROOF, payload)

    async def send_control(self, frame_type: int, payload: bytes) -> None:
        """Send one PROOF or WANT frame."""
        await self._send_sealed(frame_type, payload)

    async def receive(self) -> bytes | None:
        """The next envelope's bytes; proofs are recorded on the way. BrokenError
        when a frame does not authenticate or a proof is malformed."""
        while True:
            try:
                frame = await self.inner.receive()
            except (BrokenError, ClosedError):
                self.connection_ended()
                raise
            if frame is None:
                self.connection_ended()
                return None
            try:
                if len(frame) >= THREAD_SEAL_BYTES:
                    frame_type, payload = await trio.to_thread.run_sync(self.channel.open, frame)
                else:
                    frame_type, payload = self.channel.open(frame)
                if frame_type == ENVELOPE:
                    return payload
                if frame_type == WANT:
                    agent = self.channel.wanted(payload)
                    if self.on_want is not None:
                        self.on_want(agent)
                    continue
                self.channel.add_claim(payload)
            except ChannelError as exc:
                self.connection_ended()
                raise BrokenError(f"channel from {self.peer}: {exc}") from None
            self._claimed.unpark_all()

    async def wait_claim(self, agent: str) -> bool:
        """Wait (the caller bounds the time) until the other side has proved
        ``agent``; False if the connection closed first."""
        while agent not in self.channel.claims:
            if self._ended:
                return False
            await self._claimed.park()
        return True

    def connection_ended(self) -> None:
        """Wake waiters: no more proofs will come."""
        self._ended = True
        self._claimed.unpark_all()

    async def aclose(self) -> None:
        self.connection_ended()
        await self.inner.aclose()


async def channel_handshake(conn: Connection, *, initiator: bool) -> ChannelConnection:
    """Run the handshake on ``conn`` (the caller bounds the time). Raises
    :class:`ChannelError` when the other side does not speak the channel
    protocol, BrokenError/ClosedError when the connection fails."""
    hs = Handshake(initiator=initiator)
    if initiator:
        await conn.send(hs.hello)
    # a responder reads the first frame of an unknown client under the hello's size
    # limit (the client sends nothing more before our hello); an initiator may get
    # our peer's identity proofs in the same read, so it keeps the full limit
    limit = None if initiator else getattr(conn, "limit_frames", None)
    if limit is not None:
        limit(MAX_HELLO_SIZE)
    try:
        theirs = await conn.receive()
    except FrameError:
        raise ChannelError("handshake: the first frame is not a channel hello") from None
    if limit is not None:
        limit(None)
    if theirs is None:
        raise ClosedError(f"{conn.peer} closed the connection during the channel handshake")
    if len(theirs) > MAX_HELLO_SIZE:
        raise ChannelError("handshake: the first frame is not a channel hello")
    channel = hs.finish(theirs)
    if not initiator:
        await conn.send(hs.hello)
    return ChannelConnection(conn, channel)
