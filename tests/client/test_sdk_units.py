"""The SDK's I/O-free parts: payload rules, durations, SSE decoding, resume bookkeeping,
error mapping. (Everything that talks to a server is in the other test_sdk_* files.)"""

from __future__ import annotations

import re
import ssl
from datetime import timedelta

import orjson
import pytest

from busd import (
    BadRequestError,
    BusError,
    Client,
    ConflictError,
    ForbiddenError,
    PayloadTooLargeError,
    ServerError,
    StorageError,
    UnauthorizedError,
)
from busd.client._events import Event
from busd.client._protocol import Run
from busd.client._sse import RESUME_AFTER, Resume, SSEDecoder
from busd.client._subscription import SubscriptionState
from busd.client._wire import (
    encode_batch,
    encode_data,
    encode_event,
    encode_raw_batch,
    go_duration,
    group_target,
    new_inbox,
    split_url,
    subscribe_target,
)
from busd.client.errors import error_for


@pytest.mark.parametrize("data, wire", [
    ({"user_id": "123"}, b'{"user_id":"123"}'),
    ("important", b'"important"'),               # not JSON: a JSON string
    ('{"a": 1}', b'{"a": 1}'),                   # valid JSON text: as it is, byte for byte
    ("123", b"123"),                             # the Go SDK's rule, literally
    (b'[1, 2]', b'[1, 2]'),
    (b"plain bytes", b'"plain bytes"'),
    (42, b"42"),
    ([1, "x"], b'[1,"x"]'),
    (True, b"true"),
    (None, None),                                # no payload at all
    (b'"\\ud800"', b'"\\ud800"'),                  # a lone surrogate escape is JSON too
    ('["\\udc00x"]', b'["\\udc00x"]'),
    (b"NaN", b'"NaN"'),                          # not JSON (the stdlib parser would take it)
])
def test_payload_rules_follow_the_go_sdk(data, wire):
    assert encode_data(data) == wire


def test_event_body_omits_empty_fields_and_never_reencodes_the_payload():
    body = encode_event("app.x", '{"b":2, "a":1}', key="k", trace_id="t",
                        response_subject="_bus_.x")
    assert body == (b'{"subject":"app.x","key":"k","trace_id":"t",'
                    b'"response_subject":"_bus_.x","payload":{"b":2, "a":1}}')
    assert encode_event("app.x") == b'{"subject":"app.x"}'  # a confirmation: no payload


def test_batch_body_and_item_checks():
    body, n = encode_batch([{"subject": "app.b", "data": {"id": 1}},
                            {"subject": "app.b", "data": 2, "key": "o-2"}])
    assert n == 2
    assert orjson.loads(body) == [{"subject": "app.b", "payload": {"id": 1}},
                                  {"subject": "app.b", "key": "o-2", "payload": 2}]
    with pytest.raises(TypeError, match="payload"):
        encode_batch([{"subject": "app.b", "payload": 1}])
    with pytest.raises(ValueError):
        encode_batch([])


@pytest.mark.parametrize("value, wire", [
    (5, "5000ms"), (0.25, "250ms"), (timedelta(minutes=1, seconds=30), "90000ms"),
    ("1m30s", "90000ms"), ("500ms", "500ms"),
])
def test_redelivery_accepts_seconds_timedelta_and_go_durations(value, wire):
    assert go_duration(value) == wire


def test_several_patterns_and_max_pending_reach_the_query():
    assert subscribe_target(["app.a.*", "app.b>"]).startswith(
        "/?subject=app.a.%2A&subject=app.b%3E&start=newest")
    assert group_target(("orders.a", "orders.b"), "g", max_pending=7) == (
        "/?subject=orders.a&subject=orders.b&group=g&start=newest&max_pending=7")
    with pytest.raises(ValueError, match="at least one"):
        subscribe_target([])


def test_bad_durations_and_urls_are_refused():
    with pytest.raises(ValueError):
        go_duration("5 parsecs")
    with pytest.raises(ValueError):
        go_duration(-1)
    with pytest.raises(ValueError):
        split_url("ftp://example.org")
    assert split_url("localhost:2021") == (False, "localhost", 2021, "localhost:2021")


STREAM = (b"retry: 2000\n\nevent: consumer\ndata: c_dc4oe69ksdudh7j1p55g\n\n: ping\n\n"
          b"id: e_dc4oe6hksdudh7j1p56g\nevent: msg\ndata: {\"id\":\"e_dc4oe6hksdudh7j1p56g\"}\n\n"
          b"event: msg\ndata: {\"a\":\ndata: 1}\n\n"
          b"event: error\ndata: event e_x not found\n\n")


