"""Transports: framed, bidirectional connections behind one interface.

A transport is chosen by the scheme of an address (``tcp://host:port``,
``mem://name``); :class:`Connection` is what every transport yields: whole
frame payloads in, whole frame payloads out. TCP connections carry
length-prefixed frames (:mod:`bus.framing`), optionally inside TLS
(:class:`_TlsStream`, an ``ssl.SSLObject`` driven here: a read that bytes
already received answer returns at once, a small frame is encrypted and written
by the sending task when nothing is queued, as on plain TCP; mutual TLS when the
server context requires client certificates). A TCP connection, plain or under TLS, reads its socket itself
(:class:`_ReadFirst`): it reads
first when the last read filled its buffer and waits for readability first when
it did not (trio's socket would make a read that fails, or a trip through the
event loop, per frame), yielding at least every few reads; the frames one read
completed are returned one after the other with no further read; on plain TCP the
rest of a large frame's body is read in place (:meth:`FrameDecoder.reserve`, the
bytes waiting in the socket's receive queue counted as arrived: a body already
there is read into its buffer at once, not into pieces to join), so a
frame may come as a bytearray only its receiver holds. A frame already framed
(``send_frame``/``try_send_frame``: a channel seals behind the length prefix) is
written as it is. In-memory connections carry the same payloads over bounded trio
channels, with the same size limit. By default a transport carries frames of the
default envelope limit plus a channel frame's overhead (so a default node's
largest envelope fits on a channel); a transport given a smaller limit makes the
node refuse envelopes that do not fit it (FrameError to the sender).
"""

from __future__ import annotations

__all__ = [
    "Address",
    "parse_address",
    "Connection",
    "Transport",
    "TcpTransport",
    "MemoryTransport",
]

import dataclasses
import fcntl
import os
import ssl
import struct
import termios
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from .errors import BrokenError, BusError, ClosedError, FrameError, UnreachableError
from .channel import CHANNEL_OVERHEAD
from .framing import DEFAULT_MAX_FRAME_SIZE, FRAME_HEADER_SIZE, RESERVE_MIN, FrameDecoder, encode_frame

_RECEIVE_SIZE = 64 * 1024
_INT_ZERO = bytes(4)  # (FIONREAD's int, as ioctl's argument)
_MAX_RECEIVE_SIZE = 4 * 1024 * 1024
"""A read asks for the rest of the frame being received (the decoder's ``pending``),
at least :data:`_RECEIVE_SIZE` and at most this: a 1 MiB frame is a few reads, not
sixteen (each read is a trip through the event loop); while a large body is not yet
read in place, at most what waits in the socket (``FIONREAD``), so a read that
gets one segment does not first allocate a buffer for the whole rest. What a connection holds is
unchanged: a read returns only bytes that arrived, and one larger than
:data:`_RECEIVE_SIZE` never reaches past the frame being read (so no large read
stays pinned by the few bytes of a next frame it carried)."""
_READS_BEFORE_YIELD = 16
_BYTES_BEFORE_YIELD = 256 * 1024
"""A TCP connection that reads without waiting yields to the event loop once it
made :data:`_READS_BEFORE_YIELD` such reads in a row or read this many bytes in
them (see :class:`_ReadFirst`): what one connection does between two chances for
every other task stays small."""
_SEND_APART_BYTES = 64 * 1024
"""Payloads from this size are sent after their length prefix, not copied behind it."""
_TLS_RECORD = 16 * 1024
"""The most plaintext one TLS record carries: a TLS read asks for at most this much at
a time (``SSLObject.read(n)`` allocates ``n`` bytes per call and returns one record)."""
_TLS_READ_OWED_MAX = 64 * 1024
"""The most TLS output a read may leave unsent (a TLS 1.3 KeyUpdate's answer, ~27 bytes
each): a peer that keeps asking for key updates and never reads would otherwise grow
the backlog without bound; past this the stream breaks."""
TRY_SEND_BYTES = _SEND_APART_BYTES
"""Payloads below this size may be written at once by :meth:`_StreamConnection.try_send`."""


