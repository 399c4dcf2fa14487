"""Canonical msgpack: one encoding per value, for everything that is hashed or signed.

Allowed values: None, bool, int (-2^63 .. 2^64-1), str, bytes, list/tuple, and
dicts with str keys. Dict keys are written in sorted order, integers in the
shortest form (msgpack-python's packer), no floats, no extension types.
:func:`unpack` is strict: it refuses anything :func:`pack` would not produce.

Speed (both are pure functions of their inputs, so results never depend on them):

* :func:`pack` walks the value once with exact-type checks and hands msgpack's C
  packer the original objects wherever nothing needs changing (a dict whose keys
  are already sorted, a list of scalars); anything unusual (subclasses,
  bytearray, memoryview, unknown types) takes the reference normalizer.
* :func:`unpack` remembers, in a bounded memo, byte strings it has already
  proven canonical, and skips the re-encoding check for them. The value is
  still decoded from the bytes on every call (callers get fresh objects).
"""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import DecodeError

MAX_DEPTH = 16
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1

# byte strings already proven canonical (the re-encoding check is skipped for them)
_MEMO_ITEM_MAX = 1 << 16
_MEMO_TOTAL_MAX = 32 << 20
_memo: dict[bytes, None] = {}
_memo_bytes = 0


def _normalize(value: Any, depth: int = 0) -> Any:
    """The reference normalizer (sorted dicts, lists, checked types and ranges)."""
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


def _plain(values: Any) -> bool:
    """True if every item is a scalar msgpack packs canonically as it is."""
    for v in values:
        t = type(v)
        if t is str or t is bytes or t is bool or v is None:
            continue
        if t is int and _INT_MIN <= v <= _INT_MAX:
            continue
        return False
    return True


def _fast(value: Any, depth: int) -> Any:
    """Like :func:`_normalize` (same result, same errors), returning the input
    objects themselves where they already are in canonical shape."""
    t = type(value)
    if t is str or t is bytes or t is bool or value is None:
        return value
    if t is int:
        if _INT_MIN <= value <= _INT_MAX:
            return value
        raise ValueError("integer out of the msgpack range")
    if t is dict:
        keys = list(value)
        for k in keys:
            if type(k) is not str:
                return _normalize(value, depth)  # str subclasses, or the error
        if keys and depth >= MAX_DEPTH:
            raise ValueError("value nested too deeply for canonical encoding")
        ordered = sorted(keys)
        if ordered == keys and _plain(value.values()):
            return value
        return {k: _fast(value[k], depth + 1) for k in ordered}
    if t is list or t is tuple:
        if value and depth >= MAX_DEPTH:
            raise ValueError("value nested too deeply for canonical encoding")
        if _plain(value):
            return value  # msgpack packs a tuple as an array, like a list
        return [_fast(v, depth + 1) for v in value]
    return _normalize(value, depth)


def pack(value: Any) -> bytes:
    """The canonical encoding of ``value`` (ValueError if it has none)."""
    return msgpack.packb(_fast(value, 0), use_bin_type=True)


def _remember(data: bytes) -> None:
    global _memo_bytes
    if len(data) > _MEMO_ITEM_MAX:
        return
    if _memo_bytes + len(data) > _MEMO_TOTAL_MAX:
        _memo.clear()
        _memo_bytes = 0
    _memo[data] = None
    _memo_bytes += len(data)


def unpack(data: bytes, *, max_size: int = 1 << 20, what: str = "value") -> Any:
    """Decode canonical bytes; DecodeError on anything non-canonical or malformed."""
    if not isinstance(data, (bytes, bytearray)):
        raise DecodeError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) > max_size:
        raise DecodeError(f"{what}: {len(data)} bytes exceeds the limit of {max_size}")
    if type(data) is not bytes:
        data = bytes(data)
    try:
        value = msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True,
            max_bin_len=max_size, max_str_len=max_size, max_array_len=100_000, max_map_len=100_000,
        )
    except Exception as exc:
        raise DecodeError(f"{what}: not valid msgpack ({type(exc).__name__})") from exc
    if data in _memo:
        return value
    try:
        again = pack(value)
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"{what}: {exc}") from exc
    if again != data:
        raise DecodeError(f"{what}: not in canonical encoding")
    _remember(data)
    return value


def unpack_array(data: bytes, length: int, *, max_size: int, what: str) -> list:
    """:func:`unpack` ``data`` and check it is an array of exactly ``length`` fields."""
    fields = unpack(data, max_size=max_size, what=what)
    if not isinstance(fields, list) or len(fields) != length:
        raise DecodeError(f"{what}: expected an array of {length} fields")
    return fields
