"""agents.peer._audit.AccessLog (a peer's re-encryptions, logged in signed batches) on a
virtual clock, and on a real swarm: a doctor's reads in the patient's audit trail exactly
once per share served."""

from __future__ import annotations

import contextlib
import functools
import os
import time

import pytest
import trio
import trio.testing

import bus
from core import canonical
from core.ledger import MAX_ACCESS_ENTRIES
from core.protocol import codes

from agents.errors import AgentError
from agents.peer._audit import AccessJournal, AccessLog

T = 1_780_000_000.0


class Orderer:
    """A fake ``forward``: fails ``fail`` times, then takes everything."""

    def __init__(self, fail: int = 0):
        self.fail = fail
        self.calls: list[list[bytes]] = []
        self.taken: list[bytes] = []

    async def __call__(self, txs: list[bytes]) -> None:
        self.calls.append(list(txs))
        if self.fail:
            self.fail -= 1
            raise bus.HandlerError(codes.SUBMIT_UNAVAILABLE, "orderer unavailable")
        self.taken.extend(txs)


def sign(body, timestamp_ms):
    return canonical.pack([timestamp_ms, body])


def batches(raws):
    return [canonical.unpack(r) for r in raws]


async def inline(fn, *args):
    return fn(*args)  # (a worker thread would let the virtual clock run ahead of it)


def make_log(orderer, clock=lambda: T, **kw):
    return AccessLog(index=3, sign=sign, forward=orderer, clock=clock, run_sign=inline, **kw)


def add(log, n=1, grant="g1"):
    for i in range(n):
        log.add(grant_id=grant, request_id="r1", record_id=f"rec-{i}", doctor="bob")


async def test_entries_of_one_window_go_out_as_one_signed_batch(autojump_clock):
    orderer = Orderer()
    log = make_log(orderer, window=0.05)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run)
        add(log, 3)
        await trio.sleep(0.04)
        add(log, 1, grant="g2")
        assert orderer.calls == [] and log.pending == 4
        await trio.sleep(0.02)
        assert len(orderer.taken) == 1
        ts, body = batches(orderer.taken)[0]
        assert body["index"] == 3 and [e["record_id"] for e in body["entries"]] == ["rec-0", "rec-1", "rec-2", "rec-0"]
        assert ts == int(T * 1000) and all(e["time"] == ts for e in body["entries"])
        assert (log.logged, log.batches, log.pending) == (4, 1, 0)
        add(log, 2)  # the next window starts with the next entry
        await trio.sleep(0.06)
        assert len(orderer.taken) == 2 and len(batches(orderer.taken)[1][1]["entries"]) == 2
        nursery.cancel_scope.cancel()


async def test_a_full_batch_is_signed_at_once_and_a_batch_holds_at_most_the_ledgers_limit(autojump_clock):
    orderer = Orderer()
    log = make_log(orderer, window=10.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run)
        start = trio.current_time()
        add(log, MAX_ACCESS_ENTRIES + 5)
        while log.pending:
            await trio.sleep(0.001)
        assert trio.current_time() - start < 10.0  # not the window: the batch filled
        sizes = [len(b["entries"]) for _, b in batches(orderer.taken)]
        assert sizes == [MAX_ACCESS_ENTRIES, 5]
        nursery.cancel_scope.cancel()
    with pytest.raises(ValueError):
        make_log(orderer, max_entries=MAX_ACCESS_ENTRIES + 1)


async def test_a_batch_the_orderer_did_not_take_is_forwarded_again_the_same_bytes(autojump_clock):
    orderer = Orderer(fail=3)
    log = make_log(orderer, window=0.01, retry_min=0.1, retry_max=0.3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run)
        add(log, 2)
        await trio.sleep(0.02)
        add(log, 1, grant="g2")  # arrives while the first batch waits for its retry
        await trio.sleep(2.0)
        assert log.retries == 3 and log.dropped == 0 and log.pending == 0
        first = orderer.calls[0][0]
        assert all(call[0] == first for call in orderer.calls)  # resent as signed, never re-signed
        assert orderer.taken[0] == first and len(orderer.taken) == 2 and log.logged == 3
        nursery.cancel_scope.cancel()


