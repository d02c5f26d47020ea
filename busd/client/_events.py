"""What the SDK hands back: `Event` (a delivered event), `PutResult`, `BatchResult`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from busd.wire import loads


def parse_time(text: str) -> datetime:
    """RFC 3339 (nanoseconds, `Z`) -> timezone-aware datetime (microsecond precision)."""
    return datetime.fromisoformat(text)


class PutResult:
    """The answer to a publish: the stored event's `id`, `index` (-1 for inbox subjects)
    and `created_at` (`created_at_text`: as the server wrote it, to the nanosecond); with
    `request_reply=True`, the `reply` and its decoded `payload`; with `request_reply` or
    `confirm`, every reply or confirmation in `replies`."""

    __slots__ = ("id", "index", "created_at_text", "payload", "reply", "replies")

    def __init__(self, event_id: str, index: int, created_at: str) -> None:
        self.id = event_id
        self.index = index
        self.created_at_text = created_at
        self.payload: Any = None
        self.reply: Event | None = None
        self.replies: list[Event] = []

    @property
    def created_at(self) -> datetime:
        return parse_time(self.created_at_text)

    def __repr__(self) -> str:
        return (f"PutResult(id={self.id!r}, index={self.index}, "
                f"created_at={self.created_at_text!r})")


class BatchResult:
    """The answer to a batch publish: how many events, the first one's index, and all ids."""

    __slots__ = ("count", "first_index", "ids")

    def __init__(self, count: int, first_index: int, ids: list[str]) -> None:
        self.count = count
        self.first_index = first_index
        self.ids = ids

    def __repr__(self) -> str:
        return f"BatchResult(count={self.count}, first_index={self.first_index})"


class Event:
    """An event delivered by a subscription.

    `payload` is the decoded JSON payload (None when the event has none), `created_at` a
    timezone-aware datetime, `consumer_id` the server-side consumer that delivered it, and
    `raw` the record's JSON bytes as the server sent them (what `bus dump` writes and
    `put_raw` takes back). `ack()` acknowledges it (with `ack="manual"`) and, if it carries
    a `response_subject` (a request, or a publish waiting for confirmations), sends the
    reply: `ack(data)` replies with `data`, `ack()` with an empty confirmation.

    From a consumer group (`get(..., group=)`): `deliveries` is how often the server has
    sent it (1 the first time), and besides `ack()` there are `nak(delay=None)` (deliver
    again, after `delay` seconds/timedelta/"5s"), `term()` (never again: dead-letter it)
    and `progress()` (still working: restart its ack_wait).
    """

    __slots__ = ("id", "subject", "payload", "trace_id", "key", "response_subject",
                 "_created_at", "consumer_id", "raw", "_sub", "deliveries")

    def __init__(self, raw: bytes, consumer_id: str, sub: Any) -> None:
        record = loads(raw)
        self.raw = raw
        self.id: str = record["id"]
        self.subject: str = record["subject"]
        self.payload: Any = record.get("payload")
        self.trace_id: str | None = record.get("trace_id")
        self.key: str | None = record.get("key")
        self.response_subject: str | None = record.get("response_subject")
        self._created_at: str = record.get("created_at", "")
        self.deliveries: int = record.get("deliveries", 1)
        self.consumer_id = consumer_id
        self._sub = sub

    @property
    def created_at(self) -> datetime:
        return parse_time(self._created_at)

    def ack(self, data: Any = None) -> None:
        """Acknowledge; reply with `data` if this event asks for a reply."""
        self._sub._ack(self, data)  # the Subscription that delivered it

    def nak(self, delay: Any = None) -> None:
        """Group members: have it delivered again (after `delay`)."""
        self._sub._settle(self, "nak", delay)

    def term(self) -> None:
        """Group members: never deliver it again; it goes to the group's dead letters."""
        self._sub._settle(self, "term", None)

    def progress(self) -> None:
        """Group members: still working on it; restart its ack_wait."""
        self._sub._settle(self, "progress", None)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(id={self.id!r}, subject={self.subject!r}, "
                f"payload={self.payload!r})")


class AsyncEvent(Event):
    """An `Event` from an `AsyncClient` subscription: `await ev.ack(...)`."""

    __slots__ = ()

    async def ack(self, data: Any = None) -> None:  # type: ignore[override]
        """Acknowledge; reply with `data` if this event asks for a reply."""
        await self._sub._ack(self, data)  # the AsyncSubscription that delivered it

    async def nak(self, delay: Any = None) -> None:  # type: ignore[override]
        await self._sub._settle(self, "nak", delay)

    async def term(self) -> None:  # type: ignore[override]
        await self._sub._settle(self, "term", None)

    async def progress(self) -> None:  # type: ignore[override]
        await self._sub._settle(self, "progress", None)
