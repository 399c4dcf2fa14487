"""Smoke test of ``emrshare bench storage``: structure and the paired ratio, not speed."""

from __future__ import annotations

import hashlib
import os
import time

from agents.bench import storage as bench_storage
from core.cid import CHUNK_SIZE


async def test_bench_storage_reports_each_get_against_a_sha256_run_after_it(tmp_path):
    result = await bench_storage._run(tmp_path, sizes=((4096, 3), (3 * CHUNK_SIZE + 1, 2)), read_mib=0)
    assert result["message_size"] == 2 << 20 and result["pipeline"] == 2
    small, big = result["results"]
    assert (small["size"], small["ops"], big["ops"]) == (4096, 3, 2)
    for row in result["results"]:
        assert row["get_vs_paired_sha256"] > 0 and row["get_client_cpu_ms_per_MiB"] > 0
    target = result["target"]
    assert target["get_32MiB_vs_bare_sha256"] == big["get_vs_paired_sha256"]
    assert target["get_32MiB_vs_best_bare_sha256"] == big["get_MBps"] / big["bare_sha256_MBps"]
    assert target["met"] == (target["get_32MiB_vs_bare_sha256"] >= target["required"])
    for row in result["results"]:  # the nodes' side, from /proc (Linux)
        assert row["get_nodes_cpu_ms_per_MiB"] is not None and row["get_nodes_cpu_ms_per_MiB"] >= 0
        assert row["put_nodes_cpu_ms_per_op"] is not None and row["put_nodes_cpu_ms_per_op"] >= 0
        assert row["put_client_cpu_ms_per_op"] > 0


def test_nodes_cpu_reads_the_processes_user_and_system_time():
    class Proc:
        pid = os.getpid()

    before = bench_storage._nodes_cpu({"me": Proc()})
    spent = time.process_time()
    while time.process_time() - spent < 0.1:  # burn 100 ms of CPU
        hashlib.sha256(b"x" * 4096).digest()
    after = bench_storage._nodes_cpu({"me": Proc(), "again": Proc()})  # counted once per process given
    assert before is not None and after is not None and after >= 2 * before + 0.05

    class Gone:
        pid = 2**22 + 1  # above Linux's pid_max limit: no such process

    assert bench_storage._nodes_cpu({"gone": Gone()}) is None
