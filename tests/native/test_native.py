"""Facts about the native (mcl) backend that the contract tests do not cover.

Skipped when the extension is not built (``python -m native.build``).
"""

from __future__ import annotations

import json
import os
import pathlib
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core._backend import P, R, load
from core.errors import BackendError, CoreError, DecodeError

try:
    NATIVE = load("native")
except BackendError as exc:  # not built, or built from other sources
    pytest.skip(f"native backend unavailable: {exc}", allow_module_level=True)

from core.curve import G1, GT, api, multi_pairing, pairing  # noqa: E402
from native import backend as native_backend  # noqa: E402
from native import build as native_build  # noqa: E402
from native.errors import NativeDecodeError, NativeError  # noqa: E402

pytestmark = pytest.mark.crypto

_VECTORS = json.loads((pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "bls12_381.json").read_text())
ZCASH_G1 = bytes.fromhex(_VECTORS["g1_generator"])  # the standard generators, ZCash-compressed
ZCASH_G2 = bytes.fromhex(_VECTORS["g2_generator"])

scalars = st.integers(min_value=0, max_value=R - 1)
edge_scalars = st.sampled_from([0, 1, 2, 15, 16, 255, 2**252, R - 2, R - 1]) | scalars


# ------------------------------------------------------------------ handles and init


def test_generators_are_the_standard_zcash_points():
    assert NATIVE.g1_encode(NATIVE.g1_generator()) == ZCASH_G1
    assert NATIVE.g2_encode(NATIVE.g2_generator()) == ZCASH_G2
    assert api(NATIVE).G1.generator().to_bytes() == ZCASH_G1
    assert api(NATIVE).G2.generator().to_bytes() == ZCASH_G2
    # Z is the pairing of those generators
    assert NATIVE.gt_eq(NATIVE.gt_generator(), NATIVE.pairing(NATIVE.g1_generator(), NATIVE.g2_generator()))


def test_handles_are_bytes_of_mcl_struct_sizes():
    assert type(NATIVE.g1_generator()) is bytes and len(NATIVE.g1_generator()) == 144
    assert type(NATIVE.g2_generator()) is bytes and len(NATIVE.g2_generator()) == 288
    assert type(NATIVE.gt_generator()) is bytes and len(NATIVE.gt_generator()) == 576
    prepared = NATIVE.g2_prepare(NATIVE.g2_generator())
    assert type(prepared) is bytes and len(prepared) % 8 == 0 and len(prepared) > 576


def test_foreign_or_short_handles_are_refused():
    with pytest.raises(TypeError, match="G1 handle"):
        NATIVE.g1_add(NATIVE.g1_generator(), b"\x00" * 10)
    with pytest.raises(TypeError, match="G2 handle"):
        NATIVE.g2_neg(NATIVE.g1_generator())
    with pytest.raises(TypeError, match="GT handle"):
        NATIVE.gt_mul(NATIVE.gt_one(), NATIVE.g1_generator())
    with pytest.raises(TypeError, match="prepared"):
        NATIVE.pairing_prepared(NATIVE.g1_generator(), NATIVE.g2_generator())
    with pytest.raises(ValueError, match="out of range"):
        NATIVE.g1_mul(NATIVE.g1_generator(), R, True)


def test_backend_is_a_process_singleton_and_checks_its_build():
    assert load("native") is NATIVE
    from native._mcl_cffi import ffi, lib

    assert ffi.string(lib.emr_source_hash()).decode() == native_build.source_hash()
    assert lib.emr_gt_table_ready() == 1
    assert lib.emr_gt_table_bytes() == 64 * 16 * 576


# ------------------------------------------------------------------ decoding


