# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Hot paths: subject validation/matching, event JSON scan, records, SSE framing, xid, RFC 3339.

Everything here works on bytes with typed pointer access; tests/oracle.py holds a
plain-Python reference implementation of every public function, and
tests/test_core.py checks that both agree on random inputs.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_New, PyList_SET_ITEM
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memchr, memcmp, memcpy
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec

import hashlib as _hashlib
import os as _os
import socket as _socket

from busd.wire import INBOX_NAMESPACE, id_problem

__all__ = [
    "validate_subject", "validate_pattern", "Pattern", "match_subject",
    "scan_body", "TooManyEvents", "ParsedEvent", "make_record", "stamp_events", "record_id",
    "record_subject", "records_size",
    "header_name", "read_head", "HeadError", "PlainRequest", "monotonic", "wall_clock",
    "sse_chunk", "sse_frame", "sse_frame_matching", "sse_of", "first_matching",
    "new_xid", "xid_time", "is_xid", "now_rfc3339", "parse_rfc3339", "format_rfc3339",
    "MAX_DEPTH", "MAX_FIELD_BYTES",
]

cdef enum:
    C_MAX_DEPTH = 512
    C_MAX_FIELD_BYTES = 256  # of a key or trace_id, as JSON text without its quotes
MAX_DEPTH = C_MAX_DEPTH
MAX_FIELD_BYTES = C_MAX_FIELD_BYTES

cdef bytes EMPTY = b""

# --------------------------------------------------------------------------- tables

cdef unsigned char STR_SPECIAL[256]   # bytes a JSON string scan must stop at
cdef unsigned char ESC_LEN[256]       # output length of a byte when JSON-escaped
cdef unsigned char HEXVAL[256]        # hex digit value, 0xFF if not hex
cdef unsigned char TOKEN_PLAIN[256]   # ASCII a token may hold that is no '.', '*' or '>'
cdef unsigned char HTTP_TCHAR[256]    # a header name's bytes (RFC 9110 §5.6.2 tchar)
cdef unsigned char TARGET_PLAIN[256]  # a plain request target's (RFC 3986 pchar, '/', '?')
cdef unsigned char VALUE_PLAIN[256]   # a plain header value's: visible ASCII, SP, HTAB
# XID_DEC, declared in busd/_core.pxd for the other modules, is filled here too
cdef const char* XID_ENC = b"0123456789abcdefghijklmnopqrstuv"
cdef const char* HEXDIGITS = b"0123456789abcdef"


cdef void _init_tables() noexcept:
    cdef int i
    cdef bint alnum
    for i in range(256):
        STR_SPECIAL[i] = 1 if (i < 0x20 or i >= 0x80 or i == c'"' or i == c'\\') else 0
        TOKEN_PLAIN[i] = 1 if (i < 0x80 and not _forbidden(i) and i != c'.' and i != c'*'
                               and i != c'>') else 0
        ESC_LEN[i] = 1
        HEXVAL[i] = 0xFF
        XID_DEC[i] = 0xFF
    for i in range(ord('0'), ord('9') + 1):
        HEXVAL[i] = i - ord('0')
    for i in range(6):
        HEXVAL[ord('a') + i] = 10 + i
        HEXVAL[ord('A') + i] = 10 + i
    for i in range(0x20):
        ESC_LEN[i] = 6
    ESC_LEN[c'\n'] = 2
    ESC_LEN[c'\r'] = 2
    ESC_LEN[c'\t'] = 2
    ESC_LEN[c'"'] = 2
    ESC_LEN[c'\\'] = 2
    for i in range(32):
        XID_DEC[<unsigned char>XID_ENC[i]] = i
    for i in range(256):
        alnum = (c'0' <= i <= c'9') or (c'a' <= i <= c'z') or (c'A' <= i <= c'Z')
        HTTP_TCHAR[i] = 1 if alnum or i in b"!#$%&'*+-.^_`|~" else 0
        TARGET_PLAIN[i] = 1 if alnum or i in b"-._~!$&'()*+,;=:@/?%" else 0
        VALUE_PLAIN[i] = 1 if 0x21 <= i <= 0x7E or i == c' ' or i == c'\t' else 0


_init_tables()


# --------------------------------------------------------------------------- subjects
# NATS's subject rules: tokens separated by '.', each non-empty, of any UTF-8 text but
# whitespace and control characters; '*' and '>' only as whole tokens, in patterns. busd
# also keeps '"' and '\' out, so that a stored record's subject needs no JSON escape and
# is read between SUBJECT_AT and the next '"'.
TOKEN_RULE = ("a token is any UTF-8 text without whitespace, control characters, "
              "'\"' or '\\'")


def _show(bytes s):
    """Printable, one-line rendering of untrusted bytes for error messages."""
    cdef bint cut = len(s) > 100
    text = s[:100].decode("utf-8", "backslashreplace")
    out = "".join([ch if ch.isprintable() else _escaped(ord(ch)) for ch in text])
    return out + "..." if cut else out


def _escaped(unsigned int cp):
    return "\\x%02x" % cp if cp < 0x100 else "\\u%04x" % cp


def _show_char(unsigned int cp):
    """One character of an error message's "invalid character '…'"."""
    if 0x20 <= cp < 0x7F:
        return chr(cp)
    return "\\x%02x" % cp if cp < 0x80 else "U+%04X" % cp


cdef inline bint _forbidden(unsigned int cp) noexcept nogil:
    """A code point no token may hold: a control character (Unicode category Cc), a
    character with the White_Space property, or '"' or '\\'."""
    if cp <= 0x20 or cp == 0x7F or cp == c'"' or cp == c'\\':
        return True
    if cp < 0x80:
        return False
    return (cp <= 0xA0 or cp == 0x1680 or 0x2000 <= cp <= 0x200A or cp == 0x2028
            or cp == 0x2029 or cp == 0x202F or cp == 0x205F or cp == 0x3000)


