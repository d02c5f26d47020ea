"""What `--fsync` promises, with the disk's fsync held, failed or recorded by a hook
(tests/store/diskhook/sitecustomize.py) in the real server process:

- under `always`, neither the 202 nor any subscriber sees an event before its fsync, so a
  power loss (simulated: each segment cut back to what was last fsynced) takes back
  nothing anybody saw; under `interval`, the same check finds what it takes back;
- a failed fsync takes the namespace out of service until restart: publishes get 503
  with a reason, the group waiting on that fsync is told what is known of it, /healthz
  says degraded, /metrics and the log say so, other namespaces go on.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from busclient import SSE, Http, build_request, publish, request, wait_until

HOOK = str(Path(__file__).parent / "diskhook")


class Stream:
    """A subscription read in the background: what has arrived so far, at any moment."""

    def __init__(self, port: int, query: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(build_request("GET", "/?" + query, None,
                                        {"Accept": "text/event-stream"}))
        self.received = b""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.wait_for(b"event: consumer")

    def _read(self) -> None:
        try:
            while data := self.sock.recv(65536):
                self.received += data
        except OSError:
            pass

    def events(self) -> int:
        return self.received.count(b"event: msg")

    def wait_for(self, text: bytes, timeout: float = 5.0) -> None:
        wait_until(lambda: text in self.received, timeout, interval=0.01,
                   what=lambda: f"{text!r} not received: {self.received!r}")

    def close(self) -> None:
        self.sock.close()


def hooked(tmp_path: Path, **files: str) -> tuple[dict[str, str], dict[str, Path]]:
    """The environment for a server with the fsync hook, and the hook's files by name."""
    paths = {name: tmp_path / f"fsync-{name}" for name in files}
    env = {"PYTHONPATH": HOOK, **{var: str(paths[name]) for name, var in files.items()}}
    return env, paths


def test_under_always_the_202_and_every_delivery_follow_the_fsync(make_server, tmp_path):
    env, files = hooked(tmp_path, hold="BUSD_TEST_FSYNC_HOLD")
    server = make_server("app", "--fsync", "always", env=env)
    assert publish(server.port, "app.a", 0).status == 202
    live = Stream(server.port, "subject=app.>&start=newest")
    files["hold"].touch()  # the disk is slow from now on
    answers = []
    publisher = threading.Thread(target=lambda: answers.append(
        publish(server.port, "app.a", 1)))
    publisher.start()
    time.sleep(0.5)  # written by now, fsync held
    catching_up = Stream(server.port, "subject=app.>&start=oldest")
    time.sleep(0.3)
    assert live.events() == 0, "a live subscriber saw an event before its fsync"
    assert catching_up.events() == 1, "a catch-up read went past the fsynced head"
    health = request(server.port, "GET", "/healthz").json()["namespaces"]["app"]
    assert health["next_index"] == 1, "the head readers see is the fsynced one"
    assert not answers, "answered before the fsync"
    files["hold"].unlink()
    publisher.join(timeout=5)
    assert answers[0].status == 202 and answers[0].headers["x-bus-event-index"] == "1"
    live.wait_for(b'"payload":1')
    catching_up.wait_for(b'"payload":1')
    assert live.events() == 1 and catching_up.events() == 2
    live.close()
    catching_up.close()


def test_a_failed_fsync_takes_the_namespace_out_of_service_until_restart(make_server,
                                                                          tmp_path):
    env, files = hooked(tmp_path, fail="BUSD_TEST_FSYNC_FAIL")
    server = make_server("app,orders", "--fsync", "always", env=env)
    assert publish(server.port, "app.a", 0, key="k0").status == 202
    live = Stream(server.port, "subject=app.>&start=newest")
    files["fail"].write_text("/app/")  # only app's segments fail
    answer = publish(server.port, "app.a", 1, key="k1")
    assert answer.status == 503
    reason = answer.body.decode()
    assert reason.startswith("not confirmed: written to namespace app at index 1 but not "
                             "delivered"), reason
    assert "fsync of its event log failed" in reason and "restart" in reason
    event_id = reason.rsplit(" ", 1)[1].strip()
    assert event_id.startswith("e_") and len(event_id) == 22
    time.sleep(0.3)
    assert live.events() == 0, "an event whose fsync failed was delivered"
    live.close()
    files["fail"].unlink()  # the disk "recovers": the namespace does not trust it
    again = publish(server.port, "app.a", 2)
    assert again.status == 503
    assert again.body.decode().startswith("namespace app accepts no publishes until busd is "
                                          "restarted: fsync of its event log failed")
    assert publish(server.port, "orders.a", 0).status == 202, "other namespaces go on"
    health = request(server.port, "GET", "/healthz")
    assert health.status == 503 and health.json()["status"] == "degraded"
    assert "fsync of its event log failed" in health.json()["faults"]["app"]
    metrics = request(server.port, "GET", "/metrics").body.decode()
    assert 'busd_namespace_failed{namespace="app"} 1' in metrics
    assert 'busd_namespace_failed{namespace="orders"} 0' in metrics
    assert 'msg="namespace out of service until restart" ns=app' in server.log()
    server.kill()
    server.start()  # the unconfirmed event survived here (the page cache kept it)
    with SSE(server.port, "subject=app.>&start=oldest") as sse:
        assert [e["id"] for e in sse.events(2)][1] == event_id
    assert publish(server.port, "app.a", 1, key="k1").status == 409, "its key is known"
    assert publish(server.port, "app.a", 3).status == 202
    assert request(server.port, "GET", "/healthz").json()["status"] == "ok"


