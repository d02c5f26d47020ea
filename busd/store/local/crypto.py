"""Encryption at rest (SPEC §5): the key, and the key check recorded with each namespace.

The cipher work (cutting records into blocks, sealing each with its own nonce, framing,
opening) is in busd/store/local/_crypto.pyx; this module only derives the key from the secret and
seals/opens the namespace's key-check file.

Key = SHA-256 of the secret (UTF-8). Each encrypted namespace directory holds `keycheck`:
b"BUSDKEY1", a known value sealed with the key (one block, its own random nonce), and a
crc32 of both. A crc-valid file that does not open means another key (a damaged one proves
nothing): a log opened with the wrong key is refused at start-up instead of every record
failing later.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

from busd.store.local._crypto import BLOCK_OVERHEAD, Codec, SealError, plain_size, sealed_size

__all__ = ["BLOCK_OVERHEAD", "Codec", "SealError", "derive_key", "keycheck_matches",
           "make_codec", "plain_size", "seal_keycheck", "sealed_size", "KEYCHECK_NAME"]

KEYCHECK_NAME = "keycheck"
KEYCHECK_MAGIC = b"BUSDKEY1"
_KNOWN = b"busd key check v1: this namespace's records are sealed with this key"


def derive_key(secret: str | bytes) -> bytes:
    """The 32-byte secretbox key: SHA-256 of the secret."""
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not secret:
        raise ValueError("the secret key is empty")
    return hashlib.sha256(secret).digest()


def make_codec(secret: str | bytes) -> Codec:
    return Codec(derive_key(secret))


_U32 = struct.Struct("<I")
_KEYCHECK_SIZE = len(KEYCHECK_MAGIC) + len(_KNOWN) + BLOCK_OVERHEAD + 4


def seal_keycheck(codec: Codec) -> bytes:
    """The contents of a new key-check file."""
    data = KEYCHECK_MAGIC + codec.seal(_KNOWN, len(_KNOWN))
    return data + _U32.pack(zlib.crc32(data))


def keycheck_matches(codec: Codec, data: bytes) -> bool | None:
    """True: sealed with this key. False: an intact key-check file sealed with another key.
    None: not an intact key-check file (damaged or truncated), so it proves nothing."""
    if (len(data) != _KEYCHECK_SIZE or not data.startswith(KEYCHECK_MAGIC)
            or _U32.unpack_from(data, len(data) - 4)[0] != zlib.crc32(data[:-4])):
        return None
    try:
        return codec.open(data[len(KEYCHECK_MAGIC):-4], len(_KNOWN)) == _KNOWN
    except SealError:
        return False
