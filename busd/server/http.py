# cython: annotation_typing=False, nonecheck=True
# cython: wraparound=True, boundscheck=True, cdivision=False
"""HTTP/1.1 on one connection: httptools parsing, keep-alive, pipelining, limits and flow control.

A plain request (busd._core.PlainRequest: a `POST` or `PUT` as publishers and ackers send
it) is read in C without llhttp, and means what llhttp would have made of it; every other
request is llhttp's (tests/server/test_plain_request.py holds the two to the same result).

The connection knows HTTP, not logs: every complete request goes to `handler(conn, request)`,
which answers through `reply` (now) or `defer` + `fulfil` (later, e.g. after a group
commit) or `start_stream` (SSE). Responses always leave in request order.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from email.utils import formatdate

import httptools

from busd._core import HeadError, PlainRequest, header_name, monotonic, read_head, wall_clock
from busd.bus.sink import Stream
from busd.server.body_budget import BodyBudget, peer_gone
from busd.server.coalesce import MAX_HELD, WriteCoalescer

log = logging.getLogger("busd.server.http")

# Bus's CORS headers, with DELETE added for `DELETE /groups` (a page on another origin,
# the console served elsewhere, deletes a group after a preflight)
CORS_HEADERS = (
    b"Access-Control-Allow-Origin: *\r\n"
    b"Access-Control-Allow-Methods: GET, POST, PUT, DELETE, OPTIONS\r\n"
    b"Access-Control-Allow-Headers: Content-Type, Authorization, Last-Event-ID, X-BUS-EVENT-ID, "
    b"X-BUS-EVENT-CREATED-AT, X-BUS-EVENT-INDEX, X-BUS-CONSUMER-ID\r\n"
    b"Access-Control-Expose-Headers: X-BUS-EVENT-ID, X-BUS-EVENT-CREATED-AT, "
    b"X-BUS-EVENT-INDEX, X-BUS-CONSUMER-ID\r\n"
)

REASONS = {
    200: b"OK", 202: b"Accepted", 204: b"No Content", 304: b"Not Modified",
    400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout", 409: b"Conflict", 413: b"Content Too Large",
    414: b"URI Too Long", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 503: b"Service Unavailable", 507: b"Insufficient Storage",
}

MAX_URL_BYTES = 16 << 10
MAX_HEADER_BYTES = 64 << 10  # a request's head: request line and header lines
MAX_STREAM_INPUT = 4 << 10  # what a streaming client may send after its request
LINGER_SECONDS = 2.0  # how long a connection is read after its last answer (see linger)
LINGER_INPUT = 64 << 20  # what it may send meanwhile (the largest request) before it is closed
LINGER_HEAD_INPUT = 64 << 10  # ... when no body was being read: the rest of a head, at most
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
MAX_PIPELINED = 64  # pending responses per connection before we stop reading
EVENT_ENVELOPE = 64 << 10  # room a single event's body has beyond its payload's limit
MAX_CHUNK_LINE = 4 << 10  # a chunk's size line: hex size, extensions, CRLF
_ABSOLUTE_FORM = re.compile(rb"https?://[^/?]*", re.IGNORECASE)  # scheme and authority
_NO_HEADERS: dict[bytes, bytes] = {}  # a request's until its head is read; never written
# the names every request's header dict is asked for, as header_name gives them: the dict
# finds such a key by identity, where an equal object of our own would be compared byte by byte
_HOST, _CONTENT_LENGTH, _TRANSFER_ENCODING, _EXPECT = (
    header_name(name) for name in (b"host", b"content-length", b"transfer-encoding", b"expect"))


def restrict_cors(origins: tuple[str, ...]) -> None:
    """Answer browsers only from these origins (`--cors-origins`): heads lose the `*`, and
    CorsHttpConnection echoes an allowed request `Origin` instead."""
    global CORS_HEADERS
    CORS_HEADERS = b"".join(line + b"\r\n" for line in CORS_HEADERS.split(b"\r\n")
                            if line and not line.startswith(b"Access-Control-Allow-Origin:"))
    CORS_HEADERS += b"Vary: Origin\r\n"
    _HEADS.second = 0
    CorsHttpConnection.allowed = frozenset(origin.encode() for origin in origins)


class _Heads:
    """Status line + CORS + `Date:` per status, rebuilt at most once per second."""

    def __init__(self) -> None:
        self.second = 0.0  # the whole second the cached heads are dated
        self.cache: dict[int, bytes] = {}
        self.last_status = 0  # the status asked for last, and its head: answers come in runs
        self.last_head = b""

    def get(self, status: int) -> bytes:
        now = wall_clock()  # compared as a float: int() of it costs more than the lookup
        if not self.second <= now < self.second + 1:  # a new second, or the clock stepped
            self.second = float(int(now))
            self.cache = {}
            self.last_status = 0
        if status == self.last_status:
            return self.last_head
        head = self.cache.get(status)
        if head is None:
            head = self.cache[status] = b"".join((
                b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Unknown")), CORS_HEADERS,
                b"Date: ", formatdate(self.second, usegmt=True).encode(), b"\r\n"))
        self.last_status, self.last_head = status, head
        return head


_HEADS = _Heads()


def status_head(status: int) -> bytes:
    """A response's first lines (status, CORS, Date): what busd._core.published_response
    builds the answer to a publish on."""
    return _HEADS.get(status)


def response(status: int, body: bytes = b"", headers: bytes = b"",
             content_type: bytes = b"text/plain; charset=utf-8", close: bool = False) -> bytes:
    """One complete HTTP/1.1 response with the CORS headers every busd answer carries."""
    if not body and not close:
        return b"%s%sContent-Length: 0\r\n\r\n" % (_HEADS.get(status), headers)
    return b"".join((_HEADS.get(status), headers,
                     b"Content-Type: " + content_type + b"\r\n" if body else b"",
                     b"Connection: close\r\n" if close else b"",
                     b"Content-Length: %d\r\n\r\n" % len(body), body))


def not_modified(headers: bytes, close: bool = False) -> bytes:
    """A 304: the head alone, with no Content-Length (it would have to be the full body's,
    RFC 9110 §8.6), so the connection stays usable for the next request."""
    return b"".join((_HEADS.get(304), headers, b"Connection: close\r\n" if close else b"",
                     b"\r\n"))


def error_response(status: int, reason: str, close: bool = False) -> bytes:
    """A text/plain error: one human-readable line saying what was wrong."""
    return response(status, reason.encode("utf-8", "replace") + b"\n", close=close)


def stream_head(headers: bytes, chunked: bool) -> bytes:
    """The status line and headers of an SSE response: its body follows chunked, or
    delimited by the connection's close."""
    return b"".join((_HEADS.get(200), headers,
                     b"Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                     b"X-Accel-Buffering: no\r\n",
                     b"Transfer-Encoding: chunked\r\n\r\n" if chunked else
                     b"Connection: close\r\n\r\n"))


