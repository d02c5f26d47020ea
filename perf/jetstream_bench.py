"""busd over a 3-node JetStream cluster vs the local store, same run: publish and fan-out.

Usage:
  jetstream_bench.py [options]

Options:
  -h, --help            Show this help.
  --repeat N            Runs per measurement [default: 3].
  --duration D          wrk duration per run [default: 5s].
  --threads N           wrk threads, split across the front-ends [default: 2].
  --fanout-consumers N  fanout: SSE consumers, split across the front-ends [default: 100].
  --fanout-events N     fanout: events per run, in batches of 100 [default: 10000].
  --only LIST           Comma-separated sections [default: publish,batch,fanout].
  --configs LIST        Comma-separated configurations [default: local,js1,js2,raw].
  --out FILE            Markdown table (default: perf/out/jetstream.md).

Examples:
  /work/venv/bin/python perf/jetstream_bench.py                 # 3 repeats, 5 s wrk runs
  /work/venv/bin/python perf/jetstream_bench.py --repeat 1 --duration 3s

Configurations: `local` (one busd, --store local), `js×1` (one busd front-end over the
cluster, R3 stream) and `js×2` (two front-ends over the same cluster; load split evenly
across them); `raw` drives the cluster from one nats-py client without busd, the
reference for what the front-ends could reach on this machine. Sections:

  publish   wrk, 32 keep-alive connections, one ~40-byte event per POST (req/s)
  batch     wrk, 8 connections, 100 events per POST (events/s)
  fanout    100 live SSE consumers (split across the front-ends), M events published in
            batches of 100 through the first front-end: deliveries/s

For each measurement the CPU time of every process involved (busd front-ends, the three
nats-servers, wrk or this client) is read from /proc before and after, and printed as
cores used (CPU seconds / wall seconds) — that names the bottleneck on this machine.
Everything runs on loopback; every run is bounded in time and stops by itself.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PERF = Path(__file__).resolve().parent
REPO = PERF.parent
sys.path.insert(0, str(PERF))
sys.path.insert(0, str(REPO / "tests"))

import bench  # noqa: E402
from bench import (  # noqa: E402
    EVENT,
    NS,
    HttpClient,
    Server,
    SSECounter,
    batch_body,
    children_cpu,
    post_request,
    run_wrk,
)
from harness import BUSD, cpu_seconds  # noqa: E402
from natscluster import NatsCluster  # noqa: E402
from opts import parse  # noqa: E402


class CpuMeter:
    """Cores used per named process group between start() and stop()."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.before: dict[str, float] = {}
        self.t0 = 0.0

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.before = {name: sum(cpu_seconds(p) for p in pids)
                       for name, pids in self.groups.items()}
        self.before["client"] = time.process_time()

    def stop(self, extra_client: float = 0.0) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        used = {name: (sum(cpu_seconds(p) for p in pids) - self.before[name]) / wall
                for name, pids in self.groups.items()}
        used["client"] = (time.process_time() - self.before["client"] + extra_client) / wall
        return used


def show(cpu: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.2f}" for name, value in cpu.items())


