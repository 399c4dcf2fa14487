"""A structural check of msgpack bytes, sans-I/O: count before building.

:func:`check_structure` walks a msgpack value's headers without creating any
Python object for it: it skips str/bin/ext payloads and scalars by their
lengths, counts every array item and map entry (a map entry counts two) and
tracks the nesting depth. It stops at the first header that would take the
count past ``max_objects`` or the depth past ``max_depth`` (so a 16 MiB frame
of empty arrays is refused at its first header, and any frame after at most
``max_objects`` steps). The decoder (msgpack's C unpacker) runs only on bytes
that passed, so the memory and time it needs are bounded by the limits, not by
the frame's length.
"""

from __future__ import annotations

__all__ = ["StructureError", "TooManyObjects", "check_structure"]


class StructureError(ValueError):
    """The bytes are not one msgpack value within the limits."""


class TooManyObjects(StructureError):
    """The value holds more than ``max_objects`` objects (the rest was not looked at)."""


# First byte 0xc4..0xdf: (size of the length field, extra bytes after it, what it is)
# what: 0 skip ``length + extra`` bytes (str, bin, ext); 1 fixed size ``extra``;
#       2 array of ``length`` items; 3 map of ``length`` entries.
_SKIP, _FIXED, _ARRAY, _MAP = 0, 1, 2, 3
_TABLE: dict[int, tuple[int, int, int]] = {
    0xC4: (1, 0, _SKIP), 0xC5: (2, 0, _SKIP), 0xC6: (4, 0, _SKIP),  # bin 8/16/32
    0xC7: (1, 1, _SKIP), 0xC8: (2, 1, _SKIP), 0xC9: (4, 1, _SKIP),  # ext 8/16/32
    0xCA: (0, 4, _FIXED), 0xCB: (0, 8, _FIXED),  # float 32/64
    0xCC: (0, 1, _FIXED), 0xCD: (0, 2, _FIXED), 0xCE: (0, 4, _FIXED), 0xCF: (0, 8, _FIXED),  # uint
    0xD0: (0, 1, _FIXED), 0xD1: (0, 2, _FIXED), 0xD2: (0, 4, _FIXED), 0xD3: (0, 8, _FIXED),  # int
    0xD4: (0, 2, _FIXED), 0xD5: (0, 3, _FIXED), 0xD6: (0, 5, _FIXED), 0xD7: (0, 9, _FIXED),  # fixext
    0xD8: (0, 17, _FIXED),
    0xD9: (1, 0, _SKIP), 0xDA: (2, 0, _SKIP), 0xDB: (4, 0, _SKIP),  # str 8/16/32
    0xDC: (2, 0, _ARRAY), 0xDD: (4, 0, _ARRAY),
    0xDE: (2, 0, _MAP), 0xDF: (4, 0, _MAP),
}


def check_structure(data: bytes, *, max_objects: int, max_depth: int) -> int:
    """Check that ``data`` is exactly one msgpack value of at most
    ``max_objects`` objects nested at most ``max_depth`` deep; return the count.

    Raises :class:`StructureError` otherwise (also for truncated bytes, bytes
    after the value, and the never-used first byte 0xc1).
    """
    view = memoryview(data)
    end = len(view)
    pos = 0
    objects = 1
    remaining = 1  # values still to read at the current level
    stack: list[int] = []  # what remained at each enclosing level
    table = _TABLE
    while True:
        if not remaining:
            if not stack:
                break
            remaining = stack.pop()
            continue
        remaining -= 1
        if pos >= end:
            raise StructureError("msgpack value is truncated")
        b = view[pos]
        pos += 1
        if b <= 0x7F or b >= 0xE0 or b == 0xC0 or b == 0xC2 or b == 0xC3:
            continue  # fixint, nil, bool
        if b <= 0x8F:
            items = (b & 0x0F) * 2
        elif b <= 0x9F:
            items = b & 0x0F
        elif b <= 0xBF:
            pos += b & 0x1F  # fixstr
            continue
        else:
            entry = table.get(b)
            if entry is None:
                raise StructureError(f"byte 0x{b:02x} starts no msgpack value")
            width, extra, what = entry
            length = int.from_bytes(view[pos : pos + width], "big") if width else 0
            pos += width
            if pos > end:
                raise StructureError("msgpack value is truncated")
            if what == _SKIP or what == _FIXED:
                pos += length + extra
                continue
            items = length * 2 if what == _MAP else length
        if not items:
            continue
        objects += items
        if objects > max_objects:
            raise TooManyObjects(f"more than {max_objects} msgpack objects")
        if items > end - pos:
            raise StructureError("msgpack container is longer than the bytes left")
        if len(stack) >= max_depth:
            raise StructureError(f"msgpack nesting deeper than {max_depth}")
        stack.append(remaining)
        remaining = items
    if pos != end:
        raise StructureError("msgpack value is truncated" if pos > end else "bytes after the msgpack value")
    return objects
