# The sealed record format (see _crypto.pyx): an id tag, then per block a nonce, a Poly1305
# tag and the ciphertext. C_ names: _crypto's Python constants carry the plain ones.
cdef enum:
    C_TAG = 8      # the id tag: keyed SipHash-2-4 of the record's event id
    C_NONCE = 24
    C_MAC = 16
    C_OVER = C_NONCE + C_MAC  # per block


cdef inline Py_ssize_t _blocks(Py_ssize_t n, Py_ssize_t bs) noexcept nogil:
    return (n + bs - 1) // bs


cdef inline Py_ssize_t sealed_record_size(Py_ssize_t n, Py_ssize_t bs) noexcept nogil:
    """Frame body bytes of an n-byte record sealed in bs-byte blocks: its id tag, then per
    block a nonce, a Poly1305 tag and the ciphertext."""
    return C_TAG + n + C_OVER * _blocks(n, bs)


cdef inline Py_ssize_t _plain_size(Py_ssize_t sealed, Py_ssize_t bs) noexcept nogil:
    """Plaintext bytes of a sealed blob of this length, or -1 if no record seals to it."""
    cdef Py_ssize_t full = bs + C_OVER, k
    if sealed <= C_OVER:
        return -1
    k = (sealed + full - 1) // full
    if sealed - (k - 1) * full <= C_OVER:
        return -1
    return sealed - C_OVER * k


cdef int _check_block_size(Py_ssize_t bs) except -1


cdef class Codec:
    cdef unsigned char key[32]
    cdef unsigned char tag_key[16]
    cdef void _id_tag(self, const unsigned char* record, Py_ssize_t n,
                      unsigned char* out) noexcept nogil
    cdef unsigned char* _seal_into(self, const unsigned char* m, Py_ssize_t n, Py_ssize_t bs,
                                   unsigned char* out, const unsigned char* nonces) noexcept nogil
    cdef int _open_into(self, const unsigned char* c, Py_ssize_t sealed, Py_ssize_t bs,
                        unsigned char* out) noexcept nogil
    cdef int _open_record(self, const unsigned char* body, Py_ssize_t n, Py_ssize_t bs,
                          unsigned char* out) noexcept nogil
    cdef unsigned char* _seal_body(self, const unsigned char* record, Py_ssize_t n,
                                   Py_ssize_t bs, unsigned char* out,
                                   const unsigned char* nonces) noexcept nogil
    cdef bytes _open_body(self, const unsigned char* body, Py_ssize_t n, Py_ssize_t bs)
    cdef int open_head(self, const unsigned char* body, Py_ssize_t n, Py_ssize_t block_size,
                       unsigned char* out) noexcept nogil
    cdef bytes _nonces(self, Py_ssize_t count, object nonces)
