"""agents.ledger_store: KV semantics, one transaction per block, genesis binding."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, strategies as st

from agents.ledger_store import LedgerStore, StoreError, prefix_bound
from core import canonical, ecdsa, pre
from core.identity import ConsortiumConfig, OrgInfo, PeerInfo
from core.ledger import Block, CommitResult, Ledger, MemoryKV, make_genesis


def _genesis(key=None):
    key = key or ecdsa.generate_private_key()
    peer = PeerInfo("peer-1", "org", ecdsa.public_key(ecdsa.generate_private_key()), pre.box_keypair()[1], 1)
    admin = ecdsa.generate_private_key()
    org = OrgInfo("org", "Org", ecdsa.public_key(admin), ecdsa.public_key(ecdsa.generate_private_key()))
    config = ConsortiumConfig("c", (org,), (peer,), "orderer", ecdsa.public_key(key), 1, created_at=1_000)
    return make_genesis(config, {"org": config.sign_as_org(admin)}), key


@given(st.lists(st.text(alphabet="ab/\u00e9\U0001f600z", max_size=6), max_size=30),
       st.text(alphabet="ab/\u00e9\U0001f600z", max_size=3))
def test_scan_matches_memory_kv(tmp_path_factory, keys, prefix):
    store = LedgerStore(tmp_path_factory.mktemp("s") / "l.sqlite")
    mem = MemoryKV()
    writes = {k: k.encode() + b"!" for k in keys}
    mem.apply(writes)
    with store._lock:
        store._db.executemany("INSERT OR REPLACE INTO state VALUES (?, ?)", list(writes.items()))
    assert store.scan(prefix) == mem.scan(prefix)
    for k in keys:
        assert store.get(k) == mem.get(k)
    store.close()


def test_prefix_bound():
    assert prefix_bound("audit/") == "audit0"
    assert prefix_bound("") is None
    assert prefix_bound("a\U0010ffff") == "b"


def test_commit_is_one_transaction_and_survives_reopen(tmp_path):
    genesis, key = _genesis()
    path = tmp_path / "l.sqlite"
    store = LedgerStore(path)
    store.init_genesis(genesis)
    ledger = Ledger(genesis, store)
    block = Block.make(1, genesis.hash, 2_000, [b"\x93junk"], key)
    result = ledger.apply(block)
    assert result.marks == ("malformed",)
    # a failing write rolls back the whole block: nothing of it is visible
    bad = CommitResult(1, block.hash, result.marks, {**result.writes, "zz": object()}, result.state_root)
    with pytest.raises(sqlite3.Error):
        store.commit(block, bad)
    assert store.last_height() == 0 and store.get("meta/head") is None and ledger.height == 0
    store.commit(block, result)
    store.close()
    again = LedgerStore(path)
    again.init_genesis(genesis)
    assert Ledger(genesis, again).head() == (1, block.hash, result.state_root)
    assert canonical.unpack(again.block_rows(1)[0][3]) == ["malformed"]
    assert again.blocks(0, 10) == [genesis.to_bytes(), block.to_bytes()]
    assert again.blocks(0, 10, max_bytes=1) == [genesis.to_bytes()]
    other, _ = _genesis()
    with pytest.raises(StoreError):
        again.init_genesis(other)
    again.close()


def test_shares_table(tmp_path):
    store = LedgerStore(tmp_path / "l.sqlite")
    assert store.share("g") is None
    store.put_share("g", 3, b"sealed")
    assert store.share("g") == (3, b"sealed")
    store.close()


@given(st.lists(st.dictionaries(st.sampled_from(["a", "b", "c", "d/x", "e"]), st.none() | st.binary(max_size=4),
                                max_size=4), min_size=1, max_size=6),
       st.integers(min_value=1, max_value=8))
def test_read_cache_follows_every_commit(tmp_path_factory, commits, cache_entries):
    genesis, key = _genesis()
    path = tmp_path_factory.mktemp("c") / "l.sqlite"
    store = LedgerStore(path, cache_entries=cache_entries)
    store.init_genesis(genesis)
    mem = MemoryKV()
    keys = ["a", "b", "c", "d/x", "e", "never"]
    prev = genesis
    for height, writes in enumerate(commits, start=1):
        for k in keys:  # fill the cache, absent keys included
            assert store.get(k) == mem.get(k)
        block = Block.make(height, prev.hash, 1_000 + height, [], key)
        store.commit(block, CommitResult(height, block.hash, (), dict(writes), bytes(32)))
        mem.apply(writes)
        prev = block
        assert store.get_many(keys[::-1] + ["a"]) == mem.get_many(keys)  # cached or read in one query
        for k in keys:
            assert store.get(k) == mem.get(k)
    fresh = LedgerStore(path, readonly=True)
    assert all(fresh.get(k) == store.get(k) for k in keys)
    assert store.scan("") == mem.scan("")
    fresh.close()
    store.close()


def test_ledger_and_key_files_are_owner_only(tmp_path):
    """Ledgers hold sealed key shares and every patient's metadata, key stores the keys:
    0600 files in 0700 directories, even under a permissive umask or over an older,
    world-readable database."""
    import os
    import stat

    from agents.keys import AgentKeys, KeyStore

    old = os.umask(0o022)
    try:
        genesis, _ = _genesis()
        path = tmp_path / "peer" / "ledger.sqlite"
        store = LedgerStore(path)
        store.init_genesis(genesis)
        store.close()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        for extra in path.parent.glob("ledger.sqlite-*"):  # WAL and shared memory, if present
            assert stat.S_IMODE(extra.stat().st_mode) & 0o077 == 0
        os.chmod(path, 0o644)
        os.chmod(path.parent, 0o755)
        LedgerStore(path).close()  # reopening tightens what an older version left
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        ks = tmp_path / "user" / "keys.bin"
        KeyStore(ks, passphrase="pw", fast_kdf=True).save(AgentKeys.generate().to_bytes())
        assert stat.S_IMODE(ks.stat().st_mode) == 0o600
        assert stat.S_IMODE(ks.parent.stat().st_mode) == 0o700
    finally:
        os.umask(old)


def test_get_many_reads_in_chunks_and_does_not_fill_the_cache(tmp_path):
    genesis, key = _genesis()
    store = LedgerStore(tmp_path / "l.sqlite", cache_entries=16)
    store.init_genesis(genesis)
    writes = {f"nonce/u/{i:04d}": bytes([i % 256]) for i in range(0, 1300, 3)}
    block = Block.make(1, genesis.hash, 1_001, [], key)
    store.commit(block, CommitResult(1, block.hash, (), writes, bytes(32)))
    keys = [f"nonce/u/{i:04d}" for i in range(1300)]  # more than one IN chunk
    got = store.get_many(keys)
    assert got == {k: writes.get(k) for k in keys}
    assert len(store._cache) == 0
    store.get("nonce/u/0003")
    assert store.get_many(["nonce/u/0003"]) == {"nonce/u/0003": writes["nonce/u/0003"]}
    store.close()
