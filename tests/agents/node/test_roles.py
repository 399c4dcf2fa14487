"""agents.node.roles: the swarm's in-process agents are the nodes' RoleAgents; their metrics move
with real work (commits, re-encryptions, stored bytes)."""

from __future__ import annotations

import contextlib

import pytest
import trio

from agents.doctor import DoctorAgent
from agents.node.metrics import node_families, render
from agents.patient import PatientAgent
from agents.swarm import Swarm, SwarmSpec
from agents.testing.consortium import SHARING_POLICY, user_config
from agents.testing.promtext import parse, value

pytestmark = pytest.mark.slow

PATIENT = ("alice", "hospital-a", {"role": "patient"})
HEART = ("dr-heart", "hospital-b", {"role": "doctor", "department": "cardiology"})


def metrics(swarm: Swarm, agent: str) -> dict:
    runner = swarm.runners[agent]
    return parse(render(node_families(runner.role, agent, runner, swarm.node, 0.0)))


async def test_metrics_move_with_commits_reencryptions_and_stored_bytes(tmp_path):
    async with Swarm.open(SwarmSpec(data_dir=tmp_path / "swarm")) as swarm:
        assert set(swarm.runners) == {swarm.manifest.orderer, *swarm.manifest.peers, *swarm.manifest.storage}
        before = {a: metrics(swarm, a) for a in swarm.runners}
        with trio.fail_after(120):
            async with contextlib.AsyncExitStack() as stack:
                users = []
                for subject, org, attributes in (PATIENT, HEART):
                    cls = PatientAgent if attributes["role"] == "patient" else DoctorAgent
                    config = user_config(swarm.manifest, tmp_path / "users" / subject, subject, org, attributes)
                    agent = await stack.enter_async_context(cls.open(config, node=swarm.node))
                    await agent.register(swarm.token(subject, org, attributes, agent.enroll_id))
                    users.append(agent)
                alice, heart = users
                rid = await alice.store(b"ECG: sinus rhythm", label="cardiology", media_type="text/plain")
                await alice.set_policy(SHARING_POLICY, standing=())
                assert await heart.read("alice", rid) == b"ECG: sinus rhythm"
                assert await heart.read("alice", rid) == b"ECG: sinus rhythm"  # a repeat: may be a reply-cache hit
        after = {a: metrics(swarm, a) for a in swarm.runners}
    peers = swarm.manifest.peers
    served = sum(value(after[p], "emrshare_reencryptions_total") for p in peers)
    assert served >= swarm.manifest.threshold
    assert sum(value(before[p], "emrshare_reencryptions_total") for p in peers) == 0
    # the first read's t shares were made (no hit); only the repeat's can come from a reply cache
    hits = sum(value(after[p], "emrshare_reencryption_reply_cache_hits_total") for p in peers)
    assert 0 <= hits <= served - swarm.manifest.threshold
    assert {p: runner.status()["reencryption_reply_cache_hits"] for p, runner in swarm.runners.items()
            if p in peers} == {p: value(after[p], "emrshare_reencryption_reply_cache_hits_total") for p in peers}
    for p in peers:
        assert value(after[p], "emrshare_transactions_committed_total", outcome="valid") >= 4  # 2 registers, store, policy
        # every share a peer served is in its access log: logged in a batch, or waiting for its window
        assert value(after[p], "emrshare_access_log_entries_total", outcome="logged") \
            + value(after[p], "emrshare_queue_depth", queue="access_log") == value(after[p], "emrshare_reencryptions_total")
        assert value(after[p], "emrshare_access_log_entries_total", outcome="dropped") == 0
        assert value(after[p], "emrshare_ledger_height") > value(before[p], "emrshare_ledger_height")
    stored = [value(after[s], "emrshare_storage_bytes", state="used") for s in swarm.manifest.storage]
    assert sum(1 for b in stored if b > 0) >= swarm.manifest.write_quorum
    orderer = swarm.manifest.orderer
    assert value(after[orderer], "emrshare_blocks_committed_total") >= 1
    assert value(after[orderer], "emrshare_queue_depth", queue="orderer") >= 0  # the reads' access logs may queue
