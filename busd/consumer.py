"""Subscriptions: a cursor into one namespace's log, a pattern, and an ack policy.

A consumer knows cursors and acks, not sockets: it writes SSE chunks to its connection
and is told by the connection when the socket's buffer is full (`pause`), drained
(`resume`) or gone (`closed`).

Without acks a consumer is either *live* (at the head of the log: the broker pushes new
records to it straight from the append path) or *catching up* (it reads the log in large
chunks at its own pace). It joins the live set in the same synchronous step in which it
sees that it reached the head, so nothing can be appended in between: no gap, no
duplicate at the seam. A paused consumer leaves the live set, so a slow reader costs at
most one socket buffer, never an unbounded queue.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from busd._core import Pattern, record_id, record_subject, sse_chunk, sse_frame, sse_frame_matching
from busd.http import HttpConnection, Stream
from busd.log import CorruptRecordError, HistoryTruncatedError

if TYPE_CHECKING:
    from busd.broker import Broker

log = logging.getLogger("busd.consumer")

CATCH_UP_BYTES = 256 << 10  # one log read and one socket write while catching up
READ_AHEAD_BYTES = 64 << 10  # how far a manual-ack consumer reads ahead of its cursor
STREAM_WRITE_HIGH_WATER = 512 << 10  # socket buffer per stream before the consumer pauses
RESUME_HINT_BYTES = 1  # a read returns at least one record: just the one before the cursor


def greeting(consumer_id: bytes) -> bytes:
    """The first chunk of every stream: reconnect delay, then the consumer id as an event."""
    return sse_chunk(b"retry: 2000\n\nevent: consumer\ndata: " + consumer_id + b"\n\n")


def sse_message(event: bytes, data: bytes) -> bytes:
    """A non-`msg` SSE message (no `id:` field, so browsers' Last-Event-ID is untouched)."""
    return sse_chunk(b"event: " + event + b"\ndata: " + data + b"\n\n")


class AckPolicy:
    """Manual-ack settings: how often and how many times to deliver, how many in flight."""

    __slots__ = ("redelivery", "redelivery_count", "max_inflight")

    def __init__(self, redelivery: float, redelivery_count: int, max_inflight: int) -> None:
        self.redelivery = redelivery
        self.redelivery_count = redelivery_count
        self.max_inflight = max_inflight


class Consumer(Stream):
    """One SSE subscription on a stored namespace."""

    def __init__(self, broker: Broker, conn: HttpConnection, consumer_id: bytes,
                 pattern: Pattern, namespace: str, ack: AckPolicy | None) -> None:
        self.broker = broker
        self.conn = conn
        self.id = consumer_id
        self.pattern = pattern
        self.namespace = namespace
        self.ack_policy = ack
        self.cursor = 0
        self.paused = False
        self.done = False
        self.live = False
        self._scheduled = False
        # manual ack: event id → [record, deliveries, deadline]; insertion order = index order
        self.inflight: dict[bytes, list] = {}
        self._ahead: list[bytes] = []
        self._ahead_index = 0
        self._timer = None
        if getattr(broker, "remote", False):  # clustered store: reads may need a round trip
            self._fetching = False
            self.deliver_from = self._deliver_from_remote  # type: ignore[method-assign]
            self._catch_up = self._catch_up_remote  # type: ignore[method-assign]
            self._next_record = self._next_record_remote  # type: ignore[method-assign]

    # -- lifecycle ----------------------------------------------------------------------
    def open(self, headers: bytes) -> None:
        """Send the response head (with these header lines) and the greeting that tells
        browsers their consumer id."""
        self.conn.attach_stream(self, headers)
        self.conn.transport.set_write_buffer_limits(high=STREAM_WRITE_HIGH_WATER)
        self.conn.write(greeting(self.id))

    def deliver_from(self, cursor: int) -> None:
        self.cursor = cursor
        self._resume_hint()
        self._step()

    def _resume_hint(self) -> None:
        """Tell the client where delivery starts, as an SSE comment (ignored by EventSource
        and the Go SDK): `: resume-after e_<id>` names the record before the cursor,
        `: resume-after oldest` says there is none. A client that has not received an event
        yet resumes from there after a reconnect instead of from `newest`, so nothing
        published while it was away is lost. Skipped when that record cannot be read at
        once (deleted, corrupt, or older than a clustered store's in-memory tail)."""
        store, ns, cursor = self.broker.store, self.namespace, self.cursor
        if cursor <= store.first_index(ns):
            point = b"oldest"
        else:
            try:
                records = store.read(ns, cursor - 1, RESUME_HINT_BYTES)
            except (HistoryTruncatedError, CorruptRecordError):
                return
            if not records:  # None: a JetStream read that would need a round trip
                return
            point = record_id(records[0])
        self.conn.write(sse_chunk(b": resume-after " + point + b"\n\n"))

    def fail(self, reason: str) -> None:
        """Tell the client why the stream ends (an `error` event), then end it."""
        log.warning("ending subscription consumer=%s reason=%r", self.id.decode(), reason)
        self.done = True
        self.broker.forget(self)
        self.conn.end_stream(sse_message(b"error", reason.encode()))

    def end(self) -> None:
        """Server shutdown: finish the stream cleanly."""
        self.done = True
        self.conn.end_stream()

    # -- Stream (told by the connection) --------------------------------------------------
    def pause(self) -> None:
        self.paused = True
        if self.live:
            self.broker.leave_live(self)

    def resume(self) -> None:
        self.paused = False
        self._schedule()

    def closed(self) -> None:
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
        self.broker.forget(self)

    # -- delivery -----------------------------------------------------------------------
    def push(self, chunk: bytes, next_index: int) -> None:
        """Live delivery from the append path: `chunk` holds the framed matching records."""
        if chunk:
            self.conn.write(chunk)
        self.cursor = next_index

    def wake(self) -> None:
        """New records were appended (manual-ack consumers waiting at the head)."""
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and not self.done:
            self._scheduled = True
            self.broker.loop.call_soon(self._step)

    def _step(self) -> None:
        self._scheduled = False
        if self.done or self.paused:
            return
        try:
            if self.ack_policy is None:
                self._catch_up()
            else:
                self._pump()
        except HistoryTruncatedError as exc:
            self.fail(f"history truncated: event index {self.cursor} was deleted by retention; "
                      f"the oldest retained index is {exc.args[0]}")
        except CorruptRecordError as exc:
            self.fail(f"corrupt record at index {exc.args[0]} in namespace {self.namespace}: "
                      f"it cannot be served")

    def _catch_up(self) -> None:
        """Read one chunk of history; reschedule until at the head, then go live."""
        store, ns = self.broker.store, self.namespace
        if self.cursor < store.next_index(ns):
            records = store.read(ns, self.cursor, CATCH_UP_BYTES)
            self.cursor += len(records)
            if self.pattern.matches_all:
                chunk, matched = sse_frame(records), len(records)
            else:
                chunk, matched = sse_frame_matching(records, self.pattern)
            if chunk:
                self.broker.metrics.events_out[ns] += matched
                self.conn.write(chunk)
            if self.cursor < store.next_index(ns) or self.paused:
                if not self.paused:
                    self._schedule()
                return
        if not self.paused and not self.done:
            self.broker.join_live(self)

    # -- manual ack -----------------------------------------------------------------------
    def _next_record(self) -> bytes | None:
        """The record at the cursor (from a small read-ahead buffer), or None at the head."""
        offset = self.cursor - self._ahead_index
        if not 0 <= offset < len(self._ahead):
            self._ahead = self.broker.store.read(self.namespace, self.cursor, READ_AHEAD_BYTES)
            self._ahead_index = self.cursor
            offset = 0
            if not self._ahead:
                return None
        return self._ahead[offset]

    def _pump(self) -> None:
        policy = self.ack_policy
        while len(self.inflight) < policy.max_inflight:
            record = self._next_record()
            if record is None:
                self.broker.wait_for_append(self)
                break
            self.cursor += 1
            if self.pattern.matches(record_subject(record)):
                self._deliver(record, 1)
        self._arm_timer()

    def _deliver(self, record: bytes, deliveries: int) -> None:
        deadline = time.monotonic() + self.ack_policy.redelivery
        self.inflight[record_id(record)] = [record, deliveries, deadline]
        self.broker.metrics.events_out[self.namespace] += 1
        self.conn.write(sse_frame([record]))

    def ack(self, event_id: bytes) -> None:
        if self.inflight.pop(event_id, None) is not None:
            self._schedule()

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.inflight and not self.done:
            first = min(entry[2] for entry in self.inflight.values())
            loop = self.broker.loop
            self._timer = loop.call_at(loop.time() + max(0.0, first - time.monotonic()),
                                       self._redeliver)

    def _redeliver(self) -> None:
        self._timer = None
        if self.done:
            return
        now, limit = time.monotonic(), self.ack_policy.redelivery_count
        for event_id, (record, deliveries, deadline) in list(self.inflight.items()):
            if deadline > now:
                continue
            if 0 < limit <= deliveries:
                del self.inflight[event_id]
                self.broker.metrics.dropped += 1
                log.warning("giving up on event consumer=%s event=%s deliveries=%d",
                            self.id.decode(), event_id.decode(), deliveries)
            else:
                self.broker.metrics.redelivered += 1
                del self.inflight[event_id]
                self._deliver(record, deliveries + 1)
        self._schedule()
        self._arm_timer()


    # -- a clustered store (busd/jetstream.py) ----------------------------------------------
    # The store's `read` serves its in-memory tail synchronously and answers None for older
    # records, which `fetch` reads from the cluster. The seam is unchanged: the last read
    # from the tail, "cursor reached the head" and join_live happen in one synchronous step.
    def _deliver_from_remote(self, cursor) -> None:
        if isinstance(cursor, int):
            self.cursor = cursor
            self._resume_hint()
            self._step()
            return
        task = self.broker.loop.create_task(
            self.broker.store.locate(self.namespace, cursor.event_id))
        task.add_done_callback(self._located)

    def _located(self, task) -> None:
        if self.done:
            return
        error = None if task.cancelled() else task.exception()
        if error is not None or task.cancelled():
            self.fail(f"cannot look the start event up: {error or 'cancelled'}")
            return
        found = task.result()
        if isinstance(found, str):
            self.fail(found)
            return
        self.cursor = found + 1
        self._resume_hint()
        self._step()

    def _catch_up_remote(self) -> None:
        store, ns = self.broker.store, self.namespace
        if self.cursor < store.next_index(ns):
            records = store.read(ns, self.cursor, CATCH_UP_BYTES)
            if records is None:
                self._fetch(CATCH_UP_BYTES)
                return
            self._write_records(records)
            self.cursor += len(records)
            if self.cursor < store.next_index(ns) or self.paused:
                if not self.paused:
                    self._schedule()
                return
        if not self.paused and not self.done:
            self.broker.join_live(self)

    def _write_records(self, records: list[bytes]) -> None:
        if self.pattern.matches_all:
            chunk, matched = sse_frame(records), len(records)
        else:
            chunk, matched = sse_frame_matching(records, self.pattern)
        if chunk:
            self.broker.metrics.events_out[self.namespace] += matched
            self.conn.write(chunk)

    def _fetch(self, max_bytes: int) -> None:
        """Read older records from the cluster; the stream goes on when they are here."""
        if self._fetching:
            return
        self._fetching = True
        task = self.broker.loop.create_task(
            self.broker.store.fetch(self.namespace, self.cursor, max_bytes))
        task.add_done_callback(self._fetched)

    def _fetched(self, task) -> None:
        self._fetching = False
        if self.done or task.cancelled():
            return
        error = task.exception()
        if isinstance(error, HistoryTruncatedError):
            self.fail(f"history truncated: event index {self.cursor} was deleted by retention; "
                      f"the oldest retained index is {error.args[0]}")
            return
        if error is not None:
            log.warning("catch-up read failed consumer=%s error=%r", self.id.decode(), error)
            self.broker.loop.call_later(0.5, self._schedule)
            return
        first, records = task.result()
        if self.ack_policy is None:
            if first >= self.cursor:
                self._write_records(records)
                self.cursor = first + len(records)
        else:
            self._ahead, self._ahead_index = records, first
            self.cursor = max(self.cursor, first)
        self._schedule()

    def _next_record_remote(self) -> bytes | None:
        offset = self.cursor - self._ahead_index
        if not 0 <= offset < len(self._ahead):
            records = self.broker.store.read(self.namespace, self.cursor, READ_AHEAD_BYTES)
            if records is None:  # older than the tail: fetched, then _pump runs again
                self._fetch(READ_AHEAD_BYTES)
                return None
            self._ahead = records
            self._ahead_index = self.cursor
            offset = 0
            if not self._ahead:
                return None
        return self._ahead[offset]


class InboxConsumer(Stream):
    """A subscription to one `_bus_.<id>` inbox: in-memory delivery, nothing stored."""

    def __init__(self, broker: Broker, conn: HttpConnection, consumer_id: bytes,
                 subject: bytes) -> None:
        self.broker = broker
        self.conn = conn
        self.id = consumer_id
        self.subject = subject
        self.paused = False
        self.done = False

    def start(self, headers: bytes) -> None:
        self.conn.attach_stream(self, headers)
        self.conn.write(greeting(self.id))

    def deliver(self, record: bytes) -> bool:
        """Send one inbox event; a consumer that is not reading loses it (counted as dropped)."""
        if self.paused or self.done:
            return False
        self.conn.write(sse_frame([record]))
        return True

    def ack(self, event_id: bytes) -> None:
        """Inbox events are never redelivered, so an ack has nothing to do."""

    def end(self) -> None:
        self.done = True
        self.conn.end_stream()

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def closed(self) -> None:
        self.done = True
        self.broker.forget(self)
