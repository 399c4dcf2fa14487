"""agents.node.service.NodeService: SIGTERM/SIGINT give in-flight work a bounded grace period."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio

from agents.node.config import NodeConfig
from agents.node.roles import RoleAgent
from agents.node.service import NodeService


class SlowAgent(RoleAgent):
    """A role agent with ``work`` units in flight, finished ``finish_after`` seconds into a stop."""

    role = "orderer"

    def __init__(self, work: int, finish_after: float | None):
        super().__init__("orderer")
        self.work = work
        self.finish_after = finish_after
        self.cancelled = False

    async def run(self, node, *, task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self.cancelled = True

    def busy(self) -> int:
        return self.work

    async def drain(self, poll: float = 0.02) -> None:
        if self.finish_after is not None:
            await trio.sleep(self.finish_after)
            self.work = 0
        await super().drain(poll)


def _service(tmp_path: Path, agent: RoleAgent, grace: float) -> NodeService:
    config = NodeConfig(path=tmp_path / "node.toml", id="orderer", role="orderer", listen="tcp://127.0.0.1:0",
                        genesis=tmp_path / "g", keystore=tmp_path / "k", data_dir=tmp_path / "data", grace=grace)
    return NodeService(config, agent)


async def _stop(service: NodeService, signals: list[int], gap: float = 1.0) -> float:
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        start = trio.current_time()
        for signum in signals:
            os.kill(os.getpid(), signum)
            await trio.sleep(gap)
    return trio.current_time() - start


@pytest.fixture
def short_tmp(tmp_path_factory):
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="emrs-g-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_in_flight_work_finishes_within_the_grace(short_tmp, autojump_clock):
    agent = SlowAgent(work=3, finish_after=2.0)
    service = _service(short_tmp, agent, grace=10.0)
    await _stop(service, [signal.SIGTERM], gap=0)
    assert agent.cancelled and service.abandoned == 0
    assert service.stopped_line() == "node orderer stopped (SIGTERM)"
    assert 2.0 <= trio.current_time() < 3.0
    assert not service.config.control_socket.exists()  # removed on the way out


async def test_work_left_after_the_grace_is_abandoned(short_tmp, autojump_clock):
    agent = SlowAgent(work=2, finish_after=None)
    service = _service(short_tmp, agent, grace=3.0)
    await _stop(service, [signal.SIGINT], gap=0)
    assert service.abandoned == 2 and 3.0 <= trio.current_time() < 4.0
    assert service.stopped_line() == "node orderer stopped (SIGINT; 2 in-flight item(s) abandoned after 3 s)"


async def test_a_second_signal_stops_at_once(short_tmp, autojump_clock):
    agent = SlowAgent(work=1, finish_after=None)
    service = _service(short_tmp, agent, grace=600.0)
    await _stop(service, [signal.SIGTERM, signal.SIGTERM], gap=1.0)
    assert agent.cancelled and service.abandoned == 1
    assert trio.current_time() < 10.0


async def test_health_says_stopping_during_the_grace(short_tmp, autojump_clock):
    agent = SlowAgent(work=1, finish_after=5.0)
    service = _service(short_tmp, agent, grace=10.0)
    seen = []
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        health = service.routes()["/health"]
        seen.append(health()[0])
        os.kill(os.getpid(), signal.SIGTERM)
        await trio.sleep(1.0)
        seen.append(health()[0])
    assert seen == [200, 503]
