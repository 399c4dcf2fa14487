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
from core.curve import get_backend
from core.errors import CoreError, DecodeError, DecryptionError

pytestmark = pytest.mark.crypto

FHIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "fhir-r4"


def _owner(backend, label="cardiology"):
    kp = pre.KeyPair.derive(pre.new_master_secret(), label, backend=backend)
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
    doctor = pre.KeyPair.derive(pre.new_master_secret(), pre.RECEIVE_LABEL, backend=backend)
    proxies, secrets_ = [], {}
    for i in range(1, 4):
        s, p = pre.box_keypair()
        proxies.append(pre.Proxy(i, p))
        secrets_[i] = s
    shares = [
        pre.open_key_share(s, secrets_[s.index], expected_context=b"g", expected_index=s.index, backend=backend)
        for s in pre.make_key_shares(kp, doctor.public, proxies, 2, b"g")
    ]
    data = b"x" * 5000
    blob = _seal(kp, box_pk, data)
    capsule = record.peek_header(blob).capsule_point(backend)
    rs = [pre.reencrypt(capsule, s) for s in shares]
    prov = record.ThresholdKeyProvider(rs, 2, doctor.secret)
    assert record.open_record(blob, prov)[1] == data and prov.suspects == ()
    # t-1 shares do not open
    with pytest.raises(DecryptionError, match="need 2"):
        record.open_record(blob, record.ThresholdKeyProvider(rs[:1], 2, doctor.secret))
    # another doctor's key does not open
    other = pre.KeyPair.derive(pre.new_master_secret(), pre.RECEIVE_LABEL, backend=backend)
    with pytest.raises(DecryptionError):
        record.open_record(blob, record.ThresholdKeyProvider(rs, 2, other.secret))
    # a share computed on another capsule is detected and its proxy named
    other_blob = _seal(kp, box_pk, b"other", record_id="rec-2")
    wrong = pre.reencrypt(record.peek_header(other_blob).capsule_point(backend), shares[0])
    prov = record.ThresholdKeyProvider([wrong, rs[1], rs[2]], 2, doctor.secret)
    assert record.open_record(blob, prov)[1] == data
    assert prov.suspects == (1,)


def test_label_scoping_on_records(backend):
    ms = pre.new_master_secret()
    kl, km = pre.KeyPair.derive(ms, "L", backend=backend), pre.KeyPair.derive(ms, "M", backend=backend)
    doctor = pre.KeyPair.derive(pre.new_master_secret(), pre.RECEIVE_LABEL, backend=backend)
    sk, pk = pre.box_keypair()
    (share,) = [
        pre.open_key_share(s, sk, expected_context=b"g", expected_index=1, backend=backend)
        for s in pre.make_key_shares(kl, doctor.public, [pre.Proxy(1, pk)], 1, b"g")
    ]
    blob_m = record.seal(b"secret M", km.public, owner_id="p", label="M", record_id="r")
    s = pre.reencrypt(record.peek_header(blob_m).capsule_point(backend), share)
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


def _flip_cases():
    return st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=7))


@settings(max_examples=60)
@given(pos=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_is_detected(pos, bit):
    backend = get_backend()
    kp, box_sk, box_pk = _cached_owner()
    blob = _cached_blob()
    pos %= len(blob)
    bad = bytearray(blob)
    bad[pos] ^= 1 << bit
    with pytest.raises((DecodeError, DecryptionError)):
        record.open_record(bytes(bad), record.owner_key_provider(box_sk))


_CACHE: dict = {}


def _cached_owner():
    if "owner" not in _CACHE:
        _CACHE["owner"] = _owner(get_backend())
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
    items[4], items[5] = items[5], items[4]
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
    franken = a[:2] + [b[2]] + a[3:]
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
    ms_kp = pre.KeyPair(kp.secret, pre.PublicKey.from_bytes(kp.public.to_bytes(), backend=other_backend), kp.label)
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
