"""POST / — every row of SPEC §3.1's table, against a real server over sockets."""

from __future__ import annotations

import json
import re

import pytest
from busclient import SSE, Http, build_request, publish, read_response, request

CORS = {
    "access-control-allow-origin": "*",
    "access-control-allow-methods": "GET, POST, PUT, DELETE, OPTIONS",  # Bus's, and DELETE
}
XID = re.compile(r"^e_[0-9a-v]{20}$")


def test_single_event_is_stored_with_id_time_and_index(server):
    first = publish(server.port, "app.users.created", {"user_id": "123"})
    second = publish(server.port, "app.users.created", "plain text")
    assert (first.status, second.status) == (202, 202)
    assert XID.match(first.headers["x-bus-event-id"])
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$",
                    first.headers["x-bus-event-created-at"])
    assert (first.headers["x-bus-event-index"], second.headers["x-bus-event-index"]) == ("0", "1")
    assert first.headers["x-bus-event-id"] < second.headers["x-bus-event-id"]  # k-sortable
    for name, value in CORS.items():
        assert first.headers[name] == value


def test_payload_is_stored_byte_for_byte(server):
    body = (b'{"subject":"app.raw","payload":  {"b" : 1.50, "big": 123456789012345678901234567890,'
            b' "s":"\\u00e9\\n"}  }')
    assert request(server.port, "POST", "/", body).status == 202
    assert request(server.port, "POST", "/", b'{"subject":"app.raw"}').status == 202
    with SSE(server.port, "subject=app.raw&start=oldest") as sse:
        message = sse.message()
        while message.get("event") != "msg":
            message = sse.message()
        assert message["data"].endswith(
            '"payload":{"b" : 1.50, "big": 123456789012345678901234567890, "s":"\\u00e9\\n"}}')
        record = sse.events(1)[0]
        assert "payload" not in record


def test_go_sdk_bodies_are_accepted(server):
    """The exact bytes the Go SDK sends: "id":"", zero created_at, batch items with index."""
    body = (b'{"id":"","trace_id":"req-1","key":"k-1","subject":"app.users.created",'
            b'"created_at":"0001-01-01T00:00:00Z","payload":"plain text"}')
    response = request(server.port, "POST", "/", body)
    assert response.status == 202
    assert not response.headers["x-bus-event-created-at"].startswith("0001")
    batch = (b'[{"id":"","key":"","subject":"app.b","payload":{"n":1},'
             b'"created_at":"0001-01-01T00:00:00Z","index":0},{"id":"","key":"","subject":"app.b",'
             b'"payload":{"n":2},"created_at":"0001-01-01T00:00:00Z","index":0}]')
    assert request(server.port, "POST", "/", batch).status == 202
    with SSE(server.port, "subject=app.%3E&start=oldest") as sse:
        records = sse.events(3)
    assert records[0]["trace_id"] == "req-1" and records[0]["key"] == "k-1"
    assert "key" not in records[1], "an empty key is no key"
    assert [r["payload"] for r in records[1:]] == [{"n": 1}, {"n": 2}]


def test_batch_lands_whole_with_count_first_index_and_ids(server):
    publish(server.port, "orders.created", {"n": 0})
    events = [{"subject": "orders.created", "payload": {"n": n}} for n in range(1, 4)]
    response = request(server.port, "POST", "/", events)
    assert response.status == 202
    body = response.json()
    assert body["count"] == 3 and body["first_index"] == 1 and len(body["ids"]) == 3
    with SSE(server.port, "subject=orders.>&start=oldest") as sse:
        assert [r["id"] for r in sse.events(4)[1:]] == body["ids"]


@pytest.mark.parametrize("events, reason", [
    ([{"subject": "orders.a"}, {"subject": "app.b"}], "one namespace"),
    ([{"subject": "orders.a"}, {"subject": "orders.*"}], "wildcard"),
    ([{"subject": "orders.a"}, {"payload": 1}], "missing subject"),
    ([{"subject": "orders.a", "response_subject": "_bus_.x"}], "response_subject"),
    ([{"subject": "_bus_.x"}], "_bus_"),
    ([], "empty batch"),
])
def test_invalid_batch_is_refused_whole(server, events, reason):
    response = request(server.port, "POST", "/", events)
    assert response.status == 400
    assert reason in response.body.decode()
    health = request(server.port, "GET", "/healthz").json()
    assert health["namespaces"]["orders"]["events"] == 0


