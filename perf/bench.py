"""busd benchmark harness: one command, starts the servers itself, prints a table.

Usage:
  bench.py [options]

Options:
  -h, --help              Show this help.
  --only LIST             Comma-separated sections to run
                          [default: publish,batch,catchup,fanout,subjects,latency,memory].
  -R N, --repeat N        Repeats per measurement, the median is reported [default: 3].
  --duration D            wrk duration per run (publish, batch) [default: 5s].
  --threads N             wrk threads [default: 1].
  --connections N         publish: wrk connections [default: 32].
  --batch-connections N   batch: wrk connections [default: 8].
  --batch-size N          batch: events per request [default: 100].
  --catchup-events N      catchup: N events stored, then read [default: 500000].
  --fanout-consumers N    fanout: live SSE consumers, all on bench.> [default: 100].
  --fanout-events N       fanout: M events per run, a multiple of 100 [default: 20000].
  --subjects N            subjects: N consumers, consumer i on the literal subject
                          bench.s<i> [default: 1000].
  --subjects-events M     subjects: events per run, spread evenly over the N subjects
                          (a multiple of 100 and of N) [default: 200000].
  --fanout-publishers N   fanout, subjects: publisher connections, the batches dealt out
                          among them [default: 4].
  --fanout-window N       fanout, subjects: batch POSTs each publisher keeps in flight
                          (pipelined) [default: 8].
  --latency-rate N        latency: events/s [default: 10000].
  --latency-duration S    latency: seconds per run [default: 5].
  --idle-conns N          memory: idle SSE connections [default: 1000].
  --stall-events N        memory: events published past a stalled consumer [default: 200000].
  --server-cpus LIST      CPUs of the servers under test, as `taskset -c` takes them
                          [default: 0].
  --client-cpus LIST      CPUs of this process (its SSE clients and publishers) and of wrk
                          [default: 1].
  --busd-cmd CMD          Server under test; placeholders {python} {port} {addr} {path}
                          (default: {python} -m busd server on {addr} and {path}, namespace
                          bench, fsync interval).
  --ceiling-cmd CMD       The bare-stack server publish and batch compare with; latency
                          starts it with --relay, as its floor
                          [default: {python} perf/ceiling.py --port {port}].
  --peer-cmd CMD          Another server (e.g. a Go Bus) measured beside busd in publish,
                          batch, catchup and latency, started like --busd-cmd.
  --peer-name NAME        The peer's column in the table and the JSON [default: peer].
  --data-dir DIR          Where the per-section --path temp dirs go (default: system temp).
  --out FILE              The table as Markdown (default: perf/out/latest.md).
  --json FILE             Every run, the machine and the pinning (default: perf/out/latest.json),
                          for perf/plot.py.

Examples:
  .venv/bin/python perf/bench.py                       # everything, 3 repeats
  .venv/bin/python perf/bench.py --only publish,catchup --repeat 5
  .venv/bin/python perf/bench.py --only publish --busd-cmd "{python} perf/ceiling.py --port {port}"
  PEER="/path/to/bus server --addr {addr} --path {path} --namespaces bench"
  .venv/bin/python perf/bench.py --peer-cmd "$PEER" --peer-name bus-go

Sections (see perf/README.md for what each one measures):
  publish   wrk, 32 keep-alive connections, one ~40-byte event per POST: busd vs ceiling
  batch     wrk, 8 connections, 100 events per POST (JSON array): busd vs ceiling
  catchup   N events stored first, then one SSE consumer from start=oldest: events/s
  fanout    100 live SSE consumers on bench.>, M events published in batches: deliveries/s
  subjects  1,000 live SSE consumers on 1,000 distinct literal subjects, the events spread
            over them: deliveries/s
  latency   one publisher at a fixed rate, one SSE consumer: publish->receive p50/p99/p99.9,
            beside the ceiling relaying each POST to the stream
  memory    RSS per idle SSE connection; RSS growth under a consumer that never reads

The servers run on --server-cpus (taskset), this process and wrk on --client-cpus, so the
load generator never takes the server's core; each run prints how busy both sets of CPUs
were (anyone's work counts, a neighbour's too). busd (and the peer) start fresh, on a new
empty --path, for every section; every load is loopback only with fixed counts/durations
and per-step timeouts, so the run always ends by itself. The clients are raw asyncio
(uvloop) protocols that count ``\\nevent: msg\\n`` markers with bytes.count, so the
client is as cheap as possible.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import platform
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httptools
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from harness import BUSD, cpu_list, cpu_seconds, cpus_allowed, log  # noqa: E402
from opts import parse, usage_error  # noqa: E402

PERF = Path(__file__).resolve().parent
REPO = PERF.parent
OUT = PERF / "out"
SECTIONS = ("publish", "batch", "catchup", "fanout", "subjects", "latency", "memory")
PEER_SECTIONS = ("publish", "batch", "catchup", "latency")
SATURATED = 0.9  # the harness and wrk this busy on their CPUs: the load may be their limit
CROWDED = 0.1  # other work taking this much of the server CPUs during a run is worth a note
METERED = 1.0  # seconds: shorter runs are too short for /proc's 10 ms ticks to say much

MARK = b"\nevent: msg\n"
ML = len(MARK) - 1
NS = "bench"
# ~40-byte payload, Go-SDK-shaped bodies (see shared/compat/go-sdk-wire.json).
PAYLOAD = b'{"n":12345678,"user":"user-42","ok":true}'
EVENT = (b'{"id":"","subject":"bench.created","created_at":"0001-01-01T00:00:00Z","payload":'
         + PAYLOAD + b"}")
BATCH_ITEM = (b'{"id":"","key":"","subject":"bench.created","payload":' + PAYLOAD
              + b',"created_at":"0001-01-01T00:00:00Z","index":0}')


def batch_body(n: int, subjects: list[bytes] | None = None) -> bytes:
    """n events on bench.created, or on these subjects (one each)."""
    if subjects is None:
        return b"[" + b",".join([BATCH_ITEM] * n) + b"]"
    return b"[" + b",".join(BATCH_ITEM.replace(b"bench.created", s) for s in subjects) + b"]"


def post_request(body: bytes) -> bytes:
    return (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: busd-bench\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body


def sse_request(start: str, subject: str = NS + ".%3E") -> bytes:
    return (f"GET /?subject={subject}&start={start} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "User-Agent: busd-bench\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
            ).encode()


# --------------------------------------------------------------------------- servers

class Server(harness.Server):
    """A server under test of bench.py (and of the scripts importing it): a fresh --path
    under ``data_root`` for each, the checkout as working directory, its output appended
    to perf/out/NAME.log, whose end a failed start quotes."""

    def __init__(self, name: str, template: list[str] | str, data_root: Path | None,
                 cpus: list[int] | None = None) -> None:
        self.tmp = (tempfile.mkdtemp(prefix=f"busd-bench-{name}-", dir=data_root)
                    if data_root else None)
        super().__init__(template, cpus, name=name, path=self.tmp or "", cwd=REPO,
                         stderr=subprocess.STDOUT)
        OUT.mkdir(parents=True, exist_ok=True)
        self.logpath = OUT / f"{name}.log"

    def start(self, timeout: float = 30.0) -> Server:
        with open(self.logpath, "ab") as logf:
            logf.write(f"\n=== {time.strftime('%H:%M:%S')} {shlex.join(self.cmd)}\n".encode())
            logf.flush()
            self.popen["stdout"] = logf
            super().start(timeout)
        log(f"  {self.name} pid {self.proc.pid} on CPUs {cpus_allowed(self.proc.pid)}, "
            f"port {self.port}")
        return self

    def output(self) -> str:
        return self.logpath.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        super().stop()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------- clients

class HttpClient(asyncio.Protocol):
    """Keep-alive HTTP/1.1 client; requests may be pipelined; answers come back in order."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpResponseParser(self)
        self.waiters: list[asyncio.Future | None] = []  # FIFO; None = fire-and-forget
        self.head = 0
        self.body: list[bytes] = []
        self.statuses: dict[int, int] = {}
        self.first_error: str | None = None
        self.done = 0
        self.transport = None
        self.lost: asyncio.Future = self.loop.create_future()

    @classmethod
    async def connect(cls, port: int) -> HttpClient:
        _, proto = await asyncio.get_running_loop().create_connection(cls, "127.0.0.1", port)
        return proto

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)
        for w in self.waiters[self.head:]:
            if w is not None and not w.done():
                w.set_exception(ConnectionError("server closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, b: bytes) -> None:
        self.body.append(b)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        self.statuses[status] = self.statuses.get(status, 0) + 1
        body = b"".join(self.body)
        self.body = []
        self.done += 1
        if status >= 300 and self.first_error is None:
            self.first_error = f"{status}: {body[:200]!r}"
        w = self.waiters[self.head]
        self.head += 1
        if self.head > 4096:
            del self.waiters[:self.head]
            self.head = 0
        if w is not None:
            w.set_result((status, body))

    def send(self, req: bytes) -> None:
        """Fire and forget (pipelined); the answer is only counted."""
        self.waiters.append(None)
        self.transport.write(req)

    async def request(self, req: bytes) -> tuple[int, bytes]:
        fut = self.loop.create_future()
        self.waiters.append(fut)
        self.transport.write(req)
        return await fut

    def close(self) -> None:
        if self.transport:
            self.transport.close()


class SSECounter(asyncio.Protocol):
    """SSE consumer that only counts ``\\nevent: msg\\n`` markers (chunk framing is ignored:
    a marker split across two reads is still found, without copying the data)."""

    def __init__(self, request: bytes) -> None:
        self.loop = asyncio.get_running_loop()
        self.request = request
        self.headers: asyncio.Future = self.loop.create_future()
        self.hbuf = b""
        self.count = 0
        self.tail = b""
        self.nbytes = 0
        self.target = 0
        self.reached: asyncio.Future | None = None
        self.transport = None

    @classmethod
    async def open(cls, port: int, start: str, subject: str = NS + ".%3E",
                   timeout: float = 10.0) -> SSECounter:
        _, proto = await asyncio.get_running_loop().create_connection(
            lambda: cls(sse_request(start, subject)), "127.0.0.1", port)
        await asyncio.wait_for(proto.headers, timeout)
        return proto

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc) -> None:
        if not self.headers.done():
            self.headers.set_exception(ConnectionError(f"closed before SSE headers: {self.hbuf[:300]!r}"))
        if self.reached and not self.reached.done():
            self.reached.set_exception(ConnectionError(f"stream closed after {self.count} events"))

    def expect(self, target: int) -> asyncio.Future:
        self.target = target
        self.reached = self.loop.create_future()
        if self.count >= target:
            self.reached.set_result(time.perf_counter())
        return self.reached

    def data_received(self, data: bytes) -> None:
        if not self.headers.done():
            self.hbuf += data
            end = self.hbuf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.hbuf[:end], self.hbuf[end + 4:]
            if not head.startswith(b"HTTP/1.1 200"):
                self.headers.set_exception(RuntimeError(f"SSE subscribe refused: {self.hbuf[:300]!r}"))
                self.transport.close()
                return
            self.headers.set_result(head)
            self.hbuf = b""
        self.on_data(data)

    def on_data(self, data: bytes) -> None:
        self.nbytes += len(data)
        n = data.count(MARK)
        if self.tail:
            n += (self.tail + data[:ML]).count(MARK)
        self.tail = data[-ML:]
        if n:
            self.count += n
            r = self.reached
            if r is not None and self.count >= self.target and not r.done():
                r.set_result(time.perf_counter())

    def close(self) -> None:
        if self.transport:
            self.transport.close()


LAT_RE = re.compile(rb'"payload":\{"t":(\d+),')


class SSELatency(SSECounter):
    """SSE consumer that extracts each payload's send timestamp and stamps its arrival."""

    def __init__(self, request: bytes) -> None:
        super().__init__(request)
        self.buf = b""
        self.samples: list[tuple[int, int]] = []  # (sent_ns, received_ns)

    def on_data(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        super().on_data(data)
        buf = self.buf + data
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self.buf = buf
            return
        self.samples.extend((int(t), now) for t in LAT_RE.findall(buf, 0, cut))
        self.buf = buf[cut:]


async def bulk_publish(port: int, total: int, batch: int = 1000, conns: int = 4) -> float:
    """Stores ``total`` events as fast as possible (batches over a few connections); events/s."""
    clients = [await HttpClient.connect(port) for _ in range(conns)]
    full = post_request(batch_body(batch))
    left = [total]

    async def worker(c: HttpClient) -> None:
        while left[0] > 0:
            n = min(batch, left[0])
            left[0] -= n
            status, body = await c.request(full if n == batch else post_request(batch_body(n)))
            if status != 202:
                raise RuntimeError(f"batch publish answered {status}: {body[:300]!r}")

    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(worker(c) for c in clients)), max(60, total / 2000))
    finally:
        for c in clients:
            c.close()
    return total / (time.perf_counter() - t0)


