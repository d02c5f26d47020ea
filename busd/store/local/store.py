"""The storage interface the server uses, and LocalStore: namespace logs in one data dir.

The server only talks to `Store`, a narrow protocol (append a batch, read from an index,
find an id, head and tail, sync, close), so a clustered store (JetStream) can stand in
for LocalStore later without touching the broker or consumers.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Protocol

from busd.store.errors import LogOpenError
from busd.store.local.log import NamespaceLog, RecoveryReport

LOCK_NAME = ".lock"


class StoreLockedError(LogOpenError):
    """Another process owns the data directory."""


def lock_holder(fd: int) -> str:
    """The pid the holder of a data directory's `.lock` wrote into it ('' before it did)."""
    return os.pread(fd, 32, 0).decode(errors="replace").strip()


class Store(Protocol):
    """What the broker and consumers need from storage; indexes are per namespace."""

    def append_batch(self, namespace: str, records: list[bytes]) -> int:
        """Append with one write; the first record's index. Raises LogWriteError."""
        ...

    def read(self, namespace: str, start_index: int, max_bytes: int) -> list[bytes]:
        """Records from start_index ([] at the head). Raises HistoryTruncatedError,
        CorruptRecordError (only for the first record asked for)."""
        ...

    def find_id(self, namespace: str, event_id: bytes) -> int | None: ...

    def find_ids(self, namespace: str, event_ids: list[bytes]) -> set[bytes]:
        """Those of event_ids the namespace holds: a publish's supplied ids, refused if held
        (asked of the local store only; JetStream's `locate` is a search per id)."""
        ...

    def first_index(self, namespace: str) -> int: ...

    def next_index(self, namespace: str) -> int: ...

    def first_id(self, namespace: str) -> bytes | None: ...

    def is_before_retained(self, namespace: str, event_id: bytes) -> bool: ...

    @property
    def dirty(self) -> bool: ...

    def stats(self) -> dict[str, dict[str, int]]:
        """Per namespace: count, bytes, first_index, next_index."""
        ...

    def sync(self) -> None:
        """Blocking fsync of everything written; called from a worker thread."""
        ...

    def close(self) -> None: ...


class LocalStore:
    """One NamespaceLog per declared namespace under root, guarded by an flock on root/.lock."""

    def __init__(self, root: Path, namespaces: list[str], *, segment_bytes: int = 64 << 20,
                 retention_age: float | None = None, retention_bytes: int | None = None,
                 flags: int = 0, secret_key: str | None = None, block_size: int = 4096) -> None:
        """secret_key: encrypt at rest (SPEC §5; see log.py), records sealed in blocks of
        block_size bytes; opening refuses a key that does not fit the data."""
        self.root = Path(root)
        self.namespaces = list(namespaces)
        self._logs = {ns: NamespaceLog(self.root, ns, segment_bytes=segment_bytes,
                                       retention_age=retention_age,
                                       retention_bytes=retention_bytes, flags=flags,
                                       secret_key=secret_key, block_size=block_size)
                      for ns in self.namespaces}
        self._lock_fd: int | None = None

    def open(self) -> dict[str, RecoveryReport]:
        """Lock the data dir, then open (and recover) every namespace."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = lock_holder(fd)
            os.close(fd)
            raise StoreLockedError(f"data directory {self.root} is in use by another process "
                                   f"({f'pid {pid}, ' if pid else ''}lock {path} is held)"
                                   ) from None
        self._lock_fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        reports = {}
        try:
            for ns, nslog in self._logs.items():
                reports[ns] = nslog.open()
        except BaseException:
            self.close()
            raise
        return reports

    def log(self, namespace: str) -> NamespaceLog:
        return self._logs[namespace]

    def append_batch(self, namespace: str, records: list[bytes]) -> int:
        return self._logs[namespace].append(records)

    def read(self, namespace: str, start_index: int, max_bytes: int = 1 << 20) -> list[bytes]:
        return self._logs[namespace].read(start_index, max_bytes)

    def find_id(self, namespace: str, event_id: bytes) -> int | None:
        return self._logs[namespace].find_id(event_id)

    def find_ids(self, namespace: str, event_ids: list[bytes]) -> set[bytes]:
        return self._logs[namespace].find_ids(event_ids)

    def first_index(self, namespace: str) -> int:
        return self._logs[namespace].first_index

    def next_index(self, namespace: str) -> int:
        return self._logs[namespace].next_index

    def first_id(self, namespace: str) -> bytes | None:
        return self._logs[namespace].first_id()

    def is_before_retained(self, namespace: str, event_id: bytes) -> bool:
        return self._logs[namespace].is_before_retained(event_id)

    @property
    def dirty(self) -> bool:
        return any(nslog.dirty for nslog in self._logs.values())

    def sync(self) -> None:
        """fsync every dirty log (blocking: run it in an executor). The first error is
        raised after every log has been tried."""
        error = None
        for nslog in self._logs.values():
            if nslog.dirty:
                try:
                    nslog.sync()
                except Exception as exc:  # noqa: BLE001 - try every log, report the first
                    error = error or exc
        if error is not None:
            raise error

    def apply_retention(self, now: float) -> int:
        """Segments deleted across all namespaces."""
        return sum(nslog.apply_retention(now) for nslog in self._logs.values())

    def stats(self) -> dict[str, dict[str, int]]:
        return {ns: {"count": nslog.count, "bytes": nslog.bytes,
                     "first_index": nslog.first_index, "next_index": nslog.next_index,
                     "segments": nslog.segments}
                for ns, nslog in self._logs.items()}

    def close(self) -> None:
        """fsync and close every log, then release the directory lock. Idempotent."""
        try:
            for nslog in self._logs.values():
                nslog.close()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