@pytest.mark.parametrize("body, reason", [
    (b"", "empty body"),
    (b"   ", "empty body"),
    (b'{"subject":"app.x",', "invalid JSON"),
    (b'{"subject":"app.x","payload":{"a":1,}}', "invalid JSON"),
    (b'{"subject":"app.x","payload":NaN}', "invalid JSON"),
    (b'{"subject":"app.x","payload":"\xff"}', "invalid JSON"),
    (b'{"payload":{}}', "missing subject"),
    (b'{"subject":12}', "subject must be a string"),
    (b'{"subject":"app"}', "two segments"),
    (b'{"subject":"app..x"}', "empty segment"),
    (b'{"subject":"app.x y"}', "invalid character"),
    (b'{"subject":"app.\\ud800"}', "not valid UTF-8"),
    (b'{"subject":"app.*"}', "wildcard"),
    (b'{"subject":"app.>"}', "wildcard"),
    (b'{"subject":"app.x","response_subject":"_bus_.*"}', "wildcard"),
    (b'{"subject":"nope.x"}', "namespace 'nope' is not declared"),
    (b'{"subject":"app.x","id":"e_123"}', "invalid id"),
    (b'{"subject":"app.x","created_at":"yesterday"}', "invalid created_at"),
    (b'"just a string"', "JSON"),
])
def test_bad_input_is_400_with_a_reason(server, body, reason):
    response = request(server.port, "POST", "/", body)
    assert response.status == 400, response
    assert reason.lower() in response.body.decode().lower(), response.body
    assert response.body.endswith(b"\n") and response.body.count(b"\n") == 1
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["access-control-allow-origin"] == "*"


def test_undeclared_namespace_names_the_declared_ones(server):
    response = publish(server.port, "nope.created", 1)
    assert response.status == 400
    assert "app, math, orders" in response.body.decode()


def test_duplicate_key_on_same_subject_is_409(server):
    assert publish(server.port, "app.pay", 1, key="k-1").status == 202
    again = publish(server.port, "app.pay", 2, key="k-1")
    assert again.status == 409 and again.body == b"key was processed before\n"
    assert publish(server.port, "app.other", 3, key="k-1").status == 202  # per subject
    assert publish(server.port, "app.pay", 4, key="").status == 202
    assert publish(server.port, "app.pay", 5, key="").status == 202  # empty key: no dedup
    batch = [{"subject": "app.pay", "key": "k-2"}, {"subject": "app.pay", "key": "k-1"}]
    assert request(server.port, "POST", "/", batch).status == 409
    assert publish(server.port, "app.pay", 6, key="k-2").status == 202, "refused batch kept k-2"


def test_dedup_survives_restart(make_server):
    server = make_server()
    assert publish(server.port, "app.pay", 1, key="once").status == 202
    server.restart()
    assert publish(server.port, "app.pay", 1, key="once").status == 409


def test_lone_surrogates_survive_a_restart_and_their_keys_still_dedup(make_server):
    """Valid JSON with lone-surrogate escapes is stored as sent; the dedup cache rebuilt
    from it at start-up reads keys as the publish did (`\\ud800` and `\\ud801` differ)."""
    server = make_server()
    for key in ("\\ud800", "\\ud801", "k\\udfff"):
        body = b'{"subject":"app.s","key":"%s","payload":"\\ud800x"}' % key.encode()
        assert request(server.port, "POST", "/", body).status == 202, key
    server.restart()
    for key in ("\\ud800", "\\ud801", "k\\udfff"):
        body = b'{"subject":"app.s","key":"%s"}' % key.encode()
        assert request(server.port, "POST", "/", body).status == 409, key
    assert request(server.port, "POST", "/", b'{"subject":"app.s","key":"\\ud802"}'
                   ).status == 202


def test_dedup_can_be_disabled(make_server):
    server = make_server("app", "--dup-size", "0")
    assert publish(server.port, "app.pay", 1, key="k").status == 202
    assert publish(server.port, "app.pay", 1, key="k").status == 202


def test_event_larger_than_max_event_size_is_413(make_server):
    server = make_server("app", "--max-event-size", "1KiB")
    assert publish(server.port, "app.small", "x" * 900).status == 202
    assert publish(server.port, "app.big", "x" * 2000).status == 413
    batch = [{"subject": "app.big", "payload": "x" * 900}, {"subject": "app.big",
                                                          "payload": "x" * 2000}]
    assert request(server.port, "POST", "/", batch).status == 413
    ok_batch = [{"subject": "app.big", "payload": "x" * 900}] * 3
    assert request(server.port, "POST", "/", ok_batch).status == 202


