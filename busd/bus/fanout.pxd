# The C layout of fanout.py's FanOut when it is compiled (setup.py): push's loop over an
# append's groups (one turn per delivery) runs as C, with the groups' reader lists read
# as C fields. The source runs uncompiled as the oracle in tests/bus/test_fanout.py.

cimport cython

from busd.server.metrics cimport Metrics

cdef class LiveGroup:
    cdef public list readers, writes


cdef class FanOut:
    cdef public object inbox_owners
    cdef public Metrics metrics
    cdef public dict consumers, live, live_groups, pushed, waiting, inboxes

    @cython.locals(group=LiveGroup, delivered=Py_ssize_t, pushed=Py_ssize_t,
                   matched=Py_ssize_t, i=Py_ssize_t)
    cpdef push(self, str namespace, list records, next_index)


cdef _deliver(reader, write, chunk, next_index)