def linger(transport: asyncio.Transport) -> asyncio.TimerHandle:
    """Half-close after the last answer and keep reading (the caller drops what arrives)
    until the client closes, for at most LINGER_SECONDS: closing a socket with unread input
    sends a reset, which can reach the client before that answer and destroy it (a 413 for
    a 30 MB upload was never seen otherwise). RFC 9112 §9.6 asks for this."""
    if transport.can_write_eof():
        transport.write_eof()
    transport.resume_reading()
    return asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)


def origin_form(target: bytes) -> bytes:
    """`http://host:port/path?query` → `/path?query`: the absolute form that proxies send
    (RFC 9112 §3.2.2) names the same resource; other targets are returned as they are."""
    match = _ABSOLUTE_FORM.match(target)
    if match is None:
        return target
    rest = target[match.end():]
    return rest if rest.startswith(b"/") else b"/" + rest


def _target_length(head: bytearray) -> int:
    """How long the request target is in a head's first bytes, so far."""
    start = head.find(b" ") + 1
    while head[start:start + 1] == b" ":
        start += 1
    end = head.find(b" ", start)
    return (len(head) if end < 0 else end) - start


def _dechunk(chunk: bytes) -> bytes:
    """The data of one chunk as `_core.sse_chunk` frames it: hex size line, data, CRLF."""
    return chunk[chunk.index(b"\r\n") + 2:-2] if chunk else chunk


class Request:
    """One parsed request; `headers` holds lower-cased names. Made by new_request."""

    __slots__ = ("method", "url", "headers", "body", "keep_alive")


def new_request(method: bytes, url: bytes, headers: dict[bytes, bytes], body: bytes,
                keep_alive: bool) -> Request:
    """A Request with its fields set in C: a constructor's argument parsing cost about as
    much as the object."""
    request = Request.__new__(Request)
    request.method, request.url, request.headers, request.body = method, url, headers, body
    request.keep_alive = keep_alive
    return request


class Limits:
    """Per-server request limits and timeouts (seconds).

    A body is at most `max_body`; one that is not a batch (a JSON array), so holds one
    event, at most `max_event_body`: `--max-event-size` for its payload plus an envelope.
    """

    __slots__ = ("max_body", "max_event_body", "event_body_digits", "header_timeout",
                 "body_timeout", "idle_timeout")

    def __init__(self, max_body: int, max_event_size: int, header_timeout: float,
                 body_timeout: float, idle_timeout: float) -> None:
        self.max_body = max_body
        self.max_event_body = max_event_size + EVENT_ENVELOPE
        # a Content-Length with fewer digits is below max_event_body, and is not parsed
        self.event_body_digits = len(str(self.max_event_body))
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.idle_timeout = idle_timeout


