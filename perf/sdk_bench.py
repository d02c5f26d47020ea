"""Python SDK benchmark: busd.Client / AsyncClient against raw sockets, in the same run.

Usage:
  sdk_bench.py [options]

Options:
  -h, --help        Show this help.
  --only LIST       Comma-separated sections [default: sync,threads,async,consume].
  --repeat N        Runs per measurement [default: 3].
  --puts N          Puts per sequential run [default: 5000].
  --events N        consume: stored events read from oldest [default: 200000].
  --busd-cmd CMD    Server under test; placeholders {python} {port} {addr} {path}
                    (default: {python} -m busd server ... --fsync interval).

Examples:
  /work/venv/bin/python perf/sdk_bench.py                    # all sections, 3 repeats
  /work/venv/bin/python perf/sdk_bench.py --only sync,consume --repeat 5

Sections (one fresh busd per section, loopback only, fixed counts, a timeout on each run):
  sync      one thread, sequential single-event puts over one keep-alive connection:
            Client.put vs a raw blocking socket sending pre-built request bytes
            (also http.client and httpx.Client, if installed, for the choice of HTTP layer)
  threads   8 threads publishing through one shared Client vs 8 threads on 8 raw sockets
  async     32 concurrent puts: AsyncClient (32 tasks) vs 32 raw asyncio connections
            (also httpx.AsyncClient, if installed)
  consume   N stored events read from start=oldest: Client.get / AsyncClient.get iterating
            decoded Events vs a raw SSE socket that only counts `event: msg` markers
            (also httpx streaming + the SDK's SSE decoder, if installed)

The raw-socket rows are the baseline: the same server, the same run, a client that does
no work beyond the bytes. "client/raw" is the fraction of that rate a client keeps (the
median of per-run ratios, each run paired with the baseline run just before it).
"""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import orjson
import uvloop

PERF = Path(__file__).resolve().parent
sys.path.insert(0, str(PERF))
sys.path.insert(0, str(PERF.parent))

import bench  # noqa: E402  (perf/bench.py: Server, raw clients, bulk publishing, machine info)
import harness  # noqa: E402
from opts import parse, usage_error  # noqa: E402

from busd import AsyncClient, Client  # noqa: E402
from busd.client._events import Event  # noqa: E402
from busd.client._sse import SSEDecoder  # noqa: E402

try:
    import httpx
except ImportError:  # optional: only for the comparison rows
    httpx = None

SUBJECT = "bench.created"
DATA = {"n": 12345678, "user": "user-42", "ok": True}
BODY = orjson.dumps({"subject": SUBJECT, "payload": DATA})
SECTIONS = ("sync", "threads", "async", "consume")
BUSD_CMD = [*harness.BUSD, "--namespaces", "bench", "--fsync", "interval"]


class Row:
    def __init__(self, name: str, unit: str, note: str = "") -> None:
        self.name, self.unit, self.note = name, unit, note
        self.runs: list[float] = []
        self.base: Row | None = None

    def median(self) -> float | None:
        return statistics.median(self.runs) if self.runs else None

    def cells(self) -> list[str]:
        """The ratio is the median of per-run ratios: each run of a row is paired with the
        baseline's run just before it (same minute), so a busy neighbour hits both."""
        m = self.median()
        b = self.base.median() if self.base else None
        pairs = list(zip(self.runs, self.base.runs, strict=False)) if self.base else []
        ratio = f"{statistics.median(x / y for x, y in pairs):.2f}" if pairs else "–"
        return [f"{self.name} ({self.unit})", f"{m:,.0f}" if m else "–",
                f"{b:,.0f}" if b else "–", ratio,
                " ".join(f"{x:,.0f}" for x in self.runs), self.note]


HEAD = ["benchmark", "median", "raw-socket baseline (median)", "client/raw (median of runs)",
        "runs", "notes"]


def table_md(rows: list[Row]) -> str:
    out = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r.cells()) + " |" for r in rows]
    return "\n".join(out)


def timed(fn, count: int) -> float:
    t0 = time.perf_counter()
    fn(count)
    return count / (time.perf_counter() - t0)


# --------------------------------------------------------------------------- publishers

def raw_sync(port: int, count: int) -> None:
    """Sequential POSTs of pre-built bytes on one blocking socket; waits for each 202."""
    req = bench.post_request(BODY)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            sock.sendall(req)
            buf = sock.recv(4096)
            while b"\r\n\r\n" not in buf:  # busd's 202 has Content-Length: 0
                buf += sock.recv(4096)
            if not buf.startswith(b"HTTP/1.1 202"):
                raise RuntimeError(f"raw publish answered {buf[:200]!r}")


def sdk_sync(client: Client, count: int) -> None:
    for _ in range(count):
        client.put(SUBJECT, DATA)


