"""Subject filters over 100,000 records (busd._core): one pattern, and three patterns of one
namespace (several subject= on one subscription); median of 7 runs each.

Usage:
  pattern_match.py [<label> [several]]
  pattern_match.py -h | --help

Options:
  -h, --help  Show this help.

<label> names the build in the output (default: this build); `several` adds the three
patterns. Run it pinned, `taskset -c 1 .venv/bin/python perf/pattern_match.py LABEL several`.
For a baseline, run it again with PYTHONPATH pointing at another build of busd (e.g.
main's tree, built in place): the one-pattern figures must not move.
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from opts import parse  # noqa: E402

from busd._core import Pattern, first_matching, sse_frame_matching  # noqa: E402

RECORDS = [b'{"id":"e_%020d","subject":"bench.x.%d","payload":1}' % (i, i % 10)
           for i in range(100_000)]


def median_ms(step) -> float:
    times = []
    for _ in range(7):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def main() -> None:
    args = parse(__doc__)
    label = args.label or "this build"
    literal, wildcard = Pattern(b"bench.x.none"), Pattern(b"bench.*.3")
    first = median_ms(lambda: first_matching(RECORDS, literal))
    framed = median_ms(lambda: sse_frame_matching(RECORDS, wildcard))
    print(f"{label} first_matching literal miss {first:.2f} ms"
          f" | sse_frame_matching wildcard {framed:.2f} ms")
    if args.several:
        several = Pattern(b"bench.*.3", b"bench.x.7", b"bench.y.>")
        print(f"{label} 3 patterns: sse_frame_matching "
              f"{median_ms(lambda: sse_frame_matching(RECORDS, several)):.2f} ms")


if __name__ == "__main__":
    main()
