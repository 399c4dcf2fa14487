"""Attack review, third wave: an endpoint's traffic statistics stay bounded whatever kinds a
sender invents (docs/security.md). Kinds are counted as they arrive, before any handler is
looked up, so each unregistered kind used to add an entry for the endpoint's lifetime."""

import trio

from bus import RemoteError, open_node
from bus.testing import Keyring

INVENTED = 5000  # more than the 4096 kinds an endpoint counts apart


async def test_kinds_a_sender_invents_do_not_grow_the_receivers_statistics():
    ring = Keyring()
    with trio.fail_after(120):
        async with open_node() as node:
            bob = node.endpoint("bob", **ring.credentials("bob"))
            mallory = node.endpoint("mallory", **ring.credentials("mallory"))
            bob.register("ping", lambda msg: _pong())
            assert await mallory.request("bob", "ping", None) == "pong"  # a kind counted before the flood
            for i in range(INVENTED):
                try:
                    await mallory.request("bob", f"k{i}", None)
                except RemoteError:
                    pass  # no such kind: refused, but it arrived
            assert await mallory.request("bob", "ping", None) == "pong"
            stats = bob.statistics()
            assert len(stats.received_by_kind) <= 4097
            # every message is still counted (the invented kinds together under one key)
            assert stats.received.messages == INVENTED + 2
            assert stats.received_by_kind["ping"].messages == 2  # still counted apart


async def _pong():
    return "pong"
