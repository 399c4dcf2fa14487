"""Sans-I/O framing: length prefix, partial reads, size limit, fuzz."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, FrameError, encode_frame
from bus.framing import MUTABLE_BYTES


def test_encode_frame_is_big_endian_length_then_payload():
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"") == b"\x00\x00\x00\x00"
    assert DEFAULT_MAX_FRAME_SIZE == 16 * 1024 * 1024


def test_encode_frame_refuses_oversized_payload():
    with pytest.raises(FrameError, match="exceeds the maximum of 4"):
        encode_frame(b"12345", max_frame_size=4)


def test_many_frames_in_one_read_and_empty_payloads():
    payloads = [b"", b"a", b"hello", bytes(300)]
    data = b"".join(encode_frame(p) for p in payloads)
    assert FrameDecoder().feed(data) == payloads


def test_byte_by_byte_feeding():
    dec = FrameDecoder()
    out = []
    for byte in encode_frame(b"xyz") + encode_frame(b"12"):
        out += dec.feed(bytes([byte]))
    assert out == [b"xyz", b"12"]
    assert dec.buffered == 0
    dec.check_eof()


def test_oversized_header_is_refused_before_the_body_arrives():
    dec = FrameDecoder(max_frame_size=10)
    with pytest.raises(FrameError, match="11 bytes exceeds the maximum of 10"):
        dec.feed((11).to_bytes(4, "big"))  # header only: no body buffered yet
    # the stream cannot be resynchronised: the decoder stays broken
    with pytest.raises(FrameError, match="broken"):
        dec.feed(encode_frame(b"ok"))


def test_truncated_stream_is_detected_at_eof():
    dec = FrameDecoder()
    assert dec.feed(encode_frame(b"hello")[:6]) == []
    assert dec.buffered == 6
    with pytest.raises(FrameError, match="inside a frame"):
        dec.check_eof()
    half_header = FrameDecoder()
    half_header.feed(b"\x00\x00")
    with pytest.raises(FrameError):
        half_header.check_eof()


@pytest.mark.parametrize("bad", [0, -1, 2**32, 1.5, True])
def test_max_frame_size_is_validated(bad):
    with pytest.raises((ValueError, TypeError)):
        FrameDecoder(max_frame_size=bad)


@given(
    payloads=st.lists(st.binary(max_size=300), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
@settings(max_examples=200, deadline=None)
def test_any_split_of_the_stream_gives_the_same_frames(payloads, cuts):
    data = b"".join(encode_frame(p) for p in payloads)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    dec = FrameDecoder()
    out = []
    for a, b in zip(points, points[1:]):
        out += dec.feed(data[a:b])
    assert out == payloads
    assert dec.buffered == 0


@given(chunks=st.lists(st.binary(max_size=64), max_size=20))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_raise_only_frame_error(chunks):
    dec = FrameDecoder(max_frame_size=1024)
    for chunk in chunks:
        try:
            frames = dec.feed(chunk)
        except FrameError:
            return
        assert all(len(f) <= 1024 for f in frames)


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=300_000), min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=2_000_000), max_size=12),
)
@settings(max_examples=60, deadline=None)
def test_large_frames_over_many_reads_and_pending(sizes, cuts):
    payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    data = b"".join(encode_frame(p) for p in payloads)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    dec = FrameDecoder()
    out = []
    for a, b in zip(points, points[1:]):
        out += dec.feed(bytearray(data[a:b]))  # any bytes-like input
        # what is missing of the frame being read: its size less what arrived (0 between frames)
        done = sum(len(encode_frame(p)) for p in out)
        if dec.pending:
            assert done + 4 + len(payloads[len(out)]) - dec.pending == b
            assert dec.buffered == b - done
    # small frames come as bytes, large ones as a bytearray nobody else holds (opened in place)
    assert out == payloads and all(type(p) is (bytes if len(p) < MUTABLE_BYTES else bytearray) for p in out)
    assert dec.buffered == 0 and dec.pending == 0


def test_a_large_header_reserves_nothing_and_fed_bytes_are_not_aliased():
    dec = FrameDecoder()
    assert dec.feed((10_000_000).to_bytes(4, "big")) == []
    assert dec.buffered == 4 and dec.pending == 10_000_000
    chunk = bytearray(b"a" * 1000)
    dec.feed(chunk)
    chunk[:] = b"b" * 1000  # the caller reuses its buffer: the frame keeps what was fed
    [frame] = dec.feed(b"c" * (10_000_000 - 1000))
    assert frame[:1000] == b"a" * 1000 and frame[1000:] == b"c" * (10_000_000 - 1000)


def _read_through(payloads, step, check):
    """Feed the frames of ``payloads`` to a decoder as a reader would: ``step(i, pos)`` gives
    (bytes to read, bytes waiting in the socket, whether to take a reserved view); ``check``
    sees each reserved view (with the body's size, the bytes waiting, whether it was just
    made). Returns the frames got."""
    data = b"".join(encode_frame(p) for p in payloads)
    dec = FrameDecoder()
    out, pos, i = [], 0, 0
    while pos < len(data):
        want, queued, use = step(i, len(data) - pos)
        i += 1
        fresh = dec._into is None
        view = dec.reserve(queued)
        if view is not None:
            assert len(view) == dec.pending  # the rest of the frame's body, never past it
            check(dec, len(payloads[len(out)]), queued, fresh)
        if view is not None and use:
            n = min(want, len(view))
            view[:n] = data[pos : pos + n]
            out += dec.filled(n)
        else:
            n = min(want, len(data) - pos)
            out += dec.feed(data[pos : pos + n])
        pos += n
    assert dec.buffered == 0 and dec.pending == 0 and dec.reserve() is None
    return [bytes(p) for p in out]


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=700_000), min_size=1, max_size=4),
    reads=st.lists(st.integers(min_value=1, max_value=900_000), min_size=1, max_size=40),
    into=st.lists(st.booleans(), min_size=1, max_size=40),
)
@settings(max_examples=60, deadline=None)
def test_receiving_in_place_gives_the_same_frames_and_holds_at_most_twice_what_arrived(sizes, reads, into):
    """A reader that takes the decoder's reserved view whenever it offers one (or
    declines it and feeds) gets the frames a plain feed gives, and the buffer of a
    body received in place is made only once half of that body arrived."""
    payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]

    def check(dec, body, queued, fresh):
        assert body >= 256 * 1024 and 2 * (body - dec.pending) >= body

    got = _read_through(payloads, lambda i, left: (reads[i % len(reads)], 0, into[i % len(into)]), check)
    assert got == payloads


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=700_000), min_size=1, max_size=4),
    reads=st.lists(st.integers(min_value=1, max_value=900_000), min_size=1, max_size=40),
    waiting=st.lists(st.integers(min_value=0, max_value=2_000_000), min_size=1, max_size=40),
)
@settings(max_examples=60, deadline=None)
def test_a_reader_counting_waiting_bytes_gets_the_same_frames_and_holds_at_most_twice_what_was_sent(
        sizes, reads, waiting):
    """A reader that tells the decoder how many bytes wait to be read (at most what the
    sender sent beyond what was read) gets the frames a plain feed gives, and a body's
    buffer is made only once half of that body was sent."""
    payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]

    def check(dec, body, queued, fresh):
        assert body >= 256 * 1024
        if fresh:  # made now: half of the body was read or waits to be read
            assert 2 * (body - dec.pending + queued) >= body

    got = _read_through(payloads, lambda i, left: (reads[i % len(reads)], min(waiting[i % len(waiting)], left),
                                                   True), check)
    assert got == payloads


def test_bytes_waiting_to_be_read_count_as_arrived_and_no_more():
    dec = FrameDecoder()
    dec.feed((1_000_000).to_bytes(4, "big") + b"x" * 100_000)
    assert dec.reserve() is None and dec.reserve(399_999) is None  # with what waits: under half
    for lie in (-5, -10**9):
        assert dec.reserve(lie) is None  # (a negative count is none)
    view = dec.reserve(400_000)
    assert view is not None and len(view) == 900_000
    view[:] = b"y" * 900_000
    [frame] = dec.filled(900_000)
    assert frame == b"x" * 100_000 + b"y" * 900_000
    dec.feed((2_000_000).to_bytes(4, "big") + b"z" * 10)
    assert dec.reserve(10**12) is not None  # (more than the frame needs counts as the rest of it)


def test_a_large_header_with_little_of_its_body_reserves_no_buffer():
    dec = FrameDecoder()
    dec.feed((10_000_000).to_bytes(4, "big") + b"x" * 4_999_999)
    assert dec.reserve() is None  # less than half arrived: nothing allocated for the rest
    dec.feed(b"x")
    view = dec.reserve()
    assert view is not None and len(view) == 5_000_000
    with pytest.raises(ValueError):
        dec.filled(5_000_001)
    view[:] = b"y" * 5_000_000
    [frame] = dec.filled(5_000_000)
    assert type(frame) is bytearray and frame[:5_000_000] == b"x" * 5_000_000 and frame[5_000_000:] == b"y" * 5_000_000
