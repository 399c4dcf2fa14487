"""ECDSA (secp256k1, SHA-256): both implementations, cross-verification, bad input."""

from __future__ import annotations

import hashlib

import coincurve
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import ecdsa
from core._backend import load_ecdsa
from core.errors import DecodeError, SignatureError

pytestmark = pytest.mark.crypto

IMPLS = ["native", "pure"]


@pytest.fixture(params=IMPLS)
def impl(request):
    return load_ecdsa(request.param)


@settings(max_examples=20)
@given(msg=st.binary(max_size=300))
def test_native_and_pure_agree(msg):
    nat, pure = load_ecdsa("native"), load_ecdsa("pure")
    key = ecdsa.generate_private_key()
    digest = hashlib.sha256(msg).digest()
    assert nat.public_key(key) == pure.public_key(key)
    sig_n, sig_p = nat.sign_digest(key, digest), pure.sign_digest(key, digest)
    assert sig_n == sig_p  # RFC 6979 on both sides
    pub = nat.public_key(key)
    assert nat.is_valid_digest(pub, digest, sig_p)
    assert pure.is_valid_digest(pub, digest, sig_n)


def test_coincurve_interop(impl):
    key = ecdsa.generate_private_key()
    digest = hashlib.sha256(b"record").digest()
    sig = impl.sign_digest(key, digest)
    pk = coincurve.PrivateKey(key)
    # coincurve verifies our compact signature (via DER) and we verify its signature
    from coincurve.ecdsa import cdata_to_der, deserialize_compact

    assert pk.public_key.verify(cdata_to_der(deserialize_compact(sig)), digest, hasher=None)
    theirs = pk.sign(digest, hasher=None)
    from coincurve.ecdsa import der_to_cdata, serialize_compact

    compact = serialize_compact(der_to_cdata(theirs))
    assert impl.is_valid_digest(pk.public_key.format(), digest, compact)
    assert impl.is_valid_digest(pk.public_key.format(compressed=False), digest, compact)


def test_high_s_and_out_of_range_rejected(impl):
    key = ecdsa.generate_private_key()
    pub = impl.public_key(key)
    digest = hashlib.sha256(b"x").digest()
    sig = impl.sign_digest(key, digest)
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    assert s <= ecdsa.N // 2
    high = r.to_bytes(32, "big") + (ecdsa.N - s).to_bytes(32, "big")
    assert not impl.is_valid_digest(pub, digest, high)
    for bad_r, bad_s in ((0, s), (r, 0), (ecdsa.N, s), (r + ecdsa.N if r + ecdsa.N < 2**256 else r, s)):
        if (bad_r, bad_s) == (r, s):
            continue
        assert not impl.is_valid_digest(pub, digest, bad_r.to_bytes(32, "big") + bad_s.to_bytes(32, "big"))


def test_tagged_sign_verify_and_domain_separation():
    key = ecdsa.generate_private_key()
    pub = ecdsa.public_key(key)
    sig = ecdsa.sign(key, "emrshare/v1/store", b"cid")
    ecdsa.verify(pub, "emrshare/v1/store", b"cid", sig)
    with pytest.raises(SignatureError):
        ecdsa.verify(pub, "emrshare/v1/grant", b"cid", sig)
    with pytest.raises(SignatureError):
        ecdsa.verify(pub, "emrshare/v1/store", b"cid2", sig)
    assert not ecdsa.is_valid_raw(pub, b"cid", sig)  # the raw message is not the tagged one
    assert ecdsa.is_valid(pub, "emrshare/v1/store", b"cid", sig)
    assert not ecdsa.is_valid(pub, "emrshare/v1/grant", b"cid", sig)
    assert not ecdsa.is_valid(pub, "emrshare/v1/store", b"cid", bytes(64))
    with pytest.raises(SignatureError):
        ecdsa.verify(pub, "emrshare/v1/store", b"cid", bytes(64))
    assert ecdsa.is_valid_raw(pub, ecdsa.tagged_message("emrshare/v1/store", b"cid"), sig)
    with pytest.raises(ValueError):
        ecdsa.sign(key, "bad\x00tag", b"")


@given(pub=st.binary(max_size=70), msg=st.binary(max_size=10), sig=st.binary(max_size=70))
def test_is_valid_raw_never_raises(pub, msg, sig):
    assert ecdsa.is_valid_raw(pub, msg, sig) in (True, False)


def test_is_valid_raw_rejects_wrong_types():
    assert ecdsa.is_valid_raw("pub", b"m", b"s" * 64) is False  # type: ignore[arg-type]
    assert ecdsa.is_valid_raw(b"\x02" + bytes(32), None, bytes(64)) is False  # type: ignore[arg-type]


def test_public_key_validation(impl):
    key = ecdsa.generate_private_key()
    pub = impl.public_key(key)
    assert ecdsa.decode_public_key(pub) == pub
    unc = coincurve.PrivateKey(key).public_key.format(compressed=False)
    assert ecdsa.decode_public_key(unc) == pub
    with pytest.raises(DecodeError, match="33 bytes"):
        ecdsa.decode_public_key(pub[:-1])
    bad = bytearray(unc)
    bad[-1] ^= 1
    with pytest.raises(DecodeError, match="not on secp256k1"):
        ecdsa.decode_public_key(bytes(bad))
    assert not impl.is_valid_digest(bytes(bad), bytes(32), bytes(64))


def test_private_key_validation(impl):
    with pytest.raises(DecodeError):
        impl.public_key(bytes(32))
    with pytest.raises(DecodeError):
        impl.public_key(ecdsa.N.to_bytes(32, "big"))
    with pytest.raises(DecodeError):
        impl.public_key(b"short")


@pytest.mark.parametrize("name", IMPLS)
def test_parsed_public_keys_are_cached_bounded_and_never_change_a_verdict(name, monkeypatch):
    from core import _secp256k1

    impl = _secp256k1.NativeEcdsa() if name == "native" else _secp256k1.PureEcdsa()  # a fresh cache
    monkeypatch.setattr(impl._keys, "_limit", 3)
    keys = [ecdsa.generate_private_key() for _ in range(5)]
    pubs = [impl.public_key(k) for k in keys]
    digest = hashlib.sha256(b"cached").digest()
    sigs = [impl.sign_digest(k, digest) for k in keys]
    off_curve = b"\x02" + (5).to_bytes(32, "big")  # x = 5: x^3 + 7 is not a square mod p
    for _ in range(2):  # the second round reads the cache (or re-parses what was evicted)
        for i, pub in enumerate(pubs):
            assert impl.is_valid_digest(pub, digest, sigs[i])
            assert not impl.is_valid_digest(pub, digest, sigs[(i + 1) % 5])
            assert not impl.is_valid_digest(pub, hashlib.sha256(b"other").digest(), sigs[i])
        assert not impl.is_valid_digest(off_curve, digest, sigs[0])  # a failed parse is cached as one
        assert len(impl._keys) <= 3
    parsed = []
    if name == "native":
        original = impl._parse_pub_uncached
        monkeypatch.setattr(impl, "_parse_pub_uncached", lambda pub: parsed.append(pub) or original(pub))
    else:
        original = _secp256k1._pure_point_or_none
        monkeypatch.setattr(_secp256k1, "_pure_point_or_none", lambda pub: parsed.append(pub) or original(pub))
    fresh = ecdsa.generate_private_key()
    pub, sig = impl.public_key(fresh), impl.sign_digest(fresh, digest)
    for _ in range(3):
        assert impl.is_valid_digest(pub, digest, sig)
    assert parsed == [pub]  # parsed once, then read from the cache
