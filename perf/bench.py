"""busd benchmark harness: one command, starts the servers itself, prints a table.

    /work/venv/bin/python perf/bench.py                       # everything, 3 repeats
    /work/venv/bin/python perf/bench.py --only publish,catchup --repeat 5
    /work/venv/bin/python perf/bench.py --busd-cmd "{python} perf/ceiling.py --port {port}" --only publish

Sections (see perf/README.md for what each one measures):
  publish   wrk, 32 keep-alive connections, one ~40-byte event per POST: busd vs ceiling
  batch     wrk, 8 connections, 100 events per POST (JSON array): busd vs ceiling
  catchup   N events stored first, then one SSE consumer from start=oldest: events/s
  fanout    100 live SSE consumers on bench.>, M events published in batches: deliveries/s
  latency   one publisher at a fixed rate, one SSE consumer: publish->receive p50/p99
  memory    RSS per idle SSE connection; RSS growth under a consumer that never reads

busd is started fresh (new empty --path) for every section; every load is loopback only
with fixed counts/durations and per-step timeouts, so the run always ends by itself.
The clients are raw asyncio (uvloop) protocols that count ``\\nevent: msg\\n`` markers
with bytes.count, so the client is as cheap as possible.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httptools
import uvloop

PERF = Path(__file__).resolve().parent
REPO = PERF.parent
OUT = PERF / "out"
SECTIONS = ("publish", "batch", "catchup", "fanout", "latency", "memory")

MARK = b"\nevent: msg\n"
ML = len(MARK) - 1
NS = "bench"
# ~40-byte payload, Go-SDK-shaped bodies (see shared/compat/go-sdk-wire.json).
PAYLOAD = b'{"n":12345678,"user":"user-42","ok":true}'
EVENT = (b'{"id":"","subject":"bench.created","created_at":"0001-01-01T00:00:00Z","payload":'
         + PAYLOAD + b"}")
BATCH_ITEM = (b'{"id":"","key":"","subject":"bench.created","payload":' + PAYLOAD
              + b',"created_at":"0001-01-01T00:00:00Z","index":0}')


def batch_body(n: int) -> bytes:
    return b"[" + b",".join([BATCH_ITEM] * n) + b"]"


def post_request(body: bytes) -> bytes:
    return (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: busd-bench\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body


def sse_request(start: str, subject: str = NS + ".%3E") -> bytes:
    return (f"GET /?subject={subject}&start={start} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "User-Agent: busd-bench\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
            ).encode()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- servers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess we started ourselves; stopped by its own pid only."""

    def __init__(self, name: str, template: list[str] | str, data_root: Path | None) -> None:
        self.name = name
        self.port = free_port()
        self.tmp = tempfile.mkdtemp(prefix=f"busd-bench-{name}-", dir=data_root) if data_root else None
        subst = {"python": sys.executable, "port": str(self.port),
                 "addr": f"127.0.0.1:{self.port}", "path": self.tmp or ""}
        if isinstance(template, str):
            self.cmd = [a.format(**subst) for a in shlex.split(template)]
        else:
            self.cmd = [a.format(**subst) for a in template]
        OUT.mkdir(parents=True, exist_ok=True)
        self.logpath = OUT / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> Server:
        logf = open(self.logpath, "ab")
        logf.write(f"\n=== {time.strftime('%H:%M:%S')} {shlex.join(self.cmd)}\n".encode())
        logf.flush()
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        logf.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                tail = self.logpath.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before "
                                   f"accepting connections:\n{tail}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.name} did not accept connections within {timeout}s")
                time.sleep(0.05)

    def rss_kib(self, key: str = "VmRSS") -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        return 0

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                log(f"  {self.name} (pid {self.proc.pid}) ignored SIGTERM for 10s: SIGKILL")
                self.proc.kill()
                self.proc.wait(5)
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


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
    name: str
    unit: str
    busd: list[float] = field(default_factory=list)
    ceiling: list[float] = field(default_factory=list)
    note: str = ""
    digits: int = 0

    @staticmethod
    def med(v: list[float]) -> float | None:
        return statistics.median(v) if v else None

    def fmt(self, v: float | None) -> str:
        if v is None:
            return "–"
        return f"{v:,.{self.digits}f}"

    def cells(self) -> list[str]:
        b, c = self.med(self.busd), self.med(self.ceiling)
        ratio = f"{b / c:.2f}" if b is not None and c else "–"
        runs = " ".join(self.fmt(x) for x in self.busd)
        if self.ceiling:
            runs += " | " + " ".join(self.fmt(x) for x in self.ceiling)
        return [f"{self.name} ({self.unit})", self.fmt(b), self.fmt(c), ratio, runs, self.note]


