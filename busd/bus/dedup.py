"""Duplicate suppression: per subject, an LRU of recently seen event keys (SPEC §3.5).

Subjects and keys are kept as 16-byte BLAKE2b digests, so an entry costs the same
whatever a client sends, and the whole cache is bounded in bytes as well as in keys per
subject and in subjects. Stamps are wall-clock seconds, so a key rebuilt from the log is
aged from its record's `created_at` and a restart does not extend `--dup-ttl`.

`dump`/`load` save the cache beside the log (the broker does, see broker.py): the log
alone cannot say which keys a quiet subject still holds without reading all of it.
"""

from __future__ import annotations

import struct
import time
import zlib
from array import array
from collections import OrderedDict
from hashlib import blake2b

MAX_SUBJECTS = 100_000  # subjects with remembered keys; the least recently keyed go first
DEFAULT_MAX_BYTES = 64 << 20
DIGEST_SIZE = 16
ENTRY_BYTES = 180  # memory one remembered key costs (an OrderedDict item: digest and stamp)
SUBJECT_BYTES = 400  # memory one subject with keys costs beyond its keys

_MAGIC = b"BUSDDUP1"
_HEAD = struct.Struct("<8sI")  # magic, marks; then the marks, the subjects, their count
_MARK = struct.Struct("<H")  # then the namespace name, u64 index, u16 id length, the id
_INDEX = struct.Struct("<Q")
_SUBJECT = struct.Struct("<16sI")  # digest, keys; then the keys' digests and stamps
_COUNT = struct.Struct("<I")
_CRC = struct.Struct("<I")


def digest(data: bytes) -> bytes:
    return blake2b(data, digest_size=DIGEST_SIZE).digest()


class SnapshotError(ValueError):
    """A saved cache that cannot be used (damaged, or of another format)."""


