"""`bus` with faults injected (pytest's MonkeyPatch), for the error-boundary tests:

    python faulty_bus.py FAULT[,FAULT...] server --addr ... --path ...

Each fault breaks one thing a real deployment can see break (a read failing with EMFILE,
an append raising something unforeseen) so the tests can check that it ends one stream
or fails one publish, loudly, and that everything else goes on.
"""

from __future__ import annotations

import asyncio
import errno
import sys
import time
from collections.abc import Callable

import pytest

from busd.cli.main import main
from busd.server import app
from busd.store.local.log import NamespaceLog, WouldBlock
from busd.store.local.store import LocalStore

FAULTS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {}
BROKEN = "broken"  # the namespace the read faults hit


class FaultyStore(LocalStore):
    """The server's store, whose methods the faults replace: LocalStore is compiled and
    takes no patched methods, a Python subclass of it does."""


def patch_store(patch: pytest.MonkeyPatch, name: str, method: Callable) -> None:
    patch.setattr(FaultyStore, name, method)
    patch.setattr(app, "LocalStore", FaultyStore)


def fault(function: Callable[[pytest.MonkeyPatch], None]) -> Callable:
    FAULTS[function.__name__.replace("_", "-")] = function
    return function


@fault
def read_emfile(patch: pytest.MonkeyPatch) -> None:
    """Every read of the `broken` namespace fails as a read out of file descriptors does."""
    real = NamespaceLog.read

    def read(self, start_index, *args, **kwargs):
        if self.name == BROKEN:
            raise OSError(errno.EMFILE, "Too many open files")
        return real(self, start_index, *args, **kwargs)

    patch.setattr(NamespaceLog, "read", read)


@fault
def locate_fails(patch: pytest.MonkeyPatch) -> None:
    """Finding where a `broken` stream starts raises (it runs inside a group's answers when
    the stream is pipelined behind a publish)."""
    real = LocalStore.locate

    def locate(self, namespace, start):
        if namespace == BROKEN:
            raise RuntimeError("injected: locate failed")
        return real(self, namespace, start)

    patch_store(patch, "locate", locate)


@fault
def group_create_fails(patch: pytest.MonkeyPatch) -> None:
    """Creating a group in the `broken` namespace raises something unforeseen."""
    from busd.bus.group.registry import Groups
    real = Groups.create

    def create(self, namespace, *args, **kwargs):
        if namespace == BROKEN:
            raise RuntimeError("injected: group create failed")
        return real(self, namespace, *args, **kwargs)

    patch.setattr(Groups, "create", create)


@fault
def locate_fails_later(patch: pytest.MonkeyPatch) -> None:
    """Finding where a `broken` stream starts takes a round trip (as a search on disk does),
    then raises."""
    real = LocalStore.locate

    async def fails() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("injected: locate failed later")

    def locate(self, namespace, start):
        return fails() if namespace == BROKEN else real(self, namespace, start)

    patch_store(patch, "locate", locate)


@fault
def first_answer_fails(patch: pytest.MonkeyPatch) -> None:
    """Answering the publish stored at index 0 raises, as the answer reaches its connection.
    (The compiled API builds the answer by C calls, so the fault sits in a subclass of the
    connection.)"""
    from busd.server.http import HttpConnection

    class FailingAnswers(HttpConnection):
        def fulfil(self, ticket, data, close=False):
            if isinstance(data, bytes) and b"\r\nX-Bus-Event-Index: 0\r\n" in data:
                raise RuntimeError("injected: answering failed")
            return super().fulfil(ticket, data, close)

    patch.setattr(app, "HttpConnection", FailingAnswers)


@fault
def first_append_fails(patch: pytest.MonkeyPatch) -> None:
    """The first append raises something that is not a LogWriteError."""
    real, calls = NamespaceLog.append, []

    def append(self, records, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("injected: append failed")
        return real(self, records, *args, **kwargs)

    patch.setattr(NamespaceLog, "append", append)


@fault
def live_write_fails(patch: pytest.MonkeyPatch) -> None:
    """Writing a live push of a `broken.*` event to its stream raises. (HttpConnection is
    compiled, so the server is given a subclass rather than a patched method.)"""
    from busd.server.http import HttpConnection

    class FailingWrites(HttpConnection):
        def write(self, data):
            if b'"subject":"broken.' in data and b"event: msg" in data:
                raise RuntimeError("injected: live write failed")
            return super().write(data)

    patch.setattr(app, "HttpConnection", FailingWrites)


@fault
def slow_disk(patch: pytest.MonkeyPatch) -> None:
    """Every read of segment files (for records, or in search of an id) takes 0.2 s more,
    as from a cold disk, whose records the page cache never holds: a read asked not to
    wait (the loop's catch-up read) is refused at once."""
    read_segments, find_in_run = NamespaceLog._read_segments, NamespaceLog._find_in_run

    def slow_read(self, start, max_bytes, max_records, walk, nowait):
        if nowait:
            raise WouldBlock
        time.sleep(0.2)
        return read_segments(self, start, max_bytes, max_records, walk, nowait)

    def slow_find(self, *args):
        time.sleep(0.2)
        return find_in_run(self, *args)

    patch.setattr(NamespaceLog, "_read_segments", slow_read)
    patch.setattr(NamespaceLog, "_find_in_run", slow_find)


@fault
def hold_groups(patch: pytest.MonkeyPatch) -> None:
    """A group commit waits 0.3 s, so that publishes sent by several connections one after
    the other are surely answered in one group."""
    real = LocalStore._commit

    def commit(self):
        if not getattr(self, "held", False):
            self.held = True
            self._loop.call_later(0.3, commit, self)
            return
        self.held = False
        real(self)

    patch_store(patch, "_commit", commit)


if __name__ == "__main__":
    patcher = pytest.MonkeyPatch()
    for name in sys.argv[1].split(","):
        FAULTS[name](patcher)
    sys.exit(main(sys.argv[2:]))
