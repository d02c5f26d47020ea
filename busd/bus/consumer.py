"""Subscriptions: a cursor into one namespace's log, a pattern, and an ack policy.

A consumer knows cursors and acks, not sockets: it writes SSE chunks to its sink (the
connection) and is told by the sink when its buffer is full (`pause`), drained (`resume`)
or gone (`closed`).

Without acks a consumer is either *live* (at the head of the log: the fan-out pushes new
records to it straight from the append path) or *catching up* (it reads the log in large
chunks at its own pace). It joins the live set in the same synchronous step in which it
sees that it reached the head, so nothing can be appended in between: no gap, no
duplicate at the seam. A paused consumer leaves the live set, so a slow reader costs at
most one socket buffer, never an unbounded queue.

The store's `read` serves what it has at hand and answers None for the rest, which
`fetch` gets asynchronously (JetStream: records older than its in-memory tail); the
stream then goes on from `read`, so the seam is the same for every store.
"""

from __future__ import annotations

import asyncio
import logging
import time

from busd._core import Pattern, record_id, record_subject, sse_chunk, sse_frame, sse_frame_matching
from busd.bus.fanout import FanOut
from busd.bus.sink import Sink
from busd.store.errors import CorruptRecordError, HistoryTruncatedError
from busd.store.interface import Store

log = logging.getLogger("busd.bus.consumer")

CATCH_UP_BYTES = 256 << 10  # one log read and one socket write while catching up
READ_AHEAD_BYTES = 64 << 10  # how far a manual-ack consumer reads ahead of its cursor
STREAM_WRITE_HIGH_WATER = 512 << 10  # socket buffer per stream before the consumer pauses
RESUME_HINT_BYTES = 1  # a read returns at least one record: just the one before the cursor


def greeting(consumer_id: bytes) -> bytes:
    """The first chunk of every stream: the consumer id as an event, with the reconnect
    delay in the same message (a `retry:`-only message is an empty event to some clients,
    httpx-sse's among them)."""
    return sse_chunk(b"retry: 2000\nevent: consumer\ndata: " + consumer_id + b"\n\n")


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


