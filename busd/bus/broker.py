# cython: annotation_typing=False, nonecheck=True
# cython: wraparound=True, boundscheck=True, cdivision=False
"""The bus itself: validation of events, dedup, publishing through the store, acks.

Nothing here knows HTTP or which store it has: results go back through callbacks, new
records come back from the store as `appended` (the broker is its StoreListener) and
reach subscribers through the fan-out.
"""

from __future__ import annotations

import logging
from pathlib import Path

from busd._core import (
    ParsedEvent,
    parse_rfc3339,
    record_id,
    records_size,
    scan_body,
    stamp_events,
    supplied_ids,
)
from busd.bus.dedup import ENTRY_BYTES, DedupCache, SnapshotError
from busd.bus.fanout import FanOut
from busd.bus.group.member import Member
from busd.bus.group.jetstream import JetStreamGroups
from busd.bus.group.registry import Answer, Groups
from busd.bus.publication import Publication
from busd.server.config import Config
from busd.server.metrics import Metrics
from busd.store.errors import CorruptRecordError, PublishRefused, records_between
from busd.store.interface import Store
from busd.store.listener import StoreListener
from busd.store.local.files import replace_file
from busd.wire import INBOX_NAMESPACE

log = logging.getLogger("busd.bus.broker")

INBOX = INBOX_NAMESPACE.encode()
RECORD_ENVELOPE = 64 << 10  # room a record has beyond --max-event-size (as the HTTP layer
# gives a single event's body): its subject, other fields and stamps
DEDUP_FILE = "dedup.snapshot"  # the saved dedup cache, in the data directory
DEDUP_READ_BYTES = 4 << 20  # one log read while rebuilding the dedup cache


