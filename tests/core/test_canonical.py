"""core.canonical: the fast packer agrees with the reference normalizer, and unpack stays strict."""

from __future__ import annotations

import enum

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from core import canonical
from core.errors import DecodeError


def reference(value):
    return msgpack.packb(canonical._normalize(value), use_bin_type=True)


scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
           | st.text(max_size=8) | st.binary(max_size=8))
values = st.recursive(
    scalars,
    lambda inner: (st.lists(inner, max_size=4) | st.lists(inner, max_size=4).map(tuple)
                   | st.dictionaries(st.text(max_size=4), inner, max_size=4)),
    max_leaves=24,
)


@given(values)
@settings(max_examples=300)
def test_pack_matches_the_reference_normalizer(value):
    assert canonical.pack(value) == reference(value)


@given(values)
@settings(max_examples=200)
def test_unpack_round_trips_and_is_repeatable(value):
    data = canonical.pack(value)
    first = canonical.unpack(data)
    second = canonical.unpack(data)  # from the memo of proven-canonical bytes
    assert canonical.pack(first) == data == canonical.pack(second)
    if isinstance(first, (list, dict)) and first:
        assert first is not second  # every call decodes fresh objects


class Color(enum.IntEnum):
    RED = 3


class Name(str):
    pass


@pytest.mark.parametrize("value", [
    {"b": 1, "a": [1, (2, 3)], "c": {"z": b"x", "y": None}},
    [bytearray(b"ab"), memoryview(b"cd")],
    {Name("k"): Color.RED, "a": True},
    {"x": [{"q": 1, "p": 2}]},
    (),
    {},
])
def test_unusual_but_allowed_values(value):
    assert canonical.pack(value) == reference(value)


@pytest.mark.parametrize("value", [1.5, {"a": 0.0}, [1, 2.0], {1: "int key"}, {b"k": 1}, 2**64, -(2**63) - 1,
                                   [object()], {"a": {"b": set()}}])
def test_values_without_a_canonical_encoding(value):
    with pytest.raises(ValueError):
        canonical.pack(value)


def nested(depth: int, leaf):
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [15, 16, 17])
def test_depth_limit_is_the_reference_one(depth):
    for leaf in (1, [], {"a": 1}, {}):
        value = nested(depth, leaf)
        try:
            expected = reference(value)
        except ValueError:
            with pytest.raises(ValueError):
                canonical.pack(value)
        else:
            assert canonical.pack(value) == expected


@pytest.mark.parametrize("data", [
    msgpack.packb({"b": 1, "a": 2}),                 # keys out of order
    b"\xcd\x00\x01",                                  # 1 as uint16: not the shortest form
    msgpack.packb(1.0),                               # float
    msgpack.packb([1, 2.5]),
    b"\xda\x00\x01a",                                 # str16 for a 1-char string
])
def test_unpack_refuses_non_canonical_bytes_every_time(data):
    for _ in range(3):
        with pytest.raises(DecodeError):
            canonical.unpack(data)


def test_a_memoized_value_still_obeys_the_size_limit():
    data = canonical.pack({"k": b"x" * 100})
    canonical.unpack(data)
    with pytest.raises(DecodeError):
        canonical.unpack(data, max_size=50)
    with pytest.raises(DecodeError):
        canonical.unpack(bytearray(data), max_size=50)
    assert canonical.unpack(bytearray(data)) == {"k": b"x" * 100}


@given(st.lists(st.integers(min_value=0, max_value=2**32), max_size=8), st.integers(min_value=0, max_value=8))
def test_unpack_array_checks_the_field_count(items, length):
    data = canonical.pack(items)
    if len(items) == length:
        assert canonical.unpack_array(data, length, max_size=1024, what="thing") == items
    else:
        with pytest.raises(DecodeError, match=f"thing: expected an array of {length} fields"):
            canonical.unpack_array(data, length, max_size=1024, what="thing")
