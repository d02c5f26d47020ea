"""Consumer-group delivery acked end to end: 3 members, max_inflight=100, acks pipelined.

Usage:
  group_bench.py [options]
  group_bench.py memory [options]

Options:
  -h, --help            Show this help.
  --events N            Events stored, then read from oldest [default: 60000].
  -R N, --repeat N      Runs per mode, interleaved; medians are reported [default: 3].
  --modes LIST          Comma-separated: plain (a subscription, ack=none: the baseline),
                        single (a group, one PUT per event), batched (a group, one PUT per
                        read of the stream with every id it carried) [default: plain,single,batched].
  --store STORE         local, or jetstream (busd over a real 3-node cluster; the baseline
                        is then the cluster's own durable consumer driven by nats-py)
                        [default: local].
  --code DIR            Source tree whose busd is measured (PYTHONPATH) [default: .].
  --server-cpus LIST    CPUs of the server (`taskset -c`) [default: 0].
  --client-cpus LIST    CPUs of this process (the load generator) [default: 1].
  --profile FILE        Record the server with `py-spy record` during the group runs
                        (collapsed stacks into FILE).

The load generator is one uvloop process of raw asyncio.Protocols (as perf/bench.py's
clients): per member one SSE stream and one keep-alive connection for its acks; an ack
is written as soon as the event is read, never waiting for an answer. The figure is
EVENTS over the time until every event's ack was answered 202. The server's CPU share
during each group run is printed too (1.0 = one core: the server is the bound).

memory: a group of 3 acks (batched) --events events, then 10x as many more; the group's
state file size and the server's VmRSS after each, so growth with acked events shows.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import deque
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BUSD, Server, cpu_list, cpu_seconds, in_tree  # noqa: E402
from opts import parse  # noqa: E402

ID_LINE = re.compile(rb"(?m)^id: ([^\r\n]+)")
CONSUMER = re.compile(rb"event: consumer\ndata: (c_[0-9a-v]+)")
BATCH_URL_BYTES = 15_000  # under the server's 16 KiB URL bound
PROFILE_RATE = 200


def start_server(args, path: str, *flags: str) -> Server:
    """A busd of --code on `path`, accepting connections."""
    return Server([*BUSD, "--namespaces", "bench"], args.server_cpus, *flags, path=path,
                  **in_tree(args.code)).start()


def fill(port: int, first: int, count: int) -> None:
    for start in range(first, first + count, 1000):
        body = json.dumps([{"subject": "bench.e", "payload": n}
                           for n in range(start, min(start + 1000, first + count))]).encode()
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/", body,
                                                      method="POST")).read()


class Acker(asyncio.Protocol):
    """A keep-alive connection that pipelines PUTs and counts the ids their 202s settled."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.sizes: deque[int] = deque()  # ids per PUT not answered yet
        self.tail = b""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def put(self, consumer: bytes, ids: list[bytes]) -> None:
        self.sizes.append(len(ids))
        self.transport.write(b"PUT /?consumer_id=%s&event_id=%s HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Length: 0\r\n\r\n" % (consumer, b"&event_id=".join(ids)))

    def data_received(self, data: bytes) -> None:
        data = self.tail + data
        answers = data.count(b"HTTP/1.1 ")
        ok = data.count(b"HTTP/1.1 202")
        if ok != answers:
            raise RuntimeError(f"an ack was refused: {data[:200]!r}")
        self.tail = data[data.rfind(b"\r\n\r\n") + 4:] if answers else data
        for _ in range(answers):
            self.run.acked(self.sizes.popleft())