def _first_x(predicate, group: str) -> bytes:
    """The first compressed encoding (x = 1, 2, ...) whose decode error matches."""
    size = 48 if group == "G1" else 96
    decode = NATIVE.g1_decode if group == "G1" else NATIVE.g2_decode
    for x in range(1, 200):
        data = bytearray(size)
        data[-1] = x
        data[0] |= 0x80
        try:
            decode(bytes(data))
        except DecodeError as exc:
            if predicate(str(exc)):
                return bytes(data)
    raise AssertionError("no such x below 200")


@pytest.mark.parametrize("group", ["G1", "G2"])
def test_decode_tells_off_curve_from_off_subgroup(group):
    """Order checks are off in mcl's deserialize; the backend checks the order
    itself so the two failures get different messages (the pure backend's)."""
    decode = NATIVE.g1_decode if group == "G1" else NATIVE.g2_decode
    off_curve = _first_x(lambda m: "not on the curve" in m, group)
    off_group = _first_x(lambda m: "order-r subgroup" in m, group)
    with pytest.raises(DecodeError, match=f"^{group} point: not on the curve$"):
        decode(off_curve)
    with pytest.raises(DecodeError, match=f"^{group} point: not in the order-r subgroup$"):
        decode(off_group)


def test_decode_structural_errors_come_from_the_shared_checks():
    with pytest.raises(DecodeError, match="48 bytes"):
        NATIVE.g1_decode(ZCASH_G1[:-1])
    with pytest.raises(DecodeError, match="compression flag"):
        NATIVE.g1_decode(bytes([ZCASH_G1[0] & 0x7F]) + ZCASH_G1[1:])
    with pytest.raises(DecodeError, match="infinity"):
        NATIVE.g1_decode(b"\xc0" + b"\x00" * 46 + b"\x01")  # mcl alone would skip the last byte
    assert NATIVE.g1_is_identity(NATIVE.g1_decode(b"\xc0" + bytes(47)))
    assert NATIVE.g2_is_identity(NATIVE.g2_decode(b"\xc0" + bytes(95)))


# ------------------------------------------------------------------ the boundary to core/


# native/ is a leaf (imports nothing of core/, nor its build script at run time):
# tests/test_architecture.py checks it for every file of native/.


def _bad_encodings(group: str) -> list[bytes]:
    """Encodings both backends refuse: structural faults, off the curve, off the subgroup."""
    if group == "GT":
        one = bytearray(load("pure").gt_encode(load("pure").gt_one()))
        one[48 * 3 - 1] ^= 2
        return [bytes(575), bytes(576), bytes(one), P.to_bytes(48, "big") + bytes(528)]
    gen = ZCASH_G1 if group == "G1" else ZCASH_G2
    size = len(gen)
    big_x = bytearray(gen)
    big_x[size - 48 : size] = P.to_bytes(48, "big")
    return [
        gen[:-1],
        bytes([gen[0] & 0x7F]) + gen[1:],  # compression flag not set
        b"\xc0" + bytes(size - 2) + b"\x01",  # malformed infinity
        bytes(big_x),  # x not below p
        _first_x(lambda m: "not on the curve" in m, group),
        _first_x(lambda m: "order-r subgroup" in m, group),
    ]


@pytest.mark.parametrize("group", ["G1", "G2", "GT"])
def test_native_errors_reach_callers_as_the_pure_backends_core_errors(group):
    """native/ raises its own NativeDecodeError; core/ turns it into DecodeError with
    exactly the text the pure backend gives for the same bytes."""
    pure = load("pure")
    native_decode, pure_decode = {
        "G1": (NATIVE.g1_decode, pure.g1_decode),
        "G2": (NATIVE.g2_decode, pure.g2_decode),
        "GT": (NATIVE.gt_decode, pure.gt_decode),
    }[group]
    for data in _bad_encodings(group):
        with pytest.raises(DecodeError) as on_native:
            native_decode(data)
        with pytest.raises(DecodeError) as on_pure:
            pure_decode(data)
        assert type(on_native.value) is DecodeError and not isinstance(on_native.value, NativeError)
        assert str(on_native.value) == str(on_pure.value)


