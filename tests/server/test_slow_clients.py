"""Slow and idle clients: slowloris is cut off, idle streams are cheap, stalled readers are
bounded, and --max-connections refuses the excess politely."""

from __future__ import annotations

import json
import resource
import socket
import threading
import time

import pytest
from busclient import SSE, Http, build_request, publish, read_response, request, rss_kib, wait_until

IDLE_STREAMS = 5000
IDLE_STREAM_BUDGET_KIB = 16  # the core issue's bound per idle SSE connection
STALLED_BUDGET_MIB = 1  # ... and per consumer that stops reading


def publish_latency(port: int) -> float:
    started = time.monotonic()
    assert publish(port, "app.latency", 1).status == 202
    return time.monotonic() - started


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def test_slowloris_headers_are_cut_off_and_never_delay_others(make_server):
    server = make_server("app", "--header-timeout", "1s", "--body-timeout", "1s")
    port = server.port
    attackers = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
    body_attacker = socket.create_connection(("127.0.0.1", port))
    body_attacker.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    request_bytes = build_request("GET", "/?subject=app.>")
    started = time.monotonic()
    latencies, cut = [], {}
    for n in range(8):  # one byte a second on each attacking connection
        for number, sock in enumerate(attackers):
            if number in cut:
                continue
            try:
                sock.sendall(request_bytes[n:n + 1])
            except OSError:
                cut[number] = time.monotonic() - started
        latencies.append(publish_latency(port))
        time.sleep(1)
        if len(cut) == len(attackers):
            break
    deadline = time.monotonic() + 3  # all of them, together: a hang fails fast
    answers = [read_until_closed(sock, max(0.05, deadline - time.monotonic()))
               for sock in attackers]
    for sock in attackers:
        sock.close()
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers), answers[:3]
    assert b"request headers not received within 1s" in answers[0]
    assert max(latencies) < 0.5, f"slow clients delayed a publish: {latencies}"
    stalled_body = read_until_closed(body_attacker, 4)
    body_attacker.close()
    assert stalled_body.startswith(b"HTTP/1.1 408 ") and b"body stalled" in stalled_body
    assert time.monotonic() - started < 12
    assert publish_latency(port) < 0.25


def test_idle_keep_alive_connections_are_closed_after_idle_timeout(make_server):
    server = make_server("app", "--idle-timeout", "1s")
    with Http(server.port) as http:
        assert http.request("GET", "/healthz").status == 200
        assert read_until_closed(http.sock, 4) == b"", "idle connection was not closed"
    silent = socket.create_connection(("127.0.0.1", server.port))
    assert read_until_closed(silent, 4) == b""  # never sent a byte: also idle
    silent.close()


