# cython: annotation_typing=False
"""What a store tells the bus (the broker registers itself at `start`). The broker is the
one listener.

A class, not a protocol: the local store's group commit tells the listener about every
commit, and compiled (setup.py, listener.pxd) it calls `appended` and `published` through
the vtable instead of looking them up and calling them as Python methods.
"""

from __future__ import annotations


class StoreListener:
    """Subclasses say what each call does."""

    def appended(self, namespace: str, records: list[bytes], next_index: int) -> None:
        """Records are in the store, ending just before `next_index`; called in index order
        in the same step that moves `next_index`, so live readers see no gap."""
        raise NotImplementedError

    def published(self, namespace: str, events: int, size: int) -> None:
        """This process stored `events` records of `size` bytes (for the metrics)."""
        raise NotImplementedError

    def inbox_event(self, subject: bytes, record: bytes) -> None:
        """An inbox event published through another front-end."""
        raise NotImplementedError

    def ack_forwarded(self, consumer_id: bytes, event_id: bytes, action: str = "ack",
                      delay: float = 0.0) -> None:
        """An ack (or a group's nak, term, progress) another front-end received for a
        consumer that may be here."""
        raise NotImplementedError

    def synced(self, seconds: float) -> None:
        """An fsync finished after `seconds` (for the metrics)."""
        raise NotImplementedError

    def storage_failed(self, namespace: str, reason: str) -> None:
        """The store took `namespace` out of service until restart (it now refuses its
        publishes with 503); `reason` says why, for /healthz and the metrics."""
        raise NotImplementedError
