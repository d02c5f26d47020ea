# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Encryption at rest: records sealed in blocks with NaCl secretbox (XSalsa20-Poly1305).

A record of n plaintext bytes is cut into blocks of `block_size` bytes (the last one
shorter) and each block is stored as its own random 24-byte nonce, the 16-byte Poly1305
tag and the ciphertext, back to back (a "blob", n + 40 * ceil(n / block_size) bytes; its
plaintext length and block boundaries follow from its length and the block size alone):

    [nonce | mac | ct(block 0)] [nonce | mac | ct(block 1)] ...

A stored record is an 8-byte id tag followed by its blob. The id tag is SipHash-2-4,
under a key derived from the secret, of the record's event id (at ID_AT): find_id
compares tags instead of opening a block per record, and a tag reveals nothing of the id
(not even its timestamp) to whoever lacks the key. Opening a record checks its tag too.

The sealed record is the frame body of the segment file, so the framing (length, crc32 of
the ciphertext), recovery and the sparse index work on encrypted logs without the key.

The cipher is libsodium's, the one PyNaCl ships: the C entry points are taken from
PyNaCl's cffi module (`nacl._sodium.lib`) once, so the per-block calls below are plain C
calls with no Python object per block. Everything per-record or per-block (cutting,
nonces, assembling, reassembly) is here, in C methods of Codec that _framing's
frame_records and scan_frames call per record when given a codec; key handling lives in
busd/store/local/crypto.py.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset, memcmp
from libc.stdint cimport uint32_t, uintptr_t

from busd._core cimport ID_AT, ID_END, ID_LEN
from busd.store.local._frame cimport (
    FRAME_HEAD,
    FRAME_MAX_BODY,
    _crc_fits,
    _rd32,
    frame_crc32,
)

import hashlib

NONCE_SIZE = C_NONCE
MAC_SIZE = C_MAC
BLOCK_OVERHEAD = C_OVER
ID_TAG_SIZE = C_TAG
KEY_SIZE = 32

ctypedef int (*box_fn)(unsigned char* out, const unsigned char* data, unsigned long long size,
                       const unsigned char* nonce, const unsigned char* key) noexcept nogil
ctypedef void (*rand_fn)(unsigned char* buf, unsigned long long size) noexcept nogil
ctypedef int (*hash_fn)(unsigned char* out, const unsigned char* data, unsigned long long size,
                        const unsigned char* key) noexcept nogil

cdef box_fn _seal_fn = NULL
cdef box_fn _open_fn = NULL
cdef rand_fn _rand_fn = NULL
cdef hash_fn _hash_fn = NULL


class SealError(ValueError):
    """A sealed record does not open: wrong key, damaged ciphertext, or impossible length."""


cdef int _load() except -1:
    """Resolve libsodium's secretbox and randombytes from PyNaCl's bindings (once)."""
    global _seal_fn, _open_fn, _rand_fn, _hash_fn
    if _seal_fn != NULL:
        return 0
    import nacl.bindings  # initialises libsodium (sodium_init)
    from nacl._sodium import ffi, lib
    if (lib.crypto_secretbox_noncebytes() != C_NONCE or lib.crypto_secretbox_macbytes() != C_MAC
            or lib.crypto_secretbox_keybytes() != 32
            or lib.crypto_shorthash_siphash24_bytes() != C_TAG
            or lib.crypto_shorthash_siphash24_keybytes() != 16):
        raise ImportError("unexpected libsodium secretbox / siphash sizes")
    nacl.bindings.sodium_init()
    _open_fn = <box_fn><uintptr_t>int(ffi.cast("uintptr_t", ffi.addressof(lib, "crypto_secretbox_open_easy")))
    _rand_fn = <rand_fn><uintptr_t>int(ffi.cast("uintptr_t", ffi.addressof(lib, "randombytes")))
    _hash_fn = <hash_fn><uintptr_t>int(ffi.cast("uintptr_t", ffi.addressof(lib, "crypto_shorthash_siphash24")))
    _seal_fn = <box_fn><uintptr_t>int(ffi.cast("uintptr_t", ffi.addressof(lib, "crypto_secretbox_easy")))
    return 0


