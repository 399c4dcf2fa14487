"""The replicating storage client: puts to r nodes, verified reads with fallback, repair.

Placement: the nodes for a CID are its rendezvous ranking over the known
storage nodes (:func:`core.cid.choose_replicas`); nodes that failed recently
are moved to the end. A put streams the blob to the first ``replicas`` nodes of
that ranking in parallel, then, if some failed, to the next ones in order until
``replicas`` copies exist or the nodes run out; it succeeds when at least
``write_quorum`` nodes acknowledged a durable write (each node acknowledges
only after fsync + rename + directory fsync and after checking the CID).

With a ``background`` nursery (the agents pass theirs) a put returns as soon as
``write_quorum`` durable acknowledgements are in: the CID is never returned
before that, and the remaining copies (a slow or dead replica, the top-up to
``replicas``) finish in the background, each attempt bounded by ``timeout``,
at most ``max_background`` puts at a time (beyond that the stragglers of a put
that has its quorum are dropped; :meth:`repair` restores missing copies).
Without one a put waits for every attempt, as before. A put given the blob's
CID (the patient's sealer computes it while sealing) does not hash it again:
each node checks the bytes against the CID before it acknowledges. Failing nodes are
remembered in an :class:`agents.health.AgentHealth` (open for ``down_for``
seconds, then probed by one request): puts skip them while the quorum is
reachable without them, and reads try them last. Agents on one bus node share
one tracker, so a dead node is found once, not once per agent.

Reads fetch the blob's chunk digests first and check that they hash to the
CID, then fetch ranges and check every 256 KiB chunk against its digest before
yielding it, so nothing unverified ever reaches the caller, whatever a node
sends. A blob of one chunk (a raw CID, whose digest is the sha256 of the bytes:
a small record) takes one request without digests, its bytes checked against
the CID itself. The rendezvous ranking of the latest :data:`RANKINGS_KEPT` CIDs
is kept (forgotten when the nodes change). A node that fails, answers ``storage.corrupt`` or sends bad bytes is
skipped and the read resumes at the same offset on the next replica; what the
caller's sink raises ends the read as is. A read holds at most ``pipeline``
pieces of ``message_size`` (:attr:`ClientStatistics.pieces_held_max` counts
them); :meth:`get`, whose caller holds the whole blob anyway, reads pieces of
``bulk_message_size`` (2 MiB: fewer requests). After a :meth:`get` that met corrupt replicas, the good bytes are
written back to them (a node re-checks a copy it holds when it is put again,
so a copy that rotted under its verified-at-rest mark is replaced).
:mod:`agents.recordio` streams a record through the opener into a file.

:meth:`repair` lists every reachable node, and copies each blob to the nodes of
its top-``replicas`` placement that lack it (node to node through the client,
streaming, every chunk verified on the way and the CID re-checked by the
receiving node). :meth:`repair_loop` runs it periodically. A deployment's
storage nodes heal themselves without it (:mod:`agents.storage.reconcile`: each
node pulls the copies of committed blobs it lacks); :meth:`repair` remains for
standalone nodes without a ledger.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio

from bus import BusError, DeliveryError, Endpoint, RemoteError
from core import cid as cidmod
from core.errors import DecodeError
from core import protocol

from agents.health import AgentHealth
from agents.storage.errors import (
    STORAGE_ERRORS,
    BadRequest,
    BlobTooLarge,
    CidMismatch,
    CorruptBlob,
    NotFound,
    QuotaExceeded,
    StorageError,
    StorageUnavailable,
    from_code,
)

log = logging.getLogger("agents.storage.client")

CHUNK = cidmod.CHUNK_SIZE
_PROBE_TIMEOUT = 2.0  # is a node that failed lately back?
_THREAD_CHECK_BYTES = 4 << 20
"""Pieces larger than this are hashed in a worker thread (at most ~4 ms of sha256 on
the event loop otherwise). :meth:`StorageClient.get`'s 2 MiB pieces and a streamed
read's 1 MiB ones are hashed on the loop: the hop to a thread and back (waking a
worker, the GIL handed over twice, the result delivered through trio's wakeup
socket) cost about as much CPU as the hash it moved, ~0.2 ms of client CPU per MiB
got (``emrshare bench storage``, 32 MiB gets: 1.60-1.82 ms/MiB on the loop against
1.86-1.98 in a thread, A/B back to back on a shared 2-core machine); while the
loop hashes, the node's next piece waits in the socket buffers, so the
transfer still overlaps the hash."""
_THREAD_HASH_BYTES = 1 << 20
"""A put of a blob larger than this (without its CID) hashes it in a worker thread."""
MAX_RECEIPTS_KEPT = 1024
"""CIDs whose put receipts a client keeps (the latest puts)."""
BULK_MESSAGE_SIZE = 2 << 20
"""Piece size of :meth:`StorageClient.get`, whose caller holds the whole blob anyway:
half the requests of 1 MiB pieces, ~14 % less CPU per MiB (client and node) on
loopback, and under the 4 MiB a node's malloc serves from memory it keeps
(:func:`agents.runtime.keep_freed_buffers`; 4 MiB pieces cost the node fresh pages)."""
RANKINGS_KEPT = 1024
"""CIDs whose rendezvous ranking over the nodes a client keeps (the latest used;
forgotten when the nodes change): a ranking costs a sha256 per node."""
# errors caused by the blob itself: every replica would say the same
_CLIENT_FAULTS = (BlobTooLarge, CidMismatch, BadRequest)

ReadPiece = Callable[[int, int], Awaitable[bytes]]
R = TypeVar("R", bound=protocol.Message)


@dataclass(slots=True)
class RepairReport:
    blobs: int = 0
    copied: int = 0
    failed: int = 0
    reachable: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _PutProgress:
    acks: list[str] = field(default_factory=list)
    errors: dict[str, BaseException] = field(default_factory=dict)
    quorum: trio.Event = field(default_factory=trio.Event)  # quorum reached, or the attempt is over
    crash: BaseException | None = None


@dataclass(slots=True)
class ClientStatistics:
    puts: int = 0
    gets: int = 0
    fallbacks: int = 0
    corrupt_replicas: int = 0
    healed: int = 0
    pieces_held_max: int = 0
    """Most read pieces (of ``message_size``) one read held at once: fetched and not yet
    passed on, or being passed on (structural memory bound: at most ``pipeline``)."""


class StorageClient:
    """Replicated blob storage over the bus, through ``endpoint``."""

    def __init__(
        self,
        endpoint: Endpoint,
        nodes: Iterable[str],
        *,
        replicas: int = 3,
        write_quorum: int = 2,
        message_size: int = 1 << 20,
        timeout: float = 30.0,
        down_for: float = 5.0,
        pipeline: int = 2,
        health: AgentHealth | None = None,
        background: trio.Nursery | None = None,
        max_background: int = 64,
        node_keys: Callable[[str], bytes | None] | None = None,
        bulk_message_size: int = BULK_MESSAGE_SIZE,
    ):
        if not 1 <= write_quorum <= replicas:
            raise ValueError("need 1 <= write_quorum <= replicas")
        if message_size < CHUNK or message_size % CHUNK:
            raise ValueError(f"message_size must be a positive multiple of {CHUNK}")
        if bulk_message_size < CHUNK or bulk_message_size % CHUNK:
            raise ValueError(f"bulk_message_size must be a positive multiple of {CHUNK}")
        self.endpoint = endpoint
        self.node_keys = node_keys
        self._receipts: collections.OrderedDict[str, dict[str, bytes]] = collections.OrderedDict()
        self.replicas = replicas
        self.write_quorum = write_quorum
        self.message_size = message_size
        self.bulk_message_size = max(message_size, bulk_message_size)
        self.timeout = timeout
        self.down_for = down_for
        self.pipeline = max(1, pipeline)
        self.health = health if health is not None else AgentHealth(cooldown=down_for)
        self.max_background = max_background
        self._background = background
        self._in_background = 0
        self._nodes: list[str] = []
        self._rankings: collections.OrderedDict[str, list[str]] = collections.OrderedDict()
        self._stats = ClientStatistics()
        self.set_nodes(nodes)

    def statistics(self) -> ClientStatistics:
        """Counters since creation (a copy)."""
        return dataclasses.replace(self._stats)

    # -- membership -----------------------------------------------------------

    @property
    def nodes(self) -> list[str]:
        return list(self._nodes)

    def set_nodes(self, nodes: Iterable[str]) -> None:
        """Replace the set of storage nodes (a node added, lost or replaced)."""
        self._nodes = sorted(set(nodes))
        self._rankings.clear()

    def _mark_down(self, node: str) -> None:
        self.health.failure(node)

    def _ranking(self, cid: str) -> list[str]:
        """Every known node ranked for ``cid`` (:func:`core.cid.choose_replicas`; kept)."""
        ranking = self._rankings.get(cid)
        if ranking is None:
            ranking = cidmod.choose_replicas(cid, self._nodes, len(self._nodes))
            self._rankings[cid] = ranking
            if len(self._rankings) > RANKINGS_KEPT:
                self._rankings.popitem(last=False)
        return ranking

    def placement(self, cid: str) -> list[str]:
        """Every known node, in the order to try for ``cid`` (recently failed last)."""
        return self.health.order(self._ranking(cid), self._probe if self._background is not None else None)

    def _probe(self, node: str) -> None:
        """Find out in the background whether a node that failed lately is back."""
        assert self._background is not None
        try:
            self._background.start_soon(self._probe_node, node)
        except RuntimeError:  # closing
            pass

    async def _probe_node(self, node: str) -> None:
        try:
            await self.endpoint.request(node, protocol.StorageStat.kind, protocol.StorageStat().to_wire(),
                                        timeout=min(self.timeout, _PROBE_TIMEOUT))
        except RemoteError:
            self.health.success(node)  # it answered
        except DeliveryError:
            self.health.failure(node)
        except BusError:
            pass
        else:
            self.health.success(node)

    # -- one request ------------------------------------------------------------

    async def _call(self, node: str, request: protocol.Message, reply_type: type[R], *,
                    malformed: Callable[[str], Exception] = BusError) -> R:
        """``request`` to ``node``, its reply parsed as ``reply_type`` (else ``malformed(why)``)."""
        try:
            reply = await self.endpoint.request(node, request.kind, request.to_wire(), timeout=self.timeout)
        except RemoteError as exc:
            self.health.success(node)  # it answered
            if STORAGE_ERRORS.type_for(exc.code) is not None:
                raise from_code(exc.code, exc.message) from None
            raise
        except DeliveryError:
            self._mark_down(node)
            raise
        self.health.success(node)
        try:
            return reply_type.from_wire(reply)
        except DecodeError as exc:
            raise malformed(f"{node} answered {request.kind} with a malformed reply: {exc}") from None

    # -- put ----------------------------------------------------------------

    async def _put_one(self, node: str, cid: str, size: int, read: ReadPiece, pin: bool) -> None:
        if size <= self.message_size:
            reply: protocol.StoragePutReply | protocol.StoragePutCommitReply = await self._call(
                node, protocol.StoragePut(await read(0, size), cid, pin), protocol.StoragePutReply)
        else:
            begun = await self._call(node, protocol.StoragePutBegin(size, cid, pin), protocol.StoragePutBeginReply)
            session = begun.session
            try:
                for offset in range(0, size, self.message_size):
                    data = await read(offset, min(self.message_size, size - offset))
                    await self._call(node, protocol.StoragePutChunk(session, offset, data),
                                     protocol.StoragePutChunkReply)
                reply = await self._call(node, protocol.StoragePutCommit(session), protocol.StoragePutCommitReply)
            except BaseException:
                with trio.move_on_after(2) as scope:
                    scope.shield = True
                    try:
                        abort = protocol.StoragePutAbort(session)
                        await self.endpoint.request(node, abort.kind, abort.to_wire(), timeout=2)
                    except BusError:
                        pass
                raise
        if reply.cid != cid:
            raise BusError(f"{node} acknowledged {reply.cid!r}, not {cid}")
        if self.node_keys is not None:
            key = self.node_keys(node)
            if key is None or not protocol.verify_receipt(key, node, cid, size, self.endpoint.identity, reply.receipt):
                raise BusError(f"{node} acknowledged {cid} without a valid signed receipt")
        self._keep_receipt(cid, node, reply.receipt)

    def _keep_receipt(self, cid: str, node: str, receipt: bytes) -> None:
        held = self._receipts.pop(cid, {})
        held[node] = receipt
        self._receipts[cid] = held
        while len(self._receipts) > MAX_RECEIPTS_KEPT:
            self._receipts.popitem(last=False)

    def receipts(self, cid: str) -> dict[str, bytes]:
        """The signed receipts (node -> signature, :func:`core.protocol.verify_receipt`)
        of the nodes that acknowledged our latest puts of ``cid`` (the last
        :data:`MAX_RECEIPTS_KEPT` CIDs put): evidence that they held it."""
        return dict(self._receipts.get(cid, {}))

    async def _replicate_run(self, cid: str, size: int, read: ReadPiece, pin: bool, progress: "_PutProgress") -> None:
        """Put to the first ``replicas`` usable nodes in parallel, then top up in order;
        ``progress.quorum`` is set as soon as ``write_quorum`` nodes acknowledged."""
        use, avoid = self.health.split(self._ranking(cid),
                                       self._probe if self._background is not None else None)

        async def attempt(node: str) -> None:
            try:
                await self._put_one(node, cid, size, read, pin)
            except (StorageError, BusError) as exc:
                progress.errors[node] = exc
                log.info("put %s to %s failed: %s", cid, node, exc)
            else:
                progress.acks.append(node)
                if len(progress.acks) >= self.write_quorum:
                    progress.quorum.set()

        async with trio.open_nursery() as nursery:
            for node in use[: self.replicas]:
                nursery.start_soon(attempt, node)
        # top up to r copies from the next usable nodes; nodes that failed
        # recently are tried only when the quorum is otherwise out of reach
        for node in use[self.replicas :] + avoid:
            if len(progress.acks) >= self.replicas or (node in avoid and len(progress.acks) >= self.write_quorum):
                break
            if any(isinstance(e, _CLIENT_FAULTS) for e in progress.errors.values()):
                break
            await attempt(node)

    async def _replicate(self, cid: str, size: int, read: ReadPiece, pin: bool,
                         cleanup: Callable[[], None] | None = None) -> list[str]:
        """Replicate; return the nodes that acknowledged once ``write_quorum`` did (see
        the module docstring for what goes on in the background). ``cleanup`` runs
        once nothing reads the blob any more."""
        progress = _PutProgress()
        try:
            if self._background is not None and self._in_background < self.max_background:
                scope = trio.CancelScope()
                self._background.start_soon(self._replicate_background, cid, size, read, pin, progress, scope,
                                            cleanup)
                self._in_background += 1
                cleanup = None  # the background task owns it now
                try:
                    await progress.quorum.wait()
                finally:
                    if len(progress.acks) < self.write_quorum:
                        scope.cancel()  # failed or cancelled before the quorum: stop
            else:
                async with trio.open_nursery() as nursery:

                    async def run() -> None:
                        try:
                            await self._replicate_run(cid, size, read, pin, progress)
                        finally:
                            progress.quorum.set()

                    nursery.start_soon(run)
                    await progress.quorum.wait()
                    if self._background is not None and len(progress.acks) >= self.write_quorum:
                        # too many puts in the background already: drop the stragglers
                        nursery.cancel_scope.cancel()
        finally:
            if cleanup is not None:
                cleanup()
        acks = list(progress.acks)
        if len(acks) < self.write_quorum:
            if progress.crash is not None:
                raise progress.crash
            errors = dict(progress.errors)
            kinds = {type(e) for e in errors.values()}
            detail = "; ".join(f"{n}: {e}" for n, e in errors.items()) or "no storage nodes"
            if len(kinds) == 1 and issubclass(next(iter(kinds)), (*_CLIENT_FAULTS, QuotaExceeded)):
                raise next(iter(kinds))(f"put {cid} refused: {detail}")
            raise StorageUnavailable(
                f"put {cid}: {len(acks)} of the {self.write_quorum} required replicas acknowledged ({detail})",
                errors,
            )
        self._stats.puts += 1
        return acks

    async def _replicate_background(self, cid: str, size: int, read: ReadPiece, pin: bool,
                                    progress: "_PutProgress", scope: trio.CancelScope,
                                    cleanup: Callable[[], None] | None) -> None:
        try:
            with scope:
                await self._replicate_run(cid, size, read, pin, progress)
        except Exception as exc:  # a bug or an I/O error must not take the agent's nursery down
            log.warning("put %s failed: %s", cid, exc, exc_info=True)
            progress.crash = exc
        finally:
            self._in_background -= 1
            progress.quorum.set()
            if cleanup is not None:
                cleanup()
        if len(progress.acks) < self.replicas and not scope.cancelled_caught:
            log.info("put %s: %d of %d replicas (repair restores the rest)", cid, len(progress.acks), self.replicas)

    async def put(self, data: bytes, *, pin: bool = True, cid: str | None = None) -> str:
        """Store ``data`` on ``replicas`` nodes; return its CID once ``write_quorum`` have it durably.

        ``cid``: the blob's CID when the caller computed it already (the sealer does): the
        bytes are not hashed again here; every node checks them against it and refuses a
        mismatch (:class:`CidMismatch`). Otherwise a blob up to 1 MiB is hashed on the event
        loop (~1 ms of sha256 at most, less than a thread hop costs), a larger one in a thread."""
        data = bytes(data)
        if cid is not None:
            cid = str(cidmod.parse(cid))
        elif len(data) <= _THREAD_HASH_BYTES:
            cid = cidmod.compute(data)
        else:
            cid = await trio.to_thread.run_sync(cidmod.compute, data)
        await self._replicate(cid, len(data), _reader(data), pin)
        return cid

    async def put_file(self, path: str | Path, *, pin: bool = True,
                       progress: Callable[[int, int], None] | None = None, cid: str | None = None) -> str:
        """Like :meth:`put` for a file, in bounded memory (hashed first, then streamed).

        ``cid``: the file's CID when the caller computed it while writing the file
        (the sealer does): the file is not hashed again here; every node checks
        the bytes it receives against it anyway and refuses a mismatch.
        The file is opened once: it may be removed as soon as this returns, while
        copies still stream to the remaining replicas in the background.
        ``progress(done, size)`` is called as the furthest replica's upload advances."""
        path = Path(path)
        fd = await trio.to_thread.run_sync(os.open, path, os.O_RDONLY)
        try:

            def digest() -> tuple[str, int]:
                builder = cidmod.CidBuilder()
                offset = 0
                while piece := os.pread(fd, 4 << 20, offset):
                    builder.update(piece)
                    offset += len(piece)
                return builder.finish(), builder.size

            if cid is None:
                cid, size = await trio.to_thread.run_sync(digest)
            else:
                cid, size = str(cidmod.parse(cid)), os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            raise

        def read_sync(offset: int, n: int) -> bytes:
            data = os.pread(fd, n, offset)
            if len(data) != n:
                raise StorageError(f"{path} changed while being stored")
            return data

        furthest = 0

        async def read(offset: int, n: int) -> bytes:
            nonlocal furthest
            data = await trio.to_thread.run_sync(read_sync, offset, n)
            if progress is not None and offset + n > furthest:
                furthest = offset + n
                progress(furthest, size)
            return data

        await self._replicate(cid, size, read, pin, cleanup=lambda: os.close(fd))
        return cid

    # -- get ----------------------------------------------------------------

    @staticmethod
    def _check_leaves(node: str, cid: str, parsed: cidmod.Cid, size: Any, raw: Any) -> list[bytes]:
        if not isinstance(size, int) or not isinstance(raw, bytes) or len(raw) % 32:
            raise CorruptBlob(f"{node}: malformed leaves of {cid}")
        digests = [raw[i : i + 32] for i in range(0, len(raw), 32)]
        try:
            if cidmod.cid_from_leaves(digests, size) != parsed:
                raise CorruptBlob(f"{node}: chunk digests do not hash to {cid}")
        except DecodeError as exc:
            raise CorruptBlob(f"{node}: {exc}") from None
        return digests

    async def _leaves(self, node: str, cid: str, parsed: cidmod.Cid) -> tuple[int, list[bytes]]:
        reply = await self._call(node, protocol.StorageLeaves(cid), protocol.StorageLeavesReply, malformed=CorruptBlob)
        return reply.size, self._check_leaves(node, cid, parsed, reply.size, reply.digests)

    async def _check_data(self, node: str, cid: str, data: Any, offset: int, n: int, digests: list[bytes]) -> bytes:
        if not isinstance(data, (bytes, bytearray)) or len(data) != n:  # (a bytearray: the frame itself)
            raise CorruptBlob(f"{node}: short or malformed read of {cid}")

        def check() -> None:
            view = memoryview(data)
            first = offset // CHUNK
            for i in range(0, n, CHUNK):
                if hashlib.sha256(view[i : i + CHUNK]).digest() != digests[first + i // CHUNK]:
                    raise CorruptBlob(f"{node} sent bytes of {cid} that do not match chunk {first + i // CHUNK}")

        if n > _THREAD_CHECK_BYTES:
            await trio.to_thread.run_sync(check)
        else:
            check()
        return data

    async def _fetch(self, node: str, cid: str, offset: int, n: int, digests: list[bytes]) -> bytes:
        reply = await self._call(node, protocol.StorageGet(cid, offset, n), protocol.StorageGetReply,
                                 malformed=CorruptBlob)
        return await self._check_data(node, cid, reply.data, offset, n, digests)

    async def _single(self, node: str, cid: str, parsed: cidmod.Cid) -> bytes:
        """A blob of one chunk (a raw CID: its digest is the sha256 of the bytes) in one
        round trip without leaves, the bytes checked against the CID itself."""
        reply = await self._call(node, protocol.StorageGet(cid, 0, CHUNK), protocol.StorageGetReply,
                                 malformed=CorruptBlob)
        data = reply.data
        if reply.size != len(data) or hashlib.sha256(data).digest() != parsed.digest:
            raise CorruptBlob(f"{node} sent bytes that do not hash to {cid}")
        return data

    async def _first(self, node: str, cid: str, parsed: cidmod.Cid, step: int) -> tuple[int, list[bytes], bytes]:
        """Digests and the first piece in one round trip."""
        reply = await self._call(node, protocol.StorageGet(cid, 0, step, leaves=True),
                                 protocol.StorageGetReply, malformed=CorruptBlob)
        size = reply.size
        digests = self._check_leaves(node, cid, parsed, size, reply.digests)
        data = await self._check_data(node, cid, reply.data, 0, min(size, step), digests)
        return size, digests, data

    async def read_to(
        self, cid: str, sink: Callable[[bytes], Awaitable[None]], *, corrupt: list[str] | None = None,
        progress: Callable[[int, int], None] | None = None, message_size: int | None = None,
    ) -> int:
        """Pass the blob to ``await sink(piece)`` in verified pieces, in order, with
        fallback across replicas (resuming at the same offset); return its size. A
        piece is bytes, or a bytearray only the sink holds (a large one arrives as
        the received frame itself: :func:`bus.envelope.decode_reply_in_place`).
        ``progress(done, size)`` is called after each piece.

        Raises ``NotFound`` when no node has it, ``StorageUnavailable`` when holders
        failed; what ``sink`` raises is raised as is (no other replica is tried).
        Nodes found corrupt are appended to ``corrupt`` if given.
        Memory: at most ``pipeline`` pieces of ``message_size`` (fetched, waiting or
        being passed to ``sink``; a fetch starts only when a piece has been passed on);
        ``message_size`` overrides the client's for this read (a multiple of 256 KiB).
        """
        step = self.message_size if message_size is None else message_size
        if step < CHUNK or step % CHUNK or step > protocol.MAX_MESSAGE_DATA:
            raise ValueError(f"message_size must be a multiple of {CHUNK} up to {protocol.MAX_MESSAGE_DATA}")
        parsed = cidmod.parse(cid)
        cid = str(parsed)
        if parsed.version != 1:
            raise BadRequest("storage nodes are addressed by CIDv1")
        single = parsed.codec == cidmod.RAW and parsed.hash_code == cidmod.SHA2_256
        offset = 0
        size: int | None = None
        digests: list[bytes] = []
        failures: dict[str, BaseException] = {}

        async def deliver(piece: bytes) -> None:
            nonlocal offset
            try:
                await sink(piece)
            except Exception as exc:  # the caller's failure: no other replica would fix it
                raise _SinkFailed(exc) from exc
            offset += len(piece)
            if progress is not None and size is not None:
                progress(offset, size)

        for attempt_no, node in enumerate(self.placement(cid)):
            if attempt_no:
                self._stats.fallbacks += 1
            try:
                if size is None:
                    if single:
                        first = await self._single(node, cid, parsed)
                        size = len(first)
                    else:
                        size, digests, first = await self._first(node, cid, parsed, step)
                    if first:
                        await deliver(first)
                if offset < size:
                    await self._ranges(node, cid, offset, size, digests, deliver, step)
                self._stats.gets += 1
                return size
            except _SinkFailed as exc:
                raise exc.error from None
            except CorruptBlob as exc:
                failures[node] = exc
                self._stats.corrupt_replicas += 1
                if corrupt is not None:
                    corrupt.append(node)
                log.warning("replica %s of %s is corrupt: %s", node, cid, exc)
            except (StorageError, BusError) as exc:
                failures[node] = exc
        if failures and all(isinstance(e, NotFound) for e in failures.values()):
            raise NotFound(f"no storage node has {cid}")
        detail = "; ".join(f"{n}: {e}" for n, e in failures.items()) or "no storage nodes"
        raise StorageUnavailable(f"could not read {cid} from any replica ({detail})", failures)

    async def _ranges(
        self,
        node: str,
        cid: str,
        offset: int,
        size: int,
        digests: list[bytes],
        deliver: Callable[[bytes], Awaitable[None]],
        step: int,
    ) -> None:
        """Pieces [offset, size) of ``step`` bytes from one node, in order, ``pipeline``
        requests in flight.

        Each piece is checked here, in order, and the request ``pipeline`` pieces
        ahead goes out as soon as it was passed on, before the next piece is checked:
        the node prepares that piece while this side checks the one before it (a
        request left to a task started after the check would reach the node only
        once both pieces in hand were checked, and each side would wait for the
        other in turn)."""
        starts = list(range(offset, size, step))
        results: dict[int, Any] = {}
        ready = {s: trio.Event() for s in starts}
        held = 0
        asked: set[int] = set()

        async def fetch(start: int) -> None:
            nonlocal held
            asked.add(start)
            try:
                reply = await self._call(node, protocol.StorageGet(cid, start, min(step, size - start)),
                                         protocol.StorageGetReply, malformed=CorruptBlob)
                results[start] = reply.data
                held += 1
                self._stats.pieces_held_max = max(self._stats.pieces_held_max, held)
            except (StorageError, BusError) as exc:
                results[start] = exc
            finally:
                ready[start].set()

        error: BaseException | None = None
        async with trio.open_nursery() as nursery:

            async def ask(start: int) -> None:
                """Start the fetch of ``start`` and return once its request is sent (in
                the fetch's first step): the requests leave in order, each at once."""
                nursery.start_soon(fetch, start)
                while start not in asked:
                    await trio.lowlevel.checkpoint()

            following = iter(starts[self.pipeline :])
            try:
                for s in starts[: self.pipeline]:
                    await ask(s)
                for s in starts:
                    await ready[s].wait()
                    result = results.pop(s)
                    if isinstance(result, BaseException):
                        error = result
                        break
                    try:
                        await deliver(await self._check_data(node, cid, result, s, min(step, size - s), digests))
                    except (_SinkFailed, CorruptBlob) as exc:  # raised below, outside the nursery
                        error = exc
                        break
                    finally:
                        del result
                        held -= 1
                    nxt = next(following, None)
                    if nxt is not None:  # the next request leaves now, before the next piece is checked
                        await ask(nxt)
            finally:
                nursery.cancel_scope.cancel()
        if error is not None:
            raise error

    async def get(self, cid: str, *, progress: Callable[[int, int], None] | None = None) -> bytes:
        """The whole blob, verified; corrupt replicas met on the way are rewritten.
        ``progress(done, size)`` is called as verified pieces arrive. Pieces are
        ``bulk_message_size`` (:data:`BULK_MESSAGE_SIZE`): the blob is held whole anyway."""
        corrupt: list[str] = []
        pieces: list[bytes] = []

        async def collect(piece: bytes) -> None:
            pieces.append(piece)

        await self.read_to(cid, collect, corrupt=corrupt, progress=progress, message_size=self.bulk_message_size)
        data = b"".join(pieces)
        for node in corrupt:
            try:
                await self._put_one(node, str(cidmod.parse(cid)), len(data), _reader(data), True)
                self._stats.healed += 1
            except (StorageError, BusError) as exc:
                log.info("could not heal %s on %s: %s", cid, node, exc)
        return data

    # -- other operations -------------------------------------------------------

    async def locate(self, cid: str) -> list[str]:
        """The nodes that report having ``cid`` (unreachable nodes are skipped)."""
        found = []
        for node in self.placement(cid):
            try:
                if (await self._call(node, protocol.StorageHas(cid), protocol.StorageHasReply)).has:
                    found.append(node)
            except (StorageError, BusError):
                continue
        return found

    async def pin(self, cid: str) -> int:
        return await self._on_holders(protocol.StoragePin(cid), protocol.StoragePinReply)

    async def unpin(self, cid: str) -> int:
        return await self._on_holders(protocol.StorageUnpin(cid), protocol.StorageUnpinReply)

    async def _on_holders(self, request: protocol.StoragePin | protocol.StorageUnpin,
                          reply_type: type[protocol.Message]) -> int:
        done = 0
        for node in await self.locate(request.cid):
            try:
                await self._call(node, request, reply_type)
                done += 1
            except (StorageError, BusError):
                continue
        return done

    async def stat(self, node: str, cid: str | None = None) -> dict[str, Any]:
        return (await self._call(node, protocol.StorageStat(cid), protocol.StorageStatReply)).to_wire()

    async def list(self, node: str, *, page: int = 1000) -> list[tuple[str, int, bool]]:
        out: list[tuple[str, int, bool]] = []
        after: str | None = None
        while True:
            reply = await self._call(node, protocol.StorageList(after, page), protocol.StorageListReply)
            blobs = reply.blobs
            out.extend(blobs)
            if not reply.more or not blobs:
                return out
            after = blobs[-1][0]

    # -- repair ---------------------------------------------------------------

    async def copy(self, cid: str, source: str, target: str) -> None:
        """Stream ``cid`` from ``source`` to ``target`` (verified both ways)."""
        parsed = cidmod.parse(cid)
        size, digests = await self._leaves(source, cid, parsed)

        async def read(offset: int, n: int) -> bytes:
            pieces = []
            end = offset + n
            while offset < end:
                step = min(self.message_size, end - offset)
                pieces.append(await self._fetch(source, cid, offset, step, digests))
                offset += step
            return b"".join(pieces)

        await self._put_one(target, cid, size, read, True)

    async def repair(self) -> RepairReport:
        """Restore ``replicas`` copies of every blob found on the reachable nodes."""
        report = RepairReport()
        holders: dict[str, set[str]] = {}
        for node in self._nodes:
            try:
                blobs = await self.list(node)
            except (StorageError, BusError) as exc:
                report.unreachable.append(node)
                log.info("repair: %s unreachable: %s", node, exc)
                continue
            report.reachable.append(node)
            for cid, _, _ in blobs:
                holders.setdefault(cid, set()).add(node)
        report.blobs = len(holders)
        for cid, have in sorted(holders.items()):
            wanted = cidmod.choose_replicas(cid, report.reachable, self.replicas)
            for target in wanted:
                if target in have:
                    continue
                sources = [n for n in cidmod.choose_replicas(cid, report.reachable, len(report.reachable)) if n in have]
                for source in sources:
                    try:
                        await self.copy(cid, source, target)
                    except (StorageError, BusError) as exc:
                        log.info("repair: copy %s %s -> %s failed: %s", cid, source, target, exc)
                        continue
                    have.add(target)
                    report.copied += 1
                    break
                else:
                    report.failed += 1
        return report

    async def repair_loop(self, interval: float = 60.0) -> None:
        """Run :meth:`repair` every ``interval`` seconds, until cancelled."""
        while True:
            try:
                report = await self.repair()
                if report.copied or report.failed:
                    log.info("repair: %s", report)
            except (StorageError, BusError) as exc:
                log.warning("repair pass failed: %s", exc)
            await trio.sleep(interval)


class _SinkFailed(Exception):
    """What a read's sink raised, carried past the replica fallback to the caller."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def _reader(data: bytes) -> ReadPiece:
    """Pieces of ``data`` as views (no copy per piece and replica: the bus packs them)."""
    view = memoryview(data)

    async def read(offset: int, n: int) -> bytes:
        return view[offset : offset + n]  # type: ignore[return-value]  # a bytes-like view

    return read
