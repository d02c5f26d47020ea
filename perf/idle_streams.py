"""Many idle SSE streams on one busd: RSS per stream, and what they do to live latency.

Starts busd (pinned to --server-cpus), measures perf/bench.py's latency section (one live
subscriber, one publisher at --rate events/s) with no idle streams, then opens --streams
idle SSE subscriptions (each on its own subject, reading nothing after the response head)
from source addresses spread over 127.0.0.0/8 (one address per --per-address streams,
which keeps each address inside the ephemeral port range), reads the server's RSS, and
measures the latency again with all of them held. The idle streams subscribe in a
namespace of their own (`idle.s<i>`), so what they cost the live subscriber is the
server holding them (memory, the housekeeping pass, pings), not the fan-out of its
namespace. RLIMIT_NOFILE is raised for this
process and the server (run it as root for more than the hard limit). Not a test: a
perf scenario whose counts and timeouts are bounded, loopback only.

Usage:
  idle_streams.py [options]

Options:
  -h, --help              Show this help.
  --streams N             Idle SSE streams to hold [default: 100000].
  --per-address N         Streams per source address [default: 20000].
  --rate N                Latency: events/s [default: 5000].
  --seconds S             Latency: seconds per run [default: 4].
  --repeat N              Latency runs with and without the streams [default: 2].
  --ping-interval D       The server's --ping-interval [default: 2s].
  --tree DIR              The busd source tree to run, e.g. an older commit's, built
                          (default: this one).
  --server-cpus LIST      CPUs of busd [default: 0].
  --client-cpus LIST      CPUs of this process [default: 1].
"""

from __future__ import annotations

import asyncio
import os
import resource
import selectors
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402
import harness  # noqa: E402
from opts import parse  # noqa: E402

BATCH = 2000  # connections opened before their answers are awaited


def raise_nofile(n: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, n)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, PermissionError):
        want = hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return want


def source_address(i: int, per_address: int) -> str:
    k = i // per_address + 2  # 127.0.0.1 is left to the live subscriber and publisher
    return f"127.{(k >> 16) & 255}.{(k >> 8) & 255}.{k & 255}"


def open_idle(port: int, n: int, per_address: int) -> list[socket.socket]:
    """n SSE subscriptions whose response head has arrived, BATCH at a time."""
    socks: list[socket.socket] = []
    sel = selectors.DefaultSelector()
    t0 = time.monotonic()
    for first in range(0, n, BATCH):
        pending = {}
        for i in range(first, min(n, first + BATCH)):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.bind((source_address(i, per_address), 0))
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            req = bench.sse_request("newest", f"idle.s{i}")
            sel.register(s, selectors.EVENT_WRITE, req)
            pending[s.fileno()] = s
            socks.append(s)
        deadline = time.monotonic() + 30
        while pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} streams unanswered after 30s "
                                   f"({len(socks) - len(pending):,} open)")
            for key, mask in sel.select(1.0):
                s = key.fileobj
                if mask & selectors.EVENT_WRITE:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise RuntimeError(f"connect failed: {os.strerror(err)}")
                    s.send(key.data)
                    sel.modify(s, selectors.EVENT_READ)
                else:
                    head = s.recv(65536)
                    if not head.startswith(b"HTTP/1.1 200"):
                        raise RuntimeError(f"stream refused: {head[:200]!r}")
                    sel.unregister(s)
                    del pending[s.fileno()]
        if first % 20000 == 0:
            bench.log(f"  {len(socks):,} streams open ({time.monotonic() - t0:.1f}s)")
    sel.close()
    return socks


async def latency(args, srv, label: str) -> tuple[float, float, float]:
    rows = [bench.Row("latency", f"{q} {label}", "µs") for q in ("p50", "p99", "p99.9")]
    await bench.section_latency(args, [("busd", srv)], *rows)
    for note in rows[1].notes:
        bench.log(f"    note: {note}")
    return tuple(row.median("busd") for row in rows)


def main() -> None:
    args = parse(__doc__, streams=int, per_address=int, rate=int, seconds=float, repeat=int,
                 server_cpus=harness.cpu_list, client_cpus=harness.cpu_list)
    limit = raise_nofile(args.streams + 1000)
    n = min(args.streams, limit - 1000)
    if n < args.streams:
        bench.log(f"RLIMIT_NOFILE allows {limit:,}: holding {n:,} streams, not {args.streams:,}")
    os.sched_setaffinity(0, args.client_cpus)
    args.latency_rate, args.latency_duration = args.rate, args.seconds
    cmd = ([] if args.tree is None else ["env", "-C", args.tree]) + [
        *harness.BUSD, "--namespaces", "bench,idle", "--fsync", "interval",
        "--max-connections", str(n + 100), "--ping-interval", args.ping_interval]
    with bench.Server("busd", cmd, Path(tempfile.gettempdir()), args.server_cpus) as srv:
        bench.log(f"busd pid {srv.proc.pid}, RSS {srv.rss_kib():,} KiB; loadavg "
                  f"{bench.show_load(bench.loadavg())}")
        before = asyncio.run(latency(args, srv, "without idle streams"))
        rss0 = srv.rss_kib()
        t0 = time.monotonic()
        socks = open_idle(srv.port, n, args.per_address)
        took = time.monotonic() - t0
        time.sleep(2.0)
        rss1 = srv.rss_kib()
        bench.log(f"{n:,} idle streams opened in {took:.1f}s; RSS {rss0:,} -> {rss1:,} KiB = "
                  f"{(rss1 - rss0) * 1024 / n:,.0f} bytes per stream")
        during = asyncio.run(latency(args, srv, f"with {n:,} idle streams"))
        alive = srv.proc.poll() is None
        for s in socks:
            s.close()
    print(f"\nidle streams held: {n:,}  (busd alive: {alive})")
    print(f"RSS per stream: {(rss1 - rss0) * 1024 / n:,.0f} bytes "
          f"({rss0:,} KiB before, {rss1:,} KiB with them)")
    print(f"publish->receive at {args.rate:,}/s, p50 / p99 / p99.9 (µs, median of "
          f"{args.repeat}):")
    print("  without idle streams  " + " ".join(f"{v:8,.0f}" for v in before))
    print("  with them             " + " ".join(f"{v:8,.0f}" for v in during))
    print(f"loadavg at end {bench.show_load(bench.loadavg())}")


if __name__ == "__main__":
    main()
