"""The patient's store path: the local state is saved off the store's path, coalesced, and
at the latest when the agent closes (agents/patient.py, PatientAgent.store)."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
import trio

import bus
from agents.client import STATE_FILE, PeerClient
from agents.patient import PatientAgent
from agents.testing.consortium import user_config
from agents.testing.double import FakeConsortium

PATIENT = {"role": "patient"}


@pytest.fixture
async def fake_swarm(tmp_path):
    fake = FakeConsortium(tmp_path)
    async with bus.open_node() as node, trio.open_nursery() as nursery:
        await fake.run(node, nursery)
        yield fake, node
        nursery.cancel_scope.cancel()


def _config(fake, tmp_path):
    return user_config(fake.manifest, tmp_path / "users" / "alice", "alice", "hospital-a", PATIENT)


def _saved_records(tmp_path) -> dict:
    state = msgpack.unpackb((tmp_path / "users" / "alice" / STATE_FILE).read_bytes(), raw=False,
                            strict_map_key=False)
    return state["records"]


async def test_store_returns_before_the_state_save_and_close_saves_it(fake_swarm, tmp_path, monkeypatch):
    fake, node = fake_swarm
    saves = []
    release = trio.Event()
    real_save = PeerClient.save_state

    async def slow_save(self):
        saves.append(len(self.state.get("records", {})))
        if len(saves) > 1:  # registration's save goes through; a store's waits for the test
            await release.wait()
        await real_save(self)

    monkeypatch.setattr(PeerClient, "save_state", slow_save)
    with trio.fail_after(30):
        async with PatientAgent.open(_config(fake, tmp_path), node=node) as alice:
            await alice.register(fake.token("alice", "hospital-a", PATIENT, alice.enroll_id))
            first = await alice.store(b"one", label="labs", media_type="text/plain")  # returns: the save waits
            assert first in alice.state["records"]
            # stores that finish while a save is being written share the next one
            more = [await alice.store(b"x%d" % i, label="labs", media_type="text/plain") for i in range(3)]
            assert len(saves) == 2  # registration's and the first store's (still waiting)
            release.set()
            while alice.client._state_saving:
                await trio.sleep(0.01)
            assert saves == [0, 1, 4]  # one more save for the three stores
            assert set(_saved_records(tmp_path)) == {first, *more}
            last = await alice.store(b"last", label="labs", media_type="text/plain")
        # the agent closed: what the background saver had not written yet is on disk
        assert set(_saved_records(tmp_path)) == {first, *more, last}
        assert [r["record_id"] for r in await _records_of(fake, node, tmp_path)] != []


async def _records_of(fake, node, tmp_path):
    async with contextlib.AsyncExitStack() as stack:
        alice = await stack.enter_async_context(PatientAgent.open(_config(fake, tmp_path), node=node))
        assert set(alice.state["records"]) == set(_saved_records(tmp_path))
        return await alice.records()


async def test_a_failed_background_save_is_logged_and_retried_by_the_next_store(fake_swarm, tmp_path, monkeypatch,
                                                                              caplog):
    fake, node = fake_swarm
    real_save = PeerClient.save_state
    fail = {"on": False}

    async def flaky_save(self):
        if fail["on"]:
            fail["on"] = False
            raise OSError(28, "No space left on device")
        await real_save(self)

    monkeypatch.setattr(PeerClient, "save_state", flaky_save)
    with trio.fail_after(30):
        async with PatientAgent.open(_config(fake, tmp_path), node=node) as alice:
            await alice.register(fake.token("alice", "hospital-a", PATIENT, alice.enroll_id))
            fail["on"] = True
            first = await alice.store(b"one", label="labs", media_type="text/plain")  # the store itself succeeds
            while alice.client._state_saving:
                await trio.sleep(0.01)
            assert "saving the local state failed" in caplog.text
            assert alice.client._state_dirty and first not in _saved_records(tmp_path)
            second = await alice.store(b"two", label="labs", media_type="text/plain")
            while alice.client._state_saving:
                await trio.sleep(0.01)
            assert {first, second} <= set(_saved_records(tmp_path))
