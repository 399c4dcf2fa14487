"""Sealed records (core.record): round trips, tampering, streaming, key paths."""

from __future__ import annotations

import json
import pathlib
import tracemalloc

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import pre, record
from core._backend import active_backend
from core.curve import api
from core.errors import CoreError, DecodeError, DecryptionError

pytestmark = pytest.mark.crypto

FHIR = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "fhir-r4"


def _owner(backend, label="cardiology"):
    kp = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), label)
    box_sk, box_pk = pre.box_keypair()
    return kp, box_sk, box_pk


def _seal(kp, box_pk, data, **kw):
    return record.seal(
        data, kp.public, owner_id="patient-1", label=kp.label, record_id=kw.pop("record_id", "rec-1"),
        media_type="application/fhir+json", owner_box_public_key=box_pk, **kw,
    )


def _fhir_bundle() -> bytes:
    files = sorted(FHIR.rglob("*.json"))
    if not files:
        pytest.skip("shared FHIR data not present")
    data = files[0].read_bytes()
    json.loads(data)
    return data


def test_round_trip_fhir_bundle_all_paths(backend):
    kp, box_sk, box_pk = _owner(backend)
    data = _fhir_bundle()
    blob = _seal(kp, box_pk, data)
    header, plain = record.open_record(blob, record.owner_key_provider(box_sk))
    assert plain == data and header.size == len(data) and header.label == "cardiology"
    _, plain = record.open_record(blob, record.owner_pairing_key_provider(kp))
    assert plain == data
    assert data not in blob
    assert record.peek_header(blob[:400]) == header


def test_doctor_path_threshold(backend):
    kp, _, box_pk = _owner(backend)
    doctor = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), pre.RECEIVE_LABEL)
    proxies, secrets_ = [], {}
    for i in range(1, 4):
        s, p = pre.box_keypair()
        proxies.append(pre.Proxy(i, p))
        secrets_[i] = s
    shares = [
        pre.Scheme(backend).open_key_share(s, secrets_[s.index], expected_context=b"g", expected_index=s.index)
        for s in pre.make_key_shares(kp, doctor.public, proxies, 2, b"g")
    ]
    data = b"x" * 5000
    blob = _seal(kp, box_pk, data)
    capsule = api(backend).G1.from_bytes(record.peek_header(blob).capsule)
    rs = [pre.reencrypt(capsule, s) for s in shares]
    prov = record.ThresholdKeyProvider(rs, 2, doctor.secret)
    assert record.open_record(blob, prov)[1] == data and prov.suspects == ()
    # t-1 shares do not open
    with pytest.raises(DecryptionError, match="need 2"):
        record.open_record(blob, record.ThresholdKeyProvider(rs[:1], 2, doctor.secret))
    # another doctor's key does not open
    other = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), pre.RECEIVE_LABEL)
    with pytest.raises(DecryptionError):
        record.open_record(blob, record.ThresholdKeyProvider(rs, 2, other.secret))
    # a share computed on another capsule is detected and its proxy named
    other_blob = _seal(kp, box_pk, b"other", record_id="rec-2")
    wrong = pre.reencrypt(api(backend).G1.from_bytes(record.peek_header(other_blob).capsule), shares[0])
    prov = record.ThresholdKeyProvider([wrong, rs[1], rs[2]], 2, doctor.secret)
    assert record.open_record(blob, prov)[1] == data
    assert prov.suspects == (1,)


