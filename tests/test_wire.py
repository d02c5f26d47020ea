"""The record layout of busd/wire.py (for Python) against busd/_core.pxd (for Cython): the
same offsets, and the records make_record writes have their id and subject there, where
every module that reads a record looks."""

import json

from busd.store.local._crypto import Codec
from busd.store.local._framing import SegmentIndex, find_in_records, xid_seconds
from hypothesis import given
from hypothesis import strategies as st

from busd import _core, wire

SEGMENT = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-",
                  min_size=1, max_size=12)
SUBJECT = st.lists(SEGMENT, min_size=2, max_size=5).map(".".join)


def test_python_offsets_equal_the_cython_declarations():
    assert _core._RECORD_LAYOUT == {name: getattr(wire, name) for name in _core._RECORD_LAYOUT}


@given(SUBJECT, st.booleans(), st.booleans(), st.booleans())
def test_a_record_has_its_id_and_subject_at_the_offsets(subject, trace_id, key, payload):
    event = {"subject": subject}
    if trace_id:
        event["trace_id"] = "t-1"
    if key:
        event["key"] = "k-1"
    if payload:
        event["payload"] = {"n": 1}
    _, events = _core.scan_body(json.dumps(event).encode())
    event_id = b"e_" + _core.new_xid()
    rec = _core.make_record(events[0], event_id, b"2026-01-02T03:04:05Z")

    assert rec.startswith(wire.RECORD_PREFIX)
    assert rec[wire.ID_AT:wire.ID_END] == event_id
    assert rec[wire.XID_AT:wire.ID_END] == event_id[2:]
    assert rec[wire.SUBJECT_AT:rec.index(b'"', wire.SUBJECT_AT)] == subject.encode()
    assert json.loads(rec)["id"] == event_id.decode()
    # and there the Cython readers find them
    assert _core.record_id(rec) == event_id
    assert _core.record_subject(rec) == subject.encode()
    assert find_in_records([rec], 0, 1, event_id, wire.ID_AT) == 0
    assert Codec(bytes(32)).record_tag(rec) == Codec(bytes(32)).id_tag(event_id)
    index = SegmentIndex()
    index.add_records([rec])
    assert index.seg_min == xid_seconds(event_id[2:]) == _core.xid_time(event_id[2:])


@given(SUBJECT, st.sampled_from(["order-123", "x", "order 1 (eu)", "z" * 128, "a.b:c/d"]))
def test_a_free_form_id_runs_to_the_next_quote_and_carries_no_second(subject, event_id):
    _, events = _core.scan_body(json.dumps({"subject": subject}).encode())
    raw = event_id.encode()
    assert wire.id_problem(raw) is None and not wire.is_xid_id(raw)
    rec = _core.make_record(events[0], raw, b"")
    assert rec.startswith(wire.RECORD_PREFIX + raw + b'","subject":"')
    assert json.loads(rec)["id"] == event_id
    assert _core.record_id(rec) == raw
    assert _core.record_subject(rec) == subject.encode()
    index = SegmentIndex()
    index.add_records([rec])
    assert index.seg_min < 0, "no second in a free-form id, not one read from its bytes"


def test_ids_of_busd_own_form():
    assert wire.is_xid_id(b"e_" + _core.new_xid())
    assert not wire.is_xid_id(b"e_d4o7ehksdud4d8c68bg1")  # rs/xid refuses: low bits set
    assert wire.id_problem(b"e_d4o7ehksdud4d8c68bg1") is not None


def test_index_starts_have_one_parser():
    """The server, its groups and the SDK all refuse what wire.index_start refuses."""
    assert wire.index_start("index:0") == 0
    assert wire.index_start("index:" + "9" * 18) == 10 ** 18 - 1
    for bad in ("index:", "index:-1", "index:+1", "index:1x", "index: 1", "index:1\n",
                "index:" + "9" * 19, "index:١", "Index:1", "oldest"):
        assert wire.index_start(bad) is None, bad
