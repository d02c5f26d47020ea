"""/healthz latency while clients send headers that never end, beside a control run.

Each round runs two phases of --seconds each, control first: one keep-alive client asks
`GET /healthz` every --interval and records each answer's latency; in the attack phase,
meanwhile, --attackers connections (in a process of their own) send
`GET / HTTP/1.1\\r\\nX-Endless: ` and then `a` bytes in --piece-sized writes for as long as
the server takes them, reconnecting whenever it cuts them off (busd answers 431 past 64 KiB
of head). Prints the p50/p99/max of both phases, their medians over the rounds and the
ratio, and how many attack connections the server cut off.

Usage:
  header_flood.py [options]

Options:
  -h, --help            Show this help.
  --rounds N            Control + attack rounds; the medians are reported [default: 3].
  --seconds S           Length of each phase [default: 5].
  --interval S          Pause between two /healthz requests [default: 0.002].
  --attackers N         Connections sending endless headers [default: 8].
  --piece BYTES         Bytes per attacker write [default: 16384].
  --server-cpus LIST    CPUs of busd, as `taskset -c` takes them [default: 0].
  --client-cpus LIST    CPUs of this process and of the attackers [default: 1].
  --busd-cmd CMD        Server under test; placeholders {python} {port} {addr} {path}
                        (default: {python} -m busd server on {addr} and {path}).
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (perf/bench.py: Server, machine info)
import harness  # noqa: E402
from opts import parse  # noqa: E402

BUSD = [*harness.BUSD, "--namespaces", "bench"]
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"
ENDLESS_HEAD = b"GET / HTTP/1.1\r\nHost: bench\r\nX-Endless: "


def read_answer(sock: socket.socket, buffer: bytearray) -> None:
    """Read one response (head and Content-Length body) into and off `buffer`."""
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        buffer += receive(sock)
    length = 0
    for line in bytes(buffer[:end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(buffer) < end + 4 + length:
        buffer += receive(sock)
    del buffer[:end + 4 + length]


def receive(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("the server closed the probe's connection")
    return data


def probe(port: int, seconds: float, interval: float) -> list[float]:
    """Latencies (ms) of /healthz asked every `interval` on one keep-alive connection."""
    latencies, buffer = [], bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=seconds + 30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            sock.sendall(HEALTHZ)
            read_answer(sock, buffer)
            latencies.append((time.perf_counter() - started) * 1000)
            time.sleep(interval)
    return latencies


def attack(port: int, attackers: int, piece: int, stop, cut) -> None:
    """In a process of its own: `attackers` threads, each sending one endless head after
    another until `stop` is set; `cut` counts the connections the server ended. At the
    lowest CPU priority: they share the client CPUs with the probe, whose own waits for
    a CPU would otherwise be measured as the server's latency."""
    os.nice(19)
    filler = b"a" * piece

    def one() -> None:
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                    sock.sendall(ENDLESS_HEAD)
                    while not stop.is_set():
                        sock.sendall(filler)
            except OSError:
                with cut.get_lock():
                    cut.value += 1

    threads = [threading.Thread(target=one, daemon=True) for _ in range(attackers)]
    for thread in threads:
        thread.start()
    stop.wait()


def measured(server: bench.Server, args) -> tuple[float, float, float, float, float]:
    """One phase of probing: p50, p99, max (ms), busd's CPU use (cores) and how busy its
    CPUs were with anyone's work (a neighbour's too), in fractions of their capacity."""
    ticks, wall = bench.cpu_ticks(), time.perf_counter()
    used = harness.cpu_seconds(server.proc.pid)
    ordered = sorted(probe(server.port, args.seconds, args.interval))
    wall = time.perf_counter() - wall
    busd = (harness.cpu_seconds(server.proc.pid) - used) / wall
    now = bench.cpu_ticks()
    total = sum(now[c][1] - ticks[c][1] for c in args.server_cpus)
    busy = sum(now[c][0] - ticks[c][0] for c in args.server_cpus) / total if total else 0.0
    return (statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1], ordered[-1],
            busd, busy)


def shown(figures) -> str:
    p50, p99, worst, busd, busy = figures
    return (f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  max {worst:7.2f} ms  busd "
            f"{busd:.2f} cores, its CPUs {busy:.0%} busy")


def main() -> int:
    args = parse(__doc__, rounds=int, seconds=float, interval=float, attackers=int,
                 piece=int, server_cpus=harness.cpu_list, client_cpus=harness.cpu_list)
    os.sched_setaffinity(0, args.client_cpus)
    for line in bench.machine():
        print(line)
    print(f"busd on CPUs {args.server_cpus}, probe and attackers on {args.client_cpus}; "
          f"{args.attackers} attackers, {args.piece}-byte writes; {args.rounds} rounds of "
          f"{args.seconds:g}s control + {args.seconds:g}s attack")
    phases: dict[str, list[tuple[float, ...]]] = {"control": [], "attack": []}
    with bench.Server("busd", args.busd_cmd or BUSD, Path(os.environ.get("TMPDIR", "/tmp")),
                      args.server_cpus) as server:
        for number in range(1, args.rounds + 1):
            phases["control"].append(measured(server, args))
            stop, cut = multiprocessing.Event(), multiprocessing.Value("l", 0)
            attackers = multiprocessing.Process(target=attack, args=(
                server.port, args.attackers, args.piece, stop, cut))
            attackers.start()
            time.sleep(0.5)  # the heads are growing
            phases["attack"].append(measured(server, args))
            stop.set()
            attackers.join(10)
            rss = server.rss_kib() / 1024
            for name in ("control", "attack"):
                print(f"round {number} {name:7}  {shown(phases[name][-1])}")
            print(f"round {number} attack connections cut off: {cut.value}; "
                  f"busd RSS {rss:.0f} MiB")
    medians = {name: [statistics.median(run[i] for run in runs) for i in range(5)]
               for name, runs in phases.items()}
    for name, figures in medians.items():
        print(f"median  {name:7}  {shown(figures)}")
    print(f"attack/control p99: {medians['attack'][1] / medians['control'][1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
