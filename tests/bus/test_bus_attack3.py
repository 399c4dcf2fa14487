"""The hostile network against session 8's merge (issue 14, fourth wave): proofs sent
again on a channel that proved an agent, refused envelopes as log lines, fd-direct reads
and writes on a socket closed or reset under them (see docs/security.md, "Fourth wave")."""

import contextlib
import functools
import os
import socket
import struct

import pytest
import trio
import trio.socket

from bus import BrokenError, ClosedError, MessageType, TcpTransport, open_node, parse_address, transport
from bus.channel import PROOF
from bus.envelope import encode_compact
from bus.testing import Keyring, eventually


async def _echo(msg):
    return msg.body


async def _legitimate(address, ring, done, replies):
    """Carol, a registered client on a node of her own, pings bob until ``done`` is set."""
    async with open_node(routes={"bob": address}) as node:
        carol = node.endpoint("carol", signer=ring.signer("carol"), directory=ring.directory,
                              verifier=ring.verifier)
        i = 0
        while not done.is_set():
            assert await carol.request("bob", "ping", i, timeout=10) == i
            replies.append(i)
            i += 1
            await trio.sleep(0.01)


@contextlib.asynccontextmanager
async def _bob_under_attack(raw_channel, unsigned_envelope, ring, verifier=None):
    """A node hosting bob (``ping`` echoes), carol pinging him meanwhile from a node of her
    own, and mallory's hand-made channel to it, proved as herself and answered once:
    yields (the node, bob, mallory's channel); carol must have been served."""
    replies = []
    with trio.fail_after(60):
        async with open_node() as server:
            address = await server.listen("tcp://127.0.0.1:0")
            bob = server.endpoint("bob", signer=ring.add("bob"), directory=ring.directory,
                                  verifier=verifier or ring.verifier)
            bob.register("ping", _echo)
            done = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_legitimate, address, ring, done, replies)
                async with await raw_channel(address, prove={"mallory": ring.signer("mallory")}) as raw:
                    await raw.send(unsigned_envelope("mallory", body="own"))
                    assert (await raw.receive()).body == "own"
                    yield server, bob, raw
                done.set()
    assert replies


async def test_a_valid_proof_sent_again_and_again_costs_one_verification(raw_channel, unsigned_envelope):
    """Mallory (registered) proves herself once, then sends that same proof again (or one
    of two valid signatures of it in turn) ahead of each envelope: each new copy made
    the endpoint verify the proof again (one ECDSA verification per ~150 bytes sent, no
    crypto on her side). A proof that verified on a channel stays verified there."""
    ring = Keyring()
    for name in ("mallory", "carol"):
        ring.add(name)
    verified = []
    async with _bob_under_attack(raw_channel, unsigned_envelope, ring,
                                 lambda key, *signed: verified.append(key) or ring.verifier(key, *signed)) as (
            _, _, raw):
        proofs = [raw.channel.make_proof("mallory", ring.signer("mallory")) for _ in range(2)]
        before = len(verified)
        for i in range(100):
            await raw.stream.send_all(raw.sealed(proofs[i % 2], frame_type=PROOF)
                                      + raw.sealed(unsigned_envelope("mallory", body=i)))
            reply = await raw.receive()
            assert reply.type == MessageType.REPLY and reply.body == i
        mallorys = [k for k in verified[before:] if k == ring.directory("mallory")]
        assert len(mallorys) <= 2, len(mallorys)  # (was 100: one per copy)


# ------------------------------------------------------------ fd-direct reads on a socket closed meanwhile


async def _reader_over_a_socket_closed_while_it_waits(monkeypatch, wait_name):
    """A plain-TCP reader (bus.transport._ReadFirst) whose socket another task closes
    while the reader waits (``wait_name``: the readability wait or the yield after a run
    of reads), the descriptor's number going at once to another connection that has
    bytes waiting (what an accept or a connect in the same scheduling batch gets).
    The read must not take that other connection's bytes."""
    a, b = trio.socket.socketpair()
    reader = transport._ReadFirst(trio.SocketStream(a))
    other, other_peer = socket.socketpair()
    other_peer.sendall(b"another connection's bytes")
    real = getattr(trio.lowlevel, wait_name)
    number = a.fileno()

    async def close_then_wait(*args):
        a.close()  # (another task's aclose: trio forgets the socket)
        os.dup2(other.fileno(), number)  # the number is reused by a socket opened meanwhile
        if wait_name == "checkpoint":
            await real()
        # (a readability wait that was already woken: nothing to wait for)

    if wait_name == "checkpoint":
        reader._drained = False
        reader._unyielded = transport._READS_BEFORE_YIELD
    await b.send(b"x")  # readable, so the reader's wait is already over when the close comes
    monkeypatch.setattr(transport.trio.lowlevel, wait_name, close_then_wait)
    try:
        try:
            got = await reader.receive_some(1024)
        except trio.ClosedResourceError:
            got = None
        monkeypatch.undo()
        assert got is None, got  # not b"another connection's bytes"
        assert other.recv(1024) == b"another connection's bytes"  # still there for its owner
    finally:
        monkeypatch.undo()
        if a.fileno() < 0:
            os.close(number)  # (the dup)
        else:
            a.close()
        for s in (b, other, other_peer):
            s.close()


