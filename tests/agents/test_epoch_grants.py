"""A doctor keeps its grants of a label's earlier key epochs (issue 14: the load test's reads drifted).

A revocation moves a label's new records to the next label-key epoch and a grant's
key shares open one epoch's records. A doctor that held one grant per (patient,
label) asked the patient for a new grant at every switch between records of two
epochs, so the share of reads that needed a whole access grew with every
revocation during a load test. It now keeps the grants of the label's other
epochs beside the newest one (``DoctorAgent.epoch_grants``, bounded), saved with
its state; what it reads back from its state file is checked.

Against the protocol double (tests/agents/test_patient_doctor.py's ``world``).
"""

from __future__ import annotations

import contextlib
import types

import msgpack
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.client import STATE_FILE
from agents.doctor import EPOCH_GRANTS_KEPT, DoctorAgent, valid_epoch_grants
from agents.errors import GrantRevoked
from agents.patient import PatientAgent
from agents.testing.consortium import CARDIOLOGY_POLICY as POLICY
from tests.agents.test_patient_doctor import CARDIO, world  # noqa: F401 (fixture)

KEY = "alice\x00cardiology"


async def _approve(info):
    return "label"  # (a doctor whose grant was revoked is granted by the patient, not automatically)


async def _two_epochs(world, stack):  # noqa: F811
    """alice's cardiology records r0 (epoch 0) and r1 (epoch 1: another doctor's grant was
    revoked in between); the patient makes every doctor's key shares (no standing
    delegation), so ``alice.grants`` counts the grants she made. Returns (alice, r0, r1)."""
    alice = await world.registered(stack, PatientAgent, "alice", "hospital-a", {"role": "patient"}, approve=_approve)
    other = await world.registered(stack, DoctorAgent, "dr-other", "hospital-a", CARDIO)
    r0 = await alice.store(b"ECG of epoch 0", label="cardiology", media_type="text/plain")
    await alice.set_policy(POLICY, standing=())
    assert await other.read("alice", r0) == b"ECG of epoch 0"
    await alice.revoke(other.cached_grant("alice", "cardiology")["grant_id"], "left the team")
    r1 = await alice.store(b"ECG of epoch 1", label="cardiology", media_type="text/plain")
    assert alice.epoch("cardiology") == 1
    return alice, r0, r1


def _saved(doctor: DoctorAgent) -> dict:
    """The doctor's state as its state file holds it."""
    return msgpack.unpackb((doctor.client.data_dir / STATE_FILE).read_bytes(), raw=False, strict_map_key=False)


async def _saved_now(doctor: DoctorAgent) -> dict:
    """The state file once the background saver wrote what it had (no flush: what a crash keeps)."""
    while doctor.client._state_dirty or doctor.client._state_saving:
        await trio.sleep(0.01)
    return _saved(doctor)


async def test_a_doctor_reads_records_of_two_epochs_with_one_grant_each_across_a_restart(world):  # noqa: F811
    with trio.fail_after(60):
        async with contextlib.AsyncExitStack() as stack:
            alice, r0, r1 = await _two_epochs(world, stack)
            config = world.config("dr-heart", "hospital-b", CARDIO)
            async with DoctorAgent.open(config, node=world.node) as heart:
                await heart.register(world.fake.token("dr-heart", "hospital-b", CARDIO, heart.enroll_id))
                made = len(alice.grants)
                assert await heart.read("alice", r0) == b"ECG of epoch 0"
                g0 = heart.cached_grant("alice", "cardiology", r0, 0)["grant_id"]
                assert await heart.read("alice", r1) == b"ECG of epoch 1"
                g1 = heart.cached_grant("alice", "cardiology", r1, 1)["grant_id"]
                assert g1 != g0 and len(alice.grants) == made + 2
                # back and forth between the epochs: no new grant (each read used to ask for one)
                for _ in range(2):
                    assert await heart.read("alice", r0) == b"ECG of epoch 0"
                    assert await heart.read("alice", r1) == b"ECG of epoch 1"
                assert len(alice.grants) == made + 2
                assert heart.cached_grant("alice", "cardiology")["grant_id"] == g1  # the newest
                assert heart.epoch_grants[KEY][0]["grant_id"] == g0
                # a crash after the background save keeps both (nothing waits for the close)
                saved = await _saved_now(heart)
                assert saved["grant_cache"][KEY]["grant_id"] == g1
                assert saved["epoch_grants"][KEY][0]["grant_id"] == g0
            async with DoctorAgent.open(config, node=world.node) as heart:  # the restart
                assert heart.cached_grant("alice", "cardiology", r0, 0)["grant_id"] == g0
                assert await heart.read("alice", r0) == b"ECG of epoch 0"
                assert await heart.read("alice", r1) == b"ECG of epoch 1"
                assert len(alice.grants) == made + 2


