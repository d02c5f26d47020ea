# cython: annotation_typing=False
"""What a store calls back once per publish, with its outcome: the index of its first
event, or why the store refused it. The bus's Publication is one.

A class, not any callable: the local store's group commit answers every publish of a
group in a loop, and compiled (setup.py, stored.pxd) it calls `stored` in C, with the
index as a C integer; a call through `__call__` builds an argument tuple and an int.
"""

from __future__ import annotations

from busd.store.errors import PublishRefused


class Stored:
    """Subclasses say what `stored` and `refused` do."""

    def __call__(self, outcome: int | PublishRefused) -> None:
        """Either outcome, for a store that has it as one value."""
        if isinstance(outcome, int):
            self.stored(outcome)
        else:
            self.refused(outcome)

    def stored(self, first: int) -> None:
        """The events are in the store, the first at index `first` (-1: routed to an inbox,
        not stored)."""
        raise NotImplementedError

    def refused(self, reason: PublishRefused) -> None:
        """The store did not take the events, or cannot say that they are durable."""
        raise NotImplementedError