def test_a_failed_interval_fsync_stops_later_publishes(make_server, tmp_path):
    env, files = hooked(tmp_path, fail="BUSD_TEST_FSYNC_FAIL")
    server = make_server("app", "--fsync", "interval", "--fsync-interval", "100ms", env=env)
    files["fail"].write_text("/app/")
    assert publish(server.port, "app.a", 0).status == 202  # answered before any fsync
    answer = wait_until(
        lambda: (refused := publish(server.port, "app.a", 1)).status != 202 and refused,
        what="still accepting after a failed fsync")
    assert answer.status == 503 and "until busd is restarted" in answer.body.decode()
    assert request(server.port, "GET", "/healthz").json()["status"] == "degraded"


def power_loss(data: Path, fsync_log: Path) -> None:
    """What a power loss keeps: each segment as large as at its last fsync, or nothing."""
    synced: dict[str, int] = {}
    lines = fsync_log.read_text().splitlines() if fsync_log.exists() else []  # none: never
    for line in lines:
        path, size = line.rsplit(" ", 1)
        synced[path] = int(size)
    for segment in data.rglob("*.seg"):
        size = synced.get(str(segment.resolve()))
        if size is None:
            segment.unlink()
        else:
            with open(segment, "r+b") as fh:
                fh.truncate(size)
    for index in data.rglob("*.idx"):
        index.unlink()


@pytest.mark.parametrize("fsync", ["always", "interval"])
def test_a_power_loss_takes_back_nothing_seen_only_under_always(make_server, tmp_path, fsync):
    """Publishers (singles and batches) and a live subscriber until kill -9; then each
    segment is cut to what was last fsynced. Under always every 202 and every delivered
    event is still there at its index; under interval (10 s) the same check finds
    delivered events that are gone, so it tells the modes apart."""
    env, files = hooked(tmp_path, log="BUSD_TEST_FSYNC_LOG")
    server = make_server("app", "--fsync", fsync, "--fsync-interval", "10s",
                         "--segment-size", "64KiB", env=env)
    answered: dict[str, int] = {}
    failures: list[str] = []
    stop = threading.Event()

    def publisher(worker: int) -> None:
        with Http(server.port, timeout=5) as http:
            for n in range(100000):
                if stop.is_set():
                    return
                body = [{"subject": f"app.w{worker}", "payload": [worker, n, i]}
                        for i in range(1 + n % 3)]
                try:
                    answer = http.request("POST", "/", json.dumps(body).encode())
                except OSError:
                    return  # killed
                if answer.status != 202:
                    failures.append(f"{answer}")
                    return
                result = answer.json()
                for offset, event_id in enumerate(result["ids"]):
                    answered[event_id] = result["first_index"] + offset

    seen: list[str] = []
    with SSE(server.port, "subject=app.>&start=oldest") as live:
        threads = [threading.Thread(target=publisher, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            seen += [e["id"] for e in live.events(1)]
        server.kill()
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert not failures, failures
    assert len(seen) > 50, "the load did not get going"
    power_loss(server.path, files["log"])
    server.start()
    with SSE(server.port, "subject=app.>&start=oldest") as sse:
        count = request(server.port, "GET", "/healthz").json()["namespaces"]["app"]["events"]
        kept = [e["id"] for e in sse.events(count)] if count else []
    lost_seen = [i for index, i in enumerate(seen) if index >= len(kept) or kept[index] != i]
    if fsync == "always":
        assert not lost_seen, f"{len(lost_seen)} delivered events gone after the power loss"
        assert all(index < len(kept) and kept[index] == event_id
                   for event_id, index in answered.items()), "a 202'd event is gone"
    else:
        assert lost_seen, "a power loss under interval took nothing back: the check is blind"


def test_under_always_what_a_killed_server_left_unsynced_is_fsynced_before_it_is_served(
        make_server, tmp_path):
    """Killed while an fsync was held, the event is in the page cache, not on disk; the
    next start serves it, so it must fsync it first: a power loss then keeps it."""
    env, files = hooked(tmp_path, hold="BUSD_TEST_FSYNC_HOLD", log="BUSD_TEST_FSYNC_LOG")
    server = make_server("app", "--fsync", "always", env=env)
    files["hold"].touch()

    def publish_unanswered() -> None:
        try:
            publish(server.port, "app.a", 1)
        except OSError:
            pass  # killed before it answered

    publisher = threading.Thread(target=publish_unanswered, daemon=True)
    publisher.start()
    time.sleep(0.5)  # written, its fsync held
    server.kill()
    files["hold"].unlink()
    server.start()
    with SSE(server.port, "subject=app.>&start=oldest") as sse:
        seen = sse.events(1)[0]["id"]
    server.kill()
    power_loss(server.path, files["log"])
    server.start()
    with SSE(server.port, "subject=app.>&start=oldest") as sse:
        assert sse.events(1)[0]["id"] == seen, "served after a restart, then lost"
