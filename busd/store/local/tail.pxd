# The C layout of tail.py's classes when it is compiled (setup.py): the append's state as
# struct fields. tail.py stays the source, and runs uncompiled as the oracle in
# tests/store/test_tail_compiled.py. NamespaceLog is a Python subclass of LogTail, so its
# methods (append included) can still be patched on it by the fault-injection tests.

cimport cython

from busd.store.local._framing cimport SegmentIndex, frame_records


cdef class _Segment:
    cdef public long long first, size, count
    cdef public Py_ssize_t block_size
    cdef public object path, corrupt, summary
    cdef public SegmentIndex index
    cdef public bint cached


cdef class _WriteFile:
    cdef public int fd
    cdef public object path
    cdef public long long write_seq, synced_seq
    cdef public bint retired


@cython.locals(size=Py_ssize_t, written=Py_ssize_t, n=Py_ssize_t)
cpdef _write_all(int fd, data)


cdef class LogTail:
    cdef public object name, codec, ids, _pending_truncate, _cache_ends
    cdef public long long segment_bytes, cache_bytes, _next, _bytes
    cdef public long long _cache_first, _cache_base, _cache_total
    cdef public list _segments, _cache
    cdef public _WriteFile _wfile

    @cython.locals(n=Py_ssize_t, size=Py_ssize_t, before=cython.longlong,
                   first=cython.longlong, seg=_Segment, wf=_WriteFile)
    cpdef long long append(self, list records, bint free_ids=*) except? -1

    @cython.locals(k=Py_ssize_t)
    cdef _cache_add(self, long long first, list records)

    cpdef _cache_drop(self, Py_ssize_t k)

    cdef _cache_clear(self)
