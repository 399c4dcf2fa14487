"""Fixtures for the etcd ordering tests: a real 3-member etcd cluster on loopback (free ports),
stopped even when the test fails; skipped, with the reason, only when no etcd binary is installed."""

from __future__ import annotations

import pytest

from agents.ordering import EtcdCluster, etcd_binary


@pytest.fixture
async def etcd(tmp_path):
    if etcd_binary() is None:
        pytest.skip("no etcd binary: install etcd-server (apt-get install etcd-server) or set EMRSHARE_ETCD")
    async with EtcdCluster(tmp_path / "etcd", members=3) as cluster:
        yield cluster
