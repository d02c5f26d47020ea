# cython: annotation_typing=False, nonecheck=True
"""The request-body bytes buffered by all connections together (`--max-body-memory`).

Each connection bounds its own body; this bounds their sum. Bytes are counted as they
arrive, at the end of each read that leaves a body incomplete (a large Content-Length alone
reserves nothing; a body read whole in one read is never counted, as the read holds it
anyway). Past the limit, connections stop being read (transport paused) and wait, oldest
body first, until room comes back.

Deadlock-free: half-received bodies that wait could hold the whole budget and wait on each
other forever, so the oldest body being received is never paused; it may go over the
limit, finishes (or times out, or its client leaves) and frees its bytes. Memory is thus
bounded by the limit, plus one body's own limit, plus the read (up to 256 KiB) in which a
connection passed the limit or started a body while it was spent.
"""

from __future__ import annotations

import select
from typing import Protocol


class Waiter(Protocol):
    """A connection receiving a body (HttpConnection): told to stop and to go on reading."""

    def wait_for_budget(self) -> None: ...
    def budget_granted(self) -> None: ...


class BodyBudget:
    """The shared count, and the bodies being received, read or waiting, oldest first."""

    __slots__ = ("limit", "used", "peak", "_bodies", "_reading", "_waiting")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0  # the most ever held at once (busd_body_bytes_peak)
        self._bodies: dict[Waiter, None] = {}  # bodies being received, oldest first
        self._reading: dict[Waiter, None] = {}  # of them, those being read
        self._waiting: dict[Waiter, None] = {}  # ... and those paused, in arrival order

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def take(self, conn: Waiter, size: int) -> None:
        """`size` more bytes of conn's body arrived (the first of them start its body)."""
        if conn not in self._bodies:
            self._bodies[conn] = self._reading[conn] = None
        self.used += size
        self.peak = max(self.peak, self.used)
        if self.used > self.limit:
            oldest = next(iter(self._bodies))
            for other in [c for c in self._reading if c is not oldest]:
                del self._reading[other]
                self._waiting[other] = None
                other.wait_for_budget()
        elif self._waiting:
            self._grant(next(iter(self._waiting)))  # room left: let one more in per read

    def passed(self, size: int) -> None:
        """A body of `size` bytes came and went within one read of its connection, which
        holds them anyway: never taken, it counts towards the peak only."""
        self.peak = max(self.peak, self.used + size)

    def give_back(self, conn: Waiter, size: int) -> None:
        """conn's body is done with (stored, answered, refused, or its client gone)."""
        self.used -= size
        self._bodies.pop(conn, None)
        self._reading.pop(conn, None)
        if conn in self._waiting:  # its body ended in the read that paused it
            self._grant(conn)
            del self._reading[conn]
        if self._bodies and next(iter(self._bodies)) in self._waiting:
            self._grant(next(iter(self._bodies)))  # the new oldest always proceeds
        if self._waiting and self.used <= self.limit:
            self._grant(next(iter(self._waiting)))

    def _grant(self, conn: Waiter) -> None:
        del self._waiting[conn]
        self._reading[conn] = None
        conn.budget_granted()


def peer_gone(sock) -> bool:
    """Whether the client of a socket we are not reading has closed or reset it: its FIN
    would only be seen by reading past the body bytes still queued, so ask the kernel."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLRDHUP)
    return any(events & (select.POLLRDHUP | select.POLLHUP | select.POLLERR)
               for _, events in poller.poll(0))
