"""Counters the server keeps about itself, for /healthz (and /metrics later)."""

from __future__ import annotations


class Metrics:
    """Plain counters updated on the loop thread; cheap enough for the hot path."""

    __slots__ = ("events_in", "bytes_in", "delivered", "redelivered", "dropped",
                 "fsyncs", "fsync_total_seconds", "fsync_max_seconds")

    def __init__(self, namespaces: tuple[str, ...]) -> None:
        self.events_in = dict.fromkeys(namespaces, 0)
        self.bytes_in = dict.fromkeys(namespaces, 0)
        self.delivered = 0
        self.redelivered = 0
        self.dropped = 0
        self.fsyncs = 0
        self.fsync_total_seconds = 0.0
        self.fsync_max_seconds = 0.0

    def published(self, namespace: str, events: int, size: int) -> None:
        self.events_in[namespace] += events
        self.bytes_in[namespace] += size

    def fsync_seconds(self, seconds: float) -> None:
        self.fsyncs += 1
        self.fsync_total_seconds += seconds
        self.fsync_max_seconds = max(self.fsync_max_seconds, seconds)
