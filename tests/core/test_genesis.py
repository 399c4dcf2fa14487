"""core.ledger genesis: every member organization signs the configuration; a draft lacks some."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from agents.testing.consortium import TestConsortium
from core import canonical, ecdsa
from core.errors import DecodeError
from core.identity import ConsortiumConfig, OrgInfo
from core.ledger import (GENESIS_SIGNATURE, Block, make_genesis, merkle_root, missing_signatures, parse_genesis,
                         read_genesis_draft)

C = TestConsortium.build(orgs=("org-a", "org-b", "org-c"), created_at=5_000)


def sigs(*orgs: str) -> dict[str, bytes]:
    return {o: C.config.sign_as_org(C.admins[o]) for o in orgs}


def test_a_genesis_needs_every_member_signature():
    genesis = make_genesis(C.config, sigs("org-a", "org-b", "org-c"))
    assert parse_genesis(genesis.to_bytes()).config == C.config
    for present in [(), ("org-a",), ("org-a", "org-b"), ("org-b", "org-c")]:
        draft = make_genesis(C.config, sigs(*present)).to_bytes()
        config, found = read_genesis_draft(draft)  # a draft reads...
        assert config == C.config and set(found) == set(present)
        assert missing_signatures(config, found) == [o for o in C.orgs if o not in present]
        with pytest.raises(DecodeError, match="lacks the signature"):  # ...but no node takes it
            parse_genesis(draft)


def test_a_signature_must_be_the_members_admin_over_this_config():
    full = sigs("org-a", "org-b", "org-c")
    other = ConsortiumConfig(C.config.name, C.config.orgs, C.config.peers, C.config.orderer_id,
                             C.config.orderer_key, 1, created_at=C.config.created_at)  # another threshold
    wrong = [
        {**full, "org-b": other.sign_as_org(C.admins["org-b"])},  # signed another configuration
        {**full, "org-b": C.config.sign_as_org(C.registrars["org-b"])},  # the registrar key is not the admin key
        {**full, "org-b": C.config.sign_as_org(C.admins["org-a"])},  # org-a signing for org-b
        {**full, "org-z": C.config.sign_as_org(ecdsa.generate_private_key())},  # not a member
    ]
    for signatures in wrong:
        with pytest.raises(DecodeError):
            read_genesis_draft(make_genesis(C.config, signatures))
    # the signatures entry is canonical: same map in another encoding is refused
    unsorted = msgpack.packb(dict(sorted(full.items(), reverse=True)), use_bin_type=True)
    assert unsorted != canonical.pack(full)
    txs = (C.config.to_bytes(), unsorted)
    with pytest.raises(DecodeError):
        read_genesis_draft(Block(0, bytes(32), 5_000, merkle_root(txs), txs, GENESIS_SIGNATURE))


@settings(max_examples=40, deadline=None)
@given(st.sets(st.sampled_from(["org-a", "org-b", "org-c"])))
def test_draft_round_trip(present):
    block = make_genesis(C.config, sigs(*present))
    assert Block.from_bytes(block.to_bytes()) == block
    config, found = read_genesis_draft(block.to_bytes())
    assert config == C.config and found == sigs(*present)
    assert make_genesis(config, found) == block  # signing order does not matter: canonical


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_signature_entries_are_decode_errors(raw):
    txs = (C.config.to_bytes(), raw)
    block = Block(0, bytes(32), 5_000, merkle_root(txs), txs, GENESIS_SIGNATURE)
    try:
        _, found = read_genesis_draft(block)
    except DecodeError:
        return
    assert found == {} and raw == canonical.pack({})


def test_org_keys_are_checked():
    key = ecdsa.public_key(ecdsa.generate_private_key())
    for bad in [dict(admin_key=b"x"), dict(registrar_key=bytes(32)), dict(tls_ca=7), dict(tls_ca="x" * 9000)]:
        with pytest.raises(DecodeError):
            OrgInfo(**{"id": "org", "name": "Org", "admin_key": key, "registrar_key": key, **bad})
