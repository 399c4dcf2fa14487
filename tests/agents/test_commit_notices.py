"""Commit notices (topic ``commits/<subject>``): push, not poll, on the access path.

Against the real in-process swarm (orderer, 4 peers with threshold 2, 3
storage nodes): a doctor's full access (request, the patient's grant, shares,
blob) completes without one query asked twice and without a poll; a user may
subscribe only to its own notices; a lost notice falls back within its bound
(the idle autojump clock); reads with ``min_height`` see the write at any
peer.
"""

from __future__ import annotations

import dataclasses

import contextlib
import pathlib
from collections import Counter

import pytest
import trio

import bus
from agents.client import UserConfig
from agents.doctor import DoctorAgent
from agents.patient import PatientAgent
from agents.peer import PeerAgent
from agents.peer._handlers import QUERY_MAX_AHEAD, QUERY_WAIT_S
from agents.swarm import Swarm, SwarmSpec
from agents.testing.consortium import SHARING_POLICY as POLICY
from agents.testing.consortium import user_config
from core.ledger import effect_key
from core.protocol import OWN_KEY, PeerQuery, PeerSubmit, codes, commits_topic
from core.tx import Transaction

pytestmark = pytest.mark.slow

PATIENT = ("alice", "hospital-a", {"role": "patient"})
HEART = ("dr-heart", "hospital-b", {"role": "doctor", "department": "cardiology"})
MALLORY = ("mallory", "hospital-a", {"role": "patient"})


class Users:
    """Registered users' agents on ``swarm``, closed by ``stack`` (before the swarm)."""

    def __init__(self, swarm: Swarm, tmp: pathlib.Path, stack: contextlib.AsyncExitStack):
        self.swarm, self.tmp, self.stack = swarm, tmp, stack

    def config(self, subject, org, attributes, **kw) -> UserConfig:
        return user_config(self.swarm.manifest, self.tmp / "users" / subject, subject, org, attributes, **kw)

    async def open(self, cls, who, **kw):
        subject, org, attributes = who
        timeout = kw.pop("request_timeout", 10.0)
        agent = await self.stack.enter_async_context(
            cls.open(self.config(subject, org, attributes, request_timeout=timeout), node=self.swarm.node, **kw))
        await agent.register(self.swarm.token(subject, org, attributes, agent.enroll_id))
        return agent


@contextlib.asynccontextmanager
async def _swarm_and_users(tmp_path: pathlib.Path):
    """The real in-process swarm and its :class:`Users` (their agents close before the swarm)."""
    async with Swarm.open(SwarmSpec(data_dir=tmp_path / "swarm")) as swarm, contextlib.AsyncExitStack() as stack:
        yield swarm, Users(swarm, tmp_path, stack)


def _count_requests(client) -> list:
    """Wrap ``client.peer_request``: record each (kind, body) it sends; a poll sends the same query twice."""
    sent: list = []
    inner = client.peer_request

    async def counting(peer, kind, body, *, timeout=None):
        # a query travels as a row: recorded as the map of its fields that are set
        fields = ({k: v for k, v in dataclasses.asdict(PeerQuery.from_wire(body)).items() if v not in (None, False)}
                  if kind == PeerQuery.kind else dict(body) if isinstance(body, dict) else list(body))
        sent.append((kind, fields))
        return await inner(peer, kind, body, timeout=timeout)

    client.peer_request = counting
    return sent


def _query_key(body: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in body.items() if k != "min_height"))


async def _approve(info):
    return "label"


