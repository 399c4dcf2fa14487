"""Attacks on a consortium node as `emrshare node start` runs it (security review,
issue 14). A test marked ``xfail(strict=True)`` is an open finding."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import trio

from agents.node.config import NodeConfig
from agents.node.roles import RoleAgent
from agents.node.service import NodeService
from bus.testing import connect_channel


class IdleAgent(RoleAgent):
    role = "orderer"

    async def run(self, node, *, task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        await trio.sleep_forever()

    def busy(self) -> int:
        return 0


@pytest.mark.xfail(strict=True, reason=(
    "open finding: no node service, swarm or client wires agents.tls in (tls_transport, admit_nodes: "
    "nothing outside agents/tls.py calls them; a `tls://` listen passes config validation and then "
    "fails with 'unknown address scheme'), so every consortium node listens in plain TCP: any machine reaches "
    "the channel layer, and a stolen node ledger key alone speaks as that node from anywhere "
    "(docs/security.md's TLS node layer holds only 'where both run')"))
async def test_a_consortium_node_refuses_a_channel_without_tls():
    root = Path(tempfile.mkdtemp(prefix="emrs-a-", dir="/tmp"))
    config = NodeConfig(path=root / "node.toml", id="orderer", role="orderer", listen="tcp://127.0.0.1:0",
                        genesis=root / "g", keystore=root / "k", data_dir=root / "data", grace=0)
    service = NodeService(config, IdleAgent("orderer"))
    with trio.fail_after(30):
        refused = await _plain_channel_refused(service)
    shutil.rmtree(root, ignore_errors=True)
    assert refused, "a plain-TCP client completed a channel handshake with a consortium node"


async def _plain_channel_refused(service: NodeService) -> bool:
    """Whether a client with no TLS at all fails to open a channel to ``service``."""
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        try:
            conn = await connect_channel(service.address)  # plain TCP, no certificate
        except Exception:
            refused = True
        else:
            refused = False
            await conn.aclose()
        nursery.cancel_scope.cancel()
    return refused
