"""Attack review, second wave: the certificate follower's "stale block" shortcut
(a block applied already asks the orderer nothing) must be decided from the
caller's own block. The subscription loop and the storage reconciler's
catch_up apply blocks concurrently; a flag shared between the two calls let
one call read the other's verdict and skip the catch-up after a real gap
(the follower then missed certificate changes until the next block)."""

from __future__ import annotations

import time

import trio

import bus
from core.ledger import Block

from tests.agents.test_consortium import World


async def test_a_concurrent_stale_block_does_not_hide_a_gap(tmp_path):
    w = World(tmp_path)
    with trio.fail_after(30):
        async with bus.open_node() as node, trio.open_nursery() as nursery:
            orderer, peer, follower = await w.one_block(node, nursery)
            assert await follower.catch_up() and follower.height == 1
            applied = (await peer.request("orderer", "orderer.blocks", {"from": 1, "limit": 1}))["blocks"][0]
            gap = Block.make(4, b"\0" * 32, int(time.time() * 1000), [w.register("carol", "p-a")],
                             w.orderer_key).to_bytes()
            # the interleaving: the gap block's worker thread ends; before the subscription
            # loop resumes, the reconciler's thread (the follower's limiter lets one run at a
            # time: it runs next) checks a copy of block 1, which it finds stale
            real_feed = follower._feed

            def feed(raw):
                result = real_feed(raw)
                if raw == gap:
                    real_feed(applied)  # the reconciler's check, in between (stale: not applied)
                return result

            follower._feed = feed
            verdict = await follower._apply(gap)
            assert follower.height == 1
            assert verdict == "gap", "a gap was taken for a stale block: run() would not catch up"
            nursery.cancel_scope.cancel()