@dataclasses.dataclass(frozen=True, slots=True)
class Address:
    """A parsed address: ``scheme`` (``tcp``/``mem``), ``host``, ``port``."""

    scheme: str
    host: str
    port: int = 0

    def __str__(self) -> str:
        if self.scheme == "mem":
            return f"mem://{self.host}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_address(text: str) -> Address:
    """Parse ``tcp://host:port`` (IPv6 as ``[::1]``) or ``mem://name``."""
    if not isinstance(text, str) or "://" not in text:
        raise BusError(f"address must look like scheme://..., got {text!r}")
    scheme, rest = text.split("://", 1)
    if scheme == "mem":
        if not rest:
            raise BusError("mem:// address needs a name")
        return Address("mem", rest)
    if scheme != "tcp":
        raise BusError(f"unknown address scheme {scheme!r}")
    if rest.startswith("["):
        host, sep, port = rest[1:].partition("]:")
    else:
        host, sep, port = rest.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise BusError(f"tcp address must be tcp://host:port, got {text!r}")
    return Address("tcp", host, int(port))


class Connection(Protocol):
    """A framed, bidirectional message connection.

    ``send`` writes one payload; ``receive`` returns the next payload (bytes, or
    a bytearray nobody else holds) or ``None`` at a clean end of stream; both raise :class:`ClosedError` after
    :meth:`aclose` and :class:`BrokenError` when the connection broke
    (including a stream that ended mid-frame or an oversized frame).
    ``receive`` may be cancelled and called again without losing bytes.
    ``source`` names the remote end for per-source limits (the remote IP for
    TCP); ``max_payload`` (optional) is the largest payload ``send`` takes;
    ``peer_certificate`` (optional) the other side's TLS certificate (DER); ``partial_since`` is the trio time at which the frame being received
    began to arrive, None between frames (always None where payloads arrive
    whole).
    """

    peer: str
    source: str
    partial_since: float | None

    async def send(self, payload: bytes) -> None: ...

    async def receive(self) -> bytes | bytearray | None: ...

    async def aclose(self) -> None: ...


Handler = Callable[[Connection], Awaitable[None]]


class Transport(Protocol):
    scheme: str

    async def connect(self, address: Address) -> Connection: ...

    async def serve(
        self,
        address: Address,
        handler: Handler,
        nursery: trio.Nursery,
    ) -> tuple[Address, Callable[[], Awaitable[None]]]:
        """Start listening; return the bound address and an async close function."""
        ...


# ------------------------------------------------------------------ TCP


def _fileno_of(sock: Any) -> Callable[[], int]:
    """``sock.fileno`` of a trio socket without its Python wrapper: the standard
    socket's own method under it (-1 once it is closed, as trio's), called for every
    read and every write at once; trio's method where it has no standard socket."""
    inner = getattr(sock, "_sock", None)
    fileno = getattr(inner, "fileno", None)
    return fileno if callable(fileno) else sock.fileno


