"""Storage that heals itself: each storage node reconciles its blobs with the ledger.

Every ``interval`` seconds a storage node's :class:`Reconciler`:

1. brings its light client (:class:`agents.consortium.CertificateFollower`, which
   follows the CIDs committed ``store`` transactions name) up to the orderer's
   head, remembering when it last confirmed it was there;
2. lists its own blobs and asks the :class:`ReconcilePlan` (sans-I/O: no clock,
   no I/O, time comes in as an argument) what to do;
3. performs the plan's actions, a few at a time, each bounded in time and bytes:

   * :class:`Pull`: a committed CID whose rendezvous placement
     (:func:`core.cid.choose_replicas` over the deployment's storage nodes, top
     ``replicas``; a node that has not answered this node's probe, one
     ``storage.stat`` a round, for ``gone_after`` seconds is left out, so the
     next node in the ranking takes its copies) includes this node, and which
     it lacks: fetch it from the
     other storage nodes in ranking order. The chunk digests are fetched first
     and must hash to the CID (so the size is known and bounded by the node's
     maximum blob size), every range is checked against its digest before it is
     written, and the local put re-checks the CID before the blob appears. A
     source that answers junk, stalls (each request has ``request_timeout``, a
     whole copy ``request_timeout`` plus a minimum rate) or lacks the blob is
     skipped for the next one; nothing partial stays. A CID with a put in
     progress on this node (the writer's own copy) is left alone while that put
     received bytes within the last ``writer_idle`` seconds (5, or the interval
     if shorter).
   * :class:`Verify`: a held committed blob that was on disk when this process
     started is re-hashed once (:meth:`BlobStore.is_intact`; at most
     ``max_verifies`` a round); a corrupt copy is quarantined and pulled again
     next round. Blobs that appear while it runs were installed by a put that
     checked their CID: they count as verified.
   * :class:`Collect`: a blob that no committed ``store`` transaction names is
     deleted (pinned or not) once it was seen unnamed for ``grace`` seconds *and*
     a later confirmation that the light client is at the orderer's head still
     did not name it. A put happens before its ``store`` transaction commits, so
     ``grace`` is the window a writer has between its put and its commit; a node
     that cannot reach the orderer collects nothing.

Who pulls: only the node that lacks a copy, from nodes it chooses; no node ever
pushes unrequested bytes to another (the trust this costs is in docs/security.md,
"Storage that heals itself"). Partial uploads are not the reconciler's: the
node aborts a put session idle past its ``session_timeout`` and deletes its
temporary file (:class:`~agents.storage.node.StorageNode`).

Rounds also run soon after the light client applies a block with ``store``
transactions (at most one per ``min_gap``), and after ``writer_idle`` when a
writer's put blocked a pull. After each round that changed something, and at
least once per interval, the node writes its view to ``status.json`` in its store's
directory (:data:`STATUS_FILE`): per committed CID its owner, record, placement
and whether this node holds a verified copy; the CIDs pending and being pulled;
the time of the round. ``emrshare storage status`` merges the nodes' files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from bus import BusError, Endpoint, RemoteError
from core import cid as cidmod
from core.lightclient import StoredRecord

from agents.keys import atomic_write
from agents.storage.blobstore import BlobStore
from agents.storage.client import StorageClient
from agents.storage.errors import BlobTooLarge, CorruptBlob, NotFound, StorageError

log = logging.getLogger("agents.storage.reconcile")

__all__ = ["Collect", "Pull", "ReconcilePlan", "Reconciler", "STATUS_FILE", "Verify",
           "DEFAULT_INTERVAL", "DEFAULT_GRACE", "DEFAULT_GONE_AFTER"]

STATUS_FILE = "status.json"
DEFAULT_INTERVAL = 30.0
"""Seconds between two reconcile rounds of a storage node."""
DEFAULT_GRACE = 900.0
"""Seconds a blob no committed transaction names is kept (a writer's window between put and commit)."""
MIN_RATE = 1 << 20  # bytes/s a source must sustain for a whole copy (beyond one request timeout)
WRITER_IDLE = 5.0  # seconds without bytes after which a writer's put no longer blocks a pull
MIN_GAP = 1.0  # seconds between the starts of two rounds woken by commits
DEFAULT_GONE_AFTER = 600.0
"""Seconds a storage node stays unreachable before the others take its copies."""


@dataclass(frozen=True, slots=True)
class Pull:
    """Fetch ``cid`` (committed by ``record``) from ``sources``, in order."""

    cid: str
    record: StoredRecord
    sources: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Verify:
    """Re-hash the held copy of ``cid``."""

    cid: str


@dataclass(frozen=True, slots=True)
class Collect:
    """Delete ``cid``: no committed transaction names it."""

    cid: str


Action = Pull | Verify | Collect


@dataclass(slots=True)
class _Counters:
    rounds: int = 0
    pulled: int = 0
    pull_failures: int = 0
    collected: int = 0
    quarantined: int = 0


class ReconcilePlan:
    """What one storage node must do to match the ledger (see the module docstring).

    ``me`` is this node, ``nodes`` every storage node of the deployment,
    ``replicas`` the copies each committed CID must have. Feed it a round's
    view with :meth:`round` and the outcome of each action with
    :meth:`pulled`, :meth:`verified`, :meth:`collected`."""

    def __init__(self, me: str, nodes: Iterable[str], replicas: int, *, grace: float = DEFAULT_GRACE,
                 max_pulls: int = 4, max_verifies: int = 32):
        self.me = me
        self.nodes = sorted(set(nodes))
        if me not in self.nodes:
            raise ValueError(f"{me!r} is not one of the storage nodes")
        self.replicas = replicas
        self.grace = grace
        self.max_pulls = max_pulls
        self.max_verifies = max_verifies
        self.verified: set[str] = set()  # held copies known good (see round())
        self.unnamed_since: dict[str, float] = {}  # held blobs no committed transaction names: first seen
        self.active: set[str] = set()  # pulls under way
        self.pending: list[str] = []  # committed CIDs placed here and missing, not being pulled
        self.deferred: list[str] = []  # ... left alone this round: a writer's put of it is under way here
        self.held: set[str] = set()
        self._rounds_seen = False
        self._placements: dict[str, list[str]] = {}
        self.gone: frozenset[str] = frozenset()
        self.counters = _Counters()
        self.last_round: float | None = None

    def placement(self, cid: str) -> list[str]:
        """The ``replicas`` nodes that hold ``cid``, best first, among the nodes not gone."""
        placed = self._placements.get(cid)
        if placed is None:
            alive = [n for n in self.nodes if n not in self.gone]
            placed = self._placements[cid] = cidmod.choose_replicas(cid, alive, self.replicas)
        return placed

    def round(self, now: float, committed: Mapping[str, StoredRecord], held: Iterable[str], *,
              synced_at: float | None, busy: Callable[[str], bool] = lambda cid: False,
              gone: Iterable[str] = ()) -> list[Action]:
        """This round's actions. ``committed``: every CID committed store transactions
        name; ``held``: the blobs on this node; ``synced_at``: when the light client
        last confirmed it was at the orderer's head (None: never), which must be
        ``committed``'s time or earlier; ``busy(cid)``: a put of ``cid`` is in progress here;
        ``gone``: storage nodes unreachable for long, left out of the placement (the
        next ones in the ranking take their copies; they keep theirs when back)."""
        gone = frozenset(gone) - {self.me}
        if gone != self.gone:
            self.gone = gone
            self._placements.clear()
        self.counters.rounds += 1
        self.last_round = now
        held = set(held)
        if self._rounds_seen:
            # blobs that appeared since the last round were installed by a put while this
            # process ran, which checked them against their CID: known good. What was on
            # disk at the first round is re-hashed once (Verify).
            self.verified |= held - self.held
        self._rounds_seen = True
        self.held = held
        self.verified &= held
        actions: list[Action] = []
        missing = []
        self.deferred = []
        verifies = 0
        for cid in sorted(committed):
            if cid in held:
                if cid not in self.verified and verifies < self.max_verifies:  # the rest next round
                    actions.append(Verify(cid))
                    verifies += 1
            elif self.me in self.placement(cid) and cid not in self.active:
                if busy(cid):
                    self.deferred.append(cid)
                else:
                    missing.append(cid)
        room = max(0, self.max_pulls - len(self.active))
        for cid in missing[:room]:
            ranking = cidmod.choose_replicas(cid, self.nodes, len(self.nodes))
            actions.append(Pull(cid, committed[cid], tuple(n for n in ranking if n != self.me)))
            self.active.add(cid)
        self.pending = missing[room:]
        unnamed = held - set(committed)
        self.unnamed_since = {cid: self.unnamed_since.get(cid, now) for cid in unnamed}
        for cid, since in sorted(self.unnamed_since.items()):
            # unnamed for the whole grace period, confirmed by a sync after it ended
            if synced_at is not None and synced_at >= since + self.grace:
                actions.append(Collect(cid))
        return actions

    def pulled(self, cid: str, ok: bool) -> None:
        self.active.discard(cid)
        if ok:
            self.verified.add(cid)
            self.held.add(cid)
            self.counters.pulled += 1
        else:
            self.counters.pull_failures += 1

    def verified_copy(self, cid: str, ok: bool) -> None:
        """The outcome of a :class:`Verify` (False: quarantined, pulled again)."""
        if ok:
            self.verified.add(cid)
        else:
            self.verified.discard(cid)
            self.held.discard(cid)
            self.counters.quarantined += 1

    def collected(self, cid: str) -> None:
        self.unnamed_since.pop(cid, None)
        self.held.discard(cid)
        self.counters.collected += 1

    def status(self, committed: Mapping[str, StoredRecord]) -> dict[str, Any]:
        """This node's view, as ``status.json`` holds it (times added by the driver)."""
        records = []
        for cid, rec in sorted(committed.items()):
            records.append({"cid": cid, "owner": rec.patient, "record_id": rec.record_id, "size": rec.size,
                            "height": rec.height, "placement": self.placement(cid),
                            "held": cid in self.held, "verified": cid in self.verified})
        return {"node": self.me, "replicas": self.replicas, "records": records,
                "pending": [*self.pending, *self.deferred], "active": sorted(self.active),
                "gone": sorted(self.gone),
                "unnamed": sorted(self.unnamed_since), **dataclasses.asdict(self.counters)}


class Reconciler:
    """The trio loop around a :class:`ReconcilePlan` for one storage node.

    ``follower`` gives the committed CIDs (``cids()``) and confirms it is at the
    orderer's head (``catch_up(timeout=...)`` -> bool), as
    :class:`agents.consortium.CertificateFollower` does. ``node`` (the
    :class:`~agents.storage.node.StorageNode`, optional) tells which CIDs have a
    put in progress and how many partial uploads are open. Alongside the rounds
    it probes the other storage nodes once an interval (``storage.stat``); one
    silent for ``gone_after`` seconds leaves the placement. ``request_timeout``
    bounds every request to another node."""

    def __init__(self, endpoint: Endpoint, store: BlobStore, follower: Any, nodes: Iterable[str], *,
                 replicas: int, interval: float = DEFAULT_INTERVAL, grace: float = DEFAULT_GRACE,
                 request_timeout: float = 10.0, node: Any = None, max_pulls: int = 2,
                 status_path: Path | None = None, wall_clock: Callable[[], float] = time.time,
                 gone_after: float = DEFAULT_GONE_AFTER):
        self.endpoint = endpoint
        self.store = store
        self.follower = follower
        self.interval = interval
        self.request_timeout = request_timeout
        self.node = node
        self.plan = ReconcilePlan(endpoint.identity, nodes, replicas, grace=grace, max_pulls=max_pulls)
        others = [n for n in self.plan.nodes if n != endpoint.identity]
        self.client = StorageClient(endpoint, others, replicas=max(1, len(others)), write_quorum=1,
                                    timeout=request_timeout)
        self.status_path = status_path if status_path is not None else Path(store.root) / STATUS_FILE
        self.synced_at: float | None = None
        self.gone_after = gone_after
        self.last_seen: dict[str, float] = {}  # other storage nodes: when they last answered
        self.wall_clock = wall_clock
        self._limiter = trio.CapacityLimiter(max_pulls)
        self._files = trio.CapacityLimiter(2)
        # a writer's put of a CID on this node blocks a pull while it received bytes this recently
        self.writer_idle = min(interval, WRITER_IDLE)
        self.min_gap = min(interval, MIN_GAP)
        self._wake = trio.Event()
        self._status_written: float | None = None
        self._status_shape: tuple[int, ...] = ()
        if hasattr(follower, "on_records"):  # new store transactions committed: a round soon
            follower.on_records.append(lambda records: self.wake())

    def wake(self) -> None:
        """Run the next round soon (at most one round per ``min_gap`` seconds)."""
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Reconcile every ``interval`` seconds, and soon after new store transactions commit
        (or after ``writer_idle`` while a writer's put blocks a pull), until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._probe_loop)
            task_status.started()
            await self._loop()

    async def _probe_loop(self) -> None:
        while True:
            try:
                await self._probe()
            except Exception:  # a bug here must not take the node's serving down with it
                log.exception("probing the other storage nodes failed")
            await trio.sleep(self.interval)

    async def _loop(self) -> None:
        while True:
            started = trio.current_time()
            try:
                await self.reconcile()
            except (StorageError, BusError, OSError) as exc:
                log.warning("reconcile round failed: %s", exc)
            except Exception:  # a bug here must not take the node's serving down with it
                log.exception("reconcile round failed")
            delay = self.writer_idle if self.plan.deferred else self.interval
            with trio.move_on_after(delay):
                await self._wake.wait()
            self._wake = trio.Event()
            await trio.sleep_until(started + self.min_gap)  # a burst of commits: one round

    async def _thread(self, fn, *args):
        return await trio.to_thread.run_sync(lambda: fn(*args), limiter=self._files)

    async def reconcile(self) -> None:
        """One round: sync, list, act, write the status."""
        try:
            if await self.follower.catch_up(timeout=self.request_timeout):
                self.synced_at = trio.current_time()
        except BusError as exc:
            log.info("reconcile: the orderer did not answer (%s); collecting nothing this round", exc)
        committed = self.follower.cids()
        held = await self._thread(self.store.cids)
        if self.node is not None:  # a writer's put under way: left alone while it makes progress
            def busy(cid: str) -> bool:
                return self.node.uploading(cid, within=self.writer_idle)
        else:
            def busy(cid: str) -> bool:
                return False
        now = trio.current_time()
        gone = [n for n, seen in self.last_seen.items() if now - seen > self.gone_after]
        actions = self.plan.round(now, committed, held, synced_at=self.synced_at, busy=busy, gone=gone)
        stale = self._status_written is None or now - self._status_written >= self.interval
        if actions or stale or self._status_changed(committed):  # else once per interval
            await self._write_status(committed)
        async with trio.open_nursery() as nursery:
            for action in actions:
                if isinstance(action, Pull):
                    nursery.start_soon(self._pull, action)
                elif isinstance(action, Verify):
                    nursery.start_soon(self._verify, action.cid)
                else:
                    await self._collect(action.cid)
        if actions:
            await self._write_status(committed)

    async def _probe(self) -> None:
        """Ask every other storage node for its statistics (all at once, each bounded by
        the request timeout); remember when each last answered."""
        now = trio.current_time()

        async def probe(node: str) -> None:
            self.last_seen.setdefault(node, now)  # unreachable since we started counts from now
            try:
                await self.client.stat(node)
            except BusError as exc:
                if not isinstance(exc, RemoteError):  # an error reply is an answer
                    return
            except StorageError:
                pass
            self.last_seen[node] = trio.current_time()

        async with trio.open_nursery() as nursery:
            for node in self.client.nodes:
                nursery.start_soon(probe, node)

    def _status_changed(self, committed: Mapping[str, StoredRecord]) -> bool:
        plan = self.plan
        return self._status_shape != (len(committed), len(plan.held), len(plan.verified), len(plan.unnamed_since))

    async def _write_status(self, committed: Mapping[str, StoredRecord]) -> None:
        self._status_written = trio.current_time()
        plan = self.plan
        self._status_shape = (len(committed), len(plan.held), len(plan.verified), len(plan.unnamed_since))
        status = self.plan.status(committed)
        status.update(time=self.wall_clock(), interval=self.interval, grace=self.plan.grace,
                      height=getattr(self.follower, "height", None),
                      partial_uploads=self.node.partial_uploads() if self.node is not None else 0)

        def write() -> None:  # encoding and fsync off the event loop
            atomic_write(self.status_path, json.dumps(status, sort_keys=True).encode(), mode=0o644)

        try:
            await self._thread(write)
        except OSError as exc:  # a wiped directory: the next round writes it again
            log.info("reconcile: could not write %s: %s", self.status_path, exc)

    async def _verify(self, cid: str) -> None:
        try:
            intact = await self._thread(self.store.is_intact, cid)
        except NotFound:
            self.plan.held.discard(cid)
            return
        if not intact:
            log.warning("reconcile: blob %s is corrupt; quarantined, pulled again next round", cid)
            await self._thread(self.store.quarantine, cid)
        self.plan.verified_copy(cid, intact)

    async def _collect(self, cid: str) -> None:
        if self.node is not None and self.node.uploading(cid):
            return
        if await self._thread(lambda: self.store.delete(cid, force=True)):
            log.info("reconcile: collected %s (no committed transaction names it)", cid)
        self.plan.collected(cid)

    async def _pull(self, action: Pull) -> None:
        async with self._limiter:
            for source in action.sources:
                try:
                    await self.pull_from(source, action.cid, action.record)
                except (StorageError, BusError, trio.TooSlowError, OSError) as exc:
                    level = logging.WARNING if isinstance(exc, (CorruptBlob, trio.TooSlowError)) else logging.INFO
                    log.log(level, "reconcile: pull %s from %s failed: %s", action.cid, source, exc)
                    continue
                except Exception:
                    log.exception("reconcile: pull %s from %s failed", action.cid, source)
                    continue
                log.info("reconcile: pulled %s from %s", action.cid, source)
                self.plan.pulled(action.cid, True)
                return
            self.plan.pulled(action.cid, False)

    async def pull_from(self, source: str, cid: str, record: StoredRecord) -> None:
        """Copy ``cid`` from ``source`` into the local store, verified; raises on any failure
        (nothing partial stays)."""
        parsed = cidmod.parse(cid)
        cid = str(parsed)
        with trio.fail_after(self.request_timeout):
            size, digests = await self.client._leaves(source, cid, parsed)
        if size > self.store.max_blob:
            raise BlobTooLarge(f"{source} says {cid} has {size} bytes, above this node's maximum")
        step = self.client.message_size
        with trio.fail_after(self.request_timeout + size / MIN_RATE):
            session = await self._thread(self.store.begin_put, cid, size)
            if self.node is not None:
                self.node.pulls.add(session.path)  # not a partial upload to expire
            try:
                for offset in range(0, size, step):
                    data = await self.client._fetch(source, cid, offset, min(step, size - offset), digests)
                    await self._thread(session.write, data)
                await self._thread(lambda: session.commit(pin=True, owner=record.patient))
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self._thread(session.abort)
                raise
            finally:
                if self.node is not None:
                    self.node.pulls.discard(session.path)
