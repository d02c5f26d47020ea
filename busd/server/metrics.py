# cython: annotation_typing=False, nonecheck=True
# cython: wraparound=True, boundscheck=True, cdivision=False
"""Counters the server keeps about itself, and their Prometheus rendering for /metrics.

The counters are attributes bumped on the loop thread (one integer add on the hot path;
compiled with metrics.pxd they are struct fields the compiled broker and fan-out bump
directly); everything else — gauges read from the store, process figures from /proc — is
computed only when /metrics is scraped. Uncompiled, this file is the oracle of
tests/server/test_metrics.py.
"""

from __future__ import annotations

import os
import resource
import time
from bisect import bisect_left

from busd.version import __version__
from busd.wire import INBOX_NAMESPACE

# Upper bounds (seconds) of the fsync latency histogram's buckets; +Inf is implied.
FSYNC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

PROMETHEUS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class NamespaceCounters:
    """One namespace's counters: events and bytes stored, events delivered. (Fields of one
    object, not three dicts of ints: a bump is then an add, not a lookup, an int object
    made and one freed; that was ~1,100 instructions of a lone publish.)"""

    def __init__(self) -> None:
        self.events_in = 0
        self.bytes_in = 0
        self.events_out = 0


class Metrics:
    """Counters updated on the loop thread; cheap enough for the hot path.

    `per_namespace` holds each namespace's NamespaceCounters, plus `_bus_`'s for inbox
    deliveries (`events_in`, `bytes_in`, `events_out`: the same as dicts, for readers);
    `delivered` counts deliveries a call site did not attribute to a namespace.
    `connections` is the server's live connection set, `body_budget` its BodyBudget (both
    set by the server, may be None).
    """

    def __init__(self, namespaces: tuple[str, ...]) -> None:
        self.per_namespace = {ns: NamespaceCounters() for ns in (*namespaces, INBOX_NAMESPACE)}
        self.delivered = 0  # deliveries not attributed to a namespace (older call sites)
        self.redelivered = 0
        self.dropped = 0
        self.acks = 0
        self.fsyncs = 0
        self.fsync_total_seconds = 0.0
        self.fsync_max_seconds = 0.0
        self.fsync_buckets = [0] * (len(FSYNC_BUCKETS) + 1)  # per bucket, not cumulative
        self.connections = None
        self.body_budget = None
        self.started_at = time.time()

    def published(self, namespace: str, events: int, size: int) -> None:
        counters = self.per_namespace[namespace]
        counters.events_in += events
        counters.bytes_in += size

    def events_delivered(self, namespace: str, events: int) -> None:
        """events sent to subscribers of namespace (`_bus_`: inbox deliveries)."""
        self.per_namespace[namespace].events_out += events

    @property
    def events_in(self) -> dict[str, int]:
        return {ns: c.events_in for ns, c in self.per_namespace.items() if ns != INBOX_NAMESPACE}

    @property
    def bytes_in(self) -> dict[str, int]:
        return {ns: c.bytes_in for ns, c in self.per_namespace.items() if ns != INBOX_NAMESPACE}

    @property
    def events_out(self) -> dict[str, int]:
        return {ns: c.events_out for ns, c in self.per_namespace.items()}

    def fsync_seconds(self, seconds: float) -> None:
        self.fsyncs += 1
        self.fsync_total_seconds += seconds
        if seconds > self.fsync_max_seconds:
            self.fsync_max_seconds = seconds
        self.fsync_buckets[bisect_left(FSYNC_BUCKETS, seconds)] += 1


