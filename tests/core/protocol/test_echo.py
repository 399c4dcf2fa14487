"""Echoes (core.protocol ``echo_compact``/``echo_expand``): an entry travels without the fields
its reader holds in a transaction body, and comes back exactly (types included) from that body;
commit notices and record answers use them, and masks that do not fit are refused."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import ecdsa
from core.errors import DecodeError
from core.protocol import NOTICE_TX_ID, CommitNotice, PeerQueryReply, echo_compact, echo_expand
from core.tx import Transaction

KEYS = st.sampled_from(["cid", "label", "size", "capsule", "purpose", "patient", "height", "x", "y"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(["", "a", "1"]),
                    st.sampled_from([b"", b"a", b"1"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.sampled_from(["k", "l"]), inner,
                                                                       max_size=2)), max_leaves=6)
MAPS = st.dictionaries(KEYS, VALUES, max_size=8)


def _wire(value):
    """Through msgpack as the bus carries it."""
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False, strict_map_key=False)


@settings(max_examples=300, deadline=None)
@given(entry=MAPS, body=MAPS, shared=st.lists(KEYS, max_size=5))
def test_an_entry_comes_back_exactly_and_leaves_out_only_what_the_body_repeats(entry, body, shared):
    for k in shared:  # make some fields repeat the body's
        if k in body:
            entry[k] = body[k]
    kept, mask = echo_compact(entry, body)
    restored = echo_expand(_wire(kept), body, mask, "t")
    assert msgpack.packb(dict(sorted(restored.items()))) == msgpack.packb(dict(sorted(entry.items())))
    left_out = set(entry) - set(kept)
    assert all(k in body and msgpack.packb(body[k]) == msgpack.packb(entry[k]) for k in left_out)
    assert bin(mask).count("1") == len(left_out)


def test_only_exactly_equal_values_are_left_out():
    kept, mask = echo_compact({"a": True, "b": b"x", "c": 1.0, "d": [1]}, {"a": 1, "b": "x", "c": 1, "d": (1,)})
    assert kept == {"a": True, "b": b"x", "c": 1.0, "d": [1]} and mask == 0


def test_masks_that_do_not_fit_the_body_are_refused():
    body = {"a": 1, "b": 2}
    with pytest.raises(DecodeError, match="does not have"):
        echo_expand({}, body, 0b100, "t")
    with pytest.raises(DecodeError, match="both sent and echoed"):
        echo_expand({"a": 5}, body, 0b1, "t")


def _store_tx() -> Transaction:
    body = {"record_id": "r-1", "label": "cardiology", "cid": "bafk" + "a" * 55, "size": 2979,
            "media_type": "application/fhir+json", "capsule": b"\x01" * 48}
    return Transaction.create("store", "alice", body, ecdsa.generate_private_key(), 1_700_000_000_000)


def test_a_record_answer_travels_without_what_its_store_transaction_says():
    tx = _store_tx()
    entry = {**{k: v for k, v in tx.body.items() if k != "record_id"}, "height": 7, "tx": tx.to_bytes(),
             "owner_cert": {"cert": {"subject": "alice"}, "revoked": False}}
    sent = _wire(PeerQueryReply(entry).to_wire())
    assert set(sent) == {"height", "tx", "owner_cert", PeerQueryReply.ECHO}
    assert len(msgpack.packb(sent)) < len(msgpack.packb(entry)) - 100
    assert PeerQueryReply.from_wire(sent).value == entry
    # an entry whose fields differ from its transaction keeps them
    odd = {**entry, "cid": "bafkother"}
    assert PeerQueryReply.from_wire(_wire(PeerQueryReply(odd).to_wire())).value == odd


@pytest.mark.parametrize("bad", [
    lambda s: {**s, PeerQueryReply.ECHO: -1},
    lambda s: {**s, PeerQueryReply.ECHO: "x"},
    lambda s: {**s, PeerQueryReply.ECHO: 1 << 40},
    lambda s: {k: v for k, v in s.items() if k != "tx"},
    lambda s: {**s, "tx": b"not a transaction"},
    lambda s: {**s, "cid": "sent too"},
])
def test_a_hostile_record_answer_only_raises_decode_error(bad):
    tx = _store_tx()
    entry = {**{k: v for k, v in tx.body.items() if k != "record_id"}, "height": 7, "tx": tx.to_bytes()}
    sent = _wire(PeerQueryReply(entry).to_wire())
    with pytest.raises(DecodeError):
        PeerQueryReply.from_wire(bad(sent))


def test_a_commit_notice_echoes_its_transaction_body():
    tx = _store_tx()
    key = "record/alice/r-1"
    entry = {**{k: v for k, v in tx.body.items() if k != "record_id"}, "height": 7, "tx": tx.to_bytes()}
    notice = CommitNotice(tx_id=tx.tx_id, height=7, type="store", mark="ok", effect={key: entry})
    sent = _wire(notice.echoing(tx.body).to_wire())
    # the row [tx_id, height, type, mark, effect, echo]
    assert set(sent[4][key]) == {"height", "tx"} and len(sent[5]) == 1 and len(sent) == 6
    received = CommitNotice.from_wire(sent)
    assert received.expand(tx.body) == {key: entry}
    # with another body (not the submitter's) the masks do not fit
    with pytest.raises(DecodeError):
        received.expand({"a": 1})
    # nothing to leave out: no echo field at all
    plain = CommitNotice(tx_id=tx.tx_id, height=7, type="store", mark="bad_state", effect={})
    assert len(plain.echoing(tx.body).to_wire()) == 5  # no echo field at the end of the row
    with pytest.raises(DecodeError):
        CommitNotice.from_wire([*sent[:5], [1, 2]]).expand(tx.body)


def test_a_commit_notice_names_its_transaction_by_the_first_bytes_of_its_id():
    tx = _store_tx()
    notice = CommitNotice(tx_id=tx.tx_id, height=7, type="store", mark="bad_state", effect={})
    sent = notice.echoing(tx.body)
    assert sent.tx_id == tx.tx_id[:NOTICE_TX_ID] == _wire(sent.to_wire())[0]
    received = CommitNotice.from_wire(_wire(sent.to_wire()))
    assert received.names(tx.tx_id) and not received.names(bytes(32))
    assert notice.names(tx.tx_id) and not notice.names(tx.tx_id[:31] + bytes([tx.tx_id[31] ^ 1]))  # an older peer's: the whole id
    with pytest.raises(DecodeError, match="'tx_id'"):  # fewer bytes than a notice names a transaction by
        CommitNotice.from_wire([tx.tx_id[:7], 7, "store", "ok", {}])
