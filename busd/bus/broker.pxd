# The C layout of broker.py's Broker when it is compiled (setup.py): typed attributes for
# the publish path. broker.py stays the source, and runs uncompiled as the oracle in
# tests/server/test_publish_compiled.py. (A test that needs a different Broker method
# gives the server a subclass: a compiled class takes no patched methods.)

from busd._core cimport records_size, stamp_events, supplied_ids
from busd.bus.fanout cimport FanOut
from busd.bus.publication cimport Publication
from busd.server.metrics cimport Metrics
from busd.store.intake cimport Intake
from busd.store.listener cimport StoreListener


cdef class Broker(StoreListener):
    cdef public object config, namespaces, dedup, groups
    cdef public Intake store  # typed: its publish is a vtable call
    cdef public FanOut fanout
    cdef public Metrics metrics
    cdef public object dedup_path, _saved
    cdef public dict faults, _declared
    cdef bytes _last_namespace
    cdef object _last_name
    cdef public Py_ssize_t max_record

    cpdef publish(self, list events, bint is_batch, Publication done)
    cpdef appended(self, str namespace, list records, next_index)
    cpdef published(self, str namespace, long long events, long long size)

