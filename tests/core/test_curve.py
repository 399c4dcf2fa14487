"""Contract tests of core.curve on every available backend, and across backends."""

from __future__ import annotations

import json
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core._backend import P, R, active_backend, load
from core.curve import (
    G1, G2, GT, api, hash_to_scalar, multi_pairing, pairing, random_scalar, scalar_from_bytes, scalar_to_bytes,
)
from core.errors import DecodeError

pytestmark = pytest.mark.crypto

_VECTORS = json.loads((pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "bls12_381.json").read_text())
G1_GEN = bytes.fromhex(_VECTORS["g1_generator"])  # the standard generators, ZCash-compressed
G2_GEN = bytes.fromhex(_VECTORS["g2_generator"])

scalars = st.integers(min_value=1, max_value=R - 1)


def _examples(backend, native: int, pure: int) -> int:
    return native if backend.name == "native" else pure


def _is_square(a: int) -> bool:
    return a == 0 or pow(a, (P - 1) // 2, P) == 1


def _g1_x(square: bool) -> bytes:
    """A compressed G1 encoding whose x gives x^3+4 a square (on the curve) or not."""
    x = 1
    while _is_square((x**3 + 4) % P) != square:
        x += 1
    return (x | (0x80 << 376)).to_bytes(48, "big")


def test_generators_encode_to_zcash_bytes(backend):
    assert api(backend).G1.generator().to_bytes() == G1_GEN
    assert api(backend).G2.generator().to_bytes() == G2_GEN
    assert api(backend).G1.from_bytes(G1_GEN) == api(backend).G1.generator()
    assert api(backend).G2.from_bytes(G2_GEN) == api(backend).G2.generator()


def test_identity_encoding_and_rejection(backend):
    inf1 = bytes([0xC0]) + bytes(47)
    inf2 = bytes([0xC0]) + bytes(95)
    assert api(backend).G1.identity().to_bytes() == inf1
    assert api(backend).G2.identity().to_bytes() == inf2
    with pytest.raises(DecodeError, match="identity"):
        api(backend).G1.from_bytes(inf1)
    with pytest.raises(DecodeError, match="identity"):
        api(backend).G2.from_bytes(inf2)
    assert api(backend).G1.from_bytes(inf1, allow_identity=True).is_identity()
    assert api(backend).G2.from_bytes(inf2, allow_identity=True).is_identity()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:-1], "48 bytes"),
        (lambda b: b + b"\x00", "48 bytes"),
        (lambda b: bytes([b[0] & 0x7F]) + b[1:], "compression flag"),
        (lambda b: bytes([0xE0]) + bytes(47), "infinity"),
        (lambda b: bytes([0xC0]) + bytes(46) + b"\x01", "infinity"),
        (lambda b: (P | (0x80 << 376)).to_bytes(48, "big"), "field modulus"),
    ],
)
def test_g1_structural_rejections(backend, mutate, message):
    with pytest.raises(DecodeError, match=message):
        api(backend).G1.from_bytes(mutate(G1_GEN))


def test_g1_off_curve_and_off_subgroup(backend):
    with pytest.raises(DecodeError, match="curve"):
        api(backend).G1.from_bytes(_g1_x(square=False))
    with pytest.raises(DecodeError, match="subgroup"):
        api(backend).G1.from_bytes(_g1_x(square=True))


def test_g2_structural_rejections(backend):
    with pytest.raises(DecodeError, match="96 bytes"):
        api(backend).G2.from_bytes(G2_GEN[:95])
    with pytest.raises(DecodeError, match="compression flag"):
        api(backend).G2.from_bytes(bytes([G2_GEN[0] & 0x7F]) + G2_GEN[1:])
    big = bytearray(G2_GEN)
    big[48:96] = P.to_bytes(48, "big")
    with pytest.raises(DecodeError, match="field modulus"):
        api(backend).G2.from_bytes(bytes(big))


def test_g2_bad_point_rejected(backend):
    # x = (0, k) for small k: some are off the curve, some off the subgroup;
    # whichever it is, decoding must refuse with a DecodeError naming it.
    for k in range(1, 12):
        data = bytes([0x80]) + bytes(46) + bytes([0]) + k.to_bytes(48, "big")
        with pytest.raises(DecodeError, match="curve|subgroup"):
            api(backend).G2.from_bytes(data)


def test_type_errors(backend):
    with pytest.raises(DecodeError):
        api(backend).G1.from_bytes("not bytes")  # type: ignore[arg-type]
    with pytest.raises(DecodeError):
        api(backend).GT.from_bytes(b"\x00" * 575)


def test_group_laws(backend):
    g = api(backend).G1.generator()
    h = api(backend).G2.generator()
    a, b = random_scalar(), random_scalar()
    assert g * a + g * b == g * ((a + b) % R)
    assert (g * a) - (g * a) == api(backend).G1.identity()
    assert -(h * a) + h * a == api(backend).G2.identity()
    assert g.mul_public(a) == g * a
    assert h.mul_public(b) == h * b
    assert G1.msm([g, g * 2], [a, b]) == g * ((a + 2 * b) % R)
    assert G2.msm([h, h * 3], [a, b]) == h * ((a + 3 * b) % R)
    assert g * 0 == api(backend).G1.identity()