async def test_a_batch_not_taken_within_max_age_is_dropped_and_counted(autojump_clock):
    orderer = Orderer(fail=10**6)
    log = make_log(orderer, window=0.01, max_age=5.0, retry_max=1.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run)
        add(log, 4)
        await trio.sleep(4.0)
        assert log.pending == 4 and log.dropped == 0
        await trio.sleep(3.0)
        assert log.pending == 0 and log.dropped == 4 and orderer.taken == []
        nursery.cancel_scope.cancel()


async def test_the_log_is_bounded_and_says_when_it_is_full(autojump_clock):
    orderer = Orderer(fail=10**6)
    log = make_log(orderer, window=0.01, max_pending=5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run)
        add(log, 4)
        assert not log.full
        add(log, 1)
        assert log.full
        await trio.sleep(0.5)  # signed, not taken: still pending, still full
        assert log.full and log.pending == 5
        orderer.fail = 0
        await trio.sleep(5.0)
        assert not log.full and log.logged == 5
        nursery.cancel_scope.cancel()


class SlowOrderer(Orderer):
    """A ``forward`` that holds every call until ``release`` is set (an orderer that does not answer)."""

    def __init__(self):
        super().__init__()
        self.release = trio.Event()

    async def __call__(self, txs: list[bytes]) -> None:
        self.calls.append(list(txs))
        await self.release.wait()
        self.taken.extend(txs)


@pytest.mark.parametrize("answers", ["refuses", "hangs"])
async def test_a_log_the_orderer_does_not_take_is_full_after_stall_after_long_before_max_age(autojump_clock,
                                                                                             answers):
    orderer = Orderer(fail=10**6) if answers == "refuses" else SlowOrderer()
    log = make_log(orderer, window=0.01, max_age=60.0, retry_max=1.0)
    assert log.stall_after == 15.0  # a quarter of max_age unless given
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run)
        assert not log.full and log.oldest_age == 0
        add(log, 2)
        await trio.sleep(14.0)
        add(log, 1)  # a fresh entry does not make the oldest one younger
        assert not log.full and 13.9 < log.oldest_age <= 14.0 and log.pending == 3
        await trio.sleep(1.5)
        assert log.full and log.dropped == 0  # busy from now on: nothing served that might not be logged
        if answers == "refuses":
            orderer.fail = 0
        else:
            orderer.release.set()
        await trio.sleep(5.0)
        assert not log.full and log.logged == 3 and log.dropped == 0 and log.oldest_age == 0
        nursery.cancel_scope.cancel()


def test_stall_after_must_be_shorter_than_max_age():
    with pytest.raises(ValueError, match="stall_after"):
        make_log(Orderer(), max_age=10.0, stall_after=10.0)


async def test_the_peers_access_log_goes_ahead_of_its_clients_queued_submissions():
    from agents.peer._forwarder import TxForwarder

    sent: list[tuple[bytes, ...]] = []
    forwarder = TxForwarder(orderers=["orderer"], submit_timeout=1.0)

    async def send(endpoint, txs):
        sent.append(txs)
        return None

    forwarder._send = send  # the orderer's side is not what this test is about
    async with trio.open_nursery() as nursery:
        for tx in (b"client-1", b"client-2"):
            nursery.start_soon(forwarder.forward, [tx])
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(functools.partial(forwarder.forward, [b"audit"], first=True))
        await trio.testing.wait_all_tasks_blocked()
        assert forwarder.queued == 3
        nursery.start_soon(forwarder._forward_loop, None)
        await trio.testing.wait_all_tasks_blocked()
        assert sent and sent[0][0] == b"audit" and [tx for txs in sent for tx in txs] == [b"audit", b"client-1",
                                                                                          b"client-2"]
        nursery.cancel_scope.cancel()


async def test_identical_reads_in_one_millisecond_stay_distinct_and_before_their_batch(autojump_clock):
    orderer = Orderer()
    log = make_log(orderer, window=0.01)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run)
        for _ in range(3):
            log.add(grant_id="g1", request_id="r1", record_id="rec-1", doctor="bob")
        await trio.sleep(0.05)
        ts, body = batches(orderer.taken)[0]
        times = [e["time"] for e in body["entries"]]
        assert times == [int(T * 1000) + i for i in range(3)] and ts >= max(times)
        nursery.cancel_scope.cancel()


