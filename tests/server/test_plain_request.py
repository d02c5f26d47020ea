"""The connection reads a plain request (busd._core.PlainRequest: what publishers and ackers
send) without llhttp. Two references: llhttp itself — whatever bytes PlainRequest takes,
llhttp must take as the same request, ending at the same byte — and the connection that
leaves every request to llhttp: fed the same bytes in the same pieces, it must do the same."""

from __future__ import annotations

import httptools
import pytest
from busd._core import PlainRequest, read_head
from http_transcript import CONNECTION_CLASSES, cut_into_reads, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from source_module import load_source

import busd.server.http as compiled

MAX_BODY, MAX_TARGET, MAX_HEAD = 1 << 16, 64, 512
PLAIN = PlainRequest()


class _Heard:
    """Everything httptools reports of the requests in some bytes."""

    def __init__(self) -> None:
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.complete = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete += 1


def llhttp_reads(data: bytes) -> tuple[_Heard, httptools.HttpRequestParser]:
    heard = _Heard()
    parser = httptools.HttpRequestParser(heard)
    parser.feed_data(data)  # raises for anything llhttp refuses, Upgrade included
    return heard, parser


def check_as_llhttp_reads_it(data: bytes) -> bool:
    """Whether PlainRequest took `data`; if it did, llhttp reads the same request there."""
    end = PLAIN.read(data, 0, MAX_BODY, MAX_TARGET, MAX_HEAD)
    if end < 0:
        return False
    heard, parser = llhttp_reads(data[:end])
    assert heard.complete == 1
    assert llhttp_reads(data[:end - 1])[0].complete == 0  # it ends at `end`, not before
    headers: dict[bytes, bytes] = {}
    for name, value in heard.fields:
        name = name.lower()
        headers[name] = headers[name] + b", " + value if name in headers else value
    assert (PLAIN.method, PLAIN.target, PLAIN.headers) == (parser.get_method(), heard.url,
                                                           headers)
    assert PLAIN.body == heard.body
    assert parser.should_keep_alive() and not parser.should_upgrade()
    assert read_head(data, 0, PLAIN.method) == (PLAIN.target, PLAIN.headers,
                                                end - len(PLAIN.body))
    return True


def request(method: bytes, target: bytes, version: bytes, lines: list[bytes], body: bytes,
            end: bytes = b"\r\n") -> bytes:
    return b"%s %s %s\r\n%s%s%s" % (method, target, version, b"".join(lines), end, body)


def plain(body: bytes = b'{"subject":"a.b","payload":1}', extra: list[bytes] = ()) -> bytes:
    return request(b"POST", b"/", b"HTTP/1.1", [b"Host: 127.0.0.1\r\n", *extra,
                                                b"Content-Length: %d\r\n" % len(body)], body)


@pytest.mark.parametrize("data", [
    plain(),  # curl's and wrk's (Content-Type too), Go's net/http, an ack, no body at all
    plain(extra=[b"Content-Type: application/json\r\n"]),
    plain(extra=[b"User-Agent: Go-http-client/1.1\r\n", b"Accept-Encoding: gzip\r\n"]),
    request(b"PUT", b"/?consumer_id=c_1&event_id=e_2", b"HTTP/1.1",
            [b"Host: h\r\n", b"Content-Length: 0\r\n"], b""),
    request(b"POST", b"/bus/", b"HTTP/1.1", [b"host: h\r\n"], b""),
])
def test_what_clients_send_is_plain(data: bytes) -> None:
    assert check_as_llhttp_reads_it(data + b"POST / HTTP/1.1\r\n")  # (what follows is not its)


@pytest.mark.parametrize("data", [
    plain(extra=[b"Connection: close\r\n"]), plain(extra=[b"Proxy-Connection: close\r\n"]),
    plain(extra=[b"Expect: 100-continue\r\n"]), plain(extra=[b"Upgrade: h2c\r\n"]),
    plain(extra=[b"Content-Length: 3\r\n"]), plain(extra=[b"Host: again\r\n"]),
    plain(extra=[b"X-A: trailing \r\n"]), plain(extra=[b"X-A: \xff\r\n"]),
    request(b"POST", b"/", b"HTTP/1.1", [b"Content-Length: 0\r\n"], b""),  # no Host
    request(b"POST", b"/", b"HTTP/1.0", [b"Host: h\r\n"], b""),
    request(b"GET", b"/", b"HTTP/1.1", [b"Host: h\r\n"], b""),
    request(b"POST", b"/", b"HTTP/1.1", [b"Host: h\r\n", b"Transfer-Encoding: chunked\r\n"],
            b"0\r\n\r\n"),
    b"\r\n" + plain(), plain()[:-1], plain(b"x" * (MAX_BODY + 1)),
    request(b"POST", b"/" + b"t" * MAX_TARGET, b"HTTP/1.1", [b"Host: h\r\n"], b""),
    request(b"POST", b"/", b"HTTP/1.1", [b"Host: h\r\n", b"X: " + b"v" * MAX_HEAD + b"\r\n"],
            b""),
])
def test_the_rest_is_left_to_llhttp(data: bytes) -> None:
    assert not check_as_llhttp_reads_it(data)


