"""Catch-up's read of one chunk, in process (no sockets): where its time goes.

Stores N bench-shaped records (~190 bytes, as perf/bench.py publishes them) in a fresh
log, plain and encrypted, then reads them all from the segment files in CATCH_UP_BYTES
chunks, two ways, alternating rounds:

  records   read(cache=False), then sse_of: a bytes object per record, then the chunk
            copied from them (what main's fetch + the consumer's _write do)
  read_sse  read_sse(cache=False): the chunk written straight from the pread buffer
  nowait    read_sse(cache=False, nowait=True), plain log only: the loop's own read of a
            chunk the page cache holds (preadv RWF_NOWAIT), what one loop step costs

plus parts of a chunk's cost: the pread alone, the frame walk with its crc32s alone, and
scan_frames (frames, crcs, the cipher when encrypted, a bytes object per record). Prints µs per record
(median of rounds, CPU time of this thread) and records per second.

Usage:
  catchup_read.py [options]

Options:
  -h, --help         Show this help.
  --records N        Records stored [default: 300000].
  --rounds R         Rounds per way [default: 5].
  --block-size B     Encryption block size [default: 4096].
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from opts import parse  # noqa: E402

from busd._core import sse_of  # noqa: E402
from busd.bus.consumer import CATCH_UP_BYTES  # noqa: E402
from busd.store.local._framing import scan_frames  # noqa: E402
from busd.store.local.log import HEADER_SIZE, NamespaceLog  # noqa: E402

PAYLOAD = b'{"order":12345,"item":"widget","qty":3,"price":19.99,"note":"' + b"x" * 60 + b'"}'


def record(i: int) -> bytes:
    return (b'{"id":"e_d4m3t1o0000000%06d","subject":"bench.created","created_at":'
            b'"2026-12-03T22:00:00.123456789Z","payload":%s}' % (i % 10**6, PAYLOAD))


def whole(nslog: NamespaceLog, step) -> float:
    """CPU seconds of this thread to read the log from 0 to its head, chunk by chunk."""
    t0, i = time.thread_time(), 0
    while i < nslog.next_index:
        i += step(i)
    return time.thread_time() - t0


def measure(nslog: NamespaceLog, rounds: int) -> dict[str, float]:
    seg = nslog._segments[0]
    fd = os.open(seg.path, os.O_RDONLY)
    size = os.fstat(fd).st_size

    def records_way(i: int) -> int:
        records = nslog.read(i, CATCH_UP_BYTES, cache=False)
        sse_of(records)
        return len(records)

    def sse_way(i: int) -> int:
        return nslog.read_sse(i, CATCH_UP_BYTES, 1 << 16, None, cache=False)[2]

    def nowait_way(i: int) -> int:
        return nslog.read_sse(i, CATCH_UP_BYTES, 1 << 16, None, cache=False, nowait=True)[2]

    def chunks():
        """The log's pread buffers, each starting at a frame (as catch-up reads them)."""
        off = HEADER_SIZE
        while off < size:
            buf = os.pread(fd, CATCH_UP_BYTES, off)
            yield buf
            off += scan_frames(buf, 0, -1, False, False)[1]

    def timed(work) -> float:
        total = 0.0
        for buf in chunks():
            t0 = time.thread_time()
            work(buf)
            total += time.thread_time() - t0
        return total

    parts = {
        "pread": lambda buf: os.pread(fd, CATCH_UP_BYTES, HEADER_SIZE),
        "crc": lambda buf: scan_frames(buf, 0, -1, False, True),
        "scan": lambda buf: scan_frames(buf, 0, -1, codec=nslog.codec,
                                        block_size=seg.block_size),
    }
    ways = {"records": records_way, "read_sse": sse_way}
    if nslog.codec is None:  # the store reads encrypted logs in its workers only
        ways["nowait"] = nowait_way
    runs: dict[str, list[float]] = {**{k: [] for k in ways}, **{k: [] for k in parts}}
    for _ in range(rounds):
        for name, step in ways.items():
            runs[name].append(whole(nslog, step))
        for name, work in parts.items():
            runs[name].append(timed(work))
    os.close(fd)
    return {way: statistics.median(times) / nslog.next_index for way, times in runs.items()}


def main() -> None:
    args = parse(__doc__, records=int, rounds=int, block_size=int)
    print(f"{args.records:,} records of {len(record(0))} bytes, chunks of {CATCH_UP_BYTES >> 10}"
          f" KiB, median of {args.rounds} rounds, CPU µs per record (records/s)")
    print(f"{'log':<10} {'records+sse_of':>22} {'read_sse':>22} {'ratio':>6} "
          f"{'nowait':>8} {'pread':>8} {'crc walk':>9} {'scan_frames':>12}")
    for secret in (None, "catchup-read-secret"):
        with tempfile.TemporaryDirectory() as tmp:
            nslog = NamespaceLog(Path(tmp), "bench", segment_bytes=1 << 30, cache_bytes=0,
                                 secret_key=secret, block_size=args.block_size)
            nslog.open()
            for k in range(0, args.records, 1000):
                nslog.append([record(i) for i in range(k, min(args.records, k + 1000))])
            got = measure(nslog, args.rounds)
            nslog.close()
        old, new = got["records"], got["read_sse"]
        nowait = f"{got['nowait'] * 1e6:>8.3f}" if "nowait" in got else f"{'–':>8}"
        print(f"{'encrypted' if secret else 'plain':<10} {old * 1e6:>8.3f} ({1 / old:>11,.0f})"
              f" {new * 1e6:>8.3f} ({1 / new:>11,.0f}) {old / new:>6.2f} {nowait} "
              f"{got['pread'] * 1e6:>8.3f} {got['crc'] * 1e6:>9.3f} {got['scan'] * 1e6:>12.3f}")


if __name__ == "__main__":
    main()