async def test_a_revoked_grant_of_an_earlier_epoch_is_refused_and_forgotten_alone(world):  # noqa: F811
    with trio.fail_after(60):
        async with contextlib.AsyncExitStack() as stack:
            alice, r0, r1 = await _two_epochs(world, stack)
            heart = await world.registered(stack, DoctorAgent, "dr-heart", "hospital-b", CARDIO)
            assert await heart.read("alice", r0) == b"ECG of epoch 0"
            g0 = heart.cached_grant("alice", "cardiology", r0, 0)["grant_id"]
            assert await heart.read("alice", r1) == b"ECG of epoch 1"
            g1 = heart.cached_grant("alice", "cardiology")["grant_id"]
            await alice.revoke(g0, "epoch 0 withdrawn")
            with pytest.raises(GrantRevoked):  # the peers check every grant: a kept one too
                await heart.read("alice", r0)
            assert heart.cached_grant("alice", "cardiology", r0, 0) is None and KEY not in heart.epoch_grants
            assert KEY not in (await _saved_now(heart)).get("epoch_grants", {})
            assert heart.cached_grant("alice", "cardiology", r1, 1)["grant_id"] == g1  # untouched
            assert await heart.read("alice", r1) == b"ECG of epoch 1"
            # the newest revoked: the newest kept one takes its place
            assert await heart.read("alice", r0) == b"ECG of epoch 0"  # a new grant for epoch 0, g1 kept
            g0b = heart.cached_grant("alice", "cardiology")["grant_id"]
            assert heart.epoch_grants[KEY][1]["grant_id"] == g1
            await alice.revoke(g0b, "again")
            with pytest.raises(GrantRevoked):
                await heart.read("alice", r0)
            assert heart.cached_grant("alice", "cardiology")["grant_id"] == g1 and KEY not in heart.epoch_grants
            assert await heart.read("alice", r1) == b"ECG of epoch 1"
            heart.forget_grants("alice", "cardiology")
            assert heart.cached_grant("alice", "cardiology") is None and heart.epoch_grants == {}


def _grant(epoch: int, *, label: str = "cardiology", expires_at: int = 2**40, **kw) -> dict:
    return {"patient": "alice", "label": label, "grant_id": f"g-{label}-{epoch}", "request_id": f"q-{epoch}",
            "threshold": 2, "expires_at": expires_at, "scope": "label", "record_id": None, "epoch": epoch,
            "height": 7, **kw}


