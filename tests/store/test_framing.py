"""busd.store.local._framing against a pure-Python oracle: frames, scanning, xid seconds, sparse index."""

import mmap
import struct
import zlib
from array import array
from itertools import accumulate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import oracle
from busd.store.local import _framing as F

# -- pure-Python oracle ---------------------------------------------------------------------
XID_ALPHABET = "0123456789abcdefghijklmnopqrstuv"
MAX_BODY = 1 << 28


WRITE_END = 0xFFFFFFFF  # the last frame of a write stores its crc32 complemented


def py_frame_records(records):
    crcs = [zlib.crc32(r) for r in records]
    if crcs:
        crcs[-1] ^= WRITE_END
    return b"".join(struct.pack("<II", len(r), c) + r for r, c in zip(records, crcs, strict=True))


def py_scan_frames(buf, offset, max_records, want_records=True, check_crc=True):
    buf = bytes(buf)
    records, off, n = [], offset, 0
    status = 0
    while max_records < 0 or n < max_records:
        if off == len(buf):
            break
        if len(buf) - off < 8:
            status = 1
            break
        length, crc = struct.unpack_from("<II", buf, off)
        if length == 0 or length > MAX_BODY:
            status = 2
            break
        if length > len(buf) - off - 8:
            status = 1
            break
        body = buf[off + 8:off + 8 + length]
        if check_crc and crc not in (zlib.crc32(body), zlib.crc32(body) ^ WRITE_END):
            status = 2
            break
        records.append(body)
        off += 8 + length
        n += 1
    return (records if want_records else None), off, n, status


def py_xid_encode(raw12: bytes) -> str:
    v = int.from_bytes(raw12, "big") << 4  # 96 bits -> 100 bits, rs/xid's padding
    return "".join(XID_ALPHABET[(v >> (5 * (19 - i))) & 31] for i in range(20))


def py_xid_seconds(xid: str) -> int:
    if len(xid) < 7 or any(c not in XID_ALPHABET for c in xid[:7]):
        return -1
    v = 0
    for c in xid[:7]:
        v = v * 32 + XID_ALPHABET.index(c)
    return v >> 3  # 35 bits read, the first 32 are the seconds


def make_record(sec: int, n: int, payload: bytes = b"") -> bytes:
    raw = struct.pack(">I", sec) + b"\x01\x02\x03\x04\x05" + n.to_bytes(3, "big")
    return b'{"id":"e_%s","subject":"a.b","payload":"%s"}' % (py_xid_encode(raw).encode(), payload)


records_st = st.lists(st.binary(min_size=1, max_size=300), max_size=40)


# -- frame_records ------------------------------------------------------------------------------
@given(records_st)
def test_frame_records_matches_oracle(records):
    assert F.frame_records(records) == py_frame_records(records)


@given(records_st)
def test_roundtrip(records):
    framed = F.frame_records(records)
    assert F.scan_frames(framed, 0, -1) == (records, len(framed), len(records), 0)


def test_frame_records_refuses_bad_records():
    with pytest.raises(ValueError):
        F.frame_records([b"ok", b""])
    with pytest.raises(TypeError):
        F.frame_records([b"ok", "text"])
    assert F.frame_records([]) == b""


# -- scan_frames ---------------------------------------------------------------------------------
@given(records_st, st.data())
def test_scan_truncated_matches_oracle(records, data):
    framed = F.frame_records(records)
    cut = data.draw(st.integers(0, len(framed)))
    got = F.scan_frames(framed[:cut], 0, -1)
    assert got == py_scan_frames(framed[:cut], 0, -1)
    if cut < len(framed):
        assert got[3] in (0, 1)  # a clean cut is either a frame boundary or a truncation
        assert got[3] == 1 or got[1] == cut


@given(st.lists(st.binary(min_size=1, max_size=100), min_size=1, max_size=20), st.data())
def test_scan_corrupted_matches_oracle(records, data):
    framed = bytearray(F.frame_records(records))
    pos = data.draw(st.integers(0, len(framed) - 1))
    framed[pos] ^= data.draw(st.integers(1, 255))
    got = F.scan_frames(framed, 0, -1)
    assert got == py_scan_frames(framed, 0, -1)
    assert got[3] != 0  # a flipped byte is always noticed (crc, length or truncation)
    assert got[1] <= pos or got[3] == 1  # and nothing at or after it is returned as good


