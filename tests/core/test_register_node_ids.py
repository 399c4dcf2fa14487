"""Attack review (issue 15): the ledger refused no user named like a consortium node, so a
hostile member's peer (its registrar's token, its own peer's signature) could put a user
certificate named ``p3`` (another organization's peer) or ``orderer`` on the ledger, shadowing
that node wherever it is not known statically. ``Ledger.register`` now refuses a subject that is
a peer or orderer id of the configuration in force (``forbidden``), on every peer alike; honest
peers also refuse to issue one (``peer.enroll``, tests/agents/test_peer.py)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("subject", ["p3", "orderer"])
def test_the_ledger_refuses_a_user_named_like_a_consortium_node(chain, subject):
    assert chain.config.peer("p3") is not None and chain.config.orderer_id == "orderer"
    result = chain.block(chain.register_tx(subject, "org-a"))
    assert result.marks[0] != "ok", "a user certificate named like a consortium node was registered"


def test_a_user_named_otherwise_is_registered(chain):
    assert chain.block(chain.register_tx("mallory", "org-a")).marks == ("ok",)
