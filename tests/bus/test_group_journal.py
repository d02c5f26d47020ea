"""The group journal (busd/bus/group/journal.py): replay, torn tails, compaction."""

from __future__ import annotations

import errno
import logging
import os

import pytest

from busd.bus.group import journal as journal_module
from busd.bus.group.journal import Counters, Journal


def replay(path):
    journal = Journal(path)
    state = journal.load()
    journal.close()
    return state


def test_replay_gives_the_cursor_counters_and_pending(tmp_path):
    journal = Journal(tmp_path / "g.state")
    journal.load()
    pending = {}
    counters = Counters(cursor=10, acked=3)
    for index in range(10):
        journal.deliver(index, 1)
        pending[index] = 1
    for index in (0, 1, 2, 5):
        journal.settle(index)
        del pending[index]
    journal.deliver(3, 2)
    pending[3] = 2
    journal.commit(counters, len(pending), lambda: list(pending.items()), False, True)
    journal.close()
    loaded, found = replay(tmp_path / "g.state")
    assert (loaded.cursor, loaded.acked) == (10, 3)
    assert found == pending


def test_a_torn_last_frame_is_cut_off(tmp_path, caplog):
    path = tmp_path / "g.state"
    journal = Journal(path)
    journal.load()
    journal.deliver(0, 1)
    journal.commit(Counters(cursor=1), 1, list, False, True)
    good = path.stat().st_size
    journal.settle(0)
    journal.commit(Counters(cursor=1, acked=1), 0, list, False, True)
    journal.close()
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 3)  # a power loss mid-write
    with caplog.at_level(logging.WARNING, logger="busd.bus.group.journal"):
        counters, pending = replay(path)
    assert pending == {0: 1} and counters.acked == 0
    assert path.stat().st_size == good
    assert any("cut at a bad frame" in r.getMessage() and f"offset={good}" in r.getMessage()
               for r in caplog.records)


def test_size_does_not_grow_with_acked_events(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_module, "COMPACT_AT_BYTES", 64 << 10)
    path = tmp_path / "g.state"
    journal = Journal(path)
    journal.load()
    counters, pending, largest = Counters(), {}, 0
    for index in range(200_000):  # 200k events delivered and acked, 100 in flight at a time
        journal.deliver(index, 1)
        pending[index] = 1
        counters.cursor = index + 1
        if index >= 100:
            journal.settle(index - 100)
            del pending[index - 100]
            counters.acked += 1
        if index % 50 == 0:
            journal.commit(counters, len(pending), lambda: list(pending.items()), False, True)
            largest = max(largest, path.stat().st_size)
    journal.commit(counters, len(pending), lambda: list(pending.items()), False, True)
    journal.close()
    assert largest < 80 << 10  # 200k acks of 13-byte ops would be 5 MiB
    loaded, found = replay(path)
    assert found == pending and loaded.acked == counters.acked == 199_900


def test_a_failed_commit_keeps_its_ops_for_the_next(tmp_path, monkeypatch):
    """A full disk fails one commit; what it carried (a delivery that went out) is written
    by the next one, so the cursor in the later frame never passes an unrecorded delivery."""
    path = tmp_path / "g.state"
    journal = Journal(path)
    journal.load()
    journal.deliver(0, 1)
    journal.commit(Counters(cursor=1), 1, list, False, True)
    journal.deliver(1, 1)

    def disk_full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(journal_module.os, "write", disk_full)
        with pytest.raises(OSError):
            journal.commit(Counters(cursor=2), 2, list, False, True)
    journal.settle(0)
    journal.commit(Counters(cursor=2, acked=1), 1, list, False, True)
    journal.close()
    counters, pending = replay(path)
    assert pending == {1: 1} and (counters.cursor, counters.acked) == (2, 1)


def test_a_compaction_the_disk_cuts_short_leaves_the_old_file(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_module, "COMPACT_AT_BYTES", 4 << 10)
    path = tmp_path / "g.state"
    journal = Journal(path)
    journal.load()
    pending = {}
    for index in range(400):  # 400 frames of one op each: ~10 KiB for 2 pending events
        journal.deliver(index, 1)
        pending[index] = 1
        if index >= 2:
            journal.settle(index - 2)
            del pending[index - 2]
        journal.commit(Counters(cursor=index + 1), len(pending), lambda: list(pending.items()),
                       False, False)
    before = path.read_bytes()
    write = os.write

    def short(fd, data):  # the compaction's file gets half of its frame
        return write(fd, data[:len(data) // 2])

    journal.deliver(400, 1)
    pending[400] = 1
    with monkeypatch.context() as patch:
        patch.setattr(journal_module.os, "write", short)
        with pytest.raises(OSError):
            journal.commit(Counters(cursor=401), len(pending), lambda: list(pending.items()),
                           False, True)
    assert path.read_bytes() == before and not path.with_suffix(".compact").exists()
    journal.commit(Counters(cursor=401), len(pending), lambda: list(pending.items()), False,
                   True)
    assert path.stat().st_size < len(before)  # compacted now
    journal.close()
    counters, found = replay(path)
    assert found == pending and counters.cursor == 401
