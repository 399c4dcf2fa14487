"""core.tx: the kept encoding agrees with a fresh canonical encoding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from core import canonical, ecdsa
from core.errors import SignatureError
from core.tx import TX_TYPES, Transaction

KEY = ecdsa.generate_private_key()
PUB = ecdsa.public_key(KEY)

bodies = st.dictionaries(st.text(max_size=6), st.none() | st.integers(-5, 10**12) | st.text(max_size=10)
                         | st.binary(max_size=40) | st.lists(st.text(max_size=3), max_size=3), max_size=5)


def fresh(tx: Transaction) -> Transaction:
    """The same transaction built field by field (no kept encoding)."""
    return Transaction(tx.type, tx.submitter, tx.nonce, tx.timestamp, tx.body, tx.signature)


@given(st.sampled_from(TX_TYPES), bodies, st.integers(0, 2**63 - 1))
@settings(max_examples=60, deadline=None)
def test_kept_encoding_matches_the_canonical_one(tx_type, body, ts):
    tx = Transaction.create(tx_type, "alice", body, KEY, ts)
    plain = fresh(tx)
    assert tx.to_bytes() == plain.to_bytes() == canonical.pack(
        [tx.type, tx.submitter, tx.nonce, tx.timestamp, tx.body, tx.signature])
    assert tx.signing_bytes() == plain.signing_bytes()
    assert tx.is_valid_signature(PUB) and plain.is_valid_signature(PUB)
    decoded = Transaction.from_bytes(tx.to_bytes())
    assert decoded == tx and decoded.to_bytes() == tx.to_bytes()
    assert decoded.signing_bytes() == plain.signing_bytes() and decoded.is_valid_signature(PUB)
    assert decoded.tx_id == plain.tx_id


def test_a_changed_field_does_not_verify():
    tx = Transaction.create("store", "alice", {"a": 1}, KEY, 1000)
    other = Transaction(tx.type, tx.submitter, tx.nonce, tx.timestamp + 1, tx.body, tx.signature)
    assert not other.is_valid_signature(PUB)
    assert other.to_bytes() != tx.to_bytes()
    tx.verify_signature(PUB)
    with pytest.raises(SignatureError, match="store transaction of alice"):
        other.verify_signature(PUB)
    with pytest.raises(SignatureError):
        tx.verify_signature(ecdsa.public_key(ecdsa.generate_private_key()))
    assert not tx.is_valid_signature(b"\x02" + bytes(32))  # not a key: False, never an exception
