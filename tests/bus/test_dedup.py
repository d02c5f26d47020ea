"""The dedup cache: per-subject key LRUs, expiry by age, and a bounded number of subjects."""

from __future__ import annotations

from busd.bus.dedup import DedupCache


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
    cache.add(b"app.a", b"k")
    cache.discard(b"app.a", b"k")
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
