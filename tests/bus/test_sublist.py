"""The subscription index (busd/bus/_sublist.pyx) against its plain-Python oracle."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from busd.bus._sublist import CACHE_MAX, Sublist

try:
    from . import oracle
except ImportError:
    import oracle

TOKENS = (b"a", b"b", "é".encode(), b"a*")  # any bytes but a dot; "a*" is no wildcard
subjects = st.lists(st.sampled_from(TOKENS), min_size=1, max_size=4).map(
    lambda t: b".".join([b"ns", *t]))
patterns = st.lists(st.sampled_from((*TOKENS, b"*")), min_size=0, max_size=4).flatmap(
    lambda t: st.sampled_from(
        ([b".".join([b"ns", *t])] if t else []) + [b".".join([b"ns", *t, b">"])]))
# (insert?, pattern, value): values sit under several patterns, patterns carry several
operations = st.lists(st.tuples(st.booleans(), patterns, st.sampled_from("uvw")), max_size=30)


def record(subject: bytes, event_id: bytes = b"e_" + b"0" * 20) -> bytes:
    """A stored record's layout: the id (busd's own or free-form), then the subject."""
    return b'{"id":"' + event_id + b'","subject":"' + subject + b'","payload":1}'


def build(ops) -> tuple[Sublist, set[tuple[bytes, str]]]:
    """Apply (insert?, pattern, value) operations to a Sublist and to a plain set of
    (pattern, value) pairs."""
    index, present = Sublist(), set()
    for insert, pattern, value in ops:
        if insert:
            index.insert(pattern, value)
            present.add((pattern, value))
        else:
            index.delete(pattern, value)
            present.discard((pattern, value))
    return index, present


@settings(max_examples=400, deadline=None)
@given(operations, st.lists(subjects, max_size=8))
def test_match_agrees_with_oracle(ops, probes):
    index, present = build(ops)
    assert len(index) == len(present)
    for subject in probes * 2:  # the second round is answered from the cache
        got = index.match(subject)
        assert len(got) == len(set(got))
        assert set(got) == oracle.sublist_match(present, subject)


@settings(max_examples=200, deadline=None)
@given(operations, st.lists(st.tuples(subjects, st.sampled_from(
    [b"e_" + b"0" * 20, b"order-17", b"x"])), max_size=12))
def test_split_agrees_with_oracle(ops, subs):
    index, present = build(ops)
    records = [record(s, event_id) for s, event_id in subs]
    groups = oracle.sublist_split(present, records)
    split = index.split(records)
    assert dict(split) == groups
    firsts = [next(i for i, r in enumerate(records) if r is group[0]) for _, group in split]
    assert firsts == sorted(firsts)  # groups in the order their first record came
    assert index.split_sse(records) == [(value, oracle.sse_frame(group), len(group))
                                        for value, group in split]


def test_split_of_more_groups_than_its_dict_is_made_for():
    """Past the groups an append's dict is made for (256), it grows: nothing is lost."""
    index = Sublist()
    for i in range(600):
        index.insert(b"ns.s%d" % i, i)
    records = [record(b"ns.s%d" % (i % 600)) for i in range(900)]  # 300 groups of two
    pairs = {(b"ns.s%d" % i, i) for i in range(600)}
    assert index.split_sse(records) == [
        (value, oracle.sse_frame(group), len(group))
        for value, group in oracle.sublist_split(pairs, records).items()]


def test_zero_or_more_tokens_after_the_final_wildcard():
    index = Sublist()
    index.insert(b"ns.x.>", "rest")
    index.insert(b"ns.*", "star")
    assert set(index.match(b"ns.x")) == {"rest", "star"}
    assert index.match(b"ns.x.y.z") == ("rest",)
    assert index.match(b"ns.y.z") == ()


def test_delete_prunes_and_empties_the_cache():
    index = Sublist()
    index.insert(b"ns.*.b", 1)
    assert index.match(b"ns.a.b") == (1,)
    index.delete(b"ns.*.b", 1)
    assert index.match(b"ns.a.b") == ()
    index.insert(b"ns.a.b", 2)
    assert index.match(b"ns.a.b") == (2,)
    index.delete(b"ns.a.b", 2)
    index.delete(b"ns.a.b", 2)  # twice: nothing to do
    assert len(index) == 0 and index.match(b"ns.a.b") == ()


def test_a_value_under_several_patterns_is_matched_once():
    index = Sublist()
    for pattern in (b"ns.a", b"ns.*", b"ns.>"):
        index.insert(pattern, "multi")
    index.insert(b"ns.a", "one")
    assert len(index) == 4 and index.values(b"ns.a") == ("multi", "one")
    assert sorted(index.match(b"ns.a")) == ["multi", "one"]
    records = [record(b"ns.a"), record(b"ns.b")]
    assert dict(index.split(records)) == {"multi": records, "one": records[:1]}
    index.delete(b"ns.*", "multi")
    index.delete(b"ns.>", "multi")
    assert sorted(index.match(b"ns.a")) == ["multi", "one"] and index.match(b"ns.b") == ()


def test_cache_stays_bounded_past_its_limit():
    index = Sublist()
    index.insert(b"ns.>", "all")
    index.insert(b"ns.s7", "seven")
    for i in range(CACHE_MAX + 100):
        assert index.cached <= CACHE_MAX
        assert set(index.match(b"ns.s%d" % i)) == ({"all", "seven"} if i == 7 else {"all"})
    assert 0 < index.cached <= CACHE_MAX


def test_split_refuses_bytes_that_are_not_a_record():
    index = Sublist()
    index.insert(b"ns.a", 1)
    try:
        index.split([b"short"])
    except ValueError as exc:
        assert "not a record" in str(exc)
    else:
        raise AssertionError("no ValueError")
