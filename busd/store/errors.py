"""What the stores raise (or answer) and the bus layer handles, whichever store it is."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path


class LogError(Exception):
    """Base of the stores' errors about their data."""


class LogOpenError(LogError):
    """The data on disk cannot be opened safely; the message says where and why."""


class LogWriteError(LogError):
    """An append or fsync failed; nothing half-written stays in the log."""

    def __init__(self, reason: str, errno: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.errno = errno

    def __str__(self) -> str:
        return self.reason


class HistoryTruncatedError(LogError):
    """The requested index was deleted by retention; args[0] is the oldest retained index."""

    def __init__(self, oldest_index: int) -> None:
        super().__init__(oldest_index)
        self.oldest_index = oldest_index

    def __str__(self) -> str:
        return f"history truncated: the oldest retained index is {self.oldest_index}"


class CorruptRecordError(LogError):
    """The record at args[0] fails its CRC (or cannot be framed) and cannot be served."""

    def __init__(self, index: int, segment_path: Path | str, offset: int) -> None:
        super().__init__(index, str(segment_path), offset)
        self.index = index
        self.segment_path = str(segment_path)
        self.offset = offset

    def __str__(self) -> str:
        return (f"corrupt record index={self.index} segment={self.segment_path} "
                f"offset={self.offset}")


def records_between(read: Callable[[int], list[bytes]], index: int, end: int,
                    on_corrupt: Callable[[CorruptRecordError], None]) -> Iterator[bytes]:
    """The records [index, end), `read(index)` giving a chunk from index on; a corrupt one
    goes to `on_corrupt` (which may raise to stop) and is stepped over, so that one bad
    record does not end a scan of a whole log."""
    while index < end:
        try:
            records = read(index)
        except CorruptRecordError as exc:
            on_corrupt(exc)
            index += 1
            continue
        if not records:
            return
        index += len(records)
        yield from records


class PublishRefused(Exception):
    """A publish that was refused, or that the store cannot confirm; `status` is the HTTP
    answer. `keys_taken`: the store holds the events' keys anyway (a duplicate, or events
    written but not synced), so the bus must go on refusing them."""

    def __init__(self, status: int, reason: str, keys_taken: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.keys_taken = keys_taken
