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

The store's `read` serves what it has in memory and answers None for the rest, which
`fetch` gets asynchronously (local store: a disk read in a worker thread, so a cold page
cache stalls no other connection; JetStream: records older than its in-memory tail);
catching up, `fetch_sse` gets them already framed as SSE (the local store frames what
the page cache holds of a plain log at once, on the loop, and the rest, or an encrypted
log's records, in the worker), and the next chunk is fetched while this one is written,
so a disk read or the cipher overlaps the loop's socket work. The stream then goes
on from `read`, and the step that finds the head and joins the live set stays one
synchronous step on the loop, so the seam is the same for every store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from busd._core import Pattern, first_matching, record_id, sse_chunk, sse_frame, sse_of
from busd.bus.fanout import FanOut
from busd.bus.sink import Sink
from busd.store.errors import CorruptRecordError, HistoryTruncatedError
from busd.store.interface import Store
from busd.wire import INDEX_START

log = logging.getLogger("busd.bus.consumer")

CATCH_UP_BYTES = 256 << 10  # one log read and one socket write while catching up
READ_AHEAD_BYTES = 64 << 10  # how far a manual-ack consumer reads ahead of its cursor
STREAM_WRITE_HIGH_WATER = 512 << 10  # socket buffer per stream before the consumer pauses
RESUME_HINT_BYTES = 1  # a read returns at least one record: just the one before the cursor
INFLIGHT_BYTES = 16 << 20  # unacked event bytes per manual-ack consumer (one event always may)
SCAN_RECORDS = 8192  # records one manual-ack step may look at before letting others run
SCAN_BYTES = 1 << 20  # and bytes it may read


def greeting(consumer_id: bytes) -> bytes:
    """The first chunk of every stream: the consumer id as an event, with the reconnect
    delay in the same message (a `retry:`-only message is an empty event to some clients,
    httpx-sse's among them)."""
    return sse_chunk(b"retry: 2000\nevent: consumer\ndata: " + consumer_id + b"\n\n")


def index_cursor(store: Store, namespace: str, index: int) -> int | str:
    """The cursor for `start=index:<n>` (n = `index`), or why it cannot be served (an index
    below the oldest retained one is answered as any read of deleted history is)."""
    head = store.next_index(namespace)
    if index > head:
        return f"index {index} is beyond the head of namespace {namespace} (next index {head})"
    return index


def sse_message(event: bytes, data: bytes) -> bytes:
    """A non-`msg` SSE message (no `id:` field, so browsers' Last-Event-ID is untouched)."""
    return sse_chunk(b"event: " + event + b"\ndata: " + data + b"\n\n")


def _reraise(exc: BaseException) -> None:
    raise exc


class AckPolicy:
    """Manual-ack settings: how often and how many times to deliver, how many in flight."""

    __slots__ = ("redelivery", "redelivery_count", "max_inflight", "max_inflight_bytes")

    def __init__(self, redelivery: float, redelivery_count: int, max_inflight: int,
                 max_inflight_bytes: int = INFLIGHT_BYTES) -> None:
        self.redelivery = redelivery
        self.redelivery_count = redelivery_count
        self.max_inflight = max_inflight
        self.max_inflight_bytes = max_inflight_bytes


class Consumer:
    """One SSE subscription on a stored namespace.

    Every entry from outside (a scheduled step, the redelivery timer, a fetch's
    completion, the start, and a live delivery that failed: the fan-out writes those to
    the sink itself) runs inside `_guard`: whatever one step raises ends this stream with
    an `error` event and a log line, and no other stream notices."""

    # one per open stream, 100,000 of them idle on one process: no per-instance dict
    __slots__ = ("fanout", "store", "sink", "loop", "id", "owner", "pattern", "namespace",
                 "ack_policy", "cursor", "paused", "done", "live", "_scheduled", "_fetching",
                 "inflight", "inflight_bytes", "_ahead", "_ahead_index", "_timer",
                 "_refetching", "_refetched_run", "_select")

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
        self._select = None if pattern.matches_all else pattern  # what sse_of filters by
        self.namespace = namespace
        self.ack_policy = ack
        self.cursor = 0
        self.paused = False
        self.done = False
        self.live = False
        self._scheduled = False
        self._fetching = False
        # manual ack: event id -> [index, deliveries, deadline, size], in delivery order;
        # the record itself is read again to redeliver it, so it costs no memory here
        self.inflight: dict[bytes, list] = {}
        self.inflight_bytes = 0
        self._ahead: list[bytes] = []
        self._ahead_index = 0
        self._timer = None
        self._refetching = False  # a redelivery round waits for records from disk
        self._refetched_run: tuple[int, list[bytes]] = (0, [])

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, headers: bytes, cursor: int | str) -> None:
        """Send the response head (with these header lines) and the greeting that tells
        browsers their consumer id, then deliver from index `cursor`, or end the stream with
        an `error` event when `cursor` is the reason it cannot be served (the Go SDK reads
        it)."""
        self._guard(self._start, headers, cursor)

    def _start(self, headers: bytes, cursor: int | str) -> None:
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
                records = store.read(ns, cursor - 1, RESUME_HINT_BYTES, disk=False)
            except (HistoryTruncatedError, CorruptRecordError):
                return
            if not records:
                return
            point = record_id(records[0])
        self.sink.write(sse_chunk(b": resume-after " + point + b"\n\n"))

    def fail(self, reason: str) -> None:
        """Tell the client why the stream ends (an `error` event), then end it."""
        log.warning("ending subscription consumer=%s reason=%r", self.id.decode(), reason)
        self._stop()
        self.sink.end_stream(sse_message(b"error", reason.encode()))

    def end(self) -> None:
        """Server shutdown: finish the stream cleanly."""
        self._stop()
        self.sink.end_stream()

    def _stop(self) -> None:
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.fanout.remove(self)

    def _guard(self, step: Callable[..., None], *args: object) -> None:
        """Run one step of this consumer; what it raises ends this stream, and only it."""
        try:
            step(*args)
        except (HistoryTruncatedError, CorruptRecordError) as exc:
            self._unreadable(exc)
        except Exception as exc:  # noqa: BLE001 - the boundary: one stream, never the loop
            log.exception("subscription step failed consumer=%s ns=%s index=%d",
                          self.id.decode(), self.namespace, self.cursor)
            if not self.done:
                try:
                    self.fail(f"the server could not go on serving this stream ({exc!r}); "
                              f"reconnecting resumes it")
                except Exception:  # noqa: BLE001 - the sink itself is broken: just let go
                    log.exception("cannot end subscription consumer=%s", self.id.decode())
                    self._stop()

    # -- Stream (told by the sink) ------------------------------------------------------
    def pause(self) -> None:
        self.paused = True
        if self.live:
            self.fanout.leave_live(self)

    def resume(self) -> None:
        self.paused = False
        self._schedule()

    def closed(self) -> None:
        self._stop()

    # -- delivery -----------------------------------------------------------------------
    def push_failed(self, exc: Exception) -> None:
        """A live delivery (the fan-out writes it to the sink itself, once per delivery)
        raised: handled as any step's failure."""
        self._guard(_reraise, exc)

    def wake(self) -> None:
        """New records were appended (manual-ack consumers waiting at the head)."""
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and not self.done:
            self._scheduled = True
            self.loop.call_soon(self._guard, self._step)

    def _step(self) -> None:
        self._scheduled = False
        if self.done or self.paused:
            return
        if self.ack_policy is None:
            self._catch_up()
        else:
            self._pump()

    def _unreadable(self, exc: HistoryTruncatedError | CorruptRecordError) -> None:
        if isinstance(exc, HistoryTruncatedError):
            self.fail(f"history truncated: event index {self.cursor} was deleted by retention; "
                      f"the oldest retained index is {exc.args[0]}")
        else:
            index = exc.args[0]
            self.fail(f"corrupt record at index {index} in namespace {self.namespace}: it "
                      f"cannot be served; to step over it, subscribe with "
                      f"start={INDEX_START.decode()}{index + 1}")

    def _catch_up(self) -> None:
        """Read one chunk of history; reschedule until at the head, then go live. A fetch
        that is out owns the cursor: the stream goes on when it lands (_fetched)."""
        if self._fetching:
            return
        store, ns = self.store, self.namespace
        if self.cursor < store.next_index(ns):
            records = store.read(ns, self.cursor, CATCH_UP_BYTES, disk=False)
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
        self._send(*sse_of(records, self._select))

    def _send(self, chunk: bytes, matched: int) -> None:
        if chunk:
            self.fanout.metrics.events_delivered(self.namespace, matched)
            self.sink.write(chunk)

    def _fetch(self, max_bytes: int) -> None:
        """Have the store get records that are not at hand (catching up: already framed as
        SSE, off the loop); the stream goes on when they are here."""
        if self._fetching:
            return
        self._fetching = True
        store, ns = self.store, self.namespace
        task = asyncio.ensure_future(  # a future the store returns has started already
            store.fetch_sse(ns, self.cursor, max_bytes, self._select) if self.ack_policy is None
            else store.fetch(ns, self.cursor, max_bytes))
        task.add_done_callback(lambda task: self._guard(self._fetched, task))

    def _fetched(self, task: asyncio.Task) -> None:
        self._fetching = False
        if self.done or task.cancelled():
            return
        if self.ack_policy is None:
            first, chunk, matched, count = task.result()  # what it raised ends the stream
            if first == self.cursor:
                self.cursor = first + count
                if count and not self.paused and self.cursor < self.store.next_index(
                        self.namespace):  # the next chunk is read while this one goes out
                    self._fetch(CATCH_UP_BYTES)
                self._send(chunk, matched)
        else:
            first, records = task.result()
            self._ahead, self._ahead_index = records, first
            self.cursor = max(self.cursor, first)
        self._schedule()

    # -- manual ack -----------------------------------------------------------------------
    def _has_room(self) -> bool:
        """Another event may go out: fewer than max_inflight unacked, and their bytes under
        the byte bound (one event always may, however large)."""
        policy = self.ack_policy
        return len(self.inflight) < policy.max_inflight and (
            not self.inflight or self.inflight_bytes < policy.max_inflight_bytes)

    def _read_ahead(self) -> int:
        """Refill the read-ahead buffer at the cursor: its bytes, or 0 at the head (then
        the next append wakes this consumer) or while the records are fetched."""
        records = self.store.read(self.namespace, self.cursor, READ_AHEAD_BYTES, disk=False)
        if records is None:
            self._fetch(READ_AHEAD_BYTES)
            return 0
        if not records:
            self.fanout.wait_for_append(self)
            return 0
        self._ahead, self._ahead_index = records, self.cursor
        return sum(map(len, records))

    def _pump(self) -> None:
        """Deliver the next matching records while the in-flight bounds allow and the sink
        takes them. One step scans at most SCAN_RECORDS records or SCAN_BYTES bytes, then
        lets the loop serve others and goes on in the next step (as catch-up does): a
        pattern that matches little of a long history never stalls the loop."""
        pattern, matches_all = self.pattern, self.pattern.matches_all
        records_left, bytes_left = SCAN_RECORDS, SCAN_BYTES
        while self._has_room() and not self.paused:
            if records_left <= 0 or bytes_left <= 0:
                self._schedule()
                break
            offset = self.cursor - self._ahead_index
            if not 0 <= offset < len(self._ahead):
                read = self._read_ahead()
                if not read:
                    break
                bytes_left -= read
                offset = 0
            ahead = self._ahead
            end = min(len(ahead), offset + records_left)
            found = offset if matches_all else first_matching(ahead, pattern, offset, end)
            records_left -= found - offset + 1
            if found == end:
                self.cursor = self._ahead_index + end
                continue
            self.cursor = self._ahead_index + found + 1
            self._deliver(ahead[found], self.cursor - 1)
        self._arm_timer()

    def _deliver(self, record: bytes, index: int) -> None:
        size = len(record)
        self.inflight[record_id(record)] = [index, 1, time.monotonic() + self.ack_policy.redelivery,
                                            size]
        self.inflight_bytes += size
        self.fanout.metrics.events_delivered(self.namespace, 1)
        self.sink.write(sse_frame([record]))

    def ack(self, event_id: bytes) -> None:
        entry = self.inflight.pop(event_id, None)
        if entry is not None:
            self.inflight_bytes -= entry[3]
            self._schedule()

    def _forget(self, event_id: bytes) -> None:
        entry = self.inflight.pop(event_id)
        self.inflight_bytes -= entry[3]
        self.fanout.metrics.dropped += 1

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
                                       self._guard, self._redeliver)

    def _redeliver(self) -> None:
        """Send the overdue in-flight events again, in delivery order; one that is on disk
        is fetched off the loop first, and the round goes on from it once it is here."""
        self._timer = None
        if self.done or self._refetching:
            return
        now, policy = time.monotonic(), self.ack_policy
        for event_id, entry in list(self.inflight.items()):
            if self.paused:
                break  # the rest wait for resume(), see _arm_timer
            index, deliveries, deadline, _ = entry
            if deadline > now:
                continue
            if 0 < policy.redelivery_count <= deliveries:
                self._forget(event_id)
                log.warning("giving up on event consumer=%s event=%s deliveries=%d",
                            self.id.decode(), event_id.decode(), deliveries)
                continue
            record = self._stored(index)
            if record is None:
                self._refetch(index)
                return
            self._send_again(event_id, entry, record)
        self._schedule()
        self._arm_timer()

    def _stored(self, index: int) -> bytes | None:
        """The record at an in-flight index, read back (b"" once retention deleted it; None
        when it is not in memory and must be fetched)."""
        first, records = self._refetched_run
        if 0 <= index - first < len(records):
            return records[index - first]
        try:
            records = self.store.read(self.namespace, index, 1, disk=False)
        except HistoryTruncatedError:
            return b""
        if records is None:
            return None
        return records[0] if records else b""

    def _refetch(self, index: int) -> None:
        self._refetching = True
        task = self.loop.create_task(self.store.fetch(self.namespace, index, READ_AHEAD_BYTES))
        task.add_done_callback(lambda task: self._guard(self._refetched, task))

    def _refetched(self, task: asyncio.Task) -> None:
        self._refetching = False
        if task.cancelled() or self.done:
            return
        if not isinstance(task.exception(), HistoryTruncatedError):  # (then _stored says so)
            self._refetched_run = task.result()
        self._redeliver()

    def _send_again(self, event_id: bytes, entry: list, record: bytes) -> None:
        if not record or record_id(record) != event_id:
            self._forget(event_id)
            log.warning("cannot redeliver event: retention deleted it consumer=%s event=%s",
                        self.id.decode(), event_id.decode())
            return
        entry[1] += 1
        entry[2] = time.monotonic() + self.ack_policy.redelivery
        del self.inflight[event_id]  # to the back: in-flight order is delivery order
        self.inflight[event_id] = entry
        self.fanout.metrics.redelivered += 1
        self.fanout.metrics.events_delivered(self.namespace, 1)  # a redelivery is one too
        self.sink.write(sse_frame([record]))


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
