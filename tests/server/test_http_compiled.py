"""busd/server/http.py runs compiled (setup.py, with http.pxd's C types): the same bytes,
cut into the same pieces, must make the compiled connection and the uncompiled source
(the oracle) do the same — the same requests handed on, the same bytes written, the same
pauses, closes and state."""

from __future__ import annotations

from http_transcript import CONNECTION_CLASSES, cut_into_reads, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from source_module import load_source

import busd.server.http as compiled

oracle = load_source(compiled)


def test_the_installed_module_is_the_compiled_one() -> None:
    assert compiled.__file__.endswith(".so"), compiled.__file__
    assert oracle.__file__.endswith("http.py")
    assert compiled.HttpConnection is not oracle.HttpConnection


def post(path: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: t\r\n%sContent-Length: %d\r\n\r\n%s" % (
        path, extra, len(body), body)


def chunked(path: bytes, chunks: list[bytes], extension: bytes = b"") -> bytes:
    framed = b"".join(b"%x%s\r\n%s\r\n" % (len(c), extension, c) for c in chunks if c)
    return b"POST %s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n" % (
        path, framed)


BODY = st.binary(max_size=300)
PATH = st.sampled_from([b"/", b"/defer", b"/close", b"/stream", b"/x?subject=a.b",
                        b"http://h:1/defer", b"*"])
REQUESTS = st.one_of(
    st.builds(post, PATH, BODY),
    st.builds(post, PATH, st.binary(min_size=1, max_size=40).map(lambda b: b"[" + b * 3000)),
    st.builds(post, PATH, st.binary(min_size=1, max_size=40).map(lambda b: b"{" + b * 3000)),
    st.builds(post, PATH, BODY, st.sampled_from([
        b"Expect: 100-continue\r\n", b"Connection: close\r\n", b"X-A: 1\r\nX-a: 2\r\n",
        b"Host: again\r\n", b"Upgrade: h2c\r\nConnection: Upgrade\r\n",
        b"Origin: http://o\r\n", b"Origin: http://p\r\n", b"X-Long: " + b"v" * 70_000 + b"\r\n"])),
    st.builds(chunked, PATH, st.lists(BODY, max_size=3),
              st.sampled_from([b"", b";ext=1", b";" + b"e" * 5000])),
    st.builds(lambda p: b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % p, PATH),
    st.builds(lambda p: b"GET %s HTTP/1.0\r\n\r\n" % p, PATH),
    st.just(b"GET / HTTP/1.1\r\n\r\n"),  # no Host
    st.just(b"GET /" + b"u" * 17_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"),
    st.just(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 999999999\r\n\r\n"),
    st.just(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n"),
    st.just(b"\r\n"),
    st.just(b"GARBAGE\r\n\r\n"),
)
LIMITS = st.sampled_from([(1 << 20, 0, 10.0, 10.0, 10.0), (70_000, 0, 10.0, 10.0, 10.0),
                          (200, 0, 10.0, 10.0, 10.0)])


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut_into_reads(REQUESTS), LIMITS, CONNECTION_CLASSES)
def test_compiled_connection_does_what_the_source_does(pieces: list[bytes], limits, cls
                                                       ) -> None:
    assert run(compiled, pieces, limits, cls) == run(oracle, pieces, limits, cls)


def test_the_comparison_sees_a_difference() -> None:
    """The transcript is not blind: one byte of one body changed is a different log."""
    pieces = [post(b"/", b'{"a":1}'), post(b"/defer", b"x")]
    limits = (1 << 20, 0, 10.0, 10.0, 10.0)
    base = run(oracle, pieces, limits)
    assert run(compiled, pieces, limits) == base
    assert any(entry[0] == "request" for entry in base)
    assert any(entry[0] == "write" and b"stored" in entry[1] for entry in base)
    assert run(oracle, [pieces[0], post(b"/defer", b"y")], limits) != base
