"""The in-memory hub (many endpoints on one node) and the in-memory transport."""

import time

import msgpack
import pytest
import trio
import trio.testing

from bus import (
    BusError,
    ClosedError,
    Envelope,
    HandlerError,
    MemoryTransport,
    MessageType,
    RemoteError,
    RequestTimeout,
    UnreachableError,
    decode_envelope,
    open_node,
    parse_address,
)
from bus.testing import Keyring
from core import ecdsa


def ecdsa_ring():
    return Keyring(
        generate=ecdsa.generate_private_key,
        public_key=ecdsa.public_key,
        sign=ecdsa.sign_raw,
        verify=ecdsa.is_valid_raw,
    )


async def echo(msg):
    return {"echo": msg.body, "from": msg.sender, "kind": msg.kind}


async def test_request_reply_with_ecdsa_and_accounting():
    ring = ecdsa_ring()
    async with open_node() as node:
        a = node.endpoint("alice", **ring.credentials("alice"))
        b = node.endpoint("bob", **ring.credentials("bob"))
        b.register("ping", echo)
        with trio.fail_after(5):
            assert await a.request("bob", "ping", [1, b"x"]) == {
                "echo": [1, b"x"],
                "from": "alice",
                "kind": "ping",
            }
        sa, sb = a.statistics(), b.statistics()
        assert sa.sent_by_kind["ping"].messages == 1
        assert sa.received_by_kind["ping"].messages == 1  # the reply counts under its request's kind
        assert sa.sent_by_kind["ping"] == sb.received_by_kind["ping"]
        assert sa.received_by_kind["ping"] == sb.sent_by_kind["ping"]
        assert sa.sent_by_peer["bob"] == sa.sent
        # the envelope's bytes are counted: the body and a header (the request's: ids, kind, names; a
        # compact reply's: its type and correlation id only, 4 bytes here)
        reply_body = len(msgpack.packb({"echo": [1, b"x"], "from": "alice", "kind": "ping"}))
        assert sa.received_by_peer["bob"].bytes == reply_body + 4
        assert sa.sent_by_peer["bob"].bytes > len(msgpack.packb([1, b"x"])) + len("alicebobping")
        assert sa.pending_requests == 0 and not sa.rejected


async def test_typed_remote_errors_and_no_leaks():
    ring = Keyring()

    class Refused(Exception):
        remote_code = "policy-denied"

        def __init__(self):
            super().__init__("doctor lacks the cardiology attribute")

    async def handler(msg):
        if msg.body == "typed":
            raise HandlerError("not-found", "no such record")
        if msg.body == "attr":
            raise Refused()
        raise ValueError("patient 123 has secret diagnosis")

    async with open_node() as node:
        a = node.endpoint("alice", **ring.credentials("alice"))
        b = node.endpoint("bob", **ring.credentials("bob"))
        b.register("op", handler)
        with trio.fail_after(5):
            with pytest.raises(RemoteError) as info:
                await a.request("bob", "op", "typed")
            assert (info.value.code, info.value.message, info.value.peer) == (
                "not-found",
                "no such record",
                "bob",
            )
            with pytest.raises(RemoteError) as info:
                await a.request("bob", "op", "attr")
            assert info.value.code == "policy-denied"
            assert "cardiology" in info.value.message
            with pytest.raises(RemoteError) as info:
                await a.request("bob", "op", "other")
            assert info.value.code == "internal"
            assert "secret" not in str(info.value) and "123" not in str(info.value)
            with pytest.raises(RemoteError) as info:
                await a.request("bob", "nosuch", None)
            assert info.value.code == "unknown-kind"
        assert b.statistics().rejected["unknown-kind"] == 1


async def test_timeout_and_unreachable(autojump_clock):
    ring = Keyring()

    async def never(msg):
        await trio.sleep_forever()

    async with open_node() as node:
        a = node.endpoint("alice", **ring.credentials("alice"))
        b = node.endpoint("bob", **ring.credentials("bob"))
        b.register("slow", never)
        with pytest.raises(RequestTimeout, match="no reply from 'bob'"):
            await a.request("bob", "slow", None, timeout=3)
        assert a.statistics().pending_requests == 0
        with pytest.raises(UnreachableError):
            await a.request("nobody", "x", None, timeout=3)
        with pytest.raises(UnreachableError):
            await a.send("nobody", "x", None)


async def test_bad_signature_and_unknown_sender_get_error_replies():
    """Signed mode (``channels=False``) between two nodes: within one node
    nothing is verified (no crypto between agents of one node)."""
    ring = Keyring()
    ring.add("alice")
    mem = MemoryTransport()
    async with open_node(channels=False, transports={"mem": mem}) as server, \
            open_node(channels=False, transports={"mem": mem}, routes={"bob": "mem://server"}) as node:
        await server.listen("mem://server")
        bob = server.endpoint("bob", **ring.credentials("bob"))
        bob.register("ping", echo)
        # "eve" signs with alice's key: her own key is not registered
        eve = node.endpoint("eve", signer=ring.signer("alice"), directory=ring.directory, verifier=ring.verifier)
        # "carol" is registered, but signs with alice's key
        ring.add("carol")
        carol = node.endpoint("carol", signer=ring.signer("alice"), directory=ring.directory, verifier=ring.verifier)
        with trio.fail_after(5):
            with pytest.raises(RemoteError) as info:
                await eve.request("bob", "ping", 1)
            assert info.value.code == "unknown-sender"
            with pytest.raises(RemoteError) as info:
                await carol.request("bob", "ping", 1)
            assert info.value.code == "bad-signature"
        rejected = bob.statistics().rejected
        assert rejected["unknown-sender"] == 1 and rejected["bad-signature"] == 1


