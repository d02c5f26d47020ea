"""What the Go Bus SDK (v0.6.4) does against Go Bus works against busd (issue 13).

Each request is built the way the Go SDK sends it (its headers, its body shape with
`"id":""` and the zero `created_at`, URL-encoded queries with empty options), on the paths
the SDK uses: `POST //` for `NewClient("http://host/")`, `/bus/` and `/bus?…` for a client
with a base path.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from busclient import SSE, Http, read_response

GO_HEADERS = b"Host: 127.0.0.1\r\nUser-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n"


def go_put_request(path: str, subject: str, payload: bytes = b'{"n":1}') -> bytes:
    """A `Put` as the Go SDK sends it: payload JSON as given, the zero time for "unset"."""
    body = (b'{"id":"","subject":' + json.dumps(subject, ensure_ascii=False).encode()
            + b',"created_at":"0001-01-01T00:00:00Z","payload":' + payload + b"}")
    return (b"POST " + path.encode() + b" HTTP/1.1\r\n" + GO_HEADERS
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def go_get_request(path: str, subject: str, start: str = "", ack: str = "") -> bytes:
    query = f"ack={ack}&redelivery=0s&start={start}&subject={quote(subject, safe='')}"
    return (f"GET {path}?{query} HTTP/1.1\r\n".encode() + GO_HEADERS
            + b"Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n")


def go_ack_request(path: str, consumer_id: str, event_id: str) -> bytes:
    return (f"PUT {path}?consumer_id={consumer_id}&event_id={event_id} HTTP/1.1\r\n".encode()
            + GO_HEADERS + b"Content-Length: 0\r\n\r\n")


def send(port: int, raw: bytes):
    with Http(port) as http:
        http.send(raw)
        return read_response(http.file)


# -- 13.1: any path that is not one of busd's own is the Bus API ----------------------------

@pytest.mark.parametrize("post_path, get_path", [
    ("//", "//"), ("/bus/", "/bus"), ("/bus/", "/bus/"), ("/", "/bus/v1/"),
])
def test_the_bus_api_is_served_on_any_path(server, post_path, get_path):
    with SSE(server.port, raw_request=go_get_request(get_path, "app.p", ack="manual")) as sse:
        assert sse.status == 200 and sse.headers["content-type"] == "text/event-stream"
        answer = send(server.port, go_put_request(post_path, "app.p"))
        assert answer.status == 202, answer
        (record,) = sse.events(1)
        assert record["id"] == answer.headers["x-bus-event-id"]
        acked = send(server.port, go_ack_request(post_path, sse.consumer_id, record["id"]))
        assert acked.status == 202, acked


def test_busds_own_endpoints_stay_its_own(server):
    with Http(server.port) as http:
        for path, status in (("/healthz", 200), ("/metrics", 200), ("/healthz/x", 404),
                             ("/metrics/", 404), ("/ui/nothing/here", 404)):
            http.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert read_response(http.file).status == status, path
        # a POST there is no publish: the event is not stored
        http.send(go_put_request("/healthz", "app.p"))
        assert read_response(http.file).status == 405
        http.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        health = json.loads(read_response(http.file).body)
        assert health["namespaces"]["app"]["events"] == 0


def test_other_methods_on_an_api_path_are_405_with_allow(server):
    answer = send(server.port, b"DELETE /bus/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.status == 405 and answer.headers["allow"] == "GET, POST, PUT, OPTIONS"


# -- 13.2: `>` matches zero or more trailing segments ------------------------------------------

def test_a_last_wildcard_takes_zero_segments_too(server):
    subjects = ["app.x", "app.x.y", "app.x.y.z", "app.xy", "app.y"]
    for subject in subjects[:3]:
        assert send(server.port, go_put_request("/", subject)).status == 202
    with SSE(server.port, raw_request=go_get_request("/", "app.x.>", start="oldest")) as sse:
        assert [r["subject"] for r in sse.events(3)] == subjects[:3]  # from history
        for subject in subjects:
            assert send(server.port, go_put_request("/", subject)).status == 202
        assert [r["subject"] for r in sse.events(3)] == subjects[:3]  # and live
        assert sse.no_event(0.3)


# -- 13.3: a malformed start= is an error event, as in Bus -------------------------------------

def test_a_start_id_the_go_sdk_sends_is_answered_with_an_error_event(server):
    with SSE(server.port, raw_request=go_get_request("/", "app.>", start="e_doesnotexist")) as sse:
        assert sse.status == 200
        messages = [sse.message(), sse.message()]
        assert [m["event"] for m in messages] == ["consumer", "error"]
        assert "e_doesnotexist" in messages[1]["data"]
        assert sse.message() is None and sse.ended


# -- 13.6: lone-surrogate escapes are JSON ------------------------------------------------------

def test_a_lone_surrogate_payload_is_stored_as_sent(server):
    payload = b'{"text":"\\ud800 and \\udfff\\ud800"}'
    with SSE(server.port, raw_request=go_get_request("/", "app.s")) as sse:
        assert send(server.port, go_put_request("/", "app.s", payload)).status == 202
        message = sse.message()
        while message.get("event") != "msg":  # the greeting, the resume hint
            message = sse.message()
        assert b'"payload":' + payload in message["data"].encode()
    refused = send(server.port, go_put_request("/", "app.s", b"{bad}"))
    assert refused.status == 400 and refused.body.startswith(b"invalid JSON at byte")


# -- 13.7: subjects follow NATS's rules ----------------------------------------------------------

@pytest.mark.parametrize("subject", ["app.caf\u00e9", "app.b$", "app.\U0001f600.#", "app.%"])
def test_nats_subjects_are_published_and_subscribed(server, subject):
    with SSE(server.port, raw_request=go_get_request("/", subject)) as exact, \
            SSE(server.port, raw_request=go_get_request("/", "app.*.>")) as wide:
        answer = send(server.port, go_put_request("/", subject))
        assert answer.status == 202, answer
        assert [r["subject"] for r in exact.events(1)] == [subject]
        assert [r["subject"] for r in wide.events(1)] == [subject]


@pytest.mark.parametrize("subject, reason", [
    ("app..b", "empty segment in subject 'app..b'"),
    ("app.b.", "empty segment in subject 'app.b.'"),
    ("app.b c", "invalid character ' ' in subject 'app.b c'"),
    ("app.b\u00a0c", "invalid character 'U+00A0' in subject"),
    ("app.b\u2028", "invalid character 'U+2028' in subject"),
    ('app.b"', "invalid character '\"' in subject"),
])
def test_subjects_against_the_rules_are_400_with_the_reason(server, subject, reason):
    answer = send(server.port, go_put_request("/", subject))
    assert answer.status == 400 and reason in answer.body.decode(), answer
    assert answer.body.count(b"\n") == 1
    subscribed = send(server.port, go_get_request("/", subject))
    assert subscribed.status == 400 and reason.replace("subject", "pattern") in \
        subscribed.body.decode(), subscribed