# --------------------------------------------------------------------------- results

@dataclass
class Row:
    """One benchmark: every run's value per column (busd, ceiling, the peer) and how busy the
    server's and the client's CPUs were over each run."""

    group: str  # perf/plot.py draws one chart per group; a group's rows share a unit
    name: str
    unit: str
    runs: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[CpuUse]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    digits: int = 0
    # a paced load whose client spins between sends (latency: sub-millisecond sleeps are
    # 0 ms timers in libuv): its CPU is always busy, which says nothing about its limit
    paced: bool = False

    def add(self, column: str, value: float, cpu: CpuUse | None = None) -> None:
        self.runs.setdefault(column, []).append(value)
        if cpu is not None:
            self.cpu.setdefault(column, []).append(cpu)

    def median(self, column: str) -> float | None:
        v = self.runs.get(column)
        return statistics.median(v) if v else None

    def ratios(self, columns: list[str]) -> dict[str, float | None]:
        """busd's median over each other column's (same run)."""
        b = self.median("busd")
        return {f"busd/{c}": (b / m if b is not None and (m := self.median(c)) else None)
                for c in columns[1:]}

    def note(self) -> str:
        flags = []
        for c, all_uses in self.cpu.items():
            uses = [u for u in all_uses if u.seconds >= METERED]
            if not self.paced and (k := sum(u.client >= SATURATED for u in uses)):
                flags.append(f"{c}: the harness and wrk kept their CPUs ≥ {SATURATED:.0%} busy "
                             f"in {k} of {len(uses)} runs")
            if k := sum(u.server_cpus - u.server >= CROWDED for u in uses):
                flags.append(f"{c}: other work took ≥ {CROWDED:.0%} of the server CPUs in {k} of "
                             f"{len(uses)} runs")
        return "; ".join(self.notes + flags)

    def fmt(self, v: float | None) -> str:
        return "–" if v is None else f"{v:,.{self.digits}f}"

    def cells(self, columns: list[str]) -> list[str]:
        ratios = self.ratios(columns)
        out = [f"{self.name} ({self.unit})", self.fmt(self.median("busd"))]
        for c in columns[1:]:
            r = ratios[f"busd/{c}"]
            out += [self.fmt(self.median(c)), "–" if r is None else f"{r:.2f}"]
        shown = columns[:max(i + 1 for i, c in enumerate(columns) if c in self.runs or i == 0)]
        runs = " | ".join(" ".join(map(self.fmt, self.runs[c])) if c in self.runs else "–"
                          for c in shown)
        return out + [runs, self.note()]

    def as_json(self, columns: list[str]) -> dict:
        return {"group": self.group, "name": self.name, "unit": self.unit,
                "median": {c: self.median(c) for c in columns if c in self.runs},
                "ratios": {k: v for k, v in self.ratios(columns).items() if v is not None},
                "runs": self.runs, "note": self.note(),
                "cpu": {c: [asdict(u) for u in uses] for c, uses in self.cpu.items()}}


