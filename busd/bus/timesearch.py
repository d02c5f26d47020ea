"""`start=<RFC 3339 time>` (SPEC §3.8): the first event created at or after a time.

A binary search over the namespace by index, reading one record per step: log2(n) reads,
never a walk. It relies on created_at growing with the index, which holds for events the
server stamped; events restored with their own older times can make the answer land
near, not exactly at, the first one at or after the time.
"""

from __future__ import annotations

from busd._core import parse_rfc3339
from busd.store.errors import CorruptRecordError, HistoryTruncatedError
from busd.store.interface import Store

CREATED_AT = b'"created_at":"'


def created_at(record: bytes) -> int:
    """A record's created_at in nanoseconds since the epoch."""
    start = record.index(CREATED_AT) + len(CREATED_AT)
    return parse_rfc3339(record[start:record.index(b'"', start)])


def parse_start_time(text: str) -> int | None:
    """Nanoseconds for an RFC 3339 `start=`, or None when it is not a time."""
    if len(text) < 20 or text[4:5] != "-":
        return None
    try:
        return parse_rfc3339(text.encode())
    except ValueError:
        return None


def locate_time(store: Store, namespace: str, nanos: int) -> int | str:
    """The index of the first retained event created at or after `nanos` (the head when
    there is none), or why it cannot be told."""
    low, high = store.first_index(namespace), store.next_index(namespace)
    while low < high:
        middle = (low + high) // 2
        try:
            records = store.read(namespace, middle, 1)
        except (HistoryTruncatedError, CorruptRecordError) as exc:
            return f"cannot search by time: {type(exc).__name__} at index {middle}"
        if not records:
            return "cannot search by time: the store has not got the records at hand"
        if created_at(records[0]) < nanos:
            low = middle + 1
        else:
            high = middle
    return low
