"""Free-form event ids (the Go SDK's `WithId("order-123")`): stored as given, unique per
namespace (409), and `start=` / `Last-Event-ID` find them, after a restart too."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from busclient import SSE, publish, request


def test_a_free_form_id_is_stored_refused_twice_and_found_after_a_restart(server):
    port = server.port
    first = publish(port, "app.orders", {"n": 1}, id="order-123")
    assert first.status == 202 and first.headers["x-bus-event-id"] == "order-123"
    again = publish(port, "app.orders", {"n": 2}, id="order-123")
    assert again.status == 409 and b"order-123" in again.body
    batch = [{"subject": "app.orders", "payload": 3, "id": "order 42 (eu)"},
             {"subject": "app.orders", "payload": 4}]
    answer = request(port, "POST", "/", batch)
    assert answer.status == 202 and answer.json()["ids"][0] == "order 42 (eu)"
    assert publish(port, "orders.x", 1, id="order-123").status == 202, "per namespace"
    for _ in range(2):
        with SSE(port, "subject=app.>&start=order-123") as sse:
            events = sse.events(2)
            assert [e["payload"] for e in events] == [3, 4]
            assert events[0]["id"] == "order 42 (eu)"
        with SSE(port, "subject=app.>", headers={"Last-Event-ID": "order 42 (eu)"}) as sse:
            assert [e["payload"] for e in sse.events(1)] == [4]
        server.restart()
    assert publish(port, "app.orders", 5, id="order-123").status == 409, "after a restart"
    assert publish(port, "app.orders", 5, id="order 42 (eu)").status == 409


def test_the_sse_id_line_carries_the_free_form_id(server):
    assert publish(server.port, "app.x", 1, id="k:1/2").status == 202
    with SSE(server.port, "subject=app.x&start=oldest") as sse:
        message = sse.message()
        while message.get("event") != "msg":
            message = sse.message()
        assert message["id"] == "k:1/2" and json.loads(message["data"])["id"] == "k:1/2"


@pytest.mark.parametrize("event_id, reason", [
    ("x" * 129, "longer than 128 bytes"),
    ('a"b', "printable ASCII characters without"),
    ("a\\b", "printable ASCII characters without"),
    ("tab\there", "printable ASCII characters without"),
    (" lead", "no space at either end"),
    ("caf\u00e9", "printable ASCII"),
    ("e_custom", "must be e_ followed by a 20-character xid"),
    ("oldest", "are start= values, not ids"),
    ("index:7", "are start= values, not ids"),
])
def test_ids_that_cannot_name_an_event_are_400_with_the_reason(server, event_id, reason):
    response = publish(server.port, "app.x", 1, id=event_id)
    assert response.status == 400 and reason in response.body.decode()
    assert publish(server.port, "app.x", 1, id="x" * 128).status == 202


def test_an_event_with_a_free_form_id_is_acked_by_it(server):
    port = server.port
    assert publish(port, "app.acked", 1, id="job/7").status == 202
    assert publish(port, "app.acked", 2).status == 202
    query = "subject=app.acked&start=oldest&ack=manual&redelivery=200ms"
    with SSE(port, query) as sse:
        first = sse.events(1)[0]
        assert first["id"] == "job/7"
        assert sse.events(1, timeout=3)[0]["id"] == "job/7", "unacked: delivered again"
        target = f"/?consumer_id={sse.consumer_id}&event_id={quote(first['id'], safe='')}"
        assert request(port, "PUT", target).status == 202
        assert sse.events(1, timeout=3)[0]["payload"] == 2