async def test_sends_are_handled_in_order_and_requests_concurrently():
    ring = Keyring()
    got = []
    both = trio.Event()

    async def record(msg):
        got.append(msg.body)

    async def first(msg):
        await both.wait()  # needs the second request to run concurrently
        return "first"

    async def second(msg):
        both.set()
        return "second"

    async with open_node() as node:
        a = node.endpoint("alice", **ring.credentials("alice"))
        b = node.endpoint("bob", **ring.credentials("bob"))
        b.register("note", record)
        b.register("first", first)
        b.register("second", second)
        with trio.fail_after(5):
            for i in range(500):
                await a.send("bob", "note", i)
            results = {}
            async with trio.open_nursery() as nursery:

                async def call(kind):
                    results[kind] = await a.request("bob", kind, None)

                nursery.start_soon(call, "first")
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(call, "second")
            while len(got) < 500:
                await trio.sleep(0.001)
        assert got == list(range(500))
        assert results == {"first": "first", "second": "second"}


async def test_inbox_is_bounded_and_pushes_back(autojump_clock):
    ring = Keyring()
    release = trio.Event()

    async def stuck(msg):
        await release.wait()

    async with open_node() as node:
        a = node.endpoint("alice", **ring.credentials("alice"))
        b = node.endpoint("bob", inbox_size=2, **ring.credentials("bob"))
        b.register("note", stuck)
        sent = 0
        with trio.move_on_after(10):
            while True:
                await a.send("bob", "note", sent)
                sent += 1
        assert sent == 3  # one in the handler, two queued: the fourth waits
        assert b.statistics().inbox == 2
        release.set()


async def test_closing_an_endpoint_fails_its_pending_requests():
    ring = Keyring()

    async def never(msg):
        await trio.sleep_forever()

    async with open_node() as node:
        a = node.endpoint("alice", **ring.credentials("alice"))
        node.endpoint("bob", **ring.credentials("bob")).register("slow", never)
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:

                async def call():
                    with pytest.raises(ClosedError):
                        await a.request("bob", "slow", None)

                nursery.start_soon(call)
                await trio.testing.wait_all_tasks_blocked()
                await a.aclose()
        with pytest.raises(ClosedError):
            await a.send("bob", "slow", None)


async def test_registration_rules():
    ring = Keyring()
    async with open_node() as node:
        a = node.endpoint("alice", **ring.credentials("alice"))
        with pytest.raises(BusError, match="already exists"):
            node.endpoint("alice", **ring.credentials("alice"))
        with pytest.raises(BusError, match="reserved"):
            a.register("bus.subscribe", echo)
        a.register("x", echo)
        with pytest.raises(BusError, match="already registered"):
            a.register("x", echo)


async def test_memory_transport_between_nodes_stale_and_replay():
    ring = Keyring()
    mem = MemoryTransport()
    skewed = lambda: time.time() + 120  # noqa: E731
    async with (  # signed mode: timestamps and the replay guard are what protect it
        open_node(transports={"mem": mem}, channels=False) as n1,
        open_node(transports={"mem": mem}, routes={"bob": "mem://n1"}, channels=False) as n2,
        open_node(transports={"mem": mem}, routes={"bob": "mem://n1"}, clock=skewed, channels=False) as n3,
    ):
        assert await n1.listen("mem://n1") == "mem://n1"
        bob = n1.endpoint("bob", **ring.credentials("bob"))
        bob.register("ping", echo)
        alice = n2.endpoint("alice", **ring.credentials("alice"))
        # late's clock is 2 minutes ahead; its own window is wide enough to
        # accept bob's error reply, bob's (30 s) is not
        late = n3.endpoint("late", skew=300, **ring.credentials("late"))
        with trio.fail_after(5):
            assert (await alice.request("bob", "ping", 7))["echo"] == 7
            with pytest.raises(RemoteError) as info:
                await late.request("bob", "ping", 7)
            assert info.value.code == "stale"

            # replay: the same signed bytes twice on a raw connection
            conn = await mem.connect(mem_address := parse_address("mem://n1"))
            env = Envelope.create(
                type=MessageType.REQUEST,
                kind="ping",
                sender="alice",
                recipient="bob",
                body=1,
                timestamp=int(time.time() * 1000),
                signer=ring.signer("alice"),
            )
            await conn.send(env.encode())
            first = decode_envelope(await conn.receive())
            assert first.type == MessageType.REPLY and first.correlation_id == env.msg_id
            await conn.send(env.encode())
            second = decode_envelope(await conn.receive())
            assert second.type == MessageType.ERROR and second.body["code"] == "replay"
            assert str(mem_address) == "mem://n1"
            await conn.aclose()
        assert bob.statistics().rejected == {"stale": 1, "replay": 1}


async def test_frame_limit_holds_in_process_and_an_oversize_reply_is_an_error():
    """Local delivery meets the same frame limit as TCP, and a reply too big to carry
    reaches the requester as a 'too-large' error at once, not as a timeout."""
    ring = ecdsa_ring()
    async with open_node(max_frame_size=64 * 1024) as node:
        a = node.endpoint("alice", **ring.credentials("alice"))
        b = node.endpoint("bob", **ring.credentials("bob"))

        async def big(msg):
            return {"data": bytes(msg.body)}

        b.register("big", big)
        b.register("ping", echo)
        with trio.fail_after(5):
            assert (await a.request("bob", "big", 1000, timeout=30))["data"] == bytes(1000)
            with pytest.raises(RemoteError) as info:
                await a.request("bob", "big", 100_000, timeout=30)
            assert info.value.code == "too-large"
            with pytest.raises(BusError):  # a request over the limit is refused to its sender
                await a.request("bob", "ping", bytes(100_000), timeout=30)
            assert await a.request("bob", "ping", 1) == {"echo": 1, "from": "alice", "kind": "ping"}