def head(columns: list[str]) -> list[str]:
    out = ["benchmark", "busd (median)"]
    for c in columns[1:]:
        out += [f"{c} (median)", f"busd/{c}"]
    return out + ["runs " + " | ".join(columns), "notes"]


def table_text(rows: list[Row], columns: list[str]) -> str:
    data = [head(columns)] + [r.cells(columns) for r in rows]
    n = len(data[0])
    w = [max(len(r[i]) for r in data) for i in range(n)]
    lines = []
    for k, r in enumerate(data):
        lines.append("  ".join(c.ljust(w[i]) if i == 0 or i >= n - 2 else c.rjust(w[i])
                               for i, c in enumerate(r)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * x for x in w))
    return "\n".join(lines)


def table_md(rows: list[Row], columns: list[str]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(head(columns)), "|" + "---|" * len(head(columns))]
                     + [line(r.cells(columns)) for r in rows])


def machine() -> list[str]:
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    load = show_load(loadavg())
    wrk = shutil.which("wrk")
    wrkv = subprocess.run([wrk, "--version"], capture_output=True, text=True).stdout.split("[")[0].strip() if wrk else "missing"
    return [
        f"nproc {affinity} (cpu_count {os.cpu_count()}), CPU: {model}",
        f"Python {platform.python_version()} ({sys.executable}), uvloop {uvloop.__version__}, "
        f"httptools {httptools.__version__}, {wrkv}",
        f"kernel {platform.release()}, loadavg at start {load}",
    ]


