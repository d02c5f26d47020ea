# cython: annotation_typing=False
"""Where the broker hands a publish to the store.

A class every store subclasses, besides the Store protocol's method of the same name:
compiled (setup.py, intake.pxd), the broker calls `publish` through the vtable, where a
Python method call cost ~400 instructions of a single-event publish's ~18,000.
"""

from __future__ import annotations

from busd._core import ParsedEvent
from busd.store.stored import Stored


class Intake:
    """Subclasses say what `publish` does."""

    def publish(self, namespace: str, events: list[ParsedEvent], records: list[bytes],
                dedup: bool, done: Stored) -> None:
        """Store one request's `records` (built from `events`) in `namespace`; `done` gets
        the first index or a PublishRefused. With `dedup`, keyed events were checked by the
        broker's cache (a store that deduplicates itself needs no more)."""
        raise NotImplementedError
