"""`bus debug`, `dump`, `restore`, `copy` end to end: real servers, real data directories,
the CLI as a subprocess. Round trips are compared field by field and byte by byte."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from busclient import SSE, BusServer, Http, build_request, publish, read_response, request

SECRET = "cli-test-secret"


def bus(*args: str, timeout: float = 60, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")} | (env or {})
    return subprocess.run([sys.executable, "-m", "busd", *map(str, args)], capture_output=True,
                          timeout=timeout, env=env)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr.decode()
    return result


# Events covering every field and payload shape; created_at to the nanosecond.
EVENTS = [
    {"subject": "app.orders.created", "payload": {"id": 42, "items": [1, 2.5, None]},
     "trace_id": "req-1", "key": "order-42"},
    {"subject": "app.notes", "payload": "line\nbreak \u00e9 \\ \"quoted\" \U0001f600"},
    {"subject": "app.stamped", "payload": 1e-7, "created_at": "2026-01-02T03:04:05.123456789Z"},
    {"subject": "app.reply", "payload": True, "response_subject": "app.replies.r1"},
    {"subject": "app.empty"},
    {"subject": "orders.eu.paid", "payload": [], "key": "pay-1", "trace_id": "t-2"},
]


# Payload bytes are kept as received: spacing, number spelling, escapes.
RAW = b'{"subject":"orders.raw","payload": {"b": 2.50,  "a" : [1,2], "u": "\\u00e9"} }'
RAW_PAYLOAD = b'{"b": 2.50,  "a" : [1,2], "u": "\\u00e9"}'


def fill(server: BusServer) -> None:
    for event in EVENTS:
        assert publish(server.port, **event).status == 202
    assert request(server.port, "POST", "/", RAW).status == 202
    batch = [{"subject": "orders.batch", "payload": n} for n in range(5)]
    assert request(server.port, "POST", "/", batch).status == 202


def stored(server: BusServer, namespace: str, count: int) -> list[bytes]:
    """The namespace's records as the server streams them (the raw `data:` lines)."""
    with SSE(server.port, f"subject={namespace}.>&start=oldest") as stream:
        events = stream.events(count)
    return [json.dumps(e, ensure_ascii=False, separators=(",", ":")).encode() for e in events]


def raw_stream(server: BusServer, namespace: str, count: int) -> list[bytes]:
    """The exact `data:` bytes of the first `count` events of a namespace."""
    with SSE(server.port, f"subject={namespace}.>&start=oldest") as stream:
        out = []
        while len(out) < count:
            message = stream.message()
            assert message is not None
            if message.get("event") == "msg":
                out.append(message["data"].encode())
        return out


@pytest.fixture
def filled(make_server):
    """A stopped server's data directory holding EVENTS and RAW (app: 5, orders: 7) and their
    records as streamed."""
    server = make_server("app,orders")
    fill(server)
    records = {"app": raw_stream(server, "app", 5), "orders": raw_stream(server, "orders", 7)}
    assert server.stop() == 0
    return server, records


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


