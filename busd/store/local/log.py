"""One namespace's durable log: segment files, sparse index, recovery, retention, fsync.

A namespace is a directory of segment files named by the index of their first record
(`00000000000000000000.seg`). Each segment is a 16-byte header (b"BUSDSEG1", u32 flags,
u32 reserved) followed by frames (u32 length, u32 crc32, body); see busd/store/local/_framing.pyx.
Only the last segment is open for appends; a batch never spans two segments.

Why it is shaped like this:

- Restart is fast and honest: closed segments are trusted by size (their record count is
  the next segment's first index minus their own) and indexed lazily; only the open
  segment is scanned at open(), and a torn tail is truncated to the last whole write:
  the last frame of each write(2) is marked (_frame.pxd says how, and why a kill can leave
  whole frames of a write that did not finish), and flag bit 1 of the header says the
  segment's writes are marked. A segment from before the marks (no bit 1) is cut back to
  its last whole record, as it always was, and an open one is rolled at open().
  A bad frame that valid frames follow is mid-file corruption: it keeps its index (so
  later indexes stay stable) and reads of it raise CorruptRecordError.
- A closed segment's sparse index is saved beside it (`<first>.idx`, rebuildable, never
  trusted unless its checksum and the segment size match), so finding an id after a
  restart reads a few index headers, not the namespace.
- The loop thread appends (one write(2) per batch, never under a lock); sync() runs in
  a worker thread and only fsyncs. A small lock guards the fd bookkeeping they share:
  a rolled segment's fd is retired, not closed, until a sync() has fsynced it.
- The last few MiB appended stay in memory, so readers at the head never touch disk.
- Encryption at rest (SPEC §5, crypto.py and _crypto.pyx beside this file) sits between
  records and frames: with a key, each frame body is the record sealed in blocks, so framing, CRCs,
  recovery and the index are unchanged and verifiable without the key. Flag bit 0 of the
  segment header marks an encrypted segment and its reserved u32 holds the block size it
  was sealed with; `keycheck` in the namespace directory holds a sealed known value. Ids
  and timestamps are not kept in clear: indexing opens each record's first block for its
  id's second (recovery and lazy index builds only: appends index the plaintext they were
  given), find_id compares keyed id tags (an 8-byte SipHash of the id in front of each
  sealed record) and opens only a match, catch-up reads open what they serve, and the
  recent-records cache holds plaintext. Closed segments' .idx files are sealed too.
"""

from __future__ import annotations

import bisect
import errno as errno_mod
import logging
import mmap
import os
import struct
import sys
import threading
import time
import zlib
from array import array
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from busd.store.errors import (
    CorruptRecordError,
    HistoryTruncatedError,
    LogError,
    LogOpenError,
    LogWriteError,
    records_between,
)
from busd.store.local._framing import (
    CORRUPT,
    HEADER_SIZE,
    MAGIC,
    MAX_BODY,
    TRUNCATED,
    SegmentIndex,
    find_in_records,
    find_record,
    frame_ok,
    scan_frames,
    sse_from_frames,
    xid_seconds,
)
from busd._core import Pattern, record_id, sse_of
from busd.store.local.crypto import (
    KEYCHECK_NAME,
    Codec,
    SealError,
    derive_key,
    keycheck_matches,
    make_codec,
    seal_keycheck,
)
from busd.store.local.files import replace_file, sync_dir
from busd.store.local.id_index import IdIndex
from busd.store.local.tail import (
    INDEX_SUFFIX,
    LogTail,
    _Segment,
    _write_all,
    _WriteFile,
)
from busd.wire import ID_AT, ID_LEN, RECORD_PREFIX, is_xid_id

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".seg"
INDEX_EVERY_RECORDS = 64
INDEX_EVERY_BYTES = 64 << 10
MAX_RETIRED_FDS = 8  # rolled-but-unsynced fds kept for sync(); beyond, a roll syncs inline
READ_FDS = 16  # read fds kept open per namespace
READ_MAX_RECORDS = 65536  # records one read returns at most
HINTS = 1024  # remembered (next index -> file position) of recent reads
FIND_RUN_BYTES = 1 << 20  # adjacent candidate blocks are read together up to this size

_HEADER = struct.Struct("<8sII")
_U32 = struct.Struct("<I")
_IDX_MAGIC = b"BUSDIDX1"
_IDX_SEALED_MAGIC = b"BUSDIDXS"  # an encrypted log's .idx: this, then the whole file sealed
FLAG_ENCRYPTED = 1  # segment header flag bit 0
FLAG_WRITE_ENDS = 2  # bit 1: the last frame of each write is marked (a segment header flag)
MIN_BLOCK_SIZE = 64  # a record's event id must lie within its first block
MAX_BLOCK_SIZE = 1 << 24
_IDX_VERSION = 1
# magic, version, n_blocks, segment size, n_records, end offset, seg min s, seg max s,
# monotonic, crc of the arrays, crc of the header before this field
_IDX_HEAD = struct.Struct("<8sIIQQQqqIII")


class EncryptionKeyError(LogOpenError):
    """The secret key given does not fit the namespace's data (the subclass says how).
    The message names no flag: the server and each tool take the key from their own."""

    todo = "{flag}"  # what to do, {flag} being the flag the key is given with

    def advice(self, flag: str) -> str:
        """The message and what to do, for a front-end whose key is given by `flag`."""
        return f"{self} ({self.todo.format(flag=flag)})"


class MissingKeyError(EncryptionKeyError):
    """An encrypted namespace opened without a key."""

    todo = "give its key with {flag}"


class UnexpectedKeyError(EncryptionKeyError):
    """A plain (unencrypted) namespace opened with a key."""

    todo = "leave out {flag}, or re-encrypt the data with `bus copy`"


class WrongKeyError(EncryptionKeyError):
    """An encrypted namespace opened with a key other than the one it was sealed with."""

    todo = "{flag} is not the key it was encrypted with"


@dataclass
class RecoveryReport:
    """What open() found and did."""

    segments: int = 0
    records: int = 0
    truncated_bytes: int = 0
    # whole records cut with the rest of a write a crash left unfinished (never answered)
    unfinished_records: int = 0
    corrupt_records: list[int] = field(default_factory=list)
    reinitialized: bool = False
    seconds: float = 0.0

    def __str__(self) -> str:
        return (f"segments={self.segments} records={self.records} "
                f"truncated_bytes={self.truncated_bytes} "
                f"unfinished_records={self.unfinished_records} corrupt={len(self.corrupt_records)} "
                f"reinitialized={int(self.reinitialized)} seconds={self.seconds:.3f}")


