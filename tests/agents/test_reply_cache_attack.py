"""Attack review, second wave: the peer's cache of signed re-encryption replies
(agents.peer._handlers) keeps no state for a grant once it is revoked, and stays
bounded however many grants come and go."""

from __future__ import annotations

from types import SimpleNamespace

from agents.admission import Refusals
from agents.peer._handlers import SHARE_CACHE, PeerHandlers


def _handlers() -> PeerHandlers:
    return PeerHandlers(SimpleNamespace(refusals=Refusals("peer-x")))  # the cache needs nothing of the peer


def _serve(h: PeerHandlers, grant_id: str) -> None:
    """What _reencrypt leaves behind for one grant: its key share, token and one signed reply."""
    h._cache_share(grant_id, object())  # (a PreparedKeyShare; the cache never looks inside)
    token = h._share_tokens[grant_id]
    h._cache(h._replies, (grant_id, "req-" + grant_id, "cid", b"capsule"), (token, object()))


def test_a_revoked_grant_leaves_no_token_and_no_cached_reply():
    h = _handlers()
    _serve(h, "g-1")
    _serve(h, "g-2")
    h.forget_share("g-1")  # the revocation committed (agents.peer._agent)
    assert "g-1" not in h._shares and "g-1" not in h._share_tokens
    assert [key[0] for key in h._replies] == ["g-2"]  # the other grant's reply stays


def test_the_token_map_stays_bounded_as_grants_are_served_and_revoked():
    """Every grant revoked used to leave its token behind (forget_share dropped the share
    only): a patient granting and revoking in a loop grew the map without bound."""
    h = _handlers()
    for i in range(SHARE_CACHE + 500):
        _serve(h, f"g-{i}")
        h.forget_share(f"g-{i}")
    assert len(h._share_tokens) == 0 and len(h._shares) == 0 and len(h._replies) == 0
    for i in range(SHARE_CACHE + 500):  # and without revocations, eviction bounds all three
        _serve(h, f"h-{i}")
    assert len(h._share_tokens) == len(h._shares) == SHARE_CACHE and len(h._replies) <= SHARE_CACHE
    assert set(h._share_tokens) == set(h._shares)