async def test_a_read_after_a_yield_does_not_take_another_sockets_bytes(monkeypatch):
    await _reader_over_a_socket_closed_while_it_waits(monkeypatch, "checkpoint")


async def test_a_read_after_a_readability_wait_does_not_take_another_sockets_bytes(monkeypatch):
    await _reader_over_a_socket_closed_while_it_waits(monkeypatch, "wait_readable")


# ------------------------------------------------------------ refused envelopes on a vouched channel


async def test_refused_envelopes_on_a_vouched_channel_are_counted_not_each_logged(
        raw_channel, unsigned_envelope, caplog):
    """Mallory (registered, proved as herself, so her channel is vouched for) sends ~40-byte
    envelopes in the name of nobody the node knows, of a registered user she did not prove,
    to an agent the node does not host, and of a kind it has no handler for: each was
    refused and logged (a warning line of ~200 bytes per envelope, on the node's disk).
    They are counted, and logged only now and then; carol is served meanwhile."""
    ring = Keyring()
    for name in ("mallory", "carol", "alice"):
        ring.add(name)
    each = 300
    async with _bob_under_attack(raw_channel, unsigned_envelope, ring) as (server, bob, raw):
        caplog.clear()
        for sender, recipient, mtype in (("nobody", "bob", MessageType.EVENT),
                                         ("alice", "bob", MessageType.EVENT),
                                         ("mallory", "ghost", MessageType.EVENT),
                                         ("mallory", "bob", MessageType.SEND)):  # (no such kind)
            await raw.stream.send_all(b"".join(
                raw.sealed(encode_compact(mtype, "made-up", i, None, sender, recipient, 1))
                for i in range(each)))
        await eventually(lambda: bob.statistics().rejected.get("unknown-kind") == each, timeout=30)
        await raw.send(unsigned_envelope("mallory", body="still here"))
        assert (await raw.receive()).body == "still here"
        rejected = dict(bob.statistics().rejected)
        assert rejected.get("unknown-sender") == each and rejected.get("unproven-sender") == each
        assert server.statistics().rejected.get("misaddressed") == each
        warnings = [r for r in caplog.records if r.name == "bus" and r.levelname == "WARNING"]
        assert len(warnings) <= 4 * 20, len(warnings)  # (was 1,200: one per envelope)


async def test_fd_direct_writes_to_a_reset_or_closed_socket_break_the_connection_only():
    """A peer that resets its connection (RST: SO_LINGER 0) under a run of fd-direct
    writes (try_send: os.write on the socket's descriptor), then the connection closed
    under more of them: each write fails into a broken connection (the frame handed
    back, a later send raises BrokenError or ClosedError), never an exception out of
    try_send, and nothing is written to a descriptor number the socket no longer has."""
    accepted = []

    async def reset_at_once(stream):
        accepted.append(stream)
        await trio.sleep_forever()  # (serve_tcp closes it when this returns: the test resets it)

    tcp = TcpTransport()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, reset_at_once, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        conn = await tcp.connect(parse_address(f"tcp://127.0.0.1:{port}"))
        with trio.fail_after(10):
            while not accepted:
                await trio.sleep(0.01)
        assert conn.can_try_send() and conn.try_send(b"first") == b""
        server_side = accepted[0].socket
        server_side.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server_side.close()  # RST
        await trio.sleep(0.05)
        frame = b"x" * 1000
        for _ in range(20):
            if not conn.can_try_send():
                break
            conn.try_send(frame)
        assert not conn.can_try_send()  # broken by a failed write (EPIPE / ECONNRESET)
        with pytest.raises((BrokenError, ClosedError)):
            await conn.send(b"after the reset")
        await conn.aclose()
        assert not conn.can_try_send()
        with pytest.raises(ClosedError):
            await conn.send(b"after the close")
        nursery.cancel_scope.cancel()
