"""A pass over many connections spread over the event loop's turns.

The once-a-second housekeeping (pings, timeouts) visits every connection; with 100,000
open streams one pass is tens of milliseconds of Python, which would stall every live
delivery behind it. A Sweep visits a snapshot of them a slice per loop callback instead,
so other callbacks run between slices.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

Item = TypeVar("Item")

SLICE = 500  # items per callback: well under a millisecond of visits


class Sweep(Generic[Item]):
    """visit(item, now) for every item of a snapshot, `size` items per loop callback; a
    pass asked for while one is still going is skipped (the next tick starts afresh)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, visit: Callable[[Item, float], None],
                 size: int = SLICE) -> None:
        self.loop = loop
        self.visit = visit
        self.size = size
        self._items: Iterator[Item] | None = None

    @property
    def running(self) -> bool:
        return self._items is not None

    def start(self, items: Iterable[Item]) -> None:
        if self._items is None:
            self._items = iter(tuple(items))
            self._slice()

    def _slice(self) -> None:
        now, visit, left = time.monotonic(), self.visit, self.size
        for item in self._items:
            visit(item, now)
            left -= 1
            if not left:
                self.loop.call_soon(self._slice)
                return
        self._items = None
