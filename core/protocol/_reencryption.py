"""The re-encryption reply's signed format and the key shares' context, defined once.

A peer answers ``peer.reencrypt`` with the re-encrypted share and its ECDSA
signature under tag :data:`REENCRYPTION_TAG` over the canonical encoding of
``[request_id, cid, index, share]``: evidence, checkable later by anyone with
the peer's public key, that this peer re-encrypted the capsule of the record
``cid`` for the access request ``request_id`` as proxy ``index``.

The reply carries only ``share`` (4-byte index, then the GT value compressed to
288 bytes) and the signature: the doctor knows the request id and the CID (it
asked for them) and the index (the share's first bytes), and the signature
fails unless the peer signed those very values. Version 2 of the tag: version 1
signed the share with its GT value in the 576-byte form, so a v1 signature can
never be taken for a v2 one.
"""

from __future__ import annotations

from core import canonical, ecdsa, pre
from core.errors import DecodeError, SignatureError

from core.protocol._peer import PeerReencryptReply

__all__ = ["REENCRYPTION_TAG", "reencryption_message", "make_reencrypt_reply", "verify_reencrypt_reply",
           "share_context"]

REENCRYPTION_TAG = "emrshare/v2/reencryption"


def share_context(grant_id: str) -> bytes:
    """The context sealed with every re-encryption key share of a grant
    (``core.pre.make_key_shares(..., context=share_context(grant_id))``): the grant
    id's UTF-8 bytes. A peer opens a delivered share only with its grant's context."""
    return grant_id.encode("utf-8")


def reencryption_message(request_id: str, cid: str, index: int, share: bytes) -> bytes:
    """The bytes a peer signs (under :data:`REENCRYPTION_TAG`) for one re-encrypted share."""
    return canonical.pack([request_id, cid, index, share])


def make_reencrypt_reply(private_key: bytes, *, request_id: str, cid: str, index: int,
                         share: bytes) -> PeerReencryptReply:
    """The peer's signed ``peer.reencrypt`` reply for its encoded share (``ReencryptedShare.to_bytes``,
    whose first 4 bytes must be ``index``)."""
    if len(share) < 4 or int.from_bytes(share[:4], "big") != index:
        raise ValueError("the encoded share does not carry the proxy index it is signed for")
    signature = ecdsa.sign(private_key, REENCRYPTION_TAG, reencryption_message(request_id, cid, index, share))
    return PeerReencryptReply(share=share, signature=signature)


def verify_reencrypt_reply(public_key: bytes, reply: PeerReencryptReply, *, request_id: str, cid: str,
                           index: int) -> pre.ReencryptedShare:
    """The share of ``reply`` if it is the signed answer to ``request_id`` for record ``cid``
    from the proxy with ``index`` whose key is ``public_key``.

    Raises :class:`core.errors.SignatureError` when the signature does not verify over
    this request id, CID and index (a reply about another record or from another
    proxy index fails here), :class:`core.errors.DecodeError` when the share does not
    decode or names another index.
    """
    if int.from_bytes(reply.share[:4], "big") != index:
        raise SignatureError(f"the re-encryption reply names proxy index "
                             f"{int.from_bytes(reply.share[:4], 'big')}, not {index}")
    ecdsa.verify(public_key, REENCRYPTION_TAG, reencryption_message(request_id, cid, index, reply.share),
                 reply.signature)
    share = pre.ReencryptedShare.from_bytes(reply.share)
    if share.index != index:  # pragma: no cover - the bytes were checked above
        raise DecodeError("the re-encrypted share's index does not match the reply's")
    return share
