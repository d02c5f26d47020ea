"""Encryption at rest below the server (SPEC §5): the Cython block buffering against a
pure-Python reference, records of every size around the block size, the key check,
tampering and damage on encrypted logs, sealed index files."""

from __future__ import annotations

import hashlib
import os
import random
import struct
import zlib

import nacl.bindings
import pytest
from busd.store.local._crypto import (
    Codec,
    SealError,
    plain_size,
    record_size,
    sealed_size,
)
from busd.store.local._framing import frame_records, scan_frames
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from logtools import read_all

from busd.store.local.crypto import KEYCHECK_NAME, derive_key
from busd.store.local.log import (
    CorruptRecordError,
    MissingKeyError,
    NamespaceLog,
    UnexpectedKeyError,
    WrongKeyError,
)
from busd.store.local.store import LocalStore

ALPHABET = "0123456789abcdefghijklmnopqrstuv"
T0 = 1_750_000_000
SECRET = "correct horse battery staple"
MARKER = b"MARKER-7f3a9c"


def xid(sec: int, n: int) -> bytes:
    v = ((sec << 64) | (0xABCDEF << 40) | n) << 4
    return "".join(ALPHABET[(v >> (5 * (19 - i))) & 31] for i in range(20)).encode()


def rec(sec: int, n: int, size: int = 200) -> bytes:
    head = b'{"id":"e_%s","subject":"orders.%s","payload":"' % (xid(sec, n), MARKER)
    return head + MARKER + b"x" * max(0, size - len(head) - len(MARKER) - 2) + b'"}'


def eid(record: bytes) -> bytes:
    return record[7:29]


# -- the pure-Python reference ----------------------------------------------------------------
def ref_seal(key: bytes, data: bytes, block_size: int, nonces: bytes) -> bytes:
    """Each block_size slice of data as nonce + secretbox(slice), by PyNaCl's own API."""
    out = []
    for k, pos in enumerate(range(0, len(data), block_size)):
        nonce = nonces[24 * k:24 * k + 24]
        out.append(nonce + nacl.bindings.crypto_secretbox(data[pos:pos + block_size], nonce, key))
    return b"".join(out)


def ref_open(key: bytes, sealed: bytes, block_size: int) -> bytes:
    out, pos = [], 0
    while pos < len(sealed):
        block = sealed[pos:pos + block_size + 40]
        out.append(nacl.bindings.crypto_secretbox_open(block[24:], block[:24], key))
        pos += len(block)
    return b"".join(out)


def ref_tag(key: bytes, record: bytes) -> bytes:
    """SipHash-2-4 of the record's id under a key derived from the secretbox key."""
    tag_key = hashlib.sha256(b"busd id tag v1\0" + key).digest()[:16]
    data = record[7:29] if len(record) >= 29 else b""
    return nacl.bindings.crypto_shorthash_siphash24(data, tag_key)


def ref_frames(bodies: list[bytes]) -> bytes:
    """One write's frames: the last one's crc complemented (its write-end mark)."""
    return b"".join(struct.pack("<II", len(b), zlib.crc32(b) ^ (0xFFFFFFFF if i == len(bodies) - 1
                                                               else 0)) + b
                    for i, b in enumerate(bodies))


KEY = derive_key(SECRET)
CODEC = Codec(KEY)


def test_key_is_sha256_of_the_secret():
    assert derive_key(SECRET) == hashlib.sha256(SECRET.encode()).digest()
    assert derive_key(SECRET.encode()) == KEY
    with pytest.raises(ValueError):
        derive_key("")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(st.one_of(st.binary(min_size=1, max_size=3000),
                                  st.builds(lambda n, size: rec(T0, n, size),
                                            st.integers(0, 2**24), st.integers(60, 3000))),
                        min_size=1, max_size=6),
       block_size=st.one_of(st.sampled_from([1, 64, 100, 4096]), st.integers(1, 5000)),
       seed=st.integers(0, 2**32))
