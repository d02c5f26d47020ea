# The C layout of publication.py's Publication when it is compiled (setup.py): the store,
# the broker and the API's answer call it in C. publication.py stays the source.

cdef class Publication:
    cdef object dedup
    cdef str namespace
    cdef list ids, stamps, reserved

    cpdef bind(self, dedup, str namespace, list ids, list stamps, list reserved)
    cpdef answer(self, list ids, list stamps, outcome)
