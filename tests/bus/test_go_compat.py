"""Replays the Go Bus SDK's side of tests/data/go-sdk-wire.json against busd.

Every request the Go SDK sent is sent again, byte for byte (ids the Go server handed out
are swapped for the ones busd hands out), and every answer the SDK depends on is checked:
status codes, the X-Bus-* headers, the SSE head and framing, and the events' fields.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

from busclient import SSE, read_response

TRANSCRIPT = Path(__file__).resolve().parents[1] / "data" / "go-sdk-wire.json"
IDS = re.compile(rb"[ce]_[0-9a-v]{20}")
RECORD_FIELDS = ("subject", "trace_id", "key", "response_subject", "payload")


def sse_records(data: bytes) -> list[dict]:
    return [json.loads(line[6:]) for line in data.split(b"\n") if line.startswith(b"data: {")]


def test_go_sdk_transcript_replay(make_server):
    server = make_server("app,math")
    entries = json.loads(TRANSCRIPT.read_text())
    sockets: dict[int, socket.socket] = {}
    files: dict[int, object] = {}
    streams: dict[int, SSE] = {}
    swap: dict[bytes, bytes] = {}  # Go server's ids → busd's ids
    expected_records = 0

    def learn(go_data: bytes, ours: list[bytes]) -> None:
        for go_id, our_id in zip(dict.fromkeys(IDS.findall(go_data)), ours, strict=False):
            swap.setdefault(go_id, our_id)

    for entry in entries:
        conn, data = entry["conn"], entry["data"].encode("latin-1")
        if entry["dir"] == "client->server":
            for go_id, our_id in swap.items():
                data = data.replace(go_id, our_id)
            if data.startswith(b"GET "):
                stream = SSE(server.port, raw_request=data)
                streams[conn] = stream
                assert stream.status == 200
                assert stream.headers["content-type"] == "text/event-stream"
                assert stream.headers["cache-control"] == "no-cache"
                assert stream.headers["transfer-encoding"] == "chunked"
                assert re.match(r"^c_[0-9a-v]{20}$", stream.consumer_id)
                continue
            if conn not in sockets:
                sockets[conn] = socket.create_connection(("127.0.0.1", server.port), timeout=10)
                files[conn] = sockets[conn].makefile("rb")
            sockets[conn].sendall(data)
            response = read_response(files[conn])
            assert response.status == 202, (data, response)
            assert response.headers["access-control-allow-origin"] == "*"
            if data.startswith(b"POST") and not data.split(b"\r\n\r\n", 1)[1].startswith(b"["):
                assert re.match(r"^e_[0-9a-v]{20}$", response.headers["x-bus-event-id"])
                int(response.headers["x-bus-event-index"])  # the SDK parses it as int64
                assert response.headers["x-bus-event-created-at"].endswith("Z")
        else:
            if conn in streams:
                if data.startswith(b"HTTP/1.1"):
                    learn(data, [streams[conn].consumer_id.encode()])
                    data = data.split(b"\r\n\r\n", 1)[1]
                go_records = sse_records(data)
                if not go_records:
                    continue
                ours = streams[conn].events(len(go_records), timeout=5)
                for go_record, our_record in zip(go_records, ours, strict=True):
                    for field in RECORD_FIELDS:
                        assert go_record.get(field) == our_record.get(field), field
                    assert set(go_record) == set(our_record)
                learn(data, [r["id"].encode() for r in ours])
                expected_records += len(ours)
    assert expected_records == 8, "every streamed event of the transcript was checked"
    for sock in sockets.values():
        sock.close()
    for stream in streams.values():
        stream.close()
