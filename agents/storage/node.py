"""The storage node agent: a :class:`BlobStore` served over the bus.

Its kinds are typed by :mod:`core.protocol` (``storage.*``: :class:`~core.protocol.StoragePut`
and the others, listed with their bodies in docs/protocol.md, "Storage nodes").
A body that does not decode is answered ``storage.bad-request``; other errors
travel as ``{"code": "storage.*", "message"}`` error replies (see :mod:`.errors`).

Who may do what (:class:`StorageAccess`; a refusal is ``storage.forbidden``,
checked before any work and logged with the sender):

* ``storage.put``, ``storage.put.begin``: registered users, and storage nodes
  (the repair process);
* ``storage.put.chunk``, ``.commit``, ``.abort``: the session's owner;
* ``storage.unpin``, ``storage.pin``: the blob's owner (the registered user whose
  put stored it first, recorded durably next to the blob) or a storage node;
* ``storage.list``: consortium nodes (peers, the orderer, storage nodes);
* ``storage.get``, ``.leaves``, ``.has``, ``.stat``: registered users and
  consortium nodes.

A registered user may hold at most ``sender_quota`` bytes of blobs it stored
first on this node (default :data:`DEFAULT_SENDER_QUOTA`, counting its open put
sessions' declared sizes; ``storage.quota-exceeded``) and at most
``sessions_per_sender`` open put sessions (``storage.busy``, as when the node's
``max_sessions`` are open). A put session belongs to the agent that began it,
must receive its chunks in order (``offset`` = bytes written so far) and is
aborted, releasing its quota reservation and deleting its partial file, when
idle longer than ``session_timeout``; partial files no session owns (nor a
pull of the node's reconciler, :mod:`agents.storage.reconcile`) are deleted
once that old. A ``get`` hashes the chunks it returns unless the store's
verified-at-rest mark says they hashed right already (:mod:`.blobstore`: each
byte is hashed once on the way out, not once per get); a corrupt blob is
answered with ``storage.corrupt``, moved to quarantine (so ``has`` turns False)
and left for a replica to replace. A put of a blob already held re-checks the
held copy (the client that found it corrupt heals it that way).
File work runs in worker threads, a few at a time (a put's receipt is signed in
the thread that made the put durable, off the event loop), except a small read
(:meth:`BlobStore.read_nowait <agents.storage.blobstore.BlobStore.read_nowait>`: at
most 2 MiB of a blob with a live verified-at-rest mark, its bytes in the page
cache) which is served on the event loop: the hop to a thread cost more than the read
(and, for a bulk read's 2 MiB pieces, waited for the GIL behind the sends of earlier ones).

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
from typing import TYPE_CHECKING, Any, Callable, NoReturn

import trio

from bus import Endpoint, Message
from core import ecdsa
from core.errors import DecodeError
from core.protocol import (
    RECEIPT_TAG,
    receipt_message,
    MAX_MESSAGE_DATA,
    codes,
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
from agents.storage.errors import BadRequest, Busy, CorruptBlob, Forbidden, QuotaExceeded, StorageError

if TYPE_CHECKING:
    from agents.consortium import ConsortiumDirectory, Manifest

log = logging.getLogger("agents.storage")

__all__ = ["StorageNode", "StorageAccess", "MAX_MESSAGE_DATA", "DEFAULT_SENDER_QUOTA", "DEFAULT_SESSIONS_PER_SENDER"]

DEFAULT_SENDER_QUOTA = 1 << 30
"""Bytes of blobs one registered user may store first on one node (1 GiB)."""
DEFAULT_SESSIONS_PER_SENDER = 8
"""Open put sessions one sender may hold on one node."""


@dataclass(frozen=True)
class StorageAccess:
    """Who a storage node serves: ``storage`` (storage nodes: the repair process),
    ``nodes`` (the other consortium nodes: peers, the orderer) and ``is_user`` (a
    registered user with an unrevoked certificate, e.g. from a
    :class:`~agents.consortium.CertificateFollower`'s directory)."""

    storage: frozenset[str]
    nodes: frozenset[str]
    is_user: Callable[[str], bool]

    @classmethod
    def for_manifest(cls, manifest: Manifest, directory: ConsortiumDirectory) -> "StorageAccess":
        """A deployment's nodes from its manifest; users as ``directory`` learns them from the ledger."""
        return cls(frozenset(manifest.storage), frozenset([*manifest.peers, manifest.orderer]),
                   directory.is_registered)

    def role(self, agent: str) -> str | None:
        """``"storage"``, ``"node"``, ``"user"`` or None (anyone else)."""
        if agent in self.storage:
            return "storage"
        if agent in self.nodes:
            return "node"
        if self.is_user(agent):
            return "user"
        return None


def _bad_request(exc: DecodeError) -> BadRequest:
    return BadRequest(str(exc))


@dataclass(slots=True)
class _Session:
    owner: str
    put: PutSession
    pin: bool
    deadline: float
    size: int  # declared: counted against the owner's share until the session ends
    lock: trio.Lock = field(default_factory=trio.Lock)


class StorageNode:
    """Serve ``store`` on ``endpoint``. Call :meth:`run` in a nursery (reaps idle puts)."""

    def __init__(
        self,
        endpoint: Endpoint,
        store: BlobStore,
        *,
        access: StorageAccess,
        threads: int = 4,
        session_timeout: float = 120.0,
        max_sessions: int = 256,
        classifier: Classifier | None = None,
        sessions_per_sender: int = DEFAULT_SESSIONS_PER_SENDER,
        sender_quota: int | None = DEFAULT_SENDER_QUOTA,
    ):
        self.endpoint = endpoint
        self.store = store
        self.access = access
        self._sessions_per_sender = sessions_per_sender
        self._sender_quota = sender_quota
        self._limiter = trio.CapacityLimiter(threads)
        self._session_timeout = session_timeout
        self._max_sessions = max_sessions
        self._sessions: dict[bytes, _Session] = {}
        self.pulls: set = set()  # temporary files of the reconciler's pulls (agents.storage.reconcile)
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
        """Abort put sessions idle past the timeout (their partial files are deleted), and
        delete partial files no session owns once older than the timeout, until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(min(5.0, self._session_timeout / 2))
            now = trio.current_time()
            for sid, s in list(self._sessions.items()):
                if s.deadline < now and not s.lock.locked():
                    del self._sessions[sid]
                    await self._thread(s.put.abort)
                    log.info("aborted idle put session from %s", s.owner)
            live = {s.put.path for s in self._sessions.values()} | self.pulls
            expired = await self._thread(self.store.expire_partial, self._session_timeout, live)
            if expired:
                log.info("deleted %d partial uploads no session owns", expired)

    def uploading(self, cid: str, within: float | None = None) -> bool:
        """Whether a put session claiming ``cid`` is open on this node (with ``within``:
        and received something in the last ``within`` seconds)."""
        now = trio.current_time()
        return any(s.put.claimed == cid and (within is None or s.deadline - self._session_timeout > now - within)
                   for s in self._sessions.values())

    @property
    def corruptions(self) -> int:
        """Corrupt blobs found (on a read, a re-checking put or a scrub) and quarantined."""
        return self.store.corruptions

    def partial_uploads(self) -> int:
        """Put sessions open on this node."""
        return len(self._sessions)

    # -- admission -------------------------------------------------------------

    def _admit(self, msg: Message, allowed: tuple[str, ...], what: str) -> str:
        """The sender's role if it is in ``allowed``; else Forbidden (logged)."""
        role = self.access.role(msg.sender)
        if role not in allowed:
            self._refuse(msg, what)
        return role

    def _refuse(self, msg: Message, what: str) -> NoReturn:
        """Count the refusal and log it once per sender and kind (a flood does not flood the log)."""
        self.refusals.refuse(msg.sender, msg.kind, codes.STORAGE_FORBIDDEN, what)
        raise Forbidden(f"{what} on this node")

    def _admit_put(self, msg: Message, size: int) -> None:
        """Put admission: a user or a storage node; a user within its sessions and bytes."""
        role = self._admit(msg, ("user", "storage"), "only registered users and storage nodes put")
        sender = msg.sender
        if len(self._sessions) >= self._max_sessions:
            raise Busy("too many puts in progress on this node; retry later")
        if role != "user":
            return
        mine = [s for s in self._sessions.values() if s.owner == sender]
        if len(mine) >= self._sessions_per_sender:
            raise Busy(f"{len(mine)} put sessions of yours are open on this node (at most "
                       f"{self._sessions_per_sender}); finish or abort one")
        if self._sender_quota is not None:
            held = self.store.owned_bytes(sender) + sum(s.size for s in mine)
            if held + size > self._sender_quota:
                raise QuotaExceeded(f"your share of this node is used up: {held} of {self._sender_quota} bytes "
                                    f"held, {size} more requested")

    async def _owner_or_storage(self, msg: Message, cid: str, what: str) -> None:
        role = self._admit(msg, ("user", "storage"), what)
        if role == "user" and await self._thread(self.store.owner_of, cid) != msg.sender:
            self._refuse(msg, what)

    async def _thread(self, fn, *args, **kwargs):
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self._limiter)

    # -- puts --------------------------------------------------------------

    def _owner(self, msg: Message) -> str | None:
        """Whom a put records as the blob's owner: a user (a repair copy has none)."""
        return msg.sender if self.access.role(msg.sender) == "user" else None

    def _receipt(self, cid: str, size: int, putter: str) -> bytes:
        """Our signed acknowledgement of a durable put (core.protocol's storage receipt).
        Called in the put's worker thread, right after the fsyncs: the signature (native
        ECDSA, GIL released) costs the event loop nothing."""
        return self.endpoint.sign(ecdsa.tagged_message(RECEIPT_TAG, receipt_message(
            self.endpoint.identity, cid, size, putter)))

    async def _put(self, msg: Message, request: StoragePut) -> StoragePutReply:
        self._admit_put(msg, len(request.data))
        owner, size, putter = self._owner(msg), len(request.data), msg.sender

        def put_and_sign() -> StoragePutReply:  # the receipt signed in the same worker thread
            cid = self.store.put(request.data, request.cid, pin=request.pin, owner=owner)
            return StoragePutReply(cid, self._receipt(cid, size, putter))

        return await self._thread(put_and_sign)

    async def _begin(self, msg: Message, request: StoragePutBegin) -> StoragePutBeginReply:
        self._admit_put(msg, request.size)
        put = await self._thread(self.store.begin_put, request.cid, request.size)
        sid = secrets.token_bytes(16)
        self._sessions[sid] = _Session(msg.sender, put, request.pin, trio.current_time() + self._session_timeout,
                                       request.size)
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
            owner, putter = self._owner(msg), msg.sender

            def commit_and_sign() -> StoragePutCommitReply:
                cid = session.put.commit(pin=session.pin, owner=owner)
                return StoragePutCommitReply(cid, self._receipt(cid, session.size, putter))

            return await self._thread(commit_and_sign)

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
            log.warning("corrupt blob %s detected on read; quarantined, not served", cid)
            await self._thread(self.store.quarantine, cid)
            raise

    def _admit_read(self, msg: Message) -> None:
        self._admit(msg, ("user", "node", "storage"), "only registered users and consortium nodes read")

    async def _read(self, msg: Message, request: StorageGet) -> StorageGetReply:
        self._admit_read(msg)
        cid = canonical_cid(request.cid)
        offset, length = request.offset, request.length

        if request.leaves:  # first read of a blob: digests in the same round trip

            def read_with_leaves() -> tuple[bytes, int, list[bytes]]:
                _, digests = self.store.leaves(cid)
                data, size = self.store.read_range(cid, offset, length)
                return data, size, digests

            data, size, digests = await self._guard_corrupt(cid, read_with_leaves)
            return StorageGetReply(data, size, b"".join(digests))
        quick = self.store.read_nowait(cid, offset, length)  # small, marked and cached: no thread
        if quick is not None:
            return StorageGetReply(*quick)
        data, size = await self._guard_corrupt(cid, self.store.read_range, cid, offset, length)
        return StorageGetReply(data, size)

    async def _leaves(self, msg: Message, request: StorageLeaves) -> StorageLeavesReply:
        self._admit_read(msg)
        cid = canonical_cid(request.cid)
        size, digests = await self._guard_corrupt(cid, self.store.leaves, cid)
        return StorageLeavesReply(size, b"".join(digests))

    async def _has(self, msg: Message, request: StorageHas) -> StorageHasReply:
        self._admit_read(msg)
        return StorageHasReply(await self._thread(self.store.has, request.cid))

    async def _pin(self, msg: Message, request: StoragePin) -> StoragePinReply:
        await self._owner_or_storage(msg, request.cid, "only the blob's owner or a storage node pins")
        await self._thread(self.store.pin, request.cid)
        return StoragePinReply()

    async def _unpin(self, msg: Message, request: StorageUnpin) -> StorageUnpinReply:
        await self._owner_or_storage(msg, request.cid, "only the blob's owner or a storage node unpins")
        await self._thread(self.store.unpin, request.cid)
        return StorageUnpinReply()

    async def _stat(self, msg: Message, request: StorageStat) -> StorageStatReply:
        self._admit_read(msg)
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
        self._admit(msg, ("node", "storage"), "only consortium nodes list")
        after, limit = request.after or "", request.limit
        blobs = await self._thread(self.store.list)
        page = [b for b in blobs if b.cid > after][: limit + 1]
        return StorageListReply(tuple((b.cid, b.size, b.pinned) for b in page[:limit]), len(page) > limit)
