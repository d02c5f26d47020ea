"""The connection reads a request's head from its bytes once llhttp has accepted it
(busd._core.read_head), instead of hearing every header through httptools' callbacks. The
reference here is those callbacks: what httptools reports for the same bytes must be what
read_head finds, and requests pipelined in any pieces (chunked bodies with trailers, blank
lines between) must reach the handler with their own heads, compiled and as source."""

from __future__ import annotations

from itertools import pairwise

import httptools
import pytest
from http_transcript import run
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from source_module import load_source

import busd.server.http as compiled
from busd._core import HeadError, header_name, read_head

source = load_source(compiled)


class _Heard:
    """What httptools reports of a head through its callbacks, up to the head's end."""

    def __init__(self) -> None:
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.done:  # trailer fields are not the head's
            self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.done = True


def heard_head(data: bytes) -> tuple[bytes, dict[bytes, bytes]] | None:
    """(target, headers) as the connection built them from httptools' callbacks; None if
    llhttp refuses the bytes; HeadError for a second Host."""
    heard = _Heard()
    try:
        httptools.HttpRequestParser(heard).feed_data(data)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError:
        return None
    if not heard.done:
        return None
    headers: dict[bytes, bytes] = {}
    for name, value in heard.fields:
        name = name.lower()
        if name in headers:
            if name == b"host":
                raise HeadError("more than one Host header")
            headers[name] += b", " + value
        else:
            headers[name] = value
    return heard.url, headers


TOKEN = st.text(alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN"
                "OPQRSTUVWXYZ", min_size=1, max_size=30).map(str.encode)
NAME = st.one_of(TOKEN, st.sampled_from([b"Host", b"HOST", b"content-type", b"Content-Type",
                                         b"User-Agent", b"authorization", b"Origin",
                                         b"Last-Event-ID", b"X-A", b"x-a"]))
VALUE = st.binary(max_size=40).map(
    lambda v: bytes(b for b in v if b == 9 or 32 <= b < 127 or b >= 128))
BLANKS = st.sampled_from([b"", b" ", b"\t", b" \t ", b"  "])
TARGET = st.one_of(st.sampled_from([b"/", b"*", b"/?subject=a.b&start=oldest",
                                    b"http://h:1/x?y=z"]),
                   st.text(alphabet="abc/?=&%.-_~", max_size=30).map(lambda t: b"/" + t.encode()))
METHOD = st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS"])


@st.composite
def heads(draw) -> tuple[bytes, bytes]:
    """(method, head bytes): blank lines before it, sometimes; spaces around the target."""
    method = draw(METHOD)
    fields = draw(st.lists(st.tuples(NAME, BLANKS, VALUE, BLANKS), max_size=8))
    lines = b"".join(b"%s:%s%s%s\r\n" % field for field in fields)
    return method, b"%s%s%s%s%s HTTP/1.%d\r\n%s\r\n" % (
        draw(st.sampled_from([b"", b"\r\n", b"\r\n\r\n"])), method, b" " * draw(st.integers(1, 3)),
        draw(TARGET), b" " * draw(st.integers(0, 2)), draw(st.integers(0, 1)), lines)


@settings(max_examples=1500, deadline=None)
@given(heads(), st.binary(max_size=20))
def test_read_head_finds_what_httptools_reports(head, after) -> None:
    method, data = head
    try:
        expected = heard_head(data)
    except HeadError:
        with pytest.raises(HeadError, match="more than one Host"):
            read_head(data + after, 0, method)
        return
    assume(expected is not None)  # llhttp refused it: read_head is never asked
    url, headers, end = read_head(data + after, 0, method)
    assert (url, headers) == expected
    assert end == len(data)
    assert all(name is header_name(name) or name not in (b"host", b"content-length")
               for name in headers)  # the dict finds the names the connection asks for


def test_read_head_refuses_a_head_that_is_not_there() -> None:
    with pytest.raises(HeadError, match="no request line"):
        read_head(b"GET / HTTP/1.1\r\n\r\n", 0, b"POST")
    with pytest.raises(HeadError, match="no end"):
        read_head(b"GET / HTTP/1.1\r\nHost: a\r\n", 0, b"GET")
    assert read_head(b"xxGET / HTTP/1.1\r\n\r\n", 2, b"GET") == (b"/", {}, 20)
    for start in (-1, 21):
        with pytest.raises(HeadError, match="cannot start"):
            read_head(b"xxGET / HTTP/1.1\r\n\r\n", start, b"GET")


# -- requests pipelined in pieces -------------------------------------------------------------