HEAD = ["benchmark", "busd (median)", "ceiling (median)", "busd/ceiling", "runs busd | ceiling", "notes"]


def table_text(rows: list[Row]) -> str:
    data = [HEAD] + [r.cells() for r in rows]
    w = [max(len(r[i]) for r in data) for i in range(len(HEAD))]
    lines = []
    for k, r in enumerate(data):
        lines.append("  ".join(c.ljust(w[i]) if i == 0 or i >= 4 else c.rjust(w[i])
                               for i, c in enumerate(r)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * x for x in w))
    return "\n".join(lines)


def table_md(rows: list[Row]) -> str:
    out = ["| " + " | ".join(h.replace("|", "\\|") for h in HEAD) + " |", "|" + "---|" * len(HEAD)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r.cells()) + " |" for r in rows]
    return "\n".join(out)


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
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    wrk = shutil.which("wrk")
    wrkv = subprocess.run([wrk, "--version"], capture_output=True, text=True).stdout.split("[")[0].strip() if wrk else "missing"
    return [
        f"nproc {affinity} (cpu_count {os.cpu_count()}), CPU: {model}",
        f"Python {platform.python_version()} ({sys.executable}), uvloop {uvloop.__version__}, "
        f"httptools {httptools.__version__}, {wrkv}",
        f"kernel {platform.release()}, loadavg at start {load}",
    ]


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


def section_wrk(args, ceiling: Server, body: bytes, conns: int, row: Row, mult: int) -> None:
    notes = set()
    with Server("busd", args.busd_cmd, args.data_dir) as busd:
        for srv in (busd, ceiling):
            check_one_post(srv.port, body)
        for r in range(args.repeat):
            for srv, dest in ((busd, row.busd), (ceiling, row.ceiling)):
                rps, problems = run_wrk(f"http://127.0.0.1:{srv.port}/", body, conns,
                                        min(args.threads, conns), args.duration)
                if problems:
                    notes.add(f"{srv.name}: {problems}")
                dest.append(rps * mult)
                log(f"  run {r + 1}/{args.repeat} {srv.name:8s} {rps * mult:12,.0f} {row.unit}"
                    + (f"  [{problems}]" if problems else ""))
                time.sleep(0.5)
    row.note = "; ".join(sorted(notes))


async def section_catchup(args, port: int, row: Row) -> None:
    n = args.catchup_events
    log(f"  storing {n:,} events (batches of 1000, 4 connections) ...")
    rate = await bulk_publish(port, n)
    log(f"  stored at {rate:,.0f} events/s")
    await asyncio.sleep(1.0)
    extra = []
    for r in range(args.repeat):
        t0 = time.perf_counter()
        c = await SSECounter.open(port, "oldest")
        ttfb = time.perf_counter() - t0
        try:
            t1 = await asyncio.wait_for(c.expect(n), max(30.0, n / 5000))
        except TimeoutError:
            raise RuntimeError(f"catch-up timed out with {c.count:,}/{n:,} events received")
        await asyncio.sleep(0.2)
        if c.count != n:
            extra.append(f"run {r + 1}: received {c.count:,} events, expected {n:,}")
        c.close()
        eps = n / (t1 - t0)
        row.busd.append(eps)
        log(f"  run {r + 1}/{args.repeat} {eps:12,.0f} events/s  ({c.nbytes / (t1 - t0) / 2**20:,.0f} MiB/s,"
            f" headers after {ttfb * 1e3:.1f} ms)")
    row.note = "; ".join([f"N={n:,}, stored at {rate:,.0f} ev/s"] + extra)


