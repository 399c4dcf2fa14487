"""Session 12's attack on version-3 key shares (issue 14): ``[3, rk]`` carries no grant id,
so what bound a share to its grant was only the digest the grant commits. Whoever holds
the sealed bytes of a share (a copy of a peer's store at rest, a patient's leftovers) could
commit another grant with that digest (a patient of its own, for a doctor whose grant was
revoked) and have the peer open the share there: the revoked doctor reads on under the
new grant. Version 4 (``[4, rk XOR mask(context, index)]``, no byte more) binds the share
to its grant inside the seal again: opened under another grant it is garbage, refused; a
version-3 share is taken only from the peer's own store (``stored=True``), never at
delivery."""

from __future__ import annotations

import hashlib

import msgpack
import pytest

from core import pre
from core.curve import api, pairing
from core.errors import DecodeError
from tests.core.conftest import make_proxies


def _setup(backend):
    scheme = pre.Scheme(backend)
    owner = scheme.derive_keypair(pre.new_master_secret(), "cardiology")
    doctor = scheme.derive_keypair(pre.new_master_secret(), pre.RECEIVE_LABEL)
    proxies, secrets_ = make_proxies(2)
    return scheme, owner, doctor, proxies, secrets_


def test_a_bound_share_does_not_open_under_another_grant_that_commits_its_digest(backend):
    scheme, owner, doctor, proxies, secrets_ = _setup(backend)
    g1, g2 = b"g-alice-to-dr", b"g-mallory-to-dr"
    sealed = pre.make_key_shares(owner, doctor.public, proxies, 2, g1, bound=True)[0]
    digest = hashlib.sha256(sealed.sealed).digest()  # what mallory's grant g2 commits for this peer
    share = scheme.open_key_share(sealed, secrets_[1], expected_context=g1, expected_index=1, expected_digest=digest)
    with pytest.raises(DecodeError):
        scheme.open_key_share(sealed, secrets_[1], expected_context=g2, expected_index=1, expected_digest=digest)
    with pytest.raises(DecodeError):  # nor at another index (the same grant, another proxy's place)
        scheme.open_key_share(pre.SealedKeyShare(2, sealed.sealed), secrets_[1], expected_context=g1,
                              expected_index=2, expected_digest=digest)
    # no byte more than version 3: [4, 96-byte bin]
    plain = msgpack.packb([4, share.rk.to_bytes()])
    assert len(sealed.sealed) == 48 + len(plain)


def test_a_version_3_share_opens_only_from_the_peers_own_store(backend):
    scheme, owner, doctor, proxies, secrets_ = _setup(backend)
    from nacl.public import PublicKey, SealedBox

    g1 = b"g-1"
    share = pre.make_key_shares(owner, doctor.public, proxies, 2, g1)[0]  # (version 2, for its rk)
    opened = scheme.open_key_share(share, secrets_[1], expected_context=g1, expected_index=1)
    v3 = pre.SealedKeyShare(1, SealedBox(PublicKey(proxies[0].box_public_key)).encrypt(
        msgpack.packb([3, opened.rk.to_bytes()])))
    digest = hashlib.sha256(v3.sealed).digest()
    with pytest.raises(DecodeError, match="version-3"):  # delivered: refused (it names no grant)
        scheme.open_key_share(v3, secrets_[1], expected_context=g1, expected_index=1, expected_digest=digest)
    with pytest.raises(DecodeError, match="version-3"):
        pre.open_key_share(v3, secrets_[1], expected_context=g1, expected_index=1, expected_digest=digest)
    kept = scheme.open_key_share(v3, secrets_[1], expected_context=g1, expected_index=1, expected_digest=digest,
                                 stored=True)  # read back from the store it was kept in before version 4
    assert kept.rk == opened.rk
    with pytest.raises(DecodeError, match="committed digest"):
        scheme.open_key_share(v3, secrets_[1], expected_context=g1, expected_index=1, stored=True)


def test_a_grant_whose_digests_are_fewer_than_its_threshold_or_name_no_peer_is_refused():
    """The digest list of a grant: at least its threshold (and the consortium's) of them, one
    32-byte hash per known peer; a peer the list leaves out holds no share of the grant, and
    the ledger refuses its access entry for it."""
    from tests.core.test_ledger import T0, registered, request, setup_records

    c = registered()
    setup_records(c)
    assert request(c, "dr-heart", "req-1") == "ok"
    digest = hashlib.sha256(b"x").digest()

    def grant(gid, shares, threshold=2):
        body = {"grant_id": gid, "request_id": "req-1", "threshold": threshold, "expires_at": T0 + 3600,
                "shares": shares}
        return c.block(c.tx("grant", "alice", body))[1].marks[0]

    assert grant("g-a", {"peer1": digest}) == "malformed"  # fewer digests than the threshold
    assert grant("g-b", {"peer1": digest}, threshold=1) == "malformed"  # below the consortium's threshold
    assert grant("g-c", {"peer1": digest, "peer9": digest}) == "malformed"  # a peer the consortium lacks
    assert grant("g-d", {"peer1": digest, "peer2": digest[:31]}) == "malformed"  # not a sha256
    assert grant("g-e", {"peer1": digest, "peer2": hashlib.sha256(b"y").digest()}) == "ok"
    assert c.ledger.grant("g-e").share_digest("peer3") is None  # (the peer refuses: share.mismatch/missing)
    access = c.tx("access", "peer3", {"grant_id": "g-e", "request_id": "req-1", "record_id": "rec-1",
                                      "doctor": "dr-heart", "index": 3})
    assert c.block(access)[1].marks[0] == "forbidden"


def test_a_capsule_copied_from_another_patients_record_gives_its_readers_only_a_public_value(backend):
    # The ledger does not bind a capsule to its owner: mallory may commit a record entry of
    # her own that carries alice's capsule U = k a_A g1 (it is public), grant a doctor she
    # colludes with, and have t peers re-encrypt it under her key. What the doctor combines
    # is Z^(k a_A / a_M); with mallory's a_M that is Z^(k a_A) = e(U, g2), which anyone
    # computes from U alone, and never alice's K = Z^k.
    scheme = pre.Scheme(backend)
    alice = scheme.derive_keypair(pre.new_master_secret(), "cardiology")
    mallory = scheme.derive_keypair(pre.new_master_secret(), "cardiology")
    doctor = scheme.derive_keypair(pre.new_master_secret(), pre.RECEIVE_LABEL)
    proxies, secrets_ = make_proxies(3)
    capsule, k = pre.encapsulate(alice.public)
    context = b"g-mallory-to-dr"
    shares = [scheme.open_key_share(s, secrets_[s.index], expected_context=context, expected_index=s.index)
              for s in pre.make_key_shares(mallory, doctor.public, proxies, 2, context)]
    got = pre.combine([pre.reencrypt(capsule, s.prepare()) for s in shares[:2]], doctor.secret)
    public = pairing(capsule, api(backend).G2.generator())
    assert got ** mallory.secret == public  # what the colluders hold is a function of U alone
    assert got != k and public != k and got ** mallory.secret != k
    # and alice's own grant to the same doctor still opens it (the copy changed nothing of hers)
    own = [scheme.open_key_share(s, secrets_[s.index], expected_context=b"g-alice", expected_index=s.index)
           for s in pre.make_key_shares(alice, doctor.public, proxies, 2, b"g-alice")]
    assert pre.combine([pre.reencrypt(capsule, s.prepare()) for s in own[1:]], doctor.secret) == k
