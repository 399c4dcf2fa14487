"""Compact replies name no sender and no recipient (issue 14, bus bits per access): the
requesting node finds the asking endpoint by the reply's correlation id, and the
endpoint accepts it only on the connection its request left on (for a request
delivered on the node itself: only from the agent asked). Every other way a reply
could come is refused here: another connection (one that proved the very agent
asked included), an id nothing waits for, a co-hosted agent, a request whose
connection is still being set up. Coded kinds: a known code reaches its handler,
an unknown one is refused as an unknown kind. Real TCP loopback channels; the
hostile side's channel done by hand (``raw_channel``) where it must send what the
bus never would."""

import functools

import pytest
import trio

from bus import MessageType, encode_compact_reply, open_node, register_kind_codes
from bus.testing import Keyring, eventually, linked_pair

pytestmark = pytest.mark.crypto

_CODES = {"test.reply.coded": 60101}  # (the process's table is append-only: a code no application kind uses)


def _refused(*sources):
    return sum(s.statistics().rejected.get("unexpected-reply", 0) for s in sources)


async def _bob_asks_alice(nursery, server, bob, outcome):
    """Start bob's request to alice (her handler waits); return its id once it waits."""

    async def ask():
        try:
            outcome.append(await bob.request("alice", "slow", None, timeout=30))
        except Exception as exc:  # noqa: BLE001 (the test looks at what it was)
            outcome.append(exc)

    nursery.start_soon(ask)
    await eventually(lambda: bob.statistics().pending_requests == 1 and server.reply_routes)
    (victim,) = bob._pending
    assert type(victim) is int and server.reply_routes[victim] == "bob"
    return victim


async def test_a_reply_on_another_connection_than_its_request_is_refused_even_from_the_agent_asked(
        raw_channel, unsigned_envelope):
    """Bob asks alice over her client's channel. A second channel that proves alice herself
    (her key, another connection: a stolen key, a client restarted with a late reply) answers
    with the right id, as a reply and as an error: refused; the genuine reply is then taken."""
    ring = Keyring()
    release = trio.Event()

    async def slow(msg):
        await release.wait()
        return "genuine"

    async def ping(msg):
        return "pong"

    with trio.fail_after(60):
        async with linked_pair(ring, None, client_address="127.0.0.2") as (server, _, alice, address):
            bob = server.endpoint("bob", **ring.credentials("bob"))
            bob.register("ping", ping)
            alice.register("slow", slow)
            assert await alice.request("bob", "ping", None, timeout=10) == "pong"  # bob has a path to alice
            outcome = []
            async with trio.open_nursery() as nursery:
                victim = await _bob_asks_alice(nursery, server, bob, outcome)
                async with await raw_channel(address, prove={"alice": ring.signer("alice")}) as raw:
                    await raw.send(unsigned_envelope("alice", kind=None, body="forged", mtype=MessageType.REPLY,
                                                     correlation_id=victim))
                    await raw.send(unsigned_envelope("alice", kind=None, body={"code": "x", "message": "forged"},
                                                     mtype=MessageType.ERROR, correlation_id=victim))
                    await eventually(lambda: _refused(bob) == 2, timeout=30)
                    assert bob.statistics().pending_requests == 1
                    release.set()
            assert outcome == ["genuine"]
            assert not server.reply_routes  # the request's route ended with it


async def test_a_reply_for_an_id_nothing_waits_for_is_refused_by_the_node(raw_channel, unsigned_envelope):
    """Replies for ids no request of the node waits for (the id of mallory's own request
    just answered among them) reach no endpoint: counted by the node; the channel goes on
    working, and so does alice's."""
    ring = Keyring()
    ring.add("mallory")

    async def echo(msg):
        return msg.body

    with trio.fail_after(60):
        async with linked_pair(ring, echo) as (server, _, alice, address):
            assert await alice.request("bob", "ping", "hi", timeout=10) == "hi"
            async with await raw_channel(address, prove={"mallory": ring.signer("mallory")}) as raw:
                await raw.send(unsigned_envelope("mallory", body="first"))
                first = await raw.receive()  # a reply to mallory: compact, no names on it
                assert (first.type, first.body, first.sender, first.recipient) == (MessageType.REPLY, "first", "", "")
                for corr in (first.correlation_id, 0, 1, 2, 2**64 - 1, 12345):
                    await raw.send(unsigned_envelope("mallory", kind=None, body="forged", mtype=MessageType.REPLY,
                                                     correlation_id=corr))
                await eventually(lambda: _refused(server) == 6, timeout=30)
                await raw.send(unsigned_envelope("mallory", body="still here"))
                assert (await raw.receive()).body == "still here"
            assert await alice.request("bob", "ping", "again", timeout=10) == "again"