@pytest.fixture
def many_fds():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 3 * IDLE_STREAMS
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
        except (ValueError, PermissionError):
            pytest.skip(f"cannot raise the open-file limit to {wanted} (hard limit {hard})")
    else:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_5000_idle_streams_stay_within_memory_bounds(make_server, many_fds):
    server = make_server("app", "--max-connections", str(IDLE_STREAMS + 100))
    pid, port = server.proc.pid, server.port
    subscribe = build_request("GET", "/?subject=app.>")
    warm = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
    for sock in warm:
        sock.sendall(subscribe)
    time.sleep(0.3)
    before = rss_kib(pid)
    streams = []
    for _ in range(IDLE_STREAMS):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(subscribe)
        streams.append(sock)
    wait_until(lambda: request(port, "GET", "/healthz").json()["consumers"] >= IDLE_STREAMS + 50,
               timeout=30, interval=0.1, what="the streams did not all open")
    after = rss_kib(pid)
    per_stream = (after - before) / IDLE_STREAMS
    print(f"rss {before} KiB -> {after} KiB with {IDLE_STREAMS} idle streams: "
          f"{per_stream:.1f} KiB each")
    assert per_stream <= IDLE_STREAM_BUDGET_KIB
    # every one of them is really served: one event reaches a sample of them
    assert publish(port, "app.idle", "hello").status == 202
    for sock in streams[:: IDLE_STREAMS // 20]:
        sock.settimeout(5)
        data = b""
        while b'"hello"' not in data:
            chunk = sock.recv(65536)
            assert chunk, "stream closed"
            data += chunk
    assert publish_latency(port) < 0.5
    for sock in streams + warm:
        sock.close()


def _publish_load(port: int, pid: int, total: int = 40_000) -> float:
    """Publish `total` ~300-byte events in batches; the server's RSS growth in MiB."""
    before = rss_kib(pid)
    pad = "x" * 200
    with Http(port) as http:
        for start in range(0, total, 500):
            body = json.dumps([{"subject": "app.slow", "payload": {"n": n, "pad": pad}}
                               for n in range(start, start + 500)]).encode()
            assert http.request("POST", "/", body).status == 202
    return (rss_kib(pid) - before) / 1024


def test_stalled_consumers_are_bounded_while_publishing_goes_on(make_server):
    """20 subscribers stop reading while ~12 MB are published: each costs at most 1 MiB
    more than the same load costs a server with no subscriber at all."""
    control = make_server("app")
    baseline = _publish_load(control.port, control.proc.pid)
    control.close()
    server = make_server("app")
    pid, port = server.proc.pid, server.port
    stalled = []
    for _ in range(20):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(build_request("GET", "/?subject=app.>&start=newest"))
        stalled.append(sock)
    wait_until(lambda: request(port, "GET", "/healthz").json()["consumers"] >= len(stalled),
               what="the stalled streams did not all open")
    grown = _publish_load(port, pid)
    extra = grown - baseline
    print(f"rss growth {grown:.1f} MiB behind {len(stalled)} stalled consumers, "
          f"{baseline:.1f} MiB with none: {extra / len(stalled) * 1024:.0f} KiB each")
    assert extra <= len(stalled) * STALLED_BUDGET_MIB
    assert publish_latency(port) < 0.25
    # one of them wakes up and gets everything, in order
    stream = SSE(port, sock=stalled[0])
    assert [e["payload"]["n"] for e in stream.events(40_000, timeout=60)] == list(range(40_000))
    for sock in stalled:
        sock.close()


def test_a_stalled_manual_ack_reader_gets_no_redeliveries_until_it_reads(make_server):
    """max_inflight=10000, redelivery at the 100ms floor, unlimited redeliveries: a reader
    that stops reading costs under 1 MiB, where the copies piled up in its socket buffer
    at ~100 MiB/s. When it reads again it gets every event, then the overdue copies. (A
    reader catches up once before the measurement: what the first catch-up pages in is
    the server's, not this reader's.)"""
    server = make_server("app")
    pid, port = server.proc.pid, server.port
    with Http(port) as http:
        for start in range(0, 10_000, 500):
            body = json.dumps([{"subject": "app.s", "payload": {"n": n, "pad": "x" * 1000}}
                               for n in range(start, start + 500)]).encode()
            assert http.request("POST", "/", body).status == 202
    with SSE(port, "subject=app.>&start=oldest") as warm:  # the catch-up's one-time costs
        assert len(warm.events(10_000, timeout=60)) == 10_000  # (code pages, arenas) first
    before = rss_kib(pid)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(build_request("GET", "/?subject=app.>&start=oldest&ack=manual&redelivery=100ms"
                                      "&redelivery_count=0&max_inflight=10000"))
    time.sleep(3)
    grown = (rss_kib(pid) - before) / 1024
    assert grown <= STALLED_BUDGET_MIB, f"grew {grown:.1f} MiB behind one stalled reader"
    stream = SSE(port, sock=sock)
    assert [e["payload"]["n"] for e in stream.events(10_000, timeout=60)] == list(range(10_000))
    assert stream.events(1, timeout=5)[0]["payload"]["n"] == 0  # then the redeliveries
    stream.close()


def test_max_connections_refuses_the_excess_politely(make_server):
    server = make_server("app", "--max-connections", "20")
    held = [Http(server.port) for _ in range(20)]
    assert held[0].request("GET", "/healthz").status == 200  # all 20 accepted
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as extra:
        extra.sendall(build_request("POST", "/", b'{"subject":"app.x"}'))
        answer = read_response(extra.makefile("rb"))
    assert answer.status == 503 and b"too many connections (limit 20)" in answer.body
    assert answer.headers["connection"] == "close"
    for http in held[:5]:
        http.close()
    time.sleep(0.2)
    assert publish(server.port, "app.after", 1).status == 202, "room again once some left"
    for http in held[5:]:
        assert http.request("POST", "/", b'{"subject":"app.held"}').status == 202
        http.close()


def test_a_flood_of_connections_while_publishing(make_server):
    """Connect/close churn from several threads does not stall a steady publisher."""
    server = make_server("app")
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
            except OSError:
                pass

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        with Http(server.port) as http:
            worst = 0.0
            for n in range(300):
                started = time.monotonic()
                assert http.request("POST", "/", json.dumps(
                    {"subject": "app.steady", "payload": n}).encode()).status == 202
                worst = max(worst, time.monotonic() - started)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert worst < 1.0, f"a publish took {worst:.3f}s under connection churn"


def answer_while_sending(sock: socket.socket, pieces, pause: float = 0.002,
                         timeout: float = 5.0) -> tuple[bytes, int]:
    """Send `pieces` one by one until the server answers with `Connection: close` or
    closes: what it said, and how many bytes had been sent by then."""
    sock.setblocking(False)
    answer, sent, deadline = b"", 0, time.monotonic() + timeout
    for piece in pieces:
        try:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
            if b"Connection: close\r\n" in answer:
                break
        except BlockingIOError:
            pass
        except ConnectionResetError:
            break
        try:
            sock.sendall(piece)
        except BlockingIOError:  # its buffer is full: it stopped reading
            pass
        except OSError:
            break
        sent += len(piece)
        assert time.monotonic() < deadline, f"no answer after {sent} bytes"
        time.sleep(pause)
    else:
        raise AssertionError(f"no answer after {sent} bytes")
    sock.setblocking(True)
    return answer + read_until_closed(sock, 2), sent


ENDLESS = [b"a" * 1024] * 4096  # 4 MiB, a KiB at a time


@pytest.mark.parametrize("head", [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ",  # a value that never ends
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-",  # a name that never ends
    build_request("POST", "/", b'{"subject":"app.x"}') + b"GET / HTTP/1.1\r\nX: ",  # pipelined
])
def test_a_header_that_never_ends_is_431_as_soon_as_it_passes_64_KiB(server, head):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head)
        answer, sent = answer_while_sending(sock, ENDLESS)
    assert answer.count(b"HTTP/1.1 431 ") == 1, answer[:300]
    assert b"request line and headers larger than 65536 bytes" in answer
    assert sent < 96 << 10, f"431 came only after {sent} bytes"
    assert request(server.port, "GET", "/healthz").status == 200


