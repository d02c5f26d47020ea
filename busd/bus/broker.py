"""The bus itself: validation of events, group commit to the store, fan-out, inbox routing.

Publishes that arrive in one loop iteration form a *group*: per namespace their records
go to the store in one append (one write(2)); only then are the new records pushed to
live consumers and the publishers answered — after one shared fsync under
`--fsync always`. Nothing here knows HTTP: results go back through callbacks.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import orjson

from busd._core import ParsedEvent, sse_frame, sse_frame_matching, stamp_events, supplied_ids
from busd.bus.consumer import Consumer, InboxConsumer
from busd.bus.dedup import DedupCache
from busd.server.config import Config
from busd.server.metrics import Metrics
from busd.store.errors import CorruptRecordError, LogWriteError
from busd.store.local.store import Store
from busd.wire import INBOX_NAMESPACE

log = logging.getLogger("busd.bus.broker")

INBOX = INBOX_NAMESPACE.encode()
DEDUP_REBUILD_RECORDS = 100_000  # how much of each log's tail rebuilds the dedup cache


class PublishError(Exception):
    """A publish that is refused; `status` is the HTTP status that says why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Published:
    """What a stored (or routed) publish answers: ids, timestamps, first index."""

    __slots__ = ("ids", "created_at", "first_index")

    def __init__(self, ids: list[bytes], created_at: list[bytes], first_index: int) -> None:
        self.ids = ids
        self.created_at = created_at
        self.first_index = first_index


PublishCallback = Callable[[Published | PublishError], None]


class _Pending:
    """One publish request waiting in the current group."""

    __slots__ = ("records", "keys", "ids", "created_at", "done", "first_index")

    def __init__(self, records, keys, ids, created_at, done: PublishCallback) -> None:
        self.records = records
        self.keys = keys
        self.ids = ids
        self.created_at = created_at
        self.done = done
        self.first_index = -1


