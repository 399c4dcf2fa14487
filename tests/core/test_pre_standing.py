"""Standing delegation (core.pre.make_standing_parts / derive_key_share) on every backend."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import pre
from core.curve import R, scalar_inverse
from core.errors import DecodeError, DecryptionError

from tests.core.conftest import make_proxies

pytestmark = pytest.mark.crypto


def _parts(owner, t, n, context=b"std-1"):
    proxies, secrets_ = make_proxies(n)
    sealed = pre.make_standing_parts(owner, proxies, t, context)
    return [pre.open_standing_part(s, secrets_[s.index], expected_context=context, expected_index=s.index)
            for s in sealed], sealed, secrets_


def _doctor(backend):
    return pre.Scheme(backend).derive_keypair(pre.new_master_secret(), pre.RECEIVE_LABEL)


def _interpolate_at(points: list[tuple[int, int]], x: int) -> int:
    total = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * (x - xj) % R
                den = den * (xi - xj) % R
        total = (total + yi * num * pow(den, -1, R)) % R
    return total


@pytest.mark.parametrize("t, n", [(1, 1), (2, 4), (3, 5)])
def test_derived_shares_open_records_stored_before_and_after(backend, t, n):
    owner = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), "labs")
    before = [pre.encapsulate(owner.public) for _ in range(2)]
    parts, _, _ = _parts(owner, t, n)
    after = [pre.encapsulate_owner(owner) for _ in range(2)]
    doctor = _doctor(backend)  # registered after the delegation: the peers derive its shares alone
    shares = [pre.derive_key_share(p, doctor.public) for p in parts]
    for capsule, k in before + after:
        rs = [pre.reencrypt(capsule, s) for s in shares]
        assert pre.combine(rs[:t], doctor.secret) == k
        assert pre.combine(rs[n - t:], doctor.secret) == k  # any t of them


def test_derived_share_for_b_is_useless_to_c(backend):
    owner = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), "labs")
    parts, _, _ = _parts(owner, 2, 3)
    b, c = _doctor(backend), _doctor(backend)
    capsule, k = pre.encapsulate(owner.public)
    for_b = [pre.reencrypt(capsule, pre.derive_key_share(p, b.public)) for p in parts]
    assert pre.combine(for_b[:2], b.secret) == k
    assert pre.combine(for_b[:2], c.secret) != k
    # and C's own derived shares are not B's
    for_c = [pre.reencrypt(capsule, pre.derive_key_share(p, c.public)) for p in parts]
    assert all(x.value != y.value for x, y in zip(for_b, for_c))
    assert pre.combine(for_c[:2], c.secret) == k


def test_derived_share_is_a_plain_afgh_rekey_for_one_proxy(backend):
    owner = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), "labs")
    (part,), _, _ = _parts(owner, 1, 1)
    doctor, other = _doctor(backend), _doctor(backend)
    share = pre.derive_key_share(part, doctor.public)
    assert pre.is_valid_single_rekey(owner.public, doctor.public, share.rk)
    assert not pre.is_valid_single_rekey(owner.public, other.public, share.rk)


def test_fewer_than_t_parts_do_not_open(backend):
    owner = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), "labs")
    parts, _, _ = _parts(owner, 3, 4)
    doctor = _doctor(backend)
    capsule, k = pre.encapsulate(owner.public)
    rs = [pre.reencrypt(capsule, pre.derive_key_share(p, doctor.public)) for p in parts]
    with pytest.raises(DecryptionError, match="need 3"):
        pre.recover_key(rs[:2], 3, doctor.secret, lambda key: key == k)
    assert pre.combine(rs[:2], doctor.secret) != k


@settings(max_examples=25, deadline=None)
@given(t=st.integers(2, 5), candidate=st.integers(1, R - 1), data=st.data())
def test_any_t_minus_1_parts_fit_every_candidate_secret(t, candidate, data):
    """t-1 parts are consistent with every value of 1/a_L: for any candidate there
    is exactly one polynomial of degree t-1 through it and the parts, so the parts
    alone say nothing about a_L (Shamir's perfect secrecy; the polynomial's
    other coefficients are uniform)."""
    n = t + 1
    owner = pre.KeyPair.derive(pre.new_master_secret(), "labs")
    parts, _, _ = _parts(owner, t, n)
    chosen = data.draw(st.permutations(parts))[: t - 1]
    points = [(p.index, p.scalar) for p in chosen]
    through = points + [(0, candidate)]
    # the unique degree-(t-1) polynomial through the candidate and the t-1 parts
    assert _interpolate_at(through, 0) == candidate
    assert all(_interpolate_at(through, x) == y for x, y in points)
    # while t parts pin 1/a_L (the trust cost docs/security.md states)
    assert _interpolate_at([(p.index, p.scalar) for p in parts[:t]], 0) == scalar_inverse(owner.secret)


def test_t_colluding_proxies_reconstruct_the_label_secret(backend):
    """The trust cost, as a test: t parts interpolate 1/a_L, hence a_L (so t peers
    decrypt the label alone); they never give the master secret nor another label's key."""
    ms = pre.new_master_secret()
    owner = pre.Scheme(backend).derive_keypair(ms, "labs")
    parts, _, _ = _parts(owner, 2, 3)
    inv = _interpolate_at([(p.index, p.scalar) for p in parts[:2]], 0)
    assert pow(inv, -1, R) == owner.secret
    assert pre.Scheme(backend).derive_keypair(ms, "cardiology").secret != owner.secret


