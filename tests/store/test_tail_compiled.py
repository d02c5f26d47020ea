"""A namespace log's append runs compiled (setup.py: tail.py with its .pxd): the same
appends, reads, failed writes and reopenings, through a NamespaceLog built on the compiled
LogTail and through one built on the uncompiled source (the oracle), must return the same
answers, keep the same recent-records cache and leave the same bytes on disk."""

from __future__ import annotations

import errno
import os
import sys
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from logtools import read_all
from source_module import load_source

import busd.store.local.log as log_compiled
import busd.store.local.tail as tail_compiled
from busd.store.errors import LogWriteError


def _oracle_log():
    """log.py run from source over tail.py run from source."""
    tail_source = load_source(tail_compiled)
    saved = sys.modules["busd.store.local.tail"]
    sys.modules["busd.store.local.tail"] = tail_source
    try:
        return load_source(log_compiled)
    finally:
        sys.modules["busd.store.local.tail"] = saved


log_source = _oracle_log()


def test_the_two_logs_are_built_on_different_tails():
    assert tail_compiled.__file__.endswith(".so"), "tail.py is not compiled: pip install -e ."
    assert log_source.LogTail.__module__ != log_compiled.LogTail.__module__
    assert not hasattr(log_source.LogTail, "__pyx_vtable__")
    assert hasattr(log_compiled.LogTail, "__pyx_vtable__")


def _record(n: int, size: int, free_form: bool) -> bytes:
    event_id = f"order-{n}" if free_form else f"e_{n:020d}"[:22]
    head = b'{"id":"%s","subject":"orders.created","payload":"' % event_id.encode()
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


class _FailingWrites:
    """os.write that fails (ENOSPC) while `armed`: the log must cut the file back."""

    def __init__(self) -> None:
        self.armed = False
        self.real = os.write

    def __call__(self, fd, data):
        if self.armed:
            self.armed = False
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.real(fd, data)


def _cache_state(nslog) -> tuple:
    return (nslog._cache_first, nslog._cache_base, nslog._cache_total, list(nslog._cache),
            list(nslog._cache_ends))


def _state(nslog) -> tuple:
    seg = nslog._segments[-1]
    return (nslog.next_index, nslog.first_index, nslog.count, nslog.bytes, nslog.segments,
            seg.first, seg.size, seg.count, seg.index.n_records, nslog._wfile.write_seq,
            _cache_state(nslog))


BATCH = st.lists(st.tuples(st.integers(10, 700), st.booleans()), min_size=0, max_size=12)
OPS = st.lists(st.one_of(
    st.tuples(st.just("append"), BATCH, st.booleans()),
    st.tuples(st.just("read"), st.integers(0, 400), st.integers(1, 5000), st.integers(1, 40)),
    st.tuples(st.just("fail"), st.just(0)),
    st.tuples(st.just("reopen"), st.just(0)),
), min_size=1, max_size=40)


# every path at least once, whatever hypothesis draws: the cache trimmed, a roll, a failed
# write, free-form ids, a reopening
EVERY_PATH = [("append", [(300, False)] * 3, False)] * 6 + [
    ("read", 2, 900, 5), ("fail", 0), ("append", [(500, False)] * 4, False),
    ("append", [(500, True)] * 4, True),
    ("append", [(700, True)] * 6, True), ("reopen", 0), ("read", 0, 5000, 40),
    ("append", [(40, False)] * 12, False), ("read", 20, 100, 3)]


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=OPS, cache_bytes=st.sampled_from([0, 1500, 6000, 8 << 20]))
@example(ops=EVERY_PATH, cache_bytes=1500)
def test_compiled_append_matches_the_source(tmp_path_factory, monkeypatch, ops, cache_bytes):
    failing = _FailingWrites()
    monkeypatch.setattr(os, "write", failing)
    roots = {m: tmp_path_factory.mktemp(m.__name__.rpartition(".")[2])
             for m in (log_compiled, log_source)}

    def open_log(module):
        nslog = module.NamespaceLog(roots[module], "orders", segment_bytes=4096,
                                    cache_bytes=cache_bytes)
        nslog.open()
        return nslog

    logs = {m: open_log(m) for m in roots}
    n, fail_next = 0, False
    for op in ops:
        if op[0] == "fail":  # the next append's write fails, in both logs
            fail_next = True
            continue
        answers = {}
        for module, nslog in logs.items():
            if op[0] == "append":
                records = [_record(n + i, size, free) for i, (size, free) in enumerate(op[1])]
                failing.armed = fail_next
                try:
                    answer = nslog.append(records, op[2])
                except LogWriteError as exc:
                    answer = ("refused", str(exc).replace(str(roots[module]), "ROOT"))
                failing.armed = False
            elif op[0] == "read":
                answer = nslog.read(op[1], op[2], op[3])
            else:
                nslog.close()
                logs[module] = nslog = open_log(module)
                answer = None
            answers[module] = (answer, _state(nslog))
        assert answers[log_compiled] == answers[log_source], op
        if op[0] == "append":
            n += len(op[1])
            fail_next = False
    free_ids = [b"order-%d" % i for i in range(n)]
    assert ({i: logs[log_compiled].find_id(i) for i in free_ids}
            == {i: logs[log_source].find_id(i) for i in free_ids})
    for nslog in logs.values():
        nslog.close()
    files = {m: {p.name: p.read_bytes() for p in (roots[m] / "orders").glob("*.seg")}
             for m in roots}
    assert files[log_compiled] == files[log_source]


