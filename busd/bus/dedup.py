"""Duplicate suppression: per subject, an LRU of recently seen event keys (SPEC §3.5)."""

from __future__ import annotations

import time
from collections import OrderedDict

MAX_SUBJECTS = 100_000  # subjects with remembered keys; the least recently keyed go first


class DedupCache:
    """Remembers the last `size` keys seen on each subject, each for at most `ttl` seconds.

    `size == 0` disables suppression; `ttl == 0` means keys never expire by age. Memory
    stays bounded however many subjects carry keys: past `max_subjects`, the subject
    that least recently saw a key is forgotten whole.
    """

    __slots__ = ("size", "ttl", "max_subjects", "_subjects", "_clock")

    def __init__(self, size: int, ttl: float = 0.0, clock=time.monotonic,
                 max_subjects: int = MAX_SUBJECTS) -> None:
        self.size = size
        self.ttl = ttl
        self.max_subjects = max_subjects
        self._subjects: OrderedDict[bytes, OrderedDict[bytes, float]] = OrderedDict()
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return self.size > 0

    def seen(self, subject: bytes, key: bytes) -> bool:
        """True if `key` was recorded on `subject` and has not been evicted or expired."""
        keys = self._subjects.get(subject)
        if keys is None:
            return False
        stamp = keys.get(key)
        if stamp is None:
            return False
        if self.ttl and self._clock() - stamp > self.ttl:
            del keys[key]
            return False
        return True

    def add(self, subject: bytes, key: bytes) -> None:
        if not self.size:
            return
        subjects = self._subjects
        keys = subjects.get(subject)
        if keys is None:
            keys = subjects[subject] = OrderedDict()
            if len(subjects) > self.max_subjects:
                subjects.popitem(last=False)
        else:
            subjects.move_to_end(subject)
        keys[key] = self._clock()
        keys.move_to_end(key)
        while len(keys) > self.size:
            keys.popitem(last=False)

    def discard(self, subject: bytes, key: bytes) -> None:
        """Forget a key that was reserved for an event whose write then failed."""
        keys = self._subjects.get(subject)
        if keys is not None:
            keys.pop(key, None)