async def test_an_access_completes_without_polling(tmp_path):
    with trio.fail_after(120):
        async with _swarm_and_users(tmp_path) as (swarm, users):
            alice = await users.open(PatientAgent, PATIENT, approve=_approve)
            heart = await users.open(DoctorAgent, HEART)
            await alice.set_policy(POLICY, standing=())
            rid = await alice.store(b"ECG: sinus rhythm", label="cardiology", media_type="text/plain")
            await heart.client.lookup_certificate("alice")
            await alice.client.lookup_certificate("dr-heart")
            sent = {who.subject: _count_requests(who.client) for who in (alice, heart)}
            notices = {who.subject: who.client.commit_stats["notices"] for who in (alice, heart)}
            before = {who.subject: who.endpoint.statistics().sent_by_kind.get(PeerQuery.kind)
                      for who in (alice, heart)}
            assert await heart.read("alice", rid) == b"ECG: sinus rhythm"
            for who in (alice, heart):
                stats = who.client.commit_stats
                assert stats["polls"] == 0, (who.subject, stats)
                assert stats["fallbacks"] == 0, (who.subject, stats)
                # one each: the doctor's access_request, the patient's grant
                assert stats["notices"] - notices[who.subject] == 1, (who.subject, stats)
                queries = Counter(_query_key(b) for k, b in sent[who.subject] if k == PeerQuery.kind)
                assert [q for q, n in queries.items() if n > 1] == [], who.subject
                assert ("what", "head") not in {x for q in queries for x in q}
                # submits hand the bytes over and do not wait on the peer
                submits = [b for k, b in sent[who.subject] if k == PeerSubmit.kind]
                assert len(submits) == 1 and submits[0].get("wait", False) is False
                # the bus agrees: every peer.query the endpoint sent is one of those one-off reads
                after = who.endpoint.statistics().sent_by_kind[PeerQuery.kind].messages
                assert after - (before[who.subject].messages if before[who.subject] else 0) == \
                    sum(queries.values())
                # the reads after a commit name its height (read-your-writes at any peer)
            reads = [b for k, b in sent["alice"] + sent["dr-heart"]
                     if k == PeerQuery.kind and b["what"] in ("request", "grant")]
            assert reads and all(isinstance(b.get("min_height"), int) for b in reads)


async def test_a_user_subscribes_only_to_its_own_notices(tmp_path):
    with trio.fail_after(120):
        async with _swarm_and_users(tmp_path) as (swarm, users):
            alice = await users.open(PatientAgent, PATIENT)
            mallory = await users.open(PatientAgent, MALLORY)
            heart = await users.open(DoctorAgent, HEART)
            peer = swarm.manifest.peers[0]
            for ep, topic in ((mallory.endpoint, commits_topic("alice")),
                              (heart.endpoint, commits_topic("alice")),
                              (mallory.endpoint, "commits"),
                              (mallory.endpoint, commits_topic("mallory") + "/x"),
                              (mallory.endpoint, "events")):
                with pytest.raises(bus.RemoteError) as info:
                    await ep.subscribe(peer, topic, timeout=5)
                assert info.value.code == codes.FORBIDDEN, topic
            # alice's own notices reach alice only, with what her transaction wrote
            async with await mallory.endpoint.subscribe(peer, commits_topic("mallory"), timeout=5) as spy:
                rid = await alice.store(b"x-ray", label="cardiology", media_type="text/plain")
                await trio.sleep(0.3)
                with pytest.raises(trio.WouldBlock):
                    spy.receive_nowait()
            assert alice.client.commit_stats["notices"] >= 1
            rec = await alice.client.query(PeerQuery("record", patient="alice", record_id=rid))
            assert rec is not None


async def test_a_lost_notice_falls_back_within_its_bound(tmp_path, idle_clock, monkeypatch):
    async def silent(self, block, result):  # every peer loses every notice
        return None

    with trio.fail_after(300):
        async with _swarm_and_users(tmp_path) as (swarm, users):
            alice = await users.open(PatientAgent, PATIENT)
            monkeypatch.setattr(PeerAgent, "_notify_commits", silent)
            client = alice.client
            bound = client.notice_wait + client.config.request_timeout
            start = trio.current_time()
            rid = await alice.store(b"ECG", label="cardiology", media_type="text/plain")
            elapsed = trio.current_time() - start
            assert client.commit_stats["fallbacks"] == 1
            assert client.notice_wait <= elapsed <= bound
            assert rid in {r["record_id"] for r in await alice.records()}


async def test_a_broken_subscription_falls_back_at_once(tmp_path, idle_clock, monkeypatch):
    with trio.fail_after(300):
        async with _swarm_and_users(tmp_path) as (swarm, users):
            alice = await users.open(PatientAgent, PATIENT)
            client = alice.client
            assert await client._commit_notices()
            entered = trio.Event()

            async def drop_instead(self, block, result):
                # the publisher drops its subscriber (as the bus does one that lags: bus.dropped)
                # instead of publishing; private bus state, only to stage the break
                entered.set()
                self.endpoint._topics._drop(commits_topic("alice"), "alice", "lagged")

            monkeypatch.setattr(PeerAgent, "_notify_commits", drop_instead)
            start = trio.current_time()
            await alice.store(b"ECG", label="cardiology", media_type="text/plain")
            elapsed = trio.current_time() - start
            assert entered.is_set()
            assert client.commit_stats["fallbacks"] == 1
            assert elapsed < client.notice_wait  # woken by the break, not by the bound
            assert client._commit_sub is None  # re-made on a submit after RESUBSCRIBE_S


