"""GET /stats: one compact JSON snapshot of the bus's counters, for the console's charts.

The server keeps no history for it: a client polls once a second and turns the
difference of two snapshots into rates (`t` is a monotonic clock, so the difference is
real elapsed time even if the wall clock jumps). Nothing here grows with clients.
"""

from __future__ import annotations

import time

import orjson

from busd.wire import INBOX_NAMESPACE


def snapshot(broker, started: float) -> bytes:
    """The counters as of now; `started` is the server's time.monotonic() at start."""
    metrics, sizes = broker.metrics, broker.store.stats()
    namespaces = {}
    for ns in broker.config.namespaces:
        size, counted = sizes[ns], metrics.per_namespace[ns]
        namespaces[ns] = {"events": size["next_index"] - size["first_index"],
                          "first_index": size["first_index"],
                          "next_index": size["next_index"],
                          "bytes": size["bytes"],
                          "segments": size.get("segments", 0),
                          "published": counted.events_in,
                          "published_bytes": counted.bytes_in,
                          "delivered": counted.events_out}
    connections = metrics.connections
    return orjson.dumps({
        "t": round(time.monotonic() - started, 3),
        "consumers": len(broker.fanout.consumers),
        "connections": 0 if connections is None else len(connections),
        "acks": metrics.acks,
        "redeliveries": metrics.redelivered,
        "dropped": metrics.dropped,
        "inbox_delivered": metrics.per_namespace[INBOX_NAMESPACE].events_out,
        "namespaces": namespaces,
    })