cdef inline unsigned int _codepoint(const unsigned char* p, int k) noexcept nogil:
    """The code point of the valid k-byte UTF-8 sequence at p."""
    if k == 2:
        return ((p[0] & 0x1F) << 6) | (p[1] & 0x3F)
    if k == 3:
        return ((p[0] & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F)
    return ((p[0] & 0x07) << 18) | ((p[1] & 0x3F) << 12) | ((p[2] & 0x3F) << 6) | (p[3] & 0x3F)


cdef _check_tokens(bytes s, bint pattern):
    """Raise ValueError(reason) unless s is a valid subject (or, with `pattern`, a valid
    subscribe pattern). Left to right: the first fault found is the one reported."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(s)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(s), i = 0, seg_start = 0, segs = 1
    cdef unsigned char c
    cdef unsigned int cp
    cdef int k
    kind = "pattern" if pattern else "subject"
    if n == 0:
        raise ValueError(f"{kind} is empty")
    while i <= n:
        if i == n or p[i] == c'.':
            if i == seg_start:
                raise ValueError(f"empty segment in {kind} '{_show(s)}'")
            if pattern:
                if i - seg_start == 1 and p[seg_start] == c'>' and i < n:
                    raise ValueError(f"'>' must be the last segment in pattern '{_show(s)}'")
                if seg_start == 0 and i == 1 and (p[0] == c'*' or p[0] == c'>'):
                    raise ValueError(f"namespace may not be a wildcard: '{_show(s)}'")
            if i < n:
                segs += 1
            i += 1
            seg_start = i
            continue
        c = p[i]
        if TOKEN_PLAIN[c]:  # most of a subject: skip the run of them
            i += 1
            while i < n and TOKEN_PLAIN[p[i]]:
                i += 1
            continue
        if c == c'*' or c == c'>':
            if not pattern:
                raise ValueError(f"subject contains a wildcard: '{_show(s)}'")
            if i != seg_start or (i + 1 < n and p[i + 1] != c'.'):
                raise ValueError(
                    f"wildcard '{chr(c)}' must be a whole segment in pattern '{_show(s)}'")
            i += 1
            continue
        if c < 0x80:
            k, cp = 1, c
        else:
            k = _utf8_len(p, i, n)
            if k == 0:
                raise ValueError(f"{kind} is not valid UTF-8 (at byte {i}): '{_show(s)}'")
            cp = _codepoint(p + i, k)
        if _forbidden(cp):
            raise ValueError(f"invalid character '{_show_char(cp)}' in {kind} '{_show(s)}': "
                             f"{TOKEN_RULE}")
        i += k
    if segs < 2:
        raise ValueError(f"{kind} must have at least two segments (namespace.topic): "
                         f"'{_show(s)}'")


def validate_subject(bytes s):
    """Check a publish subject; raise ValueError(reason) if it is not valid."""
    _check_tokens(s, False)


def validate_pattern(bytes s):
    """Check a subscribe pattern; raise ValueError(reason) if it is not valid."""
    _check_tokens(s, True)


cdef inline const unsigned char* _find_dot(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    return <const unsigned char*>memchr(p, c'.', <size_t>n)


@cython.final
cdef class Pattern:
    """A compiled subscription filter: one subscribe pattern, or several of one namespace
    (a subject matches if it matches any of them, so an event is selected once however
    many it matches). The patterns are assumed validated with validate_pattern."""

    def __cinit__(self, bytes pattern not None, *more):
        cdef Py_ssize_t dot
        cdef list alternatives = sorted(dict.fromkeys((pattern, *more)))
        for other in alternatives:
            if type(other) is not bytes:
                raise TypeError(f"pattern must be bytes, not {type(other).__name__}")
        pattern = alternatives[0]
        self.patterns = tuple(alternatives)
        self.pattern = pattern
        dot = pattern.find(b".")
        self.namespace = pattern if dot < 0 else pattern[:dot]
        toks = pattern.split(b".")
        self._all = (len(toks) == 2 and toks[1] == b">" and toks[0] != b"*")
        self._literal = not (b"*" in toks or toks[len(toks) - 1] == b">")
        self._others = tuple(Pattern(other) for other in alternatives[1:])
        for other in self._others:
            if (<Pattern>other).namespace != self.namespace:
                raise ValueError(f"patterns of one filter must share a namespace: "
                                 f"{(<Pattern>other).pattern!r} is not in {self.namespace!r}")
        self.matches_all = self._all or any((<Pattern>o)._all for o in self._others)
        self.is_literal = self._literal and not self._others

    def __repr__(self):
        return f"Pattern({', '.join(map(repr, self.patterns))})"

    cdef bint _matches(self, const unsigned char* s, Py_ssize_t sn) noexcept:
        cdef Py_ssize_t i
        if self._matches_one(s, sn):
            return True
        for i in range(PyTuple_GET_SIZE(self._others)):
            if (<Pattern>PyTuple_GET_ITEM(self._others, i))._matches_one(s, sn):
                return True
        return False

    cdef inline bint _matches_one(self, const unsigned char* s, Py_ssize_t sn) noexcept:
        """This filter's first pattern only."""
        cdef const unsigned char* pat = <const unsigned char*>PyBytes_AS_STRING(self.pattern)
        cdef Py_ssize_t pn = PyBytes_GET_SIZE(self.pattern)
        cdef Py_ssize_t nsl
        cdef Py_ssize_t p = 0, si = 0, pe, se, plen
        cdef const unsigned char* q
        if self._literal:
            return sn == pn and memcmp(s, pat, <size_t>sn) == 0
        if self._all:  # `ns.>`: `ns` itself, or anything under `ns.`
            nsl = pn - 2
            return ((sn == nsl or (sn > nsl and s[nsl] == c'.'))
                    and memcmp(s, pat, <size_t>nsl) == 0)
        # General walk; si == sn + 1 means "the subject has no more segments".
        while True:
            q = _find_dot(pat + p, pn - p)
            pe = pn if q == NULL else q - pat
            plen = pe - p
            if plen == 1 and pat[p] == c'>' and pe == pn:
                return True  # `>` takes the rest, however many segments: none too (as Bus)
            if si > sn:
                return False
            q = _find_dot(s + si, sn - si)
            se = sn if q == NULL else q - s
            if not (plen == 1 and pat[p] == c'*'):
                if plen != se - si or memcmp(pat + p, s + si, <size_t>plen) != 0:
                    return False
            if pe == pn:
                return se == sn
            p = pe + 1
            si = se + 1 if se < sn else sn + 1

    def matches(self, bytes subject not None):
        """True if the subject matches this pattern (any of them): `*` is one segment, a
        last `>` zero or more (Bus's rule; in NATS `>` is one or more, so `a.x.>` would miss
        `a.x`)."""
        return self._matches(<const unsigned char*>PyBytes_AS_STRING(subject),
                             PyBytes_GET_SIZE(subject))


def match_subject(bytes pattern, bytes subject):
    """Convenience: Pattern(pattern).matches(subject)."""
    return Pattern(pattern).matches(subject)


# --------------------------------------------------------------------------- JSON scan

# Field slots of an event object.
cdef enum:
    F_SUBJECT = 0
    F_ID = 1
    F_CREATED_AT = 2
    F_RESPONSE_SUBJECT = 3
    F_TRACE_ID = 4
    F_KEY = 5
    F_PAYLOAD = 6
    N_FIELDS = 7

_FIELD_NAMES = ("subject", "id", "created_at", "response_subject", "trace_id", "key", "payload")

# Semantic (well-formed JSON, wrong shape) errors; reported only when the whole body is valid JSON.
cdef enum:
    SEM_NONE = 0
    SEM_FIELD_TYPE = 1
    SEM_MISSING_SUBJECT = 2
    SEM_EMPTY_BATCH = 3
    SEM_NOT_OBJECT = 4
    SEM_ITEM_NOT_OBJECT = 5

cdef struct Span:
    Py_ssize_t start    # first byte of the value (the quote for strings); -1 when absent
    Py_ssize_t end      # one past the last byte
    bint esc            # string value contains backslash escapes

cdef struct Scanner:
    const unsigned char* buf
    PyObject* body      # the bytes object buf points into
    Py_ssize_t n
    Py_ssize_t err_pos
    const char* err_msg
    bint str_esc        # did the last scanned string contain escapes
    Py_ssize_t breaks   # raw CR and LF bytes skipped as whitespace so far
    int sem_code
    int sem_field
    Py_ssize_t sem_item


cdef inline Py_ssize_t _fail(Scanner* sc, Py_ssize_t pos, const char* msg) noexcept nogil:
    sc.err_pos = pos
    sc.err_msg = msg
    return -1


cdef inline Py_ssize_t _ws(Scanner* sc, const unsigned char* b, Py_ssize_t pos,
                          Py_ssize_t n) noexcept nogil:
    cdef unsigned char c
    while pos < n:
        c = b[pos]
        if c == c' ' or c == c'\t':
            pos += 1
        elif c == c'\n' or c == c'\r':
            sc.breaks += 1
            pos += 1
        else:
            break
    return pos


cdef inline int _hex4(const unsigned char* b, Py_ssize_t pos, Py_ssize_t n) noexcept nogil:
    """Value of 4 hex digits at b[pos:pos+4], or -1."""
    cdef unsigned char h0, h1, h2, h3
    if pos + 4 > n:
        return -1
    h0 = HEXVAL[b[pos]]
    h1 = HEXVAL[b[pos + 1]]
    h2 = HEXVAL[b[pos + 2]]
    h3 = HEXVAL[b[pos + 3]]
    if (h0 | h1 | h2 | h3) & 0xF0:
        return -1
    return (h0 << 12) | (h1 << 8) | (h2 << 4) | h3


cdef inline int _utf8_len(const unsigned char* b, Py_ssize_t pos, Py_ssize_t n) noexcept nogil:
    """Length of the valid UTF-8 sequence starting at b[pos] (a byte >= 0x80), or 0."""
    cdef unsigned char c = b[pos], c1
    cdef int need
    cdef unsigned char lo = 0x80, hi = 0xBF
    if 0xC2 <= c <= 0xDF:
        need = 1
    elif c == 0xE0:
        need = 2
        lo = 0xA0
    elif 0xE1 <= c <= 0xEC or c == 0xEE or c == 0xEF:
        need = 2
    elif c == 0xED:
        need = 2
        hi = 0x9F
    elif c == 0xF0:
        need = 3
        lo = 0x90
    elif 0xF1 <= c <= 0xF3:
        need = 3
    elif c == 0xF4:
        need = 3
        hi = 0x8F
    else:
        return 0
    if pos + need >= n:
        return 0
    c1 = b[pos + 1]
    if c1 < lo or c1 > hi:
        return 0
    if need >= 2 and (b[pos + 2] & 0xC0) != 0x80:
        return 0
    if need == 3 and (b[pos + 3] & 0xC0) != 0x80:
        return 0
    return need + 1


cdef uint64_t ONES = 0x0101010101010101ULL   # one in every byte of a word
cdef uint64_t HIGHS = 0x8080808080808080ULL  # every byte's high bit


cdef inline uint64_t _word_special(uint64_t w) noexcept nogil:
    """The high bit of the bytes of w that STR_SPECIAL flags (< 0x20, '"', '\\', >= 0x80),
    0 if none, by whole-word arithmetic: subtracting 0x20 from every byte sets the high bit
    of each byte below 0x20; XOR with '"' (or '\\') in every byte zeroes the bytes equal to
    it, and (v - ONES) & ~v sets the high bit of a zero byte; bytes >= 0x80 have it already.
    A borrow between bytes only flags a byte above one that is itself special, so the
    lowest flagged byte is always the first special one."""
    cdef uint64_t quote = w ^ (ONES * 0x22), backslash = w ^ (ONES * 0x5C)
    return (w | (w - ONES * 0x20) | ((quote - ONES) & ~quote)
            | ((backslash - ONES) & ~backslash)) & HIGHS


cdef extern from *:
    """
    /* How many bytes of a word loaded by memcpy come before its lowest flagged one (the
       first in memory on a little-endian machine); elsewhere 0, and a byte loop finds it. */
    static inline int busd_bytes_before_flagged(uint64_t mask) {
    #if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        return __builtin_ctzll(mask) >> 3;
    #else
        (void)mask;
        return 0;
    #endif
    }
    """
    int busd_bytes_before_flagged(uint64_t mask) nogil


cdef extern from *:
    """
    /* How many of the 16 bytes at p come before the first one a string scan must look at
       ('"', '\\', < 0x20, >= 0x80: what STR_SPECIAL flags), 16 if none, in one SSE2 pass;
       elsewhere 0 (BUSD_SSE2 is 0 there), and the word loop takes over. */
    #if defined(__SSE2__) && defined(__GNUC__) && !defined(BUSD_NO_SIMD)
    #include <emmintrin.h>
    static inline int busd_plain16(const unsigned char* p) {
        __m128i x = _mm_loadu_si128((const __m128i*)p);
        __m128i control = _mm_cmpeq_epi8(_mm_max_epu8(x, _mm_set1_epi8(0x1F)),
                                         _mm_set1_epi8(0x1F));
        __m128i quote = _mm_cmpeq_epi8(x, _mm_set1_epi8(0x22));
        __m128i backslash = _mm_cmpeq_epi8(x, _mm_set1_epi8(0x5C));
        int mask = _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(control, quote),
                                                  _mm_or_si128(backslash, x)));
        return mask ? __builtin_ctz((unsigned)mask) : 16;
    }
    #define BUSD_SSE2 1
    #else
    static inline int busd_plain16(const unsigned char* p) { (void)p; return 0; }
    #define BUSD_SSE2 0
    #endif
    """
    int busd_plain16(const unsigned char* p) nogil
    const bint BUSD_SSE2


cdef Py_ssize_t _scan_string(Scanner* sc, Py_ssize_t pos) noexcept nogil:
    """b[pos] is '"'. Return the position after the closing quote, or -1.

    Plain text is skipped sixteen bytes at a time where SSE2 is (busd_plain16), eight
    elsewhere (_word_special), to the first special byte of the block that holds one, the
    rest byte by byte:
    payload strings are most of a body's bytes, and this scan was its hottest loop."""
    cdef const unsigned char* b = sc.buf
    cdef Py_ssize_t n = sc.n
    cdef unsigned char c
    cdef int k
    cdef bint esc = False
    cdef uint64_t word, special
    pos += 1
    while True:
        while pos + 16 <= n:  # once only, at k = 0, where there is no SSE2
            k = busd_plain16(b + pos)
            pos += k
            if k < 16:  # most strings end in this block
                break
        while not BUSD_SSE2 and pos + 8 <= n:
            memcpy(&word, b + pos, 8)  # an unaligned load, done as one
            special = _word_special(word)
            if special:
                pos += busd_bytes_before_flagged(special)  # most strings end in this word
                break
            pos += 8
        while pos < n and not STR_SPECIAL[b[pos]]:
            pos += 1
        if pos >= n:
            return _fail(sc, n, "unterminated string")
        c = b[pos]
        if c == c'"':
            sc.str_esc = esc
            return pos + 1
        if c == c'\\':
            esc = True
            if pos + 1 >= n:
                return _fail(sc, n, "unterminated string")
            c = b[pos + 1]
            if (c == c'"' or c == c'\\' or c == c'/' or c == c'b' or c == c'f' or c == c'n'
                    or c == c'r' or c == c't'):
                pos += 2
                continue
            if c != c'u':
                return _fail(sc, pos, "invalid escape in string")
            # Any 4 hex digits: a lone surrogate (`\\ud800`) is valid JSON text too
            # (RFC 8259 §7, §8.2), and is stored as sent.
            if _hex4(b, pos + 2, n) < 0:
                return _fail(sc, pos, "invalid \\u escape in string")
            pos += 6
            continue
        if c < 0x20:
            return _fail(sc, pos, "control character in string")
        k = _utf8_len(b, pos, n)
        if k == 0:
            return _fail(sc, pos, "invalid UTF-8 in string")
        pos += k


cdef Py_ssize_t _scan_number(Scanner* sc, Py_ssize_t pos) noexcept nogil:
    cdef const unsigned char* b = sc.buf
    cdef Py_ssize_t n = sc.n, start = pos
    if b[pos] == c'-':
        pos += 1
    if pos >= n:
        return _fail(sc, pos, "invalid number")
    if b[pos] == c'0':
        pos += 1
    elif c'1' <= b[pos] <= c'9':
        pos += 1
        while pos < n and c'0' <= b[pos] <= c'9':
            pos += 1
    else:
        return _fail(sc, pos, "invalid number")
    if pos < n and b[pos] == c'.':
        pos += 1
        if pos >= n or not (c'0' <= b[pos] <= c'9'):
            return _fail(sc, pos, "invalid number: expected a digit after '.'")
        while pos < n and c'0' <= b[pos] <= c'9':
            pos += 1
    if pos < n and (b[pos] == c'e' or b[pos] == c'E'):
        pos += 1
        if pos < n and (b[pos] == c'+' or b[pos] == c'-'):
            pos += 1
        if pos >= n or not (c'0' <= b[pos] <= c'9'):
            return _fail(sc, pos, "invalid number: expected a digit in the exponent")
        while pos < n and c'0' <= b[pos] <= c'9':
            pos += 1
    return pos


cdef inline Py_ssize_t _scan_literal(Scanner* sc, Py_ssize_t pos, const char* lit,
                                     Py_ssize_t ln) noexcept nogil:
    if pos + ln > sc.n or memcmp(sc.buf + pos, lit, <size_t>ln) != 0:
        return _fail(sc, pos, "invalid literal")
    return pos + ln


# The grammar shared by objects, arrays, events and batches: what comes after an opening
# byte, a member's key and a container's item.

cdef inline Py_ssize_t _open(Scanner* sc, const unsigned char* b, Py_ssize_t n, Py_ssize_t pos,
                             int depth, unsigned char close, bint* more) noexcept nogil:
    """b[pos] opens a container of this depth that `close` ends: the position of its first
    item (more set), or after `close` if it is empty; -1 if nested too deep."""
    more[0] = False
    if depth > C_MAX_DEPTH:
        return _fail(sc, pos, "nesting deeper than 512")
    pos = _ws(sc, b, pos + 1, n)
    if pos < n and b[pos] == close:
        return pos + 1
    more[0] = True
    return pos


cdef inline Py_ssize_t _key(Scanner* sc, const unsigned char* b, Py_ssize_t n,
                            Py_ssize_t pos) noexcept nogil:
    """b[pos] starts an object member: the position after its key string, or -1."""
    if pos >= n or b[pos] != c'"':
        return _fail(sc, pos, "expected a string key")
    return _scan_string(sc, pos)


cdef inline Py_ssize_t _colon(Scanner* sc, const unsigned char* b, Py_ssize_t n,
                              Py_ssize_t pos) noexcept nogil:
    """pos is after a member's key: the position of its value (past ':'), or -1."""
    pos = _ws(sc, b, pos, n)
    if pos >= n or b[pos] != c':':
        return _fail(sc, pos, "expected ':'")
    return _ws(sc, b, pos + 1, n)


cdef inline Py_ssize_t _next(Scanner* sc, const unsigned char* b, Py_ssize_t n, Py_ssize_t pos,
                             unsigned char close, bint* more) noexcept nogil:
    """pos is after an item of a container that `close` ends: the position of the next item
    (more set) or after `close`; -1 if neither follows."""
    pos = _ws(sc, b, pos, n)
    more[0] = pos < n and b[pos] == c','
    if more[0]:
        return _ws(sc, b, pos + 1, n)
    if pos < n and b[pos] == close:
        return pos + 1
    return _fail(sc, pos, "expected ',' or '}'" if close == c'}' else "expected ',' or ']'")


cdef Py_ssize_t _scan_object(Scanner* sc, Py_ssize_t pos, int depth) noexcept nogil:
    """b[pos] is '{'; depth is the depth of this object (top level = 1)."""
    cdef const unsigned char* b = sc.buf
    cdef Py_ssize_t n = sc.n
    cdef bint more = False
    pos = _open(sc, b, n, pos, depth, c'}', &more)
    while more:
        pos = _key(sc, b, n, pos)
        if pos >= 0:
            pos = _colon(sc, b, n, pos)
        if pos >= 0:
            pos = _scan_value(sc, pos, depth)
        if pos < 0:
            return -1
        pos = _next(sc, b, n, pos, c'}', &more)
    return pos


cdef Py_ssize_t _scan_array(Scanner* sc, Py_ssize_t pos, int depth) noexcept nogil:
    cdef const unsigned char* b = sc.buf
    cdef Py_ssize_t n = sc.n
    cdef bint more = False
    pos = _open(sc, b, n, pos, depth, c']', &more)
    while more:
        pos = _scan_value(sc, pos, depth)
        if pos < 0:
            return -1
        pos = _next(sc, b, n, pos, c']', &more)
    return pos


cdef Py_ssize_t _scan_value(Scanner* sc, Py_ssize_t pos, int depth) noexcept nogil:
    """Scan one JSON value at b[pos] (no leading whitespace) inside a container of depth."""
    cdef unsigned char c
    if pos >= sc.n:
        return _fail(sc, pos, "unexpected end of input")
    c = sc.buf[pos]
    if c == c'"':
        return _scan_string(sc, pos)
    if c == c'{':
        return _scan_object(sc, pos, depth + 1)
    if c == c'[':
        return _scan_array(sc, pos, depth + 1)
    if c == c'-' or (c'0' <= c <= c'9'):
        return _scan_number(sc, pos)
    if c == c't':
        return _scan_literal(sc, pos, b"true", 4)
    if c == c'f':
        return _scan_literal(sc, pos, b"false", 5)
    if c == c'n':
        return _scan_literal(sc, pos, b"null", 4)
    return _fail(sc, pos, "expected a JSON value")


cdef inline void _put_utf8(unsigned char* out, Py_ssize_t* k, unsigned int cp) noexcept nogil:
    cdef Py_ssize_t j = k[0]
    if cp < 0x80:
        out[j] = cp
        j += 1
    elif cp < 0x800:
        out[j] = 0xC0 | (cp >> 6)
        out[j + 1] = 0x80 | (cp & 0x3F)
        j += 2
    elif cp < 0x10000:
        out[j] = 0xE0 | (cp >> 12)
        out[j + 1] = 0x80 | ((cp >> 6) & 0x3F)
        out[j + 2] = 0x80 | (cp & 0x3F)
        j += 3
    else:
        out[j] = 0xF0 | (cp >> 18)
        out[j + 1] = 0x80 | ((cp >> 12) & 0x3F)
        out[j + 2] = 0x80 | ((cp >> 6) & 0x3F)
        out[j + 3] = 0x80 | (cp & 0x3F)
        j += 4
    k[0] = j


cdef Py_ssize_t _unescape(const unsigned char* b, Py_ssize_t start, Py_ssize_t end,
                          unsigned char* out) noexcept nogil:
    """Decode the already-validated JSON string body b[start:end] into out; return its length."""
    cdef Py_ssize_t i = start, k = 0
    cdef unsigned char c
    cdef unsigned int u, u2
    while i < end:
        c = b[i]
        if c != c'\\':
            out[k] = c
            k += 1
            i += 1
            continue
        c = b[i + 1]
        i += 2
        if c == c'u':
            u = <unsigned int>_hex4(b, i, end)
            i += 4
            if 0xD800 <= u <= 0xDBFF and i + 6 <= end and b[i] == c'\\' and b[i + 1] == c'u':
                u2 = <unsigned int>_hex4(b, i + 2, end)
                if 0xDC00 <= u2 <= 0xDFFF:  # a pair: one code point
                    i += 6
                    u = 0x10000 + ((u - 0xD800) << 10) + (u2 - 0xDC00)
            _put_utf8(out, &k, u)  # a lone surrogate as its 3 bytes (WTF-8), as Python's
            # surrogatepass: such a subject is then refused as not UTF-8
            continue
        if c == c'b':
            c = 8
        elif c == c'f':
            c = 12
        elif c == c'n':
            c = 10
        elif c == c'r':
            c = 13
        elif c == c't':
            c = 9
        out[k] = c
        k += 1
    return k


cdef bytes _decoded(const unsigned char* b, Span* sp):
    """The decoded value of a string span (b"" when absent)."""
    cdef Py_ssize_t ln
    cdef unsigned char* tmp
    if sp.start < 0:
        return EMPTY
    ln = sp.end - sp.start - 2
    if ln == 0:
        return EMPTY
    if not sp.esc:
        return PyBytes_FromStringAndSize(<const char*>b + sp.start + 1, ln)
    tmp = <unsigned char*>PyMem_Malloc(<size_t>ln)
    if tmp == NULL:
        raise MemoryError()
    try:
        ln = _unescape(b, sp.start + 1, sp.end - 1, tmp)
        return PyBytes_FromStringAndSize(<const char*>tmp, ln)
    finally:
        PyMem_Free(tmp)


cdef inline bytes _decoded_like(const unsigned char* b, Span* sp, bytes like):
    """_decoded, but `like` itself when the span holds the same text unescaped: a batch's
    events mostly share their subject and created_at, and one object serves them all."""
    cdef Py_ssize_t ln = sp.end - sp.start - 2
    if (like is not None and sp.start >= 0 and not sp.esc and ln == PyBytes_GET_SIZE(like)
            and memcmp(b + sp.start + 1, PyBytes_AS_STRING(like), <size_t>ln) == 0):
        return like
    return _decoded(b, sp)


cdef inline bytes _raw(const unsigned char* b, Span* sp):
    """The raw token of a string span including quotes; b"" when absent or the empty string."""
    if sp.start < 0 or sp.end - sp.start <= 2:
        return EMPTY
    return PyBytes_FromStringAndSize(<const char*>b + sp.start, sp.end - sp.start)


cdef inline int _field_of(const unsigned char* k, Py_ssize_t ln) noexcept nogil:
    """Known-field slot of an unescaped key k[:ln], or -1."""
    if ln == 7:
        if memcmp(k, b"subject", 7) == 0:
            return F_SUBJECT
        if memcmp(k, b"payload", 7) == 0:
            return F_PAYLOAD
    elif ln == 2:
        if k[0] == c'i' and k[1] == c'd':
            return F_ID
    elif ln == 3:
        if memcmp(k, b"key", 3) == 0:
            return F_KEY
    elif ln == 8:
        if memcmp(k, b"trace_id", 8) == 0:
            return F_TRACE_ID
    elif ln == 10:
        if memcmp(k, b"created_at", 10) == 0:
            return F_CREATED_AT
    elif ln == 16:
        if memcmp(k, b"response_subject", 16) == 0:
            return F_RESPONSE_SUBJECT
    return -1


cdef int _escaped_field_of(const unsigned char* b, Py_ssize_t start, Py_ssize_t end) except -2:
    """Known-field slot of a key with escapes (rare slow path), or -1."""
    cdef Py_ssize_t ln = end - start
    cdef bytes out = PyBytes_FromStringAndSize(NULL, ln)
    ln = _unescape(b, start, end, <unsigned char*>PyBytes_AS_STRING(out))
    return _field_of(<const unsigned char*>PyBytes_AS_STRING(out), ln)


cdef Py_ssize_t _scan_event(Scanner* sc, Py_ssize_t pos, int depth, Py_ssize_t item,
                            list events) except -2:
    """b[pos] is '{': scan one event object, append a ParsedEvent to events when it is sound.

    Returns the position after '}', or -1 on a JSON syntax error (details in sc).
    Shape errors are recorded in sc.sem_* (first one wins) and scanning continues.
    """
    cdef const unsigned char* b = sc.buf
    cdef Py_ssize_t n = sc.n, kstart, kend, breaks
    cdef Span spans[N_FIELDS]
    cdef Span* sp
    cdef int f, i
    cdef unsigned char c
    cdef ParsedEvent ev, prev
    cdef bint more = False, payload_breaks = False
    for i in range(N_FIELDS):
        spans[i].start = -1
    pos = _open(sc, b, n, pos, depth, c'}', &more)
    while more:
        kstart = pos
        pos = _key(sc, b, n, pos)
        if pos < 0:
            return -1
        kend = pos
        if sc.str_esc:
            f = _escaped_field_of(b, kstart + 1, kend - 1)
        else:
            f = _field_of(b + kstart + 1, kend - kstart - 2)
        pos = _colon(sc, b, n, pos)
        if pos < 0:
            return -1
        if f < 0:
            pos = _scan_value(sc, pos, depth)
            if pos < 0:
                return -1
        else:
            if pos >= n:
                return _fail(sc, pos, "unexpected end of input")
            sp = &spans[f]
            c = b[pos]
            if f == F_PAYLOAD:
                sp.start = pos
                breaks = sc.breaks
                pos = _scan_value(sc, pos, depth)
                if pos < 0:
                    return -1
                sp.end = pos
                payload_breaks = sc.breaks != breaks
            elif c == c'"':
                sp.start = pos
                pos = _scan_string(sc, pos)
                if pos < 0:
                    return -1
                sp.end = pos
                sp.esc = sc.str_esc
            elif c == c'n':
                pos = _scan_literal(sc, pos, b"null", 4)
                if pos < 0:
                    return -1
                sp.start = -1
            else:
                pos = _scan_value(sc, pos, depth)
                if pos < 0:
                    return -1
                if sc.sem_code == SEM_NONE:
                    sc.sem_code = SEM_FIELD_TYPE
                    sc.sem_field = f
                    sc.sem_item = item
        pos = _next(sc, b, n, pos, c'}', &more)
    if pos < 0:
        return -1
    if sc.sem_code != SEM_NONE:
        return pos
    sp = &spans[F_SUBJECT]
    if sp.start < 0 or sp.end - sp.start == 2:
        sc.sem_code = SEM_MISSING_SUBJECT
        sc.sem_item = item
        return pos
    prev = <ParsedEvent>PyList_GET_ITEM(events, PyList_GET_SIZE(events) - 1) if events else None
    ev = ParsedEvent.__new__(ParsedEvent)
    ev.subject = _decoded_like(b, sp, _last_subject if prev is None else prev.subject)
    ev.id = _decoded(b, &spans[F_ID])
    ev.created_at = _decoded_like(b, &spans[F_CREATED_AT],
                                  ZERO_TIME if prev is None else prev.created_at)
    ev.response_subject = _decoded(b, &spans[F_RESPONSE_SUBJECT])
    ev.trace_id = _raw(b, &spans[F_TRACE_ID])
    ev.key = _raw(b, &spans[F_KEY])
    ev.key_value = _decoded(b, &spans[F_KEY])
    sp = &spans[F_PAYLOAD]
    if sp.start >= 0:  # the payload stays in the body: _make_record copies it from there
        ev._body = <bytes>sc.body
        ev._payload_at = sp.start
        ev._payload_end = sp.end
        ev._payload_breaks = payload_breaks
    events.append(ev)
    return pos


cdef class ParsedEvent:
    """One event of a publish body (see scan_body)."""

    def __cinit__(self):
        self.subject = EMPTY
        self.id = EMPTY
        self.created_at = EMPTY
        self.response_subject = EMPTY
        self.trace_id = EMPTY
        self.key = EMPTY
        self.key_value = EMPTY

    @property
    def payload(self):
        """The payload's raw JSON as sent, or None (a new bytes object on each access)."""
        if self._body is None:
            return None
        return self._body[self._payload_at:self._payload_end]

    @property
    def payload_size(self):
        """len(payload), 0 without one, and no copy."""
        return self._payload_end - self._payload_at

    def __repr__(self):
        return (f"ParsedEvent(subject={self.subject!r}, id={self.id!r}, "
                f"created_at={self.created_at!r}, response_subject={self.response_subject!r}, "
                f"trace_id={self.trace_id!r}, key={self.key!r}, payload={self.payload!r})")


class TooManyEvents(ValueError):
    """A batch with more events than scan_body's max_events."""


cpdef tuple scan_body(bytes body, Py_ssize_t max_events=-1):
    """Validate a publish body and extract its events.

    Returns (is_batch, [ParsedEvent, ...]). Raises ValueError with a one-line reason:
    "invalid JSON at byte N: ..." for anything that is not strict RFC 8259 JSON, else
    a shape error ("missing subject", "field key must be a string", "empty batch", ...;
    prefixed with "batch item I: " inside a batch, I 0-based). A batch reaching item
    max_events (if >= 0) raises TooManyEvents there, unscanned beyond: a huge batch costs
    no more than the refusal.
    """
    if body is None:
        raise TypeError("scan_body() argument 'body' must be bytes, not None")
    cdef Scanner sc
    cdef const unsigned char* b = <const unsigned char*>PyBytes_AS_STRING(body)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body), pos, item = 0
    cdef list events = []
    cdef bint is_batch = False, more = False
    sc.buf = b
    sc.body = <PyObject*>body
    sc.n = n
    sc.err_pos = 0
    sc.err_msg = NULL
    sc.str_esc = False
    sc.breaks = 0
    sc.sem_code = SEM_NONE
    sc.sem_field = 0
    sc.sem_item = -1
    pos = _ws(&sc, b, 0, n)
    if pos >= n:
        raise ValueError("empty body")
    if b[pos] == c'{':
        pos = _scan_event(&sc, pos, 1, -1, events)
    elif b[pos] == c'[':
        is_batch = True
        pos = _open(&sc, b, n, pos, 1, c']', &more)
        if not more:
            sc.sem_code = SEM_EMPTY_BATCH
        while more:
            if item == max_events:
                raise TooManyEvents(f"a batch of more than {max_events} events")
            if pos < n and b[pos] == c'{':
                pos = _scan_event(&sc, pos, 2, item, events)
            else:
                pos = _scan_value(&sc, pos, 1)
                if pos >= 0 and sc.sem_code == SEM_NONE:
                    sc.sem_code = SEM_ITEM_NOT_OBJECT
                    sc.sem_item = item
            if pos < 0:
                break
            item += 1
            pos = _next(&sc, b, n, pos, c']', &more)
    else:
        pos = _scan_value(&sc, pos, 0)
        if pos >= 0:
            sc.sem_code = SEM_NOT_OBJECT
    if pos >= 0:
        pos = _ws(&sc, b, pos, n)
        if pos < n:
            pos = _fail(&sc, pos, "unexpected data after the JSON value")
    if pos < 0:
        raise ValueError(f"invalid JSON at byte {sc.err_pos}: {sc.err_msg.decode('ascii')}")
    if sc.sem_code != SEM_NONE:
        raise ValueError(_sem_message(sc.sem_code, sc.sem_field, sc.sem_item))
    return is_batch, events


