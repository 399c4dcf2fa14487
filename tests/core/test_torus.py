"""Compressed GT elements (core._torus, GT.to_compressed / GT.from_compressed): the T2 torus
form is canonical, round-trips, refuses what is not a GT element, and is the same bytes on
both backends."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import _torus
from core._backend import P, R, available_backends, load
from core.curve import G1, G2, GT, api, pairing
from core.errors import DecodeError

pytestmark = pytest.mark.crypto

scalars = st.integers(min_value=1, max_value=R - 1)


@settings(max_examples=6)
@given(k=scalars)
def test_round_trip_and_canonical(backend, k):
    x = api(backend).GT.generator() ** k
    c = x.to_compressed()
    assert len(c) == GT.COMPRESSED_SIZE == 288
    y = api(backend).GT.from_compressed(c)
    assert y == x and y.to_bytes() == x.to_bytes()
    assert _torus.compress(_torus.decompress(c)) == c
    # the first half of the full form is a = (c^2 + v) / (c^2 - v): different from c itself
    assert _torus.decompress(c) == x.to_bytes()


def test_identity_is_all_zero_and_small_powers(backend):
    gt = api(backend).GT
    assert gt.one().to_compressed() == bytes(288)
    assert gt.from_compressed(bytes(288)).is_one()
    z = gt.generator()
    for x in (z, z * z, z.inverse(), pairing(api(backend).G1.generator() * 5, api(backend).G2.generator())):
        assert gt.from_compressed(x.to_compressed()) == x


@settings(max_examples=40)
@given(data=st.binary(min_size=288, max_size=288))
def test_arbitrary_bytes_decode_only_to_their_own_encoding(backend, data):
    """Any 288 bytes either are refused or name an element whose encoding they are."""
    try:
        x = api(backend).GT.from_compressed(data)
    except DecodeError:
        return
    assert x.to_compressed() == data


@settings(max_examples=12)
@given(coeffs=st.lists(st.integers(min_value=0, max_value=P - 1), min_size=6, max_size=6))
def test_torus_points_outside_gt_are_refused(backend, coeffs):
    """A random c decompresses to a norm-1 element of Fp12, but GT is a negligible part of the
    torus (r of p^6 + 1 elements): the subgroup check refuses it."""
    data = b"".join(c.to_bytes(48, "big") for c in coeffs)
    if data == bytes(288):
        return
    full = _torus.decompress(data)
    assert len(full) == 576 and _torus.compress(full) == data  # the torus map itself is a bijection
    with pytest.raises(DecodeError, match="subgroup"):
        api(backend).GT.from_compressed(data)


@settings(max_examples=30)
@given(pos=st.integers(min_value=0, max_value=5), value=st.integers(min_value=P, max_value=2**384 - 1))
def test_coefficients_not_below_p_are_refused(pos, value):
    data = bytearray(288)
    data[48 * pos: 48 * (pos + 1)] = value.to_bytes(48, "big")
    with pytest.raises(DecodeError, match="below the field modulus"):
        GT.from_compressed(bytes(data))


def test_wrong_lengths_and_types_are_refused():
    for bad in (b"", bytes(287), bytes(289), bytes(576)):
        with pytest.raises(DecodeError, match="288 bytes"):
            GT.from_compressed(bad)
    with pytest.raises(DecodeError):
        GT.from_compressed("x" * 288)  # type: ignore[arg-type]


def test_compress_takes_only_norm_one_elements():
    minus_one = (P - 1).to_bytes(48, "big")
    full = bytes(48) + minus_one + bytes(528)  # -1: b = 0, a = -1 (not in GT)
    with pytest.raises(ValueError):
        _torus.compress(full)
    with pytest.raises(ValueError):
        _torus.compress(bytes(288))
    # c = 0 would be -1 under (c + w) / (c - w); it is the identity's encoding instead
    assert _torus.decompress(bytes(288)) == GT.one().to_bytes()


@settings(max_examples=3, deadline=None)
@given(a=scalars, b=scalars)
def test_both_backends_agree_byte_for_byte(a, b):
    if len(available_backends()) < 2:
        pytest.skip("needs both backends")
    out = []
    for be in (load("native"), load("pure")):
        c = api(be)
        out.append((pairing(c.G1.generator() * a, c.G2.generator() * b).to_compressed(),
                    (c.GT.generator() ** a).to_compressed()))
    assert out[0] == out[1]
    for be in (load("pure"), load("native")):
        for data in out[0]:
            assert api(be).GT.from_compressed(data).to_compressed() == data


def test_class_level_constructors_use_the_process_backend():
    x = pairing(G1.generator() * 3, G2.generator())
    assert GT.from_compressed(x.to_compressed()) == x == GT.generator() ** 3