@given(st.binary(max_size=200), st.integers(0, 10), st.integers(-1, 5), st.booleans(),
       st.booleans())
def test_scan_random_bytes_matches_oracle(buf, offset, max_records, want, check):
    offset = min(offset, len(buf))
    assert (F.scan_frames(buf, offset, max_records, want, check)
            == py_scan_frames(buf, offset, max_records, want, check))


@given(records_st, st.integers(-1, 50))
def test_scan_max_records_and_offset(records, max_records):
    framed = b"\xAA" * 5 + F.frame_records(records)
    assert F.scan_frames(framed, 5, max_records) == py_scan_frames(framed, 5, max_records)


def test_scan_accepts_every_buffer_kind(tmp_path):
    records = [b"alpha", b"beta" * 50, b"g"]
    framed = F.frame_records(records)
    path = tmp_path / "f"
    path.write_bytes(framed)
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        assert F.scan_frames(mm, 0, -1)[0] == records
    for buf in (bytearray(framed), memoryview(framed), framed):
        assert F.scan_frames(buf, 0, -1)[0] == records
    assert F.scan_frames(framed, 0, -1, False) == (None, len(framed), 3, 0)
    with pytest.raises(ValueError):
        F.scan_frames(framed, len(framed) + 1, -1)


def test_scan_zero_filled_tail_is_corrupt_not_empty_records():
    framed = F.frame_records([b"x"]) + b"\0" * 64
    assert F.scan_frames(framed, 0, -1) == ([b"x"], 9, 1, 2)


def test_scan_impossible_length_is_corrupt():
    framed = F.frame_records([b"x"]) + struct.pack("<II", MAX_BODY + 1, 0)
    assert F.scan_frames(framed, 0, -1)[3] == 2


# -- xid seconds -----------------------------------------------------------------------------------
@given(st.binary(min_size=12, max_size=12))
def test_xid_seconds_matches_oracle(raw):
    xid = py_xid_encode(raw)
    assert F.xid_seconds(xid) == py_xid_seconds(xid) == int.from_bytes(raw[:4], "big")
    assert F.xid_seconds(xid.encode()) == int.from_bytes(raw[:4], "big")


def test_xid_seconds_known_value_and_invalid():
    assert F.xid_seconds("d4o7ehksdud4d8c68bg0") == 1764783942  # 2025-12-03T17:45:42Z
    assert F.xid_seconds("D4O7EHKSDUD4D8C68BG0") == -1  # rs/xid is lowercase only
    assert F.xid_seconds("d4o7ehw") == -1
    assert F.xid_seconds("d4o") == -1


# -- sparse index ------------------------------------------------------------------------------------
def build_index(seconds, every_records=64, every_bytes=65536, payload=b""):
    records = [make_record(s, i, payload) for i, s in enumerate(seconds)]
    framed = b"\0" * 16 + F.frame_records(records)
    ix = F.SegmentIndex(16, every_records, every_bytes)
    return ix, records, framed


@settings(max_examples=200)
@given(st.lists(st.integers(1000, 1030), max_size=300), st.integers(1, 70), st.booleans(),
       st.booleans())
def test_index_candidates_match_brute_force(seconds, every, sort, incremental):
    if sort:
        seconds = sorted(seconds)
    ix, records, framed = build_index(seconds, every)
    if incremental:
        ix.add_records(records)
    else:
        assert ix.scan(framed) == (len(records), 0)
    assert ix.n_records == len(records) and ix.end_offset == len(framed)
    assert ix.monotonic == all(
        min(seconds[ix.block(b)[0]:ix.block(b)[1]]) >= max(seconds[:ix.block(b)[0]], default=0)
        for b in range(ix.n_blocks))
    for t in range(998, 1033):
        expected = [b for b in range(ix.n_blocks)
                    if t in seconds[ix.block(b)[0]:ix.block(b)[1]]]
        got = ix.candidates(t)
        assert set(expected) <= set(got)  # never misses a block holding t
        for b in got:  # and every block it names has t within its [min, max]
            part = seconds[ix.block(b)[0]:ix.block(b)[1]]
            assert min(part) <= t <= max(part)
        if sort:  # monotonic: exactly the blocks whose range holds t, found by bisection
            assert got == [b for b in range(ix.n_blocks)
                           if min(seconds[ix.block(b)[0]:ix.block(b)[1]]) <= t
                           <= max(seconds[ix.block(b)[0]:ix.block(b)[1]])]


