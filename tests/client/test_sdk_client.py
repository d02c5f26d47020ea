"""busd.Client (blocking) against a real server process: every verb, request/reply and
confirm with two responders, error mapping, 8 threads sharing one client, closing."""

from __future__ import annotations

import itertools
import json
import threading
import time
from datetime import UTC, datetime
from operator import itemgetter

import pytest
from busclient import SSE, free_port

from busd import (
    BadRequestError,
    BusConnectionError,
    BusError,
    BusTimeoutError,
    Client,
    ConflictError,
    Event,
    ForbiddenError,
    PayloadTooLargeError,
    SubscriptionError,
    UnauthorizedError,
)

_n = itertools.count()


def topic(ns: str = "app") -> str:
    """A subject no other test of the module uses."""
    return f"{ns}.t{next(_n)}"


@pytest.fixture(scope="module")
def bus(shared_server):
    """conftest's module-wide server (app, orders, math)."""
    return shared_server


@pytest.fixture
def client(bus):
    with Client(f"http://127.0.0.1:{bus.port}", timeout=10) as c:
        yield c


def stored(port: int, subject: str, count: int) -> list[dict]:
    """The records as a raw SSE reader sees them (the wire, not the SDK)."""
    with SSE(port, f"subject={subject}&start=oldest") as sse:
        return sse.events(count)


def test_put_returns_id_index_created_at_and_stores_every_field(bus, client):
    subject = topic()
    before = datetime.now(UTC)
    first = client.put(subject, {"user_id": "123"}, key="u-123", trace_id="req-1")
    second = client.put(subject, "plain text")
    assert first.id.startswith("e_") and len(first.id) == 22
    assert second.index == first.index + 1
    assert first.created_at.tzinfo is not None
    assert abs((first.created_at - before).total_seconds()) < 5
    records = stored(bus.port, subject, 2)
    assert records[0] == {"id": first.id, "subject": subject, "key": "u-123", "trace_id": "req-1",
                          "created_at": records[0]["created_at"], "payload": {"user_id": "123"}}
    assert records[1]["payload"] == "plain text" and "key" not in records[1]


def test_payloads_go_on_the_wire_by_the_go_sdk_rules(bus, client):
    subject = topic()
    for data in ('{"a": 1}', "hello", b"[1, 2]", 7, None):
        client.put(subject, data)
    with SSE(bus.port, f"subject={subject}&start=oldest") as sse:
        raw = []
        while len(raw) < 5:
            message = sse.message()
            if message.get("event") == "msg":
                raw.append(message["data"])
    assert raw[0].endswith('"payload":{"a": 1}}')  # valid JSON text goes byte for byte
    assert [json.loads(r).get("payload", "absent") for r in raw] == \
        [{"a": 1}, "hello", [1, 2], 7, "absent"]


def test_put_batch_is_one_atomic_publish(bus, client):
    subject = topic()
    result = client.put_batch([{"subject": subject, "data": {"id": 1}},
                               {"subject": subject, "data": {"id": 2}, "key": "o-2"}])
    assert result.count == 2 and len(result.ids) == 2
    records = stored(bus.port, subject, 2)
    assert [r["id"] for r in records] == result.ids
    assert records[1]["key"] == "o-2"
    with pytest.raises(ConflictError):  # the key again: nothing of this batch lands
        client.put_batch([{"subject": subject, "data": 3},
                          {"subject": subject, "data": 4, "key": "o-2"}])
    assert client.put(subject, "after").index == result.first_index + 2


def test_get_from_oldest_newest_and_an_event_id(client):
    subject = topic()
    ids = [client.put(subject, n).id for n in range(4)]
    with client.get(subject, start="oldest") as sub:
        events = [next(sub) for _ in range(4)]
    assert [e.payload for e in events] == [0, 1, 2, 3]
    assert [e.id for e in events] == ids
    assert all(isinstance(e, Event) and e.consumer_id.startswith("c_") for e in events)
    with client.get(subject, start=ids[1]) as sub:
        assert [next(sub).payload for _ in range(2)] == [2, 3]
    with client.get(subject) as sub:  # newest, and live as soon as get() returned
        client.put(subject, "new")
        assert next(sub).payload == "new"


def test_nats_subjects_zero_segment_wildcards_and_lone_surrogates(client):
    """`app.café…` is a subject, `….>` takes the subject itself too (as Bus), and an
    event whose payload holds a lone surrogate escape is read back as JSON allows."""
    subject = topic() + ".caf\u00e9$"
    client.put(subject, b'{"t":"\\ud800"}')
    client.put(subject + ".x", 2)
    with client.get(subject + ".>", start="oldest") as sub:
        events = [next(sub) for _ in range(2)]
    assert [(e.subject, e.payload) for e in events] == [(subject, {"t": "\ud800"}),
                                                       (subject + ".x", 2)]


