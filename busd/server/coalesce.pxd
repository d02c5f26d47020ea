# The C layout of coalesce.py's WriteCoalescer when it is compiled (setup.py): the compiled
# HttpConnection calls should_hold and hold, and counts writes, as C: once per delivery of
# a live fan-out. The source runs uncompiled as the oracle in tests/server/test_coalesce.py.

from busd._core cimport monotonic


cdef class WriteCoalescer:
    cdef public dict held
    cdef public Py_ssize_t writes
    cdef public double max_delay
    cdef Py_ssize_t _seen
    cdef double _since
    cdef bint _scheduled
    cdef object _loop

    cpdef bint should_hold(self)
    cpdef hold(self, conn)