cdef inline Py_ssize_t _sealed_size(Py_ssize_t n, Py_ssize_t bs) noexcept nogil:
    return n + C_OVER * _blocks(n, bs)


cdef int _check_block_size(Py_ssize_t bs) except -1:
    if bs < 1 or bs > FRAME_MAX_BODY:
        raise ValueError(f"block size {bs} outside 1..{FRAME_MAX_BODY}")
    return 0


def sealed_size(Py_ssize_t n, Py_ssize_t block_size) -> int:
    """Bytes of a record of n plaintext bytes once sealed."""
    _check_block_size(block_size)
    if n < 1:
        raise ValueError("a record has at least one byte")
    return _sealed_size(n, block_size)


def plain_size(Py_ssize_t sealed, Py_ssize_t block_size) -> int:
    """Plaintext bytes of a blob of `sealed` bytes; -1 if that length is impossible."""
    _check_block_size(block_size)
    return _plain_size(sealed, block_size)


def record_size(Py_ssize_t n, Py_ssize_t block_size) -> int:
    """Frame body bytes of a stored record of n bytes (id tag + blob)."""
    _check_block_size(block_size)
    if n < 1:
        raise ValueError("a record has at least one byte")
    return sealed_record_size(n, block_size)


cdef class Codec:
    """One 32-byte key. Methods take the block size: each segment records its own."""

    def __cinit__(self, bytes key):
        if PyBytes_GET_SIZE(key) != 32:
            raise ValueError(f"key must be 32 bytes, not {PyBytes_GET_SIZE(key)}")
        _load()
        memcpy(self.key, PyBytes_AS_STRING(key), 32)
        cdef bytes tag_key = hashlib.sha256(b"busd id tag v1\0" + key).digest()
        memcpy(self.tag_key, PyBytes_AS_STRING(tag_key), 16)

    def __dealloc__(self):
        memset(self.key, 0, 32)
        memset(self.tag_key, 0, 16)

    def __repr__(self) -> str:
        return "<busd.store.local._crypto.Codec>"  # never the key

    # -- C level ---------------------------------------------------------------------------
    cdef void _id_tag(self, const unsigned char* record, Py_ssize_t n,
                      unsigned char* out) noexcept nogil:
        """The id tag of a record: keyed SipHash-2-4 of its event id (of b"" if too short)."""
        if n >= ID_END:
            _hash_fn(out, record + ID_AT, ID_LEN, self.tag_key)
        else:
            _hash_fn(out, record, 0, self.tag_key)

    cdef unsigned char* _seal_into(self, const unsigned char* m, Py_ssize_t n,
                                          Py_ssize_t bs, unsigned char* out,
                                          const unsigned char* nonces) noexcept nogil:
        """Seal n bytes at m into out (which has _sealed_size(n, bs) bytes), taking one
        nonce per block from nonces; returns the next unused nonce."""
        cdef Py_ssize_t pos = 0, size
        while pos < n:
            size = n - pos if n - pos < bs else bs
            memcpy(out, nonces, C_NONCE)
            _seal_fn(out + C_NONCE, m + pos, size, out, self.key)
            nonces += C_NONCE
            out += C_OVER + size
            pos += size
        return <unsigned char*>nonces

    cdef unsigned char* _seal_body(self, const unsigned char* record, Py_ssize_t n,
                                   Py_ssize_t bs, unsigned char* out,
                                   const unsigned char* nonces) noexcept nogil:
        """Write the frame body of a record (sealed_record_size(n, bs) bytes: id tag, blob)
        at out, taking one nonce per block from nonces; returns the next unused nonce."""
        self._id_tag(record, n, out)
        return self._seal_into(record, n, bs, out + C_TAG, nonces)

    cdef int _open_into(self, const unsigned char* c, Py_ssize_t sealed, Py_ssize_t bs,
                               unsigned char* out) noexcept nogil:
        """Open a sealed record (length already validated) into out; 0, or -1 if a block
        does not authenticate."""
        cdef Py_ssize_t full = bs + C_OVER, size
        while sealed > 0:
            size = sealed if sealed < full else full
            if _open_fn(out, c + C_NONCE, size - C_NONCE, c, self.key) != 0:
                return -1
            c += size
            out += size - C_OVER
            sealed -= size
        return 0

    cdef int _open_record(self, const unsigned char* body, Py_ssize_t n, Py_ssize_t bs,
                          unsigned char* out) noexcept nogil:
        """Open a stored record (id tag + blob, length already validated) into out and
        check its id tag: 0, or -1."""
        cdef unsigned char tag[C_TAG]
        if self._open_into(body + C_TAG, n - C_TAG, bs, out) != 0:
            return -1
        self._id_tag(out, _plain_size(n - C_TAG, bs), tag)
        return 0 if memcmp(tag, body, C_TAG) == 0 else -1

    cdef bytes _open_body(self, const unsigned char* body, Py_ssize_t n, Py_ssize_t bs):
        """The record in a frame body of n bytes, or None if its length is impossible, a
        block does not authenticate or its id tag does not match."""
        cdef Py_ssize_t plain = _plain_size(n - C_TAG, bs)
        cdef bytes out
        if plain < 0:
            return None
        out = PyBytes_FromStringAndSize(NULL, plain)
        if self._open_record(body, n, bs, <unsigned char*>PyBytes_AS_STRING(out)) != 0:
            return None
        return out

    cdef int open_head(self, const unsigned char* body, Py_ssize_t n, Py_ssize_t block_size,
                       unsigned char* out) noexcept nogil:
        """Open only the first block of a stored record into out (block_size bytes of
        room): its plaintext length, or -1 if the length is impossible or it does not
        authenticate. Enough for the record's id: the index and find_id use this."""
        cdef Py_ssize_t size
        n -= C_TAG
        if n < 0 or _plain_size(n, block_size) < 0:
            return -1
        body += C_TAG
        size = n if n < block_size + C_OVER else block_size + C_OVER
        if _open_fn(out, body + C_NONCE, size - C_NONCE, body, self.key) != 0:
            return -1
        return <int>(size - C_OVER)

    cdef bytes _nonces(self, Py_ssize_t count, object nonces):
        """count * 24 random bytes in one call (or the caller's, for tests)."""
        cdef bytes out
        if nonces is not None:
            out = bytes(nonces)
            if PyBytes_GET_SIZE(out) < count * C_NONCE:
                raise ValueError(f"{count} nonces needed, {PyBytes_GET_SIZE(out) // C_NONCE} given")
            return out
        out = PyBytes_FromStringAndSize(NULL, count * C_NONCE)
        if count:
            _rand_fn(<unsigned char*>PyBytes_AS_STRING(out), count * C_NONCE)
        return out

    # -- Python level ------------------------------------------------------------------------
    def id_tag(self, event_id) -> bytes:
        """The tag of an event id (b"e_" + xid, 22 bytes): what find_id looks for."""
        cdef bytes r = bytes(event_id)
        cdef bytes out = PyBytes_FromStringAndSize(NULL, C_TAG)
        if PyBytes_GET_SIZE(r) != ID_LEN:
            raise ValueError(f"an event id has {ID_LEN} bytes, not {PyBytes_GET_SIZE(r)}")
        _hash_fn(<unsigned char*>PyBytes_AS_STRING(out), <const unsigned char*>PyBytes_AS_STRING(r),
                 ID_LEN, self.tag_key)
        return out

    def record_tag(self, record) -> bytes:
        """The id tag stored in front of a record: of its event id, or of b"" if too short."""
        cdef bytes r = bytes(record)
        cdef bytes out = PyBytes_FromStringAndSize(NULL, C_TAG)
        self._id_tag(<const unsigned char*>PyBytes_AS_STRING(r), PyBytes_GET_SIZE(r),
                     <unsigned char*>PyBytes_AS_STRING(out))
        return out

    def seal(self, data, Py_ssize_t block_size, nonces=None) -> bytes:
        """A blob: data sealed in blocks (nonces: optional bytes of 24 per block, for tests)."""
        _check_block_size(block_size)
        cdef bytes m = bytes(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(m)
        if n < 1:
            raise ValueError("a record has at least one byte")
        cdef bytes nb = self._nonces(_blocks(n, block_size), nonces)
        cdef bytes out = PyBytes_FromStringAndSize(NULL, _sealed_size(n, block_size))
        self._seal_into(<const unsigned char*>PyBytes_AS_STRING(m), n, block_size,
                        <unsigned char*>PyBytes_AS_STRING(out),
                        <const unsigned char*>PyBytes_AS_STRING(nb))
        return out

    def open(self, sealed, Py_ssize_t block_size) -> bytes:
        """The plaintext of a blob; SealError if it does not open."""
        _check_block_size(block_size)
        cdef Py_buffer view
        PyObject_GetBuffer(sealed, &view, PyBUF_SIMPLE)
        cdef Py_ssize_t slen = view.len, n = _plain_size(view.len, block_size)
        cdef bytes out = None
        cdef int rc = -1
        try:
            if n > 0:
                out = PyBytes_FromStringAndSize(NULL, n)
                rc = self._open_into(<const unsigned char*>view.buf, view.len, block_size,
                                     <unsigned char*>PyBytes_AS_STRING(out))
        finally:
            PyBuffer_Release(&view)
        if n < 0:
            raise SealError(f"{slen} bytes is not the length of a record sealed in "
                            f"{block_size}-byte blocks")
        if rc != 0:
            raise SealError("sealed record does not authenticate (wrong key or damaged)")
        return out

    def seal_record(self, record, Py_ssize_t block_size, nonces=None) -> bytes:
        """A record as stored in a frame body: id tag + blob."""
        cdef bytes r = bytes(record)
        return self.record_tag(r) + self.seal(r, block_size, nonces)

    def open_record(self, body, Py_ssize_t block_size) -> bytes:
        """The record in a frame body (id tag + blob); SealError if it does not open or
        its id tag does not match."""
        _check_block_size(block_size)
        cdef Py_buffer view
        cdef bytes out
        PyObject_GetBuffer(body, &view, PyBUF_SIMPLE)
        try:
            out = self._open_body(<const unsigned char*>view.buf, view.len, block_size)
        finally:
            PyBuffer_Release(&view)
        if out is None:
            raise SealError("stored record does not open (wrong key, damaged, or impossible "
                            "length)")
        return out

    def resync(self, buffer, Py_ssize_t offset, Py_ssize_t block_size) -> int:
        """Offset of the first whole frame after `offset` (exclusive) whose length is a
        sealed length, whose first block authenticates and whose crc matches; -1 if none.

        Recovery uses it when a frame's length field is damaged: the encrypted twin of
        searching for the next `{"id":"e_` (a forged match needs a Poly1305 forgery)."""
        _check_block_size(block_size)
        cdef Py_buffer view
        PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
        cdef const unsigned char* buf = <const unsigned char*>view.buf
        cdef const unsigned char* body
        cdef Py_ssize_t size = view.len, q = offset + 1
        cdef uint32_t length
        cdef unsigned char* scratch = <unsigned char*>malloc(block_size)
        cdef Py_ssize_t found = -1
        if scratch == NULL:
            PyBuffer_Release(&view)
            raise MemoryError()
        try:
            with nogil:
                if q < 0:
                    q = 0
                while size - q >= FRAME_HEAD + C_TAG + C_OVER + 1:
                    length = _rd32(buf + q)
                    body = buf + q + FRAME_HEAD
                    if (length > C_TAG + C_OVER and length <= FRAME_MAX_BODY
                            and <Py_ssize_t>length <= size - q - FRAME_HEAD
                            and self.open_head(body, length, block_size, scratch) >= 0
                            and _crc_fits(frame_crc32(0, body, length), _rd32(buf + q + 4))):
                        found = q
                        break
                    q += 1
        finally:
            free(scratch)
            PyBuffer_Release(&view)
        return found