class Stream(asyncio.Protocol):
    """One SSE stream; each read's event ids go to `on_ids` (None: counted only)."""

    def __init__(self, run: Run, query: str, acker: Acker | None, batched: bool) -> None:
        self.run, self.query, self.acker, self.batched = run, query, acker, batched
        self.consumer = b""
        self.tail = b""

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(f"GET /?{self.query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        data = self.tail + data
        end = data.rfind(b"\n\n") + 2
        self.tail, data = data[end:], data[:end]
        if not self.consumer:
            found = CONSUMER.search(data)
            if found:
                self.consumer = found.group(1)
        ids = ID_LINE.findall(data)
        if not ids:
            return
        if self.acker is None:
            self.run.acked(len(ids))
        elif self.batched:
            room = BATCH_URL_BYTES // (len(ids[0]) + 10)
            for at in range(0, len(ids), room):
                self.acker.put(self.consumer, ids[at:at + room])
        else:
            for event_id in ids:
                self.acker.put(self.consumer, [event_id])


class Run:
    """One measured run: done once `events` are acked (or, plain, read)."""

    def __init__(self, events: int) -> None:
        self.left = events
        self.done = asyncio.get_running_loop().create_future()

    def acked(self, count: int) -> None:
        self.left -= count
        if self.left <= 0 and not self.done.done():
            self.done.set_result(None)


async def measure(port: int, mode: str, events: int, query: str, members: int) -> float:
    loop = asyncio.get_running_loop()
    run = Run(events)
    transports = []
    started = time.perf_counter()
    for _ in range(members):
        acker = None
        if mode != "plain":
            transport, acker = await loop.create_connection(lambda: Acker(run), "127.0.0.1", port)
            transports.append(transport)
        transport, _ = await loop.create_connection(
            lambda a=acker: Stream(run, query, a, mode == "batched"), "127.0.0.1", port)
        transports.append(transport)
    await run.done
    seconds = time.perf_counter() - started
    for transport in transports:
        transport.close()
    return seconds


def group_query(name: str) -> str:
    return f"subject=bench.>&group={name}&start=oldest&max_inflight=100"


def run_local(args) -> None:
    with tempfile.TemporaryDirectory() as path:
        server = start_server(args, path)
        port = server.port
        spy = None
        try:
            fill(port, 0, args.events)
            if args.profile:
                spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")),
                                        "record", "-r", str(PROFILE_RATE), "-f", "raw", "-o",
                                        args.profile, "-p", str(server.proc.pid)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
            rates = {mode: [] for mode in args.modes}
            busy = {mode: [] for mode in args.modes}
            for k in range(args.repeat):
                for mode in args.modes:
                    query = ("subject=bench.>&start=oldest" if mode == "plain"
                             else group_query(f"{mode}{k}"))
                    before = cpu_seconds(server.proc.pid)
                    seconds = uvloop.run(measure(port, mode, args.events, query, 1 if
                                                 mode == "plain" else 3))
                    rates[mode].append(args.events / seconds)
                    busy[mode].append((cpu_seconds(server.proc.pid) - before) / seconds)
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                spy.wait()
            server.stop()
    report(args, rates, busy)


def report(args, rates: dict[str, list[float]], busy: dict[str, list[float]]) -> None:
    print(f"events={args.events} repeats={args.repeat} store={args.store} code={args.code} "
          f"load={os.getloadavg()[0]:.2f}")
    names = {"plain": "plain subscription, ack=none (1 stream)",
             "single": "group of 3, one PUT per event",
             "batched": "group of 3, batched PUTs",
             "raw": "nats-py durable, 3 pull subscriptions, fetch 100, acked"}
    medians = {mode: statistics.median(values) for mode, values in rates.items()}
    for mode, values in rates.items():
        cpu = f" server CPU {[round(b, 2) for b in busy[mode]]}" if busy.get(mode) else ""
        print(f"{names[mode]}: median {medians[mode]:,.0f} ev/s "
              f"{[round(v) for v in values]}{cpu}")
    base = "raw" if "raw" in medians else "plain"
    for mode, median in medians.items():
        if mode != base and base in medians:
            print(f"ratio {mode}/{base}: {median / medians[base]:.3f}")


async def raw_durable(urls: str, name: str, events: int) -> float:
    """The cluster's own rate: 3 pull subscriptions on one durable, every message acked."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    nc = await nats.connect(urls.split(","))
    js = nc.jetstream()
    config = ConsumerConfig(durable_name=name, ack_policy=AckPolicy.EXPLICIT,
                            deliver_policy=DeliverPolicy.ALL, max_ack_pending=50_000)
    for attempt in range(20):  # the cluster's meta leader may still be settling
        try:
            await js.add_consumer("bench", config)
            break
        except nats.js.errors.ServiceUnavailableError:
            if attempt == 19:
                raise
            await asyncio.sleep(0.5)
    acked = [0]

    async def member() -> None:
        sub = await js.pull_subscribe_bind(name, "bench")
        while acked[0] < events:
            try:
                messages = await sub.fetch(100, timeout=1)
            except TimeoutError:  # nats-py raises either this or its subclass
                continue
            except nats.js.errors.ServiceUnavailableError:  # the consumer's leader moving
                await asyncio.sleep(0.1)
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


def run_jetstream(args) -> None:
    """busd's JetStream groups against the cluster's own durable consumer, same run."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from natscluster import NatsCluster

    with tempfile.TemporaryDirectory() as path:
        cluster = NatsCluster(Path(path) / "nats").start()
        for proc in cluster.procs:
            subprocess.run(["taskset", "-p", "-c", args.server_cpus, str(proc.pid)],
                           check=True, stdout=subprocess.DEVNULL)
        server = start_server(args, path, "--store", "jetstream", "--nats-url",
                              cluster.urls, "--replicas", "3", "--log-level", "WARN")
        port = server.port
        modes = ["raw" if mode == "plain" else mode for mode in args.modes]
        rates: dict[str, list[float]] = {mode: [] for mode in modes}
        try:
            fill(port, 0, args.events)
            for k in range(args.repeat):
                for mode in modes:
                    if mode == "raw":
                        seconds = asyncio.run(raw_durable(cluster.urls, f"raw{k}",
                                                          args.events))
                    else:
                        seconds = uvloop.run(measure(port, mode, args.events,
                                                     group_query(f"{mode}{k}"), 3))
                    rates[mode].append(args.events / seconds)
        finally:
            server.stop()
            cluster.close()
    report(args, rates, {})


def run_memory(args) -> None:
    """State file and RSS after N and 10 N acked events: they must not follow the acks."""
    with tempfile.TemporaryDirectory() as path:
        server = start_server(args, path)
        port = server.port
        try:
            total = 0
            for count in (args.events, 9 * args.events):
                fill(port, total, count)
                total += count
                before = server.rss_kib()
                uvloop.run(measure(port, "batched", count, group_query("mem"), 3))
                time.sleep(0.5)  # the last commit
                size = sum(file.stat().st_size for file in Path(path).rglob("mem.state"))
                print(f"acked {total:,} events: group state file {size:,} B, server VmRSS "
                      f"{before:,} KiB before these acks, {server.rss_kib():,} KiB after")
        finally:
            server.stop()


def main() -> None:
    args = parse(__doc__, events=int, repeat=int, modes=lambda v: v.split(","))
    os.sched_setaffinity(0, cpu_list(args.client_cpus))
    if args.memory:
        run_memory(args)
    elif args.store == "jetstream":
        run_jetstream(args)
    else:
        run_local(args)


if __name__ == "__main__":
    main()
