# The C layout of stored.py's Stored when it is compiled (setup.py): a compiled store calls
# `stored` through the vtable. stored.py stays the source.

cdef class Stored:
    cpdef stored(self, long long first)
    cpdef refused(self, reason)