def test_the_bare_binding_raises_its_own_errors():
    raw = native_backend.NativeBackend()  # mcl is initialised once per process: cheap
    for group, decode in (("G1", raw.g1_decode), ("G2", raw.g2_decode)):
        with pytest.raises(NativeDecodeError, match=f"^{group} point: not on the curve$") as exc:
            decode(_first_x(lambda m: "not on the curve" in m, group))
        assert not isinstance(exc.value, CoreError) and isinstance(exc.value, ValueError)
    with pytest.raises(NativeDecodeError, match="^GT element: not in the order-r subgroup$"):
        raw.gt_decode(bytes(576))


def _conj(f):
    """The p^6 Frobenius in py-ecc's flat basis: negate the odd powers of w."""
    from py_ecc.optimized_bls12_381 import FQ12

    return FQ12([c if i % 2 == 0 else -c for i, c in enumerate(f.coeffs)])


def test_gt_decode_rejects_cyclotomic_element_outside_the_subgroup():
    """f^((p^6-1)(p^2+1)) is in the cyclotomic subgroup (so unitary tricks pass)
    but, for a generic f, not of order r: decode must still reject it."""
    from py_ecc.optimized_bls12_381 import FQ12

    pure = load("pure")
    f = FQ12([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8])
    g = _conj(f) / f  # f^(p^6 - 1)
    g = (g ** (P * P)) * g  # ^(p^2 + 1)
    data = pure.gt_encode(g)
    with pytest.raises(DecodeError, match="GT element: not in the order-r subgroup"):
        NATIVE.gt_decode(data)
    # the same bytes with its conjugate multiplied in is the identity: accepted
    assert NATIVE.gt_eq(NATIVE.gt_decode(pure.gt_encode(g * _conj(g))), NATIVE.gt_one())


@settings(max_examples=10)
@given(st.lists(st.integers(min_value=0, max_value=P - 1), min_size=12, max_size=12))
def test_gt_decode_rejects_random_fp12(coeffs):
    data = b"".join(c.to_bytes(48, "big") for c in coeffs)
    with pytest.raises(DecodeError, match="subgroup"):
        NATIVE.gt_decode(data)


@settings(max_examples=10)
@given(scalars)
def test_gt_roundtrip(k):
    x = NATIVE.gt_generator_pow(k)
    data = NATIVE.gt_encode(x)
    assert NATIVE.gt_eq(NATIVE.gt_decode(data), x)
    assert NATIVE.gt_encode(NATIVE.gt_decode(data)) == data


# ------------------------------------------------------------------ helpers vs plain mcl


@settings(max_examples=40)
@given(edge_scalars)
def test_fixed_base_table_equals_gt_pow(k):
    z = NATIVE.gt_generator()
    assert NATIVE.gt_encode(NATIVE.gt_generator_pow(k)) == NATIVE.gt_encode(NATIVE.gt_pow(z, k))


def test_fixed_base_table_edges():
    assert NATIVE.gt_eq(NATIVE.gt_generator_pow(0), NATIVE.gt_one())
    assert NATIVE.gt_eq(NATIVE.gt_generator_pow(1), NATIVE.gt_generator())
    z_inv = NATIVE.gt_inv(NATIVE.gt_generator())
    assert NATIVE.gt_eq(NATIVE.gt_generator_pow(R - 1), z_inv)


@settings(max_examples=10)
@given(scalars, scalars)
def test_prepared_pairing_equals_plain_pairing(a, b):
    p = NATIVE.g1_mul(NATIVE.g1_generator(), a, True)
    q = NATIVE.g2_mul(NATIVE.g2_generator(), b, True)
    prepared = NATIVE.g2_prepare(q)
    assert NATIVE.gt_encode(NATIVE.pairing_prepared(p, prepared)) == NATIVE.gt_encode(NATIVE.pairing(p, q))
    # and it is e(g1, g2)^(ab)
    assert NATIVE.gt_eq(NATIVE.pairing(p, q), NATIVE.gt_generator_pow(a * b % R))