async def test_flush_at_stop_signs_and_sends_what_is_pending_or_counts_it_lost(autojump_clock):
    log = make_log(Orderer(fail=10**6), window=60.0)
    add(log, 3)
    direct = Orderer()
    await log.flush(direct)
    assert len(direct.taken) == 1 and len(batches(direct.taken)[0][1]["entries"]) == 3 and log.pending == 0
    add(log, 2)
    await log.flush(Orderer(fail=1))
    assert log.pending == 0 and log.dropped == 2


# ------------------------------------------------------------------ the journal (crash and restart)


def journaled(tmp_path, orderer, **kw):
    return make_log(orderer, journal=AccessJournal(tmp_path / "access-journal"), **kw)


def logged_entries(orderer):
    return [(e["record_id"], e["time"]) for _, body in batches(orderer.taken) for e in body["entries"]]


async def test_a_crash_loses_no_served_entry_the_restart_replays_the_journal(autojump_clock, tmp_path):
    down = Orderer(fail=10**6)
    log = journaled(tmp_path, down, window=0.05)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run)
        add(log, 5)
        await trio.sleep(0.1)  # signed as one batch, not taken: the orderer is down
        add(log, 2, grant="g2")  # served, not yet signed
        nursery.cancel_scope.cancel()  # the crash: no flush
    log.journal.close()
    assert down.taken == [] and len(down.calls) >= 1
    unsent = down.calls[0][0]
    up = Orderer()
    again = journaled(tmp_path, up, window=0.05)
    again.recover(lambda raw: False)
    assert again.recovered == 7 and again.pending == 7
    async with trio.open_nursery() as nursery:
        nursery.start_soon(again.run)
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    assert up.taken[0] == unsent  # the signed batch again, the same bytes (a copy is refused by its nonce)
    assert sorted(logged_entries(up)) == sorted([(f"rec-{i}", int(T * 1000)) for i in range(5)]
                                                + [(f"rec-{i}", int(T * 1000)) for i in range(2)])
    assert [b[1]["entries"][0]["grant_id"] for b in batches(up.taken)] == ["g1", "g2"]
    again.journal.close()
    # after the restart's replay was taken, nothing is replayed a second time
    third = journaled(tmp_path, Orderer())
    third.recover(lambda raw: raw in up.taken)
    assert third.recovered == 0 and third.pending == 0


async def test_the_restart_skips_committed_batches_and_entries_too_old_to_log(autojump_clock, tmp_path):
    orderer = Orderer()
    clock = [T]
    log = journaled(tmp_path, orderer, window=0.05, clock=lambda: clock[0], max_age=10.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run)
        add(log, 3)
        await trio.sleep(0.1)
        assert len(orderer.taken) == 1  # taken (and, below, committed)
        add(log, 1, grant="g2")
        nursery.cancel_scope.cancel()
    log.journal.close()
    clock[0] += 11.0  # the restart comes after max_age: the unsigned entry can no longer be logged
    later = journaled(tmp_path, Orderer(), clock=lambda: clock[0], max_age=10.0)
    later.recover(lambda raw: raw in orderer.taken)
    assert (later.recovered, later.pending, later.dropped) == (0, 0, 1)
    assert later.journal.read() == []


async def test_a_damaged_journaled_entry_is_skipped_not_signed_with_the_others(autojump_clock, tmp_path):
    journal = AccessJournal(tmp_path / "j")
    good = {"grant_id": "g1", "request_id": "r1", "record_id": "rec-0", "doctor": "bob", "time": int(T * 1000)}
    journal.append(["e", good])
    journal.append(["e", {**good, "record_id": 7}])
    journal.append(["e", {**good, "extra": 1}])
    journal.close()
    log = make_log(Orderer(), journal=AccessJournal(tmp_path / "j"))
    log.recover(lambda raw: False)
    assert log.recovered == 1 and log.pending == 1 and log.journal.read() == [["e", good]]


def test_a_torn_last_record_is_ignored(tmp_path):
    journal = AccessJournal(tmp_path / "j")
    journal.append(["e", {"time": 1}])
    journal.append(["e", {"time": 2}])
    journal.close()
    data = (tmp_path / "j").read_bytes()
    (tmp_path / "j").write_bytes(data[:-3])
    assert AccessJournal(tmp_path / "j").read() == [["e", {"time": 1}]]


