"""Dedup across restarts, and the bounds on what a client can make the cache hold.

A restart (clean, or kill -9) forgets no key the running server would have refused, keeps
each key's age, and refuses no key whose event the log no longer has. Keys and trace ids
are bounded at the door, the cache in bytes, and each stored record in size.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from busclient import publish, request, wait_until

from busd.bus.broker import DEDUP_FILE


def restart(server, how: str) -> None:
    if how == "kill":
        server.kill()
    else:
        assert server.stop() == 0
    server.start()


def wait_for_a_save(snapshot: Path, before: bytes) -> None:
    """Until the server's periodic save (every 10 s) has replaced the saved cache `before`."""
    wait_until(lambda: snapshot.read_bytes() != before, timeout=60, interval=0.2,
               what="no save of the dedup cache")


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_quiet_subjects_key_outlives_100k_later_records_and_a_restart(make_server, how):
    """With --dup-bytes 1MiB a rebuild from the log's tail reads only the last ~5,800
    records: the quiet key survives through the saved cache alone (killed: the periodic
    save made after it, replayed on from its mark)."""
    server = make_server("app", "--dup-size", "2", "--dup-bytes", "1MiB")
    snapshot = server.path / DEDUP_FILE
    saved_at_start = snapshot.read_bytes()
    assert publish(server.port, "app.quiet", 0, key="once").status == 202
    for n in range(101):  # 101,000 keyed records after it, on a busy subject
        body = json.dumps([{"subject": "app.busy", "key": f"{n}.{i}"}
                           for i in range(1000)]).encode()
        assert request(server.port, "POST", "/", body).status == 202
    assert publish(server.port, "app.quiet", 1, key="once").status == 409
    if how == "kill":
        wait_for_a_save(snapshot, saved_at_start)
    restart(server, how)
    assert publish(server.port, "app.quiet", 1, key="once").status == 409
    assert publish(server.port, "app.busy", 1, key="100.999").status == 409
    assert publish(server.port, "app.busy", 1, key="0.0").status == 202, \
        "a key the busy subject's --dup-size 2 evicted"


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_restart_does_not_extend_dup_ttl(make_server, how):
    """The key is 3 s old at the restart, so one stamped anew then would still be refused
    when its 6 s are up."""
    server = make_server("app", "--dup-ttl", "6s")
    published = time.monotonic()
    assert publish(server.port, "app.a", 0, key="k").status == 202
    time.sleep(max(0.0, published + 3 - time.monotonic()))
    restart(server, how)
    assert publish(server.port, "app.a", 1, key="k").status == 409, "forgotten at restart"
    time.sleep(max(0.0, published + 6.3 - time.monotonic()))
    assert publish(server.port, "app.a", 1, key="k").status == 202, \
        "the restart stamped the key anew"


def test_keys_of_events_the_log_no_longer_has_are_not_refused(make_server):
    """The saved cache is checked against the log: a data directory whose log was cut
    back (here: replaced) after the cache was saved does not refuse keys of lost events."""
    server = make_server("app")
    assert publish(server.port, "app.a", 0, key="gone").status == 202
    assert server.stop() == 0
    shutil.rmtree(server.path / "app")
    server.start()
    assert publish(server.port, "app.a", 0, key="gone").status == 202
    assert "saved dedup cache does not match the logs" in server.log()


def test_key_and_trace_id_are_bounded_at_the_door(shared_server):
    port = shared_server.port
    assert publish(port, "app.b", 0, key="k" * 256, trace_id="t" * 256).status == 202
    for field in ("key", "trace_id"):
        answer = publish(port, "app.b", 0, **{field: "x" * 257})
        assert answer.status == 400
        assert answer.body.decode().strip() == f"field {field} is longer than 256 bytes"
    batch = [{"subject": "app.b"}, {"subject": "app.b", "key": "x" * 5000}]
    answer = request(port, "POST", "/", batch)
    assert answer.status == 400 and answer.body.startswith(b"batch item 1: field key")


def test_the_dedup_cache_is_bounded_in_bytes(make_server):
    server = make_server("app", "--dup-bytes", "4KiB")  # room for about 20 keys
    for i in range(40):
        assert publish(server.port, "app.a", 0, key=f"k{i}").status == 202
    assert publish(server.port, "app.a", 0, key="k39").status == 409
    assert publish(server.port, "app.a", 0, key="k0").status == 202, "past the bound"


def test_each_record_of_a_batch_is_bounded_by_max_event_size(make_server):
    server = make_server("app", "--max-event-size", "1KiB")
    long_subject = "app." + "s" * (70 << 10)  # a small payload, a huge record
    batch = [{"subject": "app.a", "payload": 1}, {"subject": long_subject, "payload": 1}]
    answer = request(server.port, "POST", "/", batch)
    assert answer.status == 413
    assert answer.body.startswith(b"batch item 1 is ") and b"--max-event-size" in answer.body
    assert request(server.port, "GET", "/healthz").json()["namespaces"]["app"]["events"] == 0
