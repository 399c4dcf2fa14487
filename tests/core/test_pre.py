"""Threshold AFGH proxy re-encryption (core.pre) on every backend."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import pre
from core._backend import active_backend
from core.curve import R, api, random_scalar
from core.errors import DecodeError, DecryptionError, FaultyShareError, SignatureError

from tests.core.conftest import make_proxies

pytestmark = pytest.mark.crypto


def _open_all(sealed, secrets_, context, backend):
    return [
        pre.Scheme(backend).open_key_share(s, secrets_[s.index], expected_context=context, expected_index=s.index)
        for s in sealed
    ]


def test_label_keys_are_deterministic_and_scoped(backend):
    ms = pre.new_master_secret()
    a = pre.Scheme(backend).derive_keypair(ms, "cardiology")
    assert pre.Scheme(backend).derive_keypair(ms, "cardiology").public == a.public
    assert pre.Scheme(backend).derive_keypair(ms, "labs").public != a.public
    assert pre.Scheme(backend).derive_keypair(pre.new_master_secret(), "cardiology").public != a.public
    assert "secret" not in repr(a) or str(a.secret) not in repr(a)


def test_proof_of_possession(backend):
    kp = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), "labs")
    proof = kp.prove("alice")
    pre.verify_public_key(kp.public, "alice", "labs", proof)
    with pytest.raises(SignatureError):
        pre.verify_public_key(kp.public, "mallory", "labs", proof)  # bound to the owner id
    with pytest.raises(SignatureError):
        pre.verify_public_key(kp.public, "alice", "other", proof)  # and to the label
    other = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), "labs")
    with pytest.raises(SignatureError):
        pre.verify_public_key(other.public, "alice", "labs", proof)
    # inconsistent (P1, P2) pair: pairing check fails before the proof is looked at
    mixed = pre.PublicKey(kp.public.p1, other.public.p2)
    with pytest.raises(DecodeError, match="inconsistent"):
        pre.verify_public_key(mixed, "alice", "labs", proof)
    assert pre.Proof.from_bytes(proof.to_bytes()) == proof


def test_public_key_and_proof_decoding(backend):
    kp = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), "x")
    data = kp.public.to_bytes()
    assert pre.Scheme(backend).public_key_from_bytes(data) == kp.public
    with pytest.raises(DecodeError):
        pre.Scheme(backend).public_key_from_bytes(data[:-1])
    with pytest.raises(DecodeError, match="identity"):
        pre.Scheme(backend).public_key_from_bytes(bytes([0xC0]) + bytes(47) + data[48:])
    with pytest.raises(DecodeError):
        pre.Proof.from_bytes(bytes(64))  # zero challenge
    with pytest.raises(DecodeError):
        pre.Proof.from_bytes(b"\xff" * 64)  # not reduced


def test_owner_decapsulation(backend):
    kp = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), "labs")
    capsule, k = pre.encapsulate(kp.public)
    assert pre.decapsulate_owner(kp, capsule) == k


def test_owner_encapsulation_matches_encapsulate(backend, monkeypatch):
    """encapsulate_owner gives the very bytes encapsulate gives for the same k."""
    kp = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), "labs")
    capsule, k = pre.encapsulate_owner(kp)
    assert not capsule.is_identity()
    assert pre.decapsulate_owner(kp, capsule) == k
    fixed = random_scalar()
    monkeypatch.setattr(pre, "random_scalar", lambda: fixed)
    u1, k1 = pre.encapsulate(kp.public)
    u2, k2 = pre.encapsulate_owner(kp)
    assert u1.to_bytes() == u2.to_bytes() and k1.to_bytes() == k2.to_bytes()
    assert u2 == kp.public.p1 * fixed and k2 == api(backend).GT.generator_pow(fixed)


def test_owner_encapsulation_is_byte_identical_across_backends(backend, other_backend, monkeypatch):
    ms = pre.new_master_secret()
    fixed = random_scalar()
    monkeypatch.setattr(pre, "random_scalar", lambda: fixed)
    out = []
    for b in (backend, other_backend):
        capsule, k = pre.encapsulate_owner(pre.Scheme(b).derive_keypair(ms, "labs"))
        out.append((capsule.to_bytes(), k.to_bytes()))
    assert out[0] == out[1]


def test_single_proxy_is_plain_afgh(backend):
    owner = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), "labs")
    doctor = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), pre.RECEIVE_LABEL)
    proxies, secrets_ = make_proxies(1)
    sealed = pre.make_key_shares(owner, doctor.public, proxies, 1, b"g")
    (share,) = _open_all(sealed, secrets_, b"g", backend)
    assert pre.is_valid_single_rekey(owner.public, doctor.public, share.rk)
    other = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), pre.RECEIVE_LABEL)
    assert not pre.is_valid_single_rekey(owner.public, other.public, share.rk)
    capsule, k = pre.encapsulate(owner.public)
    s = pre.reencrypt(capsule, share)
    assert pre.combine([s], doctor.secret) == k


def _flow(backend, t, n, label="labs"):
    owner = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), label)
    doctor = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), pre.RECEIVE_LABEL)
    proxies, secrets_ = make_proxies(n)
    shares = _open_all(pre.make_key_shares(owner, doctor.public, proxies, t, b"grant"), secrets_, b"grant", backend)
    capsule, k = pre.encapsulate(owner.public)
    return owner, doctor, shares, capsule, k


@pytest.mark.parametrize("t, n", [(1, 1), (2, 3), (3, 5)])
def test_threshold_combination(backend, t, n):
    owner, doctor, shares, capsule, k = _flow(backend, t, n)
    rs = [pre.reencrypt(capsule, s.prepare()) for s in shares]
    # every t-subset recovers K; t-1 shares do not
    assert pre.combine(rs[:t], doctor.secret) == k
    assert pre.combine(rs[-t:], doctor.secret) == k
    if t > 1:
        assert pre.combine(rs[: t - 1], doctor.secret) != k
    # another doctor's secret does not
    assert pre.combine(rs[:t], random_scalar()) != k


@pytest.mark.slow
def test_seven_of_ten(backend):
    owner, doctor, shares, capsule, k = _flow(backend, 7, 10)
    rs = [pre.reencrypt(capsule, s) for s in shares]
    assert pre.combine(rs[3:], doctor.secret) == k
    assert pre.combine(rs[:6], doctor.secret) != k


def test_recover_key_names_faulty_proxy(backend):
    owner, doctor, shares, capsule, k = _flow(backend, 3, 5)
    rs = [pre.reencrypt(capsule, s) for s in shares]
    other_capsule, _ = pre.encapsulate(owner.public)
    bad = pre.reencrypt(other_capsule, shares[1])  # proxy 2 re-encrypts the wrong capsule
    mixed = [rs[0], bad, rs[2], rs[3], rs[4]]
    got, suspects = pre.recover_key(mixed, 3, doctor.secret, lambda key: key == k)
    assert got == k and suspects == (2,)
    # with only 3 shares and one bad, nothing opens; the suspects are that subset
    with pytest.raises(FaultyShareError) as info:
        pre.recover_key(mixed[:3], 3, doctor.secret, lambda key: key == k)
    assert 2 in info.value.suspects
    # with 4 shares, every failing subset contains proxy 2 -> named alone
    got, suspects = pre.recover_key(mixed[:4], 3, doctor.secret, lambda key: key == k)
    assert got == k and suspects == (2,)
    with pytest.raises(DecryptionError, match="need 3"):
        pre.recover_key(mixed[:2], 3, doctor.secret, lambda key: key == k)


def test_recover_key_intersection_when_nothing_opens(backend):
    owner, doctor, shares, capsule, k = _flow(backend, 2, 3)
    rs = [pre.reencrypt(capsule, s) for s in shares]
    other_capsule, _ = pre.encapsulate(owner.public)
    bad1 = pre.reencrypt(other_capsule, shares[0])
    bad2 = pre.reencrypt(other_capsule, shares[1])
    with pytest.raises(FaultyShareError):
        pre.recover_key([bad1, bad2, rs[2]], 2, doctor.secret, lambda key: key == k)


def test_label_scoping(backend):
    """A grant for label L never re-encrypts a record under label M."""
    ms = pre.new_master_secret()
    owner_l = pre.Scheme(backend).derive_keypair(ms, "L")
    owner_m = pre.Scheme(backend).derive_keypair(ms, "M")
    doctor = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), pre.RECEIVE_LABEL)
    proxies, secrets_ = make_proxies(2)
    shares = _open_all(pre.make_key_shares(owner_l, doctor.public, proxies, 2, b"g"), secrets_, b"g", backend)
    capsule_m, k_m = pre.encapsulate(owner_m.public)
    rs = [pre.reencrypt(capsule_m, s) for s in shares]
    assert pre.combine(rs, doctor.secret) != k_m


def test_sealed_share_checks(backend):
    owner = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), "L")
    doctor = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), pre.RECEIVE_LABEL)
    proxies, secrets_ = make_proxies(2)
    sealed = pre.make_key_shares(owner, doctor.public, proxies, 2, b"grant-7")
    with pytest.raises(DecryptionError):
        pre.open_key_share(sealed[0], secrets_[2], expected_context=b"grant-7", expected_index=1)
    with pytest.raises(DecodeError, match="another grant"):
        pre.Scheme(backend).open_key_share(sealed[0], secrets_[1], expected_context=b"grant-8", expected_index=1)
    with pytest.raises(DecodeError, match="another proxy"):
        pre.Scheme(backend).open_key_share(sealed[0], secrets_[1], expected_context=b"grant-7", expected_index=2)
    # the share itself never appears in the sealed bytes
    share = pre.Scheme(backend).open_key_share(sealed[0], secrets_[1], expected_context=b"grant-7", expected_index=1)
    assert share.rk.to_bytes() not in sealed[0].sealed


def test_parameter_validation(backend):
    owner = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), "L")
    proxies, _ = make_proxies(3)
    with pytest.raises(ValueError, match="threshold"):
        pre.make_key_shares(owner, owner.public, proxies, 4, b"g")
    with pytest.raises(ValueError, match="threshold"):
        pre.make_key_shares(owner, owner.public, proxies, 0, b"g")
    with pytest.raises(ValueError, match="distinct"):
        pre.make_key_shares(owner, owner.public, [proxies[0], proxies[0]], 1, b"g")
    with pytest.raises(ValueError):
        pre.Proxy(0, bytes(32))
    with pytest.raises(ValueError):
        pre.label_secret(b"short", "L")
    with pytest.raises(DecodeError, match="identity"):
        pre.reencrypt(api(backend).G1.identity(), pre.KeyShare(1, 1, b"", api(backend).G2.generator()))


def test_reencrypted_share_decoding(backend):
    value = api(backend).GT.generator() ** 5
    share = pre.ReencryptedShare(3, value)
    assert pre.Scheme(backend).reencrypted_share_from_bytes(share.to_bytes()) == share
    with pytest.raises(DecodeError):
        pre.Scheme(backend).reencrypted_share_from_bytes(share.to_bytes()[:-1])
    with pytest.raises(DecodeError, match="index 0"):
        pre.Scheme(backend).reencrypted_share_from_bytes(bytes(4) + value.to_compressed())
    with pytest.raises(DecodeError, match="identity"):
        pre.Scheme(backend).reencrypted_share_from_bytes(b"\x00\x00\x00\x01" + api(backend).GT.one().to_compressed())
    bad = bytearray(share.to_bytes())
    bad[-1] ^= 1
    with pytest.raises(DecodeError, match="subgroup"):
        pre.Scheme(backend).reencrypted_share_from_bytes(bytes(bad))


@settings(max_examples=8)
@given(data=st.data())
def test_threshold_property_native(data):
    """Random t <= n <= 10 and random subsets: any t shares recover K, t-1 never do."""
    backend = active_backend()
    n = data.draw(st.integers(1, 10), label="n")
    t = data.draw(st.integers(1, n), label="t")
    owner, doctor, shares, capsule, k = _flow(backend, t, n)
    rs = [pre.reencrypt(capsule, s) for s in shares]
    subset = data.draw(st.lists(st.sampled_from(rs), min_size=t, max_size=t, unique_by=lambda s: s.index))
    assert pre.combine(subset, doctor.secret) == k
    if t > 1:
        assert pre.combine(subset[:-1], doctor.secret) != k


def test_lagrange_coefficients():
    xs = [1, 2, 5, 9]
    lams = pre.lagrange_at_zero(xs)
    # sum l_i f(x_i) = f(0) for a random cubic
    coeffs = [random_scalar() for _ in range(4)]
    f = lambda x: sum(c * pow(x, i, R) for i, c in enumerate(coeffs)) % R
    assert sum(l * f(x) for l, x in zip(lams, xs)) % R == coeffs[0]
    with pytest.raises(ValueError):
        pre.lagrange_at_zero([1, 1])


def test_cross_backend_shares(backend, other_backend):
    """Shares computed by a peer on one backend combine on a doctor on the other."""
    owner, doctor, shares, capsule, k = _flow(backend, 2, 3)
    rs = [pre.reencrypt(capsule, s) for s in shares[:2]]
    moved = [pre.Scheme(other_backend).reencrypted_share_from_bytes(s.to_bytes()) for s in rs]
    there = pre.Scheme(other_backend)
    doc_other = pre.KeyPair(doctor.secret, there.public_key_from_bytes(doctor.public.to_bytes()), doctor.label)
    assert pre.combine(moved, doc_other.secret).to_bytes() == k.to_bytes()


def _sealed_to(proxy: pre.Proxy, plain: bytes) -> pre.SealedKeyShare:
    from nacl.public import PublicKey, SealedBox

    return pre.SealedKeyShare(proxy.index, SealedBox(PublicKey(proxy.box_public_key)).encrypt(plain))


def test_a_key_share_travels_in_the_compact_plaintext_and_the_older_one_still_opens(backend):
    import msgpack

    owner = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), "L")
    doctor = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), pre.RECEIVE_LABEL)
    proxies, secrets_ = make_proxies(2)
    context = b"gQgRTFmsvfQnTdzH9"
    sealed = pre.make_key_shares(owner, doctor.public, proxies, 2, context)
    share = pre.Scheme(backend).open_key_share(sealed[0], secrets_[1], expected_context=context, expected_index=1)
    # version 2: [2, context, index, threshold, rk]; sealed box overhead 48 bytes
    assert msgpack.unpackb(share.to_bytes()) == [2, context, 1, 2, share.rk.to_bytes()]
    assert len(sealed[0].sealed) == 48 + len(share.to_bytes()) == 48 + 1 + 1 + 2 + len(context) + 1 + 1 + 2 + 96
    # version 1 (the tag string first), as an older patient sealed it: opened to the same share
    v1 = msgpack.packb(["emrshare/v1/rk-share", context, 1, 2, share.rk.to_bytes()])
    assert pre.Scheme(backend).open_key_share(_sealed_to(proxies[0], v1), secrets_[1], expected_context=context,
                                              expected_index=1) == share
    # any other tag, a standing part's included, is not a key share
    for tag in ("emrshare/v1/standing-part", 3, True, 2.0, b"\x02", "emrshare/v2/rk-share"):
        bad = msgpack.packb([tag, context, 1, 2, share.rk.to_bytes()])
        with pytest.raises(DecodeError, match="malformed"):
            pre.Scheme(backend).open_key_share(_sealed_to(proxies[0], bad), secrets_[1], expected_context=context,
                                               expected_index=1)
    part = pre.make_standing_parts(owner, proxies, 2, context)[0]
    with pytest.raises(DecodeError, match="malformed"):
        pre.Scheme(backend).open_key_share(part, secrets_[1], expected_context=context, expected_index=1)
    with pytest.raises(DecodeError, match="malformed"):  # and a key share is not a standing part
        pre.open_standing_part(sealed[0], secrets_[1], expected_context=context, expected_index=1)


def test_a_bound_key_share_carries_only_rk_and_opens_only_with_its_committed_digest(backend):
    """Version 4 (``bound=True``, what a patient seals for a grant): ``[4, masked rk]``, 21 bytes less
    than version 2 for a grant id of 17 characters; bound to its grant and proxy by the sha256
    of its sealed bytes, which the grant transaction commits and the proxy checks before it
    opens one. It re-encrypts as a version-2 share does."""
    import hashlib

    import msgpack

    owner = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), "L")
    doctor = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), pre.RECEIVE_LABEL)
    proxies, secrets_ = make_proxies(3)
    context = b"gQgRTFmsvfQnTdzH9"
    bound = pre.make_key_shares(owner, doctor.public, proxies, 2, context, bound=True)
    old = pre.make_key_shares(owner, doctor.public, proxies, 2, context)
    assert all(len(b.sealed) == len(o.sealed) - 21 for b, o in zip(bound, old))
    digests = {s.index: hashlib.sha256(s.sealed).digest() for s in bound}
    scheme = pre.Scheme(backend)
    shares = [scheme.open_key_share(s, secrets_[s.index], expected_context=context, expected_index=s.index,
                                    expected_digest=digests[s.index]) for s in bound]
    # version 4: [4, rk XOR mask(context, index)] (tests/core/test_pre_share_rebinding.py: why masked)
    assert msgpack.unpackb(shares[0].to_bytes(bound=True)) == [4, pre._masked(shares[0].rk.to_bytes(), context, 1)]
    capsule, k = pre.encapsulate(owner.public)
    rs = [pre.reencrypt(capsule, s.prepare()) for s in shares]
    assert pre.combine(rs[:2], doctor.secret) == k and pre.combine(rs[1:], doctor.secret) == k
    first = bound[0]
    # no digest: refused (nothing inside says which grant it is for)
    with pytest.raises(DecodeError, match="committed digest"):
        scheme.open_key_share(first, secrets_[1], expected_context=context, expected_index=1)
    # another share's digest (another grant's, another proxy's): refused before it is opened
    for wrong in (digests[2], hashlib.sha256(old[0].sealed).digest(), bytes(32)):
        with pytest.raises(DecodeError, match="not the one committed"):
            scheme.open_key_share(first, secrets_[1], expected_context=context, expected_index=1,
                                  expected_digest=wrong)
    # moved to another proxy's index: refused; sealed to another proxy: does not open
    with pytest.raises(DecodeError, match="another proxy"):
        scheme.open_key_share(pre.SealedKeyShare(2, first.sealed), secrets_[1], expected_context=context,
                              expected_index=1, expected_digest=digests[1])
    with pytest.raises(DecryptionError):
        scheme.open_key_share(first, secrets_[2], expected_context=context, expected_index=1,
                              expected_digest=digests[1])
    # a version-2 share still opens, with or without its digest (then checked)
    assert scheme.open_key_share(old[0], secrets_[1], expected_context=context, expected_index=1,
                                 expected_digest=hashlib.sha256(old[0].sealed).digest()).rk == \
        scheme.open_key_share(old[0], secrets_[1], expected_context=context, expected_index=1).rk
    # malformed version-3 bodies: DecodeError, never anything else
    for body in (msgpack.packb([3, "text"]), msgpack.packb([3]), b"\x92\x03\xc1", msgpack.packb([3, 96, 1])):
        s = _sealed_to(proxies[0], body)
        with pytest.raises(DecodeError):
            scheme.open_key_share(s, secrets_[1], expected_context=context, expected_index=1,
                                  expected_digest=hashlib.sha256(s.sealed).digest())
    # a bound share is not a standing part
    with pytest.raises(DecodeError, match="malformed"):
        pre.open_standing_part(first, secrets_[1], expected_context=context, expected_index=1)
