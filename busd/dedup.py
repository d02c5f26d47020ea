"""Duplicate suppression: per subject, an LRU of recently seen event keys (SPEC §3.5)."""

from __future__ import annotations

import time
from collections import OrderedDict


class DedupCache:
    """Remembers the last `size` keys seen on each subject, each for at most `ttl` seconds.

    `size == 0` disables suppression; `ttl == 0` means keys never expire by age.
    """

    __slots__ = ("size", "ttl", "_subjects", "_clock")

    def __init__(self, size: int, ttl: float = 0.0, clock=time.monotonic) -> None:
        self.size = size
        self.ttl = ttl
        self._subjects: dict[bytes, OrderedDict[bytes, float]] = {}
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
        keys = self._subjects.get(subject)
        if keys is None:
            keys = self._subjects[subject] = OrderedDict()
        keys[key] = self._clock()
        keys.move_to_end(key)
        while len(keys) > self.size:
            keys.popitem(last=False)

    def discard(self, subject: bytes, key: bytes) -> None:
        """Forget a key that was reserved for an event whose write then failed."""
        keys = self._subjects.get(subject)
        if keys is not None:
            keys.pop(key, None)
