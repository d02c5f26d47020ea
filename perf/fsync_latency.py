"""What `--fsync always` costs a publisher: POST→202 latency and throughput, always vs interval.

Starts one busd per mode (fresh --path on the data disk, pinned with taskset), then in
alternating rounds runs C connections that each publish one event at a time (send, wait
for the 202, send the next) for D seconds. Under always the 202 waits for the group's
fsync, which under interval runs once a second off the answer path. Reports per mode the
median over rounds of p50/p99 latency and of requests/s, and the ratios.

Usage:
  fsync_latency.py [options]

Options:
  -h, --help            Show this help.
  --rounds N            Alternating rounds per mode, medians reported [default: 3].
  --duration S          Seconds per round [default: 3].
  --connections C       Publishers in parallel, one request in flight each [default: 1,16].
  --server-cpus LIST    CPUs of the servers (taskset -c) [default: 0].
  --client-cpus LIST    CPUs of this process [default: 1].
  --data-dir DIR        Where the servers' --path dirs go [default: perf/out].
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BUSD, Server, cpu_list  # noqa: E402
from opts import parse  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BODY = b'{"subject":"bench.created","payload":{"order":12345,"total":99.5}}'
REQUEST = (b"POST / HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))


async def publisher(port: int, until: float, samples: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until:
            sent = time.perf_counter()
            writer.write(REQUEST)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            if not head.startswith(b"HTTP/1.1 202"):
                raise RuntimeError(f"answered {head[:200]!r}")
            samples.append(time.perf_counter() - sent)
    finally:
        writer.close()


async def publishers(port: int, connections: int, seconds: float) -> list[float]:
    per_conn: list[list[float]] = [[] for _ in range(connections)]
    until = time.perf_counter() + seconds
    await asyncio.gather(*(publisher(port, until, s) for s in per_conn))
    return sorted(x for s in per_conn for x in s)


def run(port: int, connections: int, seconds: float) -> tuple[float, float, float]:
    """(p50 µs, p99 µs, requests/s) of one round."""
    lat = uvloop.run(publishers(port, connections, seconds))
    return lat[len(lat) // 2] * 1e6, lat[int(len(lat) * 0.99)] * 1e6, len(lat) / seconds


def main() -> None:
    args = parse(__doc__, rounds=int, duration=float)
    os.sched_setaffinity(0, cpu_list(args.client_cpus))
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.data_dir) as tmp:
        servers = {mode: Server([*BUSD, "--namespaces", "bench", "--fsync", mode],
                                args.server_cpus, path=str(Path(tmp) / mode), cwd=REPO).start()
                   for mode in ("always", "interval")}
        try:
            for connections in map(int, args.connections.split(",")):
                results: dict[str, list[tuple[float, float, float]]] = {m: [] for m in servers}
                for _ in range(args.rounds):
                    for mode, server in servers.items():
                        results[mode].append(run(server.port, connections, args.duration))
                medians = {m: [statistics.median(r[k] for r in rs) for k in range(3)]
                           for m, rs in results.items()}
                a, i = medians["always"], medians["interval"]
                print(f"{connections} connection(s), one request in flight each:")
                for mode, (p50, p99, rate) in medians.items():
                    runs = " / ".join(f"{r[0]:,.0f}" for r in results[mode])
                    print(f"  {mode:8} p50 {p50:8,.0f} µs  p99 {p99:8,.0f} µs  "
                          f"{rate:9,.0f} req/s   (p50 per round: {runs})")
                print(f"  always/interval: p50 ×{a[0] / i[0]:.1f}, p99 ×{a[1] / i[1]:.1f}, "
                      f"req/s ×{a[2] / i[2]:.2f}")
        finally:
            for server in servers.values():
                server.stop()


if __name__ == "__main__":
    main()