PROBE_BYTES = 2 << 30  # more than a VM keeps of recently freed pages before it hands them back


def page_cache_writes(directory: Path) -> str:
    """How fast this machine gives a growing file new page-cache pages: 2 GiB written
    twice, the first into whatever memory the kernel hands out, the second into the pages
    the first freed (its file deleted just before). A VM that hands its free memory back to
    the host (virtio-balloon free page reporting) pays a host fault on every page it takes
    fresh, so a log that grows, as the batch row's does, is written at the first rate (the
    ceiling writes nothing); a machine without that shows two close figures."""
    block, rates = bytes(1 << 20), []
    for _ in range(2):
        fd, path = tempfile.mkstemp(dir=directory, prefix="busd-bench-probe-")
        try:
            started = time.perf_counter()
            for _ in range(PROBE_BYTES // len(block)):
                os.write(fd, block)
            rates.append(PROBE_BYTES / (time.perf_counter() - started) / 1e6)
        finally:
            os.close(fd)
            os.unlink(path)
    return (f"page-cache writes: {rates[0]:,.0f} MB/s into the memory the kernel gave, "
            f"{rates[1]:,.0f} MB/s into pages just freed")


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def show_load(load: list[float]) -> str:
    return " ".join(f"{x:.2f}" for x in load)


def cpu_ticks() -> dict[int, tuple[int, int]]:
    """(busy, total) clock ticks of every CPU since boot, from /proc/stat; busy is all but
    idle and iowait, so steal (the hypervisor running someone else) counts as busy."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *fields = line.split()
                t = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
                out[int(name[3:])] = (sum(t) - t[3] - t[4], sum(t))
    return out


def children_cpu() -> float:
    """CPU seconds of this process's finished children (wrk runs)."""
    import resource
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuUse:
    """One run, in fractions of the CPUs' capacity: how busy the server CPUs and the client
    CPUs were with anyone's work, and how much of it was the server process, and this
    process with wrk. Busy minus ours is the neighbours (and interrupts)."""

    seconds: float
    server_cpus: float
    server: float
    client_cpus: float
    client: float


def meter(args, pid: int):
    """Starts measuring CPU use; the function it returns gives the `CpuUse` since."""
    ticks, t0 = cpu_ticks(), time.perf_counter()
    server0, client0 = cpu_seconds(pid), time.process_time() + children_cpu()

    def stop() -> CpuUse:
        now, wall = cpu_ticks(), time.perf_counter() - t0

        def busy(cpus: list[int]) -> float:
            total = sum(now[c][1] - ticks[c][1] for c in cpus)
            return sum(now[c][0] - ticks[c][0] for c in cpus) / total if total else 0.0

        client = time.process_time() + children_cpu() - client0
        return CpuUse(wall, busy(args.server_cpus),
                      (cpu_seconds(pid) - server0) / wall / len(args.server_cpus),
                      busy(args.client_cpus), client / wall / len(args.client_cpus))

    return stop


# --------------------------------------------------------------------------- sections

def run_wrk(url: str, body: bytes, conns: int, threads: int, duration: str) -> tuple[float, str]:
    OUT.mkdir(parents=True, exist_ok=True)
    script = OUT / f"wrk-{os.getpid()}.lua"
    script.write_text('wrk.method = "POST"\n'
                      'wrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = [==[{body.decode()}]==]\n")
    try:
        p = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}", "--timeout", "5s",
                            "-s", str(script), url], capture_output=True, text=True,
                           timeout=_seconds(duration) + 30)
    finally:
        script.unlink(missing_ok=True)
    m = re.search(r"Requests/sec:\s+([\d.]+)", p.stdout)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({p.returncode}): {p.stdout}\n{p.stderr}")
    problems = []
    for pat in (r"Non-2xx or 3xx responses: \d+", r"Socket errors: [^\n]+"):
        e = re.search(pat, p.stdout)
        if e:
            problems.append(e.group(0))
    return float(m.group(1)), "; ".join(problems)