@pytest.mark.parametrize("start", [-1, 2])
def test_a_start_outside_the_bytes_reads_nothing(start: int) -> None:
    assert PLAIN.read(b"P", start, MAX_BODY, MAX_TARGET, MAX_HEAD) == -1


NAMES = st.one_of(
    st.sampled_from([b"Host", b"host", b"HOST", b"Content-Length", b"content-length",
                     b"Content-Type", b"Transfer-Encoding", b"Connection", b"Proxy-Connection",
                     b"Upgrade", b"Expect", b"Origin", b"Keep-Alive", b"X-A", b"x-a",
                     b"Content-Length ", b" Host", b"Ho st", b"H\xc3\xb6st", b""]),
    st.binary(max_size=6))
VALUES = st.one_of(
    st.sampled_from([b"t", b"5", b"0", b" 5", b"5 ", b"05", b"-1", b"+5", b"5,5", b"5, 5",
                     b"chunked", b"close", b"keep-alive", b"h2c", b"100-continue", b"a\tb",
                     b"\xff", b"a\x00b", b"a\rb", b"a\nb", b"", b" ", b"9" * 16]),
    st.binary(max_size=8))
FIELDS = st.tuples(NAMES, st.sampled_from([b":", b": ", b":\t", b" :", b"::", b""]), VALUES,
                   st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\r\n"]))
TARGETS = st.one_of(st.sampled_from([b"/", b"/bus/", b"/?subject=a.b&x=1", b"*", b"//",
                                     b"http://h/", b"/a#f", b"/a b", b"/\"<>{}|\\^`"]),
                    st.binary(max_size=10).map(lambda b: b"/" + b))


@st.composite
def any_request(draw) -> bytes:
    """A request put together from parts each of which may be off."""
    fields = draw(st.lists(FIELDS, max_size=6))
    body = draw(st.binary(max_size=12))
    if draw(st.booleans()):
        fields.append((b"Host", b": ", b"h", b"\r\n"))
    if draw(st.booleans()):
        fields.append((b"Content-Length", b": ", b"%d" % len(body), b"\r\n"))
    fields = draw(st.permutations(fields))
    return request(draw(st.sampled_from([b"POST", b"PUT", b"GET", b"post", b"PATCH"])),
                   draw(TARGETS), draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0",
                                                       b"http/1.1", b"HTTP/1.1 "])),
                   [b"".join(field) for field in fields], body,
                   draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r\r\n"])))


EXTRAS = st.sampled_from([[], [b"Content-Type: application/json\r\n"],
                          [b"X-A: 1\r\n", b"x-a: 2\r\n"]])


@st.composite
def plain_with_one_byte_off(draw) -> bytes:
    data = bytearray(plain(draw(st.binary(max_size=12)), draw(EXTRAS)))
    at = draw(st.integers(0, len(data) - 1))
    how = draw(st.sampled_from(["replace", "insert", "delete"]))
    byte = draw(st.one_of(st.sampled_from(b" \t\r\n:\x00\x7f\x80\xff0aA,;/?"),
                          st.integers(0, 255)))
    if how == "replace":
        data[at] = byte
    elif how == "insert":
        data.insert(at, byte)
    else:
        del data[at]
    return bytes(data)


@settings(max_examples=3000, deadline=None)
@given(st.one_of(any_request(), plain_with_one_byte_off()), st.binary(max_size=8))
def test_a_plain_request_is_what_llhttp_reads(data: bytes, after: bytes) -> None:
    check_as_llhttp_reads_it(data + after)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), EXTRAS, st.binary(max_size=8))
def test_the_comparison_is_made_on_plain_requests(body: bytes, extra, after: bytes) -> None:
    """The property above compares something: the plain request its mutations start from
    is taken, whatever its body, and checked against llhttp."""
    assert check_as_llhttp_reads_it(plain(body, extra) + after)


