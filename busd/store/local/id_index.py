"""The index of one namespace's free-form event ids (ids the publisher chose, `order-123`).

busd's own ids (e_<xid>) carry their second, and the log finds them by time; a free-form
id carries nothing, so without this index `start=order-123` would scan the namespace. The
index maps a 64-bit keyed hash of each free-form id to the record's index, in memory, and
appends each entry to the file `ids` in the namespace directory (fsynced with the log), so
a restart loads it in time proportional to the free-form ids, never to the history.

The index is a hint, never trusted: a lookup reads the record it points to and compares
the id, so an entry written for an append that then failed, one the log lost at recovery,
or a hash collision can only make an id not found, never name the wrong event. Entries are
written before the records they point to, so a crash cannot leave a record unindexed.

File: b"BUSDIDS1" + a random 16-byte salt, then 16-byte entries (u64 index, u64 hash),
little-endian; a torn last entry is cut off at open, and a write the disk cut short is
cut back at once (a part entry would shift every later one). Hashes are BLAKE2b keyed
with the salt, so ids chosen to collide cannot be computed without reading the file; with
a --secret-key the key also mixes in the secret, so the file reveals no id.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import struct
import sys
from array import array
from collections.abc import Callable
from pathlib import Path

from busd._core import record_id
from busd.store.errors import LogWriteError
from busd.store.local.files import replace_file
from busd.wire import ID_AT

log = logging.getLogger("busd.store.local.id_index")

FILE_NAME = "ids"
MAGIC = b"BUSDIDS1"
SALT_BYTES = 16
HEADER_BYTES = len(MAGIC) + SALT_BYTES
_ENTRY = struct.Struct("<QQ")


def _free_form_id(record: bytes) -> bytes | None:
    """The record's id if free-form: busd's own ids start with e_, free-form ids never do
    (busd.wire.id_problem). None for anything else (and for bytes that are no record)."""
    if record[ID_AT:ID_AT + 2] == b"e_":
        return None
    try:
        return record_id(record)
    except ValueError:
        return None


class IdIndex:
    """Free-form id → record index, for one namespace directory."""

    def __init__(self, directory: Path, secret: bytes | None = None,
                 readonly: bool = False) -> None:
        self.path = Path(directory) / FILE_NAME
        self.readonly = readonly
        self.fd = -1
        self.dirty = False  # written since the last sync()
        self._secret = secret
        self._key = b""
        self._header = b""  # MAGIC + salt
        self._where: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._where)

    def open(self) -> None:
        """Load the file, cutting a torn last entry; a namespace that never had a free-form
        id has none (add() creates it)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        fresh = len(data) < HEADER_BYTES or not data.startswith(MAGIC)
        if fresh:
            if data:
                log.warning("id index unreadable, starting it afresh path=%s bytes=%d",
                            self.path, len(data))
            data = MAGIC + os.urandom(SALT_BYTES)
        self._header = data[:HEADER_BYTES]
        salt = data[len(MAGIC):HEADER_BYTES]
        self._key = hashlib.blake2b(salt + (self._secret or b""), digest_size=32,
                                    person=b"busd-ids").digest()
        whole = HEADER_BYTES + (len(data) - HEADER_BYTES) // _ENTRY.size * _ENTRY.size
        if whole != len(data):
            log.warning("id index has a torn last entry, cut path=%s bytes=%d",
                        self.path, len(data) - whole)
        entries = array("Q", data[HEADER_BYTES:whole])
        if sys.byteorder != "little":
            entries.byteswap()
        self._where = dict(zip(entries[1::2], entries[0::2], strict=True))
        if not self.readonly and not fresh:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            if whole != len(data):
                os.ftruncate(self.fd, whole)

    def _hash(self, event_id: bytes) -> int:
        digest = hashlib.blake2b(event_id, digest_size=8, key=self._key).digest()
        return int.from_bytes(digest, "little")

    def add(self, first: int, records: list[bytes]) -> bool:
        """Index the free-form ids of records about to be appended at `first`; True if the
        file was written to (sync() makes it durable, with the log's own fsync)."""
        entries = []
        for offset, record in enumerate(records):
            event_id = _free_form_id(record)
            if event_id is not None:
                h = self._hash(event_id)
                self._where[h] = first + offset
                entries.append(_ENTRY.pack(first + offset, h))
        if not entries or self.readonly:
            return False
        try:
            if self.fd < 0:
                self._rewrite(self._header)
                self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            data = b"".join(entries)
            written = os.write(self.fd, data)
            if written != len(data):  # the disk filled up: a part entry would shift the rest
                os.ftruncate(self.fd, os.fstat(self.fd).st_size - written)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as exc:  # refused like the append it precedes (507 when full)
            raise LogWriteError(f"cannot write the id index {self.path}: {exc.strerror}",
                                exc.errno) from exc
        self.dirty = True
        return True

    def find(self, event_id: bytes, read_one: Callable[[int], bytes | None]) -> int | None:
        """The index of the record with this free-form id, checked by reading it
        (read_one(index) → the record, or None when the log does not hold that index)."""
        index = self._where.get(self._hash(event_id))
        if index is None:
            return None
        record = read_one(index)
        if record is None or record_id(record) != event_id:
            return None
        return index

    def forget_before(self, first_index: int) -> None:
        """Retention deleted records below first_index: drop their entries, and rewrite the
        file once most of it is such entries (so it stays the size of what is retained)."""
        before = len(self._where)
        self._where = {h: i for h, i in self._where.items() if i >= first_index}
        written = (os.fstat(self.fd).st_size - HEADER_BYTES) // _ENTRY.size \
            if self.fd >= 0 else 0
        if self.fd >= 0 and written > 2 * len(self._where) and before != len(self._where):
            entries = b"".join(_ENTRY.pack(i, h) for h, i in self._where.items())
            try:
                self._rewrite(self._header + entries)
            except OSError as exc:  # the old file stays: its extra entries are only stale
                log.warning("id index not compacted path=%s error=%r", self.path, exc)
                return
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            os.dup2(fd, self.fd)  # the same fd number: a sync() in its thread may hold it
            os.close(fd)

    def _rewrite(self, data: bytes) -> None:
        """Replace the file whole (a temporary, fsynced, renamed over it)."""
        replace_file(self.path, data, self.path.with_name(FILE_NAME + ".tmp"))

    def sync(self) -> None:
        """fsync what add() wrote (from the log's sync thread)."""
        if self.dirty and self.fd >= 0:
            self.dirty = False
            os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            self.sync()
            os.close(self.fd)
            self.fd = -1