async def test_a_co_hosted_agent_cannot_answer_or_take_another_endpoints_request():
    """Bob and carol share a node. Bob asks alice (another node) and dave (his own node);
    carol, through the node's host interface (more than a co-hosted agent's endpoint
    offers), answers both with their ids: refused (bob's request to alice left on a
    connection; the one to dave must come from dave); so is a reply in alice's name from
    this node. Carol's own requests to alice, over the same channel as bob's, and to dave
    each get their own reply."""
    ring = Keyring()
    release = trio.Event()

    async def slow(msg):
        await release.wait()
        return f"genuine {msg.sender}"

    with trio.fail_after(60):
        async with linked_pair(ring, None) as (server, client, alice, address):
            bob = server.endpoint("bob", **ring.credentials("bob"))
            carol = server.endpoint("carol", **ring.credentials("carol"))
            dave = server.endpoint("dave", **ring.credentials("dave"))
            alice.register("slow", slow)
            dave.register("slow", slow)
            server.add_route("alice", await client.listen("tcp://127.0.0.1:0"))
            outcome = {}

            async def ask(who, ep, to):
                outcome[who, to] = await ep.request(to, "slow", None, timeout=30)

            async with trio.open_nursery() as nursery:
                for who, ep in (("bob", bob), ("carol", carol)):
                    for to in ("alice", "dave"):
                        nursery.start_soon(ask, who, ep, to)
                await eventually(lambda: len(server.reply_routes) == 4, timeout=30)
                bobs = [i for i, owner in server.reply_routes.items() if owner == "bob"]
                assert len(bobs) == 2
                for victim in bobs:
                    for mtype, body in ((MessageType.REPLY, "stolen"),
                                        (MessageType.ERROR, {"code": "x", "message": "stolen"})):
                        await server.route("carol", "bob", encode_compact_reply(mtype, victim, body), None)
                assert _refused(bob) == 4 and bob.statistics().pending_requests == 2
                # in the name of the agent asked, from this node: the request to alice left on a connection
                alices = [i for i in bobs if bob._pending[i].to == "alice"]
                await server.route("alice", "bob", encode_compact_reply(MessageType.REPLY, alices[0], "x"), None)
                assert _refused(bob) == 5 and bob.statistics().pending_requests == 2
                release.set()
            assert outcome == {(who, to): f"genuine {who}" for who in ("bob", "carol") for to in ("alice", "dave")}
            assert not server.reply_routes


async def test_replies_to_requests_sent_while_connecting_are_taken():
    """Requests that open the connection (connecting, the channel handshake, the proofs)
    get their replies, to a quick handler (answered in the reader task, at once) too."""
    ring = Keyring()

    async def echo(msg):
        return msg.body

    with trio.fail_after(60):
        async with linked_pair(ring, None) as (server, client, alice, address):
            bob = server.endpoint("bob", **ring.credentials("bob"))
            bob.register("ping", echo, quick=True)
            bob.register("slow", echo)
            got = []

            async def ask(i):
                got.append(await alice.request("bob", "ping" if i % 2 else "slow", i, timeout=30))

            async with trio.open_nursery() as nursery:  # all sent before the connection exists
                for i in range(20):
                    nursery.start_soon(ask, i)
            assert sorted(got) == list(range(20))
            assert not _refused(alice, client) and not client.reply_routes


