"""Hostile input: property-based fuzzing of the Cython scanner, subject checks, record and
frame decoders, and an HTTP-level fuzzer against a running server.

Guarantees: no crash, no hang, no invalid JSON accepted or stored; a malformed request
gets a 4xx or its connection closed, and the server keeps serving everyone else.
"""

from __future__ import annotations

import json
import random
import socket
import time
import zlib

import pytest
from busclient import Http, build_request, publish, request
from busd._core import (
    Pattern,
    TooManyEvents,
    record_id,
    record_subject,
    scan_body,
    stamp_events,
    validate_pattern,
    validate_subject,
)
from busd.store.local._framing import find_record, frame_ok, frame_records, scan_frames
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from busd.server.auth import matches as reference_matches

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def strict_json(body: bytes):
    """An independent strict RFC 8259 parse (UTF-8, no NaN/Infinity)."""
    return json.loads(body.decode("utf-8"), parse_constant=_no_constants,
                      parse_int=lambda text: int(text) if len(text) < 100 else 0)


# -- the event scanner ---------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
SEGMENTS = st.text("abcXYZ019_-", min_size=1, max_size=6)
SUBJECTS = st.lists(SEGMENTS, min_size=2, max_size=4).map(".".join)
EVENTS = st.fixed_dictionaries(
    {"subject": SUBJECTS},
    optional={"payload": JSON_VALUES, "trace_id": st.text(max_size=10),
              "key": st.text(max_size=10), "id": st.just(""),
              "response_subject": st.just("_bus_.d4o7ehksdud4d8c68bg0")})


