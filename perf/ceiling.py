"""Bare-stack ceiling server for the busd benchmarks.

The fastest thing busd's stack (one uvloop event loop + httptools) can possibly do
per request: parse it with ``httptools.HttpRequestParser`` (keep-alive and pipelining
supported) and answer with a fixed ``202 Accepted`` carrying the same headers busd's
publish answer carries (SPEC §3 CORS headers, X-BUS-EVENT-ID / -CREATED-AT / -INDEX
with fixed values, a Date header refreshed once per second, ``Content-Length: 0``).
It stores nothing, validates nothing and, without --relay, never streams.

busd's publish rate divided by this server's, measured in the same run on the same
machine, is the fraction of the stack's ceiling that busd achieves.

With --relay it is the floor of the publish→receive latency instead: a GET becomes a
chunked SSE stream, and each POST's body is written at once, as one `event: msg` frame,
to every stream. What busd's latency has beyond this server's is busd's; what they share
is the machine's and the stack's. (A separate mode, so the publish ceiling pays nothing
for it: httptools calls on_body only on a protocol that has one.)

Usage:
  ceiling.py [options]

Options:
  -h, --help    Show this help.
  --host HOST   Address to listen on [default: 127.0.0.1].
  --port PORT   Port to listen on [default: 2099].
  --relay       Relay each POST's body to every GET stream (the latency floor).
"""

from __future__ import annotations

import asyncio
import email.utils
import signal
import time

import httptools
import uvloop
from opts import parse

CORS = (
    b"Access-Control-Allow-Origin: *\r\n"
    b"Access-Control-Allow-Methods: GET, POST, PUT, OPTIONS\r\n"
    b"Access-Control-Allow-Headers: Content-Type, Last-Event-ID, X-BUS-EVENT-ID, "
    b"X-BUS-EVENT-CREATED-AT, X-BUS-EVENT-INDEX, X-BUS-CONSUMER-ID\r\n"
    b"Access-Control-Expose-Headers: X-BUS-EVENT-ID, X-BUS-EVENT-CREATED-AT, "
    b"X-BUS-EVENT-INDEX, X-BUS-CONSUMER-ID\r\n"
)
FIXED = (
    b"X-Bus-Event-Id: e_d4o7ehksdud4d8c68bg0\r\n"
    b"X-Bus-Event-Created-At: 2026-11-27T13:20:58.365157351Z\r\n"
    b"X-Bus-Event-Index: 0\r\n"
)


def _build_response() -> bytes:
    date = email.utils.formatdate(time.time(), usegmt=True).encode()
    return (
        b"HTTP/1.1 202 Accepted\r\n" + CORS + FIXED
        + b"Date: " + date + b"\r\nContent-Length: 0\r\n\r\n"
    )


RESPONSE = _build_response()


def _refresh_date(loop: asyncio.AbstractEventLoop) -> None:
    global RESPONSE
    RESPONSE = _build_response()
    loop.call_later(1.0, _refresh_date, loop)


class CeilingProtocol(asyncio.Protocol):
    __slots__ = ("transport", "parser", "out", "close_after")

    def __init__(self) -> None:
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.out: list[bytes] = []
        self.close_after = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    # httptools callbacks: the body is received (and dropped), nothing else is done.
    def on_message_complete(self) -> None:
        self.out.append(RESPONSE)
        if not self.parser.should_keep_alive():
            self.close_after = True

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\n" + CORS
                + b"Content-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\n"
                b"bad request\n"
            )
            self.transport.close()
            return
        out = self.out
        if out:
            # One write per read: pipelined requests get their answers in one send.
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
            if self.close_after:
                self.transport.close()

    def connection_lost(self, exc) -> None:
        self.transport = None


STREAM_HEAD = (b"HTTP/1.1 200 OK\r\n" + CORS + b"Content-Type: text/event-stream\r\n"
               b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")


class RelayProtocol(CeilingProtocol):
    """The ceiling with streams: a GET subscribes, a POST's body goes out to every stream
    (one chunk each, written at once) before its 202."""

    __slots__ = ("body",)
    streams: set = set()

    def __init__(self) -> None:
        super().__init__()
        self.body: list[bytes] = []

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.parser.get_method() == b"GET":
            self.out.append(STREAM_HEAD)
            self.streams.add(self.transport)
            return
        frame = b"id: e\nevent: msg\ndata: " + b"".join(self.body) + b"\n\n"
        self.body.clear()
        chunk = b"%x\r\n%s\r\n" % (len(frame), frame)
        for stream in self.streams:
            stream.write(chunk)
        super().on_message_complete()

    def connection_lost(self, exc) -> None:
        self.streams.discard(self.transport)
        super().connection_lost(exc)


async def serve(host: str, port: int, relay: bool) -> None:
    loop = asyncio.get_running_loop()
    _refresh_date(loop)
    server = await loop.create_server(RelayProtocol if relay else CeilingProtocol, host, port,
                                      backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    args = parse(__doc__, port=int)
    uvloop.install()
    asyncio.run(serve(args.host, args.port, args.relay))


if __name__ == "__main__":
    main()
