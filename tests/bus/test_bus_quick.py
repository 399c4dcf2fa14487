"""Quick handlers (``register(kind, handler, quick=True)``): run in the task that
delivered the request (a connection's reader, a local sender's task), not on a
request worker; still inside the endpoint's admission (request slots per sender
and in all); a quick handler that raises is answered with the usual error."""

import pytest
import trio

from bus import HandlerError, RemoteError, open_node
from bus.testing import Keyring, linked_pair


def _task_name() -> str:
    return trio.lowlevel.current_task().name


@pytest.mark.parametrize("where", ["channel", "signed", "local"])
async def test_a_quick_handler_runs_in_the_delivering_task_and_a_plain_one_on_a_worker(where):
    ring = Keyring()
    ran_in: dict[str, str] = {}

    async def quick(msg):
        ran_in["quick"] = _task_name()
        return msg.body + 1

    async def plain(msg):
        ran_in["plain"] = _task_name()
        await trio.sleep(0)
        return msg.body + 2

    with trio.fail_after(30):
        if where == "local":
            async with open_node() as node:
                bob = node.endpoint("bob", **ring.credentials("bob"))
                alice = node.endpoint("alice", **ring.credentials("alice"))
                bob.register("quick", quick, quick=True)
                bob.register("plain", plain)
                assert await alice.request("bob", "quick", 1) == 2
                assert await alice.request("bob", "plain", 1) == 3
        else:
            options = {"channels": where == "channel"}
            async with linked_pair(ring, None, server_options=options, client_options=options) as (
                    server, _, alice, _address):
                bob = server.endpoint("bob", **ring.credentials("bob"))
                bob.register("quick", quick, quick=True)
                bob.register("plain", plain)
                for i in range(3):
                    assert await alice.request("bob", "quick", i) == i + 1
                    assert await alice.request("bob", "plain", i) == i + 2
        assert "Endpoint._work" not in ran_in["quick"]
        assert "Endpoint._work" in ran_in["plain"]
        assert bob._quick_runs >= 1


async def test_a_quick_handler_that_raises_is_answered_with_its_error_and_the_connection_lives():
    ring = Keyring()

    async def refuse(msg):
        if msg.body == "typed":
            raise HandlerError("forbidden", "not you")
        raise ValueError("a bug")

    with trio.fail_after(30):
        async with linked_pair(ring, None) as (server, _, alice, _address):
            bob = server.endpoint("bob", **ring.credentials("bob"))
            bob.register("refuse", refuse, quick=True)
            bob.register("ok", lambda msg: _value(msg.body), quick=True)
            with pytest.raises(RemoteError) as info:
                await alice.request("bob", "refuse", "typed")
            assert info.value.code == "forbidden"
            with pytest.raises(RemoteError) as info:
                await alice.request("bob", "refuse", "bug")
            assert info.value.code == "internal"
            assert await alice.request("bob", "ok", 7) == 7


async def _value(v):
    return v


async def test_a_quick_request_without_a_free_slot_is_refused_busy_not_run():
    ring = Keyring()
    release = trio.Event()
    quick_calls = 0

    async def slow(msg):
        await release.wait()
        return "slow"

    async def quick(msg):
        nonlocal quick_calls
        quick_calls += 1
        return "quick"

    with trio.fail_after(30):
        async with linked_pair(ring, None) as (server, _, alice, _address):
            bob = server.endpoint("bob", max_concurrent=2, max_concurrent_per_sender=1, **ring.credentials("bob"))
            bob.register("slow", slow)
            bob.register("quick", quick, quick=True)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(alice.request, "bob", "slow", None)
                while not bob._in_flight:
                    await trio.sleep(0.01)
                with pytest.raises(RemoteError) as info:  # alice's one slot is taken by slow
                    await alice.request("bob", "quick", None)
                assert info.value.code == "busy"
                assert quick_calls == 0
                release.set()
            assert await alice.request("bob", "quick", None) == "quick"
            assert quick_calls == 1
            assert not bob._in_flight  # the quick handler gave its slots back


async def test_unregistering_a_quick_kind_forgets_that_it_was_quick():
    ring = Keyring()

    async def handler(msg):
        return _task_name()

    with trio.fail_after(30):
        async with linked_pair(ring, None) as (server, _, alice, _address):
            bob = server.endpoint("bob", **ring.credentials("bob"))
            bob.register("k", handler, quick=True)
            assert "Endpoint._work" not in await alice.request("bob", "k", None)
            bob.unregister("k")
            bob.register("k", handler)
            assert "Endpoint._work" in await alice.request("bob", "k", None)
