"""A fast companion that defers may hand on what it worked out (``bus.defer(carry)``):
the kind's handler receives it as ``message.carried``, on the local path and over a
channel on loopback TCP; ``bus.DEFER`` and requests the companion never saw carry
nothing (None), and nothing on the wire can set it. (A request deferred before the
endpoint's workers started goes the inbox way and carries nothing either: a handler
must work out what ``carried`` lacks.)"""

import pytest
import trio
import trio.testing

import bus
from bus.testing import Keyring


@pytest.mark.parametrize("tcp", [False, True], ids=["local", "tcp"])
async def test_the_handler_gets_what_a_deferring_fast_companion_carried(tcp):
    ring = Keyring()
    seen = []
    carried_object = {"parsed": [1, 2, 3]}

    async def handler(msg: bus.Message):
        seen.append((msg.body, msg.carried))
        return "slow"

    def fast(msg: bus.Message):
        assert msg.carried is None  # (the companion's own message carries nothing)
        if msg.body == "carry":
            return bus.defer(carried_object)
        return bus.DEFER if msg.body == "defer" else "now"

    with trio.fail_after(30):
        async with bus.open_node() as server_node, bus.open_node() as client_node:
            node = server_node
            if tcp:
                client_node.add_route("server", await server_node.listen("tcp://127.0.0.1:0"))
                node = client_node
            server = server_node.endpoint("server", **ring.credentials("server"))
            client = node.endpoint("client", **ring.credentials("client"))
            server.register("k", handler, fast=fast)
            server.register("plain", handler)
            await trio.testing.wait_all_tasks_blocked()  # (the endpoints' workers started)
            assert await client.request("server", "k", "now") == "now"
            assert await client.request("server", "k", "carry") == "slow"
            assert await client.request("server", "k", "defer") == "slow"
            assert await client.request("server", "plain", "carried") == "slow"  # a body named so sets nothing
            assert seen == [("carry", carried_object), ("defer", None), ("carried", None)]
            assert seen[0][1] is carried_object  # the object itself, not a copy
            assert server.fast_deferred == 2 and server.fast_runs == 1
            assert server._in_flight == {}  # noqa: SLF001 - every slot given back
            assert repr(bus.DEFER) == "bus.DEFER" and repr(bus.defer(1)) == "bus.defer(1)"