def test_a_patched_append_is_what_the_store_calls(tmp_path, monkeypatch):
    """The fault-injection tests patch NamespaceLog.append: the compiled base must not
    stand in the way (NamespaceLog is a Python subclass)."""
    calls = []
    real = log_compiled.NamespaceLog.append

    def append(self, records, free_ids=True):
        calls.append(len(records))
        return real(self, records, free_ids)

    monkeypatch.setattr(log_compiled.NamespaceLog, "append", append)
    nslog = log_compiled.NamespaceLog(tmp_path, "orders")
    nslog.open()
    assert nslog.append([_record(0, 80, False)]) == 0
    assert calls == [1]
    nslog.close()


@pytest.mark.parametrize("module", [log_compiled, log_source], ids=["compiled", "source"])
def test_append_takes_a_list_of_records(tmp_path, module):
    nslog = module.NamespaceLog(tmp_path, "orders")
    nslog.open()
    with pytest.raises(TypeError):
        nslog.append((_record(0, 80, False),))
    assert nslog.next_index == 0
    nslog.close()


@pytest.mark.parametrize("module", [log_compiled, log_source], ids=["compiled", "source"])
def test_a_roll_after_the_block_size_changed_seals_in_the_new_size(tmp_path, module):
    """An encrypted log reopened with another --block-size keeps its open segment's size
    until the append that rolls: that batch is sealed again for the new segment."""
    def open_log(block_size):
        nslog = module.NamespaceLog(tmp_path, "orders", segment_bytes=4096, cache_bytes=0,
                                    secret_key="k" * 32, block_size=block_size)
        nslog.open()
        return nslog

    records = [_record(i, 300, False) for i in range(24)]
    nslog = open_log(64)
    for i in range(0, 12, 3):
        nslog.append(records[i:i + 3], False)
    nslog.close()
    nslog = open_log(128)
    for i in range(12, 24, 3):
        nslog.append(records[i:i + 3], False)
    sizes = [s.block_size for s in nslog._segments]
    assert sizes[0] == 64 and sizes[-1] == 128, sizes
    assert read_all(nslog) == records
    nslog.close()
    assert read_all(open_log(128)) == records


def test_retention_drops_what_it_deleted_from_the_cache_as_the_source_does(tmp_path):
    """The cache spans several segments; retention deletes the oldest: the cache keeps only
    what is still retained, in both."""
    states = {}
    for module in (log_compiled, log_source):
        nslog = module.NamespaceLog(tmp_path / module.__name__, "orders", segment_bytes=4096,
                                    cache_bytes=8 << 20, retention_bytes=10_000)
        nslog.open()
        records = [_record(i, 300, False) for i in range(120)]
        for i in range(0, 120, 3):
            nslog.append(records[i:i + 3], False)
        assert nslog.apply_retention(time.time()) > 0
        assert nslog._cache_first == nslog.first_index > 0
        assert read_all(nslog) == records[nslog.first_index:]
        states[module] = _state(nslog)
        nslog.close()
    assert states[log_compiled] == states[log_source]
