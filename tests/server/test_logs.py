"""Logs stay readable under a client misbehaving in a loop: one line per cause per interval."""

from __future__ import annotations

import logging
import socket

from busd.server.logs import RepeatFilter


def record(msg: str, created: float, level: int = logging.WARNING) -> logging.LogRecord:
    rec = logging.LogRecord("busd.test", level, __file__, 1, msg, ("x",), None)
    rec.created = created
    return rec


def test_repeat_filter_holds_back_a_cause_and_counts():
    limit = RepeatFilter(interval=10.0)
    passed = [limit.filter(record("ending subscription reason=%r", t)) for t in range(5)]
    assert passed == [True, False, False, False, False]
    assert limit.filter(record("another cause=%r", 1.0))  # other causes are independent
    later = record("ending subscription reason=%r", 12.0)
    assert limit.filter(later)
    assert later.getMessage() == "ending subscription reason='x' suppressed=4"
    assert all(limit.filter(record("info=%r", t, logging.INFO)) for t in range(3))


def test_repeat_filter_is_bounded():
    limit = RepeatFilter(interval=10.0, max_causes=8)
    for n in range(100):
        limit.filter(record(f"cause {n} %r", 0.0))
    assert len(limit._causes) <= 8


def test_a_reconnect_loop_writes_few_lines(make_server):
    """The Go SDK reconnects at once when its start id is unknown (thousands of times a
    second): the server logs that cause once per interval, not once per attempt."""
    server = make_server("app")
    query = b"GET /?subject=app.x&start=e_00000000000000000000 HTTP/1.1\r\nHost: x\r\n\r\n"
    for _ in range(200):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(query)
            data = b""
            while b"event: error" not in data:
                chunk = sock.recv(65536)
                assert chunk, data
                data += chunk
    assert server.stop() == 0
    lines = [line for line in server.log().splitlines() if "ending subscription" in line]
    assert 1 <= len(lines) <= 3, lines
