"""Python cost of one publish request, no sockets: busd's whole path vs the ceiling's protocol.

Feeds the same POST to 32 in-memory connections (a fake transport counts
the responses) and reports µs per request for busd (HttpConnection → Api → Broker → group
commit into a real log in a temp dir → answer) and for perf/ceiling.py's protocol, in the
same process. What it leaves out — syscalls, the event loop's polling — costs both alike.

Usage:
  micro_publish.py [options]

Options:
  -h, --help              Show this help.
  --requests-per-conn N   Requests fed to each connection [default: 2000].
  --connections N         Connections fed one request each per loop iteration, so the
                          group commit takes N requests at a time [default: 32].
  --batch N               Events per request, 0 = one event, not an array [default: 0].
  --client NAME           The request's header lines, as this client sends them: minimal
                          (Host, Content-Length), wrk (perf/bench.py's: Content-Type too),
                          go (Go's net/http: User-Agent and Accept-Encoding too); each
                          header costs the server's parser its own work [default: minimal].
  --note-bytes N          A text field of N plain bytes added to each event's payload, as
                          real events carry (the bench's strings are 0-20 bytes) [default: 0].
  --http-only             Also busd's HTTP connection alone: a handler that answers a
                          fixed 202 at once (what the connection costs without the bus).
  --parts                 Also the body's scan (`scan_body`) and stamping (`stamp_events`)
                          alone, ns per event (median of 5 rounds).
  --subscribers K         K live subscriptions (SSE streams on fake transports), stream i on
                          the literal subject bench.s<i>, and each request's events dealt
                          round-robin over those subjects: the fan-out's cost with it, per
                          delivery (needs --batch; the ceiling is left out) [default: 0].
  --quiet-every R         With --subscribers: the loop is left idle every R rounds, and the
                          held stream writes go out then (their 20 ms limit is lifted, so
                          the count does not follow the speed, valgrind's included). With 4
                          connections, 100 events a request and 1,000 subjects, 28 rounds are
                          ~11 events a stream write, as in perf/bench.py's subjects row
                          [default: 28].
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ceiling  # noqa: E402
from busd._core import scan_body, stamp_events  # noqa: E402
from opts import parse  # noqa: E402

from busd.server.app import Server, _freeze_start_up_heap  # noqa: E402
from busd.server.config import load_config  # noqa: E402

EVENT = {"id": "", "subject": "bench.created", "created_at": "0001-01-01T00:00:00Z",
         "payload": {"order": 12345, "customer": "c-42", "total": 99.5}}


class CountingTransport:
    """Just enough of a transport for a protocol to write responses into."""

    def __init__(self) -> None:
        self.responses = 0

    def write(self, data: bytes) -> None:
        self.responses += 1

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...


class StreamTransport(CountingTransport):
    """An SSE stream's transport: keeps what is written, counted once at the end (a count
    per write was a tenth of the fan-out's figure; a bytearray instead of the list cost
    more than the collector's walks of the lists)."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.writes = 0  # system calls the writes would be

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self.writes += 1

    def writelines(self, chunks: list[bytes]) -> None:
        self.written.extend(chunks)
        self.writes += 1

    def events(self) -> int:
        return b"".join(self.written).count(b"\nevent: msg\n")

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        ...

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def can_write_eof(self) -> bool:
        return False


async def drive(protocols: list, requests: list[bytes], rounds: int,
                quiet: Callable[[], Awaitable[None]] | None = None, quiet_every: int = 0
                ) -> float:
    """Each round, each protocol is fed the next of requests (cycled); µs per request.
    Every quiet_every rounds, `quiet` is awaited (the loop left idle)."""
    transports = []
    for protocol in protocols:
        transport = CountingTransport()
        protocol.connection_made(transport)
        transports.append(transport)
    started = time.perf_counter()
    fed = 0
    for done in range(1, rounds + 1):
        for protocol in protocols:
            protocol.data_received(requests[fed % len(requests)])
            fed += 1
        await asyncio.sleep(0)  # one loop iteration: busd's group commit runs here
        if quiet is not None and done % quiet_every == 0:
            await quiet()
    await asyncio.sleep(0)
    elapsed = time.perf_counter() - started
    answered = sum(t.responses for t in transports)
    assert answered == rounds * len(protocols), f"only {answered} responses"
    return elapsed / answered * 1e6


def per_event_ns(step, events: int, calls: int = 2000) -> float:
    """Median over 5 rounds of `calls` calls of step(), in ns per event."""
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls):
            step()
        rounds.append((time.perf_counter() - started) / calls / events * 1e9)
    return sorted(rounds)[2]


CLIENT_HEADERS = {
    "minimal": b"Host: 127.0.0.1\r\nContent-Length: %d\r\n",
    "wrk": b"Host: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n",
    "go": b"Host: 127.0.0.1\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: %d\r\n"
          b"Content-Type: application/json\r\nAccept-Encoding: gzip\r\n",
}