# -- dump / restore -----------------------------------------------------------------------------
def test_offline_dump_restore_round_trip_is_exact(filled, make_server, tmp_path):
    server, records = filled
    dump = tmp_path / "all.jsonl"
    ok(bus("dump", "--path", server.path, "--output", dump))
    assert lines(dump) == records["app"] + records["orders"]

    # Field by field against what was published (created_at to the nanosecond).
    dumped = [json.loads(line) for line in lines(dump)]
    for sent, got in zip(EVENTS, dumped[:5] + dumped[5:6], strict=True):
        for field in ("subject", "trace_id", "key", "response_subject"):
            assert got.get(field) == sent.get(field), field
        assert got.get("payload", "absent") == sent.get("payload", "absent")
    assert dumped[2]["created_at"] == "2026-01-02T03:04:05.123456789Z"
    assert "payload" not in dumped[4]
    assert lines(dump)[6].endswith(b'"payload":' + RAW_PAYLOAD + b"}")

    target = tmp_path / "restored"
    result = ok(bus("restore", "--path", target, "--input", dump))
    assert b"restored namespace=app events=5" in result.stderr
    again = ok(bus("restore", "--path", target, "--input", dump))  # idempotent
    assert b"events=0 already_present=5" in again.stderr

    restored = make_server("app,orders", path=target)
    assert raw_stream(restored, "app", 5) == records["app"]
    assert raw_stream(restored, "orders", 7) == records["orders"]
    health = request(restored.port, "GET", "/healthz").json()
    assert health["namespaces"]["app"]["events"] == 5
    assert health["namespaces"]["orders"]["events"] == 7
    # The restored server carries on: new ids, and the dedup cache knows the keys.
    assert publish(restored.port, "app.orders.created", 1, key="order-42").status == 409
    assert restored.stop() == 0
    redump = tmp_path / "again.jsonl"
    ok(bus("dump", "--path", target, "--output", redump))
    assert redump.read_bytes() == dump.read_bytes()


def test_offline_restore_stores_an_id_repeated_in_the_input_once(filled, tmp_path):
    server, records = filled
    dump = tmp_path / "all.jsonl"
    ok(bus("dump", "--path", server.path, "--output", dump))
    dump.write_bytes(dump.read_bytes() + lines(dump)[0] + b"\n" + lines(dump)[-1] + b"\n")
    target = tmp_path / "restored"
    result = ok(bus("restore", "--path", target, "--input", dump))
    assert result.stderr.endswith(b"12 restored, 2 already present\n"), result.stderr
    restored = ok(bus("debug", "--path", target)).stdout.splitlines()
    assert restored == records["app"] + records["orders"]


def test_online_dump_and_restore_match_the_offline_form(make_server, tmp_path):
    source = make_server("app,orders")
    fill(source)
    online = tmp_path / "online"
    ok(bus("dump", "--host", f"127.0.0.1:{source.port}", "--namespaces", "app,orders",
           "--output-dir", online))
    assert sorted(p.name for p in online.iterdir()) == ["app.jsonl", "orders.jsonl"]

    target = make_server("app,orders")
    result = ok(bus("restore", "--host", f"http://127.0.0.1:{target.port}", "--input-dir",
                    online))
    assert b"restored namespace=orders events=7" in result.stderr
    assert raw_stream(target, "app", 5) == raw_stream(source, "app", 5)
    assert raw_stream(target, "orders", 7) == raw_stream(source, "orders", 7)

    assert source.stop() == 0
    offline = tmp_path / "offline"
    ok(bus("dump", "--path", source.path, "--output-dir", offline))
    for name in ("app.jsonl", "orders.jsonl"):
        assert (offline / name).read_bytes() == (online / name).read_bytes()


def test_online_restore_skips_the_ids_the_bus_holds(make_server, tmp_path):
    source = make_server("app,orders")
    fill(source)
    host = f"127.0.0.1:{source.port}"
    dump = tmp_path / "all.jsonl"
    ok(bus("dump", "--host", host, "--namespaces", "app,orders", "--output", dump))
    # into the bus it came from, twice (each id used to be stored again every time)
    for _ in range(2):
        again = ok(bus("restore", "--host", host, "--input", dump))
        assert again.stderr.endswith(b"0 restored, 12 already present\n"), again.stderr
    target = make_server("app,orders")
    target_host = f"127.0.0.1:{target.port}"
    first = ok(bus("restore", "--host", target_host, "--input", dump))
    assert first.stderr.endswith(b"12 restored, 0 already present\n"), first.stderr
    # a later dump overlaps: its batch mixes held ids with new ones, which must all land;
    # an input that repeats a line stores it once
    assert request(source.port, "POST", "/", [{"subject": "orders.later", "payload": n}
                                              for n in range(3)]).status == 202
    later = tmp_path / "later.jsonl"
    ok(bus("dump", "--host", host, "--namespaces", "app,orders", "--output", later))
    later.write_bytes(later.read_bytes() + lines(later)[-1] + b"\n")
    third = ok(bus("restore", "--host", target_host, "--input", later))
    assert third.stderr.endswith(b"3 restored, 13 already present\n"), third.stderr
    assert b"restored namespace=orders events=3 already_present=8 in_input=11" in third.stderr
    health = request(target.port, "GET", "/healthz").json()["namespaces"]
    assert (health["app"]["events"], health["orders"]["events"]) == (5, 10)
    assert raw_stream(target, "orders", 10) == raw_stream(source, "orders", 10)
    assert request(source.port, "GET", "/healthz").json()["namespaces"]["orders"]["events"] == 10


