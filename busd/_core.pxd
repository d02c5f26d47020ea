# Declarations of busd._core for the other Cython modules to cimport: its extension types,
# and the wire facts every module reads records and xids by.

from libc.stdint cimport uint32_t

# A stored record is one JSON object in a fixed layout (make_record):
#     {"id":"e_<20-char xid>","subject":"<subject>",...}
# so its id and subject are read at fixed offsets. busd/wire.py declares the same offsets
# for Python; tests/test_wire.py checks that the two agree.
cdef enum:
    ID_AT = 7                   # record[ID_AT:ID_END] is the event id: b"e_" + an xid
    ID_LEN = 22
    ID_END = ID_AT + ID_LEN
    XID_LEN = 20
    XID_AT = ID_END - XID_LEN   # record[XID_AT:ID_END] is the xid
    SUBJECT_AT = ID_END + 13    # after '","subject":"'; the subject ends at the next '"'

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


cdef class Pattern:
    cdef readonly bytes pattern
    cdef readonly bytes namespace
    cdef readonly bint matches_all
    cdef readonly bint is_literal
    cdef bint _matches(self, const unsigned char* s, Py_ssize_t n) noexcept


cdef class ParsedEvent:
    cdef readonly bytes subject
    cdef readonly bytes id
    cdef readonly bytes created_at
    cdef readonly bytes response_subject
    cdef readonly bytes trace_id
    cdef readonly bytes key
    cdef readonly bytes key_value
    cdef readonly object payload
