"""The errors an embedding application sees from patient and doctor agents.

Each has a stable ``code`` (also what crosses the bus) and a clear message.
"""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error raised on purpose by emrshare's agents."""

    code = "agent.error"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def remote_code(self) -> str:  # the bus sends this as the error reply code
        return self.code


class RegistrationError(AgentError):
    code = "enroll.denied"


class CertificateRevoked(RegistrationError):
    """This agent's own certificate is revoked: peers no longer talk to it."""

    code = "cert_revoked"


class PolicyDenied(AgentError):
    """The patient's policy does not allow this request (the ledger recorded the decision)."""

    code = "request.denied"

    def __init__(self, message: str, *, rule: str = "", reason: str = "", code: str | None = None):
        super().__init__(message, code=code)
        self.rule = rule
        self.reason = reason


class RequestRejected(AgentError):
    """The patient declined the request."""

    code = "request.rejected"


class GrantRevoked(AgentError):
    """The grant was revoked (or expired): peers refuse to re-encrypt."""

    code = "access.bad_state"


class RecordNotFound(AgentError):
    code = "record.not_found"


class NotEnoughPeers(AgentError):
    """Fewer than t peers answered with a valid re-encryption share."""

    code = "access.not_enough_peers"

    def __init__(self, message: str, *, answered: int = 0, needed: int = 0, errors: dict | None = None):
        super().__init__(message)
        self.answered = answered
        self.needed = needed
        self.errors = errors or {}


class IntegrityError(AgentError):
    """A blob, signature, CID or share failed verification."""

    code = "integrity"


class TransactionRejected(AgentError):
    """The ledger marked a transaction invalid; ``reason`` is the core.ledger reason code."""

    code = "tx.rejected"

    def __init__(self, message: str, *, reason: str):
        super().__init__(message)
        self.reason = reason


class Unavailable(AgentError):
    """A needed agent (peer, patient, storage) did not answer in time."""

    code = "unavailable"
