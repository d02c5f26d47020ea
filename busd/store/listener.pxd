# The C layout of listener.py's StoreListener when it is compiled (setup.py): a compiled
# store calls `appended` and `published` through the vtable. listener.py stays the source.

cdef class StoreListener:
    cpdef appended(self, str namespace, list records, next_index)
    cpdef published(self, str namespace, long long events, long long size)
