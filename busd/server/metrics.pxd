# The C layout of metrics.py's Metrics when it is compiled (setup.py): the counters as struct
# fields, so the broker and the fan-out bump them without a Python call or an attribute
# lookup. metrics.py stays the source, and runs uncompiled as the oracle in
# tests/server/test_metrics.py.

cimport cython


cdef class NamespaceCounters:
    cdef public long long events_in, bytes_in, events_out


cdef class Metrics:
    cdef public dict per_namespace
    cdef public long long delivered, redelivered, dropped, acks, fsyncs
    cdef public double fsync_total_seconds, fsync_max_seconds, started_at
    cdef public list fsync_buckets
    cdef public object connections, body_budget

    @cython.locals(counters=NamespaceCounters)
    cpdef published(self, namespace, long long events, long long size)

    @cython.locals(counters=NamespaceCounters)
    cpdef events_delivered(self, namespace, long long events)