def test_the_sync_thread_fdatasyncs_what_changed_and_stops_with_its_context(tmp_path, monkeypatch):
    import os
    import time

    synced = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd)))
    journal = AccessJournal(tmp_path / "j")
    with journal.syncing(0.01):
        time.sleep(0.05)
        assert synced == []  # nothing changed
        journal.append(["e", {"time": 1}])
        deadline = time.monotonic() + 30
        while journal.dirty and time.monotonic() < deadline:
            time.sleep(0.005)
        assert not journal.dirty and len(synced) == 1
    journal.append(["e", {"time": 2}])
    time.sleep(0.05)
    assert journal.dirty and len(synced) == 1  # the thread stopped with its context
    journal.close()


async def test_the_journal_stays_bounded_it_keeps_only_what_the_orderer_did_not_take(autojump_clock, tmp_path):
    orderer = Orderer()
    log = make_log(orderer, window=0.01, journal=AccessJournal(tmp_path / "j", max_bytes=20_000, run_sync=inline))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run)
        for i in range(100):
            add(log, 10, grant=f"g{i}")
            await trio.sleep(0.05)
            assert log.journal.size <= 20_000 + 10_000
        nursery.cancel_scope.cancel()
    assert log.logged == 1000
    records = log.journal.read()
    assert sum(r[0] == "e" for r in records) < 200  # rewritten: not every entry ever served
    await log.flush()
    assert log.journal.read() == [] and log.journal.size == 0


# ------------------------------------------------------------------ a real swarm


@contextlib.asynccontextmanager
async def _swarm(tmp_path):
    from agents.doctor import DoctorAgent
    from agents.patient import PatientAgent
    from agents.swarm import Swarm, SwarmSpec
    from agents.testing.consortium import SHARING_POLICY, swarm_user_config

    patient = ("alice", "hospital-a", {"role": "patient"})
    doctor = ("dr-h", "hospital-b", {"role": "doctor", "department": "cardiology"})
    async with Swarm.open(SwarmSpec(data_dir=tmp_path / "swarm")) as swarm:
        async with PatientAgent.open(swarm_user_config(swarm, *patient), node=swarm.node) as p, \
                DoctorAgent.open(swarm_user_config(swarm, *doctor), node=swarm.node) as d:
            await p.register(swarm.token(*patient, p.enroll_id))
            await d.register(swarm.token(*doctor, d.enroll_id))
            await p.set_policy(SHARING_POLICY, standing=())
            rid = await p.store(b"x" * 2000, label="cardiology", media_type="text/plain")
            yield swarm, p, d, rid


def _peers(swarm):
    return {pid: swarm.runners[pid].peer for pid in swarm.manifest.peers}


async def _logged(swarm, peer_id):
    return [e for e in _peers(swarm)[peer_id].ledger.audit("alice") if e["event"] == "access"]


async def _quiet(swarm, peers) -> int:
    """The shares served once every one is on the ledger (peer-a1's copy) and nothing changed
    for 0.5 s: a read returns at t shares while a hedged request to another peer may still be
    served after it (and logged in that peer's next batch)."""
    last = None
    while True:
        served = sum(peer.handlers.reencryptions for peer in peers.values())
        now = (served, len(await _logged(swarm, "peer-a1")))
        if now == last and now[1] >= served and not any(peer.audit.pending for peer in peers.values()):
            return served
        last = now
        await trio.sleep(0.5)


