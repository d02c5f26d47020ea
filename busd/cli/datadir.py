"""Offline access to a data directory, for `bus debug`, `dump`, `restore` and `copy`.

Reading goes through NamespaceLog in read-only mode (nothing on disk changes: a torn
tail is noted, not truncated); writing goes through LocalStore, whose `.lock` refuses a
directory a running server holds. Records are never parsed from segment files here:
the log does the framing, the CRCs and (once enabled) the decryption.

Records restored from a dump are rebuilt by the server's own code (`scan_body` then
`stamp_events`), so what lands on disk is byte for byte what the server would have
stored for that event — with the event's own id and created_at.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path

from busd._core import record_id, scan_body, stamp_events
from busd.cli.output import CommandError, UsageError
from busd.server.config import NAMESPACE_RE, parse_namespaces
from busd.store.local.log import CorruptRecordError, EncryptionKeyError, LogError, NamespaceLog
from busd.store.errors import records_between
from busd.store.local.store import LOCK_NAME, LocalStore, StoreLockedError, lock_holder
from busd.wire import INBOX_NAMESPACE

READ_CHUNK_BYTES = 4 << 20
APPEND_BATCH_RECORDS = 1000
APPEND_BATCH_BYTES = 4 << 20
_SEGMENT_NAME = re.compile(r"^\d{20}\.seg$")


def log_options(secret_key: str | None) -> dict:
    """Keyword arguments for LocalStore/NamespaceLog: the key only when one is given, so the
    tools work with stores that do not know encryption yet."""
    return {"secret_key": secret_key} if secret_key else {}


def namespaces_in(path: Path) -> list[str]:
    """The namespaces stored under a data directory (subdirectories holding segments)."""
    if not path.is_dir():
        return []
    found = []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.is_dir() and NAMESPACE_RE.match(entry.name) and any(
                _SEGMENT_NAME.match(name) for name in os.listdir(entry.path)):
            found.append(entry.name)
    return found


def parse_namespace_list(text: str | None, flag: str) -> list[str] | None:
    """`a,b,c` → ["a", "b", "c"] as the server reads it (None when the flag was not given)."""
    if text is None:
        return None
    try:
        return list(parse_namespaces(text))
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def select_namespaces(path: Path, wanted: list[str] | None, flag: str,
                      path_flag: str = "--path") -> list[str]:
    """The namespaces to read: `wanted` (each must exist) or all of them."""
    if not path.is_dir():
        raise UsageError(f"{path_flag}: {path} is not a directory")
    present = namespaces_in(path)
    if wanted is None:
        if not present:
            raise CommandError(f"no namespaces under {path} (is it a busd data directory?)")
        return present
    missing = [n for n in wanted if n not in present]
    if missing:
        raise UsageError(f"{flag}: no namespace {', '.join(missing)} under {path} "
                         f"(found: {', '.join(present) or 'none'})")
    return wanted


class DirLock:
    """Holds a data directory's `.lock` while reading it, so no server starts meanwhile and
    none is running. A directory without a `.lock` was never opened by a server."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = lock_holder(fd)
            os.close(fd)
            raise CommandError(
                f"data directory {self.path.parent} is in use by a running server"
                f"{f' (pid {pid})' if pid else ''}; stop it first, or use the online form "
                "with --host") from None
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Reader:
    """Read-only namespace logs of one data directory (optionally holding its lock);
    `key_flag` is the flag a missing or wrong key is given with."""

    def __init__(self, path: Path, namespaces: list[str], secret_key: str | None = None,
                 lock: bool = True, key_flag: str = "--secret-key") -> None:
        self.path = Path(path)
        self.namespaces = namespaces
        self.secret_key = secret_key
        self.key_flag = key_flag
        self._lock = DirLock(self.path) if lock else None
        self.logs: dict[str, NamespaceLog] = {}

    def __enter__(self) -> Reader:
        if self._lock is not None:
            self._lock.acquire()
        try:
            for ns in self.namespaces:
                nslog = NamespaceLog(self.path, ns, readonly=True,
                                     **log_options(self.secret_key))
                nslog.open()
                self.logs[ns] = nslog
        except EncryptionKeyError as exc:
            self.close()
            raise UsageError(exc.advice(self.key_flag)) from None
        except LogError as exc:
            self.close()
            raise CommandError(f"cannot open namespace {ns}: {exc}") from None
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for nslog in self.logs.values():
            nslog.close()
        self.logs.clear()
        if self._lock is not None:
            self._lock.release()

    def count(self, ns: str) -> int:
        return self.logs[ns].count

    def records(self, ns: str, skip_corrupt: bool = False,
                on_corrupt=None) -> Iterator[bytes]:
        """Every retained record of a namespace in index order. A corrupt record is an error
        naming its namespace, segment and offset — or, with skip_corrupt, reported to
        on_corrupt(error) and stepped over."""
        nslog = self.logs[ns]

        def corrupt(exc: CorruptRecordError) -> None:
            if not skip_corrupt:
                raise CommandError(f"corrupt record namespace={ns} segment={exc.segment_path} "
                                   f"index={exc.index} offset={exc.offset}") from None
            if on_corrupt is not None:
                on_corrupt(exc)

        yield from records_between(lambda at: nslog.read(at, READ_CHUNK_BYTES),
                                   nslog.first_index, nslog.next_index, corrupt)


