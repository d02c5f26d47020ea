"""The bus itself: validation of events, dedup, publishing through the store, acks.

Nothing here knows HTTP or which store it has: results go back through callbacks, new
records come back from the store as `appended` (the broker is its StoreListener) and
reach subscribers through the fan-out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from busd._core import ParsedEvent, scan_body, stamp_events, supplied_ids
from busd.bus.dedup import DedupCache
from busd.bus.fanout import FanOut
from busd.server.config import Config
from busd.server.metrics import Metrics
from busd.store.errors import CorruptRecordError, PublishRefused
from busd.store.interface import Store
from busd.wire import INBOX_NAMESPACE

log = logging.getLogger("busd.bus.broker")

INBOX = INBOX_NAMESPACE.encode()
DEDUP_REBUILD_RECORDS = 100_000  # how much of each log's tail rebuilds the dedup cache


class Published:
    """What a stored (or routed) publish answers: ids, timestamps, first index."""

    __slots__ = ("ids", "created_at", "first_index")

    def __init__(self, ids: list[bytes], created_at: list[bytes], first_index: int) -> None:
        self.ids = ids
        self.created_at = created_at
        self.first_index = first_index


PublishCallback = Callable[[Published | PublishRefused], None]


class Broker:
    """Owns the namespaces (through the store), the subscriptions (through the fan-out)
    and the dedup state."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.namespaces = frozenset(config.namespaces)
        self._declared = {ns.encode(): ns for ns in config.namespaces}
        self.dedup = DedupCache(config.dup_size, config.dup_ttl)
        self.metrics = Metrics(config.namespaces)
        self.fanout = FanOut(config.namespaces, self.metrics)
        self.faults: dict[str, str] = {}  # namespace -> why its storage is out of service

    # -- start-up -------------------------------------------------------------------------
    def rebuild_dedup(self) -> int:
        """Refill the dedup cache from each log's tail, so a restart lets no duplicate in.
        Only what the store has at hand is read (a JetStream store has nothing yet, and
        refuses keys it has seen itself)."""
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
                        # read as the publish read it (lone surrogates are valid JSON here,
                        # not to orjson), so the keys are the same bytes
                        (event,) = scan_body(record)[1]
                        if event.key_value:
                            self.dedup.add(event.subject, event.key_value)
                            seen += 1
        return seen

    # -- publishing -------------------------------------------------------------------------
    def publish(self, events: list[ParsedEvent], is_batch: bool, done: PublishCallback) -> None:
        """Validate, then store or route to an inbox; `done` gets the outcome.

        Raises PublishRefused for a publish refused at once (400 for anything invalid, 409
        for an id the store holds or a key seen before); `done` is then never called.
        """
        try:
            namespace, ids, stamps, records, keyed = stamp_events(events, is_batch)
        except ValueError as exc:
            raise PublishRefused(400, str(exc)) from None
        name = self._declared.get(namespace)
        if name is None:
            if namespace != INBOX:
                raise PublishRefused(400, f"namespace {namespace.decode(errors='replace')!r} "
                                          f"is not declared; declared namespaces: "
                                          f"{', '.join(sorted(self.namespaces))}")
            subject, record = events[0].subject, records[0]
            self.fanout.route_inbox(subject, record)
            done(Published(ids, stamps, -1))
            self.store.publish_inbox(subject, record)
            return
        supplied = supplied_ids(events)
        if supplied:
            self.store.reserve_ids(name, supplied)
        reserved = keyed if keyed and self.dedup.enabled else None
        if reserved:
            try:
                self._reserve_keys(reserved)
            except PublishRefused:
                self.store.release_ids(name, supplied)
                raise

        def stored(outcome: int | PublishRefused) -> None:
            if isinstance(outcome, int):
                done(Published(ids, stamps, outcome))
                return
            if reserved and not outcome.keys_taken:
                self._release(reserved)
            done(outcome)

        self.store.publish(name, events, records, reserved is not None, stored)

    def _reserve_keys(self, keyed: list[tuple[bytes, bytes]]) -> None:
        """Refuse (409) a key seen before; else remember it, as the event is about to land."""
        dedup, added = self.dedup, []
        for subject, key in keyed:
            if dedup.seen(subject, key):
                self._release(added)
                raise PublishRefused(409, "key was processed before")
            dedup.add(subject, key)
            added.append((subject, key))

    def _release(self, keys: list[tuple[bytes, bytes]]) -> None:
        for subject, key in keys:
            self.dedup.discard(subject, key)

    # -- acks ---------------------------------------------------------------------------------
    def ack(self, consumer_id: bytes, event_id: bytes) -> None:
        """Acks are idempotent: unknown consumers or events are fine (SPEC §3.3)."""
        self.metrics.acks += 1
        consumer = self.fanout.consumers.get(consumer_id)
        if consumer is not None:
            consumer.ack(event_id)
        else:  # the stream may live on another front-end of a clustered store
            self.store.forward_ack(consumer_id, event_id)

    # -- StoreListener: what the store tells the bus -----------------------------------------
    def appended(self, namespace: str, records: list[bytes], next_index: int) -> None:
        self.fanout.push(namespace, records, next_index)

    def inbox_event(self, subject: bytes, record: bytes) -> None:
        self.fanout.route_inbox(subject, record)

    def ack_forwarded(self, consumer_id: bytes, event_id: bytes) -> None:
        """It carries no token, so it only applies to consumers of an open bus (no
        --auth-file owner)."""
        consumer = self.fanout.consumers.get(consumer_id)
        if consumer is not None and consumer.owner is None:
            consumer.ack(event_id)

    def published(self, namespace: str, events: int, size: int) -> None:
        self.metrics.published(namespace, events, size)

    def synced(self, seconds: float) -> None:
        self.metrics.fsync_seconds(seconds)

    def storage_failed(self, namespace: str, reason: str) -> None:
        """For /healthz and /metrics; the store itself refuses the namespace's publishes."""
        self.faults[namespace] = reason
