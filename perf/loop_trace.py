"""Runs `bus server …` with two probes and says, at exit, what stalled its event loop.

For finding what the latency tail is made of (perf/RESULTS.md, "Latency tail"): start
it as bench.py's server under test, e.g.

  .venv/bin/python perf/bench.py --only latency \\
      --busd-cmd "{python} perf/loop_trace.py server --addr {addr} --path {path} \\
                  --namespaces bench --fsync interval"

- the collector: every collection's generation and pause (gc.callbacks);
- the loop: a timer every 1 ms notes how late it ran, and how much of that lateness was
  this thread's own CPU time (our callbacks) rather than time the kernel gave to someone
  else (a busy machine).

At exit one line per stall over --min-ms (env LOOP_TRACE_MIN_MS, default 0.5) goes to
stderr, then counts per cause. Nothing here is part of busd: it only watches it.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import os
import sys
import time
from collections import Counter, deque

import busd.server.app as app
from busd.cli.main import main

MIN_NS = int(float(os.environ.get("LOOP_TRACE_MIN_MS", "0.5")) * 1e6)
PROBE_S = 0.001

gc_pauses: list[tuple[int, int, int, int]] = []  # (start ns, pause ns, cpu ns, generation)
lags: list[tuple[int, int, int]] = []  # (due ns, late ns, own cpu ns)
_gc_start = [0, 0]
heap: list[tuple[str, int]] = []  # the commonest tracked types at one full collection


def _on_gc(phase: str, info: dict) -> None:
    now, cpu = time.monotonic_ns(), time.thread_time_ns()
    if phase == "start":
        _gc_start[:] = now, cpu
    else:
        gc_pauses.append((_gc_start[0], now - _gc_start[0], cpu - _gc_start[1],
                          info["generation"]))
        if info["generation"] == 2 and len(gc_pauses) > 50 and not heap:
            objs = gc.get_objects()
            heap.extend(Counter(type(o).__name__ for o in objs).most_common(8))
            sized = [(len(o), type(o).__name__, repr(o)[:80]) for o in objs
                     if type(o) in (list, dict, set, deque, bytearray)]
            heap.extend(sorted(sized, reverse=True)[:6])


async def _probe() -> None:
    while True:
        due, cpu = time.monotonic_ns() + int(PROBE_S * 1e9), time.thread_time_ns()
        await asyncio.sleep(PROBE_S)
        late = time.monotonic_ns() - due
        if late > MIN_NS:
            lags.append((due, late, time.thread_time_ns() - cpu))


def _report() -> None:
    out = sys.stderr
    print(f"loop_trace: tracked objects per generation at exit "
          f"{[len(gc.get_objects(g)) for g in (0, 1, 2)]}, frozen {gc.get_freeze_count()}, "
          f"thresholds {gc.get_threshold()}; at a full collection: {heap}", file=out)
    slow_gc = [p for p in gc_pauses if p[2] > MIN_NS]
    per_gen = {g: [p[2] for p in gc_pauses if p[3] == g] for g in (0, 1, 2)}
    print(f"loop_trace: {len(gc_pauses)} collections; per generation count/max cpu ms: "
          + ", ".join(f"gen{g} {len(v)}/{max(v, default=0) / 1e6:.2f}"
                      for g, v in per_gen.items()), file=out)
    for start, pause, cpu, gen in slow_gc:
        print(f"loop_trace: gc gen{gen} at {start / 1e9:.3f}s paused {pause / 1e6:.2f} ms "
              f"(cpu {cpu / 1e6:.2f} ms)", file=out)
    own = [x for x in lags if x[2] >= x[1] // 2]
    print(f"loop_trace: {len(lags)} loop stalls > {MIN_NS / 1e6:g} ms, {len(own)} mostly "
          f"this thread's own CPU, {len(lags) - len(own)} mostly waiting for a CPU", file=out)
    for due, late, cpu in lags:
        gcs = sum(p[2] for p in gc_pauses if due - late <= p[0] <= due + late)
        print(f"loop_trace: stall at {due / 1e9:.3f}s late {late / 1e6:.2f} ms, own cpu "
              f"{cpu / 1e6:.2f} ms, gc cpu in it {gcs / 1e6:.2f} ms", file=out)


_serve = app.serve


async def _traced_serve(config) -> None:
    task = asyncio.get_running_loop().create_task(_probe())
    try:
        await _serve(config)
    finally:
        task.cancel()


if __name__ == "__main__":
    gc.callbacks.append(_on_gc)
    atexit.register(_report)
    app.serve = _traced_serve
    sys.exit(main())
