"""Typed handlers: an agent serves each kind through its :mod:`core.protocol` types,
admitting only the sender classes the registry names.

:func:`serve` registers ``await handler(message, request) -> reply`` on an
endpoint for each request type. With a ``classifier``, each request is first
admitted: the sender's class (:class:`agents.admission.Classifier`) must be
in the kind's ``senders`` column (:data:`core.protocol.KINDS`; a class known without a look-up that
waits, :meth:`agents.admission.Classifier.classify_now`, is decided with no
await), else the request is refused with ``forbidden`` before the body is parsed and before
any wait, query or crypto (the refusal is counted and logged once per sender
and kind by :class:`agents.admission.Refusals`). Then the body is parsed with
the type's ``from_wire`` (a :class:`core.errors.DecodeError` becomes the
agent's bad-request error: ``bad-request`` unless the agent says otherwise),
and the typed reply, checked against the registry, goes out with
``to_wire``. Object rules (the grant's patient, the request's doctor, ...)
are the handlers' own first lines. Agents declare their kinds as such a
table, so what each agent serves can be compared with the registry (tests do).

A kind may also get a fast companion (``fast``: request type ->
``handler(message, request) -> reply | bus.DEFER``, a plain function), which
the endpoint runs in the task that delivered the request (``Endpoint.register``
``fast=``): the same admission first (a sender whose class needs a waiting
look-up is deferred before anything else), then the body is parsed, then the
companion answers what needs no wait, or defers (having changed nothing) to the
handler, which starts again from admission but takes the body the companion
parsed (``bus.defer``: carried to it by the endpoint) instead of parsing it again.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping

import bus
from core.errors import DecodeError
from core.protocol import KINDS, Message, Sender
from core.protocol import codes

from agents.admission import NOT_NOW, Classifier, Refusals

__all__ = ["TypedHandler", "FastTypedHandler", "serve", "bad_request"]

TypedHandler = Callable[[bus.Message, Any], Awaitable[Message]]
FastTypedHandler = Callable[[bus.Message, Any], Any]  # a typed reply, or bus.DEFER


def bad_request(exc: DecodeError) -> BaseException:
    """The default answer to a body that does not decode: ``bad-request`` with the reason."""
    return bus.HandlerError(codes.BAD_REQUEST, str(exc))


def serve(endpoint: bus.Endpoint, handlers: Mapping[type[Message], TypedHandler], *,
          on_decode_error: Callable[[DecodeError], BaseException] = bad_request,
          classifier: Classifier | None = None, refusals: Refusals | None = None,
          fast: Mapping[type[Message], FastTypedHandler] | None = None) -> None:
    """Register each handler for its request type's kind, with its ``fast`` companion if
    any (see the module docstring).

    Without a ``classifier`` nothing is refused by class (tests of a handler alone)."""
    fast = fast or {}
    if not set(fast) <= set(handlers):
        raise TypeError("a fast companion needs a handler of the same request type")
    if classifier is not None and refusals is None:
        refusals = Refusals(endpoint.identity)
    for request_type, handler in handlers.items():
        spec = KINDS[request_type.kind]
        if spec.request is not request_type:
            raise TypeError(f"{request_type.__name__} is not the request type of {spec.kind}")
        handle, handle_fast = _typed(request_type, spec.reply, handler, on_decode_error, classifier, refusals,
                                     fast.get(request_type))
        if handle_fast is None:
            endpoint.register(spec.kind, handle)
        else:
            endpoint.register(spec.kind, handle, fast=handle_fast)


def _typed(request_type: type[Message], reply_type: type[Message], handler: TypedHandler,
           on_decode_error: Callable[[DecodeError], BaseException], classifier: Classifier | None,
           refusals: Refusals | None, fast: FastTypedHandler | None = None,
           ) -> tuple[Callable[[bus.Message], Awaitable[Any]], Callable[[bus.Message], Any] | None]:
    kind = request_type.kind
    admitted = KINDS[kind].senders  # the registry's column, looked up once (admits() per request)
    from_wire = request_type.from_wire
    classify_now = classifier.classify_now if classifier is not None else None

    def refuse(message: bus.Message, sender_class: Sender | None) -> BaseException:
        assert refusals is not None
        who = sender_class.value if sender_class is not None else "unknown"
        return refusals.refuse(message.sender, kind, codes.FORBIDDEN, f"a {who} sender may not send {kind}")

    def parse(message: bus.Message) -> Any:
        try:
            return from_wire(message.body)
        except DecodeError as exc:
            raise on_decode_error(exc) from None

    def wire(reply: Message) -> Any:
        if type(reply) is not reply_type:
            raise TypeError(f"the {kind} handler returned {type(reply).__name__}")
        return reply.to_wire()

    async def handle(message: bus.Message) -> Any:
        if classify_now is not None:
            # a sender whose class is known at once is admitted or refused without an await
            sender_class = classify_now(message.sender)
            if sender_class is not None and not isinstance(sender_class, Sender):
                sender_class = await sender_class
            if sender_class not in admitted:
                raise refuse(message, sender_class)
        request = message.carried  # the body a deferring fast companion parsed (None: parse it here)
        return wire(await handler(message, parse(message) if request is None else request))

    if fast is None:
        return handle, None

    class_now = classifier.class_now if classifier is not None else None

    def handle_fast(message: bus.Message) -> Any:
        if class_now is not None:
            sender_class = class_now(message.sender)
            if sender_class is NOT_NOW:  # a look-up that waits: the handler admits this sender
                return bus.DEFER
            if sender_class not in admitted:
                raise refuse(message, sender_class)
        request = parse(message)
        reply = fast(message, request)
        return bus.defer(request) if reply is bus.DEFER else wire(reply)

    return handle, handle_fast