class _ChunkLines:
    """Measures the size lines of a chunked body (hex size, `;extensions`, CRLF), which
    llhttp skips without saying how long they were, and finds where the body ends.

    A size line holds no LF and starts right after one (the header section's last, or the
    CRLF after the previous chunk's data), and chunk data is as long as on_body says: so
    from where a line starts, it ends at the next LF. `at` is where, in the current read,
    the current line (`in_line`) or chunk data starts. After the last chunk's size line come
    the trailer fields, if any, and an empty line: the body ends at the first CRLF CRLF
    from that line's own CRLF on (`tail`: the last bytes of the reads before this one).
    """

    __slots__ = ("in_line", "at", "carry", "base", "line_here", "tail")

    def __init__(self, at: int) -> None:
        self.in_line = True
        self.at = at
        self.carry = 0  # the current line's bytes in earlier reads
        self.base = 0  # the body's size where the current chunk's data starts
        self.line_here = False  # whether the last size line ended in this read
        self.tail = b""

    def line_end(self, read: bytes, body_size: int) -> int:
        """At a chunk header: how long the size line that just ended was."""
        end = read.find(b"\n", self.at) + 1
        length, self.at = self.carry + end - self.at, end
        self.in_line, self.carry, self.base, self.line_here = False, 0, body_size, True
        return length

    def data_end(self, body_size: int) -> bool:
        """At a chunk's end: whether more follow (the last chunk is empty, and ends after
        the trailer fields)."""
        size = body_size - self.base
        if not size:
            return False
        self.at += size + 2
        self.in_line = True
        return True

    def message_end(self, read: bytes) -> int:
        """At the last chunk's end: where, in this read, the body ended. The search starts at
        the last size line's CRLF if it ended in this read (that CRLF may have begun in the
        read before), else where this read begins."""
        data = self.tail + read
        start = self.at - 2 + len(self.tail) if self.line_here else 0
        return data.index(b"\r\n\r\n", start) + 4 - len(self.tail)

    def read_end(self, read: bytes, body_size: int) -> int:
        """At the end of a read: the bytes so far of an unfinished size line, else 0. The
        next read goes on with that line, or with the chunk's data or trailer fields."""
        self.line_here, self.tail = False, (self.tail + read)[-3:]
        if not self.in_line:
            self.at = self.base - body_size
            return 0
        self.at = 0
        self.carry += len(read) - read.rfind(b"\n") - 1
        return self.carry


_IDLE, _HEADERS, _BODY, _WAITING, _STREAM = range(5)
_PLAIN = PlainRequest()  # shared: each connection takes what it read before reading on