async def test_min_height_reads_wait_for_the_block_or_say_behind(tmp_path):
    with trio.fail_after(120):
        async with _swarm_and_users(tmp_path) as (swarm, users):
            alice = await users.open(PatientAgent, PATIENT)
            peer = swarm.manifest.peers[0]
            head = await alice.client.peer_request(peer, PeerQuery.kind, PeerQuery("head").to_wire())
            near = head["height"] + 3  # (no block is cut meanwhile: nothing is submitted)
            t0 = trio.current_time()
            with pytest.raises(bus.RemoteError) as info:
                await alice.client.peer_request(peer, PeerQuery.kind,
                                                PeerQuery("policy", patient="alice", min_height=near).to_wire())
            assert info.value.code == codes.QUERY_BEHIND
            assert trio.current_time() - t0 >= 1.5  # it waited for the block first
            # more than QUERY_MAX_AHEAD blocks ahead: behind at once, no wait
            far = head["height"] + QUERY_MAX_AHEAD + 1
            t0 = trio.current_time()
            with pytest.raises(bus.RemoteError) as info:
                await alice.client.peer_request(peer, PeerQuery.kind,
                                                PeerQuery("policy", patient="alice", min_height=far).to_wire())
            assert info.value.code == codes.QUERY_BEHIND and "blocks below" in info.value.message
            assert trio.current_time() - t0 < QUERY_WAIT_S
            # a height it has: answered at once, from a state that includes it
            now = await alice.client.query(PeerQuery("policy", patient="alice", min_height=head["height"]))
            assert now is None  # no policy set yet


async def test_a_flood_of_reads_ahead_of_the_ledger_waits_in_capped_slots(tmp_path):
    """A hostile user asks for heights the ledger will not reach: 4 wait (its per-sender
    cap), the rest are ``busy`` at once, each waiter ends ``query.behind``; others are served."""
    with trio.fail_after(120):
        async with _swarm_and_users(tmp_path) as (swarm, users):
            alice = await users.open(PatientAgent, PATIENT)
            mallory = await users.open(PatientAgent, MALLORY)
            peer = swarm.manifest.peers[0]
            head = await alice.client.peer_request(peer, PeerQuery.kind, PeerQuery("head").to_wire())
            answers: list[str | None] = []

            async def ahead(i: int) -> None:
                # (within QUERY_MAX_AHEAD: farther is refused without a wait; alice's store below cuts a block
                # or two, not twenty)
                body = PeerQuery("policy", patient="mallory", min_height=head["height"] + 20).to_wire()
                try:
                    await mallory.endpoint.request(peer, PeerQuery.kind, body, timeout=30)
                    answers.append(None)
                except bus.RemoteError as exc:
                    answers.append(exc.code)

            async with trio.open_nursery() as nursery:
                for i in range(40):
                    nursery.start_soon(ahead, i)
                with trio.move_on_after(60):  # the busy answers come at once, however busy the machine
                    while answers.count(codes.BUSY) < 36 and len(answers) < 40:
                        await trio.sleep(0.01)
                assert answers.count(codes.BUSY) == 36, Counter(answers)
                # the legitimate patient is served meanwhile
                rid = await alice.store(b"still served", label="cardiology", media_type="text/plain")
                assert [r["record_id"] for r in await alice.records()] == [rid]
            assert Counter(answers) == {codes.BUSY: 36, codes.QUERY_BEHIND: 4}