def test_supplied_id_and_created_at_are_kept(server):
    event = {"subject": "app.restore", "id": "e_d4o7ehksdud4d8c68bg0",
             "created_at": "2026-11-27T13:20:58.365157351Z", "payload": 1}
    response = request(server.port, "POST", "/", event)
    assert response.headers["x-bus-event-id"] == "e_d4o7ehksdud4d8c68bg0"
    assert response.headers["x-bus-event-created-at"] == "2026-11-27T13:20:58.365157351Z"


def test_options_and_cors(server):
    response = request(server.port, "OPTIONS", "/anything")
    assert response.status == 204
    preflight = request(server.port, "OPTIONS", "/groups?namespace=app&name=g", headers={
        "Origin": "http://localhost:8080", "Access-Control-Request-Method": "DELETE",
        "Access-Control-Request-Headers": "authorization"})
    assert preflight.status == 204
    assert "DELETE" in preflight.headers["access-control-allow-methods"].split(", ")
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    assert "Last-Event-ID" in response.headers["access-control-allow-headers"]
    assert "X-BUS-CONSUMER-ID" in response.headers["access-control-expose-headers"]


def test_get_without_subject_is_400_health_check(server):
    response = request(server.port, "GET", "/")
    assert response.status == 400 and b"subject" in response.body


def test_unknown_path_and_method(server):
    assert request(server.port, "GET", "/healthz/nothing").status == 404
    assert request(server.port, "DELETE", "/").status == 405


def test_healthz(server):
    publish(server.port, "app.x", 1)
    health = request(server.port, "GET", "/healthz").json()
    assert health["status"] == "ok" and health["uptime_s"] >= 0 and health["version"]
    app = health["namespaces"]["app"]
    assert app["events"] == 1 and app["published_since_start"] == 1 and app["bytes"] > 0
    assert "published" not in app  # the old name: "published: 0" next to "events: N" misled
    server.restart()
    publish(server.port, "app.x", 2)
    app = request(server.port, "GET", "/healthz").json()["namespaces"]["app"]
    assert (app["events"], app["published_since_start"]) == (2, 1)


def test_chunked_body_and_expect_continue(server):
    body = json.dumps({"subject": "app.chunked", "payload": {"a": 1}}).encode()
    chunked = (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n%s\r\n" % (10, body[:10]) + b"%x\r\n%s\r\n" % (len(body) - 10, body[10:])
               + b"0\r\n\r\n")
    with Http(server.port) as http:
        http.send(chunked)
        assert read_response(http.file).status == 202
        http.send(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body))
        assert http.file.readline().startswith(b"HTTP/1.1 100")
        http.file.readline()
        http.send(body)
        assert read_response(http.file).status == 202


def test_pipelined_requests_are_answered_in_order(server):
    requests = b"".join([
        build_request("POST", "/", json.dumps({"subject": "app.p", "payload": n}).encode())
        for n in range(5)
    ] + [build_request("POST", "/", b"{bad"), build_request("PUT", "/?consumer_id=x"),
         build_request("POST", "/", b'{"subject":"app.p"}'), build_request("GET", "/healthz")])
    with Http(server.port) as http:
        http.send(requests)
        responses = [read_response(http.file) for _ in range(9)]
    assert [r.status for r in responses] == [202] * 5 + [400, 400, 202, 200]
    assert [r.headers["x-bus-event-index"] for r in responses[:5]] == ["0", "1", "2", "3", "4"]
    assert responses[7].headers["x-bus-event-index"] == "5"


def test_malformed_http_gets_400_and_server_keeps_serving(server):
    with Http(server.port) as http:
        http.send(b"THIS IS NOT HTTP\r\n\r\n")
        assert read_response(http.file).status == 400
    assert publish(server.port, "app.after", 1).status == 202


def test_oversized_request_body_is_413_without_reading_it(make_server):
    server = make_server("app", "--max-event-size", "1KiB")
    with Http(server.port) as http:
        http.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
        assert read_response(http.file).status == 413


def test_metrics_in_prometheus_format(server):
    publish(server.port, "app.m", 1)
    publish(server.port, "app.m", 2)
    response = request(server.port, "GET", "/metrics")
    assert response.status == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.body.decode()
    assert 'busd_events_published_total{namespace="app"} 2' in text
    assert 'busd_log_events{namespace="app"} 2' in text
    assert "# TYPE busd_consumers gauge" in text
