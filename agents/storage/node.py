"""The storage node agent: a :class:`BlobStore` served over the bus.

Its kinds are typed by :mod:`core.protocol` (``storage.*``: :class:`~core.protocol.StoragePut`
and the others, listed with their bodies in docs/protocol.md, "Storage nodes").
A body that does not decode is answered ``storage.bad-request``; other errors
travel as ``{"code": "storage.*", "message"}`` error replies (see :mod:`.errors`).

A put session belongs to the agent that began it, must receive its chunks in
order (``offset`` = bytes written so far) and is aborted, releasing its quota
reservation, when idle longer than ``session_timeout``. Every ``get`` re-hashes
the chunks it returns; a corrupt blob is answered with ``storage.corrupt``,
moved to quarantine (so ``has`` turns False) and left for a replica to replace.
File work runs in worker threads, a few at a time.

With a ``classifier`` (:class:`agents.admission.Classifier`: the consortium's
node ids and the light client's certificates), each kind admits only the
sender classes core.protocol.KINDS names (users put, get and pin; only
consortium nodes list), refusing others with ``forbidden`` before any work;
without one (a standalone node with a file directory) every sender its
directory knows is served.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

import trio

from bus import Endpoint, Message
from core.errors import DecodeError
from core.protocol import (
    MAX_MESSAGE_DATA,
    BlobStatistics,
    NodeStatistics,
    StorageGet,
    StorageGetReply,
    StorageHas,
    StorageHasReply,
    StorageLeaves,
    StorageLeavesReply,
    StorageList,
    StorageListReply,
    StoragePin,
    StoragePinReply,
    StoragePut,
    StoragePutAbort,
    StoragePutAbortReply,
    StoragePutBegin,
    StoragePutBeginReply,
    StoragePutChunk,
    StoragePutChunkReply,
    StoragePutCommit,
    StoragePutCommitReply,
    StoragePutReply,
    StorageStat,
    StorageStatReply,
    StorageUnpin,
    StorageUnpinReply,
)

from agents.admission import Classifier, Refusals
from agents.handlers import serve
from agents.storage.blobstore import BlobStore, PutSession, canonical_cid
from agents.storage.errors import BadRequest, CorruptBlob, StorageError

log = logging.getLogger("agents.storage")

__all__ = ["StorageNode", "MAX_MESSAGE_DATA"]


def _bad_request(exc: DecodeError) -> BadRequest:
    return BadRequest(str(exc))


@dataclass(slots=True)
class _Session:
    owner: str
    put: PutSession
    pin: bool
    deadline: float
    lock: trio.Lock = field(default_factory=trio.Lock)


class StorageNode:
    """Serve ``store`` on ``endpoint``. Call :meth:`run` in a nursery (reaps idle puts)."""

    def __init__(
        self,
        endpoint: Endpoint,
        store: BlobStore,
        *,
        threads: int = 4,
        session_timeout: float = 120.0,
        max_sessions: int = 256,
        classifier: Classifier | None = None,
    ):
        self.endpoint = endpoint
        self.store = store
        self._limiter = trio.CapacityLimiter(threads)
        self._session_timeout = session_timeout
        self._max_sessions = max_sessions
        self._sessions: dict[bytes, _Session] = {}
        self.corruptions = 0
        self.refusals = Refusals(endpoint.identity)
        serve(endpoint, self.handlers(), on_decode_error=_bad_request, classifier=classifier,
              refusals=self.refusals)

    def handlers(self) -> dict[type, Any]:
        """The kinds this agent serves: request type -> typed handler."""
        return {
            StoragePut: self._put,
            StoragePutBegin: self._begin,
            StoragePutChunk: self._chunk,
            StoragePutCommit: self._commit,
            StoragePutAbort: self._abort,
            StorageGet: self._read,
            StorageLeaves: self._leaves,
            StorageHas: self._has,
            StoragePin: self._pin,
            StorageUnpin: self._unpin,
            StorageStat: self._stat,
            StorageList: self._list,
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Abort put sessions idle past the timeout, until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(min(5.0, self._session_timeout / 2))
            now = trio.current_time()
            for sid, s in list(self._sessions.items()):
                if s.deadline < now and not s.lock.locked():
                    del self._sessions[sid]
                    await self._thread(s.put.abort)
                    log.info("aborted idle put session from %s", s.owner)

    async def _thread(self, fn, *args, **kwargs):
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self._limiter)

    # -- puts --------------------------------------------------------------

    async def _put(self, msg: Message, request: StoragePut) -> StoragePutReply:
        return StoragePutReply(await self._thread(self.store.put, request.data, request.cid, pin=request.pin))

    async def _begin(self, msg: Message, request: StoragePutBegin) -> StoragePutBeginReply:
        if len(self._sessions) >= self._max_sessions:
            raise StorageError("too many puts in progress on this node; retry later")
        put = await self._thread(self.store.begin_put, request.cid, request.size)
        sid = secrets.token_bytes(16)
        self._sessions[sid] = _Session(msg.sender, put, request.pin, trio.current_time() + self._session_timeout)
        return StoragePutBeginReply(sid)

    def _session(self, msg: Message, sid: bytes) -> _Session:
        session = self._sessions.get(sid)
        if session is None or session.owner != msg.sender:
            raise BadRequest("unknown or expired put session")
        session.deadline = trio.current_time() + self._session_timeout
        return session

    async def _chunk(self, msg: Message, request: StoragePutChunk) -> StoragePutChunkReply:
        sid = request.session
        session = self._session(msg, sid)
        async with session.lock:
            if request.offset != session.put.written:
                raise BadRequest(f"chunk at offset {request.offset}, expected {session.put.written}")
            try:
                await self._thread(session.put.write, request.data)
            except StorageError:
                self._sessions.pop(sid, None)  # the session aborted itself
                raise
            return StoragePutChunkReply(session.put.written)

    async def _commit(self, msg: Message, request: StoragePutCommit) -> StoragePutCommitReply:
        session = self._session(msg, request.session)
        async with session.lock:
            self._sessions.pop(request.session, None)
            return StoragePutCommitReply(await self._thread(session.put.commit, pin=session.pin))

    async def _abort(self, msg: Message, request: StoragePutAbort) -> StoragePutAbortReply:
        session = self._session(msg, request.session)
        async with session.lock:
            self._sessions.pop(request.session, None)
            await self._thread(session.put.abort)
        return StoragePutAbortReply()

    # -- reads -------------------------------------------------------------

    async def _guard_corrupt(self, cid: str, fn, *args):
        try:
            return await self._thread(fn, *args)
        except CorruptBlob:
            self.corruptions += 1
            log.warning("corrupt blob %s detected on read; quarantined, not served", cid)
            await self._thread(self.store.quarantine, cid)
            raise

    async def _read(self, msg: Message, request: StorageGet) -> StorageGetReply:
        cid = canonical_cid(request.cid)
        offset, length = request.offset, request.length

        if request.leaves:  # first read of a blob: digests in the same round trip

            def read_with_leaves() -> tuple[bytes, int, list[bytes]]:
                _, digests = self.store.leaves(cid)
                data, size = self.store.read_range(cid, offset, length)
                return data, size, digests

            data, size, digests = await self._guard_corrupt(cid, read_with_leaves)
            return StorageGetReply(data, size, b"".join(digests))
        data, size = await self._guard_corrupt(cid, self.store.read_range, cid, offset, length)
        return StorageGetReply(data, size)

    async def _leaves(self, msg: Message, request: StorageLeaves) -> StorageLeavesReply:
        cid = canonical_cid(request.cid)
        size, digests = await self._guard_corrupt(cid, self.store.leaves, cid)
        return StorageLeavesReply(size, b"".join(digests))

    async def _has(self, msg: Message, request: StorageHas) -> StorageHasReply:
        return StorageHasReply(await self._thread(self.store.has, request.cid))

    async def _pin(self, msg: Message, request: StoragePin) -> StoragePinReply:
        await self._thread(self.store.pin, request.cid)
        return StoragePinReply()

    async def _unpin(self, msg: Message, request: StorageUnpin) -> StorageUnpinReply:
        await self._thread(self.store.unpin, request.cid)
        return StorageUnpinReply()

    async def _stat(self, msg: Message, request: StorageStat) -> StorageStatReply:
        if request.cid is None:
            s = self.store.statistics()
            return StorageStatReply(NodeStatistics(
                node=self.endpoint.identity, blobs=s.blobs, used_bytes=s.used_bytes,
                reserved_bytes=s.reserved_bytes, quota_bytes=s.quota_bytes, max_blob=s.max_blob,
                corruptions=self.corruptions,
            ))
        b = await self._thread(self.store.stat, request.cid)
        return StorageStatReply(BlobStatistics(cid=b.cid, size=b.size, stored_bytes=b.stored_bytes, pinned=b.pinned))

    async def _list(self, msg: Message, request: StorageList) -> StorageListReply:
        after, limit = request.after or "", request.limit
        blobs = await self._thread(self.store.list)
        page = [b for b in blobs if b.cid > after][: limit + 1]
        return StorageListReply(tuple((b.cid, b.size, b.pinned) for b in page[:limit]), len(page) > limit)
