"""HTTP/1.1 details real clients and proxies hit, on a real server over raw sockets."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from busclient import (
    SSE,
    Http,
    _read_head,
    build_request,
    publish,
    read_response,
    request,
    wait_until,
)

UPGRADE = {"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c",
           "HTTP2-Settings": "AAMAAABkAARAAAAAAAIAAAAA"}  # what `curl --http2 http://…` sends


def answers_until_close(http: Http) -> list:
    """Every response the server writes before it closes the connection."""
    answers = []
    while http.file.peek(1):
        answers.append(read_response(http.file))
    return answers


def nothing_more(http: Http, wait: float = 0.3) -> bool:
    http.sock.settimeout(wait)
    try:
        return http.sock.recv(1, socket.MSG_PEEK) == b""
    except TimeoutError:
        return True


def stored(port: int, namespace: str = "app") -> int:
    return request(port, "GET", "/healthz").json()["namespaces"][namespace]["events"]


# -- Upgrade --------------------------------------------------------------------------------

def test_upgrade_is_ignored_one_answer_and_the_connection_goes_on(server):
    with Http(server.port) as http:
        http.send(build_request("GET", "/healthz", headers=UPGRADE)
                  + build_request("POST", "/", b'{"subject":"app.after"}'))
        first, second = read_response(http.file), read_response(http.file)
        assert (first.status, second.status) == (200, 202), (first, second)
        assert nothing_more(http)


def test_pipelined_upgrades_are_each_answered_in_order(server):
    """After an Upgrade, llhttp hands back the bytes it did not read: they are the next
    requests', read once (they were also held as the start of a head, and the third request
    made the connection fail with a TypeError)."""
    with Http(server.port) as http:
        http.send(build_request("GET", "/healthz", headers=UPGRADE) * 2
                  + build_request("POST", "/", b'{"subject":"app.after"}')
                  + build_request("GET", "/healthz", headers=UPGRADE))
        answers = [read_response(http.file) for _ in range(4)]
        assert [a.status for a in answers] == [200, 200, 202, 200], answers
        assert nothing_more(http)
    assert stored(server.port) == 1


def test_upgrade_on_a_subscription_keeps_the_stream_framed(server):
    with SSE(server.port, raw_request=build_request(
            "GET", "/?subject=app.>", headers={"Accept": "text/event-stream", **UPGRADE})) as sse:
        assert sse.status == 200
        publish(server.port, "app.x", 1)
        assert sse.events(1)[0]["payload"] == 1


def test_upgrade_with_a_body_is_one_400_and_nothing_stored(server):
    with Http(server.port) as http:
        http.send(build_request("POST", "/", b'{"subject":"app.up"}', headers=UPGRADE))
        answers = answers_until_close(http)
    assert [a.status for a in answers] == [400], answers
    assert b"Upgrade" in answers[0].body
    assert stored(server.port) == 0


@pytest.mark.parametrize("target,status", [("example.com:443", 404), ("/", 405)])
def test_connect_is_answered_once_then_the_connection_closes(server, target, status):
    with Http(server.port) as http:
        http.send(f"CONNECT {target} HTTP/1.1\r\nHost: example.com:443\r\n\r\n".encode()
                  + b"\x16\x03\x01 tunnel bytes")
        answers = answers_until_close(http)
    assert [a.status for a in answers] == [status], answers
    assert b"CONNECT" in answers[0].body


# -- HEAD -----------------------------------------------------------------------------------

@pytest.mark.parametrize("path,status,content_type", [
    ("/healthz", 200, "application/json"), ("/metrics", 200, "text/plain"),
    ("/", 405, "text/plain"), ("/healthz/nothing", 404, "text/plain")])
def test_head_is_the_get_head_without_a_body(server, path, status, content_type):
    with Http(server.port) as http:
        http.send(build_request("HEAD", path) + build_request("GET", "/healthz"))
        got, headers = _read_head(http.file)
        assert got == status and headers["content-type"].startswith(content_type)
        assert int(headers["content-length"]) > 0
        after = http.file.readline()  # right after the head, the next answer: no body came
        assert after == b"HTTP/1.1 200 OK\r\n", after


# -- HTTP/1.0 subscriptions ------------------------------------------------------------------

def test_http10_subscription_is_close_delimited_not_chunked(make_server):
    server = make_server()
    with SSE(server.port, raw_request=b"GET /?subject=app.%3E HTTP/1.0\r\n\r\n") as sse:
        assert sse.status == 200 and "transfer-encoding" not in sse.headers
        assert sse.headers["connection"] == "close"
        publish(server.port, "app.old", "client")
        body = b""
        while b"event: msg" not in body:
            body += sse.file.read1(65536)
        server.stop()  # ends the stream: the close is its end
        body += sse.file.read()
    assert body.startswith(b"retry: 2000\nevent: consumer\ndata: c_"), body[:80]
    assert b'"payload":"client"}\n\n' in body and b"\r\n" not in body


# -- Host and the absolute form ---------------------------------------------------------------

@pytest.mark.parametrize("head,reason", [
    (b"GET /healthz HTTP/1.1\r\n", b"missing Host"),
    (b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n", b"more than one Host"),
    (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nhost: 127.0.0.1\r\n", b"more than one Host"),
    (b"POST / HTTP/1.0\r\nHost: a\r\nHost: b\r\nContent-Length: 19\r\n", b"more than one Host")])
def test_missing_or_repeated_host_is_400(server, head, reason):
    with Http(server.port) as http:
        http.send(head + b"\r\n" + (b'{"subject":"app.h"}' if b"POST" in head else b""))
        answers = answers_until_close(http)
    assert [a.status for a in answers] == [400] and reason in answers[0].body, answers
    assert stored(server.port) == 0


def test_http10_needs_no_host(server):
    with Http(server.port) as http:
        http.send(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert read_response(http.file).json()["status"] == "ok"


def test_absolute_form_targets_are_served(server):
    port = server.port
    with Http(port) as http:
        answer = http.request("POST", f"http://127.0.0.1:{port}/", b'{"subject":"app.abs"}')
        assert answer.status == 202
        assert http.request("GET", f"HTTP://127.0.0.1:{port}/healthz").json()["status"] == "ok"
    with SSE(port, raw_request=build_request(
            "GET", f"http://127.0.0.1:{port}/?subject=app.abs&start=oldest")) as sse:
        assert sse.events(1)[0]["subject"] == "app.abs"


# -- Transfer-Encoding and chunk extensions -----------------------------------------------------

def chunked(body: bytes, extension: bytes = b"", pieces: int = 1) -> bytes:
    """A chunked POST of `body` in `pieces` chunks, each size line carrying `extension`."""
    size = -(-len(body) // pieces)
    chunks = [body[i:i + size] for i in range(0, len(body), size)]
    return (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x%s\r\n%s\r\n" % (len(c), extension, c) for c in chunks)
            + b"0" + extension + b"\r\n\r\n")


EVENT = b'{"subject":"app.chunked","payload":"' + b"x" * 100 + b'"}'


def test_transfer_encoding_other_than_chunked_alone_is_400(server):
    with Http(server.port) as http:
        http.send(chunked(EVENT).replace(b"chunked", b"identity, chunked", 1))
        answers = answers_until_close(http)
    assert [a.status for a in answers] == [400] and b"Transfer-Encoding" in answers[0].body
    assert stored(server.port) == 0


def test_chunk_extensions_within_the_cap_are_fine(server):
    with Http(server.port) as http:
        http.send(chunked(EVENT, b";a=b;c=\"d e\"", pieces=3) * 2 + chunked(EVENT, b";x" * 1500))
        assert [read_response(http.file).status for _ in range(3)] == [202] * 3
        for byte in chunked(EVENT, b";name=value", pieces=5):  # one byte per read, at worst
            http.send(bytes([byte]))
        assert read_response(http.file).status == 202


@pytest.mark.parametrize("pieces", [1, 4])
def test_a_chunk_extension_past_4_KiB_is_400(server, pieces):
    with Http(server.port) as http:
        http.send(chunked(EVENT, b";x=" + b"y" * 5000, pieces=pieces))
        answers = answers_until_close(http)
    assert [a.status for a in answers] == [400] and b"chunk size line" in answers[0].body
    assert stored(server.port) == 0


def test_an_endless_chunk_extension_is_cut_off(server):
    with Http(server.port) as http:
        http.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;x=")
        sent = 0
        try:
            while sent < 256 << 20:
                http.send(b"y" * 65536)
                sent += 65536
        except OSError:  # the server hung up
            pass
        # after its 400 the server reads and drops at most 64 MiB (so that the 400 arrives),
        # then hangs up; what more was sent sat in the two sockets' buffers
        assert sent < 80 << 20
        try:
            answer = read_response(http.file)
        except ConnectionResetError:  # our unread bytes made the close a reset: fine
            return
    assert answer.status == 400 and b"chunk size line" in answer.body


# -- body limits ------------------------------------------------------------------------------

def test_a_single_event_too_large_for_its_content_length_is_413_unread(server):
    with Http(server.port, timeout=5) as http:
        http.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 60000000\r\n\r\n"
                  b'{"subject":"app.big","payload":"xxxx')  # and not the other 60 MB
        answer = read_response(http.file)
    assert answer.status == 413 and b"only a batch" in answer.body, answer
    assert stored(server.port) == 0


def test_payload_limit_is_the_same_alone_and_in_a_batch(make_server):
    port = make_server("app", "--max-event-size", "1KiB").port
    exact = {"subject": "app.limit", "payload": "x" * 1022}  # 1024 bytes of JSON payload
    assert request(port, "POST", "/", exact).status == 202
    assert request(port, "POST", "/", [exact] * 2).status == 202
    over = {"subject": "app.limit", "payload": "x" * 1023}
    for body in (over, [exact, over]):
        answer = request(port, "POST", "/", body)
        assert answer.status == 413 and b"payload of 1025 bytes" in answer.body, answer
    envelope = {"subject": "app.limit", "trace_id": "t" * (70 << 10)}
    answer = request(port, "POST", "/", envelope)
    assert answer.status == 413 and b"only a batch" in answer.body
    answer = request(port, "POST", "/", [envelope])  # a batch bounds each event's fields
    assert answer.status == 400 and b"trace_id is longer than 256 bytes" in answer.body


def test_a_batch_may_be_larger_than_one_event(make_server):
    port = make_server("app", "--max-event-size", "1KiB").port
    batch = json.dumps([{"subject": "app.many", "payload": "x" * 900}] * 100).encode()
    assert len(batch) > (1 << 10) + (64 << 10)
    assert request(port, "POST", "/", b"\n  " + batch).status == 202
    with Http(port) as http:
        http.send(chunked(batch, pieces=10) + chunked(b" " * 70000 + EVENT, pieces=10))
        assert read_response(http.file).status == 202
        answer = read_response(http.file)
    assert answer.status == 413 and b"only a batch" in answer.body
    assert stored(port) == 200


def event_body(size: int, subject: str = "app.big") -> bytes:
    """One event whose JSON body is `size` bytes."""
    head = b'{"subject":"%s","payload":"' % subject.encode()
    return head + b"x" * (size - len(head) - 2) + b'"}'


def body_gauges(port: int) -> dict[str, int]:
    """busd_body_bytes, busd_body_bytes_peak and busd_body_waiting from /metrics."""
    lines = request(port, "GET", "/metrics").body.decode().splitlines()
    return {name: int(value) for name, value in (line.split() for line in lines
                                                  if line.startswith("busd_body_"))}


def post_head(size: int) -> bytes:
    return b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size


def in_threads(*work) -> None:
    threads = [threading.Thread(target=job) for job in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads), "a client is still stuck"


BUDGET = 1 << 20  # --max-body-memory in the tests below


def test_bodies_past_the_budget_wait_their_turn_and_all_are_stored(make_server):
    """--max-body-memory bounds the bodies all connections buffer together: past it,
    connections are not read until there is room, so every body gets in, and what is held
    never passes the budget plus one body (the oldest, which goes on) plus one read."""
    port = make_server("app", "--max-body-memory", "1MiB").port
    body, answers, go_on = event_body(900_000), [], threading.Event()

    def upload() -> None:
        with Http(port) as http:
            http.send(post_head(len(body)) + body[:300_000])
            assert go_on.wait(10)
            for start in range(300_000, len(body), 64 << 10):
                http.send(body[start:start + (64 << 10)])
            answers.append(read_response(http.file).status)

    def release_when_past_the_budget() -> None:
        """Six bodies begun hold more than the budget once the server has read them; sent
        on before that, the server may read one whole body first and never reach it."""
        wait_until(lambda: body_gauges(port)["busd_body_bytes"] > BUDGET, timeout=10,
                   interval=0.01, what=lambda: f"not past the budget: {body_gauges(port)}")
        go_on.set()

    in_threads(*[upload] * 6, release_when_past_the_budget)
    assert answers == [202] * 6, answers
    gauges = body_gauges(port)
    assert BUDGET < gauges["busd_body_bytes_peak"] <= BUDGET + len(body) + (256 << 10), gauges
    assert gauges["busd_body_bytes"] == gauges["busd_body_waiting"] == 0, gauges
    assert stored(port) == 6


def test_half_sent_bodies_filling_the_budget_do_not_wait_on_each_other(make_server):
    """Bytes are counted as they arrive: four bodies half sent hold more than the budget,
    none complete. The oldest is read on regardless, so each in turn finishes."""
    port = make_server("app", "--max-body-memory", "1MiB").port
    body, answers, clients = event_body(900_000), [], []
    for _ in range(4):
        clients.append(Http(port))
        clients[-1].send(post_head(len(body)) + body[:400_000])
        time.sleep(0.1)
    assert body_gauges(port)["busd_body_waiting"] >= 2
    assert body_gauges(port)["busd_body_bytes"] > BUDGET

    def finish(http: Http) -> None:
        http.send(body[400_000:])
        answers.append(read_response(http.file).status)

    in_threads(*[lambda http=http: finish(http) for http in clients])
    for http in clients:
        http.close()
    assert answers == [202] * 4, answers
    assert body_gauges(port)["busd_body_bytes"] == 0
    assert stored(port) == 4


def test_a_body_read_whole_counts_towards_the_peak(make_server):
    """A body that arrives in the read its head came in is never registered with the budget
    (the read holds its bytes anyway), yet busd_body_bytes_peak still counts it."""
    port = make_server("app", "--max-body-memory", "1MiB").port
    body = event_body(40_000)
    with Http(port) as http:
        http.send(post_head(len(body)) + body)
        assert read_response(http.file).status == 202
    gauges = body_gauges(port)
    assert gauges["busd_body_bytes_peak"] >= len(body), gauges
    assert gauges["busd_body_bytes"] == gauges["busd_body_waiting"] == 0, gauges


def test_a_waiting_client_that_leaves_frees_its_place(make_server):
    """A connection waiting for room is not read, yet its client's close is noticed
    (within about a second): its place and bytes are given back. One that waits longer
    than --body-timeout is not timed out for it: the server is the one not reading."""
    port = make_server("app", "--max-body-memory", "1MiB", "--body-timeout", "1").port
    first, second = event_body(900_000, "app.first"), event_body(500_000, "app.second")
    with Http(port) as holder, Http(port) as patient:
        holder.send(post_head(len(first)) + first[:800_000])
        time.sleep(0.2)
        leaver = socket.create_connection(("127.0.0.1", port))
        leaver.sendall(post_head(len(second)) + second[:300_000])
        time.sleep(0.2)
        patient.send(post_head(len(second)) + second[:300_000])
        time.sleep(0.2)
        assert body_gauges(port)["busd_body_waiting"] == 2
        leaver.close()
        wait_until(lambda: body_gauges(port)["busd_body_waiting"] == 1, timeout=3, interval=0.1,
                   what=lambda: f"the leaver's place was not given back: {body_gauges(port)}")
        gauges = body_gauges(port)
        assert gauges["busd_body_bytes"] <= 800_000 + 300_000, gauges
        for sent in range(800_000, 800_004):  # the holder trickles; the patient waits 2 s
            holder.send(first[sent:sent + 1])
            time.sleep(0.5)
        holder.send(first[800_004:])
        assert read_response(holder.file).status == 202
        patient.send(second[300_000:])
        assert read_response(patient.file).status == 202
    assert body_gauges(port)["busd_body_bytes"] == 0
    assert stored(port) == 2


def test_a_refused_upload_is_read_to_its_end_so_its_answer_arrives(server):
    """The 413 for a 30 MB single event is written before its body is read; then the
    connection is read (and dropped) until the client has sent everything, so a client
    that reads only once it has written all gets the 413, not a reset."""
    body = event_body(30_000_000)
    for _ in range(3):
        with Http(server.port) as http:
            http.send(build_request("POST", "/", body))
            answer = read_response(http.file)
            assert answer.status == 413 and b"only a batch" in answer.body, answer
            assert http.file.read() == b"", "the connection ends after the answer"
    assert stored(server.port) == 0


def test_100_continue_is_sent_after_the_answers_before_it(server):
    """An interim 100 belongs to its request: pipelined behind a publish that is answered
    after its group commit, it comes after that 202, not ahead of it."""
    body = b'{"subject":"app.second"}'
    with Http(server.port) as http:
        http.send(build_request("POST", "/", b'{"subject":"app.first"}')
                  + build_request("POST", "/", body, {"Expect": "100-continue"}))
        lines = [read_response_line(http.file) for _ in range(3)]
    assert lines == [202, 100, 202], lines


def read_response_line(file) -> int:
    """The status of the next response, interim ones included, its head and body read."""
    status, headers = _read_head(file)
    file.read(int(headers.get("content-length", 0)))
    return status


# -- events per request -------------------------------------------------------------------------

def test_a_batch_over_max_batch_is_413_and_stores_nothing(make_server):
    port = make_server("app", "--max-batch", "10").port
    batch = [{"subject": "app.b", "payload": n} for n in range(10)]
    assert request(port, "POST", "/", batch).status == 202
    answer = request(port, "POST", "/", batch + batch[:1])
    assert answer.status == 413 and b"more than 10 events" in answer.body, answer
    assert b"--max-batch (10)" in answer.body
    assert stored(port) == 10


def test_a_million_event_batch_is_refused_without_stalling_others(server):
    port, worst, done = server.port, [0.0], threading.Event()

    def bystander() -> None:
        with Http(port) as http:
            while not done.is_set():
                started = time.monotonic()
                assert http.request("POST", "/", b'{"subject":"app.other"}').status == 202
                worst[0] = max(worst[0], time.monotonic() - started)

    thread = threading.Thread(target=bystander)
    thread.start()
    try:
        with Http(port, timeout=60) as flood:
            flood.send(build_request("POST", "/", b"[" + b",".join(
                [b'{"subject":"app.flood","payload":1}'] * 1_000_000) + b"]"))
            answer = read_response(flood.file)
            time.sleep(0.2)
    finally:
        done.set()
        thread.join()
    assert worst[0] < 1.0, f"another publisher waited {worst[0]:.2f}s"
    assert answer.status == 413 and b"--max-batch (1000)" in answer.body, answer


def test_requests_read_after_a_stream_starts_do_not_inherit_each_others_headers(server):
    """httptools parses a read to its end, past the request that turned the connection into
    a stream: the requests after it are dropped, each with its own headers. (A chunked one
    that took the Content-Length of the one before crashed the compiled connection, and
    with it the server; a one-byte Host is the same object each time, so not a repeat.)"""
    with Http(server.port) as http:
        http.send(b"GET /?subject=app.%3E HTTP/1.1\r\nHost: t\r\n\r\n"
                  b'POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 31\r\n\r\n'
                  b'{"subject":"app.b","payload":2}'
                  b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"5\r\nhello\r\n0\r\n\r\n")
        assert read_response(http.file).status == 200
    assert request(server.port, "GET", "/healthz").status == 200
    assert stored(server.port) == 0


def test_status_heads_carry_their_status_and_the_current_second():
    """status_head keeps the last status's head for the runs answers come in (202s): a
    different status gets its own head, and a new second a new Date for the same status."""
    from email.utils import parsedate_to_datetime

    from busd.server.http import status_head

    def date(head: bytes) -> float:
        line = next(line for line in head.split(b"\r\n") if line.startswith(b"Date: "))
        return parsedate_to_datetime(line[6:].decode()).timestamp()

    assert status_head(202).startswith(b"HTTP/1.1 202 Accepted\r\n")
    assert status_head(404).startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert status_head(202).startswith(b"HTTP/1.1 202 Accepted\r\n")
    time.sleep(1 - time.time() % 1 + 0.01)  # into the next second
    first = status_head(202)
    assert date(first) <= time.time() < date(first) + 2
    time.sleep(1.0)
    assert date(first) < date(status_head(202)) <= time.time()
