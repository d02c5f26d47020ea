"""No stream stalls in silence, and no publisher waits forever: every consumer step and
every answer of a group commit has its own error boundary. Faults are injected into a
real server process by tests/bus/faulty_bus.py."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from busclient import SSE, BusServer, Http, build_request, publish, read_response, request

LAUNCHER = str(Path(__file__).with_name("faulty_bus.py"))


@pytest.fixture
def faulty_server(tmp_path):
    """Factory: `faulty_server("fault,fault", namespaces)` → a started server with them."""
    servers = []

    def make(faults: str, namespaces: str = "app,broken") -> BusServer:
        server = BusServer(tmp_path / f"data{len(servers)}", namespaces)
        server.command = (LAUNCHER, faults)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.close()


def stream_error(stream: SSE, timeout: float = 3.0) -> str:
    deadline = time.monotonic() + timeout
    while (message := stream.message(max(0.05, deadline - time.monotonic()))) is not None:
        if message.get("event") == "error":
            return message["data"]
        assert message.get("event") != "msg", message
    raise AssertionError("the stream ended without an error event")


@pytest.mark.parametrize("ack_mode", ["none", "manual"])
def test_a_read_failing_with_emfile_ends_that_stream_loudly_and_others_go_on(
        faulty_server, ack_mode):
    server = faulty_server("read-emfile")
    port = server.port
    for n in range(3):
        assert publish(port, "broken.x", n).status == 202
        assert publish(port, "app.x", n).status == 202
    with SSE(port, "subject=app.>&start=oldest") as healthy, \
            SSE(port, f"subject=broken.>&start=oldest&ack={ack_mode}") as broken:
        reason = stream_error(broken)
        assert "Too many open files" in reason and "reconnecting resumes it" in reason
        assert [e["payload"] for e in healthy.events(3)] == [0, 1, 2]
        assert publish(port, "app.x", 3).status == 202
        assert [e["payload"] for e in healthy.events(1)] == [3]
        assert request(port, "GET", "/healthz").json()["consumers"] == 1  # the broken one left
    log = server.log()
    assert "subscription step failed" in log and "Too many open files" in log


def pipelined(port: int, *requests: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=3)
    sock.sendall(b"".join(requests))
    return sock


def post(subject: str, n: int) -> bytes:
    return build_request("POST", "/", f'{{"subject":"{subject}","payload":{n}}}'.encode())


def test_a_stream_start_failing_inside_a_groups_answers_spares_the_rest(faulty_server):
    """A publish with a subscription pipelined behind it, then two more publishes, all in
    one group: the stream's start raises while the group is answered. It ends with an
    `error` event; the publishes after it are answered all the same."""
    server = faulty_server("hold-groups,locate-fails")
    port = server.port
    first = pipelined(port, post("app.x", 0),
                      build_request("GET", "/?subject=broken.>&start=oldest"))
    others = [pipelined(port, post("app.x", n)) for n in (1, 2)]
    for sock in others:
        assert read_response(sock.makefile("rb")).status == 202
    answers = b""
    while chunk := first.recv(65536):  # the server ends the stream (timeout: a hang)
        answers += chunk
    assert answers.startswith(b"HTTP/1.1 202 ")
    assert b"event: error\ndata: cannot look the start event up: RuntimeError('injected: " \
           b"locate failed')" in answers, answers
    for sock in (first, *others):
        sock.close()


def test_a_start_search_failing_later_ends_that_stream_or_join_with_the_reason(faulty_server):
    """A search for the start that answers on a later turn and fails: the stream gets an
    `error` event (no verdict on the start: clients retry), a group's first join a 503."""
    server = faulty_server("locate-fails-later")
    reason = "cannot look the start event up: injected: locate failed later"
    with SSE(server.port, "subject=broken.>&start=oldest") as stream:
        assert stream_error(stream) == reason
    answer = request(server.port, "GET", "/?subject=broken.>&group=g&start=oldest")
    assert (answer.status, answer.body.decode().strip()) == (503, reason)
    assert not request(server.port, "GET", "/groups").json()["broken"], "no group created"
    assert publish(server.port, "app.x", 0).status == 202