def _seconds(d: str) -> float:
    m = re.fullmatch(r"([\d.]+)(ms|s|m|h)?", d)
    if not m:
        raise ValueError(f"bad duration {d!r}")
    return float(m.group(1)) * {"ms": 1e-3, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def check_one_post(port: int, body: bytes) -> None:
    """Before loading a server with wrk, one request by hand: a server that answers 400
    would otherwise look very fast."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(post_request(body))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data.startswith(b"HTTP/1.1 202"):
        raise RuntimeError(f"POST answered {data[:300]!r}, expected 202")


Target = tuple[str, Server]  # (column, server)


async def rounds(args, targets: list[Target], rows: list[Row], measure) -> None:
    """Each repeat measures every target once, in turn, so all of them see the same minutes
    of the machine. ``await measure(column, server, run)`` gives one value per row."""
    for r in range(args.repeat):
        for column, srv in targets:
            stop = meter(args, srv.proc.pid)
            values = await measure(column, srv, r)
            cpu = stop()
            for row, v in zip(rows, values, strict=True):
                row.add(column, v, cpu)
            log(f"  run {r + 1}/{args.repeat} {column:8s} "
                + "  ".join(f"{row.fmt(v):>12s} {row.unit}"
                            for row, v in zip(rows, values, strict=True))
                + f"  ({cpu.seconds:.1f}s: server CPUs {cpu.server_cpus:.0%} busy, "
                  f"{column} {cpu.server:.0%}; client CPUs {cpu.client_cpus:.0%} busy, "
                  f"harness+wrk {cpu.client:.0%})")
            await asyncio.sleep(0.5)


async def section_wrk(args, targets: list[Target], body: bytes, conns: int, row: Row,
                      mult: int) -> None:
    problems = set()
    for _, srv in targets:
        check_one_post(srv.port, body)

    async def measure(column: str, srv: Server, _: int) -> tuple[float]:
        rps, problem = await asyncio.to_thread(run_wrk, f"http://127.0.0.1:{srv.port}/", body,
                                               conns, min(args.threads, conns), args.duration)
        if problem:
            problems.add(f"{column}: {problem}")
            log(f"    [{problem}]")
        return (rps * mult,)

    await rounds(args, targets, [row], measure)
    row.notes += sorted(problems)


async def section_catchup(args, targets: list[Target], row: Row) -> None:
    n = args.catchup_events
    for column, srv in targets:
        log(f"  {column}: storing {n:,} events (batches of 1000, 4 connections) ...")
        rate = await bulk_publish(srv.port, n)
        log(f"  {column}: stored at {rate:,.0f} events/s")
        row.notes.append(f"{column} stored at {rate:,.0f} ev/s")
    row.notes.insert(0, f"N={n:,}")
    await asyncio.sleep(1.0)

    async def measure(column: str, srv: Server, r: int) -> tuple[float]:
        t0 = time.perf_counter()
        c = await SSECounter.open(srv.port, "oldest")
        ttfb = time.perf_counter() - t0
        try:
            t1 = await asyncio.wait_for(c.expect(n), max(30.0, n / 5000))
            await asyncio.sleep(0.2)  # duplicates, if any, arrive and are counted
        except TimeoutError:
            raise RuntimeError(f"{column}: catch-up timed out with {c.count:,}/{n:,} events "
                               "received") from None
        finally:
            c.close()
        if c.count != n:
            row.notes.append(f"{column} run {r + 1}: received {c.count:,} events, expected {n:,}")
        log(f"    {c.nbytes / (t1 - t0) / 2**20:,.0f} MiB/s, headers after {ttfb * 1e3:.1f} ms")
        return (n / (t1 - t0),)

    await rounds(args, targets, [row], measure)


async def section_fanout(args, targets: list[Target], row: Row, k: int, m: int,
                         n_subj: int) -> None:
    """k live consumers, all on bench.> (n_subj 0) or consumer i on the literal subject
    bench.s<i mod n_subj>; m events a run, in batches, round-robin over the subjects."""
    batch = 100
    port = targets[0][1].port
    sem = asyncio.Semaphore(50)
    subjects = [b"bench.s%d" % j for j in range(n_subj)]

    async def one(i: int) -> SSECounter:
        async with sem:
            return await SSECounter.open(port, "newest", subjects[i % n_subj].decode()
                                         if n_subj else NS + ".%3E")

    consumers = await asyncio.gather(*(one(i) for i in range(k)))
    pubs = [await HttpClient.connect(port) for _ in range(args.fanout_publishers)]
    pub = pubs[0]
    base = 1
    per_run = m // n_subj if n_subj else m  # events each consumer gets per run
    row.notes.append(f"{k:,} consumers on " + (f"{n_subj:,} distinct subjects" if n_subj
                                             else f"{NS}.>")
                     + f", M={m:,} events in batches of {batch} over {len(pubs)} connections, "
                     f"{args.fanout_window} in flight on each")
    try:
        # Warm-up: one event every consumer must see, so every subscription is live.
        for warm in ([batch_body(len(subjects[j:j + batch]), subjects[j:j + batch])
                      for j in range(0, n_subj, batch)] or [EVENT]):
            status, body = await pub.request(post_request(warm))
            if status != 202:
                raise RuntimeError(f"publish answered {status}: {body[:200]!r}")
        await asyncio.wait_for(asyncio.gather(*(c.expect(1) for c in consumers)), 10)
        reqs = [post_request(batch_body(batch, [subjects[(b * batch + j) % n_subj]
                                                for j in range(batch)] if n_subj else None))
                for b in range(m // batch if n_subj else 1)]

        async def measure(column: str, srv: Server, r: int) -> tuple[float]:
            nonlocal base
            base += per_run
            waits = [c.expect(base) for c in consumers]
            t0 = time.perf_counter()
            await asyncio.gather(*(pipelined(c, [reqs[b % len(reqs)] for b in
                                                 range(i, m // batch, len(pubs))])
                                   for i, c in enumerate(pubs)))
            tpub = time.perf_counter() - t0
            try:
                ends = await asyncio.wait_for(asyncio.gather(*waits), max(30.0, k * m / 20000))
            except TimeoutError:
                got = sorted(c.count - (base - per_run) for c in consumers)
                raise RuntimeError(f"fan-out timed out: per-consumer received min {got[0]:,} "
                                   f"max {got[-1]:,} of {per_run:,}") from None
            log(f"    publish took {tpub:.2f}s, last consumer done after {max(ends) - t0:.2f}s, "
                f"first after {min(ends) - t0:.2f}s")
            return (k * per_run / (max(ends) - t0),)

        async def pipelined(c: HttpClient, todo: list[bytes]) -> None:
            """Send todo on c, `--fanout-window` requests in flight: the publisher's round
            trips must not be what the row measures."""
            in_flight: deque[asyncio.Future] = deque()

            async def answered() -> None:
                status, body = await in_flight.popleft()
                if status != 202:
                    raise RuntimeError(f"batch publish answered {status}: {body[:200]!r}")

            for req in todo:
                in_flight.append(asyncio.ensure_future(c.request(req)))
                if len(in_flight) >= args.fanout_window:
                    await answered()
            while in_flight:
                await answered()

        await rounds(args, targets, [row], measure)
        over = [c.count - base for c in consumers if c.count != base]
        if over:
            row.notes.append(f"{len(over)} consumers got an unexpected count ({over[:5]}…)")
    finally:
        for c in (*pubs, *consumers):
            c.close()


async def section_latency(args, targets: list[Target], p50: Row, p99: Row, p999: Row) -> None:
    rate, dur, warm = args.latency_rate, args.latency_duration, 0.5
    total = int(rate * dur)
    request_head = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n")
    tmpl = (b'{"id":"","subject":"bench.lat","created_at":"0001-01-01T00:00:00Z",'
            b'"payload":{"t":%d,"pad":"0123456789abcdef"}}')
    interval = 1e9 / rate
    p50.notes.append(f"{rate:,}/s for {dur:g}s, first {warm}s dropped, single-event POSTs "
                     "pipelined on 1 conn")

    async def measure(column: str, srv: Server, r: int) -> tuple[float, float, float]:
        run = f"{column} run {r + 1}"
        _, cons = await asyncio.get_running_loop().create_connection(
            lambda: SSELatency(sse_request("newest")), "127.0.0.1", srv.port)
        await asyncio.wait_for(cons.headers, 10)
        pub = await HttpClient.connect(srv.port)
        # warm-up event, also proves the subscription is live before timing starts
        await pub.request(post_request(b'{"id":"","subject":"bench.lat","created_at":'
                                       b'"0001-01-01T00:00:00Z","payload":{"t":0,"pad":"warm"}}'))
        await asyncio.wait_for(cons.expect(1), 10)
        cons.samples.clear()
        gc.collect()
        gc.disable()  # no collector pauses in the client while it stamps times
        try:
            t0 = time.perf_counter_ns()
            sent, max_lag = 0, 0
            write, pc = pub.transport.write, time.perf_counter_ns
            while sent < total:
                now = pc()
                due = min(total, int((now - t0) / interval) + 1)
                max_lag = max(max_lag, due - sent)
                while sent < due:
                    body = tmpl % pc()
                    pub.waiters.append(None)
                    write(request_head % len(body) + body)
                    sent += 1
                await asyncio.sleep(0.0002)
            send_s = (pc() - t0) / 1e9
            try:
                await asyncio.wait_for(cons.expect(total + 1), 10)
            except TimeoutError:
                p99.notes.append(f"{run}: consumer received {cons.count - 1:,}/{total:,}")
            deadline = time.monotonic() + 10
            while pub.done < total + 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if pub.statuses.get(202, 0) != total + 1:
                p99.notes.append(f"{run}: publish answers {pub.statuses} ({pub.first_error})")
        finally:
            gc.enable()
            cons.close()
            pub.close()
        cut = t0 + int(warm * 1e9)
        per_s: dict[int, list[int]] = {}
        for tx, rx in cons.samples:
            per_s.setdefault((tx - t0) // 10**9, []).append(rx - tx)
        log("    p99 per second (µs): " + " ".join(
            f"{sorted(v)[int(len(v) * 0.99)] / 1e3:,.0f}" for _, v in sorted(per_s.items())))
        lat = sorted(rx - tx for tx, rx in cons.samples if tx >= cut)
        if len(lat) < 100:
            raise RuntimeError(f"{run}: latency: only {len(lat)} samples parsed "
                               f"({cons.count} events seen)")
        if len(cons.samples) != cons.count - 1:
            p99.notes.append(f"{run}: parsed {len(cons.samples):,} timestamps of "
                             f"{cons.count - 1:,} events")
        q50, q99, q999 = (lat[min(len(lat) - 1, int(len(lat) * q))] / 1e3
                          for q in (0.5, 0.99, 0.999))
        stall_ms = max_lag * 1e3 / rate
        if stall_ms > 10:
            p99.notes.append(f"{run}: the bench client itself stalled ~{stall_ms:,.0f} ms (max "
                             f"burst {max_lag}): machine busy, this run's tail is not the "
                             "server's alone")
        log(f"    p90 {lat[int(len(lat) * 0.9)] / 1e3:,.0f} µs  "
            f"p99.9 {lat[int(len(lat) * 0.999)] / 1e3:,.0f} µs  max {lat[-1] / 1e3:,.0f} µs  "
            f"({len(lat):,} samples, sent {total:,} in {send_s:.2f}s = {total / send_s:,.0f}/s, "
            f"max burst {max_lag})")
        return q50, q99, q999

    await rounds(args, targets, [p50, p99, p999], measure)


def stalled_consumer(port: int) -> socket.socket:
    """A subscriber with a tiny receive buffer that reads its headers and then never reads."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(sse_request("newest"))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(1024)
        if not chunk:
            raise ConnectionError(f"stalled consumer: closed before headers: {data[:200]!r}")
        data += chunk
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"stalled consumer refused: {data[:300]!r}")
    return s