class _Exposition:
    """Builds the text format: one HELP and TYPE line per family, then its samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples) -> None:
        """samples: a number, or an iterable of (labels dict, value)."""
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        if isinstance(samples, (int, float)):
            samples = [({}, samples)]
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def histogram(self, name: str, help_text: str, bounds, counts, total: float) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} histogram")
        cumulative = 0
        for bound, count in zip((*bounds, float("inf")), counts, strict=True):
            cumulative += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            self.lines.append(f'{name}_bucket{{le="{le}"}} {cumulative}')
        self.lines.append(f"{name}_sum {_number(total)}")
        self.lines.append(f"{name}_count {cumulative}")

    def render(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode()


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: int | float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def _process_samples(out: _Exposition) -> None:
    """The standard process_* families (what a Prometheus client library would export)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.family("process_cpu_seconds_total", "counter", "User and system CPU time spent.",
               usage.ru_utime + usage.ru_stime)
    try:
        with open("/proc/self/statm", "rb") as fh:
            resident_pages = int(fh.read().split()[1])
        out.family("process_resident_memory_bytes", "gauge", "Resident memory size.",
                   resident_pages * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        pass
    try:
        out.family("process_open_fds", "gauge", "Open file descriptors.",
                   len(os.listdir("/proc/self/fd")))
    except OSError:
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        out.family("process_max_fds", "gauge", "Limit on open file descriptors.", soft)


def _group_samples(out: _Exposition, groups) -> None:
    """Per consumer group: pending, lag, redeliveries, dead letters (GET /groups has more)."""
    figures = [({"namespace": g.namespace, "group": g.name}, g) for g in groups]
    out.family("busd_group_pending", "gauge", "Events delivered to a group and not settled.",
               [(labels, len(g.pending)) for labels, g in figures])
    out.family("busd_group_lag", "gauge", "Matching events a group has not delivered yet.",
               [(labels, g.lag()) for labels, g in figures])
    out.family("busd_group_members", "gauge", "Members connected to a group.",
               [(labels, len(g.members)) for labels, g in figures])
    out.family("busd_group_redeliveries_total", "counter", "Events a group delivered again.",
               [(labels, g.counters.redeliveries) for labels, g in figures])
    out.family("busd_group_dead_letters_total", "counter", "Events a group dead-lettered.",
               [(labels, g.counters.dead_letters) for labels, g in figures])


def render_prometheus(broker, started: float | None = None) -> bytes:
    """The Prometheus text exposition of the broker's counters and the store's sizes.

    `started` (a time.monotonic() stamp) is accepted for the caller's convenience; the
    start time reported is the wall-clock one recorded in Metrics."""
    metrics, store = broker.metrics, broker.store
    sizes = store.stats()
    namespaces = list(metrics.events_in)
    per_ns = lambda values: [({"namespace": ns}, value) for ns, value in values]  # noqa: E731
    out = _Exposition()
    out.family("busd_info", "gauge", "Build information; the value is always 1.",
               [({"version": __version__}, 1)])
    out.family("busd_start_time_seconds", "gauge", "Start time of the server, Unix seconds.",
               round(metrics.started_at, 3))
    out.family("busd_events_published_total", "counter", "Events stored, per namespace.",
               per_ns(metrics.events_in.items()))
    out.family("busd_bytes_published_total", "counter",
               "Bytes of stored records, per namespace.", per_ns(metrics.bytes_in.items()))
    out.family("busd_events_delivered_total", "counter",
               "Events written to subscribers, per namespace (_bus_: inbox replies).",
               per_ns(metrics.events_out.items()))
    if metrics.delivered:
        out.family("busd_events_delivered_unattributed_total", "counter",
                   "Events written to subscribers not counted per namespace.",
                   metrics.delivered)
    out.family("busd_log_events", "gauge", "Events retained in the log, per namespace.",
               per_ns((ns, sizes[ns]["next_index"] - sizes[ns]["first_index"])
                      for ns in namespaces))
    out.family("busd_log_bytes", "gauge", "Bytes of segment files on disk, per namespace.",
               per_ns((ns, sizes[ns]["bytes"]) for ns in namespaces))
    out.family("busd_log_segments", "gauge", "Segment files, per namespace.",
               per_ns((ns, sizes[ns].get("segments", 0)) for ns in namespaces))
    out.family("busd_log_next_index", "gauge", "Index the next event of the namespace gets.",
               per_ns((ns, sizes[ns]["next_index"]) for ns in namespaces))
    out.family("busd_namespace_failed", "gauge",
               "1 while a namespace accepts no publishes after its fsync failed (until "
               "restart).", per_ns((ns, int(ns in broker.faults)) for ns in namespaces))
    out.family("busd_consumers", "gauge", "Subscriptions currently connected.",
               len(broker.fanout.consumers))
    if metrics.connections is not None:
        out.family("busd_connections", "gauge", "Open HTTP connections.",
                   len(metrics.connections))
    if metrics.body_budget is not None:
        budget = metrics.body_budget
        out.family("busd_body_bytes", "gauge",
                   "Request-body bytes being received, all connections (--max-body-memory).",
                   budget.used)
        out.family("busd_body_bytes_peak", "gauge",
                   "The most request-body bytes ever held at once.", budget.peak)
        out.family("busd_body_waiting", "gauge",
                   "Connections not read until the body budget has room.", budget.waiting)
    out.family("busd_acks_total", "counter", "Acknowledgements received (PUT /).", metrics.acks)
    out.family("busd_redeliveries_total", "counter", "Unacked events sent again.",
               metrics.redelivered)
    out.family("busd_events_dropped_total", "counter",
               "Events given up on (redelivery_count reached, or an inbox consumer not "
               "reading).", metrics.dropped)
    _group_samples(out, broker.groups.groups.values())
    out.histogram("busd_fsync_seconds", "Duration of one group fsync of the logs.",
                  FSYNC_BUCKETS, metrics.fsync_buckets, metrics.fsync_total_seconds)
    out.family("busd_fsync_seconds_max", "gauge", "Longest fsync since start.",
               metrics.fsync_max_seconds)
    _process_samples(out)
    return out.render()
