"""GET / (SSE), PUT / (ack) and inbox subjects — SPEC §3.2–3.4 over real sockets."""

from __future__ import annotations

import threading
import time
from urllib.parse import unquote

import pytest
from busclient import SSE, Http, ack, build_request, publish, read_response, request


def test_stream_head_greeting_and_framing(server):
    with SSE(server.port, "subject=app.>") as sse:
        assert sse.status == 200
        assert sse.headers["content-type"] == "text/event-stream"
        assert sse.headers["cache-control"] == "no-cache"
        assert sse.headers["transfer-encoding"] == "chunked"
        assert sse.headers["x-accel-buffering"] == "no"
        assert sse.headers["access-control-allow-origin"] == "*"
        assert sse.consumer_id.startswith("c_") and len(sse.consumer_id) == 22
        # one message: a lone `retry:` block would be an empty event to httpx-sse
        assert sse.message() == {"retry": "2000", "event": "consumer", "data": sse.consumer_id}
        assert sse.message() == {"comment": "resume-after oldest"}  # nothing before it
        publish(server.port, "app.x", {"a": 1})
        message = sse.message()
        assert set(message) == {"id", "event", "data"} and message["event"] == "msg"


def test_start_oldest_newest_and_resume_from_id(server):
    ids = [publish(server.port, "app.h", n).headers["x-bus-event-id"] for n in range(5)]
    with SSE(server.port, "subject=app.h&start=oldest") as sse:
        assert [r["id"] for r in sse.events(5)] == ids
    with SSE(server.port, f"subject=app.h&start={ids[1]}") as sse:
        assert [r["payload"] for r in sse.events(3)] == [2, 3, 4]
    with SSE(server.port, "subject=app.h&start=oldest",
             headers={"Last-Event-ID": ids[3]}) as sse:
        assert [r["payload"] for r in sse.events(1)] == [4]
    with SSE(server.port, "subject=app.h") as sse:  # default: newest
        sse.message(), sse.message()
        publish(server.port, "app.h", 5)
        assert [r["payload"] for r in sse.events(1)] == [5]


def greeting_and_hint(sse: SSE) -> str | None:
    """Read the greeting; the `: resume-after` comment's point (None if it did not come)."""
    assert sse.message() == {"retry": "2000", "event": "consumer", "data": sse.consumer_id}
    message = sse.message()
    if "comment" in message and message["comment"].startswith("resume-after "):
        return message["comment"].removeprefix("resume-after ")
    return None


def test_resume_after_comment_names_the_event_before_the_cursor(server):
    with SSE(server.port, "subject=app.>") as sse:  # newest, empty namespace
        assert greeting_and_hint(sse) == "oldest"
    ids = [publish(server.port, subject, n).headers["x-bus-event-id"]
           for n, subject in enumerate(["app.a", "app.b", "app.a", "app.b"])]
    cases = [
        ("subject=app.>", ids[3]),                        # newest: the last event
        ("subject=app.a", ids[3]),                        # whatever subject it has
        ("subject=app.>&start=oldest", "oldest"),
        (f"subject=app.>&start={ids[1]}", ids[1]),
        ("subject=app.a&ack=manual", ids[3]),
        (f"subject=app.a&ack=manual&start={ids[0]}", ids[0]),
    ]
    for query, point in cases:
        with SSE(server.port, query) as sse:
            assert greeting_and_hint(sse) == point, query
    with SSE(server.port, "subject=app.>", headers={"Last-Event-ID": ids[2]}) as sse:
        assert greeting_and_hint(sse) == ids[2]
        assert [r["id"] for r in sse.events(1)] == [ids[3]]  # and delivery goes on after it


def test_go_sdk_empty_parameters_mean_defaults(server):
    publish(server.port, "app.d", 1)
    with SSE(server.port, "ack=&redelivery=0s&start=&subject=app.%3E") as sse:
        assert sse.status == 200
        publish(server.port, "app.d", 2)
        assert [r["payload"] for r in sse.events(1)] == [2]  # newest: history not replayed


def test_unknown_start_id_is_an_error_event_then_end(server):
    publish(server.port, "app.e", 1)
    with SSE(server.port, "subject=app.e&start=e_d4o7ehksdud4d8c68bg0") as sse:
        assert sse.status == 200
        assert sse.message()["event"] == "consumer"
        error = sse.message()
        assert error["event"] == "error" and "not found" in error["data"]
        assert "id" not in error
        assert sse.message() is None and sse.ended