def test_cython_buffering_matches_the_python_reference(records, block_size, seed):
    rnd = random.Random(seed)
    blocks = sum(-(-len(r) // block_size) for r in records)
    nonces = rnd.randbytes(24 * blocks)
    expected, at = [], 0
    for r in records:
        k = -(-len(r) // block_size)
        expected.append(ref_seal(KEY, r, block_size, nonces[at:at + 24 * k]))
        at += 24 * k
    # one record at a time, and a whole batch sealed and framed in one call
    at = 0
    for r, sealed in zip(records, expected, strict=True):
        k = -(-len(r) // block_size)
        assert CODEC.seal(r, block_size, nonces[at:at + 24 * k]) == sealed
        at += 24 * k
        assert len(sealed) == sealed_size(len(r), block_size)
        assert plain_size(len(sealed), block_size) == len(r)
        assert CODEC.open(sealed, block_size) == r == ref_open(KEY, sealed, block_size)
        assert CODEC.record_tag(r) == ref_tag(KEY, r)
        assert CODEC.open_record(ref_tag(KEY, r) + sealed, block_size) == r
    framed = frame_records(records, CODEC, block_size, nonces)
    bodies = [ref_tag(KEY, r) + s for r, s in zip(records, expected, strict=True)]
    assert framed == ref_frames(bodies)
    assert [len(r) + 8 for r in expected] == [record_size(len(r), block_size) for r in records]
    assert (scan_frames(framed, 0, -1, codec=CODEC, block_size=block_size)
            == (records, len(framed), len(records), 0))
    # random nonces: still opens, never repeats
    again = frame_records(records, CODEC, block_size)
    assert again != framed
    assert scan_frames(again, 0, -1, codec=CODEC, block_size=block_size)[0] == records


def test_impossible_sealed_lengths_and_damage_do_not_open():
    assert [plain_size(n, 64) for n in (0, 40, 41, 104, 105, 144, 145)] == \
        [-1, -1, 1, 64, -1, -1, 65]
    sealed = CODEC.seal(b"y" * 300, 64)
    for pos in (0, 23, 24, 39, 40, len(sealed) - 1, 104 + 30):
        bad = bytearray(sealed)
        bad[pos] ^= 1
        with pytest.raises(SealError):
            CODEC.open(bytes(bad), 64)
    with pytest.raises(SealError):
        Codec(derive_key("other")).open(sealed, 64)
    with pytest.raises(SealError):
        CODEC.open(sealed[:-1], 64)
    for short in (b"x" * 22, b"y" * 28):  # no room for an id: the tag of b""
        assert CODEC.record_tag(short) == ref_tag(KEY, short) == ref_tag(KEY, b"")
    record = rec(T0, 1, 300)
    body = CODEC.seal_record(record, 64)
    assert body[:8] == CODEC.id_tag(eid(record)) == CODEC.record_tag(record)
    assert CODEC.open_record(body, 64) == record
    with pytest.raises(SealError):  # a tag that is not the record's own
        CODEC.open_record(CODEC.record_tag(rec(T0, 2)) + body[8:], 64)


# -- through the log ---------------------------------------------------------------------------
def open_log(tmp_path, **kw):
    kw.setdefault("secret_key", SECRET)
    nslog = NamespaceLog(tmp_path, "orders", **kw)
    report = nslog.open()
    return nslog, report


def data_bytes(root) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def frames(path):
    """(offset, length) of every frame of a segment file."""
    data = path.read_bytes()
    out, off = [], 16
    while off + 8 <= len(data):
        n = struct.unpack_from("<I", data, off)[0]
        out.append((off, n))
        off += 8 + n
    return out


@pytest.mark.parametrize("block_size", [4096, 8192, 16384])
def test_records_around_the_block_size_round_trip(tmp_path, block_size):
    sizes = [1, block_size - 1, block_size, block_size + 1, 2 * block_size + 1, 200_000]
    records = [b"x"] + [rec(T0, i, size) for i, size in enumerate(sizes[1:], 1)]
    assert [len(r) for r in records] == sizes
    nslog, _ = open_log(tmp_path, block_size=block_size, cache_bytes=0)
    for r in records:
        nslog.append([r])
    nslog.append(records)
    assert read_all(nslog) == read_all(nslog, max_bytes=100) == records * 2
    nslog.close()
    seg = next((tmp_path / "orders").glob("*.seg"))
    assert [n for _, n in frames(seg)] == [record_size(s, block_size) for s in sizes] * 2
    nslog, report = open_log(tmp_path, block_size=4096, cache_bytes=0)  # the header's size wins
    assert report.records == 12 and not report.corrupt_records
    assert read_all(nslog) == records * 2
    assert nslog.find_id(eid(records[-1])) == 5
    assert MARKER not in data_bytes(tmp_path)
    assert nslog.verify() == []


def test_encrypted_log_hides_records_and_reopens(tmp_path):
    nslog, _ = open_log(tmp_path, segment_bytes=16 << 10, block_size=64)
    records = [rec(T0 + i // 40, i, 150 + i % 300) for i in range(1200)]
    for i in range(0, 1200, 50):
        nslog.append(records[i:i + 50])
    assert nslog.segments > 5
    nslog.close()
    raw = data_bytes(tmp_path)
    assert MARKER not in raw and b"orders." not in raw and b'"id"' not in raw
    assert xid(T0, 7) not in raw  # ids are not kept in clear either
    idx = sorted((tmp_path / "orders").glob("*.idx"))
    assert idx and all(p.read_bytes().startswith(b"BUSDIDXS") for p in idx)
    nslog, report = open_log(tmp_path, segment_bytes=16 << 10, cache_bytes=0)
    assert report.records == 1200
    assert read_all(nslog) == records
    for i in random.Random(3).sample(range(1200), 40):
        assert nslog.find_id(eid(records[i])) == i
    assert nslog.find_id(b"e_" + xid(T0 + 5, 99999)) is None
    assert nslog.first_id() == eid(records[0])
    nslog.close()
    # a fresh process (no loaded index): the sealed .idx files are used, not rebuilt
    nslog, _ = open_log(tmp_path, segment_bytes=16 << 10, cache_bytes=0)
    before = {p: p.stat().st_mtime_ns for p in idx}
    assert nslog.find_id(eid(records[3])) == 3
    assert {p: p.stat().st_mtime_ns for p in idx} == before


def test_the_three_key_errors_are_distinct(tmp_path):
    nslog, _ = open_log(tmp_path)
    nslog.append([rec(T0, 0)])
    nslog.close()
    with pytest.raises(MissingKeyError, match="is encrypted and no secret key was given"):
        open_log(tmp_path, secret_key=None)
    with pytest.raises(WrongKeyError, match="wrong secret key"):
        open_log(tmp_path, secret_key="not it")
    plain = tmp_path / "plain"
    nslog = NamespaceLog(plain, "orders")
    nslog.open()
    nslog.append([rec(T0, 0)])
    nslog.close()
    with pytest.raises(UnexpectedKeyError, match="is not encrypted but a secret key was given"):
        open_log(plain)
    # the store passes the key through (and an empty new namespace is encrypted from birth)
    store = LocalStore(tmp_path / "s", ["a", "b"], secret_key=SECRET, block_size=128)
    store.open()
    store.append_batch("a", [rec(T0, 1)])
    store.close()
    assert (tmp_path / "s" / "b" / KEYCHECK_NAME).exists()
    with pytest.raises(WrongKeyError, match="namespace a "):
        LocalStore(tmp_path / "s", ["a", "b"], secret_key="x").open()
    with pytest.raises(MissingKeyError, match="namespace b "):
        LocalStore(tmp_path / "s", ["b"]).open()


def test_key_check_survives_a_lost_or_damaged_file(tmp_path):
    nslog, _ = open_log(tmp_path)
    nslog.append([rec(T0, i) for i in range(3)])
    nslog.close()
    kc = tmp_path / "orders" / KEYCHECK_NAME
    good = kc.read_bytes()
    kc.unlink()  # lost: the first record decides
    with pytest.raises(WrongKeyError):
        open_log(tmp_path, secret_key="not it")
    assert not kc.exists()
    nslog, _ = open_log(tmp_path)
    nslog.close()
    assert kc.exists()
    kc.write_bytes(good[:20] + bytes([good[20] ^ 1]) + good[21:])  # damaged (crc fails)
    with pytest.raises(WrongKeyError):
        open_log(tmp_path, secret_key="not it")
    nslog, _ = open_log(tmp_path)
    assert len(read_all(nslog)) == 3


def test_block_size_change_applies_to_new_segments(tmp_path):
    nslog, _ = open_log(tmp_path, segment_bytes=8 << 10, block_size=64)
    first = [rec(T0, i, 300) for i in range(40)]
    nslog.append(first)
    nslog.close()
    nslog, _ = open_log(tmp_path, segment_bytes=8 << 10, block_size=4096, cache_bytes=0)
    second = [rec(T0 + 1, i, 300) for i in range(40, 200)]
    for i in range(0, 160, 20):
        nslog.append(second[i:i + 20])
    heads = [struct.unpack("<8sII", p.read_bytes()[:16])
             for p in sorted((tmp_path / "orders").glob("*.seg"))]
    assert heads[0][1:] == (3, 64) and heads[-1][1:] == (3, 4096)  # encrypted, ends marked
    assert read_all(nslog) == first + second
    assert nslog.find_id(eid(first[5])) == 5 and nslog.find_id(eid(second[-1])) == 199


# -- damage and tampering -----------------------------------------------------------------------
def tamper(path, offset, fix_crc, block="last"):
    """Flip one ciphertext byte of the frame at offset, in its first or last block (and
    recompute the frame's crc if asked, as a deliberate tamperer would, write-end mark kept)."""
    data = bytearray(path.read_bytes())
    n, crc = struct.unpack_from("<II", data, offset)
    mark = crc ^ zlib.crc32(data[offset + 8:offset + 8 + n])  # 0, or all ones at a write end
    data[offset + 8 + (8 + 40 + 5 if block == "first" else n - 3)] ^= 0x20
    if fix_crc:
        struct.pack_into("<I", data, offset + 4,
                         zlib.crc32(data[offset + 8:offset + 8 + n]) ^ mark)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fix_crc", [False, True], ids=["crc-catches", "mac-catches"])
def test_flipped_ciphertext_byte_is_reported_not_served(tmp_path, fix_crc):
    nslog, _ = open_log(tmp_path, block_size=64, segment_bytes=6 << 10)
    records = [rec(T0, i, 200) for i in range(60)]
    for i in range(0, 60, 10):
        nslog.append(records[i:i + 10])
    nslog.close()
    segs = sorted((tmp_path / "orders").glob("*.seg"))
    assert len(segs) >= 3
    # a closed segment: the last block of one record; the open segment: the first block of
    # one (opened by recovery's indexing) and the last block of another (only by reads)
    closed, last = int(segs[0].stem), int(segs[-1].stem)
    tamper(segs[0], frames(segs[0])[4][0], fix_crc)
    tamper(segs[-1], frames(segs[-1])[2][0], fix_crc, "first")
    tamper(segs[-1], frames(segs[-1])[5][0], fix_crc)
    nslog, report = open_log(tmp_path, block_size=64, segment_bytes=6 << 10, cache_bytes=0)
    assert report.corrupt_records == [last + 2] + ([] if fix_crc else [last + 5])
    assert report.truncated_bytes == 0 and nslog.next_index == 60
    for bad in (closed + 4, last + 2, last + 5):
        with pytest.raises(CorruptRecordError) as exc:
            nslog.read(bad)
        assert exc.value.index == bad
        assert nslog.read(bad - 2) == records[bad - 2:bad]  # stops before it
        assert nslog.read(bad + 1, 1 << 20, 1) == [records[bad + 1]]
    problems = nslog.verify()
    assert len(problems) == 3, problems
    assert sum("does not open" in p for p in problems) == (2 if fix_crc else 0)
    nslog.close()


def test_damaged_length_field_resyncs_on_the_next_sealed_frame(tmp_path):
    nslog, _ = open_log(tmp_path, block_size=128)
    records = [rec(T0, i, 100 + 37 * i) for i in range(30)]
    nslog.append(records)
    nslog.close()
    seg = next((tmp_path / "orders").glob("*.seg"))
    data = bytearray(seg.read_bytes())
    off = frames(seg)[10][0]
    struct.pack_into("<I", data, off, 0x7FFFFFF0)  # impossible length mid-file
    seg.write_bytes(bytes(data))
    nslog, report = open_log(tmp_path, block_size=128, cache_bytes=0)
    assert report.corrupt_records == [10] and report.truncated_bytes == 0
    assert nslog.read(0, 1 << 20) == records[:10]
    with pytest.raises(CorruptRecordError):
        nslog.read(10)
    assert read_all_from(nslog, 11) == records[11:]


def read_all_from(nslog, start):
    out, i = [], start
    while i < nslog.next_index:
        got = nslog.read(i)
        out += got
        i += len(got)
    return out


def test_torn_tail_of_an_encrypted_log_is_truncated(tmp_path):
    nslog, _ = open_log(tmp_path)
    records = [rec(T0, i, 5000) for i in range(4)]
    nslog.append(records[:3])
    nslog.append(records[3:])
    nslog.close()
    seg = next((tmp_path / "orders").glob("*.seg"))
    last = frames(seg)[-1][0]
    size = seg.stat().st_size
    with open(seg, "r+b") as fh:
        fh.truncate(size - 4100)  # inside the last record's second block
    nslog, report = open_log(tmp_path, cache_bytes=0)
    assert report.truncated_bytes == size - 4100 - last and nslog.next_index == 3
    assert read_all(nslog) == records[:3]
    nslog.append([records[3]])
    assert nslog.read(3) == [records[3]]


def test_keycheck_file_is_not_reported_as_segment_data(tmp_path):
    nslog, _ = open_log(tmp_path)
    nslog.append([rec(T0, 0)])
    nslog.close()
    names = sorted(p.name for p in (tmp_path / "orders").iterdir())
    assert names == ["00000000000000000000.seg", KEYCHECK_NAME]
    assert os.path.getsize(tmp_path / "orders" / KEYCHECK_NAME) < 200
