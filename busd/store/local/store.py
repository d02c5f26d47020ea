# cython: annotation_typing=False, nonecheck=True
# cython: wraparound=True, boundscheck=True, cdivision=False
"""LocalStore: the namespaces' logs in one data directory, and the Store interface over them.

Serving (after `start`), publishes that arrive in one loop iteration form a *group*: per
namespace their records go to the log in one append (one write(2)); only then are they
announced to the listener (fan-out) and the publishers answered. Under fsync_always both
wait for one shared fsync, and readers see only what is fsynced: `next_index` is the
*durable* head there, so nothing a power loss can take back is ever delivered (as Kafka
serves only up to its high watermark). Without `start` (the CLI's data tools) it is a
plain synchronous store.

A failed fsync takes its namespace out of service until restart: the kernel may have
dropped the dirty pages it could not write and will not report that twice (PostgreSQL's
"fsyncgate"), so neither a retried fsync nor later writes can be trusted. Publishes are
refused with 503; the group that was waiting is told what is known of it.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from busd._core import ParsedEvent, Pattern, records_size
from busd.store.errors import LogOpenError, LogWriteError, PublishRefused
from busd.store.intake import Intake
from busd.store.interface import Synced
from busd.store.listener import StoreListener
from busd.store.local.log import NamespaceLog, RecoveryReport, WouldBlock
from busd.store.stored import Stored
from busd.wire import ID_AT, ID_END

log = logging.getLogger("busd.store.local.store")

# one namespace's share of a group commit: namespace, first index, records, publishes
_Written = tuple[str, int, list[bytes], list[tuple[list[bytes], Stored]]]

LOCK_NAME = ".lock"
READ_WORKERS = 2  # threads reading segments for consumers (a cold disk read blocks one)


class StoreLockedError(LogOpenError):
    """Another process owns the data directory."""


def lock_holder(fd: int) -> str:
    """The pid the holder of a data directory's `.lock` wrote into it ('' before it did)."""
    return os.pread(fd, 32, 0).decode(errors="replace").strip()