def test_an_answer_that_raises_does_not_stop_the_rest_of_the_group(faulty_server):
    server = faulty_server("hold-groups,first-answer-fails")
    port = server.port
    socks = [pipelined(port, post("app.x", n)) for n in range(3)]
    # the first publish's answer raised (that connection gets none); the others get theirs
    for sock in socks[1:]:
        answer = read_response(sock.makefile("rb"))
        assert answer.status == 202
        assert answer.headers["x-bus-event-index"] in ("1", "2")
    for sock in socks:
        sock.close()
    assert "answering a publish failed" in server.log()


def test_an_unforeseen_append_error_answers_500_and_publishing_goes_on(faulty_server):
    server = faulty_server("first-append-fails")
    port = server.port
    answer = publish(port, "app.x", 0)
    assert answer.status == 500 and b"injected: append failed" in answer.body, answer
    assert publish(port, "app.x", 1).status == 202
    with SSE(port, "subject=app.>&start=oldest") as stream:
        assert [e["payload"] for e in stream.events(1)] == [1]


@pytest.mark.parametrize("faults, start, reason", [
    ("group-create-fails", "newest", b"injected: group create failed"),
    ("locate-fails", "oldest", b"injected: locate failed"),
])
def test_a_group_join_that_raises_answers_500_with_the_reason(faulty_server, faults, start,
                                                               reason):
    server = faulty_server(faults)
    port = server.port
    answer = request(port, "GET", f"/?subject=broken.>&group=g&start={start}")
    assert answer.status == 500 and reason in answer.body, answer
    assert "group join failed" in server.log()
    with SSE(port, "subject=app.>&group=g") as member:  # other groups are joined as ever
        assert member.status == 200
        assert request(port, "GET", "/groups?namespace=broken").json() == {"broken": {}}


def test_disk_reads_of_a_catch_up_stall_nobody_else(faulty_server):
    """Each disk read takes 0.2 s: the search for a start id and a consumer catching up
    12 MB (more than the 8 MiB kept in memory) wait for them off the loop, so /healthz
    stays prompt; publishes during the catch-up arrive after it, none lost or twice (the
    seam is still one step)."""
    server = faulty_server("slow-disk")
    port = server.port
    pad, ids = "x" * 10_000, []
    with Http(port) as http:
        for start in range(0, 1200, 50):
            body = json.dumps([{"subject": "app.x", "payload": {"n": n, "pad": pad}}
                               for n in range(start, start + 50)]).encode()
            answer = http.request("POST", "/", body)
            assert answer.status == 202
            ids += answer.json()["ids"]
    # finding where `start=<id>` begins reads the disk too: off the loop
    sock = pipelined(port, build_request("GET", f"/?subject=app.>&start={ids[100]}"))
    time.sleep(0.05)  # the search has begun
    started = time.perf_counter()
    assert request(port, "GET", "/healthz").status == 200
    waited = time.perf_counter() - started
    with SSE(port, sock=sock) as stream:
        assert stream.events(1, timeout=5)[0]["payload"]["n"] == 101
    assert waited < 0.1, f"/healthz took {waited * 1000:.0f} ms behind an id search"
    with SSE(port, "subject=app.>&start=oldest") as stream, Http(port) as http:
        latencies = []
        for n in range(1200, 1210):
            started = time.perf_counter()
            assert http.request("GET", "/healthz").status == 200
            latencies.append(time.perf_counter() - started)
            body = json.dumps({"subject": "app.x", "payload": {"n": n}}).encode()
            assert http.request("POST", "/", body).status == 202
            time.sleep(0.05)
        got = [e["payload"]["n"] for e in stream.events(1210, timeout=20)]
    assert got == list(range(1210))
    assert max(latencies) < 0.1, f"/healthz took {max(latencies) * 1000:.0f} ms"


def test_a_live_push_that_fails_ends_that_stream_loudly_and_others_go_on(faulty_server):
    server = faulty_server("live-write-fails")
    port = server.port
    with SSE(port, "subject=broken.>") as broken, SSE(port, "subject=app.>") as healthy:
        assert publish(port, "broken.x", 1).status == 202
        assert publish(port, "app.x", 2).status == 202
        assert "injected: live write failed" in stream_error(broken)
        assert [e["payload"] for e in healthy.events(1)] == [2]
    assert "subscription step failed" in server.log()
