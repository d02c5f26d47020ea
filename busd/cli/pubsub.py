"""`bus put`, `bus get`, `bus ack`: the online verbs, as Bus's CLI has them.

Data goes to stdout (reply payloads for put, one JSON event per line for get) and
everything about it — the stored event's id, the consumer id — goes to stderr, so the
output pipes cleanly into `jq` or a file.
"""

from __future__ import annotations

import sys
import time

import orjson

from busd._core import new_xid
from busd.cli.http import BusHttp
from busd.cli.output import CommandError, note


def payload_bytes(data: str) -> bytes:
    """`--data` as a JSON payload: as given when it is JSON, else as a JSON string."""
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return orjson.dumps(data)
    return data.strip().encode()


def _event_body(subject: str, payload: bytes, trace_id: str | None, key: str | None,
                response_subject: str | None) -> bytes:
    parts = [b'{"subject":' + orjson.dumps(subject)]
    for name, value in (("trace_id", trace_id), ("key", key),
                        ("response_subject", response_subject)):
        if value:
            parts.append(b'"' + name.encode() + b'":' + orjson.dumps(value))
    parts.append(b'"payload":' + payload)
    return b",".join(parts) + b"}"


def _write_line(data: bytes) -> None:
    out = sys.stdout.buffer
    out.write(data + b"\n")
    out.flush()


def put(bus: BusHttp, subject: str, data: str, trace_id: str | None = None,
        key: str | None = None, confirm: int = 0, timeout: float = 30.0) -> int:
    """Publish one event; with confirm N, wait for N consumers' replies and print them."""
    payload = payload_bytes(data)
    if confirm <= 0:
        answer = bus.publish(_event_body(subject, payload, trace_id, key, None))
        note(f"id={answer['id']} index={answer['index']} created_at={answer['created_at']}")
        return 0
    inbox = "_bus_." + new_xid().decode()
    with bus.subscribe(inbox, timeout=timeout) as replies:  # listening before publishing
        answer = bus.publish(_event_body(subject, payload, trace_id, key, inbox))
        note(f"id={answer['id']} index={answer['index']} created_at={answer['created_at']}")
        deadline = time.monotonic() + timeout
        got = 0
        try:
            for message in replies.messages():
                if message.event == "msg":
                    reply = orjson.loads(message.data)
                    if "payload" in reply:
                        _write_line(orjson.dumps(reply["payload"]))
                    got += 1
                    if got >= confirm:
                        return 0
                replies.settimeout(max(0.001, deadline - time.monotonic()))
        except TimeoutError:
            pass
        raise CommandError(f"--confirm {confirm}: {got} of {confirm} consumers confirmed "
                           f"within {timeout:g}s")


def get(bus: BusHttp, pattern: str, start: str = "newest", ack: str = "none",
        redelivery: str = "5s", redelivery_count: int = 3, count: int = 0) -> int:
    """Subscribe and print every event as one JSON line; `auto` acks after printing."""
    manual = ack in ("auto", "manual")
    stream = bus.subscribe(pattern, start, "manual" if manual else "none",
                           redelivery if manual else "",
                           redelivery_count if manual else None, timeout=None)
    acker = BusHttp(bus.url, token=bus.token) if ack == "auto" else None
    printed = 0
    with stream:
        if stream.consumer_id:
            note(f"consumer_id={stream.consumer_id}")
        for message in stream.messages():
            if message.event == "consumer" and not stream.consumer_id:
                stream.consumer_id = message.data.decode()
                note(f"consumer_id={stream.consumer_id}")
            elif message.event == "error":
                raise CommandError(message.data.decode("utf-8", "replace"))
            elif message.event == "msg":
                _write_line(message.data)
                if acker is not None:
                    _acknowledge(acker, stream.consumer_id, message)
                printed += 1
                if count and printed >= count:
                    return 0
    raise CommandError("the bus ended the stream")


def _acknowledge(bus: BusHttp, consumer_id: str, message) -> None:
    """Ack an event and, if its publisher waits for confirmations, confirm it (as the Go
    SDK does: an event without payload on the event's response_subject)."""
    bus.ack(consumer_id, message.id)
    if b'"response_subject":' in message.data:
        inbox = orjson.loads(message.data).get("response_subject")
        if inbox:
            bus.publish({"subject": inbox})


def ack(bus: BusHttp, consumer_id: str, event_id: str) -> int:
    bus.ack(consumer_id, event_id)
    return 0
