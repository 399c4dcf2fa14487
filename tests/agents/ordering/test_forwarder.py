"""The peer's forwarder with several orderer nodes (agents.peer TxForwarder), on trio's
autojump clock with a scripted endpoint: it moves past an unreachable node and past
``orderer.no-leader``, passes over the unreachable node afterwards, resubmits what no committed
block holds after ``resubmit_after`` seconds, and stops once a block holds it."""

from __future__ import annotations

import hashlib
from contextlib import asynccontextmanager

import pytest
import trio

import bus
from agents.peer._forwarder import TxForwarder  # private to agents.peer; tests may import it
from core.ledger import Block, CommitResult
from core.protocol import OrdererSubmit, codes


class ScriptedEndpoint:
    """``request`` answers by orderer node: "dead" raises UnreachableError, "no-leader" the
    orderer's code, "ok" accepts; every call is recorded as (time, node, transactions)."""

    def __init__(self, behaviour: dict[str, str]):
        self.behaviour = behaviour
        self.calls: list[tuple[float, str, tuple[bytes, ...]]] = []

    async def request(self, to, kind, body, *, timeout=None):
        assert kind == OrdererSubmit.kind
        txs = OrdererSubmit.from_wire(body).txs
        self.calls.append((trio.current_time(), to, txs))
        how = self.behaviour[to]
        if how == "dead":
            await trio.sleep(1.0)  # the bus's connect attempts to a dead address
            raise bus.UnreachableError(f"cannot connect to {to}")
        if how == "no-leader":
            raise bus.RemoteError(codes.ORDERER_NO_LEADER, "no orderer node leads right now")
        return {"tx_ids": [hashlib.sha256(raw).digest() for raw in txs]}


@asynccontextmanager
async def running(behaviour: dict[str, str], **kw):
    """A forwarder to the orderer nodes of ``behaviour`` (TxForwarder options ``kw``) running
    against a ScriptedEndpoint: yields (forwarder, endpoint), stops the forwarder after."""
    ep = ScriptedEndpoint(behaviour)
    fw = TxForwarder(orderers=list(behaviour), submit_timeout=30.0, **kw)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fw.run, ep)
        yield fw, ep
        nursery.cancel_scope.cancel()


@pytest.fixture
def autojump(autojump_clock):
    return autojump_clock


async def test_failover_past_dead_and_leaderless_nodes(autojump):
    async with running({"o1": "dead", "o2": "no-leader", "o3": "ok"}) as (fw, ep):
        await fw.forward([b"tx-1"])
        assert [to for _, to, _ in ep.calls] == ["o1", "o2", "o3"]
        assert fw.orderer == "o3"
        # o3 dies too: o1 is passed over (down for DOWN_FOR s), o2 now leads
        ep.behaviour.update({"o3": "dead", "o2": "ok"})
        ep.calls.clear()
        await fw.forward([b"tx-2"])
        assert [to for _, to, _ in ep.calls] == ["o3", "o2"]


async def test_no_node_answers_within_the_failover_timeout(autojump):
    async with running({"o1": "no-leader", "o2": "no-leader", "o3": "no-leader"}, failover_timeout=2.0) as (fw, ep):
        t0 = trio.current_time()
        with pytest.raises(bus.HandlerError) as info:
            await fw.forward([b"tx"])
        assert info.value.code == codes.SUBMIT_UNAVAILABLE
        assert 2.0 <= trio.current_time() - t0 < 3.0


async def test_resubmits_until_a_block_holds_it(autojump):
    async with running({"o1": "ok", "o2": "ok", "o3": "ok"}, resubmit_after=4.0) as (fw, ep):
        await fw.forward([b"lost", b"kept"])
        t0 = trio.current_time()
        fw.resolve(_block([b"kept"]), CommitResult(1, b"\0" * 32, ("ok",), {}, b"\0" * 32))
        await trio.sleep(9.5)
        again = [(t - t0, txs) for t, _, txs in ep.calls[1:]]
        assert [txs for _, txs in again] == [(b"lost",), (b"lost",)]  # every ~4 s, never "kept"
        assert all(t >= 4.0 for t, _ in again)
        assert fw.resubmitted == 2
        fw.resolve(_block([b"lost"]), CommitResult(2, b"\0" * 32, ("ok",), {}, b"\0" * 32))
        await trio.sleep(20)
        assert len(ep.calls) == 3  # committed: no more resubmissions


async def test_one_orderer_never_resubmits_or_retries(autojump):
    async with running({"o1": "no-leader"}) as (fw, ep):
        with pytest.raises(bus.HandlerError):
            await fw.forward([b"tx"])
        await trio.sleep(30)
        assert len(ep.calls) == 1


def _block(txs):
    from core import ecdsa

    return Block.make(1, b"\0" * 32, 1, txs, ecdsa.generate_private_key())