def test_the_grants_kept_per_label_are_bounded_newest_kept_and_expired_dropped():
    holder = types.SimpleNamespace(grant_cache={}, epoch_grants={})
    for epoch in range(EPOCH_GRANTS_KEPT + 5):
        DoctorAgent._keep_grant(holder, _grant(epoch))
    last = EPOCH_GRANTS_KEPT + 4
    assert holder.grant_cache[KEY]["epoch"] == last
    assert list(holder.epoch_grants[KEY]) == list(range(last - EPOCH_GRANTS_KEPT, last))
    # a new grant of a kept epoch supersedes the kept one; a record-scoped or expired one is not kept
    DoctorAgent._keep_grant(holder, _grant(last - 1, grant_id="newer"))
    assert holder.grant_cache[KEY]["grant_id"] == "newer" and last - 1 not in holder.epoch_grants[KEY]
    assert holder.epoch_grants[KEY][last]["epoch"] == last
    DoctorAgent._keep_grant(holder, _grant(50, scope="record", record_id="r"))
    DoctorAgent._keep_grant(holder, _grant(51))
    assert 50 not in holder.epoch_grants[KEY] and len(holder.epoch_grants[KEY]) == EPOCH_GRANTS_KEPT
    holder.grant_cache[KEY] = _grant(52, expires_at=1)
    DoctorAgent._keep_grant(holder, _grant(53))
    assert 52 not in holder.epoch_grants[KEY]
    for g in [*holder.epoch_grants[KEY].values(), holder.grant_cache[KEY]]:
        g["expires_at"] = 1
    DoctorAgent._keep_grant(holder, _grant(54))
    assert KEY not in holder.epoch_grants  # every kept one expired: dropped


async def test_a_damaged_state_file_keeps_only_well_formed_kept_grants(world):  # noqa: F811
    config = world.config("dr-heart", "hospital-b", CARDIO)
    with trio.fail_after(60):
        async with DoctorAgent.open(config, node=world.node) as heart:
            await heart.register(world.fake.token("dr-heart", "hospital-b", CARDIO, heart.enroll_id))
        state = _saved(heart)
        many = {e: _grant(e) for e in range(EPOCH_GRANTS_KEPT + 3)}
        state["epoch_grants"] = {
            KEY: {**many, -1: _grant(-1), 99: _grant(98), "1": _grant(1), 100: "junk", 101: {"epoch": 101},
                  102: _grant(102, threshold="2"), 103: _grant(103, expires_at=True), 104: _grant(104, scope="record"),
                  105: _grant(105, label="labs")},
            "alice\x00labs": [1, 2, 3],
            7: {0: _grant(0)},
            "bob\x00labs": {0: _grant(0, label="labs")},  # another patient's key: not this entry's
        }
        (heart.client.data_dir / STATE_FILE).write_bytes(msgpack.packb(state, use_bin_type=True))
        async with DoctorAgent.open(config, node=world.node) as heart:
            assert heart.registered
            assert list(heart.epoch_grants) == [KEY]
            assert list(heart.epoch_grants[KEY]) == list(range(3, EPOCH_GRANTS_KEPT + 3))
        for junk in (None, [], "x", {KEY: None}):
            state["epoch_grants"] = junk
            (heart.client.data_dir / STATE_FILE).write_bytes(msgpack.packb(state, use_bin_type=True))
            async with DoctorAgent.open(config, node=world.node) as heart:
                assert heart.epoch_grants == {}


_leaf = st.none() | st.booleans() | st.integers(-3, 2**41) | st.text(max_size=6) | st.binary(max_size=4)
_junk = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.integers(-2, 12) | st.text(max_size=4), inner, max_size=5), max_leaves=30)
_grants = st.builds(lambda e, label, **kw: _grant(e, label=label, **kw), st.integers(0, 12),
                    st.sampled_from(["cardiology", "labs"]),
                    threshold=st.integers(1, 4) | st.just("2"), scope=st.sampled_from(["label", "record"]))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([KEY, "alice\x00labs"]) | st.text(max_size=4),
                       st.dictionaries(st.integers(-2, 12), _grants | _junk, max_size=12) | _junk, max_size=4)
       | _junk)
def test_reading_kept_grants_back_never_raises_and_keeps_only_what_a_read_can_use(raw):
    out = valid_epoch_grants(raw)
    assert isinstance(out, dict)
    for key, held in out.items():
        assert isinstance(key, str) and 0 < len(held) <= EPOCH_GRANTS_KEPT
        for epoch, grant in held.items():
            assert type(epoch) is int and epoch >= 0 and grant["epoch"] == epoch
            assert f"{grant['patient']}\x00{grant['label']}" == key and grant.get("scope", "label") == "label"
            assert type(grant["expires_at"]) is int and type(grant["threshold"]) is int
            assert grant is raw[key][epoch]  # kept as it was, not rebuilt