def test_label_scoping_on_records(backend):
    ms = pre.new_master_secret()
    kl, km = pre.Scheme(backend).derive_keypair(ms, "L"), pre.Scheme(backend).derive_keypair(ms, "M")
    doctor = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), pre.RECEIVE_LABEL)
    sk, pk = pre.box_keypair()
    (share,) = [
        pre.Scheme(backend).open_key_share(s, sk, expected_context=b"g", expected_index=1)
        for s in pre.make_key_shares(kl, doctor.public, [pre.Proxy(1, pk)], 1, b"g")
    ]
    blob_m = record.seal(b"secret M", km.public, owner_id="p", label="M", record_id="r")
    s = pre.reencrypt(api(backend).G1.from_bytes(record.peek_header(blob_m).capsule), share)
    with pytest.raises(DecryptionError):
        record.open_record(blob_m, record.ThresholdKeyProvider([s], 1, doctor.secret))
    with pytest.raises(DecryptionError, match="another key"):
        record.open_record(blob_m, record.owner_pairing_key_provider(kl))


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096])
def test_chunk_boundaries(backend, size):
    kp, box_sk, box_pk = _owner(backend)
    data = bytes(i % 251 for i in range(size))
    blob = _seal(kp, box_pk, data, chunk_size=4096)
    header, plain = record.open_record(blob, record.owner_key_provider(box_sk))
    assert plain == data
    assert header.chunk_count == max(1, -(-size // 4096))


def test_streaming_feed_in_odd_pieces(backend):
    kp, box_sk, box_pk = _owner(backend)
    data = bytes(range(256)) * 100
    blob = _seal(kp, box_pk, data, chunk_size=4096)
    opener = record.RecordOpener(record.owner_key_provider(box_sk))
    out = []
    for off in range(0, len(blob), 777):
        out += opener.feed(blob[off : off + 777])
    opener.close()
    assert b"".join(out) == data


@settings(max_examples=60)
@given(pos=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_is_detected(pos, bit):
    _, box_sk, _ = _cached_owner()
    blob = _cached_blob()
    pos %= len(blob)
    bad = bytearray(blob)
    bad[pos] ^= 1 << bit
    with pytest.raises((DecodeError, DecryptionError)):
        record.open_record(bytes(bad), record.owner_key_provider(box_sk))


_CACHE: dict = {}


def _cached_owner():
    if "owner" not in _CACHE:
        _CACHE["owner"] = _owner(active_backend())
    return _CACHE["owner"]


def _cached_blob():
    if "blob" not in _CACHE:
        kp, _, box_pk = _cached_owner()
        _CACHE["blob"] = _seal(kp, box_pk, bytes(range(256)) * 40, chunk_size=4096)
    return _CACHE["blob"]


def test_truncation_reordering_and_trailing_data():
    kp, box_sk, box_pk = _cached_owner()
    blob = _seal(kp, box_pk, b"a" * 10000, chunk_size=4096)
    provider = record.owner_key_provider(box_sk)
    for cut in (1, 50, len(blob) // 2, len(blob) - 1):
        with pytest.raises((DecodeError, DecryptionError)):
            record.open_record(blob[:cut], provider)
    with pytest.raises(DecodeError, match="trailing"):
        record.open_record(blob + b"\xc0", provider)
    # swap chunk 0 and 1 (same length): AEAD with index in the AD refuses
    items = _split(blob)
    items[3], items[4] = items[4], items[3]  # (version 3: [3, header, nonce, chunks...])
    with pytest.raises(DecryptionError):
        record.open_record(_join(items), provider)
    # drop the last chunk and fix the array length: the header's count refuses
    with pytest.raises(DecodeError, match="chunk count"):
        record.open_record(_join(items[:-1]), provider)


def _split(blob):
    u = msgpack.Unpacker(raw=False)
    u.feed(blob)
    n = u.read_array_header()
    return [u.unpack() for _ in range(n)]


def _join(items):
    p = msgpack.Packer(use_bin_type=True)
    return p.pack_array_header(len(items)) + b"".join(p.pack(x) for x in items)


def test_header_moved_between_records_is_refused():
    kp, box_sk, box_pk = _cached_owner()
    a = _split(_seal(kp, box_pk, b"record A", record_id="A"))
    b = _split(_seal(kp, box_pk, b"record B", record_id="B"))
    franken = a[:1] + [b[1]] + a[2:]
    with pytest.raises(DecryptionError):
        record.open_record(_join(franken), record.owner_key_provider(box_sk))


@given(st.binary(max_size=2000))
def test_garbage_blobs_raise_only_our_errors(data):
    kp, box_sk, _ = _cached_owner()
    try:
        record.open_record(data, record.owner_key_provider(box_sk))
    except CoreError:
        pass


@given(st.binary(max_size=300))
def test_garbage_headers_raise_decode_error(data):
    with pytest.raises(DecodeError):
        record.RecordHeader.from_bytes(data)


def test_header_validation_messages():
    kp, _, box_pk = _cached_owner()
    with pytest.raises(ValueError, match="media type"):
        record.seal(b"", kp.public, owner_id="p", label="L", record_id="r", media_type="")
    with pytest.raises(ValueError, match="chunk size"):
        record.seal(b"", kp.public, owner_id="p", label="L", record_id="r", chunk_size=10)
    header = record.peek_header(_cached_blob())
    fields = msgpack.unpackb(header.to_bytes())
    fields[7] = -1
    with pytest.raises(DecodeError, match="size"):
        record.RecordHeader.from_bytes(msgpack.packb(fields))


@settings(max_examples=15)
@given(data=st.binary(max_size=20000), chunk=st.sampled_from([4096, 8192]))
def test_round_trip_property(data, chunk):
    kp, box_sk, box_pk = _cached_owner()
    blob = _seal(kp, box_pk, data, chunk_size=chunk)
    assert record.open_record(blob, record.owner_key_provider(box_sk))[1] == data


def test_sealer_misuse():
    kp, _, _ = _cached_owner()
    s = record.RecordSealer(kp.public, owner_id="p", label="L", record_id="r", media_type="x/y", size=3)
    with pytest.raises(RuntimeError):
        s.update(b"a")
    s.start()
    with pytest.raises(ValueError, match="more plaintext"):
        s.update(b"abcd")
    s2 = record.RecordSealer(kp.public, owner_id="p", label="L", record_id="r", media_type="x/y", size=3)
    s2.start()
    s2.update(b"ab")
    with pytest.raises(ValueError, match="declared size"):
        s2.finish()


def test_cross_backend_records(backend, other_backend):
    """A record sealed on one backend opens on the other (pairing path and doctor path)."""
    kp, _, _ = _owner(backend)
    blob = record.seal(b"cross", kp.public, owner_id="p", label=kp.label, record_id="r")
    ms_kp = pre.KeyPair(kp.secret, pre.Scheme(other_backend).public_key_from_bytes(kp.public.to_bytes()), kp.label)
    assert record.open_record(blob, record.owner_pairing_key_provider(ms_kp))[1] == b"cross"


def test_large_record_bounded_memory():
    """64 MiB through the streaming sealer and opener with a small, bounded peak."""
    kp, box_sk, box_pk = _cached_owner()
    size = 64 << 20
    piece = bytes(range(256)) * 4096  # 1 MiB
    tracemalloc.start()
    try:
        sealer = record.RecordSealer(kp.public, owner_id="p", label=kp.label, record_id="big",
                                     media_type="application/dicom", size=size, owner_box_public_key=box_pk)
        opener = record.RecordOpener(record.owner_key_provider(box_sk))
        total = 0
        ok = True
        opener_out = opener.feed(sealer.start())
        for _ in range(size // len(piece)):
            for chunk in opener.feed(sealer.update(piece)):
                ok &= chunk == piece
                total += len(chunk)
        for chunk in opener.feed(sealer.finish()):
            ok &= chunk == piece
            total += len(chunk)
        opener.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert opener_out == [] and ok and total == size
    assert peak < 16 << 20, f"peak traced memory {peak} bytes for a 64 MiB record"



# ------------------------------------------------------------------ format v2: wrap kinds, owner path


def _owner_seal(kp, box_sk, data, **kw):
    """The patient sealing its own record: KeyPair + box secret key (kind-2 wrap)."""
    return record.seal(data, kp, owner_id="patient-1", label=kp.label, record_id=kw.pop("record_id", "rec-1"),
                       owner_box_secret_key=box_sk, **kw)


def test_wrap_kinds_and_their_sizes(backend):
    kp, box_sk, box_pk = _owner(backend)
    data = b"wrap kinds"
    sealed = _seal(kp, box_pk, data)
    owner_box = _owner_seal(kp, box_sk, data)
    bare = record.seal(data, kp.public, owner_id="p", label=kp.label, record_id="r")
    h1, h2, h0 = (record.peek_header(b) for b in (sealed, owner_box, bare))
    assert (h1.owner_wrap_kind, len(h1.owner_wrap)) == (record.WRAP_SEALED_BOX, 80)
    assert (h2.owner_wrap_kind, len(h2.owner_wrap)) == (record.WRAP_OWNER_BOX, 48)  # (its nonce derived)
    assert (h0.owner_wrap_kind, h0.owner_wrap) == (record.WRAP_NONE, None)
    assert h1.version == h2.version == h0.version == record.FORMAT_VERSION == 3
    provider = record.owner_key_provider(box_sk)
    assert record.open_record(sealed, provider)[1] == data
    assert record.open_record(owner_box, provider)[1] == data
    with pytest.raises(DecryptionError, match="no owner wrap"):
        record.open_record(bare, provider)
    for blob in (sealed, owner_box, bare):  # the pairing path works whatever the wrap
        assert record.open_record(blob, record.owner_pairing_key_provider(kp))[1] == data


def test_owner_box_opens_only_for_its_owner(backend):
    kp, box_sk, box_pk = _owner(backend)
    blob = _owner_seal(kp, box_sk, b"mine")
    other_sk, _ = pre.box_keypair()
    with pytest.raises(DecryptionError, match="owner wrap does not open"):
        record.open_record(blob, record.owner_key_provider(other_sk))
    # nonces are fresh: derived from each record's own capsule U (a fresh k per sealing)
    h1 = record.peek_header(blob)
    h2 = record.peek_header(_owner_seal(kp, box_sk, b"mine"))
    assert h1.capsule != h2.capsule and record._wrap_nonce(h1.capsule) != record._wrap_nonce(h2.capsule)
    assert h1.owner_wrap != h2.owner_wrap


def test_owner_wrap_moved_between_records_is_refused(backend):
    """A kind-2 wrap from another record unwraps to that record's dk: the key check refuses it."""
    kp, box_sk, _ = _owner(backend)
    a = _split(_owner_seal(kp, box_sk, b"record A", record_id="A"))
    b = _split(_owner_seal(kp, box_sk, b"record B", record_id="B"))
    fields = msgpack.unpackb(a[1])
    fields[11] = msgpack.unpackb(b[1])[11]
    a[1] = msgpack.packb(fields)
    # (version 3: its nonce is derived from the other record's capsule, so it does not even open here;
    # were it opened, the key check would refuse it, as for version 2)
    with pytest.raises(DecryptionError, match="does not open"):
        record.open_record(_join(a), record.owner_key_provider(box_sk))


def test_sealer_key_arguments_are_checked(backend):
    kp, box_sk, box_pk = _owner(backend)
    _, other_pk = pre.box_keypair()
    with pytest.raises(ValueError, match="does not belong"):
        record.seal(b"x", kp, owner_id="p", label=kp.label, record_id="r",
                    owner_box_public_key=other_pk, owner_box_secret_key=box_sk)
    # both given and matching: fine, kind 2
    blob = record.seal(b"x", kp, owner_id="p", label=kp.label, record_id="r",
                       owner_box_public_key=box_pk, owner_box_secret_key=box_sk)
    assert record.peek_header(blob).owner_wrap_kind == record.WRAP_OWNER_BOX
    with pytest.raises(ValueError, match="32 bytes"):
        record.seal(b"x", kp, owner_id="p", label=kp.label, record_id="r", owner_box_secret_key=b"short")
    with pytest.raises(ValueError, match="label"):
        record.seal(b"x", kp, owner_id="p", label="another-label", record_id="r")
    with pytest.raises(TypeError, match="PublicKey or KeyPair"):
        record.seal(b"x", kp.public.to_bytes(), owner_id="p", label=kp.label, record_id="r")


def test_owner_sealed_record_opens_on_the_doctor_path(backend):
    """The owner's fixed-base capsule is an ordinary capsule: re-encryption works unchanged."""
    kp, box_sk, _ = _owner(backend)
    doctor = pre.Scheme(backend).derive_keypair(pre.new_master_secret(), pre.RECEIVE_LABEL)
    sks = {i: pre.box_keypair() for i in (1, 2, 3)}
    proxies = [pre.Proxy(i, pk) for i, (_, pk) in sks.items()]
    sealed = pre.make_key_shares(kp, doctor.public, proxies, 2, b"g")
    scheme = pre.Scheme(backend)
    shares = [scheme.open_key_share(s, sks[s.index][0], expected_context=b"g", expected_index=s.index)
              for s in sealed]
    blob = _owner_seal(kp, box_sk, b"for the doctor")
    capsule = api(backend).G1.from_bytes(record.peek_header(blob).capsule)
    re = [pre.reencrypt(capsule, s) for s in shares[:2]]
    provider = record.ThresholdKeyProvider(re, 2, doctor.secret)
    assert record.open_record(blob, provider)[1] == b"for the doctor"


def test_owner_sealed_records_cross_backends(backend, other_backend):
    kp, box_sk, _ = _owner(backend)
    blob = _owner_seal(kp, box_sk, b"cross v2", chunk_size=4096)
    other_kp = pre.KeyPair(kp.secret, pre.Scheme(other_backend).public_key_from_bytes(kp.public.to_bytes()),
                           kp.label)
    assert record.open_record(blob, record.owner_pairing_key_provider(other_kp))[1] == b"cross v2"
    assert record.open_record(blob, record.owner_key_provider(box_sk))[1] == b"cross v2"


def _v1_blob(kp, box_pk, data, chunk_size=4096):
    """A version-1 record written by hand, the way the version-1 sealer wrote it."""
    from nacl.public import PublicKey as BoxPublicKey
    from nacl.public import SealedBox

    capsule, k = pre.encapsulate(kp.public)
    dk = record.derive_data_key(k, capsule.to_bytes(), kp.public.p1.to_bytes())
    header = msgpack.packb([1, "patient-1", kp.label, "old", "text/plain", capsule.to_bytes(),
                            kp.public.p1.to_bytes(), len(data), chunk_size, record._key_check(dk),
                            SealedBox(BoxPublicKey(box_pk)).encrypt(dk)], use_bin_type=True)
    return _tagged_blob(1, header, data, chunk_size, dk)


def _tagged_blob(version, header, data, chunk_size, dk):
    """A tagged (version 1 or 2) blob of ``header`` and ``data`` chunks under ``dk``, by hand."""
    from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt

    nonce = bytes(range(24))
    n = max(1, -(-len(data) // chunk_size))
    items = ["emrshare/sealed-record", version, header, nonce]
    for i in range(n):
        piece = data[i * chunk_size:(i + 1) * chunk_size]
        ad = header + i.to_bytes(8, "big") + (b"\x01" if i == n - 1 else b"\x00")
        nce = (int.from_bytes(nonce, "big") ^ i).to_bytes(24, "big")
        items.append(crypto_aead_xchacha20poly1305_ietf_encrypt(piece, ad, nce, dk))
    return _join(items)


def test_version_1_records_still_open(backend):
    kp, box_sk, box_pk = _owner(backend)
    data = bytes(range(256)) * 40
    blob = _v1_blob(kp, box_pk, data)
    header, plain = record.open_record(blob, record.owner_key_provider(box_sk))
    assert plain == data and header.version == 1 and header.owner_wrap_kind == record.WRAP_SEALED_BOX
    assert record.open_record(blob, record.owner_pairing_key_provider(kp))[1] == data
    assert record.RecordHeader.from_bytes(header.to_bytes()) == header  # 11 fields, canonical
    assert len(msgpack.unpackb(header.to_bytes())) == 11


def test_header_and_record_versions_must_agree(backend):
    kp, box_sk, box_pk = _owner(backend)
    items = _split(_v1_blob(kp, box_pk, b"old"))
    items[1] = 2  # a v2 record claiming a v1 header
    with pytest.raises(DecodeError, match="header version"):
        record.open_record(_join(items), record.owner_key_provider(box_sk))
    fields = msgpack.unpackb(record.peek_header(_seal(kp, box_pk, b"x")).to_bytes())
    fields[10] = 2  # kind 2 with an 80-byte wrap
    with pytest.raises(DecodeError, match="kind 2 must be 48 bytes"):
        record.RecordHeader.from_bytes(msgpack.packb(fields))
    fields[10] = 7
    with pytest.raises(DecodeError, match="wrap kind"):
        record.RecordHeader.from_bytes(msgpack.packb(fields))
    v1 = [1] + fields[1:10] + [fields[11]]
    v1[4] = "text/plain"  # (version 1 and 2 write the media type as its string)
    v1[10] = b"\x00" * 72  # version 1 has no kind 2
    with pytest.raises(DecodeError, match="80 bytes"):
        record.RecordHeader.from_bytes(msgpack.packb(v1))
    with pytest.raises(DecodeError, match="12 fields"):
        record.RecordHeader.from_bytes(msgpack.packb(fields[:11]))


# ------------------------------------------------------------------ copies and buffers


@settings(max_examples=15, deadline=None)
@given(size=st.integers(min_value=0, max_value=3 * 4096 + 7),
       pieces=st.lists(st.integers(min_value=1, max_value=9000), min_size=1, max_size=8))
def test_sealer_stream_in_any_pieces_equals_one_shot_layout(size, pieces):
    """update() in arbitrary pieces (bytes, bytearray, memoryview) gives a blob that opens,
    with the same length as seal()'s, whatever the piece boundaries."""
    kp, box_sk, box_pk = _cached_owner()
    data = bytes((i * 7) & 0xFF for i in range(size))
    s = record.RecordSealer(kp, owner_id="p", label=kp.label, record_id="r", media_type="x/y", size=size,
                            chunk_size=4096, owner_box_secret_key=box_sk)
    parts = [s.start()]
    off, j = 0, 0
    while off < size:
        step = pieces[j % len(pieces)]
        piece = data[off:off + step]
        kind = j % 3
        parts.append(s.update(piece if kind == 0 else bytearray(piece) if kind == 1 else memoryview(piece)))
        assert all(type(p) is bytes for p in parts)
        off += len(piece)
        j += 1
    parts.append(s.finish())
    blob = b"".join(parts)
    one_shot = record.seal(data, kp, owner_id="p", label=kp.label, record_id="r", media_type="x/y",
                           chunk_size=4096, owner_box_secret_key=box_sk)
    assert len(blob) == len(one_shot)
    opener = record.RecordOpener(record.owner_key_provider(box_sk))
    out = []
    for k in range(0, len(blob), 1000):  # and read back in pieces that split every element
        out += opener.feed(blob[k:k + 1000])
    opener.close()
    assert b"".join(out) == data and all(type(p) is bytes for p in out)


def test_chunk_size_pieces_emit_each_chunk_at_once():
    kp, box_sk, box_pk = _cached_owner()
    data = bytes(3 * 4096)
    s = record.RecordSealer(kp.public, owner_id="p", label=kp.label, record_id="r", media_type="x/y",
                            size=len(data), chunk_size=4096, owner_box_public_key=box_pk)
    start = s.start()
    outs = [s.update(memoryview(data)[i:i + 4096]) for i in range(0, len(data), 4096)]
    assert [len(o) for o in outs] == [3 + 4096 + 16] * 3  # the final chunk too, before finish()
    assert s.finish() == b""
    assert record.open_record(start + b"".join(outs), record.owner_key_provider(box_sk))[1] == data


def test_canonical_bin_headers():
    for n in (0, 1, 255, 256, 65535, 65536, (1 << 20) + 16):
        packed = msgpack.packb(bytes(n), use_bin_type=True)
        assert packed == record._bin_header(n) + bytes(n)


def test_chunk_must_be_bin_and_no_trailing_bytes():
    kp, box_sk, box_pk = _cached_owner()
    blob = _seal(kp, box_pk, b"abc", chunk_size=4096)
    items = _split(blob)
    with pytest.raises(DecodeError, match="not msgpack bin"):
        record.open_record(_join(items[:3] + ["a string"]), record.owner_key_provider(box_sk))
    with pytest.raises(DecodeError, match="wrong size"):
        record.open_record(_join(items[:3] + [items[3] + b"x"]), record.owner_key_provider(box_sk))
    # a lone incomplete element after the last chunk is trailing data, not ignored
    with pytest.raises(DecodeError, match="trailing"):
        record.open_record(blob + b"\xc4", record.owner_key_provider(box_sk))


def test_public_aead_fallback_is_compatible(monkeypatch):
    """Without nacl._sodium the public pynacl API is used: blobs stay interchangeable."""
    kp, box_sk, box_pk = _cached_owner()
    data = bytes(range(256)) * 33
    fast_blob = _owner_seal(kp, box_sk, data, chunk_size=4096)
    monkeypatch.setattr(record, "_AEAD_ENCRYPT", None)
    monkeypatch.setattr(record, "_AEAD_DECRYPT", None)
    slow_blob = _owner_seal(kp, box_sk, data, chunk_size=4096)
    provider = record.owner_key_provider(box_sk)
    assert record.open_record(fast_blob, provider)[1] == data
    monkeypatch.undo()
    assert record.open_record(slow_blob, provider)[1] == data
    bad = bytearray(slow_blob)
    bad[-1] ^= 1
    with pytest.raises(DecryptionError):
        record.open_record(bytes(bad), provider)


def _v2_blob(kp, box_sk, data, chunk_size=4096, media_type="application/fhir+json"):
    """A version-2 record written by hand, the way the version-2 sealer wrote it (tag first, the
    media type as its string, a kind-2 wrap with its random nonce in front)."""
    capsule, k = pre.encapsulate(kp.public)
    dk = record.derive_data_key(k, capsule.to_bytes(), kp.public.p1.to_bytes())
    _sk, _pk, box = record._owner_keys(box_sk)
    wrap = bytes(box.encrypt(dk, bytes(range(100, 124))))
    header = msgpack.packb([2, "patient-1", kp.label, "rec-1", media_type, capsule.to_bytes(),
                            kp.public.p1.to_bytes(), len(data), chunk_size, record._key_check(dk),
                            record.WRAP_OWNER_BOX, wrap], use_bin_type=True)
    return _tagged_blob(2, header, data, chunk_size, dk)


def test_version_2_records_still_open(backend):
    kp, box_sk, _ = _owner(backend)
    data = bytes(range(256)) * 40
    blob = _v2_blob(kp, box_sk, data)
    header, plain = record.open_record(blob, record.owner_key_provider(box_sk))
    assert plain == data and header.version == 2 and len(header.owner_wrap) == 72
    assert header.media_type == "application/fhir+json"
    assert record.open_record(blob, record.owner_pairing_key_provider(kp))[1] == data
    assert record.RecordHeader.from_bytes(header.to_bytes()) == header  # (its string stays a string)
    # a tagged record claiming version 3, or a version-3 record with the tag: refused
    items = _split(blob)
    items[1] = 3
    with pytest.raises(DecodeError, match="unsupported version"):
        record.open_record(_join(items), record.owner_key_provider(box_sk))
    v3 = _split(_owner_seal(kp, box_sk, b"x"))
    with pytest.raises(DecodeError):
        record.open_record(_join(["emrshare/sealed-record"] + v3), record.owner_key_provider(box_sk))


def test_version_3_writes_known_media_types_as_codes_and_is_smaller(backend):
    kp, box_sk, _ = _owner(backend)
    data = b"x" * 2979
    v3 = _owner_seal(kp, box_sk, data, media_type="application/fhir+json")
    v2 = _v2_blob(kp, box_sk, data)
    assert len(v3) <= len(v2) - 23 - 21 - 24 + 2  # no tag, a coded media type, no wrap nonce (ids differ by 0..2)
    items = _split(v3)
    assert items[0] == 3 and msgpack.unpackb(items[1])[4] == record.MEDIA_TYPE_CODES["application/fhir+json"]
    header, plain = record.open_record(v3, record.owner_key_provider(box_sk))
    assert plain == data and header.media_type == "application/fhir+json"
    # another media type travels as its string and reads back
    other = _owner_seal(kp, box_sk, b"y", media_type="application/x-custom")
    assert msgpack.unpackb(_split(other)[1])[4] == "application/x-custom"
    assert record.open_record(other, record.owner_key_provider(box_sk))[0].media_type == "application/x-custom"
    # a coded type written as its string is not canonical; a code nobody gave is refused
    fields = msgpack.unpackb(items[1])
    for media, error in (("application/fhir+json", "canonical"), (999, "media type code"), (True, "media type"),
                         (0, "media type code")):
        bad = list(fields)
        bad[4] = media
        with pytest.raises(DecodeError, match=error):
            record.RecordHeader.from_bytes(msgpack.packb(bad))