def test_the_bus_refuses_an_id_it_holds_409_listing_it(make_server):
    """The server's half of an online restore that stores nothing twice (local store: with
    --store jetstream ids are not checked yet, so this is not in the shared contract)."""
    server = make_server("app,orders", "--dup-size", "0")
    ids = [f"e_d4o7ehksdud4d8c68{c}g0" for c in "abcd"]
    stored = [{"subject": "app.r", "id": ids[0]}, {"subject": "app.r", "id": ids[1]}]
    assert request(server.port, "POST", "/", stored).status == 202
    again = request(server.port, "POST", "/", {"subject": "app.r", "id": ids[0], "payload": 2})
    assert again.status == 409
    assert again.body == f'namespace app already holds this id: "{ids[0]}"\n'.encode()
    # a batch holding some of them is refused whole, naming exactly those
    batch = [{"subject": "app.r", "id": i} for i in (ids[2], ids[1], ids[3], ids[0])]
    refused = request(server.port, "POST", "/", batch)
    assert refused.status == 409
    assert refused.body == \
        f'namespace app already holds these ids: "{ids[1]}" "{ids[0]}"\n'.encode()
    rest = [{"subject": "app.r", "id": i} for i in (ids[2], ids[3])]
    assert request(server.port, "POST", "/", rest).json()["ids"] == ids[2:]
    # two publishes of one id in the same group commit: the second is refused
    twice = b"".join(build_request("POST", "/", json.dumps(
        {"subject": "orders.r", "id": ids[0], "payload": n}).encode()) for n in range(2))
    with Http(server.port) as http:
        http.send(twice)
        assert [read_response(http.file).status for _ in range(2)] == [202, 409]
    fresh = {"subject": "app.r", "id": "e_d4o7ehksdud4d8c68eg0"}
    repeat = request(server.port, "POST", "/", [fresh, fresh])
    assert repeat.status == 400 and b"appears twice in the batch" in repeat.body
    server.restart()  # what is on disk counts as much as what was just appended
    assert publish(server.port, "app.r", 3, id=ids[3]).status == 409
    with SSE(server.port, "subject=app.>&start=oldest") as stream:
        assert [e["id"] for e in stream.events(4)] == ids[:4] and stream.no_event()
    health = request(server.port, "GET", "/healthz").json()["namespaces"]
    assert (health["app"]["events"], health["orders"]["events"]) == (4, 1)


def test_restore_and_dump_refuse_a_directory_a_server_holds(filled, make_server, tmp_path):
    server, records = filled
    dump = tmp_path / "all.jsonl"
    ok(bus("dump", "--path", server.path, "--output", dump))
    running = make_server("app,orders", path=server.path)
    refused = bus("restore", "--path", server.path, "--input", dump)
    assert refused.returncode == 1
    assert b"refusing to write" in refused.stderr and b"in use" in refused.stderr
    dumped = bus("dump", "--path", server.path, "--output", tmp_path / "x.jsonl")
    assert dumped.returncode == 1 and b"in use by a running server" in dumped.stderr
    assert not (tmp_path / "x.jsonl").exists() and not (tmp_path / "x.jsonl.partial").exists()
    assert request(running.port, "GET", "/healthz").json()["namespaces"]["app"]["events"] == 5


