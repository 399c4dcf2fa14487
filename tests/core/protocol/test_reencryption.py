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
    # only the share (index + compressed GT) and the signature travel
    assert reply.to_wire() == [reply.share, reply.signature] and len(reply.share) == 4 + 288
    assert REENCRYPTION_TAG == "emrshare/v2/reencryption"
    # the signed statement is exactly the documented one
    message = canonical.pack(["req-1", "bafy-cid", 3, share.to_bytes()])
    assert reencryption_message("req-1", "bafy-cid", 3, share.to_bytes()) == message
    assert ecdsa.is_valid(ecdsa.public_key(key), REENCRYPTION_TAG, message, reply.signature)
    got = verify_reencrypt_reply(ecdsa.public_key(key), reply, request_id="req-1", cid="bafy-cid", index=3)
    assert got.to_bytes() == share.to_bytes() and got.value == share.value


def test_the_peer_signs_only_the_index_its_share_carries(share):
    with pytest.raises(ValueError):
        make_reencrypt_reply(ecdsa.generate_private_key(), request_id="req-1", cid="bafy-cid", index=4,
                             share=share.to_bytes())


def test_every_tampered_field_is_refused(share):
    key = ecdsa.generate_private_key()
    public = ecdsa.public_key(key)
    reply = make_reencrypt_reply(key, request_id="req-1", cid="bafy-cid", index=3, share=share.to_bytes())
    expected = dict(request_id="req-1", cid="bafy-cid", index=3)
    flipped = reply.share[:5] + bytes([reply.share[5] ^ 1]) + reply.share[6:]  # one bit of the share
    for bad in [dataclasses.replace(reply, share=flipped), dataclasses.replace(reply, signature=bytes(64))]:
        with pytest.raises(SignatureError):
            verify_reencrypt_reply(public, bad, **expected)
    # the CID and index are not on the wire: the signature binds the ones the doctor asked for
    for other in [{"cid": "bafy-other"}, {"index": 4}, {"request_id": "req-2"}]:
        with pytest.raises(SignatureError):
            verify_reencrypt_reply(public, reply, **{**expected, **other})
    with pytest.raises(SignatureError):  # another proxy's key
        verify_reencrypt_reply(ecdsa.public_key(ecdsa.generate_private_key()), reply, **expected)
    # a well-signed reply whose share does not decode: the identity, a coefficient >= p, a torus
    # point outside GT
    index = (3).to_bytes(4, "big")
    off = (7).to_bytes(48, "big") + bytes(240)  # c = 7 u: norm 1, but (almost surely) not of order r
    for bad_share in [index + bytes(288), index + b"\xff" * 288, index + off]:
        garbage = make_reencrypt_reply(key, request_id="req-1", cid="bafy-cid", index=3, share=bad_share)
        with pytest.raises(DecodeError):
            verify_reencrypt_reply(public, garbage, **expected)
    # a share relabelled with another index, signed for index 3 by a hostile peer
    other_index = (4).to_bytes(4, "big") + share.to_bytes()[4:]
    signature = ecdsa.sign(key, REENCRYPTION_TAG, reencryption_message("req-1", "bafy-cid", 3, other_index))
    with pytest.raises(CoreError):
        verify_reencrypt_reply(public, PeerReencryptReply(share=other_index, signature=signature), **expected)


def test_share_context_is_the_grant_id():
    assert share_context("grant-0a1b") == b"grant-0a1b"
