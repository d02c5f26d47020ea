"""Encryption at rest through a real server (SPEC §5): nothing readable on disk, restarts
with the key serve everything, and a key that does not fit stops the server with one
clear line."""

from __future__ import annotations

import struct
import zlib

import pytest
from busclient import SSE, BusServer, publish, request

SECRET = "s3cr3t-for-tests"
MARKERS = (b"PAYLOAD-MARKER-51c2", b"subjectmarker", b"TRACE-MARKER-9e0d")


def data_bytes(server: BusServer) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(server.path.rglob("*")) if p.is_file())


def publish_some(port: int, n: int, start: int = 0) -> list[str]:
    ids = [publish(port, "app.subjectmarker.created", {"n": i, "m": MARKERS[0].decode()},
                   trace_id=MARKERS[2].decode()).headers["x-bus-event-id"]
           for i in range(start, start + n // 2)]
    for first in range(start + n // 2, start + n, 2):
        body = [{"subject": "app.subjectmarker.batch", "payload": {"n": i, "big": "z" * 9000}}
                for i in range(first, min(first + 2, start + n))]
        ids += request(port, "POST", "/", body).json()["ids"]
    return ids


def oldest(port: int, count: int, query: str = "start=oldest") -> list[dict]:
    with SSE(port, f"subject=app.>&{query}") as sse:
        events = sse.events(count, timeout=20)
        assert sse.no_event(0.2)
    return events


def test_nothing_readable_on_disk_and_restart_serves_everything(make_server):
    server = make_server("app", "--secret-key", SECRET, "--block-size", "4096",
                         "--segment-size", "16KiB")
    with SSE(server.port, "subject=app.>") as live:  # live fan-out: plaintext as published
        live.message()
        ids = publish_some(server.port, 40)
        assert [e["id"] for e in live.events(40)] == ids
    assert server.stop() == 0
    raw = data_bytes(server)
    assert len(list((server.path / "app").glob("*.seg"))) > 2
    for marker in MARKERS + (ids[0][2:].encode(), b'"payload"'):
        assert marker not in raw, marker
    server.start()
    events = oldest(server.port, 40)
    assert [e["id"] for e in events] == ids
    assert events[0]["payload"] == {"n": 0, "m": MARKERS[0].decode()}
    assert events[0]["trace_id"] == MARKERS[2].decode()
    assert events[-1]["payload"]["big"] == "z" * 9000
    # start after an id: find_id on sealed records, in closed segments too
    assert [e["id"] for e in oldest(server.port, 30, f"start={ids[9]}")] == ids[10:]
    ids += publish_some(server.port, 10, 40)
    assert [e["id"] for e in oldest(server.port, 50)] == ids


def test_key_errors_stop_the_server_with_one_clear_line(make_server, tmp_path):
    encrypted = make_server("app", env={"BUS_SECRET_KEY": SECRET})  # the variable works too
    publish_some(encrypted.port, 4)
    assert encrypted.stop() == 0
    plain = make_server("app")
    publish_some(plain.port, 2)
    assert plain.stop() == 0

    def refused(path, *args) -> str:
        server = BusServer(path, "app", *args)
        with pytest.raises(RuntimeError):
            server.start()
        assert server.proc.returncode not in (0, None)
        lines = [ln for ln in server.log().splitlines() if ln.startswith("bus server:")]
        assert len(lines) == 1, server.log()
        return lines[0]

    no_key = refused(encrypted.path)
    wrong = refused(encrypted.path, "--secret-key", "another secret")
    unexpected = refused(plain.path, "--secret-key", SECRET)
    assert "is encrypted and no secret key was given" in no_key
    assert "wrong secret key" in wrong
    assert "is not encrypted but a secret key was given" in unexpected
    assert "namespace app" in no_key and "namespace app" in wrong
    assert len({no_key, wrong, unexpected}) == 3
    encrypted.start()  # refusing changed nothing
    assert len(oldest(encrypted.port, 4)) == 4


def test_tampered_record_ends_the_stream_with_an_error(make_server):
    # --dup-size 0: the dedup rebuild at start-up reads the log's tail and (today) refuses
    # to start on any corrupt record in it, encrypted or not; that is the broker's business
    server = make_server("app", "--secret-key", SECRET, "--dup-size", "0")
    ids = [publish(server.port, "app.t", i).headers["x-bus-event-id"] for i in range(6)]
    assert server.stop() == 0
    seg = next((server.path / "app").glob("*.seg"))
    data = bytearray(seg.read_bytes())
    off = 16
    for _ in range(3):  # to the 4th record
        off += 8 + struct.unpack_from("<I", data, off)[0]
    n = struct.unpack_from("<I", data, off)[0]
    data[off + 8 + n - 1] ^= 1  # one ciphertext bit, last block
    struct.pack_into("<I", data, off + 4, zlib.crc32(data[off + 8:off + 8 + n]))  # crc fixed
    seg.write_bytes(bytes(data))
    server.start()
    with SSE(server.port, "subject=app.>&start=oldest") as sse:
        got, error = [], None
        while error is None:
            message = sse.message()
            assert message is not None, "stream ended without an error"
            if message.get("event") == "msg":
                got.append(message["id"])
            elif message.get("event") == "error":
                error = message["data"]
    assert got == ids[:3]
    assert "corrupt record at index 3" in error
