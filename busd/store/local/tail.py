# cython: annotation_typing=False, nonecheck=True
# cython: wraparound=True, boundscheck=True, cdivision=False
"""The appending end of a namespace log, compiled (setup.py, with tail.pxd): what every
group commit runs through — the batch framed, written with one write(2), indexed, and kept
in the recent-records cache — and the segment and write-file records it updates.

NamespaceLog (log.py) is a Python subclass of LogTail and keeps everything else: open and
recovery, rolls, reads from the files, retention, sync. Why the split: a publish on an idle
server is one record per commit, and as Python the append was a third of that publish's
instructions (perf/RESULTS.md); compiled as it was written it got slower, because a
compiled module reads a plain object's attributes through the generic lookup, which the
interpreter's specialised bytecode beats. Typed classes make them struct fields.

Uncompiled, this file is the oracle of tests/store/test_tail_compiled.py."""

from __future__ import annotations

import bisect
import errno
import os
from array import array
from pathlib import Path

from busd.store.errors import LogWriteError
from busd.store.local._framing import append_ends, frame_records

INDEX_SUFFIX = ".idx"
MAX_BATCH_BYTES = 1 << 31  # index offsets are u32


class _Segment:
    """One segment file: where it starts, its size, and (once loaded) its sparse index."""

    def __init__(self, first: int, path: Path, size: int, block_size: int = 0) -> None:
        self.block_size = block_size  # encrypted: the block size its records are sealed in
        self.first = first
        self.path = path
        self.size = size  # bytes of whole records (the open segment: the write position)
        self.count = 0  # trusted record count (the open one: its index's count)
        self.index = None  # its SegmentIndex, once loaded
        self.corrupt: dict[int, int] = {}  # relative index -> offset of known corrupt records
        self.summary: tuple[int, int] | None = None  # (min, max) xid seconds, -1 if none
        # all of it written by this process and none found missing from the page cache:
        # the loop may read it (nowait). A segment from before, or one the page cache has
        # lost part of, is read by the workers: those reads start the kernel's readahead,
        # which (8 MiB a window on some machines) takes milliseconds to set off.
        self.cached = False

    @property
    def idx_path(self) -> Path:
        return self.path.with_suffix(INDEX_SUFFIX)


class _WriteFile:
    """A segment fd opened for appending, with its write/sync generations."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path
        self.write_seq = 0
        self.synced_seq = 0
        self.retired = False


def _write_all(fd: int, data: bytes) -> None:
    """One os.write, looping only on short writes."""
    size = len(data)
    written = os.write(fd, data)
    if written < size:
        view = memoryview(data)
        while written < size:
            n = os.write(fd, view[written:])
            if n <= 0:
                raise OSError(errno.EIO, "write made no progress")
            written += n


class LogTail:
    """The state an append touches, and the append. NamespaceLog sets every attribute in
    its __init__ and provides the methods this calls on the cold paths (_settle_truncate,
    _roll, _undo_write).

    Recent records: _cache[i] is index _cache_first + i, _cache_ends[i] its cumulative end
    in bytes, _cache_base the cumulative end before _cache[0]."""

    def append(self, records: list[bytes], free_ids: bool = True) -> int:
        """Append a batch with one write(2); returns the index of its first record.
        free_ids=False: the caller knows no record has a free-form id (the server's
        publishes without supplied ids), so the id index need not look."""
        n = len(records)
        if not n:
            return self._next
        if self._wfile is None:
            raise LogWriteError(f"namespace log {self.name} is not open for writing")
        if self._pending_truncate is not None:  # before any roll: it belongs to its own file
            self._settle_truncate()
        seg = self._segments[len(self._segments) - 1]
        data = frame_records(records, self.codec, seg.block_size)
        size = len(data)
        if size > MAX_BATCH_BYTES:
            raise LogWriteError(f"batch of {size} bytes is larger than {MAX_BATCH_BYTES}")
        if seg.index.n_records and seg.size + size > self.segment_bytes:
            block_size = seg.block_size
            self._roll()
            seg = self._segments[len(self._segments) - 1]
            if seg.block_size != block_size:  # --block-size changed: new segments use it
                data = frame_records(records, self.codec, seg.block_size)
                size = len(data)
        if free_ids:
            self.ids.add(self._next, records)  # before the records: none goes unindexed
        wf = self._wfile
        before = seg.size
        try:
            _write_all(wf.fd, data)
        except OSError as exc:
            self._undo_write(wf, before, exc)
        seg.index.add_records(records, seg.block_size)
        seg.size = before + size
        seg.count += n
        wf.write_seq += 1
        first = self._next
        self._next = first + n
        self._bytes += size
        if self.cache_bytes > 0:
            self._cache_add(first, records)
        return first

    def _cache_add(self, first: int, records: list[bytes]) -> None:
        if not self._cache:
            self._cache_first = first
            self._cache_base = self._cache_total
        elif self._cache_first + len(self._cache) != first:  # not contiguous: start again
            self._cache_clear()
            self._cache_first = first
        self._cache.extend(records)
        self._cache_total = append_ends(self._cache_ends, records, self._cache_total)
        if self._cache_total - self._cache_base > self.cache_bytes + (self.cache_bytes >> 2):
            k = bisect.bisect_right(self._cache_ends, self._cache_total - self.cache_bytes)
            if k:
                self._cache_drop(k)

    def _cache_drop(self, k: int) -> None:
        """Forget the cache's first k records (0 < k <= len(_cache)): trimmed to
        cache_bytes, or deleted by retention."""
        self._cache_base = self._cache_ends[k - 1]
        del self._cache[:k]
        del self._cache_ends[:k]
        self._cache_first += k

    def _cache_fill(self, first: int, records: list[bytes]) -> None:
        """The cache holds `records` and nothing else, the first at index `first` (what
        recovery finds at the open segment's end)."""
        self._cache = records
        self._cache_first = first
        self._cache_base = 0
        self._cache_ends = array("q")
        self._cache_total = append_ends(self._cache_ends, records, 0)

    def _cache_clear(self) -> None:
        self._cache = []
        self._cache_ends = array("q")
        self._cache_base = self._cache_total
        self._cache_first = self._next

    def _cache_read(self, start: int, max_bytes: int, max_records: int) -> list[bytes]:
        j = start - self._cache_first
        base = self._cache_ends[j - 1] if j else self._cache_base
        k = bisect.bisect_right(self._cache_ends, base + max_bytes, j)
        k = max(k, j + 1)
        if k - j > max_records:
            k = j + max_records
        return self._cache[j:k]
