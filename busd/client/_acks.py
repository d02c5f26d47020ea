"""A group member's acks, coalesced: acks made while another ack PUT of the subscription is
on its way (or, async, in the same loop tick) go out together in the next PUT, which
settles up to MAX_IDS ids at once (the server's bound), so a member acking every event
pays one round trip per batch, not per event. Each ack still gets its own outcome: the
answer to the PUT that carried it.

One leader at a time sends: the ack that found nobody sending, then, once its own PUT is
answered, the oldest ack still waiting (so no caller keeps sending the others' acks).
"""

from __future__ import annotations

from collections import deque
from typing import Any
from urllib.parse import quote

MAX_IDS = 1000  # event_id= values the server takes in one PUT
MAX_TARGET = 15_000  # bytes of request target (the server's URL bound is 16 KiB)


class Slot:
    """One ack waiting: its ids, its outcome once answered, and whether it is to lead."""

    __slots__ = ("consumer_id", "event_id", "done", "error", "lead", "wake")

    def __init__(self, consumer_id: str, event_id: str, wake: Any) -> None:
        self.consumer_id = consumer_id
        self.event_id = quote(event_id, safe="")
        self.done = False
        self.error: BaseException | None = None
        self.lead = False
        self.wake = wake  # the shell's way to wake the caller waiting on this slot


class AckQueue:
    """The acks of one subscription not sent yet, and whether a PUT of them is out. Not
    thread-safe: the sync shell holds a lock around every call."""

    def __init__(self) -> None:
        self.waiting: deque[Slot] = deque()
        self.sending = False

    def add(self, slot: Slot) -> bool:
        """Queue an ack: True if its caller is to lead (nobody is sending)."""
        self.waiting.append(slot)
        if self.sending:
            return False
        self.sending = slot.lead = True
        return True

    def take(self) -> tuple[str, list[Slot]]:
        """The next PUT's target and the acks it carries: the oldest waiting ones of one
        consumer id, within MAX_IDS and MAX_TARGET."""
        waiting, batch = self.waiting, []
        consumer_id = waiting[0].consumer_id
        target = f"/?consumer_id={quote(consumer_id, safe='')}"
        size, kept = len(target), deque()
        while waiting and len(batch) < MAX_IDS:
            slot = waiting.popleft()
            if slot.consumer_id != consumer_id:
                kept.append(slot)  # another connection's consumer: a later PUT
                continue
            size += len(slot.event_id) + 10
            if batch and size > MAX_TARGET:
                waiting.appendleft(slot)
                break
            batch.append(slot)
        waiting.extendleft(reversed(kept))
        return target + "".join(f"&event_id={s.event_id}" for s in batch), batch

    def abandon(self, slot: Slot) -> Slot | None:
        """Its caller gave up waiting: drop the ack if not taken yet; if it was to lead,
        the next leader (None: nobody waits, or it was not the leader)."""
        if slot in self.waiting:
            self.waiting.remove(slot)
        if not slot.lead or slot.done:
            return None
        return self._next_leader()

    def answered(self, batch: list[Slot], error: BaseException | None) -> Slot | None:
        """A PUT's outcome for each ack it carried; the next leader (None: nobody waits)."""
        for slot in batch:
            slot.done, slot.error = True, error
        return self._next_leader()

    def _next_leader(self) -> Slot | None:
        if not self.waiting:
            self.sending = False
            return None
        leader = self.waiting[0]
        leader.lead = True
        return leader
