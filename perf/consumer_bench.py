"""Consumer costs: stalled manual-ack readers (memory), and a cold catch-up (publish latency).

Usage:
  consumer_bench.py stalled [options]
  consumer_bench.py coldcatchup [options]

Options:
  -h, --help            Show this help.
  -R N, --repeat N      Runs per variant; medians are reported [default: 3].
  --code LIST           Comma-separated source trees whose busd is measured side by side
                        (PYTHONPATH), e.g. this tree and main's [default: .].
  --readers N           stalled: manual-ack readers that stop reading [default: 10].
  --draining            stalled: the readers read everything, but never ack.
  --events N            stalled: 100 KB events stored before they subscribe [default: 300].
  --gib G               coldcatchup: GiB stored, then caught up from oldest [default: 1].
  --rate N              coldcatchup: single-event publishes per second [default: 200].
  --seconds S           coldcatchup: how long publishes are timed [default: 8].
  --server-cpus LIST    CPUs of the server (`taskset -c`) [default: 0].
  --client-cpus LIST    CPUs of this process (publishers, readers) [default: 1].
  --data-dir DIR        Where the data directories go (default: system temp).

stalled: per variant, a fresh server stores --events events of 100 KB; then either nobody
(the control) or --readers manual-ack consumers (max_inflight=1000, redelivery=100ms,
unlimited redeliveries) subscribe from oldest on sockets that never read. RSS growth over
3 s, as the server's VmRSS, control and readers in the same run; the figure is the median
of (readers - control). With --draining the readers take every byte but never ack, so
all the events stay in flight (up to the in-flight bounds).

coldcatchup: --gib of 10 KB events are stored once; then per run the server restarts on
them, the page cache is dropped (`echo 3 > /proc/sys/vm/drop_caches`, root), and one
publisher sends --rate single events/s for --seconds while one consumer catches up from
oldest (or, the baseline, with no consumer). Publish latency p50/p99, and how far the
consumer got.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BUSD, Server, cpu_list, in_tree  # noqa: E402
from opts import parse  # noqa: E402

NS = "bench"
PAD_100K = "x" * 100_000


def request(sock: socket.socket, method: str, target: str, body: bytes = b"") -> bytes:
    """One keep-alive request; the response head (the bodies here are empty)."""
    sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                 f"\r\n".encode() + body)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        head += chunk
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    rest = head.split(b"\r\n\r\n", 1)[1]
    while len(rest) < length:
        rest += sock.recv(65536)
    if not head.startswith(b"HTTP/1.1 2"):
        raise RuntimeError(head[:200])
    return head


def start(code: str, path: Path, cpus: str) -> Server:
    """Tree `code`'s busd on `path`, with none of our BUS_ settings; 30 s to stop, as it
    fsyncs at close what it was just filled with (a GiB, coldcatchup)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return Server([*BUSD, "--namespaces", NS], cpus, path=str(path), grace=30,
                  **in_tree(code, env)).start(timeout=60)


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def drain(sock: socket.socket) -> None:
    try:
        while sock.recv(1 << 20):
            pass
    except OSError:
        pass


def stalled_run(code: str, readers: int, events: int, data: Path, cpus: str,
                draining: bool) -> float:
    path = Path(tempfile.mkdtemp(dir=data))
    server = start(code, path, cpus)
    try:
        with connect(server) as sock:
            for n in range(events):
                body = json.dumps({"subject": f"{NS}.big", "payload": {"n": n, "pad": PAD_100K}})
                request(sock, "POST", "/", body.encode())
        before = server.rss_kib() / 1024
        held = []
        for _ in range(readers):
            sock = socket.socket()
            if not draining:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(f"GET /?subject={NS}.%3E&start=oldest&ack=manual&max_inflight=1000"
                         f"&redelivery=100ms&redelivery_count=0 HTTP/1.1\r\nHost: x\r\n\r\n"
                         .encode())
            held.append(sock)
            if draining:
                threading.Thread(target=drain, args=(sock,), daemon=True).start()
        time.sleep(3)
        grown = server.rss_kib() / 1024 - before
        for sock in held:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        return grown
    finally:
        server.stop()
        shutil.rmtree(path, ignore_errors=True)


