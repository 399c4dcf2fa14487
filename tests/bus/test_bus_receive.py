"""The receive side and dispatch (issue 14): reads that do not wait, request workers
that are reused, and replies waited for without a cancel scope per request.

* A plain TCP connection reads what is there before waiting, but yields to the
  event loop (so it can be cancelled) at least every ``_READS_BEFORE_YIELD`` reads.
* A request sent at once (``Node.route_now_compact``) is timed out by its endpoint's expiry
  task: on time, including one with an earlier deadline than requests already
  waiting, and a cancelled requester leaves nothing pending.
* Request handlers run on parked workers: a slow handler holds no other request,
  at most ``_IDLE_WORKERS`` stay parked, and a node closes with workers parked.
"""

import socket

import pytest
import trio
import trio.testing

from bus import MemoryTransport, RemoteError, RequestTimeout, open_node
from bus.framing import encode_frame
from bus.testing import Keyring, eventually


@pytest.mark.parametrize("byte_budget", [None, 64])
async def test_a_socket_with_bytes_always_waiting_still_yields_and_can_be_cancelled(monkeypatch, byte_budget):
    from bus import transport

    most = transport._READS_BEFORE_YIELD
    if byte_budget is not None:  # the bytes read without a yield are bounded too
        monkeypatch.setattr(transport, "_BYTES_BEFORE_YIELD", byte_budget)
        most = byte_budget // 16

    # every read asks for 16 bytes and every frame is 16 bytes (header + 12): each
    # read fills its buffer, so the next one reads first without waiting
    monkeypatch.setattr(transport, "_RECEIVE_SIZE", 16)
    monkeypatch.setattr(transport, "_MAX_RECEIVE_SIZE", 16)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    frames = [bytes([i]) * 12 for i in range(200)]
    with a:
        a.sendall(b"".join(encode_frame(f) for f in frames))  # 3,200 bytes: fits the socket's buffer
    conn = transport._StreamConnection(trio.SocketStream(trio.socket.from_stdlib_socket(b)), "test", 1024)
    assert await conn.receive() == frames[0]  # waits once, then the socket has more
    got = 1
    with trio.CancelScope() as scope:
        scope.cancel()
        while True:
            assert await conn.receive() == frames[got]  # read without a trip through the loop ...
            got += 1
    assert scope.cancelled_caught
    # ... until the reads in a row reach the bound: then it yields (and sees the cancel)
    assert 2 <= got <= most
    for i in range(got, len(frames)):  # nothing lost: the rest comes in order
        assert await conn.receive() == frames[i]
    await conn.aclose()


async def test_a_stream_reads_and_writes_through_the_standard_socket_until_it_is_closed():
    """The descriptor comes from the standard socket under trio's (no wrapper per read
    and write): frames cross both ways, several per read, and once the connection is
    closed nothing may be written at once and a read says it is closed."""
    from bus import ClosedError, transport

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    trio_b = trio.socket.from_stdlib_socket(b)
    assert transport._fileno_of(trio_b)() == b.fileno()

    class Bare:  # (a socket object with no standard socket under it: its own fileno)
        def fileno(self):
            return 42

    assert transport._fileno_of(Bare())() == 42
    conn = transport._StreamConnection(trio.SocketStream(trio_b), "test", 1 << 20)
    with a:
        a.sendall(encode_frame(b"one") + encode_frame(b"two") + encode_frame(bytes(70_000)))
        assert await conn.receive() == b"one" and await conn.receive() == b"two"
        big = await conn.receive()
        assert big == bytes(70_000) and type(big) is bytearray  # a large frame: only the receiver holds it
        assert conn.can_try_send() and conn.try_send(b"back") == b""
        assert a.recv(100) == encode_frame(b"back")
    await conn.aclose()
    assert not conn.can_try_send()
    with pytest.raises(ClosedError):
        await conn.receive()


async def test_a_large_frame_already_waiting_is_read_into_its_buffer_and_a_bare_header_reserves_nothing(
        monkeypatch):
    """A large frame whose body already waits in the socket (FIONREAD) is read straight
    into its buffer, not first into pieces joined at the end; a peer that sends a large
    header and less than half of its body still makes the receiver hold no buffer."""
    from bus import framing, transport

    fed: list[int] = []
    feed = framing.FrameDecoder.feed
    monkeypatch.setattr(framing.FrameDecoder, "feed", lambda self, data: fed.append(len(data)) or feed(self, data))
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for s, opt in ((a, socket.SO_SNDBUF), (b, socket.SO_RCVBUF)):
        s.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
    body = bytes(range(256)) * 3000  # 768,000 bytes: above RESERVE_MIN
    conn = transport._StreamConnection(trio.SocketStream(trio.socket.from_stdlib_socket(b)), "test", 16 << 20)
    with a:
        a.sendall(encode_frame(body))
        got = await conn.receive()
        assert got == body and type(got) is bytearray
        assert sum(fed) <= transport._RECEIVE_SIZE  # only the first read was fed: the rest went in place
        fed.clear()
        a.sendall((10_000_000).to_bytes(4, "big") + bytes(1_000_000))  # then it stops sending
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.receive)
            await trio.testing.wait_all_tasks_blocked()
            assert conn._decoder._into is None and conn._decoder.buffered == 1_000_004
            assert sum(fed) == 1_000_004  # fed as it came: no buffer of the announced size
            nursery.cancel_scope.cancel()
    await conn.aclose()