async def section_memory(args, srv: Server, per_conn: Row, stall: Row, control: Row) -> None:
    port, idle_n, events = srv.port, args.idle_conns, args.stall_events
    await bulk_publish(port, 10_000)  # warm the code paths
    await asyncio.sleep(1.0)
    rss0 = srv.rss_kib()
    sem = asyncio.Semaphore(50)

    async def one() -> SSECounter:
        async with sem:
            return await SSECounter.open(port, "newest")

    idle = await asyncio.gather(*(one() for _ in range(idle_n)))
    await asyncio.sleep(1.0)
    rss1 = srv.rss_kib()
    per_conn.add("busd", (rss1 - rss0) / idle_n)
    log(f"  RSS {rss0 / 1024:,.1f} MiB idle -> {rss1 / 1024:,.1f} MiB with {idle_n:,} idle SSE "
        f"connections = {(rss1 - rss0) / idle_n:,.1f} KiB each")
    per_conn.notes.append(f"{idle_n:,} idle SSE conns; RSS {rss0 / 1024:,.1f} → "
                          f"{rss1 / 1024:,.1f} MiB")
    for c in idle:
        c.close()
    await asyncio.sleep(1.5)

    async def publish_and_watch() -> tuple[int, int, int]:
        before = srv.rss_kib()
        peak = [before]

        async def sample() -> None:
            while True:
                peak[0] = max(peak[0], srv.rss_kib())
                await asyncio.sleep(0.05)

        sampler = asyncio.ensure_future(sample())
        try:
            await bulk_publish(port, events, batch=1000, conns=1)
            await asyncio.sleep(1.5)
        finally:
            sampler.cancel()
        after = srv.rss_kib()
        return before, max(peak[0], after), after

    b, pk, a = await publish_and_watch()
    control.add("busd", (a - b) / 1024)
    log(f"  control (no consumer): {events:,} events, RSS {b / 1024:,.1f} → {a / 1024:,.1f} MiB "
        f"(peak {pk / 1024:,.1f})")
    control.notes.append(f"{events:,} events, no consumer; peak +{(pk - b) / 1024:,.1f} MiB")
    sock = stalled_consumer(port)
    try:
        await asyncio.sleep(0.5)
        b, pk, a = await publish_and_watch()
        anon = srv.rss_kib("RssAnon")
    finally:
        sock.close()
    stall.add("busd", (a - b) / 1024)
    log(f"  stalled consumer: {events:,} events, RSS {b / 1024:,.1f} → {a / 1024:,.1f} MiB "
        f"(peak {pk / 1024:,.1f}, RssAnon {anon / 1024:,.1f})")
    stall.notes.append(f"{events:,} events, 1 consumer never reading (SO_RCVBUF 4 KiB); "
                       f"peak +{(pk - b) / 1024:,.1f} MiB")


