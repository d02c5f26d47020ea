"""GET /metrics: Prometheus text format, parsed by Prometheus's own parser, with the
figures a person running a bus watches."""

from __future__ import annotations

import pytest
from busclient import SSE, ack, publish, request, wait_until
from hypothesis import given
from hypothesis import strategies as st
from source_module import load_source

import busd.server.metrics as metrics_compiled
from busd import __version__
from busd.server.metrics import FSYNC_BUCKETS, Metrics

metrics_source = load_source(metrics_compiled)  # the oracle of the compiled Metrics

parser = pytest.importorskip("prometheus_client.parser")


def scrape(server) -> dict[str, dict]:
    """{family name: {"type": …, "samples": {(sample name, labels…): value}}}."""
    response = request(server.port, "GET", "/metrics")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {}
    for family in parser.text_string_to_metric_families(response.body.decode()):
        families[family.name] = {
            "type": family.type,
            "samples": {(s.name, *sorted(s.labels.items())): s.value for s in family.samples},
        }
    return families


def value(families, family: str, sample: str | None = None, **labels) -> float:
    return families[family]["samples"][(sample or family, *sorted(labels.items()))]


def test_metrics_after_traffic(make_server):
    server = make_server("app,orders", "--fsync", "always")
    with SSE(server.port, "subject=app.>&start=oldest") as reader, \
            SSE(server.port, "subject=orders.*&ack=manual&redelivery=100ms"
                             "&redelivery_count=2") as worker:
        for n in range(3):
            assert publish(server.port, "app.a", {"n": n}).status == 202
        assert publish(server.port, "orders.new", 1).status == 202
        reader.events(3)
        event = worker.events(1)[0]
        assert worker.events(1)[0]["id"] == event["id"]  # redelivered once, then dropped
        wait_until(lambda: value(scrape(server), "busd_events_dropped",
                                 "busd_events_dropped_total") > 0,
                   what="the event delivered twice was not counted as dropped")
        assert ack(server.port, worker.consumer_id, event["id"]).status == 202
        families = scrape(server)
        assert value(families, "busd_consumers") == 2
        assert value(families, "busd_connections") >= 2

    assert families["busd_events_published"]["type"] == "counter"
    assert value(families, "busd_events_published", "busd_events_published_total",
                 namespace="app") == 3
    assert value(families, "busd_events_published", "busd_events_published_total",
                 namespace="orders") == 1
    assert value(families, "busd_bytes_published", "busd_bytes_published_total",
                 namespace="app") > 3 * 40
    assert value(families, "busd_events_delivered", "busd_events_delivered_total",
                 namespace="app") == 3
    assert value(families, "busd_events_delivered", "busd_events_delivered_total",
                 namespace="orders") == 2
    assert value(families, "busd_redeliveries", "busd_redeliveries_total") == 1
    assert value(families, "busd_events_dropped", "busd_events_dropped_total") == 1
    assert value(families, "busd_acks", "busd_acks_total") == 1
    assert value(families, "busd_log_events", namespace="app") == 3
    assert value(families, "busd_log_bytes", namespace="orders") > 16
    assert value(families, "busd_log_segments", namespace="app") == 1

    fsync = families["busd_fsync_seconds"]
    assert fsync["type"] == "histogram"
    buckets = [fsync["samples"][("busd_fsync_seconds_bucket", ("le", le))]
               for le in [*map(repr, FSYNC_BUCKETS), "+Inf"]]
    assert buckets == sorted(buckets)  # cumulative
    count = fsync["samples"][("busd_fsync_seconds_count",)]
    assert buckets[-1] == count >= 4  # --fsync always: at least one fsync per publish group
    assert fsync["samples"][("busd_fsync_seconds_sum",)] > 0
    assert value(families, "process_resident_memory_bytes") > 1 << 20
    assert value(families, "busd_info", version=__version__) == 1


def test_fsync_histogram_buckets():
    metrics = Metrics(("app",))
    for seconds in (0.0001, 0.0005, 0.0006, 0.003, 7.0):
        metrics.fsync_seconds(seconds)
    assert metrics.fsync_buckets[0] == 2  # le 0.0005 (inclusive upper bound)
    assert metrics.fsync_buckets[1] == 1  # le 0.001
    assert metrics.fsync_buckets[FSYNC_BUCKETS.index(0.005)] == 1
    assert metrics.fsync_buckets[-1] == 1  # +Inf only
    assert metrics.fsyncs == 5 and metrics.fsync_max_seconds == 7.0


COUNTERS = ("events_in", "bytes_in", "events_out", "delivered", "redelivered", "dropped",
            "acks", "fsyncs", "fsync_total_seconds", "fsync_max_seconds", "fsync_buckets")


def test_the_counters_run_compiled():
    assert metrics_compiled.__file__.endswith(".so"), "metrics.py is not compiled"
    assert hasattr(metrics_compiled.Metrics, "__pyx_vtable__")


@given(st.lists(st.one_of(
    st.tuples(st.just("published"), st.sampled_from(("app", "orders")),
              st.integers(0, 1000), st.integers(0, 1 << 40)),
    st.tuples(st.just("fsync"), st.floats(0, 30, allow_nan=False)),
    st.tuples(st.just("events_delivered"), st.sampled_from(("app", "orders", "_bus_")),
              st.integers(0, 1000)),
    st.tuples(st.just("bump"), st.sampled_from(("delivered", "redelivered", "dropped", "acks")),
              st.integers(-5, 5)),
), max_size=40))
def test_compiled_counters_match_the_source(calls):
    """What the broker, the fan-out and the consumers do to the counters, on both."""
    both = [module.Metrics(("app", "orders")) for module in (metrics_compiled, metrics_source)]
    for metrics in both:
        for call in calls:
            if call[0] == "published":
                metrics.published(*call[1:])
            elif call[0] == "events_delivered":
                metrics.events_delivered(*call[1:])
            elif call[0] == "fsync":
                metrics.fsync_seconds(call[1])
            else:
                setattr(metrics, call[1], getattr(metrics, call[1]) + call[2])
    compiled, source = ({name: getattr(m, name) for name in COUNTERS} for m in both)
    assert compiled == source