@pytest.fixture
def ring():
    r = Keyring()
    r.add("alice")
    r.add("bob")
    return r


async def test_requests_sent_at_once_time_out_on_time_even_behind_later_deadlines(autojump_clock, ring):
    mem = MemoryTransport()

    async def never(msg):
        await trio.sleep_forever()

    async def echo(msg):
        return msg.body

    async with open_node(transports={"mem": mem}) as server, \
            open_node(transports={"mem": mem}, routes={"bob": "mem://server"}) as client:
        await server.listen("mem://server")
        bob = server.endpoint("bob", **ring.credentials("bob"))
        bob.register("never", never)
        bob.register("echo", echo)
        alice = client.endpoint("alice", **ring.credentials("alice"))
        assert await alice.request("bob", "echo", 1) == 1  # connected, bob proved: later requests go at once
        sent_at_once = []
        route_now = client.route_now_compact

        def counting(*args):
            sent = route_now(*args)
            sent_at_once.append(sent is not None)
            return sent

        client.route_now_compact = counting
        ended = {}

        async def ask(name, timeout):
            start = trio.current_time()
            with pytest.raises(RequestTimeout):
                await alice.request("bob", "never", None, timeout=timeout)
            ended[name] = trio.current_time() - start

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, "long", 100)
            await trio.sleep(1)
            nursery.start_soon(ask, "short", 5)  # an earlier deadline than the one waiting
        assert sent_at_once == [True, True]
        assert 5 <= ended["short"] < 6
        assert 100 <= ended["long"] < 101
        assert alice.statistics().pending_requests == 0
        assert await alice.request("bob", "echo", 2, timeout=5) == 2  # and the next one still works

        # a requester cancelled from outside leaves nothing pending
        with trio.move_on_after(3):
            await alice.request("bob", "never", None, timeout=50)
        assert alice.statistics().pending_requests == 0
        await trio.sleep(60)  # the expiry task wakes for the cancelled one's deadline: nothing to fail
        assert await alice.request("bob", "echo", 3) == 3


async def test_a_slow_handler_holds_no_other_request_and_few_workers_stay_parked(ring):
    from bus import _endpoint

    release = trio.Event()
    slow_started = 0

    async def slow(msg):
        nonlocal slow_started
        slow_started += 1
        await release.wait()
        return "slow"

    async def echo(msg):
        return msg.body

    with trio.fail_after(30):
        async with open_node() as server, open_node() as client:
            client.add_route("bob", await server.listen("tcp://127.0.0.1:0"))
            bob = server.endpoint("bob", **ring.credentials("bob"))
            bob.register("slow", slow)
            bob.register("echo", echo)
            alice = client.endpoint("alice", **ring.credentials("alice"))
            results = []

            async def ask_slow():
                results.append(await alice.request("bob", "slow", None))

            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(ask_slow)
                await eventually(lambda: slow_started == 20)
                for i in range(50):  # one after the other, on the workers left
                    assert await alice.request("bob", "echo", i) == i
                assert results == []
                release.set()
            assert results == ["slow"] * 20
            # the 20 workers finished their requests; at most _IDLE_WORKERS stayed parked
            assert len(bob._idle_workers) <= _endpoint._IDLE_WORKERS
            assert await alice.request("bob", "echo", "again") == "again"
        # (leaving the block closed both nodes with workers parked: no hang)


async def test_a_failing_handler_does_not_lose_its_worker(ring):
    async def boom(msg):
        raise ValueError("no")

    async def echo(msg):
        return msg.body

    with trio.fail_after(30):
        async with open_node() as server, open_node() as client:
            client.add_route("bob", await server.listen("tcp://127.0.0.1:0"))
            bob = server.endpoint("bob", **ring.credentials("bob"))
            bob.register("boom", boom)
            bob.register("echo", echo)
            alice = client.endpoint("alice", **ring.credentials("alice"))
            for i in range(10):
                with pytest.raises(RemoteError) as info:
                    await alice.request("bob", "boom", None)
                assert info.value.code == "internal"
                assert await alice.request("bob", "echo", i) == i
            assert len(bob._idle_workers) == 1  # one worker served them all, one after the other


async def test_closing_an_endpoint_ends_its_parked_workers_and_expiry_task(ring):
    async def echo(msg):
        return msg.body

    with trio.fail_after(30):
        async with open_node() as node:
            before = len(node._nursery.child_tasks)
            bob = node.endpoint("bob", **ring.credentials("bob"))
            bob.register("echo", echo)
            alice = node.endpoint("alice", **ring.credentials("alice"))
            for i in range(5):
                assert await alice.request("bob", "echo", i, timeout=100) == i
            assert bob._idle_workers
            await bob.aclose()
            await alice.aclose()
            # each endpoint's dispatch task (and the workers in its nursery) and expiry task end
            await eventually(lambda: len(node._nursery.child_tasks) == before)
