"""Publish/subscribe: fan-out, lag, slow subscribers dropped, unsubscribe."""


import pytest
import trio
import trio.testing

from bus import (
    BrokenError,
    BusError,
    SubscriptionLagged,
    open_node,
)
from bus.testing import Keyring, eventually


async def test_fan_out_over_tcp_to_many_subscribers():
    ring = Keyring()
    async with open_node() as pub_node, open_node() as sub_node:
        address = await pub_node.listen("tcp://127.0.0.1:0")
        sub_node.add_route("peer", address)
        peer = pub_node.endpoint("peer", **ring.credentials("peer"))
        subs = []
        with trio.fail_after(20):
            for i in range(30):
                ep = sub_node.endpoint(f"doctor{i}", **ring.credentials(f"doctor{i}"))
                subs.append(await ep.subscribe("peer", "blocks"))
            local = pub_node.endpoint("auditor", **ring.credentials("auditor"))
            subs.append(await local.subscribe("peer", "blocks"))
            assert peer.statistics().subscribers == 31
            for height in range(10):
                assert await peer.publish("blocks", {"height": height}) == 31
            for sub in subs:
                got = [(await sub.receive()) for _ in range(10)]
                assert [e.body["height"] for e in got] == list(range(10))
                assert [e.seq for e in got] == list(range(10))
                assert got[0].publisher == "peer" and got[0].topic == "blocks"
        assert peer.statistics().sent_by_kind["blocks"].messages == 310
        assert sub_node.statistics().connections == 1  # 30 subscribers share a connection


async def test_slow_local_subscriber_is_told_it_lagged():
    ring = Keyring()
    async with open_node() as node:
        peer = node.endpoint("peer", **ring.credentials("peer"))
        doc = node.endpoint("doc", **ring.credentials("doc"))
        with trio.fail_after(5):
            sub = await doc.subscribe("peer", "blocks", buffer=4)
            for i in range(20):
                await peer.publish("blocks", i)
            await trio.testing.wait_all_tasks_blocked()
            assert [(await sub.receive()).body for _ in range(4)] == [0, 1, 2, 3]
            with pytest.raises(SubscriptionLagged) as info:
                await sub.receive()
            assert info.value.missed == 16
            await peer.publish("blocks", 20)
            # async for picks up after the lag
            async for event in sub:
                assert (event.body, event.seq) == (20, 20)
                break
            await sub.aclose()
            with pytest.raises(BusError):
                await sub.receive()
            await eventually(lambda: peer.statistics().subscribers == 0)
            assert await peer.publish("blocks", 21) == 0


async def test_publisher_drops_a_subscriber_that_does_not_read(raw_channel, unsigned_envelope):
    ring = Keyring()
    async with open_node() as node:
        address = await node.listen("tcp://127.0.0.1:0")
        peer = node.endpoint("peer", subscriber_queue=4, **ring.credentials("peer"))
        fast = node.endpoint("fast", **ring.credentials("fast"))
        ring.add("slow")
        with trio.fail_after(20):
            fast_sub = await fast.subscribe("peer", "blocks", buffer=1000)
            # a raw subscriber on a channel: proves slow, subscribes, then never reads its socket
            raw = await raw_channel(address, prove={"slow": ring.signer("slow")})
            await raw.send(unsigned_envelope("slow", "peer", kind="bus.subscribe", body={"topic": "blocks"}))
            await eventually(lambda: peer.statistics().subscribers == 2)
            big = bytes(256 * 1024)
            published = 0
            while peer.statistics().subscribers == 2:
                await peer.publish("blocks", big)
                published += 1
                await trio.sleep(0.001)
                assert published < 1000, "the slow subscriber was never dropped"
            assert peer.statistics().subscribers == 1
            # the fast subscriber got everything, in order
            for i in range(published):
                assert (await fast_sub.receive()).seq == i
            await raw.aclose()


async def test_subscription_breaks_when_the_publisher_goes_away():
    ring = Keyring()
    async with open_node() as sub_node:
        doc = sub_node.endpoint("doc", **ring.credentials("doc"))
        async with open_node() as pub_node:
            sub_node.add_route("peer", await pub_node.listen("tcp://127.0.0.1:0"))
            peer = pub_node.endpoint("peer", **ring.credentials("peer"))
            with trio.fail_after(5):
                sub = await doc.subscribe("peer", "blocks")
                await peer.publish("blocks", "last")
                assert (await sub.receive()).body == "last"
        with trio.fail_after(5):
            with pytest.raises(BrokenError, match="broke"):
                await sub.receive()
            with pytest.raises(BusError, match="already subscribed"):
                await doc.subscribe("peer", "blocks", timeout=1)
            await sub.aclose()


async def test_a_subscriber_subscribing_again_replaces_its_old_subscription():
    """A restarted subscriber subscribes again while the publisher still holds its
    old subscription: the new one takes its place, even as the topic's only one."""
    ring = Keyring()
    async with open_node() as node:
        peer = node.endpoint("peer", **ring.credentials("peer"))
        doc = node.endpoint("doc", **ring.credentials("doc"))
        with trio.fail_after(5):
            sub = await doc.subscribe("peer", "blocks")
            await doc.request("peer", "bus.subscribe", {"topic": "blocks"})  # as a restarted doc would
            assert peer.statistics().subscribers == 1
            assert await peer.publish("blocks", "after") == 1
            event = await sub.receive()
            assert (event.seq, event.body) == (0, "after")


async def test_an_event_body_is_seq_and_data_and_malformed_ones_are_not_taken():
    """The publisher sends ``[seq, data]``; the map of earlier versions is still read; any other
    body (a bool or negative seq, another length, no data) is refused as an unexpected event."""
    from bus._pubsub import _Subscriptions

    async def request(*args, **kwargs):
        return None

    async def send(*args):
        return None

    subs = _Subscriptions(request=request, send=send, path_to=lambda agent: None)
    sub = await subs.subscribe("peer", "blocks", 16, 1)
    assert subs.on_event("peer", "blocks", [0, "a"])
    assert subs.on_event("peer", "blocks", {"seq": 1, "data": "b"})
    for bad in ([True, "x"], [-1, "x"], [2], [2, "x", 3], {"seq": 2}, {"data": "x"}, {"seq": "2", "data": 1},
                "x", None, 7):
        assert not subs.on_event("peer", "blocks", bad), bad
    assert not subs.on_event("peer", "other", [2, "x"])  # (no subscription to that topic)
    assert subs.on_event("peer", "blocks", [2, "c"])
    assert [(e.seq, e.body) for e in (sub.receive_nowait() for _ in range(3))] == [(0, "a"), (1, "b"), (2, "c")]