class Consumer:
    """One SSE subscription on a stored namespace."""

    def __init__(self, fanout: FanOut, store: Store, sink: Sink, consumer_id: bytes,
                 pattern: Pattern, namespace: str, ack: AckPolicy | None,
                 owner: str | None = None) -> None:
        self.fanout = fanout
        self.store = store
        self.sink = sink
        self.loop = asyncio.get_running_loop()
        self.id = consumer_id
        self.owner = owner
        self.pattern = pattern
        self.namespace = namespace
        self.ack_policy = ack
        self.cursor = 0
        self.paused = False
        self.done = False
        self.live = False
        self._scheduled = False
        self._fetching = False
        # manual ack: event id → [record, deliveries, deadline]; insertion order = index order
        self.inflight: dict[bytes, list] = {}
        self._ahead: list[bytes] = []
        self._ahead_index = 0
        self._timer = None

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, headers: bytes, cursor: int | str) -> None:
        """Send the response head (with these header lines) and the greeting that tells
        browsers their consumer id, then deliver from index `cursor`, or end the stream with
        an `error` event when `cursor` is the reason it cannot be served (the Go SDK reads
        it)."""
        self.sink.attach_stream(self, headers, STREAM_WRITE_HIGH_WATER)
        self.sink.write(greeting(self.id))
        if isinstance(cursor, str):
            self.fail(cursor)
            return
        self.fanout.add(self)
        self.cursor = cursor
        self._resume_hint()
        self._step()

    def _resume_hint(self) -> None:
        """Tell the client where delivery starts, as an SSE comment (ignored by EventSource
        and the Go SDK): `: resume-after e_<id>` names the record before the cursor,
        `: resume-after oldest` says there is none. A client that has not received an event
        yet resumes from there after a reconnect instead of from `newest`, so nothing
        published while it was away is lost. Skipped when that record cannot be read at
        once (deleted, corrupt, or not at hand)."""
        store, ns, cursor = self.store, self.namespace, self.cursor
        if cursor <= store.first_index(ns):
            point = b"oldest"
        else:
            try:
                records = store.read(ns, cursor - 1, RESUME_HINT_BYTES)
            except (HistoryTruncatedError, CorruptRecordError):
                return
            if not records:
                return
            point = record_id(records[0])
        self.sink.write(sse_chunk(b": resume-after " + point + b"\n\n"))

    def fail(self, reason: str) -> None:
        """Tell the client why the stream ends (an `error` event), then end it."""
        log.warning("ending subscription consumer=%s reason=%r", self.id.decode(), reason)
        self.done = True
        self.fanout.remove(self)
        self.sink.end_stream(sse_message(b"error", reason.encode()))

    def end(self) -> None:
        """Server shutdown: finish the stream cleanly."""
        self.done = True
        self.sink.end_stream()

    # -- Stream (told by the sink) ------------------------------------------------------
    def pause(self) -> None:
        self.paused = True
        if self.live:
            self.fanout.leave_live(self)

    def resume(self) -> None:
        self.paused = False
        self._schedule()

    def closed(self) -> None:
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
        self.fanout.remove(self)

    # -- delivery -----------------------------------------------------------------------
    def push(self, chunk: bytes, next_index: int) -> None:
        """Live delivery from the append path: `chunk` holds the framed matching records."""
        if chunk:
            self.sink.write(chunk)
        self.cursor = next_index

    def wake(self) -> None:
        """New records were appended (manual-ack consumers waiting at the head)."""
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and not self.done:
            self._scheduled = True
            self.loop.call_soon(self._step)

    def _step(self) -> None:
        self._scheduled = False
        if self.done or self.paused:
            return
        try:
            if self.ack_policy is None:
                self._catch_up()
            else:
                self._pump()
        except (HistoryTruncatedError, CorruptRecordError) as exc:
            self._unreadable(exc)

    def _unreadable(self, exc: HistoryTruncatedError | CorruptRecordError) -> None:
        if isinstance(exc, HistoryTruncatedError):
            self.fail(f"history truncated: event index {self.cursor} was deleted by retention; "
                      f"the oldest retained index is {exc.args[0]}")
        else:
            self.fail(f"corrupt record at index {exc.args[0]} in namespace {self.namespace}: "
                      f"it cannot be served")

    def _catch_up(self) -> None:
        """Read one chunk of history; reschedule until at the head, then go live."""
        store, ns = self.store, self.namespace
        if self.cursor < store.next_index(ns):
            records = store.read(ns, self.cursor, CATCH_UP_BYTES)
            if records is None:
                self._fetch(CATCH_UP_BYTES)
                return
            self._write(records)
            self.cursor += len(records)
            if self.cursor < store.next_index(ns) or self.paused:
                if not self.paused:
                    self._schedule()
                return
        if not self.paused and not self.done:
            self.fanout.join_live(self)

    def _write(self, records: list[bytes]) -> None:
        if self.pattern.matches_all:
            chunk, matched = sse_frame(records), len(records)
        else:
            chunk, matched = sse_frame_matching(records, self.pattern)
        if chunk:
            self.fanout.metrics.events_out[self.namespace] += matched
            self.sink.write(chunk)

    def _fetch(self, max_bytes: int) -> None:
        """Have the store get records that are not at hand; the stream goes on when they
        are here."""
        if self._fetching:
            return
        self._fetching = True
        task = self.loop.create_task(self.store.fetch(self.namespace, self.cursor, max_bytes))
        task.add_done_callback(self._fetched)

    def _fetched(self, task: asyncio.Task) -> None:
        self._fetching = False
        if self.done or task.cancelled():
            return
        error = task.exception()
        if isinstance(error, (HistoryTruncatedError, CorruptRecordError)):
            self._unreadable(error)
            return
        if error is not None:
            log.warning("catch-up read failed consumer=%s error=%r", self.id.decode(), error)
            self.loop.call_later(0.5, self._schedule)
            return
        first, records = task.result()
        if self.ack_policy is None:
            if first >= self.cursor:
                self._write(records)
                self.cursor = first + len(records)
        else:
            self._ahead, self._ahead_index = records, first
            self.cursor = max(self.cursor, first)
        self._schedule()

    # -- manual ack -----------------------------------------------------------------------
    def _next_record(self) -> bytes | None:
        """The record at the cursor (from a small read-ahead buffer), or None at the head
        or while it is being fetched (`_pump` runs again once it is here)."""
        offset = self.cursor - self._ahead_index
        if not 0 <= offset < len(self._ahead):
            records = self.store.read(self.namespace, self.cursor, READ_AHEAD_BYTES)
            if records is None:
                self._fetch(READ_AHEAD_BYTES)
                return None
            self._ahead = records
            self._ahead_index = self.cursor
            offset = 0
            if not self._ahead:
                return None
        return self._ahead[offset]

    def _pump(self) -> None:
        policy = self.ack_policy
        while len(self.inflight) < policy.max_inflight and not self.paused:
            record = self._next_record()
            if record is None:
                self.fanout.wait_for_append(self)
                break
            self.cursor += 1
            if self.pattern.matches(record_subject(record)):
                self._deliver(record, 1)
        self._arm_timer()

    def _deliver(self, record: bytes, deliveries: int) -> None:
        deadline = time.monotonic() + self.ack_policy.redelivery
        self.inflight[record_id(record)] = [record, deliveries, deadline]
        self.fanout.metrics.events_out[self.namespace] += 1
        self.sink.write(sse_frame([record]))

    def ack(self, event_id: bytes) -> None:
        if self.inflight.pop(event_id, None) is not None:
            self._schedule()

    def _arm_timer(self) -> None:
        """Time the next redelivery. Not while paused: a reader that has not taken the copies
        already sent gets no more (they would pile up in its socket buffer, ~100 MiB/s at
        max_inflight=10000 and 100ms); resume() re-arms it, overdue ones go out at once."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.inflight and not self.done and not self.paused:
            first = min(entry[2] for entry in self.inflight.values())
            loop = self.loop
            self._timer = loop.call_at(loop.time() + max(0.0, first - time.monotonic()),
                                       self._redeliver)

    def _redeliver(self) -> None:
        self._timer = None
        if self.done:
            return
        now, limit = time.monotonic(), self.ack_policy.redelivery_count
        for event_id, (record, deliveries, deadline) in list(self.inflight.items()):
            if self.paused:
                break  # the rest wait for resume(), see _arm_timer
            if deadline > now:
                continue
            if 0 < limit <= deliveries:
                del self.inflight[event_id]
                self.fanout.metrics.dropped += 1
                log.warning("giving up on event consumer=%s event=%s deliveries=%d",
                            self.id.decode(), event_id.decode(), deliveries)
            else:
                self.fanout.metrics.redelivered += 1
                del self.inflight[event_id]
                self._deliver(record, deliveries + 1)
        self._schedule()
        self._arm_timer()


class InboxConsumer:
    """A subscription to one `_bus_.<id>` inbox: in-memory delivery, nothing stored."""

    def __init__(self, fanout: FanOut, sink: Sink, consumer_id: bytes, subject: bytes,
                 owner: str | None = None) -> None:
        self.fanout = fanout
        self.sink = sink
        self.id = consumer_id
        self.owner = owner
        self.subject = subject
        self.paused = False
        self.done = False

    def start(self, headers: bytes) -> None:
        self.fanout.add_inbox(self)
        self.sink.attach_stream(self, headers)
        self.sink.write(greeting(self.id))

    def deliver(self, record: bytes) -> bool:
        """Send one inbox event; a consumer that is not reading loses it (counted as dropped)."""
        if self.paused or self.done:
            return False
        self.sink.write(sse_frame([record]))
        return True

    def ack(self, event_id: bytes) -> None:
        """Inbox events are never redelivered, so an ack has nothing to do."""

    def end(self) -> None:
        self.done = True
        self.sink.end_stream()

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def closed(self) -> None:
        self.done = True
        self.fanout.remove_inbox(self)
