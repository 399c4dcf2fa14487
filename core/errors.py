"""The core layer's exception types.

Every error raised on purpose by core/ derives from :class:`CoreError`. Where a
builtin describes the failure too, the error also derives from it, so callers
may catch either (``DecodeError`` is a ``ValueError``).

Checks come in pairs where both are needed: ``is_valid*`` returns a bool and
``verify*`` raises (``SignatureError``, ``CidMismatchError``), so an unchecked
return value can never mean "accepted".
"""

from __future__ import annotations


class CoreError(Exception):
    """Root of every error raised by emrshare's core layer."""


class DecodeError(ValueError, CoreError):
    """Bytes or values that do not decode to a valid object (wrong length,
    flags, range, not on the curve, not in the subgroup, identity where a key is
    expected, malformed msgpack, ...)."""


class DecryptionError(CoreError):
    """Authenticated decryption failed: wrong key, wrong shares, tampered data."""


class SignatureError(CoreError):
    """A signature did not verify."""


class CidMismatchError(ValueError, CoreError):
    """Data that does not hash to the content identifier it should have."""


class BackendError(RuntimeError, CoreError):
    """The requested arithmetic backend is not available."""


class FaultyShareError(DecryptionError):
    """Threshold combination failed and the faulty proxy could be named.

    ``suspects`` lists the proxy indices whose shares are in every failing subset.
    """

    def __init__(self, message: str, suspects: tuple[int, ...]):
        super().__init__(message)
        self.suspects = suspects


class PolicyError(ValueError, CoreError):
    """A policy text or value that does not parse or type-check."""


class ValidationError(CoreError):
    """A transaction or block broke a ledger rule. ``code`` is a stable reason code."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