def stdlib_sync(port: int, count: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(count):
        conn.request("POST", "/", body=BODY, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 202:
            raise RuntimeError(f"http.client publish answered {resp.status}")
    conn.close()


def httpx_sync(port: int, count: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
        for _ in range(count):
            if c.post("/", content=BODY).status_code != 202:
                raise RuntimeError("httpx publish failed")


def in_threads(n: int, fn, count: int) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn(count // n)
        except BaseException as exc:  # noqa: BLE001 — reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]


async def raw_async(port: int, count: int, conc: int) -> None:
    clients = [await bench.HttpClient.connect(port) for _ in range(conc)]
    req = bench.post_request(BODY)
    left = [count]

    async def worker(c: bench.HttpClient) -> None:
        while left[0] > 0:
            left[0] -= 1
            status, body = await c.request(req)
            if status != 202:
                raise RuntimeError(f"raw publish answered {status}: {body[:200]!r}")

    try:
        await asyncio.wait_for(asyncio.gather(*(worker(c) for c in clients)), 120)
    finally:
        for c in clients:
            c.close()


async def sdk_async(client: AsyncClient, count: int, conc: int) -> None:
    left = [count]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            await client.put(SUBJECT, DATA)

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(conc))), 120)


async def httpx_async(port: int, count: int, conc: int) -> None:
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits,
                                 timeout=30) as c:
        left = [count]

        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                if (await c.post("/", content=BODY)).status_code != 202:
                    raise RuntimeError("httpx publish failed")

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(conc))), 120)


# --------------------------------------------------------------------------- consumers

async def raw_consume(port: int, count: int) -> float:
    t0 = time.perf_counter()
    counter = await bench.SSECounter.open(port, "oldest")
    try:
        t1 = await asyncio.wait_for(counter.expect(count), 120)
    finally:
        counter.close()
    return count / (t1 - t0)


def sdk_consume(url: str, count: int) -> float:
    with Client(url) as client:
        t0 = time.perf_counter()
        n = 0
        for ev in client.get(SUBJECT, start="oldest"):
            ev.payload  # noqa: B018 — decoded already; touch it as a user would
            n += 1
            if n == count:
                break
        return count / (time.perf_counter() - t0)


async def sdk_consume_async(url: str, count: int) -> float:
    async with AsyncClient(url) as client:
        t0 = time.perf_counter()
        n = 0
        async for ev in client.get(SUBJECT, start="oldest"):
            ev.payload  # noqa: B018
            n += 1
            if n == count:
                break
        return count / (time.perf_counter() - t0)


def httpx_consume(url: str, count: int) -> float:
    """httpx streaming with the SDK's own SSE decoding: what the HTTP layer alone costs."""
    with httpx.Client(base_url=url, timeout=30) as c:
        t0 = time.perf_counter()
        n = 0
        decoder = SSEDecoder()
        with c.stream("GET", f"/?subject={SUBJECT}&start=oldest") as resp:
            for chunk in resp.iter_raw():
                decoder.feed(chunk)
                while decoder.messages:
                    kind, _, data = decoder.messages.popleft()
                    if kind == b"msg":
                        Event(data, "", None).payload  # noqa: B018
                        n += 1
                if n >= count:
                    break
        return count / (time.perf_counter() - t0)


# --------------------------------------------------------------------------- sections

