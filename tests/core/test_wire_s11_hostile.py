"""Session 12's attack review of session 11's codecs (issue 14), as a hostile peer,
client or storage node would feed them: ``peer.query``'s request row and a commit
notice's requester row (wrong lengths, wrong types, nested containers), the binary CID
of ``storage.get`` (truncated, lying lengths, other hash codes, CIDv0; one blob's two
encodings), and version-3 record headers (media codes, version confusion, the derived
owner-box nonce). Every hostile value raises DecodeError, never anything else, and
what is accepted has exactly one encoding."""

from __future__ import annotations

import hashlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multiformats import CID as MfCID

from core import cid as cidmod
from core import pre, record
from core.errors import DecodeError
from core.protocol import OWN_KEY, REQUEST_ROW, CommitNotice, PeerQueryReply, StorageGet, answer_from_row
from core.protocol._views import ANSWER_DECISION, ANSWER_FIELDS, REQUESTER_DECISION, REQUESTER_FIELDS
from core.protocol._views import requester_from_row

# msgpack values as a hostile peer can send them (what the bus decodes: no extension types)
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False),
                   st.text(max_size=8), st.binary(max_size=8), st.just("x" * 4097))
VALUES = st.recursive(LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=12),
                                                       st.dictionaries(st.text(max_size=4), inner, max_size=4)),
                      max_leaves=40)


def _wire(value):
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False, strict_map_key=False)


def _text_fields(view: dict, fields, decision_fields) -> bool:
    """A read-back row view: only the row's fields, each a str of at most 4,096 characters."""
    decision = view.get("decision")
    return (set(view) <= set(fields) | {"decision"} and type(decision) is dict
            and set(decision) <= set(decision_fields)
            and all(type(v) is str and len(v) <= 4096 for v in [*decision.values()] +
                    [v for k, v in view.items() if k != "decision"]))


# ------------------------------------------------------------------ rows (target 3)


@given(row=st.one_of(VALUES, st.lists(st.one_of(st.none(), st.text(max_size=4), VALUES), max_size=11)))
@settings(max_examples=400, deadline=None)
def test_a_hostile_request_row_reads_back_as_text_fields_or_raises_decode_error(row):
    row = _wire(row)
    try:
        view = answer_from_row(row)
    except DecodeError:
        with pytest.raises(DecodeError):
            PeerQueryReply.from_wire(row, view=REQUEST_ROW)
        return
    assert view is None or _text_fields(view, ANSWER_FIELDS, ANSWER_DECISION)
    assert PeerQueryReply.from_wire(row, view=REQUEST_ROW).value == view


@given(own=st.one_of(VALUES, st.lists(st.one_of(st.none(), st.text(max_size=4), VALUES), max_size=6)),
       echo=st.one_of(st.none(), st.integers(0, 2**8)), projected=st.booleans())
@settings(max_examples=300, deadline=None)
def test_a_hostile_notice_row_only_raises_decode_error_and_never_names_a_requester(own, echo, projected):
    """A commit notice's own entry as a hostile peer may send it (any value, any echo mask,
    projected or not): read back, an ``access_request``'s own entry is a requester view (its
    row has no doctor, patient or request: a row claiming another requester has nowhere to
    say so, an extra field is refused) plus only what the submitter's own body echoes."""
    body = {"request_id": "q-1", "patient": "alice", "record_id": "r-1", "operation": "read", "purpose": None}
    notice = [b"\x01" * 8, 12, None, "ok", {OWN_KEY: own}, None if echo is None else [echo], projected]
    try:
        effect = CommitNotice.from_wire(_wire(notice)).expand(body, "request/q-1", "access_request")
    except DecodeError:
        return
    entry = effect["request/q-1"]
    if type(own) is list and projected:
        assert type(entry) is dict
        echoed = {k for k in entry if k in body and entry[k] == body[k]}
        assert _text_fields({k: v for k, v in entry.items() if k not in echoed}, REQUESTER_FIELDS,
                            REQUESTER_DECISION)


def test_a_requester_row_with_a_requester_in_it_is_refused():
    assert requester_from_row(["granted", "g-1", None, ["allow", "cardio"]])["grant_id"] == "g-1"
    for bad in (["granted", "g-1", None, ["allow", "cardio"], "dr-evil"],  # a fifth field
                ["granted", "g-1", None, ["allow", "cardio", None, "dr-evil"]],  # a fourth decision field
                ["granted", {"doctor": "dr-evil"}], ["granted", None, None, {"effect": "allow"}],
                ["granted", None, None, [["allow"]]], [["x"] * 10000]):
        with pytest.raises(DecodeError):
            requester_from_row(bad)


# ------------------------------------------------------------------ binary CIDs (target 4)

