"""The bus protocol on top of HTTP: event bodies (the Go SDK's data rules), queries,
durations going out; results and errors coming back."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from busd.client._events import BatchResult, PutResult
from busd.client._http import Response
from busd.client.errors import error_for
from busd.wire import INBOX_PREFIX, id_problem, index_start, loads, parse_duration

_BATCH_FIELDS = frozenset(("subject", "data", "key", "trace_id"))


def encode_data(data: Any) -> bytes | None:
    """The JSON bytes of a payload, by the Go SDK's rules: bytes and str that are valid JSON
    go as they are, other str (and other bytes, as UTF-8 text) become JSON strings, any
    other value is JSON-encoded. None means no payload at all."""
    if data is None:
        return None
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        try:
            loads(raw)
            return raw
        except ValueError:
            return orjson.dumps(raw.decode("utf-8"))
    if isinstance(data, str):
        try:
            loads(data)
            return data.encode()
        except ValueError:
            return orjson.dumps(data)
    return orjson.dumps(data)


def event_object(subject: str, data: Any = None, key: str | None = None,
                 trace_id: str | None = None, response_subject: str | None = None) -> dict:
    """One event as the dict that `orjson.dumps` turns into a publish body."""
    if not isinstance(subject, str) or not subject:
        raise ValueError("subject must be a non-empty string")
    event: dict[str, Any] = {"subject": subject}
    if key:
        event["key"] = key
    if trace_id:
        event["trace_id"] = trace_id
    if response_subject:
        event["response_subject"] = response_subject
    payload = encode_data(data)
    if payload is not None:
        event["payload"] = orjson.Fragment(payload)
    return event


def encode_event(subject: str, data: Any = None, key: str | None = None,
                 trace_id: str | None = None, response_subject: str | None = None) -> bytes:
    return orjson.dumps(event_object(subject, data, key, trace_id, response_subject))


def encode_batch(items: Iterable[Mapping[str, Any]]) -> tuple[bytes, int]:
    """A batch body from dicts with `subject`, `data` and optional `key`, `trace_id`."""
    events = []
    for item in items:
        unknown = set(item) - _BATCH_FIELDS
        if unknown:
            raise TypeError(f"unknown batch item field(s) {sorted(unknown)}; "
                            f"use {sorted(_BATCH_FIELDS)}")
        if "subject" not in item:
            raise ValueError("every batch item needs a subject")
        events.append(event_object(item["subject"], item.get("data"), item.get("key"),
                                   item.get("trace_id")))
    if not events:
        raise ValueError("a batch needs at least one event")
    return orjson.dumps(events), len(events)


def encode_raw_batch(events: Iterable[bytes]) -> tuple[bytes, int]:
    """A batch body from events already encoded as JSON objects (e.g. dumped records)."""
    records = list(events)
    if not records:
        raise ValueError("a batch needs at least one event")
    return b"[" + b",".join(records) + b"]", len(records)


def new_inbox() -> str:
    """A fresh inbox subject `_bus_.<id>` for replies and confirmations: 128 random bits,
    so nobody can guess it and answer in the responder's place, in lowercase base32hex
    (0-9a-v), which subjects accept."""
    token = base64.b32hexencode(secrets.token_bytes(16)).decode().rstrip("=")
    return INBOX_PREFIX + token.lower()


def seconds(value: float | int | timedelta | str) -> float:
    """A duration given as seconds, a timedelta or a Go duration string (`500ms`, `1m30s`)."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"a duration must be seconds, a timedelta or a Go duration string, "
                    f"not {type(value).__name__}")


def go_duration(value: float | int | timedelta | str) -> str:
    """A duration as Go's time.ParseDuration reads it (whole milliseconds)."""
    secs = seconds(value)
    if secs < 0:
        raise ValueError("a duration must not be negative")
    return f"{round(secs * 1000)}ms"


def subjects_query(subject: str | Sequence[str]) -> str:
    """`subject=…` once per pattern: one pattern, or several of one namespace (each
    matching event comes once)."""
    patterns = [subject] if isinstance(subject, str) else list(subject)
    if not patterns:
        raise ValueError("subscribe to at least one subject pattern")
    return "&".join(f"subject={quote(pattern, safe='')}" for pattern in patterns)


def _options(*options: tuple[str, Any, Callable[[Any], object]]) -> str:
    """`&name=shown value` for each option that is set: None leaves it to the server."""
    return "".join(f"&{name}={show(value)}" for name, value, show in options
                   if value is not None)


