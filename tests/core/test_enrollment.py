"""core.enrollment: tokens signed by the registrar, bound to subject, org, attributes and key; expiring."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from core import ecdsa, enrollment
from core.enrollment import TOKEN_SIZE, TOKEN_VERSION, EnrollmentToken
from core.errors import DecodeError, ValidationError

REGISTRAR = ecdsa.generate_private_key()
REGISTRAR_PUB = ecdsa.public_key(REGISTRAR)
KEY = ecdsa.public_key(ecdsa.generate_private_key())
GRANT = {"subject": "dr-v", "org": "org-a", "attributes": {"role": "doctor"}, "enroll_key": KEY}


def token(**kw) -> EnrollmentToken:
    return enrollment.issue(REGISTRAR, **{**GRANT, **kw}, expires=1000, token_id=bytes(range(16)))


def test_the_token_covers_every_field_and_expires():
    t = token()
    t.check(REGISTRAR_PUB, **GRANT, now=999)
    other_key = ecdsa.public_key(ecdsa.generate_private_key())
    for change in ({"subject": "dr-w"}, {"org": "org-b"}, {"attributes": {"role": "patient"}},
                   {"attributes": {"role": "doctor", "department": "x"}}, {"enroll_key": other_key}):
        with pytest.raises(ValidationError) as info:
            t.check(REGISTRAR_PUB, **{**GRANT, **change}, now=999)
        assert info.value.code == "token_mismatch"
    # another registrar's key (another organization's, or a forger's) does not check
    with pytest.raises(ValidationError) as info:
        t.check(ecdsa.public_key(ecdsa.generate_private_key()), **GRANT, now=999)
    assert info.value.code == "token_mismatch"
    # the id and the expiry are covered too: editing either breaks the signature
    for forged in (EnrollmentToken(bytes(16), t.expires, t.signature),
                   EnrollmentToken(t.token_id, 10**9, t.signature),
                   EnrollmentToken(t.token_id, t.expires, bytes(64))):
        with pytest.raises(ValidationError) as info:
            forged.check(REGISTRAR_PUB, **GRANT, now=999)
        assert info.value.code == "token_mismatch"
    with pytest.raises(ValidationError) as info:
        t.check(REGISTRAR_PUB, **GRANT, now=1000)
    assert info.value.code == "token_expired"
    # a forged token fails on the signature even when it has expired too
    with pytest.raises(ValidationError) as info:
        EnrollmentToken(t.token_id, t.expires, bytes(64)).check(REGISTRAR_PUB, **GRANT, now=10**6)
    assert info.value.code == "token_mismatch"


@settings(deadline=None)
@given(st.binary(min_size=16, max_size=16), st.integers(0, 2**63 - 1), st.binary(min_size=64, max_size=64))
def test_round_trip(token_id, expires, signature):
    t = EnrollmentToken(token_id, expires, signature)
    raw = t.to_bytes()
    assert len(raw) == TOKEN_SIZE == 89 and raw[0] == TOKEN_VERSION == 2 and EnrollmentToken.from_bytes(raw) == t


@settings(deadline=None)
@given(st.binary(max_size=2 * TOKEN_SIZE))
def test_garbage_is_a_decode_error_or_a_token(raw):
    try:
        t = EnrollmentToken.from_bytes(raw)
    except DecodeError:
        assert len(raw) != TOKEN_SIZE or raw[0] != TOKEN_VERSION
    else:
        assert t.to_bytes() == raw


def test_version_1_hmac_tokens_are_refused():
    legacy = bytes([1]) + bytes(16) + (1000).to_bytes(8, "big") + bytes(32)
    with pytest.raises(DecodeError):
        EnrollmentToken.from_bytes(legacy)
    with pytest.raises(DecodeError, match="version 1"):
        EnrollmentToken.from_bytes(legacy + bytes(32))


@settings(max_examples=25, deadline=None)
@given(st.text(min_size=1, max_size=20), st.dictionaries(st.text(max_size=5), st.integers(-2**63, 2**63 - 1) | st.text(max_size=5),
                                                          max_size=4), st.integers(1, 2**40))
def test_issued_tokens_check_for_exactly_what_they_name(subject, attributes, expires):
    t = enrollment.issue(REGISTRAR, subject=subject, org="o", attributes=attributes, enroll_key=KEY,
                         expires=expires, token_id=bytes(16))
    t.check(REGISTRAR_PUB, subject=subject, org="o", attributes=attributes, enroll_key=KEY, now=expires - 1)
    with pytest.raises(ValidationError):
        t.check(REGISTRAR_PUB, subject=subject + "x", org="o", attributes=attributes, enroll_key=KEY, now=0)
