"""Injected faults: a full disk, kill -9 under load, crashes at awkward moments (after a
segment roll, during recovery, during `bus restore`) and a corrupt byte mid-segment.

Each test states a guarantee and fails if it breaks: a `202` is never lost, nothing that
got no `202` is half there, the server keeps serving, and start-up always succeeds and
says what it repaired.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from busclient import SSE, BusServer, Http, publish, request

SEGMENT_HEADER = 16


def all_events(port: int, pattern: str, count: int, timeout: float = 30) -> list[dict]:
    with SSE(port, f"subject={pattern}&start=oldest") as sse:
        events = sse.events(count, timeout=timeout)
        assert sse.no_event(0.3), "more events than expected"
    return events


def stored_count(port: int, namespace: str) -> int:
    return request(port, "GET", "/healthz").json()["namespaces"][namespace]["events"]


def bus_command(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "busd", *args], capture_output=True,
                          text=True, timeout=timeout)


def frames(segment: Path) -> list[tuple[int, int]]:
    """(offset, length) of each whole frame in a segment file (u32 length, u32 crc, body)."""
    data = segment.read_bytes()
    offset, out = SEGMENT_HEADER, []
    while offset + 8 <= len(data):
        length = int.from_bytes(data[offset:offset + 4], "little")
        if offset + 8 + length > len(data):
            break
        out.append((offset, length))
        offset += 8 + length
    return out


# -- disk full -----------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs, unmounted afterwards (servers on it are killed first by make_server)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0755", "tmpfs",
                           str(mount_point)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_disk_full_answers_507_keeps_serving_and_recovers_without_restart(small_disk,
                                                                           make_server):
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (2 << 20))  # leave the log about 1 MiB
    server = make_server("app,orders", "--segment-size", "128KiB", path=small_disk / "data")
    port = server.port
    watcher = SSE(port, "subject=app.>&start=oldest")
    other = SSE(port, "subject=orders.>&start=oldest")
    acknowledged, refusals = [], []
    pad = "p" * 300
    with Http(port) as http:
        for n in range(2000):
            if n % 2:
                body = json.dumps([{"subject": "app.fill", "payload": [n, i, pad]}
                                   for i in range(20)]).encode()
            else:
                body = json.dumps({"subject": "app.fill", "payload": [n, 0, pad]}).encode()
            answer = http.request("POST", "/", body)
            if answer.status == 202:
                if n % 2:
                    result = answer.json()
                    assert result["first_index"] == len(acknowledged)
                    acknowledged.extend(result["ids"])
                else:
                    assert int(answer.headers["x-bus-event-index"]) == len(acknowledged)
                    acknowledged.append(answer.headers["x-bus-event-id"])
            else:
                refusals.append(answer)
                if len(refusals) >= 6:
                    break
    assert refusals, "the disk never filled up"
    assert len(acknowledged) > 100
    for answer in refusals:
        assert answer.status == 507, answer
        assert b"disk full" in answer.body.lower() or b"no space" in answer.body.lower()
    # still serving: health, subscribers on every namespace, and exactly what got a 202
    assert request(port, "GET", "/healthz").status == 200
    assert [e["id"] for e in watcher.events(len(acknowledged), timeout=20)] == acknowledged
    assert stored_count(port, "app") == len(acknowledged), "a refused write is visible"
    assert publish(port, "orders.small", "tiny").status in (202, 507)
    # free the space: publishing works again at once, with the next index, no restart
    filler.unlink()
    answer = publish(port, "app.fill", "after")
    assert answer.status == 202, answer
    assert int(answer.headers["x-bus-event-index"]) == len(acknowledged)
    acknowledged.append(answer.headers["x-bus-event-id"])
    assert watcher.events(1)[0]["payload"] == "after"
    assert other.consumer_id is not None
    watcher.close()
    other.close()
    assert server.stop() == 0
    verify = bus_command("debug", "--verify", "--path", str(server.path))
    assert verify.returncode == 0, verify.stderr + verify.stdout
    server.start()
    assert [e["id"] for e in all_events(port, "app.>", len(acknowledged))] == acknowledged
    assert "corrupt record" not in server.log().lower()


# -- kill -9 under load ----------------------------------------------------------------------

@pytest.mark.parametrize("fsync", ["never", "interval", "always"])
def test_kill_9_under_load_keeps_every_202_and_no_half_batch(make_server, fsync):
    """16 connections publish singles and 5-event batches (small segments, so rolls happen)
    until SIGKILL; after restart every 202 is there once, at its index, and every batch that
    got no answer is there whole or not at all."""
    server = make_server("app", "--fsync", fsync, "--segment-size", "32KiB")
    acknowledged: dict[str, int] = {}
    refused: list[str] = []  # answers other than 202 before the kill: the test fails on any
    lock = threading.Lock()

    def publisher(worker: int) -> None:
        try:
            with Http(server.port, timeout=5) as http:
                for n in range(100000):
                    batch = n % 2 == 0
                    if batch:
                        body = [{"subject": f"app.w{worker}", "payload": [worker, n, i]}
                                for i in range(5)]
                    else:
                        body = {"subject": f"app.w{worker}", "payload": [worker, n, 0]}
                    answer = http.request("POST", "/", json.dumps(body).encode())
                    if answer.status != 202:
                        refused.append(f"worker {worker} request {n}: {answer}")
                        return
                    with lock:
                        if batch:
                            result = answer.json()
                            for offset, event_id in enumerate(result["ids"]):
                                acknowledged[event_id] = result["first_index"] + offset
                        else:
                            acknowledged[answer.headers["x-bus-event-id"]] = \
                                int(answer.headers["x-bus-event-index"])
        except (OSError, ConnectionError, ValueError, IndexError):
            return  # the server died under us

    threads = [threading.Thread(target=publisher, args=(w,)) for w in range(16)]
    for thread in threads:
        thread.start()
    time.sleep(1.2)
    server.kill()
    for thread in threads:
        thread.join(timeout=10)
    assert not refused, refused
    assert len(acknowledged) > 200, "the load did not get going"
    server.start()
    stored = stored_count(server.port, "app")
    events = all_events(server.port, "app.>", stored)
    position = {event["id"]: index for index, event in enumerate(events)}
    assert len(position) == stored, "an event is stored twice"
    for event_id, index in acknowledged.items():
        assert position.get(event_id) == index, f"acknowledged {event_id} lost or moved"
    per_request = Counter((e["payload"][0], e["payload"][1]) for e in events)
    for (worker, n), count in per_request.items():
        assert count == (5 if n % 2 == 0 else 1), f"request {worker}/{n} is {count} events"
    assert publish(server.port, "app.after", 1).headers["x-bus-event-index"] == str(stored)


# -- crash points ----------------------------------------------------------------------------

DISK_HOOK = str(Path(__file__).parent / "diskhook")


def test_a_batch_whose_write_a_kill_cut_short_is_not_there_at_all(make_server):
    """A kill -9 during a write(2) stops it at a page boundary (the disk hook does what
    Linux does), leaving whole frames of a batch that got no answer: after the restart
    none of the batch is there, everything answered before it is, and indexes go on."""
    server = make_server("app", env={"PYTHONPATH": DISK_HOOK, "BUSD_TEST_TEAR_WRITE": "16384"})
    ids = [publish(server.port, "app.single", n).headers["x-bus-event-id"] for n in range(10)]
    segment = sorted((server.path / "app").glob("*.seg"))[-1]
    answered_size = segment.stat().st_size
    batch = [{"subject": "app.batch", "payload": [n, "x" * 300]} for n in range(100)]
    with pytest.raises((OSError, ConnectionError)):
        request(server.port, "POST", "/", json.dumps(batch).encode())
    assert server.proc.wait(timeout=10) == -9
    torn_size = segment.stat().st_size
    assert torn_size % 4096 == 0 and torn_size - answered_size > 8 * 300, \
        "the hook was to leave whole records of the batch"
    server.env = {}
    server.start()
    events = all_events(server.port, "app.>", 10)
    assert [e["id"] for e in events] == ids
    assert segment.stat().st_size == answered_size
    warned = re.search(r"torn tail\".*unfinished_records=(\d+)", server.log())
    assert warned and int(warned[1]) > 8, server.log()
    assert publish(server.port, "app.after", 1).headers["x-bus-event-index"] == "10"


@pytest.mark.parametrize("new_segment", ["empty", "partial-header", "header-only",
                                         "header-and-torn-frame"])
def test_crash_between_a_segment_roll_and_its_first_write(make_server, new_segment):
    server = make_server("app", "--segment-size", "4KiB")
    ids = []
    for n in range(6):
        ids += request(server.port, "POST", "/", [{"subject": "app.r", "payload": [n, i, "x" * 80]}
                                                  for i in range(10)]).json()["ids"]
    assert server.stop() == 0
    segments = sorted((server.path / "app").glob("*.seg"))
    assert len(segments) >= 2
    last = segments[-1]
    header = last.read_bytes()[:SEGMENT_HEADER]
    rolled = last.with_name(f"{len(ids):020d}.seg")
    assert not rolled.exists()
    content = {"empty": b"", "partial-header": header[:7], "header-only": header,
               "header-and-torn-frame": header + (300).to_bytes(4, "little") + b"\0\0\0\0{"}
    rolled.write_bytes(content[new_segment])
    for index_file in (server.path / "app").glob("*.idx"):  # written at roll: maybe not yet
        index_file.write_bytes(index_file.read_bytes()[:5])
    server.start()
    log = server.log().lower()
    assert any(word in log for word in ("removing empty", "reinitialising", "torn")), \
        "start-up must say what it repaired"
    assert [e["id"] for e in all_events(server.port, "app.>", len(ids))] == ids
    answer = publish(server.port, "app.r", "next")
    assert answer.status == 202 and answer.headers["x-bus-event-index"] == str(len(ids))
    server.restart()
    assert [e["id"] for e in all_events(server.port, "app.>", len(ids) + 1)][:-1] == ids


def test_kill_during_recovery_then_start_up_succeeds(make_server):
    """A torn tail behind a big open segment; the server is SIGKILLed at several moments of
    its start-up (recovery included) and must still come up whole afterwards."""
    server = make_server("app")
    ids = []
    for n in range(40):
        batch = [{"subject": "app.big", "payload": [n, i, "y" * 200]} for i in range(500)]
        ids += request(server.port, "POST", "/", batch).json()["ids"]
    assert server.stop() == 0
    segment = sorted((server.path / "app").glob("*.seg"))[-1]
    with open(segment, "ab") as fh:
        fh.write((9000).to_bytes(4, "little") + b"\1\2\3\4" + b'{"id":"e_torn')
    started = time.monotonic()
    server.start()
    start_up = time.monotonic() - started
    server.kill()
    rng = random.Random(6)
    for _attempt in range(6):
        proc = server.spawn()
        time.sleep(rng.uniform(0.0, start_up))
        proc.kill()
        proc.wait(timeout=10)
        server._stderr.close()
    server.start()
    assert "torn" in server.log().lower(), "start-up must say it truncated the torn tail"
    assert stored_count(server.port, "app") == len(ids)
    events = all_events(server.port, "app.>", len(ids))
    assert [e["id"] for e in events] == ids
    assert publish(server.port, "app.big", 1).headers["x-bus-event-index"] == str(len(ids))


def test_kill_during_restore_then_rerun_is_exact(make_server, tmp_path):
    source = make_server("app")
    for n in range(30):
        request(source.port, "POST", "/", [{"subject": f"app.s{i % 3}", "payload": [n, i],
                                            "trace_id": f"t{n}-{i}"} for i in range(500)])
    dump = tmp_path / "app.jsonl"
    with SSE(source.port, "subject=app.>&start=oldest") as sse:
        originals = sse.events(15000, timeout=30)
    dump.write_text("".join(json.dumps(e) + "\n" for e in originals))
    source.close()
    target = tmp_path / "restored"
    command = [sys.executable, "-m", "busd", "restore", "--path", str(target), "--input",
               str(dump)]
    started = time.monotonic()
    subprocess.run(command, capture_output=True, timeout=60, check=True)  # to time it
    full = time.monotonic() - started
    for path in sorted(target.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    server = BusServer(target, "app")
    rng = random.Random(7)
    for _attempt in range(3):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 0.9) * full)
        proc.kill()
        proc.wait(timeout=10)
        if target.exists():
            server.start()  # start-up always succeeds on what a killed restore left
            assert stored_count(server.port, "app") <= len(originals)
            assert server.stop() == 0
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stderr
    server.start()
    try:
        restored = all_events(server.port, "app.>", len(originals))
        assert restored == originals, "restore after a crash is not exact"
    finally:
        server.close()


# -- corruption ------------------------------------------------------------------------------

@pytest.mark.parametrize("segment_size", ["64MiB", "4KiB"])
def test_corrupt_byte_mid_segment_is_reported_not_served(make_server, segment_size):
    server = make_server("app,orders", "--segment-size", segment_size)
    ids = []
    for batch in range(10):  # a batch never spans segments: ten of them, for several
        ids += request(server.port, "POST", "/", [{"subject": "app.c", "payload": [n, "z" * 60]}
                                                  for n in range(batch * 10, batch * 10 + 10)]
                       ).json()["ids"]
    for n in range(10):
        publish(server.port, "orders.fine", n)
    assert server.stop() == 0
    # flip one byte inside the body of the record with index 50
    segments = sorted((server.path / "app").glob("*.seg"))
    firsts = [int(p.stem) for p in segments]
    segment = segments[max(i for i, first in enumerate(firsts) if first <= 50)]
    offset, length = frames(segment)[50 - int(segment.stem)]
    data = bytearray(segment.read_bytes())
    data[offset + 8 + length // 2] ^= 0x20
    segment.write_bytes(bytes(data))
    server.start()
    with SSE(server.port, "subject=app.>&start=oldest") as sse:
        got = sse.events(50)
        assert [e["id"] for e in got] == ids[:50]
        message = sse.message()
        while message and message.get("event") != "error":
            assert message.get("event") != "msg", f"bad data served: {message}"
            message = sse.message()
        assert message and "index 50" in message["data"], message
    # the rest of the bus is unharmed: other namespace, later events, new publishes
    assert [e["payload"] for e in all_events(server.port, "orders.>", 10)] == list(range(10))
    with SSE(server.port, f"subject=app.>&start={ids[60]}") as sse:
        assert [e["id"] for e in sse.events(39)] == ids[61:]
    assert publish(server.port, "app.c", "new").headers["x-bus-event-index"] == "100"
    assert request(server.port, "GET", "/healthz").status == 200
    verify = bus_command("debug", "--verify", "--path", str(server.path))
    assert verify.returncode == 1
    assert "app" in verify.stdout + verify.stderr
    assert segment.name in verify.stdout + verify.stderr
