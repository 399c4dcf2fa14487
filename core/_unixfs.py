"""Byte-exact dag-pb and UnixFS encodings of file nodes, as go-unixfs/boxo write them.

Only what ``ipfs add`` emits for a regular file is implemented:

* a UnixFS ``Data`` message (protobuf, proto2, fields written in field-number
  order): ``Type`` (1, varint, always File = 2), ``Data`` (2, bytes, only when a
  leaf carries bytes), ``filesize`` (3, varint, always written),
  ``blocksizes`` (4, repeated uint64, *not* packed: one tag per value);
* a dag-pb ``PBNode``: its ``Links`` (field 2) first, then ``Data`` (field 1),
  the canonical order of the dag-pb spec; every ``PBLink`` carries ``Hash`` (1),
  ``Name`` (2, written even when empty, as boxo's merkledag does) and
  ``Tsize`` (3).

The exact byte layout matters: a node's CID is the hash of these bytes, so a
single differing byte gives a different CID from Kubo's.
"""

from __future__ import annotations

UNIXFS_FILE = 2


def varint(n: int) -> bytes:
    """Unsigned LEB128, as protobuf and multiformats use."""
    if n < 0:
        raise ValueError("varint of a negative number")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_varint(field: int, value: int) -> bytes:
    return varint(field << 3) + varint(value)


def _field_bytes(field: int, value: bytes) -> bytes:
    return varint((field << 3) | 2) + varint(len(value)) + value


def unixfs_file_data(data: bytes | None, filesize: int, blocksizes: list[int]) -> bytes:
    """The UnixFS ``Data`` message of a file node."""
    parts = [_field_varint(1, UNIXFS_FILE)]
    if data:
        parts.append(_field_bytes(2, data))
    parts.append(_field_varint(3, filesize))
    parts.extend(_field_varint(4, size) for size in blocksizes)
    return b"".join(parts)


def dag_pb_node(links: list[tuple[bytes, int]], data: bytes) -> bytes:
    """A dag-pb ``PBNode`` with unnamed links ``(cid bytes, tsize)`` and ``data``."""
    parts = []
    for cid_bytes, tsize in links:
        link = _field_bytes(1, cid_bytes) + _field_bytes(2, b"") + _field_varint(3, tsize)
        parts.append(_field_bytes(2, link))
    parts.append(_field_bytes(1, data))
    return b"".join(parts)


def file_leaf_node(chunk: bytes) -> bytes:
    """A non-raw leaf: a dag-pb node wrapping a UnixFS File holding ``chunk``."""
    return dag_pb_node([], unixfs_file_data(chunk, len(chunk), []))


def file_branch_node(children: list[tuple[bytes, int, int]]) -> bytes:
    """An internal file node over ``children`` = ``(cid bytes, tsize, filesize)``."""
    sizes = [filesize for _, _, filesize in children]
    data = unixfs_file_data(None, sum(sizes), sizes)
    return dag_pb_node([(cid, tsize) for cid, tsize, _ in children], data)