@st.composite
def mutated_bodies(draw):
    """A valid body, then flipped, cut, duplicated or spliced bytes."""
    value = draw(st.one_of(EVENTS, st.lists(EVENTS, min_size=1, max_size=3)))
    body = bytearray(json.dumps(value, ensure_ascii=draw(st.booleans())).encode())
    for _ in range(draw(st.integers(1, 4))):
        if not body:
            break
        at = draw(st.integers(0, len(body) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert", "delete", "dup"]))
        if action == "flip":
            body[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del body[at:]
        elif action == "insert":
            body[at:at] = draw(st.sampled_from([b'"', b"\\", b"{", b"]", b",", b"\x00",
                                                b"\xff", b"\\u", b"NaN", b"1e", b"\n", b" "]))
        elif action == "delete":
            del body[at]
        else:
            body[at:at] = body[at:at + draw(st.integers(1, 8))]
    return bytes(body)


def check_scan(body: bytes) -> None:
    try:
        is_batch, events = scan_body(body)
    except ValueError as exc:
        assert str(exc), "a refusal says why"
        return
    strict_json(body)  # accepted => valid JSON, always
    for event in events:
        if event.payload is not None:
            strict_json(event.payload)


@FUZZ
@given(st.binary(max_size=200))
def test_scan_body_random_bytes(body):
    check_scan(body)


@FUZZ
@given(mutated_bodies())
def test_scan_body_mutated_events_never_accepts_invalid_json(body):
    check_scan(body)


@FUZZ
@given(st.one_of(EVENTS, st.lists(EVENTS, min_size=1, max_size=3)))
def test_stamped_records_are_valid_json_and_decode_back(value):
    body = json.dumps(value).encode()
    is_batch, events = scan_body(body)
    try:
        _, ids, _, records, _ = stamp_events(events, is_batch)
    except ValueError:
        return  # e.g. a batch mixing namespaces: refused, fine
    originals = value if is_batch else [value]
    for record, original, event_id in zip(records, originals, ids, strict=True):
        stored = strict_json(record)
        assert b"\n" not in record and b"\r" not in record, "a record is one SSE data line"
        assert record_id(record) == stored["id"].encode() == b"e_" + event_id.removeprefix(b"e_")
        assert record_subject(record) == original["subject"].encode()
        assert stored.get("payload") == original.get("payload")
        assert stored.get("trace_id") == (original.get("trace_id") or None)


@FUZZ
@given(st.lists(EVENTS, min_size=1, max_size=6), st.integers(1, 6),  # --max-batch is >= 1
       st.binary(max_size=20))
def test_scan_body_max_events_stops_at_the_first_event_too_many(batch, limit, tail):
    body = json.dumps(batch).encode()
    if len(batch) > limit:  # refused there, whatever follows
        cut = body.index(json.dumps(batch[limit]).encode(), len(json.dumps(batch[:limit])) - 1)
        with pytest.raises(TooManyEvents, match=f"a batch of more than {limit} events"):
            scan_body(body[:cut] + tail, limit)
    else:
        is_batch, events = scan_body(body, limit)
        assert is_batch and [e.subject for e in events] == [e.subject for e in
                                                            scan_body(body)[1]]


@pytest.mark.parametrize("body", [
    b"[" * 200_000, b'{"subject":"a.b","payload":' + b"[" * 200_000,
    b'{"subject":"a.b","payload":"' + b"x" * (8 << 20) + b'"}',
    b'{"subject":"a.b","payload":"' + b"\\u0041" * 500_000 + b'"}',
    b'[' + b'{"subject":"a.b"},' * 100_000 + b'{"subject":"a.b"}]',
    b'{"subject":"a.b","payload":' + b"1" * 1_000_000 + b"}",
])
def test_scanner_is_linear_on_pathological_bodies(body):
    started = time.perf_counter()
    check_scan(body)
    assert time.perf_counter() - started < 2.0


# -- subjects and patterns -------------------------------------------------------------------

SUBJECT_BYTES = st.one_of(st.binary(max_size=40),
                          st.text("ab.*>_ -\x00é", max_size=20).map(str.encode))


@FUZZ
@given(SUBJECT_BYTES, SUBJECT_BYTES)
def test_subject_checks_and_matcher_never_crash(pattern, subject):
    for check in (validate_subject, validate_pattern):
        try:
            check(subject)
        except ValueError as exc:
            assert str(exc)
    try:
        validate_pattern(pattern)
    except ValueError:
        return
    compiled = Pattern(pattern)
    result = compiled.matches(subject)
    assert isinstance(result, bool)
    try:
        validate_subject(subject)
    except ValueError:
        return
    want = reference_matches(tuple(subject.decode().split(".")),
                             tuple(pattern.decode().split(".")))
    assert result == want, (pattern, subject)


@FUZZ
@given(st.binary(max_size=120))
def test_record_decoders_never_crash(record):
    for decode in (record_id, record_subject):
        try:
            assert isinstance(decode(record), bytes)
        except ValueError:
            pass


# -- segment frames --------------------------------------------------------------------------

@FUZZ
@given(st.lists(st.binary(min_size=1, max_size=60), min_size=1, max_size=8), st.data())
def test_frame_scanner_stops_at_the_first_damaged_frame(records, data):
    buffer = bytearray(frame_records(records))
    damage = data.draw(st.integers(0, len(buffer) - 1))
    buffer[damage] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(damage, len(buffer)))
    buffer = bytes(buffer[:cut])
    got, end, count, status = scan_frames(buffer, 0, -1)
    assert status in (0, 1, 2) and count == len(got) and 0 <= end <= len(buffer)
    # whatever it returns is a prefix of what was written, each frame whole and crc-valid
    assert got == records[:len(got)]
    assert (end - 0) == sum(8 + len(r) for r in got)
    assert count <= len(records)
    # the damaged frame itself is never returned as a record
    starts = [0]
    for r in records:
        starts.append(starts[-1] + 8 + len(r))
    damaged_frame = max(i for i, s in enumerate(starts[:-1]) if s <= damage)
    assert len(got) <= damaged_frame or got[damaged_frame] == records[damaged_frame]
    assert frame_ok(buffer, end) == 0 or status == 0
    find_record(buffer, 0, -1, b"needle", 0)


@FUZZ
@given(st.binary(max_size=300), st.integers(-5, 400))
def test_frame_decoders_on_garbage(buffer, offset):
    try:
        records, end, count, status = scan_frames(buffer, offset, -1)
    except ValueError:
        assert not 0 <= offset <= len(buffer)
        return
    for record in records:
        assert record and len(record) <= len(buffer)
    assert frame_ok(buffer, offset) >= 0
    assert find_record(buffer, max(0, min(offset, len(buffer))), -1, b"e_", 0) >= -1


def test_frame_crc_is_checked():
    buffer = bytearray(frame_records([b'{"id":"x"}']))  # one write: its end is marked
    assert zlib.crc32(bytes(buffer[8:])) ^ 0xFFFFFFFF == int.from_bytes(buffer[4:8], "little")
    buffer[10] ^= 1
    assert scan_frames(bytes(buffer), 0, -1)[3] == 2


# -- HTTP-level fuzzer against a live server ---------------------------------------------------

GOOD = build_request("POST", "/", b'{"subject":"app.fuzz","payload":1}')
NASTY = [
    b"GET\r\n\r\n", b"\x00\x01\x02\x03\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
    b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(5000)) + b"\r\n",
    b"GET / HTTP/1.1\r\nNo-Colon-Here\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"s\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"subject\":\"app.trunc",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 33\r\n\r\n"
    b"{\"subject\":\"app.x\",\"payload\":NaN}",
    b"POST / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    GOOD + b"\xff\xfe garbage \r\n\r\n" + GOOD,
    GOOD * 3 + b"GET /?subject=%ZZ HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /?subject=app.%00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /?subject=app.\xff HTTP/1.1\r\nHost: x\r\n\r\n",
    b"PUT /?consumer_id=c_&event_id=e_ HTTP/1.1\r\nHost: x\r\n\r\n",
    b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\n\r\n", b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET http://x/healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n[]",
]


def random_request(rng: random.Random) -> bytes:
    """A request assembled from plausible and broken pieces, sometimes mangled bytewise."""
    method = rng.choice([b"GET", b"POST", b"PUT", b"OPTIONS", b"G\x00T", b"", b"POST " * 3])
    target = rng.choice([b"/", b"/?subject=app.>", b"/healthz", b"*", b"", b"/?%",
                         b"/?subject=" + bytes(rng.randrange(256) for _ in range(8))])
    version = rng.choice([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1", b"HTTP/1.1 extra", b""])
    headers = []
    for _ in range(rng.randrange(6)):
        headers.append(rng.choice([
            b"Host: x", b"Content-Length: %d" % rng.randrange(-3, 200),
            b"Transfer-Encoding: chunked",
            b"Connection: close", b"Connection: keep-alive", b"Last-Event-ID: e_bad",
            b"X: " + bytes(rng.randrange(256) for _ in range(rng.randrange(20))),
            b":" * rng.randrange(3), b"Authorization: Bearer x"]))
    body = rng.choice([b"", b'{"subject":"app.fuzz","payload":2}', b"[", b"0\r\n\r\n",
                       b"5\r\nhello\r\n0\r\n\r\n", b"\x00" * rng.randrange(50)])
    data = bytearray(method + b" " + target + b" " + version + b"\r\n"
                     + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body)
    for _ in range(rng.randrange(3)):
        at = rng.randrange(len(data))
        data[at] = rng.randrange(256)
    if rng.random() < 0.3:
        data = data[:rng.randrange(len(data) + 1)]
    if rng.random() < 0.3:
        data = bytes(data) + GOOD
    return bytes(data)


def drip(sock: socket.socket, data: bytes, rng: random.Random) -> None:
    """Send `data` as a slow client does: in pieces of 1 byte to 2 KiB, each its own
    segment, with pauses between them, so that every piece is a read of its own."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    at = 0
    while at < len(data):
        size = rng.choice([1, 2, 3, 7, rng.randrange(1, 2048)])
        sock.sendall(data[at:at + size])
        at += size
        time.sleep(rng.choice([0, 0, 0.0005, 0.002]))


def send_and_read(port: int, data: bytes, timeout: float = 4.0,
                  slowly: random.Random | None = None) -> bytes:
    """Send (all at once, or `slowly` dripped), half-close, and read until the server
    closes (the test fails on a hang)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        try:
            if slowly is None:
                sock.sendall(data)
            else:
                drip(sock, data, slowly)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may cut us off mid-send (e.g. 431): fine
        answer = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return answer
            if not chunk:
                return answer
            answer += chunk
        if b"text/event-stream" in answer:
            return answer  # a valid subscription streams until the client leaves
        raise AssertionError(f"connection neither answered nor closed: {data[:120]!r}")
    finally:
        sock.close()


def statuses(answer: bytes) -> list[int]:
    return [int(line.split(b" ")[1]) for line in answer.split(b"\r\n")
            if line.startswith(b"HTTP/1.1 ") and line[9:12].isdigit()]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    from busclient import BusServer
    server = BusServer(tmp_path_factory.mktemp("fuzz") / "data", "app",
                       "--header-timeout", "2s", "--body-timeout", "2s").start()
    yield server
    server.close()


def test_garbage_after_pipelined_publishes_is_answered_after_them(fuzz_server):
    """The 400 comes last: earlier (stored) publishes get their own 202s, in order."""
    answer = send_and_read(fuzz_server.port, GOOD * 3 + b"\xff\xfe garbage\r\n\r\n" + GOOD)
    assert statuses(answer) == [202, 202, 202, 400], answer


@pytest.mark.parametrize("data", NASTY, ids=range(len(NASTY)))
def test_known_nasty_requests(fuzz_server, data):
    answer = send_and_read(fuzz_server.port, data)
    for status in statuses(answer):
        assert status < 500, (status, answer[:300])


@pytest.mark.parametrize("data", NASTY, ids=range(len(NASTY)))
def test_known_nasty_requests_dripped(fuzz_server, data):
    answer = send_and_read(fuzz_server.port, data, slowly=random.Random(len(data)))
    for status in statuses(answer):
        assert status < 500, (status, answer[:300])


@pytest.mark.parametrize("head", [b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: ",
                                  b"GET / HTTP/1.1\r\nX-Long-Name",
                                  GOOD + b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: "])
def test_a_dripped_header_that_never_ends_is_431_before_the_header_timeout(fuzz_server, head):
    """The class the all-at-once fuzzer cannot reach: a head that keeps growing in small
    reads is refused once it passes the limit, not when it ends (never) or times out."""
    rng = random.Random(len(head))
    with socket.create_connection(("127.0.0.1", fuzz_server.port), timeout=4) as sock:
        sock.sendall(head)
        sock.settimeout(0.001)
        started, answer = time.monotonic(), b""
        while b"Connection: close" not in answer:
            assert time.monotonic() - started < 1.8, f"no answer yet: {answer[:200]!r}"
            try:
                drip(sock, b"y" * 4096, rng)
                answer += sock.recv(65536)
            except TimeoutError:
                pass
            except OSError:
                break
    assert statuses(answer)[-1] == 431, answer[:300]


@pytest.mark.parametrize("slowly", [False, True], ids=["at-once", "dripped"])
def test_random_malformed_requests_never_hurt_the_server(fuzz_server, slowly):
    port = fuzz_server.port
    rng = random.Random(20261127)
    seen: set[int] = set()
    with Http(port) as bystander:  # a well-behaved client on its own keep-alive connection
        for number in range(400 if not slowly else 150):
            answer = send_and_read(port, random_request(rng), slowly=rng if slowly else None)
            for status in statuses(answer):
                assert status < 500, (status, answer[:300])
                seen.add(status)
            if number % 25 == 0:
                assert bystander.request("POST", "/", b'{"subject":"app.ok","payload":1}') \
                    .status == 202
    assert {400}.issubset(seen), f"the fuzzer hardly reached the server: {seen}"
    assert publish(port, "app.after", "fine").status == 202
    health = request(port, "GET", "/healthz").json()
    assert health["status"] == "ok"
    assert fuzz_server.proc.poll() is None
    log = fuzz_server.log()
    assert "Traceback" not in log and "Exception in callback" not in log, log[-3000:]


def test_stored_events_are_all_valid_json_after_fuzzing(fuzz_server):
    """Whatever got through the fuzzers into the log is valid JSON, one record per event."""
    from busclient import SSE
    count = request(fuzz_server.port, "GET", "/healthz").json()["namespaces"]["app"]["events"]
    with SSE(fuzz_server.port, "subject=app.>&start=oldest") as sse:
        for event in sse.events(count, timeout=20):
            assert event["subject"].startswith("app.")
