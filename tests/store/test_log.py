"""NamespaceLog and LocalStore: appends, reads, recovery, corruption, find_id, retention,
write failures, concurrent sync, the data-dir lock."""

import errno
import logging
import os
import random
import struct
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from logtools import read_all

from busd.store.errors import records_between
from busd.store.local import _framing as F
from busd.store.local.log import (
    CorruptRecordError,
    HistoryTruncatedError,
    LogOpenError,
    LogWriteError,
    NamespaceLog,
    WouldBlock,
)
from busd.store.local.store import LocalStore, StoreLockedError

ALPHABET = "0123456789abcdefghijklmnopqrstuv"
T0 = 1_750_000_000


def xid(sec: int, n: int) -> bytes:
    v = ((sec << 64) | (0xABCDEF << 40) | n) << 4
    return "".join(ALPHABET[(v >> (5 * (19 - i))) & 31] for i in range(20)).encode()


def rec(sec: int, n: int, size: int = 200) -> bytes:
    head = b'{"id":"e_%s","subject":"orders.created","payload":"' % xid(sec, n)
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


def eid(record: bytes) -> bytes:
    return record[7:29]


def open_log(tmp_path, **kw):
    nslog = NamespaceLog(tmp_path, "orders", **kw)
    report = nslog.open()
    return nslog, report


def segment_files(tmp_path):
    return sorted((tmp_path / "orders").glob("*.seg"))