def test_event_fields(client):
    subject = topic()
    with client.get(subject) as sub:
        r = client.put(subject, {"x": 1}, key="k1", trace_id="tr")
        event = next(sub)
    assert (event.id, event.subject, event.payload, event.key, event.trace_id) == \
        (r.id, subject, {"x": 1}, "k1", "tr")
    assert event.created_at == r.created_at and event.response_subject is None
    assert event.consumer_id == sub.consumer_id


def test_manual_ack_redelivers_until_acked(client):
    subject = topic()
    client.put(subject, "a")
    client.put(subject, "b")
    with client.get(subject, start="oldest", ack="manual", redelivery="300ms",
                    redelivery_count=5) as sub:
        first = next(sub)
        again = next(sub)  # not acked: the same event comes back after ~300 ms
        assert (first.payload, again.id) == ("a", first.id)
        again.ack()
        assert next(sub).payload == "b"


def _responder(client: Client, subject: str, name: str, ready: threading.Barrier,
               ack: str = "none") -> threading.Thread:
    def serve():
        with client.get(subject, ack=ack) as sub:
            ready.wait()
            for event in sub:
                if event.payload == "stop":
                    return
                if isinstance(event.payload, dict) and "A" in event.payload:
                    event.ack({"result": event.payload["A"] + event.payload["B"], "by": name})
                else:
                    event.ack()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("ack", ["none", "manual"])
def test_request_reply_with_two_responders(client, ack):
    subject = topic("math")
    ready = threading.Barrier(3, timeout=10)
    threads = [_responder(client, subject, name, ready, ack) for name in ("r1", "r2")]
    ready.wait()
    for a in range(5):
        resp = client.put(subject, {"A": a, "B": 20}, request_reply=True, timeout=5)
        assert resp.payload["result"] == a + 20 and resp.payload["by"] in ("r1", "r2")
        assert resp.id.startswith("e_") and resp.index >= 0
    client.put(subject, "stop")
    for t in threads:
        t.join(5)


def test_confirm_with_two_responders(client):
    subject = topic()
    ready = threading.Barrier(3, timeout=10)
    threads = [_responder(client, subject, name, ready, "manual") for name in ("c1", "c2")]
    ready.wait()
    t0 = time.monotonic()
    result = client.put(subject, "important", confirm=2, timeout=5)
    assert result.id.startswith("e_") and time.monotonic() - t0 < 4
    assert len(result.replies) == 2 and result.payload is None  # confirmations: no payload
    t0 = time.monotonic()
    with pytest.raises(BusTimeoutError, match="2 of 3 confirmations") as info:
        client.put(subject, "needs three", confirm=3, timeout=1)
    assert isinstance(info.value, TimeoutError) and 0.9 < time.monotonic() - t0 < 3
    stored = info.value.result  # the event was stored all the same: its id, and who confirmed
    assert stored.id.startswith("e_") and stored.index == result.index + 1
    assert len(stored.replies) == 2
    client.put(subject, "stop")
    for t in threads:
        t.join(5)


def test_request_without_a_responder_times_out(client):
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="no reply"):
        client.put(topic("math"), {"A": 1, "B": 2}, request_reply=True, timeout=0.5)
    assert time.monotonic() - t0 < 2


def test_errors_carry_status_and_the_servers_reason(client):
    subject = topic()
    client.put(subject, 1, key="dup")
    with pytest.raises(ConflictError) as info:
        client.put(subject, 2, key="dup")
    assert info.value.status == 409 and info.value.reason == "key was processed before"
    with pytest.raises(BadRequestError) as info:
        client.put("nowhere.x", 1)
    assert info.value.status == 400 and "nowhere" in info.value.reason
    with pytest.raises(BadRequestError):
        client.put("app", 1)  # one segment
    with pytest.raises(BadRequestError, match="400"):
        client.get("app.>.x")
    with pytest.raises(SubscriptionError, match="not found"):
        for _ in client.get(subject, start="e_d4o7ehksdud4d8c68bg0"):
            pass


def test_payload_too_large_is_413(make_server):
    server = make_server("app", "--max-event-size", "1KiB")
    with Client(f"http://127.0.0.1:{server.port}") as c:
        with pytest.raises(PayloadTooLargeError) as info:
            c.put("app.big", "x" * 2000)
    assert info.value.status == 413 and "max-event-size" in info.value.reason


def test_unreachable_server_is_a_clear_connection_error():
    port = free_port()
    with Client(f"http://127.0.0.1:{port}", timeout=2) as c:
        for call in (lambda: c.put("app.x", 1), lambda: c.get("app.x")):
            with pytest.raises(BusConnectionError, match=f"127.0.0.1:{port}") as info:
                call()
            assert isinstance(info.value, ConnectionError) and isinstance(info.value, BusError)


