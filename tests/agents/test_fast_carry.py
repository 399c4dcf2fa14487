"""agents.handlers.serve: a request its fast companion defers reaches the handler with the
body the companion parsed (carried by the bus: ``bus.defer``), not parsed a second time;
the handler still admits the sender first (a sender refused there gets no handler run)."""

from __future__ import annotations

import trio

import bus
from agents.admission import Classifier, Refusals
from agents.handlers import serve
from agents.testing.hostile import endpoints, refusal_code
from core.protocol import PeerBlocks, PeerBlocksReply

WAIT_FROM = 1000


async def test_a_deferred_request_is_parsed_once_and_its_handler_gets_that_body(monkeypatch):
    parsed: list[PeerBlocks] = []
    handled: list[PeerBlocks] = []
    from_wire = PeerBlocks.from_wire

    def counting_from_wire(body):
        request = from_wire(body)
        parsed.append(request)
        return request

    def blocks_now(msg: bus.Message, request: PeerBlocks):
        return bus.DEFER if request.start >= WAIT_FROM else PeerBlocksReply(())

    async def blocks(msg: bus.Message, request: PeerBlocks) -> PeerBlocksReply:
        handled.append(request)
        return PeerBlocksReply(())

    classifier = Classifier(peers=["peer-x"], orderer="orderer", storage=["store-1"], role={}.get)
    with trio.fail_after(30):
        async with endpoints(("server", "peer-x", "mallory"), tcp=True) as eps:
            monkeypatch.setattr(PeerBlocks, "from_wire", staticmethod(counting_from_wire))
            serve(eps["server"], {PeerBlocks: blocks}, classifier=classifier, refusals=Refusals("server"),
                  fast={PeerBlocks: blocks_now})  # (it looks from_wire up once, here)
            monkeypatch.undo()
            assert await refusal_code(eps["peer-x"], "server", PeerBlocks.kind, PeerBlocks(5, 10).to_wire()) is None
            assert len(parsed) == 1 and handled == []  # answered by the companion
            assert await refusal_code(eps["peer-x"], "server", PeerBlocks.kind,
                                      PeerBlocks(WAIT_FROM, 10).to_wire()) is None
            assert len(parsed) == 2  # deferred: parsed by the companion only
            assert handled == [parsed[1]] and handled[0] is parsed[1]  # the companion's object, carried
            code = await refusal_code(eps["mallory"], "server", PeerBlocks.kind, PeerBlocks(WAIT_FROM, 10).to_wire())
            assert code == "forbidden" and len(parsed) == 2 and len(handled) == 1  # refused before parsing
