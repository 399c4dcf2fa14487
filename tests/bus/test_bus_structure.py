"""bus.structure.check_structure: the msgpack walk that counts before decoding,
and decode_envelope's limits that rest on it."""

import resource
import time

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus import (
    DEFAULT_MAX_FRAME_SIZE,
    Envelope,
    EnvelopeError,
    MessageType,
    StructureError,
    check_structure,
    decode_envelope,
)
from bus.testing import Keyring

scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=40) | st.binary(max_size=300)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=8), inner, max_size=10),
    max_leaves=200,
)


def count(value):
    """Objects as check_structure counts them: 1 for the value, +1 per item, +2 per map entry."""
    if isinstance(value, list):
        return 1 + sum(count(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(count(k) + count(v) for k, v in value.items())
    return 1


def depth(value):
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=-1) if value else 0
    if isinstance(value, dict):
        return 1 + max(max(depth(k), depth(v)) for k, v in value.items()) if value else 0
    return 0


@given(values)
def test_every_value_passes_with_its_exact_count(value):
    data = msgpack.packb(value, use_bin_type=True)
    assert check_structure(data, max_objects=10**9, max_depth=10**6) == count(value)


@given(values)
def test_limits_are_exact(value):
    data = msgpack.packb(value, use_bin_type=True)
    n, d = count(value), depth(value)
    check_structure(data, max_objects=n, max_depth=d)
    if n > 1:
        with pytest.raises(StructureError):
            check_structure(data, max_objects=n - 1, max_depth=d)
    if d > 0:
        with pytest.raises(StructureError):
            check_structure(data, max_objects=n, max_depth=d - 1)


@given(values, st.data())
def test_truncated_or_extended_bytes_are_refused(value, data):
    packed = msgpack.packb(value, use_bin_type=True)
    cut = data.draw(st.integers(min_value=0, max_value=len(packed) - 1))
    with pytest.raises(StructureError):
        check_structure(packed[:cut], max_objects=10**9, max_depth=10**6)
    with pytest.raises(StructureError):
        check_structure(packed + b"\xc0", max_objects=10**9, max_depth=10**6)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_structure_errors_and_agree_with_msgpack(data):
    try:
        n = check_structure(data, max_objects=10**9, max_depth=10**6)
    except StructureError:
        n = None
    try:
        value = msgpack.unpackb(data, raw=True, strict_map_key=False, use_list=True)
    except Exception:
        return  # (msgpack may also refuse what passes: an ext or a bad utf-8 str)
    if not isinstance(value, msgpack.ExtType):
        assert n is not None


def test_sixteen_mib_of_empty_arrays_is_refused_at_its_first_header():
    frame = b"\xdd" + (DEFAULT_MAX_FRAME_SIZE - 5).to_bytes(4, "big") + b"\x90" * (DEFAULT_MAX_FRAME_SIZE - 5)
    with pytest.raises(StructureError, match="objects"):
        check_structure(frame, max_objects=262_144, max_depth=64)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(EnvelopeError):
        decode_envelope(frame)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024  # the unbounded decode grew the process by ~1.2 GB


def test_many_small_arrays_stop_at_the_object_limit():
    # 4,096 arrays of 255 nils: over a million objects in 1 MiB.
    frame = b"\xdc" + (4096).to_bytes(2, "big") + (b"\xdc\x00\xff" + b"\xc0" * 255) * 4096
    with pytest.raises(StructureError, match="objects"):
        check_structure(frame, max_objects=262_144, max_depth=64)


def test_deep_nesting_is_refused():
    frame = b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(StructureError, match="deeper"):
        check_structure(frame, max_objects=10**6, max_depth=64)
    with pytest.raises(EnvelopeError):
        decode_envelope(frame)


def test_an_envelope_with_a_big_binary_body_still_decodes():
    ring = Keyring()
    env = Envelope.create(type=MessageType.REQUEST, kind="put", sender="a", recipient="b",
                          body={"blob": b"\x90" * (8 << 20)}, timestamp=int(time.time() * 1000),
                          signer=ring.add("a"))
    assert decode_envelope(env.encode()).body == env.body


def test_an_envelope_over_the_object_limit_is_refused_and_under_it_decodes():
    ring = Keyring()

    def make(n):
        return Envelope.create(type=MessageType.REQUEST, kind="put", sender="a", recipient="b",
                               body=[0] * n, timestamp=int(time.time() * 1000), signer=ring.add("a")).encode()

    with pytest.raises(EnvelopeError):
        decode_envelope(make(5000), max_objects=4096)
    assert len(decode_envelope(make(4000), max_objects=4096).body) == 4000