@settings(max_examples=10)
@given(st.lists(st.tuples(scalars, scalars), min_size=1, max_size=5))
def test_multi_pow_equals_product_of_pows(pairs):
    bases = [NATIVE.gt_generator_pow(b) for b, _ in pairs]
    exps = [e for _, e in pairs]
    expected = NATIVE.gt_one()
    for x, e in zip(bases, exps):
        expected = NATIVE.gt_mul(expected, NATIVE.gt_pow(x, e))
    assert NATIVE.gt_eq(NATIVE.gt_multi_pow(bases, exps), expected)


@settings(max_examples=8)
@given(st.lists(st.tuples(scalars, scalars), min_size=1, max_size=4))
def test_multi_pairing_and_msm_equal_their_definitions(pairs):
    ps = [NATIVE.g1_mul(NATIVE.g1_generator(), a, False) for a, _ in pairs]
    qs = [NATIVE.g2_mul(NATIVE.g2_generator(), b, False) for _, b in pairs]
    expected = NATIVE.gt_one()
    for p, q in zip(ps, qs):
        expected = NATIVE.gt_mul(expected, NATIVE.pairing(p, q))
    assert NATIVE.gt_eq(NATIVE.multi_pairing(ps, qs), expected)

    ks = [b for _, b in pairs]
    acc1, acc2 = NATIVE.g1_identity(), NATIVE.g2_identity()
    for p, q, k in zip(ps, qs, ks):
        acc1 = NATIVE.g1_add(acc1, NATIVE.g1_mul(p, k, True))
        acc2 = NATIVE.g2_add(acc2, NATIVE.g2_mul(q, k, True))
    before = list(ps)
    assert NATIVE.g1_eq(NATIVE.g1_msm(ps, ks), acc1)
    assert NATIVE.g2_eq(NATIVE.g2_msm(qs, ks), acc2)
    assert ps == before  # msm works on a copy: handles are immutable


@settings(max_examples=10)
@given(scalars)
def test_ct_and_public_multiplication_agree(k):
    g1, g2 = NATIVE.g1_generator(), NATIVE.g2_generator()
    assert NATIVE.g1_encode(NATIVE.g1_mul(g1, k, True)) == NATIVE.g1_encode(NATIVE.g1_mul(g1, k, False))
    assert NATIVE.g2_encode(NATIVE.g2_mul(g2, k, True)) == NATIVE.g2_encode(NATIVE.g2_mul(g2, k, False))


@settings(max_examples=3)
@given(scalars, scalars, st.lists(scalars, min_size=2, max_size=3))
def test_native_helpers_match_the_pure_backend(a, b, exps):
    pure = load("pure")
    results = []
    for be in (NATIVE, pure):
        p, q = api(be).G1.generator() * a, api(be).G2.generator() * b
        bases = [api(be).GT.generator_pow(e) for e in exps]
        results.append(
            (
                api(be).GT.generator_pow(a).to_bytes(),
                pairing(p, q.prepare()).to_bytes(),
                multi_pairing([(p, q), (api(be).G1.generator(), q)]).to_bytes(),
                GT.multi_pow(bases, exps).to_bytes(),
                G1.msm([p, api(be).G1.generator()], exps[:2]).to_bytes(),
                (api(be).GT.generator() ** b).inverse().to_bytes(),
            )
        )
    assert results[0] == results[1]


