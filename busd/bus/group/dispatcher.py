"""One consumer group's delivery: which member gets which event, and what happens to the
events nobody has settled yet.

A group is a cursor into its namespace plus its *pending* events (delivered, unsettled),
each in one state: in flight with a member (until ack_wait or its backoff step runs out),
waiting (a nak's delay), ready (to be delivered again, before anything new), or being
dead-lettered. Only (index, id, deliveries, state) is kept per pending event: a
redelivery reads the record back from the store, so memory does not grow with payloads.

Members get events round-robin among those with room (max_inflight) whose socket is not
full, so no member idles while another has a backlog it cannot take. The cursor stops
when the group's `max_pending` events are pending (naks with long delays cannot grow it
further), and goes on as they are settled.
Every change is recorded in the journal and committed by the registry once per loop
iteration; acks are answered after that write.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import deque
from typing import TYPE_CHECKING, Protocol

from busd._core import Pattern, record_id, record_subject
from busd.bus.group.journal import Counters, Journal
from busd.bus.group.settings import GroupSettings
from busd.store.errors import CorruptRecordError, HistoryTruncatedError
from busd.store.interface import Store

if TYPE_CHECKING:
    from busd.bus.group.member import Member

log = logging.getLogger("busd.bus.group")

READ_AHEAD_BYTES = 256 << 10
SCAN_PER_STEP = 20_000  # records examined per step before yielding to the loop
LAG_SCAN_RECORDS = 100_000  # GET /groups counts matching events exactly up to this far
DEAD_LETTER_RETRY = 1.0
INFLIGHT, WAITING, READY, DYING = range(4)
ACTIONS = ("ack", "nak", "term", "progress")


class Host(Protocol):
    """What a group asks of the registry."""

    def changed(self, group: Group) -> None:
        """The group's state changed: commit its journal in this loop iteration."""
        ...

    def dead_letter(self, group: Group, record: bytes, reason: str, deliveries: int,
                    done) -> None:
        """Store `record` on the group's dead-letter subject; done(ok: bool)."""
        ...

    def wait_for_append(self, group: Group) -> None:
        """The group is at the head: wake it on the namespace's next append."""
        ...


class Pending:
    """One delivered, unsettled event."""

    __slots__ = ("index", "event_id", "deliveries", "state", "member", "due", "token")

    def __init__(self, index: int, event_id: bytes | None, deliveries: int) -> None:
        self.index = index
        self.event_id = event_id  # None after a restart, until it is read again
        self.deliveries = deliveries
        self.state = READY
        self.member: Member | None = None
        self.due = 0.0
        self.token = 0  # bumped on every state change: older timer entries are stale


def with_deliveries(record: bytes, deliveries: int) -> bytes:
    """The record as a group member gets it: one more field, the delivery count."""
    return b'%s,"deliveries":%d}' % (record[:-1], deliveries)


def next_with_room(members: list[Member], turn: int, skip_paused: bool
                   ) -> tuple[Member | None, int]:
    """Round-robin from `turn`: the next member with room (max_inflight), and the turn
    after it (so no member idles while another has a backlog)."""
    count = len(members)
    for k in range(count):
        member = members[(turn + k) % count]
        if (not (skip_paused and member.paused)
                and len(member.inflight) < member.max_inflight):
            return member, (turn + k + 1) % count
    return None, turn


