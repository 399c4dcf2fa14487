"""A peer's access log: the re-encryptions it served, published in signed batches.

Each share a peer serves (``peer.reencrypt``) must leave an ``access`` event in
the patient's audit trail. Instead of one signed ``access`` transaction per share
(one signature here, one verification and one apply at every peer), the peer
adds an entry ``{grant_id, request_id, record_id, doctor, time}`` to
:class:`AccessLog` (``time``: when it served the share, Unix ms), which signs
what it collected as ONE ``access_batch`` transaction (core.ledger: one audit
event per entry) and forwards it to the orderer:

* a batch is signed ``window`` seconds after its first entry arrived, or as soon
  as it holds :data:`core.ledger.MAX_ACCESS_ENTRIES` entries, and on stop
  (:meth:`AccessLog.flush`, which the agent calls with a short deadline);
* a signed batch the orderer did not take is forwarded again, the same bytes
  (the ledger commits it once: a copy is refused by its nonce), after a backoff
  of ``retry_min`` doubling up to ``retry_max`` seconds, for ``max_age``
  seconds (the agent passes half the consortium's timestamp skew, so a batch is
  never too old for its block); a batch older than that is dropped and counted
  (``dropped``) with an error in the log;
* at most ``max_pending`` entries wait (unsigned, or in batches not yet
  taken), and none for longer than ``stall_after`` seconds (default a quarter
  of ``max_age``): beyond either :attr:`AccessLog.full` is true and the peer
  refuses new re-encryptions (``busy``) rather than serve a share it might not
  log: a peer whose orderer does not take its batches (an overloaded or
  unreachable orderer) stops serving long before a batch is too old to commit;
* the agent forwards batches ahead of its clients' queued submissions
  (:meth:`agents.peer._forwarder.TxForwarder.forward` ``first=True``).

Entries of one batch are distinct (the ledger refuses a batch that repeats one):
two identical reads in the same millisecond get times one millisecond apart.
A batch's timestamp is at least its newest entry's time.

With a :class:`AccessJournal` (the peer's ``access-journal`` file), every entry
is appended to it before its share is served, and every signed batch when it
is signed; a restarted peer replays the journal (:meth:`AccessLog.recover`):
batches the ledger has not committed are forwarded again, the same bytes (a
copy of a committed one is refused by its nonce, so nothing is logged twice),
and entries no batch covered are signed anew. A process crash then loses no
served entry; a machine crash loses what the kernel had not written to disk,
at most the last :data:`SYNC_S` seconds (the journal is fdatasync'ed that
often when it changed). So the batching window can be long (:data:`WINDOW_S`):
fewer, fuller batches (docs/security.md, "Access audit").
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable

import trio

import bus
from core import canonical
from core.errors import DecodeError
from core.ledger import ACCESS_ENTRY_FIELDS, MAX_ACCESS_ENTRIES

from agents.runtime import run_crypto

__all__ = ["AccessJournal", "AccessLog", "SYNC_S", "WINDOW_S"]

log = logging.getLogger("agents.peer")

WINDOW_S = 0.25
"""Seconds a peer collects re-encryptions before it signs them as one batch (a batch
is signed sooner when it holds :data:`core.ledger.MAX_ACCESS_ENTRIES` entries). What
a crash loses does not depend on it: the journal keeps what is served."""
SYNC_S = 0.05
"""Seconds at most between a journal's appends and its fdatasync: what a machine crash
(power loss) can lose of what the peer served; a process crash loses nothing written."""
MAX_PENDING = 4096
JOURNAL_MAX_BYTES = 8 << 20
"""A journal larger than this is rewritten with only what is not yet taken by the orderer
(at most ``max_pending`` entries and their batches: well below it)."""
_LEN = struct.Struct(">I")
MAX_RECORD = 1 << 20  # a record longer than this is a torn or corrupt tail


class AccessJournal:
    """An append-only file of a peer's served entries and signed batches (the records
    ``["e", entry]`` and ``["b", n, raw]``: ``raw`` signs the first ``n`` entries no earlier
    batch covers), each a 4-byte length and canonical msgpack. :meth:`append` writes at
    once (the kernel has it: a process crash loses nothing); :meth:`sync` makes it durable
    (the peer calls it every :data:`SYNC_S` seconds while the journal changed). A torn last
    record (a crash mid-write) is ignored when read. :meth:`rewrite` replaces the file
    atomically (temporary file, fsync, rename); :meth:`rewrite_off_loop` does the same with
    the writing and the fsyncs on a worker thread, keeping what is appended meanwhile. Used
    from one event loop (and the sync thread of :meth:`syncing`)."""

    def __init__(self, path: Path, *, max_bytes: int = JOURNAL_MAX_BYTES,
                 run_sync: Callable[..., Awaitable[Any]] = trio.to_thread.run_sync):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._run_sync = run_sync  # rewrite_off_loop's worker thread (tests on a virtual clock: inline)
        self.dirty = False
        self._lock = threading.Lock()  # the file descriptor, against the sync thread (syncing())
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.size = os.fstat(self._fd).st_size
        self._during_rewrite: list[bytes] | None = None  # frames appended while rewrite_off_loop runs

    @property
    def rewriting(self) -> bool:
        """True while :meth:`rewrite_off_loop` runs."""
        return self._during_rewrite is not None

    @staticmethod
    def _frame(record: list[Any]) -> bytes:
        data = canonical.pack(record)
        return _LEN.pack(len(data)) + data

    def read(self) -> list[list[Any]]:
        """The records in the file, up to a torn or undecodable tail."""
        data = self.path.read_bytes()
        out, pos = [], 0
        while pos + _LEN.size <= len(data):
            (n,) = _LEN.unpack_from(data, pos)
            if n > MAX_RECORD or pos + _LEN.size + n > len(data):
                break
            try:
                record = canonical.unpack(data[pos + _LEN.size:pos + _LEN.size + n], max_size=MAX_RECORD,
                                          what="access journal")
            except DecodeError:
                break
            if not isinstance(record, list) or not record:
                break
            out.append(record)
            pos += _LEN.size + n
        if pos < len(data):
            log.warning("access journal %s: %d bytes of a torn record at its end ignored", self.path, len(data) - pos)
        return out

    def append(self, record: list[Any]) -> None:
        frame = self._frame(record)
        os.write(self._fd, frame)
        self.size += len(frame)
        self.dirty = True
        if self._during_rewrite is not None:  # (in the old file now, and in the new one once it is in place)
            self._during_rewrite.append(frame)

    def sync(self) -> None:
        with self._lock:
            self.dirty = False
            if self._fd >= 0:
                os.fdatasync(self._fd)

    def syncing(self, interval: float) -> "contextlib.AbstractContextManager[None]":
        """While in this context, a thread of its own syncs the journal every ``interval``
        seconds when it changed (no hop through the event loop: it only waits on the disk)."""
        stop = threading.Event()

        def syncer() -> None:
            while not stop.wait(interval):
                if self.dirty:  # (an append racing this is synced next round)
                    try:
                        self.sync()
                    except OSError as exc:
                        log.error("access journal %s: fdatasync failed: %s", self.path, exc)

        thread = threading.Thread(target=syncer, name="access-journal-sync", daemon=True)

        @contextlib.contextmanager
        def running():
            thread.start()
            try:
                yield
            finally:
                stop.set()
                thread.join()
        return running()

    def rewrite(self, records: Iterable[list[Any]]) -> None:
        """Replace the file by ``records``, atomically and durably."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = b"".join(self._frame(r) for r in records)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        with self._lock:
            os.close(self._fd)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            self.size = len(data)
            self.dirty = False

    async def rewrite_off_loop(self, records: Iterable[list[Any]]) -> None:
        """:meth:`rewrite`, with the file written and fsynced on a worker thread (the event loop
        only encodes ``records``, then renames). Records appended meanwhile go to the old file
        as usual and are copied to the new one before it takes the old one's place, so a crash
        at any point leaves a file holding every record: the old one (a superset: what the
        orderer took since is recognized at replay) or the new one. Not concurrent with another
        rewrite (:attr:`rewriting`)."""
        if self._during_rewrite is not None:
            raise RuntimeError("a journal rewrite is already running")
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = b"".join(self._frame(r) for r in records)

        def write() -> int:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            return fd

        self._during_rewrite = []
        try:
            fd = await self._run_sync(write)
            try:
                extra = b"".join(self._during_rewrite)
                if extra:
                    os.write(fd, extra)  # (made durable by the next sync, as any append)
                os.replace(tmp, self.path)
            except BaseException:
                os.close(fd)
                raise
        finally:
            self._during_rewrite = None
        with self._lock:
            os.close(self._fd)
            self._fd = fd
            self.size = len(data) + len(extra)
            self.dirty = bool(extra)
        await self._run_sync(self._sync_directory)

    def _sync_directory(self) -> None:
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _well_formed(entry: dict[str, Any]) -> bool:
    """A journaled entry the ledger would take in a batch (else one bad record, of a damaged
    file, would void the batch of every entry replayed with it): logged and skipped."""
    ok = (len(entry) == len(ACCESS_ENTRY_FIELDS) and all(type(entry.get(f)) is str for f in ACCESS_ENTRY_FIELDS[:4])
          and type(entry.get("time")) is int)
    if not ok:
        log.error("access journal: a damaged entry skipped")
    return ok


