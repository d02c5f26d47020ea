# The C layout of publication.py's Publication when it is compiled (setup.py): the broker
# binds it and it calls its subclass's answer in C (the store calls it as any callable, the
# store interface's Stored). publication.py stays the source, the oracle of
# tests/bus/test_publication.py.

cdef class Publication:
    cdef object dedup
    cdef str namespace
    cdef list ids, stamps, reserved

    cpdef bind(self, dedup, str namespace, list ids, list stamps, list reserved)
    cpdef answer(self, list ids, list stamps, outcome)
