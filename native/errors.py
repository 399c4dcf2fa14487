"""The native package's exception types.

Every error native/ raises on purpose derives from :class:`NativeError`; where a
builtin describes the failure too, the error also derives from it. native/ is a
leaf and knows nothing of core/'s errors: core/ translates these at its
boundary (core/_native.py), so callers of core/ see the same core errors on both
backends.
"""

from __future__ import annotations


class NativeError(Exception):
    """Root of every error raised on purpose by the native package."""


class NativeDecodeError(NativeError, ValueError):
    """Bytes that mcl does not accept as a group element (not on the curve, not
    in the order-r subgroup, not a GT element)."""


class NativeLoadError(NativeError, RuntimeError):
    """The compiled extension cannot be used: built from other sources, or mcl
    disagrees with the headers or with the helpers' self-test."""
