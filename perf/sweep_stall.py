"""How long the once-a-second housekeeping holds the event loop, with many streams.

Runs busd's own pass (busd.server.app.Server._housekeep through busd.server.sweep.Sweep)
over N stand-in stream connections, all due a ping (the worst tick: every stream writes),
on a uvloop loop, once with the whole pass in one callback (as before the sweep was
sliced) and once in slices of busd's SLICE, and prints the longest single callback and
the whole pass's time. No sockets: a ping write is a method call that keeps the bytes.

Usage:
  sweep_stall.py [options]

Options:
  -h, --help       Show this help.
  --streams N      Stream connections [default: 100000].
  --rounds R       Passes per variant, the median is printed [default: 5].
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opts import parse  # noqa: E402

from busd.server import sweep  # noqa: E402
from busd.server.app import Server  # noqa: E402


class StreamConn:
    """What the pass reads and calls on a streaming connection."""

    __slots__ = ("stream", "last_write", "write_paused", "written")

    def __init__(self) -> None:
        self.stream, self.last_write, self.write_paused, self.written = object(), 0.0, False, 0

    def write(self, data: bytes) -> None:
        self.written += len(data)


async def one_pass(conns: set, size: int) -> tuple[float, float]:
    """(longest callback, whole pass) in seconds."""
    loop = asyncio.get_running_loop()
    server = SimpleNamespace(connections=conns, config=SimpleNamespace(ping_interval=1.0))
    longest = 0.0

    def visit(conn, now):
        Server._housekeep(server, conn, now)

    s = sweep.Sweep(loop, visit, size)
    step = s._slice

    def timed_slice():
        nonlocal longest
        t = time.perf_counter()
        step()
        longest = max(longest, time.perf_counter() - t)

    s._slice = timed_slice
    t0 = time.perf_counter()
    s.start(conns)
    while s.running:
        await asyncio.sleep(0)
    return longest, time.perf_counter() - t0


async def main() -> None:
    args = parse(__doc__, streams=int, rounds=int)
    conns = {StreamConn() for _ in range(args.streams)}
    print(f"{args.streams:,} streams, every one due a ping, {args.rounds} passes each")
    for label, size in (("one callback (before)", args.streams),
                        (f"slices of {sweep.SLICE}", sweep.SLICE)):
        runs = [await one_pass(conns, size) for _ in range(args.rounds)]
        print(f"  {label:<22} longest callback {statistics.median(r[0] for r in runs) * 1e3:8.2f}"
              f" ms   whole pass {statistics.median(r[1] for r in runs) * 1e3:8.1f} ms")


if __name__ == "__main__":
    uvloop.run(main())
