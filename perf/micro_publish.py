"""Python cost of one publish request, no sockets: busd's whole path vs the ceiling's protocol.

Feeds the same Go-SDK-shaped POST to 32 in-memory connections (a fake transport counts
the responses) and reports µs per request for busd (HttpConnection → Api → Broker → group
commit into a real log in a temp dir → answer) and for perf/ceiling.py's protocol, in the
same process. What it leaves out — syscalls, the event loop's polling — costs both alike.

Usage:
  micro_publish.py [options]

Options:
  -h, --help              Show this help.
  --requests-per-conn N   Requests fed to each of the 32 connections [default: 2000].
  --batch N               Events per request, 0 = one event, not an array [default: 0].
  --note-bytes N          A text field of N plain bytes added to each event's payload, as
                          real events carry (the bench's strings are 0-20 bytes) [default: 0].
  --http-only             Also busd's HTTP connection alone: a handler that answers a
                          fixed 202 at once (what the connection costs without the bus).
  --parts                 Also the body's scan (`scan_body`) and stamping (`stamp_events`)
                          alone, ns per event (median of 5 rounds).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ceiling  # noqa: E402
from opts import parse  # noqa: E402

from busd._core import scan_body, stamp_events  # noqa: E402
from busd.server.app import Server  # noqa: E402
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


async def drive(protocols: list, request: bytes, rounds: int) -> float:
    transports = []
    for protocol in protocols:
        transport = CountingTransport()
        protocol.connection_made(transport)
        transports.append(transport)
    started = time.perf_counter()
    for _ in range(rounds):
        for protocol in protocols:
            protocol.data_received(request)
        await asyncio.sleep(0)  # one loop iteration: busd's group commit runs here
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


async def main(args: SimpleNamespace) -> None:
    event = EVENT if not args.note_bytes else \
        {**EVENT, "payload": {**EVENT["payload"], "note": "n" * args.note_bytes}}
    body = json.dumps([event] * args.batch if args.batch else event,
                      separators=(",", ":")).encode()
    request = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body), body)
    with tempfile.TemporaryDirectory() as data:
        config = load_config({"--namespaces": "bench", "--path": data,
                              "--addr": "127.0.0.1:0"}, {})
        server = Server(config)
        await server.store.start(server.broker)
        busd_us = await drive([server._new_connection() for _ in range(32)], request,
                              args.requests_per_conn)
        if args.http_only:
            conns = [server._new_connection() for _ in range(32)]
            for conn in conns:
                conn.handler = lambda conn, _request: conn.reply(ceiling.RESPONSE)
            http_us = await drive(conns, request, args.requests_per_conn)
        await server.store.stop()
    ceiling_us = await drive([ceiling.CeilingProtocol() for _ in range(32)], request,
                             args.requests_per_conn)
    per = f"request of {args.batch} events" if args.batch else "request"
    print(f"busd     {busd_us:6.2f} µs per {per}")
    if args.http_only:
        print(f"http     {http_us:6.2f} µs per {per} (busd's connection, a fixed answer)")
    print(f"ceiling  {ceiling_us:6.2f} µs per {per}")
    if args.parts:
        is_batch, events = scan_body(body)
        print(f"scan     {per_event_ns(lambda: scan_body(body), len(events)):6.1f} ns per event")
        print(f"stamp    {per_event_ns(lambda: stamp_events(events, is_batch), len(events)):6.1f}"
              f" ns per event")


if __name__ == "__main__":
    uvloop.run(main(parse(__doc__, requests_per_conn=int, batch=int, note_bytes=int)))
