"""Storage errors. Each has a stable ``code`` so it can cross the bus as data
(``{"code", "message"}``) and be rebuilt on the other side by :func:`from_code`."""

from __future__ import annotations


class StorageError(Exception):
    """Root of the storage subsystem's errors."""

    code = "storage.error"


class NotFound(StorageError, KeyError):
    code = "storage.not_found"

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else self.code


class CorruptBlob(StorageError):
    """Bytes on disk do not hash to the blob's CID; they were not served."""

    code = "storage.corrupt"


class CidMismatch(StorageError, ValueError):
    """The bytes uploaded do not hash to the CID the client claimed."""

    code = "storage.cid_mismatch"


class BlobTooLarge(StorageError, ValueError):
    code = "storage.too_large"


class QuotaExceeded(StorageError):
    code = "storage.quota_exceeded"


class DiskFull(StorageError, OSError):
    code = "storage.disk_full"


class BadRequest(StorageError, ValueError):
    code = "storage.bad_request"


class Unavailable(StorageError):
    """Not enough replicas answered (fewer than w acknowledged a write, or no
    replica could serve a good copy). ``causes`` maps each node tried to its error."""

    code = "storage.unavailable"

    def __init__(self, message: str, causes: dict | None = None):
        super().__init__(message)
        self.causes: dict = dict(causes or {})


_BY_CODE = {
    cls.code: cls
    for cls in (
        StorageError,
        NotFound,
        CorruptBlob,
        CidMismatch,
        BlobTooLarge,
        QuotaExceeded,
        DiskFull,
        BadRequest,
        Unavailable,
    )
}


def from_code(code: str, message: str) -> StorageError:
    """Rebuild a storage error received as (code, message); unknown codes (e.g. the
    bus's own rejections) give the root type carrying that code."""
    cls = _BY_CODE.get(code)
    if cls is not None:
        return cls(message)
    err = StorageError(message)
    err.code = code
    return err
