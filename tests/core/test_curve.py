"""Contract tests of core.curve on every available backend, and across backends."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core._backend import P, R
from core.curve import (
    G1,
    G2,
    GT,
    hash_to_scalar,
    multi_pairing,
    pairing,
    random_scalar,
    scalar_from_bytes,
    scalar_to_bytes,
)
from core.errors import DecodeError

pytestmark = pytest.mark.crypto

G1_GEN = bytes.fromhex(
    "97f1d3a73197d7942695638c4fa9ac0fc3688c4f9774b905a14e3a3f171bac586c55e83ff97a1aeffb3af00adb22c6bb"
)
G2_GEN = bytes.fromhex(
    "93e02b6052719f607dacd3a088274f65596bd0d09920b61ab5da61bbdc7f5049334cf11213945d57e5ac7d055d042b7e"
    "024aa2b2f08f0a91260805272dc51051c6e47ad4fa403b02b4510b647ae3d1770bac0326a805bbefd48056c8c121bdb8"
)

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
    assert G1.generator(backend).to_bytes() == G1_GEN
    assert G2.generator(backend).to_bytes() == G2_GEN
    assert G1.from_bytes(G1_GEN, backend=backend) == G1.generator(backend)
    assert G2.from_bytes(G2_GEN, backend=backend) == G2.generator(backend)


def test_identity_encoding_and_rejection(backend):
    inf1 = bytes([0xC0]) + bytes(47)
    inf2 = bytes([0xC0]) + bytes(95)
    assert G1.identity(backend).to_bytes() == inf1
    assert G2.identity(backend).to_bytes() == inf2
    with pytest.raises(DecodeError, match="identity"):
        G1.from_bytes(inf1, backend=backend)
    with pytest.raises(DecodeError, match="identity"):
        G2.from_bytes(inf2, backend=backend)
    assert G1.from_bytes(inf1, allow_identity=True, backend=backend).is_identity()
    assert G2.from_bytes(inf2, allow_identity=True, backend=backend).is_identity()


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
        G1.from_bytes(mutate(G1_GEN), backend=backend)


def test_g1_off_curve_and_off_subgroup(backend):
    with pytest.raises(DecodeError, match="curve"):
        G1.from_bytes(_g1_x(square=False), backend=backend)
    with pytest.raises(DecodeError, match="subgroup"):
        G1.from_bytes(_g1_x(square=True), backend=backend)


def test_g2_structural_rejections(backend):
    with pytest.raises(DecodeError, match="96 bytes"):
        G2.from_bytes(G2_GEN[:95], backend=backend)
    with pytest.raises(DecodeError, match="compression flag"):
        G2.from_bytes(bytes([G2_GEN[0] & 0x7F]) + G2_GEN[1:], backend=backend)
    big = bytearray(G2_GEN)
    big[48:96] = P.to_bytes(48, "big")
    with pytest.raises(DecodeError, match="field modulus"):
        G2.from_bytes(bytes(big), backend=backend)


def test_g2_bad_point_rejected(backend):
    # x = (0, k) for small k: some are off the curve, some off the subgroup;
    # whichever it is, decoding must refuse with a DecodeError naming it.
    for k in range(1, 12):
        data = bytes([0x80]) + bytes(46) + bytes([0]) + k.to_bytes(48, "big")
        with pytest.raises(DecodeError, match="curve|subgroup"):
            G2.from_bytes(data, backend=backend)


def test_type_errors(backend):
    with pytest.raises(DecodeError):
        G1.from_bytes("not bytes", backend=backend)  # type: ignore[arg-type]
    with pytest.raises(DecodeError):
        GT.from_bytes(b"\x00" * 575, backend=backend)


def test_group_laws(backend):
    g = G1.generator(backend)
    h = G2.generator(backend)
    a, b = random_scalar(), random_scalar()
    assert g * a + g * b == g * ((a + b) % R)
    assert (g * a) - (g * a) == G1.identity(backend)
    assert -(h * a) + h * a == G2.identity(backend)
    assert g.mul_public(a) == g * a
    assert h.mul_public(b) == h * b
    assert G1.msm([g, g * 2], [a, b]) == g * ((a + 2 * b) % R)
    assert G2.msm([h, h * 3], [a, b]) == h * ((a + 3 * b) % R)
    assert g * 0 == G1.identity(backend)


def test_pairing_bilinear_and_nondegenerate(backend):
    g, h = G1.generator(backend), G2.generator(backend)
    z = pairing(g, h)
    assert z == GT.generator(backend)
    assert not z.is_one()
    assert z ** (R - 1) * z == GT.one(backend)  # order divides r
    a, b = random_scalar(), random_scalar()
    assert pairing(g * a, h * b) == z ** (a * b % R)
    assert pairing(g * a, h) == pairing(g, h * a)
    assert pairing(G1.identity(backend), h).is_one()


def test_prepared_and_multi_pairing(backend):
    g, h = G1.generator(backend), G2.generator(backend)
    a, b, c = random_scalar(), random_scalar(), random_scalar()
    q = h * b
    prepared = q.prepare()
    assert pairing(g * a, prepared) == pairing(g * a, q)
    assert multi_pairing([(g * a, q), (g * c, h)]) == pairing(g * a, q) * pairing(g * c, h)


def test_gt_operations(backend):
    z = GT.generator(backend)
    a, b = random_scalar(), random_scalar()
    za, zb = z**a, z**b
    assert za * zb == z ** ((a + b) % R)
    assert za * za.inverse() == GT.one(backend)
    assert za / za == GT.one(backend)
    assert GT.generator_pow(a, backend) == za
    assert GT.multi_pow([za, zb, z], [3, 5, 7]) == za**3 * zb**5 * z**7
    assert GT.from_bytes(za.to_bytes(), backend=backend) == za
    assert GT.one(backend).to_bytes() == GT.from_bytes(GT.one(backend).to_bytes(), backend=backend).to_bytes()


def test_gt_decode_rejects_non_subgroup(backend):
    one = GT.one(backend).to_bytes()
    bad = bytearray(one)
    bad[48 * 3 - 1] ^= 2  # perturb a coefficient of the Fp12 one
    with pytest.raises(DecodeError, match="subgroup"):
        GT.from_bytes(bytes(bad), backend=backend)
    with pytest.raises(DecodeError, match="field modulus"):
        GT.from_bytes(P.to_bytes(48, "big") + one[48:], backend=backend)
    with pytest.raises(DecodeError, match="subgroup"):
        GT.from_bytes(bytes(576), backend=backend)


def test_mixing_backends_is_refused(backend, other_backend):
    with pytest.raises(TypeError):
        G1.generator(backend) + G1.generator(other_backend)


@settings(max_examples=4)
@given(a=scalars, b=scalars)
def test_cross_backend_byte_identity(a, b):
    """Every operation gives the same bytes on native and pure (when both load)."""
    from core._backend import available_backends
    from core.curve import get_backend

    names = available_backends()
    if len(names) < 2:
        pytest.skip("needs both backends")
    nat, pure = get_backend("native"), get_backend("pure")
    results = []
    for be in (nat, pure):
        g, h = G1.generator(be), G2.generator(be)
        p, q = g * a, h * b
        results.append(
            (
                p.to_bytes(),
                q.to_bytes(),
                (p + g).to_bytes(),
                (-q).to_bytes(),
                pairing(p, q).to_bytes(),
                (GT.generator(be) ** a).to_bytes(),
            )
        )
    assert results[0] == results[1]
    # and each decodes in the other
    for data, cls in ((results[0][0], G1), (results[0][1], G2), (results[0][4], GT)):
        assert cls.from_bytes(data, backend=pure).to_bytes() == data
        assert cls.from_bytes(data, backend=nat).to_bytes() == data


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