def handed_on(module, pieces: list[bytes], cls: str) -> tuple[list[tuple], bytes]:
    """The requests the connection handed on (method, target, headers, body) and what it
    wrote, fed these pieces (http_transcript's handler answers each at once)."""
    log = run(module, pieces, (1 << 20, 1 << 16, 10.0, 10.0, 10.0), cls)
    return ([(method, url, dict(headers), body)
             for kind, method, url, headers, body, _ in (e for e in log if e[0] == "request")],
            b"".join(entry[1] for entry in log if entry[0] == "write"))


CHUNKS = st.lists(st.binary(min_size=1, max_size=30), max_size=3)
TRAILERS = st.sampled_from([b"", b"X-T: 1\r\n", b"X-T: 1\r\nAuthorization: no\r\n"])


@st.composite
def requests(draw) -> tuple[bytes, tuple]:
    """One acceptable request's bytes and what the handler must be given for it."""
    method = draw(st.sampled_from([b"POST", b"PUT", b"DELETE", b"GET"]))
    target = draw(TARGET.filter(lambda t: t != b"*"))
    fields = [(b"Host", b"h")] + draw(st.lists(st.tuples(
        st.sampled_from([b"X-A", b"x-a", b"Authorization", b"Content-Type",
                         b"Last-Event-ID", b"X-Long"]),
        st.sampled_from([b"1", b"two words", b"http://o", b"v" * 300])), max_size=4))
    if draw(st.booleans()):  # an origin CorsHttpConnection lets publish
        fields.append((b"Origin", b"http://o"))
    body, framing = draw(st.binary(max_size=60)), draw(st.sampled_from(["length", "chunked"]))
    if framing == "chunked":
        chunks = draw(CHUNKS)
        body = b"".join(chunks)
        extension = draw(st.sampled_from([b"", b";e=1"]))
        fields.append((b"Transfer-Encoding", b"chunked"))
        framed = b"".join(b"%x%s\r\n%s\r\n" % (len(c), extension, c) for c in chunks)
        framed += b"0%s\r\n%s\r\n" % (extension, draw(TRAILERS))
    else:
        fields.append((b"Content-Length", b"%d" % len(body)))
        framed = body
    head = b"%s %s HTTP/1.1\r\n%s\r\n" % (method, target,
                                          b"".join(b"%s: %s\r\n" % f for f in fields))
    url, headers = heard_head(head)
    blank = draw(st.sampled_from([b"", b"", b"\r\n", b"\r\n\r\n"]))
    return blank + head + framed, (method, url, headers, body)


@st.composite
def pipelines(draw) -> tuple[list[bytes], list[tuple]]:
    """Requests back to back, cut anywhere: sometimes a byte at a time."""
    drawn = draw(st.lists(requests(), min_size=1, max_size=4))
    data = b"".join(request for request, _ in drawn)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=10)))
    if draw(st.booleans()):
        start = draw(st.integers(0, len(data)))
        cuts = sorted(set(cuts) | set(range(start, min(len(data), start + 60))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in pairwise(bounds) if b > a], [e for _, e in drawn]


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pipelines(), st.sampled_from([compiled, source]),
       st.sampled_from(["HttpConnection", "CorsHttpConnection"]))
def test_pipelined_requests_in_any_pieces_keep_their_own_heads(pipeline, module, cls) -> None:
    pieces, expected = pipeline
    requests, written = handed_on(module, pieces, cls)
    assert requests == expected
    assert written.count(b"HTTP/1.1 200 ") == len(expected), written[-300:]


def test_the_comparison_sees_a_request_with_another_head() -> None:
    """Not blind: the same bytes with one header changed are handed on differently."""
    data = b"POST / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nab"
    assert handed_on(compiled, [data[:30], data[30:]], "HttpConnection")[0] == [
        (b"POST", b"/", {b"host": b"h", b"x-a": b"1", b"content-length": b"2"}, b"ab")]
    assert handed_on(compiled, [data.replace(b"X-A: 1", b"X-A: 2")], "HttpConnection"
                     )[0] != handed_on(compiled, [data], "HttpConnection")[0]


@pytest.mark.parametrize("module", [compiled, source])
def test_a_callback_that_raises_is_a_logged_500_not_a_malformed_request(module, caplog) -> None:
    """A bug of ours inside httptools' callbacks is not the client's: 500, and the exception
    in the log (httptools itself says only "User callback error")."""
    class Broken(module.HttpConnection):
        def check_origin(self) -> None:
            raise RuntimeError("a bug in a hook")

    module.Broken = Broken
    try:
        with caplog.at_level("ERROR", logger="busd.server.http"):
            requests, written = handed_on(module, [b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"], "Broken")
    finally:
        del module.Broken
    assert requests == []
    assert written.startswith(b"HTTP/1.1 500 "), written[:200]
    assert b"internal error while reading the request" in written
    assert any(record.exc_info and "a bug in a hook" in str(record.exc_info[1])
               for record in caplog.records)