def test_the_llhttp_check_sees_a_difference() -> None:
    """The check is not blind: a reader that took one byte too many, or dropped a header,
    fails it."""
    data = plain(extra=[b"X-A: 1\r\n"])

    class Off:  # a stand-in with PlainRequest's fields
        def __init__(self, real: PlainRequest, end: int, drop: bool) -> None:
            self.method, self.target, self.body = real.method, real.target, real.body
            self.headers = {k: v for k, v in real.headers.items() if not drop or k != b"x-a"}
            self.end = end

        def read(self, *args) -> int:
            return self.end

    global PLAIN
    real, end = PLAIN, PLAIN.read(data, 0, MAX_BODY, MAX_TARGET, MAX_HEAD)
    try:
        for off in (Off(real, end - 1, False), Off(real, end, True)):
            PLAIN = off
            with pytest.raises(AssertionError):
                check_as_llhttp_reads_it(data)
    finally:
        PLAIN = real


# -- the connection: plain requests read without llhttp, or all by llhttp ---------------------

class _NeverPlain:
    """Every request left to llhttp, as before PlainRequest."""

    def read(self, *args) -> int:
        return -1


with_plain = load_source(compiled)
llhttp_only = load_source(compiled)
llhttp_only._PLAIN = _NeverPlain()


def post(path: bytes, body: bytes, extra: bytes = b"", version: bytes = b"1.1") -> bytes:
    return b"POST %s HTTP/%s\r\nHost: t\r\n%sContent-Length: %d\r\n\r\n%s" % (
        path, version, extra, len(body), body)


BODY = st.binary(max_size=60)
PATH = st.sampled_from([b"/", b"/defer", b"/close", b"/stream", b"/x?subject=a.b"])
REQUESTS = st.one_of(
    st.builds(post, PATH, BODY),
    st.builds(post, PATH, BODY, st.sampled_from([
        b"Content-Type: application/json\r\n", b"Origin: http://o\r\n", b"Origin: http://p\r\n",
        b"Connection: close\r\n", b"Connection: keep-alive\r\n", b"Expect: 100-continue\r\n",
        b"Upgrade: h2c\r\nConnection: Upgrade\r\n", b"X-A: 1\r\nX-a: 2\r\n",
        b"Host: again\r\n"])),
    st.builds(post, PATH, BODY, st.just(b""), st.just(b"1.0")),
    st.builds(post, PATH, st.binary(min_size=1, max_size=20).map(lambda b: b"[" + b * 100)),
    st.builds(lambda p: b"PUT %s HTTP/1.1\r\nHost: t\r\n\r\n" % p, PATH),
    st.builds(lambda p: b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % p, PATH),
    st.builds(lambda p: b"GET %s HTTP/1.1\r\nHost: t\r\nUpgrade: h2c\r\nConnection: Upgrade"
                        b"\r\n\r\n" % p, PATH),
    st.just(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n"),
    st.just(b"CONNECT h:1 HTTP/1.1\r\nHost: h:1\r\n\r\n"),
    st.just(b"\r\n"),
    st.just(b"GARBAGE\r\n\r\n"),
)
LIMITS = st.sampled_from([(1 << 20, 0, 10.0, 10.0, 10.0), (2000, 1000, 10.0, 10.0, 10.0),
                          (200, 0, 10.0, 10.0, 10.0)])


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut_into_reads(REQUESTS), LIMITS, CONNECTION_CLASSES)
def test_the_connection_does_what_llhttp_alone_did(pieces: list[bytes], limits, cls) -> None:
    assert run(with_plain, pieces, limits, cls) == run(llhttp_only, pieces, limits, cls)


def test_the_connection_reads_plain_requests_without_llhttp() -> None:
    """Pipelined publishes in one read never reach llhttp (so the comparison above compares
    two ways of reading), and an ack after them does not either."""
    fed: list[bytes] = []

    class Watched(with_plain.HttpConnection):
        def __init__(self, *args) -> None:
            super().__init__(*args)
            self._feed = lambda data: (fed.append(data), self.parser.feed_data(data))

    with_plain.Watched = Watched
    try:
        data = post(b"/", b"{}") * 3 + b"PUT /?a=1 HTTP/1.1\r\nHost: t\r\n\r\n"
        log = run(with_plain, [data], (1 << 20, 0, 10.0, 10.0, 10.0), "Watched")
        assert [entry[1] for entry in log if entry[0] == "request"] == [b"POST"] * 3 + [b"PUT"]
        assert fed == []
        run(with_plain, [data + b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"],
            (1 << 20, 0, 10.0, 10.0, 10.0), "Watched")
        assert fed == [b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"]  # the rest, from the GET on
    finally:
        del with_plain.Watched
