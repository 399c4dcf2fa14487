"""Attack review (issue 15), open finding: the ledger registers a user under a consortium
node's id. ``Ledger.register`` checks the issuing peer, the token, the signature and that the
subject is new, but not that the subject is not a peer or orderer of the configuration, so a
hostile member's peer (its registrar's token, its own peer's signature) can put a user
certificate named ``p3`` (another organization's peer) or ``orderer`` on the ledger. Honest
peers refuse to issue one (``peer.enroll``, tests/agents/test_peer.py); closing it on the ledger
changes a validity rule every peer must apply alike (a consensus change), left to a release
that can say so (docs/security.md, "Users' TLS certificates")."""

from __future__ import annotations

import pytest


@pytest.mark.xfail(strict=True, reason="open finding: the ledger registers users named like consortium nodes")
@pytest.mark.parametrize("subject", ["p3", "orderer"])
def test_the_ledger_refuses_a_user_named_like_a_consortium_node(chain, subject):
    assert chain.config.peer("p3") is not None and chain.config.orderer_id == "orderer"
    result = chain.block(chain.register_tx(subject, "org-a"))
    assert result.marks[0] != "ok", "a user certificate named like a consortium node was registered"


def test_a_user_named_otherwise_is_registered(chain):
    assert chain.block(chain.register_tx("mallory", "org-a")).marks == ("ok",)
