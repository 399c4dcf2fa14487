"""The errors agents raise on purpose: one root, typed by bus code.

:class:`AgentError` is the root of every error raised on purpose in agents/:
the patient's and doctor's (below), the storage subsystem's
(:class:`agents.storage.StorageError`), the key store's
(:class:`agents.keys.KeyStoreError`) and the ledger store's
(:class:`agents.ledger_store.StoreError`); they keep builtin mixins where
callers rely on them (``KeyError``, ``ValueError``, ``OSError``). There is one
:class:`Unavailable` (storage's is its subclass
:class:`agents.storage.StorageUnavailable`).

Each class's ``code`` comes from :mod:`core.protocol.codes`, named in the class
header (``class GrantRevoked(AgentError, code=codes.ACCESS_BAD_STATE)``, checked
against :data:`core.protocol.codes.CODES` when the class is defined); it is what
crosses the bus when a handler raises it. :data:`REMOTE_ERRORS` turns a
received ``(code, message)`` back into the typed error (:func:`from_remote`),
so agents catch types, not code strings. It types what a peer or a patient
says about the receiver's enrollment, request, grant or submission; the bus's
``unknown-sender`` comes back as :class:`UnknownAgent`. Any other code (e.g. a
patient's own ``agent.unknown`` or ``unavailable``) comes back as a plain
:class:`AgentError` carrying it.
"""

from __future__ import annotations

from typing import Any

from core.protocol import codes
from core.protocol.codes import ErrorRegistry, check_code

__all__ = [
    "AgentError", "RegistrationError", "EnrollmentExists", "EnrollmentInvalid", "NotRegistered", "UnknownAgent",
    "CertificateRevoked", "PolicyDenied", "RequestRejected", "UnknownRequest", "GrantRevoked", "RecordNotFound",
    "NotEnoughPeers", "IntegrityError", "TransactionRejected", "Unavailable", "SubmitTimeout", "SubmitUnavailable",
    "REMOTE_ERRORS", "from_remote",
]


class AgentError(Exception):
    """Root of every error raised on purpose by emrshare's agents."""

    code = codes.AGENT_ERROR

    def __init_subclass__(cls, *, code: str | None = None, **kwargs: Any) -> None:
        """``class X(AgentError, code=codes.Y)`` sets ``X.code`` (a defined code, checked
        here); without ``code=`` a subclass keeps its base's."""
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = check_code(code)

    def __init__(self, message: str = "", *, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def remote_code(self) -> str:  # the bus sends this as the error reply code
        return self.code


class RegistrationError(AgentError, code=codes.ENROLL_DENIED):
    """Enrollment refused (and the base of the agent's other registration troubles)."""


class EnrollmentExists(RegistrationError, code=codes.ENROLL_EXISTS):
    """The subject is already registered (with other keys)."""


class EnrollmentInvalid(RegistrationError, code=codes.ENROLL_INVALID):
    """The peer found the enrollment malformed, or issued a certificate that does not check."""


class NotRegistered(RegistrationError, code=codes.AGENT_UNREGISTERED):
    """Called before :meth:`register`."""


class UnknownAgent(RegistrationError, code=codes.AGENT_UNKNOWN):
    """Peers do not know this agent (never registered, or its certificate was revoked):
    the bus's ``unknown-sender``."""


class CertificateRevoked(RegistrationError, code=codes.AGENT_CERT_REVOKED):
    """This agent's own certificate is revoked: peers no longer talk to it."""


class PolicyDenied(AgentError, code=codes.REQUEST_DENIED):
    """The patient's policy does not allow this request (the ledger recorded the decision)."""

    def __init__(self, message: str = "", *, rule: str = "", reason: str = "", code: str | None = None):
        super().__init__(message, code=code)
        self.rule = rule
        self.reason = reason


class RequestRejected(AgentError, code=codes.REQUEST_REJECTED):
    """The patient declined the request."""


class UnknownRequest(AgentError, code=codes.REQUEST_UNKNOWN):
    """The patient finds no such pending request from the sender on the ledger."""


class GrantRevoked(AgentError, code=codes.ACCESS_BAD_STATE):
    """The grant was revoked (or expired): peers refuse to re-encrypt."""


class RecordNotFound(AgentError, code=codes.RECORD_NOT_FOUND):
    """No such record on the ledger."""


class NotEnoughPeers(AgentError, code=codes.ACCESS_NOT_ENOUGH_PEERS):
    """Fewer than t peers answered with a valid re-encryption share."""

    def __init__(self, message: str = "", *, answered: int = 0, needed: int = 0, errors: dict | None = None):
        super().__init__(message)
        self.answered = answered
        self.needed = needed
        self.errors = errors or {}


class IntegrityError(AgentError, code=codes.INTEGRITY):
    """A blob, signature, CID or share failed verification."""


class TransactionRejected(AgentError, code=codes.TX_REJECTED):
    """The ledger marked a transaction invalid; ``reason`` is the core.ledger reason code."""

    def __init__(self, message: str = "", *, reason: str = ""):
        super().__init__(message)
        self.reason = reason


class Unavailable(AgentError, code=codes.UNAVAILABLE):
    """A needed agent (peer, patient, storage) did not answer in time. ``causes``
    maps each agent tried to its error, where the caller kept them."""

    def __init__(self, message: str = "", causes: dict | None = None, *, code: str | None = None):
        super().__init__(message, code=code)
        self.causes: dict = dict(causes or {})


class SubmitTimeout(Unavailable, code=codes.SUBMIT_TIMEOUT):
    """A peer took the transaction but did not see it committed in time (another peer may)."""


class SubmitUnavailable(Unavailable, code=codes.SUBMIT_UNAVAILABLE):
    """The peer's orderer did not take the transaction (another peer may reach one)."""


REMOTE_ERRORS: ErrorRegistry[AgentError] = ErrorRegistry(lambda code, message: AgentError(message, code=code))
"""A received code -> the agents' error type (see the module docstring)."""

# What a peer or a patient says about *our* enrollment, request, grant or submission. The
# codes an agent sends about its own state (agent.*, tx.rejected, integrity, unavailable, ...)
# are not typed on the receiving side: they say nothing about the receiver.
for _cls in (RegistrationError, EnrollmentExists, EnrollmentInvalid, PolicyDenied, RequestRejected, UnknownRequest,
             GrantRevoked, SubmitTimeout, SubmitUnavailable):
    REMOTE_ERRORS.register(_cls)
REMOTE_ERRORS.register(UnknownAgent, codes=(codes.UNKNOWN_SENDER, codes.UNPROVEN_SENDER))
del _cls


def from_remote(code: str, message: str) -> AgentError:
    """The typed error for a ``(code, message)`` received over the bus."""
    return REMOTE_ERRORS.rebuild(code, message)