@pytest.mark.parametrize("start", ["e_doesnotexist", "yesterday", "oldest%0D", "e_" + "x" * 300])
def test_malformed_start_is_an_error_event_then_end_as_bus(server, start):
    """Bus answers `start=e_doesnotexist` with 200 and an `error` event naming it: the Go SDK
    hands its user that reason (a 400 would be `failed to connect after 3 attempts`)."""
    with SSE(server.port, f"subject=app.e&start={start}") as sse:
        assert sse.status == 200 and sse.headers["content-type"] == "text/event-stream"
        assert sse.message()["event"] == "consumer"
        error = sse.message()
        assert error["event"] == "error", error  # why: malformed, or (a free-form id) unknown
        assert "invalid start" in error["data"] or "not found" in error["data"], error
        assert repr(unquote(start))[1:-1][:10] in error["data"]
        assert sse.message() is None and sse.ended


def test_last_event_id_that_cannot_be_honoured_is_410_not_a_stream(server):
    """EventSource stops for good after a non-200 answer; after an `error` event it would
    reconnect with the same Last-Event-ID every 2 s, forever."""
    publish(server.port, "app.e", 1)
    unknown = "e_d4o7ehksdud4d8c68bg0"
    for query in ("subject=app.e", f"subject=app.e&start={unknown}", "subject=app.e&ack=manual"):
        response = request(server.port, "GET", "/?" + query,
                           headers={"Accept": "text/event-stream", "Last-Event-ID": unknown})
        assert response.status == 410, (query, response)
        assert response.headers["content-type"].startswith("text/plain")
        assert response.body == (f"cannot resume from Last-Event-ID: event {unknown} not "
                                 f"found in namespace app\n").encode()
        assert "x-bus-consumer-id" not in response.headers
    malformed = request(server.port, "GET", "/?subject=app.e", headers={"Last-Event-ID": "e_x"})
    assert malformed.status == 400 and b"invalid Last-Event-ID 'e_x'" in malformed.body
    # a pipelined request after the refused one is not answered before it (nor at all)
    with Http(server.port) as http:
        http.send(build_request("GET", "/?subject=app.e", None, {"Last-Event-ID": unknown})
                  + build_request("GET", "/healthz"))
        assert read_response(http.file).status == 410
        assert http.file.read() == b""


@pytest.mark.parametrize("pattern, subjects, expected", [
    ("orders.*", ["orders.created", "orders.eu.created", "orders.paid"],
     ["orders.created", "orders.paid"]),
    ("orders.>", ["orders.created", "orders.eu.created"], ["orders.created", "orders.eu.created"]),
    ("orders.*.created", ["orders.eu.created", "orders.eu.paid", "orders.us.created"],
     ["orders.eu.created", "orders.us.created"]),
    ("orders.created", ["orders.created", "orders.created.x"], ["orders.created"]),
])
def test_patterns_in_history_and_live(server, pattern, subjects, expected):
    for subject in subjects:
        publish(server.port, subject, "history")
    with SSE(server.port, f"subject={pattern}&start=oldest") as sse:
        assert [r["subject"] for r in sse.events(len(expected))] == expected
        for subject in subjects:
            publish(server.port, subject, "live")
        live = sse.events(len(expected))
        assert [(r["subject"], r["payload"]) for r in live] == [(s, "live") for s in expected]
        assert sse.no_event(0.3)


@pytest.mark.parametrize("query, reason", [
    ("subject=", "missing subject"),
    ("subject=*.x", "wildcard"),
    ("subject=app.>.x", ">"),
    ("subject=nope.x", "not declared"),
    ("subject=app.x&ack=sometimes", "invalid ack"),
    ("subject=app.x&ack=manual&redelivery=soon", "invalid redelivery"),
    ("subject=app.x&ack=manual&redelivery_count=three", "invalid redelivery_count"),
    ("subject=app.x&max_inflight=0", "max_inflight"),
    ("subject=_bus_.*", "wildcard"),
])
def test_invalid_subscription_is_400(server, query, reason):
    response = request(server.port, "GET", "/?" + query)
    assert response.status == 400, response
    assert reason in response.body.decode(), response.body


STRICT = [
    ("redelivery=1ns", "at least 100ms"),
    ("redelivery=99ms", "at least 100ms"),
    ("redelivery=0.05", "at least 100ms"),
    ("redelivery=nan", "invalid redelivery"),
    ("redelivery=inf", "invalid redelivery"),
    ("redelivery=1e9", "invalid redelivery"),
    ("redelivery=" + "9" * 400 + "s", "too large"),
    ("redelivery=-5s", "invalid redelivery"),
    ("redelivery=5s%0A", "invalid redelivery"),
    ("redelivery=%205s", "invalid redelivery"),
    ("max_inflight=1%0d%0a", "invalid max_inflight"),
    ("max_inflight=+2", "invalid max_inflight"),
    ("redelivery_count=3%0A", "invalid redelivery_count"),
    ("redelivery_count=1_0", "invalid redelivery_count"),
    ("ack=manual%0A", "invalid ack"),
]


