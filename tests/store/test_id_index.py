"""Free-form event ids in the local log: found through the id index (busd/store/local/
id_index.py), never by a scan, after a restart too; the index is a hint checked against
the record, so a torn, stale or lost entry can only make an id not found."""

from __future__ import annotations

import logging
import os

import pytest

from busd.store.errors import LogWriteError
from busd.store.local.id_index import FILE_NAME, HEADER_BYTES, IdIndex
from busd.store.local.log import NamespaceLog

T0 = 1_750_000_000
ALPHABET = "0123456789abcdefghijklmnopqrstuv"


def xid_record(n: int) -> bytes:
    v = ((T0 << 64) | (0xABCDEF << 40) | n) << 4
    xid = "".join(ALPHABET[(v >> (5 * (19 - i))) & 31] for i in range(20)).encode()
    return b'{"id":"e_%s","subject":"orders.created","payload":"%s"}' % (xid, b"x" * 150)


def free_record(event_id: bytes) -> bytes:
    return b'{"id":"%s","subject":"orders.created","payload":1}' % event_id


def open_log(tmp_path, **kw) -> NamespaceLog:
    nslog = NamespaceLog(tmp_path, "orders", segment_bytes=32 << 10, cache_bytes=0, **kw)
    nslog.open()
    return nslog


def history(nslog: NamespaceLog, n: int = 3000) -> dict[bytes, int]:
    """n records of busd's own ids with a free-form one every 100th; {free id: index}."""
    ids = {}
    for start in range(0, n, 100):
        batch = [xid_record(i) for i in range(start, start + 99)]
        event_id = b"order-%d" % start
        ids[event_id] = nslog.append(batch + [free_record(event_id)]) + 99
    return ids


def test_free_form_ids_are_found_without_a_scan_before_and_after_a_restart(tmp_path,
                                                                          monkeypatch):
    nslog = open_log(tmp_path)
    ids = history(nslog)
    assert nslog.segments > 10
    for event_id, index in ids.items():
        assert nslog.find_id(event_id) == index
    assert nslog.find_id(b"order-unknown") is None
    assert nslog.find_ids([b"order-0", b"order-100", b"nope", xid_record(5)[7:29]]) == \
        {b"order-0", b"order-100", xid_record(5)[7:29]}
    nslog.close()
    nslog = open_log(tmp_path)

    def scan(self, seg):
        raise AssertionError(f"segment {seg.path.name} scanned")

    monkeypatch.setattr(NamespaceLog, "_build_index", scan)
    for event_id, index in ids.items():
        assert nslog.find_id(event_id) == index  # one record read, by its saved .idx
    assert nslog.blocks_scanned == 0, "no candidate block searched"
    nslog.close()


def test_the_index_file_holds_no_id_and_grows_only_with_free_form_ids(tmp_path):
    nslog = open_log(tmp_path, secret_key="s3cret-key")
    nslog.append([xid_record(i) for i in range(200)])
    assert not (tmp_path / "orders" / FILE_NAME).exists(), "no free-form id, no file"
    nslog.append([free_record(b"order-secret-1")])
    nslog.close()
    data = (tmp_path / "orders" / FILE_NAME).read_bytes()
    assert len(data) == HEADER_BYTES + 16 and b"order-secret" not in data
    nslog = open_log(tmp_path, secret_key="s3cret-key")
    assert nslog.find_id(b"order-secret-1") == 200
    nslog.close()


def test_a_torn_or_stale_index_names_no_wrong_event(tmp_path):
    nslog = open_log(tmp_path)
    nslog.append([free_record(b"a-1")])
    nslog.append([free_record(b"a-2")])
    nslog.close()
    path = tmp_path / "orders" / FILE_NAME
    with open(path, "ab") as fh:
        fh.write(b"\x01\x02\x03")  # a torn last entry
    nslog = open_log(tmp_path)
    assert os.path.getsize(path) == HEADER_BYTES + 32
    assert (nslog.find_id(b"a-1"), nslog.find_id(b"a-2")) == (0, 1)
    # the log loses its tail (as a crash before fsync can), the index keeps its entry
    nslog.close()
    (segment,) = (tmp_path / "orders").glob("*.seg")
    os.truncate(segment, os.path.getsize(segment) - 10)
    nslog = open_log(tmp_path)
    assert nslog.next_index == 1
    assert nslog.find_id(b"a-2") is None
    nslog.append([free_record(b"b-1")])  # index 1 again, another id
    assert nslog.find_id(b"a-2") is None and nslog.find_id(b"b-1") == 1
    nslog.close()