class HttpConnection:
    """One client connection. Created by the server's protocol factory. Once it streams, it
    is the stream's Sink (busd/bus/sink.py): the stream never sees the transport. An asyncio
    protocol by its methods, not by inheritance: compiled, it is a cdef class (http.pxd),
    which cannot subclass asyncio.Protocol."""

    def __init__(self, handler: Callable[[HttpConnection, Request], None], limits: Limits,
                 connections: set[HttpConnection], budget: BodyBudget,
                 coalescer: WriteCoalescer) -> None:
        self.handler = handler
        self.coalescer = coalescer
        self.limits = limits
        self.connections = connections
        self.budget = budget
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        # bound once, as the transport's write is: every request calls them, and finding a
        # method by name costs about what the call does
        self._feed = self.parser.feed_data
        self._method = self.parser.get_method
        self._keep_alive = self.parser.should_keep_alive
        self._send: Callable[[bytes], None] | None = None
        # The answers owed, in request order, as tickets (see defer): the answer to ticket
        # `_written + 1` goes out as soon as it is given, later ones given before it wait
        # in `_early`. No object per request: most answers come in order.
        self._tickets = 0  # the last ticket handed out
        self._written = 0  # the last ticket answered (or dropped)
        self._early: dict[int, tuple[bytes | Callable[[], None], bool]] | None = None
        self._close_after = 0  # hang_up: close once this ticket is answered (0: no)
        self.stream: Stream | None = None
        self.chunked = True  # how the stream's body is framed (see start_stream)
        self.is_closed = False
        self.write_paused = False
        self.read_paused = False
        self.budget_wait = False  # paused until the BodyBudget has room (see body_budget)
        self.state = _IDLE
        self.since = monotonic()
        self.last_write = self.since
        self._read_at = self.since  # when data_received was last entered
        self._unsent: list[bytes] | None = None  # stream bytes held back (coalesce.py)
        self._unsent_bytes = 0
        self._url = b""
        self._method_name = b""  # the request's, as llhttp read it (once: each call a copy)
        self._headers: dict[bytes, bytes] = _NO_HEADERS
        # Where requests are in the read being parsed: the head is read from its bytes once
        # llhttp has accepted it (_take_head), which costs a tenth of hearing each header
        # from httptools. Offsets in `_read`; -1: not in this read, or not known yet.
        self._request_at = 0  # where the next request may begin (llhttp skips blank lines)
        self._head_piece: bytearray | None = None  # a head's bytes from earlier reads
        # where the body's first byte is, as an offset in this read: negative once it began
        # in an earlier read (minus its bytes so far), so _body_at + _body_size is its end
        self._body_at = 0
        # the body's first piece, alone: most bodies come in one (a list for one piece
        # would be made, grown and freed for every request); all of them if more came
        self._body = b""
        self._body_pieces: list[bytes] | None = None
        self._body_size = 0
        self._held = 0  # of this body's bytes, those counted in the BodyBudget (see _count_body)
        self._ignored = 0  # bytes a streaming or lingering client sent, dropped
        self._linger: asyncio.TimerHandle | None = None
        self._linger_input = LINGER_INPUT
        self._body_limit = limits.max_event_body  # past it, _past_body_limit decides
        self._chunks: _ChunkLines | None = None  # while a chunked body is being read
        self._read = b""  # what is being parsed
        self._reject: tuple[int, str] | None = None
        self._failed = False
        # plain requests are read without llhttp while llhttp would begin a new message with
        # the next byte: not after one that closes the connection, or an Upgrade
        self._plain_ok = True

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send = transport.write  # type: ignore[attr-defined]
        self.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_closed = True
        self._unsent = None
        self.connections.discard(self)
        self._drop_unanswered()
        self._release_body()
        if self._linger is not None:
            self._linger.cancel()
        if self.stream is not None:
            stream, self.stream = self.stream, None
            stream.closed()

    def data_received(self, data: bytes) -> None:
        # a streaming (or failed) connection does not take further requests
        self._read_at = monotonic()  # the callbacks' clock: these bytes came together
        while data and self.stream is None and not self._failed:
            if self._plain_ok and (self.state == _IDLE or self.state == _WAITING) and \
                    self._reject is None:  # between requests
                data = self._read_plain(data)
                if not data:
                    break
            self._read = data
            if self._request_at >= 0:  # no request under way: the next starts in this read
                self._request_at = 0
            self._body_at = -self._body_size
            try:
                self._feed(data)
                data = b""
            except httptools.HttpParserUpgrade as exc:
                # that request was answered in HTTP/1.1, which RFC 9110 §7.8 allows: so
                # are the bytes after it, but a CONNECT's are a tunnel's. llhttp read up to
                # its end: the rest is the next iteration's, not a head to hold now
                self._read, data = data[:exc.args[0]], data[exc.args[0]:]
                self._plain_ok = False
                if self.parser.get_method() == b"CONNECT":
                    data = b""
                    self.hang_up()
            except httptools.HttpParserCallbackError as exc:  # one of ours raised: a bug
                data = b""
                log.error("reading a request failed", exc_info=exc.__context__)
                if self._reject is None:
                    self._reject = (500, "internal error while reading the request (logged)")
            except httptools.HttpParserError as exc:
                data = b""
                if self._reject is None:
                    self._reject = (400, f"malformed HTTP request: {exc}")
            if self._reject is None:
                if self.state == _HEADERS:  # a head held before goes on
                    self._hold_head()
                elif self.state == _BODY:
                    if self._body_size > self._held:
                        self._count_body()
                elif self.state != _STREAM and not self._failed and \
                        self._request_at < len(self._read):  # bytes after the last request
                    self._hold_head()
            if self._chunks is not None and \
                    self._chunks.read_end(self._read, self._body_size) > MAX_CHUNK_LINE:
                self._chunk_line_too_long()
            if self._reject is not None:
                status, reason = self._reject
                self._fail(status, reason)
        if data and (self.stream is not None or self.is_closed):
            self._ignore(len(data))

    def _read_plain(self, data: bytes) -> bytes:
        """Hand on each plain request (busd._core.PlainRequest: what publishers and ackers
        send) at the start of `data` as llhttp's callbacks would, without llhttp. Returns
        the rest for llhttp: from the first request that is not plain, or from where the
        connection stopped taking requests (llhttp reads on to the end of a read as before,
        and drops what follows)."""
        limits, at, n = self.limits, 0, len(data)
        while at < n:
            end = _PLAIN.read(data, at, limits.max_event_body, MAX_URL_BYTES, MAX_HEADER_BYTES)
            if end < 0:
                break
            self._method_name, self._url = _PLAIN.method, _PLAIN.target
            self._headers = _PLAIN.headers
            # of what _head_taken asks, a plain request leaves only the origin open (it has
            # a Host, no Transfer-Encoding or Expect, a body within one event's limit)
            self.state, self.since = _BODY, self._read_at
            self.check_origin()
            at = end
            if self._reject is not None:
                self._forget_request()
                if at == n:  # (else once llhttp has read the rest, as data_received does)
                    status, reason = self._reject
                    self._fail(status, reason)
                break
            self._body = _PLAIN.body
            self._body_size = len(self._body)
            self._hand_on(True)
            if self.stream is not None or self._failed or self.is_closed:
                break
        if at == n:
            return b""
        return data[at:] if at else data

    def _hold_head(self) -> None:
        """A head is still incomplete after this read (bytes other than the blank lines
        llhttp skips follow the last request, or a head held before goes on): keep its bytes
        so far (llhttp keeps none) for _take_head, and refuse it once they pass
        MAX_HEADER_BYTES. A bytearray, so a head dripped a byte at a time is not copied
        whole at every read. --header-timeout runs from the read the head began in."""
        read, start = self._read, self._request_at
        if start >= 0:
            begun = read[start:].lstrip(b"\r\n")
            if not begun:
                return
            self.state, self.since, self._request_at = _HEADERS, self._read_at, -1
            self._head_piece = bytearray(begun)
        else:
            self._head_piece += read
        if len(self._head_piece) > MAX_HEADER_BYTES:
            if _target_length(self._head_piece) > MAX_URL_BYTES:
                self._target_too_long()
            else:
                self._head_too_large()

    def _count_body(self) -> None:
        """The body is still incomplete after this read: count what came of it in the
        BodyBudget now. A body that begins and ends within one read is never counted (only
        towards the peak): the read holds its bytes anyway, and registering it with the
        budget and taking it out again cost more than the rest of its connection's work."""
        self.budget.take(self, self._body_size - self._held)
        self._held = self._body_size

    def _head_too_large(self) -> None:
        self._head_piece = None
        if self._reject is None:
            self._reject = (431, f"request line and headers larger than {MAX_HEADER_BYTES} "
                                 f"bytes")

    def _ignore(self, size: int) -> None:
        """A streaming connection is read on, so that its client's FIN or RST ends the
        stream at once, and so is one that lingers after its last answer (see linger):
        what they send is dropped, and past a few KiB (streams) or LINGER_INPUT the
        connection is closed."""
        self._ignored += size
        if self._ignored > (self._linger_input if self._linger else MAX_STREAM_INPUT):
            log.debug("closing a connection whose client sent %d bytes after its request",
                      self._ignored)
            self.close()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.stream is not None:
            self.stream.pause()
        else:
            self._pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.stream is not None:
            self.stream.resume()
        elif self._tickets - self._written < MAX_PIPELINED:
            self._resume_reading()

    # -- httptools callbacks ----------------------------------------------------------
    # (no on_message_begin: httptools calls only the callbacks a protocol has, and where a
    # request begins is known from where the last one ended; see _hold_head, _take_head)
    def on_headers_complete(self) -> None:
        if self._reject is None:
            self._take_head()
        self._head_taken()

    def _head_taken(self) -> None:
        """What a request's head says, once its method, target and headers are read."""
        if self._reject is None:
            self.check_origin()
        headers = self._headers
        length = headers.get(_CONTENT_LENGTH)  # never with Transfer-Encoding (llhttp)
        if length is None and _TRANSFER_ENCODING in headers and self._reject is None:
            self._start_chunked(headers[_TRANSFER_ENCODING])
        self.state = _BODY
        self.since = self._read_at
        limits = self.limits
        self._body_limit = limits.max_event_body
        if self._reject is not None:
            return
        if _HOST not in headers and self.parser.get_http_version() != "1.0":
            self._reject = (400, "missing Host header: HTTP/1.1 requires one (RFC 9112 §3.2)")
            return
        if length is not None and len(length) >= limits.event_body_digits and \
                length.isdigit() and int(length) > limits.max_event_body:
            if int(length) > limits.max_body:
                self._reject = (413, f"request body of {int(length)} bytes is larger than the "
                                     f"limit of {limits.max_body} bytes")
                return
            self._body_limit = 0  # the first bytes tell whether a batch may be that large
        expect = headers.get(_EXPECT)
        if expect is not None and expect.lower() == b"100-continue":
            self.reply(CONTINUE)  # an interim answer: after those of earlier requests

    def _take_head(self) -> None:
        """Read the request line and headers llhttp has just accepted from their bytes: this
        read's from where the last request ended, or after the bytes held from earlier reads
        (_hold_head). Where this one ends is known at on_chunk_complete (chunked) or
        on_message_complete."""
        data, start, held = self._read, self._request_at, 0
        self._request_at = -1
        if start < 0:
            held = len(self._head_piece)
            self._head_piece += data
            data, start = bytes(self._head_piece), 0
        self._head_piece = None
        try:
            method = self._method()
            self._url, self._headers, end = read_head(data, start, method)
        except HeadError as exc:
            self._reject = (400, str(exc))
            return
        self._method_name = method
        self._body_at = end - held
        if len(self._url) > MAX_URL_BYTES:
            self._target_too_long()
        elif end - start > MAX_HEADER_BYTES:
            self._head_too_large()

    def _target_too_long(self) -> None:
        self._head_piece = None
        self._reject = (414, f"request target longer than {MAX_URL_BYTES} bytes")

    def check_origin(self) -> None:
        """Every origin may send: CorsHttpConnection refuses some here, before the body."""

    def _start_chunked(self, coding: bytes) -> None:
        """Chunked is the one transfer coding read; its size lines are measured from where
        the body starts."""
        if coding.lower() != b"chunked":
            self._reject = (400, f"Transfer-Encoding {coding.decode(errors='replace')!r} is "
                                 f"not supported: send the body chunked, or with Content-Length")
            return
        self._chunks = _ChunkLines(self._body_at)

    def on_chunk_header(self) -> None:
        if self._reject is None and \
                self._chunks.line_end(self._read, self._body_size) > MAX_CHUNK_LINE:
            self._chunk_line_too_long()

    def on_chunk_complete(self) -> None:
        if self._reject is None and not self._chunks.data_end(self._body_size):
            self._request_at = self._chunks.message_end(self._read)
            self._chunks = None

    def _chunk_line_too_long(self) -> None:
        if self._reject is None:
            self._reject = (400, f"a chunk size line (with its extensions) is longer than "
                                 f"{MAX_CHUNK_LINE} bytes")

    def _body_skipped(self) -> bool:
        """Whether the request declared a body that never came: httptools skips the body of
        a request with Upgrade, as the new protocol's bytes. The Upgrade is ignored (see
        data_received), so such a request is refused."""
        headers = self._headers
        if self.parser.should_upgrade() and (_TRANSFER_ENCODING in headers or
                                             headers.get(_CONTENT_LENGTH, b"0") != b"0"):
            self._reject = (400, "a request body with Upgrade is not supported: send the "
                                 "request without Upgrade (e.g. curl without --http2)")
            return True
        return False

    def on_body(self, body: bytes) -> None:
        self.since = self._read_at
        if self._reject is not None:
            return
        if self._body_pieces is not None:
            self._body_pieces.append(body)
        elif self._body_size:  # httptools reports no empty piece
            self._body_pieces = [self._body, body]
        else:
            self._body = body
        self._body_size += len(body)
        if self._body_size > self._body_limit:
            self._past_body_limit()

    def wait_for_budget(self) -> None:
        """The bodies being received hold --max-body-memory: read no more until granted."""
        self.budget_wait = True
        self._pause_reading()

    def budget_granted(self) -> None:
        """Room again: read on, its --body-timeout counted from now (we were not reading)."""
        self.budget_wait = False
        self.since = monotonic()
        if not self.write_paused and self._tickets - self._written < MAX_PIPELINED:
            self._resume_reading()

    def _past_body_limit(self) -> None:
        """The body outgrew one event: only a batch (a JSON array) may be larger, up to the
        request limit. Anything else is refused now, before the rest is read."""
        limits = self.limits
        if self._body_size > limits.max_body:
            self._refuse_body(f"request body larger than the limit of {limits.max_body} bytes")
            return
        start = self._body_read().lstrip(b" \t\r\n")[:1]
        if start == b"[":
            self._body_limit = limits.max_body
        elif start or self._body_size > limits.max_event_body:
            length = self._headers.get(_CONTENT_LENGTH)
            size = f"{length.decode()} bytes" if length else f"over {limits.max_event_body} bytes"
            self._refuse_body(f"a body of {size} is larger than one event may be: "
                              f"--max-event-size plus {EVENT_ENVELOPE} bytes for its other "
                              f"fields ({limits.max_event_body} bytes); only a batch (a JSON "
                              f"array) may be larger")
        else:  # only whitespace so far
            self._body_limit = limits.max_event_body

    def _refuse_body(self, reason: str) -> None:
        self._reject = (413, reason)
        self._release_body()

    def _release_body(self) -> None:
        """Drop the body read so far, giving its bytes back to the BodyBudget."""
        if self._held:
            self.budget.give_back(self, self._held)
        self._held = 0
        self._body = b""
        self._body_pieces = None

    def _body_read(self) -> bytes:
        """The body so far, in one piece."""
        return self._body if self._body_pieces is None else b"".join(self._body_pieces)

    def on_message_complete(self) -> None:
        if self._request_at < 0:  # not chunked: the body's bytes in this read end it
            self._request_at = self._body_at + self._body_size
        if self._reject is not None or self.stream is not None or self.is_closed:
            self._forget_request()
            self._release_body()
            return
        if not self._body_size and self._body_skipped():
            return
        keep_alive = self._keep_alive()
        if not keep_alive:
            self._plain_ok = False
        self._hand_on(keep_alive)

    def _hand_on(self, keep_alive: bool) -> None:
        """The request read is complete: to the handler."""
        if self._body_size > self._held:
            self.budget.passed(self._body_size - self._held)
        request = new_request(self._method_name, self._url, self._headers, self._body_read(),
                              keep_alive)
        self.state = _WAITING
        self._forget_request()
        try:
            self.handler(self, request)
        finally:  # the handler has taken what it keeps of the body
            self._release_body()
        if self.state == _WAITING and self._tickets == self._written and self.stream is None:
            self._idle(self._read_at)

    def _forget_request(self) -> None:
        """Clear the URL and headers of the request that ended, of a dropped one too (the
        connection became a stream or closed, and httptools parses on to the end of the
        read): else the next request carries them, e.g. this one's Content-Length beside
        its own Transfer-Encoding."""
        self._url = b""
        self._headers = _NO_HEADERS
        self._body_size = 0

    # -- answering ----------------------------------------------------------------------
    def reply(self, data: bytes, close: bool = False) -> None:
        """Answer the current request now (still in pipeline order)."""
        if self._tickets == self._written:
            self._write_response(data, close)
        else:
            self.fulfil(self.defer(), data, close)

    def unanswered(self) -> int:
        """How many requests are still owed an answer."""
        return self._tickets - self._written

    def defer(self) -> int:
        """Reserve the current request's place in the response order: a ticket to `fulfil`
        later."""
        self._tickets += 1
        if self._tickets - self._written >= MAX_PIPELINED:
            self._pause_reading()
        return self._tickets

    def fulfil(self, ticket: int, data: bytes | Callable[[], None], close: bool = False
               ) -> None:
        """The answer to `ticket`: written now if every earlier one is, else once they are.
        A callable starts a stream instead (nothing is answered after it)."""
        if ticket <= self._written:  # dropped: the connection was lost or became a stream
            return
        if ticket != self._written + 1:
            if self._early is None:
                self._early = {}
            self._early[ticket] = (data, close)
            return
        while True:
            self._written = ticket
            if self.is_closed:
                return
            if callable(data):
                self._drop_unanswered()
                data()
                return
            self._write_response(data, close or ticket == self._close_after)
            following = None if self._early is None else self._early.pop(ticket + 1, None)
            if following is None:
                break
            ticket += 1
            data, close = following
        if self._tickets == self._written and not self.is_closed and self.stream is None:
            if self.state == _WAITING:
                self._idle(monotonic())
            if not self.write_paused:
                self._resume_reading()

    def _drop_unanswered(self) -> None:
        """Owe no answer any more (the connection is lost, or streams): later fulfils of
        the tickets handed out are dropped."""
        self._written = self._tickets
        self._early = None

    def start_stream(self, start: Callable[[], None]) -> None:
        """Turn this connection into a response stream once earlier responses are out.

        The stream is chunked, except for an HTTP/1.0 request: that protocol has no chunked
        coding, so its stream ends where the connection closes."""
        chunked = self.parser.get_http_version() != "1.0"

        def begin() -> None:
            self.chunked = chunked
            start()

        if self._tickets == self._written:
            begin()
        else:
            self.fulfil(self.defer(), begin)

    def attach_stream(self, stream: Stream, headers: bytes, high_water: int | None = None
                      ) -> None:
        """Send the SSE response head with these extra header lines; from now on `write`
        sends body chunks, and `stream` is paused once more than high_water bytes (default:
        asyncio's) are buffered."""
        self.stream = stream
        self.state = _STREAM
        self._resume_reading()  # see _ignore
        if not self.is_closed:
            self.last_write = monotonic()
            self._send(stream_head(headers, self.chunked))
            if high_water is not None:
                self.transport.set_write_buffer_limits(high=high_water)

    def write(self, data: bytes) -> None:
        """Send one chunk of the stream (just its data on a close-delimited stream): held
        with the stream's other small writes until the loop has caught up (coalesce.py)."""
        if self.is_closed:
            return
        if not self.chunked:
            data = _dechunk(data)
        unsent = self._unsent
        if unsent is None:
            if len(data) >= MAX_HELD or not self.coalescer.should_hold():
                self.last_write = monotonic()
                self._send(data)
                return
            self._unsent, self._unsent_bytes = [data], len(data)
            self.coalescer.hold(self)
        else:
            unsent.append(data)
            self._unsent_bytes += len(data)
            if self._unsent_bytes >= MAX_HELD:
                self.flush()
                return
        self.coalescer.writes += 1

    def flush(self) -> None:
        """Write the stream bytes held so far, in one system call."""
        unsent = self._unsent
        if unsent is not None:
            self._unsent = None
            if not self.is_closed:
                self.last_write = monotonic()
                self.transport.writelines(unsent)  # uvloop: one writev, no copy

    def end_stream(self, last_chunk: bytes = b"") -> None:
        """Finish the stream and close the connection."""
        self.stream = None
        self.flush()
        if not self.is_closed:
            self._send(last_chunk + b"0\r\n\r\n" if self.chunked else
                                 _dechunk(last_chunk))
            self.close()

    def close(self) -> None:
        self.flush()  # the transport sends what it buffered before it closes: held bytes too
        self.is_closed = True
        self.transport.close()  # again, for one that lingers

    def check_timeouts(self, now: float) -> None:
        """Called about once a second: cut slow requests (slowloris) and idle keep-alives."""
        state, waited, limits = self.state, now - self.since, self.limits
        if state == _IDLE and waited > limits.idle_timeout:
            self.close()
        elif state == _HEADERS and waited > limits.header_timeout:
            self._fail(408, f"request headers not received within {limits.header_timeout:g}s")
        elif state == _BODY and self.budget_wait:
            if peer_gone(self.transport.get_extra_info("socket")):
                self.close()  # connection_lost gives its place and bytes back
        elif state == _BODY and waited > limits.body_timeout:
            self._fail(408, f"request body stalled for more than {limits.body_timeout:g}s")

    # -- internals --------------------------------------------------------------------
    def _write_response(self, data: bytes, close: bool) -> None:
        if self.is_closed:
            return
        self._send(data)
        if close:
            self.is_closed = self._failed = True  # nothing more is parsed or written
            self.read_paused = False
            # a client refused mid-body may send all of it; others have less to say
            if self.state != _BODY:
                self._linger_input = LINGER_HEAD_INPUT
            self._linger = linger(self.transport)

    def _idle(self, now: float) -> None:
        """--idle-timeout runs from `now`: the read the request came in (an answer given at
        once goes out in that same callback) or the time a deferred answer was sent."""
        self.state = _IDLE
        self.since = now

    def _fail(self, status: int, reason: str) -> None:
        """Answer a request we cannot parse or accept, then drop the connection.

        Requests pipelined before it keep their own answers, in order: the error goes
        last, so a client never takes it for the answer to an earlier (stored) publish.
        """
        if self.is_closed or self._failed:
            return
        self._failed = True
        log.debug("rejecting request status=%d reason=%r", status, reason)
        self._pause_reading()
        self.reply(error_response(status, reason, close=True), close=True)

    def hang_up(self) -> None:
        """Take no further requests (after a CONNECT, or at shutdown); close once the
        answers so far are written."""
        self._failed = True
        self._pause_reading()
        if self._tickets != self._written:
            self._close_after = self._tickets
        else:
            self.close()

    def _pause_reading(self) -> None:
        if not self.read_paused and not self.is_closed:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.read_paused and not self.is_closed and not self._failed and \
                not self.budget_wait:
            self.read_paused = False
            self.transport.resume_reading()


