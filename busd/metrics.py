"""Counters the server keeps about itself, and their Prometheus rendering for /metrics."""

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


PROMETHEUS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def render_prometheus(broker, started: float) -> bytes:
    """The Prometheus text exposition of the broker's counters and the store's sizes."""
    metrics, store = broker.metrics, broker.store
    sizes = store.stats()
    lines = [
        "# HELP busd_events_published_total Events stored, per namespace.",
        "# TYPE busd_events_published_total counter",
        *(f'busd_events_published_total{{namespace="{ns}"}} {n}'
          for ns, n in metrics.events_in.items()),
        "# HELP busd_bytes_published_total Bytes of stored records, per namespace.",
        "# TYPE busd_bytes_published_total counter",
        *(f'busd_bytes_published_total{{namespace="{ns}"}} {n}'
          for ns, n in metrics.bytes_in.items()),
        "# HELP busd_log_events Events retained in the log, per namespace.",
        "# TYPE busd_log_events gauge",
        *(f'busd_log_events{{namespace="{ns}"}} {store.next_index(ns) - store.first_index(ns)}'
          for ns in metrics.events_in),
        "# HELP busd_log_bytes Bytes of segment files on disk, per namespace.",
        "# TYPE busd_log_bytes gauge",
        *(f'busd_log_bytes{{namespace="{ns}"}} {sizes[ns]["bytes"]}' for ns in metrics.events_in),
        "# HELP busd_events_delivered_total Events written to subscribers.",
        "# TYPE busd_events_delivered_total counter",
        f"busd_events_delivered_total {metrics.delivered}",
        "# HELP busd_redeliveries_total Unacked events sent again.",
        "# TYPE busd_redeliveries_total counter",
        f"busd_redeliveries_total {metrics.redelivered}",
        "# HELP busd_events_dropped_total Events given up on (redelivery_count reached, or an "
        "inbox consumer not reading).",
        "# TYPE busd_events_dropped_total counter",
        f"busd_events_dropped_total {metrics.dropped}",
        "# HELP busd_consumers Subscriptions currently connected.",
        "# TYPE busd_consumers gauge",
        f"busd_consumers {len(broker.consumers)}",
        "# HELP busd_fsyncs_total fsync calls and their total duration.",
        "# TYPE busd_fsyncs_total counter",
        f"busd_fsyncs_total {metrics.fsyncs}",
        "# TYPE busd_fsync_seconds_total counter",
        f"busd_fsync_seconds_total {metrics.fsync_total_seconds:.6f}",
        "# TYPE busd_fsync_seconds_max gauge",
        f"busd_fsync_seconds_max {metrics.fsync_max_seconds:.6f}",
    ]
    return ("\n".join(lines) + "\n").encode()