class Group:
    """One group: its members, its pending events, its cursor and its timers."""

    def __init__(self, settings: GroupSettings, journal: Journal, store: Store, host: Host,
                 counters: Counters, pending: dict[int, int]) -> None:
        self.settings = settings
        self.namespace = settings.namespace
        self.name = settings.name
        self.journal = journal
        self.store = store
        self.host = host
        self.loop = asyncio.get_running_loop()
        self.pattern = Pattern(*(subject.encode() for subject in settings.subjects))
        self.dead_letter_subject = settings.dead_letter.encode()
        self.counters = counters
        self.members: list[Member] = []
        self.pending: dict[int, Pending] = {}
        self.by_id: dict[bytes, int] = {}
        self.ready: deque[int] = deque()
        self.timers: list[tuple[float, int, int]] = []  # heap of (due, token, index)
        self.done = False
        self._turn = 0
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0
        self._ahead: list[bytes] = []
        self._ahead_index = 0
        self._first_seen = -1
        for index in sorted(pending):  # after a restart: all of them go out again first
            entry = self.pending[index] = Pending(index, None, pending[index])
            self.ready.append(index)
            entry.state = READY

    # -- what the registry and members call ----------------------------------------------
    @property
    def ack_floor(self) -> int:
        return min(self.pending, default=self.counters.cursor)

    def join(self, member: Member) -> None:
        self.members.append(member)
        self.schedule()

    def leave(self, member: Member) -> None:
        """A member is gone: its unacked events are ready for the others at once."""
        if member not in self.members:
            return
        self.members.remove(member)
        for index in sorted(member.inflight, reverse=True):
            entry = self.pending.get(index)
            if entry is not None and entry.member is member:
                entry.member = None
                entry.token += 1
                entry.state = READY
                self.ready.appendleft(index)
        member.inflight.clear()
        self.schedule()

    def wake(self) -> None:
        """New records were appended (the fan-out wakes a group waiting at the head)."""
        self.schedule()

    def schedule(self) -> None:
        if not self._scheduled and not self.done:
            self._scheduled = True
            self.loop.call_soon(self._pump)

    def settle(self, event_id: bytes, action: str, delay: float = 0.0) -> None:
        """ack, nak (again after `delay`), term (dead-letter now) or progress (restart the
        wait) an event; unknown or already settled ones are ignored (idempotent)."""
        index = self.by_id.get(event_id)
        entry = None if index is None else self.pending.get(index)
        if entry is None or entry.state == DYING:
            return
        if action == "progress":
            if entry.state == INFLIGHT:
                self._time(entry, self.settings.wait_after(entry.deliveries))
            return
        self._release(entry)
        if action == "ack":
            self.counters.acked += 1
            self._settled(entry)
        elif action == "term":
            self._kill(entry, "term")
        elif self._exhausted(entry):
            self._kill(entry, "max_deliver")
        elif delay > 0:
            entry.state = WAITING
            self._time(entry, delay)
        else:
            entry.state = READY
            entry.token += 1
            self.ready.appendleft(entry.index)
        self.schedule()

    def close(self, reason: str) -> None:
        """The group is deleted: end every member's stream with `reason`."""
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
        for member in tuple(self.members):
            member.fail(reason)
        self.members.clear()

    def snapshot(self) -> list[tuple[int, int]]:
        """(index, deliveries) of every pending event, for a journal compaction."""
        return [(index, entry.deliveries) for index, entry in self.pending.items()]

    # -- delivery -------------------------------------------------------------------------
    def _pump(self) -> None:
        self._scheduled = False
        if self.done:
            return
        self._drop_retained()
        batches: dict[Member, list[bytes]] = {}
        loop_time = self.loop.time()
        budget = [SCAN_PER_STEP]
        while True:
            member = self._member_with_room()
            if member is None:
                break
            entry, record = self._next_delivery(budget)
            if entry is None:
                break
            entry.deliveries += 1
            if entry.deliveries > 1:
                self.counters.redeliveries += 1
            entry.state = INFLIGHT
            entry.member = member
            member.inflight.add(entry.index)
            self._push_timer(entry, loop_time + self.settings.wait_after(entry.deliveries))
            self.journal.deliver(entry.index, entry.deliveries)
            batches.setdefault(member, []).append(with_deliveries(record, entry.deliveries))
        for member, records in batches.items():
            member.send(records)
        if batches or budget[0] < SCAN_PER_STEP:
            self.host.changed(self)
        if budget[0] <= 0:
            self.schedule()
        self._arm()

    def _member_with_room(self) -> Member | None:
        member, self._turn = next_with_room(self.members, self._turn, True)
        return member

    def _next_delivery(self, budget: list[int]) -> tuple[Pending | None, bytes]:
        """The next event to deliver: one that is ready again first, else the next
        matching record after the cursor (None at the head, at the pending limit, or when
        this step's scan budget is spent)."""
        while self.ready:
            entry = self.pending.get(self.ready.popleft())
            if entry is None or entry.state != READY:
                continue
            record = self._record(entry)
            if record is not None:
                return entry, record
        if len(self.pending) >= self.settings.max_pending:
            return None, b""
        counters = self.counters
        while budget[0] > 0:
            record = self._at_cursor()
            if record is None:
                return None, b""
            index = counters.cursor
            counters.cursor += 1
            budget[0] -= 1
            if self._matches(record):
                event_id = record_id(record)
                entry = self.pending[index] = Pending(index, event_id, 0)
                self.by_id[event_id] = index
                return entry, record
        return None, b""

    def _matches(self, record: bytes) -> bool:
        subject = record_subject(record)
        # its own dead letters never come back
        return subject != self.dead_letter_subject and self.pattern.matches(subject)

    def _at_cursor(self) -> bytes | None:
        """The record at the cursor from a read-ahead buffer; None at the head (the
        fan-out then wakes the group on the next append)."""
        cursor = self.counters.cursor
        offset = cursor - self._ahead_index
        if not 0 <= offset < len(self._ahead):
            try:
                records = self.store.read(self.namespace, cursor, READ_AHEAD_BYTES)
            except HistoryTruncatedError:
                self._drop_retained()
                return None
            except CorruptRecordError:
                log.error("group skips a corrupt record ns=%s group=%s index=%d",
                          self.namespace, self.name, cursor)
                self.counters.cursor += 1
                self.counters.skipped += 1
                return self._at_cursor()
            if not records:
                self.host.wait_for_append(self)
                return None
            self._ahead, self._ahead_index, offset = records, cursor, 0
        return self._ahead[offset]

    def _record(self, entry: Pending) -> bytes | None:
        """A pending event's record, read back for a redelivery or a dead letter; None
        (and the event is skipped, counted) when it is gone."""
        try:
            records = self.store.read(self.namespace, entry.index, 1)
        except (HistoryTruncatedError, CorruptRecordError) as exc:
            log.warning("group skips an unreadable pending event ns=%s group=%s index=%d "
                        "reason=%s", self.namespace, self.name, entry.index,
                        type(exc).__name__)
            self.counters.skipped += 1
            self._release(entry)
            self._settled(entry)
            return None
        record = records[0]
        if entry.event_id is None:
            entry.event_id = record_id(record)
            self.by_id[entry.event_id] = entry.index
        return record

    def _drop_retained(self) -> None:
        """Retention deleted records the group had not settled: they are skipped (never
        delivered again) and counted in `skipped_by_retention`."""
        first = self.store.first_index(self.namespace)
        if first <= self._first_seen:
            return
        self._first_seen = first
        counters = self.counters
        if counters.cursor < first:
            log.warning("retention deleted events a group had not read ns=%s group=%s "
                        "skipped=%d", self.namespace, self.name, first - counters.cursor)
            counters.skipped += first - counters.cursor
            counters.cursor = first
            self.host.changed(self)
        lost = [entry for index, entry in self.pending.items()
                if index < first and entry.state != DYING]
        for entry in lost:
            counters.skipped += 1
            self._release(entry)
            self._settled(entry)
        if lost:
            log.warning("retention deleted pending events of a group ns=%s group=%s "
                        "skipped=%d", self.namespace, self.name, len(lost))

    # -- settling -------------------------------------------------------------------------
    def _release(self, entry: Pending) -> None:
        member = entry.member
        if member is not None:
            member.inflight.discard(entry.index)
            entry.member = None

    def _settled(self, entry: Pending) -> None:
        del self.pending[entry.index]
        if entry.event_id is not None:
            self.by_id.pop(entry.event_id, None)
        self.journal.settle(entry.index)
        self.host.changed(self)

    def _exhausted(self, entry: Pending) -> bool:
        limit = self.settings.max_deliver
        return 0 < limit <= entry.deliveries

    def _kill(self, entry: Pending, reason: str) -> None:
        """Dead-letter the event; it stays pending (not delivered) until that is stored."""
        entry.state = DYING
        entry.token += 1
        record = self._record(entry)
        if record is None:
            return

        def stored(ok: bool) -> None:
            if self.done or self.pending.get(entry.index) is not entry:
                return
            if ok:
                self.counters.dead_letters += 1
                self._settled(entry)
            else:
                self.loop.call_later(DEAD_LETTER_RETRY, self._kill, entry, reason)

        log.info("dead letter ns=%s group=%s event=%s reason=%s deliveries=%d",
                 self.namespace, self.name, entry.event_id.decode(), reason, entry.deliveries)
        self.host.dead_letter(self, record, reason, entry.deliveries, stored)

    # -- timers ---------------------------------------------------------------------------
    def _time(self, entry: Pending, seconds: float) -> None:
        self._push_timer(entry, self.loop.time() + seconds)
        self._arm()

    def _push_timer(self, entry: Pending, due: float) -> None:
        """Entry's deadline; the older ones go stale (its token). Settled events leave
        theirs in the heap, so it is rebuilt from the live ones when they are outnumbered:
        without that, a group acking fast holds every deadline of the last ack_wait."""
        entry.token += 1
        entry.due = due
        heapq.heappush(self.timers, (due, entry.token, entry.index))
        if len(self.timers) > 2 * len(self.pending) + 64:
            self.timers = [(e.due, e.token, e.index) for e in self.pending.values()
                           if e.state in (INFLIGHT, WAITING)]
            heapq.heapify(self.timers)

    def _arm(self) -> None:
        if not self.timers or self.done:
            return
        due = self.timers[0][0]
        if self._timer is not None:
            if self._timer_due <= due:
                return
            self._timer.cancel()
        self._timer_due = due
        self._timer = self.loop.call_at(due, self._expire)

    def _expire(self) -> None:
        """ack_wait (or its backoff step) ran out, or a nak's delay is over."""
        self._timer = None
        now = self.loop.time()
        timers = self.timers
        while timers and timers[0][0] <= now:
            _, token, index = heapq.heappop(timers)
            entry = self.pending.get(index)
            if entry is None or entry.token != token:
                continue
            if entry.state == INFLIGHT:
                self._release(entry)
                if self._exhausted(entry):
                    self._kill(entry, "max_deliver")
                    continue
            elif entry.state != WAITING:
                continue
            entry.state = READY
            entry.token += 1
            self.ready.append(index)
        self.schedule()
        self._arm()

    # -- introspection --------------------------------------------------------------------
    def lag(self) -> int:
        """Matching events after the cursor but its own dead letters (a pattern matching
        the whole namespace matches them too): counted up to LAG_SCAN_RECORDS records, the
        rest assumed to match (an upper bound)."""
        store, ns = self.store, self.namespace
        head, index = store.next_index(ns), max(self.counters.cursor, store.first_index(ns))
        stop, matched = min(head, index + LAG_SCAN_RECORDS), 0
        while index < stop:
            try:
                records = store.read(ns, index, 4 << 20)
            except (HistoryTruncatedError, CorruptRecordError):
                break
            if not records:
                break
            records = records[:stop - index]
            index += len(records)
            matched += sum(1 for record in records if self._matches(record))
        return matched + head - index

    def describe(self) -> dict:
        counters = self.counters
        return {"namespace": self.namespace, "name": self.name,
                "subjects": list(self.settings.subjects),
                "created_at": self.settings.created_at, "settings": self.settings.shown(),
                "members": [member.describe() for member in self.members],
                "ack_floor": self.ack_floor, "cursor": counters.cursor,
                "next_index": self.store.next_index(self.namespace),
                "pending": len(self.pending), "acked": counters.acked, "lag": self.lag(),
                "redeliveries": counters.redeliveries, "dead_letters": counters.dead_letters,
                "skipped_by_retention": counters.skipped}