def test_eight_threads_publish_through_one_client(bus, client):
    subject = topic()
    per_thread, results, errors = 150, [], []

    def publish(t: int) -> None:
        try:
            results.extend((t, n, client.put(subject, {"t": t, "n": n})) for n in range(per_thread))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    total = 8 * per_thread
    assert len({r.id for _, _, r in results}) == total
    indexes = sorted(r.index for _, _, r in results)
    assert indexes == list(range(indexes[0], indexes[0] + total))
    assert len(client._pool.idle) <= 8  # one pooled connection per concurrent thread at most
    with client.get(subject, start="oldest") as sub:
        seen = [(e.payload["t"], e.payload["n"], e.id) for e in itertools.islice(sub, total)]
    assert sorted(seen) == sorted((t, n, r.id) for t, n, r in results)
    for t in range(8):  # each thread's own order is kept
        assert [n for tt, n, _ in seen if tt == t] == list(range(per_thread))


def test_keep_alive_connection_is_reused(client):
    subject = topic()
    client.put(subject, 0)
    (conn,) = client._pool.idle
    for n in range(20):
        client.put(subject, n)
    assert client._pool.idle == [conn]


def test_close_from_another_thread_ends_iteration_promptly(client):
    sub = client.get(topic())
    threading.Timer(0.2, sub.close).start()
    t0 = time.monotonic()
    assert list(sub) == []
    assert time.monotonic() - t0 < 2 and sub.closed


def test_client_close_ends_its_subscriptions(bus):
    c = Client(f"http://127.0.0.1:{bus.port}")
    sub = c.get(topic())
    threading.Timer(0.2, c.close).start()
    t0 = time.monotonic()
    assert list(sub) == [] and time.monotonic() - t0 < 2
    with pytest.raises(BusConnectionError, match="closed"):
        c.put("app.x", 1)


TOKENS = """
[[token]]
name = "svc"
secret = "svc-secret"
publish = ["app.>"]
subscribe = ["app.>"]
"""


def test_token_for_a_bus_with_an_auth_file(make_server, tmp_path):
    path = tmp_path / "tokens.toml"
    path.write_text(TOKENS)
    server = make_server("app,orders", "--auth-file", str(path))
    url = f"http://127.0.0.1:{server.port}"
    with Client(url) as anonymous:
        with pytest.raises(UnauthorizedError) as info:
            anonymous.put("app.x", 1)
        assert info.value.status == 401 and info.value.reason
        with pytest.raises(UnauthorizedError):
            anonymous.get("app.x")
    with Client(url, token="svc-secret") as c:
        with pytest.raises(ForbiddenError) as info:
            c.put("orders.x", 1)
        assert info.value.status == 403 and "orders.x" in info.value.reason
        with pytest.raises(ForbiddenError):
            c.get("orders.>")
        ready = threading.Barrier(2, timeout=10)
        thread = _responder(c, "app.add", "svc", ready, ack="manual")
        ready.wait()  # acks, replies to the inbox and the inbox itself all carry the token
        assert c.put("app.add", {"A": 1, "B": 2}, request_reply=True, timeout=5).payload == \
            {"result": 3, "by": "svc"}
        c.put("app.add", "stop")
        thread.join(5)


def test_a_dump_restored_with_put_raw_keeps_every_record_as_it_was(make_server):
    """What `bus dump` / `bus restore` do online: records read as `Event.raw`, published
    again as they are (single and batched) to another server."""
    source, target = make_server("app"), make_server("app")
    with Client(f"http://127.0.0.1:{source.port}") as a, \
            Client(f":{target.port}") as b:                  # `bus --host :port` form
        a.put_batch([{"subject": "app.d", "data": n, "key": f"k{n}"} for n in range(5)])
        a.put("app.d", "last", trace_id="t-1")
        dumped = [event.raw for event in a.get("app.>", start="oldest", idle_timeout=0.5)]
        assert len(dumped) == 6
        assert b.put_batch_raw(dumped[:5]).ids == [json.loads(r)["id"] for r in dumped[:5]]
        one = b.put_raw(dumped[5])
        assert (one.id, one.created_at_text) == itemgetter("id", "created_at")(
            json.loads(dumped[5]))
        assert [e.raw for e in b.get("app.>", start="oldest", idle_timeout=0.5)] == dumped
        assert b.health()["namespaces"]["app"]["events"] == 6


def test_idle_timeout_ends_the_iteration_after_a_quiet_spell(client):
    subject = topic()
    client.put_batch([{"subject": subject, "data": n} for n in range(3)])
    sub = client.get(subject, start="oldest", idle_timeout=0.3)
    t0 = time.monotonic()
    assert [e.payload for e in sub] == [0, 1, 2]
    assert 0.3 <= time.monotonic() - t0 < 2 and sub.closed


def test_get_takes_several_patterns_of_one_namespace(client):
    a, b = topic(), topic()
    client.put_batch([{"subject": subject, "data": n}
                      for n, subject in enumerate((a, b, topic(), a))])
    sub = client.get([a, b, a], start="oldest", idle_timeout=0.3)
    assert [e.payload for e in sub] == [0, 1, 3]


def test_health_is_the_servers_report(bus, client):
    report = client.health()
    assert report["status"] == "ok" and set(report["namespaces"]) == {"app", "orders", "math"}