class Broker(StoreListener):
    """Owns the namespaces (through the store), the subscriptions (through the fan-out)
    and the dedup state."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.namespaces = frozenset(config.namespaces)
        self._declared = {ns.encode(): ns for ns in config.namespaces}
        # the last publish's namespace, as the object stamp_events gives while it repeats,
        # and its declared name: an identity test where a lookup by bytes compares them
        self._last_namespace: bytes | None = None
        self._last_name: str | None = None
        self.dedup = DedupCache(config.dup_size, config.dup_ttl, max_bytes=config.dup_bytes)
        self.metrics = Metrics(config.namespaces)
        self.fanout = FanOut(config.namespaces, self.metrics)
        self.max_record = config.max_event_size + RECORD_ENVELOPE
        self.faults: dict[str, str] = {}  # namespace -> why its storage is out of service
        # the dedup cache is saved only with a local log (JetStream dedups by itself)
        self.dedup_path = config.path / DEDUP_FILE if config.store == "local" else None
        self._saved: tuple[int, list[int]] | None = None  # (changes, heads) last saved
        registry = JetStreamGroups if config.store == "jetstream" else Groups
        self.groups = registry(config.path, store, self.fanout, self.publish, config.fsync,
                             config.fsync_interval)

    # -- start-up, and saving the dedup cache ---------------------------------------------
    def rebuild_dedup(self) -> int:
        """Refill the dedup cache, so a restart lets no duplicate in: from the saved cache
        and the records written after it was saved; without a usable one, from each log's
        tail, as much as the cache can hold. Only what the store has at hand is read (a
        JetStream store has nothing yet, and refuses keys it has seen itself). The number
        of keys remembered."""
        if not self.dedup.enabled:
            return 0
        marked = self._load_dedup() or {}
        tail = self.dedup.max_bytes // ENTRY_BYTES
        for ns in self.config.namespaces:
            start = marked.get(ns)
            if start is None:  # no saved cache, or a namespace declared since
                start = max(self.store.first_index(ns), self.store.next_index(ns) - tail)
            self._replay_keys(ns, start)
        return len(self.dedup)

    def _load_dedup(self) -> dict[str, int] | None:
        """The saved cache, if it matches the logs: where each log it covers replays from."""
        if self.dedup_path is None:
            return None
        try:
            data = self.dedup_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read the saved dedup cache path=%s error=%r", self.dedup_path,
                        exc)
            return None
        try:
            marks = self.dedup.load(data)
        except SnapshotError as exc:
            log.warning("saved dedup cache unusable path=%s reason=%s", self.dedup_path, exc)
            return None
        marks = {ns: mark for ns, mark in marks.items() if ns in self.config.namespaces}
        if not all(self._log_matches(ns, *mark) for ns, mark in marks.items()):
            log.warning("saved dedup cache does not match the logs (restored, copied or cut "
                        "short since): rebuilding from the logs' tails path=%s",
                        self.dedup_path)
            self.dedup.clear()
            return None
        return {ns: max(index, self.store.first_index(ns)) for ns, (index, _) in marks.items()}

    def _log_matches(self, ns: str, index: int, event_id: bytes) -> bool:
        """The log holds `index` records, the last of them `event_id` (unless deleted)."""
        if index > self.store.next_index(ns):
            return False
        if index == 0 or index - 1 < self.store.first_index(ns):
            return index > 0 or not event_id
        try:
            records = self.store.read(ns, index - 1, 1)
        except CorruptRecordError:
            return False
        return bool(records) and record_id(records[0]) == event_id

    def _replay_keys(self, ns: str, index: int) -> None:
        """Add the keys of ns's records from `index` on, aged from their `created_at`."""
        self.dedup.extend(self._keys_from(ns, index))

    def _keys_from(self, ns: str, index: int):
        """(subject, key, created_at seconds) of each keyed record from `index` on, read
        as the publish read it (lone surrogates are valid JSON here, not to orjson), so
        the keys are the same bytes."""
        def skip(exc: CorruptRecordError) -> None:  # readers hear of it; start-up goes on
            log.warning("dedup rebuild skips a corrupt record ns=%s index=%d", ns, exc.index)

        for record in records_between(lambda at: self.store.read(ns, at, DEDUP_READ_BYTES),
                                      index, self.store.next_index(ns), skip):
            if b'"key":' in record:
                (event,) = scan_body(record)[1]
                if event.key_value:
                    yield (event.subject, event.key_value, parse_rfc3339(event.created_at) / 1e9)

    def save_dedup(self, force: bool = False, step_keys: int = 0):
        """The cache as a file's contents, marked with the logs' heads, in pieces of about
        `step_keys` keys (see DedupCache.dump_steps; 0: one piece), if it or a head moved
        since the last save, or `force`; None otherwise. `write_dedup` puts the joined
        pieces on disk. Saved often, a start-up after a crash replays little of the logs."""
        if self.dedup_path is None or not self.dedup.enabled:
            return None
        heads = [self.store.next_index(ns) for ns in self.config.namespaces]
        if not force and (self.dedup.changes, heads) == self._saved:
            return None
        self._saved = (self.dedup.changes, heads)
        marks = {}
        for ns, head in zip(self.config.namespaces, heads):
            last = b""
            if head > self.store.first_index(ns):
                try:
                    records = self.store.read(ns, head - 1, 1)
                except CorruptRecordError:
                    return None  # no mark to check it by: the tails will do at start-up
                last = record_id(records[0]) if records else b""
            marks[ns] = (head, last)
        return self.dedup.dump_steps(marks, step_keys)

    def write_dedup(self, data: bytes) -> None:
        """Replace the saved cache by `data`, atomically (blocking: an executor's job; two
        writes may overlap, each through its own temporary file)."""
        path = Path(self.dedup_path)
        try:
            replace_file(path, data)
        except OSError as exc:
            log.warning("cannot save the dedup cache path=%s error=%r", path, exc)

    # -- publishing -------------------------------------------------------------------------
    def publish(self, events: list[ParsedEvent], is_batch: bool, done: Publication) -> None:
        """Validate, then store or route to an inbox; `done` answers the outcome.

        Raises PublishRefused for a publish refused at once (400 for anything invalid, 409
        for an id the store holds or a key seen before); `done` is then never called.
        """
        try:
            namespace, ids, stamps, records, keyed = stamp_events(events, is_batch)
        except ValueError as exc:
            raise PublishRefused(400, str(exc)) from None
        if records_size(records) > self.max_record:
            for i, record in enumerate(records):
                if len(record) > self.max_record:
                    where = f"batch item {i}" if is_batch else "the event"
                    raise PublishRefused(413, f"{where} is {len(record)} bytes as stored, more "
                                              f"than --max-event-size ({self.config.max_event_size}"
                                              f" bytes) plus {RECORD_ENVELOPE} for its other "
                                              f"fields")
        if namespace is self._last_namespace:
            name = self._last_name
        else:
            name = self._declared.get(namespace)
            if name is not None:
                self._last_namespace, self._last_name = namespace, name
        if name is None:
            if namespace != INBOX:
                raise PublishRefused(400, f"namespace {namespace.decode(errors='replace')!r} "
                                          f"is not declared; declared namespaces: "
                                          f"{', '.join(sorted(self.namespaces))}")
            subject, record = events[0].subject, records[0]
            self.fanout.route_inbox(subject, record)
            done.answer(ids, stamps, -1)
            self.store.publish_inbox(subject, record)
            return
        supplied = supplied_ids(events)
        if supplied:
            self.store.reserve_ids(name, supplied)
        reserved = None
        if keyed and self.dedup.enabled:
            try:
                reserved = self._reserve_keys(keyed)
            except PublishRefused:
                if supplied:
                    self.store.release_ids(name, supplied)
                raise
        done.bind(self.dedup, name, ids, stamps, reserved)
        self.store.publish(name, events, records, reserved is not None, done)

    def _reserve_keys(self, keyed: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """Refuse (409) a key seen before; else remember it, as the event is about to land."""
        dedup, added = self.dedup, []
        for subject, key in keyed:
            entry = dedup.reserve(subject, key)
            if entry is None:
                for earlier in added:
                    dedup.discard(earlier)
                raise PublishRefused(409, "key was processed before")
            added.append(entry)
        return added

    # -- acks ---------------------------------------------------------------------------------
    def settle(self, consumer_id: bytes, event_ids: list[bytes], action: str, delay: float,
               answer: Answer) -> None:
        """A consumer's ack, nak, term or progress of each of `event_ids` (acks are idempotent:
        unknown consumers or events are fine, SPEC §3.3); `answer` once, when the group's state
        is written. Raises ValueError for an action other than ack on a
        plain subscription (before anything is settled)."""
        consumer = self.fanout.consumers.get(consumer_id)
        self.metrics.acks += len(event_ids)
        if isinstance(consumer, Member):
            for event_id in event_ids:
                consumer.settle(event_id, action, delay)
            self.groups.after_commit(answer)
            return
        if action != "ack" and consumer is not None:
            self.metrics.acks -= len(event_ids)
            raise ValueError(f"action={action} is for consumer group members (subscribe "
                             "with group=); this consumer takes plain acks")
        for event_id in event_ids:
            if consumer is not None:
                consumer.ack(event_id)
            else:  # the stream may live on another front-end of a clustered store
                self.store.forward_ack(consumer_id, event_id, action, delay)
        answer(None)

    # -- StoreListener: what the store tells the bus -----------------------------------------
    def appended(self, namespace: str, records: list[bytes], next_index: int) -> None:
        self.fanout.push(namespace, records, next_index)

    def inbox_event(self, subject: bytes, record: bytes) -> None:
        self.fanout.route_inbox(subject, record)

    def ack_forwarded(self, consumer_id: bytes, event_id: bytes, action: str = "ack",
                      delay: float = 0.0) -> None:
        """It carries no token, so it only applies to consumers of an open bus (no
        --auth-file owner). A nak, term or progress only to a group member."""
        consumer = self.fanout.consumers.get(consumer_id)
        if consumer is None or consumer.owner is not None:
            return
        if isinstance(consumer, Member):
            consumer.settle(event_id, action, delay)
        elif action == "ack":
            consumer.ack(event_id)

    def published(self, namespace: str, events: int, size: int) -> None:
        self.metrics.published(namespace, events, size)

    def synced(self, seconds: float) -> None:
        self.metrics.fsync_seconds(seconds)

    def storage_failed(self, namespace: str, reason: str) -> None:
        """For /healthz and /metrics; the store itself refuses the namespace's publishes."""
        self.faults[namespace] = reason
