"""Known answers and properties of the pure-Python (py-ecc) backend.

The pure backend must match the native mcl one byte for byte; the cross-backend
comparison lives in test_curve.py. Here: published vectors, the encodings'
validation (each failure with its own message), and the group laws.
"""

from __future__ import annotations

import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from py_ecc.optimized_bls12_381 import FQ, FQ2, FQ12, add, b, b2, is_on_curve, multiply
from py_ecc.optimized_bls12_381 import final_exponentiate as pyecc_final_exponentiate
from py_ecc.optimized_bls12_381 import pairing as pyecc_pairing
from py_ecc.optimized_bls12_381.optimized_pairing import miller_loop

from core import _pure
from core._backend import P, R, load
from core._pure import PureBackend
from core.curve import api, pairing
from core.errors import DecodeError

pytestmark = pytest.mark.crypto

SLOW = settings(max_examples=10, deadline=None)

# ZCash compressed generators (ZCash BLS12-381 serialization spec; the same bytes
# appear in py_ecc's and zkcrypto's test suites).
G1_GEN_HEX = (
    "97f1d3a73197d7942695638c4fa9ac0fc3688c4f9774b905a14e3a3f171bac586c55e83ff97a1aeffb3af00adb22c6bb"
)
G2_GEN_HEX = (
    "93e02b6052719f607dacd3a088274f65596bd0d09920b61ab5da61bbdc7f5049334cf11213945d57e5ac7d055d042b7e"
    "024aa2b2f08f0a91260805272dc51051c6e47ad4fa403b02b4510b647ae3d1770bac0326a805bbefd48056c8c121bdb8"
)

# e(g1, g2) from zkcrypto's `pairing` crate test vectors (reproduced in the
# noble-bls12-381 and kilic/bls12-381 test suites), listed there as
# c0.c0.c0, c0.c0.c1, c0.c1.c0, ... (constant, then u-coefficient, per Fp2).
Z_ZKCRYPTO = [
    0x1250EBD871FC0A92A7B2D83168D0D727272D441BEFA15C503DD8E90CE98DB3E7B6D194F60839C508A84305AACA1789B6,
    0x089A1C5B46E5110B86750EC6A532348868A84045483C92B7AF5AF689452EAFABF1A8943E50439F1D59882A98EAA0170F,
    0x1368BB445C7C2D209703F239689CE34C0378A68E72A6B3B216DA0E22A5031B54DDFF57309396B38C881C4C849EC23E87,
    0x193502B86EDB8857C273FA075A50512937E0794E1E65A7617C90D8BD66065B1FFFE51D7A579973B1315021EC3C19934F,
    0x01B2F522473D171391125BA84DC4007CFBF2F8DA752F7C74185203FCCA589AC719C34DFFBBAAD8431DAD1C1FB597AAA5,
    0x018107154F25A764BD3C79937A45B84546DA634B8F6BE14A8061E55CCEBA478B23F7DACAA35C8CA78BEAE9624045B4B6,
    0x19F26337D205FB469CD6BD15C3D5A04DC88784FBB3D0B2DBDEA54D43B2B73F2CBB12D58386A8703E0F948226E47EE89D,
    0x06FBA23EB7C5AF0D9F80940CA771B6FFD5857BAAF222EB95A7D2809D61BFE02E1BFD1B68FF02F0B8102AE1C2D5D5AB1A,
    0x11B8B424CD48BF38FCEF68083B0B0EC5C81A93B330EE1A677D0D15FF7B984E8978EF48881E32FAC91B93B47333E2BA57,
    0x03350F55A7AEFCD3C31B4FCB6CE5771CC6A0E9786AB5973320C806AD360829107BA810C5A09FFDD9BE2291A0C25A99A2,
    0x04C581234D086A9902249B64728FFD21A189E87935A954051C7CDBA7B3872629A4FAFC05066245CB9108F0242D0FE3EF,
    0x0F41E58663BF08CF068672CBD01A7EC73BACA4D72CA93544DEFF686BFD6DF543D48EAA24AFE47E1EFDE449383B676631,
]

scalars = st.integers(min_value=0, max_value=R - 1)
small = st.integers(min_value=1, max_value=1000)
fp = st.integers(min_value=0, max_value=P - 1)


@pytest.fixture(scope="module")
def be() -> PureBackend:
    return PureBackend()


