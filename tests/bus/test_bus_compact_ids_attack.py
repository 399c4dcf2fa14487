"""Attack review (issue 14): compact envelopes carry integer ids from one counter per
node, so any agent can guess them. A reply is matched by (id, the agent asked) at
the requesting endpoint, and the channel proves who an envelope is from: guessing
an id buys a hostile registered user nothing. Real TCP, the hostile client's
channel done by hand (``raw_channel``)."""

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
                    for guess in guesses:  # as herself: a reply from an agent bob did not ask
                        await raw.send(unsigned_envelope("mallory", recipient="bob", kind=None, body="forged",
                                                         mtype=MessageType.REPLY, correlation_id=guess))
                    for guess in guesses:  # as alice, whom her channel never proved
                        await raw.send(unsigned_envelope("alice", recipient="bob", kind=None,
                                                         body={"code": "x", "message": "forged"},
                                                         mtype=MessageType.ERROR, correlation_id=guess))

                    def rejected(reason):
                        return bob.statistics().rejected.get(reason, 0)

                    await eventually(lambda: rejected("unexpected-reply") >= len(guesses)
                                     and rejected("unproven-sender") >= len(guesses), timeout=30)
                    assert bob.statistics().pending_requests == 1  # still waiting for alice herself
                release.set()
            assert outcome == ["genuine"]
