"""Attacks on the authenticated channels (security review, issue 14): a hostile
client, registered user or consortium node against real TCP nodes.

Each test states what the attacker tries and asserts the node's correct
behaviour; a test marked ``xfail(strict=True)`` is an open finding (the reason
says what the attacker can do), so it fails the suite the day it is fixed
without its mark being removed. The hostile clients do the channel handshake by
hand (``raw_channel``, conftest) and then control every byte.
"""

import pytest
import trio

from bus import MessageType, RemoteError, encode_frame, open_node
from bus.channel import WANT
from bus.testing import Keyring, eventually, linked_pair

pytestmark = pytest.mark.crypto


def _mallorys_box(server):
    """The server's send queue of the connection that is not alice's (white box)."""
    boxes = [box for conn, box in server._outboxes.items() if conn.source != "127.0.0.2"]
    return boxes[0] if len(boxes) == 1 else None


def _bob_proved_to_mallory(server):
    """Bob is proved on mallory's channel and nothing waits in its queue (white box)."""
    conns = [conn for conn in server._outboxes if conn.source != "127.0.0.2"]
    return (len(conns) == 1 and "bob" in conns[0].channel.proven_here
            and server._outboxes[conns[0]].idle)


async def test_a_forged_request_cannot_answer_a_victims_pending_request(raw_channel, unsigned_envelope):
    """Mallory (a registered user) sends a request *as alice*, unproven, carrying
    the message id of alice's pending request to bob, at a moment her own
    connection's send queue is full (she stopped reading). Bob rejects it
    (``unproven-sender``); its error reply must go on mallory's connection or
    nowhere, never be re-routed by name to the real alice, where it would answer
    (and fail) alice's genuine request with an error mallory provoked."""
    ring = Keyring()
    ring.add("mallory")
    release = trio.Event()
    big = b"x" * (1 << 20)

    async def slow(msg):
        await release.wait()
        return "genuine"

    async def fat(msg):
        return big

    with trio.fail_after(60):
        async with linked_pair(ring, None, server_options={"send_queue_frames": 1}, client_address="127.0.0.2") as (
                server, _, alice, address):
            bob = server.endpoint("bob", **ring.credentials("bob"))
            bob.register("slow", slow)
            bob.register("fat", fat)
            outcome = []

            async def ask():
                try:
                    outcome.append(await alice.request("bob", "slow", None, timeout=30))
                except RemoteError as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                await eventually(lambda: alice.statistics().pending_requests == 1)
                # the id only makes the damage visible; ids are a random prefix and a
                # counter, which any agent alice ever wrote to has seen
                (victim_id,) = alice._pending
                async with await raw_channel(address, prove={"mallory": ring.signer("mallory")}) as raw:
                    # bob proved to her first (asked): the proof does not sit in her 1-frame queue
                    await raw.stream.send_all(raw.sealed(b"bob", frame_type=WANT))
                    await eventually(lambda: _bob_proved_to_mallory(server))
                    for i in range(64):  # fat replies she never reads, until one waits in the queue
                        await raw.send(unsigned_envelope("mallory", kind="fat", body=i))
                        await eventually(lambda: bob.statistics().sent_by_peer["mallory"].messages == i + 1
                                         if "mallory" in bob.statistics().sent_by_peer else False)
                        for _ in range(5):  # (settles: the writer is stuck on a full TCP buffer)
                            await trio.sleep(0.02)
                        box = _mallorys_box(server)
                        if box is not None and len(box._frames) == 1:
                            break
                    else:
                        pytest.fail("mallory's send queue never filled")
                    forged = unsigned_envelope("alice", recipient="bob", kind="slow", msg_id=victim_id)
                    await raw.send(forged)
                    await eventually(lambda: bob.statistics().rejected.get("unproven-sender", 0) == 1)
                    for _ in range(50):  # let any error reply cross before bob answers
                        await trio.sleep(0.01)
                release.set()
            assert outcome == ["genuine"], outcome
            assert alice.statistics().rejected.get("unexpected-reply", 0) == 0


async def test_an_anonymous_hello_costs_the_node_no_signatures():
    from bus import FrameDecoder, Handshake, parse_address

    ring = Keyring()
    signatures = []

    def counting(agent):
        sign = ring.add(agent)

        def signer(message):
            signatures.append(agent)
            return sign(message)
        return signer

    hello = Handshake(initiator=True).hello  # drawn once, replayed on every connection
    with trio.fail_after(60):
        async with open_node() as server:
            address = await server.listen("tcp://127.0.0.1:0")
            for i in range(8):
                server.endpoint(f"agent-{i}", signer=counting(f"agent-{i}"), directory=ring.directory,
                                verifier=ring.verifier)
            where = parse_address(address)
            for _ in range(5):
                async with await trio.open_tcp_stream(where.host, where.port) as stream:
                    await stream.send_all(encode_frame(hello))
                    decoder, frames = FrameDecoder(), []
                    while not frames:  # the node's hello back: the handshake is done on its side
                        data = await stream.receive_some(65536)
                        assert data
                        frames.extend(decoder.feed(data))
                    with trio.move_on_after(0.2):  # whatever the node sends unasked
                        while await stream.receive_some(65536):
                            pass
            assert signatures == []


async def test_forged_envelopes_and_wants_do_not_redirect_messages_meant_for_another_agent(
        raw_channel, unsigned_envelope):
    """Alice has no listener: bob reaches her on the connection she last wrote on.
    Mallory, proved as herself on her own channel, sends envelopes *as alice*
    (every message type) and asks the node to prove alice to her (WANT): none of
    it makes bob's next request to alice travel on mallory's connection."""

    ring = Keyring()
    ring.add("mallory")

    async def echo(msg):
        return msg.body

    with trio.fail_after(60):
        async with linked_pair(ring, None, client_address="127.0.0.2") as (server, _, alice, address):
            bob = server.endpoint("bob", **ring.credentials("bob"))
            bob.register("ping", echo)
            alice.register("secret", echo)
            assert await alice.request("bob", "ping", "hi", timeout=15) == "hi"
            async with await raw_channel(address, prove={"mallory": ring.signer("mallory")}) as raw:
                await raw.stream.send_all(raw.sealed(b"alice", frame_type=WANT))
                for mtype in MessageType:
                    reply = mtype in (MessageType.REPLY, MessageType.ERROR)
                    body = {"code": "x", "message": "y"} if mtype == MessageType.ERROR else 1
                    await raw.send(unsigned_envelope("alice", recipient="bob", kind="ping", mtype=mtype, body=body,
                                                     correlation_id=bytes(16) if reply else None))
                await raw.send(unsigned_envelope("mallory", recipient="bob", kind="ping", body="own"))
                seen = []
                with trio.move_on_after(15):  # (until her own reply: it comes after every refused one)
                    while True:
                        env = await raw.receive()
                        seen.append(env)
                        if env.type == MessageType.REPLY:
                            break
                assert [e.body for e in seen if e.type == MessageType.REPLY] == ["own"]
                assert "alice" not in raw.channel.claims  # the node proved only bob to her
                assert await bob.request("alice", "secret", "for alice", timeout=15) == "for alice"
                with trio.move_on_after(0.5):
                    leaked = await raw.receive()
                    pytest.fail(f"mallory received {leaked!r}")