def section_wrk(ports: list[int], body: bytes, conns: int, args, meter: CpuMeter,
                per_request: int) -> tuple[list[float], list[dict]]:
    """wrk against every front-end at once (conns split evenly); summed rate per repeat."""
    rates, cpus = [], []
    for _ in range(args.repeat):
        results: list[float] = [0.0] * len(ports)
        problems: list[str] = []

        def one(i: int, port: int, results=results, problems=problems) -> None:
            rate, problem = run_wrk(f"http://127.0.0.1:{port}/", body, conns // len(ports),
                                    max(1, args.threads // len(ports)), args.duration)
            results[i] = rate
            if problem:
                problems.append(problem)

        children = children_cpu()
        meter.start()
        threads = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(ports)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        cpu = meter.stop(extra_client=children_cpu() - children)
        cpu["wrk"] = cpu.pop("client")
        total = sum(results) * per_request
        rates.append(total)
        cpus.append(cpu)
        bench.log(f"    {total:12,.0f}/s  cores: {show(cpu)}"
                  + (f"  ({'; '.join(problems)})" if problems else ""))
        time.sleep(0.5)
    return rates, cpus


async def section_fanout(ports: list[int], args, meter: CpuMeter) -> tuple[list[float], list]:
    k, m, batch = args.fanout_consumers, args.fanout_events, 100
    consumers = [await SSECounter.open(ports[i % len(ports)], "newest") for i in range(k)]
    pub = await HttpClient.connect(ports[0])
    rates, cpus = [], []
    try:
        status, body = await pub.request(post_request(EVENT))
        assert status == 202, body
        await asyncio.wait_for(asyncio.gather(*(c.expect(1) for c in consumers)), 30)
        base = 1
        req = post_request(batch_body(batch))
        for _ in range(args.repeat):
            base += m
            waits = [c.expect(base) for c in consumers]
            meter.start()
            t0 = time.perf_counter()
            for _ in range(m // batch):
                status, body = await pub.request(req)
                if status != 202:
                    raise RuntimeError(f"batch publish answered {status}: {body[:200]!r}")
            ends = await asyncio.wait_for(asyncio.gather(*waits), max(60.0, k * m / 5000))
            cpu = meter.stop()
            rate = k * m / (max(ends) - t0)
            rates.append(rate)
            cpus.append(cpu)
            bench.log(f"    {rate:12,.0f} deliveries/s  cores: {show(cpu)}")
            await asyncio.sleep(0.5)
    finally:
        pub.close()
        for c in consumers:
            c.close()
    return rates, cpus


async def section_raw(cluster: NatsCluster, args, meter: CpuMeter) -> list[tuple[str, list,
                                                                               list]]:
    """The cluster's own capacity seen from one Python client (nats-py), no busd: acked
    single publishes with 32 in flight, and atomic batches of 100 with 8 in flight."""
    import json

    import nats
    nc = await nats.connect(cluster.urls.split(","))
    await nc.request("$JS.API.STREAM.CREATE.raw", json.dumps(
        {"name": "raw", "subjects": ["raw.>"], "allow_atomic": True, "storage": "file",
         "num_replicas": 3}).encode(), timeout=15)
    record = (b'{"id":"e_dc4pbsr8di16kliasov0","subject":"raw.x","created_at":'
              b'"2026-11-27T14:38:43.808034323Z","payload":' + bench.PAYLOAD + b"}")
    out = []
    try:
        for name, n, conc in (("raw client: acked publish, 1 event, 32 in flight (events/s)",
                               1, 32),
                              ("raw client: atomic batches of 100, 8 in flight (events/s)",
                               100, 8)):
            rates, cpus = [], []
            for r in range(args.repeat):
                done = [0]

                async def worker(w: int, r=r, n=n, conc=conc, done=done) -> None:
                    for b in range(max(1, 20_000 // n // conc)):
                        inbox = nc.new_inbox()
                        sub = await nc.subscribe(inbox, max_msgs=1)
                        for i in range(n):
                            h = {"Bus-Event-Id": "e_dc4pbsr8di16kliasov0"}
                            if n > 1:
                                h["Nats-Batch-Id"] = f"r{r}w{w}b{b}"
                                h["Nats-Batch-Sequence"] = str(i + 1)
                                if i == n - 1:
                                    h["Nats-Batch-Commit"] = "1"
                            await nc.publish("raw.x", record, reply=inbox if i == n - 1 else "",
                                             headers=h)
                        msg = await sub.next_msg(timeout=15)
                        if b'"error"' in msg.data:
                            raise RuntimeError(msg.data)
                        done[0] += n

                meter.start()
                t0 = time.perf_counter()
                await asyncio.gather(*(worker(w) for w in range(conc)))
                rate = done[0] / (time.perf_counter() - t0)
                cpu = meter.stop()
                rates.append(rate)
                cpus.append(cpu)
                bench.log(f"    {name}: {rate:12,.0f}/s  cores: {show(cpu)}")
            out.append((name, rates, cpus))
    finally:
        await nc.close()
    return out


def median_cpu(cpus: list[dict]) -> str:
    names = cpus[0].keys()
    return ", ".join(f"{n} {statistics.median(c[n] for c in cpus):.2f}" for n in names)


def main(argv=None) -> int:
    args = parse(__doc__, argv, repeat=int, threads=int, fanout_consumers=int,
                 fanout_events=int, out=Path)
    args.out = args.out or PERF / "out" / "jetstream.md"
    sections = args.only.split(",")
    rows: list[tuple[str, str, float, str]] = []
    root = Path(tempfile.mkdtemp(prefix="busd-jsbench-"))
    cluster = NatsCluster(root / "nats").start()
    nats_pids = [p.pid for p in cluster.procs if p is not None]
    bench.log(f"nats cluster up: {cluster.urls}")
    try:
        for config in args.configs.split(","):
            if config == "raw":
                bench.log("[raw] the cluster from one nats-py client, no busd")
                meter = CpuMeter({"nats×3": nats_pids})
                for name, rates, cpus in asyncio.run(section_raw(cluster, args, meter)):
                    rows.append((config, name, statistics.median(rates), median_cpu(cpus)))
                continue
            frontends = 2 if config == "js2" else 1
            cluster.delete_streams([NS])
            servers = []
            for i in range(frontends):
                cmd = [*BUSD, "--namespaces", NS, "--log-level", "WARN"]
                if config != "local":
                    cmd += ["--store", "jetstream", "--nats-url", cluster.urls, "--replicas", "3"]
                servers.append(Server(f"{config}-{i}", cmd, root).start())
            groups = {f"busd{'' if frontends == 1 else i + 1}": [s.proc.pid]
                      for i, s in enumerate(servers)}
            if config != "local":
                groups["nats×3"] = nats_pids
            meter = CpuMeter(groups)
            ports = [s.port for s in servers]
            try:
                if "publish" in sections:
                    bench.log(f"[{config}] publish, 1 event/POST, 32 conns")
                    rates, cpus = section_wrk(ports, EVENT, 32, args, meter, 1)
                    rows.append((config, "publish, 1 event/POST, 32 conns (events/s)",
                                 statistics.median(rates), median_cpu(cpus)))
                if "batch" in sections:
                    bench.log(f"[{config}] batch, 100 events/POST, 8 conns")
                    rates, cpus = section_wrk(ports, batch_body(100), 8, args, meter, 100)
                    rows.append((config, "batch, 100 events/POST, 8 conns (events/s)",
                                 statistics.median(rates), median_cpu(cpus)))
                if "fanout" in sections:
                    bench.log(f"[{config}] fan-out, {args.fanout_consumers} consumers")
                    rates, cpus = asyncio.run(section_fanout(ports, args, meter))
                    rows.append((config, f"fan-out, {args.fanout_consumers} SSE consumers "
                                         f"(deliveries/s)", statistics.median(rates),
                                 median_cpu(cpus)))
            finally:
                for s in servers:
                    s.stop()
    finally:
        cluster.close()
    lines = ["| benchmark | store | median | cores used (median) |", "|---|---|---|---|"]
    local = {name: value for config, name, value, _ in rows if config == "local"}
    for config, name, value, cpu in rows:
        ratio = f" ({value / local[name]:.2f}× local)" if config != "local" and name in local \
            else ""
        lines.append(f"| {name} | {config} | {value:,.0f}{ratio} | {cpu} |")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print()
    print(text)
    print(f"written {args.out}")
    subprocess.run(["rm", "-rf", str(root)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