def test_faulty_derived_share_is_named(backend):
    owner = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), "labs")
    parts, _, _ = _parts(owner, 2, 4)
    doctor = _doctor(backend)
    capsule, k = pre.encapsulate(owner.public)
    shares = [pre.derive_key_share(p, doctor.public) for p in parts]
    rs = [pre.reencrypt(capsule, s) for s in shares]
    # proxy 2 derives with a wrong scalar
    wrong = pre.StandingPart(2, 2, b"std-1", (parts[1].scalar + 1) % R)
    rs[1] = pre.reencrypt(capsule, pre.derive_key_share(wrong, doctor.public))
    got, suspects = pre.recover_key(rs, 2, doctor.secret, lambda key: key == k)
    assert got == k and suspects == (2,)


def test_sealed_part_checks(backend):
    owner = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), "L")
    proxies, secrets_ = make_proxies(2)
    sealed = pre.make_standing_parts(owner, proxies, 2, b"std-7")
    with pytest.raises(DecryptionError):
        pre.open_standing_part(sealed[0], secrets_[2], expected_context=b"std-7", expected_index=1)
    with pytest.raises(DecodeError, match="another delegation"):
        pre.open_standing_part(sealed[0], secrets_[1], expected_context=b"std-8", expected_index=1)
    with pytest.raises(DecodeError, match="another proxy"):
        pre.open_standing_part(sealed[0], secrets_[1], expected_context=b"std-7", expected_index=2)
    part = pre.open_standing_part(sealed[0], secrets_[1], expected_context=b"std-7", expected_index=1)
    assert part.scalar.to_bytes(32, "big") not in sealed[0].sealed
    assert str(part.scalar) not in repr(part)
    # a re-encryption key share is not a standing part, and the reverse
    doctor = _doctor(backend)
    rk_sealed = pre.make_key_shares(owner, doctor.public, proxies, 2, b"std-7")
    with pytest.raises(DecodeError, match="malformed"):
        pre.open_standing_part(rk_sealed[0], secrets_[1], expected_context=b"std-7", expected_index=1)
    with pytest.raises(DecodeError):
        pre.open_key_share(sealed[0], secrets_[1], expected_context=b"std-7", expected_index=1)


def test_derivation_is_byte_identical_across_backends(backend, other_backend):
    """A part derived on one backend gives the same rk and s_i bytes as on the other."""
    ms, doctor_ms = pre.new_master_secret(), pre.new_master_secret()
    owner = pre.Scheme(backend).derive_keypair(ms, "labs")
    parts, _, _ = _parts(owner, 2, 3)
    capsule, _ = pre.encapsulate(owner.public)
    out = []
    for b in (backend, other_backend):
        doctor = pre.Scheme(b).derive_keypair(doctor_ms, pre.RECEIVE_LABEL)
        u = pre.Scheme(b).curve.G1.from_bytes(capsule.to_bytes())
        shares = [pre.derive_key_share(p, doctor.public) for p in parts]
        out.append([(s.rk.to_bytes(), pre.reencrypt(u, s).to_bytes()) for s in shares])
    assert out[0] == out[1]


def test_epoch_keys_are_independent_and_old_shares_do_not_open_new_epochs(backend):
    """Rotation: a_{L,e} for e > 0 is a fresh key; a revoked doctor's shares (or a
    standing delegation) of epoch 0 give nothing on records sealed under epoch 1."""
    ms = pre.new_master_secret()
    e0 = pre.Scheme(backend).derive_keypair(ms, "labs")
    e1 = pre.Scheme(backend).derive_keypair(ms, "labs", 1)
    assert e0.epoch == 0 and e1.epoch == 1 and e0.secret == pre.label_secret(ms, "labs", 0)
    assert len({e0.secret, e1.secret, pre.label_secret(ms, "labs", 2), pre.label_secret(ms, "lab", 1)}) == 4
    doctor = _doctor(backend)
    proxies, secrets_ = make_proxies(3)
    old = [pre.Scheme(backend).open_key_share(s, secrets_[s.index], expected_context=b"g", expected_index=s.index)
           for s in pre.make_key_shares(e0, doctor.public, proxies, 2, b"g")]
    old_parts, _, _ = _parts(e0, 2, 3)
    capsule, k = pre.encapsulate_owner(e1)
    assert pre.combine([pre.reencrypt(capsule, s) for s in old[:2]], doctor.secret) != k
    derived = [pre.derive_key_share(p, doctor.public) for p in old_parts]
    assert pre.combine([pre.reencrypt(capsule, s) for s in derived[:2]], doctor.secret) != k
    with pytest.raises(ValueError):
        pre.label_secret(ms, "labs", -1)
    with pytest.raises(ValueError):
        pre.label_secret(ms, "labs", pre.MAX_EPOCH + 1)
