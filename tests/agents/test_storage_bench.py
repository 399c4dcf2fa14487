"""Smoke test of ``emrshare bench storage``: structure and the paired ratio, not speed."""

from __future__ import annotations

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
