"""Consumer-group delivery rate: 3 members, max_inflight=100, acks pipelined.

Usage:  python perf/group_bench.py [EVENTS] [REPEATS] [local|jetstream]
        (defaults 60000, 3, local)

Stores EVENTS events, then measures (a) a plain subscription reading them from oldest
(ack=none: the baseline, delivery without acks) and (b) a group of 3 members from
oldest, each acking every event on a keep-alive connection, pipelined; the time until
every event is acked (the group's `acked` figure). The server runs on CPU 0 (taskset),
this process on CPU 1. Prints the medians and the ratio.

With `jetstream`, busd runs with --store jetstream over a real 3-node cluster (busd and
the three nats-servers on CPU 0) and the baseline is the cluster's own durable consumer:
3 nats-py pull subscriptions on one durable (explicit ack, fetches of 100, every message
acked), driven from this process without busd.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

EVENTS = int(sys.argv[1]) if len(sys.argv) > 1 else 60_000
REPEATS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
STORE = sys.argv[3] if len(sys.argv) > 3 else "local"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(path: str, port: int, *flags: str) -> subprocess.Popen:
    proc = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "busd", "server",
                             "--addr", f"127.0.0.1:{port}", "--path", path,
                             "--namespaces", "bench", *flags], stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


def fill(port: int) -> None:
    for first in range(0, EVENTS, 1000):
        body = json.dumps([{"subject": "bench.e", "payload": n}
                           for n in range(first, min(first + 1000, EVENTS))]).encode()
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/", body,
                                                      method="POST")).read()


async def stream(port: int, query: str, on_event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
    writer.write(f"GET /?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    buffer = b""
    while True:
        data = await reader.read(1 << 20)
        if not data:
            return
        buffer += data
        *messages, buffer = buffer.split(b"\n\n")
        for message in messages:
            at = message.find(b"\nid: ")
            if message.startswith(b"id: ") or at >= 0:
                start = 4 if message.startswith(b"id: ") else at + 5
                if await on_event(message[start:message.index(b"\n", start)]):
                    writer.close()
                    return
            elif b"event: consumer\ndata: " in message:
                on_event.consumer = message.split(b"data: ")[1].split(b"\n")[0]


async def plain(port: int) -> float:
    count = [0]

    async def seen(_event_id: bytes) -> bool:
        count[0] += 1
        return count[0] >= EVENTS

    started = time.perf_counter()
    await stream(port, "subject=bench.>&start=oldest", seen)
    return time.perf_counter() - started


async def group(port: int, name: str) -> float:
    acked = [0]
    done = asyncio.Event()

    async def member() -> None:
        acker_r, acker_w = await asyncio.open_connection("127.0.0.1", port)

        async def drain() -> None:
            while True:
                line = await acker_r.readline()
                if not line:
                    return
                if line.startswith(b"HTTP/1.1 202"):
                    acked[0] += 1
                    if acked[0] >= EVENTS:
                        done.set()

        drainer = asyncio.ensure_future(drain())

        async def seen(event_id: bytes) -> bool:
            acker_w.write(b"PUT /?consumer_id=%s&event_id=%s HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Length: 0\r\n\r\n" % (seen.consumer, event_id))
            return done.is_set()

        seen.consumer = b""
        task = asyncio.ensure_future(stream(
            port, f"subject=bench.>&group={name}&start=oldest&max_inflight=100", seen))
        await done.wait()
        task.cancel()
        drainer.cancel()
        acker_w.close()

    started = time.perf_counter()
    await asyncio.gather(*(member() for _ in range(3)))
    return time.perf_counter() - started


async def raw_durable(urls: str, name: str) -> float:
    """The cluster's own rate: 3 pull subscriptions on one durable, every message acked."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    nc = await nats.connect(urls.split(","))
    js = nc.jetstream()
    config = ConsumerConfig(durable_name=name, ack_policy=AckPolicy.EXPLICIT,
                            deliver_policy=DeliverPolicy.ALL, max_ack_pending=50_000)
    await js.add_consumer("bench", config)
    acked = [0]

    async def member() -> None:
        sub = await js.pull_subscribe_bind(name, "bench")
        while acked[0] < EVENTS:
            try:
                messages = await sub.fetch(100, timeout=1)
            except nats.errors.TimeoutError:
                continue
            for message in messages:
                await message.ack()
            acked[0] += len(messages)

    started = time.perf_counter()
    await asyncio.gather(*(member() for _ in range(3)))
    await nc.flush()
    seconds = time.perf_counter() - started
    await nc.close()
    return seconds


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main_jetstream() -> None:
    """busd's JetStream groups against the cluster's own durable consumer, same run."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from natscluster import NatsCluster

    os.sched_setaffinity(0, {1})
    with tempfile.TemporaryDirectory() as path:
        cluster = NatsCluster(Path(path) / "nats").start()
        for proc in cluster.procs:
            subprocess.run(["taskset", "-p", "-c", "0", str(proc.pid)], check=True,
                           stdout=subprocess.DEVNULL)
        port = free_port()
        server = start_server(path, port, "--store", "jetstream", "--nats-url", cluster.urls,
                              "--replicas", "3", "--log-level", "WARN")
        try:
            fill(port)
            raws, groups = [], []
            for k in range(REPEATS):
                raws.append(EVENTS / asyncio.run(raw_durable(cluster.urls, f"raw{k}")))
                groups.append(EVENTS / asyncio.run(group(port, f"g{k}")))
        finally:
            server.terminate()
            server.wait()
            cluster.close()
    r, g = statistics.median(raws), statistics.median(groups)
    print(f"events={EVENTS} repeats={REPEATS} store=jetstream (3 nodes, R3)")
    print(f"nats-py durable, 3 pull subscriptions, fetch 100, acked: median {r:,.0f} ev/s "
          f"{[round(x) for x in raws]}")
    print(f"busd group of 3, max_inflight=100, acks pipelined: median {g:,.0f} ev/s acked "
          f"{[round(x) for x in groups]}")
    print(f"ratio busd group/raw durable: {g / r:.3f}")


def main() -> None:
    if STORE == "jetstream":
        main_jetstream()
        return
    os.sched_setaffinity(0, {1})
    with tempfile.TemporaryDirectory() as path:
        port = free_port()
        proc = start_server(path, port)
        try:
            fill(port)
            plains, groups, busy = [], [], []
            for k in range(REPEATS):
                plains.append(EVENTS / asyncio.run(plain(port)))
                before = cpu_seconds(proc.pid)
                seconds = asyncio.run(group(port, f"g{k}"))
                groups.append(EVENTS / seconds)
                busy.append((cpu_seconds(proc.pid) - before) / seconds)
        finally:
            proc.terminate()
            proc.wait()
    p, g = statistics.median(plains), statistics.median(groups)
    print(f"events={EVENTS} repeats={REPEATS}")
    print(f"plain subscription from oldest (ack=none): median {p:,.0f} ev/s {plains}")
    print(f"group of 3, max_inflight=100, acks pipelined: median {g:,.0f} ev/s acked {groups}")
    print(f"ratio group/plain: {g / p:.3f}")
    print(f"server CPU busy during the group runs: {[round(b, 2) for b in busy]} (1.0 = one "
          "core: the server is the bottleneck)")


if __name__ == "__main__":
    main()
