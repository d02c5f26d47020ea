# The C layout of intake.py's Intake when it is compiled (setup.py): the compiled broker
# calls a store's `publish` through the vtable. intake.py stays the source.

from busd.store.stored cimport Stored


cdef class Intake:
    cpdef publish(self, str namespace, list events, list records, bint dedup, Stored done)
