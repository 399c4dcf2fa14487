"""Canonical msgpack: one encoding per value, for everything that is hashed or signed.

Allowed values: None, bool, int (-2^63 .. 2^64-1), str, bytes, list/tuple, and
dicts with str keys. Dict keys are written in sorted order, integers in the
shortest form (msgpack-python's packer), no floats, no extension types.
:func:`unpack` is strict: it refuses anything :func:`pack` would not produce.
"""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import DecodeError

MAX_DEPTH = 16


def _normalize(value: Any, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply for canonical encoding")
    if value is None or isinstance(value, (bool, str, bytes)):
        return value
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise ValueError("integer out of the msgpack range")
        return value
    if isinstance(value, (list, tuple)):
        return [_normalize(v, depth + 1) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ValueError("canonical maps need str keys")
        return {k: _normalize(value[k], depth + 1) for k in sorted(value)}
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise ValueError(f"type {type(value).__name__} has no canonical encoding")


def pack(value: Any) -> bytes:
    """The canonical encoding of ``value`` (ValueError if it has none)."""
    return msgpack.packb(_normalize(value), use_bin_type=True)


def unpack(data: bytes, *, max_size: int = 1 << 20, what: str = "value") -> Any:
    """Decode canonical bytes; DecodeError on anything non-canonical or malformed."""
    if not isinstance(data, (bytes, bytearray)):
        raise DecodeError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) > max_size:
        raise DecodeError(f"{what}: {len(data)} bytes exceeds the limit of {max_size}")
    try:
        value = msgpack.unpackb(
            bytes(data), raw=False, strict_map_key=True, use_list=True,
            max_bin_len=max_size, max_str_len=max_size, max_array_len=100_000, max_map_len=100_000,
        )
    except Exception as exc:
        raise DecodeError(f"{what}: not valid msgpack ({type(exc).__name__})") from exc
    try:
        again = pack(value)
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"{what}: {exc}") from exc
    if again != bytes(data):
        raise DecodeError(f"{what}: not in canonical encoding")
    return value