def test_restore_checks_every_line_before_writing(tmp_path):
    dump = tmp_path / "bad.jsonl"
    good = b'{"id":"e_d4o7ehksdud4d8c68bg0","subject":"app.a","created_at":' \
           b'"2026-11-27T13:20:58.365157351Z","payload":1}'
    dump.write_bytes(good + b"\n" + b'{"subject":"app.b","payload":2}\n')
    result = bus("restore", "--path", tmp_path / "data", "--input", dump)
    assert result.returncode == 1
    assert f"{dump}:2: the event has no id".encode() in result.stderr
    assert not (tmp_path / "data" / "app").exists()


# -- debug --------------------------------------------------------------------------------------
def test_debug_prints_events_and_totals(filled):
    server, records = filled
    result = ok(bus("debug", "--path", server.path))
    assert result.stdout.splitlines() == records["app"] + records["orders"]
    assert b"total namespaces=2 events=12" in result.stderr
    assert b"progress" not in result.stderr and b"\r" not in result.stderr  # not a terminal
    only = ok(bus("debug", "--path", server.path, "--namespace", "orders"))
    assert only.stdout.splitlines() == records["orders"]


def test_debug_verify_finds_a_flipped_byte(filled):
    server, records = filled
    assert ok(bus("debug", "--path", server.path, "--verify")).stdout == b""
    segment = next((server.path / "app").glob("*.seg"))
    data = bytearray(segment.read_bytes())
    at = data.index(b"2026-01-02T03:04:05.123456789Z") + 5  # inside the third record
    data[at] ^= 0x01
    segment.write_bytes(bytes(data))

    result = bus("debug", "--path", server.path, "--verify")
    assert result.returncode == 1
    err = result.stderr.decode()
    line = err.strip().splitlines()[-1]
    assert line.startswith("bus debug: corrupt record index=2 ")
    assert "namespace=app" in line and f"segment={segment}" in line
    offset = int(line.split("offset=")[1].split()[0])
    size = int(line.split("bytes=")[1].split()[0])
    assert offset < at < offset + size

    listing = bus("debug", "--path", server.path)  # the others are still printed
    assert listing.returncode == 1
    assert listing.stdout.splitlines() == records["app"][:2] + records["app"][3:] + \
        records["orders"]
    assert b"corrupt record namespace=app" in listing.stderr