def _segment_name(first: int) -> str:
    return f"{first:020d}{SEGMENT_SUFFIX}"


def _header(flags: int, block_size: int = 0) -> bytes:
    return _HEADER.pack(MAGIC, flags, block_size if flags & FLAG_ENCRYPTED else 0)


class WouldBlock(Exception):  # noqa: N818 - a signal, not an error
    """A read asked not to wait (`nowait`) needs the disk, a read worker holds the log, or
    the read is too long for one loop step: hand it to a worker instead."""


class _NotCached(WouldBlock):  # noqa: N818
    """The page cache lacks some of the bytes."""


# pread(RWF_NOWAIT): Linux ≥ 4.14 answers from the page cache or fails with EAGAIN
RWF_NOWAIT = getattr(os, "RWF_NOWAIT", None)
# not in the page cache (EAGAIN), or a kernel or file system that cannot tell
_NOT_FROM_CACHE = (errno_mod.EAGAIN, errno_mod.EOPNOTSUPP, errno_mod.EINVAL)


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    while len(data) < size:  # only at end of file for regular files
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


def _pread_cached(fd: int, size: int, offset: int) -> bytearray:
    """All `size` bytes from the page cache, or _NotCached (some would come from the disk,
    or the kernel or file system cannot tell)."""
    if RWF_NOWAIT is None:
        raise _NotCached
    buf = bytearray(size)
    try:
        got = os.preadv(fd, [buf], offset, RWF_NOWAIT)
    except OSError as exc:
        if exc.errno in _NOT_FROM_CACHE:
            raise _NotCached from None
        raise
    if got < size:  # partly cached: a blocking read gets the rest
        raise _NotCached
    return buf


