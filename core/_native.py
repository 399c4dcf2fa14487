"""core/'s boundary to the native package: the mcl backend behind core's rules.

native/ is a leaf: it knows nothing of core's encoding checks or exceptions.
:class:`CheckedNativeBackend` is its :class:`~native.backend.NativeBackend`
with the structural checks of :mod:`core._encoding` run first (the same checks,
and so the same messages, as the pure backend's) and native's
``NativeDecodeError`` turned into core's :class:`~core.errors.DecodeError` with
the same text, so callers see the same errors on both backends. :func:`load`
turns a stale or mismatched extension (``NativeLoadError``) into
:class:`~core.errors.BackendError`.

Imported only when the native backend is loaded (core/_backend.py), so a
missing extension surfaces there as an ImportError.
"""

from __future__ import annotations

from typing import Callable

from native.backend import R as _NATIVE_R
from native.backend import NativeBackend
from native.errors import NativeDecodeError, NativeLoadError

from ._constants import R
from ._encoding import check_gt_coefficients, parse_compressed
from .errors import BackendError, DecodeError

if _NATIVE_R != R:  # pragma: no cover - guards an edit of one of the two copies
    raise ImportError("native.backend.R differs from core._constants.R")


class CheckedNativeBackend(NativeBackend):
    """The mcl backend with core's structural checks before and core's errors after."""

    def g1_decode(self, data: bytes) -> bytes:
        return self._point_decode(data, "G1", 1, self.g1_identity, super().g1_decode)

    def g2_decode(self, data: bytes) -> bytes:
        return self._point_decode(data, "G2", 2, self.g2_identity, super().g2_decode)

    def gt_decode(self, data: bytes) -> bytes:
        data = bytes(data)
        check_gt_coefficients(data)
        return _with_core_errors(super().gt_decode, data)

    @staticmethod
    def _point_decode(data: bytes, group: str, degree: int, identity: Callable[[], bytes],
                      decode: Callable[[bytes], bytes]) -> bytes:
        """A G1 or G2 point: core's structural checks, then native's curve and subgroup checks."""
        data = bytes(data)
        infinity, _sign, _x = parse_compressed(data, group, degree)
        if infinity:
            return identity()
        return _with_core_errors(decode, data)


def _with_core_errors(decode: Callable[[bytes], bytes], data: bytes) -> bytes:
    """``decode(data)``, native's NativeDecodeError raised as core's DecodeError (same text)."""
    try:
        return decode(data)
    except NativeDecodeError as exc:
        raise DecodeError(str(exc)) from None


def load() -> CheckedNativeBackend:
    """Initialise mcl (once per process) and return the backend; BackendError if unusable."""
    try:
        return CheckedNativeBackend()
    except NativeLoadError as exc:
        raise BackendError(str(exc)) from exc