def test_pairing_bilinear_and_nondegenerate(backend):
    g, h = api(backend).G1.generator(), api(backend).G2.generator()
    z = pairing(g, h)
    assert z == api(backend).GT.generator()
    assert not z.is_one()
    assert z ** (R - 1) * z == api(backend).GT.one()  # order divides r
    a, b = random_scalar(), random_scalar()
    assert pairing(g * a, h * b) == z ** (a * b % R)
    assert pairing(g * a, h) == pairing(g, h * a)
    assert pairing(api(backend).G1.identity(), h).is_one()


def test_prepared_and_multi_pairing(backend):
    g, h = api(backend).G1.generator(), api(backend).G2.generator()
    a, b, c = random_scalar(), random_scalar(), random_scalar()
    q = h * b
    prepared = q.prepare()
    assert pairing(g * a, prepared) == pairing(g * a, q)
    assert multi_pairing([(g * a, q), (g * c, h)]) == pairing(g * a, q) * pairing(g * c, h)


def test_gt_operations(backend):
    z = api(backend).GT.generator()
    a, b = random_scalar(), random_scalar()
    za, zb = z**a, z**b
    assert za * zb == z ** ((a + b) % R)
    assert za * za.inverse() == api(backend).GT.one()
    assert za / za == api(backend).GT.one()
    assert api(backend).GT.generator_pow(a) == za
    assert GT.multi_pow([za, zb, z], [3, 5, 7]) == za**3 * zb**5 * z**7
    assert api(backend).GT.from_bytes(za.to_bytes()) == za
    assert api(backend).GT.one().to_bytes() == api(backend).GT.from_bytes(api(backend).GT.one().to_bytes()).to_bytes()


def test_gt_decode_rejects_non_subgroup(backend):
    one = api(backend).GT.one().to_bytes()
    bad = bytearray(one)
    bad[48 * 3 - 1] ^= 2  # perturb a coefficient of the Fp12 one
    with pytest.raises(DecodeError, match="subgroup"):
        api(backend).GT.from_bytes(bytes(bad))
    with pytest.raises(DecodeError, match="field modulus"):
        api(backend).GT.from_bytes(P.to_bytes(48, "big") + one[48:])
    with pytest.raises(DecodeError, match="subgroup"):
        api(backend).GT.from_bytes(bytes(576))


@settings(max_examples=10)
@given(st.integers(min_value=0, max_value=R - 1))
def test_generator_mul_is_k_g(k):
    assert G1.generator_mul(k) == G1.generator() * k
    assert api().G2.generator_mul(k) == G2.generator() * k


def test_api_is_bound_to_its_backend(backend):
    c = api(backend)
    assert c is api(backend) and c.backend is backend
    assert c.G1.generator().backend is backend and c.GT.one().backend is backend
    assert c.G1.generator_mul(5) == c.G1.generator() * 5
    assert api().backend is active_backend()
    assert G1.generator().backend is active_backend()


def test_mixing_backends_is_refused(backend, other_backend):
    with pytest.raises(TypeError):
        api(backend).G1.generator() + api(other_backend).G1.generator()


@settings(max_examples=4)
@given(a=scalars, b=scalars)
def test_cross_backend_byte_identity(a, b):
    """Every operation gives the same bytes on native and pure (when both load)."""
    from core._backend import available_backends

    names = available_backends()
    if len(names) < 2:
        pytest.skip("needs both backends")
    nat, pure = load("native"), load("pure")
    results = []
    for be in (nat, pure):
        g, h = api(be).G1.generator(), api(be).G2.generator()
        p, q = g * a, h * b
        results.append(
            (
                p.to_bytes(),
                q.to_bytes(),
                (p + g).to_bytes(),
                (-q).to_bytes(),
                pairing(p, q).to_bytes(),
                (api(be).GT.generator() ** a).to_bytes(),
            )
        )
    assert results[0] == results[1]
    # and each decodes in the other
    for be in (pure, nat):
        c = api(be)
        for data, group in ((results[0][0], c.G1), (results[0][1], c.G2), (results[0][4], c.GT)):
            assert group.from_bytes(data).to_bytes() == data


@given(st.binary(min_size=32, max_size=32))
def test_scalar_codec(data):
    k = int.from_bytes(data, "big")
    if k == 0:
        with pytest.raises(DecodeError):
            scalar_from_bytes(data)
        assert scalar_from_bytes(data, allow_zero=True) == 0
    elif k >= R:
        with pytest.raises(DecodeError, match="reduced"):
            scalar_from_bytes(data)
    else:
        assert scalar_to_bytes(scalar_from_bytes(data)) == data


@given(st.binary(max_size=40))
def test_scalar_codec_rejects_wrong_lengths(data):
    if len(data) != 32:
        with pytest.raises(DecodeError, match="32 bytes"):
            scalar_from_bytes(data)


@given(st.lists(st.binary(max_size=20), max_size=4), st.lists(st.binary(max_size=20), max_size=4))
def test_hash_to_scalar_separates_inputs(a, b):
    ka, kb = hash_to_scalar("t", *a), hash_to_scalar("t", *b)
    assert 0 < ka < R
    assert (ka == kb) == (a == b)
    assert hash_to_scalar("t", *a) != hash_to_scalar("u", *a)


def test_random_scalars_are_nonzero_and_distinct():
    ks = {random_scalar() for _ in range(64)}
    assert len(ks) == 64 and all(0 < k < R for k in ks)
