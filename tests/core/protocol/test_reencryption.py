"""The re-encryption reply's signed format: made by the peer, verified by the doctor."""

from __future__ import annotations

import dataclasses

import pytest

from core import canonical, ecdsa, pre
from core.errors import CoreError, DecodeError, SignatureError
from core.protocol import (
    REENCRYPTION_TAG,
    PeerReencryptReply,
    make_reencrypt_reply,
    reencryption_message,
    share_context,
    verify_reencrypt_reply,
)

pytestmark = pytest.mark.crypto


@pytest.fixture(scope="module")
def share() -> pre.ReencryptedShare:
    label = pre.KeyPair.derive(pre.new_master_secret(), "cardiology")
    receiver = pre.KeyPair.derive(pre.new_master_secret(), "receive")
    box_secret, box_public = pre.box_keypair()
    (sealed,) = pre.make_key_shares(label, receiver.public, [pre.Proxy(3, box_public)], 1, share_context("g-1"))
    key_share = pre.open_key_share(sealed, box_secret, expected_context=share_context("g-1"), expected_index=3)
    capsule, _ = pre.encapsulate(label.public)
    return pre.reencrypt(capsule, key_share)


def test_round_trip(share):
    key = ecdsa.generate_private_key()
    reply = make_reencrypt_reply(key, request_id="req-1", cid="bafy-cid", index=3, share=share.to_bytes())
    assert reply == PeerReencryptReply.from_wire(reply.to_wire())
    # the signed statement is exactly the documented one
    message = canonical.pack(["req-1", "bafy-cid", 3, share.to_bytes()])
    assert reencryption_message("req-1", "bafy-cid", 3, share.to_bytes()) == message
    assert ecdsa.is_valid(ecdsa.public_key(key), REENCRYPTION_TAG, message, reply.signature)
    got = verify_reencrypt_reply(ecdsa.public_key(key), reply, request_id="req-1", cid="bafy-cid", index=3)
    assert got.to_bytes() == share.to_bytes()


def test_every_tampered_field_is_refused(share):
    key = ecdsa.generate_private_key()
    public = ecdsa.public_key(key)
    reply = make_reencrypt_reply(key, request_id="req-1", cid="bafy-cid", index=3, share=share.to_bytes())
    expected = dict(request_id="req-1", cid="bafy-cid", index=3)
    flipped = reply.share[:5] + bytes([reply.share[5] ^ 1]) + reply.share[6:]  # one bit of the share
    for bad, raises in [
        (dataclasses.replace(reply, cid="bafy-other"), SignatureError),
        (dataclasses.replace(reply, index=4), SignatureError),
        (dataclasses.replace(reply, share=flipped), SignatureError),
        (dataclasses.replace(reply, signature=bytes(64)), SignatureError),
    ]:
        with pytest.raises(raises):
            verify_reencrypt_reply(public, bad, **expected)
    with pytest.raises(SignatureError):  # asked for another request
        verify_reencrypt_reply(public, reply, **{**expected, "request_id": "req-2"})
    with pytest.raises(SignatureError):  # another proxy's key
        verify_reencrypt_reply(ecdsa.public_key(ecdsa.generate_private_key()), reply, **expected)
    # a well-signed reply whose share does not decode, or names another index inside
    garbage = make_reencrypt_reply(key, request_id="req-1", cid="bafy-cid", index=3, share=bytes(580))
    with pytest.raises(DecodeError):
        verify_reencrypt_reply(public, garbage, **expected)
    other_index = (4).to_bytes(4, "big") + share.to_bytes()[4:]
    relabelled = make_reencrypt_reply(key, request_id="req-1", cid="bafy-cid", index=3, share=other_index)
    with pytest.raises(CoreError):
        verify_reencrypt_reply(public, relabelled, **expected)


def test_share_context_is_the_grant_id():
    assert share_context("grant-0a1b") == b"grant-0a1b"