class Broker:
    """Owns the namespaces' logs (through the store), consumers, inboxes and dedup state."""

    def __init__(self, config: Config, store: Store, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.store = store
        self.loop = loop
        self.namespaces = frozenset(config.namespaces)
        self._declared = {ns.encode(): ns for ns in config.namespaces}
        self.dedup = DedupCache(config.dup_size, config.dup_ttl)
        self.metrics = Metrics(config.namespaces)
        self.consumers: dict[bytes, Consumer | InboxConsumer] = {}
        self.live: dict[str, list[Consumer]] = {ns: [] for ns in config.namespaces}
        self.waiting: dict[str, set[Consumer]] = {ns: set() for ns in config.namespaces}
        self.inboxes: dict[bytes, set[InboxConsumer]] = {}
        self._group: dict[str, list[_Pending]] = {}
        self._group_ids: dict[str, set[bytes]] = {}  # supplied ids the group will store
        self._flush_scheduled = False
        self._sync_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="busd-fsync")
        self._sync_running = False
        self._sync_waiting: list[Callable[[BaseException | None], None]] = []
        self.remote = getattr(store, "remote", False)
        if self.remote:  # a clustered store (busd/store/jetstream/): bound once, local path intact
            self.publish = self._publish_remote  # type: ignore[method-assign]
            self.resolve_start = self._resolve_start_remote  # type: ignore[method-assign]
            store.attach(self)

    # -- start-up -------------------------------------------------------------------------
    def rebuild_dedup(self) -> int:
        """Refill the dedup cache from each log's tail, so a restart lets no duplicate in."""
        if not self.dedup.enabled:
            return 0
        seen = 0
        for ns in self.config.namespaces:
            index = max(self.store.first_index(ns),
                        self.store.next_index(ns) - DEDUP_REBUILD_RECORDS)
            while index < self.store.next_index(ns):
                try:
                    records = self.store.read(ns, index, 4 << 20)
                except CorruptRecordError:  # reported to readers; must not stop start-up
                    log.warning("dedup rebuild skips a corrupt record ns=%s index=%d", ns, index)
                    index += 1
                    continue
                if not records:
                    break
                index += len(records)
                for record in records:
                    if b'"key":' in record:
                        event = orjson.loads(record)
                        if event.get("key"):
                            self.dedup.add(event["subject"].encode(), event["key"].encode())
                            seen += 1
        return seen

    # -- publishing -------------------------------------------------------------------------
    def publish(self, events: list[ParsedEvent], is_batch: bool, done: PublishCallback) -> None:
        """Validate, then store (group commit) or route to an inbox; `done` gets the outcome.

        Raises PublishError for a refused publish; `done` is then never called.
        """
        name, ids, stamps, records, keyed = self._stamp(events, is_batch)
        if name is None:
            done(self._route_inbox(events[0].subject, ids, stamps, records[0]))
            return
        supplied = supplied_ids(events)
        if supplied:
            self._refuse_present(name, supplied)
        if keyed and self.dedup.enabled:
            self._reserve_keys(keyed)
        if supplied:
            self._group_ids.setdefault(name, set()).update(supplied)
        group = self._group.get(name)
        if group is None:
            group = self._group[name] = []
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self.loop.call_soon(self._flush)
        group.append(_Pending(records, keyed, ids, stamps, done))

    def _stamp(self, events: list[ParsedEvent], is_batch: bool) -> tuple:
        """Validate and build the records: (namespace name, or None for the inbox, ids,
        created_ats, records, keyed). Raises PublishError (400) for anything refused."""
        try:
            namespace, ids, stamps, records, keyed = stamp_events(events, is_batch)
        except ValueError as exc:
            raise PublishError(400, str(exc)) from None
        name = self._declared.get(namespace)
        if name is None and namespace != INBOX:
            raise PublishError(400, f"namespace {namespace.decode(errors='replace')!r} is not "
                                    f"declared; declared namespaces: "
                                    f"{', '.join(sorted(self.namespaces))}")
        return name, ids, stamps, records, keyed

    def _refuse_present(self, namespace: str, ids: list[bytes]) -> None:
        """Refuse (409) an id the namespace holds, or that a publish of this group is about
        to store: an id names one event, so a restore run twice stores nothing twice. The
        reason lists every such id, so that a batch can be sent again without them."""
        if len(set(ids)) != len(ids):
            twice = next(i for i in ids if ids.count(i) > 1)
            raise PublishError(400, f"id {twice.decode()} appears twice in the batch")
        waiting = self._group_ids.get(namespace, set())
        present = self.store.find_ids(namespace, ids) | waiting.intersection(ids)
        if present:
            listed = " ".join(i.decode() for i in ids if i in present)
            raise PublishError(409, f"namespace {namespace} already holds "
                                    f"{'this id' if len(present) == 1 else 'these ids'}: "
                                    f"{listed}")

    def _reserve_keys(self, keyed: list[tuple[bytes, bytes]]) -> None:
        """Refuse (409) a key seen before; else remember it, as the event is about to land."""
        dedup, added = self.dedup, []
        for subject, key in keyed:
            if dedup.seen(subject, key):
                self._release(added)
                raise PublishError(409, "key was processed before")
            dedup.add(subject, key)
            added.append((subject, key))

    def _release(self, keys: list[tuple[bytes, bytes]]) -> None:
        for subject, key in keys:
            self.dedup.discard(subject, key)

    def _route_inbox(self, subject: bytes, ids: list[bytes], stamps: list[bytes],
                     record: bytes) -> Published:
        """Inbox events live only in memory: hand them to the consumers connected right now."""
        for consumer in tuple(self.inboxes.get(subject, ())):
            if consumer.deliver(record):
                self.metrics.events_out[INBOX_NAMESPACE] += 1
            else:
                self.metrics.dropped += 1
        return Published(ids, stamps, -1)

    def _flush(self) -> None:
        """Append this iteration's group: one write per namespace, fan out, then answer."""
        self._flush_scheduled = False
        group, self._group = self._group, {}
        if self._group_ids:  # from here on the store itself knows them
            self._group_ids = {}
        answered: list[_Pending] = []
        for namespace, pendings in group.items():
            records = pendings[0].records if len(pendings) == 1 else \
                [record for pending in pendings for record in pending.records]
            try:
                first = self.store.append_batch(namespace, records)
            except LogWriteError as exc:
                self._fail_group(pendings, exc)
                continue
            index = first
            for pending in pendings:
                pending.first_index = index
                index += len(pending.records)
            self.metrics.published(namespace, len(records), sum(map(len, records)))
            self._fan_out(namespace, records, index)
            answered.extend(pendings)
        if not answered:
            return
        if self.config.fsync == "always":
            self.sync(lambda error: self._answer(answered, error))
        else:
            self._answer(answered, None)

    def _fail_group(self, pendings: list[_Pending], exc: LogWriteError) -> None:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        status = 507 if full else 500
        reason = f"the event log cannot be written: {exc}"
        log.error("append failed status=%d reason=%r", status, reason)
        for pending in pendings:
            self._release(pending.keys)
            pending.done(PublishError(status, reason))

    def _answer(self, pendings: list[_Pending], error: BaseException | None) -> None:
        for pending in pendings:
            if error is not None:
                pending.done(PublishError(500, f"the event log could not be synced to disk: "
                                               f"{error}"))
            else:
                pending.done(Published(pending.ids, pending.created_at, pending.first_index))

    def _fan_out(self, namespace: str, records: list[bytes], next_index: int) -> None:
        """Push new records to live consumers: framed once per distinct pattern."""
        framed: dict[bytes, tuple[bytes, int]] = {}
        for consumer in tuple(self.live[namespace]):
            if consumer.paused or consumer.done:
                continue
            pattern = consumer.pattern
            chunk = framed.get(pattern.pattern)
            if chunk is None:
                if pattern.matches_all:
                    chunk = framed[pattern.pattern] = (sse_frame(records), len(records))
                else:
                    chunk = framed[pattern.pattern] = sse_frame_matching(records, pattern)
            self.metrics.events_out[namespace] += chunk[1]
            consumer.push(chunk[0], next_index)
        waiting = self.waiting[namespace]
        if waiting:
            self.waiting[namespace] = set()
            for consumer in waiting:
                consumer.wake()

    # -- a clustered store (JetStream) -----------------------------------------------------
    def _publish_remote(self, events: list[ParsedEvent], is_batch: bool,
                        done: PublishCallback) -> None:
        """`publish` for a remote store: the store answers once the cluster acked and this
        front-end's tail has the events; fan-out is driven by the tail (see jetstream.py)."""
        from busd.store.jetstream.store import PublishRefused, msg_id

        name, ids, stamps, records, keyed = self._stamp(events, is_batch)
        if name is None:
            subject = events[0].subject
            done(self._route_inbox(subject, ids, stamps, records[0]))
            self.store.publish_inbox(subject, records[0])
            return
        msg_ids = None
        reserved: list[tuple[bytes, bytes]] = []
        if keyed and self.dedup.enabled:
            self._reserve_keys(keyed)
            reserved = keyed
            msg_ids = [msg_id(ev.subject, ev.key_value) if ev.key_value else None
                       for ev in events]

        def finished(outcome: int | PublishRefused) -> None:
            if isinstance(outcome, PublishRefused):
                if outcome.status != 409 or len(records) > 1:  # a refused batch keeps no key
                    self._release(reserved)
                done(PublishError(outcome.status, outcome.reason))
                return
            self.metrics.published(name, len(records), sum(map(len, records)))
            done(Published(ids, stamps, outcome))

        subjects = [ev.subject for ev in events]
        try:
            self.store.publish(name, subjects, records, msg_ids, is_batch, finished)
        except PublishRefused as exc:
            self._release(reserved)
            raise PublishError(exc.status, exc.reason) from None

    def ack_forwarded(self, consumer_id: bytes, event_id: bytes) -> None:
        """An ack that another front-end received for a consumer of ours. It carries no
        token, so it only applies to consumers of an open bus (no --auth-file owner)."""
        consumer = self.consumers.get(consumer_id)
        if consumer is not None and getattr(consumer, "owner", None) is None:
            consumer.ack(event_id)

    def route_inbox_remote(self, subject: bytes, record: bytes) -> None:
        """An inbox event published through another front-end (core NATS)."""
        self._route_inbox(subject, [], [], record)

    def _resolve_start_remote(self, namespace: str, start: bytes):
        """oldest/newest at once; an event id becomes a Lookup the consumer awaits."""
        from busd.store.jetstream.store import Lookup

        if start == b"oldest":
            return self.store.first_index(namespace)
        if start == b"newest":
            return self.store.next_index(namespace)
        return Lookup(start)

    # -- durability ---------------------------------------------------------------------
    def sync(self, done: Callable[[BaseException | None], None]) -> None:
        """fsync every dirty log in the worker thread; all callers waiting share one fsync."""
        self._sync_waiting.append(done)
        if not self._sync_running:
            self._start_sync()

    def _start_sync(self) -> None:
        waiting, self._sync_waiting = self._sync_waiting, []
        self._sync_running = True
        started = time.perf_counter()
        future = self.loop.run_in_executor(self._sync_executor, self.store.sync)

        def finished(fut: asyncio.Future) -> None:
            self._sync_running = False
            self.metrics.fsync_seconds(time.perf_counter() - started)
            error = fut.exception()
            if error is not None:
                log.error("fsync failed error=%r", error)
            for callback in waiting:
                callback(error)
            if self._sync_waiting:
                self._start_sync()

        future.add_done_callback(finished)

    def close(self) -> None:
        self._sync_executor.shutdown(wait=True)

    # -- subscriptions --------------------------------------------------------------------
    def register(self, consumer: Consumer | InboxConsumer) -> None:
        self.consumers[consumer.id] = consumer
        if isinstance(consumer, InboxConsumer):
            self.inboxes.setdefault(consumer.subject, set()).add(consumer)

    def forget(self, consumer: Consumer | InboxConsumer) -> None:
        """Drop every reference to a consumer whose stream has ended."""
        self.consumers.pop(consumer.id, None)
        if isinstance(consumer, InboxConsumer):
            inbox = self.inboxes.get(consumer.subject)
            if inbox is not None:
                inbox.discard(consumer)
                if not inbox:
                    del self.inboxes[consumer.subject]
            return
        if consumer.live:
            self.leave_live(consumer)
        self.waiting[consumer.namespace].discard(consumer)

    def join_live(self, consumer: Consumer) -> None:
        """A consumer at the head starts receiving records straight from the append path."""
        if not consumer.live:
            consumer.live = True
            self.live[consumer.namespace].append(consumer)

    def leave_live(self, consumer: Consumer) -> None:
        if consumer.live:
            consumer.live = False
            self.live[consumer.namespace].remove(consumer)

    def wait_for_append(self, consumer: Consumer) -> None:
        self.waiting[consumer.namespace].add(consumer)

    def ack(self, consumer_id: bytes, event_id: bytes) -> None:
        """Acks are idempotent: unknown consumers or events are fine (SPEC §3.3)."""
        self.metrics.acks += 1
        consumer = self.consumers.get(consumer_id)
        if consumer is not None:
            consumer.ack(event_id)
        elif self.remote:  # the stream may live on another front-end of the cluster
            self.store.forward_ack(consumer_id, event_id)

    def resolve_start(self, namespace: str, start: bytes) -> int | str:
        """The first index to deliver for `start`, or the reason it cannot be served."""
        store = self.store
        if start == b"oldest":
            return store.first_index(namespace)
        if start == b"newest":
            return store.next_index(namespace)
        index = store.find_id(namespace, start)
        if index is not None:
            return index + 1
        oldest = store.first_id(namespace) if store.next_index(namespace) else None
        if store.is_before_retained(namespace, start):
            return (f"history truncated: event {start.decode()} was deleted by retention; the "
                    f"oldest retained event is {oldest.decode() if oldest else 'none'}")
        return f"event {start.decode()} not found in namespace {namespace}"
