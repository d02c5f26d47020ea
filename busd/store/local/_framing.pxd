# What other compiled modules call in C (tail.py's append, per group commit): framing a
# batch and indexing it, and the sparse index's layout. _framing.pyx says what they do.

cimport cython
from cpython cimport array

from busd.store.local._crypto cimport Codec


cpdef bytes frame_records(list records, Codec codec=*, Py_ssize_t block_size=*, nonces=*)


cdef class SegmentIndex:
    cdef public array.array rel, off, lo, hi, run_max
    cdef public Py_ssize_t n_records, end_offset, every_records, every_bytes
    # where the last write end found by scan() or appended ends: (records, offset) up to it
    cdef public Py_ssize_t write_end_records, write_end_offset
    cdef public long long seg_min, seg_max
    cdef public bint monotonic
    cdef Py_ssize_t cur_n, cur_bytes
    cdef bint force_new

    @cython.final  # a direct call the C compiler inlines in the per-record loops, no vtable
    cdef void _add(self, long long sec, Py_ssize_t frame_len)
    cpdef add_records(self, list records, Py_ssize_t block_size=*)
