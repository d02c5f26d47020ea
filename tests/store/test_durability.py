"""Events survive restarts and torn tails; retention keeps `oldest` honest (SPEC §4).

kill -9 under load is in test_faults.py."""

from __future__ import annotations

import time
from pathlib import Path

from busclient import SSE, publish, request, wait_until


def all_events(port: int, pattern: str, count: int) -> list[dict]:
    with SSE(port, f"subject={pattern}&start=oldest") as sse:
        events = sse.events(count, timeout=30)
        assert sse.no_event(0.3), "more events than expected"
    return events


def test_events_survive_a_clean_restart(make_server):
    server = make_server("app")
    ids = [publish(server.port, "app.keep", n, trace_id=f"t{n}").headers["x-bus-event-id"]
           for n in range(20)]
    with SSE(server.port, "subject=app.>") as stream:
        assert stream.message()["event"] == "consumer"
        started = time.monotonic()
        assert server.stop() == 0, "SIGTERM must exit 0"
        assert time.monotonic() - started < 5
        assert stream.message() in (None, {"comment": f"resume-after {ids[-1]}"})
    server.start()
    events = all_events(server.port, "app.>", 20)
    assert [e["id"] for e in events] == ids
    assert [e["trace_id"] for e in events] == [f"t{n}" for n in range(20)]
    assert publish(server.port, "app.keep", 20).headers["x-bus-event-index"] == "20"


def test_torn_tail_is_truncated_with_a_warning(make_server):
    server = make_server("app")
    for n in range(10):
        publish(server.port, "app.t", n)
    assert server.stop() == 0
    segment = sorted((server.path / "app").glob("*.seg"))[-1]
    whole = segment.stat().st_size
    with open(segment, "ab") as f:  # half a frame: a length promising more than is there
        f.write((500).to_bytes(4, "little") + b"\x00\x00\x00\x00" + b'{"id":"e_')
    server.start()
    assert "torn" in server.log().lower()
    assert segment.stat().st_size == whole
    assert [e["payload"] for e in all_events(server.port, "app.>", 10)] == list(range(10))
    assert publish(server.port, "app.t", 10).headers["x-bus-event-index"] == "10"
    assert [e["payload"] for e in all_events(server.port, "app.>", 11)] == list(range(11))


def test_torn_tail_at_every_cut_of_the_last_record(make_server, tmp_path):
    server = make_server("app")
    for n in range(3):
        publish(server.port, "app.cut", n)
    assert server.stop() == 0
    segment = sorted((server.path / "app").glob("*.seg"))[-1]
    data = segment.read_bytes()
    # find the start of the last frame by walking the frames after the 16-byte header
    offset, starts = 16, []
    while offset < len(data):
        starts.append(offset)
        offset += 8 + int.from_bytes(data[offset:offset + 4], "little")
    last_frame = starts[-1]
    for cut in range(last_frame + 1, len(data), max(1, (len(data) - last_frame) // 7)):
        segment.write_bytes(data[:cut])
        server.start()
        assert [e["payload"] for e in all_events(server.port, "app.>", 2)] == [0, 1]
        assert server.stop() == 0
        assert segment.stat().st_size == last_frame


def test_retention_by_bytes_moves_oldest_and_says_history_truncated(make_server):
    server = make_server("app", "--segment-size", "4KiB", "--retention-bytes", "12KiB")
    ids = []
    for n in range(40):
        body = [{"subject": "app.r", "payload": {"n": n * 10 + i, "pad": "x" * 60}}
                for i in range(10)]
        ids.extend(request(server.port, "POST", "/", body).json()["ids"])

    def truncated() -> dict | None:
        """/healthz's figures of app once retention has moved its first index."""
        health = request(server.port, "GET", "/healthz").json()["namespaces"]["app"]
        return health if health["first_index"] > 0 else None

    health = wait_until(truncated, interval=0.2, what="retention did not move the first index")
    first = health["first_index"]
    assert health["bytes"] <= 16 * 1024
    events = all_events(server.port, "app.>", 400 - first)
    assert events[0]["id"] == ids[first] and events[-1]["id"] == ids[-1]
    with SSE(server.port, f"subject=app.>&start={ids[0]}") as sse:
        assert sse.message()["event"] == "consumer"
        error = sse.message()
        assert error["event"] == "error" and "truncated" in error["data"]
        assert ids[first] in error["data"]
    gone = request(server.port, "GET", "/?subject=app.>", headers={"Last-Event-ID": ids[0]})
    assert gone.status == 410, gone  # a browser resuming there stops instead of looping
    assert gone.body.startswith(b"cannot resume from Last-Event-ID: history truncated")


def test_segment_files_are_named_by_first_index(make_server):
    server = make_server("app", "--segment-size", "4KiB")
    for _ in range(10):
        request(server.port, "POST", "/", [{"subject": "app.s", "payload": "y" * 100}] * 10)
    names = sorted(p.name for p in (server.path / "app").glob("*.seg"))
    assert len(names) > 2 and names[0] == "00000000000000000000.seg"
    firsts = [int(Path(name).stem) for name in names]
    assert firsts == sorted(firsts) and all(f % 10 == 0 for f in firsts)
    server.restart()
    assert len(all_events(server.port, "app.>", 100)) == 100
