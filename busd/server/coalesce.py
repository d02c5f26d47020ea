# cython: annotation_typing=False, nonecheck=True
"""Small stream writes held per connection while the loop is busy, then written together.

Live fan-out to many subscriptions on distinct subjects gives each stream about one event
per append; one socket write (a syscall, ~4 µs on loopback) per event was half the
server's CPU (perf/RESULTS.md, "Fan-out: writes coalesced"). So while the loop is busy a
stream's small writes are held, and a connection's held bytes go out in one write: once a
loop iteration passed in which no stream write was held (the loop has caught up), once
the connection holds MAX_HELD bytes, or MAX_DELAY after the first write held. The write
that finds the loop quiet is not held: it starts the watch. So an idle server sends a lone
event at once (holding it cost ~18 µs of publish→receive p50 and doubled p99), and a busy
one writes many events per syscall.

Compiled (setup.py, with coalesce.pxd's C layout): the compiled HttpConnection asks
`should_hold` and counts `writes` once per delivery, as C. The source runs uncompiled as
the oracle in tests/server/test_coalesce.py.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from busd._core import monotonic

log = logging.getLogger("busd.server.coalesce")

MAX_HELD = 64 << 10  # bytes one connection holds; a larger write goes out at once
MAX_DELAY = 0.02  # seconds a held write may wait while the loop stays busy


class Holder(Protocol):
    def flush(self) -> None:
        """Write what this connection holds."""
        ...


class WriteCoalescer:
    """The connections that hold bytes, and when they are written."""

    def __init__(self, max_delay: float = MAX_DELAY) -> None:
        self.held: dict[Holder, None] = {}  # in the order they started holding
        self.writes = 0  # writes held so far (a busy loop keeps adding to it)
        self.max_delay = max_delay
        self._seen = 0  # self.writes when the watch started or last ticked
        self._since = 0.0
        self._scheduled = False
        self._loop = None  # the loop it serves, looked up once: CPython 3.11 answers
        # asyncio.get_running_loop() with a getpid(2), once per lone event on an idle server

    def should_hold(self) -> bool:
        """Whether a stream write is to be held. The first while no watch runs is not: it
        goes out at once (an idle server sends a lone event with no delay) and starts the
        watch, under which what follows is held until a loop iteration passes without a held
        write, or max_delay. So a loop making one stream write per iteration writes each at
        once: holding it would save no system call."""
        if self._scheduled:
            return True
        self._scheduled = True
        self._seen = self.writes
        self._since = monotonic()
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._loop.call_soon(self._tick)
        return False

    def hold(self, conn: Holder) -> None:
        """conn started holding bytes (should_hold() said so): it is flushed with the others."""
        self.held[conn] = None

    def _tick(self) -> None:
        """Once per loop iteration while writes keep being held (bounded by max_delay),
        then write everything held."""
        if self._seen != self.writes and monotonic() - self._since < self.max_delay:
            self._seen = self.writes
            self._loop.call_soon(self._tick)
            return
        self._scheduled = False
        held, self.held = self.held, {}
        for conn in held:
            try:
                conn.flush()
            except Exception:  # noqa: BLE001 - one connection's failure holds up no other
                log.exception("writing held stream bytes failed")
