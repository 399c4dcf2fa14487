"""The swarm with etcd ordering (`swarm up --ordering etcd`): the paper's flow on two orderer
nodes over a 3-member etcd cluster; then, with one process per agent, SIGKILL of the leading
orderer node and of the etcd Raft leader while a patient keeps storing: every acknowledged
store is committed exactly once on every peer, every peer's chain verifies, the peers agree."""

from __future__ import annotations

from collections import Counter

import pytest
import trio

from agents.doctor import DoctorAgent
from agents.ledger_store import LedgerStore
from agents.ordering import EtcdClient, chain_prefix, etcd_binary
from agents.patient import PatientAgent
from agents.swarm import Swarm, SwarmFiles, SwarmSpec, orderer_agents
from agents.testing.consortium import CARDIOLOGY_POLICY as POLICY
from agents.testing.consortium import swarm_user_config
from core import canonical
from core.ledger import Block, parse_genesis
from core.tx import Transaction

pytestmark = pytest.mark.skipif(etcd_binary() is None, reason="no etcd binary: apt-get install etcd-server "
                                                                 "(or set EMRSHARE_ETCD)")

PATIENT = ("alice", "hospital-a", {"role": "patient"})
DOCTOR = ("dr-h", "hospital-b", {"role": "doctor", "department": "cardiology"})


async def test_swarm_with_etcd_ordering_runs_the_flow(tmp_path):
    spec = SwarmSpec(data_dir=tmp_path / "swarm", ordering="etcd")
    with trio.fail_after(90):
        async with Swarm.open(spec, fresh=True) as swarm:
            assert orderer_agents(swarm.manifest) == ["orderer-1", "orderer-2"]
            assert len(parse_genesis(swarm.manifest.genesis).config.orderers) == 2
            async with PatientAgent.open(swarm_user_config(swarm, *PATIENT), node=swarm.node) as p, \
                    DoctorAgent.open(swarm_user_config(swarm, *DOCTOR), node=swarm.node) as d:
                await p.register(swarm.token(*PATIENT, p.enroll_id))
                await d.register(swarm.token(*DOCTOR, d.enroll_id))
                rid = await p.store(b"an ECG", label="cardiology", media_type="text/plain")
                await p.set_policy(POLICY, standing=())
                assert await d.read("alice", rid) == b"an ECG"
    # resumed from the directory: the same etcd cluster (ports, data) and chain
    with trio.fail_after(90):
        async with Swarm.open(SwarmSpec(data_dir=tmp_path / "swarm")) as swarm:
            async with PatientAgent.open(swarm_user_config(swarm, *PATIENT), node=swarm.node) as p:
                assert [r["record_id"] for r in await p.records()] == [rid]


async def _leading_orderer(swarm) -> str:
    manifest = swarm.manifest
    genesis = Block.from_bytes(manifest.genesis)
    key = chain_prefix(genesis, manifest.consortium) + b"leader"
    async with EtcdClient(swarm.etcd.endpoints) as client:
        while True:
            kv = await client.get(key)
            if kv is not None:
                return kv.value.decode()
            await trio.sleep(0.05)


def _stores_per_record(ledger_file) -> tuple[Counter, bytes]:
    """record id -> how many valid ("ok") store transactions the chain holds; and the head hash."""
    store = LedgerStore(ledger_file)
    try:
        counts: Counter = Counter()
        head = b""
        for _, block_hash, data, marks, _ in store.block_rows(1):
            block = Block.from_bytes(data)
            for raw, mark in zip(block.txs, canonical.unpack(marks, what="marks")):
                tx = Transaction.from_bytes(raw)
                if tx.type == "store" and mark == "ok":
                    counts[tx.body["record_id"]] += 1
            head = block_hash
        return counts, head
    finally:
        store.close()


@pytest.mark.slow
async def test_orderer_and_etcd_leader_failover_under_writes(tmp_path):
    spec = SwarmSpec(data_dir=tmp_path / "swarm", ordering="etcd", processes=True, batch_timeout=0.02)
    acked: list[str] = []
    gaps: dict[str, float] = {}
    with trio.fail_after(300):
        async with Swarm.open(spec, fresh=True) as swarm:
            async with PatientAgent.open(swarm_user_config(swarm, *PATIENT), node=swarm.node) as p:
                await p.register(swarm.token(*PATIENT, p.enroll_id))
                started_acked: list[float] = []  # when each acknowledged store was started

                async def writer(w: int) -> None:
                    i = 0
                    while True:
                        start = trio.current_time()
                        try:
                            acked.append(await p.store(f"w{w} r{i}".encode(), label="labs",
                                                       media_type="text/plain"))
                            started_acked.append(start)
                        except Exception:  # an unacknowledged store may or may not commit: not counted
                            await trio.sleep(0.05)
                        i += 1

                async def gap_after(fault: str) -> None:
                    """The write gap: until a store started after the fault is acknowledged."""
                    t0 = trio.current_time()
                    while not any(s >= t0 for s in started_acked):
                        await trio.sleep(0.01)
                    gaps[fault] = trio.current_time() - t0

                async with trio.open_nursery() as writers:
                    for w in range(4):
                        writers.start_soon(writer, w)
                    await trio.sleep(3)
                    leader = await _leading_orderer(swarm)
                    swarm.kill(leader)
                    await gap_after(f"SIGKILL orderer node {leader}")
                    await trio.sleep(3)
                    await swarm.start_process(leader)
                    member = await swarm.etcd.leader()
                    assert member is not None
                    swarm.etcd.kill(member)
                    await gap_after(f"SIGKILL etcd leader etcd-{member}")
                    await trio.sleep(3)
                    swarm.etcd.start_member(member)
                    await trio.sleep(2)
                    writers.cancel_scope.cancel()
                # let resubmissions and the peers settle: then every peer at one head, unchanged for 1 s
                await trio.sleep(6)
                last = None
                while True:
                    heads = [await p.endpoint.request(pid, "peer.query", {"what": "head"}, timeout=30)
                             for pid in swarm.manifest.peers]
                    if heads == last and all(h == heads[0] for h in heads):
                        break
                    last = heads
                    await trio.sleep(1.0)
    for fault, gap in gaps.items():
        print(f"write gap after {fault}: {gap:.2f} s")
    assert len(acked) > 20
    files = SwarmFiles(tmp_path / "swarm")
    heads = set()
    from agents.cli import ledger as ledger_cli

    for peer in files.manifest().peers:
        assert ledger_cli.verify_main(["--data", str(files.agent_dir(peer))]) == 0
        counts, head = _stores_per_record(files.agent_dir(peer) / "ledger.sqlite")
        heads.add(head)
        assert all(counts[rid] == 1 for rid in acked), f"{peer}: an acknowledged store is missing or doubled"
        assert max(counts.values()) == 1
    assert len(heads) == 1