class _StreamConnection:
    """A Connection over a trio byte stream (TCP or TLS)."""

    def __init__(self, stream: trio.abc.Stream, peer: str, max_frame_size: int, source: str = ""):
        self._stream = stream
        self.peer = peer
        self.source = source or peer
        self.partial_since: float | None = None
        self._max = max_frame_size
        self._decoder = FrameDecoder(max_frame_size)
        self._frames: deque[bytes] = deque()
        self._send_lock = trio.Lock()
        self._senders = 0  # tasks in _send (holding the lock or waiting for it): no write at once meanwhile
        self._closed = False
        self._broken: str | None = None
        self._eof = False
        self._reader: trio.abc.ReceiveStream = (
            _ReadFirst(stream) if type(stream) is trio.SocketStream else stream)
        self._tls = stream if type(stream) is _TlsStream else None
        plain = type(self._reader) is _ReadFirst
        # plain TCP receives a large frame's body in place (FrameDecoder.reserve)
        self._receive_into = self._reader.receive_into if plain else None  # type: ignore[attr-defined]
        # a read of bytes: plain TCP calls _ReadFirst's read straight (one coroutine less per read)
        self._read_some: Callable[[int], Awaitable[bytes]] = (
            self._reader.read_some if plain else self._reader.receive_some)  # type: ignore[attr-defined]
        self._fileno = _fileno_of(stream.socket) if plain else None  # type: ignore[attr-defined]

    @property
    def max_payload(self) -> int:
        return self._max

    @property
    def peer_certificate(self) -> bytes | None:
        """The other side's TLS certificate (DER) once the TLS handshake is done;
        None on plain TCP or when it sent none."""
        if self._tls is not None:
            try:
                return self._tls.getpeercert(binary_form=True)
            except ValueError:  # (no handshake yet)
                return None
        return None

    def can_try_send(self) -> bool:
        """Whether :meth:`try_send` may be called now (plain TCP, or TLS once its
        handshake is done, with nothing unsent: open, not broken, no send under way)."""
        if self._closed or self._broken or self._senders:  # (a counter: no call to the lock's locked())
            return False
        if self._tls is not None:
            return self._tls.can_write_now()
        return self._fileno is not None and self._fileno() >= 0

    def try_send(self, payload: bytes) -> bytes:
        """Write ``payload``'s frame now, without waiting, from the calling task (no
        writer task woken, no trip through the event loop): call only when
        :meth:`can_try_send` and no frame is waiting to be sent before it, with a
        payload below :data:`TRY_SEND_BYTES` within the frame limit. Returns what the
        socket did not take (empty when it took it all): the caller must send that,
        with :meth:`send_raw`, before any other frame. A socket that fails leaves
        the connection broken and returns the whole frame (send_raw then raises)."""
        return self.try_send_frame(encode_frame(payload, self._max))

    def try_send_frame(self, data: bytes | bytearray) -> bytes:
        """:meth:`try_send` for a whole frame, its length prefix included (as
        :func:`bus.framing.encode_frame` makes it, or ``Channel.seal(...,
        framed=True)``), within the frame limit: written as it is, with no copy."""
        if self._tls is not None:  # encrypted and written here; the rest is the TLS stream's to send
            try:
                return self._tls.write_now(data)
            except trio.BrokenResourceError:
                self._broken = "send failed: TLS"
                return data
        try:  # (the caller checked can_try_send: -1 here only if the socket closed meanwhile)
            written = os.write(self._fileno(), data)  # type: ignore[misc]  # the socket is non-blocking (trio's)
        except BlockingIOError:
            return data
        except OSError as exc:
            self._broken = f"send failed: {type(exc).__name__}"
            return data
        return data[written:]

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are: the rest of a frame :meth:`try_send` began."""
        await self._send(data, framed=False)

    async def send(self, payload: bytes) -> None:
        if len(payload) > self._max:
            raise FrameError(f"frame payload of {len(payload)} bytes exceeds the maximum of {self._max}")
        await self._send(payload, framed=True)

    async def send_frame(self, frame: bytes | bytearray) -> None:
        """Send a whole frame, its length prefix included (see :meth:`try_send_frame`),
        as it is: one write, with no copy of a large payload."""
        if len(frame) - FRAME_HEADER_SIZE > self._max or len(frame) < FRAME_HEADER_SIZE:
            raise FrameError(f"frame payload of {len(frame) - FRAME_HEADER_SIZE} bytes exceeds the maximum "
                             f"of {self._max}")
        await self._send(frame, framed=False, whole=True)

    async def _send(self, payload: bytes, *, framed: bool, whole: bool = False) -> None:
        if self._closed:
            raise ClosedError("connection closed")
        if self._broken:
            raise BrokenError(f"connection to {self.peer} broke: {self._broken}")
        self._senders += 1
        try:  # (the write is the checkpoint: taking a free lock needs no trip through the loop)
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            try:
                await self._send_lock.acquire()
            except BaseException:
                self._senders -= 1
                raise
        try:
            try:
                if whole:
                    await self._stream.send_all(payload)
                elif not framed:
                    if self._tls is not None:  # the rest of a try_send is in the TLS stream's backlog
                        await self._tls.flush()
                    else:
                        await self._stream.send_all(payload)
                elif len(payload) < _SEND_APART_BYTES:
                    await self._stream.send_all(encode_frame(payload, self._max))
                else:  # the length prefix, then the payload as it is: a large payload is not copied
                    await self._stream.send_all(len(payload).to_bytes(FRAME_HEADER_SIZE, "big"))
                    await self._stream.send_all(payload)
            except trio.ClosedResourceError:
                raise ClosedError("connection closed") from None
            except (trio.BrokenResourceError, OSError) as exc:
                self._broken = f"send failed: {type(exc).__name__}"
                raise BrokenError(f"connection to {self.peer} broke while sending") from None
        finally:
            self._send_lock.release()
            self._senders -= 1

    async def receive(self) -> bytes | bytearray | None:
        frames = self._frames
        if frames:  # completed by an earlier read
            return frames.popleft()
        decoder = self._decoder
        if self.partial_since is None and not (self._closed or self._broken or self._eof):
            # between frames (nothing buffered): the common case of one read holding
            # one small frame, without the general loop's steps (it does the rest)
            try:
                data = await self._read_some(_RECEIVE_SIZE)
            except trio.ClosedResourceError:
                raise ClosedError("connection closed") from None
            except (trio.BrokenResourceError, OSError) as exc:
                self._broken = f"receive failed: {type(exc).__name__}"
                data = None
            if data:
                try:
                    done = decoder.feed(data)
                except FrameError as exc:
                    self._broken = str(exc)
                    done = None
                if done is not None:
                    if len(done) != 1 or len(done[0]) + FRAME_HEADER_SIZE != len(data):
                        # not exactly one whole frame: more frames, or one under way
                        if decoder.buffered:
                            self.partial_since = trio.current_time()
                        if len(done) > 1:
                            frames.extend(done[1:])
                    if done:
                        return done[0]
            elif data is not None:  # the end of the stream, between frames
                self._eof = True
        while True:
            if self._closed:
                raise ClosedError("connection closed")
            if self._broken:
                raise BrokenError(f"connection to {self.peer} broke: {self._broken}")
            if self._eof:
                return None
            # (a frame under way is the only one that may be received in place)
            into = None
            size = _RECEIVE_SIZE if decoder.pending <= _RECEIVE_SIZE else min(decoder.pending, _MAX_RECEIVE_SIZE)
            if self._receive_into is not None and self.partial_since is not None:
                into = decoder.reserve()
                if into is None and decoder.pending >= RESERVE_MIN // 2:  # its body may be waiting already
                    queued = self._queued()
                    into = decoder.reserve(queued)
                    # (else a read of what is there, not a buffer of the whole rest per read)
                    size = min(size, max(queued, _RECEIVE_SIZE))
            try:
                if into is not None:  # the rest of a large body, read where it goes
                    got = await self._receive_into(into[:_MAX_RECEIVE_SIZE])
                    data = b""
                else:
                    data = await self._read_some(size)
                    got = len(data)
            except trio.ClosedResourceError:
                raise ClosedError("connection closed") from None
            except (trio.BrokenResourceError, OSError) as exc:
                self._broken = f"receive failed: {type(exc).__name__}"
                continue
            if not got:
                if decoder.buffered:
                    self._broken = f"peer disconnected mid-frame ({decoder.buffered} bytes)"
                self._eof = True
                continue
            try:
                done = decoder.filled(got) if into is not None else decoder.feed(data)
            except FrameError as exc:
                self._broken = str(exc)
                continue
            if not decoder.buffered:
                self.partial_since = None
            elif done or self.partial_since is None:
                self.partial_since = trio.current_time()
            if done:  # the first frame now, the others on the next calls (no read between)
                if len(done) > 1:
                    frames.extend(done[1:])
                return done[0]

    def _queued(self) -> int:
        """Bytes waiting in the socket's receive queue (``FIONREAD``; 0 if it cannot say)."""
        try:
            return struct.unpack("i", fcntl.ioctl(self._fileno(), termios.FIONREAD, _INT_ZERO))[0]  # type: ignore[misc]
        except OSError:
            return 0

    def limit_frames(self, max_frame_size: int | None) -> None:
        """Refuse frames above ``max_frame_size`` from now on (None: the
        transport's own limit again)."""
        self._decoder.max_frame_size = self._max if max_frame_size is None else max_frame_size

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with trio.move_on_after(1) as scope:
            scope.shield = True
            try:
                await self._stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass  # (a TLS stream whose socket is already gone cannot say goodbye)



