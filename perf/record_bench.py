"""Cost of busd._core's record work on one batch: scan + stamp, SSE framing, matching.

Usage:
  record_bench.py [options]

Options:
  -h, --help        Show this help.
  --records N       Events in the batch [default: 100].
  --repeat N        timeit repeats; the minimum is reported (robust to a busy machine)
                    [default: 15].
  --free-form       Give the events free-form ids (`order-<n>`) instead of busd's own.

Prints µs per batch. Run it under two installs (e.g. main's .venv/bin/python and this
tree's, `taskset -c 1`) to compare them; it imports whichever busd that python has.
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from opts import parse  # noqa: E402


def main() -> None:
    args = parse(__doc__, records=int, repeat=int)
    from busd._core import Pattern, scan_body, sse_frame, sse_frame_matching, stamp_events

    ids = [b',"id":"order-%d"' % i if args.free_form else b"" for i in range(args.records)]
    body = b"[" + b",".join(b'{"subject":"bench.x.%d","payload":{"n":%d}%s}' % (i % 7, i, ids[i])
                            for i in range(args.records)) + b"]"
    records = stamp_events(scan_body(body)[1], True)[3]
    pattern = Pattern(b"bench.x.3")

    def best(work, number: int) -> float:
        return min(timeit.repeat(work, number=number, repeat=args.repeat)) / number * 1e6

    print(f"{args.records} records: scan+stamp "
          f"{best(lambda: stamp_events(scan_body(body)[1], True), 300):.2f} µs, sse_frame "
          f"{best(lambda: sse_frame(records), 2000):.2f} µs, sse_frame_matching "
          f"{best(lambda: sse_frame_matching(records, pattern), 2000):.2f} µs")


if __name__ == "__main__":
    main()
