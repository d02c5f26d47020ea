# cython: annotation_typing=False, nonecheck=True
"""One publish on its way to the log, and how its publisher hears the outcome.

The publisher (the API answering an HTTP request, a group storing a dead letter) makes a
Publication of its own kind, which says in `answer` what to do with the outcome; the broker
binds to it what the outcome concerns (the ids and stamps it gave the events, the dedup keys
it reserved for them) and hands it to the store, which tells it the outcome (it is the
store's Stored): the first index, or why not. One object per publish for all three layers,
called in C between them when compiled (setup.py, publication.pxd).
"""

from __future__ import annotations

import logging

from busd.store.errors import PublishRefused
from busd.store.stored import Stored

log = logging.getLogger("busd.bus.publication")


class Publication(Stored):
    """A publish in flight. Subclasses override `answer`."""

    def bind(self, dedup, namespace: str, ids: list[bytes], stamps: list[bytes],
             reserved: list | None) -> None:
        """The broker's part, once it stamped the events: what settling the publish needs."""
        self.dedup = dedup
        self.namespace = namespace
        self.ids = ids
        self.stamps = stamps
        self.reserved = reserved

    # The store's calls, once per publish of a group, in a loop over the group's publishes:
    # each settles or drops the reserved dedup keys, then answers. What answering raises (it
    # may start a stream pipelined behind it) is logged, and the rest of the group is
    # answered all the same.
    def stored(self, first: int) -> None:
        if self.reserved:
            for entry in self.reserved:
                self.dedup.settle(entry)
        self._answer(first)

    def refused(self, reason: PublishRefused) -> None:
        if self.reserved and not reason.keys_taken:  # a key taken by events not known to
            for entry in self.reserved:  # be durable stays unsaved
                self.dedup.discard(entry)
        self._answer(reason)

    def _answer(self, outcome: int | PublishRefused) -> None:
        try:
            self.answer(self.ids, self.stamps, outcome)
        except Exception:  # noqa: BLE001 - one answer's failure, not the group's
            log.exception("answering a publish failed ns=%s", self.namespace)

    def answer(self, ids: list[bytes], stamps: list[bytes],
               outcome: int | PublishRefused) -> None:
        """The events' ids and created_at stamps, then the index of the first (-1: routed to
        an inbox) or why the store refused them."""
        raise NotImplementedError