class _ReadFirst(trio.abc.HalfCloseableStream):
    """A TCP stream (trio's ``SocketStream``) whose reads do not go through trio's
    socket: a read reads first when the last one filled its buffer (more is likely
    waiting: no wait, no trip through the event loop) and waits for readability
    first when it did not (the socket is likely empty: no read that fails), where
    trio's makes, per read, a read that fails or a trip through the event loop.
    Reads that did not wait yield to the event loop after
    :data:`_READS_BEFORE_YIELD` of them in a row or :data:`_BYTES_BEFORE_YIELD`
    bytes, so a connection that always has bytes waiting cannot hold the loop (nor
    escape cancellation) for long. Everything else is the wrapped stream's. Plain
    TCP connections read through it, and TLS streams are built on it."""

    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self.socket = stream.socket
        self.fileno = _fileno_of(stream.socket)
        """The socket's descriptor now (-1 once it is closed)."""
        self._drained = True  # the last read emptied the socket: wait before reading
        self._unyielded = 0  # reads in a row that did not go through the event loop
        self._unyielded_bytes = 0  # and the bytes they read

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        size = _RECEIVE_SIZE if max_bytes is None else max_bytes
        return await self._read(os.read, size)

    def read_some(self, size: int) -> Awaitable[bytes]:
        """:meth:`receive_some` of ``size`` bytes as the read's own coroutine (no
        coroutine around it)."""
        return self._read(os.read, size)

    async def receive_into(self, view: memoryview) -> int:
        """:meth:`receive_some` into ``view`` (a non-empty writable view): how many bytes
        were written at its start (0 at the end of the stream); no bytes object made."""
        return await self._read(lambda fd, _size: os.readv(fd, [view]), len(view))

    def _open_fd(self) -> int:
        """The socket's descriptor, looked up again after every wait: another task may have
        closed the socket meanwhile, and its number may already be another socket's."""
        fd = self.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("the socket is closed")
        return fd

    async def _read(self, read: Callable[[int, int], Any], size: int) -> Any:
        """One non-blocking ``read(fd, size)`` (bytes, or a count of bytes written), waiting for the
        socket only when the last read drained it, and yielding to the event loop after a run of reads
        that did not (so a fast sender cannot starve the other tasks)."""
        fd = self._open_fd()
        if self._drained:
            await trio.lowlevel.wait_readable(fd)
            fd = self._open_fd()
            self._unyielded = self._unyielded_bytes = 0
        elif self._unyielded >= _READS_BEFORE_YIELD or self._unyielded_bytes >= _BYTES_BEFORE_YIELD:
            await trio.lowlevel.checkpoint()
            fd = self._open_fd()
            self._unyielded = self._unyielded_bytes = 0
        while True:
            try:
                got = read(fd, size)  # the socket is non-blocking (trio's)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(fd)
                fd = self._open_fd()
                self._unyielded = self._unyielded_bytes = 0
                continue
            except InterruptedError:
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"receive failed: {type(exc).__name__}") from exc
            n = got if isinstance(got, int) else len(got)
            self._unyielded += 1
            self._unyielded_bytes += n
            self._drained = n < size
            return got

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