_V1 = [cidmod.Cid(1, codec, cidmod.SHA2_256, bytes(range(32))).to_bytes() for codec in (cidmod.RAW, cidmod.DAG_PB)]
_V0 = cidmod.Cid(0, cidmod.DAG_PB, cidmod.SHA2_256, bytes(range(32))).to_bytes()


@st.composite
def _mutated(draw):
    raw = bytearray(draw(st.sampled_from(_V1 + [_V0])))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["flip", "cut", "add"]))
        if op == "flip" and raw:
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        elif op == "cut" and raw:
            del raw[draw(st.integers(0, len(raw) - 1)):]
        else:
            raw += draw(st.binary(min_size=1, max_size=4))
    return bytes(raw)


@given(raw=st.one_of(st.binary(max_size=40), _mutated()))
@settings(max_examples=500, deadline=None)
def test_a_binary_cid_is_refused_or_has_exactly_one_binary_and_one_text_form(raw):
    """Truncated multihashes, lying length prefixes, other hash or codec codes, CIDv0's
    edges: DecodeError. Whatever is accepted is the CID the bytes are (its binary form is
    the bytes), its canonical text parses back to it, and every text form of that CID
    (other multibases) names the same CID: a node keys on one CID whichever encoding came."""
    try:
        c = cidmod.from_binary(raw)
    except DecodeError:
        return
    assert c.to_bytes() == raw and c.hash_code == cidmod.SHA2_256 and len(c.digest) == 32
    text = str(c)
    assert cidmod.parse(text) == c and cidmod.from_binary(cidmod.parse(text).to_bytes()) == c
    if c.version == 1:
        assert c.codec in (cidmod.RAW, cidmod.DAG_PB) and raw[:2] in (b"\x01\x55", b"\x01\x70")
        for base in ("base58btc", "base32upper", "base64", "base16"):
            assert cidmod.parse(str(MfCID.decode(text).set(base=base))) == c
    else:
        assert raw[:2] == b"\x12\x20" and len(raw) == 34


def test_storage_get_reads_a_binary_cid_as_the_canonical_text_and_refuses_what_is_not_one():
    digest = hashlib.sha256(b"blob").digest()
    c = cidmod.Cid(1, cidmod.RAW, cidmod.SHA2_256, digest)
    get = StorageGet.from_wire([c.to_bytes(), 0, 10, False])
    assert get.cid == str(c) and StorageGet.from_wire(get.to_wire()) == get
    assert get.to_wire()[0] == c.to_bytes()  # (sent binary)
    other = str(MfCID.decode(str(c)).set(base="base58btc"))  # an older sender's text, another base
    assert StorageGet.from_wire([other, 0, 10, False]).cid == other  # (text read as text: the node canonicalizes)
    for bad in (c.to_bytes()[:-1], c.to_bytes() + b"\x00", b"\x01\x55\x12\x1f" + digest[:31],
                b"\x01\x55\x13\x20" + digest, bytearray(c.to_bytes()), b""):
        with pytest.raises(DecodeError):
            StorageGet.from_wire([bad, 0, 10, False])


def test_the_storage_node_keys_every_encoding_of_one_blob_on_one_name():
    """The store, its marks and its read cache all key on ``canonical_cid``: the binary form,
    the canonical text and other multibases give the same name; a CIDv0 (binary or text) is
    refused as a kind the store does not hold (``storage.bad-request``), before any read."""
    from agents.storage.blobstore import BadRequest, canonical_cid

    digest = hashlib.sha256(b"blob").digest()
    c = cidmod.Cid(1, cidmod.RAW, cidmod.SHA2_256, digest)
    forms = [StorageGet.from_wire([c.to_bytes(), 0, 1, False]).cid, str(c)]
    forms += [str(MfCID.decode(str(c)).set(base=b)) for b in ("base58btc", "base32upper", "base64")]
    assert {canonical_cid(f) for f in forms} == {str(c)}
    v0 = cidmod.Cid(0, cidmod.DAG_PB, cidmod.SHA2_256, digest)
    for form in (StorageGet.from_wire([v0.to_bytes(), 0, 1, False]).cid, str(v0)):
        with pytest.raises(BadRequest, match="CIDv1"):
            canonical_cid(form)


# ------------------------------------------------------------------ version-3 record headers (target 6)


def _v3_header_fields(backend, media="application/fhir+json"):
    kp = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), "cardiology")
    box_sk, _ = pre.box_keypair()
    blob = record.seal(b"x" * 100, kp, owner_id="patient-1", label="cardiology", record_id="rec-1",
                       media_type=media, owner_box_secret_key=box_sk)
    return msgpack.unpackb(record.peek_header(blob).to_bytes()), kp, box_sk, blob


