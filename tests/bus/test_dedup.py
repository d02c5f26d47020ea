"""The dedup cache: per-subject key LRUs, expiry by age, bounds in subjects and bytes,
and saving it (without keys whose events are not written yet)."""

from __future__ import annotations

import pytest

from busd.bus.dedup import ENTRY_BYTES, SUBJECT_BYTES, DedupCache, SnapshotError


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_keys_are_per_subject_and_evicted_least_recent_first():
    cache = DedupCache(size=2)
    cache.add(b"app.a", b"k1")
    cache.add(b"app.a", b"k2")
    assert cache.seen(b"app.a", b"k1") and not cache.seen(b"app.b", b"k1")
    cache.add(b"app.a", b"k3")
    assert not cache.seen(b"app.a", b"k1"), "the oldest of 3 keys with size 2 goes"
    assert cache.seen(b"app.a", b"k2") and cache.seen(b"app.a", b"k3")


def test_keys_expire_after_ttl():
    clock = FakeClock()
    cache = DedupCache(size=10, ttl=5.0, clock=clock)
    cache.add(b"app.a", b"k")
    clock.now = 4.9
    assert cache.seen(b"app.a", b"k")
    clock.now = 5.1
    assert not cache.seen(b"app.a", b"k")


def test_size_zero_disables_and_discard_forgets():
    assert not DedupCache(size=0).enabled
    cache = DedupCache(size=0)
    cache.add(b"app.a", b"k")
    assert not cache.seen(b"app.a", b"k")
    cache = DedupCache(size=5)
    entry = cache.reserve(b"app.a", b"k")
    assert cache.seen(b"app.a", b"k") and cache.reserve(b"app.a", b"k") is None
    cache.discard(entry)
    assert not cache.seen(b"app.a", b"k")


def test_number_of_subjects_is_bounded_least_recently_keyed_first():
    cache = DedupCache(size=5, max_subjects=3)
    for subject in (b"app.1", b"app.2", b"app.3"):
        cache.add(subject, b"k")
    cache.add(b"app.1", b"k2")  # app.1 keyed again: app.2 is now the least recent
    cache.add(b"app.4", b"k")
    assert not cache.seen(b"app.2", b"k")
    assert all(cache.seen(s, b"k") for s in (b"app.1", b"app.3", b"app.4"))
    assert len(cache._subjects) == 3


def test_memory_is_bounded_in_bytes_and_keys_cost_the_same_whatever_their_length():
    cache = DedupCache(size=1000, max_bytes=SUBJECT_BYTES * 2 + ENTRY_BYTES * 10)
    cache.add(b"app.quiet", b"q" * 10_000)
    for i in range(50):
        cache.add(b"app.busy", b"%d" % i + b"x" * 10_000)
    assert cache.bytes <= cache.max_bytes
    assert len(cache) == (cache.max_bytes - SUBJECT_BYTES) // ENTRY_BYTES  # one subject left
    assert not cache.seen(b"app.quiet", b"q" * 10_000), "the least recently keyed goes first"
    assert cache.seen(b"app.busy", b"49" + b"x" * 10_000)
    assert all(len(kd) == 16 for keys in cache._subjects.values() for kd in keys)
    assert all(len(sd) == 16 for sd in cache._subjects)


def test_a_saved_cache_keeps_keys_stamps_and_order_but_not_reserved_keys():
    clock = FakeClock()
    clock.now = 1000.0
    cache = DedupCache(size=2, ttl=60.0, clock=clock)
    cache.add(b"app.a", b"old", stamp=900.0)  # expired: not saved
    cache.add(b"app.a", b"k1", stamp=990.0)
    settled = cache.reserve(b"app.b", b"k2")
    cache.settle(settled)
    cache.reserve(b"app.b", b"in-flight")
    data = cache.dump({"app": (7, b"e_x")})
    again = DedupCache(size=2, ttl=60.0, clock=clock)
    assert again.load(data) == {"app": (7, b"e_x")}
    assert again.seen(b"app.a", b"k1") and again.seen(b"app.b", b"k2")
    assert not again.seen(b"app.b", b"in-flight") and not again.seen(b"app.a", b"old")
    clock.now = 1051.0  # k1 was seen at 990: its age survives the save
    assert not again.seen(b"app.a", b"k1") and again.seen(b"app.b", b"k2")
    damaged = bytearray(data)
    damaged[20] ^= 1
    with pytest.raises(SnapshotError):
        again.load(bytes(damaged))


def test_reserved_keys_that_are_never_settled_leave_with_their_entries():
    """A key kept after an unconfirmed write (or a JetStream duplicate) stays reserved,
    unsaved; it must not outlive its entry, or the reserved set would grow forever."""
    cache = DedupCache(size=3)
    for i in range(100):
        cache.reserve(b"app.a", b"%d" % i)
    assert len(cache._pending) == 3


def test_a_dump_in_steps_is_the_dump_and_may_see_the_cache_change_between_steps():
    cache = DedupCache(size=100)
    for s in range(10):
        for k in range(30):
            cache.add(b"app.%d" % s, b"%d" % k)
    whole = cache.dump({"app": (300, b"e_x")})
    steps = cache.dump_steps({"app": (300, b"e_x")}, 50)
    pieces = [next(steps)]
    assert len(pieces[0]) < len(whole) / 2, "not one piece"
    cache.add(b"app.9", b"added meanwhile")  # a subject not dumped yet
    pieces += list(steps)
    again = DedupCache(size=100)
    assert again.load(b"".join(pieces)) == {"app": (300, b"e_x")}
    assert again.seen(b"app.9", b"added meanwhile") and again.seen(b"app.0", b"29")
    assert DedupCache(size=100).load(whole) == {"app": (300, b"e_x")}
