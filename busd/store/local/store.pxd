# The C layout of store.py's LocalStore when it is compiled (setup.py): typed attributes for
# the group commit. store.py stays the source, and runs uncompiled as the oracle in
# tests/server/test_publish_compiled.py. (A test that needs a different LocalStore method
# gives the server a subclass: a compiled class takes no patched methods.)

cimport cython

from busd._core cimport records_size
from busd.store.intake cimport Intake
from busd.store.listener cimport StoreListener
from busd.store.stored cimport Stored
from busd.store.local.tail cimport LogTail


cdef class LocalStore(Intake):
    cdef public object root, _lock_fd, _loop, _sync_executor, _read_executor
    cdef public StoreListener _listener
    cdef public list namespaces, _sync_waiting
    cdef public dict _logs, _group, _group_ids, _unannounced, failed
    cdef public bint fsync_always, _commit_scheduled, _sync_running

    cpdef publish(self, str namespace, list events, list records, bint dedup, Stored done)

    @cython.locals(nslog=LogTail, first=cython.longlong)
    cpdef _commit(self)

    @cython.locals(done=Stored, index=Py_ssize_t)
    cdef _settle(self, list written)
