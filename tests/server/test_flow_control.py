"""Backpressure: floods of pipelined requests and consumers that stop reading stay bounded."""

from __future__ import annotations

import json
import socket
import time

from busclient import SSE, Http, build_request, read_response, request, rss_kib


def test_a_thousand_pipelined_publishes_are_answered_in_order(server):
    batch = b"".join(build_request("POST", "/", json.dumps({"subject": "app.flood",
                                                            "payload": n}).encode())
                     for n in range(1000))
    with Http(server.port) as http:
        http.send(batch)
        indexes = [int(read_response(http.file).headers["x-bus-event-index"])
                   for _ in range(1000)]
    assert indexes == list(range(1000))


def test_stalled_consumer_does_not_grow_memory_and_loses_nothing(server):
    """A subscriber stops reading while 100,000 events (~30 MB) are published, then resumes."""
    total, per_request = 100_000, 500
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", server.port))
    stalled.sendall(build_request("GET", "/?subject=app.>&start=newest"))
    time.sleep(0.3)  # the subscription is live before publishing starts
    pid = server.proc.pid
    before = rss_kib(pid) / 1024
    pad = "x" * 200
    with Http(server.port) as http:
        for start in range(0, total, per_request):
            body = json.dumps([{"subject": "app.slow", "payload": {"n": n, "pad": pad}}
                               for n in range(start, start + per_request)]).encode()
            assert http.request("POST", "/", body).status == 202
    grown = rss_kib(pid) / 1024 - before
    print(f"rss growth {grown:.1f} MiB")
    assert grown < 20, f"server memory grew {grown:.1f} MiB behind one stalled consumer"
    # the stalled consumer now reads everything, in order, exactly once
    stream = SSE(server.port, sock=stalled)
    payloads = [e["payload"]["n"] for e in stream.events(total, timeout=60)]
    assert payloads == list(range(total))
    stream.close()
    assert request(server.port, "GET", "/healthz").json()["namespaces"]["app"]["events"] == total
