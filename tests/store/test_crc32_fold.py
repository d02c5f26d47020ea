"""The frames' crc32 folded with PCLMULQDQ (busd/store/local/crc32_fold.h) against zlib's.

Every frame written by `frame_records` carries the crc of its body, and every read checks
it, so both directions go through the folded code for bodies of 64 bytes and more.
"""

import platform
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from busd.store.local import _framing as F

# around every boundary of the fold: < 64 (zlib only), one 64-byte step, the 16-byte
# steps after it, the < 16-byte rest, several 64-byte steps
EDGE_LENGTHS = [1, 15, 16, 63, 64, 65, 79, 80, 81, 127, 128, 129, 143, 144, 191, 192,
                255, 256, 257, 1023, 4096, 4111, 65536 + 13]


def crcs_written(bodies: list[bytes]) -> list[int]:
    framed, crcs, off = F.frame_records(bodies), [], 0
    for body in bodies:
        length, crc = struct.unpack_from("<II", framed, off)
        assert length == len(body)
        crcs.append(crc)
        off += 8 + length
    crcs[-1] ^= 0xFFFFFFFF  # the last frame ends the write: its crc is stored complemented
    return crcs


def test_folds_where_the_cpu_can():
    """On x86-64 with PCLMULQDQ and SSE4.1 the fast path is the one in use."""
    flags = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    expected = platform.machine() in ("x86_64", "AMD64") and {"pclmulqdq", "sse4_1"} <= flags
    assert F.crc32_folds() == expected


@pytest.mark.parametrize("length", EDGE_LENGTHS)
def test_edge_lengths_match_zlib(length):
    body = bytes((i * 131 + 7) & 0xFF for i in range(length))
    for fill in (body, b"\xff" * length, b"\x00" * length):
        # behind a 1..3-byte record too, so the body starts at every alignment
        for lead in ([], [b"x"], [b"xy"], [b"xyz"]):
            assert crcs_written(lead + [fill])[-1] == zlib.crc32(fill)


@pytest.mark.parametrize("steps", [64, 80, 128, 144])
def test_every_last_partial_block_matches_zlib(steps):
    """After the 64- and 16-byte steps, each of the 1..15 bytes that can be left over."""
    for rest in range(1, 16):
        for fill in (bytes((i * 131 + 7) & 0xFF for i in range(steps + rest)),
                     b"\xff" * (steps + rest)):
            assert crcs_written([fill])[-1] == zlib.crc32(fill), (steps, rest)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=8))
def test_random_bodies_match_zlib(bodies):
    assert crcs_written(bodies) == [zlib.crc32(b) for b in bodies]


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=64, max_size=2000), st.data())
def test_a_flipped_bit_is_corruption(body, data):
    """The read side checks with the same fold: one flipped bit anywhere is caught."""
    framed = bytearray(F.frame_records([body]))
    bit = data.draw(st.integers(0, len(body) * 8 - 1))
    framed[8 + bit // 8] ^= 1 << (bit % 8)
    assert F.scan_frames(bytes(framed), 0, -1)[3] == F.CORRUPT
