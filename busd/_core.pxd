# Declarations of busd._core's extension types, so other Cython modules can cimport them.

cdef class Pattern:
    cdef readonly bytes pattern
    cdef readonly bytes namespace
    cdef readonly bint matches_all
    cdef readonly bint is_literal
    cdef bint _matches(self, const unsigned char* s, Py_ssize_t n) noexcept


cdef class ParsedEvent:
    cdef readonly bytes subject
    cdef readonly bytes id
    cdef readonly bytes created_at
    cdef readonly bytes response_subject
    cdef readonly bytes trace_id
    cdef readonly bytes key
    cdef readonly bytes key_value
    cdef readonly object payload
