"""The bus's exception types. Every error the bus raises on purpose derives from
:class:`BusError`; decoders raise only :class:`FrameError` or
:class:`EnvelopeError` (both also ``ValueError``), whatever bytes they are fed.

The hierarchy::

    BusError                    root: every error the bus raises on purpose
    ├── FrameError              bytes that do not split into frames, or a message
    │                           over the frame limit (also ValueError)
    ├── EnvelopeError           an envelope was rejected; ``reason`` says why
    │                           (also ValueError)
    ├── RemoteError             the recipient answered with an error reply
    ├── HandlerError            raised by a handler to answer with a typed error
    ├── SubscriptionLagged      a subscriber missed events; the stream goes on
    └── DeliveryError           the message may not have arrived, or was not answered
        ├── UnreachableError    no route to the recipient, or no connection to it
        ├── RequestTimeout      no reply in time (also TimeoutError)
        ├── BrokenError         it broke: the connection or subscription failed
        └── ClosedError         you closed it: the endpoint, node or subscription

Catch :class:`DeliveryError` to retry or fail over to another agent whatever
went wrong on the way; a :class:`RemoteError` is an answer, not a delivery
failure. "You closed it" (:class:`ClosedError`) is distinct from "it broke"
(:class:`BrokenError`), as in trio, and neither derives from the other.
"""

from __future__ import annotations

__all__ = [
    "BusError",
    "FrameError",
    "EnvelopeError",
    "RemoteError",
    "HandlerError",
    "DeliveryError",
    "RequestTimeout",
    "ClosedError",
    "BrokenError",
    "UnreachableError",
    "SubscriptionLagged",
]


class BusError(Exception):
    """Root of every error the bus raises on purpose."""


class FrameError(ValueError, BusError):
    """A byte stream that does not split into valid frames (oversized or
    truncated frame). The stream cannot be resynchronised after one."""


class EnvelopeError(ValueError, BusError):
    """An envelope was rejected. ``reason`` is a stable short code, one of
    :data:`bus.envelope.REJECT_REASONS` (``malformed``, ``version``,
    ``misaddressed``, ``stale``, ``unknown-sender``, ``bad-signature``,
    ``replay``, ``replay-cache-full``)."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class RemoteError(BusError):
    """The remote side answered a request with an error reply.

    ``code`` is the remote error kind (a short string such as ``unknown-kind``,
    ``bad-signature`` or an agent-defined code), ``message`` its text, and
    ``peer`` the agent that sent it. Never carries a remote traceback.
    """

    def __init__(self, code: str, message: str, peer: str = ""):
        super().__init__(f"remote error from {peer or '?'} [{code}]: {message}")
        self.code = code
        self.message = message
        self.peer = peer


class HandlerError(BusError):
    """Raise in a handler to send a typed error reply ``{code, message}``.

    Any exception exposing a string ``remote_code`` (or ``code``) attribute does
    the same; any other exception becomes a generic ``internal`` error reply
    whose message reveals nothing.
    """

    def __init__(self, code: str, message: str = ""):
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class DeliveryError(BusError):
    """The message may not have arrived, or its request was not answered:
    the base of :class:`UnreachableError`, :class:`RequestTimeout`,
    :class:`BrokenError` and :class:`ClosedError`."""


class RequestTimeout(TimeoutError, DeliveryError):
    """No reply arrived within the request's timeout."""


class ClosedError(DeliveryError):
    """The object was closed by its owner (this side) and cannot be used."""


class BrokenError(DeliveryError):
    """The connection or subscription broke (the peer vanished, disconnected
    mid-frame, sent garbage, or dropped us)."""


class UnreachableError(DeliveryError):
    """No route to the recipient: not hosted here, no live connection from it
    and no entry in the routing table, or every connection attempt failed."""


class SubscriptionLagged(BusError):
    """The subscriber fell behind and ``missed`` events were dropped.

    Raised once by :meth:`Subscription.receive`; the subscription goes on with
    the next event.
    """

    def __init__(self, missed: int):
        super().__init__(f"subscription lagged: {missed} event(s) dropped")
        self.missed = missed