async def test_a_doctors_reads_are_in_the_audit_trail_once_per_share_served(tmp_path):
    with trio.fail_after(120):
        async with _swarm(tmp_path) as (swarm, p, d, rid):
            peers = _peers(swarm)
            for peer in peers.values():
                peer.audit.window = 0.5  # concurrent reads share a batch
            await d.read("alice", rid)
            async with trio.open_nursery() as nursery:
                for _ in range(6):
                    nursery.start_soon(d.read, "alice", rid)
            served = await _quiet(swarm, peers)
            assert served >= 2 * 7
            await trio.sleep(1.0)  # nothing more comes: every share once
            events = await _logged(swarm, "peer-a1")
            assert len(events) == served
            for pid, peer in peers.items():  # per peer: its own shares, each once
                mine = [e for e in events if e["peer"] == pid]
                assert len(mine) == peer.handlers.reencryptions == peer.audit.logged
                assert len({(e["time"], e["request_id"], e["record_id"]) for e in mine}) == len(mine)
            assert len({e["tx"] for e in events}) < len(events)  # batched: fewer signatures than shares
            assert all(e["doctor"] == "dr-h" and e["record_id"] == rid for e in events)
            assert [e["event"] for e in await p.audit()].count("access") == served  # the patient's own view
            # every peer holds the same trail (once it applied the same blocks)
            while not all([await _logged(swarm, pid) == events for pid in peers]):
                await trio.sleep(0.05)


async def test_a_peer_whose_log_is_full_serves_no_share_and_a_stopping_peer_flushes_its_log(tmp_path):
    with trio.fail_after(120):
        async with _swarm(tmp_path) as (swarm, p, d, rid):
            peers = _peers(swarm)
            await d.read("alice", rid)
            await _quiet(swarm, peers)
            served = {pid: peer.handlers.reencryptions for pid, peer in peers.items()}
            for peer in peers.values():
                peer.audit.max_pending = 0
            with pytest.raises(AgentError):
                await d.read("alice", rid)
            assert {pid: peer.handlers.reencryptions for pid, peer in peers.items()} == served
            for peer in peers.values():
                peer.audit.max_pending = 4096
                peer.audit.window = 60.0  # only a stop sends the next batch
            while len(await _logged(swarm, "peer-a1")) < sum(served.values()):
                await trio.sleep(0.05)
            before = len(await _logged(swarm, "peer-a1"))
            await d.read("alice", rid)
            busy = [pid for pid, peer in peers.items() if peer.audit.pending]
            assert busy and len(busy) < len(peers)
            for pid in busy:
                await swarm.stop_agent(pid)
            watcher = next(pid for pid in peers if pid not in busy)
            while len(await _logged(swarm, watcher)) < before + len(busy):
                await trio.sleep(0.05)
            assert all(peers[pid].audit.dropped == 0 for pid in busy)
            assert all(peers[pid].stopping for pid in busy)
            # a stopping peer (still answering while it flushes) serves no share its log might not take
            running = [pid for pid in peers if pid not in busy]
            served = {pid: peers[pid].handlers.reencryptions for pid in running}
            for pid in running:
                peers[pid].stopping = True
            with pytest.raises(AgentError):
                await d.read("alice", rid)
            assert {pid: peers[pid].handlers.reencryptions for pid in running} == served


async def test_a_hostile_peers_forged_batches_are_refused_on_every_peer(tmp_path):
    import time

    from core.ledger import MAX_ACCESS_ENTRIES
    from core.tx import Transaction

    with trio.fail_after(120):
        async with _swarm(tmp_path) as (swarm, p, d, rid):
            peers = _peers(swarm)
            await d.read("alice", rid)
            served = await _quiet(swarm, peers)
            for pid in peers:
                while len(await _logged(swarm, pid)) < served:
                    await trio.sleep(0.05)
            real = (await _logged(swarm, "peer-a1"))[0]
            hostile = "peer-a1"
            key = swarm.files.agent_keys(hostile).ecdsa_private
            now = int(time.time() * 1000)
            ok = {k: real[k] for k in ("grant_id", "request_id", "record_id", "doctor")}

            def forged(entries, index=peers[hostile].info.index):
                return Transaction.create("access_batch", hostile, {"index": index, "entries": entries}, key,
                                          now).to_bytes()

            cases = {
                "not_found": forged([{**ok, "time": now}, {**ok, "grant_id": "g-none", "time": now - 1}]),
                "forbidden": forged([{**ok, "doctor": "someone-else", "time": now}]),
                "malformed": forged([{**ok, "time": now - i} for i in range(MAX_ACCESS_ENTRIES + 1)]),
            }
            cases["duplicate"] = forged([{**ok, "time": now}, {**ok, "time": now}])
            before = served
            for expected, raw in cases.items():
                [(_, _, mark)] = await peers[hostile].submit([raw], wait=True)
                assert mark == ("malformed" if expected == "duplicate" else expected)
            for pid in peers:
                assert len(await _logged(swarm, pid)) == before


