"""Per-flush cost of the live fan-out with many distinct subscriptions, no sockets.

K live readers on K distinct literal subjects (`bench.s0` … : one pattern each), plus W
readers on wildcard patterns (`bench.s<i>.>`: a trie walk per subject), get flushes of F
records spread round-robin over the K subjects. Times FanOut.push — matching, framing
and handing each reader its chunk (the reader only keeps a count) — for this tree's
busd/bus/fanout.py and, in the same process, for the one at a git ref (the baseline),
alternating rounds. Prints µs per flush (median of rounds) and deliveries per second.

Usage:
  fanout_match.py [options]

Options:
  -h, --help         Show this help.
  --subjects K       Distinct literal subscriptions [default: 1000].
  --wildcards W      Wildcard subscriptions added to them [default: 0].
  --flush F          Records per flush [default: 100].
  --flushes N        Flushes per round [default: 500].
  --rounds R         Rounds per implementation [default: 7].
  --baseline REF     Git ref whose busd/bus/fanout.py is the baseline [default: main].
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from opts import parse  # noqa: E402

from busd._core import Pattern  # noqa: E402
from busd.bus import fanout as current  # noqa: E402
from busd.server.metrics import Metrics  # noqa: E402

NS = "bench"


class CountingReader:
    """A live reader that counts the bytes it is written: its own sink (the fan-out writes
    to `sink.write`; a baseline from before 2026-12-07 14:30 calls `push` instead)."""

    def __init__(self, pattern: bytes, n: int) -> None:
        self.id = b"c%d" % n
        self.owner = None
        self.namespace = NS
        self.pattern = Pattern(pattern)
        self.cursor = 0
        self.paused = self.done = self.live = False
        self.received = 0
        self.sink = self

    def write(self, chunk: bytes) -> None:
        self.received += len(chunk)

    def push(self, chunk: bytes, next_index: int) -> None:
        self.received += len(chunk)
        self.cursor = next_index

    def push_failed(self, exc: Exception) -> None:
        raise exc

    def wake(self) -> None: ...


def baseline_module(ref: str) -> types.ModuleType:
    """busd/bus/fanout.py as it is at ref, imported under another name."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:busd/bus/fanout.py"],
                            check=True, capture_output=True, text=True).stdout
    module = types.ModuleType(f"fanout_at_{ref}")
    exec(compile(source, f"{ref}:busd/bus/fanout.py", "exec"), module.__dict__)
    return module


def record(subject: bytes, n: int) -> bytes:
    return (b'{"id":"e_%020d","subject":"' % n + subject
            + b'","created_at":"2026-12-03T12:00:00Z","payload":{"order":12345}}')


def setup(module, k: int, w: int):
    fanout = module.FanOut((NS,), Metrics((NS,)))
    patterns = [b"bench.s%d" % i for i in range(k)] + [b"bench.s%d.>" % i for i in range(w)]
    for n, pattern in enumerate(patterns):
        reader = CountingReader(pattern, n)
        fanout.add(reader)
        fanout.join_live(reader)
    return fanout


def run(fanout, flushes: list[list[bytes]]) -> float:
    start = time.perf_counter()
    index = 0
    for records in flushes:
        index += len(records)
        fanout.push(NS, records, index)
    return time.perf_counter() - start


def main() -> None:
    args = parse(__doc__, subjects=int, wildcards=int, flush=int, flushes=int, rounds=int)
    k, f = args.subjects, args.flush
    subjects = [b"bench.s%d" % (i % k) for i in range(args.flushes * f)]
    records = [record(s, n) for n, s in enumerate(subjects)]
    flushes = [records[i:i + f] for i in range(0, len(records), f)]
    impls = {f"baseline ({args.baseline})": baseline_module(args.baseline), "this tree": current}
    times: dict[str, list[float]] = {name: [] for name in impls}
    delivered: dict[str, int] = {}
    for _ in range(args.rounds):
        for name, module in impls.items():
            fanout = setup(module, k, args.wildcards)
            times[name].append(run(fanout, flushes))
            delivered[name] = fanout.metrics.events_out[NS]
    print(f"{k} literal + {args.wildcards} wildcard subscriptions, flushes of {f} records, "
          f"{args.flushes} flushes x {args.rounds} rounds")
    base = None
    for name, samples in times.items():
        med = statistics.median(samples)
        per_flush = med / args.flushes * 1e6
        base = base or per_flush
        print(f"  {name:<20} {per_flush:9.1f} µs/flush  {delivered[name] / med:12,.0f} "
              f"deliveries/s  ×{base / per_flush:.1f}")


if __name__ == "__main__":
    main()