class NamespaceLog(LogTail):
    """The append-only log of one namespace; all methods but sync() run on the loop thread."""

    def __init__(self, root: Path, name: str, *, segment_bytes: int = 64 << 20,
                 retention_age: float | None = None, retention_bytes: int | None = None,
                 cache_bytes: int = 8 << 20, flags: int = 0, readonly: bool = False,
                 secret_key: str | bytes | None = None, block_size: int = 4096) -> None:
        if not 0 < segment_bytes < (1 << 32) - MAX_BODY:
            raise ValueError(f"segment_bytes must be in 1..{(1 << 32) - MAX_BODY - 1}")
        if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
            raise ValueError(f"block size must be in {MIN_BLOCK_SIZE}..{MAX_BLOCK_SIZE} bytes")
        self.codec: Codec | None = make_codec(secret_key) if secret_key else None
        if flags & FLAG_ENCRYPTED and self.codec is None:
            raise ValueError("flag bit 0 (encrypted) needs a secret_key")
        if self.codec is not None:
            flags |= FLAG_ENCRYPTED
        flags |= FLAG_WRITE_ENDS
        self.block_size = block_size  # for new segments; each segment keeps its own
        self.root = Path(root)
        self.name = name
        self.dir = self.root / name
        self.segment_bytes = segment_bytes
        self.retention_age = retention_age
        self.retention_bytes = retention_bytes
        self.cache_bytes = cache_bytes
        self.flags = flags
        self.readonly = readonly
        self.blocks_scanned = 0  # index blocks read by find_id (tests and metrics)
        self.ids = IdIndex(self.dir, derive_key(secret_key) if secret_key else None, readonly)
        self._segments: list[_Segment] = []
        self._firsts: list[int] = []
        self._next = 0
        self._bytes = 0
        self._wfile: _WriteFile | None = None
        self._files: list[_WriteFile] = []  # current + retired write fds (guarded by _lock)
        self._lock = threading.Lock()  # fd bookkeeping shared with sync(); never held for I/O
        self._sync_mutex = threading.Lock()  # one sync()/close() at a time
        # read fds, hints, lazy indexes and the segment list, shared by the loop thread
        # and the read workers (read(cache=False)); held for one bounded read at a time
        self._read_mutex = threading.RLock()
        self._dir_dirty = False
        # a failed write whose cut-back also failed: (file, size to cut it back to)
        self._pending_truncate: tuple[_WriteFile, int] | None = None
        self._rfds: dict[int, int] = {}  # segment first index -> read fd (insertion = LRU)
        self._hints: dict[int, tuple[_Segment, int]] = {}
        self._first_id: bytes | None = None
        self._opened = False
        self._closed = False
        # the recent-records cache, laid out as LogTail's docstring says
        self._cache: list[bytes] = []
        self._cache_first = 0
        self._cache_ends = array("q")
        self._cache_base = 0  # cumulative end before _cache[0]
        self._cache_total = 0

    # -- properties ------------------------------------------------------------------------
    @property
    def first_index(self) -> int:
        """The oldest retained index."""
        return self._firsts[0] if self._firsts else self._next

    @property
    def next_index(self) -> int:
        """The index the next appended record gets (the head)."""
        return self._next

    @property
    def count(self) -> int:
        return self._next - self.first_index

    @property
    def bytes(self) -> int:
        """Bytes of segment files on disk."""
        return self._bytes

    @property
    def segments(self) -> int:
        return len(self._segments)

    @property
    def dirty(self) -> bool:
        """True when something written is not yet fsynced."""
        with self._lock:
            return self._dir_dirty or self.ids.dirty or any(
                f.retired or f.write_seq != f.synced_seq for f in self._files)

    @property
    def index_bytes(self) -> int:
        """Memory held by loaded sparse indexes."""
        return sum(s.index.nbytes for s in self._segments if s.index is not None)

    # -- open and recovery -----------------------------------------------------------------
    def open(self) -> RecoveryReport:
        """Find the segments, recover the open one, and get ready to append."""
        if self._opened:
            raise LogError(f"namespace log {self.name} is already open")
        started = time.monotonic()
        report = RecoveryReport()
        if not self.readonly:
            self.dir.mkdir(parents=True, exist_ok=True)
        entries = sorted(self._list_segments(), key=lambda s: s.first)
        self._check_key(entries)
        if not entries:
            if self.readonly:
                self._opened = True
                return report
            entries = [self._create_segment(0)]
        for seg, nxt in pairwise(entries):
            seg.count = nxt.first - seg.first
            self._check_header(seg)
        while True:
            last = entries[-1]
            flags = self._recover_last(last, report)
            if last.count or len(entries) == 1:
                break
            # A crash right after a roll: the new segment holds nothing, so the previous one
            # is the open segment again (and its own unsynced tail gets recovered properly).
            log.warning("removing empty last segment ns=%s segment=%s bytes=%d", self.name,
                        last.path.name, last.size)
            if not self.readonly:
                last.path.unlink()
                self._set_dir_dirty()
            entries.pop()
        blank = flags is None
        if blank:
            log.warning("reinitialising blank segment ns=%s segment=%s", self.name,
                        last.path.name)
        if blank and not self.readonly:
            fd = os.open(last.path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, 0)
                _write_all(fd, self._new_header())
                os.fsync(fd)
            finally:
                os.close(fd)
        if not self.readonly:  # the open segment's index lives in memory only
            last.idx_path.unlink(missing_ok=True)
        self._segments = entries
        self._firsts = [s.first for s in entries]
        self._next = last.first + last.count
        self._bytes = sum(s.size for s in entries)
        if not self.readonly:
            self._open_writer(last)
            if last.count and not flags & FLAG_WRITE_ENDS:
                self._roll()  # written before the marks: what is appended now gets its own
        self.ids.open()
        report.segments = len(entries)
        report.records = self.count
        report.seconds = time.monotonic() - started
        self._opened = True
        return report

    def _list_segments(self) -> list[_Segment]:
        out = []
        if not self.dir.is_dir():
            return out
        seg_names = set()
        for entry in os.scandir(self.dir):
            stem, dot, suffix = entry.name.partition(".")
            if len(stem) != 20 or not stem.isdigit():
                continue
            if dot + suffix == SEGMENT_SUFFIX:
                seg_names.add(stem)
                out.append(_Segment(int(stem), Path(entry.path), entry.stat().st_size))
        if not self.readonly:  # an index whose segment retention removed before a crash
            for entry in os.scandir(self.dir):
                stem, _, suffix = entry.name.partition(".")
                if "." + suffix == INDEX_SUFFIX and stem not in seg_names:
                    os.unlink(entry.path)
        return out

    def _new_header(self) -> bytes:
        return _header(self.flags, self.block_size)

    def _check_key(self, entries: list[_Segment]) -> None:
        """Refuse a key that does not fit the namespace, before anything is read or written:
        an encrypted log without a key, a plain log with one, or a wrong key. Records each
        segment's block size (from its header) on the way."""
        encrypted, plain = [], []
        for seg in entries:
            with open(seg.path, "rb") as fh:
                head = fh.read(HEADER_SIZE)
            if len(head) == HEADER_SIZE and head.startswith(MAGIC):
                _, flags, reserved = _HEADER.unpack(head)
                if flags & FLAG_ENCRYPTED:
                    seg.block_size = reserved
                    encrypted.append(seg)
                else:
                    plain.append(seg)
        kc_path = self.dir / KEYCHECK_NAME
        try:
            keycheck = kc_path.read_bytes()
        except FileNotFoundError:
            keycheck = None
        where = f"namespace {self.name} ({self.dir})"
        if self.codec is None:
            if encrypted or keycheck is not None:
                raise MissingKeyError(f"{where} is encrypted and no secret key was given")
            return
        if plain:
            raise UnexpectedKeyError(f"{where} is not encrypted but a secret key was given")
        wrong = WrongKeyError(f"{where}: wrong secret key")
        if keycheck is not None:
            ok = keycheck_matches(self.codec, keycheck)
            if ok is False:
                raise wrong
            if ok:
                return
            log.warning("damaged key-check file ns=%s path=%s: checking a record instead",
                        self.name, kc_path)
        # No (intact) key check: a record decides, then one is recorded.
        probed = self._probe_key(encrypted)
        if probed is False:
            raise wrong
        if not self.readonly:
            replace_file(kc_path, seal_keycheck(self.codec), kc_path.with_suffix(".tmp"))
            sync_dir(self.dir)

    def _probe_key(self, segments: list[_Segment]) -> bool | None:
        """Whether the first crc-valid record found opens with the key (None: none found)."""
        for seg in segments:
            if not MIN_BLOCK_SIZE <= seg.block_size <= MAX_BLOCK_SIZE:
                continue
            with open(seg.path, "rb") as fh:
                head = _pread_exact(fh.fileno(), 8, HEADER_SIZE)
                if len(head) < 8:
                    continue
                length = _U32.unpack_from(head)[0]
                if not 0 < length <= MAX_BODY:
                    continue
                frame = head + _pread_exact(fh.fileno(), length, HEADER_SIZE + 8)
            if frame_ok(frame, 0):
                try:
                    self.codec.open_record(memoryview(frame)[8:], seg.block_size)
                except SealError:
                    return False
                return True
        return None

    def _check_header(self, seg: _Segment) -> None:
        with open(seg.path, "rb") as fh:
            head = fh.read(HEADER_SIZE)
        problem = self._header_problem(head)
        if problem:
            raise LogOpenError(f"segment {seg.path}: {problem}")

    def _header_problem(self, head: bytes) -> str | None:
        if len(head) < HEADER_SIZE:
            return f"missing segment header ({len(head)} of {HEADER_SIZE} bytes)"
        magic, flags, reserved = _HEADER.unpack(head)
        if magic != MAGIC:
            return f"bad segment header: magic {magic!r}, expected {MAGIC!r}"
        if flags | FLAG_WRITE_ENDS != self.flags:  # a segment from before the marks is fine
            if flags & 1 and not self.flags & 1:
                return "the segment is encrypted and no key was given"
            if self.flags & 1 and not flags & 1:
                return "the segment is not encrypted but a key was given"
            return f"segment flags {flags:#x}, expected {self.flags:#x}"
        if flags & FLAG_ENCRYPTED and not MIN_BLOCK_SIZE <= reserved <= MAX_BLOCK_SIZE:
            return f"bad block size {reserved} in an encrypted segment's header"
        return None

    def _recover_last(self, seg: _Segment, report: RecoveryReport) -> int | None:
        """Scan the open segment fully; truncate a torn tail (to its last whole write in a
        segment whose write ends are marked), note mid-file corruption. Its header's
        flags, or None if the segment is blank (its header must be rewritten)."""
        with open(seg.path, "rb") as fh:
            head = fh.read(HEADER_SIZE)
            problem = self._header_problem(head)
            if problem:
                # A crash between creating a segment and writing its header leaves it short
                # or zero-filled: then it holds nothing and is re-initialised.
                blank = len(head) < HEADER_SIZE and self._new_header().startswith(head)
                if not blank and not head.strip(b"\0"):
                    blank = not any(chunk.strip(b"\0") for chunk in iter(
                        lambda: fh.read(1 << 20), b""))
                if not blank:
                    raise LogOpenError(f"segment {seg.path}: {problem}")
                report.reinitialized = True
                report.truncated_bytes += seg.size
                seg.size = HEADER_SIZE
                seg.block_size = self.block_size
                seg.index = self._new_index()
                seg.count = 0
                return None
            flags = _HEADER.unpack(head)[1]
            size = os.fstat(fh.fileno()).st_size
            index = self._new_index()
            unfinished = 0
            if size > HEADER_SIZE:
                with mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ) as mm:
                    end, corrupt, torn = self._index_segment(seg, mm, index, -1)
                    kept = index.write_end_records
                    if flags & FLAG_WRITE_ENDS and kept < index.n_records:
                        # whole frames of a write a crash cut short: none of it was
                        # answered, and a batch lands whole or not at all
                        unfinished = index.n_records - kept
                        seg.corrupt.clear()
                        index = self._new_index()
                        end, corrupt, _ = self._index_segment(seg, mm, index, kept)
                        torn = True
                    self._prefill_cache(seg, mm, index)
            else:
                end, corrupt, torn = HEADER_SIZE, [], False
        seg.index = index
        seg.count = index.n_records
        for rel, offset, span in corrupt:
            report.corrupt_records.append(seg.first + rel)
            log.error("corrupt record kept ns=%s segment=%s index=%d offset=%d bytes=%d",
                      self.name, seg.path.name, seg.first + rel, offset, span)
        if torn:
            report.truncated_bytes += size - end
            report.unfinished_records += unfinished
            log.warning("%s ns=%s segment=%s truncated_bytes=%d unfinished_records=%d",
                        "torn tail left as is (read-only)" if self.readonly else
                        "recovered torn tail", self.name, seg.path.name, size - end,
                        unfinished)
            if not self.readonly:
                fd = os.open(seg.path, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.ftruncate(fd, end)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        seg.size = end
        return flags

    def _new_index(self) -> SegmentIndex:
        return SegmentIndex(HEADER_SIZE, INDEX_EVERY_RECORDS, INDEX_EVERY_BYTES)

    def _index_segment(self, seg: _Segment, buf, index: SegmentIndex,
                       max_records: int) -> tuple[int, list[tuple[int, int, int]], bool]:
        """Index every frame of buf: (end of whole records, corrupt (rel, offset, span), torn)."""
        corrupt: list[tuple[int, int, int]] = []
        size = len(buf)
        while True:
            left = -1 if max_records < 0 else max_records - index.n_records
            if left == 0:
                return index.end_offset, corrupt, False
            _, status = index.scan(buf, left, self.codec, seg.block_size)
            if status == 0:
                return index.end_offset, corrupt, False
            offset = index.end_offset
            nxt = _next_valid_frame(buf, offset, size, self.codec, seg.block_size)
            if nxt is None:
                return offset, corrupt, True
            corrupt.append((index.n_records, offset, nxt - offset))
            seg.corrupt[index.n_records] = offset
            index.add_corrupt(nxt - offset)

    def _prefill_cache(self, seg: _Segment, buf, index: SegmentIndex) -> None:
        """Load the open segment's last cache_bytes into the recent-records cache."""
        if not index.n_records or self.cache_bytes <= 0:
            return
        after = max(seg.corrupt) + 1 if seg.corrupt else 0
        b = bisect.bisect_left(index.off, index.end_offset - self.cache_bytes)
        if b >= index.n_blocks:
            b = index.n_blocks - 1
        rel, _, offset, _ = index.block(b)
        if rel < after:
            if after >= index.n_records:
                return
            _, rel, offset = index.locate(after)
            if rel != after:
                return
        records, end, _n, status = self._scan(seg, buf, offset, -1)
        if status or end != index.end_offset:
            return
        self._cache_fill(seg.first + rel, records)

    def _set_dir_dirty(self) -> None:
        with self._lock:
            self._dir_dirty = True

    def _open_writer(self, seg: _Segment) -> None:
        fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        wf = _WriteFile(fd, seg.path)
        with self._lock:
            self._files.append(wf)
            self._wfile = wf

    def _create_segment(self, first: int) -> _Segment:
        """A new, empty segment file with its header (removed again if that fails)."""
        path = self.dir / _segment_name(first)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, self._new_header())
        except OSError:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        self._set_dir_dirty()
        seg = _Segment(first, path, HEADER_SIZE, self.block_size if self.codec else 0)
        seg.index = self._new_index()
        seg.cached = True
        return seg

    # -- appending: LogTail.append (tail.py, compiled) -------------------------------------
    def _scan(self, seg: _Segment, buf, offset: int, max_records: int):
        """scan_frames, opening sealed records if the log is encrypted."""
        return scan_frames(buf, offset, max_records, codec=self.codec, block_size=seg.block_size)

    def _undo_write(self, wf: _WriteFile, before: int, exc: OSError):
        """Cut the file back to its size before the failed write, then raise LogWriteError."""
        try:
            os.ftruncate(wf.fd, before)
        except OSError as again:
            self._pending_truncate = (wf, before)
            log.error("cannot truncate after failed write ns=%s segment=%s error=%r",
                      self.name, wf.path.name, again)
        reason = (f"write to {wf.path} failed: {exc.strerror or exc}"
                  f"{' (disk full)' if exc.errno == errno_mod.ENOSPC else ''}")
        raise LogWriteError(reason, exc.errno) from exc

    def _settle_truncate(self) -> None:
        """Cut back the file of an earlier failed write; until that works, refuse writes."""
        wf, size = self._pending_truncate
        try:
            os.ftruncate(wf.fd, size)
        except OSError as exc:
            raise LogWriteError(f"cannot truncate {wf.path} after a failed write: "
                                f"{exc.strerror}", exc.errno) from exc
        self._pending_truncate = None

    def _roll(self) -> None:
        """Close the open segment for writing and start the next one."""
        old = self._segments[-1]
        try:
            seg = self._create_segment(self._next)
        except OSError as exc:
            raise LogWriteError(f"cannot create segment {_segment_name(self._next)} in "
                                f"{self.dir}: {exc.strerror}", exc.errno) from exc
        try:
            fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            seg.path.unlink()
            raise LogWriteError(f"cannot open segment {seg.path}: {exc.strerror}",
                                exc.errno) from exc
        wf = _WriteFile(fd, seg.path)
        old.count = old.index.n_records
        self._segments.append(seg)
        self._firsts.append(seg.first)
        self._bytes += seg.size
        with self._lock:
            if self._wfile is not None:
                self._wfile.retired = True
            self._files.append(wf)
            self._wfile = wf
            retired = [f for f in self._files if f.retired]
        if len(retired) > MAX_RETIRED_FDS and self._sync_mutex.acquire(blocking=False):
            try:  # nobody is syncing (--fsync never): do not hoard fds
                self._sync_files(retired[:-MAX_RETIRED_FDS])
            except OSError as exc:
                log.error("fsync of rolled segments failed ns=%s error=%r", self.name, exc)
            finally:
                self._sync_mutex.release()
        self._write_index_file(old)

    # -- reading ------------------------------------------------------------------------------
    def read(self, start_index: int, max_bytes: int = 1 << 20,
             max_records: int = READ_MAX_RECORDS, cache: bool = True) -> list[bytes]:
        """Records from start_index on, in order; [] at the head. Returns at least one record
        when there is one (even if larger than max_bytes), and stops before a corrupt record
        unless that is the first one asked for (then CorruptRecordError). cache=False: from
        the segment files only, safe in a read worker while the loop thread appends (the
        recent-records cache, which the loop changes, is not touched)."""
        return self._read(start_index, max_bytes, max_records, cache, _Records)

    def read_sse(self, start_index: int, max_bytes: int, max_records: int,
                 pattern: Pattern | None, cache: bool = True,
                 nowait: bool = False) -> tuple[bytes, int, int]:
        """What `read` answers, as the SSE chunk of those of its records that match
        pattern (None: all): (chunk or b"", records in it, records read). From the segment
        files the chunk is written straight from the read buffer (sse_from_frames: no bytes
        object per record, sealed records opened without the GIL).

        nowait: on the loop thread, never waiting: WouldBlock when the read would need the
        disk (not all in the page cache, the segment's file not open yet, or the segment
        not written by this process), when a read worker holds the log, or when the first
        record is longer than max_bytes."""
        return self._read(start_index, max_bytes, max_records, cache, _Sse(pattern), nowait)

    def _read(self, start: int, max_bytes: int, max_records: int, cache: bool, walk,
              nowait: bool = False):
        if start < self.first_index:
            raise HistoryTruncatedError(self.first_index)
        if start >= self._next or max_records <= 0:
            return walk.of_records([])
        if cache and self._cache and start >= self._cache_first:
            return walk.of_records(self._cache_read(start, max_bytes, max_records))
        # retention may have run since the check above
        if not self._read_mutex.acquire(blocking=not nowait):
            raise WouldBlock
        try:
            if start < self.first_index:
                raise HistoryTruncatedError(self.first_index)
            return self._read_segments(start, max_bytes, max_records, walk, nowait)
        finally:
            self._read_mutex.release()

    def in_memory(self, start_index: int) -> bool:
        """`read(start_index)` needs no disk: at or past the head, in the recent-records
        cache, or deleted by retention (it raises at once)."""
        return (start_index >= self._next or start_index < self.first_index
                or bool(self._cache) and start_index >= self._cache_first)

    def _segment_of(self, index: int) -> _Segment:
        return self._segments[bisect.bisect_right(self._firsts, index) - 1]

    def _read_segments(self, start: int, max_bytes: int, max_records: int, walk,
                       nowait: bool):
        """walk's answer for the frames of one pread from start on (within one segment)."""
        seg = self._segment_of(start)
        if nowait and not (seg.cached and seg.index is not None and seg.first in self._rfds):
            raise WouldBlock  # loading its index or opening its file may wait for the disk
        try:
            return self._read_frames(seg, start, max_bytes, max_records, walk, nowait)
        except _NotCached:
            seg.cached = False  # the page cache lost some: the workers read it from now on
            raise

    def _read_frames(self, seg: _Segment, start: int, max_bytes: int, max_records: int,
                     walk, nowait: bool):
        rel = start - seg.first
        pread = _pread_cached if nowait else _pread_exact
        index = self._ensure_index(seg)
        if rel in seg.corrupt:
            raise CorruptRecordError(start, seg.path, seg.corrupt[rel])
        if rel >= index.n_records:  # a closed segment that lost records
            raise CorruptRecordError(start, seg.path, index.end_offset)
        limit = min(max_records, index.n_records - rel)
        fd = self._read_fd(seg)
        hint = self._hints.pop(start, None)
        if hint is not None and hint[0] is seg:
            offset = hint[1]
        else:
            b, block_rel, offset = index.locate(rel)
            if rel != block_rel:  # step over the block's earlier records by their lengths
                _, _, boff, bend = index.block(b)
                skip_buf = pread(fd, bend - boff, boff)
                _, pos, n, _ = scan_frames(skip_buf, 0, rel - block_rel, False, False)
                if n != rel - block_rel:
                    raise CorruptRecordError(start, seg.path, boff + pos)
                offset = boff + pos
        want = min(max(max_bytes, 8), index.end_offset - offset)
        buf = pread(fd, want, offset)
        result, end, n, status = walk.of_frames(self, seg, buf, limit)
        if n == 0:
            if status == TRUNCATED:  # one record bigger than max_bytes
                if nowait:  # up to --max-event-size: a worker's read, not one loop step
                    raise WouldBlock
                head = buf if len(buf) >= 8 else _pread_exact(fd, 8, offset)
                length = _U32.unpack_from(head)[0] if len(head) >= 8 else 0
                if 0 < length <= MAX_BODY and offset + 8 + length <= index.end_offset:
                    buf = _pread_exact(fd, 8 + length, offset)
                    result, end, n, status = walk.of_frames(self, seg, buf, 1)
            if n == 0:
                log.error("corrupt record ns=%s segment=%s index=%d offset=%d",
                          self.name, seg.path.name, start, offset)
                raise CorruptRecordError(start, seg.path, offset)
        if len(self._hints) >= HINTS:
            self._hints.clear()
        if rel + n < index.n_records:
            self._hints[start + n] = (seg, offset + end)
        return result

    def _read_fd(self, seg: _Segment) -> int:
        fd = self._rfds.pop(seg.first, None)
        if fd is None:
            fd = os.open(seg.path, os.O_RDONLY | os.O_CLOEXEC)
            if len(self._rfds) >= READ_FDS:
                old = next(iter(self._rfds))
                os.close(self._rfds.pop(old))
        self._rfds[seg.first] = fd
        return fd

    def _close_read_fd(self, seg: _Segment) -> None:
        with self._read_mutex:
            fd = self._rfds.pop(seg.first, None)
            if fd is not None:
                os.close(fd)

    # -- closed segments' indexes --------------------------------------------------------------
    def _ensure_index(self, seg: _Segment) -> SegmentIndex:
        """The segment's sparse index: in memory, from its .idx file, or by scanning it."""
        if seg.index is not None:
            return seg.index
        with self._read_mutex:  # built once, not by the loop and a read worker both
            if seg.index is not None:
                return seg.index
            index = self._load_index_file(seg)
            seg.index = index if index is not None else self._build_index(seg)
            if index is None:
                self._write_index_file(seg)
            index = seg.index
            seg.summary = (index.seg_min, index.seg_max)
            return index

    def _build_index(self, seg: _Segment) -> SegmentIndex:
        index = self._new_index()
        with open(seg.path, "rb") as fh:
            if seg.size > HEADER_SIZE:
                with mmap.mmap(fh.fileno(), seg.size, access=mmap.ACCESS_READ) as mm:
                    end, corrupt, _ = self._index_segment(seg, mm, index, seg.count)
            else:
                end, corrupt = HEADER_SIZE, []
        for rel, offset, span in corrupt:
            log.error("corrupt record ns=%s segment=%s index=%d offset=%d bytes=%d",
                      self.name, seg.path.name, seg.first + rel, offset, span)
        if index.n_records < seg.count:
            log.error("segment lost records ns=%s segment=%s expected=%d found=%d "
                      "unreadable_from=%d", self.name, seg.path.name, seg.count,
                      index.n_records, seg.first + index.n_records)
        elif end < seg.size:
            log.error("segment has unexpected trailing bytes ns=%s segment=%s bytes=%d",
                      self.name, seg.path.name, seg.size - end)
        return index

    def _write_index_file(self, seg: _Segment) -> None:
        """Save a closed segment's index beside it (best effort: it can always be rebuilt)."""
        if self.readonly or seg.index is None:
            return
        ix = seg.index
        arrays = [ix.rel, ix.off, ix.lo, ix.hi, ix.run_max]
        if sys.byteorder != "little":
            arrays = [array("I", a) for a in arrays]
            for a in arrays:
                a.byteswap()
        body = b"".join(a.tobytes() for a in arrays)
        head = _IDX_HEAD.pack(_IDX_MAGIC, _IDX_VERSION, ix.n_blocks, seg.size, ix.n_records,
                              ix.end_offset, ix.seg_min, ix.seg_max, int(ix.monotonic),
                              zlib.crc32(body), 0)
        head = head[:-4] + _U32.pack(zlib.crc32(head[:-4]))
        data = head + body
        if self.codec is not None:  # per-block time ranges are not left in clear either
            data = _IDX_SEALED_MAGIC + self.codec.seal(data, len(data))
        path = seg.idx_path
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("cannot save segment index ns=%s path=%s error=%r", self.name, path, exc)
            try:
                path.unlink()
            except OSError:
                pass

    def _read_index_file(self, seg: _Segment, with_body: bool) -> tuple[tuple, bytes] | None:
        """(header fields, body) of seg's .idx file (body b"" unless with_body), or None if
        it is missing, damaged, stale, or not sealed as this log's are."""
        try:
            with open(seg.idx_path, "rb") as fh:
                if self.codec is None:
                    head = fh.read(_IDX_HEAD.size)
                    rest = None
                else:
                    data = fh.read()
                    if not data.startswith(_IDX_SEALED_MAGIC):
                        return None
                    try:
                        data = self.codec.open(memoryview(data)[len(_IDX_SEALED_MAGIC):],
                                               max(len(data) - len(_IDX_SEALED_MAGIC) - 40, 1))
                    except SealError:
                        return None
                    head, rest = data[:_IDX_HEAD.size], data[_IDX_HEAD.size:]
                if len(head) != _IDX_HEAD.size:
                    return None
                fields = _IDX_HEAD.unpack(head)
                if (fields[0] != _IDX_MAGIC or fields[1] != _IDX_VERSION
                        or fields[10] != zlib.crc32(head[:-4]) or fields[3] != seg.size):
                    return None
                if not with_body:
                    return fields, b""
                body = fh.read(fields[2] * 20) if rest is None else rest
        except FileNotFoundError:
            return None
        return fields, body

    def _load_index_file(self, seg: _Segment) -> SegmentIndex | None:
        found = self._read_index_file(seg, True)
        if found is None:
            return None
        fields, body = found
        n_blocks = fields[2]
        if len(body) != n_blocks * 20 or zlib.crc32(body) != fields[9]:
            return None
        arrays = []
        for k in range(5):
            a = array("I")
            a.frombytes(body[k * n_blocks * 4:(k + 1) * n_blocks * 4])
            if sys.byteorder != "little":
                a.byteswap()
            arrays.append(a)
        n_records, end_offset, seg_min, seg_max, mono = fields[4:9]
        if n_records > seg.count or end_offset > seg.size:
            return None
        return SegmentIndex.restore(*arrays, n_records, end_offset, seg_min, seg_max, bool(mono))

    def _summary(self, seg: _Segment) -> tuple[int, int]:
        """(min, max) xid seconds of a segment, reading at most its index file's header."""
        if seg.index is not None:
            return seg.index.seg_min, seg.index.seg_max
        if seg.summary is None:
            found = self._read_index_file(seg, False)
            if found is not None:
                seg.summary = (found[0][6], found[0][7])
            else:
                index = self._ensure_index(seg)
                seg.summary = (index.seg_min, index.seg_max)
        return seg.summary

    # -- finding ids --------------------------------------------------------------------------
    def find_id(self, event_id: bytes) -> int | None:
        """Index of the record with this id, or None. A free-form id is looked up in the
        id index; for an e_<xid> only blocks whose [min, max] second range holds the id's
        second are read, newest first."""
        return self._find_id(event_id, True)

    def find_id_from_disk(self, event_id: bytes) -> int | None:
        """As `find_id`, from the segment files only: safe in a worker thread while the
        loop thread appends (the cache, which the loop changes, is not touched)."""
        with self._read_mutex:
            return self._find_id(event_id, False)

    def _find_id(self, event_id: bytes, use_cache: bool) -> int | None:
        if not is_xid_id(event_id):
            return self.ids.find(event_id, lambda index: self._read_one(index, use_cache))
        t = xid_seconds(event_id[2:])
        if t < 0:
            return None
        for seg in reversed(self._segments):
            lo, hi = self._summary(seg)
            if lo < 0 or not lo <= t <= hi:
                continue
            index = self._ensure_index(seg)
            for rel0, rel1, off0, off1 in self._runs(seg, index, index.candidates(t)):
                found = self._find_in_run(seg, rel0, rel1, off0, off1, event_id, use_cache)
                if found is not None:
                    return found
        return None

    def find_ids(self, event_ids: list[bytes]) -> set[bytes]:
        """Those of event_ids the log holds. The candidate blocks of all their seconds are
        read once: find_id per id scans a busy second's blocks again for every id of it
        (restoring 100,000 events stamped in one second would take minutes)."""
        if len(event_ids) == 1:  # one id: find_id's scan in C, which stops at the match
            return set(event_ids) if self.find_id(event_ids[0]) is not None else set()
        found = {i for i in event_ids if not is_xid_id(i) and self.find_id(i) is not None}
        seconds = {xid_seconds(i[2:]) for i in event_ids if is_xid_id(i)}
        wanted = set(event_ids)
        for seg in self._segments:
            lo, hi = self._summary(seg)
            here = [t for t in seconds if 0 <= lo <= t <= hi]
            if not here:
                continue
            index = self._ensure_index(seg)
            blocks = sorted({b for t in here for b in index.candidates(t)})
            for rel0, rel1, _, _ in self._runs(seg, index, blocks):
                found |= self._ids_between(seg.first + rel0, seg.first + rel1) & wanted
        return found

    def _ids_between(self, start: int, end: int) -> set[bytes]:
        """The ids of records [start, end), stepping over a corrupt one."""
        return {record[ID_AT:ID_AT + ID_LEN] for record in records_between(
            lambda at: self.read(at, FIND_RUN_BYTES, end - at), start, end, lambda exc: None)}

    def _runs(self, seg: _Segment, index: SegmentIndex, blocks: list[int]):
        """Candidate blocks merged into contiguous runs (one pread each), newest first."""
        run = None
        for b in reversed(blocks):
            rel0, rel1, off0, off1 = index.block(b)
            if rel0 in seg.corrupt:
                continue
            self.blocks_scanned += 1
            if run is not None and run[0] == rel1 and run[3] - off0 <= FIND_RUN_BYTES:
                run = (rel0, run[1], off0, run[3])
                continue
            if run is not None:
                yield run
            run = (rel0, rel1, off0, off1)
        if run is not None:
            yield run

    def _find_in_run(self, seg: _Segment, rel0: int, rel1: int, off0: int, off1: int,
                     event_id: bytes, use_cache: bool = True) -> int | None:
        first = seg.first + rel0
        if use_cache and self._cache and first >= self._cache_first:
            j = first - self._cache_first
            k = find_in_records(self._cache, j, j + rel1 - rel0, event_id, ID_AT)
        else:
            with self._read_mutex:
                buf = _pread_exact(self._read_fd(seg), off1 - off0, off0)
            k = find_record(buf, 0, rel1 - rel0, event_id, ID_AT, self.codec, seg.block_size)
        return first + k if k >= 0 else None

    def _read_one(self, index: int, use_cache: bool = True) -> bytes | None:
        """The record at index; None when the log does not hold it or it is corrupt
        (use_cache=False: from the segment files only, as `read(cache=False)`)."""
        if not self.first_index <= index < self._next:
            return None
        try:
            records = self.read(index, 1, 1, cache=use_cache)
        except CorruptRecordError:
            return None
        return records[0] if records else None

    def first_id(self) -> bytes | None:
        """Id of the oldest retained record (None if empty or unreadable)."""
        if self._first_id is None and self.count:
            try:
                records = self.read(self.first_index, 1 << 16, 1)
            except CorruptRecordError:
                return None
            if records and records[0].startswith(RECORD_PREFIX):
                self._first_id = record_id(records[0])
        return self._first_id

    def is_before_retained(self, event_id: bytes) -> bool:
        """For an id find_id did not find: True if retention has deleted records and the
        id's second is not after the oldest retained record's (ids are only ordered by
        second, so a missing id from that same second was deleted too, most likely)."""
        if self.first_index == 0 or not is_xid_id(event_id):
            return False
        oldest = self.first_id()
        t = xid_seconds(event_id[2:])
        return oldest is not None and is_xid_id(oldest) and 0 <= t <= xid_seconds(oldest[2:])

    # -- retention ------------------------------------------------------------------------------
    def apply_retention(self, now: float) -> int:
        """Delete whole closed segments, oldest first, while the namespace is over
        retention_bytes or the segment's newest record is older than retention_age. Not
        while a read worker is reading (the loop does not wait: the next round deletes)."""
        if not self._read_mutex.acquire(blocking=False):
            return 0
        try:
            return self._delete_expired(now)
        finally:
            self._read_mutex.release()

    def _delete_expired(self, now: float) -> int:
        deleted = 0
        while len(self._segments) > 1:
            seg = self._segments[0]
            expired = (self.retention_bytes is not None and self._bytes > self.retention_bytes)
            if not expired and self.retention_age is not None:
                newest = self._summary(seg)[1]
                if newest < 0:  # no readable id: fall back to the file's time
                    newest = seg.path.stat().st_mtime
                expired = newest < now - self.retention_age
            if not expired:
                break
            self._close_read_fd(seg)
            try:
                seg.path.unlink()
            except OSError as exc:
                log.error("retention cannot delete ns=%s segment=%s error=%r",
                          self.name, seg.path, exc)
                break
            try:
                seg.idx_path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("retention cannot delete index ns=%s path=%s error=%r",
                            self.name, seg.idx_path, exc)
            self._segments.pop(0)
            self._firsts.pop(0)
            self._bytes -= seg.size
            self._first_id = None
            deleted += 1
            log.info("retention deleted segment ns=%s segment=%s records=%d bytes=%d",
                     self.name, seg.path.name, seg.count, seg.size)
        if deleted:
            self.ids.forget_before(self.first_index)
            self._hints = {k: v for k, v in self._hints.items() if k >= self.first_index}
            if self._cache and self._cache_first < self.first_index:
                self._cache_drop(self.first_index - self._cache_first)
        return deleted

    # -- durability --------------------------------------------------------------------------------
    def sync(self) -> None:
        """fsync what was written since the last sync; safe from a worker thread while the
        loop thread appends (it only fsyncs fds; a retired fd is closed here, once synced)."""
        with self._sync_mutex:
            with self._lock:
                files = [f for f in self._files if f.retired or f.write_seq != f.synced_seq]
                dir_dirty, self._dir_dirty = self._dir_dirty, False
            try:
                self._sync_files(files)
                self.ids.sync()
                if dir_dirty:
                    sync_dir(self.dir)
            except OSError as exc:
                if dir_dirty:
                    self._set_dir_dirty()
                raise LogWriteError(f"fsync in {self.dir} failed: {exc.strerror}",
                                    exc.errno) from exc

    def sync_recovered(self) -> None:
        """fsync the open segment after open(): a killed process may have left records
        in the page cache that it never fsynced, and they are about to be served."""
        try:
            os.fsync(self._wfile.fd)
        except OSError as exc:
            raise LogOpenError(f"fsync of {self._wfile.path} failed: {exc.strerror}") from exc

    def _sync_files(self, files: list[_WriteFile]) -> None:
        """fsync these fds, then close those retired and fully synced. Caller holds no lock."""
        for f in files:
            seq = f.write_seq
            os.fsync(f.fd)
            with self._lock:
                f.synced_seq = max(f.synced_seq, seq)
                if f.retired and f.synced_seq == f.write_seq and f in self._files:
                    self._files.remove(f)
                    os.close(f.fd)
                    f.fd = -1

    def close(self) -> None:
        """fsync and close every fd. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._sync_mutex:
            with self._lock:
                files, self._files = self._files, []
                self._wfile = None
            for f in files:
                try:
                    if f.retired or f.synced_seq != f.write_seq:
                        os.fsync(f.fd)
                except OSError as exc:
                    log.error("fsync at close failed ns=%s segment=%s error=%r",
                              self.name, f.path.name, exc)
                os.close(f.fd)
            if self._dir_dirty and not self.readonly and self.dir.is_dir():
                sync_dir(self.dir)
                self._dir_dirty = False
        self.ids.close()
        with self._read_mutex:
            for fd in self._rfds.values():
                os.close(fd)
            self._rfds.clear()

    # -- offline checking ------------------------------------------------------------------------
    def verify(self) -> list[str]:
        """Check every CRC of every segment (and, encrypted, that every block of every
        record opens); one line per problem (empty: all good)."""
        problems: list[str] = []
        for i, seg in enumerate(self._segments):
            closed = i + 1 < len(self._segments)
            with open(seg.path, "rb") as fh:
                problem = self._header_problem(fh.read(HEADER_SIZE))
                if problem:
                    problems.append(f"{seg.path}: {problem}")
                    continue
                size = seg.size
                index = self._new_index()
                if size > HEADER_SIZE:
                    with mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ) as mm:
                        scratch = _Segment(seg.first, seg.path, size, seg.block_size)
                        end, corrupt, torn = self._index_segment(
                            scratch, mm, index, seg.count if closed else -1)
                        unopened = self._unopened(scratch, mm, index.n_records, corrupt)
                else:
                    end, corrupt, torn, unopened = HEADER_SIZE, [], False, []
            for rel, offset, span in corrupt:
                problems.append(f"{seg.path}: corrupt record index={seg.first + rel} "
                                f"offset={offset} bytes={span}")
            for rel, offset in unopened:
                problems.append(f"{seg.path}: record index={seg.first + rel} offset={offset} "
                                f"does not open (ciphertext damaged or tampered with)")
            if torn:
                problems.append(f"{seg.path}: torn tail offset={end} bytes={size - end}")
            expected = seg.count if closed else seg.index.n_records
            if index.n_records != expected:
                problems.append(f"{seg.path}: {index.n_records} records found, {expected} "
                                f"expected (indexes {seg.first + index.n_records}.."
                                f"{seg.first + expected - 1} unreadable)")
            elif closed and end != size:
                problems.append(f"{seg.path}: {size - end} unexpected bytes after the last "
                                f"record")
        return problems

    def _unopened(self, seg: _Segment, buf, n_records: int,
                  corrupt: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
        """(rel, offset) of crc-valid records of an encrypted segment that do not open in
        full (indexing opens only first blocks); [] for a plain log."""
        if self.codec is None:
            return []
        bad = {rel: offset + span for rel, offset, span in corrupt}
        out: list[tuple[int, int]] = []
        rel, off = 0, HEADER_SIZE
        while rel < n_records:
            if rel in bad:
                off = bad[rel]
                rel += 1
                continue
            stop = min((r for r in bad if r > rel), default=n_records)
            while rel < stop:
                want = min(stop - rel, 4096)
                _, off, n, status = self._scan(seg, buf, off, want)
                rel += n
                if n < want:
                    if status != CORRUPT:  # cannot happen: indexing followed these frames
                        return out
                    out.append((rel, off))
                    off += 8 + _U32.unpack_from(buf, off)[0]
                    rel += 1
        return out


def _next_valid_frame(buf, offset: int, size: int, codec: Codec | None = None,
                      block_size: int = 0) -> int | None:
    """Where valid data resumes after the bad frame at offset, or None (a torn tail).

    If the bad frame's length is plausible and a crc-valid frame is reachable by following
    lengths from its end, it is one corrupt record and the next frame starts right after it.
    Otherwise its length itself is damaged: resync on the next whole frame whose body starts
    like a record (then the damaged span counts as one record). Encrypted bodies start with
    a random nonce, so there the next frame is the next one whose first block opens.
    A crc-valid frame that was bad (it did not open) is one corrupt record even at the end."""
    if size - offset >= 8:
        length = _U32.unpack_from(buf, offset)[0]
        if 0 < length <= MAX_BODY and offset + 8 + length <= size:
            q = start = offset + 8 + length
            if codec is not None and frame_ok(buf, offset):
                return start
            while size - q >= 8:
                n = _U32.unpack_from(buf, q)[0]
                if not (0 < n <= MAX_BODY and q + 8 + n <= size):
                    break
                if frame_ok(buf, q):
                    return start
                q += 8 + n
    if codec is not None:
        q = codec.resync(buf, offset, block_size)
        return q if q >= 0 else None
    pos = offset + 9
    while True:
        c = buf.find(RECORD_PREFIX, pos)
        if c < 0:
            return None
        if frame_ok(buf, c - 8):
            return c - 8
        pos = c + 1


class _Records:
    """What a read makes of the records it finds: the records (`read`)."""

    @staticmethod
    def of_records(records: list[bytes]) -> list[bytes]:
        return records

    @staticmethod
    def of_frames(nslog: NamespaceLog, seg: _Segment, buf, limit: int):
        return nslog._scan(seg, buf, 0, limit)


class _Sse:
    """What a read makes of the records it finds: their SSE chunk (`read_sse`)."""

    __slots__ = ("pattern",)

    def __init__(self, pattern: Pattern | None) -> None:
        self.pattern = pattern

    def of_records(self, records: list[bytes]) -> tuple[bytes, int, int]:
        return (*sse_of(records, self.pattern), len(records))

    def of_frames(self, nslog: NamespaceLog, seg: _Segment, buf, limit: int):
        chunk, end, n, matched, status = sse_from_frames(buf, 0, limit, self.pattern,
                                                         nslog.codec, seg.block_size)
        return (chunk, matched, n), end, n, status