def _sem_message(int code, int field, Py_ssize_t item):
    if code == SEM_EMPTY_BATCH:
        return "empty batch"
    if code == SEM_NOT_OBJECT:
        return "body must be a JSON object or an array of objects"
    if code == SEM_ITEM_NOT_OBJECT:
        return f"batch item {item} must be a JSON object"
    if code == SEM_FIELD_TYPE:
        msg = f"field {_FIELD_NAMES[field]} must be a string"
    else:
        msg = "missing subject"
    return msg if item < 0 else f"batch item {item}: {msg}"


# --------------------------------------------------------------------------- records

cdef inline Py_ssize_t _esc_size(bytes s) noexcept:
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(s)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(s), total = 0
    for i in range(n):
        total += ESC_LEN[p[i]]
    return total


cdef inline char* _put(char* out, const char* src, Py_ssize_t n) noexcept nogil:
    memcpy(out, src, <size_t>n)
    return out + n


cdef char* _put_esc(char* out, bytes s, Py_ssize_t esc_size) noexcept:
    """Write s as the body of a JSON string (escaping only where needed)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(s)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(s)
    cdef unsigned char c
    if esc_size == n:
        memcpy(out, p, <size_t>n)
        return out + n
    for i in range(n):
        c = p[i]
        if ESC_LEN[c] == 1:
            out[0] = c
            out += 1
        elif c == c'"' or c == c'\\':
            out[0] = c'\\'
            out[1] = c
            out += 2
        elif c == c'\n':
            out[0] = c'\\'
            out[1] = c'n'
            out += 2
        elif c == c'\r':
            out[0] = c'\\'
            out[1] = c'r'
            out += 2
        elif c == c'\t':
            out[0] = c'\\'
            out[1] = c't'
            out += 2
        else:
            memcpy(out, b"\\u00", 4)
            out[4] = HEXDIGITS[c >> 4]
            out[5] = HEXDIGITS[c & 15]
            out += 6
    return out


def make_record(ParsedEvent ev not None, bytes event_id not None, bytes created_at not None):
    """The stored record of an event (see _make_record)."""
    return _make_record(ev, event_id, False, created_at, _esc_size(ev.subject),
                        _esc_size(created_at))


cdef bytes _make_record(ParsedEvent ev, bytes event_id, bint id_made, bytes created_at,
                        Py_ssize_t e_subj, Py_ssize_t e_ca):
    """The stored record of an event: one JSON object on one line (no trailing newline).

    Layout: {"id":"<event_id>","subject":"<subject>"[,"trace_id":<raw>][,"key":<raw>]
    [,"response_subject":"<rs>"][,"created_at":"<created_at>"][,"payload":<raw>]}
    event_id is written as it is (busd.wire.id_problem keeps '"' and '\\' out of it), so
    the id and the subject are found from ID_AT on (busd/_core.pxd).
    Line breaks in the payload (only possible as JSON whitespace) become spaces.
    e_subj and e_ca are the subject's and created_at's escaped sizes (_esc_size), which a
    batch's events share with their subject and created_at objects; id_made: the id is one
    of ours, so it needs no check.
    """
    cdef Py_ssize_t size, e_rs = 0, pl_n = 0
    cdef bytes trace_id = ev.trace_id, key = ev.key, rs = ev.response_subject
    cdef bytes out
    cdef char* o
    cdef char* pstart
    cdef Py_ssize_t i, id_n = PyBytes_GET_SIZE(event_id)
    if not id_made and (not 0 < id_n <= MAX_ID_BYTES or memchr(PyBytes_AS_STRING(event_id),
                                                              c'"', <size_t>id_n) != NULL):
        raise ValueError(f"event id must be 1-{MAX_ID_BYTES} bytes without '\"'")
    size = ID_AT + id_n + SUBJECT_AFTER_ID + e_subj + 1 + 1       # {"id":"…","subject":"…"}
    if PyBytes_GET_SIZE(trace_id):
        size += 12 + PyBytes_GET_SIZE(trace_id)          # ,"trace_id":
    if PyBytes_GET_SIZE(key):
        size += 7 + PyBytes_GET_SIZE(key)                # ,"key":
    if PyBytes_GET_SIZE(rs):
        e_rs = _esc_size(rs)
        size += 21 + e_rs + 1                            # ,"response_subject":"…"
    if PyBytes_GET_SIZE(created_at):
        size += 15 + e_ca + 1                            # ,"created_at":"…"
    if ev._body is not None:
        pl_n = ev._payload_end - ev._payload_at
        size += 11 + pl_n                                # ,"payload":
    out = PyBytes_FromStringAndSize(NULL, size)
    o = PyBytes_AS_STRING(out)
    o = _put(o, b'{"id":"', ID_AT)
    o = _put(o, PyBytes_AS_STRING(event_id), id_n)
    o = _put(o, b'","subject":"', SUBJECT_AFTER_ID)
    o = _put_esc(o, ev.subject, e_subj)
    o[0] = c'"'
    o += 1
    if PyBytes_GET_SIZE(trace_id):
        o = _put(o, b',"trace_id":', 12)
        o = _put(o, PyBytes_AS_STRING(trace_id), PyBytes_GET_SIZE(trace_id))
    if PyBytes_GET_SIZE(key):
        o = _put(o, b',"key":', 7)
        o = _put(o, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
    if PyBytes_GET_SIZE(rs):
        o = _put(o, b',"response_subject":"', 21)
        o = _put_esc(o, rs, e_rs)
        o[0] = c'"'
        o += 1
    if PyBytes_GET_SIZE(created_at):
        o = _put(o, b',"created_at":"', 15)
        o = _put_esc(o, created_at, e_ca)
        o[0] = c'"'
        o += 1
    if ev._body is not None:
        o = _put(o, b',"payload":', 11)
        pstart = o
        o = _put(o, PyBytes_AS_STRING(ev._body) + ev._payload_at, pl_n)
        if ev._payload_breaks:
            for i in range(pl_n):
                if pstart[i] == c'\n' or pstart[i] == c'\r':
                    pstart[i] = c' '
    o[0] = c'}'
    return out


cpdef Py_ssize_t records_size(list records) except -1:
    """sum(map(len, records)) of a list of bytes, without an int object per record: a batch
    publish asks for it on every request."""
    if records is None:
        raise TypeError("records_size() argument 'records' must be list, not None")
    cdef Py_ssize_t i, total = 0
    cdef object rec
    for i in range(PyList_GET_SIZE(records)):
        rec = <object>PyList_GET_ITEM(records, i)
        if type(rec) is not bytes:
            raise TypeError(f"records_size takes a list of bytes, not {type(rec).__name__}")
        total += PyBytes_GET_SIZE(rec)
    return total


def record_id(bytes rec not None):
    """The event id of a record (from ID_AT to the next '"')."""
    cdef Py_ssize_t e = _id_end(PyBytes_AS_STRING(rec), PyBytes_GET_SIZE(rec))
    if e < 0:
        raise ValueError("not a record: no id")
    return rec[ID_AT:e]


_NO_SUBJECT = "not a record: no subject after the id"

# The offsets busd/_core.pxd declares, for tests/test_wire.py to compare with busd.wire.
_RECORD_LAYOUT = {"ID_AT": ID_AT, "ID_LEN": ID_LEN, "ID_END": ID_END, "XID_AT": XID_AT,
                  "SUBJECT_AT": SUBJECT_AT, "MAX_ID_BYTES": MAX_ID_BYTES}


def record_subject(bytes rec not None):
    """The subject of a record, read from the layout (13 bytes after the id's end)."""
    cdef Py_ssize_t start = 0
    cdef Py_ssize_t e = _subject_end(PyBytes_AS_STRING(rec), PyBytes_GET_SIZE(rec), &start)
    if e < 0:
        raise ValueError(_NO_SUBJECT)
    return rec[start:e]


# --------------------------------------------------------------------------- SSE

def sse_chunk(bytes text not None):
    """Wrap bytes as one HTTP/1.1 chunk ("%x\\r\\n" + text + "\\r\\n"); b"" for empty text."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(text)
    cdef bytes out
    cdef char* o
    if n == 0:
        return EMPTY
    out = PyBytes_FromStringAndSize(NULL, _chunk_size(n))
    o = _put_chunk_head(PyBytes_AS_STRING(out), n)
    o = _put(o, PyBytes_AS_STRING(text), n)
    _put(o, b"\r\n", 2)
    return out


cdef inline Py_ssize_t _sse_size(object r) except -1:
    """Bytes of the SSE message of record r."""
    cdef Py_ssize_t e
    if type(r) is not bytes:
        raise TypeError(f"record must be bytes, not {type(r).__name__}")
    e = _id_end(PyBytes_AS_STRING(<bytes>r), PyBytes_GET_SIZE(<bytes>r))
    if e < 0:
        raise ValueError("not a record: no id")
    return SSE_OVERHEAD + e - ID_AT + PyBytes_GET_SIZE(<bytes>r)


cdef inline char* _put_record_sse(char* o, bytes rec) noexcept:
    cdef const char* r = PyBytes_AS_STRING(rec)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(rec)
    return _put_sse(o, r, n, _id_end(r, n))


cdef bytes _frame(list records, Py_ssize_t start, Py_ssize_t end, const unsigned char* sel,
                  Py_ssize_t text):
    """One chunk holding the SSE messages of records[start:end] (only sel[i - start] if sel)."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, _chunk_size(text))
    cdef char* o = _put_chunk_head(PyBytes_AS_STRING(out), text)
    cdef Py_ssize_t i
    for i in range(start, end):
        if sel == NULL or sel[i - start]:
            o = _put_record_sse(o, <bytes>PyList_GET_ITEM(records, i))
    _put(o, b"\r\n", 2)
    return out


def sse_frame(list records not None, Py_ssize_t start=0, Py_ssize_t end=-1):
    """One chunk with an SSE "msg" message per record of records[start:end] (end < 0: to the end)."""
    cdef Py_ssize_t n = PyList_GET_SIZE(records), i, text = 0
    if end < 0 or end > n:
        end = n
    if start < 0:
        start = 0
    if start >= end:
        return EMPTY
    for i in range(start, end):
        text += _sse_size(<object>PyList_GET_ITEM(records, i))
    return _frame(records, start, end, NULL, text)


def sse_frame_matching(list records not None, Pattern pattern not None):
    """Like sse_frame, for the records whose subject matches pattern: (chunk or b"", count)."""
    cdef Py_ssize_t n = PyList_GET_SIZE(records), i, text = 0, count = 0, e, start = 0, size
    cdef unsigned char* sel
    cdef bytes rec
    cdef const char* r
    if n == 0:
        return EMPTY, 0
    sel = <unsigned char*>PyMem_Malloc(<size_t>n)
    if sel == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            size = _sse_size(<object>PyList_GET_ITEM(records, i))  # checks it is a record
            rec = <bytes>PyList_GET_ITEM(records, i)
            r = PyBytes_AS_STRING(rec)
            e = _subject_end(r, PyBytes_GET_SIZE(rec), &start)
            if e < 0:
                raise ValueError(_NO_SUBJECT)
            sel[i] = pattern._matches(<const unsigned char*>r + start, e - start)
            if sel[i]:
                count += 1
                text += size
        if count == 0:
            return EMPTY, 0
        return _frame(records, 0, n, sel, text), count
    finally:
        PyMem_Free(sel)


def sse_of(list records not None, Pattern pattern=None):
    """The chunk of the records that match pattern (None: all of them) and how many those
    are: sse_frame or sse_frame_matching."""
    if pattern is None:
        return sse_frame(records), PyList_GET_SIZE(records)
    return sse_frame_matching(records, pattern)


def first_matching(list records not None, Pattern pattern not None, Py_ssize_t start=0,
                   Py_ssize_t end=-1):
    """The position of the first of records[start:end] whose subject matches pattern, or
    end when none does (end < 0: to the end): how a selective scan steps over what it
    does not deliver without a Python call per record."""
    cdef Py_ssize_t n = PyList_GET_SIZE(records), i, e, at = 0
    cdef object rec
    cdef const char* r
    if end < 0 or end > n:
        end = n
    if start < 0:
        start = 0
    for i in range(start, end):
        rec = <object>PyList_GET_ITEM(records, i)
        if type(rec) is not bytes:
            raise TypeError(f"record must be bytes, not {type(rec).__name__}")
        r = PyBytes_AS_STRING(<bytes>rec)
        e = _subject_end(r, PyBytes_GET_SIZE(<bytes>rec), &at)
        if e < 0:
            raise ValueError(_NO_SUBJECT)
        if pattern._matches(<const unsigned char*>r + at, e - at):
            return i
    return max(start, end)


# --------------------------------------------------------------------------- xid

cdef unsigned char _machine[3]
cdef unsigned int _pid = 0
cdef uint32_t _counter = 0


def _xid_reseed():
    """(Re)initialise pid and counter; runs at import and in a forked child."""
    global _pid, _counter
    _pid = _os.getpid() & 0xFFFF
    r = _os.urandom(3)
    _counter = (r[0] << 16) | (r[1] << 8) | r[2]


def _xid_machine_id():
    try:
        name = _socket.gethostname()
        if not name:
            raise OSError("no hostname")
        return _hashlib.md5(name.encode()).digest()[:3]
    except Exception:
        return _os.urandom(3)


_m = _xid_machine_id()
_machine[0] = _m[0]
_machine[1] = _m[1]
_machine[2] = _m[2]
_xid_reseed()
_os.register_at_fork(after_in_child=_xid_reseed)


cdef inline void _xid_encode(const unsigned char* i, char* d) noexcept nogil:
    # Bit-for-bit the `encode` of github.com/rs/xid (unpadded base32hex, lowercase).
    d[19] = XID_ENC[(i[11] << 4) & 0x1F]
    d[18] = XID_ENC[(i[11] >> 1) & 0x1F]
    d[17] = XID_ENC[(i[11] >> 6) | ((i[10] << 2) & 0x1F)]
    d[16] = XID_ENC[i[10] >> 3]
    d[15] = XID_ENC[i[9] & 0x1F]
    d[14] = XID_ENC[(i[9] >> 5) | ((i[8] << 3) & 0x1F)]
    d[13] = XID_ENC[(i[8] >> 2) & 0x1F]
    d[12] = XID_ENC[(i[8] >> 7) | ((i[7] << 1) & 0x1F)]
    d[11] = XID_ENC[(i[7] >> 4) | ((i[6] << 4) & 0x1F)]
    d[10] = XID_ENC[(i[6] >> 1) & 0x1F]
    d[9] = XID_ENC[(i[6] >> 6) | ((i[5] << 2) & 0x1F)]
    d[8] = XID_ENC[i[5] >> 3]
    d[7] = XID_ENC[i[4] & 0x1F]
    d[6] = XID_ENC[(i[4] >> 5) | ((i[3] << 3) & 0x1F)]
    d[5] = XID_ENC[(i[3] >> 2) & 0x1F]
    d[4] = XID_ENC[(i[3] >> 7) | ((i[2] << 1) & 0x1F)]
    d[3] = XID_ENC[(i[2] >> 4) | ((i[1] << 4) & 0x1F)]
    d[2] = XID_ENC[(i[1] >> 1) & 0x1F]
    d[1] = XID_ENC[(i[1] >> 6) | ((i[0] << 2) & 0x1F)]
    d[0] = XID_ENC[i[0] >> 3]


def _xid_encode_raw(bytes raw not None):
    """The 20-char form of 12 raw id bytes (exposed for tests)."""
    cdef bytes out
    if PyBytes_GET_SIZE(raw) != 12:
        raise ValueError("raw xid must be 12 bytes")
    out = PyBytes_FromStringAndSize(NULL, 20)
    _xid_encode(<const unsigned char*>PyBytes_AS_STRING(raw), PyBytes_AS_STRING(out))
    return out


cdef void _new_xid_into(char* out, uint32_t secs) noexcept:
    """Write a new 20-char xid (rs/xid layout and encoding) made at `secs` at out."""
    global _counter
    cdef unsigned char raw[12]
    cdef uint32_t c
    _counter += 1
    c = _counter
    raw[0] = (secs >> 24) & 0xFF
    raw[1] = (secs >> 16) & 0xFF
    raw[2] = (secs >> 8) & 0xFF
    raw[3] = secs & 0xFF
    raw[4] = _machine[0]
    raw[5] = _machine[1]
    raw[6] = _machine[2]
    raw[7] = (_pid >> 8) & 0xFF
    raw[8] = _pid & 0xFF
    raw[9] = (c >> 16) & 0xFF
    raw[10] = (c >> 8) & 0xFF
    raw[11] = c & 0xFF
    _xid_encode(raw, out)


def new_xid():
    """A new 20-char xid (rs/xid layout and encoding)."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, XID_LEN)
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    _new_xid_into(PyBytes_AS_STRING(out), <uint32_t>ts.tv_sec)
    return out


cdef bytes _new_event_id(uint32_t secs):
    """b"e_" + a new xid made at `secs`, built in place."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, ID_LEN)
    cdef char* o = PyBytes_AS_STRING(out)
    o[0] = c'e'
    o[1] = c'_'
    _new_xid_into(o + 2, secs)
    return out


cdef inline bint _is_xid(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    if n != XID_LEN:
        return False
    for i in range(XID_LEN):
        if XID_DEC[s[i]] == 0xFF:
            return False
    # rs/xid's decode re-encodes the last byte: the final char's 4 padding bits must be 0.
    return (XID_DEC[s[XID_LEN - 1]] & 0x0F) == 0


def is_xid(bytes s not None):
    """True if s is a 20-char xid that github.com/rs/xid's FromString accepts."""
    return _is_xid(<const unsigned char*>PyBytes_AS_STRING(s), PyBytes_GET_SIZE(s))


def xid_time(bytes s not None):
    """Unix seconds embedded in a 20-char xid; ValueError if it is not one."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(s)
    if not _is_xid(p, PyBytes_GET_SIZE(s)):
        raise ValueError(f"not an xid: '{_show(s)}'")
    return _xid_sec(p)


# --------------------------------------------------------------------------- RFC 3339 time

cdef inline int64_t _floordiv(int64_t a, int64_t b) noexcept nogil:
    cdef int64_t q = a / b
    if (a % b != 0) and ((a < 0) != (b < 0)):
        q -= 1
    return q


cdef inline void _civil_from_days(int64_t z, int64_t* y, int* m, int* d) noexcept nogil:
    # Howard Hinnant's algorithm (proleptic Gregorian).
    cdef int64_t era, doe, yoe, doy, mp
    z += 719468
    era = (z if z >= 0 else z - 146096) / 146097
    doe = z - era * 146097
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
    mp = (5 * doy + 2) / 153
    d[0] = <int>(doy - (153 * mp + 2) / 5 + 1)
    m[0] = <int>(mp + 3 if mp < 10 else mp - 9)
    y[0] = yoe + era * 400 + (1 if m[0] <= 2 else 0)


cdef inline int64_t _days_from_civil(int64_t y, int m, int d) noexcept nogil:
    cdef int64_t era, yoe, doy, doe
    if m <= 2:
        y -= 1
    era = (y if y >= 0 else y - 399) / 400
    yoe = y - era * 400
    doy = (153 * (m - 3 if m > 2 else m + 9) + 2) / 5 + d - 1
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
    return era * 146097 + doe - 719468


cdef inline void _put2(char* o, int v) noexcept nogil:
    o[0] = c'0' + v / 10
    o[1] = c'0' + v % 10


cdef int _fmt_seconds(int64_t secs, char* o) noexcept nogil:
    """Write "YYYY-MM-DDTHH:MM:SS" (19 bytes); -1 if the year is outside 0000-9999."""
    cdef int64_t days = _floordiv(secs, 86400), y
    cdef int64_t sod = secs - days * 86400
    cdef int m, d
    _civil_from_days(days, &y, &m, &d)
    if y < 0 or y > 9999:
        return -1
    _put2(o, <int>(y / 100))
    _put2(o + 2, <int>(y % 100))
    o[4] = c'-'
    _put2(o + 5, m)
    o[7] = c'-'
    _put2(o + 8, d)
    o[10] = c'T'
    _put2(o + 11, <int>(sod / 3600))
    o[13] = c':'
    _put2(o + 14, <int>((sod / 60) % 60))
    o[16] = c':'
    _put2(o + 17, <int>(sod % 60))
    return 0


cdef int _fmt_frac(int64_t nsec, char* o) noexcept nogil:
    """Write ".fffffffff" trimmed of trailing zeros, or nothing for 0; return bytes written."""
    cdef int k = 9, i
    if nsec == 0:
        return 0
    while nsec % 10 == 0:
        nsec /= 10
        k -= 1
    o[0] = c'.'
    for i in range(k, 0, -1):
        o[i] = c'0' + <int>(nsec % 10)
        nsec /= 10
    return k + 1


cdef int64_t _cached_sec = -1
cdef char _cached_prefix[19]


def now_rfc3339():
    """Current UTC time in Go's time.RFC3339Nano form, e.g. b"2026-11-27T13:35:21.96607724Z"."""
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return _rfc3339_of(&ts)


cdef bytes _rfc3339_of(timespec* ts):
    """A clock reading in RFC3339Nano form (the seconds' part formatted once per second)."""
    global _cached_sec
    cdef char buf[32]
    cdef int k
    if ts.tv_sec != _cached_sec:
        if _fmt_seconds(ts.tv_sec, _cached_prefix) < 0:
            raise ValueError("clock outside years 0000-9999")
        _cached_sec = ts.tv_sec
    memcpy(buf, _cached_prefix, 19)
    k = 19 + _fmt_frac(ts.tv_nsec, buf + 19)
    buf[k] = c'Z'
    return PyBytes_FromStringAndSize(buf, k + 1)


def format_rfc3339(ns):
    """Nanoseconds since the epoch -> RFC3339Nano UTC bytes (years 0000-9999)."""
    cdef char buf[32]
    cdef int k
    secs, frac = divmod(int(ns), 1_000_000_000)
    if not (-62167219200 <= secs <= 253402300799):
        raise ValueError(f"time out of range for RFC 3339: {ns} ns")
    _fmt_seconds(<int64_t>secs, buf)
    k = 19 + _fmt_frac(<int64_t>frac, buf + 19)
    buf[k] = c'Z'
    return PyBytes_FromStringAndSize(buf, k + 1)


cdef inline int _digits(const unsigned char* p, int n) noexcept nogil:
    """Value of n ASCII digits, or -1."""
    cdef int v = 0, i
    for i in range(n):
        if not (c'0' <= p[i] <= c'9'):
            return -1
        v = v * 10 + (p[i] - c'0')
    return v


cdef inline bint _leap(int64_t y) noexcept nogil:
    return (y % 4 == 0 and y % 100 != 0) or y % 400 == 0


def parse_rfc3339(bytes s not None):
    """RFC 3339 timestamp -> nanoseconds since the epoch; ValueError if malformed.

    Form: YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|+hh:mm|-hh:mm), upper-case T and Z (as Go).
    """
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(s)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(s), pos = 19
    cdef int y, mo, d, hh, mi, ss, oh, om, dim, k
    cdef int64_t frac = 0, secs, off = 0
    cdef int fd = 0
    cdef unsigned char sign
    if (n < 20 or p[4] != c'-' or p[7] != c'-' or p[10] != c'T' or p[13] != c':'
            or p[16] != c':'):
        raise ValueError(f"not an RFC 3339 time: '{_show(s)}'")
    y = _digits(p, 4)
    mo = _digits(p + 5, 2)
    d = _digits(p + 8, 2)
    hh = _digits(p + 11, 2)
    mi = _digits(p + 14, 2)
    ss = _digits(p + 17, 2)
    if y < 0 or mo < 0 or d < 0 or hh < 0 or mi < 0 or ss < 0:
        raise ValueError(f"not an RFC 3339 time: '{_show(s)}'")
    if p[pos] == c'.':
        pos += 1
        while pos < n and c'0' <= p[pos] <= c'9':
            if fd == 9:
                raise ValueError(f"more than 9 fraction digits in time '{_show(s)}'")
            frac = frac * 10 + (p[pos] - c'0')
            fd += 1
            pos += 1
        if fd == 0:
            raise ValueError(f"empty fraction in time '{_show(s)}'")
        for k in range(fd, 9):
            frac *= 10
    if pos < n and p[pos] == c'Z' and pos + 1 == n:
        off = 0
    elif pos + 6 == n and (p[pos] == c'+' or p[pos] == c'-') and p[pos + 3] == c':':
        sign = p[pos]
        oh = _digits(p + pos + 1, 2)
        om = _digits(p + pos + 4, 2)
        if oh < 0 or om < 0 or oh > 23 or om > 59:
            raise ValueError(f"invalid time zone offset in time '{_show(s)}'")
        off = oh * 3600 + om * 60
        if sign == c'-':
            off = -off
    else:
        raise ValueError(f"not an RFC 3339 time: '{_show(s)}'")
    if mo < 1 or mo > 12:
        raise ValueError(f"month out of range in time '{_show(s)}'")
    if mo == 2:
        dim = 29 if _leap(y) else 28
    elif mo == 4 or mo == 6 or mo == 9 or mo == 11:
        dim = 30
    else:
        dim = 31
    if d < 1 or d > dim:
        raise ValueError(f"day out of range in time '{_show(s)}'")
    if hh > 23 or mi > 59 or ss > 59:
        raise ValueError(f"time of day out of range in time '{_show(s)}'")
    secs = _days_from_civil(y, mo, d) * 86400 + hh * 3600 + mi * 60 + ss - off
    return <object>secs * 1_000_000_000 + frac


# -- publish: validate a scanned body's events and turn them into records ------------------

cdef bytes ZERO_TIME = b"0001-01-01T00:00:00Z"
cdef bytes INBOX_NS = INBOX_NAMESPACE.encode()


cdef inline Py_ssize_t _namespace_len(bytes subject) noexcept:
    """Length of a validated subject's first segment."""
    cdef const char* p = PyBytes_AS_STRING(subject)
    return <const char*>memchr(p, c'.', <size_t>PyBytes_GET_SIZE(subject)) - p


cdef bytes _last_namespace = b""  # the namespace the last publish went to


cdef bytes _namespace_of(bytes subject, Py_ssize_t m):
    """The first `m` bytes of `subject`: the object the publish before got when it had the
    same namespace, as most do (no new bytes, and a hash the broker's lookup has cached)."""
    global _last_namespace
    if m == PyBytes_GET_SIZE(_last_namespace) and memcmp(
            PyBytes_AS_STRING(subject), PyBytes_AS_STRING(_last_namespace), <size_t>m) == 0:
        return _last_namespace
    _last_namespace = subject[:m]
    return _last_namespace


# The last subject stamp_events found valid, with what it worked out of it: the scan of the
# next publish gives its event this same object when the subject's text is the same (most
# publishes repeat a subject), and a subject that *is* this object needs no second look.
cdef bytes _last_subject = None
cdef Py_ssize_t _last_subject_ns_len = 0, _last_subject_esc = 0


cdef void _remember_subject(bytes subject) noexcept:
    global _last_subject, _last_subject_ns_len, _last_subject_esc
    _last_subject = subject
    _last_subject_ns_len = _namespace_len(subject)
    _last_subject_esc = _esc_size(subject)


cdef Py_ssize_t MAX_FIELD_JSON = C_MAX_FIELD_BYTES + 2  # with the quotes of a JSON string


cdef bytes _created_at(bytes given):
    """A publisher's created_at, in the one form records keep."""
    try:
        return format_rfc3339(parse_rfc3339(given))
    except ValueError:
        raise ValueError(f"invalid created_at '{_show(given)}': expected RFC 3339, "
                         "e.g. 2026-11-27T13:20:58.365157351Z") from None


cdef inline void _fill(list items, Py_ssize_t i, object item):
    """items[i] = item in a list made by PyList_New(n), whose slots hold NULL."""
    Py_INCREF(item)
    PyList_SET_ITEM(items, i, item)


cpdef tuple stamp_events(list events, bint is_batch):
    """Check a publish's events (SPEC §3.1) and build their stored records.

    Returns (namespace, ids, created_ats, records, keyed) where keyed lists the
    (subject, key) pairs of events that carry a dedup key, None when none does. Raises
    ValueError with the one-line reason of a 400: a key or trace_id longer than
    MAX_FIELD_BYTES, bad subject or response_subject, a batch spanning namespaces, a batch
    with a response_subject or on the inbox namespace, a bad id or created_at. Whether the
    namespace is declared is the caller's business.

    The clock is read once per publish: the events it stamps share their created_at. A
    batch's events mostly share a subject too, checked once.
    """
    if events is None:
        raise TypeError("stamp_events() argument 'events' must be list, not None")
    cdef Py_ssize_t i, n = PyList_GET_SIZE(events)
    cdef ParsedEvent ev
    cdef bytes namespace = None, checked = None, subject, event_id, created_at, now = None
    cdef bytes sized_ca = None
    cdef Py_ssize_t ns_len = 0, m, e_subj = 0, e_ca = 0
    cdef bint id_made
    # sized once: appending to an empty list reallocates it (the lists hold NULLs until
    # filled, which a raise in between leaves to list_dealloc, as it allows)
    cdef list ids = PyList_New(n), stamps = PyList_New(n), records = PyList_New(n)
    cdef list keyed = None  # rare: made at the first keyed event
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    for i in range(n):
        ev = <ParsedEvent>PyList_GET_ITEM(events, i)
        if PyBytes_GET_SIZE(ev.key) > MAX_FIELD_JSON or \
                PyBytes_GET_SIZE(ev.trace_id) > MAX_FIELD_JSON:
            field = "key" if PyBytes_GET_SIZE(ev.key) > MAX_FIELD_JSON else "trace_id"
            where = f"batch item {i}: " if is_batch else ""
            raise ValueError(f"{where}field {field} is longer than {MAX_FIELD_BYTES} bytes")
        subject = ev.subject
        if checked is None or subject != checked:
            if subject is not _last_subject:
                _check_tokens(subject, False)
                _remember_subject(subject)
            m = _last_subject_ns_len
            if namespace is None:
                namespace = _namespace_of(subject, m)
                ns_len = m
            elif m != ns_len or memcmp(PyBytes_AS_STRING(subject),
                                       PyBytes_AS_STRING(namespace), <size_t>m) != 0:
                raise ValueError(f"a batch must stay in one namespace: found "
                                 f"'{_show(namespace)}' and '{_show(subject[:m])}'")
            checked = subject
            e_subj = _last_subject_esc
        if PyBytes_GET_SIZE(ev.response_subject):
            if is_batch:
                raise ValueError("events in a batch cannot have a response_subject")
            try:
                _check_tokens(ev.response_subject, False)
            except ValueError as exc:
                raise ValueError(f"response_subject: {exc}") from None
        if PyBytes_GET_SIZE(ev.key_value):
            if keyed is None:
                keyed = []
            keyed.append((subject, ev.key_value))
        event_id = ev.id
        id_made = not PyBytes_GET_SIZE(event_id)
        if id_made:
            event_id = _new_event_id(<uint32_t>ts.tv_sec)
        else:
            problem = id_problem(event_id)
            if problem is not None:
                raise ValueError(problem)
        created_at = ev.created_at
        if PyBytes_GET_SIZE(created_at) == 0 or created_at == ZERO_TIME:
            if now is None:
                now = _rfc3339_of(&ts)
            created_at = now
        else:
            created_at = _created_at(created_at)
        if created_at is not sized_ca:
            sized_ca, e_ca = created_at, _esc_size(created_at)
        _fill(ids, i, event_id)
        _fill(stamps, i, created_at)
        _fill(records, i, _make_record(ev, event_id, id_made, created_at, e_subj, e_ca))
    if is_batch and namespace == INBOX_NS:
        raise ValueError("inbox (_bus_) subjects cannot be published in a batch")
    return namespace, ids, stamps, records, keyed


cpdef list supplied_ids(list events):
    """The ids the publisher gave (restore keeps them), in order; None when it gave none,
    as publishers almost always do: the broker refuses one a namespace already holds (409),
    and this check must cost next to nothing for everyone else (not even an empty list)."""
    if events is None:
        raise TypeError("supplied_ids() argument 'events' must be list, not None")
    cdef Py_ssize_t i, n = PyList_GET_SIZE(events)
    cdef ParsedEvent ev
    cdef list out = None
    for i in range(n):
        ev = <ParsedEvent>PyList_GET_ITEM(events, i)
        if PyBytes_GET_SIZE(ev.id):
            if out is None:
                out = []
            out.append(ev.id)
    return out


# --------------------------------------------------------------------------- clock

cdef inline double _seconds(timespec ts) noexcept nogil:
    """A clock reading in seconds, rounded as Python rounds it (nanoseconds / 1e9)."""
    return <double>(<long long>ts.tv_sec * 1000000000 + ts.tv_nsec) / 1e9


cpdef double monotonic():
    """time.monotonic() (the same clock, CLOCK_MONOTONIC) as a C call: the connection reads
    it on every read and every deferred answer, where time.monotonic() was a Python call."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return _seconds(ts)


cpdef double wall_clock():
    """time.time() (CLOCK_REALTIME) as a C call: every answer's Date comes from it."""
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return _seconds(ts)


# --------------------------------------------------------------------------- HTTP header names

# The names busd reads and those clients (Go, curl, browsers, wrk) commonly send, lower-case:
# header_name gives these objects back, so a request's header dict hashes none of them anew.
cdef tuple _HEADER_NAMES = (
    b"host", b"content-length", b"content-type", b"user-agent", b"accept",
    b"accept-encoding", b"authorization", b"connection", b"origin", b"expect",
    b"transfer-encoding", b"last-event-id", b"cache-control", b"referer",
    b"accept-language", b"if-none-match", b"upgrade", b"proxy-connection")
cdef enum:
    HEADER_NAME_ROOM = 24  # longer names than any of them are lowered by bytes.lower()
# _HEADER_NAMES by their length (0 to HEADER_NAME_ROOM): a name is compared with 1 to 4
cdef list _NAMES_BY_LENGTH = [tuple(name for name in _HEADER_NAMES if len(name) == n)
                              for n in range(HEADER_NAME_ROOM + 1)]


cpdef bytes header_name(bytes raw):
    """`raw.lower()` (ASCII letters only, as bytes.lower): for one of _HEADER_NAMES, in any
    spelling, that same object and no allocation. Half of what a header cost the connection
    was lower() and hashing its new object."""
    return _header_name(<const unsigned char*>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))


cdef bytes _header_name(const unsigned char* s, Py_ssize_t n):
    cdef Py_ssize_t i
    cdef unsigned char low[HEADER_NAME_ROOM]
    cdef unsigned char c
    cdef bytes name
    cdef tuple same_length
    if n > HEADER_NAME_ROOM:
        return PyBytes_FromStringAndSize(<const char*>s, n).lower()
    for i in range(n):
        c = s[i]
        low[i] = c + 32 if 65 <= c <= 90 else c
    same_length = <tuple>PyList_GET_ITEM(_NAMES_BY_LENGTH, n)
    for i in range(PyTuple_GET_SIZE(same_length)):
        name = <bytes>PyTuple_GET_ITEM(same_length, i)
        if memcmp(PyBytes_AS_STRING(name), low, n) == 0:
            return name
    return PyBytes_FromStringAndSize(<char*>low, n)


class HeadError(ValueError):
    """read_head found a head it cannot take (a second Host), or none where llhttp ended one."""


cdef bytes _HOST_NAME = _HEADER_NAMES[0]  # "host": header_name gives this object
# the names llhttp gives a meaning beyond their value (framing, the connection's fate)
cdef bytes _LENGTH_NAME = header_name(b"content-length")
cdef tuple _LLHTTP_NAMES = tuple(header_name(name) for name in (
    b"connection", b"proxy-connection", b"transfer-encoding", b"upgrade", b"expect"))


cpdef tuple read_head(bytes data, Py_ssize_t start, bytes method):
    """The request head llhttp has just accepted, read from its bytes: (target, headers, end).

    `data[start:]` holds the head (after any blank lines llhttp skipped), `end` is where it
    ends (past its empty line). `headers` maps names as header_name gives them to values,
    leading blanks stripped (trailing ones kept, as llhttp reports them); a repeated name's
    values are joined by ", " (RFC 9110 §5.3), a second Host raises HeadError (RFC 9112
    §3.2). llhttp checked the syntax (CRLF line ends, token names, no folding), so lines only
    need splitting: asking httptools for each header instead made two bytes objects and four
    Python calls per header, 1,600 instructions of a request's ~20,000.
    """
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data), m = PyBytes_GET_SIZE(method)
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef const unsigned char* line
    cdef const unsigned char* colon
    cdef const unsigned char* cr
    cdef Py_ssize_t i = start, url_at, value_at
    cdef dict headers = {}
    cdef bytes target
    if not 0 <= start <= n:
        raise HeadError(f"a head cannot start at {start} of {n} bytes")
    while i < n and (s[i] == 13 or s[i] == 10):
        i += 1
    if i + m >= n or memcmp(s + i, PyBytes_AS_STRING(method), m) != 0 or s[i + m] != 32:
        raise HeadError(f"no request line for {method!r} where the head should start")
    i += m
    while i < n and s[i] == 32:
        i += 1
    url_at = i
    while i < n and s[i] != 32:
        i += 1
    target = PyBytes_FromStringAndSize(<const char*>s + url_at, i - url_at)
    cr = <const unsigned char*>memchr(s + i, 13, n - i)
    while cr != NULL and cr + 1 < s + n and cr[1] == 10:
        i = cr - s + 2  # the start of the next line
        if i + 1 < n and s[i] == 13 and s[i + 1] == 10:
            return target, headers, i + 2
        line = s + i
        cr = <const unsigned char*>memchr(line, 13, n - i)
        if cr == NULL:
            break
        colon = <const unsigned char*>memchr(line, 58, cr - line)
        if colon == NULL:
            break
        value_at = colon - s + 1
        while value_at < cr - s and (s[value_at] == 32 or s[value_at] == 9):
            value_at += 1
        _add_header(headers, _header_name(line, colon - line),
                    PyBytes_FromStringAndSize(<const char*>s + value_at, cr - s - value_at))
    raise HeadError("the head llhttp accepted has no end")


