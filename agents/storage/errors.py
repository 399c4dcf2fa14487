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


class StorageError(AgentError):
    """Root of the storage subsystem's errors."""

    code = codes.STORAGE_ERROR


class NotFound(StorageError, KeyError):
    code = codes.STORAGE_NOT_FOUND

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else self.code


class CorruptBlob(StorageError):
    """Bytes on disk do not hash to the blob's CID; they were not served."""

    code = codes.STORAGE_CORRUPT


class CidMismatch(StorageError, ValueError):
    """The bytes uploaded do not hash to the CID the client claimed."""

    code = codes.STORAGE_CID_MISMATCH


class BlobTooLarge(StorageError, ValueError):
    code = codes.STORAGE_TOO_LARGE


class QuotaExceeded(StorageError):
    code = codes.STORAGE_QUOTA_EXCEEDED


class DiskFull(StorageError, OSError):
    code = codes.STORAGE_DISK_FULL


class BadRequest(StorageError, ValueError):
    code = codes.STORAGE_BAD_REQUEST


class Forbidden(StorageError, PermissionError):
    """The sender may not do this here (not a registered user, not the blob's owner, not a node)."""

    code = codes.STORAGE_FORBIDDEN


class Busy(StorageError):
    """Too many put sessions are open (the sender's own limit, or the node's); retry later."""

    code = codes.STORAGE_BUSY


class StorageUnavailable(StorageError, Unavailable):
    """Not enough replicas answered (fewer than w acknowledged a write, or no
    replica could serve a good copy). ``causes`` maps each node tried to its error."""

    code = codes.STORAGE_UNAVAILABLE


STORAGE_ERRORS: ErrorRegistry[StorageError] = ErrorRegistry(lambda code, message: StorageError(message, code=code))
for _cls in (StorageError, NotFound, CorruptBlob, CidMismatch, BlobTooLarge, QuotaExceeded, DiskFull, BadRequest,
             Forbidden, Busy, StorageUnavailable):
    STORAGE_ERRORS.register(_cls)
del _cls


def from_code(code: str, message: str) -> StorageError:
    """Rebuild a storage error received as (code, message); unknown codes (e.g. the
    bus's own rejections) give the root type carrying that code."""
    return STORAGE_ERRORS.rebuild(code, message)