async def test_a_notice_carries_the_entry_its_block_left(tmp_path, monkeypatch):
    """The notice's effect is the entry as its block committed it (taken from the block's
    own writes, not read back from the store): a store's record entry equals what a
    peer.query reads from the ledger afterwards."""
    import agents.client as client_mod

    seen: list = []

    class Recording(client_mod.CommitNotice):
        @classmethod
        def from_wire(cls, body):
            notice = super().from_wire(body)
            seen.append(notice)
            return notice

    monkeypatch.setattr(client_mod, "CommitNotice", Recording)
    with trio.fail_after(120):
        async with _swarm_and_users(tmp_path) as (swarm, users):
            alice = await users.open(PatientAgent, PATIENT)
            rid = await alice.store(b"ECG: sinus rhythm", label="cardiology", media_type="text/plain")
            (notice,) = [n for n in seen if n.effect and "tx" in next(iter(n.effect.values()))]  # (the store's)
            assert notice.mark == "ok" and notice.type is None  # (its submitter knows the type)
            ((key, sent),) = notice.effect.items()
            # its own entry's key is the transaction's effect key, which its submitter derives
            assert key == OWN_KEY and not notice.projected  # a store's entry travels whole
            key = f"record/alice/{rid}"
            # the fields the store transaction's body holds travel once, in the transaction
            # (the notice echoes them: its submitter holds that body)
            tx = Transaction.from_bytes(sent["tx"])
            body = tx.body
            assert not {"cid", "capsule", "label", "size", "media_type"} & set(sent) and notice.echo
            assert effect_key(tx) == key
            entry = notice.expand(body, key)[key]
            ledger = await alice.client.query(PeerQuery("record", patient="alice", record_id=rid))
            assert entry["cid"] == ledger["cid"] and entry["height"] == notice.height == ledger["height"]
            assert entry["capsule"] == ledger["capsule"] and entry["label"] == "cardiology"


async def test_a_doctor_naming_heights_ahead_holds_at_most_two_of_its_patients_waits(tmp_path):
    """Attack review, fourth wave (finding 6): a doctor asks its patient with made-up request ids
    and heights the ledger has not reached. The patient waits for at most 2 of them at once
    (ANSWERS_WAITING_PER_DOCTOR; ``busy`` beyond, at once), so at every peer the patient keeps
    half its waiting slots for its own height-bound reads; a height farther than
    QUERY_MAX_AHEAD is answered at once."""
    from agents.patient import ANSWERS_WAITING_PER_DOCTOR
    from core.protocol import PatientAccessRequest

    with trio.fail_after(120):
        async with _swarm_and_users(tmp_path) as (swarm, users):
            alice = await users.open(PatientAgent, PATIENT)
            heart = await users.open(DoctorAgent, HEART)
            # (each knows the other's certificate: the envelopes verify from the first request on; a
            # peer may be a block behind the other's registration)
            for me, other in ((alice, "dr-heart"), (heart, "alice")):
                while await me.client.lookup_certificate(other) is None:
                    await trio.sleep(0.05)
            head = (await alice.client.peer_request(swarm.manifest.peers[0], PeerQuery.kind,
                                                    PeerQuery("head").to_wire()))["height"]
            answers: list[str] = []

            async def ask(i: int, height: int) -> None:
                body = PatientAccessRequest(f"q-made-up-{i}", height).to_wire()
                try:
                    await heart.endpoint.request("alice", PatientAccessRequest.kind, body, timeout=60)
                    answers.append("answered")
                except bus.RemoteError as exc:
                    answers.append(exc.code)

            async with trio.open_nursery() as nursery:
                for i in range(ANSWERS_WAITING_PER_DOCTOR + 3):
                    nursery.start_soon(ask, i, head + 20)  # (within QUERY_MAX_AHEAD; no 20 blocks cut meanwhile)
                with trio.move_on_after(60):
                    while answers.count(codes.BUSY) < 3:
                        await trio.sleep(0.01)
                assert answers == [codes.BUSY] * 3  # at once, while the others wait
                assert alice.waiting.waiting == ANSWERS_WAITING_PER_DOCTOR
                # alice's own height-bound reads are served at every peer meanwhile
                for peer in swarm.manifest.peers:
                    got = await alice.client.peer_request(peer, PeerQuery.kind, PeerQuery(
                        "policy", patient="alice", min_height=head).to_wire())
                    assert got is None
                # and the same doctor's real request, committed at a height the peers have, is answered:
                # read without a wait while its two waiting slots are taken
                await alice.set_policy(POLICY, standing=())
                rid = await alice.store(b"ECG", label="cardiology", media_type="text/plain")
                assert await heart.read("alice", rid) == b"ECG"
                assert alice.waiting.waiting == ANSWERS_WAITING_PER_DOCTOR
            assert answers.count(codes.BUSY) == 3 and len(answers) == 5 and "answered" not in answers, answers
            # a height past QUERY_MAX_AHEAD costs no wait at all (each peer says behind at once)
            t0 = trio.current_time()
            await ask(99, head + QUERY_MAX_AHEAD + 10)
            assert trio.current_time() - t0 < QUERY_WAIT_S
            assert alice.waiting.waiting == 0
