"""The genesis's orderer set (core.identity.OrdererInfo, ConsortiumConfig.orderers): peers accept
a block signed by any orderer of the set, refuse one signed by a key outside it; a
single-orderer genesis keeps its encoding."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings, strategies as st

from core import ecdsa
from core.errors import DecodeError, ValidationError
from core.identity import MAX_ORDERERS, ConsortiumConfig, OrdererInfo
from core.ledger import Block, Ledger, MemoryKV, make_genesis, parse_genesis

from agents.testing.consortium import TestConsortium, split_peers


def _with_set(n: int = 3):
    c = TestConsortium.build(split_peers(2), threshold=1)
    keys = [ecdsa.generate_private_key() for _ in range(n)]
    config = dataclasses.replace(c.config, orderers=tuple(OrdererInfo(f"orderer-{i}", ecdsa.public_key(k))
                                                          for i, k in enumerate(keys)))
    return c, config, keys


def _signed(c, config):
    """Every member organization's signature over ``config`` (a genesis needs them all)."""
    return {org: config.sign_as_org(key) for org, key in c.admins.items()}


def test_single_orderer_genesis_keeps_its_bytes():
    c = TestConsortium.build(split_peers(2), threshold=1)
    assert "orderers" not in c.config.to_dict()
    assert ConsortiumConfig.from_bytes(c.config.to_bytes()) == c.config
    assert c.config.orderer_keys == (c.config.orderer_key,)
    assert c.config.orderer_ids == ("orderer",)


def test_set_round_trips_and_names_its_nodes():
    c, config, keys = _with_set()
    again = ConsortiumConfig.from_bytes(config.to_bytes())
    assert again == config
    assert again.orderer_ids == ("orderer-0", "orderer-1", "orderer-2")
    assert again.orderer_keys == (c.config.orderer_key, *(ecdsa.public_key(k) for k in keys))
    genesis = make_genesis(config, _signed(c, config))
    assert parse_genesis(genesis.to_bytes()).config == config


def test_blocks_from_any_orderer_of_the_set_commit_and_others_are_refused():
    c, config, keys = _with_set()
    ledger = Ledger(make_genesis(config, _signed(c, config)), MemoryKV())
    ts = config.created_at + 1000
    for height, key in enumerate([keys[2], keys[0], c.orderer_key, keys[1]], start=1):
        block = Block.make(height, ledger.head()[1], ts, [], key)
        ledger.kv.apply(ledger.apply(block).writes)
        assert ledger.height == height
    outsider = ecdsa.generate_private_key()
    block = Block.make(5, ledger.head()[1], ts, [], outsider)
    with pytest.raises(ValidationError) as err:
        ledger.apply(block)
    assert err.value.code == "bad_block_signature"


def test_a_single_orderer_ledger_refuses_a_set_members_block():
    c, config, keys = _with_set()
    ledger = Ledger(c.genesis, MemoryKV())  # the genesis without the set
    block = Block.make(1, ledger.head()[1], c.config.created_at + 1, [], keys[0])
    with pytest.raises(ValidationError):
        ledger.apply(block)


def test_bad_sets_are_refused():
    c = TestConsortium.build(split_peers(2), threshold=1)
    key = ecdsa.public_key(ecdsa.generate_private_key())
    with pytest.raises(DecodeError):
        dataclasses.replace(c.config, orderers=(OrdererInfo("a", key), OrdererInfo("a", bytes([key[0] ^ 1]) + key[1:])))
    with pytest.raises(DecodeError):
        dataclasses.replace(c.config, orderers=(OrdererInfo("a", key), OrdererInfo("b", key)))
    many = tuple(OrdererInfo(f"o{i}", ecdsa.public_key(ecdsa.generate_private_key())) for i in range(MAX_ORDERERS + 1))
    with pytest.raises(DecodeError):
        dataclasses.replace(c.config, orderers=many)
    with pytest.raises(DecodeError):
        OrdererInfo("a", b"short")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=40), max_size=4))
def test_malformed_set_entries_never_decode_to_a_config(blobs):
    c = TestConsortium.build(split_peers(2), threshold=1)
    d = c.config.to_dict()
    d["orderers"] = [{"id": f"o{i}", "key": b} for i, b in enumerate(blobs)]
    from core import canonical
    try:
        config = ConsortiumConfig.from_bytes(canonical.pack(d))
    except DecodeError:
        return
    assert all(len(o.key) == 33 for o in config.orderers)
