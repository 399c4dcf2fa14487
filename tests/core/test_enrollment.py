"""core.enrollment: tokens bound to subject, org, attributes and key; expiring; a strict wire form."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given, strategies as st

from core import ecdsa, enrollment
from core.enrollment import TOKEN_SIZE, EnrollmentToken
from core.errors import DecodeError, ValidationError

SECRET = secrets.token_bytes(32)
KEY = ecdsa.public_key(ecdsa.generate_private_key())
GRANT = {"subject": "dr-v", "org": "org-a", "attributes": {"role": "doctor"}, "enroll_key": KEY}


def token(**kw) -> EnrollmentToken:
    return enrollment.issue(SECRET, **{**GRANT, **kw}, expires=1000, token_id=bytes(range(16)))


def test_the_token_covers_every_field_and_expires():
    t = token()
    t.check(SECRET, **GRANT, now=999)
    other_key = ecdsa.public_key(ecdsa.generate_private_key())
    for change in ({"subject": "dr-w"}, {"org": "org-b"}, {"attributes": {"role": "patient"}},
                   {"enroll_key": other_key}):
        with pytest.raises(ValidationError) as info:
            t.check(SECRET, **{**GRANT, **change}, now=999)
        assert info.value.code == "token_mismatch"
    with pytest.raises(ValidationError) as info:
        t.check(secrets.token_bytes(32), **GRANT, now=999)
    assert info.value.code == "token_mismatch"
    # the id and the expiry are covered too: editing either breaks the MAC
    for forged in (EnrollmentToken(bytes(16), t.expires, t.mac), EnrollmentToken(t.token_id, 10**9, t.mac)):
        with pytest.raises(ValidationError) as info:
            forged.check(SECRET, **GRANT, now=999)
        assert info.value.code == "token_mismatch"
    with pytest.raises(ValidationError) as info:
        t.check(SECRET, **GRANT, now=1000)
    assert info.value.code == "token_expired"


@given(st.binary(min_size=16, max_size=16), st.integers(0, 2**63 - 1), st.binary(min_size=32, max_size=32))
def test_round_trip(token_id, expires, mac):
    t = EnrollmentToken(token_id, expires, mac)
    raw = t.to_bytes()
    assert len(raw) == TOKEN_SIZE and EnrollmentToken.from_bytes(raw) == t


@given(st.binary(max_size=2 * TOKEN_SIZE))
def test_garbage_is_a_decode_error_or_a_token(raw):
    try:
        t = EnrollmentToken.from_bytes(raw)
    except DecodeError:
        assert len(raw) != TOKEN_SIZE or raw[0] != 1
    else:
        assert t.to_bytes() == raw
