"""One connected member of a consumer group: its SSE stream and the events it holds.

The member is what the connection talks to (pause, resume, closed, end) and what an ack
finds by consumer id; the group decides what it gets. It keeps only the indexes of its
unsettled events, so that a disconnect gives them back to the group at once.
"""

from __future__ import annotations

from typing import Protocol

from busd._core import now_rfc3339, sse_frame
from busd.bus.consumer import STREAM_WRITE_HIGH_WATER, greeting, sse_message
from busd.bus.sink import Sink


class Group(Protocol):
    """What a member asks of its group (busd.bus.group.dispatcher.Group)."""

    def join(self, member: Member) -> None: ...

    def leave(self, member: Member) -> None: ...

    def schedule(self) -> None: ...

    def settle(self, event_id: bytes, action: str, delay: float = 0.0) -> None: ...


class Member:
    """A group member: Stream for its sink, Subscriber for acks."""

    def __init__(self, group: Group, sink: Sink, consumer_id: bytes, max_inflight: int,
                 owner: str | None, registered: dict) -> None:
        self.group = group
        self.sink = sink
        self.id = consumer_id
        self.owner = owner
        self.max_inflight = max_inflight
        self.inflight: set[int] = set()
        self.paused = False
        self.done = False
        self.delivered = 0
        self.connected_at = now_rfc3339().decode()
        self._registered = registered  # the fan-out's consumers by id: acks look there

    def start(self, headers: bytes) -> None:
        self.sink.attach_stream(self, headers, STREAM_WRITE_HIGH_WATER)
        self.sink.write(greeting(self.id))
        self._registered[self.id] = self
        self.group.join(self)

    def send(self, records: list[bytes]) -> None:
        self.delivered += len(records)
        self.sink.write(sse_frame(records))

    # -- Subscriber -------------------------------------------------------------------------
    def ack(self, event_id: bytes) -> None:
        self.group.settle(event_id, "ack")

    def settle(self, event_id: bytes, action: str, delay: float) -> None:
        self.group.settle(event_id, action, delay)

    # -- Stream -----------------------------------------------------------------------------
    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.group.schedule()

    def closed(self) -> None:
        self._leave()

    def end(self) -> None:
        """Server shutdown."""
        self._leave()
        self.sink.end_stream()

    def fail(self, reason: str) -> None:
        """End the stream with an `error` event saying why (the group was deleted)."""
        self._leave()
        self.sink.end_stream(sse_message(b"error", reason.encode()))

    def _leave(self) -> None:
        if not self.done:
            self.done = True
            self._registered.pop(self.id, None)
            self.group.leave(self)

    def describe(self) -> dict:
        return {"consumer_id": self.id.decode(), "max_inflight": self.max_inflight,
                "inflight": len(self.inflight), "delivered": self.delivered,
                "connected_at": self.connected_at}