cdef inline int _add_header(dict headers, bytes name, bytes value) except -1:
    """A repeated name's values joined by ", " (RFC 9110 §5.3); HeadError for a second Host
    (RFC 9112 §3.2)."""
    cdef Py_ssize_t size = len(headers)  # a repeat adds none (`earlier is value` fails:
    cdef object earlier = headers.setdefault(name, value)  # short bytes are shared)
    if len(headers) == size:
        if name is _HOST_NAME:
            raise HeadError("more than one Host header")
        headers[name] = earlier + b", " + value
    return 0


cdef bytes _POST = b"POST"
cdef bytes _PUT = b"PUT"


cdef class PlainRequest:
    """Reads a whole request from a read's bytes when it is plain: `POST` or `PUT`, HTTP/1.1,
    a Host, at most one Content-Length and its body all there; names, target and values of
    the plainest bytes (no obs-text, no trailing blanks); no Connection, Proxy-Connection,
    Transfer-Encoding, Upgrade or Expect. Those are what a publisher or an acker sends,
    and for them llhttp's parse and httptools' callbacks were ~15 % of a publish. `read`
    answers -1 for anything else (not a request busd refuses: one it leaves to llhttp),
    so a plain request means exactly what llhttp makes of it
    (tests/server/test_plain_request.py)."""

    cpdef Py_ssize_t read(self, bytes data, Py_ssize_t start, Py_ssize_t max_body,
                          Py_ssize_t max_target, Py_ssize_t max_head) except -2:
        """The end of the plain request at `data[start:]` (method, target, headers and body
        set), or -1."""
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data), i = start, at, name_end, value_end, j, k
        cdef Py_ssize_t length = -1, end
        cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef bytes method, name
        cdef dict headers = {}
        cdef bint host = False
        if not 0 <= start <= n:
            return -1
        if n - i > 5 and memcmp(s + i, b"POST ", 5) == 0:
            method, i = _POST, i + 5
        elif n - i > 4 and memcmp(s + i, b"PUT ", 4) == 0:
            method, i = _PUT, i + 4
        else:
            return -1
        at = i
        while i < n and TARGET_PLAIN[s[i]]:
            i += 1
        if i == at or s[at] != c'/' or i - at > max_target or n - i < 11 or \
                memcmp(s + i, b" HTTP/1.1\r\n", 11) != 0:
            return -1
        target = PyBytes_FromStringAndSize(<const char*>s + at, i - at)
        i += 11
        while True:
            if i - start > max_head or n - i < 2:
                return -1
            if s[i] == 13:
                if s[i + 1] != 10:
                    return -1
                i += 2
                break
            at = i
            while i < n and HTTP_TCHAR[s[i]]:
                i += 1
            if i == at or i >= n or s[i] != c':':
                return -1
            name_end = i
            i += 1
            while i < n and (s[i] == 32 or s[i] == 9):
                i += 1
            value_end = i
            while value_end < n and VALUE_PLAIN[s[value_end]]:
                value_end += 1
            if n - value_end < 2 or s[value_end] != 13 or s[value_end + 1] != 10 or \
                    (value_end > i and (s[value_end - 1] == 32 or s[value_end - 1] == 9)):
                return -1
            name = _header_name(s + at, name_end - at)
            if name is _LENGTH_NAME:
                if length >= 0 or not 0 < value_end - i <= 15:
                    return -1
                length = 0
                for j in range(i, value_end):
                    if not c'0' <= s[j] <= c'9':
                        return -1
                    length = length * 10 + (s[j] - c'0')
            elif name is _HOST_NAME:
                if host:
                    return -1
                host = True
            else:
                for k in range(PyTuple_GET_SIZE(_LLHTTP_NAMES)):  # (all of them header_name's
                    if name is <bytes>PyTuple_GET_ITEM(_LLHTTP_NAMES, k):  # objects: `is`)
                        return -1
            _add_header(headers, name, PyBytes_FromStringAndSize(<const char*>s + i,
                                                                 value_end - i))
            i = value_end + 2
        if i - start > max_head or not host:
            return -1
        end = i + (length if length > 0 else 0)
        if end - i > max_body or end > n:
            return -1
        self.method, self.target, self.headers = method, target, headers
        self.body = PyBytes_FromStringAndSize(<const char*>s + i, end - i) if end > i else EMPTY
        return end