def stalled(args: SimpleNamespace, codes: list[str], data: Path) -> None:
    readers, events, cpus, draining = args.readers, args.events, args.server_cpus, args.draining
    kind = "draining, never-acking" if draining else "stalled"
    print(f"| code | control MiB | {readers} {kind} readers MiB | extra MiB |")
    print("|---|---|---|---|")
    for code in codes:
        control, stalled_ = [], []
        for _ in range(args.repeat):
            control.append(stalled_run(code, 0, events, data, cpus, draining))
            stalled_.append(stalled_run(code, readers, events, data, cpus, draining))
        extra = statistics.median(s - c for s, c in zip(stalled_, control))
        print(f"| {code} | {statistics.median(control):.1f} | {statistics.median(stalled_):.1f} "
              f"| {extra:.1f} |", flush=True)


def fill(code: str, path: Path, gib: float, cpus: str) -> None:
    server = start(code, path, cpus)
    try:
        with connect(server) as sock:
            pad, total, n = "y" * 10_000, 0, 0
            while total < gib * (1 << 30):
                body = json.dumps([{"subject": f"{NS}.cold", "payload": {"n": n + k, "pad": pad}}
                                   for k in range(100)]).encode()
                request(sock, "POST", "/", body)
                total, n = total + len(body), n + 100
    finally:
        server.stop()


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as fh:
        fh.write("3\n")


def cold_run(code: str, path: Path, cpus: str, rate: int, seconds: float,
             catch_up: bool) -> tuple[float, float, int]:
    """(p50 ms, p99 ms, bytes the consumer read) of publishes during a cold catch-up."""
    drop_caches()
    server = start(code, path, cpus)
    stop, got = threading.Event(), [0]

    def consume() -> None:
        with connect(server) as sock:
            sock.sendall(f"GET /?subject={NS}.%3E&start=oldest HTTP/1.1\r\nHost: x\r\n\r\n"
                         .encode())
            sock.settimeout(0.5)
            while not stop.is_set():
                try:
                    chunk = sock.recv(1 << 20)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                got[0] += len(chunk)

    reader = threading.Thread(target=consume)
    try:
        if catch_up:
            reader.start()
            time.sleep(0.2)
        latencies = []
        with connect(server) as sock:
            body = json.dumps({"subject": f"{NS}.live", "payload": 1}).encode()
            started = time.monotonic()
            for k in range(int(rate * seconds)):
                wait = started + k / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                t0 = time.perf_counter()
                request(sock, "POST", "/", body)
                latencies.append((time.perf_counter() - t0) * 1000)
        latencies.sort()
        return (latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)], got[0])
    finally:
        stop.set()
        if catch_up:
            reader.join()
        server.stop()


def coldcatchup(args: SimpleNamespace, codes: list[str], data: Path) -> None:
    cpus, rate, seconds = args.server_cpus, args.rate, args.seconds
    path = Path(tempfile.mkdtemp(dir=data))
    try:
        fill(codes[0], path, args.gib, cpus)
        print("| code | consumer | publish p50 ms | publish p99 ms | MiB caught up |")
        print("|---|---|---|---|---|")
        for code in codes:
            for catch_up in (False, True):
                runs = [cold_run(code, path, cpus, rate, seconds, catch_up)
                        for _ in range(args.repeat)]
                p50 = statistics.median(r[0] for r in runs)
                p99 = statistics.median(r[1] for r in runs)
                read = statistics.median(r[2] for r in runs) / (1 << 20)
                print(f"| {code} | {'cold catch-up' if catch_up else 'none'} | {p50:.2f} | "
                      f"{p99:.2f} | {read:.0f} |", flush=True)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    args = parse(__doc__, repeat=int, readers=int, events=int, gib=float, rate=int,
                 seconds=float)
    os.sched_setaffinity(0, cpu_list(args.client_cpus))
    codes = args.code.split(",")
    data = Path(args.data_dir or tempfile.gettempdir())
    print(f"# {' '.join(sys.argv[1:])}  server cpus {args.server_cpus}, "
          f"client cpus {args.client_cpus}")
    if args.stalled:
        stalled(args, codes, data)
    else:
        coldcatchup(args, codes, data)


if __name__ == "__main__":
    main()
