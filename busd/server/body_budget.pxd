# The C layout of body_budget.py's BodyBudget when it is compiled (setup.py): the compiled
# HttpConnection calls take and give_back as C, twice per request. The source runs
# uncompiled as the oracle in tests/server/test_body_budget.py.

cdef class BodyBudget:
    cdef public Py_ssize_t limit, used, peak
    cdef dict _bodies, _reading, _waiting

    cpdef take(self, conn, Py_ssize_t size)
    cpdef passed(self, Py_ssize_t size)
    cpdef give_back(self, conn, Py_ssize_t size)
    cdef _grant(self, conn)
