"""What a consumer group is created with, parsed from the join request and kept beside its
state (`<name>.json`), and how it is shown by GET /groups."""

from __future__ import annotations

import re
from dataclasses import dataclass

from busd._core import validate_subject
from busd.wire import parse_duration

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
DEFAULT_ACK_WAIT = 30.0
DEFAULT_MAX_DELIVER = 5
MIN_WAIT = 0.01  # shorter waits turn unacked events into a flood of copies
MAX_WAIT = 7 * 86400.0
MAX_BACKOFF_STEPS = 32
# delivered, unsettled events a group may hold (JetStream's MaxAckPending): the cursor waits
# there, so naks with long delays cannot grow a group's memory further
MAX_PENDING = 50_000


class SettingsError(ValueError):
    """A group option that cannot be used (answered 400 with this reason)."""


def _duration(name: str, text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise SettingsError(f"invalid {name}: {exc}") from None
    if not MIN_WAIT <= seconds <= MAX_WAIT:
        raise SettingsError(f"invalid {name} {text!r}: must be between 10ms and 7 days")
    return seconds


def parse_delay(text: str) -> float:
    """`delay=` of a nak: empty is none, else a duration up to 7 days."""
    if not text:
        return 0.0
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise SettingsError(f"invalid delay: {exc}") from None
    if seconds > MAX_WAIT:
        raise SettingsError(f"invalid delay {text!r}: at most 7 days")
    return seconds


@dataclass(frozen=True)
class GroupSettings:
    """A group's fixed settings (changing them means deleting and recreating the group)."""

    namespace: str
    name: str
    subjects: tuple[str, ...]
    start: str
    ack_wait: float
    max_deliver: int
    backoff: tuple[float, ...]
    dead_letter: str
    created_at: str
    max_pending: int = MAX_PENDING

    def wait_after(self, deliveries: int) -> float:
        """How long delivery number `deliveries` may stay unsettled before the next one:
        backoff[n-1] (the last repeating) when given, else ack_wait (as JetStream's
        BackOff, which replaces AckWait)."""
        if not self.backoff:
            return self.ack_wait
        return self.backoff[min(deliveries, len(self.backoff)) - 1]

    def to_json(self) -> dict:
        return {"namespace": self.namespace, "name": self.name,
                "subjects": list(self.subjects), "start": self.start,
                "ack_wait_s": self.ack_wait, "max_deliver": self.max_deliver,
                "backoff_s": list(self.backoff), "dead_letter": self.dead_letter,
                "created_at": self.created_at, "max_pending": self.max_pending}

    @classmethod
    def from_json(cls, data: dict) -> GroupSettings:
        return cls(data["namespace"], data["name"], tuple(data["subjects"]), data["start"],
                   float(data["ack_wait_s"]), int(data["max_deliver"]),
                   tuple(float(b) for b in data["backoff_s"]), data["dead_letter"],
                   data["created_at"], int(data.get("max_pending", MAX_PENDING)))

    def shown(self) -> dict:
        """The `settings` object of GET /groups."""
        return {"start": self.start, "ack_wait_s": self.ack_wait,
                "max_deliver": self.max_deliver, "backoff_s": list(self.backoff),
                "dead_letter": self.dead_letter, "max_pending": self.max_pending}


def parse_settings(namespace: str, name: str, subjects: tuple[str, ...], start: str,
                   params: dict[str, str], created_at: str) -> GroupSettings:
    """The settings a join request asks for; SettingsError says what is wrong."""
    if NAME.fullmatch(name) is None:
        raise SettingsError(f"invalid group {name[:80]!r}: 1 to 64 of A-Z a-z 0-9 _ -")
    ack_wait = _duration("ack_wait", params.get("ack_wait", "")) \
        if params.get("ack_wait") else DEFAULT_ACK_WAIT
    text = params.get("max_deliver", "")
    if not text:
        max_deliver = DEFAULT_MAX_DELIVER
    elif re.fullmatch(r"[0-9]{1,9}", text):
        max_deliver = int(text)
    else:
        raise SettingsError(f"invalid max_deliver {text[:40]!r}: a whole number >= 0 "
                            "(0: unlimited)")
    text = params.get("max_pending", "")
    if not text:
        max_pending = MAX_PENDING
    elif re.fullmatch(r"[0-9]{1,9}", text) and 1 <= int(text) <= MAX_PENDING:
        max_pending = int(text)
    else:
        raise SettingsError(f"invalid max_pending {text[:40]!r}: a whole number from 1 to "
                            f"{MAX_PENDING}")
    backoff: tuple[float, ...] = ()
    if params.get("backoff"):
        steps = params["backoff"].split(",")
        if len(steps) > MAX_BACKOFF_STEPS:
            raise SettingsError(f"invalid backoff: at most {MAX_BACKOFF_STEPS} steps")
        backoff = tuple(_duration("backoff", step) for step in steps)
    dead_letter = params.get("dead_letter", "") or f"{namespace}.dlq.{name}"
    try:
        validate_subject(dead_letter.encode())
    except ValueError as exc:
        raise SettingsError(f"invalid dead_letter: {exc}") from None
    if dead_letter.split(".", 1)[0] != namespace:
        raise SettingsError(f"invalid dead_letter {dead_letter[:80]!r}: a subject (no "
                            f"wildcards) in the group's namespace {namespace}")
    return GroupSettings(namespace, name, subjects, start, ack_wait, max_deliver, backoff,
                         dead_letter, created_at, max_pending)
