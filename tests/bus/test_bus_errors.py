"""The bus's error hierarchy: every way a message can fail to arrive or be answered
is a DeliveryError; answers and bad input are not; "closed" is not "broken"."""

import pytest
import trio
import trio.testing

import bus
from bus import (
    BrokenError,
    BusError,
    ClosedError,
    DeliveryError,
    HandlerError,
    MemoryTransport,
    RemoteError,
    RequestTimeout,
    UnreachableError,
    channel_handshake,
    open_node,
    parse_address,
)
from bus.testing import Keyring

DELIVERY = (UnreachableError, RequestTimeout, BrokenError, ClosedError)
NOT_DELIVERY = (bus.FrameError, bus.EnvelopeError, RemoteError, HandlerError, bus.SubscriptionLagged)


def test_delivery_errors_share_one_base_under_the_root():
    assert issubclass(DeliveryError, BusError)
    for cls in DELIVERY:
        assert issubclass(cls, DeliveryError), cls
    for cls in NOT_DELIVERY:
        assert issubclass(cls, BusError) and not issubclass(cls, DeliveryError), cls
    # "you closed it" and "it broke" stay apart, as in trio
    assert not issubclass(ClosedError, BrokenError) and not issubclass(BrokenError, ClosedError)
    assert issubclass(RequestTimeout, TimeoutError)


async def never(msg):
    await trio.sleep_forever()


async def refuse(msg):
    raise HandlerError("forbidden", "no")


async def test_each_failed_request_is_caught_as_a_delivery_error(autojump_clock):
    ring = Keyring()
    async with open_node() as node:
        alice = node.endpoint("alice", **ring.credentials("alice"))
        bob = node.endpoint("bob", **ring.credentials("bob"))
        bob.register("slow", never)
        bob.register("refused", refuse)

        with pytest.raises(DeliveryError) as info:
            await alice.request("nobody", "x", None)
        assert type(info.value) is UnreachableError

        with pytest.raises(DeliveryError) as info:
            await alice.request("bob", "slow", None, timeout=2)
        assert type(info.value) is RequestTimeout

        # an error reply is an answer, not a delivery failure
        with pytest.raises(BusError) as info:
            await alice.request("bob", "refused", None)
        assert type(info.value) is RemoteError and info.value.code == "forbidden"

        async with trio.open_nursery() as nursery:

            async def pending():
                with pytest.raises(DeliveryError) as info:
                    await alice.request("bob", "slow", None)
                assert type(info.value) is ClosedError

            nursery.start_soon(pending)
            await trio.testing.wait_all_tasks_blocked()
            await alice.aclose()


async def test_a_connection_that_breaks_under_a_request_is_a_delivery_error():
    ring = Keyring()
    mem = MemoryTransport()

    async def hang_up_after_request(conn):
        # a "bob" that does the channel handshake, proves bob, reads the request, hangs up
        conn = await channel_handshake(conn, initiator=False)
        await conn.send_proof(conn.channel.make_proof("bob", ring.add("bob")))
        assert await conn.receive() is not None
        await conn.aclose()

    async with open_node(transports={"mem": mem}, routes={"bob": "mem://bob"}) as node, trio.open_nursery() as nursery:
        await mem.serve(parse_address("mem://bob"), hang_up_after_request, nursery)
        alice = node.endpoint("alice", **ring.credentials("alice"))
        with trio.fail_after(5):
            with pytest.raises(DeliveryError) as info:
                await alice.request("bob", "ping", 1, timeout=60)
        assert type(info.value) is BrokenError