# --------------------------------------------------------------------------- main

def parse_args(argv=None):
    args = parse(__doc__, argv, repeat=int, threads=int, connections=int, batch_connections=int,
                 batch_size=int, catchup_events=int, fanout_consumers=int, fanout_events=int,
                 fanout_publishers=int, fanout_window=int, subjects=int, subjects_events=int,
                 latency_rate=int, latency_duration=float, idle_conns=int, stall_events=int,
                 server_cpus=cpu_list, client_cpus=cpu_list, data_dir=Path, out=Path, json=Path)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in args.only if s not in SECTIONS]
    if bad:
        usage_error(f"--only: unknown section(s) {bad}; choose from {SECTIONS}")
    shared = sorted(set(args.server_cpus) & set(args.client_cpus))
    if shared:
        usage_error(f"--server-cpus and --client-cpus share CPUs {shared}: the load generator "
                    "would compete with the server it measures")
    allowed = os.sched_getaffinity(0)
    for flag, cpus in (("--server-cpus", args.server_cpus), ("--client-cpus", args.client_cpus)):
        if not set(cpus) <= allowed:
            usage_error(f"{flag}: CPUs {cpus} are not all among this process's {sorted(allowed)}")
    if not re.fullmatch(r"[\w.-]+", args.peer_name) or args.peer_name in ("busd", "ceiling"):
        usage_error(f"--peer-name: {args.peer_name!r} must be letters, digits, '.', '_' or '-', "
                    "and neither busd nor ceiling")
    if args.busd_cmd is None:
        args.busd_cmd = [*BUSD, "--namespaces", NS, "--fsync", "interval"]
    args.data_dir = args.data_dir or Path(tempfile.gettempdir())
    args.out = args.out or OUT / "latest.md"
    args.json = args.json or OUT / "latest.json"
    args.fanout_events -= args.fanout_events % 100
    if args.fanout_publishers < 1 or args.fanout_window < 1:
        usage_error("--fanout-publishers and --fanout-window: give at least 1")
    if (args.subjects < 1 or args.subjects_events < 100 or args.subjects_events % 100
            or args.subjects_events % args.subjects):
        usage_error(f"--subjects-events: {args.subjects_events} must be a multiple of 100 and "
                    f"of --subjects ({args.subjects}), which must be at least 1")
    return args


def shown(template: list[str] | str) -> str:
    """A server command as it will run, for the header."""
    text = template if isinstance(template, str) else " ".join(template)
    return text.replace("{python}", sys.executable)