def fill(nslog, n, batch=10, sec=T0, per_sec=50, size=200):
    out, base = [], nslog.next_index
    for start in range(0, n, batch):
        records = [rec(sec + i // per_sec, i, size) for i in range(start, min(n, start + batch))]
        assert nslog.append(records) == base + start
        out += records
    return out


# -- append and read ------------------------------------------------------------------------
@pytest.mark.parametrize("cache_bytes", [0, 3000, 8 << 20])
def test_append_read_across_segment_rolls(tmp_path, cache_bytes):
    nslog, report = open_log(tmp_path, segment_bytes=4096, cache_bytes=cache_bytes)
    assert (report.segments, nslog.count, nslog.next_index) == (1, 0, 0)
    assert nslog.read(0) == []
    expected, batches = [], []
    rng = random.Random(1)
    for b in range(60):
        records = [rec(T0 + b, i, rng.randint(40, 400)) for i in range(rng.randint(1, 12))]
        first = nslog.append(records)
        assert first == len(expected)
        batches.append((first, len(records)))
        expected += records
    assert nslog.count == nslog.next_index == len(expected)
    assert len(segment_files(tmp_path)) == nslog.segments > 5
    assert nslog.bytes == sum(p.stat().st_size for p in segment_files(tmp_path))
    firsts = [int(p.stem) for p in segment_files(tmp_path)]
    for first, n in batches:  # a batch never spans two segments
        assert not any(first < f < first + n for f in firsts)
    for p in segment_files(tmp_path)[:-1]:
        assert p.stat().st_size <= 4096
    assert read_all(nslog) == expected
    for max_bytes in (1, 500, 5000):
        assert read_all(nslog, max_bytes=max_bytes) == expected
    for start in rng.sample(range(len(expected)), 40):
        got = nslog.read(start, 2000, 7)
        assert 1 <= len(got) <= 7
        assert got == expected[start:start + len(got)]
        assert sum(map(len, got)) <= 2000 or len(got) == 1
    assert nslog.read(len(expected)) == []
    nslog.close()


def test_reopen_persists_and_continues(tmp_path):
    nslog, _ = open_log(tmp_path, segment_bytes=8192)
    expected = fill(nslog, 300)
    nslog.close()
    nslog, report = open_log(tmp_path, segment_bytes=8192)
    assert (report.records, report.truncated_bytes, report.corrupt_records) == (300, 0, [])
    assert report.segments == len(segment_files(tmp_path))
    assert nslog.next_index == 300 and read_all(nslog) == expected
    more = [rec(T0 + 100, 1000 + i) for i in range(50)]
    assert nslog.append(more) == 300
    nslog.close()
    nslog, _ = open_log(tmp_path, segment_bytes=8192)
    real_pread = os.pread
    try:  # the open segment's tail was loaded at open: head readers need no disk read
        os.pread = None
        assert nslog.read(340) == more[40:]
        assert nslog.find_id(eid(more[45])) == 345
    finally:
        os.pread = real_pread
    assert read_all(nslog) == expected + more
    nslog.close()


def test_read_record_larger_than_max_bytes(tmp_path):
    nslog, _ = open_log(tmp_path, cache_bytes=0)
    big = [rec(T0, i, 50_000) for i in range(3)]
    nslog.append(big)
    assert nslog.read(1, 1000) == [big[1]]
    assert nslog.read(0, 4) == [big[0]]
    assert nslog.read(2, 0) == [big[2]]
    nslog.close()


def test_empty_dir_is_an_empty_log(tmp_path):
    (tmp_path / "orders").mkdir()
    nslog, report = open_log(tmp_path)
    assert (nslog.count, nslog.first_index, nslog.find_id(eid(rec(T0, 1))), nslog.first_id()) \
        == (0, 0, None, None)
    assert report.segments == 1
    nslog.close()


# -- recovery ---------------------------------------------------------------------------------
def test_torn_tail_at_every_offset_of_the_last_frame(tmp_path, caplog):
    nslog, _ = open_log(tmp_path)
    records = [rec(T0, i, 120) for i in range(5)]
    nslog.append(records[:4])
    nslog.append(records[4:])
    nslog.close()
    path = segment_files(tmp_path)[0]
    data = path.read_bytes()
    last_start = len(data) - 8 - len(records[4])
    for cut in range(last_start, len(data) + 1):
        path.write_bytes(data[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="busd.store.local.log"):
            nslog, report = open_log(tmp_path)
        whole = 5 if cut == len(data) else 4
        assert nslog.next_index == whole, cut
        assert read_all(nslog) == records[:whole]
        assert report.truncated_bytes == (0 if whole == 5 else cut - last_start)
        warned = [r for r in caplog.records if "torn tail" in r.getMessage()]
        assert bool(warned) == (cut not in (last_start, len(data))), cut
        if warned:
            assert warned[0].levelno == logging.WARNING
            assert "ns=orders" in warned[0].getMessage()
        assert path.stat().st_size == (cut if whole == 5 or cut == last_start else last_start)
        assert nslog.append([records[4]]) == whole  # appends continue after the whole records
        nslog.close()
        path.write_bytes(data)


PAGE = 4096


@pytest.mark.parametrize("secret_key", [None, "s3cret"], ids=["plain", "encrypted"])
def test_a_write_cut_short_by_a_crash_is_cut_back_whole(tmp_path, caplog, secret_key):
    """A kill can stop a write(2) at any page boundary, and a cut at a frame boundary
    leaves only whole records: at every such cut of the last write, recovery keeps exactly
    the writes before it (a batch lands whole or not at all) and appends go on after them."""
    nslog, _ = open_log(tmp_path, secret_key=secret_key)
    writes = [[rec(T0, i, 150)] for i in range(3)] + [[rec(T0, 3 + i, 900) for i in range(30)]]
    for batch in writes:
        nslog.append(batch)
    nslog.close()
    path = segment_files(tmp_path)[0]
    data = path.read_bytes()
    before = [16]  # the end of each write, from the frames
    offset = 16
    for batch in writes:
        for _ in batch:
            offset += 8 + struct.unpack_from("<I", data, offset)[0]
        before.append(offset)
    start, end = before[-2], before[-1]
    assert end == len(data)
    frame_ends, offset = [], start
    while offset < end:
        offset += 8 + struct.unpack_from("<I", data, offset)[0]
        frame_ends.append(offset)
    pages = range((start // PAGE + 1) * PAGE, end, PAGE)
    assert len(pages) >= 5
    for cut in sorted({*pages, *frame_ends[:-1]}):
        path.write_bytes(data[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="busd.store.local.log"):
            nslog, report = open_log(tmp_path, secret_key=secret_key)
        assert nslog.next_index == 3, cut
        assert read_all(nslog) == [r for batch in writes[:3] for r in batch]
        assert path.stat().st_size == start
        assert report.truncated_bytes == cut - start
        assert report.unfinished_records == sum(e <= cut for e in frame_ends)
        assert any("torn tail" in r.getMessage() and "unfinished_records=" in r.getMessage()
                   for r in caplog.records)
        assert nslog.append(writes[3]) == 3
        nslog.close()
        if secret_key is None:  # (sealing draws new nonces)
            assert path.read_bytes() == data
        nslog, report = open_log(tmp_path, secret_key=secret_key)
        assert (report.truncated_bytes, nslog.next_index) == (0, 33)
        nslog.close()


def test_a_cut_write_is_read_back_without_it_by_a_readonly_open(tmp_path, caplog):
    nslog, _ = open_log(tmp_path)
    nslog.append([rec(T0, 0)])
    nslog.append([rec(T0, i, 900) for i in range(1, 20)])
    nslog.close()
    path = segment_files(tmp_path)[0]
    whole_first = 16 + 8 + len(rec(T0, 0))
    path.write_bytes(path.read_bytes()[:2 * PAGE])
    with caplog.at_level(logging.WARNING, logger="busd.store.local.log"):
        ro, report = open_log(tmp_path, readonly=True)
    assert any("torn tail left as is (read-only)" in r.getMessage() for r in caplog.records)
    assert (ro.next_index, read_all(ro)) == (1, [rec(T0, 0)])
    assert report.truncated_bytes == 2 * PAGE - whole_first
    assert path.stat().st_size == 2 * PAGE  # a read-only open changes nothing
    ro.close()


def test_a_segment_from_before_the_marks_recovers_as_before_and_is_rolled(tmp_path):
    """Flag bit 1 clear: its frames carry no write ends, so a cut keeps whole records (all
    it can do), and open() starts a new segment so that what is appended next has them."""
    nslog, _ = open_log(tmp_path)
    records = [rec(T0, i, 900) for i in range(20)]
    nslog.append(records)
    nslog.close()
    path = segment_files(tmp_path)[0]
    data = bytearray(path.read_bytes()[:3 * PAGE])
    assert data[8] == 2
    data[8] = 0  # the header of a segment written before flag bit 1
    path.write_bytes(data)
    nslog, report = open_log(tmp_path)
    kept = len(F.scan_frames(bytes(data), 16, -1)[0])
    assert kept == 3 * PAGE // (8 + 900) and report.unfinished_records == 0
    assert read_all(nslog) == records[:kept]
    assert len(segment_files(tmp_path)) == 2 and segment_files(tmp_path)[1].stem == f"{kept:020d}"
    assert nslog.append([records[kept]]) == kept
    nslog.close()
    heads = [p.read_bytes()[8] for p in segment_files(tmp_path)]
    assert heads == [0, 2]
    nslog, report = open_log(tmp_path)
    assert read_all(nslog) == records[:kept + 1]
    assert len(segment_files(tmp_path)) == 2  # a marked open segment is not rolled again
    nslog.close()


def test_garbage_tail_is_truncated(tmp_path):
    nslog, _ = open_log(tmp_path)
    records = fill(nslog, 20)
    nslog.close()
    path = segment_files(tmp_path)[0]
    with open(path, "ab") as fh:
        fh.write(b"\0" * 4096 + os.urandom(300))
    nslog, report = open_log(tmp_path)
    assert read_all(nslog) == records and report.truncated_bytes == 4396
    nslog.close()


def test_mid_file_corruption_is_reported_and_kept(tmp_path, caplog):
    nslog, _ = open_log(tmp_path, cache_bytes=0)
    records = fill(nslog, 200)
    nslog.close()
    path = segment_files(tmp_path)[0]
    data = bytearray(path.read_bytes())
    offset = 16 + len(F.frame_records(records[:100]))
    data[offset + 8 + 50] ^= 0x20  # one byte of record 100's body
    path.write_bytes(data)
    with caplog.at_level(logging.ERROR, logger="busd.store.local.log"):
        nslog, report = open_log(tmp_path, cache_bytes=0)
    assert report.corrupt_records == [100] and report.truncated_bytes == 0
    assert any("corrupt record" in r.getMessage() and "index=100" in r.getMessage()
               for r in caplog.records if r.levelno == logging.ERROR)
    assert nslog.next_index == 200  # indexes stay stable
    assert read_all_until_error(nslog, 0) == records[:100]
    with pytest.raises(CorruptRecordError) as err:
        nslog.read(100)
    assert err.value.args[0] == 100 and err.value.offset == offset
    assert str(path) in str(err.value)
    assert read_all(nslog, 101) == records[101:]
    assert nslog.find_id(eid(records[150])) == 150
    assert nslog.find_id(eid(records[100])) is None
    assert nslog.verify() == [(f"{path}: corrupt record index=100 offset={offset} "
                              f"bytes={8 + len(records[100])}")]
    assert nslog.append([rec(T0 + 99, 9999)]) == 200
    nslog.close()


def read_all_until_error(nslog, start):
    out, i = [], start
    while True:
        try:
            got = nslog.read(i, 3000)
        except CorruptRecordError as exc:
            assert exc.index == i
            return out
        if not got:
            return out
        out += got
        i += len(got)


def test_corrupt_length_field_resyncs_on_the_next_record(tmp_path):
    nslog, _ = open_log(tmp_path, cache_bytes=0)
    records = fill(nslog, 50)
    nslog.close()
    path = segment_files(tmp_path)[0]
    data = bytearray(path.read_bytes())
    offset = 16 + len(F.frame_records(records[:20]))
    data[offset:offset + 4] = struct.pack("<I", 10_000_000)  # length points past the end
    path.write_bytes(data)
    nslog, report = open_log(tmp_path, cache_bytes=0)
    assert report.corrupt_records == [20] and report.truncated_bytes == 0
    assert nslog.next_index == 50
    with pytest.raises(CorruptRecordError):
        nslog.read(20)
    assert read_all_until_error(nslog, 0) == records[:20]
    assert read_all(nslog, 21) == records[21:]
    nslog.close()


def test_corruption_in_a_closed_segment_is_found_lazily(tmp_path):
    nslog, _ = open_log(tmp_path, segment_bytes=8192, cache_bytes=0)
    records = fill(nslog, 200)
    nslog.close()
    first_seg = segment_files(tmp_path)[0]
    for idx in (tmp_path / "orders").glob("*.idx"):
        idx.unlink()
    data = bytearray(first_seg.read_bytes())
    offset = 16 + len(F.frame_records(records[:10]))
    data[offset + 100] ^= 1
    first_seg.write_bytes(data)
    nslog, report = open_log(tmp_path, segment_bytes=8192, cache_bytes=0)
    assert report.corrupt_records == []  # closed segments are trusted by size at open
    assert read_all_until_error(nslog, 0) == records[:10]
    with pytest.raises(CorruptRecordError):
        nslog.read(10)
    assert read_all(nslog, 11) == records[11:]
    assert len(nslog.verify()) == 1
    nslog.close()


def test_stale_index_file_is_rebuilt(tmp_path):
    nslog, _ = open_log(tmp_path, segment_bytes=8192, cache_bytes=0)
    records = fill(nslog, 200)
    nslog.close()
    idx_files = sorted((tmp_path / "orders").glob("*.idx"))
    assert len(idx_files) == len(segment_files(tmp_path)) - 1
    idx_files[0].write_bytes(idx_files[0].read_bytes()[:-3] + b"bad")
    idx_files[1].write_bytes(b"")
    nslog, _ = open_log(tmp_path, segment_bytes=8192, cache_bytes=0)
    assert read_all(nslog) == records
    assert all(nslog.find_id(eid(r)) == i for i, r in enumerate(records))
    nslog.close()


@pytest.mark.parametrize("content", [b"", b"BUSD", b"\0" * 16, b"\0" * 100, b"BUSDSEG1" + b"\0" * 8])
def test_blank_new_segment_after_crash_is_removed(tmp_path, caplog, content):
    nslog, _ = open_log(tmp_path, segment_bytes=8192)
    records = fill(nslog, 100)
    nslog.close()
    path = tmp_path / "orders" / f"{100:020d}.seg"
    path.write_bytes(content)  # the crash came between creating it and writing its header
    with caplog.at_level(logging.WARNING, logger="busd.store.local.log"):
        nslog, _report = open_log(tmp_path, segment_bytes=8192)
    assert not path.exists()
    assert any("removing empty last segment" in r.getMessage() for r in caplog.records)
    assert nslog.next_index == 100 and read_all(nslog) == records
    assert nslog.append([rec(T0 + 50, 7)]) == 100
    nslog.close()
    nslog, _ = open_log(tmp_path, segment_bytes=8192)
    assert nslog.read(100) == [rec(T0 + 50, 7)]
    nslog.close()


def test_crash_after_roll_recovers_the_previous_segment_tail(tmp_path):
    nslog, _ = open_log(tmp_path, segment_bytes=8192)
    records = fill(nslog, 100)
    nslog.close()
    segs = segment_files(tmp_path)
    segs[-1].unlink()
    tail = segs[-2]  # its last write was torn, the new segment has only its header
    tail.write_bytes(tail.read_bytes()[:-50])
    new = tmp_path / "orders" / f"{int(segs[-1].stem):020d}.seg"
    new.write_bytes(b"BUSDSEG1" + b"\0" * 8)
    nslog, report = open_log(tmp_path, segment_bytes=8192)
    assert report.truncated_bytes > 0 and not new.exists()
    assert read_all(nslog) == records[:nslog.next_index]
    assert nslog.next_index == int(tail.stem) + len(F.scan_frames(tail.read_bytes(), 16, -1)[0])
    nslog.close()


def test_only_segment_blank_is_reinitialised(tmp_path):
    (tmp_path / "orders").mkdir()
    path = tmp_path / "orders" / f"{0:020d}.seg"
    path.write_bytes(b"BUSDS")
    nslog, report = open_log(tmp_path)
    # flag bit 1: the segment's write ends are marked
    assert report.reinitialized and path.read_bytes() == b"BUSDSEG1\x02" + b"\0" * 7
    nslog.append([rec(T0, 1)])
    nslog.close()


def test_bad_headers_are_open_errors(tmp_path):
    nslog, _ = open_log(tmp_path, segment_bytes=4096)
    fill(nslog, 100)
    nslog.close()
    segs = segment_files(tmp_path)
    good = segs[1].read_bytes()
    segs[1].write_bytes(b"NOTBUSD!" + good[8:])
    with pytest.raises(LogOpenError, match="bad segment header"):
        open_log(tmp_path, segment_bytes=4096)
    segs[1].write_bytes(good)
    with pytest.raises(LogOpenError, match="encrypted"):
        NamespaceLog(tmp_path, "orders", secret_key="k").open()
    last = segs[-1].read_bytes()
    segs[-1].write_bytes(b"GARBAGE!" + last[8:])
    with pytest.raises(LogOpenError, match=segs[-1].name):
        open_log(tmp_path, segment_bytes=4096)


# -- find_id -------------------------------------------------------------------------------------
def test_find_id_monotonic_reads_few_blocks(tmp_path):
    nslog, _ = open_log(tmp_path, segment_bytes=64 << 10, cache_bytes=0)
    records = fill(nslog, 5000, batch=100, per_sec=20)  # 250 seconds, ~20 segments
    total_blocks = sum(nslog._ensure_index(s).n_blocks for s in nslog._segments)
    for i in random.Random(2).sample(range(5000), 200):
        before = nslog.blocks_scanned
        assert nslog.find_id(eid(records[i])) == i
        assert nslog.blocks_scanned - before <= 2  # 20 ids a second, 64 records a block
    assert total_blocks > 80
    before = nslog.blocks_scanned
    assert nslog.find_id(b"e_" + xid(T0 + 100, 999_999)) is None  # unknown id, known second
    assert nslog.blocks_scanned - before <= 2
    assert nslog.find_id(b"e_" + xid(T0 + 10_000, 1)) is None
    assert nslog.find_id(b"e_" + xid(T0 - 10_000, 1)) is None
    for bad in (b"", b"e_short", b"x_" + xid(T0, 1)[:20], b"e_" + b"Z" * 20):
        assert nslog.find_id(bad) is None
    nslog.close()


def test_find_id_with_shuffled_ids_across_seconds(tmp_path):
    nslog, _ = open_log(tmp_path, segment_bytes=64 << 10, cache_bytes=0)
    rng = random.Random(3)
    records = [rec(T0 + i // 20, i) for i in range(4000)]
    # restored data: mostly in order, with chunks of out-of-order ids spread around
    for k in range(0, 4000, 400):
        chunk = records[k:k + 100]
        rng.shuffle(chunk)
        records[k:k + 100] = chunk
    records += [rec(T0 - 500 + i, 10_000 + i) for i in range(20)]  # much older ids at the end
    for k in range(0, len(records), 100):
        nslog.append(records[k:k + 100])
    total_blocks = sum(nslog._ensure_index(s).n_blocks for s in nslog._segments)
    scanned = []
    for i, r in enumerate(records):
        before = nslog.blocks_scanned
        assert nslog.find_id(eid(r)) == i
        scanned.append(nslog.blocks_scanned - before)
    assert max(scanned) < total_blocks / 10  # a search, not a walk
    assert sum(scanned) / len(scanned) < 4
    nslog.close()


def test_find_id_after_reopen_loads_only_candidate_segments(tmp_path):
    nslog, _ = open_log(tmp_path, segment_bytes=32 << 10, cache_bytes=0)
    records = fill(nslog, 3000, batch=100, per_sec=20)
    nslog.close()
    nslog, _ = open_log(tmp_path, segment_bytes=32 << 10, cache_bytes=0)
    assert nslog.find_id(eid(records[1234])) == 1234
    loaded = sum(s.index is not None for s in nslog._segments)
    assert nslog.segments > 15 and loaded <= 3  # the open one + the one (or two) holding it
    assert nslog.find_id(eid(records[-1])) == 2999  # the open segment, served from memory
    nslog.close()


def test_find_id_near_the_head_uses_the_cache(tmp_path, monkeypatch):
    nslog, _ = open_log(tmp_path)
    records = fill(nslog, 500)
    monkeypatch.setattr(os, "pread", None)  # any disk read would fail
    assert nslog.find_id(eid(records[480])) == 480
    assert nslog.read(400, 1 << 20) == records[400:]
    monkeypatch.undo()
    nslog.close()


# -- retention --------------------------------------------------------------------------------
def test_retention_by_bytes(tmp_path):
    nslog, _ = open_log(tmp_path, segment_bytes=4096, retention_bytes=10_000, cache_bytes=0)
    records = fill(nslog, 300, per_sec=10)
    segs_before = nslog.segments
    deleted = nslog.apply_retention(0)
    assert deleted > 0 and nslog.segments == segs_before - deleted
    assert nslog.bytes <= 10_000 < nslog.bytes + 4096
    first = nslog.first_index
    assert first == int(segment_files(tmp_path)[0].stem) > 0
    assert nslog.count == 300 - first and nslog.next_index == 300
    with pytest.raises(HistoryTruncatedError) as err:
        nslog.read(first - 1)
    assert err.value.args[0] == first
    assert read_all(nslog) == records[first:]
    assert nslog.first_id() == eid(records[first])
    assert nslog.find_id(eid(records[0])) is None
    assert nslog.is_before_retained(eid(records[0]))
    assert not nslog.is_before_retained(eid(records[-1]))
    oldest_second = F.xid_seconds(records[first][9:29])
    assert nslog.is_before_retained(b"e_" + xid(oldest_second, 999_999))  # same second
    assert not nslog.is_before_retained(b"e_" + xid(oldest_second + 1, 999_999))
    assert not list((tmp_path / "orders").glob(f"{0:020d}.*"))
    nslog.close()
    nslog, _ = open_log(tmp_path, segment_bytes=4096)
    assert nslog.first_index == first and read_all(nslog) == records[first:]
    nslog.close()


def test_retention_never_deletes_the_open_segment(tmp_path):
    nslog, _ = open_log(tmp_path, segment_bytes=1 << 20, retention_bytes=10, retention_age=1)
    fill(nslog, 100)
    assert nslog.apply_retention(T0 + 10**6) == 0 and nslog.count == 100
    assert not nslog.is_before_retained(eid(rec(T0 - 5, 1)))  # nothing was deleted
    nslog.close()


def test_retention_by_age(tmp_path):
    nslog, _ = open_log(tmp_path, segment_bytes=4096, retention_age=60, cache_bytes=0)
    records = fill(nslog, 300, per_sec=1)  # one record a second: T0 .. T0+299
    assert nslog.apply_retention(T0 + 50) == 0  # nothing older than 60 s yet
    deleted = nslog.apply_retention(T0 + 200)
    assert deleted > 0
    first = nslog.first_index
    oldest_kept = T0 + first
    seg0 = nslog._segments[0]
    assert F.xid_seconds(nslog.first_id()[2:]) == oldest_kept
    assert nslog._summary(seg0)[1] >= T0 + 200 - 60  # the first kept segment is not expired
    assert first > 100
    assert read_all(nslog) == records[first:]
    nslog.close()


# -- write failures ------------------------------------------------------------------------------
def test_enospc_leaves_the_file_as_before_and_the_log_usable(tmp_path, monkeypatch):
    nslog, _ = open_log(tmp_path, cache_bytes=0)
    records = fill(nslog, 50)
    path = segment_files(tmp_path)[0]
    size_before = path.stat().st_size
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data[:len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(LogWriteError) as err:
        nslog.append([rec(T0 + 9, 100 + i) for i in range(10)])
    monkeypatch.setattr(os, "write", real_write)
    assert err.value.errno == errno.ENOSPC and "disk full" in str(err.value)
    assert path.stat().st_size == size_before
    assert (nslog.next_index, nslog.bytes) == (50, size_before)
    more = [rec(T0 + 9, 200 + i) for i in range(10)]
    assert nslog.append(more) == 50  # space freed: appends work again
    assert read_all(nslog) == records + more
    nslog.close()
    nslog, report = open_log(tmp_path)
    assert report.truncated_bytes == 0 and read_all(nslog) == records + more
    nslog.close()


def test_a_cut_back_that_failed_is_settled_on_its_own_file_before_a_roll(tmp_path, monkeypatch):
    """A failed write whose ftruncate also failed leaves junk past the segment's end; the
    next append must cut that file back, not the new segment a roll just opened."""
    nslog, _ = open_log(tmp_path, segment_bytes=4096, cache_bytes=0)
    records = fill(nslog, 15)  # 15 x ~230 bytes: the next batch of 10 rolls
    old = segment_files(tmp_path)[0]
    old_size = old.stat().st_size
    real_write, real_truncate = os.write, os.ftruncate

    def half_then_full(fd, data):
        real_write(fd, bytes(data[:len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    def broken_truncate(fd, size):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "write", half_then_full)
    monkeypatch.setattr(os, "ftruncate", broken_truncate)
    with pytest.raises(LogWriteError):
        nslog.append([rec(T0 + 9, 100 + i) for i in range(2)])
    monkeypatch.setattr(os, "write", real_write)
    monkeypatch.setattr(os, "ftruncate", real_truncate)
    assert old.stat().st_size > old_size  # the junk of the failed write is still there
    more = [rec(T0 + 9, 200 + i) for i in range(10)]
    assert nslog.append(more) == 15  # settles the cut-back, then rolls
    assert old.stat().st_size == old_size
    assert len(segment_files(tmp_path)) == 2
    assert read_all(nslog) == records + more
    nslog.close()
    nslog, report = open_log(tmp_path)
    assert (report.truncated_bytes, report.corrupt_records) == (0, [])
    assert read_all(nslog) == records + more
    nslog.close()


def test_failed_roll_leaves_no_new_segment(tmp_path, monkeypatch):
    nslog, _ = open_log(tmp_path, segment_bytes=4096)
    records = fill(nslog, 15)
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(LogWriteError):
        nslog.append([rec(T0, 100 + i) for i in range(10)])
    monkeypatch.setattr(os, "write", real_write)
    assert len(segment_files(tmp_path)) == nslog.segments
    more = [rec(T0, 200 + i) for i in range(10)]
    assert nslog.append(more) == len(records)
    assert read_all(nslog) == records + more
    nslog.close()


def test_readonly_log_refuses_appends_and_does_not_repair(tmp_path):
    nslog, _ = open_log(tmp_path)
    fill(nslog, 10)
    nslog.close()
    path = segment_files(tmp_path)[0]
    with open(path, "ab") as fh:
        fh.write(b"\x05\0\0\0torn")
    size = path.stat().st_size
    ro = NamespaceLog(tmp_path, "orders", readonly=True)
    report = ro.open()
    assert report.truncated_bytes == 8 and path.stat().st_size == size and ro.count == 10
    with pytest.raises(LogWriteError):
        ro.append([rec(T0, 1)])
    ro.close()


# -- durability ----------------------------------------------------------------------------------
def open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_sync_from_a_thread_while_appending_and_rolling(tmp_path):
    fds_before = open_fds()
    nslog, _ = open_log(tmp_path, segment_bytes=16 << 10)
    stop = threading.Event()
    errors, syncs = [], [0]

    def syncer():
        while not stop.is_set():
            try:
                nslog.sync()
                syncs[0] += 1
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

    thread = threading.Thread(target=syncer)
    thread.start()
    try:
        records = fill(nslog, 6000, batch=50)
    finally:
        stop.set()
        thread.join()
    assert not errors and syncs[0] > 0
    assert nslog.segments > 20
    nslog.sync()
    assert not nslog.dirty
    assert len(nslog._files) == 1  # every rolled segment's fd was fsynced and closed
    nslog.append([rec(T0, 1)])
    assert nslog.dirty
    nslog.close()
    assert open_fds() == fds_before
    nslog, _ = open_log(tmp_path, segment_bytes=16 << 10)
    assert read_all(nslog)[:6000] == records
    nslog.close()


def test_unsynced_rolls_do_not_hoard_fds(tmp_path):
    nslog, _ = open_log(tmp_path, segment_bytes=4096)
    fill(nslog, 1000)
    assert nslog.segments > 30 and len(nslog._files) <= 10
    nslog.close()


# -- the store --------------------------------------------------------------------------------------
def test_store_lock_and_interface(tmp_path):
    store = LocalStore(tmp_path, ["orders", "users"], segment_bytes=4096)
    reports = store.open()
    assert set(reports) == {"orders", "users"}
    other = LocalStore(tmp_path, ["orders"])
    with pytest.raises(StoreLockedError, match=str(tmp_path / ".lock")):
        other.open()
    records = [rec(T0, i) for i in range(30)]
    assert store.append_batch("orders", records[:10]) == 0
    assert store.append_batch("orders", records[10:]) == 10
    assert store.read("orders", 5, 1 << 20) == records[5:]
    assert store.find_id("orders", eid(records[7])) == 7
    assert (store.first_index("orders"), store.next_index("orders")) == (0, 30)
    assert store.next_index("users") == 0 and store.read("users", 0, 100) == []
    assert store.first_id("orders") == eid(records[0])
    assert store.dirty
    store.sync()
    assert not store.dirty
    stats = store.stats()
    assert stats["orders"]["count"] == 30 and stats["users"]["count"] == 0
    assert stats["orders"]["bytes"] == store.log("orders").bytes
    assert store.apply_retention(0) == 0
    store.close()
    other.open()  # released on close
    assert read_all(other.log("orders")) == records
    other.close()


# -- model check ------------------------------------------------------------------------------------
op_st = st.one_of(
    st.tuples(st.just("append"), st.integers(1, 15), st.integers(30, 700)),
    st.tuples(st.just("read"), st.integers(0, 400), st.integers(1, 6000)),
    st.tuples(st.just("find"), st.integers(0, 400), st.just(0)),
    st.tuples(st.just("reopen"), st.just(0), st.just(0)),
    st.tuples(st.just("retain"), st.integers(2000, 20000), st.just(0)),
    st.tuples(st.just("sync"), st.just(0), st.just(0)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(op_st, max_size=40), st.integers(0, 1))
def test_log_matches_a_list_model(tmp_path_factory, ops, cached):
    root = tmp_path_factory.mktemp("model")
    kw = {"segment_bytes": 3000, "cache_bytes": 2000 * cached}
    nslog = NamespaceLog(root, "orders", **kw)
    nslog.open()
    model: list[bytes] = []
    first = 0
    for op, a, b in ops:
        if op == "append":
            records = [rec(T0 + len(model) // 7, len(model) + i, b) for i in range(a)]
            assert nslog.append(records) == len(model)
            model += records
        elif op == "read":
            if a < first:
                if a < len(model):
                    with pytest.raises(HistoryTruncatedError):
                        nslog.read(a, b)
                continue
            got = nslog.read(a, b)
            if a >= len(model):
                assert got == []
            else:
                assert got and got == model[a:a + len(got)]
                assert len(got) == 1 or sum(map(len, got)) <= b
        elif op == "find":
            if a < len(model):
                assert nslog.find_id(eid(model[a])) == (a if a >= first else None)
        elif op == "reopen":
            nslog.close()
            nslog = NamespaceLog(root, "orders", **kw)
            nslog.open()
        elif op == "retain":
            nslog.retention_bytes = a
            nslog.apply_retention(0)
            assert nslog.first_index >= first
            first = nslog.first_index
        elif op == "sync":
            nslog.sync()
            assert not nslog.dirty
        assert (nslog.first_index, nslog.next_index) == (first, len(model))
    assert read_all(nslog) == model[first:]
    assert nslog.verify() == []
    nslog.close()


# -- read_sse: catch-up's read, SSE framed from the read buffer ----------------------------------
def free_rec(i: int, size: int) -> bytes:
    """A record with a free-form id of its own length and a subject of unusual bytes."""
    head = b'{"id":"ord %d/%s","subject":"a.\xc3\xa9\\\\%d","payload":"' % (i, b"k" * (i % 90), i % 3)
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


@pytest.mark.parametrize("secret", [None, "s3cret"])
def test_read_sse_is_the_sse_of_what_read_answers(tmp_path, secret):
    """From every start, with read sizes that cut records anywhere in the read buffer,
    from the segment files and from the cache, with and without a pattern; a corrupt
    record is raised when it comes first, as read raises it."""
    from busd._core import Pattern, sse_of
    nslog, _ = open_log(tmp_path, cache_bytes=4000, segment_bytes=30_000, secret_key=secret,
                        block_size=64)
    rnd = random.Random(7)
    records = [free_rec(i, rnd.randrange(40, 700)) if i % 3 else rec(T0, i, rnd.randrange(60, 700))
               for i in range(300)]
    for k in range(0, 300, 7):
        nslog.append(records[k:k + 7])
    nslog.close()
    seg = segment_files(tmp_path)[-1]
    data = bytearray(seg.read_bytes())
    data[16 + 8 + 30] ^= 1  # the first record of the open segment
    seg.write_bytes(data)
    nslog, report = open_log(tmp_path, cache_bytes=4000, secret_key=secret, block_size=64)
    assert report.corrupt_records == [bad := int(seg.stem)]
    assert len(segment_files(tmp_path)) > 2
    for pattern in (None, Pattern(b"a.*"), Pattern(b"orders.created")):
        for start in range(300):
            for max_bytes in (1, 500, 2000, 9000):
                for cache in (True, False):
                    try:
                        want = nslog.read(start, max_bytes, 40, cache=cache)
                    except CorruptRecordError:
                        assert start == bad
                        with pytest.raises(CorruptRecordError):
                            nslog.read_sse(start, max_bytes, 40, pattern, cache=cache)
                        continue
                    got = nslog.read_sse(start, max_bytes, 40, pattern, cache=cache)
                    assert got == (*sse_of(want, pattern), len(want)), (start, max_bytes)
    assert nslog.read_sse(300, 1000, 40, None) == (b"", 0, 0)
    nslog.close()


def _not_in_page_cache(fd, buffers, offset, flags=0):
    """os.preadv for bytes the page cache lacks: what RWF_NOWAIT answers then."""
    from busd.store.local import log as log_mod
    assert flags == log_mod.RWF_NOWAIT
    raise BlockingIOError(errno.EAGAIN, "would block")


def test_read_sse_nowait_answers_as_the_blocking_read_or_not_at_all(tmp_path, monkeypatch):
    """nowait (the loop thread's catch-up read) answers what the blocking read answers, from
    every start and read size, in segments this log wrote, once their files are open. It
    raises WouldBlock, touching nothing, for a segment's first read (the file is opened in
    a worker), for a first record longer than the read (up to --max-event-size: too long
    for one loop step), for segments from before the log was opened, while a read worker
    holds the log, and when the page cache lacks the bytes: that segment is then the
    workers' for good (their reads start the kernel's readahead, which the loop must not)."""
    from busd._core import Pattern
    from busd.store.local import log as log_mod
    nslog, _ = open_log(tmp_path, cache_bytes=4000, segment_bytes=30_000)
    rnd = random.Random(3)
    records = [rec(T0, i, rnd.randrange(60, 700)) for i in range(300)]
    for k in range(0, 300, 7):
        nslog.append(records[k:k + 7])
    assert len(segment_files(tmp_path)) > 3
    with pytest.raises(WouldBlock):  # its file is not open for reading yet
        nslog.read_sse(0, 2000, 40, None, cache=False, nowait=True)
    for pattern in (None, Pattern(b"orders.*")):
        for start in range(300):
            for max_bytes in (1, 500, 9000):
                want = nslog.read_sse(start, max_bytes, 40, pattern, cache=False)
                if 8 + len(records[start]) > max(max_bytes, 8):
                    with pytest.raises(WouldBlock):
                        nslog.read_sse(start, max_bytes, 40, pattern, cache=False, nowait=True)
                    continue
                got = nslog.read_sse(start, max_bytes, 40, pattern, cache=False, nowait=True)
                assert got == want, (start, max_bytes)
    # a long record does not take its segment from the loop (only a page-cache miss does)
    assert nslog.read_sse(10, 9000, 40, None, cache=False, nowait=True)[2] > 0

    holding, release = threading.Event(), threading.Event()

    def worker_read() -> None:
        with nslog._read_mutex:
            holding.set()
            release.wait(5)

    worker = threading.Thread(target=worker_read)
    worker.start()
    holding.wait(5)
    try:
        with pytest.raises(WouldBlock):
            nslog.read_sse(10, 2000, 40, None, cache=False, nowait=True)
    finally:
        release.set()
        worker.join()

    with monkeypatch.context() as patch:
        patch.setattr(log_mod.os, "preadv", _not_in_page_cache)
        with pytest.raises(WouldBlock):
            nslog.read_sse(10, 2000, 40, None, cache=False, nowait=True)
        with pytest.raises(WouldBlock):  # partly cached: the worker reads it whole
            patch.setattr(log_mod.os, "preadv", lambda fd, buffers, offset, flags=0: 3)
            nslog.read_sse(150, 2000, 40, None, cache=False, nowait=True)
    assert nslog.read_sse(280, 2000, 40, None, cache=False, nowait=True)  # other segments
    for start in (10, 150):  # those two segments stay with the workers
        with pytest.raises(WouldBlock):
            nslog.read_sse(start, 2000, 40, None, cache=False, nowait=True)
    nslog.close()

    nslog, _ = open_log(tmp_path, cache_bytes=4000)
    nslog.read_sse(280, 2000, 40, None, cache=False)  # a worker's read opens the file
    with pytest.raises(WouldBlock):  # written before this log was opened
        nslog.read_sse(280, 2000, 40, None, cache=False, nowait=True)
    nslog.close()


def test_fetch_sse_frames_cached_records_on_the_loop_and_the_rest_in_a_worker(
        tmp_path, monkeypatch):
    """Catch-up from a plain log: what the page cache holds is framed on the loop thread,
    at once (no thread switch); a read that would need the disk goes to a busd-read worker,
    and both answer the same."""
    import asyncio

    from busd._core import sse_of

    from busd.store.local import log as log_mod
    threads = []
    real = NamespaceLog.read_sse

    def read_sse(self, *args, **kw):
        name = threading.current_thread().name  # which worker: the pool may start another
        threads.append(("busd-read" if name.startswith("busd-read_") else name,
                        kw.get("nowait", False)))
        return real(self, *args, **kw)

    monkeypatch.setattr(NamespaceLog, "read_sse", read_sse)
    store = LocalStore(tmp_path, ["orders"])
    records = [rec(T0, i) for i in range(40)]
    cached = os.preadv

    async def main():
        await store.start(listener=None)
        try:
            store.log("orders").append(records)
            answers = [await store.fetch_sse("orders", 3, 1 << 20, None) for _ in range(2)]
            monkeypatch.setattr(log_mod.os, "preadv", _not_in_page_cache)
            answers.append(await store.fetch_sse("orders", 3, 1 << 20, None))
            monkeypatch.setattr(log_mod.os, "preadv", cached)
            with pytest.raises(HistoryTruncatedError):  # raised as a worker's read raises it
                await store.fetch_sse("orders", -1, 1 << 20, None)
        finally:
            await store.stop()
        return answers

    answers = asyncio.run(main())
    assert answers == [(3, sse_of(records[3:])[0], 37, 37)] * 3
    loop_thread = threading.main_thread().name
    # the first read opens the segment's file in a worker; the next is the loop's alone
    assert threads[:2] == [(loop_thread, True), ("busd-read", False)]
    assert threads[2] == (loop_thread, True)
    assert threads[3:5] == [(loop_thread, True), ("busd-read", False)]


def test_fetch_sse_reads_in_a_worker_and_stops_at_the_durable_head(tmp_path, monkeypatch):
    """An encrypted log's catch-up fetch frames and opens in a busd-read thread (the
    cipher overlaps the loop), never past what readers may see: under fsync_always, only
    what is fsynced."""
    import asyncio

    from busd._core import sse_of
    threads = []
    real = NamespaceLog.read_sse

    def read_sse(self, *args):
        threads.append(threading.current_thread().name)
        return real(self, *args)

    monkeypatch.setattr(NamespaceLog, "read_sse", read_sse)
    store = LocalStore(tmp_path, ["orders"], fsync_always=True, secret_key="k")
    records = [rec(T0, i) for i in range(20)]

    async def main():
        await store.start(listener=None)
        try:
            store.log("orders").append(records)
            store._unannounced["orders"] = 5  # written, not yet fsynced
            first, chunk, matched, count = await store.fetch_sse("orders", 3, 1 << 20, None)
            assert (first, count, matched) == (3, 12, 12)
            assert chunk == sse_of(records[3:15])[0]
        finally:
            await store.stop()

    asyncio.run(main())
    assert threads and all(name.startswith("busd-read") for name in threads)


def test_records_between_steps_over_a_corrupt_record_unless_told_to_stop():
    """The scans of a whole log (dedup rebuild, `bus debug`, find_id's runs) share it."""
    log = [b"r%d" % i for i in range(10)]

    def read(index):  # two records a chunk; index 3 is corrupt
        if index == 3:
            raise CorruptRecordError(3, "seg", 30)
        return log[index:min(index + 2, 3 if index < 3 else 10)]

    skipped = []
    assert list(records_between(read, 0, 10, skipped.append)) == log[:3] + log[4:]
    assert [exc.index for exc in skipped] == [3]

    def stop(exc):
        raise RuntimeError(f"stopped at {exc.index}")

    with pytest.raises(RuntimeError, match="stopped at 3"):
        list(records_between(read, 0, 10, stop))
