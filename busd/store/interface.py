"""The store interface: everything the bus layer asks of storage, and what storage tells it.

Two stores implement it: LocalStore (segment logs in a data directory, group commit on
the loop) and JetStreamStore (NATS JetStream streams, this process one of many
front-ends). The bus layer sees only `Store`, so it never asks which one it has.

What storage tells the bus is a StoreListener (listener.py), what it answers a publish
with a Stored (stored.py): classes, so that a compiled store calls them in C.

Indexes are per namespace and dense: a namespace holds [first_index, next_index).
Everything here runs on the event loop; `done` callbacks are called there too, possibly
before the call that was given them returns.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from busd._core import ParsedEvent, Pattern
from busd.store.listener import StoreListener
from busd.store.stored import Stored

Synced = Callable[[BaseException | None], None]


class Store(Protocol):
    """Storage as the broker and consumers use it."""

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self, listener: StoreListener) -> Mapping[str, object]:
        """Open (recover, connect) every namespace and start telling `listener`; what was
        found, per namespace, for the log."""
        ...

    async def stop(self) -> None:
        """Close for good; what was written is synced first."""
        ...

    def fsync(self, done: Synced) -> None:
        """Make everything written durable, off the loop; `done(error)`. Callers that
        overlap share one fsync."""
        ...

    @property
    def dirty(self) -> bool:
        """Something was written that `fsync` has not made durable yet."""
        ...

    def apply_retention(self, now: float) -> int:
        """Delete what retention no longer keeps; how many segments went."""
        ...

    def stats(self) -> dict[str, dict[str, int]]:
        """Per namespace: count, bytes, first_index, next_index, segments."""
        ...

    def first_index(self, namespace: str) -> int: ...

    def next_index(self, namespace: str) -> int: ...

    # -- writing --------------------------------------------------------------------------
    def reserve_ids(self, namespace: str, ids: list[bytes]) -> None:
        """Ids the publisher supplied (a restore keeps them): raise PublishRefused for ones
        the store will not take, else hold them for the `publish` that follows. The local
        store refuses an id twice in a batch (400), and one its namespace holds or a
        publish of this group will store (409); JetStream refuses one its front-end is
        storing here, and asks the cluster about the rest in `publish`."""
        ...

    def release_ids(self, namespace: str, ids: list[bytes]) -> None:
        """The publish `ids` were reserved for was refused before it got to `publish`."""
        ...

    def publish(self, namespace: str, events: list[ParsedEvent], records: list[bytes],
                dedup: bool, done: Stored) -> None:
        """Store one request's records (stamped from `events`) atomically; `done` gets the
        first one's index once they are as durable as the store promises (normally after
        `appended` announced them), or a PublishRefused. `dedup`: the store refuses keyed
        events whose key it has seen too, where it can."""
        ...

    def publish_inbox(self, subject: bytes, record: bytes) -> None:
        """An inbox event this front-end routed: pass it to the other front-ends."""
        ...

    def forward_ack(self, consumer_id: bytes, event_id: bytes, action: str = "ack",
                    delay: float = 0.0) -> None:
        """An ack (or a group's nak, term, progress) for a consumer not held here: pass it
        to the other front-ends."""
        ...

    # -- reading --------------------------------------------------------------------------
    def read(self, namespace: str, start_index: int, max_bytes: int, disk: bool = True
             ) -> list[bytes] | None:
        """The records from start_index that are at hand, at least one unless at the head
        ([]); None when none are at hand and `fetch` must get them. Raises
        HistoryTruncatedError, CorruptRecordError (for the first record asked for).
        disk=False: what is on disk is not at hand (the loop must not wait for it)."""
        ...

    async def fetch(self, namespace: str, start_index: int, max_bytes: int
                    ) -> tuple[int, list[bytes]]:
        """What `read` answered None for: (index of the first, a contiguous run of records
        from start_index on). Raises as `read` does."""
        ...

    def fetch_sse(self, namespace: str, start_index: int, max_bytes: int,
                  pattern: Pattern | None) -> Awaitable[tuple[int, bytes, int, int]]:
        """What `fetch` gets, as the SSE chunk of the records that match pattern (None:
        all, busd._core.sse_of): (index of the first, chunk or b"", records in it, records
        read). How catch-up reads: a store may frame (and open) them off the loop, and
        start doing so before the caller yields (a future, not a coroutine)."""
        ...

    def locate(self, namespace: str, start: bytes) -> int | str | Awaitable[int | str]:
        """The first index to deliver for `start` (oldest, newest or an event id: the one
        after it), or the reason it cannot be served; an awaitable of either when the
        answer is not at hand."""
        ...