async def test_a_reply_while_the_request_is_still_connecting_is_refused(raw_channel, unsigned_envelope):
    """Bob's request to alice waits for a connection that never completes its handshake
    (its connection is not known yet). Mallory, on a channel of her own to bob's node,
    answers with every id around it, and a reply comes from bob's own node in alice's
    name: refused (a reply is taken only on the connection its request left on, or from
    the node for a request to an agent of the node); the request times out."""
    ring = Keyring()
    ring.add("mallory")
    ring.add("alice")

    async def hold(stream):  # accepts, never answers the handshake
        await trio.sleep_forever()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(functools.partial(trio.serve_tcp, hold, 0, host="127.0.0.1"))
            port = listener.socket.getsockname()[1]
            async with open_node(handshake_timeout=20, connect_attempts=1) as server:
                address = await server.listen("tcp://127.0.0.1:0")
                server.add_route("alice", f"tcp://127.0.0.1:{port}")
                bob = server.endpoint("bob", **ring.credentials("bob"))
                outcome = []

                async def ask():
                    try:
                        await bob.request("alice", "slow", None, timeout=3)
                    except Exception as exc:  # noqa: BLE001
                        outcome.append(type(exc).__name__)

                async with trio.open_nursery() as inner:
                    inner.start_soon(ask)
                    await eventually(lambda: bob.statistics().pending_requests == 1)
                    (victim,) = bob._pending
                    async with await raw_channel(address, prove={"mallory": ring.signer("mallory")}) as raw:
                        guesses = range(max(0, victim - 5), victim + 5)
                        for corr in guesses:
                            await raw.send(unsigned_envelope("mallory", kind=None, body="forged",
                                                             mtype=MessageType.REPLY, correlation_id=corr))
                        await eventually(lambda: _refused(bob, server) == len(guesses), timeout=30)
                        assert _refused(bob) == 1 and bob.statistics().pending_requests == 1
                    # nor from this node in alice's name (the request did not go to an agent of this node)
                    await server.route("alice", "bob", encode_compact_reply(MessageType.REPLY, victim, "x"), None)
                    assert _refused(bob) == 2 and bob.statistics().pending_requests == 1
                assert outcome == ["RequestTimeout"]
            nursery.cancel_scope.cancel()


async def test_coded_kinds_reach_their_handler_and_unknown_codes_are_refused_as_unknown_kinds(
        raw_channel, unsigned_envelope):
    """A registered kind travels as its code (fewer bytes) and reaches its handler; a code
    nobody registered is answered ``unknown-kind`` and counted so, and the channel goes on."""
    import msgpack

    register_kind_codes(_CODES)
    (kind,) = _CODES
    ring = Keyring()
    ring.add("mallory")
    seen = []

    async def handler(msg):
        seen.append(msg.kind)
        return msg.body

    with trio.fail_after(60):
        async with linked_pair(ring, None) as (server, _, alice, address):
            bob = server.endpoint("bob", **ring.credentials("bob"))
            bob.register("ping", handler)
            bob.register(kind, handler)
            assert await alice.request("bob", "ping", "x", timeout=10) == "x"  # (connects: the names)
            first = alice.statistics().sent_by_kind["ping"].bytes
            assert await alice.request("bob", "ping", "x", timeout=10) == "x"  # (the names' aliases)
            assert await alice.request("bob", kind, "x", timeout=10) == "x"
            sent = alice.statistics().sent_by_kind
            # the same body and one-byte ids: the code (3 bytes) instead of "ping" (5)
            assert sent[kind].bytes == sent["ping"].bytes - first - 2
            async with await raw_channel(address, prove={"mallory": ring.signer("mallory")}) as raw:
                for code in (60999, 0, 65535):  # nobody registered these
                    await raw.send(msgpack.packb([2, 1, code, 7, None, "mallory", "bob", "x"], use_bin_type=True))
                    reply = await raw.receive()
                    assert reply.type == MessageType.ERROR and reply.body["code"] == "unknown-kind"
                    assert f"bus.code.{code}" in reply.body["message"]
                await raw.send(msgpack.packb([2, 0, 60998, 8, None, "mallory", "bob", "x"], use_bin_type=True))
                await raw.send(msgpack.packb([2, 1, _CODES[kind], 9, None, "mallory", "bob", "coded"],
                                             use_bin_type=True))
                assert (await raw.receive()).body == "coded"
            assert seen == ["ping", "ping", kind, kind]
            assert bob.statistics().rejected.get("unknown-kind") == 4  # three requests, one message