def section_sync(args, port: int, url: str, rows: list[Row]) -> None:
    n = args.puts
    raw = Row("publish, 1 thread, sequential — raw socket", "puts/s", f"N={n} per run")
    sdk = Row("publish, 1 thread, sequential — busd.Client", "puts/s", "data is a dict (orjson)")
    std = Row("publish, 1 thread, sequential — http.client", "puts/s", "stdlib, for the choice")
    hx = Row("publish, 1 thread, sequential — httpx.Client", "puts/s", "for the choice")
    for r in (sdk, std, hx):
        r.base = raw
    with Client(url) as client:
        for rep in range(args.repeat):
            raw.runs.append(timed(lambda c: raw_sync(port, c), n))
            sdk.runs.append(timed(lambda c: sdk_sync(client, c), n))
            std.runs.append(timed(lambda c: stdlib_sync(port, c), n))
            if httpx is not None:
                hx.runs.append(timed(lambda c: httpx_sync(port, c), max(n // 4, 500)))
            bench.log(f"  sync run {rep + 1}: raw {raw.runs[-1]:,.0f}  sdk {sdk.runs[-1]:,.0f}  "
                      f"http.client {std.runs[-1]:,.0f}"
                      + (f"  httpx {hx.runs[-1]:,.0f}" if hx.runs else ""))
    rows += [raw, sdk, std] + ([hx] if hx.runs else [])


def section_threads(args, port: int, url: str, rows: list[Row]) -> None:
    n = args.puts * 2
    raw = Row("publish, 8 threads — raw socket each", "puts/s", f"N={n} per run")
    sdk = Row("publish, 8 threads — one shared busd.Client", "puts/s", "pool of 8 connections")
    sdk.base = raw
    with Client(url) as client:
        for rep in range(args.repeat):
            raw.runs.append(timed(lambda c: in_threads(8, lambda k: raw_sync(port, k), c), n))
            sdk.runs.append(timed(lambda c: in_threads(8, lambda k: sdk_sync(client, k), c), n))
            bench.log(f"  threads run {rep + 1}: raw {raw.runs[-1]:,.0f}  sdk {sdk.runs[-1]:,.0f}")
    rows += [raw, sdk]


def section_async(args, port: int, url: str, rows: list[Row]) -> None:
    n, conc = args.puts * 2, 32
    raw = Row("publish, 32 concurrent — raw asyncio connections", "puts/s",
              f"N={n} per run, uvloop")
    sdk = Row("publish, 32 concurrent — busd.AsyncClient", "puts/s", "32 tasks, one client")
    hx = Row("publish, 32 concurrent — httpx.AsyncClient", "puts/s", "for the choice")
    sdk.base = hx.base = raw

    async def run() -> None:
        async with AsyncClient(url) as client:
            for rep in range(args.repeat):
                t0 = time.perf_counter()
                await raw_async(port, n, conc)
                raw.runs.append(n / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                await sdk_async(client, n, conc)
                sdk.runs.append(n / (time.perf_counter() - t0))
                if httpx is not None:
                    k = max(n // 10, 500)
                    t0 = time.perf_counter()
                    await httpx_async(port, k, conc)
                    hx.runs.append(k / (time.perf_counter() - t0))
                bench.log(f"  async run {rep + 1}: raw {raw.runs[-1]:,.0f}  "
                          f"sdk {sdk.runs[-1]:,.0f}"
                          + (f"  httpx {hx.runs[-1]:,.0f}" if hx.runs else ""))

    uvloop.run(run())
    rows += [raw, sdk] + ([hx] if hx.runs else [])


def section_consume(args, port: int, url: str, rows: list[Row]) -> None:
    n = args.events
    stored = uvloop.run(bench.bulk_publish(port, n))
    note = f"N={n:,} stored first (at {stored:,.0f} ev/s)"
    raw = Row("consume from oldest — raw SSE socket counting markers", "events/s", note)
    sdk = Row("consume from oldest — busd.Client.get", "events/s", "decoded Event objects")
    asdk = Row("consume from oldest — busd.AsyncClient.get", "events/s", "uvloop")
    hx = Row("consume from oldest — httpx stream + SDK decoder", "events/s", "for the choice")
    sdk.base = asdk.base = hx.base = raw
    for rep in range(args.repeat):
        raw.runs.append(uvloop.run(raw_consume(port, n)))
        sdk.runs.append(sdk_consume(url, n))
        asdk.runs.append(uvloop.run(sdk_consume_async(url, n)))
        if httpx is not None:
            hx.runs.append(httpx_consume(url, n))
        bench.log(f"  consume run {rep + 1}: raw {raw.runs[-1]:,.0f}  sdk {sdk.runs[-1]:,.0f}  "
                  f"async {asdk.runs[-1]:,.0f}"
                  + (f"  httpx {hx.runs[-1]:,.0f}" if hx.runs else ""))
    rows += [raw, sdk, asdk] + ([hx] if hx.runs else [])


RUNNERS = {"sync": section_sync, "threads": section_threads, "async": section_async,
           "consume": section_consume}


def main(argv: list[str] | None = None) -> int:
    args = parse(__doc__, argv, repeat=int, puts=int, events=int)
    args.busd_cmd = args.busd_cmd or BUSD_CMD
    only = [s for s in args.only.split(",") if s]
    for s in only:
        if s not in RUNNERS:
            usage_error(f"--only: unknown section {s!r}; choose from {', '.join(SECTIONS)}")
    info = bench.machine()[:1] + [
        f"Python {sys.version.split()[0]}, uvloop {uvloop.__version__}, orjson "
        f"{orjson.__version__}, httpx {httpx.__version__ if httpx else 'not installed'}",
        f"loadavg at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        "command: " + " ".join([Path(sys.executable).name, "perf/sdk_bench.py",
                                *(argv or sys.argv[1:])]),
    ]
    for line in info:
        bench.log(line)
    rows: list[Row] = []
    failed = False
    for section in only:
        bench.log(f"== {section}")
        with bench.Server("busd", args.busd_cmd, Path(os.environ.get("TMPDIR", "/tmp"))) as srv:
            try:
                RUNNERS[section](args, srv.port, f"http://127.0.0.1:{srv.port}", rows)
            except Exception as exc:  # noqa: BLE001 — report and go on with the next section
                failed = True
                bench.log(f"  {section} FAILED: {exc!r}")
    info.append(f"loadavg at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    text = "\n".join(f"- {line}" for line in info) + "\n\n" + table_md(rows) + "\n"
    print(text)
    bench.OUT.mkdir(parents=True, exist_ok=True)
    (bench.OUT / "sdk-latest.md").write_text(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