def post(body: bytes, client: str = "minimal") -> bytes:
    return b"POST / HTTP/1.1\r\n%s\r\n%s" % (CLIENT_HEADERS[client] % len(body), body)


def fanout_requests(event: dict, batch: int, subjects: int, client: str) -> list[bytes]:
    """Batches whose events go round-robin over bench.s0 … bench.s<subjects-1>, as many
    as it takes to come back to bench.s0."""
    count = subjects // math.gcd(subjects, batch)
    return [post(json.dumps([{**event, "subject": f"bench.s{(b * batch + j) % subjects}"}
                             for j in range(batch)], separators=(",", ":")).encode(), client)
            for b in range(count)]


async def subscribe(server: Server, k: int) -> list[StreamTransport]:
    """k live SSE streams, stream i on bench.s<i>, from start=newest."""
    transports = []
    for i in range(k):
        conn, transport = server._new_connection(), StreamTransport()
        conn.connection_made(transport)
        conn.data_received(b"GET /?subject=bench.s%d&start=newest HTTP/1.1\r\n"
                           b"Host: 127.0.0.1\r\n\r\n" % i)
        transports.append(transport)
    live = server.broker.fanout.live_groups["bench"]
    for _ in range(1000):
        if len(live) == k:
            return transports
        await asyncio.sleep(0)
    raise RuntimeError(f"only {len(live)} of {k} subscriptions went live")


async def written_out(coalescer) -> None:
    """Loop iterations with no work until the coalescer wrote what it held (bounded)."""
    for _ in range(10):
        if not coalescer.held:
            return
        await asyncio.sleep(0)


async def main(args: SimpleNamespace) -> None:
    event = EVENT if not args.note_bytes else \
        {**EVENT, "payload": {**EVENT["payload"], "note": "n" * args.note_bytes}}
    if args.subscribers and not args.batch:
        raise SystemExit("--subscribers needs --batch")
    body = json.dumps([event] * args.batch if args.batch else event,
                      separators=(",", ":")).encode()
    if args.client not in CLIENT_HEADERS:
        raise SystemExit(f"--client is one of {', '.join(CLIENT_HEADERS)}")
    requests = fanout_requests(event, args.batch, args.subscribers, args.client) \
        if args.subscribers else [post(body, args.client)]
    with tempfile.TemporaryDirectory() as data:
        config = load_config({"--namespaces": "bench", "--path": data,
                              "--addr": "127.0.0.1:0"}, {})
        server = Server(config)
        await server.store.start(server.broker)
        _freeze_start_up_heap()  # as the server does once it started
        streams = await subscribe(server, args.subscribers)
        if streams:
            # held stream writes go out when the loop is quiet, here every --quiet-every
            # rounds, never after the 20 ms limit: valgrind's slowness must not change it
            server.coalescer.max_delay = 3600.0
            for transport in streams:  # the heads and greetings are not the fan-out's
                transport.written.clear()
                transport.writes = 0
        busd_us = await drive([server._new_connection() for _ in range(args.connections)],
                              requests, args.requests_per_conn,
                              partial(written_out, server.coalescer) if streams else None,
                              args.quiet_every)
        if streams:
            expected = args.connections * args.requests_per_conn * args.batch
            await written_out(server.coalescer)
            got = sum(t.events() for t in streams)
            if got != expected:
                raise RuntimeError(f"{got:,} events delivered of {expected:,}")
        if args.http_only:
            conns = [server._new_connection() for _ in range(args.connections)]
            for conn in conns:
                conn.handler = lambda conn, _request: conn.reply(ceiling.RESPONSE)
            http_us = await drive(conns, requests, args.requests_per_conn)
        await server.store.stop()
    per = f"request of {args.batch} events" if args.batch else "request"
    print(f"busd     {busd_us:6.2f} µs per {per}")
    if streams:
        writes = sum(t.writes for t in streams)
        print(f"         {args.subscribers:,} subscriptions, each request {args.batch} deliveries"
              f", {expected / writes:.1f} events a stream write")
        return
    if args.http_only:
        print(f"http     {http_us:6.2f} µs per {per} (busd's connection, a fixed answer)")
    ceiling_us = await drive([ceiling.CeilingProtocol() for _ in range(args.connections)],
                             [post(body, args.client)],
                             args.requests_per_conn)
    print(f"ceiling  {ceiling_us:6.2f} µs per {per}")
    if args.parts:
        is_batch, events = scan_body(body)
        print(f"scan     {per_event_ns(lambda: scan_body(body), len(events)):6.1f} ns per event")
        print(f"stamp    {per_event_ns(lambda: stamp_events(events, is_batch), len(events)):6.1f}"
              f" ns per event")


if __name__ == "__main__":
    uvloop.run(main(parse(__doc__, requests_per_conn=int, connections=int, batch=int,
                          note_bytes=int, subscribers=int, quiet_every=int)))
