"""SQLite persistence for a peer's ledger (and the orderer's block log).

One database file per agent, in WAL mode. Tables::

    blocks(height PRIMARY KEY, hash, data, marks, root)  -- every block, genesis at height 0;
                                                           marks/root NULL on the orderer
    state(key PRIMARY KEY, value)                         -- the world state (core.ledger keys)
    shares(grant_id PRIMARY KEY, idx, sealed)             -- re-encryption key shares, still
                                                           sealed to the peer's X25519 key
    meta(key PRIMARY KEY, value)                          -- "genesis": the genesis hash

:meth:`LedgerStore.commit` writes a block, its validity marks, its state
writes and the new head (``meta/head`` is one of the writes) in ONE SQLite
transaction, so a process killed at any instant restarts at the last block
it committed, never between two. :class:`LedgerStore` implements the
:class:`core.ledger.KV` protocol (``get``, ``scan``) over the state table.

The connection is shared between the trio thread and crypto worker threads,
serialized by a lock (SQLite itself is in serialized mode per connection).

State reads go through a bounded in-memory cache of ``key -> value or None``
(absent), filled by :meth:`LedgerStore.get` and kept exact by
:meth:`LedgerStore.commit`, which updates every cached key it writes after the
SQLite transaction committed (under the same lock): a read never sees a value
the database does not hold. Only this connection writes the state table.
:meth:`LedgerStore.get_many` (what :meth:`core.ledger.Ledger.apply` reads a
block's nonce entries with) answers from the cache where it can and reads the
rest in one ``IN`` query, without caching what it read: a fresh nonce is read
once, so caching it would only push useful entries out.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterable

from core import canonical
from core.ledger import Block, CommitResult
from core.protocol import codes

from agents.errors import AgentError

__all__ = ["BLOCKS_REPLY_BYTES", "LedgerStore", "StoreError", "prefix_bound", "within_bytes"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY,
    hash   BLOB NOT NULL,
    data   BLOB NOT NULL,
    marks  BLOB,
    root   BLOB
);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shares (grant_id TEXT PRIMARY KEY, idx INTEGER NOT NULL, sealed BLOB NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
"""


BLOCKS_REPLY_BYTES = 8 << 20
"""A blocks reply's byte cap (:meth:`LedgerStore.blocks`; the first block alone may pass it)."""
_IN_CHUNK = 500  # keys per IN (...) query (SQLite's default limit is 999 host parameters or more)


def within_bytes(blocks: Iterable[bytes], max_bytes: int = BLOCKS_REPLY_BYTES) -> list[bytes]:
    """The leading ``blocks`` that fit in ``max_bytes`` together (the first always: a
    block larger than the cap goes alone)."""
    out: list[bytes] = []
    total = 0
    for data in blocks:
        total += len(data)
        if out and total > max_bytes:
            break
        out.append(data)
    return out


class StoreError(AgentError, code=codes.LEDGER_STORE):
    """The database does not belong to this chain, or is inconsistent."""


