"""Limits that keep one sender from starving the others: requests in flight per sender
(``busy`` at once), topics per subscriber, who may subscribe to what, and subscriber
slots freed when their connection closes."""

import pytest
import trio

from bus import RemoteError, open_node
from bus.testing import Keyring, eventually


async def test_a_flood_from_one_sender_gets_busy_while_another_sender_is_served():
    ring = Keyring()
    release = trio.Event()
    async with open_node() as node:
        server = node.endpoint("server", **ring.credentials("server"), max_concurrent=8,
                               max_concurrent_per_sender=3)

        async def slow(msg):
            if msg.sender == "flooder":
                await release.wait()
            return {"ok": msg.sender}

        server.register("slow", slow)
        flooder = node.endpoint("flooder", **ring.credentials("flooder"))
        honest = node.endpoint("honest", **ring.credentials("honest"))
        codes = []

        async def flood():
            try:
                await flooder.request("server", "slow", {}, timeout=None)
                codes.append(None)
            except RemoteError as exc:
                codes.append(exc.code)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(flood)
                await eventually(lambda: len(codes) == 17)  # all but 3 refused at once
                assert codes == ["busy"] * 17
                # the flood is still in flight, and the honest sender is answered, never busy
                for _ in range(5):
                    assert await honest.request("server", "slow", {}) == {"ok": "honest"}
                release.set()
        assert codes.count("busy") == 17 and codes.count(None) == 3
        assert server.statistics().rejected["busy"] == 17


async def test_subscribers_are_admitted_by_topic_and_bounded_per_subscriber():
    ring = Keyring()
    async with open_node() as node:
        pub = node.endpoint("pub", **ring.credentials("pub"), max_topics_per_subscriber=2,
                            admit_subscriber=lambda sender, topic: sender != "outsider" and topic.startswith("t"))
        sub = node.endpoint("sub", **ring.credentials("sub"))
        outsider = node.endpoint("outsider", **ring.credentials("outsider"))
        with trio.fail_after(10):
            with pytest.raises(RemoteError) as info:
                await outsider.subscribe("pub", "t1")
            assert info.value.code == "forbidden"
            with pytest.raises(RemoteError) as info:
                await sub.subscribe("pub", "junk")  # an undeclared topic
            assert info.value.code == "forbidden"
            await sub.subscribe("pub", "t1")
            await sub.subscribe("pub", "t2")
            for i in range(50):  # a flood of junk topics cannot fill the table
                with pytest.raises(RemoteError) as info:
                    await sub.subscribe("pub", f"t-junk-{i}")
                assert info.value.code == "overloaded"
            assert pub.statistics().subscribers == 2


async def test_subscriber_slots_are_freed_when_the_connection_goes():
    ring = Keyring()
    async with open_node() as pub_node:
        address = await pub_node.listen("tcp://127.0.0.1:0")
        pub = pub_node.endpoint("pub", **ring.credentials("pub"))
        with trio.fail_after(20):
            async with open_node() as sub_node:
                sub_node.add_route("pub", address)
                ep = sub_node.endpoint("sub", **ring.credentials("sub"))
                await ep.subscribe("pub", "blocks")
                assert pub.statistics().subscribers == 1
            await eventually(lambda: pub.statistics().subscribers == 0)