def test_a_header_dripped_a_byte_at_a_time_is_counted_too(server):
    """Each read is one byte: the head is counted read by read."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * (63 << 10))
        answer, sent = answer_while_sending(sock, [b"a"] * (4 << 10), pause=0.0005)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:300]


def test_headers_just_under_the_limit_are_served(server):
    headers = {f"X-{n}": "v" * 1000 for n in range(60)}  # ~61 KiB, across many reads
    data = build_request("GET", "/healthz", None, headers)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for at in range(0, len(data), 700):
            sock.sendall(data[at:at + 700])
            time.sleep(0.001)
        assert read_response(sock.makefile("rb")).status == 200


def test_a_partial_request_after_a_complete_one_still_times_out(make_server):
    """The header clock starts with each request's first byte, even when that byte came in
    the same packet as an earlier, complete request."""
    server = make_server("app", "--header-timeout", "1s")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(build_request("POST", "/", b'{"subject":"app.x"}')
                     + b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        answer = read_until_closed(sock, 4)
    assert answer.startswith(b"HTTP/1.1 202 "), answer[:200]
    assert b"HTTP/1.1 408 " in answer and b"request headers not received within 1s" in answer


def metric(port: int, name: str) -> float:
    for line in request(port, "GET", "/metrics").body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in /metrics")


def open_streams(port: int, count: int, query: str = "subject=app.>") -> list[SSE]:
    streams = [SSE(port, query) for _ in range(count)]
    assert all(stream.status == 200 for stream in streams)
    return streams


def wait_for(condition, timeout: float, what: str) -> float:
    """Poll until `condition()`; how long it took (fails after `timeout`)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what} within {timeout}s"
        time.sleep(0.02)
    return time.monotonic() - started


def close_with_reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


@pytest.mark.parametrize("leave", ["fin", "rst"])
def test_closed_streams_are_noticed_within_a_second(server, leave):
    port = server.port
    streams = open_streams(port, 50)
    assert request(port, "GET", "/healthz").json()["consumers"] == 50
    connected = metric(port, "busd_connections")
    assert connected >= 50
    for stream in streams:
        stream.file.close()
        if leave == "rst":
            close_with_reset(stream.sock)
        else:
            stream.sock.close()
    wait_for(lambda: request(port, "GET", "/healthz").json()["consumers"] == 0, 1.0,
             "the closed streams' consumers are gone")
    assert metric(port, "busd_connections") <= connected - 50


def test_max_connections_has_room_again_once_streams_leave(make_server):
    server = make_server("app", "--max-connections", "20")
    streams = open_streams(server.port, 20)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as extra:
        extra.sendall(build_request("GET", "/healthz"))
        assert read_response(extra.makefile("rb")).status == 503
    for stream in streams:
        stream.close()
    wait_for(lambda: request(server.port, "GET", "/healthz").status == 200, 1.0,
             "a new client is served once the streams left")


def test_many_refused_connections_all_read_a_503_none_is_reset(make_server):
    server = make_server("app", "--max-connections", "5")
    held = [Http(server.port) for _ in range(5)]
    assert held[0].request("GET", "/healthz").status == 200
    body = b'{"subject":"app.refused","payload":"' + b"x" * 900_000 + b'"}'  # still sending
    statuses, resets = [], 0                                                   # when refused
    for _ in range(100):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            try:
                sock.sendall(build_request("POST", "/", body))
                statuses.append(read_response(sock.makefile("rb")).status)
            except (ConnectionResetError, BrokenPipeError):
                resets += 1
    assert resets == 0 and statuses == [503] * 100, (resets, set(statuses))
    for http in held:
        http.close()


def test_a_stream_client_may_send_a_little_but_not_endlessly(server):
    """A stream's connection is read (and what arrives dropped) so that its close is seen:
    a few stray bytes are harmless, more than 4 KiB ends the stream."""
    with SSE(server.port, "subject=app.>") as chatty, SSE(server.port, "subject=app.>") as quiet:
        quiet.sock.sendall(b"\r\n" * 100)
        chatty.sock.sendall(b"x" * (8 << 10))
        chatty.sock.settimeout(2)
        try:
            while chatty.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass  # closed with the rest of its input unread: also closed
        assert publish(server.port, "app.still", 1).status == 202
        assert quiet.events(1)[0]["subject"] == "app.still"