def prefix_bound(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix``
    (None: no bound). SQLite compares TEXT as UTF-8 bytes, which orders like
    Python's code-point comparison."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF and not 0xD7FF <= last < 0xE000:
            return prefix[:-1] + chr(last + 1)
        prefix = prefix[:-1]
    return None


class LedgerStore:
    """A ledger database. ``synchronous``: "NORMAL" (safe against process
    crashes, the default for peers, which can re-fetch blocks) or "FULL"
    (also against power loss; the orderer's log, the source of blocks)."""

    def __init__(self, path: Path, *, synchronous: str = "NORMAL", readonly: bool = False,
                 cache_entries: int = 65536):
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        self.path = Path(path)
        self._lock = threading.Lock()
        # state cache (see the module docstring); a read-only handle does not cache,
        # since another connection writes the database it reads
        self._cache: OrderedDict[str, bytes | None] = OrderedDict()
        self._cache_max = 0 if readonly else cache_entries
        if readonly:
            if not self.path.exists():
                raise StoreError(f"no ledger database at {self.path}")
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False,
                                       isolation_level=None)
        else:
            # the ledger holds sealed key shares and every patient's metadata: owner-only
            # (0600 files in a 0700 directory; SQLite gives its -wal and -shm files the
            # database file's mode)
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.path.parent, 0o700)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            os.chmod(self.path, 0o600)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- genesis ----------------------------------------------------------

    def init_genesis(self, genesis: Block) -> None:
        """Store block 0 on first use; refuse a database of another chain."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'genesis'").fetchone()
            if row is not None:
                if row[0] != genesis.hash:
                    raise StoreError(f"{self.path} holds another chain (genesis {row[0].hex()[:16]}...)")
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT OR REPLACE INTO blocks (height, hash, data) VALUES (0, ?, ?)",
                                 (genesis.hash, genesis.to_bytes()))
                self._db.execute("INSERT INTO meta (key, value) VALUES ('genesis', ?)", (genesis.hash,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def genesis(self) -> bytes | None:
        return self.block(0)

    # -- KV protocol (core.ledger.KV) -------------------------------------

    def get(self, key: str) -> bytes | None:
        with self._lock:
            cache = self._cache
            if key in cache:
                cache.move_to_end(key)
                return cache[key]
            row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
            value = None if row is None else row[0]
            if self._cache_max:
                cache[key] = value
                if len(cache) > self._cache_max:
                    cache.popitem(last=False)
        return value

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        """``{key: get(key)}`` for every key, in one query per :data:`_IN_CHUNK` keys not cached."""
        out: dict[str, bytes | None] = {}
        with self._lock:
            cache = self._cache
            missing = []
            for key in keys:
                if key in cache:
                    out[key] = cache[key]
                elif key not in out:
                    missing.append(key)
            for i in range(0, len(missing), _IN_CHUNK):
                chunk = missing[i:i + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                found = dict(self._db.execute(f"SELECT key, value FROM state WHERE key IN ({marks})",
                                              chunk).fetchall())
                for key in chunk:
                    out[key] = found.get(key)
        return out

    def scan(self, prefix: str) -> list[tuple[str, bytes]]:
        bound = prefix_bound(prefix)
        with self._lock:
            if bound is None:
                rows = self._db.execute("SELECT key, value FROM state WHERE key >= ? ORDER BY key",
                                        (prefix,)).fetchall()
            else:
                rows = self._db.execute("SELECT key, value FROM state WHERE key >= ? AND key < ? ORDER BY key",
                                        (prefix, bound)).fetchall()
        return rows

    def scan_page(self, prefix: str, after: str | None, limit: int) -> list[tuple[str, bytes]]:
        """At most ``limit`` rows of ``prefix`` with keys greater than ``after`` (None: from
        the prefix's first), in key order (core.ledger.Ledger.audit_page)."""
        bound = prefix_bound(prefix)
        start = prefix if after is None or after < prefix else after
        op = ">=" if after is None or after < prefix else ">"
        with self._lock:
            if bound is None:
                return self._db.execute(f"SELECT key, value FROM state WHERE key {op} ? ORDER BY key LIMIT ?",
                                        (start, limit)).fetchall()
            return self._db.execute(f"SELECT key, value FROM state WHERE key {op} ? AND key < ? ORDER BY key LIMIT ?",
                                    (start, bound, limit)).fetchall()

    def state_items(self) -> list[tuple[str, bytes]]:
        return self.scan("")

    # -- blocks -----------------------------------------------------------

    def commit(self, block: Block, result: CommitResult, data: bytes | None = None) -> None:
        """Block + marks + state writes + head, atomically."""
        if result.height != block.height or result.block_hash != block.hash:
            raise StoreError("commit result does not belong to this block")
        data = block.to_bytes() if data is None else data
        puts = [(k, v) for k, v in result.writes.items() if v is not None]
        dels = [(k,) for k, v in result.writes.items() if v is None]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT INTO blocks (height, hash, data, marks, root) VALUES (?, ?, ?, ?, ?)",
                                 (block.height, block.hash, data, canonical.pack(list(result.marks)),
                                  result.state_root))
                if puts:
                    self._db.executemany("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", puts)
                if dels:
                    self._db.executemany("DELETE FROM state WHERE key = ?", dels)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            cache = self._cache
            if cache:
                for key, value in result.writes.items():
                    if key in cache:
                        cache[key] = value

    def append_block(self, block: Block, data: bytes | None = None) -> None:
        """The orderer's log: the block alone (no marks, no state)."""
        data = block.to_bytes() if data is None else data
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT INTO blocks (height, hash, data) VALUES (?, ?, ?)",
                                 (block.height, block.hash, data))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def last_height(self) -> int:
        """The highest stored block (0: only genesis, -1: empty)."""
        with self._lock:
            row = self._db.execute("SELECT MAX(height) FROM blocks").fetchone()
        return -1 if row[0] is None else row[0]

    def block(self, height: int) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM blocks WHERE height = ?", (height,)).fetchone()
        return None if row is None else row[0]

    def blocks(self, start: int, limit: int, max_bytes: int = BLOCKS_REPLY_BYTES) -> list[bytes]:
        """Blocks ``start``, ``start+1``, ... : at most ``limit``, and at most
        ``max_bytes`` in total unless the first alone is larger."""
        with self._lock:
            rows = self._db.execute("SELECT data FROM blocks WHERE height >= ? ORDER BY height LIMIT ?",
                                    (start, limit)).fetchall()
        return within_bytes((data for (data,) in rows), max_bytes)

    def block_rows(self, start: int = 0) -> Iterable[tuple[int, bytes, bytes, bytes | None, bytes | None]]:
        """(height, hash, data, marks, root) in height order, for verification."""
        with self._lock:
            rows = self._db.execute("SELECT height, hash, data, marks, root FROM blocks WHERE height >= ? "
                                    "ORDER BY height", (start,)).fetchall()
        return rows

    # -- sealed key shares --------------------------------------------------

    def put_share(self, grant_id: str, index: int, sealed: bytes) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO shares (grant_id, idx, sealed) VALUES (?, ?, ?)",
                             (grant_id, index, sealed))

    def share_rows(self) -> list[tuple[str, int, bytes]]:
        """Every stored share as (grant id, index, sealed), in grant id order (for verification)."""
        with self._lock:
            return self._db.execute("SELECT grant_id, idx, sealed FROM shares ORDER BY grant_id").fetchall()

    def share(self, grant_id: str) -> tuple[int, bytes] | None:
        with self._lock:
            row = self._db.execute("SELECT idx, sealed FROM shares WHERE grant_id = ?", (grant_id,)).fetchone()
        return None if row is None else (row[0], row[1])
