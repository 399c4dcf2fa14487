"""Attack review (issue 14): compact envelopes carry integer ids from one counter per
node, so any agent can guess them. A compact reply names no sender: it is matched
by id at the requesting endpoint and accepted only on the connection its request
left on (whose other side proved the agent asked): guessing an id buys a hostile
registered user nothing. Real TCP, the hostile client's channel done by hand
(``raw_channel``); more in test_bus_compact_reply_attack.py."""

import pytest
import trio

from bus import MessageType
from bus.testing import Keyring, eventually, linked_pair

pytestmark = pytest.mark.crypto


async def test_replies_with_guessed_integer_ids_do_not_answer_anothers_pending_request(raw_channel,
                                                                                     unsigned_envelope):
    ring = Keyring()
    ring.add("mallory")
    release = trio.Event()

    async def slow(msg):
        await release.wait()
        return "genuine"

    with trio.fail_after(60):
        async with linked_pair(ring, None, client_address="127.0.0.2") as (server, _, alice, address):
            bob = server.endpoint("bob", **ring.credentials("bob"))
            async def ping(msg):
                return "pong"

            bob.register("ping", ping)
            alice.register("slow", slow)
            assert await alice.request("bob", "ping", None, timeout=10) == "pong"  # bob has a path to alice
            outcome = []

            async def ask():
                outcome.append(await bob.request("alice", "slow", None, timeout=30))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                await eventually(lambda: bob.statistics().pending_requests == 1)
                (victim_id,) = bob._pending
                assert type(victim_id) is int  # compact: a node's counter, guessable
                guesses = range(max(0, victim_id - 10), victim_id + 10)
                async with await raw_channel(address, prove={"mallory": ring.signer("mallory")}) as raw:
                    for guess in guesses:  # a reply names no sender: only its id, and the way it came
                        await raw.send(unsigned_envelope("mallory", recipient="bob", kind=None, body="forged",
                                                         mtype=MessageType.REPLY, correlation_id=guess))
                    for guess in guesses:
                        await raw.send(unsigned_envelope("mallory", recipient="bob", kind=None,
                                                         body={"code": "x", "message": "forged"},
                                                         mtype=MessageType.ERROR, correlation_id=guess))

                    def refused():  # the victim's id at bob (twice), the others at the node
                        return (bob.statistics().rejected.get("unexpected-reply", 0)
                                + server.statistics().rejected.get("unexpected-reply", 0))

                    await eventually(lambda: refused() >= 2 * len(guesses), timeout=30)
                    assert bob.statistics().rejected.get("unexpected-reply") == 2
                    assert bob.statistics().pending_requests == 1  # still waiting for alice herself
                release.set()
            assert outcome == ["genuine"]