class LocalStore(Intake):
    """One NamespaceLog per declared namespace under root, guarded by an flock on root/.lock."""

    def __init__(self, root: Path, namespaces: list[str], *, segment_bytes: int = 64 << 20,
                 retention_age: float | None = None, retention_bytes: int | None = None,
                 flags: int = 0, secret_key: str | None = None, block_size: int = 4096,
                 fsync_always: bool = False) -> None:
        """secret_key: encrypt at rest (SPEC §5; see log.py), records sealed in blocks of
        block_size bytes; opening refuses a key that does not fit the data. fsync_always:
        a publish is answered only once it is fsynced (`--fsync always`)."""
        self.root = Path(root)
        self.namespaces = list(namespaces)
        self._logs = {ns: NamespaceLog(self.root, ns, segment_bytes=segment_bytes,
                                       retention_age=retention_age,
                                       retention_bytes=retention_bytes, flags=flags,
                                       secret_key=secret_key, block_size=block_size)
                      for ns in self.namespaces}
        self._lock_fd: int | None = None
        self.fsync_always = fsync_always
        self._listener: StoreListener | None = None  # set by start()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._group: dict[str, list[tuple[list[bytes], Stored]]] = {}
        self._group_ids: dict[str, set[bytes]] = {}  # supplied ids the group will store
        self._commit_scheduled = False
        self._sync_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="busd-fsync")
        self._read_executor = ThreadPoolExecutor(max_workers=READ_WORKERS,
                                                 thread_name_prefix="busd-read")
        self._sync_running = False
        self._sync_waiting: list[Callable[[dict[str, LogWriteError]], None]] = []
        # per namespace, records written and not yet fsynced and announced (fsync_always)
        self._unannounced: dict[str, int] = dict.fromkeys(self.namespaces, 0)
        self.failed: dict[str, str] = {}  # namespace -> why it accepts no publishes until restart

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
                if self.fsync_always:  # what a killed process left unsynced is served now
                    nslog.sync_recovered()
        except BaseException:
            self.close()
            raise
        return reports

    def log(self, namespace: str) -> NamespaceLog:
        return self._logs[namespace]

    def append_batch(self, namespace: str, records: list[bytes]) -> int:
        return self._logs[namespace].append(records)

    def read(self, namespace: str, start_index: int, max_bytes: int = 1 << 20,
             disk: bool = True) -> list[bytes] | None:
        """Records up to the head readers may see (`next_index`). disk=False (the
        consumers): None when the records are not in memory, so that `fetch` reads them
        off the loop and a cold page cache stalls nobody else."""
        nslog = self._logs[namespace]
        if not disk and not nslog.in_memory(start_index):
            return None
        return nslog.read(start_index, max_bytes, self._visible(namespace, start_index))

    def _visible(self, namespace: str, start_index: int) -> int:
        """How many records from start_index on a reader may see: every read stops at
        `next_index`, the durable head under fsync_always."""
        return self.next_index(namespace) - start_index

    def find_id(self, namespace: str, event_id: bytes) -> int | None:
        return self._logs[namespace].find_id(event_id)

    def find_ids(self, namespace: str, event_ids: list[bytes]) -> set[bytes]:
        return self._logs[namespace].find_ids(event_ids)

    def first_index(self, namespace: str) -> int:
        return self._logs[namespace].first_index

    def next_index(self, namespace: str) -> int:
        """The head readers see: under fsync_always the end of what is fsynced and
        announced, else the end of what is written."""
        return self._logs[namespace].next_index - self._unannounced[namespace]

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
        failures = self._sync_logs(self.namespaces)
        if failures:
            raise next(iter(failures.values()))

    def _sync_logs(self, namespaces: list[str]) -> dict[str, LogWriteError]:
        """fsync these namespaces' dirty logs; the error of each that failed."""
        failures = {}
        for ns in namespaces:
            nslog = self._logs[ns]
            if nslog.dirty:
                try:
                    nslog.sync()
                except LogWriteError as exc:
                    failures[ns] = exc
        return failures

    def apply_retention(self, now: float) -> int:
        """Segments deleted across all namespaces."""
        return sum(nslog.apply_retention(now) for nslog in self._logs.values())

    def stats(self) -> dict[str, dict[str, int]]:
        return {ns: {"count": self.next_index(ns) - nslog.first_index, "bytes": nslog.bytes,
                     "first_index": nslog.first_index, "next_index": self.next_index(ns),
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

    # -- the Store interface (serving) ------------------------------------------------------
    async def start(self, listener: StoreListener) -> dict[str, RecoveryReport]:
        self._listener = listener
        self._loop = asyncio.get_running_loop()
        return self.open()

    async def stop(self) -> None:
        self._read_executor.shutdown(wait=True, cancel_futures=True)
        self._sync_executor.shutdown(wait=True)
        self.close()

    def reserve_ids(self, namespace: str, ids: list[bytes]) -> None:
        """An id names one event, so a restore run twice stores nothing twice. The reason
        lists every id refused, so that a batch can be sent again without them."""
        self._refuse_if_failed(namespace)
        if len(set(ids)) != len(ids):
            twice = next(i for i in ids if ids.count(i) > 1)
            raise PublishRefused(400, f"id {twice.decode()} appears twice in the batch")
        waiting = self._group_ids.setdefault(namespace, set())
        present = self.find_ids(namespace, ids) | waiting.intersection(ids)
        if present:
            listed = " ".join(f'"{i.decode()}"' for i in ids if i in present)
            raise PublishRefused(409, f"namespace {namespace} already holds "
                                      f"{'this id' if len(present) == 1 else 'these ids'}: "
                                      f"{listed}")
        waiting.update(ids)

    def release_ids(self, namespace: str, ids: list[bytes]) -> None:
        self._group_ids.get(namespace, set()).difference_update(ids)

    def publish(self, namespace: str, events: list[ParsedEvent], records: list[bytes],
                dedup: bool, done: Stored) -> None:
        """Join this loop iteration's group (the bus's dedup cache is all the dedup here)."""
        if self.failed and namespace in self.failed:  # (an empty dict still hashes the key)
            done.refused(self._out_of_service(namespace))
            return
        group = self._group.get(namespace)
        if group is None:
            group = self._group[namespace] = []
            if not self._commit_scheduled:
                self._commit_scheduled = True
                self._loop.call_soon(self._commit)
        group.append((records, done))

    def _out_of_service(self, namespace: str) -> PublishRefused:
        return PublishRefused(503, f"namespace {namespace} accepts no publishes until busd is "
                                   f"restarted: {self.failed[namespace]}")

    def _refuse_if_failed(self, namespace: str) -> None:
        if namespace in self.failed:
            raise self._out_of_service(namespace)

    def _commit(self) -> None:
        """Append this iteration's group: one write per namespace, then announce and answer
        (under fsync_always, once one shared fsync has made it durable)."""
        self._commit_scheduled = False
        group, self._group = self._group, {}
        supplied = self._group_ids  # namespaces that got ids from their publishers
        if supplied:  # from here on the logs themselves know them
            self._group_ids = {}
        written: list[_Written] = []
        for namespace, pendings in group.items():
            if namespace in self.failed:  # it failed after these joined the group
                refused = self._out_of_service(namespace)
                for _, done in pendings:
                    done.refused(refused)
                continue
            records = pendings[0][0] if len(pendings) == 1 else \
                [record for batch, _ in pendings for record in batch]
            nslog = self._logs[namespace]  # typed in store.pxd: append is a C call
            try:
                first = nslog.append(records, namespace in supplied)
            except LogWriteError as exc:
                _refuse(pendings, exc)
                continue
            except Exception as exc:  # noqa: BLE001 - never leave a publisher unanswered
                log.exception("append failed unexpectedly ns=%s", namespace)
                _refuse(pendings, LogWriteError(f"unexpected error: {exc!r}"))
                continue
            self._listener.published(namespace, len(records), records_size(records))
            written.append((namespace, first, records, pendings))
        if not written:
            return
        if self.fsync_always:
            self._settle_when_synced(written)
        else:
            self._settle(written)

    def _settle_when_synced(self, written: list[_Written]) -> None:
        """Under fsync_always: held unannounced until the fsync that covers them. (Its own
        method: a lambda in _commit would make every commit build a closure scope.)"""
        for namespace, _, records, _ in written:
            self._unannounced[namespace] += len(records)
        self._when_synced(lambda failures: self._settle(written))

    def _settle(self, written: list[_Written]) -> None:
        """Announce the group's records and answer its publishes, in index order; a
        namespace whose fsync failed gets neither, only what is known."""
        for namespace, first, records, pendings in written:
            if namespace in self.failed:
                _unconfirmed(namespace, first, pendings, self.failed[namespace])
                continue
            if self.fsync_always:
                self._unannounced[namespace] -= len(records)
            self._listener.appended(namespace, records, first + len(records))
            index = first
            for batch, done in pendings:
                done.stored(index)
                index += len(batch)

    def fsync(self, done: Synced) -> None:
        """fsync every dirty log in the worker thread; all callers waiting share one fsync."""
        self._when_synced(lambda failures: done(next(iter(failures.values()), None)))

    def _when_synced(self, callback: Callable[[dict[str, LogWriteError]], None]) -> None:
        """Call back (with each failed namespace's error) after an fsync that starts now or
        after the one already running: it covers everything written before this call."""
        self._sync_waiting.append(callback)
        if not self._sync_running:
            self._start_sync()

    def _start_sync(self) -> None:
        waiting, self._sync_waiting = self._sync_waiting, []
        self._sync_running = True
        started = time.perf_counter()
        namespaces = [ns for ns in self.namespaces if ns not in self.failed]
        future = self._loop.run_in_executor(self._sync_executor, self._sync_logs, namespaces)

        def finished(fut: asyncio.Future) -> None:
            self._sync_running = False
            self._listener.synced(time.perf_counter() - started)
            error = fut.exception()
            failures = fut.result() if error is None else dict.fromkeys(
                namespaces, LogWriteError(f"fsync failed: {error!r}"))
            for namespace, exc in failures.items():
                self._fail(namespace, exc)
            for callback in waiting:
                callback(failures)
            if self._sync_waiting:
                self._start_sync()

        future.add_done_callback(finished)

    def _fail(self, namespace: str, exc: LogWriteError) -> None:
        """Take a namespace out of service after its fsync failed (see the module docstring)."""
        reason = f"fsync of its event log failed ({exc}), so what was written since " \
                 f"the last successful fsync may not be on disk"
        self.failed[namespace] = reason
        log.error("namespace out of service until restart ns=%s reason=%r", namespace, reason)
        self._listener.storage_failed(namespace, reason)

    def publish_inbox(self, subject: bytes, record: bytes) -> None:
        """One process: the broker's routing reached every inbox subscriber there is."""

    def forward_ack(self, consumer_id: bytes, event_id: bytes, action: str = "ack",
                    delay: float = 0.0) -> None:
        """One process: a consumer that is not here does not exist."""

    async def fetch(self, namespace: str, start_index: int, max_bytes: int
                    ) -> tuple[int, list[bytes]]:
        """What `read(disk=False)` did not have in memory, read from the segment files in a
        worker thread (up to the head readers may see as it is now)."""
        records = await self._loop.run_in_executor(
            self._read_executor, self._logs[namespace].read, start_index, max_bytes,
            self._visible(namespace, start_index), False)
        return start_index, records

    def fetch_sse(self, namespace: str, start_index: int, max_bytes: int,
                  pattern: Pattern | None) -> asyncio.Future:
        """As `fetch`, the records framed as SSE. What the page cache holds of a plain log
        is read and framed at once, on the loop: handing each chunk to a worker and back
        (two thread wakeups and GIL handovers, ~5 context switches a chunk) cost more than
        the read itself (perf/RESULTS.md, catch-up on the loop). What needs the disk, and
        an encrypted log (the cipher, which the worker overlaps with the loop), goes to a
        worker thread, now, not when the caller next yields."""
        visible = self._visible(namespace, start_index)
        nslog = self._logs[namespace]
        if nslog.codec is None:
            future = self._loop.create_future()
            try:
                future.set_result((start_index, *nslog.read_sse(
                    start_index, max_bytes, visible, pattern, False, nowait=True)))
                return future
            except WouldBlock:
                pass
            except Exception as exc:  # noqa: BLE001 - as the worker's read would raise it
                future.set_exception(exc)
                return future
        return self._loop.run_in_executor(
            self._read_executor, self._read_sse, namespace, start_index, max_bytes,
            visible, pattern)

    def _read_sse(self, namespace: str, start_index: int, max_bytes: int, max_records: int,
                  pattern: Pattern | None) -> tuple[int, bytes, int, int]:
        return (start_index, *self._logs[namespace].read_sse(start_index, max_bytes,
                                                             max_records, pattern, False))

    def locate(self, namespace: str, start: bytes) -> int | str | Awaitable[int | str]:
        """Serving, an id is searched for in a read worker (it may read and index a whole
        cold segment); the answer comes back to the loop."""
        if start == b"oldest":
            return self.first_index(namespace)
        if start == b"newest":
            return self.next_index(namespace)
        if self._loop is None:
            return self._located(namespace, start, self.find_id(namespace, start))
        return self._locate_off_loop(namespace, start)

    async def _locate_off_loop(self, namespace: str, start: bytes) -> int | str:
        index = await self._loop.run_in_executor(
            self._read_executor, self._logs[namespace].find_id_from_disk, start)
        return self._located(namespace, start, index)

    def _located(self, namespace: str, start: bytes, index: int | None) -> int | str:
        if index is not None and index < self.next_index(namespace):  # not yet durable: unseen
            return index + 1
        oldest = self.first_id(namespace) if self.next_index(namespace) else None
        if self.is_before_retained(namespace, start):
            return (f"history truncated: event {start.decode()} was deleted by retention; the "
                    f"oldest retained event is {oldest.decode() if oldest else 'none'}")
        return f"event {start.decode()} not found in namespace {namespace}"


def _refuse(pendings: list[tuple[list[bytes], Stored]], exc: LogWriteError) -> None:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    status = 507 if full else 500
    reason = f"the event log cannot be written: {exc}"
    log.error("append failed status=%d reason=%r", status, reason)
    refused = PublishRefused(status, reason)
    for _, done in pendings:
        done.refused(refused)


def _unconfirmed(namespace: str, first: int, pendings: list[tuple[list[bytes], Stored]],
                 reason: str) -> None:
    """What is known of publishes written just before their namespace's fsync failed: they
    are in the log, not delivered, and may or may not be there after a restart; they keep
    their keys, so publishing one again with its key is refused if it is there."""
    index = first
    for records, done in pendings:
        ids = " ".join(record[ID_AT:ID_END].decode() for record in records)
        last = index + len(records) - 1
        where = f"index {index}" if last == index else f"indexes {index}..{last}"
        done.refused(PublishRefused(
            503, f"not confirmed: written to namespace {namespace} at {where} but not "
                 f"delivered, as the {reason}; after busd restarts they are there or not: "
                 f"look for event ids {ids}", keys_taken=True))
        index += len(records)