class _TlsStream(trio.abc.Stream):
    """TLS over a TCP socket read through :class:`_ReadFirst`, driven with an
    ``ssl.SSLObject`` and two memory BIOs (trio's ``SSLStream`` is the model; the
    same context, so the same mutual TLS 1.3 and certificate checks), without its
    per-call scheduling round: a read that the bytes already received can answer
    returns at once, decrypting as many records as it can into one result, and
    a write encrypts and writes in the calling task.

    Order on the wire is the order the SSLObject produced the bytes: everything
    it produces goes to the end of one backlog, and only one task sends the
    backlog at a time (:meth:`flush`, under a lock; :meth:`write_now` only when
    the backlog is empty and nobody sends). A send cancelled half-way puts back
    what it did not send. Bytes the SSLObject produces while reading (a TLS 1.3
    key update's answer) are written then if the socket takes them at once,
    else with the next send; more than :data:`_TLS_READ_OWED_MAX` of them unsent
    (a peer that asks for answers and never reads) breaks the stream; the session tickets a TLS 1.3 server produces at
    the end of its handshake go with its first send (as trio does: a client
    reading nothing yet is not written to). A failed handshake or a record that
    does not decrypt breaks the stream (``trio.BrokenResourceError``); a peer
    that closes without TLS's close_notify too, as with trio's default."""

    def __init__(self, raw: _ReadFirst, context: ssl.SSLContext, *, server_side: bool,
                 server_hostname: str | None = None):
        self.raw = raw
        self.socket = raw.socket
        self._fileno = raw.fileno
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side,
                                     server_hostname=server_hostname)
        self._backlog: deque[bytes | memoryview] = deque()  # ciphertext not yet sent, in order
        self._read_owed = 0  # bytes reads put in the backlog since it was last empty (bounded)
        self._send_lock = trio.Lock()
        self._handshake_lock = trio.Lock()
        self._handshook = False
        self._broken = False
        self._closed = False

    def getpeercert(self, binary_form: bool = False):
        """The other side's certificate (ValueError before the handshake is done)."""
        return self._tls.getpeercert(binary_form)

    def _check(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the TLS stream is closed")
        if self._broken:
            raise trio.BrokenResourceError("the TLS stream broke")

    def _produced(self) -> None:
        """Move what the SSLObject produced to the end of the backlog."""
        if self._outgoing.pending:
            self._backlog.append(self._outgoing.read())

    def _fail(self, exc: BaseException) -> trio.BrokenResourceError:
        self._broken = True
        err = trio.BrokenResourceError(f"TLS failed: {type(exc).__name__}")
        err.__cause__ = exc
        return err

    async def do_handshake(self) -> None:
        """Run the TLS handshake once (the caller bounds the time)."""
        if self._handshook:
            return
        async with self._handshake_lock:
            while not self._handshook:
                self._check()
                try:
                    self._tls.do_handshake()
                    self._handshook = True
                except ssl.SSLWantReadError:
                    pass
                except (ssl.SSLError, ssl.CertificateError) as exc:
                    raise self._fail(exc) from exc
                if self._handshook and self._tls.server_side and self._tls.version() == "TLSv1.3":
                    self._produced()  # the session tickets: sent with our first send
                    return
                self._produced()
                await self.flush()
                if not self._handshook:
                    await self._feed(_RECEIVE_SIZE)

    async def _feed(self, size: int) -> None:
        """Read the socket once (waiting if need be) into the SSLObject."""
        data = await self.raw.receive_some(size)
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    def can_write_now(self) -> bool:
        """Whether :meth:`write_now` may be called (handshake done, nothing unsent, nobody sending)."""
        return (self._handshook and not self._backlog and not self._send_lock.locked()
                and not self._closed and not self._broken and self._fileno() >= 0)

    def write_now(self, data: bytes) -> bytes:
        """Encrypt ``data`` and write it to the socket without waiting (only when
        :meth:`can_write_now`); what the socket did not take stays in the backlog
        and is returned (send it with :meth:`flush` before anything else)."""
        try:
            self._tls.write(data)
        except ssl.SSLError as exc:
            raise self._fail(exc) from exc
        out = self._outgoing.read()
        try:
            written = os.write(self._fileno(), out)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            raise self._fail(exc) from exc
        rest = out[written:]
        if rest:
            self._backlog.append(rest)
        return rest

    async def flush(self) -> None:
        """Send the backlog (in order; one sender at a time)."""
        async with self._send_lock:
            while self._backlog:
                chunk = memoryview(self._backlog.popleft())
                sent = 0
                try:
                    while sent < len(chunk):
                        try:
                            sent += os.write(self._fileno(), chunk[sent:])
                        except BlockingIOError:
                            await trio.lowlevel.wait_writable(self.socket)
                except OSError as exc:
                    raise self._fail(exc) from None
                except BaseException:  # cancelled: what was not sent goes first next time
                    if sent < len(chunk):
                        self._backlog.appendleft(chunk[sent:])
                    raise
            self._read_owed = 0
        await trio.lowlevel.checkpoint_if_cancelled()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._check()
        await self.do_handshake()
        if data:  # (SSLObject takes an empty write for an end of stream)
            try:
                self._tls.write(data)
            except ssl.SSLError as exc:
                raise self._fail(exc) from exc
            self._produced()
        await self.flush()

    async def wait_send_all_might_not_block(self) -> None:
        await self.raw.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        self._check()
        await self.do_handshake()
        size = _RECEIVE_SIZE if max_bytes is None else max_bytes
        while True:
            try:
                data = self._tls.read(min(size, _TLS_RECORD))
            except ssl.SSLWantReadError:
                self._read_owed += self._outgoing.pending
                self._produced()
                await self._feed(max(size, _RECEIVE_SIZE))
                continue
            except ssl.SSLZeroReturnError:
                return b""
            except (ssl.SSLError, ssl.CertificateError) as exc:
                raise self._fail(exc) from exc
            if not data:
                return b""
            break
        parts = [data]
        got = len(data)
        while got < size:  # the rest of what is already here, record after record
            try:
                more = self._tls.read(min(size - got, _TLS_RECORD))
            except ssl.SSLError:  # (want-read, or an end or error the next read reports)
                break
            if not more:
                break
            parts.append(more)
            got += len(more)
        self._read_owed += self._outgoing.pending
        self._produced()
        if self._backlog and not self._send_lock.locked():  # (a key update's answer): now if it fits
            try:
                while self._backlog:
                    chunk = self._backlog[0]
                    written = os.write(self._fileno(), chunk)
                    if written < len(chunk):
                        self._backlog[0] = memoryview(chunk)[written:]
                        break
                    self._backlog.popleft()
            except BlockingIOError:
                pass
            except OSError as exc:
                raise self._fail(exc) from exc
        if not self._backlog:
            self._read_owed = 0
        elif self._read_owed > _TLS_READ_OWED_MAX:  # a peer asking for answers it never reads
            raise self._fail(BufferError(f"{self._read_owed} bytes of TLS answers unread"))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def aclose(self) -> None:
        """Say close_notify if it can be written at once, then close the socket."""
        if self._closed:
            return
        self._closed = True
        if self._handshook and not self._broken and not self._backlog and not self._send_lock.locked():
            try:
                self._tls.unwrap()
            except ssl.SSLError:
                pass  # (want-read: it waits for the other side's close_notify; we do not)
            out = self._outgoing.read()
            if out:
                try:
                    os.write(self._fileno(), out)
                except OSError:
                    pass
        await self.raw.aclose()


class TcpTransport:
    """TCP with trio, optionally TLS.

    ``client_ssl``: context for outgoing connections (load a client
    certificate into it for mutual TLS); ``server_ssl``: context for
    listeners (set ``verify_mode = CERT_REQUIRED`` for mutual TLS).
    ``server_hostname`` overrides the name checked in the server certificate.
    ``local_address`` binds outgoing connections to that local IP.
    """

    scheme = "tcp"

    def __init__(
        self,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE + CHANNEL_OVERHEAD,
        client_ssl: ssl.SSLContext | None = None,
        server_ssl: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        connect_timeout: float = 10.0,
        local_address: str | None = None,
    ):
        self.max_frame_size = max_frame_size  # (a connection opened from now on carries at most this; a node
        # raises a supplied transport's by the channel's overhead: bus.Node)
        self._local_address = local_address
        self._client_ssl = client_ssl
        self._server_ssl = server_ssl
        self._server_hostname = server_hostname
        self._connect_timeout = connect_timeout

    async def connect(self, address: Address) -> Connection:
        try:
            with trio.fail_after(self._connect_timeout):
                stream: trio.abc.Stream = await trio.open_tcp_stream(
                    address.host, address.port, local_address=self._local_address
                )
                if self._client_ssl is not None:
                    ssl_stream = _TlsStream(
                        _ReadFirst(stream),  # type: ignore[arg-type]
                        self._client_ssl,
                        server_side=False,
                        server_hostname=self._server_hostname or address.host,
                    )
                    try:
                        await ssl_stream.do_handshake()
                    except BaseException:
                        await trio.aclose_forcefully(stream)
                        raise
                    stream = ssl_stream
        except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            raise UnreachableError(f"cannot connect to {address}: {type(exc).__name__}: {exc}") from None
        return _StreamConnection(stream, str(address), self.max_frame_size)

    async def serve(self, address: Address, handler: Handler, nursery: trio.Nursery):
        listeners = await trio.open_tcp_listeners(address.port, host=address.host)
        sock = listeners[0].socket
        host, port = sock.getsockname()[:2]
        bound = Address("tcp", host, port)

        async def on_stream(stream: trio.SocketStream) -> None:
            try:
                peer_host, peer_port = stream.socket.getpeername()[:2]
                peer = str(Address("tcp", peer_host, peer_port))
            except OSError:
                peer_host, peer = "?", "tcp://?"
            s: trio.abc.Stream = stream
            if self._server_ssl is not None:
                s = _TlsStream(_ReadFirst(stream), self._server_ssl, server_side=True)
            await handler(_StreamConnection(s, peer, self.max_frame_size, source=str(peer_host)))

        async def serve_all(task_status=trio.TASK_STATUS_IGNORED):
            with trio.CancelScope() as scope:
                task_status.started(scope)
                await trio.serve_listeners(on_stream, listeners, handler_nursery=nursery)

        scope = await nursery.start(serve_all)

        async def close() -> None:
            scope.cancel()
            for listener in listeners:
                await listener.aclose()

        return bound, close


# ------------------------------------------------------------------ memory


class _MemoryConnection:
    def __init__(self, send: trio.MemorySendChannel, receive: trio.MemoryReceiveChannel,
                 peer: str, max_frame_size: int):
        self._send = send
        self._receive = receive
        self.peer = peer
        self.source = peer
        self.partial_since: float | None = None
        self._max = max_frame_size
        self._closed = False

    @property
    def max_payload(self) -> int:
        return self._max

    async def send(self, payload: bytes) -> None:
        if self._closed:
            raise ClosedError("connection closed")
        if len(payload) > self._max:
            raise FrameError(f"frame payload of {len(payload)} bytes exceeds the maximum of {self._max}")
        try:
            await self._send.send(bytes(payload))
        except trio.ClosedResourceError:
            raise ClosedError("connection closed") from None
        except trio.BrokenResourceError:
            raise BrokenError(f"connection to {self.peer} broke") from None

    async def receive(self) -> bytes | None:
        if self._closed:
            raise ClosedError("connection closed")
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            return None
        except trio.ClosedResourceError:
            raise ClosedError("connection closed") from None

    async def aclose(self) -> None:
        self._closed = True
        await self._send.aclose()
        await self._receive.aclose()


class MemoryTransport:
    """In-process connections between nodes that share this transport object.

    Addresses are ``mem://name``; each direction is a bounded channel of
    ``buffer`` payloads, so a slow reader pushes back on the writer.
    """

    scheme = "mem"

    def __init__(self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE + CHANNEL_OVERHEAD, buffer: int = 64):
        self.max_frame_size = max_frame_size  # (a connection opened from now on carries at most this; a node
        # raises a supplied transport's by the channel's overhead: bus.Node)
        self._buffer = buffer
        self._listeners: dict[str, tuple[Handler, trio.Nursery]] = {}
        self._counter = 0

    async def connect(self, address: Address) -> Connection:
        entry = self._listeners.get(address.host)
        if entry is None:
            raise UnreachableError(f"nothing listens at {address}")
        handler, nursery = entry
        self._counter += 1
        a_send, b_recv = trio.open_memory_channel[bytes](self._buffer)
        b_send, a_recv = trio.open_memory_channel[bytes](self._buffer)
        client = _MemoryConnection(a_send, a_recv, str(address), self.max_frame_size)
        server = _MemoryConnection(b_send, b_recv, f"mem://client-{self._counter}", self.max_frame_size)
        nursery.start_soon(handler, server)
        return client

    async def serve(self, address: Address, handler: Handler, nursery: trio.Nursery):
        name = address.host
        if name in self._listeners:
            raise BusError(f"{address} is already in use")
        self._listeners[name] = (handler, nursery)

        async def close() -> None:
            self._listeners.pop(name, None)

        return address, close
