"""The peer's handlers: each parses its typed request (core.protocol) and returns its typed reply.

``peer.enroll`` (issue a certificate, commit ``register``), ``peer.submit``
(forward and wait), ``peer.query``, ``peer.audit``, ``peer.deliver_share``
(keep a sealed re-encryption key share), ``peer.reencrypt`` (re-encrypt for
the grant's doctor, sign the share, add it to the peer's access log, which
publishes ``access_batch`` transactions: agents.peer._audit) and
``peer.blocks`` (catch-up for other peers). See docs/protocol.md, "Consortium
peer".

Every handler runs after admission (:func:`agents.handlers.serve` refused the
sender classes a kind does not admit, see core.protocol.KINDS) and checks its
object rule on its first lines, before any wait, query or crypto:
``peer.submit`` takes only transactions whose submitter is the sender;
``peer.query`` answers by ``what`` (:meth:`PeerHandlers._visible`: cert,
head and the configuration in force to anyone; policy to its patient; record/records to the patient, and to
a doctor only where the patient's policy could allow it for the record's
label, without the fields its request does not need, with the patient's
certificate entry when asked (``owner_cert``) and without its store
transaction when the query names the one the reader holds (``held``); request
and grant to their patient and doctor, a request cut to the query's ``view``;
everything to consortium nodes);
a query with ``min_height`` above the peer's height waits for that block
(at most ``QUERY_WAIT_S``, ``query.behind`` after; at once when it is more than
``QUERY_MAX_AHEAD`` blocks ahead) and
``peer.deliver_share`` for a grant not committed yet waits under a
:class:`~agents.admission.WaitGate` (per-sender and total caps, ``busy``
beyond them).

A repeat read is answered without a task switch: ``peer.reencrypt``'s fast
companion (:meth:`PeerHandlers.fast_table`, ``agents.handlers.serve`` ``fast``)
runs in the task that delivered the request, makes the same ledger check,
takes the signed reply from the reply cache and logs the read as the handler
does; anything that waits (a block to reach, a share to open, a pairing)
defers to the handler before changing anything.

Re-encryption key shares are kept as they arrive, sealed to the peer's X25519
key (encryption at rest); they are unsealed on first use and the prepared
share is cached in memory per grant (dropped when the grant is revoked). The
re-encryption (pairing and signature) runs in a worker thread, batched with the
peer's other re-encryptions queued meanwhile (:mod:`agents.peer._batch`); a
record's capsule is decoded once per peer. The ledger's checks read committed
entries through its memo of decoded views (``core.ledger.Ledger._view``).

Standing delegations (docs/security.md, "Standing delegation") arrive the same
way: ``peer.deliver_share`` whose id names a committed ``standing`` delegation
instead of a grant carries this peer's sealed part f(x_i), kept sealed at rest.
For a grant the ledger made from a delegation (an allowed request under
``approval auto``, or a co-signed ``break_glass``), the peer derives its key
share for the grant's doctor itself: rk_i = f(x_i) P2_B, one constant-time G2
multiplication with the doctor's receiving key from its committed certificate
(whose proof of possession the ledger checked at ``register``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import trio

import bus
from core import canonical, pre
from core.curve import G1
from core.enrollment import EnrollmentToken
from core.errors import CoreError, DecodeError, ValidationError
from core.identity import RESERVED_CERT_ATTRIBUTES, Certificate
from core.ledger import CONFIG_KEY
from core.protocol import (
    CONSORTIUM,
    MAX_BLOCKS_PER_REPLY,
    PeerAudit,
    PeerAuditReply,
    PeerBlocks,
    PeerBlocksReply,
    PeerDeliverShare,
    PeerDeliverShareReply,
    PeerEnroll,
    PeerEnrollReply,
    PeerQuery,
    PeerQueryReply,
    PeerReencrypt,
    PeerReencryptReply,
    PeerSubmit,
    PeerSubmitReply,
    Sender,
    SubmitResult,
    codes,
    make_reencrypt_reply,
    query_view,
    share_context,
)
from core.state import (
    ENTRY_QUERIES, DelegationEntry, GrantEntry, RecordEntry, active_prefix, entry_key, parse_key, records_prefix,
    token_key,
)
from core.tx import Transaction

from agents.admission import WaitGate
from agents.consortium import ENROLL_PREFIX
from agents.peer._batch import WorkerBatcher
from agents.runtime import run_crypto

if TYPE_CHECKING:
    from agents.peer._agent import PeerAgent

__all__ = ["PeerHandlers"]

log = logging.getLogger("agents.peer")
T = TypeVar("T")

MAX_VALID_S = 10 * 366 * 86400
SHARE_CACHE = 4096
GRANT_WAIT_S = 10.0
QUERY_WAIT_S = 2.0  # a query's min_height: how long a peer behind it waits for the block
QUERY_MAX_AHEAD = 32
"""A ``min_height`` more blocks than this past the peer's height is answered
``query.behind`` at once, without waiting: a height a commit notice named is a
block or two ahead of a live peer, and a peer that far behind is better skipped
(the reader asks the next one) than waited on; a made-up height costs the peer
no waiting slot (docs/security.md, "Fourth wave")."""


class PeerHandlers:
    """The handlers of one :class:`~agents.peer.PeerAgent` (its ledger, store, keys and forwarder)."""

    def __init__(self, peer: PeerAgent, *, reply_cache: int = SHARE_CACHE):
        if reply_cache < 0:
            raise ValueError("reply_cache must be >= 0 (0: no reply cache)")
        self.peer = peer
        self.reply_cache = reply_cache  # replies kept at most ([peer] reply_cache; 0: every read pairs)
        self._shares: OrderedDict[str, pre.PreparedKeyShare] = OrderedDict()
        self._parts: OrderedDict[str, pre.StandingPart] = OrderedDict()  # opened standing parts
        self.waiting = WaitGate(peer.refusals)  # deliver_share waiting for its grant to commit
        self.reencryptions = 0  # re-encryption shares served (node metrics)
        self.batcher = WorkerBatcher()  # the re-encryptions' worker-thread jobs
        self._capsules: dict[bytes, G1] = {}  # records' capsules, decoded (and checked) once
        # signed re-encryption replies by (grant, request, cid, capsule): a share is a function of
        # the capsule and the key share alone, so a repeat read is served without a pairing
        # (valid while the grant's key share is the one they were made with: its token in _share_tokens)
        self._replies: OrderedDict[tuple, tuple[object, PeerReencryptReply]] = OrderedDict()
        self._share_tokens: dict[str, object] = {}  # grant id -> a fresh object per key share cached
        self.reply_hits = 0  # re-encryptions answered from _replies

    def fast_table(self) -> dict[type, Any]:
        """Fast companions (agents.handlers.serve ``fast``): what needs no wait is answered in
        the task that delivered the request. A repeat read (``peer.reencrypt`` from the reply
        cache) only: ``peer.query`` keeps its worker, since answered at once a query overtook
        more often a block that had arrived but was not yet applied (a record stored a moment
        before: the doctor's read was refused and took the request path)."""
        return {PeerReencrypt: self._reencrypt_now}

    def table(self) -> dict[type, Any]:
        """The kinds a peer serves: request type -> typed handler."""
        return {
            PeerEnroll: self._enroll,
            PeerSubmit: self._submit,
            PeerQuery: self._query,
            PeerAudit: self._audit,
            PeerDeliverShare: self._deliver_share,
            PeerReencrypt: self._reencrypt,
            PeerBlocks: self._blocks,
        }

    def forget_share(self, grant_id: str) -> None:
        """Drop the cached share of a revoked grant, its token and its cached replies (the
        token map would otherwise keep one entry per revoked grant, without bound)."""
        self._shares.pop(grant_id, None)
        if self._share_tokens.pop(grant_id, None) is not None:
            for key in [k for k in self._replies if k[0] == grant_id]:  # (at most SHARE_CACHE; once per revocation)
                del self._replies[key]

    # -- submitting and enrolling ---------------------------------------------------

    async def _submit(self, msg: bus.Message, request: PeerSubmit) -> PeerSubmitReply:
        for raw in request.txs:
            try:
                tx = Transaction.from_bytes(raw)
            except DecodeError as exc:
                raise bus.HandlerError(codes.BAD_REQUEST, f"transaction does not decode: {exc}") from None
            if tx.submitter != msg.sender:
                # a peer never relays a transaction on someone else's behalf
                raise self.peer.refusals.refuse(msg.sender, PeerSubmit.kind, codes.FORBIDDEN,
                                                "every transaction's submitter must be the sender")
        results = await self.peer.submit(list(request.txs), wait=request.wait)
        # without wait: {} (the submitter knows the id it would repeat)
        out = tuple(SubmitResult(i, h, m) if request.wait else SubmitResult() for i, h, m in results)
        return PeerSubmitReply(out, request.batch)

    async def _enroll(self, msg: bus.Message, request: PeerEnroll) -> PeerEnrollReply:
        """The token (core.enrollment) is checked first: bound to the sender's key,
        this subject, org and attributes, unexpired, unspent; then the request."""
        peer = self.peer
        if not msg.sender.startswith(ENROLL_PREFIX):
            raise bus.HandlerError(codes.ENROLL_INVALID, "enroll from your enrollment id (enroll:<hex ECDSA key>)")
        ecdsa_key = bytes.fromhex(msg.sender[len(ENROLL_PREFIX):])
        subject, org, attributes = request.subject, request.org, request.attributes
        if org != peer.info.org:
            raise bus.HandlerError(codes.ENROLL_DENIED, f"{peer.peer_id} enrolls members of {peer.info.org} only")
        org_info = peer.config.org(org)
        if not peer.enrolls or org_info is None:
            raise bus.HandlerError(codes.ENROLL_DENIED, f"{peer.peer_id} does not enroll users")
        try:
            token = EnrollmentToken.from_bytes(request.token)
            await run_crypto(token.check, org_info.registrar_key, subject=subject, org=org, attributes=attributes,
                             enroll_key=ecdsa_key, now=peer.clock())
        except (DecodeError, ValidationError) as exc:
            # counted, logged once per sender (enroll: ids are free, and a junk token costs no crypto)
            if getattr(exc, "code", None) == "token_expired":
                raise peer.refusals.refuse(msg.sender, PeerEnroll.kind, codes.ENROLL_EXPIRED, str(exc)) from None
            raise peer.refusals.refuse(msg.sender, PeerEnroll.kind, codes.ENROLL_DENIED,
                                       "the enrollment token does not authorize this enrollment "
                                       "(subject, organization, attributes or key)") from None
        if peer.classifier.node_class(subject) is not None or subject in peer.config.orderer_ids \
                or peer.config.peer(subject) is not None:
            # a user named like a consortium node would shadow it wherever the node is not known statically
            raise bus.HandlerError(codes.ENROLL_DENIED, f"{subject!r} is a consortium node's id, not a user's")
        reserved = sorted(RESERVED_CERT_ATTRIBUTES.intersection(attributes))
        if reserved:
            raise bus.HandlerError(codes.ENROLL_INVALID, f"attribute names {reserved} are reserved: the "
                                                         "certificate's subject and organization set them")
        if not 0 < request.valid_s <= MAX_VALID_S:
            raise bus.HandlerError(codes.ENROLL_INVALID, f"valid_s must be 1..{MAX_VALID_S}")
        existing = peer.ledger.certificate(subject)
        if existing is not None and existing.revoked:
            raise bus.HandlerError(codes.ENROLL_DENIED, f"the certificate of {subject} was revoked and a subject "
                                                        "enrolls once: the registrar issues a token for a new id")
        if existing is not None:  # (the client accepts this when the certificate carries its own keys)
            raise bus.HandlerError(codes.ENROLL_EXISTS, f"{subject} is already registered")
        if peer.ledger.get(token_key(org, token.token_id)) is not None:
            raise bus.HandlerError(codes.ENROLL_DENIED, "the enrollment token was used before")
        now = int(peer.clock())
        try:
            cert = Certificate(secrets.token_hex(16), subject, org, attributes, ecdsa_key, request.box_key,
                               request.pre_key, request.pre_proof, max(0, now - 60), now + request.valid_s,
                               peer.peer_id)
            await run_crypto(pre.verify_public_key, pre.PublicKey.from_bytes(request.pre_key), subject,
                             pre.RECEIVE_LABEL, pre.Proof.from_bytes(request.pre_proof))
        except CoreError as exc:
            raise bus.HandlerError(codes.ENROLL_INVALID, str(exc)[:200]) from None
        cert = await run_crypto(cert.sign, peer.keys.ecdsa_private)
        tx = await run_crypto(Transaction.create, "register", peer.peer_id,
                              {"cert": cert.to_dict(), "token_id": token.token_id},
                              peer.keys.ecdsa_private, int(peer.clock() * 1000))
        [(_, height, mark)] = await peer.submit([tx.to_bytes()], wait=True)
        if mark == "duplicate":  # a concurrent enrollment of the subject, or with the token, came first
            if peer.ledger.certificate(subject) is not None:
                raise bus.HandlerError(codes.ENROLL_EXISTS, f"{subject} is already registered")
            raise bus.HandlerError(codes.ENROLL_DENIED, "the enrollment token was used before")
        if mark != "ok":
            raise bus.HandlerError(codes.ENROLL_INVALID, f"the register transaction was marked {mark}")
        log.info("peer %s: enrolled %s (%s) at block %d", peer.peer_id, subject, cert.role, height)
        return PeerEnrollReply(cert.to_dict(), height)

    # -- reading the ledger -------------------------------------------------------------

    def _forbid_query(self, msg: bus.Message, what: str, why: str) -> bus.HandlerError:
        return self.peer.refusals.refuse(msg.sender, f"{PeerQuery.kind} {what}", codes.FORBIDDEN, why)

    def _doctor_view(self, doctor: str, patient: str) -> Callable[[str, str], bool]:
        """``may_see(record_id, label)``: whether ``patient``'s policy could allow
        ``doctor`` to request that record (certificate and policy read once)."""
        ledger = self.peer.ledger
        cert = ledger.certificate(doctor)
        try:
            policy = None if cert is None or cert.revoked else ledger.parsed_policy(patient)
        except CoreError:
            policy = None
        # labels the doctor holds a grant of (a break-glass one, say, which the policy need not allow):
        # scanned once, and only when the policy alone does not show a record (a doctor's read of a
        # record its policy allows scans nothing)
        granted: set | None = None if cert is not None and not cert.revoked else set()

        def has_grant(label: str) -> bool:
            nonlocal granted
            if granted is None:
                granted = {canonical.unpack(raw, max_size=1024, what=key) for key, raw in self.peer.store.scan(
                    active_prefix(patient, doctor))}
            return label in granted

        if policy is None:
            return lambda record_id, label: has_grant(label)
        assert cert is not None
        c = cert.cert
        # the reserved names come from the certificate's own fields, as the ledger's evaluation does
        attributes = {**c.attributes, "organization": c.org, "id": c.subject}
        return lambda record_id, label: policy.could_allow(attributes, record_id, label) or has_grant(label)

    async def _query(self, msg: bus.Message, query: PeerQuery) -> PeerQueryReply:
        what, sender = query.what, msg.sender
        ledger = self.peer.ledger
        if query.min_height is not None and self.peer.height < query.min_height:
            await self._reach(msg, query.min_height)
        if what == "head":
            height, block_hash, root = ledger.head()
            return PeerQueryReply({"height": height, "hash": block_hash, "root": root})
        if what == "cert":
            return PeerQueryReply(ledger.get(entry_key("cert", query.subject)))
        if what == "config":  # public, like the genesis it succeeds
            entry = ledger.get(CONFIG_KEY)
            if entry is None:
                return PeerQueryReply({"config": ledger.genesis_config.to_bytes(), "seq": 0, "height": 0})
            return PeerQueryReply({"config": entry["config"], "seq": entry["seq"], "height": entry["height"]})
        sender_class = self.peer.classifier.node_class(sender)
        node = sender_class in CONSORTIUM
        if sender_class is Sender.ENROLLING:
            raise self._forbid_query(msg, what, "register before querying the ledger")
        if what == "records":
            patient, label = query.patient, query.label
            own = node or sender == patient
            if not own and self.peer.roles.get(sender) != "doctor":
                raise self._forbid_query(msg, what, "a patient's records are listed to the patient and its doctors")
            may_see = None if own else self._doctor_view(sender, patient)
            out = []
            for key, raw in self.peer.store.scan(records_prefix(patient)):
                rec = RecordEntry.from_state(canonical.unpack(raw, max_size=1 << 22, what=key))
                record_id = parse_key(key).parts[1]
                if label is not None and rec.label != label:
                    continue
                if own:
                    out.append({"record_id": record_id, "label": rec.label, "cid": rec.cid, "size": rec.size,
                                "media_type": rec.media_type, "height": rec.height,
                                **({"epoch": rec.epoch} if rec.epoch else {})})
                elif may_see(record_id, rec.label):
                    # what a request needs: no CID before a grant
                    out.append({"record_id": record_id, "label": rec.label, "size": rec.size,
                                "media_type": rec.media_type, "height": rec.height})
            return PeerQueryReply(out)
        # record, request, grant, policy (PeerQuery.from_wire admits only these): one entry, as stored
        assert what in ENTRY_QUERIES
        entry = ledger.get(entry_key(what, *(getattr(query, name) for name in ENTRY_QUERIES[what])))
        if node or entry is None and what in ("request", "grant"):
            return self._answer(query, entry)  # an unknown request or grant id tells nothing
        if what == "policy":
            if sender != query.patient:
                raise self._forbid_query(msg, what, "a policy is read by its patient only")
        elif what == "record":
            if sender != query.patient and not (
                    entry is not None and self.peer.roles.get(sender) == "doctor"
                    and self._doctor_view(sender, query.patient)(query.record_id, entry["label"])):
                raise self._forbid_query(msg, what, "the patient's policy does not allow you this record")
        elif sender not in (entry.get("patient"), entry.get("doctor")):  # request, grant
            raise self._forbid_query(msg, what, f"a {what} is read by its patient and doctor only")
        return self._answer(query, entry)

    def _answer(self, query: PeerQuery, entry: Any) -> PeerQueryReply:
        """An entry query's answer, once the sender may read ``entry`` (no await since it was
        read): cut to the query's ``view``; a record's with the patient's certificate entry
        from the same state when asked (``owner_cert``: the doctor checks the store
        transaction without a second query), and without its store transaction when it is
        the one the query holds (``held``: its SHA-256, compared in constant time)."""
        if entry is None:
            return PeerQueryReply(None)
        held = False
        if query.what == "record":
            if query.held is not None and isinstance(entry.get("tx"), bytes):
                held = hmac.compare_digest(hashlib.sha256(entry["tx"]).digest(), query.held)
            if query.owner_cert:
                entry = {**entry, PeerQuery.OWNER_CERT: self.peer.ledger.get(entry_key("cert", query.patient))}
        return PeerQueryReply(query_view(query.what, query.view, entry), held=held)

    async def _reach(self, msg: bus.Message, height: int, kind: str = PeerQuery.kind) -> None:
        """Wait (at most :data:`QUERY_WAIT_S`, under the waiting caps: ``busy`` beyond
        them) until this peer applied block ``height``; ``query.behind`` if it did not
        (the reader asks another peer: read-your-writes after a commit notice)."""
        if self.peer.classifier.node_class(msg.sender) is Sender.ENROLLING:
            raise self._forbid_query(msg, "min_height", "register before querying the ledger")
        if height > self.peer.height + QUERY_MAX_AHEAD:
            raise bus.HandlerError(codes.QUERY_BEHIND, f"{self.peer.peer_id} is at height {self.peer.height}, "
                                                       f"{height - self.peer.height} blocks below {height}")
        with self.waiting.slot(msg.sender, kind), trio.move_on_after(QUERY_WAIT_S):
            await self.peer.wait_for_height(height)
        if self.peer.height < height:
            raise bus.HandlerError(codes.QUERY_BEHIND, f"{self.peer.peer_id} is at height {self.peer.height}, "
                                                       f"below {height}")

    async def _audit(self, msg: bus.Message, request: PeerAudit) -> PeerAuditReply:
        if msg.sender != request.patient:
            raise bus.HandlerError(codes.AUDIT_FORBIDDEN, "only the patient reads its audit trail")
        # one page of the trail (it grows by one event per share served): read off the event loop
        try:
            events, after = await trio.to_thread.run_sync(self.peer.ledger.audit_page, request.patient, request.after)
        except ValueError as exc:
            raise bus.HandlerError(codes.BAD_REQUEST, f"audit: {exc}") from None
        return PeerAuditReply(tuple(events), after)

    async def _blocks(self, msg: bus.Message, request: PeerBlocks) -> PeerBlocksReply:
        limit = min(request.limit, MAX_BLOCKS_PER_REPLY)
        return PeerBlocksReply(tuple(await trio.to_thread.run_sync(self.peer.store.blocks, request.start, limit)))

    # -- key shares and re-encryption --------------------------------------------

    def _open_share(self, grant_id: str, index: int, sealed: bytes, digest: bytes | None,
                    stored: bool = False) -> pre.PreparedKeyShare:
        """Open a sealed share of ``grant_id`` (``digest``: the sha256 the committed grant holds for
        this peer, checked again here; a version-3 or 4 share, with no context inside, opens only
        with it). ``stored``: read back from our store, where a version-3 share (bound by that
        digest alone) may have been kept before version 4; a delivered one is refused."""
        peer = self.peer
        share = pre.open_key_share(pre.SealedKeyShare(index, sealed), peer.keys.box_private,
                                   expected_context=share_context(grant_id), expected_index=peer.info.index,
                                   expected_digest=digest, stored=stored)
        return share.prepare()

    def _open_and_keep_share(self, grant_id: str, index: int, sealed: bytes, digest: bytes) -> pre.PreparedKeyShare:
        """Worker thread: check that the sealed share opens (under ``digest``, the committed grant's),
        then keep it (still sealed) at rest."""
        prepared = self._open_share(grant_id, index, sealed, digest)
        self.peer.store.put_share(grant_id, index, sealed)
        return prepared

    def _cache_share(self, grant_id: str, prepared: pre.PreparedKeyShare) -> None:
        self._shares[grant_id] = prepared
        self._share_tokens[grant_id] = object()  # replies made with an earlier share no longer match
        self._shares.move_to_end(grant_id)
        while len(self._shares) > SHARE_CACHE:
            evicted, _ = self._shares.popitem(last=False)
            self._share_tokens.pop(evicted, None)

    async def _deliver_share(self, msg: bus.Message, request: PeerDeliverShare) -> PeerDeliverShareReply:
        peer = self.peer
        grant_id, index, sealed = request.grant_id, request.index, request.sealed
        grant = peer.ledger.grant(grant_id)
        delegation = None if grant is not None else peer.ledger.delegation(grant_id)
        if grant is None and delegation is None:
            # the patient may deliver a moment before our copy of the grant's block commits: wait,
            # under the per-sender and total caps (busy beyond them)
            with self.waiting.slot(msg.sender, PeerDeliverShare.kind), trio.move_on_after(GRANT_WAIT_S):
                while grant is None and delegation is None:
                    await peer.wait_next_commit()
                    grant = peer.ledger.grant(grant_id)
                    delegation = None if grant is not None else peer.ledger.delegation(grant_id)
        if delegation is not None:
            return await self._deliver_part(msg, grant_id, delegation, index, sealed)
        if grant is None:
            raise bus.HandlerError(codes.SHARE_UNKNOWN_GRANT,
                                   f"grant {grant_id} not committed within {GRANT_WAIT_S:g} s")
        prepared = await self._open_delivered(
            msg, grant_id, index, sealed, owner=grant.patient, expected=grant.share_digest(peer.peer_id),
            not_owner="only the grantor delivers its shares", noun="share", entry="grant",
            opener=self._open_and_keep_share,
        )
        self._cache_share(grant_id, prepared)
        log.info("peer %s: stored key share of grant %s", peer.peer_id, grant_id)
        return PeerDeliverShareReply()

    async def _deliver_part(self, msg: bus.Message, delegation_id: str, delegation: DelegationEntry, index: int,
                            sealed: bytes) -> PeerDeliverShareReply:
        """Keep this peer's sealed part of a committed standing delegation (checked as a share is)."""
        peer = self.peer
        part = await self._open_delivered(
            msg, delegation_id, index, sealed, owner=delegation.patient,
            expected=delegation.part_digest(peer.peer_id),
            not_owner="only the delegating patient delivers its parts", noun="part", entry="delegation",
            opener=self._open_and_keep_part,
        )
        self._cache(self._parts, delegation_id, part)
        log.info("peer %s: stored standing part of %s/%s (%s)", peer.peer_id, delegation.patient,
                 delegation.label, delegation_id)
        return PeerDeliverShareReply()

    async def _open_delivered(self, msg: bus.Message, entry_id: str, index: int, sealed: bytes, *, owner: str,
                              expected: bytes | None, not_owner: str, noun: str, entry: str,
                              opener: Callable[[str, int, bytes, bytes], T]) -> T:
        """Check a delivered sealed share or part against its committed ledger ``entry`` (the sender
        is its ``owner``; it holds this peer's digest ``expected`` at this peer's index; the sha256
        matches), then open and keep it with ``opener`` off the event loop (given ``expected`` too)."""
        peer = self.peer
        if owner != msg.sender:
            raise bus.HandlerError(codes.SHARE_FORBIDDEN, not_owner)
        if expected is None or index != peer.info.index:
            raise bus.HandlerError(codes.SHARE_MISMATCH,
                                   f"the {entry} holds no {noun} for {peer.peer_id} at index {index}")
        if not hmac.compare_digest(hashlib.sha256(sealed).digest(), expected):
            raise bus.HandlerError(codes.SHARE_MISMATCH, f"sha256 of the sealed {noun} differs from the {entry}'s")
        try:
            return await run_crypto(opener, entry_id, index, sealed, expected)
        except CoreError:
            raise bus.HandlerError(codes.SHARE_MISMATCH,
                                   f"the sealed {noun} does not open for this {entry} and peer") from None

    def _open_part(self, delegation_id: str, index: int, sealed: bytes) -> pre.StandingPart:
        peer = self.peer
        return pre.open_standing_part(pre.SealedKeyShare(index, sealed), peer.keys.box_private,
                                      expected_context=share_context(delegation_id),
                                      expected_index=peer.info.index)

    def _open_and_keep_part(self, delegation_id: str, index: int, sealed: bytes, digest: bytes) -> pre.StandingPart:
        part = self._open_part(delegation_id, index, sealed)  # (a part keeps its context: the digest was checked)
        self.peer.store.put_share(delegation_id, index, sealed)
        return part

    @staticmethod
    def _cache(cache: OrderedDict, key: Any, value: Any, bound: int = SHARE_CACHE) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > bound:
            cache.popitem(last=False)

    async def _derived_share(self, grant: GrantEntry) -> pre.PreparedKeyShare:
        """This peer's key share for a grant the ledger made from a standing delegation:
        rk_i = f(x_i) P2_B from its part and the doctor's certified receiving key."""
        peer = self.peer
        delegation_id = grant.delegation
        assert delegation_id is not None
        part = self._parts.get(delegation_id)
        if part is None:
            row = await trio.to_thread.run_sync(peer.store.share, delegation_id)
            if row is None:
                raise bus.HandlerError(codes.SHARE_MISSING,
                                       f"{peer.peer_id} holds no standing part of delegation {delegation_id}")
            try:
                part = await run_crypto(self._open_part, delegation_id, row[0], row[1])
            except CoreError:
                log.error("peer %s: stored standing part %s does not open", peer.peer_id, delegation_id)
                raise bus.HandlerError(codes.SHARE_MISSING, "the stored standing part is unusable") from None
            self._cache(self._parts, delegation_id, part)
        cert = peer.ledger.certificate(grant.doctor)
        if cert is None:
            raise bus.HandlerError(codes.ACCESS_FORBIDDEN, f"no certificate for {grant.doctor}")
        try:
            return await run_crypto(_derive_prepared, part, cert.cert.pre_key)
        except CoreError:
            raise bus.HandlerError(codes.ACCESS_FORBIDDEN, "the doctor's receiving key does not decode") from None

    async def _prepared_share(self, grant_id: str, grant: GrantEntry | None = None) -> pre.PreparedKeyShare:
        peer = self.peer
        prepared = self._shares.get(grant_id)
        if prepared is not None:
            self._shares.move_to_end(grant_id)
            return prepared
        if grant is not None and grant.delegation is not None:
            prepared = await self._derived_share(grant)
            self._cache_share(grant_id, prepared)
            return prepared
        row = await trio.to_thread.run_sync(peer.store.share, grant_id)
        if row is None:
            raise bus.HandlerError(codes.SHARE_MISSING, f"{peer.peer_id} holds no key share of grant {grant_id}")
        committed = grant if grant is not None else peer.ledger.grant(grant_id)
        # the digest the committed grant holds for this peer: what was checked at delivery, checked
        # again on the share read back from disk (and what binds a version-3 share to this grant)
        digest = committed.share_digest(peer.peer_id) if committed is not None else None
        try:
            prepared = await run_crypto(self._open_share, grant_id, row[0], row[1], digest, stored=True)
        except CoreError:
            log.error("peer %s: stored key share of grant %s does not open", peer.peer_id, grant_id)
            raise bus.HandlerError(codes.SHARE_MISSING, "the stored key share is unusable") from None
        self._cache_share(grant_id, prepared)
        return prepared

    def _check_reencryption(self, msg: bus.Message, request: PeerReencrypt) -> tuple[GrantEntry, RecordEntry]:
        """The object rule of ``peer.reencrypt`` (the grant and record on the ledger, the share,
        the access log's room): raises the refusal, else the grant and record."""
        peer = self.peer
        grant_id, patient, record_id, request_id = (request.grant_id, request.patient, request.record_id,
                                                    request.request_id)
        doctor = msg.sender
        try:
            grant, record = peer.ledger.check_reencryption(grant_id, doctor, patient, record_id, int(peer.clock()))
        except ValidationError as exc:
            # the one place a ledger reason code becomes a bus code; counted, logged once per doctor (a
            # doctor can ask in a loop: one log line per request would be the node's disk for ~100 bytes each)
            raise peer.refusals.refuse(doctor, PeerReencrypt.kind, codes.access_code(exc.code),
                                       exc.message) from None
        if request_id is not None and grant.request_id != request_id:  # (None: the grant's own)
            raise bus.HandlerError(codes.ACCESS_FORBIDDEN, "the request id is not the grant's")
        if grant.share_digest(peer.peer_id) is None:
            raise bus.HandlerError(codes.SHARE_MISSING, f"grant {grant_id} has no share at {peer.peer_id}")
        if peer.audit.full:  # no share served that could not be logged
            raise bus.HandlerError(codes.BUSY, f"{peer.peer_id}'s access log is full (the orderer is not taking "
                                               "its transactions); ask another peer or retry later")
        if peer.stopping:
            raise bus.HandlerError(codes.BUSY, f"{peer.peer_id} is stopping; ask another peer")
        return grant, record

    def _reencrypt_now(self, msg: bus.Message, request: PeerReencrypt) -> PeerReencryptReply:
        """``peer.reencrypt``'s fast companion: a repeat read answered from the reply cache
        (:attr:`_replies`) after the same checks, and logged the same way; anything that
        waits (a block to reach, a share to open, a pairing) defers to :meth:`_reencrypt`
        before changing anything."""
        grant_id = request.grant_id
        token = self._share_tokens.get(grant_id)
        if (token is None or grant_id not in self._shares
                or (request.min_height is not None and self.peer.height < request.min_height)):
            return bus.DEFER  # (no cached share: a first read, deferred before the ledger check the handler makes)
        grant, record = self._check_reencryption(msg, request)
        key = (grant_id, grant.request_id, record.cid, record.capsule)
        hit = self._replies.get(key)
        if hit is None or hit[0] is not token:
            return bus.DEFER
        self._shares.move_to_end(grant_id)
        self._replies.move_to_end(key)
        self.reply_hits += 1
        return self._served(msg, request, grant, hit[1])

    def _served(self, msg: bus.Message, request: PeerReencrypt, grant: GrantEntry,
                reply: PeerReencryptReply) -> PeerReencryptReply:
        """Log a share about to be served in the access log (or refuse it: the peer is stopping)."""
        peer = self.peer
        if peer.stopping:  # stopped meanwhile: its access log may not take this entry, so the share stays here
            raise bus.HandlerError(codes.BUSY, f"{peer.peer_id} is stopping; ask another peer")
        peer.audit.add(grant_id=request.grant_id, request_id=grant.request_id, record_id=request.record_id,
                       doctor=msg.sender)
        self.reencryptions += 1
        return reply

    async def _reencrypt(self, msg: bus.Message, request: PeerReencrypt) -> PeerReencryptReply:
        grant_id = request.grant_id
        if request.min_height is not None and self.peer.height < request.min_height:
            await self._reach(msg, request.min_height, PeerReencrypt.kind)
        grant, record = self._check_reencryption(msg, request)
        request_id = grant.request_id  # (what the request named, if it named one: checked above)
        prepared = self._shares.get(grant_id)
        if prepared is not None:  # the common case: no coroutine for a cached share
            self._shares.move_to_end(grant_id)
        else:
            prepared = await self._prepared_share(grant_id, grant)
        token = self._share_tokens.get(grant_id)
        key = (grant_id, request_id, record.cid, record.capsule)
        hit = self._replies.get(key)
        if hit is not None and token is not None and hit[0] is token:
            # the same capsule and key share: the share and its signed reply are what they were
            # (the grant was checked above, and the read is logged below, as for any share)
            self._replies.move_to_end(key)
            reply = hit[1]
            self.reply_hits += 1
        else:
            # one worker job: the re-encryption and its signature, batched with the peer's other
            # re-encryptions queued meanwhile (agents.peer._batch); the access is logged in the next batch
            reply = await self.batcher.run(self._reencrypt_job, record.capsule, record.cid, request_id, prepared)
            if token is not None and self.reply_cache:
                self._cache(self._replies, key, (token, reply), self.reply_cache)
        return self._served(msg, request, grant, reply)

    def _capsule(self, capsule: bytes) -> G1:
        """Worker thread: a record's capsule U as a point (its decoding checks the subgroup),
        memoized by its bytes: a record is read again and again under its grants. Bounded
        (cleared at :data:`SHARE_CACHE` capsules); points are immutable."""
        point = self._capsules.get(capsule)
        if point is None:
            point = G1.from_bytes(capsule)
            if len(self._capsules) >= SHARE_CACHE:
                self._capsules.clear()
            self._capsules[capsule] = point
        return point

    def _reencrypt_job(self, capsule: bytes, cid: str, request_id: str,
                       prepared: pre.PreparedKeyShare) -> PeerReencryptReply:
        """Worker thread: the signed reply."""
        peer = self.peer
        share = pre.reencrypt(self._capsule(capsule), prepared).to_bytes()  # s_i = e(U, rk_i): 292 bytes (GT compressed)
        return make_reencrypt_reply(peer.keys.ecdsa_private, request_id=request_id, cid=cid,
                                    index=prepared.index, share=share)


def _derive_prepared(part: pre.StandingPart, pre_key: bytes) -> pre.PreparedKeyShare:
    """Worker thread: the doctor's key share from a standing part, prepared for pairings."""
    return pre.derive_key_share(part, pre.PublicKey.from_bytes(pre_key)).prepare()
