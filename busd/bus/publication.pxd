# The C layout of publication.py's Publication when it is compiled (setup.py): the broker
# binds it, the local store tells it the outcome and it calls its subclass's answer, all in
# C. publication.py stays the source, the oracle of tests/bus/test_publication.py.

from busd.store.stored cimport Stored


cdef class Publication(Stored):
    cdef object dedup
    cdef str namespace
    cdef list ids, stamps, reserved

    cpdef bind(self, dedup, str namespace, list ids, list stamps, list reserved)
    cpdef stored(self, long long first)
    cpdef refused(self, reason)
    cdef _answer(self, outcome)
    cpdef answer(self, list ids, list stamps, outcome)