def run_section(sec: str, args, ceiling: Server | None, rows: list[Row]) -> None:
    """Starts the section's own servers (a fresh busd, and the peer where it has a column)
    and adds the section's rows to ``rows`` before measuring, so a failed section shows."""
    specs = [("busd", args.busd_cmd)]
    if args.peer_cmd and sec in PEER_SECTIONS:
        specs.append((args.peer_name, args.peer_cmd))
    with ExitStack() as stack:
        targets = [(column, stack.enter_context(Server(column, cmd, args.data_dir,
                                                       args.server_cpus)))
                   for column, cmd in specs]
        if sec in ("publish", "batch"):
            targets.insert(1, ("ceiling", ceiling))
        elif sec == "latency":  # the floor: the bare stack relaying each POST to the stream
            targets.insert(1, ("ceiling", stack.enter_context(
                Server("ceiling", args.ceiling_cmd + " --relay", None, args.server_cpus))))
        if sec == "publish":
            row = Row("publish", f"publish, 1 event/POST, {args.connections} conns", "req/s")
            rows.append(row)
            asyncio.run(section_wrk(args, targets, EVENT, args.connections, row, 1))
        elif sec == "batch":
            row = Row("batch", f"batch publish, {args.batch_size} events/POST, "
                               f"{args.batch_connections} conns", "events/s")
            rows.append(row)
            asyncio.run(section_wrk(args, targets, batch_body(args.batch_size),
                                    args.batch_connections, row, args.batch_size))
        elif sec == "catchup":
            row = Row("catchup", "catch-up SSE, 1 consumer from oldest", "events/s")
            rows.append(row)
            asyncio.run(section_catchup(args, targets, row))
        elif sec == "fanout":
            row = Row("fanout", f"live fan-out, {args.fanout_consumers} SSE consumers on "
                                f"{NS}.>", "deliveries/s")
            rows.append(row)
            asyncio.run(section_fanout(args, targets, row, args.fanout_consumers,
                                       args.fanout_events, 0))
        elif sec == "subjects":  # in the fan-out chart: a row of the same group
            row = Row("fanout", f"live fan-out, {args.subjects:,} SSE consumers on "
                                f"{args.subjects:,} distinct subjects", "deliveries/s")
            rows.append(row)
            asyncio.run(section_fanout(args, targets, row, args.subjects,
                                       args.subjects_events, args.subjects))
        elif sec == "latency":
            p50 = Row("latency", f"publish→receive p50 @ {args.latency_rate:,}/s", "µs",
                      paced=True)
            p99 = Row("latency", f"publish→receive p99 @ {args.latency_rate:,}/s", "µs",
                      paced=True)
            p999 = Row("latency", f"publish→receive p99.9 @ {args.latency_rate:,}/s", "µs",
                       paced=True)
            rows += [p50, p99, p999]
            asyncio.run(section_latency(args, targets, p50, p99, p999))
        elif sec == "memory":
            per = Row("memory-connection", "RSS per idle SSE connection", "KiB", digits=1)
            ctl = Row("memory-growth", "RSS growth, publish with no consumer", "MiB", digits=1)
            st = Row("memory-growth", "RSS growth, publish past a stalled consumer", "MiB",
                     digits=1)
            rows += [per, ctl, st]
            asyncio.run(section_memory(args, targets[0][1], per, st, ctl))


def main(argv=None) -> int:
    args = parse_args(argv)
    uvloop.install()
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    except (ImportError, ValueError, OSError):
        pass
    info = machine()  # before pinning: its nproc is the machine's, not the client CPUs'
    if "batch" in args.only:
        info.append(page_cache_writes(args.data_dir))
    os.sched_setaffinity(0, args.client_cpus)  # wrk and every thread started later inherit it
    info.append(f"pinning: servers on CPUs {args.server_cpus} (taskset -c), this process and "
                f"wrk on CPUs {cpus_allowed()}, wrk -t{args.threads}")
    start_load, started = loadavg(), time.strftime("%Y-%m-%d %H:%M:%S")
    columns = ["busd", "ceiling"] + ([args.peer_name] if args.peer_cmd else [])
    commands = {"busd": shown(args.busd_cmd), "ceiling": shown(args.ceiling_cmd)}
    if args.peer_cmd:
        commands[args.peer_name] = shown(args.peer_cmd)
    command = shlex.join([sys.executable, "perf/bench.py",
                          *(sys.argv[1:] if argv is None else argv)])
    print("busd bench —", started, flush=True)
    for line in info:
        print("  " + line)
    for column, cmd in commands.items():
        print(f"  {column}: {cmd}")
    print(f"  repeats: {args.repeat}, sections: {','.join(args.only)}", flush=True)

    rows: list[Row] = []
    failures: list[str] = []
    sections: list[dict] = []
    need_wrk = {"publish", "batch"} & set(args.only)
    if need_wrk and not shutil.which("wrk"):
        print("wrk not found (apt-get install -y wrk); skipping publish and batch", flush=True)
        failures += [f"{s}: wrk missing" for s in sorted(need_wrk)]
        args.only = [s for s in args.only if s not in need_wrk]

    ceiling = None
    if {"publish", "batch"} & set(args.only):
        ceiling = Server("ceiling", args.ceiling_cmd, None, args.server_cpus).start()
    try:
        for sec in args.only:
            before, t0, error = loadavg(), time.monotonic(), None
            log(f"[{sec}]  loadavg before {show_load(before)}")
            try:
                run_section(sec, args, ceiling, rows)
            except Exception as e:  # one broken section must not hide the others
                error = f"{type(e).__name__}: {e}"
                failures.append(f"{sec}: {error}")
                log(f"  FAILED {sec}: {error}")
            after = loadavg()
            log(f"  loadavg after {show_load(after)}")
            sections.append({"name": sec, "loadavg_before": before,
                             "loadavg_after": after,
                             "seconds": round(time.monotonic() - t0, 1), "error": error})
    finally:
        if ceiling:
            ceiling.stop()

    print()
    print(table_text(rows, columns))
    if failures:
        print("\nFAILED sections:")
        for f in failures:
            print("  " + f.splitlines()[0][:300])
    end_load = loadavg()
    print(f"  loadavg at start {show_load(start_load)}, at end {show_load(end_load)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    md = [f"# busd bench — {started}", "", f"- command: `{command}`"]
    md += [f"- {line}" for line in info]
    md += [f"- {column}: `{cmd}`" for column, cmd in commands.items()]
    md += [f"- repeats: {args.repeat} (medians; ratio = busd median / other median, same run)",
           f"- loadavg at end {show_load(end_load)}", "", table_md(rows, columns), ""]
    if failures:
        md += ["## Failed sections", ""] + [f"- {f.splitlines()[0][:300]}" for f in failures] + [""]
    args.out.write_text("\n".join(md))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command,
        "machine": info, "servers": commands, "columns": columns, "repeat": args.repeat,
        "pinning": {"server_cpus": args.server_cpus, "client_cpus": args.client_cpus,
                    "wrk_threads": args.threads},
        "loadavg": {"start": start_load, "end": end_load}, "sections": sections,
        "rows": [r.as_json(columns) for r in rows], "failures": failures,
    }, indent=1, ensure_ascii=False) + "\n")
    print(f"\nwritten {args.out} and {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
