"""A tiny GET-only HTTP/1.1 server on trio for a node's fixed routes.

Why not Hypercorn + Starlette (the FHIR facade's stack): they are the optional
``fhir`` extra, and a node must run without it; the node serves three fixed,
bodiless GET routes, which need no routing, middleware or ASGI.

Bounded: at most ``max_connections`` connections at once (more are closed
unanswered), one request per connection (``Connection: close``), a request
head of at most :data:`MAX_HEAD` bytes read within ``timeout`` seconds, no
request bodies. Methods other than GET and HEAD get 405; unknown paths 404.
A route is ``path -> callable() -> (status, content type, body)``.
"""

from __future__ import annotations

import logging
from typing import Callable

import trio

__all__ = ["Route", "serve_http", "unix_listener", "MAX_HEAD"]

log = logging.getLogger("agents.node.http")

MAX_HEAD = 8192
MAX_DRAIN = 65536  # bytes read and dropped after the answer, at most
Route = Callable[[], tuple[int, str, bytes]]
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


def _response(status: int, content_type: str, body: bytes, *, head: bool = False, allow: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", "Connection: close", "Cache-Control: no-store"]
    if allow:
        lines.append("Allow: GET, HEAD")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head else body)


def _text(status: int, message: str) -> tuple[int, str, bytes]:
    return status, "text/plain; charset=utf-8", (message + "\n").encode()


async def _read_head(stream: trio.abc.Stream) -> bytes | None:
    """The request head (through the blank line), or None if it is too large."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            return None
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n\r\n", 1)[0]


def handle_head(head: bytes | None, routes: dict[str, Route]) -> bytes:
    """The response to a request head (sans-I/O part of the server)."""
    if head is None:
        return _response(*_text(431, "request head too large"))
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return _response(*_text(400, "bad request line"))
    method, target, _ = parts
    if method not in ("GET", "HEAD"):
        return _response(*_text(405, "only GET and HEAD"), allow=True)
    route = routes.get(target.split("?", 1)[0])
    if route is None:
        return _response(*_text(404, f"no such route; try {', '.join(sorted(routes))}"), head=method == "HEAD")
    try:
        status, ctype, body = route()
    except Exception:  # noqa: BLE001 - a metric collector's bug must not end the node
        log.exception("route %s failed", target)
        status, ctype, body = _text(500, "internal error")
    return _response(status, ctype, body, head=method == "HEAD")


async def serve_http(listeners: list[trio.abc.Listener], routes: dict[str, Route], *, max_connections: int = 16,
                     timeout: float = 5.0, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``routes`` on ``listeners`` until cancelled."""
    active = 0

    async def handler(stream: trio.abc.Stream) -> None:
        nonlocal active
        if active >= max_connections:
            await trio.aclose_forcefully(stream)
            return
        active += 1
        try:
            with trio.move_on_after(timeout) as scope:
                head = await _read_head(stream)
                await stream.send_all(handle_head(head, routes))
                # end our side, then read (a bounded amount of) what the client still sends:
                # closing with unread input would reset the connection before it read the answer
                if isinstance(stream, trio.abc.HalfCloseableStream):
                    await stream.send_eof()
                with trio.move_on_after(1.0):
                    drained = 0
                    while drained < MAX_DRAIN and (chunk := await stream.receive_some(MAX_HEAD)):
                        drained += len(chunk)
            if scope.cancelled_caught:
                log.debug("HTTP client too slow; closed")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            active -= 1
            await trio.aclose_forcefully(stream)

    await trio.serve_listeners(handler, listeners, task_status=task_status)


async def unix_listener(path: str) -> trio.SocketListener:
    """A listening Unix socket at ``path`` (a stale socket file is replaced); mode 0600."""
    import os
    import socket

    try:
        if os.path.exists(path) and not os.path.isdir(path):
            os.unlink(path)
    except OSError:
        pass
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)  # its directory is 0700: nobody else reaches it before the chmod
    os.chmod(path, 0o600)
    sock.listen(16)
    return trio.SocketListener(sock)
