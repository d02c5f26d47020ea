cdef class Codec:
    cdef unsigned char key[32]
    cdef unsigned char* _seal_into(self, const unsigned char* m, Py_ssize_t n, Py_ssize_t bs,
                                   unsigned char* out, const unsigned char* nonces) noexcept nogil
    cdef int _open_into(self, const unsigned char* c, Py_ssize_t sealed, Py_ssize_t bs,
                        unsigned char* out) noexcept nogil
    cdef int open_head(self, const unsigned char* body, Py_ssize_t n, Py_ssize_t block_size,
                       unsigned char* out) noexcept nogil
    cdef bytes _nonces(self, Py_ssize_t count, object nonces)
