"""The per-message fast paths refuse what the slow paths refused.

* A frame written at once by the sending task (``try_send``, plain TCP, when the
  connection's queue is empty): frames stay whole and in order when the socket
  takes only part of one (the rest goes first in the queue), and a reader that
  does not read is still dropped.
* Local delivery without re-checking what the sender's own endpoint built: an
  unknown sender, an oversize envelope and extension types are still refused,
  and the handler gets a copy of the body.
* Compact envelopes on a channel: a forged sender, a replayed frame and an
  unproven one are refused as before (see test_bus_channel.py); here the id and
  the reply form.
"""

import msgpack
import pytest
import trio

from bus import BusError, EnvelopeError, MessageType, RemoteError, open_node
from bus.testing import Keyring, eventually, linked_pair

MID = 60_000  # an envelope below TRY_SEND_BYTES: written at once when the queue is empty


async def test_frames_written_at_once_stay_whole_and_in_order_past_a_full_socket(raw_channel, unsigned_envelope,
                                                                                  monkeypatch):
    from bus import transport

    ring = Keyring()
    ring.add("mallory")
    partial = []
    try_send = transport._StreamConnection.try_send_frame  # (what a channel writes a sealed frame with)

    def counting(self, frame):
        rest = try_send(self, frame)
        partial.append(bool(rest))
        return rest

    monkeypatch.setattr(transport._StreamConnection, "try_send_frame", counting)

    async def fat(msg):
        return bytes([msg.body % 256]) * MID

    with trio.fail_after(60):
        async with linked_pair(ring, None) as (server, _, alice, address):
            bob = server.endpoint("bob", **ring.credentials("bob"))
            bob.register("fat", fat)
            bob.register("ping", _echo)
            async with await raw_channel(address, prove={"mallory": ring.signer("mallory")}) as raw:
                ids = []
                for i in range(400):  # one at a time, reading nothing, until a write goes partial
                    ids.append(1000 + i)
                    await raw.send(unsigned_envelope("mallory", kind="fat", body=i, msg_id=1000 + i))
                    await eventually(lambda: bob.statistics().sent_by_kind["fat"].messages == len(ids)
                                     if "fat" in bob.statistics().sent_by_kind else False, timeout=30)
                    if any(partial):
                        break
                for i in range(len(ids), len(ids) + 20):  # and some that queue behind its rest
                    ids.append(1000 + i)
                    await raw.send(unsigned_envelope("mallory", kind="fat", body=i, msg_id=1000 + i))
                n = len(ids)
                seen = {}
                while len(seen) < n:
                    env = await raw.receive()  # every frame authenticates: none cut or mixed
                    assert env is not None
                    if env.type == MessageType.REPLY:
                        seen[env.correlation_id] = env.body
            assert sorted(seen) == ids
            assert any(partial)  # (the socket did take only part of a frame)
            assert all(body == bytes([(cid - 1000) % 256]) * MID for cid, body in seen.items())
            assert server.statistics().dropped_connections == {}
            assert await alice.request("bob", "ping", "after") == "after"


async def _echo(msg):
    return msg.body


async def test_a_reader_that_never_reads_small_replies_is_still_dropped(raw_channel, unsigned_envelope):
    ring = Keyring()
    ring.add("mallory")

    async def mid(msg):
        return bytes(MID // 2)

    with trio.fail_after(90):
        async with linked_pair(ring, None, server_options={"send_queue_bytes": 1 << 20, "write_timeout": 2.0}) as (
                server, _, alice, address):
            bob = server.endpoint("bob", **ring.credentials("bob"))
            bob.register("mid", mid)
            bob.register("ping", _echo)
            async with await raw_channel(address, prove={"mallory": ring.signer("mallory")}) as raw:
                try:
                    for i in range(2000):  # never reads a reply
                        await raw.send(unsigned_envelope("mallory", kind="mid", body=i))
                        if server.statistics().dropped_connections:
                            break
                        await trio.sleep(0)
                except (trio.BrokenResourceError, OSError):
                    pass
                await eventually(lambda: bool(server.statistics().dropped_connections), timeout=30)
            dropped = server.statistics().dropped_connections
            assert dropped.get("send-queue-full", 0) + dropped.get("write-timeout", 0) == 1, dropped
            assert await alice.request("bob", "ping", "others go on") == "others go on"


async def test_local_delivery_still_refuses_what_it_refused():
    ring = Keyring()
    async with open_node(max_frame_size=4096) as node:
        alice = node.endpoint("alice", **ring.credentials("alice"))
        bob = node.endpoint("bob", **ring.credentials("bob"))
        got = []

        async def keep(msg):
            got.append(msg.body)
            msg.body["list"].append("changed by the handler")
            return "kept"

        bob.register("keep", keep)
        body = {"list": [1, 2]}
        with trio.fail_after(5):
            assert await alice.request("bob", "keep", body) == "kept"
            assert body == {"list": [1, 2]}  # the handler had a copy
            # a sender the directory does not know (its endpoint exists, its key does not)
            ghost = node.endpoint("ghost", signer=ring.signer("alice"), directory=ring.directory,
                                  verifier=ring.verifier)
            with pytest.raises(RemoteError) as info:
                await ghost.request("bob", "keep", {"list": []})
            assert info.value.code == "unknown-sender"
            with pytest.raises(BusError):  # oversize: refused to its sender
                await alice.request("bob", "keep", {"list": [bytes(5000)]})
            with pytest.raises(EnvelopeError):  # an extension type the packer writes
                await alice.request("bob", "keep", {"list": [msgpack.ExtType(5, b"x")]})
        assert len(got) == 1
        assert bob.statistics().rejected == {"unknown-sender": 1}


async def test_compact_ids_are_unique_across_a_nodes_endpoints_and_replies_carry_no_kind():
    ring = Keyring()
    async with open_node() as node:
        ids = []

        async def note(msg):
            ids.append(msg.msg_id)
            return None

        bob = node.endpoint("bob", **ring.credentials("bob"))
        bob.register("note", note)
        callers = [node.endpoint(f"a{i}", **ring.credentials(f"a{i}")) for i in range(3)]
        with trio.fail_after(5):
            for _ in range(5):
                for c in callers:
                    await c.request("bob", "note", None)
            await callers[0].aclose()
            again = node.endpoint("a0", **ring.credentials("a0"))  # a new endpoint of the same agent
            await again.request("bob", "note", None)
        assert len(set(ids)) == len(ids) == 16 and all(type(i) is int for i in ids)
        # a reply is counted under its request's kind though it does not carry it
        assert again.statistics().received_by_kind["note"].messages == 1
