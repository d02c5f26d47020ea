"""A group's durable state: one file of frames that is replayed at start-up.

The state is small by construction: the *cursor* (the next index never delivered) and the
*pending* events (delivered, not settled) with their delivery counts. Every index below
the cursor that is not pending is settled (acked, dead-lettered, or not matching), so the
ack floor is min(pending) and nothing grows with the number of acked events.

The file is a sequence of frames (u32 length, u32 crc32, payload). A payload is the
group's counters then operations: DELIVER(index, deliveries) makes an index pending,
SETTLE(index) ends it. Replaying the frames from an empty state gives the state. Frames
are written with group commit (one write(2) per group per loop iteration, however many
acks it carries) and fsynced by the --fsync policy. When the file has grown well past
what the state needs, it is rewritten as one frame (a snapshot) and renamed over the old
one. A torn last frame (power loss) is dropped at load: what it held was never promised
under --fsync interval, and under --fsync always its acks were not answered yet. A
commit that fails (a full disk) keeps its operations for the next one: the deliveries
it recorded went out already, and a later frame's cursor must not pass them unrecorded.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger("busd.bus.group.journal")

FRAME = struct.Struct("<II")
COUNTERS = struct.Struct("<QQQQQ")  # cursor, acked, redeliveries, dead_letters, skipped
OP = struct.Struct("<BQI")
DELIVER, SETTLE = 1, 2
COMPACT_AT_BYTES = 4 << 20  # rewrite once the file is this big ...
COMPACT_RATIO = 4  # ... and this many times what a snapshot would take


class Counters:
    """What a group counts, kept in every frame."""

    __slots__ = ("cursor", "acked", "redeliveries", "dead_letters", "skipped")

    def __init__(self, cursor: int = 0, acked: int = 0, redeliveries: int = 0,
                 dead_letters: int = 0, skipped: int = 0) -> None:
        self.cursor = cursor
        self.acked = acked
        self.redeliveries = redeliveries
        self.dead_letters = dead_letters
        self.skipped = skipped

    def pack(self) -> bytes:
        return COUNTERS.pack(self.cursor, self.acked, self.redeliveries, self.dead_letters,
                             self.skipped)


class Journal:
    """The state file of one group; every method but `sync` runs on the loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ops = bytearray()
        self._fd = -1
        self.size = 0
        self.dirty = False  # written since the last sync

    # -- start-up -------------------------------------------------------------------------
    def load(self) -> tuple[Counters, dict[int, int]]:
        """Replay the file: the counters and {pending index: deliveries}. A missing file is
        a new group; a bad frame ends the replay there (and is cut off)."""
        counters, pending = Counters(), {}
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        at = 0
        while at + FRAME.size <= len(data):
            length, crc = FRAME.unpack_from(data, at)
            body = data[at + FRAME.size:at + FRAME.size + length]
            if len(body) != length or zlib.crc32(body) != crc or length < COUNTERS.size:
                break
            counters = Counters(*COUNTERS.unpack_from(body))
            for op, index, deliveries in OP.iter_unpack(memoryview(body)[COUNTERS.size:]):
                if op == DELIVER:
                    pending[index] = deliveries
                else:
                    pending.pop(index, None)
            at += FRAME.size + length
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if at != len(data):  # a torn last frame, or damage: what follows is not trusted
            log.warning("group state cut at a bad frame path=%s offset=%d cut_bytes=%d",
                        self.path, at, len(data) - at)
            os.ftruncate(self._fd, at)
        os.lseek(self._fd, at, os.SEEK_SET)
        self.size = at
        return counters, pending

    # -- recording ------------------------------------------------------------------------
    def deliver(self, index: int, deliveries: int) -> None:
        self._ops += OP.pack(DELIVER, index, deliveries)

    def settle(self, index: int) -> None:
        self._ops += OP.pack(SETTLE, index, 0)

    def commit(self, counters: Counters, pending: int, snapshot: Callable[[], Iterable[
               tuple[int, int]]], fsync: bool, may_compact: bool) -> None:
        """Write what was recorded since the last commit as one frame (raises OSError).
        Compact instead when the file has grown well past a snapshot of the `pending`
        events (`snapshot()`: their (index, deliveries)); not while a `sync` runs, which
        holds the fd. fsync: the policy syncs every change (a compaction is then synced
        before its rename)."""
        snapshot_size = OP.size * pending + COUNTERS.size + FRAME.size
        if may_compact and self.size > COMPACT_AT_BYTES and \
                self.size > COMPACT_RATIO * snapshot_size:
            self.rewrite(counters, snapshot(), fsync)
        else:
            frame = _frame(counters.pack() + self._ops)
            written = os.write(self._fd, frame)  # an error: nothing written, the ops kept
            if written != len(frame):  # a short write is the disk filling up: undo it
                os.ftruncate(self._fd, self.size)
                os.lseek(self._fd, self.size, os.SEEK_SET)
                raise OSError(errno.ENOSPC, "short write of group state")
            self.size += len(frame)
            self.dirty = True
        self._ops = bytearray()

    def rewrite(self, counters: Counters, pending: Iterable[tuple[int, int]],
                fsync: bool) -> None:
        """Replace the file by one frame of this state (a compaction; start-up's correction)."""
        body = bytearray(counters.pack())
        for index, deliveries in pending:
            body += OP.pack(DELIVER, index, deliveries)
        frame = _frame(bytes(body))
        temp = self.path.with_suffix(".compact")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            if os.write(fd, frame) != len(frame):  # the disk filled up
                raise OSError(errno.ENOSPC, "short write of group state")
            if fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            temp.unlink(missing_ok=True)
            raise
        os.replace(temp, self.path)
        os.close(self._fd)
        self._fd = fd
        self.size = len(frame)
        self.dirty = not fsync

    def sync(self) -> None:
        """fsync (blocking: the registry runs it in a worker thread)."""
        self.dirty = False
        if self._fd >= 0:  # not closed by a delete meanwhile
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _frame(body: bytes) -> bytes:
    return FRAME.pack(len(body), zlib.crc32(body)) + body