async def section_fanout(args, port: int, row: Row) -> None:
    k, m, batch = args.fanout_consumers, args.fanout_events, 100
    consumers = []
    sem = asyncio.Semaphore(50)

    async def one() -> SSECounter:
        async with sem:
            return await SSECounter.open(port, "newest")

    consumers = await asyncio.gather(*(one() for _ in range(k)))
    pub = await HttpClient.connect(port)
    try:
        # Warm-up: one event every consumer must see, so every subscription is live.
        status, body = await pub.request(post_request(EVENT))
        if status != 202:
            raise RuntimeError(f"publish answered {status}: {body[:200]!r}")
        await asyncio.wait_for(asyncio.gather(*(c.expect(1) for c in consumers)), 10)
        base = 1
        req = post_request(batch_body(batch))
        for r in range(args.repeat):
            base += m
            waits = [c.expect(base) for c in consumers]
            t0 = time.perf_counter()
            for _ in range(m // batch):
                status, body = await pub.request(req)
                if status != 202:
                    raise RuntimeError(f"batch publish answered {status}: {body[:200]!r}")
            tpub = time.perf_counter() - t0
            try:
                ends = await asyncio.wait_for(asyncio.gather(*waits), max(30.0, k * m / 20000))
            except TimeoutError:
                got = sorted(c.count - (base - m) for c in consumers)
                raise RuntimeError(f"fan-out timed out: per-consumer received min {got[0]:,} "
                                   f"max {got[-1]:,} of {m:,}")
            el = max(ends) - t0
            row.busd.append(k * m / el)
            log(f"  run {r + 1}/{args.repeat} {k * m / el:12,.0f} deliveries/s  (publish took "
                f"{tpub:.2f}s, last consumer done after {el:.2f}s, first after {min(ends) - t0:.2f}s)")
            await asyncio.sleep(0.5)
        over = [c.count - base for c in consumers if c.count != base]
        if over:
            row.note = f"{len(over)} consumers got an unexpected count ({over[:5]}…)"
    finally:
        pub.close()
        for c in consumers:
            c.close()
    row.note = f"{k} consumers, M={m:,} events in batches of {batch}" + (f"; {row.note}" if row.note else "")


async def section_latency(args, port: int, p50: Row, p99: Row) -> None:
    rate, dur, warm = args.latency_rate, args.latency_duration, 0.5
    total = int(rate * dur)
    notes = []
    for r in range(args.repeat):
        _, cons = await asyncio.get_running_loop().create_connection(
            lambda: SSELatency(sse_request("newest")), "127.0.0.1", port)
        await asyncio.wait_for(cons.headers, 10)
        pub = await HttpClient.connect(port)
        # warm-up event, also proves the subscription is live before timing starts
        await pub.request(post_request(b'{"id":"","subject":"bench.lat","created_at":"0001-01-01T00:00:00Z",'
                                       b'"payload":{"t":0,"pad":"warm"}}'))
        await asyncio.wait_for(cons.expect(1), 10)
        cons.samples.clear()
        head = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        tmpl = (b'{"id":"","subject":"bench.lat","created_at":"0001-01-01T00:00:00Z",'
                b'"payload":{"t":%d,"pad":"0123456789abcdef"}}')
        interval = 1e9 / rate
        gc.collect()
        gc.disable()  # no collector pauses in the client while it stamps times
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
                write(head % len(body) + body)
                sent += 1
            await asyncio.sleep(0.0002)
        send_s = (pc() - t0) / 1e9
        try:
            await asyncio.wait_for(cons.expect(total + 1), 10)
        except TimeoutError:
            notes.append(f"run {r + 1}: consumer received {cons.count - 1:,}/{total:,}")
        deadline = time.monotonic() + 10
        while pub.done < total + 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if pub.statuses.get(202, 0) != total + 1:
            notes.append(f"run {r + 1}: publish answers {pub.statuses} ({pub.first_error})")
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
            raise RuntimeError(f"latency: only {len(lat)} samples parsed ({cons.count} events seen)")
        if len(cons.samples) != cons.count - 1:
            notes.append(f"run {r + 1}: parsed {len(cons.samples):,} timestamps of {cons.count - 1:,} events")
        q50, q99 = lat[len(lat) // 2] / 1e3, lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1e3
        stall_ms = max_lag * 1e3 / rate
        if stall_ms > 10:
            notes.append(f"run {r + 1}: the bench client itself stalled ~{stall_ms:,.0f} ms "
                         f"(max burst {max_lag}): machine busy, this run's tail is not busd's alone")
        p50.busd.append(q50)
        p99.busd.append(q99)
        log(f"  run {r + 1}/{args.repeat} p50 {q50:,.0f} µs  p90 {lat[int(len(lat) * 0.9)] / 1e3:,.0f} µs  "
            f"p99 {q99:,.0f} µs  p99.9 {lat[int(len(lat) * 0.999)] / 1e3:,.0f} µs  max {lat[-1] / 1e3:,.0f} µs  "
            f"({len(lat):,} samples, sent {total:,} in {send_s:.2f}s = {total / send_s:,.0f}/s, "
            f"max burst {max_lag})")
        await asyncio.sleep(0.5)
    p50.note = f"{rate:,}/s for {dur:g}s, first {warm}s dropped, single-event POSTs pipelined on 1 conn"
    p99.note = "; ".join(notes)


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
    per_conn.busd.append((rss1 - rss0) / idle_n)
    log(f"  RSS {rss0 / 1024:,.1f} MiB idle -> {rss1 / 1024:,.1f} MiB with {idle_n:,} idle SSE "
        f"connections = {(rss1 - rss0) / idle_n:,.1f} KiB each")
    per_conn.note = f"{idle_n:,} idle SSE conns; RSS {rss0 / 1024:,.1f} → {rss1 / 1024:,.1f} MiB"
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
    control.busd.append((a - b) / 1024)
    log(f"  control (no consumer): {events:,} events, RSS {b / 1024:,.1f} → {a / 1024:,.1f} MiB "
        f"(peak {pk / 1024:,.1f})")
    control.note = f"{events:,} events, no consumer; peak +{(pk - b) / 1024:,.1f} MiB"
    sock = stalled_consumer(port)
    try:
        await asyncio.sleep(0.5)
        b, pk, a = await publish_and_watch()
        anon = srv.rss_kib("RssAnon")
    finally:
        sock.close()
    stall.busd.append((a - b) / 1024)
    log(f"  stalled consumer: {events:,} events, RSS {b / 1024:,.1f} → {a / 1024:,.1f} MiB "
        f"(peak {pk / 1024:,.1f}, RssAnon {anon / 1024:,.1f})")
    stall.note = (f"{events:,} events, 1 consumer never reading (SO_RCVBUF 4 KiB); "
                  f"peak +{(pk - b) / 1024:,.1f} MiB")


# --------------------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})")
    ap.add_argument("--repeat", "-R", type=int, default=3, help="repeats per measurement (median reported)")
    ap.add_argument("--duration", default="5s", help="wrk duration per run (publish, batch)")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--connections", type=int, default=32, help="publish: wrk connections")
    ap.add_argument("--batch-connections", type=int, default=8, help="batch: wrk connections")
    ap.add_argument("--batch-size", type=int, default=100, help="batch: events per request")
    ap.add_argument("--catchup-events", type=int, default=500_000, help="catchup: N events stored then read")
    ap.add_argument("--fanout-consumers", type=int, default=100)
    ap.add_argument("--fanout-events", type=int, default=20_000, help="fanout: M events per run (multiple of 100)")
    ap.add_argument("--latency-rate", type=int, default=10_000, help="latency: events/s")
    ap.add_argument("--latency-duration", type=float, default=5.0, help="latency: seconds per run")
    ap.add_argument("--idle-conns", type=int, default=1000, help="memory: idle SSE connections")
    ap.add_argument("--stall-events", type=int, default=200_000, help="memory: events published past a stalled consumer")
    ap.add_argument("--busd-cmd", default=None,
                    help='server under test; placeholders {python} {port} {addr} {path}, e.g. '
                         '"{python} perf/ceiling.py --port {port}" (default: python -m busd server ...)')
    ap.add_argument("--ceiling-cmd", default="{python} perf/ceiling.py --port {port}")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="where the per-section busd --path temp dirs go (default: system temp)")
    ap.add_argument("--out", type=Path, default=OUT / "latest.md")
    args = ap.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in args.only if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {bad}; choose from {SECTIONS}")
    if args.busd_cmd is None:
        args.busd_cmd = ["{python}", "-m", "busd", "server", "--addr", "{addr}", "--path", "{path}",
                         "--namespaces", NS, "--fsync", "interval"]
    if args.data_dir is None:
        args.data_dir = Path(tempfile.gettempdir())
    args.fanout_events -= args.fanout_events % 100
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    uvloop.install()
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    except (ImportError, ValueError, OSError):
        pass
    info = machine()
    busd_cmd = args.busd_cmd if isinstance(args.busd_cmd, str) else " ".join(args.busd_cmd)
    busd_cmd = busd_cmd.replace("{python}", sys.executable)
    ceiling_cmd = args.ceiling_cmd.replace("{python}", sys.executable)
    print("busd bench —", time.strftime("%Y-%m-%d %H:%M:%S"), flush=True)
    for line in info:
        print("  " + line)
    print(f"  busd: {busd_cmd}\n  ceiling: {ceiling_cmd}\n  repeats: {args.repeat}, sections: "
          f"{','.join(args.only)}", flush=True)

    rows: list[Row] = []
    failures: list[str] = []
    need_wrk = {"publish", "batch"} & set(args.only)
    if need_wrk and not shutil.which("wrk"):
        print("wrk not found (apt-get install -y wrk); skipping publish and batch", flush=True)
        failures += [f"{s}: wrk missing" for s in sorted(need_wrk)]
        args.only = [s for s in args.only if s not in need_wrk]

    ceiling = None
    if {"publish", "batch"} & set(args.only):
        ceiling = Server("ceiling", args.ceiling_cmd, None).start()
    try:
        for sec in args.only:
            log(f"[{sec}]  loadavg {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            try:
                if sec == "publish":
                    row = Row(f"publish, 1 event/POST, {args.connections} conns", "req/s")
                    rows.append(row)
                    section_wrk(args, ceiling, EVENT, args.connections, row, 1)
                elif sec == "batch":
                    row = Row(f"batch publish, {args.batch_size} events/POST, {args.batch_connections} conns",
                              "events/s")
                    rows.append(row)
                    section_wrk(args, ceiling, batch_body(args.batch_size), args.batch_connections, row,
                                args.batch_size)
                elif sec == "catchup":
                    row = Row("catch-up SSE, 1 consumer from oldest", "events/s")
                    rows.append(row)
                    with Server("busd", args.busd_cmd, args.data_dir) as srv:
                        asyncio.run(section_catchup(args, srv.port, row))
                elif sec == "fanout":
                    row = Row(f"live fan-out, {args.fanout_consumers} SSE consumers", "deliveries/s")
                    rows.append(row)
                    with Server("busd", args.busd_cmd, args.data_dir) as srv:
                        asyncio.run(section_fanout(args, srv.port, row))
                elif sec == "latency":
                    p50 = Row(f"publish→receive p50 @ {args.latency_rate:,}/s", "µs")
                    p99 = Row(f"publish→receive p99 @ {args.latency_rate:,}/s", "µs")
                    rows += [p50, p99]
                    with Server("busd", args.busd_cmd, args.data_dir) as srv:
                        asyncio.run(section_latency(args, srv.port, p50, p99))
                elif sec == "memory":
                    per = Row("RSS per idle SSE connection", "KiB", digits=1)
                    ctl = Row("RSS growth, publish with no consumer", "MiB", digits=1)
                    st = Row("RSS growth, publish past a stalled consumer", "MiB", digits=1)
                    rows += [per, ctl, st]
                    with Server("busd", args.busd_cmd, args.data_dir) as srv:
                        asyncio.run(section_memory(args, srv, per, st, ctl))
            except Exception as e:  # one broken section must not hide the others
                msg = f"{sec}: {type(e).__name__}: {e}"
                failures.append(msg)
                log("  FAILED " + msg)
    finally:
        if ceiling:
            ceiling.stop()

    text = table_text(rows)
    print()
    print(text)
    if failures:
        print("\nFAILED sections:")
        for f in failures:
            print("  " + f.splitlines()[0][:300])
    print(f"  loadavg at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    md = [f"# busd bench — {time.strftime('%Y-%m-%d %H:%M:%S')}", ""]
    md += [f"- {line}" for line in info]
    md += [f"- busd: `{busd_cmd}`", f"- ceiling: `{ceiling_cmd}`",
           f"- repeats: {args.repeat} (medians; ratio = busd median / ceiling median, same run)", "",
           table_md(rows), ""]
    if failures:
        md += ["## Failed sections", ""] + [f"- {f.splitlines()[0][:300]}" for f in failures] + [""]
    args.out.write_text("\n".join(md))
    print(f"\nwritten {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