def test_index_blocks_and_locate():
    seconds = list(range(1000, 1300))
    ix, records, framed = build_index(seconds)
    ix.scan(framed)
    assert ix.n_blocks == 5  # 300 records, one entry per 64
    for rel in range(300):
        _b, first, off = ix.locate(rel)
        assert first <= rel < first + 64
        assert F.scan_frames(framed, off, rel - first, False)[1] == \
            16 + len(F.frame_records(records[:rel]))
    rel0, rel1, _off0, off1 = ix.block(4)
    assert (rel0, rel1, off1) == (256, 300, len(framed))
    assert ix.nbytes == 5 * 20
    with pytest.raises(IndexError):
        ix.locate(300)


def test_index_every_bytes():
    ix, _records, framed = build_index([1000] * 40, payload=b"x" * 10000)
    ix.scan(framed)
    assert ix.n_blocks == 6  # ~10 KB records: a block reaches 64 KiB after 7 of them


def test_index_corrupt_record_gets_its_own_block():
    ix, records, _framed = build_index(list(range(1000, 1010)))
    ix.add_records(records[:3])
    ix.add_corrupt(100)
    ix.add_records(records[3:])
    assert [ix.block(b)[:2] for b in range(ix.n_blocks)] == [(0, 3), (3, 4), (4, 11)]
    assert ix.monotonic


def py_write_end(buf, start):
    """(records, offset) up to the end of the last frame that ends a write, scanning whole
    crc-valid frames from start as SegmentIndex.scan does."""
    records, offset = 0, start
    _, _, n, _ = py_scan_frames(buf, start, -1, False)
    off = start
    for i in range(n):
        length, crc = struct.unpack_from("<II", buf, off)
        off += 8 + length
        if crc != zlib.crc32(buf[off - length:off]):
            records, offset = i + 1, off
    return records, offset


@given(st.lists(st.lists(st.binary(min_size=1, max_size=60), min_size=1, max_size=6),
                max_size=6), st.data())
def test_index_scan_finds_the_last_write_end_as_the_oracle(writes, data):
    """Each batch framed is one write; cut anywhere, the index's write end is the end of
    the last batch whose frames are all there, and appending moves it to the batch's end."""
    framed = b"\xAA" * 16 + b"".join(F.frame_records(w) for w in writes)
    cut = data.draw(st.integers(16, len(framed)))
    ix = F.SegmentIndex(16)
    ix.scan(framed[:cut])
    assert (ix.write_end_records, ix.write_end_offset) == py_write_end(framed[:cut], 16)
    whole = [w for k, w in enumerate(writes)
             if 16 + sum(len(F.frame_records(v)) for v in writes[:k + 1]) <= cut]
    assert ix.write_end_records == sum(map(len, whole))
    more = [b"x"]
    ix.add_records(more)
    assert (ix.write_end_records, ix.write_end_offset) == (ix.n_records, ix.end_offset)


def test_index_restore_roundtrip():
    ix, _records, framed = build_index([5, 3, 9, 7] * 50, every_records=8)
    ix.scan(framed)
    copy = F.SegmentIndex.restore(ix.rel, ix.off, ix.lo, ix.hi, ix.run_max, ix.n_records,
                                  ix.end_offset, ix.seg_min, ix.seg_max, ix.monotonic)
    assert [copy.block(b) for b in range(copy.n_blocks)] == \
        [ix.block(b) for b in range(ix.n_blocks)]
    assert copy.candidates(7) == ix.candidates(7) and not copy.monotonic