def test_retention_drops_the_entries_of_deleted_records(tmp_path):
    nslog = NamespaceLog(tmp_path, "orders", segment_bytes=4096, retention_bytes=8000,
                         cache_bytes=0)
    nslog.open()
    for i in range(300):
        nslog.append([free_record(b"r-%d" % i)])
    assert nslog.apply_retention(0) > 0
    first = nslog.first_index
    assert nslog.find_id(b"r-0") is None and nslog.find_id(b"r-%d" % first) == first
    assert len(nslog.ids) == 300 - first
    path = tmp_path / "orders" / FILE_NAME
    assert os.path.getsize(path) <= HEADER_BYTES + 16 * 2 * (300 - first)
    nslog.append([free_record(b"r-new")])
    nslog.close()
    nslog = NamespaceLog(tmp_path, "orders", segment_bytes=4096, cache_bytes=0)
    nslog.open()
    assert nslog.find_id(b"r-new") == 300 and nslog.find_id(b"r-%d" % first) == first
    nslog.close()


def test_an_index_that_cannot_be_written_refuses_the_append(tmp_path, monkeypatch):
    nslog = open_log(tmp_path)
    nslog.append([free_record(b"a-1")])
    real_write = os.write

    def full(fd, data):
        if fd == nslog.ids.fd:
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(LogWriteError) as err:
        nslog.append([free_record(b"a-2")])
    assert err.value.errno == 28
    monkeypatch.setattr(os, "write", real_write)
    assert nslog.next_index == 1 and nslog.find_id(b"a-2") is None
    nslog.close()


def test_an_index_write_the_disk_cuts_short_leaves_no_part_entry(tmp_path, monkeypatch):
    """A full disk takes half of a write: the part entry is cut off (else every later entry
    would sit 8 bytes off and be read as garbage after a restart) and the append refused."""
    nslog = open_log(tmp_path)
    nslog.append([free_record(b"a-1")])
    size = os.path.getsize(tmp_path / "orders" / FILE_NAME)
    real_write = os.write

    def half(fd, data):
        if fd == nslog.ids.fd:
            return real_write(fd, bytes(data)[:len(data) // 2 + 1])
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", half)
    with pytest.raises(LogWriteError) as err:
        nslog.append([free_record(b"a-2"), free_record(b"a-3")])
    assert err.value.errno == 28
    monkeypatch.setattr(os, "write", real_write)
    assert os.path.getsize(tmp_path / "orders" / FILE_NAME) == size
    nslog.append([free_record(b"b-%d" % n) for n in range(5)])
    nslog.close()
    nslog = open_log(tmp_path)
    assert [nslog.find_id(b"b-%d" % n) for n in range(5)] == [1, 2, 3, 4, 5]
    assert nslog.find_id(b"a-1") == 0 and nslog.find_id(b"a-2") is None
    nslog.close()


def test_a_rewrite_the_disk_cuts_short_keeps_the_old_file(tmp_path, monkeypatch):
    nslog = open_log(tmp_path)
    nslog.append([free_record(b"a-1")])
    path = tmp_path / "orders" / FILE_NAME
    before = path.read_bytes()
    real_write = os.write

    calls = []

    def full(fd, data):  # the temporary file gets 7 bytes, then the disk is full
        if not os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            return real_write(fd, data)
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return real_write(fd, bytes(data)[:7])

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError):
        nslog.ids._rewrite(before + b"\0" * 16)
    monkeypatch.setattr(os, "write", real_write)
    assert path.read_bytes() == before and not path.with_name(FILE_NAME + ".tmp").exists()
    nslog.close()


def test_retention_goes_on_when_the_index_cannot_be_compacted(tmp_path, monkeypatch, caplog):
    """A full disk fails the index file's rewrite: retention still deletes, the old file
    stays (its extra entries are only stale), and every retained id is still found."""
    nslog = NamespaceLog(tmp_path, "orders", segment_bytes=4096, retention_bytes=8000,
                         cache_bytes=0)
    nslog.open()
    for i in range(300):
        nslog.append([free_record(b"r-%d" % i)])
    path = tmp_path / "orders" / FILE_NAME
    before = path.read_bytes()

    def disk_full(self, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(IdIndex, "_rewrite", disk_full)
    with caplog.at_level(logging.WARNING, logger="busd.store.local.id_index"):
        assert nslog.apply_retention(0) > 0
    assert any("not compacted" in r.getMessage() for r in caplog.records)
    first = nslog.first_index
    assert path.read_bytes() == before
    assert nslog.find_id(b"r-0") is None and nslog.find_id(b"r-%d" % first) == first
    assert nslog.read(first)[0] == free_record(b"r-%d" % first)
    nslog.close()