# --------------------------------------------------------------------------- publish answers

cdef inline Py_ssize_t _decimal(long long v, char* buf) noexcept nogil:
    """v in decimal into buf (at least 21 bytes), from its end; the count written."""
    cdef unsigned long long u = <unsigned long long>(-v) if v < 0 else <unsigned long long>v
    cdef Py_ssize_t k = 0
    while True:
        k += 1
        buf[21 - k] = c'0' + <char>(u % 10)
        u //= 10
        if u == 0:
            break
    if v < 0:
        k += 1
        buf[21 - k] = c'-'
    return k


cdef inline Py_ssize_t _bytes_item_size(list items, Py_ssize_t i) except -1:
    cdef object item = <object>PyList_GET_ITEM(items, i)
    if type(item) is not bytes:
        raise TypeError(f"published_response takes lists of bytes, not {type(item).__name__}")
    return PyBytes_GET_SIZE(item)


cpdef bytes published_response(bytes head, list ids, list created_at, long long first_index,
                               bint is_batch, bint close):
    """The whole `202` answer to a stored publish, after `head` (status line, CORS, Date):
    one event's id, created_at and index as X-Bus-Event-* headers, or a batch's
    {"count","first_index","ids"} body. Every publish is answered with one, so it is built
    in one buffer instead of Python's formatting of three pieces (~0.5 µs a request)."""
    if head is None or ids is None or created_at is None:
        raise TypeError("published_response() takes bytes and two lists, not None")
    cdef char index_buf[21]
    cdef char length_buf[21]
    cdef char count_buf[21]
    cdef Py_ssize_t index_n = _decimal(first_index, index_buf), count_n = 0, length_n
    cdef Py_ssize_t n = PyList_GET_SIZE(ids), i, body = 0, size
    cdef bytes out, item
    cdef char* o
    if n == 0 or (not is_batch and PyList_GET_SIZE(created_at) == 0):
        raise ValueError("published_response needs an id (and a created_at) per event")
    size = PyBytes_GET_SIZE(head) + (19 if close else 0)
    if is_batch:
        count_n = _decimal(n, count_buf)
        body = 36 + count_n + index_n + 3 * (n - 1)  # {"count":,"first_index":,"ids":[""]}
        for i in range(n):
            body += _bytes_item_size(ids, i)
        length_n = _decimal(body, length_buf)
        size += 32 + 20 + length_n + body  # Content-Type: application/json, Content-Length
    else:
        size += (16 + _bytes_item_size(ids, 0) + 26 + _bytes_item_size(created_at, 0) + 21
                 + index_n + 2 + 21)
    out = PyBytes_FromStringAndSize(NULL, size)
    o = _put(PyBytes_AS_STRING(out), PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head))
    if is_batch:
        o = _put(o, b"Content-Type: application/json\r\n", 32)
        if close:
            o = _put(o, b"Connection: close\r\n", 19)
        o = _put(o, b"Content-Length: ", 16)
        o = _put(o, length_buf + 21 - length_n, length_n)
        o = _put(o, b"\r\n\r\n", 4)
        o = _put(o, b'{"count":', 9)
        o = _put(o, count_buf + 21 - count_n, count_n)
        o = _put(o, b',"first_index":', 15)
        o = _put(o, index_buf + 21 - index_n, index_n)
        o = _put(o, b',"ids":["', 9)
        for i in range(n):
            if i:
                o = _put(o, b'","', 3)
            item = <bytes>PyList_GET_ITEM(ids, i)
            o = _put(o, PyBytes_AS_STRING(item), PyBytes_GET_SIZE(item))
        _put(o, b'"]}', 3)
    else:
        item = <bytes>PyList_GET_ITEM(ids, 0)
        o = _put(o, b"X-Bus-Event-Id: ", 16)
        o = _put(o, PyBytes_AS_STRING(item), PyBytes_GET_SIZE(item))
        item = <bytes>PyList_GET_ITEM(created_at, 0)
        o = _put(o, b"\r\nX-Bus-Event-Created-At: ", 26)
        o = _put(o, PyBytes_AS_STRING(item), PyBytes_GET_SIZE(item))
        o = _put(o, b"\r\nX-Bus-Event-Index: ", 21)
        o = _put(o, index_buf + 21 - index_n, index_n)
        o = _put(o, b"\r\n", 2)
        if close:
            o = _put(o, b"Connection: close\r\n", 19)
        _put(o, b"Content-Length: 0\r\n\r\n", 21)
    return out
