"""A protocol double of the consortium for testing user agents on their own.

:class:`FakeConsortium` serves docs/protocol.md's peer messages (``peer.enroll``,
``submit``, ``query``, ``audit``, ``deliver_share`` for grants and standing
delegations, ``reencrypt``) from n peer
endpoints over ONE real :class:`core.ledger.Ledger` in memory (each committed
transaction is ordered into its own signed block at once), with real storage
nodes, real envelopes and real crypto. It stands in for agents/peer/ and
agents/orderer.py: no consensus, no SQLite, no catch-up. The consortium's keys
come from :class:`agents.testing.consortium.TestConsortium`.
"""

from __future__ import annotations

import contextlib
import hashlib
import pathlib
import secrets
import time
from typing import Any

import trio

import bus
from core import canonical, pre
from core.curve import G1
from core.enrollment import EnrollmentToken
from core.errors import DecodeError, ValidationError
from core.identity import Certificate
from core.ledger import Block, Ledger, MemoryKV
from core.ledger import effect_key
from core.protocol import (
    CommitNotice, PeerDeliverShare, PeerQuery, PeerReencrypt, codes, commits_topic, make_reencrypt_reply, query_view,
    share_context,
)
from core.state import ENTRY_QUERIES, RecordEntry, entry_key, parse_key, records_prefix
from core.tx import Transaction

from agents.consortium import ENROLL_PREFIX
from agents.runtime import make_endpoint
from agents.storage import BlobStore
from agents.storage.node import StorageAccess, StorageNode
from agents.testing.consortium import TestConsortium, split_peers

__all__ = ["FakeConsortium"]


def now_ms() -> int:
    return int(time.time() * 1000)


