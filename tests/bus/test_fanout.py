"""FanOut's live push: only the readers an append matches are visited, one frame per
pattern, deliveries counted per pattern, and a reader's cursor right when it leaves.
fanout.py runs compiled (setup.py, fanout.pxd): every test runs on the compiled FanOut and
on the uncompiled source (the oracle), and random joins, pauses and pushes must deliver
the same through both."""

from __future__ import annotations

import pytest
from busd._core import Pattern, sse_frame
from hypothesis import given, settings
from hypothesis import strategies as st
from source_module import load_source

import busd.bus.fanout as compiled
from busd.server.metrics import Metrics

SOURCE = load_source(compiled)


def test_the_installed_fanout_is_the_compiled_one() -> None:
    assert compiled.__file__.endswith(".so"), compiled.__file__
    assert SOURCE.__file__.endswith(".py")


@pytest.fixture(params=[compiled, SOURCE], ids=["compiled", "source"])
def module(request):
    return request.param

try:
    from .test_sublist import record
except ImportError:
    from test_sublist import record


class FakeReader:
    """A live reader that is its own sink: it keeps what it is written."""

    def __init__(self, *patterns: bytes) -> None:
        self.id = patterns[0] + b"#%d" % id(self)
        self.owner = None
        self.namespace = "ns"
        self.pattern = Pattern(*patterns)
        self.cursor = 0
        self.paused = self.done = self.live = False
        self.chunks: list[bytes] = []
        self.failures: list[Exception] = []
        self.sink = self

    def write(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def push_failed(self, exc: Exception) -> None:
        self.failures.append(exc)

    def wake(self) -> None: ...

    def ack(self, event_id: bytes) -> None: ...


def live_fanout(module, *patterns: bytes) -> tuple[object, list[FakeReader]]:
    fanout = module.FanOut(("ns",), Metrics(("ns",)))
    readers = [FakeReader(p) for p in patterns]
    for r in readers:
        fanout.add(r)
        fanout.join_live(r)
    return fanout, readers


def test_each_reader_gets_only_what_matches_framed_once_per_pattern(module):
    fanout, (a1, a2, b, rest) = live_fanout(module, b"ns.a", b"ns.a", b"ns.b", b"ns.>")
    records = [record(b"ns.a"), record(b"ns.c"), record(b"ns.a")]
    fanout.push("ns", records, 3)
    assert a1.chunks == [sse_frame([records[0], records[2]])]
    assert a2.chunks[0] is a1.chunks[0]
    assert b.chunks == [] and b.cursor == 0
    assert rest.chunks == [sse_frame(records)]
    assert fanout.metrics.events_out["ns"] == 2 + 2 + 3


def test_a_reader_nothing_matched_leaves_with_the_cursor_at_the_head(module):
    fanout, (a, b) = live_fanout(module, b"ns.a", b"ns.b")
    fanout.push("ns", [record(b"ns.a")] * 5, 5)
    fanout.push("ns", [record(b"ns.a")] * 2, 7)
    fanout.leave_live(b)
    assert b.cursor == 7 and not b.live
    fanout.push("ns", [record(b"ns.b")], 8)
    assert b.chunks == []
    assert a.cursor == 7


def test_paused_readers_are_skipped_and_the_last_reader_out_drops_the_pattern(module):
    fanout, (a1, a2) = live_fanout(module, b"ns.a", b"ns.a")
    a1.paused = True
    fanout.push("ns", [record(b"ns.a")], 1)
    assert a1.chunks == [] and len(a2.chunks) == 1
    assert fanout.metrics.events_out["ns"] == 1
    fanout.remove(a1)
    fanout.remove(a2)
    assert len(fanout.live["ns"]) == 0


def test_a_paused_or_ended_reader_alone_on_its_pattern_is_skipped(module):
    """Distinct subscriptions take push's one-reader path: it skips them the same way."""
    fanout, (paused, ended, live) = live_fanout(module, b"ns.a", b"ns.b", b"ns.c")
    paused.paused, ended.done = True, True
    fanout.push("ns", [record(b"ns.a"), record(b"ns.b"), record(b"ns.c")], 3)
    assert paused.chunks == [] and ended.chunks == [] and len(live.chunks) == 1
    assert live.cursor == 3 and paused.cursor == 0
    assert fanout.metrics.events_out["ns"] == 1


def test_a_write_that_raises_is_its_readers_and_the_others_still_get_theirs(module):
    fanout, (a, b) = live_fanout(module, b"ns.a", b"ns.a")
    broken, c = BrokenReader(b"ns.b"), FakeReader(b"ns.b")
    for reader in (broken, c):
        fanout.add(reader)
        fanout.join_live(reader)
    fanout.push("ns", [record(b"ns.a"), record(b"ns.b")], 2)
    fanout.push("ns", [record(b"ns.b")], 3)
    assert [len(r.chunks) for r in (a, b, broken, c)] == [1, 1, 1, 2]
    assert [repr(e) for e in broken.failures] == ["OSError('the sink broke')"]
    assert broken.cursor == 2 and c.cursor == 3  # the failed delivery did not move it


def test_a_consumer_carries_no_per_instance_dict():
    """One per open stream, 100,000 idle ones on a process: __slots__, not a dict each."""
    from busd.bus.consumer import Consumer

    assert Consumer.__dictoffset__ == 0 and Consumer.__weakrefoffset__ == 0


def test_a_reader_of_several_patterns_gets_each_record_once_in_order(module):
    fanout, (single,) = live_fanout(module, b"ns.a")
    multi, same = FakeReader(b"ns.a", b"ns.>"), FakeReader(b"ns.>", b"ns.a")
    for reader in (multi, same):
        fanout.add(reader)
        fanout.join_live(reader)
    records = [record(b"ns.a"), record(b"ns.b"), record(b"ns.a")]
    fanout.push("ns", records, 3)
    assert multi.chunks == [sse_frame(records)]  # ns.a matched both patterns: sent once
    assert same.chunks[0] is multi.chunks[0]  # one filter, one frame
    assert single.chunks == [sse_frame([records[0], records[2]])]
    assert fanout.metrics.events_out["ns"] == 3 + 3 + 2
    fanout.remove(multi)
    fanout.remove(same)
    assert fanout.live["ns"].values(b"ns.a") == (fanout.live_groups["ns"][(b"ns.a",)],)
    assert b"ns.>" not in fanout.live["ns"]


FILTERS = [(b"ns.a",), (b"ns.b",), (b"ns.*",), (b"ns.>",), (b"ns.a", b"ns.>"), (b"ns.a.b",),
           (b"ns.*.b",)]
SUBJECTS = [b"ns.a", b"ns.b", b"ns.c", b"ns.a.b", b"ns.c.b"]


class LeavingReader(FakeReader):
    """Leaves the live set from inside its second write (as a consumer whose write fills
    its socket buffer pauses)."""

    def __init__(self, fanout, *patterns: bytes) -> None:
        super().__init__(*patterns)
        self.fanout = fanout

    def write(self, chunk: bytes) -> None:
        super().write(chunk)
        if len(self.chunks) == 2:
            self.fanout.leave_live(self)


class BrokenReader(FakeReader):
    """Its sink's second write raises."""

    def write(self, chunk: bytes) -> None:
        if len(self.chunks) == 1:
            raise OSError("the sink broke")
        super().write(chunk)


KINDS = {"plain": lambda fanout, *p: FakeReader(*p), "leaving": LeavingReader,
         "broken": lambda fanout, *p: BrokenReader(*p)}


def _deliveries(module, readers: list[tuple[int, str]], steps: list[tuple]) -> tuple:
    """Run steps on a FanOut of module; what every reader got, and the counts."""
    fanout = module.FanOut(("ns",), Metrics(("ns",)))
    made = [KINDS[kind](fanout, *FILTERS[f]) for f, kind in readers]
    for reader in made:
        fanout.add(reader)
        fanout.join_live(reader)
    head = 0
    for step in steps:
        if step[0] == "push":
            head += len(step[1])
            fanout.push("ns", [record(s) for s in step[1]], head)
            continue
        reader = made[step[1] % len(made)]
        if step[0] == "pause":
            reader.paused = not reader.paused
        elif step[0] == "done":
            reader.done = True
        elif step[0] == "leave":
            fanout.leave_live(reader)
        else:
            fanout.join_live(reader)
    return ([(r.chunks, r.cursor, r.live, [repr(e) for e in r.failures]) for r in made],
            fanout.metrics.events_out["ns"], fanout.pushed["ns"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(FILTERS) - 1), st.sampled_from(sorted(KINDS))),
                min_size=1, max_size=8),
       st.lists(st.one_of(
           st.tuples(st.just("push"), st.lists(st.sampled_from(SUBJECTS), min_size=1,
                                               max_size=6)),
           st.tuples(st.sampled_from(["pause", "done", "leave", "join"]),
                     st.integers(0, 7))), max_size=25))
def test_compiled_fanout_delivers_as_the_source_does(readers, steps):
    got = _deliveries(compiled, readers, steps)
    assert got == _deliveries(SOURCE, readers, steps)
    pushed = sum(len(step[1]) for step in steps if step[0] == "push")
    assert got[2] == pushed  # the head every push announced