@given(media=st.one_of(st.integers(-(2**63), 2**64 - 1), st.booleans(), st.floats(allow_nan=False),
                       st.text(max_size=20), st.sampled_from(sorted(record.MEDIA_TYPE_CODES)), st.binary(max_size=4),
                       st.none()),
       version=st.sampled_from([1, 2, 3, 4, 0, True, 3.0]))
@settings(max_examples=300, deadline=None)
def test_a_header_with_any_media_type_or_version_decodes_to_one_canonical_form_or_is_refused(backend, media,
                                                                                              version):
    """Unknown codes, a code in a version-2 header, a bool or float for a code or a version,
    a coded type as its string in version 3: DecodeError. What decodes re-encodes to the
    same bytes (one encoding per header: nothing keyed on the header has a twin)."""
    fields, *_ = _v3_header_fields(backend)
    fields[0], fields[4] = version, media
    data = msgpack.packb(fields, use_bin_type=True)
    try:
        header = record.RecordHeader.from_bytes(data)
    except DecodeError:
        known = type(version) is int and version == 3 and (
            (type(media) is int and media in record.MEDIA_TYPE_CODES.values())
            or (type(media) is str and media and media not in record.MEDIA_TYPE_CODES))
        assert not known or len(media.encode() if type(media) is str else b"") > 128
        return
    assert version == 3 and type(version) is int and header.to_bytes() == data
    assert type(header.media_type) is str
    if type(media) is int:
        assert record.MEDIA_TYPE_CODES[header.media_type] == media
    else:
        assert media not in record.MEDIA_TYPE_CODES


def test_a_v3_wrap_nonce_repeats_only_with_its_capsule_and_then_wraps_the_same_key(backend, monkeypatch):
    """Why two version-3 owner boxes of one owner never share a nonce over different keys: the
    nonce is a hash of U = (k a_L) g1, fresh k from the OS CSPRNG per sealing. Forcing the same
    k (what a broken RNG would do): another label gives another U (another nonce); the same
    label gives the same U, hence the same K and dk, so the two wraps are the same ciphertext
    of the same key (no keystream reuse over two plaintexts), and the chunks still use fresh
    random base nonces."""
    import core.pre as pre_module

    kp_a = pre.Scheme(backend).derive_keypair(b"\x07" * 32, "cardiology")
    kp_b = pre.Scheme(backend).derive_keypair(b"\x07" * 32, "labs")
    box_sk, _ = pre.box_keypair()
    monkeypatch.setattr(pre_module, "random_scalar", lambda: 12345)

    def seal(kp, record_id="rec-1"):
        blob = record.seal(b"same", kp, owner_id="p", label=kp.label, record_id=record_id,
                           owner_box_secret_key=box_sk)
        return record.peek_header(blob), blob

    (h1, b1), (h2, b2), (h3, _) = seal(kp_a), seal(kp_a, "rec-2"), seal(kp_b)
    assert h1.capsule == h2.capsule and h1.owner_wrap == h2.owner_wrap and h1.key_check == h2.key_check
    assert record._wrap_nonce(h1.capsule) != record._wrap_nonce(h3.capsule) and h1.owner_wrap != h3.owner_wrap
    assert msgpack.unpackb(b1)[2] != msgpack.unpackb(b2)[2]  # (the chunks' base nonces: fresh per record)
    for blob in (b1, b2):
        assert record.open_record(blob, record.owner_key_provider(box_sk))[1] == b"same"


@pytest.mark.parametrize("first", [3, "emrshare/sealed-record", 3.0, True, 2, 1, 4])
def test_record_version_confusion_only_raises_decode_error(backend, first):
    """The first item decides the form: the int 3 (version 3, no tag) or the tag then 1 or 2;
    a version-3 record with a tag and a version-2 header, a float or bool 3, a bare 1, 2 or 4:
    refused with DecodeError before any key is asked for."""
    fields, kp, box_sk, blob = _v3_header_fields(backend)
    items = msgpack.unpackb(blob)
    asked = []

    def provider(header):
        asked.append(header)
        return record.owner_key_provider(box_sk)(header)

    forged = [first] + items[1:] if first != "emrshare/sealed-record" else [first, 3] + items[1:]
    if type(first) is int and first == 3:
        assert record.open_record(msgpack.packb(forged, use_bin_type=True), provider)[1] == b"x" * 100
        v2 = list(fields)
        v2[0] = 2  # a version-2 header (its media type a code: not even a valid v2 header) in a v3 record
        forged[1] = msgpack.packb(v2, use_bin_type=True)
        asked.clear()
    with pytest.raises(DecodeError):
        record.open_record(msgpack.packb(forged, use_bin_type=True), provider)
    assert asked == []
