# Declarations of busd._core for the other Cython modules to cimport: its extension types,
# and the wire facts every module reads records and xids by.

cimport cython
from libc.stdint cimport uint32_t
from libc.string cimport memchr, memcpy

# A stored record is one JSON object that starts with its id, then its subject (make_record):
#     {"id":"<event id>","subject":"<subject>",...}
# An id holds no '"' (busd.wire.id_problem): it runs from ID_AT to the next '"', the subject
# from 13 bytes later to the next '"'. busd's own ids are b"e_" + an xid, ID_LEN bytes.
# busd/wire.py declares the same offsets for Python; tests/test_wire.py checks that the two
# agree.
cdef enum:
    ID_AT = 7                   # the event id starts here
    ID_LEN = 22                 # of busd's own ids, b"e_" + an xid
    ID_END = ID_AT + ID_LEN     # where busd's own ids end
    XID_LEN = 20
    XID_AT = ID_END - XID_LEN   # record[XID_AT:ID_END] is the xid of busd's own ids
    SUBJECT_AT = ID_END + 13    # where the subject starts after busd's own ids
    MAX_ID_BYTES = 128          # of a free-form id
    SUBJECT_AFTER_ID = 13       # len('","subject":"')


cdef inline Py_ssize_t _id_end(const char* r, Py_ssize_t n) noexcept nogil:
    """Where the id of record r[:n] ends (the '"' after it), or -1 when it is no record.
    busd's own ids (e_ + an xid: no other id starts with e_) are seen at once."""
    cdef const void* q
    cdef Py_ssize_t room = n - ID_AT
    if room > ID_LEN and r[ID_END] == c'"' and r[ID_AT] == c'e' and r[ID_AT + 1] == c'_':
        return ID_END
    if room <= 1:
        return -1
    if room > MAX_ID_BYTES + 1:
        room = MAX_ID_BYTES + 1
    q = memchr(r + ID_AT, c'"', <size_t>room)
    if q == NULL or <const char*>q == r + ID_AT:
        return -1
    return <const char*>q - r


cdef inline Py_ssize_t _subject_end(const char* r, Py_ssize_t n, Py_ssize_t* start) noexcept nogil:
    """End offset of the subject of record r[:n], its start in start[0]; -1 if none."""
    cdef const char* q
    cdef Py_ssize_t s = _id_end(r, n)
    if s < 0:
        return -1
    s += SUBJECT_AFTER_ID
    start[0] = s
    if n <= s:
        return -1
    q = <const char*>memchr(r + s, c'"', <size_t>(n - s))
    if q == NULL:
        return -1
    return q - r


# SSE: one HTTP/1.1 chunk ("%x\r\n" + text + "\r\n") holding one message per record,
#     "id: " + event id + "\nevent: msg\ndata: " + record + "\n\n"
# written by _core's sse_frame (records in memory) and _framing's sse_from_frames (records
# in a read buffer), both with these.
cdef enum:
    SSE_OVERHEAD = 4 + 18 + 2   # a message's bytes besides its id and its record


cdef inline int _hex_len(Py_ssize_t v) noexcept nogil:
    cdef int k = 1
    while v >= 16:
        v >>= 4
        k += 1
    return k


cdef inline char* _put_hex(char* o, Py_ssize_t v, int k) noexcept nogil:
    cdef int i
    for i in range(k - 1, -1, -1):
        o[i] = b"0123456789abcdef"[v & 15]
        v >>= 4
    return o + k


cdef inline char* _put_chunk_head(char* o, Py_ssize_t text) noexcept nogil:
    """The size line of a chunk of `text` bytes; the position after it."""
    o = _put_hex(o, text, _hex_len(text))
    o[0] = c'\r'
    o[1] = c'\n'
    return o + 2


cdef inline Py_ssize_t _chunk_size(Py_ssize_t text) noexcept nogil:
    """Bytes of the chunk of `text` bytes."""
    return _hex_len(text) + 2 + text + 2


cdef inline char* _put_sse(char* o, const char* r, Py_ssize_t n, Py_ssize_t id_end) noexcept nogil:
    """The SSE message of record r[:n], whose id ends at id_end (_id_end); the position
    after it (SSE_OVERHEAD + id_end - ID_AT + n bytes)."""
    memcpy(o, b"id: ", 4)
    memcpy(o + 4, r + ID_AT, <size_t>(id_end - ID_AT))
    o += 4 + id_end - ID_AT
    memcpy(o, b"\nevent: msg\ndata: ", 18)
    memcpy(o + 18, r, <size_t>n)
    o += 18 + n
    o[0] = c'\n'
    o[1] = c'\n'
    return o + 2


# base32hex value of each byte (the rs/xid alphabet 0-9a-v), 0xFF for any other byte
cdef unsigned char XID_DEC[256]


cdef inline long long _xid_sec(const unsigned char* p) noexcept nogil:
    """Unix seconds from the first 7 chars of an xid, or -1 if they are not base32hex."""
    cdef uint32_t v0 = XID_DEC[p[0]], v1 = XID_DEC[p[1]], v2 = XID_DEC[p[2]], v3 = XID_DEC[p[3]]
    cdef uint32_t v4 = XID_DEC[p[4]], v5 = XID_DEC[p[5]], v6 = XID_DEC[p[6]]
    if (v0 | v1 | v2 | v3 | v4 | v5 | v6) & 0xE0:
        return -1
    return ((<long long>v0 << 27) | (v1 << 22) | (v2 << 17) | (v3 << 12) | (v4 << 7)
            | (v5 << 2) | (v6 >> 3))


@cython.final
cdef class Pattern:
    cdef readonly bytes pattern        # the first of `patterns`
    cdef readonly tuple patterns       # every pattern of the filter, sorted, each once
    cdef readonly bytes namespace
    cdef readonly bint matches_all     # one of them is `<namespace>.>`
    cdef readonly bint is_literal      # one pattern, no wildcard
    cdef bint _all
    cdef bint _literal
    cdef tuple _others                 # a Pattern per further pattern
    cdef bint _matches(self, const unsigned char* s, Py_ssize_t n) noexcept
    cdef inline bint _matches_one(self, const unsigned char* s, Py_ssize_t n) noexcept


@cython.final
@cython.no_gc  # bytes and None only: no cycle can run through it, so the collector skips it
cdef class ParsedEvent:
    cdef readonly bytes subject
    cdef readonly bytes id
    cdef readonly bytes created_at
    cdef readonly bytes response_subject
    cdef readonly bytes trace_id
    cdef readonly bytes key
    cdef readonly bytes key_value
    cdef bytes _body                   # the publish body holding the payload; None: no payload
    cdef Py_ssize_t _payload_at, _payload_end
    cdef bint _payload_breaks          # raw line breaks (JSON whitespace) in the payload


cpdef bytes header_name(bytes raw)
cpdef tuple read_head(bytes data, Py_ssize_t start, bytes method)


@cython.final
cdef class PlainRequest:
    cdef readonly bytes method, target, body
    cdef readonly dict headers

    cpdef Py_ssize_t read(self, bytes data, Py_ssize_t start, Py_ssize_t max_body,
                          Py_ssize_t max_target, Py_ssize_t max_head) except -2


cpdef double monotonic()
cpdef double wall_clock()
cpdef Py_ssize_t records_size(list records) except -1
cpdef tuple scan_body(bytes body, Py_ssize_t max_events=*)
cpdef tuple stamp_events(list events, bint is_batch)
cpdef bytes published_response(bytes head, list ids, list created_at, long long first_index,
                               bint is_batch, bint close)
cpdef list supplied_ids(list events)