def open_store(path: Path, namespaces: list[str], secret_key: str | None = None,
               flag: str = "--path", key_flag: str = "--secret-key") -> LocalStore:
    """A writable LocalStore; refuses a directory that a running server holds."""
    store = LocalStore(Path(path), namespaces, **log_options(secret_key))
    try:
        store.open()
    except StoreLockedError as exc:
        raise CommandError(f"refusing to write: {exc}; stop the server first, or use the "
                           "online form with --host") from None
    except EncryptionKeyError as exc:
        raise UsageError(exc.advice(key_flag)) from None
    except LogError as exc:
        raise CommandError(f"{flag}: cannot open {path}: {exc}") from None
    except OSError as exc:
        raise CommandError(f"{flag}: cannot open {path}: {exc}") from None
    return store


def stored_record(line: bytes, where: str) -> tuple[str, bytes]:
    """(namespace, record) for one dumped event, rebuilt as the server stores it. The event
    must carry its id and created_at: a restore keeps them, it never invents them."""
    try:
        is_batch, events = scan_body(line)
        if is_batch or len(events) != 1:
            raise ValueError("expected one event object per line")
        event = events[0]
        if not event.id:
            raise ValueError("the event has no id")
        if not event.created_at or event.created_at.startswith(b"0001-01-01"):
            raise ValueError("the event has no created_at")
        namespace, _, _, records, _ = stamp_events(events, False)
    except ValueError as exc:
        raise CommandError(f"{where}: {exc}") from None
    namespace = namespace.decode()
    if namespace == INBOX_NAMESPACE:
        raise CommandError(f"{where}: inbox (_bus_) events are never stored")
    return namespace, records[0]


class Appender:
    """Appends records to one namespace of a LocalStore in batches, skipping events whose
    id the namespace already holds, the input already gave, or skip_ids lists (so an
    interrupted restore or copy can be run again, and a repeated id is stored once)."""

    def __init__(self, store: LocalStore, namespace: str,
                 skip_ids: frozenset[bytes] = frozenset()) -> None:
        self.store = store
        self.namespace = namespace
        self.skip_ids = skip_ids
        self.held_before = store.next_index(namespace) > store.first_index(namespace)
        self.appended = 0
        self.skipped = 0
        self._batch: dict[bytes, bytes] = {}  # id → record
        self._batch_bytes = 0
        self._max_id = b""  # the highest id appended so far (ids sort as bytes, by time)

    def add(self, record: bytes) -> None:
        event_id = record_id(record)
        if event_id in self.skip_ids or event_id in self._batch:
            self.skipped += 1
            return
        self._batch[event_id] = record
        self._batch_bytes += len(record)
        if len(self._batch) >= APPEND_BATCH_RECORDS or self._batch_bytes >= APPEND_BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Append the batch but the ids the namespace holds: looked up for the whole batch
        at once, and, in a namespace that held nothing before, only for ids not above the
        highest appended (in-order input, the usual, needs no lookup at all)."""
        if not self._batch:
            return
        doubtful = list(self._batch) if self.held_before else \
            [i for i in self._batch if i <= self._max_id]
        for event_id in self.store.find_ids(self.namespace, doubtful) if doubtful else ():
            del self._batch[event_id]
            self.skipped += 1
        if self._batch:
            try:
                self.store.append_batch(self.namespace, list(self._batch.values()))
            except LogError as exc:
                raise CommandError(f"cannot write namespace {self.namespace}: {exc}") from None
            self.appended += len(self._batch)
            self._max_id = max(self._max_id, max(self._batch))
        self._batch, self._batch_bytes = {}, 0
