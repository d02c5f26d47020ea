"""Encryption at rest: what it costs, with encryption off and on in the same run.

Usage:
  crypto_bench.py [options]

Options:
  -h, --help              Show this help.
  -R N, --repeat N        Runs per measurement, alternating plain and encrypted [default: 3].
  --duration D            wrk duration per run [default: 5s].
  --block-size N          Encryption block size of the encrypted server [default: 4096].
  --catchup-events N      catchup: events stored, then read from oldest [default: 500000].
  --only LIST             Comma-separated parts to run [default: publish,batch,catchup,inproc].
  --out FILE              Markdown table (default: perf/out/crypto-latest.md).

Examples:
  /work/venv/bin/python perf/crypto_bench.py                 # ~3 min
  /work/venv/bin/python perf/crypto_bench.py --repeat 5 --catchup-events 300000

Two busd servers run side by side, one plain and one with --secret-key (--block-size
4096 unless --block-size says otherwise), each on its own fresh data directory; every
measurement alternates plain, encrypted, plain, encrypted… so both see the same machine:

  publish   wrk, 32 connections, one Go-SDK-shaped event per POST (req/s = events/s)
  batch     wrk, 8 connections, 100 events per POST (events/s)
  catchup   N events stored, then one SSE consumer from start=oldest (events/s): every
            record but the last 8 MiB (the plaintext recent-records cache) is read from the
            segment files and, encrypted, opened

plus, in this process (no HTTP), the per-record cost of sealing and opening, and what the
choice "ids are not stored in clear" costs: re-opening a namespace (recovery indexes the
open segment by opening each record's first block) and find_id (opens a block's worth of
records). The clients and helpers are perf/bench.py's.

Prints a Markdown table and writes it to perf/out/crypto-latest.md.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench  # noqa: E402  (perf/bench.py)
import harness  # noqa: E402
from opts import parse  # noqa: E402

SECRET = "crypto-bench-secret"


def busd_cmd(encrypted: bool, block_size: int) -> list[str]:
    cmd = [*harness.BUSD, "--namespaces", bench.NS, "--fsync", "interval"]
    if encrypted:
        cmd += ["--secret-key", SECRET, "--block-size", str(block_size)]
    return cmd


def wrk_rows(args, servers, body: bytes, conns: int, mult: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in servers}
    for srv in servers.values():
        bench.check_one_post(srv.port, body)
    for r in range(args.repeat):
        for name, srv in servers.items():
            rps, problems = bench.run_wrk(f"http://127.0.0.1:{srv.port}/", body, conns,
                                          min(2, conns), args.duration)
            out[name].append(rps * mult)
            bench.log(f"  run {r + 1}/{args.repeat} {name:9s} {rps * mult:12,.0f}"
                      + (f"  [{problems}]" if problems else ""))
            time.sleep(0.5)
    return out


async def catchup_rows(args, servers) -> dict[str, list[float]]:
    n = args.catchup_events
    for name, srv in servers.items():
        rate = await bench.bulk_publish(srv.port, n)
        bench.log(f"  {name}: stored {n:,} events at {rate:,.0f} events/s")
    await asyncio.sleep(1.0)
    out: dict[str, list[float]] = {name: [] for name in servers}
    for r in range(args.repeat):
        for name, srv in servers.items():
            t0 = time.perf_counter()
            c = await bench.SSECounter.open(srv.port, "oldest")
            try:
                t1 = await asyncio.wait_for(c.expect(n), max(60.0, n / 5000))
            finally:
                c.close()
            out[name].append(n / (t1 - t0))
            bench.log(f"  run {r + 1}/{args.repeat} {name:9s} {n / (t1 - t0):12,.0f} events/s")
            await asyncio.sleep(0.3)
    return out


def record(i: int, size: int = 200) -> bytes:
    """A stored record as the server writes it (~200 bytes, a real xid)."""
    alphabet = "0123456789abcdefghijklmnopqrstuv"
    v = ((int(time.time()) + i // 1000) << 64 | 0xABCDEF << 40 | i) << 4
    xid = "".join(alphabet[(v >> (5 * (19 - k))) & 31] for k in range(20)).encode()
    head = b'{"id":"e_%s","subject":"bench.created","payload":{"n":%d,"pad":"' % (xid, i)
    return head + b"x" * max(0, size - len(head) - 3) + b'"}}'


def in_process(block_size: int) -> list[tuple[str, str, str, str]]:
    """(what, plain, encrypted, cost) rows measured without HTTP."""
    from busd.store.local._crypto import Codec
    from busd.store.local._framing import frame_records, scan_frames

    from busd.store.local.crypto import derive_key
    from busd.store.local.log import NamespaceLog

    codec = Codec(derive_key(SECRET))
    rows = []
    recs = [record(i) for i in range(1000)]

    def best(fn, number=20):
        times = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(number):
                fn()
            times.append((time.perf_counter() - t) / number)
        return min(times)

    a = best(lambda: frame_records(recs)) / 1000
    b = best(lambda: frame_records(recs, codec, block_size)) / 1000
    rows.append(("frame (+ seal) a 200-byte record", f"{a * 1e6:.2f} µs", f"{b * 1e6:.2f} µs",
                 f"+{(b - a) * 1e6:.2f} µs"))
    plain, sealed = frame_records(recs), frame_records(recs, codec, block_size)
    a = best(lambda: scan_frames(plain, 0, -1)) / 1000
    b = best(lambda: scan_frames(sealed, 0, -1, codec=codec, block_size=block_size)) / 1000
    rows.append(("scan (+ open) a 200-byte record", f"{a * 1e6:.2f} µs", f"{b * 1e6:.2f} µs",
                 f"+{(b - a) * 1e6:.2f} µs"))
    big = [os.urandom(64 << 10)] * 16
    sealed = frame_records(big, codec, block_size)
    b = best(lambda: frame_records(big, codec, block_size), 5) / len(big)
    c = best(lambda: scan_frames(sealed, 0, -1, codec=codec, block_size=block_size), 5) / len(big)
    rows.append(("seal / open throughput, 64 KiB records", "", f"{(64 << 10) / b / 2**20:,.0f} / "
                 f"{(64 << 10) / c / 2**20:,.0f} MiB/s", ""))

    # recovery (index the open segment: opens every record's first block) and find_id
    root = Path(tempfile.mkdtemp(prefix="busd-crypto-bench-"))
    try:
        n = 300_000
        many = [record(i) for i in range(n)]
        times = {}
        for name, key in (("plain", None), ("encrypted", SECRET)):
            nslog = NamespaceLog(root / name, "bench", secret_key=key, block_size=block_size,
                                 segment_bytes=256 << 20)
            nslog.open()
            for i in range(0, n, 1000):
                nslog.append(many[i:i + 1000])
            size = nslog.bytes
            nslog.close()
            t = time.perf_counter()
            nslog = NamespaceLog(root / name, "bench", secret_key=key, block_size=block_size,
                                 segment_bytes=256 << 20, cache_bytes=0)
            nslog.open()
            t_open = time.perf_counter() - t
            ids = [many[i][7:29] for i in range(0, n, n // 500)]
            t = time.perf_counter()
            for eid in ids:
                assert nslog.find_id(eid) is not None
            t_find = (time.perf_counter() - t) / len(ids)
            nslog.close()
            times[name] = (t_open, t_find, size)
        (po, pf, ps), (eo, ef, es) = times["plain"], times["encrypted"]
        what = f"re-open a {n:,}-record open segment ({ps / 2**20:.0f} / {es / 2**20:.0f} MiB)"
        rows.append((what, f"{po * 1e3:.0f} ms", f"{eo * 1e3:.0f} ms",
                     f"+{(eo - po) * 1e3:.0f} ms"))
        rows.append(("find_id (start=<id>), uncached", f"{pf * 1e6:.0f} µs", f"{ef * 1e6:.0f} µs",
                     f"+{(ef - pf) * 1e6:.0f} µs"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def main(argv=None) -> int:
    args = parse(__doc__, argv, repeat=int, block_size=int, catchup_events=int, out=Path)
    args.out = args.out or bench.OUT / "crypto-latest.md"
    only = set(args.only.split(","))
    uvloop.install()
    lines = [f"# busd encryption bench — {time.strftime('%Y-%m-%d %H:%M:%S')}", ""]
    lines += [f"- {line}" for line in bench.machine()]
    lines += [f"- block size {args.block_size}, repeats {args.repeat} (medians; plain and "
              "encrypted alternate run by run)", ""]
    print("\n".join(lines), flush=True)
    table = ["| benchmark | plain (median) | encrypted (median) | encrypted/plain | "
             "runs plain \\| encrypted |", "|---|---|---|---|---|"]

    def add(label: str, got: dict[str, list[float]]) -> None:
        p, e = statistics.median(got["plain"]), statistics.median(got["encrypted"])
        runs = (" ".join(f"{x:,.0f}" for x in got["plain"]) + " \\| "
                + " ".join(f"{x:,.0f}" for x in got["encrypted"]))
        table.append(f"| {label} | {p:,.0f} | {e:,.0f} | {e / p:.2f} | {runs} |")

    def servers():
        return {"plain": bench.Server("busd-plain", busd_cmd(False, args.block_size),
                                      Path(tempfile.gettempdir())),
                "encrypted": bench.Server("busd-encrypted", busd_cmd(True, args.block_size),
                                          Path(tempfile.gettempdir()))}

    for section, label, body, conns, mult in (
            ("publish", "publish, 1 event/POST, 32 conns (events/s)", bench.EVENT, 32, 1),
            ("batch", "batch publish, 100 events/POST, 8 conns (events/s)",
             bench.batch_body(100), 8, 100)):
        if section in only:
            bench.log(f"[{section}] loadavg {os.getloadavg()[0]:.2f}")
            srv = servers()
            try:
                for s in srv.values():
                    s.start()
                add(label, wrk_rows(args, srv, body, conns, mult))
            finally:
                for s in srv.values():
                    s.stop()
    if "catchup" in only:
        bench.log(f"[catchup] loadavg {os.getloadavg()[0]:.2f}")
        srv = servers()
        try:
            for s in srv.values():
                s.start()
            add(f"catch-up SSE from oldest, N={args.catchup_events:,} (events/s)",
                asyncio.run(catchup_rows(args, srv)))
        finally:
            for s in srv.values():
                s.stop()
    out = lines + table
    if "inproc" in only:
        bench.log("[in-process]")
        out += ["", "| in process | plain | encrypted | cost |", "|---|---|---|---|"]
        out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in in_process(args.block_size)]
    out.append(f"\nloadavg at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    text = "\n".join(out) + "\n"
    print("\n".join(out[len(lines):]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
