"""Attack review (issue 14): ``peer.audit`` reads a patient's whole trail (one event per
share served, ~1.4 s of CPU at 100k events, a few minutes of one doctor's reads); the
peer must not do that on its event loop, where it would stall every other request
for that long. White box: the handler on a stub peer."""

import threading
from types import SimpleNamespace

import bus
import pytest

from agents.peer._handlers import PeerHandlers
from core.protocol import PeerAudit


class _Ledger:
    def __init__(self):
        self.threads = []

    def audit_page(self, patient, after=None):
        self.threads.append(threading.current_thread())
        return [{"event": "access", "patient": patient}], None


async def test_the_audit_trail_is_read_off_the_event_loop():
    handlers = PeerHandlers.__new__(PeerHandlers)
    handlers.peer = SimpleNamespace(ledger=_Ledger())
    msg = bus.Message("alice", PeerAudit.kind, {"patient": "alice"}, 1, 0, bus.MessageType.REQUEST)
    reply = await handlers._audit(msg, PeerAudit("alice"))
    assert reply.events == ({"event": "access", "patient": "alice"},)
    (thread,) = handlers.peer.ledger.threads
    assert thread is not threading.current_thread()  # a worker thread, not the loop's
    # and only the patient asks, before any work
    with pytest.raises(bus.HandlerError):
        await handlers._audit(bus.Message("mallory", PeerAudit.kind, {}, 2, 0, bus.MessageType.REQUEST),
                              PeerAudit("alice"))
    assert len(handlers.peer.ledger.threads) == 1
