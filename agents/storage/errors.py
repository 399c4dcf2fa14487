"""Storage errors. Each is an :class:`agents.AgentError` with a stable ``code``
(:mod:`core.protocol.codes`, ``storage.*``) so it can cross the bus as data
(``{"code", "message"}``) and be rebuilt on the other side by :func:`from_code`.

:class:`StorageUnavailable` is both a :class:`StorageError` and the agents'
one :class:`Unavailable` (re-exported here).
"""

from __future__ import annotations

from core.protocol import codes
from core.protocol.codes import ErrorRegistry

from agents.errors import AgentError, Unavailable

__all__ = ["StorageError", "NotFound", "CorruptBlob", "CidMismatch", "BlobTooLarge", "QuotaExceeded", "DiskFull",
           "BadRequest", "Forbidden", "Busy", "StorageUnavailable", "Unavailable", "STORAGE_ERRORS", "from_code"]


class StorageError(AgentError, code=codes.STORAGE_ERROR):
    """Root of the storage subsystem's errors."""


class NotFound(StorageError, KeyError, code=codes.STORAGE_NOT_FOUND):
    """The node does not hold the blob."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else self.code


class CorruptBlob(StorageError, code=codes.STORAGE_CORRUPT):
    """Bytes on disk do not hash to the blob's CID; they were not served."""


class CidMismatch(StorageError, ValueError, code=codes.STORAGE_CID_MISMATCH):
    """The bytes uploaded do not hash to the CID the client claimed."""


class BlobTooLarge(StorageError, ValueError, code=codes.STORAGE_TOO_LARGE):
    """The blob exceeds the node's maximum size."""


class QuotaExceeded(StorageError, code=codes.STORAGE_QUOTA_EXCEEDED):
    """The node's quota (or the sender's share of it) is used up."""


class DiskFull(StorageError, OSError, code=codes.STORAGE_DISK_FULL):
    """The node's disk is full."""


class BadRequest(StorageError, ValueError, code=codes.STORAGE_BAD_REQUEST):
    """The request is malformed (body, CID, session, range)."""


class Forbidden(StorageError, PermissionError, code=codes.STORAGE_FORBIDDEN):
    """The sender may not do this here (not a registered user, not the blob's owner, not a node)."""


class Busy(StorageError, code=codes.STORAGE_BUSY):
    """Too many put sessions are open (the sender's own limit, or the node's); retry later."""


class StorageUnavailable(StorageError, Unavailable, code=codes.STORAGE_UNAVAILABLE):
    """Not enough replicas answered (fewer than w acknowledged a write, or no
    replica could serve a good copy). ``causes`` maps each node tried to its error."""


STORAGE_ERRORS: ErrorRegistry[StorageError] = ErrorRegistry(lambda code, message: StorageError(message, code=code))
for _cls in (StorageError, NotFound, CorruptBlob, CidMismatch, BlobTooLarge, QuotaExceeded, DiskFull, BadRequest,
             Forbidden, Busy, StorageUnavailable):
    STORAGE_ERRORS.register(_cls)
del _cls


def from_code(code: str, message: str) -> StorageError:
    """Rebuild a storage error received as (code, message); unknown codes (e.g. the
    bus's own rejections) give the root type carrying that code."""
    return STORAGE_ERRORS.rebuild(code, message)