def test_find_in_records():
    records = [make_record(1000 + i, i) for i in range(10)]
    assert F.find_in_records(records, 0, 10, records[7][7:29], 7) == 7
    assert F.find_in_records(records, 3, 10, records[7][7:29], 7) == 4
    assert F.find_in_records(records, 0, 7, records[7][7:29], 7) == -1
    assert F.find_in_records(records, 0, 99, b"nope", 7) == -1


def test_find_record():
    seconds = list(range(1000, 1100))
    records = [make_record(s, i) for i, s in enumerate(seconds)]
    framed = F.frame_records(records)
    for i in (0, 37, 99):
        assert F.find_record(framed, 0, -1, records[i][7:29], 7) == i
    assert F.find_record(framed, 0, 37, records[37][7:29], 7) == -1
    bad = bytearray(framed)
    bad[len(F.frame_records(records[:5])) + 40] ^= 1  # corrupt record 5's body
    assert F.find_record(bytes(bad), 0, -1, records[5][7:29], 7) == -1
    assert F.frame_ok(framed, 0) == len(records[0])
    assert F.frame_ok(bad, len(F.frame_records(records[:5]))) == 0


# -- sse_from_frames ----------------------------------------------------------------------------
def py_sse_from_frames(buf, offset, max_records, pattern=None, open_body=None):
    """The pure-Python twin of sse_from_frames: frames walked one at a time as
    py_scan_frames does, each body opened by open_body (a sealed log) and framed as
    oracle.sse_frame / sse_frame_matching do; the first frame that holds no record (no id,
    no subject when there is a pattern, does not open) stops the walk as corrupt."""
    buf = bytes(buf)
    messages, off, n, status = [], offset, 0, 0
    while max_records < 0 or n < max_records:
        _, end, got, status = py_scan_frames(buf, off, 1)
        if got == 0:
            break
        record = buf[off + 8:end] if open_body is None else open_body(buf[off + 8:end])
        try:
            if record is None:
                raise ValueError("does not open")
            message = oracle.sse_message(record)
            if pattern is None or oracle.match_subject(pattern, oracle.record_subject(record)):
                messages.append(message)
        except ValueError:
            status = 2
            break
        off, n = end, n + 1
    return oracle.sse_chunk(b"".join(messages)), off, n, len(messages), status


# an id is busd's own (e_ + an xid) or free-form: 1..128 bytes without '"'; the
# subject any bytes without '"' (the record holds it JSON-escaped, the framer only
# looks for the closing quote)
no_quote = st.binary(max_size=40).map(lambda b: b.replace(b'"', b"'"))
ids = st.one_of(
    st.builds(lambda raw: b"e_" + py_xid_encode(raw).encode(), st.binary(min_size=12, max_size=12)),
    st.binary(min_size=1, max_size=128).map(lambda b: b.replace(b'"', b"-")),
    st.binary(min_size=129, max_size=140).map(lambda b: b.replace(b'"', b"-")))  # too long
subjects = st.one_of(st.sampled_from([b"a.b", b"a.c", b"b", b"a.b.c", b"\xff.\x00", b""]),
                     no_quote)
records = st.one_of(
    st.builds(lambda i, s, p: b'{"id":"%s","subject":"%s","payload":%s}' % (i, s, p),
              ids, subjects, st.sampled_from([b"1", b'"x"', b"[1,2]", b'"' + b"y" * 300 + b'"'])),
    st.builds(lambda i: b'{"id":"%s"' % i, ids),  # an id, no subject
    st.binary(min_size=1, max_size=60))           # no record at all
patterns = st.sampled_from([None, b"a.b", b"a.*", b"a.>", b">", b"b", b"\xff.*"])


def _pattern(p):
    from busd._core import Pattern
    return None if p is None else Pattern(p)


@settings(max_examples=400, deadline=None)
@given(st.lists(records, max_size=12), patterns, st.data())
def test_sse_from_frames_matches_oracle(recs, pattern, data):
    framed = b"\x00" * 3 + F.frame_records(recs)
    cut = data.draw(st.integers(3, len(framed)))  # records straddling the buffer's end
    max_records = data.draw(st.integers(-1, 14))
    got = F.sse_from_frames(framed[:cut], 3, max_records, _pattern(pattern))
    assert got == py_sse_from_frames(framed[:cut], 3, max_records, pattern)