def test_sse_decoder_gives_the_same_messages_however_the_bytes_are_cut():
    whole = SSEDecoder()
    whole.feed(STREAM)
    expected = list(whole.messages)
    assert expected == [
        (b"consumer", None, b"c_dc4oe69ksdudh7j1p55g"),
        (b"msg", b"e_dc4oe6hksdudh7j1p56g", b'{"id":"e_dc4oe6hksdudh7j1p56g"}'),
        (b"msg", None, b'{"a":\n1}'),
        (b"error", None, b"event e_x not found"),
    ]
    for cut in range(1, len(STREAM)):
        for stream in (STREAM, STREAM.replace(b"\n", b"\r\n")):
            d = SSEDecoder()
            d.feed(stream[:cut])
            d.feed(stream[cut:])
            assert list(d.messages) == expected, cut


def test_resume_with_ack_none_is_the_last_event_handed_out():
    r = Resume(manual=False, redelivery_count=None)
    assert r.reconnecting() is None
    assert r.delivered("e_1") and r.delivered("e_2")
    assert r.reconnecting() == "e_2"


def test_resume_with_manual_ack_is_the_end_of_the_acked_prefix():
    r = Resume(manual=True, redelivery_count=None)
    for event_id in ("e_1", "e_2", "e_3"):
        assert r.delivered(event_id)
    r.acked("e_1")
    r.acked("e_3")                      # out of order
    assert r.reconnecting() == "e_1"    # e_2 is not acked: it must come back
    assert r.delivered("e_2")           # redelivered by the new consumer: shown
    assert not r.delivered("e_3")       # acked before the reconnect: hidden
    r.acked("e_2")
    assert r.reconnecting() == "e_2"


def test_resume_skips_an_event_the_server_gave_up_on():
    r = Resume(manual=True, redelivery_count=2)
    assert r.delivered("e_1") and r.delivered("e_1")   # 2 deliveries: the server skips it next
    assert r.delivered("e_2")
    r.acked("e_2")
    assert r.reconnecting() == "e_2"


def test_resume_after_comment_is_decoded_and_other_comments_are_not():
    d = SSEDecoder()
    d.feed(b"retry: 2000\n\n: resume-after e_dc4oe6hksdudh7j1p56g\n\n: ping\n\n"
           b": resume-after oldest\n\n")
    assert list(d.messages) == [(RESUME_AFTER, None, b"e_dc4oe6hksdudh7j1p56g"),
                                (RESUME_AFTER, None, b"oldest")]


@pytest.mark.parametrize("manual", [False, True])
def test_resume_after_hint_counts_only_until_an_event_is_delivered(manual):
    state = SubscriptionState(subscribe_target("app.>", ack="manual" if manual else "none",
                                               max_inflight=5),
                              manual, None, True, None, None)
    assert state.reconnect_request() == (state.target, None)   # no hint: as first asked
    state.take((RESUME_AFTER, None, b"oldest"), object, None)
    target, last_id = state.reconnect_request()
    assert last_id is None and target == state.target.replace("start=newest", "start=oldest")
    assert "ack=" in target and "max_inflight=5" in target
    state.take((RESUME_AFTER, None, b"e_1"), object, None)     # the reconnected stream's
    assert state.reconnect_request() == (state.target, "e_1")
    state.take((b"msg", b"e_2", b'{"id": "e_2", "subject": "app.x"}'), Event, None)
    state.take((RESUME_AFTER, None, b"e_9"), object, None)     # too late: ignored
    # ack=none: after the event handed out; manual: e_2 is not acked, so after the hint
    assert state.reconnect_request() == (state.target, "e_1" if manual else "e_2")
    if manual:   # the new consumer redelivers e_2; once acked, it is the resume point
        state.take((b"msg", b"e_2", b'{"id": "e_2", "subject": "app.x"}'), Event, None)
        state.resume.acked("e_2")
        assert state.reconnect_request() == (state.target, "e_2")


@pytest.mark.parametrize("status, cls", [
    (400, BadRequestError), (401, UnauthorizedError), (403, ForbiddenError),
    (409, ConflictError), (413, PayloadTooLargeError), (507, StorageError),
    (500, ServerError), (503, ServerError), (418, BusError),
])
def test_status_codes_map_to_error_classes_with_the_servers_reason(status, cls):
    error = error_for(status, b"the reason\n")
    assert type(error) is cls
    assert error.status == status and error.reason == "the reason"
    assert "the reason" in str(error)