class AccessLog:
    """Collects served re-encryptions (:meth:`add`) and publishes them (:meth:`run`).

    ``sign(body, timestamp_ms) -> bytes``: the encoded, signed ``access_batch``
    transaction (run as ``run_sign`` says); ``forward(txs)``: hands encoded
    transactions to the orderer, raising :class:`bus.BusError` (a
    ``HandlerError``) when it did not take them; ``clock()``: Unix seconds;
    ``run_sign(sign, body, timestamp_ms)``: how ``sign`` is run (default in a
    crypto worker thread, :func:`agents.runtime.run_crypto`; the peer signs on its
    event loop as small crypto, ``PeerAgent._run_audit_sign``); ``journal``: where served
    entries and signed batches are kept for a restart (:class:`AccessJournal`; None: in
    memory only), replayed by :meth:`recover`."""

    def __init__(self, *, index: int, sign: Callable[[dict[str, Any], int], bytes],
                 forward: Callable[[list[bytes]], Awaitable[None]], clock: Callable[[], float],
                 window: float = WINDOW_S, max_entries: int = MAX_ACCESS_ENTRIES, max_pending: int = MAX_PENDING,
                 max_age: float = 60.0, stall_after: float | None = None, retry_min: float = 0.25,
                 retry_max: float = 4.0, run_sign: Callable[..., Awaitable[bytes]] = run_crypto,
                 journal: AccessJournal | None = None, sync_interval: float = SYNC_S):
        if not 0 < max_entries <= MAX_ACCESS_ENTRIES:
            raise ValueError(f"max_entries must be 1..{MAX_ACCESS_ENTRIES}")
        self.index = index
        self._sign = sign
        self._run_sign = run_sign
        self._forward = forward
        self._clock = clock
        self.window = window
        self.max_entries = max_entries
        self.max_pending = max_pending
        self.max_age = max_age
        self.stall_after = max_age / 4 if stall_after is None else stall_after
        if not 0 < self.stall_after < max_age:
            raise ValueError("stall_after must be positive and less than max_age")
        self.retry_min, self.retry_max = retry_min, retry_max
        self.journal = journal
        self.sync_interval = sync_interval
        self._entries: list[dict[str, Any]] = []
        self._keys: set[tuple] = set()  # the entries' (fields) in _entries, to keep them distinct
        # (signed batch, entries, signed at, its oldest entry added at: trio times, the entries)
        self._unsent: list[tuple[bytes, int, float, float, list[dict[str, Any]]]] = []
        self._unsent_entries = 0  # the sum of _unsent's entry counts (pending() is asked per re-encryption)
        self._first_at: float | None = None  # trio time the oldest entry not yet signed was added
        self._signing = 0  # entries of the chunk being signed (neither in _entries nor in _unsent)
        self._signing_chunk: list[dict[str, Any]] = []
        self._signing_since: float | None = None  # when that chunk's first entry was added
        self._wake = trio.Event()
        self._filled = trio.Event()
        # counters (node metrics, tests)
        self.logged = 0  # entries in batches the orderer took
        self.batches = 0  # batches the orderer took
        self.retries = 0  # forwards that failed (then retried)
        self.dropped = 0  # entries given up (a batch older than max_age, or unsent at stop)
        self.recovered = 0  # entries replayed from the journal at start (not committed yet)

    @property
    def pending(self) -> int:
        """Entries not yet taken by the orderer (unsigned, or in unsent batches)."""
        return len(self._entries) + self._signing + self._unsent_entries

    @property
    def oldest_age(self) -> float:
        """Seconds the oldest entry not yet taken by the orderer has waited (0 when none)."""
        times = [self._unsent[0][3]] if self._unsent else []
        if self._signing_since is not None:
            times.append(self._signing_since)
        if self._entries and self._first_at is not None:
            times.append(self._first_at)
        return trio.current_time() - min(times) if times else 0.0

    @property
    def full(self) -> bool:
        """True when no more re-encryptions should be served until the log drains: too many
        entries wait, or one has waited ``stall_after`` seconds (the orderer is not taking them)."""
        return self.pending >= self.max_pending or self.oldest_age > self.stall_after

    def add(self, *, grant_id: str, request_id: str, record_id: str, doctor: str) -> None:
        """Log one served share (now)."""
        entry = {"grant_id": grant_id, "request_id": request_id, "record_id": record_id, "doctor": doctor,
                 "time": int(self._clock() * 1000)}
        key = (grant_id, request_id, record_id, doctor, entry["time"])  # (ACCESS_ENTRY_FIELDS' order)
        while key in self._keys:  # the same read twice in one millisecond: one ms apart
            entry["time"] += 1
            key = key[:4] + (entry["time"],)
        if self.journal is not None:  # before the share leaves (a failed write refuses it): a crash loses nothing
            self.journal.append(["e", entry])
        self._keys.add(key)
        if not self._entries:
            self._first_at = trio.current_time()
        self._entries.append(entry)
        self._wake.set()
        if len(self._entries) >= self.max_entries:
            self._filled.set()

    async def run(self) -> None:
        """Sign and forward batches (and sync the journal) until cancelled."""
        with self.journal.syncing(self.sync_interval) if self.journal is not None else contextlib.nullcontext():
            await self._publish()

    async def _publish(self) -> None:
        delay = self.retry_min
        while True:
            if not self._entries and not self._unsent:
                self._wake = trio.Event()
                await self._wake.wait()
            if 0 < len(self._entries) < self.max_entries:
                self._filled = trio.Event()
                with trio.move_on_after(self.window):
                    await self._filled.wait()
            await self._sign_pending()
            if await self._send(self._forward):
                delay = self.retry_min
            else:
                await trio.sleep(delay)
                delay = min(delay * 2, self.retry_max)

    async def flush(self, forward: Callable[[list[bytes]], Awaitable[None]] | None = None) -> None:
        """Sign what is pending and forward every unsent batch once, through ``forward``
        (default the log's own): at stop, when the forwarding task no longer runs. What is
        still not taken is counted ``dropped`` (with a journal, kept there for the restart)."""
        await self._sign_pending()
        taken = await self._send(forward or self._forward)
        if self.journal is not None:  # what the orderer took leaves it; what it did not stays for the restart
            self._compact()
        if not taken:
            lost = self._unsent_entries
            self._unsent.clear()
            self._unsent_entries = 0
            self.dropped += lost
            if self.journal is not None:
                log.warning("access log: %d re-encryptions not taken before the peer stopped; the journal keeps "
                            "them for the restart", lost)
            else:
                log.error("access log: %d re-encryptions could not be logged before the peer stopped", lost)

    def recover(self, committed: Callable[[bytes], bool]) -> None:
        """Replay the journal into the log (at start, before :meth:`run`): its signed batches
        that ``committed(raw)`` says the ledger has not committed are forwarded again, the
        same bytes (the ledger refuses a copy of one it commits meanwhile: its nonce), and
        entries no batch covered are signed anew. Entries served longer ago than ``max_age``
        before the log's clock cannot be in a batch the ledger takes any more: dropped, counted
        and logged. Then the journal is rewritten with only what is replayed."""
        if self.journal is None:
            return
        records = self.journal.read()
        queue: list[dict[str, Any]] = []
        batches: list[tuple[bytes, list[dict[str, Any]]]] = []
        for record in records:
            if not isinstance(record, list) or not record:  # (a damaged record: no kind to look at)
                log.warning("access journal: a damaged record skipped")
            elif record[0] == "e" and len(record) == 2 and isinstance(record[1], dict):
                queue.append(record[1])
            elif record[0] == "b" and len(record) == 3 and isinstance(record[1], int) and \
                    isinstance(record[2], bytes):
                n = record[1]
                chunk, queue = queue[:n], queue[n:]
                batches.append((record[2], chunk))
            else:
                log.warning("access journal: an unknown record skipped")
        now = trio.current_time()
        for raw, chunk in batches:
            if chunk and not committed(raw):
                self._unsent.append((raw, len(chunk), now, now, chunk))
                self._unsent_entries += len(chunk)
                self.recovered += len(chunk)
        oldest_ms = int((self._clock() - self.max_age) * 1000)
        queue = [e for e in queue if _well_formed(e)]
        fresh = [e for e in queue if e["time"] >= oldest_ms]
        if len(fresh) < len(queue):
            self.dropped += len(queue) - len(fresh)
            log.error("access journal: %d re-encryptions served more than %.0f s before the restart could not be "
                      "logged any more", len(queue) - len(fresh), self.max_age)
        for entry in fresh:
            key = tuple(entry.get(name) for name in ACCESS_ENTRY_FIELDS)
            if key in self._keys:
                continue
            self._keys.add(key)
            if not self._entries:
                self._first_at = now
            self._entries.append(entry)
            self.recovered += 1
        if self.recovered:
            log.warning("access journal: %d re-encryptions not committed before the restart replayed", self.recovered)
        self._compact()

    def _live_records(self) -> list[list[Any]]:
        """The journal's records of what the orderer has not taken yet, in order."""
        out: list[list[Any]] = []
        for raw, n, _, _, chunk in self._unsent:
            out.extend(["e", e] for e in chunk)
            out.append(["b", n, raw])
        out.extend(["e", e] for e in self._signing_chunk)
        out.extend(["e", e] for e in self._entries)
        return out

    def _compact(self) -> None:
        assert self.journal is not None
        self.journal.rewrite(self._live_records())

    async def _sign_pending(self) -> None:
        while self._entries:
            chunk = self._entries[:self.max_entries]
            del self._entries[:len(chunk)]
            first_at = self._first_at if self._first_at is not None else trio.current_time()
            # the rest arrived after this chunk's first entry: an upper bound on their age
            self._first_at = first_at if self._entries else None
            self._keys = {(e["grant_id"], e["request_id"], e["record_id"], e["doctor"], e["time"])
                          for e in self._entries}
            timestamp = max(int(self._clock() * 1000), max(e["time"] for e in chunk))
            self._signing, self._signing_since, self._signing_chunk = len(chunk), first_at, chunk
            try:
                raw = await self._run_sign(self._sign, {"index": self.index, "entries": chunk}, timestamp)
            finally:
                self._signing, self._signing_since, self._signing_chunk = 0, None, []
            self._unsent.append((raw, len(chunk), trio.current_time(), first_at, chunk))
            self._unsent_entries += len(chunk)
            journal = self.journal
            if journal is not None:
                journal.append(["b", len(chunk), raw])
                if journal.size > journal.max_bytes and not journal.rewriting:
                    # (the writing and fsyncs on a thread: the peer keeps serving meanwhile)
                    await journal.rewrite_off_loop(self._live_records())

    async def _send(self, forward: Callable[[list[bytes]], Awaitable[None]]) -> bool:
        """Forward every unsent batch; False when the orderer did not take them."""
        now = trio.current_time()
        while self._unsent and now - self._unsent[0][2] > self.max_age:
            _, n, _, _, _ = self._unsent.pop(0)
            self._unsent_entries -= n
            self.dropped += n
            log.error("access log: a batch of %d re-encryptions was not taken for %.0f s; dropped", n, self.max_age)
        if not self._unsent:
            return True
        batch = list(self._unsent)
        try:
            await forward([raw for raw, _, _, _, _ in batch])
        except bus.BusError as exc:
            self.retries += 1
            log.warning("access log: forwarding %d batches failed (%s); retrying", len(batch), exc)
            return False
        del self._unsent[:len(batch)]
        sent = sum(n for _, n, _, _, _ in batch)
        self._unsent_entries -= sent
        self.batches += len(batch)
        self.logged += sent
        return True