@settings(max_examples=40, deadline=None)
@given(st.lists(records, min_size=1, max_size=8), patterns)
def test_sse_from_frames_is_sse_frame_of_the_records(recs, pattern):
    """Records that are all records: the chunk is the one _core frames from the list."""
    from busd._core import sse_of
    good = [r for r in recs if _record_ok(r, pattern)]
    chunk, end, n, matched, status = F.sse_from_frames(F.frame_records(good), 0, -1,
                                                       _pattern(pattern))
    assert (chunk, matched) == sse_of(good, _pattern(pattern))
    assert (n, status) == (len(good), 0)


def _record_ok(record, pattern):
    try:
        oracle.record_id(record)
        if pattern is not None:
            oracle.record_subject(record)
    except ValueError:
        return False
    return True


@settings(max_examples=150, deadline=None)
@given(st.lists(records, max_size=8), patterns, st.sampled_from([1, 7, 64, 4096]), st.data())
def test_sse_from_frames_opens_sealed_records_as_the_oracle(recs, pattern, block_size, data):
    from busd.store.local._crypto import Codec, SealError
    codec, other = Codec(b"k" * 32), Codec(b"j" * 32)
    bodies = [(other if data.draw(st.integers(0, 9)) == 0 else codec)  # another key: corrupt
              .seal_record(r, block_size) for r in recs]
    framed = py_frame_records(bodies)
    if framed and data.draw(st.booleans()):  # a flipped ciphertext byte, crc fixed
        damaged = bytearray(framed)
        k = data.draw(st.integers(0, len(bodies) - 1))
        at = sum(8 + len(b) for b in bodies[:k])
        body = bytearray(bodies[k])
        body[data.draw(st.integers(0, len(body) - 1))] ^= 1
        damaged[at:at + 8 + len(body)] = py_frame_records([bytes(body)])
        framed = bytes(damaged)
    cut = data.draw(st.integers(0, len(framed)))

    def open_body(body):
        try:
            return codec.open_record(body, block_size)
        except SealError:
            return None

    got = F.sse_from_frames(framed[:cut], 0, -1, _pattern(pattern), codec, block_size)
    assert got == py_sse_from_frames(framed[:cut], 0, -1, pattern, open_body)


def test_sse_from_frames_deciphers_without_the_gil():
    """A read worker opening a sealed chunk leaves the loop thread running meanwhile. The
    cipher is most of this call (short records): with the GIL held through it the main
    thread stood still for over half the call here; released, its longest wait was under
    a tenth."""
    import threading
    import time

    from busd.store.local._crypto import Codec
    codec = Codec(b"k" * 32)
    record = b'{"id":"order-1","subject":"a.b","payload":"' + b"x" * 50 + b'"}'
    framed = F.frame_records([record] * 200_000, codec, 4096)
    span, ticks = [], []

    def worker():
        t0 = time.perf_counter()
        got = F.sse_from_frames(framed, 0, -1, None, codec, 4096)
        span.extend((t0, time.perf_counter(), got[2]))

    thread = threading.Thread(target=worker)
    thread.start()
    while thread.is_alive():
        ticks.append(time.perf_counter())
    thread.join()
    t0, t1, n = span
    assert n == 200_000
    inside = [t0] + [t for t in ticks if t0 < t < t1] + [t1]
    assert max(b - a for a, b in zip(inside, inside[1:])) < (t1 - t0) / 4


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=50), st.integers(0, 1 << 40),
       st.integers(0, 5))
def test_append_ends_matches_accumulate(records, total, already):
    """The recent-records cache's ends, appended after those it holds."""
    ends = array("q", range(already))
    want = array("q", range(already))
    want.extend(list(accumulate(map(len, records), initial=total))[1:])
    assert F.append_ends(ends, records, total) == (want[-1] if records else total)
    assert ends == want


def test_append_ends_refuses_what_is_not_bytes_and_changes_nothing():
    ends = array("q", [5])
    for bad_ends, bad_records in ((array("i"), [b"x"]), (ends, [b"x", "y"]),
                                  (ends, [bytearray(b"x")])):
        with pytest.raises(TypeError):
            F.append_ends(bad_ends, bad_records, 0)
    assert ends == array("q", [5])
