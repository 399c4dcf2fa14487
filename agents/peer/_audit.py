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

What a crash between serving and the batch's forward loses: the entries of
the last ``window`` seconds, and batches the orderer had not taken
(docs/security.md, "Access audit").
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

import trio

import bus
from core.ledger import MAX_ACCESS_ENTRIES

from agents.runtime import run_crypto

__all__ = ["AccessLog", "WINDOW_S"]

log = logging.getLogger("agents.peer")

WINDOW_S = 0.05
"""Seconds a peer collects re-encryptions before it signs them as one batch."""
MAX_PENDING = 4096


class AccessLog:
    """Collects served re-encryptions (:meth:`add`) and publishes them (:meth:`run`).

    ``sign(body, timestamp_ms) -> bytes``: the encoded, signed ``access_batch``
    transaction (run as ``run_sign`` says); ``forward(txs)``: hands encoded
    transactions to the orderer, raising :class:`bus.BusError` (a
    ``HandlerError``) when it did not take them; ``clock()``: Unix seconds;
    ``run_sign(sign, body, timestamp_ms)``: how ``sign`` is run (default in a
    crypto worker thread, :func:`agents.runtime.run_crypto`; the peer signs on its
    event loop as small crypto, ``PeerAgent._run_audit_sign``)."""

    def __init__(self, *, index: int, sign: Callable[[dict[str, Any], int], bytes],
                 forward: Callable[[list[bytes]], Awaitable[None]], clock: Callable[[], float],
                 window: float = WINDOW_S, max_entries: int = MAX_ACCESS_ENTRIES, max_pending: int = MAX_PENDING,
                 max_age: float = 60.0, stall_after: float | None = None, retry_min: float = 0.25,
                 retry_max: float = 4.0, run_sign: Callable[..., Awaitable[bytes]] = run_crypto):
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
        self._entries: list[dict[str, Any]] = []
        self._keys: set[tuple] = set()  # the entries' (fields) in _entries, to keep them distinct
        # (signed batch, entries, signed at, its oldest entry added at: trio times)
        self._unsent: list[tuple[bytes, int, float, float]] = []
        self._unsent_entries = 0  # the sum of _unsent's entry counts (pending() is asked per re-encryption)
        self._first_at: float | None = None  # trio time the oldest entry not yet signed was added
        self._signing = 0  # entries of the chunk being signed (neither in _entries nor in _unsent)
        self._signing_since: float | None = None  # when that chunk's first entry was added
        self._wake = trio.Event()
        self._filled = trio.Event()
        # counters (node metrics, tests)
        self.logged = 0  # entries in batches the orderer took
        self.batches = 0  # batches the orderer took
        self.retries = 0  # forwards that failed (then retried)
        self.dropped = 0  # entries given up (a batch older than max_age, or unsent at stop)

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
        key = (grant_id, request_id, record_id, doctor, entry["time"])
        while key in self._keys:  # the same read twice in one millisecond: one ms apart
            entry["time"] += 1
            key = key[:4] + (entry["time"],)
        self._keys.add(key)
        if not self._entries:
            self._first_at = trio.current_time()
        self._entries.append(entry)
        self._wake.set()
        if len(self._entries) >= self.max_entries:
            self._filled.set()

    async def run(self) -> None:
        """Sign and forward batches until cancelled."""
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
        still not taken is counted ``dropped``."""
        await self._sign_pending()
        if not await self._send(forward or self._forward):
            lost = self._unsent_entries
            self._unsent.clear()
            self._unsent_entries = 0
            self.dropped += lost
            log.error("access log: %d re-encryptions could not be logged before the peer stopped", lost)

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
            self._signing, self._signing_since = len(chunk), first_at
            try:
                raw = await self._run_sign(self._sign, {"index": self.index, "entries": chunk}, timestamp)
            finally:
                self._signing, self._signing_since = 0, None
            self._unsent.append((raw, len(chunk), trio.current_time(), first_at))
            self._unsent_entries += len(chunk)

    async def _send(self, forward: Callable[[list[bytes]], Awaitable[None]]) -> bool:
        """Forward every unsent batch; False when the orderer did not take them."""
        now = trio.current_time()
        while self._unsent and now - self._unsent[0][2] > self.max_age:
            _, n, _, _ = self._unsent.pop(0)
            self._unsent_entries -= n
            self.dropped += n
            log.error("access log: a batch of %d re-encryptions was not taken for %.0f s; dropped", n, self.max_age)
        if not self._unsent:
            return True
        batch = list(self._unsent)
        try:
            await forward([raw for raw, _, _, _ in batch])
        except bus.BusError as exc:
            self.retries += 1
            log.warning("access log: forwarding %d batches failed (%s); retrying", len(batch), exc)
            return False
        del self._unsent[:len(batch)]
        sent = sum(n for _, n, _, _ in batch)
        self._unsent_entries -= sent
        self.batches += len(batch)
        self.logged += sent
        return True