class FakeConsortium:
    """docs/protocol.md's peers over one shared ledger, plus real storage nodes.

    Each transaction submitted (or made by a peer: registrations, access
    records) is ordered into its own block at once. Knobs for fault tests:
    :meth:`stop_peer` (closed), ``stalled`` (answers nothing),
    ``mute_after_commit`` (commits a submission, never answers),
    ``commit_notices`` (publish ``commits/<subject>`` notices; False: refuse the
    subscriptions, so clients wait on the peer); ``owner_certs`` (answer a ``record``
    query's ``owner_cert``; False: like a peer that predates it) and ``owner_cert_hook``
    (a hostile peer: ``hook(pid, entry) -> entry`` rewrites the certificate entry it
    sends); counters: ``submissions`` (raw transactions in order), ``reencryptions``,
    ``queries`` (``what`` of every ``peer.query``, in order).
    """

    def __init__(self, tmp: pathlib.Path, *, n_peers: int = 4, threshold: int = 2, storage_nodes: int = 3):
        self.tmp = tmp
        self.consortium = c = TestConsortium.build(
            split_peers(n_peers, ("hospital-a", "hospital-b"), alternate=True, name="peer-{letter}{nth}"),
            name="test-consortium", threshold=threshold, storage=[f"storage-{i + 1}" for i in range(storage_nodes)],
            replicas=3, write_quorum=2)
        c.manifest.agents.update({a: "tcp://127.0.0.1:9" for a in c.static_keys})
        self.orgs, self.peer_keys, self.peers, self.storage_keys = list(c.orgs), c.peer_keys, c.peers, c.storage_keys
        self.orderer_key, self.config, self.genesis, self.manifest = c.orderer_key, c.config, c.genesis, c.manifest
        self.kv = MemoryKV()
        self.ledger = Ledger(self.genesis, self.kv)
        self.directory = c.directory()  # what peers and storage nodes trust
        self.shares: dict[tuple[str, str], pre.KeyShare] = {}
        self.parts: dict[tuple[str, str], pre.StandingPart] = {}  # (peer, delegation id) -> standing part
        self.endpoints: dict[str, bus.Endpoint] = {}
        self.reencryptions = 0
        self.mute_after_commit: set[str] = set()  # peers that commit a submission and never answer
        self.commit_notices = True  # publish commits/<subject> (False: refuse the subscriptions, publish none)
        self.submissions: list[bytes] = []
        self.stalled: set[str] = set()  # peers that answer nothing
        self.owner_certs = True
        self.owner_cert_hook: Any = None
        self.queries: list[str] = []
        self._lock = trio.Lock()

    def token(self, subject: str, org: str, attributes: dict, enrolling: str) -> bytes:
        """``org``'s registrar's enrollment token for ``subject``, bound to its enrolling id."""
        return self.consortium.token(subject, org, attributes, enrolling)

    async def commit(self, raw: bytes) -> tuple[int, str]:
        async with self._lock:
            height, head, _ = self.ledger.head()
            block = Block.make(height + 1, head, now_ms(), [raw], self.orderer_key)
            result = self.ledger.apply(block)
            self.kv.apply(result.writes)
            tx = Transaction.from_bytes(raw)
            if result.marks[0] == "ok" and tx.type == "register":
                self.directory.set_certificate(tx.body["cert"]["subject"], tx.body["cert"]["ecdsa_key"])
            if result.marks[0] == "ok" and tx.type == "revoke_cert":
                self.directory.set_certificate(tx.body["subject"], None)
            await self._notify(tx, raw, result.height, result.marks[0])
            return result.height, result.marks[0]

    async def _notify(self, tx: Transaction, raw: bytes, height: int, mark: str) -> None:
        """Publish the commit notice on ``commits/<submitter>`` from every peer (the one the
        submitter subscribed at sends it), as agents/peer does."""
        if not self.commit_notices:
            return
        effect = {}
        key = effect_key(tx) if mark == "ok" else None
        entry = self.ledger.get(key) if key is not None else None
        if entry is not None:
            effect[key] = entry
            if tx.type == "access_request" and isinstance(entry.get("grant_id"), str):
                gkey = entry_key("grant", entry["grant_id"])
                if self.ledger.get(gkey) is not None:
                    effect[gkey] = self.ledger.get(gkey)
        notice = CommitNotice(tx_id=hashlib.sha256(raw).digest(), height=height, type=tx.type, mark=mark,
                              effect=effect).to_wire()
        for ep in self.endpoints.values():
            with contextlib.suppress(bus.BusError):
                await ep.publish(commits_topic(tx.submitter), notice)

    async def revoke_cert(self, subject: str) -> str:
        org = self.ledger.certificate(subject).cert.org
        pid = next(p for p, info in self.peers.items() if info.org == org)
        tx = Transaction.create("revoke_cert", pid, {"subject": subject, "reason": "left the hospital"},
                                self.peer_keys[pid].ecdsa_private, now_ms())
        return (await self.commit(tx.to_bytes()))[1]

    async def run(self, node: bus.Node, nursery: trio.Nursery) -> None:
        for pid in self.peers:
            ep = make_endpoint(node, pid, self.peer_keys[pid].ecdsa_private, self.directory,
                               admit_subscriber=self._admit)
            self.endpoints[pid] = ep
            for kind in ("enroll", "submit", "query", "audit", "deliver_share", "reencrypt"):
                ep.register(f"peer.{kind}", self._handler(pid, getattr(self, "_" + kind)))
        for sid, keys in self.storage_keys.items():
            ep = make_endpoint(node, sid, keys.ecdsa_private, self.directory)
            access = StorageAccess(frozenset(self.storage_keys), frozenset(self.peers),
                                   lambda a: self.ledger.certificate(a) is not None)
            store = StorageNode(ep, BlobStore(self.tmp / sid), access=access)
            await nursery.start(store.run)

    def _admit(self, sender: str, topic: str) -> bool:
        """A registered user, to its own commit notices only (while ``commit_notices``)."""
        cert = self.ledger.certificate(sender)
        return self.commit_notices and cert is not None and not cert.revoked and topic == commits_topic(sender)

    async def stop_peer(self, pid: str) -> None:
        await self.endpoints[pid].aclose()

    def _handler(self, pid, fn):
        async def handle(msg: bus.Message):
            if pid in self.stalled:  # SIGSTOP: the connection stays, nothing answers
                await trio.sleep_forever()
            return await fn(pid, msg)

        return handle

    # -- peer messages -----------------------------------------------------

    async def _enroll(self, pid: str, msg: bus.Message) -> dict:
        b = msg.body
        if not msg.sender.startswith(ENROLL_PREFIX):
            raise bus.HandlerError(codes.ENROLL_INVALID, "enroll from an enroll: id")
        info = self.peers[pid]
        if b["org"] != info.org:
            raise bus.HandlerError(codes.ENROLL_DENIED, "bad organization")
        try:
            EnrollmentToken.from_bytes(b["token"]).check(
                self.consortium.config.org(b["org"]).registrar_key, subject=b["subject"], org=b["org"], attributes=b["attributes"],
                enroll_key=bytes.fromhex(msg.sender[len(ENROLL_PREFIX):]), now=time.time())
        except (DecodeError, ValidationError):
            raise bus.HandlerError(codes.ENROLL_DENIED, "bad token") from None
        if self.ledger.certificate(b["subject"]) is not None:
            raise bus.HandlerError(codes.ENROLL_EXISTS, "subject already registered")
        now = int(time.time())
        cert = Certificate(secrets.token_hex(8), b["subject"], b["org"], b["attributes"],
                           bytes.fromhex(msg.sender[len(ENROLL_PREFIX):]), b["box_key"], b["pre_key"],
                           b["pre_proof"], now - 60, now + b["valid_s"], pid).sign(self.peer_keys[pid].ecdsa_private)
        tx = Transaction.create("register", pid, {"cert": cert.to_dict(), "token_id": secrets.token_bytes(16)},
                                self.peer_keys[pid].ecdsa_private, now_ms())
        height, mark = await self.commit(tx.to_bytes())
        if mark != "ok":
            raise bus.HandlerError(codes.ENROLL_INVALID, mark)
        return {"cert": cert.to_dict(), "height": height}

    async def _submit(self, pid: str, msg: bus.Message) -> dict:
        raw = msg.body["tx"]
        self.submissions.append(raw)
        height, mark = await self.commit(raw)
        if pid in self.mute_after_commit:
            await trio.sleep_forever()
        return {"tx_id": hashlib.sha256(raw).digest(), "height": height, "mark": mark}

    async def _query(self, pid: str, msg: bus.Message):
        b = _fields_of(PeerQuery, msg.body)
        what = b["what"]
        self.queries.append(what)
        if what in ENTRY_QUERIES:
            entry = self.ledger.get(entry_key(what, *(b[name] for name in ENTRY_QUERIES[what])))
            if what == "record" and b.get("owner_cert") and self.owner_certs and entry is not None:
                owner = self.ledger.get(entry_key("cert", b["patient"]))
                if self.owner_cert_hook is not None:
                    owner = self.owner_cert_hook(pid, owner)
                entry = {**entry, "owner_cert": owner}
            return query_view(what, b.get("view"), entry)  # (a view the query names, as a peer answers it)
        if what == "records":
            out = []
            for key, raw in self.kv.scan(records_prefix(b["patient"])):
                e = RecordEntry.from_state(canonical.unpack(raw))
                if b["label"] is None or e.label == b["label"]:
                    out.append({"record_id": parse_key(key).parts[1], "label": e.label, "cid": e.cid,
                                "size": e.size, "media_type": e.media_type, "height": e.height,
                                **({"epoch": e.epoch} if e.epoch else {})})
            return out
        raise bus.HandlerError(codes.BAD_REQUEST, what)

    async def _audit(self, pid: str, msg: bus.Message) -> dict:
        if msg.body["patient"] != msg.sender:
            raise bus.HandlerError(codes.AUDIT_FORBIDDEN, "own trail only")
        events, after = self.ledger.audit_page(msg.sender, msg.body.get("after"))
        return {"events": events, **({"next": after} if after is not None else {})}

    async def _deliver_share(self, pid: str, msg: bus.Message) -> dict:
        b = _fields_of(PeerDeliverShare, msg.body)
        with trio.move_on_after(10):
            while (grant := self.ledger.grant(b["grant_id"])) is None:
                delegation = self.ledger.delegation(b["grant_id"])
                if delegation is not None:  # a standing delegation's part
                    if hashlib.sha256(b["sealed"]).digest() != delegation.part_digest(pid) \
                            or delegation.patient != msg.sender:
                        raise bus.HandlerError(codes.SHARE_MISMATCH, "hash")
                    self.parts[(pid, b["grant_id"])] = pre.open_standing_part(
                        pre.SealedKeyShare(b["index"], b["sealed"]), self.peer_keys[pid].box_private,
                        expected_context=share_context(b["grant_id"]), expected_index=self.peers[pid].index)
                    return {"ok": True}
                await trio.sleep(0.01)
        if grant is None:
            raise bus.HandlerError(codes.SHARE_UNKNOWN_GRANT, b["grant_id"])
        if hashlib.sha256(b["sealed"]).digest() != grant.share_digest(pid) or grant.patient != msg.sender:
            raise bus.HandlerError(codes.SHARE_MISMATCH, "hash")
        info = self.peers[pid]
        share = pre.open_key_share(pre.SealedKeyShare(b["index"], b["sealed"]), self.peer_keys[pid].box_private,
                                   expected_context=share_context(b["grant_id"]), expected_index=info.index,
                                   expected_digest=grant.share_digest(pid))
        self.shares[(pid, b["grant_id"])] = share
        return {"ok": True}

    async def _reencrypt(self, pid: str, msg: bus.Message) -> dict:
        b = _fields_of(PeerReencrypt, msg.body)
        try:
            grant, rec = self.ledger.check_reencryption(b["grant_id"], msg.sender, b["patient"], b["record_id"],
                                                        int(time.time()))
        except ValidationError as exc:
            raise bus.HandlerError(codes.access_code(exc.code), str(exc)) from None
        if b["request_id"] is not None and b["request_id"] != grant.request_id:  # (None: the grant's own)
            raise bus.HandlerError(codes.ACCESS_FORBIDDEN, "the request id is not the grant's")
        share = self.shares.get((pid, b["grant_id"]))
        part = None if grant.delegation is None else self.parts.get((pid, grant.delegation))
        if part is not None:  # derive rk_i = f(x_i) P2_B as a peer does
            share = pre.derive_key_share(part, pre.PublicKey.from_bytes(
                self.ledger.certificate(msg.sender).cert.pre_key))
        if share is None:
            raise bus.HandlerError(codes.SHARE_MISSING, "no share")
        s = pre.reencrypt(G1.from_bytes(rec.capsule), share).to_bytes()
        index = self.peers[pid].index
        reply = make_reencrypt_reply(self.peer_keys[pid].ecdsa_private, request_id=grant.request_id, cid=rec.cid,
                                     index=index, share=s)
        served = now_ms()  # logged at once, as a batch of one (a real peer collects them: agents.peer._audit)
        entry = {"grant_id": b["grant_id"], "request_id": grant.request_id, "record_id": b["record_id"],
                 "doctor": msg.sender, "time": served}
        tx = Transaction.create("access_batch", pid, {"index": index, "entries": [entry]},
                                self.peer_keys[pid].ecdsa_private, served)
        await self.commit(tx.to_bytes())
        self.reencryptions += 1
        return reply.to_wire()


def _fields_of(kind: type, body: Any) -> dict:
    """A request body (a row or a map) as the map of its type's fields (a real peer decodes
    it the same way: ``from_wire``, which refuses what does not decode)."""
    try:
        value = kind.from_wire(body)
    except DecodeError as exc:
        raise bus.HandlerError(codes.BAD_REQUEST, str(exc)) from None
    return {name: getattr(value, name) for name in value.__dataclass_fields__}