def subscribe_target(subject: str | Sequence[str], start: str = "newest", ack: str = "none",
                     redelivery: float | int | timedelta | str | None = None,
                     redelivery_count: int | None = None,
                     max_inflight: int | None = None) -> str:
    """The request target of `GET /?subject=…` (start is sent only on the first connect;
    reconnects send `Last-Event-ID`, which the server lets override it)."""
    if ack not in ("none", "manual"):
        raise ValueError(f"ack must be 'none' or 'manual', not {ack!r}")
    if not (start in ("oldest", "newest") or id_problem(start.encode()) is None
            or index_start(start) is not None):
        raise ValueError(f"start must be 'oldest', 'newest', an event id or index:<n>, "
                         f"not {start!r}")
    return (f"/?{subjects_query(subject)}&start={quote(start, safe='')}&ack={ack}"
            + _options(("redelivery", redelivery, go_duration),
                       ("redelivery_count", redelivery_count, int),
                       ("max_inflight", max_inflight, int)))


def ack_target(consumer_id: str, event_id: str) -> str:
    return f"/?consumer_id={quote(consumer_id, safe='')}&event_id={quote(event_id, safe='')}"


def group_target(subject: str | Sequence[str], group: str, start: str = "newest",
                 max_inflight: int | None = None, ack_wait: float | timedelta | str | None = None,
                 max_deliver: int | None = None,
                 backoff: list[float | timedelta | str] | None = None,
                 dead_letter: str | None = None, max_pending: int | None = None) -> str:
    """The request target that joins (or creates) a consumer group; the settings only
    matter on creation (SPEC §3.7)."""
    return (f"/?{subjects_query(subject)}&group={quote(group, safe='')}"
            f"&start={quote(start, safe='')}"
            + _options(("max_inflight", max_inflight, int),
                       ("ack_wait", ack_wait, go_duration),
                       ("max_deliver", max_deliver, int),
                       ("backoff", backoff or None,
                        lambda steps: ",".join(go_duration(step) for step in steps)),
                       ("dead_letter", dead_letter or None, lambda name: quote(name, safe="")),
                       ("max_pending", max_pending, int)))


def settle_target(consumer_id: str, event_id: str, action: str,
                  delay: float | timedelta | str | None = None) -> str:
    """A group member's nak (after `delay`), term or progress."""
    return (ack_target(consumer_id, event_id) + f"&action={action}"
            + _options(("delay", delay, go_duration)))


def split_url(url: str) -> tuple[bool, str, int, str]:
    """(TLS or not, host, port, Host header) of the server's root: `http[s]://host[:port]`,
    `host[:port]` or `:port` (plain HTTP, on localhost), as `bus --host` takes it too."""
    text = url.strip()
    if text.startswith(":"):
        text = "localhost" + text
    parts = urlsplit(text if "://" in text else "http://" + text)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"only http:// and https:// URLs are supported, not {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"the URL must be the server's root (http[s]://host:port), not {url!r}")
    tls = parts.scheme == "https"
    try:
        port = parts.port or (443 if tls else 80)
    except ValueError as exc:
        raise ValueError(f"invalid URL {url!r}: {exc}") from None
    host = parts.hostname or "localhost"
    return tls, host, port, parts.netloc or host


def put_result(resp: Response) -> PutResult:
    """The `PutResult` of a `202` to a single publish, or the server's error raised."""
    if resp.status != 202:
        raise error_for(resp.status, resp.body)
    index = resp.header(b"x-bus-event-index")
    return PutResult(resp.header(b"x-bus-event-id"), int(index) if index else -1,
                     resp.header(b"x-bus-event-created-at"))


def batch_result(resp: Response, count: int) -> BatchResult:
    """The `BatchResult` of a `202` to a batch (Bus, in Go, answers with no body)."""
    if resp.status != 202:
        raise error_for(resp.status, resp.body)
    body = resp.body
    if not body:
        return BatchResult(count, -1, [])
    answer = orjson.loads(body)
    return BatchResult(answer["count"], answer["first_index"], answer["ids"])


def ack_result(resp: Response) -> None:
    if resp.status != 202:
        raise error_for(resp.status, resp.body)


def groups_target(namespace: str | None = None, name: str | None = None) -> str:
    """GET/DELETE /groups, narrowed to a namespace and a group name."""
    query = [f"{key}={quote(value, safe='')}" for key, value in
             (("namespace", namespace), ("name", name)) if value]
    return "/groups" + ("?" + "&".join(query) if query else "")


def json_result(resp: Response) -> Any:
    """The JSON body of a 200, or the server's error raised."""
    if resp.status != 200:
        raise error_for(resp.status, resp.body)
    return orjson.loads(resp.body)


def health_result(resp: Response) -> dict | None:
    """busd's `/healthz` report, or None from a server that has none (Bus, in Go)."""
    if resp.status == 404:
        return None
    if resp.status != 200:
        raise error_for(resp.status, resp.body)
    try:
        report = orjson.loads(resp.body)
    except orjson.JSONDecodeError:
        return None
    return report if isinstance(report, dict) else None
