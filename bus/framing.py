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
    """Streaming decoder: ``feed(data)`` returns the payloads completed by it.

    After a :class:`FrameError` the decoder is broken (a byte stream cannot be
    resynchronised) and every further ``feed`` raises again.
    """

    __slots__ = ("_max", "_buf", "_need", "_error")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE):
        self._max = _check_max(max_frame_size)
        self._buf = bytearray()
        self._need: int | None = None  # body length of the frame being read
        self._error: FrameError | None = None

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
        return len(self._buf) + (FRAME_HEADER_SIZE if self._need is not None else 0)

    def feed(self, data: bytes) -> list[bytes]:
        if self._error is not None:
            raise FrameError(f"decoder is broken by an earlier error: {self._error}")
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        need = self._need
        while True:
            if need is None:
                if end - pos < FRAME_HEADER_SIZE:
                    break
                need = int.from_bytes(buf[pos : pos + FRAME_HEADER_SIZE], "big")
                pos += FRAME_HEADER_SIZE
                if need > self._max:
                    del buf[:]
                    self._need = None
                    self._error = FrameError(
                        f"frame of {need} bytes exceeds the maximum of {self._max}"
                    )
                    raise self._error
            if end - pos < need:
                break
            frames.append(bytes(buf[pos : pos + need]))
            pos += need
            need = None
        if pos:
            del buf[:pos]
        self._need = need
        return frames

    def check_eof(self) -> None:
        """Raise :class:`FrameError` if the stream ended inside a frame."""
        if self.buffered:
            raise FrameError(f"stream ended inside a frame ({self.buffered} bytes buffered)")