def _is_square(a: int) -> bool:
    return pow(a, (P - 1) // 2, P) != P - 1


def _g1_bytes(x: int, sign: bool = False) -> bytes:
    out = bytearray(x.to_bytes(48, "big"))
    out[0] |= 0x80 | (0x20 if sign else 0)
    return bytes(out)


def _g2_bytes(x0: int, x1: int, sign: bool = False) -> bytes:
    out = bytearray(x1.to_bytes(48, "big") + x0.to_bytes(48, "big"))
    out[0] |= 0x80 | (0x20 if sign else 0)
    return bytes(out)


def _gt_bytes_from_flat(flat: list[int]) -> bytes:
    return PureBackend().gt_encode(FQ12(flat))


# ------------------------------------------------------------ known answers


def test_generators_encode_to_the_zcash_bytes(be):
    assert be.g1_encode(be.g1_generator()).hex() == G1_GEN_HEX
    assert be.g2_encode(be.g2_generator()).hex() == G2_GEN_HEX
    assert be.g1_eq(be.g1_decode(bytes.fromhex(G1_GEN_HEX)), be.g1_generator())
    assert be.g2_eq(be.g2_decode(bytes.fromhex(G2_GEN_HEX)), be.g2_generator())


def test_identity_encodings(be):
    assert be.g1_encode(be.g1_identity()) == b"\xc0" + bytes(47)
    assert be.g2_encode(be.g2_identity()) == b"\xc0" + bytes(95)
    assert be.g1_is_identity(be.g1_decode(b"\xc0" + bytes(47)))
    assert be.g2_is_identity(be.g2_decode(b"\xc0" + bytes(95)))


def test_z_matches_the_published_pairing_vector(be):
    # Our GT order: per Fp2 the u-coefficient first, then the constant.
    expected = b"".join(
        Z_ZKCRYPTO[i + 1].to_bytes(48, "big") + Z_ZKCRYPTO[i].to_bytes(48, "big") for i in range(0, 12, 2)
    )
    assert be.gt_encode(be.gt_generator()) == expected


def test_pairing_is_pyecc_pairing_conjugated_and_cubed(be):
    # CRYPTO.md: e_mcl(P, Q) = conj(pairing_pyecc(Q, P)) ^ 3
    p, q = multiply(be.g1_generator(), 5), multiply(be.g2_generator(), 11)
    ref = pyecc_pairing(q, p)
    assert be.pairing(p, q) == _pure._conj(ref * ref * ref)


def test_fast_final_exponentiation_is_three_times_pyeccs(be):
    f = miller_loop(multiply(be.g2_generator(), 3), be.g1_generator(), final_exponentiate=False)
    ref = pyecc_final_exponentiate(f)
    assert _pure._final_exponentiation(f) == ref * ref * ref


# ---------------------------------------------------------- G1 / G2 codecs


@SLOW
@pytest.mark.parametrize("group, size", [("g1", 48), ("g2", 96)])
@given(k=scalars)
def test_point_round_trip(be, group, size, k):
    G = _group(be, group)
    pt = G.mul(G.generator(), k, False)
    data = G.encode(pt)
    assert len(data) == size and data[0] & 0x80
    back = G.decode(data)
    assert G.eq(back, pt)
    assert G.encode(back) == data


@SLOW
@given(k=small)
def test_negation_flips_only_the_sign_flag(be, k):
    for mul, enc, neg, gen in (
        (be.g1_mul, be.g1_encode, be.g1_neg, be.g1_generator()),
        (be.g2_mul, be.g2_encode, be.g2_neg, be.g2_generator()),
    ):
        pt = mul(gen, k, True)
        a, b_ = enc(pt), enc(neg(pt))
        assert a[0] ^ b_[0] == 0x20
        assert a[1:] == b_[1:]


def test_sign_flag_follows_the_lexicographic_rule(be):
    pt = be.g1_generator()
    y = int(pt[1].n)
    assert bool(be.g1_encode(pt)[0] & 0x20) == (y > (P - 1) // 2)
    q = be.g2_generator()
    y0, y1 = (int(c) for c in q[1].coeffs)
    assert bool(be.g2_encode(q)[0] & 0x20) == (y1 > (P - 1) // 2)
    # the imaginary part decides; the real part only when it is zero
    assert _pure._fp2_sign(0, 1) is False
    assert _pure._fp2_sign(P - 1, 1) is False
    assert _pure._fp2_sign(1, P - 1) is True
    assert _pure._fp2_sign(P - 1, 0) is True
    assert _pure._fp2_sign(1, 0) is False


_G1, _G2 = bytes.fromhex(G1_GEN_HEX), bytes.fromhex(G2_GEN_HEX)


@pytest.mark.parametrize(
    "group, data, message",
    [
        ("g1", _G1[:47], "48 bytes"),
        ("g1", bytes([_G1[0] & 0x7F]) + _G1[1:], "compression flag"),
        ("g1", b"\xe0" + bytes(47), "point-at-infinity"),
        ("g1", b"\xc0" + bytes(46) + b"\x01", "point-at-infinity"),
        ("g1", _g1_bytes(P), "not below the field modulus"),
        ("g1", _g1_bytes((1 << 381) - 1), "not below the field modulus"),
        ("g2", _G2[:95], "96 bytes"),
        ("g2", bytes([_G2[0] & 0x7F]) + _G2[1:], "compression flag"),
        ("g2", b"\xe0" + bytes(95), "point-at-infinity"),
        ("g2", b"\xc0" + bytes(94) + b"\x01", "point-at-infinity"),
        ("g2", _g2_bytes(0, P), "not below the field modulus"),
        ("g2", _g2_bytes(P, 0), "not below the field modulus"),
    ],
)
def test_point_structural_rejections(be, group, data, message):
    with pytest.raises(DecodeError, match=message):
        (be.g1_decode if group == "g1" else be.g2_decode)(data)


def _first_g1_x(on_curve: bool) -> int:
    x = 0
    while _is_square((x**3 + 4) % P) != on_curve:
        x += 1
    return x


def test_g1_not_on_curve(be):
    x = _first_g1_x(on_curve=False)
    for sign in (False, True):
        with pytest.raises(DecodeError, match="G1 point: not on the curve"):
            be.g1_decode(_g1_bytes(x, sign))


def test_g1_not_in_subgroup(be):
    x = _first_g1_x(on_curve=True)
    y = pow((x**3 + 4) % P, (P + 1) // 4, P)
    pt = (FQ(x), FQ(y), FQ(1))
    assert is_on_curve(pt, b) and not be.g1_is_identity(multiply(pt, R))
    for sign in (False, True):
        with pytest.raises(DecodeError, match="G1 point: not in the order-r subgroup"):
            be.g1_decode(_g1_bytes(x, sign))


def _first_g2_x(on_curve: bool) -> tuple[int, int]:
    x0 = 0
    while True:
        x = FQ2([x0, 1])
        rhs = x * x * x + b2
        if (_pure._fp2_sqrt(*(int(c) for c in rhs.coeffs)) is not None) == on_curve:
            return x0, 1
        x0 += 1


def test_g2_not_on_curve(be):
    x0, x1 = _first_g2_x(on_curve=False)
    for sign in (False, True):
        with pytest.raises(DecodeError, match="G2 point: not on the curve"):
            be.g2_decode(_g2_bytes(x0, x1, sign))


def test_g2_not_in_subgroup(be):
    x0, x1 = _first_g2_x(on_curve=True)
    for sign in (False, True):
        with pytest.raises(DecodeError, match="G2 point: not in the order-r subgroup"):
            be.g2_decode(_g2_bytes(x0, x1, sign))


# cofactors: #E(Fp) = H1 r, #E'(Fp2) = H2 r
_U = -0xD201000000010000
H1 = (_U - 1) ** 2 // 3
H2 = (_U**8 - 4 * _U**7 + 5 * _U**6 - 4 * _U**4 + 6 * _U**3 - 4 * _U**2 - 4 * _U + 13) // 9


def test_endomorphism_constants():
    assert _pure._BETA**3 == FQ(1) and _pure._BETA != FQ(1)
    g1, g2 = PureBackend().g1_generator(), PureBackend().g2_generator()
    assert _pure._point_eq(_pure._phi(g1), multiply(g1, (-_U * _U) % R))
    assert _pure._point_eq(_pure._psi(g2), multiply(g2, P % R))  # psi acts as Frobenius
    assert P % R == _U % R


@settings(max_examples=6, deadline=None)
@given(x=fp, k=scalars)
def test_fast_g1_subgroup_check_agrees_with_the_order(x, k):
    y = _pure._fp_sqrt((x**3 + 4) % P)
    if y is None:
        x, y = 0, 2  # (0, 2) has order 3
    q = (FQ(x), FQ(y), FQ(1))
    assert is_on_curve(q, b)
    in_g1 = multiply(q, H1)
    torsion = multiply(q, R)
    for pt in (q, torsion, in_g1, multiply(in_g1, k), add(in_g1, torsion)):
        assert _pure._in_g1(pt) == _pure._in_subgroup_by_order(pt)
    assert _pure._in_g1(in_g1)
    assert not _pure._in_g1(q)


@settings(max_examples=4, deadline=None)
@given(x0=fp, x1=fp)
def test_fast_g2_subgroup_check_agrees_with_the_order(x0, x1):
    x = FQ2([x0, x1])
    root = None
    while root is None:
        x = x + FQ2.one()
        root = _pure._fp2_sqrt(*(int(c) for c in (x * x * x + b2).coeffs))
    q = (x, FQ2(list(root)), FQ2.one())
    assert is_on_curve(q, b2)
    in_g2 = multiply(q, H2)
    torsion = multiply(q, R)
    for pt in (q, torsion, in_g2, add(in_g2, torsion)):
        assert _pure._in_g2(pt) == _pure._in_subgroup_by_order(pt)
    assert _pure._in_g2(in_g2) and not _pure._is_inf(in_g2)
    assert not _pure._in_g2(q)


@SLOW
@given(a0=fp, a1=fp)
def test_fp2_sqrt(a0, a1):
    sq = FQ2([a0, a1]) ** 2
    root = _pure._fp2_sqrt(*(int(c) for c in sq.coeffs))
    assert root is not None
    assert FQ2(list(root)) ** 2 == sq
    # u + 1 is not a square in Fp2 (it is the sextic twist's non-residue)
    if sq != FQ2.zero():
        ns = sq * FQ2([1, 1])
        assert _pure._fp2_sqrt(*(int(c) for c in ns.coeffs)) is None


# ---------------------------------------------------------------- G1 / G2 laws


def _group(be, group: str) -> types.SimpleNamespace:
    """The backend's ``g1_*`` or ``g2_*`` methods without the prefix."""
    ops = ("generator", "identity", "encode", "decode", "add", "neg", "mul", "msm", "eq", "is_identity")
    return types.SimpleNamespace(**{op: getattr(be, f"{group}_{op}") for op in ops})


@SLOW
@pytest.mark.parametrize("group, m", [("g1", 3), ("g2", 2)])
@given(a=scalars, c=small)
def test_group_laws(be, group, m, a, c):
    G = _group(be, group)
    g = G.generator()
    pa, pc = G.mul(g, a, True), G.mul(g, c, False)
    assert G.eq(G.add(pa, pc), G.mul(g, (a + c) % R, False))
    assert G.is_identity(G.add(pa, G.neg(pa)))
    assert G.eq(G.msm([pa, g], [m, c]), G.mul(g, (m * a + c) % R, False))
    assert G.eq(G.add(pa, G.identity()), pa)


def test_equality_ignores_the_projective_representation(be):
    g = be.g1_generator()
    twice = be.g1_add(g, g)  # Z != 1
    assert twice[2] != FQ(1)
    assert be.g1_eq(twice, be.g1_mul(g, 2, False))
    assert not be.g1_eq(twice, g)
    assert not be.g1_eq(twice, be.g1_identity())
    assert be.g1_eq(be.g1_identity(), be.g1_add(g, be.g1_neg(g)))
    q = be.g2_generator()
    assert be.g2_eq(be.g2_add(q, q), be.g2_decode(be.g2_encode(be.g2_add(q, q))))


# ------------------------------------------------------------------- pairing


def test_z_has_order_r(be):
    z = be.gt_generator()
    assert not be.gt_eq(z, be.gt_one())
    assert be.gt_eq(be.gt_pow(z, R - 1), be.gt_inv(z))
    assert be.gt_eq(_pure._pow(z, R), be.gt_one())


@settings(max_examples=4, deadline=None)
@given(a=small, c=small)
def test_bilinearity(be, a, c):
    pa = be.g1_mul(be.g1_generator(), a, True)
    qc = be.g2_mul(be.g2_generator(), c, True)
    assert be.gt_eq(be.pairing(pa, qc), be.gt_generator_pow(a * c))
    assert be.gt_eq(be.pairing(pa, qc), be.gt_pow(be.pairing(be.g1_generator(), qc), a))


def test_bilinearity_with_full_size_scalars(be):
    a = 0x5F0C1D5BBA1DE9E3F6C2A7A3E0A9D8B7C6D5E4F3A2B1C0D9E8F7A6B5C4D3E2F1 % R
    c = R - 12345
    pa = be.g1_mul(be.g1_generator(), a, True)
    qc = be.g2_mul(be.g2_generator(), c, True)
    assert be.gt_eq(be.pairing(pa, qc), be.gt_pow(be.gt_generator(), a * c % R))


def test_pairing_with_the_identity_is_one(be):
    assert be.gt_eq(be.pairing(be.g1_identity(), be.g2_generator()), be.gt_one())
    assert be.gt_eq(be.pairing(be.g1_generator(), be.g2_identity()), be.gt_one())
    assert be.gt_eq(be.multi_pairing([be.g1_identity()], [be.g2_identity()]), be.gt_one())


def test_multi_pairing_and_prepared(be):
    g1, g2 = be.g1_generator(), be.g2_generator()
    p2, q3 = be.g1_mul(g1, 2, False), be.g2_mul(g2, 3, False)
    # e(2 g1, g2) e(g1, 3 g2) e(0, g2) = Z^5
    got = be.multi_pairing([p2, g1, be.g1_identity()], [g2, q3, g2])
    assert be.gt_eq(got, be.gt_generator_pow(5))
    # e(P1, g2) = e(g1, P2) as a product check: e(P1, -g2) e(g1, P2) = 1
    assert be.gt_eq(be.multi_pairing([p2, g1], [be.g2_neg(g2), be.g2_mul(g2, 2, True)]), be.gt_one())
    assert be.gt_eq(be.pairing_prepared(p2, be.g2_prepare(q3)), be.gt_generator_pow(6))


# ------------------------------------------------------------------------ GT


@SLOW
@given(k=scalars)
def test_gt_round_trip(be, k):
    x = be.gt_generator_pow(k)
    data = be.gt_encode(x)
    assert len(data) == 576
    back = be.gt_decode(data)
    assert be.gt_eq(back, x)
    assert be.gt_encode(back) == data


def test_gt_tower_map():
    # u = w^6 - 1 squares to -1; v = w^2 cubes to u + 1.
    w6 = FQ12([0] * 6 + [1] + [0] * 5)
    u = w6 - FQ12.one()
    assert u * u == -FQ12.one()
    v = FQ12([0, 0, 1] + [0] * 9)
    assert v * v * v == u + FQ12.one()
    # the byte order: the first Fp2 is the constant coefficient, u-part first
    one = PureBackend().gt_encode(FQ12.one())
    assert one[:48] == bytes(48) and int.from_bytes(one[48:96], "big") == 1 and not any(one[96:])
    data = PureBackend().gt_encode(u)  # u alone: the first 48 bytes are 1
    assert int.from_bytes(data[:48], "big") == 1 and not any(data[48:])
    data = PureBackend().gt_encode(FQ12([0, 1] + [0] * 10))  # w: the c1 half, v^0, constant
    assert int.from_bytes(data[336:384], "big") == 1 and not any(data[:336] + data[384:])


def test_gt_rejections(be):
    with pytest.raises(DecodeError, match="576 bytes"):
        be.gt_decode(bytes(575))
    with pytest.raises(DecodeError, match="not below the field modulus"):
        be.gt_decode(P.to_bytes(48, "big") + bytes(528))
    with pytest.raises(DecodeError, match="not in the order-r subgroup"):
        be.gt_decode(bytes(576))  # zero
    with pytest.raises(DecodeError, match="not in the order-r subgroup"):
        be.gt_decode(_gt_bytes_from_flat([2] + [0] * 11))
    # a unitary element (the Miller loop output after the easy part) of order != r
    f = miller_loop(be.g2_generator(), be.g1_generator(), final_exponentiate=False)
    t = _pure._conj(f) * f.inv()
    t = _pure.exp_by_p(_pure.exp_by_p(t)) * t
    assert _pure._conj(t) * t == FQ12.one()
    with pytest.raises(DecodeError, match="not in the order-r subgroup"):
        be.gt_decode(be.gt_encode(t))


@SLOW
@given(a=scalars, c=scalars)
def test_gt_laws(be, a, c):
    z = be.gt_generator()
    za, zc = be.gt_generator_pow(a), be.gt_pow(z, c)
    assert be.gt_eq(za, be.gt_pow(z, a))
    assert be.gt_eq(be.gt_mul(za, zc), be.gt_generator_pow((a + c) % R))
    assert be.gt_eq(be.gt_mul(za, be.gt_inv(za)), be.gt_one())
    assert be.gt_eq(be.gt_multi_pow([za, zc, z], [3, 5, 0]), be.gt_generator_pow((3 * a + 5 * c) % R))
    assert be.gt_eq(be.gt_pow(za, 0), be.gt_one())


# -------------------------------------------------------- through core.curve


def test_public_wrappers_on_the_pure_backend():
    pure = api(load("pure"))
    g1, g2 = pure.G1.generator(), pure.G2.generator()
    assert g1.to_bytes().hex() == G1_GEN_HEX
    a = 987654321
    pa = g1 * a
    assert pure.G1.from_bytes(pa.to_bytes()) == pa
    with pytest.raises(DecodeError, match="identity"):
        pure.G1.from_bytes(b"\xc0" + bytes(47))
    assert pairing(pa, g2) == pure.GT.generator_pow(a)
    assert pairing(pa, g2.prepare()) == pure.GT.generator() ** a
    k = pure.GT.from_bytes(pure.GT.generator().to_bytes())
    assert k == pure.GT.generator()


# ------------------------------------------------- against the native backend


def _native():
    from core._backend import available_backends

    if "native" not in available_backends():
        pytest.skip("the native backend is not built")
    return load("native")


@settings(max_examples=3, deadline=None)
@given(ks=st.lists(scalars, min_size=3, max_size=3))
def test_same_bytes_as_native_for_every_operation(be, ks):
    nat = _native()

    def run(x):
        g1, g2 = x.g1_generator(), x.g2_generator()
        ps = [x.g1_mul(g1, k, True) for k in ks]
        qs = [x.g2_mul(g2, k, False) for k in ks]
        z = x.gt_generator()
        e = x.pairing(ps[0], qs[1])
        return [
            x.g1_encode(x.g1_msm(ps, ks)),
            x.g2_encode(x.g2_msm(qs, ks)),
            x.g1_encode(x.g1_add(ps[0], x.g1_neg(ps[1]))),
            x.g2_encode(x.g2_add(qs[0], x.g2_neg(qs[1]))),
            x.gt_encode(z),
            x.gt_encode(e),
            x.gt_encode(x.multi_pairing(ps, qs)),
            x.gt_encode(x.pairing_prepared(ps[2], x.g2_prepare(qs[0]))),
            x.gt_encode(x.gt_multi_pow([z, e], ks[:2])),
            x.gt_encode(x.gt_inv(e)),
            x.gt_encode(x.gt_mul(e, z)),
            x.gt_encode(x.gt_pow(e, ks[2])),
            x.gt_encode(x.gt_generator_pow(ks[0])),
            x.gt_encode(x.gt_one()),
        ]

    mine, theirs = run(be), run(nat)
    assert mine == theirs
    for data in mine[4:]:
        assert be.gt_encode(be.gt_decode(data)) == data


@settings(max_examples=10, deadline=None)
@given(
    g1=st.binary(min_size=48, max_size=48),
    g2=st.binary(min_size=96, max_size=96),
    flags=st.sampled_from([0x80, 0xA0, 0xC0, 0xE0, 0x00]),
)
def test_accepts_and_rejects_what_native_does(be, g1, g2, flags):
    nat = _native()

    def verdict(x, kind, data):
        try:
            return getattr(x, kind + "_encode")(getattr(x, kind + "_decode")(data))
        except DecodeError:
            return None

    for kind, raw in (("g1", g1), ("g2", g2)):
        data = bytes([flags | raw[0] & 0x1F]) + raw[1:]
        assert verdict(be, kind, data) == verdict(nat, kind, data)
    # and the points of the group itself
    k = int.from_bytes(g1[:32], "big") % R
    for kind, gen in (("g1", nat.g1_generator()), ("g2", nat.g2_generator())):
        data = getattr(nat, kind + "_encode")(getattr(nat, kind + "_mul")(gen, k, False))
        assert verdict(be, kind, data) == data
