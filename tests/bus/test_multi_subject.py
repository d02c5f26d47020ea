"""Several `subject=` patterns on one plain subscription (SPEC §3.8), over real sockets:
one cursor, each event once even when it matches several patterns, in log order, through
catch-up, the live tail, every start and manual ack."""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest
from busclient import SSE, ack, publish, request, wait_until

PATTERNS = ("app.a.*", "app.a.>", "app.b")  # app.a.x matches the first two
SUBJECTS = ("app.a.x", "app.b", "app.c", "app.a.x.y", "app.bb", "app.a", "app.b")
MATCHING = [n for n, s in enumerate(SUBJECTS) if s != "app.c" and s != "app.bb"]


def query(*extra: str, patterns=PATTERNS) -> str:
    return "&".join([*(f"subject={quote(p)}" for p in patterns), *extra])


def publish_all(port: int, offset: int = 0) -> list[str]:
    """Publish SUBJECTS once (payload = offset + position); their ids."""
    return [publish(port, subject, offset + n).headers["x-bus-event-id"]
            for n, subject in enumerate(SUBJECTS)]


def test_history_then_live_each_event_once_in_log_order(server):
    publish_all(server.port)
    with SSE(server.port, query("start=oldest")) as sse:
        assert [e["payload"] for e in sse.events(len(MATCHING))] == MATCHING
        publish_all(server.port, 100)  # the live tail honours the set too
        assert [e["payload"] for e in sse.events(len(MATCHING))] == [100 + n for n in MATCHING]
        assert sse.no_event(0.3)  # no second copy of what matched two patterns


def test_every_start_honours_the_set(server):
    ids = publish_all(server.port)
    with SSE(server.port, query(f"start={ids[1]}")) as sse:  # right after app.b
        assert [e["payload"] for e in sse.events(3)] == [3, 5, 6]
    with SSE(server.port, query("start=index:3")) as sse:
        assert [e["payload"] for e in sse.events(3)] == [3, 5, 6]
    with SSE(server.port, query("start=oldest"), headers={"Last-Event-ID": ids[3]}) as sse:
        assert [e["payload"] for e in sse.events(2)] == [5, 6]
    with SSE(server.port, "subject=app.>&start=oldest") as sse:
        stamp = sse.events(len(SUBJECTS))[4]["created_at"]  # app.bb's time
    with SSE(server.port, query(f"start={quote(stamp)}")) as sse:
        assert [e["payload"] for e in sse.events(2)] == [5, 6]


def test_manual_ack_and_redelivery_over_several_patterns(server):
    publish_all(server.port)
    with SSE(server.port, query("start=oldest", "ack=manual", "redelivery=200ms",
                                "redelivery_count=0")) as sse:
        first = sse.events(1)[0]
        assert first["payload"] == 0
        assert sse.events(1, timeout=3)[0]["id"] == first["id"]  # not acked: sent again
        assert ack(server.port, sse.consumer_id, first["id"]).status == 202
        delivered = [first["payload"]]
        while len(delivered) < len(MATCHING):
            event = sse.events(1)[0]
            if event["payload"] != delivered[-1]:  # (a redelivery may race the ack)
                delivered.append(event["payload"])
            assert ack(server.port, sse.consumer_id, event["id"]).status == 202
        assert delivered == MATCHING


def delivered_total(port: int) -> int:
    body = request(port, "GET", "/metrics").body.decode()
    found = re.search(r'^busd_events_delivered_total\{namespace="app"\} (\d+)', body, re.M)
    return int(found.group(1))


def test_an_event_matching_two_patterns_counts_as_one_delivery(server):
    with SSE(server.port, query()) as sse:
        sse.message(), sse.message()  # greeting, resume hint: the reader is live
        before = delivered_total(server.port)
        publish(server.port, "app.a.x", 1)  # matches app.a.* and app.a.>
        assert len(sse.events(1)) == 1 and sse.no_event(0.3)
        assert delivered_total(server.port) - before == 1
    before = delivered_total(server.port)
    with SSE(server.port, query("start=oldest")) as sse:  # catching up: the same count
        sse.events(1)
        wait_until(lambda: delivered_total(server.port) - before >= 1, timeout=2,
                   what="the catching-up delivery was not counted")
        assert delivered_total(server.port) - before == 1


def test_duplicate_patterns_are_one(server):
    publish(server.port, "app.b", 1)
    with SSE(server.port, query("start=oldest", patterns=("app.b", "app.b", "app.>"))) as sse:
        assert [e["payload"] for e in sse.events(1)] == [1] and sse.no_event(0.3)


@pytest.mark.parametrize("patterns, word", [
    (("app.a", "orders.a"), "one namespace"),
    (("app.a", "app..b"), "empty"),
    (("_bus_.x", "_bus_.y"), "one subject"),
    (tuple(f"app.p{n}" for n in range(33)), "at most 32"),
])
def test_bad_pattern_sets_are_refused_with_a_reason(server, patterns, word):
    answer = request(server.port, "GET", "/?" + query(patterns=patterns))
    assert answer.status == 400, answer
    assert answer.headers["content-type"].startswith("text/plain")
    assert word in answer.body.decode()


def test_the_bound_on_patterns_is_the_same_for_groups_and_exactly_32(server):
    most = tuple(f"app.p{n}" for n in range(32))
    with SSE(server.port, query(patterns=most)) as sse:
        assert sse.status == 200
        sse.message(), sse.message()
        publish(server.port, "app.p31", 1)
        assert [e["payload"] for e in sse.events(1)] == [1]
    answer = request(server.port, "GET", "/?" + query("group=g", patterns=(*most, "app.q")))
    assert answer.status == 400 and "at most 32" in answer.body.decode()
