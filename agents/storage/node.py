"""The storage node agent: a :class:`BlobStore` served over the bus.

Request kinds and bodies (msgpack maps; every reply is a map; errors travel as
``{"code": "storage.*", "message"}`` error replies, see :mod:`.errors`):

=====================  ==================================================  ==========================
kind                   request body                                        reply body
=====================  ==================================================  ==========================
storage.put            cid (str|nil), data (bin <= max_message), pin       cid
storage.put.begin      cid (str|nil), size (int), pin (bool)               session (bin 16)
storage.put.chunk      session, offset (int), data (bin)                   written (int)
storage.put.commit     session                                             cid
storage.put.abort      session                                             {}
storage.get            cid, offset, length (<= max_message), leaves?       data, size, digests if leaves
storage.leaves         cid                                                 size (int), digests (bin)
storage.has            cid                                                 has (bool)
storage.pin / .unpin   cid                                                 {}
storage.stat           cid (str|nil)                                       blob or node statistics
storage.list           after (str|nil), limit (int <= 10000)               blobs [[cid,size,pinned]], more
=====================  ==================================================  ==========================

A put session belongs to the agent that began it, must receive its chunks in
order (``offset`` = bytes written so far) and is aborted, releasing its quota
reservation, when idle longer than ``session_timeout``. Every ``get`` re-hashes
the chunks it returns; a corrupt blob is answered with ``storage.corrupt``,
moved to quarantine (so ``has`` turns False) and left for a replica to replace.
File work runs in worker threads, a few at a time.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

import trio

from bus import Endpoint, Message

from agents.storage.blobstore import BlobStore, PutSession, canonical_cid
from agents.storage.errors import BadRequest, CorruptBlob, StorageError

log = logging.getLogger("agents.storage")

MAX_MESSAGE_DATA = 8 * 1024 * 1024
"""Largest data field of one message (the bus frame limit is 16 MiB)."""



def _body(msg: Message) -> dict:
    if not isinstance(msg.body, dict):
        raise BadRequest(f"{msg.kind}: body must be a map")
    return msg.body


def _get(body: dict, key: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
    value = body.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) and kind is int:
        raise BadRequest(f"field {key!r} must be an integer")
    if not isinstance(value, kind):
        raise BadRequest(f"field {key!r} missing or of the wrong type")
    return value


def _nonneg(body: dict, key: str) -> int:
    value = _get(body, key, int)
    if value < 0:
        raise BadRequest(f"field {key!r} must be non-negative")
    return value


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
    ):
        self.endpoint = endpoint
        self.store = store
        self._limiter = trio.CapacityLimiter(threads)
        self._session_timeout = session_timeout
        self._max_sessions = max_sessions
        self._sessions: dict[bytes, _Session] = {}
        self.corruptions = 0
        handlers = {
            "storage.put": self._put,
            "storage.put.begin": self._begin,
            "storage.put.chunk": self._chunk,
            "storage.put.commit": self._commit,
            "storage.put.abort": self._abort,
            "storage.get": self._read,
            "storage.leaves": self._leaves,
            "storage.has": self._has,
            "storage.pin": self._pin,
            "storage.unpin": self._unpin,
            "storage.stat": self._stat,
            "storage.list": self._list,
        }
        for kind, handler in handlers.items():
            endpoint.register(kind, handler)

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

    async def _put(self, msg: Message) -> dict:
        body = _body(msg)
        cid = _get(body, "cid", str, optional=True)
        data = _get(body, "data", bytes)
        pin = bool(body.get("pin", True))
        return {"cid": await self._thread(self.store.put, data, cid, pin=pin)}

    async def _begin(self, msg: Message) -> dict:
        body = _body(msg)
        cid = _get(body, "cid", str, optional=True)
        size = _nonneg(body, "size")
        pin = bool(body.get("pin", True))
        if len(self._sessions) >= self._max_sessions:
            raise StorageError("too many puts in progress on this node; retry later")
        put = await self._thread(self.store.begin_put, cid, size)
        sid = secrets.token_bytes(16)
        self._sessions[sid] = _Session(msg.sender, put, pin, trio.current_time() + self._session_timeout)
        return {"session": sid}

    def _session(self, msg: Message, body: dict) -> tuple[bytes, _Session]:
        sid = _get(body, "session", bytes)
        session = self._sessions.get(sid)
        if session is None or session.owner != msg.sender:
            raise BadRequest("unknown or expired put session")
        session.deadline = trio.current_time() + self._session_timeout
        return sid, session

    async def _chunk(self, msg: Message) -> dict:
        body = _body(msg)
        sid, session = self._session(msg, body)
        offset = _nonneg(body, "offset")
        data = _get(body, "data", bytes)
        async with session.lock:
            if offset != session.put.written:
                raise BadRequest(f"chunk at offset {offset}, expected {session.put.written}")
            try:
                await self._thread(session.put.write, data)
            except StorageError:
                self._sessions.pop(sid, None)  # the session aborted itself
                raise
            return {"written": session.put.written}

    async def _commit(self, msg: Message) -> dict:
        sid, session = self._session(msg, _body(msg))
        async with session.lock:
            self._sessions.pop(sid, None)
            return {"cid": await self._thread(session.put.commit, pin=session.pin)}

    async def _abort(self, msg: Message) -> dict:
        sid, session = self._session(msg, _body(msg))
        async with session.lock:
            self._sessions.pop(sid, None)
            await self._thread(session.put.abort)
        return {}

    # -- reads -------------------------------------------------------------

    async def _guard_corrupt(self, cid: str, fn, *args):
        try:
            return await self._thread(fn, *args)
        except CorruptBlob:
            self.corruptions += 1
            log.warning("corrupt blob %s detected on read; quarantined, not served", cid)
            await self._thread(self.store.quarantine, cid)
            raise

    async def _read(self, msg: Message) -> dict:
        body = _body(msg)
        cid = canonical_cid(_get(body, "cid", str))
        offset = _nonneg(body, "offset")
        length = _nonneg(body, "length")
        if length > MAX_MESSAGE_DATA:
            raise BadRequest(f"length above the {MAX_MESSAGE_DATA}-byte message limit")

        if body.get("leaves") is True:  # first read of a blob: digests in the same round trip

            def read_with_leaves() -> tuple[bytes, int, list[bytes]]:
                _, digests = self.store.leaves(cid)
                data, size = self.store.read_range(cid, offset, length)
                return data, size, digests

            data, size, digests = await self._guard_corrupt(cid, read_with_leaves)
            return {"data": data, "size": size, "digests": b"".join(digests)}
        data, size = await self._guard_corrupt(cid, self.store.read_range, cid, offset, length)
        return {"data": data, "size": size}

    async def _leaves(self, msg: Message) -> dict:
        cid = canonical_cid(_get(_body(msg), "cid", str))
        size, digests = await self._guard_corrupt(cid, self.store.leaves, cid)
        return {"size": size, "digests": b"".join(digests)}

    async def _has(self, msg: Message) -> dict:
        cid = _get(_body(msg), "cid", str)
        return {"has": await self._thread(self.store.has, cid)}

    async def _pin(self, msg: Message) -> dict:
        await self._thread(self.store.pin, _get(_body(msg), "cid", str))
        return {}

    async def _unpin(self, msg: Message) -> dict:
        await self._thread(self.store.unpin, _get(_body(msg), "cid", str))
        return {}

    async def _stat(self, msg: Message) -> dict:
        cid = _get(_body(msg), "cid", str, optional=True)
        if cid is None:
            s = self.store.statistics()
            return {
                "node": self.endpoint.identity,
                "blobs": s.blobs,
                "used_bytes": s.used_bytes,
                "reserved_bytes": s.reserved_bytes,
                "quota_bytes": s.quota_bytes,
                "max_blob": s.max_blob,
                "corruptions": self.corruptions,
            }
        b = await self._thread(self.store.stat, cid)
        return {"cid": b.cid, "size": b.size, "stored_bytes": b.stored_bytes, "pinned": b.pinned}

    async def _list(self, msg: Message) -> dict:
        body = _body(msg)
        after = _get(body, "after", str, optional=True) or ""
        limit = _nonneg(body, "limit")
        if not 0 < limit <= 10_000:
            raise BadRequest("limit must be 1..10000")
        blobs = await self._thread(self.store.list)
        page = [b for b in blobs if b.cid > after][: limit + 1]
        return {
            "blobs": [[b.cid, b.size, b.pinned] for b in page[:limit]],
            "more": len(page) > limit,
        }
