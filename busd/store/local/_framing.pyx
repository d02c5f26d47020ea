# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Segment-file framing: frames and CRCs, frame scanning, SSE straight from frames, xid
seconds, the sparse index.

These are the per-record loops of the log (busd/store/local/log.py), kept in C because they run once
per stored or served event. Everything that is not a per-record loop stays in log.py.

Frame layout (after the 16-byte segment header): u32 LE body length, u32 LE zlib crc32
of the body, body. A length of 0 or above MAX_BODY is impossible (a zero-filled tail
would otherwise parse as valid empty records, since crc32(b"") == 0). The last frame of
each batch framed (one write) stores its crc32's complement: a write end (_frame.pxd).
"""

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_Check
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.list cimport PyList_New, PyList_SET_ITEM, PyList_GET_SIZE, PyList_GET_ITEM, PyList_Append
from cpython.ref cimport Py_INCREF, PyObject
from cpython cimport array
from libc.string cimport memcpy, memcmp
from libc.stdint cimport uint32_t
from libc.stdlib cimport malloc, free

from busd._core cimport (
    ID_AT,
    ID_END,
    ID_LEN,
    SSE_OVERHEAD,
    XID_AT,
    Pattern,
    _chunk_size,
    _id_end,
    _put_chunk_head,
    _put_sse,
    _subject_end,
    _xid_sec,
)
from busd.store.local._crypto cimport (
    C_TAG,
    Codec,
    _blocks,
    _check_block_size,
    _plain_size,
    sealed_record_size,
)

import array as _array_mod

from busd.store.local._frame cimport (
    FRAME_CORRUPT,
    FRAME_HEAD,
    FRAME_MAX_BODY,
    FRAME_OK,
    FRAME_TRUNCATED,
    _crc_fits,
    _frame_at,
    _rd32,
    _wr32,
    crc32_folds as crc32_folds_c,
    frame_crc32,
)

MAGIC = b"BUSDSEG1"
HEADER_SIZE = 16
FRAME_OVERHEAD = FRAME_HEAD
MAX_BODY = FRAME_MAX_BODY

cdef const uint32_t NO_SEC_LO = 0xFFFFFFFF  # an enum cannot hold it: C enums are int

# status codes of scan_frames / SegmentIndex.scan
OK = FRAME_OK
TRUNCATED = FRAME_TRUNCATED
CORRUPT = FRAME_CORRUPT


def xid_seconds(xid) -> int:
    """Unix seconds of a 20-char xid (bytes or str; only the first 7 chars are read); -1 if invalid."""
    cdef bytes b = xid.encode("ascii", "replace") if isinstance(xid, str) else bytes(xid)
    if PyBytes_GET_SIZE(b) < 7:
        return -1
    return _xid_sec(<const unsigned char*>PyBytes_AS_STRING(b))


cdef inline long long _record_sec(const unsigned char* body, Py_ssize_t n) noexcept nogil:
    """Seconds of a record's id, -1 when it has none (a free-form id: busd.wire.is_xid_id;
    those never start with e_)."""
    if n < ID_END or body[ID_AT] != c'e' or body[ID_AT + 1] != c'_':
        return -1
    return _xid_sec(body + XID_AT)


cdef unsigned char* _scratch(Codec codec, Py_ssize_t block_size) except? NULL:
    """A buffer for one opened block (NULL when there is no codec)."""
    cdef unsigned char* p
    if codec is None:
        return NULL
    if block_size < 1:
        raise ValueError("a codec needs the segment's block size")
    p = <unsigned char*>malloc(block_size)
    if p == NULL:
        raise MemoryError()
    return p


def crc32_folds() -> bool:
    """Whether the frames' crc32 runs folded (PCLMULQDQ) on this CPU, not zlib's."""
    return crc32_folds_c() != 0


cpdef bytes frame_records(list records, Codec codec=None, Py_ssize_t block_size=0,
                          nonces=None):
    """All records framed (length, crc32, body) into one new bytes object, written with one
    write(2): the last frame's crc is complemented, marking the write's end. With a codec
    each body is the record sealed in blocks of block_size (id tag + blob), with random
    nonces or, for tests, the 24 bytes a block of `nonces`."""
    cdef Py_ssize_t n = PyList_GET_SIZE(records), i, total = 0, blocks = 0, size, body
    cdef object r
    if codec is not None:
        _check_block_size(block_size)
    for i in range(n):
        r = <object>PyList_GET_ITEM(records, i)
        if not PyBytes_Check(r):
            raise TypeError(f"record {i} is {type(r).__name__}, not bytes")
        size = PyBytes_GET_SIZE(r)
        if codec is None:
            if size == 0 or size > FRAME_MAX_BODY:
                raise ValueError(
                    f"record {i} has {size} bytes; a record has 1..{FRAME_MAX_BODY} bytes")
            total += FRAME_HEAD + size
        else:
            if size == 0 or sealed_record_size(size, block_size) > FRAME_MAX_BODY:
                raise ValueError(f"record {i} has {size} bytes; out of range")
            blocks += _blocks(size, block_size)
            total += FRAME_HEAD + sealed_record_size(size, block_size)
    cdef bytes nb = codec._nonces(blocks, nonces) if codec is not None else None
    cdef unsigned char* np = <unsigned char*>PyBytes_AS_STRING(nb) if nb is not None else NULL
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef unsigned char* dst = <unsigned char*>PyBytes_AS_STRING(out)
    cdef const unsigned char* src
    cdef unsigned char* last = NULL
    for i in range(n):
        r = <object>PyList_GET_ITEM(records, i)
        size = PyBytes_GET_SIZE(r)
        src = <const unsigned char*>PyBytes_AS_STRING(r)
        last = dst
        if codec is None:
            _wr32(dst, <uint32_t>size)
            _wr32(dst + 4, frame_crc32(0, src, size))
            memcpy(dst + FRAME_HEAD, src, size)
            dst += FRAME_HEAD + size
        else:
            body = sealed_record_size(size, block_size)
            np = codec._seal_body(src, size, block_size, dst + FRAME_HEAD, np)
            _wr32(dst, <uint32_t>body)
            _wr32(dst + 4, frame_crc32(0, dst + FRAME_HEAD, body))
            dst += FRAME_HEAD + body
    if last != NULL:
        _wr32(last + 4, ~_rd32(last + 4))
    return out


def scan_frames(buffer, Py_ssize_t offset, Py_ssize_t max_records, bint want_records=True,
                bint check_crc=True, Codec codec=None, Py_ssize_t block_size=0):
    """Walk frames from offset: (records or None, end_offset, n_records, status).

    status 0: stopped at the exact end of the buffer or after max_records (< 0: no limit);
    1: an incomplete frame starts at end_offset; 2: the frame at end_offset is corrupt
    (crc mismatch or impossible length). With check_crc=False only lengths are followed
    (used to skip to a position inside an index block). With a codec the bodies are sealed
    records, opened into the records returned: one that does not open (or whose id tag
    does not match) is corrupt too.
    """
    if codec is not None:
        _check_block_size(block_size)
    cdef Py_buffer view
    PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
    cdef const unsigned char* buf = <const unsigned char*>view.buf
    cdef Py_ssize_t size = view.len, off = offset, n = 0, blen = 0
    cdef int status = 0
    cdef list records = [] if want_records else None
    cdef bytes rec
    try:
        if off < 0 or off > size:
            raise ValueError(f"offset {offset} outside buffer of {size} bytes")
        while max_records < 0 or n < max_records:
            if off == size:
                break
            status = _frame_at(buf, size, off, check_crc, &blen, NULL)
            if status:
                break
            if codec is not None:
                rec = codec._open_body(buf + off + FRAME_HEAD, blen, block_size)
                if rec is None:
                    status = FRAME_CORRUPT
                    break
                if want_records:
                    records.append(rec)
            elif want_records:
                rec = PyBytes_FromStringAndSize(<const char*>buf + off + FRAME_HEAD, blen)
                records.append(rec)
            off += FRAME_HEAD + blen
            n += 1
    finally:
        PyBuffer_Release(&view)
    return records, off, n, status


cdef struct _Span:
    const unsigned char* rec  # the record (in the read buffer, or opened into the arena)
    Py_ssize_t n              # its bytes
    Py_ssize_t body           # its frame's body bytes
    Py_ssize_t frame          # offset of its frame in the read buffer
    Py_ssize_t id_end         # where its id ends (_id_end), or -1: not served


def sse_from_frames(buffer, Py_ssize_t offset, Py_ssize_t max_records, Pattern pattern=None,
                    Codec codec=None, Py_ssize_t block_size=0):
    """Walk frames from offset as scan_frames does and write the SSE messages of their
    records (only those whose subject matches pattern, if one is given) as one HTTP chunk,
    copied once from the buffer (busd._core.sse_frame writes the same chunk from a list of
    records; busd._core.sse_frame_matching when a pattern is given): (chunk or b"",
    end_offset, n_records, n_matched, status).

    With a codec, the records are opened first into one scratch arena, without the GIL, so
    the loop thread runs while a read worker deciphers. A crc-valid frame that holds no
    record (no id; no subject, when a pattern is given) or does not open stops the walk as corrupt, as a bad crc
    does: status 2 with end_offset at that frame, the records before it served."""
    if codec is not None:
        _check_block_size(block_size)
    cdef Py_buffer view
    PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
    cdef const unsigned char* buf = <const unsigned char*>view.buf
    cdef Py_ssize_t size = view.len, off = offset, n = 0, blen = 0, cap = 0, i, plain = 0
    cdef Py_ssize_t text = 0, matched = 0, arena_bytes = 0, subject = 0, subject_end
    cdef int status = FRAME_OK
    cdef _Span* spans = NULL
    cdef unsigned char* arena = NULL
    cdef unsigned char* w
    cdef char* o
    cdef bytes out
    try:
        if off < 0 or off > size:
            raise ValueError(f"offset {offset} outside buffer of {size} bytes")
        cap = (size - off) // (FRAME_HEAD + 1) + 1
        if 0 <= max_records < cap:
            cap = max_records
        spans = <_Span*>malloc(cap * sizeof(_Span) + 1)
        if spans == NULL:
            raise MemoryError()
        with nogil:  # the frames: lengths and crcs
            while n < cap and off < size:
                status = _frame_at(buf, size, off, True, &blen, NULL)
                if status:
                    break
                if codec is not None:
                    plain = _plain_size(blen - C_TAG, block_size)
                    if plain < 1:
                        status = FRAME_CORRUPT
                        break
                    arena_bytes += plain
                spans[n].rec = buf + off + FRAME_HEAD
                spans[n].n = blen if codec is None else plain
                spans[n].body = blen
                spans[n].frame = off
                off += FRAME_HEAD + blen
                n += 1
        if codec is not None and n:
            arena = <unsigned char*>malloc(arena_bytes)
            if arena == NULL:
                raise MemoryError()
            with nogil:  # the cipher, the costly part
                w = arena
                for i in range(n):
                    if codec._open_record(spans[i].rec, spans[i].body, block_size, w) != 0:
                        n, off, status = i, spans[i].frame, FRAME_CORRUPT
                        break
                    spans[i].rec = w
                    w += spans[i].n
        for i in range(n):  # ids, subjects and the pattern
            spans[i].id_end = _id_end(<const char*>spans[i].rec, spans[i].n)
            if spans[i].id_end < 0:
                n, off, status = i, spans[i].frame, FRAME_CORRUPT
                break
            if pattern is not None:
                subject_end = _subject_end(<const char*>spans[i].rec, spans[i].n, &subject)
                if subject_end < 0:
                    n, off, status = i, spans[i].frame, FRAME_CORRUPT
                    break
                if not pattern._matches(spans[i].rec + subject, subject_end - subject):
                    spans[i].id_end = -1
                    continue
            text += SSE_OVERHEAD + spans[i].id_end - ID_AT + spans[i].n
            matched += 1
        if matched == 0:
            return EMPTY_BYTES, off, n, 0, status
        out = PyBytes_FromStringAndSize(NULL, _chunk_size(text))
        o = PyBytes_AS_STRING(out)
        with nogil:
            o = _put_chunk_head(o, text)
            for i in range(n):
                if spans[i].id_end >= 0:
                    o = _put_sse(o, <const char*>spans[i].rec, spans[i].n, spans[i].id_end)
            o[0] = c'\r'
            o[1] = c'\n'
        return out, off, n, matched, status
    finally:
        PyBuffer_Release(&view)
        free(spans)
        free(arena)


cdef bytes EMPTY_BYTES = b""


def find_record(buffer, Py_ssize_t offset, Py_ssize_t max_records, bytes needle, Py_ssize_t at,
                Codec codec=None, Py_ssize_t block_size=0):
    """Ordinal (from offset) of the first whole, crc-valid frame whose body[at:] starts
    with needle, or -1. Stops at the end, after max_records, or at a frame it cannot follow.
    With a codec the bodies are sealed records, and the needle an event id at ID_AT: their
    id tags are compared, and a match is confirmed by opening its first block."""
    cdef bytes tag = None
    if codec is not None:
        if PyBytes_GET_SIZE(needle) != ID_LEN or at != ID_AT:
            raise ValueError(f"sealed records are found by event id ({ID_LEN} bytes at offset "
                             f"{ID_AT})")
        tag = codec.id_tag(needle)
    cdef unsigned char* scratch = _scratch(codec, block_size)
    cdef Py_buffer view
    PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
    cdef const unsigned char* buf = <const unsigned char*>view.buf
    cdef Py_ssize_t size = view.len, off = offset, n = 0, blen = 0, nlen = PyBytes_GET_SIZE(needle)
    cdef const unsigned char* nd = <const unsigned char*>PyBytes_AS_STRING(needle)
    cdef const unsigned char* body
    cdef uint32_t length
    try:
        while (max_records < 0 or n < max_records) and size - off >= FRAME_HEAD:
            length = _rd32(buf + off)
            if (length == 0 or length > FRAME_MAX_BODY
                    or <Py_ssize_t>length > size - off - FRAME_HEAD):
                break
            blen = length
            body = buf + off + FRAME_HEAD
            if scratch != NULL:
                if (blen > C_TAG and memcmp(body, PyBytes_AS_STRING(tag), C_TAG) == 0
                        and codec.open_head(body, blen, block_size, scratch) >= at + nlen
                        and memcmp(scratch + at, nd, nlen) == 0
                        and _crc_fits(frame_crc32(0, body, length), _rd32(buf + off + 4))):
                    return n
            elif blen >= at + nlen and memcmp(body + at, nd, nlen) == 0:
                if _crc_fits(frame_crc32(0, body, length), _rd32(buf + off + 4)):
                    return n
            off += FRAME_HEAD + blen
            n += 1
    finally:
        PyBuffer_Release(&view)
        free(scratch)
    return -1


def find_in_records(list records, Py_ssize_t start, Py_ssize_t stop, bytes needle,
                    Py_ssize_t at):
    """Position (from start) of the first of records[start:stop] whose [at:] starts with
    needle, or -1 (the in-memory twin of find_record)."""
    cdef Py_ssize_t i, nlen = PyBytes_GET_SIZE(needle)
    cdef const char* nd = PyBytes_AS_STRING(needle)
    cdef object r
    if stop > PyList_GET_SIZE(records):
        stop = PyList_GET_SIZE(records)
    for i in range(max(start, 0), stop):
        r = <object>PyList_GET_ITEM(records, i)
        if PyBytes_GET_SIZE(r) >= at + nlen and memcmp(PyBytes_AS_STRING(r) + at, nd, nlen) == 0:
            return i - start
    return -1


def frame_ok(buffer, Py_ssize_t offset) -> int:
    """Body length of a whole, crc-valid frame at offset, else 0 (for corruption resync)."""
    cdef Py_buffer view
    PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
    cdef Py_ssize_t blen = 0
    cdef int st
    try:
        if offset < 0 or offset > view.len:
            return 0
        st = _frame_at(<const unsigned char*>view.buf, view.len, offset, True, &blen, NULL)
    finally:
        PyBuffer_Release(&view)
    return blen if st == 0 else 0


def append_ends(array.array ends not None, list records not None, long long total):
    """Append to `ends`, an array('q'), each record's end counted on from `total` (as
    accumulate(map(len, records), initial=total) without its first), and return the last:
    the recent-records cache keeps one per stored record."""
    cdef Py_ssize_t i, n = PyList_GET_SIZE(records), base = len(ends)
    cdef object rec
    if ends.ob_descr.typecode != c'q':
        raise TypeError("append_ends needs an array('q')")
    for i in range(n):
        if type(<object>PyList_GET_ITEM(records, i)) is not bytes:
            raise TypeError("append_ends takes a list of bytes")
    array.resize_smart(ends, base + n)
    for i in range(n):
        rec = <object>PyList_GET_ITEM(records, i)
        total += PyBytes_GET_SIZE(rec)
        ends.data.as_longlongs[base + i] = total
    return total


cdef array.array _UINT_TEMPLATE = _array_mod.array("I")


cdef inline void _push(array.array a, uint32_t v):
    cdef Py_ssize_t n = len(a)
    array.resize_smart(a, n + 1)
    a.data.as_uints[n] = v


cdef class SegmentIndex:
    """Sparse index of one segment: an entry every `every_records` records or `every_bytes`
    bytes, holding (relative index, byte offset, min and max xid-second of the block, running
    max second). Five u32 arrays: 20 bytes per block, ~0.3 bytes per 200-byte event.

    `run_max` is non-decreasing whatever the id order, so bisecting it skips every block
    that cannot hold a given second; `monotonic` (no record older than any earlier block)
    lets the search also stop at the first block that starts after that second.
    """

    def __init__(self, Py_ssize_t start_offset=HEADER_SIZE, Py_ssize_t every_records=64,
                 Py_ssize_t every_bytes=65536):
        self.rel = array.clone(_UINT_TEMPLATE, 0, False)
        self.off = array.clone(_UINT_TEMPLATE, 0, False)
        self.lo = array.clone(_UINT_TEMPLATE, 0, False)
        self.hi = array.clone(_UINT_TEMPLATE, 0, False)
        self.run_max = array.clone(_UINT_TEMPLATE, 0, False)
        self.n_records = 0
        self.end_offset = start_offset
        self.write_end_records = 0
        self.write_end_offset = start_offset
        self.every_records = every_records
        self.every_bytes = every_bytes
        self.seg_min = -1
        self.seg_max = -1
        self.monotonic = True
        self.cur_n = 0
        self.cur_bytes = 0
        self.force_new = True

    @property
    def n_blocks(self) -> int:
        return len(self.rel)

    @property
    def nbytes(self) -> int:
        return 5 * 4 * len(self.rel)

    cdef void _add(self, long long sec, Py_ssize_t frame_len):
        cdef Py_ssize_t nb = len(self.rel), b
        cdef uint32_t prev_max
        if self.force_new or self.cur_n >= self.every_records or self.cur_bytes >= self.every_bytes:
            prev_max = self.run_max.data.as_uints[nb - 1] if nb else 0
            _push(self.rel, <uint32_t>self.n_records)
            _push(self.off, <uint32_t>self.end_offset)
            _push(self.lo, NO_SEC_LO)
            _push(self.hi, 0)
            _push(self.run_max, prev_max)
            nb += 1
            self.cur_n = 0
            self.cur_bytes = 0
            self.force_new = False
        b = nb - 1
        if sec >= 0:
            if sec < self.lo.data.as_uints[b]:
                self.lo.data.as_uints[b] = <uint32_t>sec
            if sec > self.hi.data.as_uints[b]:
                self.hi.data.as_uints[b] = <uint32_t>sec
            if b > 0 and sec < self.run_max.data.as_uints[b - 1]:
                self.monotonic = False
            if sec > self.run_max.data.as_uints[b]:
                self.run_max.data.as_uints[b] = <uint32_t>sec
            if self.seg_min < 0 or sec < self.seg_min:
                self.seg_min = sec
            if sec > self.seg_max:
                self.seg_max = sec
        self.cur_n += 1
        self.cur_bytes += frame_len
        self.n_records += 1
        self.end_offset += frame_len

    cpdef add_records(self, list records, Py_ssize_t block_size=0):
        """Index a batch just appended at end_offset (records already framed and written).
        block_size > 0: the records are plaintexts that were written sealed in blocks of
        that size (busd/store/local/_crypto.pyx), so their frames are larger than they are."""
        cdef Py_ssize_t i, n = PyList_GET_SIZE(records), size
        cdef object r
        for i in range(n):
            r = <object>PyList_GET_ITEM(records, i)
            size = PyBytes_GET_SIZE(r)
            self._add(_record_sec(<const unsigned char*>PyBytes_AS_STRING(r), size),
                      (sealed_record_size(size, block_size) if block_size > 0 else size)
                      + FRAME_HEAD)
        if n:  # the batch was one write
            self.write_end_records = self.n_records
            self.write_end_offset = self.end_offset

    def add_corrupt(self, Py_ssize_t span):
        """Count a corrupt record of `span` bytes at end_offset: it gets a block of its own, so
        positioning never has to step over it and find never reads it."""
        self.force_new = True
        self._add(-1, span)
        self.force_new = True

    def scan(self, buffer, Py_ssize_t max_records=-1, Codec codec=None,
             Py_ssize_t block_size=0):
        """Index crc-valid frames from end_offset: (n_indexed, status) as in scan_frames.
        With a codec, frames are sealed records: each one's first block is opened for its
        id's second, and one that does not open is status 2 (corrupt). A frame that ends
        a write moves write_end_records / write_end_offset to its end."""
        cdef unsigned char* scratch = _scratch(codec, block_size)
        cdef Py_buffer view
        PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
        cdef const unsigned char* buf = <const unsigned char*>view.buf
        cdef Py_ssize_t size = view.len, n = 0, blen = 0
        cdef int status = 0, head
        cdef bint write_end = False
        try:
            if self.end_offset > size:
                raise ValueError(f"index end {self.end_offset} beyond buffer of {size} bytes")
            while max_records < 0 or n < max_records:
                if self.end_offset == size:
                    break
                status = _frame_at(buf, size, self.end_offset, True, &blen, &write_end)
                if status:
                    break
                if scratch != NULL:
                    head = codec.open_head(buf + self.end_offset + FRAME_HEAD, blen, block_size,
                                           scratch)
                    if head < 0:
                        status = FRAME_CORRUPT
                        break
                    self._add(_record_sec(scratch, head), FRAME_HEAD + blen)
                else:
                    self._add(_record_sec(buf + self.end_offset + FRAME_HEAD, blen),
                              FRAME_HEAD + blen)
                if write_end:
                    self.write_end_records = self.n_records
                    self.write_end_offset = self.end_offset
                n += 1
        finally:
            PyBuffer_Release(&view)
            free(scratch)
        return n, status

    def locate(self, Py_ssize_t rel):
        """(block, block's first relative index, block's byte offset) of the block holding rel."""
        cdef Py_ssize_t lo = 0, hi = len(self.rel), mid
        cdef uint32_t* r = self.rel.data.as_uints
        if hi == 0 or rel < 0 or rel >= self.n_records:
            raise IndexError(rel)
        while hi - lo > 1:
            mid = (lo + hi) >> 1
            if r[mid] <= rel:
                lo = mid
            else:
                hi = mid
        return lo, r[lo], self.off.data.as_uints[lo]

    def block(self, Py_ssize_t b):
        """(first rel index, end rel index, start offset, end offset) of block b."""
        cdef Py_ssize_t nb = len(self.rel)
        if b < 0 or b >= nb:
            raise IndexError(b)
        if b + 1 < nb:
            return (self.rel.data.as_uints[b], self.rel.data.as_uints[b + 1],
                    self.off.data.as_uints[b], self.off.data.as_uints[b + 1])
        return self.rel.data.as_uints[b], self.n_records, self.off.data.as_uints[b], self.end_offset

    def candidates(self, long long sec) -> list:
        """Blocks whose [min, max] second range contains sec, oldest first."""
        cdef list out = []
        cdef Py_ssize_t nb = len(self.rel), lo = 0, hi = nb, mid, b
        cdef uint32_t* rm = self.run_max.data.as_uints
        cdef uint32_t* blo = self.lo.data.as_uints
        cdef uint32_t* bhi = self.hi.data.as_uints
        if sec < 0 or sec > 0xFFFFFFFF or nb == 0:
            return out
        while lo < hi:  # first block whose running max reaches sec
            mid = (lo + hi) >> 1
            if rm[mid] < sec:
                lo = mid + 1
            else:
                hi = mid
        for b in range(lo, nb):
            if blo[b] <= sec <= bhi[b]:
                out.append(b)
            elif self.monotonic and blo[b] > sec and blo[b] != NO_SEC_LO:
                break
        return out

    @staticmethod
    def restore(rel, off, lo, hi, run_max, Py_ssize_t n_records, Py_ssize_t end_offset,
                long long seg_min, long long seg_max, bint monotonic):
        """An index rebuilt from saved arrays (a closed segment's .idx file); append-only after."""
        cdef SegmentIndex ix = SegmentIndex()
        ix.rel, ix.off, ix.lo, ix.hi, ix.run_max = rel, off, lo, hi, run_max
        ix.n_records = n_records
        ix.end_offset = end_offset
        ix.write_end_records = n_records  # a closed segment's records are all whole writes
        ix.write_end_offset = end_offset
        ix.seg_min = seg_min
        ix.seg_max = seg_max
        ix.monotonic = monotonic
        ix.force_new = True
        return ix