def test_threads_share_the_backend():
    """Calls release the GIL; concurrent use from threads gives the same answers."""
    p = NATIVE.g1_mul(NATIVE.g1_generator(), 12345, True)
    q = NATIVE.g2_mul(NATIVE.g2_generator(), 67890, True)
    expected = NATIVE.gt_encode(NATIVE.pairing(p, q))
    z_expected = NATIVE.gt_encode(NATIVE.gt_generator_pow(987654321))
    errors: list[str] = []

    def work():
        for _ in range(5):
            if NATIVE.gt_encode(NATIVE.pairing(p, q)) != expected:
                errors.append("pairing")
            if NATIVE.gt_encode(NATIVE.gt_generator_pow(987654321)) != z_expected:
                errors.append("Z^k")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ------------------------------------------------------------------ GT membership (Scott's test)

#: Phi_12(p) = p^4 - p^2 + 1, the order of the cyclotomic subgroup, = r * H_T.
PHI12 = P**4 - P**2 + 1
H_T = PHI12 // R
#: A small prime factor of the cyclotomic cofactor H_T (so elements of order 4513 exist there).
SMALL_Q = 4513


def _mcl_gt(data: bytes):
    from native._mcl_cffi import ffi, lib

    x = ffi.new("mclBnGT *")
    assert lib.mclBnGT_deserialize(x, data, 576) == 576  # no subgroup check in deserialize
    return x


def _verdicts(f) -> tuple[bool, bool]:
    """(fast Scott test, slow x^r check) on a py-ecc FQ12 element."""
    from native._mcl_cffi import lib

    x = _mcl_gt(load("pure").gt_encode(f))
    return bool(lib.emr_gt_is_valid(x)), bool(lib.mclBnGT_isValid(x))


def _is_cyclotomic(f) -> bool:
    from native._mcl_cffi import lib

    return bool(lib.emr_gt_is_cyclotomic(_mcl_gt(load("pure").gt_encode(f))))


def _fq12(coeffs):
    from py_ecc.optimized_bls12_381 import FQ12

    return FQ12(list(coeffs))


def _cyclotomic_projection(f):
    """f^((p^6 - 1)(p^2 + 1)): lands in the cyclotomic subgroup G_Phi12 for any f != 0."""
    from py_ecc.optimized_bls12_381.optimized_pairing import exp_by_p

    g = _conj(f) / f  # f^(p^6 - 1): unitary
    return exp_by_p(exp_by_p(g)) * g


fp12_coeffs = st.lists(st.integers(min_value=0, max_value=P - 1), min_size=12, max_size=12).filter(any)


def test_gt_membership_constants():
    """The facts the test relies on (gt_membership.cpp's comment), checked numerically."""
    u = -0xD201000000010000
    assert R == u**4 - u**2 + 1
    assert P == (u - 1) ** 2 * R // 3 + u and (P - u) % R == 0
    assert PHI12 % R == 0 and (P**6 + 1) % PHI12 == 0
    assert H_T % SMALL_Q == 0 and H_T % R != 0
    assert PHI12 % (P - u) == R % (P - u)  # so gcd(p - u, Phi12(p)) = gcd(p - u, r) = r


@settings(max_examples=25)
@given(scalars)
def test_gt_membership_accepts_gt_elements(k):
    from native._mcl_cffi import lib

    for h in (NATIVE.gt_generator_pow(k), NATIVE.gt_inv(NATIVE.gt_generator_pow(k))):
        x = _mcl_gt(NATIVE.gt_encode(h))
        assert lib.emr_gt_is_valid(x) == lib.mclBnGT_isValid(x) == 1
        assert lib.emr_gt_is_cyclotomic(x) == 1
        assert NATIVE.gt_eq(NATIVE.gt_decode(NATIVE.gt_encode(h)), h)


@settings(max_examples=5)
@given(scalars, scalars)
def test_gt_membership_accepts_pairings(a, b):
    e = pairing(api(NATIVE).G1.generator() * (a or 1), api(NATIVE).G2.generator() * (b or 1))
    x = _mcl_gt(e.to_bytes())
    from native._mcl_cffi import lib

    assert lib.emr_gt_is_valid(x) == lib.mclBnGT_isValid(x) == 1


@settings(max_examples=40)
@given(fp12_coeffs)
def test_gt_membership_rejects_random_fp12(coeffs):
    f = _fq12(coeffs)
    fast, slow = _verdicts(f)
    assert fast == slow
    if f != f.one():
        assert not fast and not _is_cyclotomic(f)
    # unitary (x^(p^6+1) = 1, so conjugation inverts it), generically not cyclotomic;
    # 1 when f lies in Fp6, -1 for odd powers of w
    g = _conj(f) / f
    fast, slow = _verdicts(g)
    assert fast == slow == (g == g.one())


@settings(max_examples=6, deadline=None)
@given(fp12_coeffs)
def test_gt_membership_on_the_cyclotomic_subgroup(coeffs):
    """Elements that pass the cyclotomic step: only those of order r may pass."""
    g = _cyclotomic_projection(_fq12(coeffs))
    assert _is_cyclotomic(g)
    assert _verdicts(g) == (False, False)  # generic: order has cofactor part
    in_gt = g**H_T  # cofactor cleared: order r
    assert _verdicts(in_gt) == (True, True)
    pure = load("pure")
    assert pure.gt_eq(pure.gt_decode(pure.gt_encode(in_gt)), in_gt)  # independent x^r check agrees
    outside = g**R  # order divides H_T: no GT component at all
    assert outside != outside.one() and _verdicts(outside) == (False, False)
    small = g ** (PHI12 // SMALL_Q)  # order SMALL_Q (or 1)
    if small != small.one():
        assert small**SMALL_Q == small.one()
        assert _verdicts(small) == (False, False)
        assert _verdicts(in_gt * small) == (False, False)  # GT element times a small-order one
        with pytest.raises(DecodeError, match="subgroup"):
            NATIVE.gt_decode(pure.gt_encode(in_gt * small))
    assert _verdicts(in_gt * outside) == (False, False)


def test_gt_membership_edge_elements():
    from py_ecc.optimized_bls12_381 import FQ12

    from native._mcl_cffi import lib

    zero = _mcl_gt(bytes(576))
    assert lib.emr_gt_is_valid(zero) == lib.mclBnGT_isValid(zero) == 0
    assert lib.emr_gt_is_cyclotomic(zero) == 0  # 0 passes x^(p^4) x == x^(p^2) as an equation
    assert _verdicts(FQ12.one()) == (True, True)
    for c in (2, P - 1, 3):  # base-field elements: not cyclotomic (x^Phi12 = x)
        f = _fq12([c] + [0] * 11)
        assert _verdicts(f) == (False, False) and not _is_cyclotomic(f)
    # a primitive cube root of unity in Fp (p = 1 mod 3): order 3, not in G_Phi12
    omega = pow(2, (P - 1) // 3, P)
    assert omega != 1 and pow(omega, 3, P) == 1
    assert _verdicts(_fq12([omega] + [0] * 11)) == (False, False)


@settings(max_examples=10)
@given(fp12_coeffs)
def test_frobenius_helper_matches_py_ecc(coeffs):
    """emr_gt_frobenius (mcl's Frobenius, which the test relies on) is x -> x^p."""
    from py_ecc.optimized_bls12_381.optimized_pairing import exp_by_p

    from native._mcl_cffi import ffi, lib

    pure = load("pure")
    f = _fq12(coeffs)
    y = ffi.new("mclBnGT *")
    lib.emr_gt_frobenius(y, _mcl_gt(pure.gt_encode(f)))
    assert bytes(ffi.buffer(y)) == bytes(ffi.buffer(_mcl_gt(pure.gt_encode(exp_by_p(f)))))


def test_gt_decode_uses_the_fast_test():
    """gt_decode rejects exactly what Scott's test rejects (it no longer calls x^r)."""
    src = (native_build.NATIVE_DIR / "backend.py").read_text()
    assert "emr_gt_is_valid(out)" in src and "mclBnGT_isValid(out)" not in src


# ------------------------------------------------------------------ fixed-base G1 table

#: k = 14 * 16^63 - r makes the last window add acc = d 16^63 g1 to itself (mcl doubles).
LAST_WINDOW_DOUBLING = 14 * 16**63 - R


def test_g1_table_is_built():
    from native._mcl_cffi import lib

    assert lib.emr_g1_table_ready() == 1
    assert lib.emr_g1_table_bytes() == 64 * 16 * 144
    assert 0 < LAST_WINDOW_DOUBLING < R and LAST_WINDOW_DOUBLING % 2 == 1


@settings(max_examples=60)
@given(edge_scalars | st.sampled_from([LAST_WINDOW_DOUBLING, R - LAST_WINDOW_DOUBLING, 3, 16**63, R - 16**63]))
def test_g1_generator_mul_equals_mul_ct_and_pure(k):
    pure = load("pure")
    got = NATIVE.g1_generator_mul(k)
    assert NATIVE.g1_eq(got, NATIVE.g1_mul(NATIVE.g1_generator(), k, True))
    assert NATIVE.g1_encode(got) == pure.g1_encode(pure.g1_generator_mul(k))
    assert NATIVE.g1_is_identity(got) == (k == 0)


def test_g1_generator_mul_refuses_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        NATIVE.g1_generator_mul(R)


# ------------------------------------------------------------------ build


def test_build_is_up_to_date_and_a_second_run_is_a_cache_hit(capsys):
    assert native_build.extension_up_to_date()
    assert native_build.up_to_date()
    ext = native_build.extension_path()
    mtime = os.stat(ext).st_mtime_ns
    assert native_build.build() == ext  # nothing to download or compile
    assert os.stat(ext).st_mtime_ns == mtime
    assert "cache hit" in capsys.readouterr().err


def test_source_hash_covers_the_c_sources(tmp_path, monkeypatch):
    """Editing a helper source changes the hash, so the stamp no longer matches."""
    before = native_build.source_hash()
    for name in native_build.CDEF_FILES + native_build.C_SOURCES + native_build.CXX_SOURCES:
        (tmp_path / name).write_bytes((native_build.NATIVE_DIR / name).read_bytes())
    monkeypatch.setattr(native_build, "NATIVE_DIR", tmp_path)
    assert native_build.source_hash() == before
    for name in ("helpers.c", "gt_membership.cpp"):
        original = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(original + b"\n/* edit */\n")
        assert native_build.source_hash() != before
        (tmp_path / name).write_bytes(original)
    assert native_build.source_hash() == before


def test_cxx_compile_failure_is_one_line(tmp_path, monkeypatch):
    """A broken C++ helper surfaces as a BuildError naming the file and the first error."""
    (tmp_path / "gt_membership.cpp").write_text("int broken( {\n")
    monkeypatch.setattr(native_build, "NATIVE_DIR", tmp_path)
    with pytest.raises(native_build.BuildError, match=r"^compiling gt_membership\.cpp failed: .*error"):
        native_build.compile_cxx(native_build.build_mcl(), tmp_path)


def test_build_failure_is_one_warning_line_unless_strict(monkeypatch, capsys):
    def fail(*_a, **_k):
        raise native_build.BuildError("no network (test)")

    monkeypatch.setattr(native_build, "build", fail)
    assert native_build.main([]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "emrshare: native backend not built: no network (test); the pure-Python backend will be used"
    ]
    assert native_build.main(["--strict"]) != 0


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    d = native_build.cache_dir()
    assert d.parent == tmp_path / "emrshare"
    assert d.name == f"mcl-v3.04-{native_build.PYMCL_SHA256[:12]}"
    assert not native_build.mcl_cached(d)


def test_module_exports():
    assert native_backend.NativeBackend.name == "native"
    assert native_backend.G1_GENERATOR == ZCASH_G1
