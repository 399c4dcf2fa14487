"""Storage receipts (core.protocol): a node's signed acknowledgement binds node, CID, size and putter."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import ecdsa, protocol

KEY = ecdsa.generate_private_key()
PUB = ecdsa.public_key(KEY)
pytestmark = pytest.mark.crypto
ids = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None)
@given(node=ids, cid=ids, size=st.integers(0, 2**40), putter=ids, other=ids, delta=st.integers(1, 2**20))
def test_a_receipt_verifies_for_exactly_what_it_acknowledges(node, cid, size, putter, other, delta):
    receipt = protocol.make_receipt(KEY, node, cid, size, putter)
    assert protocol.verify_receipt(PUB, node, cid, size, putter, receipt)
    assert not protocol.verify_receipt(PUB, node, cid, size + delta, putter, receipt)
    if other != node:
        assert not protocol.verify_receipt(PUB, other, cid, size, putter, receipt)
    if other != cid:
        assert not protocol.verify_receipt(PUB, node, other, size, putter, receipt)
    if other != putter:
        assert not protocol.verify_receipt(PUB, node, cid, size, other, receipt)
    # a receipt is not a signature under any other tag, nor raw
    assert not ecdsa.is_valid_raw(PUB, protocol.receipt_message(node, cid, size, putter), receipt)
    assert not protocol.verify_receipt(PUB, node, cid, size, putter, receipt[:-1] + bytes([receipt[-1] ^ 1]))
