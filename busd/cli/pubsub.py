"""`bus put`, `bus get`, `bus ack`: the online verbs, as Bus's CLI has them, on the SDK.

Data goes to stdout (reply payloads for put, one JSON event per line for get) and
everything about it — the stored event's id, the consumer id — goes to stderr, so the
output pipes cleanly into `jq` or a file.
"""

from __future__ import annotations

import sys

import orjson

from busd.cli.output import CommandError, note
from busd.client import BusTimeoutError, Client, PutResult


def _write_line(data: bytes) -> None:
    out = sys.stdout.buffer
    out.write(data + b"\n")
    out.flush()


def _stored(result: PutResult) -> None:
    """The stored event's id on stderr, then the payload of each reply on stdout."""
    note(f"id={result.id} index={result.index} created_at={result.created_at_text}")
    for reply in result.replies:
        record = orjson.loads(reply.raw)
        if "payload" in record:  # (an empty confirmation has none)
            _write_line(orjson.dumps(record["payload"]))


def put(client: Client, subject: str, data: str, trace_id: str | None = None,
        key: str | None = None, confirm: int = 0, timeout: float = 30.0) -> int:
    """Publish one event (`data` by the SDK's rule: JSON as it is, other text as a JSON
    string); with confirm N, wait for N consumers' replies and print them."""
    if not confirm:
        _stored(client.put(subject, data, key=key, trace_id=trace_id))
        return 0
    try:
        result = client.put(subject, data, key=key, trace_id=trace_id, confirm=confirm,
                            timeout=timeout)
    except BusTimeoutError as exc:
        stored = exc.result  # (None if the publish itself got no answer)
        if stored is not None:
            _stored(stored)
        raise CommandError(f"--confirm {confirm}: {len(stored.replies) if stored else 0} of "
                           f"{confirm} consumers confirmed within {timeout:g}s") from None
    _stored(result)
    return 0


def get(client: Client, pattern: str | tuple[str, ...], start: str = "newest", ack: str = "none",
        redelivery: str = "5s", redelivery_count: int = 3, count: int = 0,
        group: str | None = None, max_inflight: int = 1) -> int:
    """Subscribe and print every event as one JSON line; `auto` acks after printing. The
    subscription reconnects by itself, resuming after the last event (`Last-Event-ID`),
    or rejoining its `group` (whose members ack after printing unless `manual`); each
    connection's consumer id is noted on stderr."""
    manual = ack in ("auto", "manual")
    if group is not None and ack == "none":
        ack = "auto"
    printed, noted = 0, None
    if group is not None:
        subscription = client.get(pattern, start=start, group=group, max_inflight=max_inflight)
    else:
        subscription = client.get(pattern, start=start, ack="manual" if manual else "none",
                                  redelivery=redelivery if manual else None,
                                  redelivery_count=redelivery_count if manual else None,
                                  max_inflight=max_inflight if manual else None)
    with subscription as events:
        noted = _consumer(events.consumer_id, noted)
        for event in events:
            noted = _consumer(events.consumer_id, noted)
            _write_line(event.raw)
            if ack == "auto":
                event.ack()  # and, if its publisher waits for confirmations, confirm it
            printed += 1
            if printed == count:
                break
    return 0


def _consumer(consumer_id: str | None, noted: str | None) -> str | None:
    if consumer_id and consumer_id != noted:
        note(f"consumer_id={consumer_id}")
    return consumer_id or noted


def ack(client: Client, consumer_id: str, event_id: str) -> int:
    client.ack(consumer_id, event_id)
    return 0