def test_parameters_are_strict(server):
    """A floor for redelivery, nothing non-finite, no trailing control characters: each a
    400 with a one-line reason, with ack=manual or not. Zero means the default (the Go SDK
    sends redelivery=0s when unset)."""
    for ack_mode in ("manual", "none"):
        for option, reason in STRICT:
            query = f"subject=app.x&ack={ack_mode}&{option}"
            response = request(server.port, "GET", "/?" + query)
            assert response.status == 400, (query, response)
            assert response.headers["content-type"].startswith("text/plain")
            assert response.body.count(b"\n") == 1 and response.body.endswith(b"\n"), query
            assert reason in response.body.decode(), (query, response.body)
    for redelivery in ("", "0", "0s", "100ms", "0.1", "1m30s"):
        with SSE(server.port, f"subject=app.x&ack=manual&redelivery={redelivery}") as sse:
            assert sse.status == 200, redelivery


def test_zero_redelivery_means_five_seconds_not_zero(make_server):
    """The Go SDK sends `redelivery=0s` for "unset": it must mean the default (5s)."""
    server = make_server("app")
    publish(server.port, "app.z", 1)
    with SSE(server.port, "ack=manual&redelivery=0s&start=oldest&subject=app.z") as sse:
        assert [r["payload"] for r in sse.events(1)] == [1]
        assert sse.no_event(1.5), "redelivered long before the 5s default"
    with SSE(server.port, "ack=manual&redelivery=100ms&start=oldest&subject=app.z") as sse:
        assert len(sse.events(3, timeout=1.5)) == 3  # the floor itself works


