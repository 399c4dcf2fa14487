"""Typed handlers: an agent serves each kind through its :mod:`core.protocol` types.

:func:`serve` registers ``await handler(message, request) -> reply`` on an
endpoint for each request type: the body is parsed with the type's
``from_wire`` (a :class:`core.errors.DecodeError` becomes the agent's
bad-request error: ``bad-request`` unless the agent says otherwise), and the
typed reply, checked against :data:`core.protocol.KINDS`, goes out with
``to_wire``. Agents declare their kinds as such a table, so what each agent
serves can be compared with the registry (tests do).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping

import bus
from core.errors import DecodeError
from core.protocol import KINDS, Message
from core.protocol import codes

__all__ = ["TypedHandler", "serve", "bad_request"]

TypedHandler = Callable[[bus.Message, Any], Awaitable[Message]]


def bad_request(exc: DecodeError) -> BaseException:
    """The default answer to a body that does not decode: ``bad-request`` with the reason."""
    return bus.HandlerError(codes.BAD_REQUEST, str(exc))


def serve(endpoint: bus.Endpoint, handlers: Mapping[type[Message], TypedHandler], *,
          on_decode_error: Callable[[DecodeError], BaseException] = bad_request) -> None:
    """Register each handler for its request type's kind (see the module docstring)."""
    for request_type, handler in handlers.items():
        spec = KINDS[request_type.kind]
        if spec.request is not request_type:
            raise TypeError(f"{request_type.__name__} is not the request type of {spec.kind}")
        endpoint.register(spec.kind, _typed(request_type, spec.reply, handler, on_decode_error))


def _typed(request_type: type[Message], reply_type: type[Message], handler: TypedHandler,
           on_decode_error: Callable[[DecodeError], BaseException]) -> Callable[[bus.Message], Awaitable[Any]]:
    async def handle(message: bus.Message) -> Any:
        try:
            request = request_type.from_wire(message.body)
        except DecodeError as exc:
            raise on_decode_error(exc) from None
        reply = await handler(message, request)
        if type(reply) is not reply_type:
            raise TypeError(f"the {request_type.kind} handler returned {type(reply).__name__}")
        return reply.to_wire()

    return handle
