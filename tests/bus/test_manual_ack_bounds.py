"""Manual-ack consumers are bounded: in-flight events cost their index, not their bytes; a
reader that stops reading stops the pump; in-flight is bounded by bytes as well as count;
a selective scan over a long history never stalls the loop."""

from __future__ import annotations

import json
import re
import socket
import threading
import time

from busclient import SSE, Http, ack, build_request, request, rss_kib

BIG = 100_000  # bytes of payload per event, as the issue measured
BIG_EVENTS = 300
INFLIGHT_BYTES = 16 << 20  # busd.bus.consumer.INFLIGHT_BYTES


def publish_big(port: int, count: int = BIG_EVENTS, subject: str = "app.big") -> None:
    with Http(port) as http:
        for n in range(count):
            body = json.dumps({"subject": subject, "payload": {"n": n, "pad": "x" * BIG}})
            assert http.request("POST", "/", body.encode()).status == 202


def stalled_reader(port: int, query: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(build_request("GET", "/?" + query))
    return sock


def test_stalled_manual_ack_readers_of_100kb_events_stay_bounded(make_server):
    """Three readers with max_inflight=1000 stop reading 30 MB of 100 KB events: each costs
    a socket buffer (~1 MiB), where it held every in-flight record and wrote copies on."""
    server = make_server("app")
    pid, port = server.proc.pid, server.port
    publish_big(port)
    before = rss_kib(pid)
    query = ("subject=app.>&start=oldest&ack=manual&max_inflight=1000&redelivery=100ms"
             "&redelivery_count=0")
    readers = [stalled_reader(port, query) for _ in range(3)]
    time.sleep(2.5)  # a few redelivery rounds
    grown = (rss_kib(pid) - before) / 1024
    assert grown <= 2 * len(readers), f"grew {grown:.1f} MiB behind {len(readers)} readers"
    # one reads again: events in order, whole, then redeliveries (read back from the log)
    stream = SSE(port, sock=readers[0])
    got = stream.events(20, timeout=10)
    assert [e["payload"]["n"] for e in got] == list(range(20))
    assert all(len(e["payload"]["pad"]) == BIG for e in got)
    for sock in readers:
        sock.close()


def delivered(sock: socket.socket, seconds: float, data: bytes = b"") -> list[tuple[str, int]]:
    """(id, payload n) of the events in `data` and those that arrive within `seconds` (read
    raw: the stream is one chunk per manual-ack event, so chunk heads never split one)."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data += sock.recv(1 << 20)
        except TimeoutError:
            pass
    return [(i.decode(), int(n)) for i, n in DELIVERY.findall(data)]


DELIVERY = re.compile(rb'id: (e_[0-9a-v]{20})\nevent: msg\ndata: [^\n]*?"payload":\{"n": ?(\d+)')


def test_readers_that_never_ack_cost_no_memory_for_their_in_flight_events(make_server):
    """Three readers that take everything but never ack, max_inflight=1000: 300 events of
    100 KB each stay in flight (up to the 16 MiB bound) and only their indexes are kept,
    where the records themselves were held (~30 MB a reader)."""
    server = make_server("app")
    pid, port = server.proc.pid, server.port
    publish_big(port)
    before = rss_kib(pid)
    readers = []
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(build_request("GET", "/?subject=app.>&start=oldest&ack=manual"
                                          "&max_inflight=1000&redelivery=60s"))
        readers.append(sock)
    counts = [len(delivered(sock, 1.5 if n == 0 else 0.3)) for n, sock in enumerate(readers)]
    grown = (rss_kib(pid) - before) / 1024
    assert all(count >= INFLIGHT_BYTES // (BIG + 300) for count in counts), counts
    assert grown <= 2 * len(readers), f"grew {grown:.1f} MiB behind {len(readers)} readers"
    for sock in readers:
        sock.close()


def test_in_flight_is_bounded_by_bytes_as_well_as_count(make_server):
    server = make_server("app")
    port = server.port
    publish_big(port)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(build_request("GET", "/?subject=app.>&start=oldest&ack=manual"
                                      "&max_inflight=1000&redelivery=60s"))
    head = b""
    while b"\r\n\r\n" not in head:  # the first events may come in the same read
        head += sock.recv(4096)
    head, _, early = head.partition(b"\r\n\r\n")
    consumer_id = re.search(rb"X-Bus-Consumer-Id: (c_\w+)", head).group(1).decode()
    got = delivered(sock, 1.5, early)
    # records are ~100,050 bytes: 16 MiB of them, the one crossing the bound included
    assert INFLIGHT_BYTES // (BIG + 300) <= len(got) <= INFLIGHT_BYTES // BIG + 1, len(got)
    assert [n for _, n in got] == list(range(len(got)))
    assert ack(port, consumer_id, got[0][0]).status == 202
    assert [n for _, n in delivered(sock, 1.0)] == [len(got)]  # one acked, one more goes out
    sock.close()


def test_a_selective_manual_ack_scan_does_not_stall_the_loop(make_server):
    """Consumers whose pattern matches none of 200,000 records scan them all (and wait at
    the head), while /healthz is answered promptly throughout."""
    server = make_server("app")
    port = server.port
    with Http(port) as http:
        for start in range(0, 200_000, 1000):
            body = json.dumps([{"subject": "app.miss", "payload": n}
                               for n in range(start, start + 1000)]).encode()
            assert http.request("POST", "/", body).status == 202
    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with Http(port) as http:
            while not stop.is_set():
                started = time.perf_counter()
                assert http.request("GET", "/healthz").status == 200
                latencies.append(time.perf_counter() - started)
                time.sleep(0.002)

    prober = threading.Thread(target=probe)
    prober.start()
    time.sleep(0.2)
    streams = []
    try:
        for _ in range(6):  # each one scans the whole history
            streams.append(SSE(port, "subject=app.hit&start=oldest&ack=manual"))
            time.sleep(0.25)
        time.sleep(0.5)
    finally:
        stop.set()
        prober.join()
    latencies.sort()
    assert latencies[-1] < 0.06, f"/healthz took {latencies[-1] * 1000:.0f} ms during the scans"
    assert request(port, "POST", "/", {"subject": "app.hit", "payload": "here"}).status == 202
    for stream in streams:  # they reached the head, and get what matches next
        assert [e["payload"] for e in stream.events(1)] == ["here"]
        stream.close()


def test_a_selective_manual_ack_scan_delivers_exactly_the_matches_in_order(make_server):
    server = make_server("app")
    port = server.port
    with Http(port) as http:
        for start in range(0, 30_000, 1000):
            body = json.dumps([{"subject": "app.hit" if n % 997 == 0 else "app.miss",
                                "payload": n} for n in range(start, start + 1000)]).encode()
            assert http.request("POST", "/", body).status == 202
    want = [n for n in range(30_000) if n % 997 == 0]
    with SSE(port, "subject=app.hit&start=oldest&ack=manual&max_inflight=7") as stream:
        got = []
        while len(got) < len(want):
            batch = stream.events(min(7, len(want) - len(got)), timeout=5)
            got += batch
            for event in batch:
                ack(port, stream.consumer_id, event["id"])
        assert [e["payload"] for e in got] == want
        assert stream.no_event(0.5)
