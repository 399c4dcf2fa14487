"""`swarm up --processes --ordering etcd`: the etcd orderer nodes are `emrshare node start` processes
like every other agent (their configs' [ordering] table names the swarm's etcd cluster); they answer
`node status` (who leads), follow the chain both, and stop with their one line."""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from agents.ordering import etcd_binary
from agents.testing.cli import run_cli, start_swarm, stop_process

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(etcd_binary() is None, reason="no etcd binary: apt-get install etcd-server "
                                                               "(or set EMRSHARE_ETCD)")]


@pytest.fixture
def short_dir():
    """A short directory: a node's control socket path must fit a Unix socket address."""
    path = Path(tempfile.mkdtemp(prefix="emrs-etcdn-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def status(data: Path, agent: str) -> dict:
    out = run_cli("node", "status", "--config", str(data / "nodes" / f"{agent}.toml"), "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_swarm_processes_run_etcd_orderer_nodes_through_node_start(short_dir):
    data = short_dir / "swarm"
    swarm = start_swarm(data, "--processes", "--ordering", "etcd")
    try:
        nodes = {a: status(data, a) for a in ("orderer-1", "orderer-2")}
        for agent, st in nodes.items():
            assert (st["id"], st["role"], st["state"], st["ordering"]) == (agent, "orderer", "serving", "etcd")
        assert [st["leads"] for st in nodes.values()].count(True) == 1  # one leader, and both know who
        assert {st["leader"] for st in nodes.values()} == {a for a, st in nodes.items() if st["leads"]}
        out = run_cli("patient", "--swarm", str(data), "--subject", "alice", "--org", "hospital-a", "register")
        assert out.returncode == 0, out.stderr
        for _ in range(50):  # the follower publishes what the leader appended (its etcd watch)
            heights = {a: status(data, a)["height"] for a in nodes}
            if min(heights.values()) >= 1:
                break
            time.sleep(0.2)
        assert min(heights.values()) >= 1, heights
    finally:
        code, err = stop_process(swarm, signal.SIGTERM, timeout=60)
    assert (code, err) == (0, "swarm stopped\n")
    for agent in ("orderer-1", "orderer-2"):
        log = (data / "logs" / f"{agent}.log").read_text()
        assert log.rstrip().endswith(f"node {agent} stopped (SIGTERM)")
        assert f"node {agent} (orderer) serving at tcp://127.0.0.1:" in log
        assert "HTTP Request" not in log  # httpx's per-request INFO lines stay out of the node's log
