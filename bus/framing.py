"""Length-prefixed frames over a byte stream, sans-I/O.

A frame is a 4-byte big-endian unsigned length ``n`` followed by ``n`` payload
bytes. :class:`FrameDecoder` takes bytes as they arrive (any split: partial
headers, partial bodies, many frames per read) and returns the complete
payloads; the length is checked against the maximum as soon as the header is
complete, before any of the body is buffered.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "FRAME_HEADER_SIZE",
    "FrameDecoder",
    "encode_frame",
]

from .errors import FrameError

FRAME_HEADER_SIZE = 4
RESERVE_MIN = 256 * 1024
"""Bodies from this size may be received in place (:meth:`FrameDecoder.reserve`)."""
MUTABLE_BYTES = 64 * 1024
"""Frames from this size come out of the decoder as a bytearray nobody else holds (a
channel decrypts one in place: no second buffer of its size); smaller ones as bytes."""
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024
_ABSOLUTE_MAX = 2**32 - 1


def _check_max(max_frame_size: int) -> int:
    if not isinstance(max_frame_size, int) or isinstance(max_frame_size, bool):
        raise TypeError("max_frame_size must be an int")
    if not 0 < max_frame_size <= _ABSOLUTE_MAX:
        raise ValueError(f"max_frame_size must be in [1, {_ABSOLUTE_MAX}], got {max_frame_size}")
    return max_frame_size


def encode_frame(payload: bytes, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """The frame carrying ``payload``: its 4-byte big-endian length, then it."""
    n = len(payload)
    if n > _check_max(max_frame_size):
        raise FrameError(f"frame payload of {n} bytes exceeds the maximum of {max_frame_size}")
    return n.to_bytes(FRAME_HEADER_SIZE, "big") + bytes(payload)


class FrameDecoder:
    """Streaming decoder: ``feed(data)`` returns the payloads completed by it (from
    :data:`MUTABLE_BYTES` on, each a bytearray only the caller holds).

    A frame's body is kept as views of the chunks it arrived in and joined once
    when its last byte arrives: each payload byte is copied once, however many
    reads a large frame takes (:attr:`pending` tells a reader how much to ask
    for). Only bytes that arrived are held: a header announcing a large frame
    reserves nothing.

    A reader may instead receive the rest of a large frame's body straight into
    the decoder's buffer (:meth:`reserve`, then :meth:`filled`): no pieces joined
    at the end. That buffer is made only once at least half of a body of at least
    :data:`RESERVE_MIN` bytes arrived, so what a frame holds stays under twice the
    bytes that arrived.

    After a :class:`FrameError` the decoder is broken (a byte stream cannot be
    resynchronised) and every further ``feed`` raises again.
    """

    __slots__ = ("_max", "_head", "_parts", "_have", "_need", "_error", "_into")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE):
        self._max = _check_max(max_frame_size)
        self._head = b""  # the first bytes of a header not yet complete
        self._parts: list[memoryview] = []  # the body received so far of the frame being read
        self._have = 0  # bytes in _parts
        self._need: int | None = None  # body length of the frame being read
        self._error: FrameError | None = None
        self._into: bytearray | None = None  # the body being received in place (see reserve)

    @property
    def max_frame_size(self) -> int:
        return self._max

    @max_frame_size.setter
    def max_frame_size(self, value: int) -> None:
        """Change the limit for the frames still to come (a handshake reads its
        first frame under a small one)."""
        self._max = _check_max(value)

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame (non-zero at EOF means truncation)."""
        return len(self._head) + self._have + (FRAME_HEADER_SIZE if self._need is not None else 0)

    @property
    def pending(self) -> int:
        """Bytes still missing from the frame being read (0 between frames, where
        the next frame's size is not known yet)."""
        return 0 if self._need is None else self._need - self._have

    def reserve(self, queued: int = 0) -> memoryview | None:
        """Where to receive the rest of the frame being read (a writable view of the
        missing part of its body; tell :meth:`filled` how much was written), or None:
        give the next bytes to :meth:`feed`. A view only for a body of at least
        :data:`RESERVE_MIN` bytes once at least half of it arrived (its buffer is
        then made, and what arrived moved into it, once). ``queued``: bytes that
        arrived for this stream and wait to be read (a socket's receive queue,
        ``FIONREAD``): they count as arrived, so a frame whose body is already
        waiting is read straight into its buffer, not first into pieces to join."""
        need = self._need
        if need is None or need < RESERVE_MIN or self._error is not None:
            return None
        if self._into is None:
            if 2 * (self._have + min(max(queued, 0), need - self._have)) < need:
                return None
            into = bytearray(need)
            pos = 0
            for part in self._parts:
                into[pos : pos + len(part)] = part
                pos += len(part)
            self._parts = []
            self._into = into
        return memoryview(self._into)[self._have :]

    def filled(self, n: int) -> list[bytes | bytearray]:
        """``n`` bytes were written at the start of the last :meth:`reserve` view: the
        frame (a bytearray nobody else holds) once its body is complete."""
        if self._into is None or not 0 <= n <= self.pending:
            raise ValueError("filled() without a reserved view, or beyond it")
        self._have += n
        if self._have < self._need:  # type: ignore[operator]
            return []
        frame, self._into = self._into, None
        self._have = 0
        self._need = None
        return [frame]

    def feed(self, data: bytes) -> list[bytes]:
        if self._error is not None:
            raise FrameError(f"decoder is broken by an earlier error: {self._error}")
        if type(data) is not bytes:
            data = bytes(data)  # views of it are kept: it must not change under them
        if self._into is not None:  # a body being received in place: the rest of it goes there
            take = min(self.pending, len(data))
            view = self.reserve()
            view[:take] = data[:take]  # type: ignore[index]
            done = self.filled(take)
            return done + self.feed(data[take:]) if take < len(data) else done
        end = len(data)
        if self._need is None and not self._head and end >= FRAME_HEADER_SIZE:
            # the common case of a small message: exactly one whole frame in this read
            need = int.from_bytes(data[:FRAME_HEADER_SIZE], "big")
            if need == end - FRAME_HEADER_SIZE and need <= self._max:
                if need < MUTABLE_BYTES:
                    return [data[FRAME_HEADER_SIZE:]]
                return [bytearray(memoryview(data)[FRAME_HEADER_SIZE:])]
        view = memoryview(data)
        frames: list[bytes] = []
        pos = 0
        while pos < end:
            need = self._need
            if need is None:
                take = min(FRAME_HEADER_SIZE - len(self._head), end - pos)
                head = self._head + data[pos : pos + take]
                pos += take
                if len(head) < FRAME_HEADER_SIZE:
                    self._head = head
                    break
                self._head = b""
                need = int.from_bytes(head, "big")
                if need > self._max:
                    self._error = FrameError(f"frame of {need} bytes exceeds the maximum of {self._max}")
                    raise self._error
                self._need = need
            take = min(need - self._have, end - pos)
            if take == need:  # the whole body (maybe empty) in this read
                frames.append(data[pos : pos + take] if take < MUTABLE_BYTES else bytearray(view[pos : pos + take]))
                self._need = None
            elif take:
                self._parts.append(view[pos : pos + take])
                self._have += take
                if self._have == need:
                    frames.append((b"" if need < MUTABLE_BYTES else bytearray()).join(self._parts))
                    self._parts = []
                    self._have = 0
                    self._need = None
            pos += take
        return frames

    def check_eof(self) -> None:
        """Raise :class:`FrameError` if the stream ended inside a frame."""
        if self.buffered:
            raise FrameError(f"stream ended inside a frame ({self.buffered} bytes buffered)")