class CorsHttpConnection(HttpConnection):
    """HttpConnection under `--cors-origins`: a response carries
    `Access-Control-Allow-Origin: <origin>` when the connection's browser origin is allowed,
    and a `POST` or `PUT` from another origin is refused (403) before its body is read: CORS
    only hides answers, and a page may send a `no-cors` request whose answer it never reads.

    Separate class, so the default (`*`) path pays nothing for it. The origin is the last
    allowed `Origin` seen on the connection: a mismatch can only make a browser refuse a
    response, never expose one to an origin that is not allowed.
    """

    allowed: frozenset[bytes] = frozenset()
    _allow_origin = b""

    def check_origin(self) -> None:
        origin = self._headers.get(b"origin")
        if origin is not None:
            if origin in self.allowed:
                self._allow_origin = b"Access-Control-Allow-Origin: " + origin + b"\r\n"
            else:
                self._allow_origin = b""
                if self._method_name in (b"POST", b"PUT"):
                    self._reject = (403, f"origin {origin.decode(errors='replace')} may not "
                                         f"publish or ack: it is not in --cors-origins")

    def _with_origin(self, data: bytes) -> bytes:
        if not self._allow_origin:
            return data
        end = data.find(b"\r\n") + 2
        return data[:end] + self._allow_origin + data[end:]

    def _write_response(self, data: bytes, close: bool) -> None:
        super()._write_response(self._with_origin(data), close)

    def attach_stream(self, stream: Stream, headers: bytes, high_water: int | None = None
                      ) -> None:
        super().attach_stream(stream, self._allow_origin + headers, high_water)