def test_inbox_ids_are_128_random_bits_the_server_takes_as_subjects():
    from busd._core import validate_pattern, validate_subject

    inboxes = {new_inbox() for _ in range(1000)}
    assert len(inboxes) == 1000
    for inbox in inboxes:
        assert re.fullmatch(r"_bus_\.[0-9a-v]{26}", inbox), inbox
        validate_subject(inbox.encode())
        validate_pattern(inbox.encode())
    # every character of the alphabet turns up: it is the whole of base32hex
    assert set("".join(i[6:] for i in inboxes)) == set("0123456789abcdefghijklmnopqrstuv")


@pytest.mark.parametrize("url, parts", [
    ("http://127.0.0.1:2021", (False, "127.0.0.1", 2021, "127.0.0.1:2021")),
    ("bus.internal:8080/", (False, "bus.internal", 8080, "bus.internal:8080")),
    (":2021", (False, "localhost", 2021, "localhost:2021")),
    ("http://localhost", (False, "localhost", 80, "localhost")),
    ("http://[::1]:2021", (False, "::1", 2021, "[::1]:2021")),
    ("https://bus.internal", (True, "bus.internal", 443, "bus.internal")),
    ("https://bus.internal:2021/", (True, "bus.internal", 2021, "bus.internal:2021")),
])
def test_urls_as_bus_host_takes_them(url, parts):
    assert split_url(url) == parts


@pytest.mark.parametrize("url", ["ftp://bus.internal", "http://h:2021/api", "h:port",
                                 "https://h:2021?x=1"])
def test_urls_that_are_not_a_bus_root_are_refused(url):
    with pytest.raises(ValueError):
        split_url(url)


def test_tls_options_are_checked_when_the_client_is_made(tmp_path):
    missing, not_pem = tmp_path / "missing.pem", tmp_path / "not.pem"
    not_pem.write_text("not a certificate")
    Client("http://127.0.0.1:2021", ca_file=missing).close()  # plain HTTP: no TLS to set up
    with pytest.raises(FileNotFoundError):
        Client("https://127.0.0.1:2021", ca_file=missing)
    with pytest.raises(ssl.SSLError):
        Client("https://127.0.0.1:2021", ca_file=not_pem)
    with pytest.raises(ValueError, match="not both"):
        Client("https://127.0.0.1:2021", insecure=True, ssl_context=ssl.create_default_context())
    with pytest.raises(ValueError, match="unused"):
        Client("https://127.0.0.1:2021", insecure=True, ca_file=not_pem)


def test_raw_batches_go_as_they_are():
    records = [b'{"id":"e_1","subject":"app.x","created_at":"2026-01-01T00:00:00Z"}',
               b'{"subject":"app.x","payload":1}']
    assert encode_raw_batch(records) == (b"[" + b",".join(records) + b"]", 2)
    with pytest.raises(ValueError):
        encode_raw_batch([])


def test_an_event_keeps_the_record_bytes_it_came_from():
    raw = b'{"id":"e_1","subject":"app.x","payload":{"a":1},"created_at":"2026-01-01T00:00:00Z"}'
    event = Event(raw, "c_1", None)
    assert event.raw is raw and event.payload == {"a": 1} and event.consumer_id == "c_1"


def test_an_event_with_lone_surrogates_is_read_as_json_allows():
    """busd stores valid JSON with `\\ud800` as sent (as Bus does); orjson alone refuses it."""
    raw = b'{"id":"e_1","subject":"app.x","key":"\\udfff","payload":{"t":"\\ud800!"}}'
    event = Event(raw, "c_1", None)
    assert event.payload == {"t": "\ud800!"} and event.key == "\udfff"
    with pytest.raises(ValueError):
        Event(b'{"id":"e_1","subject":"app.x","payload":NaN}', "c_1", None)


def _flow(log):
    """A flow as the clients run them: ops out, outcomes (values or BusErrors) back in."""
    try:
        value = yield (log.append, "first")
    except BusError as exc:
        value = f"caught {exc.reason}"
    yield value                         # handed out
    got = yield (log.append, "second")
    return f"done {got}"


def test_run_hands_ops_out_and_outcomes_in():
    log = []
    run = Run(_flow(log))
    op = run.send(None)
    assert op == (log.append, "first") and run.op == op
    assert run.send(BusError("refused")) == "caught refused"  # a BusError is thrown in
    op = run.send(None)
    assert op == (log.append, "second")
    assert run.send(7) == "done 7" and run.op is None and run.ended

