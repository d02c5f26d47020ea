# cython: annotation_typing=False, nonecheck=True
# cython: wraparound=True, boundscheck=True, cdivision=False
"""Who is subscribed, and how new records and inbox events reach them.

Every subscription is registered by id (acks find it there). A consumer of a stored
namespace that reached the head joins its namespace's *live* set: what the store appends
is pushed to it in the same step, framed once per distinct filter (a pattern, or the set of
patterns of a subscription with several `subject=`). The live set is indexed by pattern
(busd/bus/_sublist.pyx; a filter of several patterns sits under each of them, and gets a
record once however many it matches), so an append costs work for the patterns its
records match, not for every live reader: a reader that nothing matched is not visited,
and learns where the stream stands (`cursor`) when it leaves the live set. A manual-ack
consumer at the head *waits* instead, and is woken by the next append. Inbox subscriptions
are registered under their subject and get inbox events as they are routed; nothing is
stored.

Compiled (setup.py, with fanout.pxd's C layout): `push` loops over an append's groups once
per delivery, so it runs as C. The source runs uncompiled as the oracle in
tests/bus/test_fanout.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from busd._core import Pattern
from busd.bus._sublist import Sublist
from busd.bus.inbox_owners import InboxOwners
from busd.bus.sink import Sink
from busd.server.metrics import Metrics
from busd.wire import INBOX_NAMESPACE


class Subscriber(Protocol):
    """Any subscription: what an ack needs."""

    id: bytes
    owner: str | None  # the token that subscribed (None on an open bus)

    def ack(self, event_id: bytes) -> None: ...


class Reader(Subscriber, Protocol):
    """A subscription on a stored namespace."""

    namespace: str
    pattern: Pattern
    cursor: int  # the next index to deliver
    paused: bool
    done: bool
    live: bool
    sink: Sink  # live delivery writes an append's framed matching records here

    def push_failed(self, exc: Exception) -> None:
        """Writing a live delivery to the sink raised exc."""
        ...

    def wake(self) -> None:
        """Records were appended (for a reader that waits at the head)."""
        ...


class InboxReader(Subscriber, Protocol):
    """A subscription on one inbox subject."""

    subject: bytes

    def deliver(self, record: bytes) -> bool:
        """Send one inbox event; False when it was dropped (the reader is not reading)."""
        ...


class LiveGroup:
    """The live readers of one filter: one frame of each append goes to all of them, through
    each one's `sink.write`, bound once when it joined (a method of the reader called per
    delivery was a Python call from the compiled push)."""

    def __init__(self) -> None:
        self.readers: list[Reader] = []
        self.writes: list[Callable[[bytes], None]] = []  # readers[i].sink.write


class FanOut:
    """The registry of subscriptions and the push of new records and inbox events to them."""

    def __init__(self, namespaces: tuple[str, ...], metrics: Metrics) -> None:
        self.metrics = metrics
        self.consumers: dict[bytes, Subscriber] = {}
        self.live: dict[str, Sublist] = {ns: Sublist() for ns in namespaces}
        # the LiveGroup of each filter (its patterns) with live readers, per namespace
        self.live_groups: dict[str, dict[tuple[bytes, ...], LiveGroup]] = {
            ns: {} for ns in namespaces}
        self.pushed: dict[str, int] = dict.fromkeys(namespaces, 0)  # next_index of the last push
        self.waiting: dict[str, set[Reader]] = {ns: set() for ns in namespaces}
        self.inboxes: dict[bytes, set[InboxReader]] = {}
        self.inbox_owners = InboxOwners(
            lambda subject: (inbox.owner for inbox in self.inboxes.get(subject, ())))

    # -- registration ---------------------------------------------------------------------
    def add(self, reader: Reader) -> None:
        self.consumers[reader.id] = reader

    def remove(self, reader: Reader) -> None:
        """Drop every reference to a reader whose stream has ended."""
        self.consumers.pop(reader.id, None)
        self.leave_live(reader)
        self.waiting[reader.namespace].discard(reader)

    def add_inbox(self, inbox: InboxReader) -> None:
        self.consumers[inbox.id] = inbox
        self.inboxes.setdefault(inbox.subject, set()).add(inbox)

    def remove_inbox(self, inbox: InboxReader) -> None:
        self.consumers.pop(inbox.id, None)
        readers = self.inboxes.get(inbox.subject)
        if readers is not None:
            readers.discard(inbox)
            if not readers:
                del self.inboxes[inbox.subject]
                self.inbox_owners.keep(inbox.subject, inbox.owner)

    def join_live(self, reader: Reader) -> None:
        """A reader at the head starts receiving records straight from the append path."""
        if not reader.live:
            reader.live = True
            groups, patterns = self.live_groups[reader.namespace], reader.pattern.patterns
            group = groups.get(patterns)
            if group is None:
                group = groups[patterns] = LiveGroup()
                index = self.live[reader.namespace]
                for pattern in patterns:
                    index.insert(pattern, group)
            group.readers.append(reader)
            group.writes.append(reader.sink.write)

    def leave_live(self, reader: Reader) -> None:
        """Out of the live set; its cursor moves past every append pushed so far (those
        it was not sent matched nothing of its pattern)."""
        if reader.live:
            reader.live = False
            reader.cursor = max(reader.cursor, self.pushed[reader.namespace])
            groups, patterns = self.live_groups[reader.namespace], reader.pattern.patterns
            group = groups[patterns]
            i = group.readers.index(reader)
            del group.readers[i], group.writes[i]
            if not group.readers:
                del groups[patterns]
                index = self.live[reader.namespace]
                for pattern in patterns:
                    index.delete(pattern, group)

    def wait_for_append(self, reader: Reader) -> None:
        self.waiting[reader.namespace].add(reader)

    # -- delivery -------------------------------------------------------------------------
    def push(self, namespace: str, records: list[bytes], next_index: int) -> None:
        """Push appended records to the live readers they match: framed once per filter,
        each record once per reader however many of its patterns it matches."""
        index = self.live[namespace]
        if index:
            delivered = 0
            for group, chunk, matched in index.split_sse(records):
                readers = group.readers
                # distinct subscriptions: no copy, no inner loop (folding this case into
                # the loop below made push 15 % slower, perf/fanout_match.py)
                if len(readers) == 1:
                    reader = readers[0]
                    if not (reader.paused or reader.done):
                        _deliver(reader, group.writes[0], chunk, next_index)
                        delivered += matched
                    continue
                pushed = 0
                # copies: a delivery may make a reader leave the group
                readers, writes = tuple(readers), tuple(group.writes)
                for i in range(len(readers)):
                    reader = readers[i]
                    if not (reader.paused or reader.done):
                        _deliver(reader, writes[i], chunk, next_index)
                        pushed += 1
                delivered += pushed * matched
            self.metrics.events_delivered(namespace, delivered)
        self.pushed[namespace] = next_index
        waiting = self.waiting[namespace]
        if waiting:
            self.waiting[namespace] = set()
            for reader in waiting:
                reader.wake()

    def route_inbox(self, subject: bytes, record: bytes) -> None:
        """Hand an inbox event to the subscribers connected right now."""
        metrics = self.metrics
        for inbox in tuple(self.inboxes.get(subject, ())):
            if inbox.deliver(record):
                metrics.events_delivered(INBOX_NAMESPACE, 1)
            else:
                metrics.dropped += 1


def _deliver(reader: Reader, write: Callable[[bytes], None], chunk: bytes,
             next_index: int) -> None:
    """One live delivery: the chunk to the reader's sink, then its cursor past the append.
    What the write raises is the reader's (it ends that stream), never the push's."""
    try:
        write(chunk)
        reader.cursor = next_index
    except Exception as exc:  # noqa: BLE001 - handed to the reader, as any step's failure
        reader.push_failed(exc)
