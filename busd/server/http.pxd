# The C layout of http.py's classes when it is compiled (setup.py): typed attributes and
# C-level calls between the methods of one connection. http.py itself stays the source,
# and runs uncompiled as the oracle in tests/server/test_http_compiled.py.

cimport cython

from busd._core cimport PlainRequest, header_name, monotonic, read_head, wall_clock
from busd.server.body_budget cimport BodyBudget
from busd.server.coalesce cimport WriteCoalescer


cdef class _Heads:
    cdef public double second
    cdef dict cache
    cdef int last_status
    cdef bytes last_head

    @cython.locals(now=double)
    cpdef bytes get(self, int status)


# limits and states the connection compares on every request, as C values (module globals
# of Python are boxed for each comparison)
cdef Py_ssize_t MAX_URL_BYTES, MAX_HEADER_BYTES, MAX_PIPELINED, MAX_CHUNK_LINE
cdef Py_ssize_t MAX_HELD  # coalesce.py's, a C value here: write compares it per delivery
cdef int _IDLE, _HEADERS, _BODY, _WAITING, _STREAM
cdef bytes _HOST, _CONTENT_LENGTH, _TRANSFER_ENCODING, _EXPECT
cdef dict _NO_HEADERS

cdef _Heads _HEADS
cdef PlainRequest _PLAIN

cpdef bytes status_head(int status)

cdef class Request:
    cdef public bytes method, url, body
    cdef public dict headers
    cdef public bint keep_alive


@cython.locals(request=Request)
cdef Request new_request(bytes method, bytes url, dict headers, bytes body, bint keep_alive)


cdef class Limits:
    cdef public Py_ssize_t max_body, max_event_body, event_body_digits
    cdef public double header_timeout, body_timeout, idle_timeout


cdef class _ChunkLines:
    cdef bint in_line, line_here
    cdef Py_ssize_t at, carry, base
    cdef bytes tail

    cpdef Py_ssize_t line_end(self, bytes read, Py_ssize_t body_size)
    cpdef bint data_end(self, Py_ssize_t body_size)
    cpdef Py_ssize_t message_end(self, bytes read)
    cpdef Py_ssize_t read_end(self, bytes read, Py_ssize_t body_size)


cdef class HttpConnection:
    cdef public object handler, connections, transport, parser
    cdef public WriteCoalescer coalescer
    cdef public Limits limits
    cdef public BodyBudget budget
    cdef Py_ssize_t _tickets, _written, _close_after
    cdef dict _early
    cdef public object stream
    cdef object _feed, _method, _keep_alive, _send  # bound methods of the parser, transport
    cdef public bint chunked, is_closed, write_paused, read_paused, budget_wait
    cdef public int state
    cdef public double since, last_write
    cdef double _read_at
    cdef public object _unsent
    cdef public Py_ssize_t _unsent_bytes
    # CorsHttpConnection, a Python subclass, reads the method and headers, refuses a request
    cdef public dict _headers
    cdef public object _reject
    cdef readonly bytes _method_name
    cdef bytes _url
    cdef Py_ssize_t _request_at, _body_at
    cdef bytearray _head_piece
    cdef bytes _body
    cdef list _body_pieces
    cdef Py_ssize_t _body_size, _held, _ignored, _linger_input, _body_limit
    cdef object _linger
    cdef _ChunkLines _chunks
    cdef bytes _read
    cdef bint _failed, _plain_ok

    cpdef reply(self, data, bint close=*)
    cpdef Py_ssize_t unanswered(self)
    cpdef Py_ssize_t defer(self)
    cpdef fulfil(self, Py_ssize_t ticket, data, bint close=*)
    cdef _drop_unanswered(self)
    cpdef write(self, data)
    cpdef flush(self)
    cpdef close(self)
    cpdef _write_response(self, data, bint close)
    @cython.locals(at=Py_ssize_t, n=Py_ssize_t, end=Py_ssize_t, limits=Limits)
    cdef bytes _read_plain(self, bytes data)
    cdef _hold_head(self)
    @cython.locals(start=Py_ssize_t, held=Py_ssize_t, end=Py_ssize_t)
    cdef _take_head(self)
    cdef _head_taken(self)
    cpdef check_origin(self)
    cdef _count_body(self)
    cdef _head_too_large(self)
    cdef _target_too_long(self)
    cdef _ignore(self, Py_ssize_t size)
    cdef _start_chunked(self, bytes coding)
    cdef _chunk_line_too_long(self)
    cdef bint _body_skipped(self)
    cdef _past_body_limit(self)
    cdef _refuse_body(self, str reason)
    cdef _release_body(self)
    cdef bytes _body_read(self)
    cdef _hand_on(self, bint keep_alive)
    cdef _forget_request(self)
    cdef _idle(self, double now)
    cdef _fail(self, int status, str reason)
    cdef _pause_reading(self)
    cdef _resume_reading(self)