def test_progress_bar_only_on_a_terminal(filled, tmp_path):
    server, _ = filled
    primary, replica = pty.openpty()
    fcntl.ioctl(replica, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
    proc = subprocess.run([sys.executable, "-m", "busd", "dump", "--path", str(server.path),
                           "--output", str(tmp_path / "d.jsonl")], stderr=replica,
                          stdout=subprocess.DEVNULL, env=env, timeout=60)
    os.close(replica)
    shown = b""
    try:
        while chunk := os.read(primary, 65536):
            shown += chunk
    except OSError:
        pass
    os.close(primary)
    assert proc.returncode == 0
    assert b"dump:" in shown and b"ev" in shown  # tqdm's bar
    quiet = ok(bus("dump", "--path", server.path, "--output", tmp_path / "e.jsonl"))
    assert quiet.stderr.count(b"\n") == 1 and b"dump:" not in quiet.stderr


# -- copy ---------------------------------------------------------------------------------------
def test_copy_between_directories(filled, tmp_path):
    server, records = filled
    skip = json.loads(records["orders"][0])["id"]
    target = tmp_path / "copy"
    result = ok(bus("copy", "--from", server.path, "--to", target, "--skip-ids", skip))
    assert b"copied namespace=orders events=6 skipped=1" in result.stderr
    listing = ok(bus("debug", "--path", target))
    assert listing.stdout.splitlines() == records["app"] + records["orders"][1:]
    again = ok(bus("copy", "--from", server.path, "--to", target))  # ids already there
    assert b"copied namespace=app events=0 skipped=5" in again.stderr
    same = bus("copy", "--from", server.path, "--to", server.path)
    assert same.returncode == 2 and b"--to" in same.stderr


def test_copy_one_namespace_into_another(filled):
    server, records = filled
    ok(bus("copy", "--dir", server.path, "--src", "app", "--dst", "archive"))
    copied = ok(bus("debug", "--path", server.path, "--namespace", "archive")).stdout
    expected = [r.replace(b'"subject":"app.', b'"subject":"archive.', 1) for r in records["app"]]
    assert copied.splitlines() == expected
    original = ok(bus("debug", "--path", server.path, "--namespace", "app")).stdout
    assert original.splitlines() == records["app"]


def test_copy_re_encrypts(make_server, tmp_path):
    source = make_server("app", "--secret-key", SECRET)
    for n in range(20):
        publish(source.port, "app.secret", {"n": n, "text": "plaintext-marker"})
    records = raw_stream(source, "app", 20)
    assert source.stop() == 0
    no_key = bus("debug", "--path", source.path)
    assert no_key.returncode == 2 and no_key.stderr.endswith(
        b"is encrypted and no secret key was given (give its key with --secret-key)\n")
    # each tool names its own key flag: copy's source key is --from-secret-key
    no_key = bus("copy", "--from", source.path, "--to", tmp_path / "never")
    assert no_key.returncode == 2 and no_key.stderr.endswith(
        b"is encrypted and no secret key was given (give its key with --from-secret-key)\n")
    assert not (tmp_path / "never").exists()

    other = tmp_path / "other-key"
    ok(bus("copy", "--from", source.path, "--to", other, "--from-secret-key", SECRET,
           "--to-secret-key", "another-secret"))
    segments = b"".join(p.read_bytes() for p in (other / "app").glob("*.seg"))
    assert b"plaintext-marker" not in segments
    assert ok(bus("debug", "--path", other, "--secret-key", "another-secret")
              ).stdout.splitlines() == records
    assert ok(bus("debug", "--path", other, env={"BUS_SECRET_KEY": "another-secret"})
              ).stdout.splitlines() == records  # the variable, as `bus server` reads it
    wrong = bus("debug", "--path", other, "--secret-key", SECRET)
    assert wrong.returncode == 2 and wrong.stdout == b""
    assert wrong.stderr.endswith(b"(--secret-key is not the key it was encrypted with)\n")
    into = bus("copy", "--from", source.path, "--to", other, "--from-secret-key", SECRET)
    assert into.returncode == 2 and into.stderr.endswith(b"(give its key with --to-secret-key)\n")

    plain = tmp_path / "plain"
    ok(bus("copy", "--from", other, "--to", plain, "--from-secret-key", "another-secret"))
    assert ok(bus("debug", "--path", plain)).stdout.splitlines() == records
    restarted = make_server("app", path=other, env={"BUS_SECRET_KEY": "another-secret"})
    assert raw_stream(restarted, "app", 20) == records


def test_online_restore_keeps_batches_within_max_batch(make_server, tmp_path):
    source = make_server("app")
    for first in range(0, 2500, 500):
        batch = [{"subject": "app.tiny", "payload": n} for n in range(first, first + 500)]
        assert request(source.port, "POST", "/", batch).status == 202
    ok(bus("dump", "--host", f"127.0.0.1:{source.port}", "--namespaces", "app",
           "--output-dir", tmp_path / "dump"))
    target = make_server("app")  # --max-batch 1000: 2,500 tiny events fit one 4 MiB batch
    result = ok(bus("restore", "--host", f"127.0.0.1:{target.port}", "--input-dir",
                    tmp_path / "dump"))
    assert b"restored namespace=app events=2500" in result.stderr