class DedupCache:
    """Remembers the last `size` keys seen on each subject, each for at most `ttl` seconds.

    `size == 0` disables suppression; `ttl == 0` means keys never expire by age. Memory
    stays bounded however many subjects carry keys: past `max_subjects`, or past
    `max_bytes` of accounted memory, the subject that least recently saw a key loses its
    oldest keys first. A key *reserved* for a publish not yet written is remembered at
    once but not saved until `settle`: were its write to fail, it must be forgotten.
    """

    __slots__ = ("size", "ttl", "max_subjects", "max_bytes", "bytes", "changes",
                 "_subjects", "_pending", "_clock")

    def __init__(self, size: int, ttl: float = 0.0, clock=time.time,
                 max_subjects: int = MAX_SUBJECTS, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.size = size
        self.ttl = ttl
        self.max_subjects = max_subjects
        self.max_bytes = max_bytes
        self.bytes = 0  # accounted memory (ENTRY_BYTES, SUBJECT_BYTES)
        self.changes = 0  # keys added since start (the broker saves when it moved)
        self._subjects: OrderedDict[bytes, OrderedDict[bytes, float]] = OrderedDict()
        self._pending: set[tuple[bytes, bytes]] = set()
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return self.size > 0

    def __len__(self) -> int:
        return sum(map(len, self._subjects.values()))

    def seen(self, subject: bytes, key: bytes) -> bool:
        """True if `key` was recorded on `subject` and has not been evicted or expired."""
        return self._seen(digest(subject), digest(key))

    def _seen(self, sd: bytes, kd: bytes) -> bool:
        keys = self._subjects.get(sd)
        if keys is None:
            return False
        stamp = keys.get(kd)
        if stamp is None:
            return False
        if self.ttl and self._clock() - stamp > self.ttl:
            del keys[kd]
            self.bytes -= ENTRY_BYTES
            self._pending.discard((sd, kd))
            return False
        return True

    def reserve(self, subject: bytes, key: bytes) -> tuple[bytes, bytes] | None:
        """Remember a key for an event about to be written, and return the handle that
        `settle` or `discard` takes; None if the key was seen before."""
        entry = digest(subject), digest(key)
        if self._seen(*entry):
            return None
        self._add(*entry, self._clock())
        self._pending.add(entry)
        return entry

    def settle(self, entry: tuple[bytes, bytes]) -> None:
        """The reserved key's event is in the log: it may be saved."""
        self._pending.discard(entry)

    def add(self, subject: bytes, key: bytes, stamp: float | None = None) -> None:
        """Remember a key (of an event in the log), seen at `stamp` (default: now)."""
        if self.size:
            self._add(digest(subject), digest(key), self._clock() if stamp is None else stamp)

    def extend(self, keys) -> None:
        """`add` for each (subject, key, stamp) of the log's records, in their order (the
        rebuild at start-up: a subject's digest is computed once)."""
        if not self.size:
            return
        subject_digests: dict[bytes, bytes] = {}
        add = self._add
        for subject, key, stamp in keys:
            sd = subject_digests.get(subject)
            if sd is None:
                sd = subject_digests[subject] = digest(subject)
            add(sd, digest(key), stamp)

    def _add(self, sd: bytes, kd: bytes, stamp: float) -> None:
        subjects = self._subjects
        keys = subjects.get(sd)
        if keys is None:
            keys = subjects[sd] = OrderedDict()
            self.bytes += SUBJECT_BYTES
        else:
            subjects.move_to_end(sd)
        if kd in keys:
            keys.move_to_end(kd)
        else:
            self.bytes += ENTRY_BYTES
        keys[kd] = stamp
        self.changes += 1
        while len(keys) > self.size:
            self._pending.discard((sd, keys.popitem(last=False)[0]))
            self.bytes -= ENTRY_BYTES
        if len(subjects) > self.max_subjects or self.bytes > self.max_bytes:
            self._evict()

    def _evict(self) -> None:
        """Oldest keys of the least recently keyed subjects go until within the bounds (and
        a reserved key that goes is no longer pending: `_pending` stays within the cache)."""
        subjects, pending = self._subjects, self._pending
        while subjects and (len(subjects) > self.max_subjects or self.bytes > self.max_bytes):
            sd, keys = next(iter(subjects.items()))
            if len(subjects) > self.max_subjects or len(keys) <= 1:
                del subjects[sd]
                self.bytes -= SUBJECT_BYTES + ENTRY_BYTES * len(keys)
                if pending:
                    pending.difference_update((sd, kd) for kd in keys)
            else:
                pending.discard((sd, keys.popitem(last=False)[0]))
                self.bytes -= ENTRY_BYTES

    def discard(self, entry: tuple[bytes, bytes]) -> None:
        """Forget a key that was reserved for an event whose write then failed."""
        self._pending.discard(entry)
        keys = self._subjects.get(entry[0])
        if keys is not None and keys.pop(entry[1], None) is not None:
            self.bytes -= ENTRY_BYTES

    def clear(self) -> None:
        self._subjects.clear()
        self._pending.clear()
        self.bytes = 0

    # -- saving with the log ----------------------------------------------------------------
    def dump(self, marks: dict[str, tuple[int, bytes]]) -> bytes:
        """The cache, but for keys still reserved and keys expired, with `marks` (per
        namespace: the index up to which the log's keys are in it, and the id of the record
        before that index, so that `load`'s caller can tell the log is the same)."""
        return b"".join(self.dump_steps(marks, 0))

    def dump_steps(self, marks: dict[str, tuple[int, bytes]], step_keys: int):
        """`dump` in pieces of about `step_keys` keys (0: one piece), so that the loop can
        serve between them. Keys that change meanwhile are fine: those added after the
        marks belong to records after them, which a start-up replays anyway."""
        pending = self._pending
        horizon = self._clock() - self.ttl if self.ttl else float("-inf")
        out = [_HEAD.pack(_MAGIC, len(marks))]
        for name, (index, event_id) in marks.items():
            raw = name.encode()
            out += [_MARK.pack(len(raw)), raw, _INDEX.pack(index), _MARK.pack(len(event_id)),
                    event_id]
        subjects = in_piece = crc = 0
        for sd in list(self._subjects):
            keys = self._subjects.get(sd)
            if keys and (pending or self.ttl):  # else every key is kept: no per-key Python
                keys = {kd: stamp for kd, stamp in keys.items()
                        if stamp >= horizon and (sd, kd) not in pending}
            if not keys:
                continue
            subjects += 1
            in_piece += len(keys)
            out += [_SUBJECT.pack(sd, len(keys)), b"".join(keys),
                    array("d", keys.values()).tobytes()]
            if step_keys and in_piece >= step_keys:
                piece, out, in_piece = b"".join(out), [], 0
                crc = zlib.crc32(piece, crc)
                yield piece
        tail = b"".join(out) + _COUNT.pack(subjects)
        crc = zlib.crc32(tail, crc)
        yield tail + _CRC.pack(crc)

    def load(self, data: bytes) -> dict[str, tuple[int, bytes]]:
        """Replace the cache by a `dump`; its marks. SnapshotError if it cannot be used."""
        view = memoryview(data)
        if len(data) < _HEAD.size + _COUNT.size + _CRC.size or bytes(view[:8]) != _MAGIC:
            raise SnapshotError("not a busd dedup snapshot")
        if zlib.crc32(view[:-_CRC.size]) != _CRC.unpack_from(view, len(data) - _CRC.size)[0]:
            raise SnapshotError("checksum mismatch")
        try:
            _, n_marks = _HEAD.unpack_from(view)
            end = len(data) - _CRC.size - _COUNT.size
            (n_subjects,) = _COUNT.unpack_from(view, end)
            pos, marks = _HEAD.size, {}
            for _ in range(n_marks):
                (n,) = _MARK.unpack_from(view, pos)
                name = bytes(view[pos + 2:pos + 2 + n]).decode()
                pos += 2 + n
                (index,) = _INDEX.unpack_from(view, pos)
                (n,) = _MARK.unpack_from(view, pos + 8)
                marks[name] = (index, bytes(view[pos + 10:pos + 10 + n]))
                pos += 10 + n
            self.clear()
            for _ in range(n_subjects):
                sd, n = _SUBJECT.unpack_from(view, pos)
                pos += _SUBJECT.size
                kds = bytes(view[pos:pos + n * DIGEST_SIZE])
                pos += n * DIGEST_SIZE
                stamps = array("d", bytes(view[pos:pos + n * 8]))
                pos += n * 8
                for k, stamp in enumerate(stamps):
                    self._add(sd, kds[k * DIGEST_SIZE:(k + 1) * DIGEST_SIZE], stamp)
        except (struct.error, UnicodeDecodeError, ValueError) as exc:
            raise SnapshotError(f"damaged: {exc}") from None
        if pos != end:
            raise SnapshotError("damaged: trailing bytes")
        return marks