async def test_entries_being_signed_still_count_as_pending_and_by_their_age(autojump_clock):
    """While a chunk is signed (a worker thread in the peer) its entries are neither waiting
    nor sent: they still count in ``pending`` and ``oldest_age`` (so ``full`` sees them)."""
    release = trio.Event()

    async def slow_sign(fn, *args):
        await release.wait()
        return fn(*args)

    orderer = Orderer()
    log = AccessLog(index=3, sign=sign, forward=orderer, clock=lambda: T, run_sign=slow_sign, window=0.01,
                    max_pending=3, max_age=8.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run)
        add(log, 3)
        await trio.sleep(2.5)  # the window is over: the chunk is being signed
        assert log.pending == 3 and log.full and 2.4 < log.oldest_age <= 2.5
        release.set()
        await trio.sleep(0.1)
        assert log.pending == 0 and log.logged == 3 and not log.full and log.oldest_age == 0
        nursery.cancel_scope.cancel()


async def test_a_peer_that_crashes_with_unlogged_reads_logs_them_after_its_restart(tmp_path):
    with trio.fail_after(120):
        async with _swarm(tmp_path) as (swarm, p, d, rid):
            peer = _peers(swarm)["peer-a1"]
            await d.read("alice", rid)

            async def orderer_down(txs):
                raise bus.HandlerError(codes.SUBMIT_UNAVAILABLE, "orderer unavailable")

            async def crash(forward=None):
                return None  # a crash: nothing flushed at stop

            peer.audit._forward = orderer_down
            peer.audit.flush = crash
            while peer.audit.pending < 3:  # reads until peer-a1 served some (the doctor picks t of 4 peers)
                await d.read("alice", rid)
            unlogged = peer.audit.pending
            await swarm.stop_agent("peer-a1")
            await swarm.start_agent("peer-a1")
            restarted = _peers(swarm)["peer-a1"]
            assert restarted is not peer and restarted.audit.recovered == unlogged
            peers = _peers(swarm)

            def served() -> dict[str, int]:
                out = {pid: q.handlers.reencryptions for pid, q in peers.items() if pid != "peer-a1"}
                out["peer-a1"] = peer.handlers.reencryptions + restarted.handlers.reencryptions
                return out

            while len(await _logged(swarm, "peer-a2")) < sum(served().values()) or \
                    any(q.audit.pending for q in peers.values()):
                await trio.sleep(0.2)
            await trio.sleep(1.0)  # nothing more comes: every share once
            events = await _logged(swarm, "peer-a2")
            served = served()
            for pid, n in served.items():  # every share served, once, the crashed peer's too
                assert len([e for e in events if e["peer"] == pid]) == n, pid


async def test_a_rewrite_off_the_loop_keeps_what_is_appended_while_it_runs(tmp_path, monkeypatch):
    journal = AccessJournal(tmp_path / "j")
    for i in range(5):
        journal.append(["e", {"time": i}])
    in_thread = trio.Event()
    token = trio.lowlevel.current_trio_token()
    real_fsync = os.fsync

    def slow_fsync(fd):  # the worker thread's fsync of the new file: appends happen meanwhile
        trio.from_thread.run_sync(in_thread.set, trio_token=token)
        time.sleep(0.2)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(journal.rewrite_off_loop, [["e", {"time": 3}], ["e", {"time": 4}]])
        await in_thread.wait()
        assert journal.rewriting
        with pytest.raises(RuntimeError):
            await journal.rewrite_off_loop([])
        journal.append(["e", {"time": 10}])
        journal.append(["b", 1, b"raw"])
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert not journal.rewriting
    want = [["e", {"time": 3}], ["e", {"time": 4}], ["e", {"time": 10}], ["b", 1, b"raw"]]
    assert journal.read() == want
    assert journal.size == (tmp_path / "j").stat().st_size and journal.dirty
    journal.append(["e", {"time": 11}])  # the journal writes to the new file
    assert journal.read() == want + [["e", {"time": 11}]]
    assert not (tmp_path / "j.tmp").exists()
    assert (tmp_path / "j").stat().st_mode & 0o777 == 0o600
    journal.close()
