"""Who is subscribed, and how new records and inbox events reach them.

Every subscription is registered by id (acks find it there). A consumer of a stored
namespace that reached the head joins its namespace's *live* set: what the store appends
is pushed to it in the same step, framed once per distinct pattern. A manual-ack consumer
at the head *waits* instead, and is woken by the next append. Inbox subscriptions are
registered under their subject and get inbox events as they are routed; nothing is stored.
"""

from __future__ import annotations

from typing import Protocol

from busd._core import Pattern, sse_frame, sse_frame_matching
from busd.bus.inbox_owners import InboxOwners
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
    paused: bool
    done: bool
    live: bool

    def push(self, chunk: bytes, next_index: int) -> None:
        """Live delivery: `chunk` holds the framed records of the append that matched."""
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


class FanOut:
    """The registry of subscriptions and the push of new records and inbox events to them."""

    def __init__(self, namespaces: tuple[str, ...], metrics: Metrics) -> None:
        self.metrics = metrics
        self.consumers: dict[bytes, Subscriber] = {}
        self.live: dict[str, list[Reader]] = {ns: [] for ns in namespaces}
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
            self.live[reader.namespace].append(reader)

    def leave_live(self, reader: Reader) -> None:
        if reader.live:
            reader.live = False
            self.live[reader.namespace].remove(reader)

    def wait_for_append(self, reader: Reader) -> None:
        self.waiting[reader.namespace].add(reader)

    # -- delivery -------------------------------------------------------------------------
    def push(self, namespace: str, records: list[bytes], next_index: int) -> None:
        """Push appended records to live readers: framed once per distinct pattern."""
        framed: dict[bytes, tuple[bytes, int]] = {}
        events_out = self.metrics.events_out
        for reader in tuple(self.live[namespace]):
            if reader.paused or reader.done:
                continue
            pattern = reader.pattern
            chunk = framed.get(pattern.pattern)
            if chunk is None:
                if pattern.matches_all:
                    chunk = framed[pattern.pattern] = (sse_frame(records), len(records))
                else:
                    chunk = framed[pattern.pattern] = sse_frame_matching(records, pattern)
            events_out[namespace] += chunk[1]
            reader.push(chunk[0], next_index)
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
                metrics.events_out[INBOX_NAMESPACE] += 1
            else:
                metrics.dropped += 1
