# The frame layout shared by _framing (plain bodies) and _crypto (sealed bodies): a u32 LE
# body length, a u32 LE zlib crc32 of the body, then the body. Header-only: cimport these.
#
# The last frame of each write(2) stores the complement of its crc32 instead: a write end.
# A kill can cut a write short at any page boundary (Linux stops a buffered write between
# pages when a fatal signal is pending), leaving whole frames of a batch whose tail is
# missing; recovery keeps a segment's frames only up to its last write end. Marking the crc
# (not a bit of the length) leaves every reader that follows lengths alone, and costs the
# crc one bit of its 32 against random damage.

from libc.stdint cimport uint32_t

cdef extern from "crc32_fold.h":
    # zlib's crc32, folded with PCLMULQDQ where the CPU has it (the header says why)
    uint32_t frame_crc32 "busd_crc32"(uint32_t crc, const unsigned char *p, size_t len) nogil
    int crc32_folds "busd_crc32_folds"() nogil

cdef enum:
    FRAME_HEAD = 8  # the length and the crc32 before the body
    FRAME_MAX_BODY = 268435456  # 256 MiB: a longer length field is damage, not a record
    FRAME_OK = 0
    FRAME_TRUNCATED = 1
    FRAME_CORRUPT = 2


cdef inline uint32_t _rd32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline void _wr32(unsigned char* p, uint32_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF
    p[2] = (v >> 16) & 0xFF
    p[3] = (v >> 24) & 0xFF


cdef inline bint _crc_fits(uint32_t crc, uint32_t stored) noexcept nogil:
    """Whether a stored crc field is the body's crc32, plain or marked as a write end."""
    return stored == crc or stored == <uint32_t>~crc


cdef inline int _frame_at(const unsigned char* buf, Py_ssize_t size, Py_ssize_t off,
                          bint check_crc, Py_ssize_t* body_len,
                          bint* write_end) noexcept nogil:
    """Status of the frame at off: FRAME_OK (body_len set), FRAME_TRUNCATED or FRAME_CORRUPT.
    With check_crc and write_end not NULL, also whether the frame ends a write."""
    cdef uint32_t crc, stored
    if size - off < FRAME_HEAD:
        return FRAME_TRUNCATED
    cdef uint32_t length = _rd32(buf + off)
    if length == 0 or length > FRAME_MAX_BODY:
        return FRAME_CORRUPT
    if <Py_ssize_t>length > size - off - FRAME_HEAD:
        return FRAME_TRUNCATED
    if check_crc:
        crc = frame_crc32(0, buf + off + FRAME_HEAD, length)
        stored = _rd32(buf + off + 4)
        if stored != crc:
            if stored != <uint32_t>~crc:
                return FRAME_CORRUPT
            if write_end != NULL:
                write_end[0] = True
        elif write_end != NULL:
            write_end[0] = False
    body_len[0] = length
    return FRAME_OK
