# The frame layout shared by _framing (plain bodies) and _crypto (sealed bodies): a u32 LE
# body length, a u32 LE zlib crc32 of the body, then the body. Header-only: cimport these.

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


cdef inline int _frame_at(const unsigned char* buf, Py_ssize_t size, Py_ssize_t off,
                          bint check_crc, Py_ssize_t* body_len) noexcept nogil:
    """Status of the frame at off: FRAME_OK (body_len set), FRAME_TRUNCATED or FRAME_CORRUPT."""
    if size - off < FRAME_HEAD:
        return FRAME_TRUNCATED
    cdef uint32_t length = _rd32(buf + off)
    if length == 0 or length > FRAME_MAX_BODY:
        return FRAME_CORRUPT
    if <Py_ssize_t>length > size - off - FRAME_HEAD:
        return FRAME_TRUNCATED
    if check_crc and frame_crc32(0, buf + off + FRAME_HEAD, length) != _rd32(buf + off + 4):
        return FRAME_CORRUPT
    body_len[0] = length
    return FRAME_OK
