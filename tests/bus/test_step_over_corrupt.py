"""A corrupt record stops every reader that reaches it, each time: the stream's `error`
event says how to step over it (`start=index:<n>`), a client that does so gets everything
after it, and nothing corrupt is ever served. The SDK raises CorruptEventError with the
resume point."""

from __future__ import annotations

import pytest
from busclient import SSE, Http, ack, request
from store.test_faults import frames

import busd

CORRUPT = 10


@pytest.fixture
def corrupt_server(make_server):
    """A server whose app namespace holds 20 events, the one at index 10 corrupt on disk."""
    server = make_server("app")
    with Http(server.port) as http:
        ids = [http.request("POST", "/", f'{{"subject":"app.c","payload":{n}}}'.encode()
                            ).headers["x-bus-event-id"] for n in range(20)]
    assert server.stop() == 0
    (segment,) = sorted((server.path / "app").glob("*.seg"))
    offset, length = frames(segment)[CORRUPT]
    data = bytearray(segment.read_bytes())
    data[offset + 8 + length // 2] ^= 0x20
    segment.write_bytes(bytes(data))
    server.start()
    server.ids = ids
    return server


def error_after(stream: SSE, count: int) -> str:
    """The `error` event's data after `count` events (no other `msg` in between)."""
    assert [e["payload"] for e in stream.events(count)] == list(range(count))
    message = stream.message()
    while message and message.get("event") != "error":
        assert message.get("event") != "msg", f"served past the corrupt record: {message}"
        message = stream.message()
    assert message is not None, "the stream ended without an error event"
    return message["data"]


@pytest.mark.parametrize("ack_mode", ["none", "manual"])
def test_the_error_says_how_to_step_over_and_doing_so_resumes_past_it(corrupt_server,
                                                                     ack_mode):
    port = corrupt_server.port
    query = f"subject=app.>&ack={ack_mode}&max_inflight=100"
    for _ in range(2):  # every reconnect from before it stops there again
        with SSE(port, query + "&start=oldest") as stream:
            reason = error_after(stream, CORRUPT)
            for event_id in corrupt_server.ids[:CORRUPT]:
                ack(port, stream.consumer_id, event_id)
    assert f"corrupt record at index {CORRUPT}" in reason
    assert f"start=index:{CORRUPT + 1}" in reason, reason
    with SSE(port, query + f"&start=index:{CORRUPT + 1}") as stream:
        assert [e["payload"] for e in stream.events(9)] == list(range(CORRUPT + 1, 20))
    with SSE(port, query + f"&start=index:{CORRUPT}") as stream:  # asking for it again
        assert error_after(stream, 0) == reason


def test_index_starts_are_checked(corrupt_server):
    port = corrupt_server.port
    with SSE(port, "subject=app.>&start=index:20") as stream:  # the head: live from there
        assert request(port, "POST", "/", {"subject": "app.c", "payload": 20}).status == 202
        assert [e["payload"] for e in stream.events(1)] == [20]
    with SSE(port, "subject=app.>&start=index:99") as stream:
        assert "index 99 is beyond the head" in error_after(stream, 0)
    for bad in ("index:", "index:-1", "index:1x", "index:" + "9" * 19):  # as Bus: an error
        with SSE(port, f"subject=app.>&start={bad}") as stream:
            assert "or index:<n>" in error_after(stream, 0), bad
    answer = request(port, "GET", "/?subject=app.>", headers={"Last-Event-ID": "index:3"})
    assert answer.status == 400  # a resume names an event, never an index


def test_the_sdk_raises_corrupt_event_error_with_the_resume_point(corrupt_server):
    with busd.Client(f"http://127.0.0.1:{corrupt_server.port}") as client:
        got = []
        with pytest.raises(busd.CorruptEventError) as caught:
            for event in client.get("app.>", start="oldest", idle_timeout=5):
                got.append(event.payload)
        assert got == list(range(CORRUPT))
        assert caught.value.index == CORRUPT
        assert caught.value.resume_start == f"index:{CORRUPT + 1}"
        assert isinstance(caught.value, busd.SubscriptionError)
        rest = [event.payload for event in client.get(
            "app.>", start=caught.value.resume_start, idle_timeout=1)]
        assert rest == list(range(CORRUPT + 1, 20))