def test_history_to_live_seam_has_no_gap_and_no_duplicate(server):
    """Subscribers join from `oldest` while four publishers write singles and batches as
    fast as they can, so group commits are in flight at the moment a consumer reaches the
    head and joins the live set: every stream gets the stored sequence exactly."""
    import json

    from busclient import Http

    workers, requests = 4, 400
    failures: list[str] = []

    def publisher(worker: int) -> None:
        try:
            with Http(server.port) as http:
                for n in range(requests):
                    size = 1 + n % 7  # singles and batches of up to 7
                    body = [{"subject": "app.seam", "payload": [worker, n, i]}
                            for i in range(size)]
                    answer = http.request("POST", "/", json.dumps(
                        body if size > 1 else body[0]).encode())
                    if answer.status != 202:
                        failures.append(f"worker {worker} request {n}: {answer}")
                        return
        except Exception as exc:  # noqa: BLE001 - reported by the test, not lost in a thread
            failures.append(f"worker {worker}: {exc!r}")

    threads = [threading.Thread(target=publisher, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    streams = []
    for _ in range(6):
        time.sleep(0.05)
        streams.append(SSE(server.port, "subject=app.>&start=oldest"))
    for thread in threads:
        thread.join(timeout=60)
    assert not failures, failures
    total = workers * sum(1 + n % 7 for n in range(requests))
    with SSE(server.port, "subject=app.>&start=oldest") as reference:
        stored = [r["id"] for r in reference.events(total, timeout=30)]
    assert len(set(stored)) == total
    for sse in streams:
        assert [r["id"] for r in sse.events(total, timeout=30)] == stored
        assert sse.no_event(0.2)
        sse.close()


def test_ping_comments_on_idle_streams(make_server):
    server = make_server("app", "--ping-interval", "1s")
    with SSE(server.port, "subject=app.x") as sse:
        sse.message(), sse.message()  # greeting, resume-after
        assert sse.message(timeout=4) == {"comment": "ping"}


def test_manual_ack_redelivers_until_count_then_skips(make_server):
    server = make_server("app")
    ids = [publish(server.port, "app.job", n).headers["x-bus-event-id"] for n in range(2)]
    with SSE(server.port, "subject=app.job&start=oldest&ack=manual&redelivery=400ms"
                          "&redelivery_count=3") as sse:
        started = time.monotonic()
        deliveries = sse.events(3, timeout=5)
        took = time.monotonic() - started
        assert [r["id"] for r in deliveries] == [ids[0]] * 3
        assert 0.7 < took < 2.0, f"3 deliveries 400ms apart took {took:.2f}s"
        # after the third delivery's redelivery period, event 0 is skipped and 1 arrives
        following = sse.events(1, timeout=3)[0]
        assert following["id"] == ids[1]
        assert time.monotonic() - started > 1.1
        assert ack(server.port, sse.consumer_id, ids[1]).status == 202
        assert sse.no_event(0.8), "an acked event must not be redelivered"


def test_manual_ack_sends_next_only_after_ack(server):
    ids = [publish(server.port, "app.q", n).headers["x-bus-event-id"] for n in range(3)]
    with SSE(server.port, "subject=app.q&start=oldest&ack=manual&redelivery=5s") as sse:
        assert sse.events(1)[0]["id"] == ids[0]
        time.sleep(0.3)
        assert ack(server.port, sse.consumer_id, ids[0]).status == 202
        assert ack(server.port, sse.consumer_id, ids[0]).status == 202  # idempotent
        assert sse.events(1)[0]["id"] == ids[1]
        ack(server.port, sse.consumer_id, ids[1])
        assert sse.events(1)[0]["id"] == ids[2]
        ack(server.port, sse.consumer_id, ids[2])
        publish(server.port, "app.q", "live")
        assert sse.events(1)[0]["payload"] == "live"


def test_manual_ack_one_in_flight_by_default_and_max_inflight(server):
    for n in range(4):
        publish(server.port, "app.m", n)
    with SSE(server.port, "subject=app.m&start=oldest&ack=manual&redelivery=5s") as sse:
        assert [r["payload"] for r in sse.events(1)] == [0]
        assert sse.no_event(0.4)
    with SSE(server.port, "subject=app.m&start=oldest&ack=manual&redelivery=5s"
                          "&max_inflight=3") as sse:
        first = sse.events(3)
        assert [r["payload"] for r in first] == [0, 1, 2]
        ack(server.port, sse.consumer_id, first[1]["id"])
        assert [r["payload"] for r in sse.events(1)] == [3]


@pytest.mark.parametrize("target", [
    "/?consumer_id=c_d4o7ehksdud4d8c68bg0",
    "/?event_id=e_d4o7ehksdud4d8c68bg0",
    "/?consumer_id=d4o7ehksdud4d8c68bg0&event_id=e_d4o7ehksdud4d8c68bg0",
    "/?consumer_id=&event_id=",
])
def test_malformed_ack_is_400(server, target):
    response = request(server.port, "PUT", target)
    assert response.status == 400 and response.body.count(b"\n") == 1, response


@pytest.mark.parametrize("consumer_id, event_id", [
    ("c_x", "e_d4o7ehksdud4d8c68bg0"), ("c_d4o7ehksdud4d8c68bg0", "e_nope"), ("c_", "e_"),
    ("c_d4o7ehksdud4d8c68bg0", "order-123"), ("c_not-ours", "my-custom-id-1"),
])
def test_acks_check_only_the_prefix_as_bus(server, consumer_id, event_id):
    """Bus takes an ack of any c_…/e_… value (202), and free-form event ids are acked."""
    assert ack(server.port, consumer_id, event_id).status == 202


def test_ack_of_unknown_consumer_is_202(server):
    assert ack(server.port, "c_d4o7ehksdud4d8c68bg0", "e_d4o7ehksdud4d8c68bg0").status == 202


def test_inbox_routes_in_memory_and_is_never_stored(server):
    inbox = "_bus_.d4o7ehksdud4d8c68bg0"
    with SSE(server.port, f"subject={inbox}&start=oldest") as first, \
            SSE(server.port, f"subject={inbox}") as second:
        first.message(), second.message()  # the greeting: both are registered
        response = publish(server.port, inbox, {"result": 30})
        assert response.status == 202 and response.headers["x-bus-event-index"] == "-1"
        for sse in (first, second):
            record = sse.events(1)[0]
            assert record["subject"] == inbox and record["payload"] == {"result": 30}
    health = request(server.port, "GET", "/healthz").json()
    assert all(ns["events"] == 0 for ns in health["namespaces"].values())
    with SSE(server.port, f"subject={inbox}&start=oldest") as late:
        assert late.no_event(0.3), "inbox events are not kept for later subscribers"


def test_request_reply_flow(server):
    """The client-side flow of SPEC §3.4: inbox first, then publish, responder acks + replies."""
    inbox = "_bus_.d4o7ehksdud4d8c68bg1"
    with SSE(server.port, "subject=math.add&ack=manual") as responder, \
            SSE(server.port, f"subject={inbox}") as requester:
        responder.message(), responder.message(), requester.message()
        publish(server.port, "math.add", {"A": 10, "B": 20}, response_subject=inbox)
        request_event = responder.events(1)[0]
        assert request_event["response_subject"] == inbox
        assert ack(server.port, responder.consumer_id, request_event["id"]).status == 202
        total = request_event["payload"]["A"] + request_event["payload"]["B"]
        publish(server.port, inbox, {"result": total})
        assert requester.events(1)[0]["payload"] == {"result": 30}
