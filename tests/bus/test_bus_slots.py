"""An endpoint's request slots (a plain counter, with the dispatcher parked for a
freed slot): the bound holds, a request queued for a slot gets the next one freed
(a request arriving meanwhile does not overtake it, quick or not), and one queued
when its endpoint closes still gets the slot freed after (nothing hangs). Agents
of one node under trio's autojump clock (the slots are the endpoint's, whatever
carries requests)."""

import trio

from bus import open_node
from bus.testing import Keyring


async def _scene(node, ring, **options):
    bob = node.endpoint("bob", **options, **ring.credentials("bob"))
    clients = {name: node.endpoint(name, **ring.credentials(name)) for name in ("alice", "carol", "dave")}
    return bob, clients


async def test_requests_beyond_the_bound_wait_for_a_freed_slot_and_all_complete(autojump_clock):
    ring = Keyring()
    running = 0
    most = 0
    gate = trio.Event()

    async def slow(msg):
        nonlocal running, most
        running += 1
        most = max(most, running)
        await gate.wait()
        running -= 1
        return msg.body

    async with open_node() as node:
        bob, clients = await _scene(node, ring, max_concurrent=3, max_concurrent_per_sender=2)
        bob.register("slow", slow)
        results = []

        async def ask(who, n):
            results.append(await clients[who].request("bob", "slow", n))

        async with trio.open_nursery() as nursery:
            for who, n in (("alice", 1), ("alice", 2), ("carol", 3), ("carol", 4), ("dave", 5)):
                nursery.start_soon(ask, who, n)
                await trio.sleep(0.1)
            await trio.sleep(1)
            assert running == 3  # the bound: the other two wait (queued, not refused)
            assert results == []
            gate.set()
        assert sorted(results) == [1, 2, 3, 4, 5]
        assert most == 3
        assert bob.statistics().rejected.get("busy", 0) == 0


async def test_a_freed_slot_goes_to_the_queued_request_not_to_one_arriving_meanwhile(autojump_clock):
    ring = Keyring()
    started = []
    gates = {name: trio.Event() for name in ("first", "queued")}

    async def slow(msg):
        started.append(msg.body)
        await gates[msg.body].wait()
        return msg.body

    async def ping(msg):
        started.append(msg.body)
        return msg.body

    async with open_node() as node:
        bob, clients = await _scene(node, ring, max_concurrent=1, max_concurrent_per_sender=1)
        bob.register("slow", slow)
        bob.register("ping", ping, quick=True)
        results = []

        async def ask(who, kind, body):
            results.append(await clients[who].request("bob", kind, body))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, "alice", "slow", "first")  # holds the only slot
            await trio.sleep(1)
            nursery.start_soon(ask, "carol", "slow", "queued")  # the dispatcher waits for the slot
            await trio.sleep(1)
            nursery.start_soon(ask, "dave", "ping", "late")  # quick, but no slot free: queued behind
            await trio.sleep(1)
            assert started == ["first"]
            assert bob._quick_runs == 0  # noqa: SLF001 - not run in the delivering task: no slot was free
            gates["first"].set()
            await trio.sleep(1)
            assert started == ["first", "queued"]  # the freed slot went to the request queued first
            assert results == ["first"]
            gates["queued"].set()
        assert started == ["first", "queued", "late"]
        assert results == ["first", "queued", "late"]


async def test_closing_an_endpoint_whose_dispatcher_waits_for_a_slot(autojump_clock):
    ring = Keyring()
    gate = trio.Event()

    async def slow(msg):
        await gate.wait()
        return msg.body

    async with open_node() as node:
        bob, clients = await _scene(node, ring, max_concurrent=1, max_concurrent_per_sender=1)
        bob.register("slow", slow)
        outcomes = []

        async def ask(who):
            try:
                outcomes.append(await clients[who].request("bob", "slow", who, timeout=5))
            except Exception as exc:  # noqa: BLE001 - the test records what came back
                outcomes.append(type(exc).__name__)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, "alice")
            await trio.sleep(1)
            nursery.start_soon(ask, "carol")  # waits for the slot alice's request holds
            await trio.sleep(1)
            await bob.aclose()
            gate.set()
        # the queued request got the slot alice's freed (as it did on a Semaphore), after the close
        assert sorted(outcomes) == ["alice", "carol"]
