"""Bare-stack ceiling server for the busd benchmarks.

The fastest thing busd's stack (one uvloop event loop + httptools) can possibly do
per request: parse it with ``httptools.HttpRequestParser`` (keep-alive and pipelining
supported) and answer with a fixed ``202 Accepted`` carrying the same headers busd's
publish answer carries (SPEC §3 CORS headers, X-BUS-EVENT-ID / -CREATED-AT / -INDEX
with fixed values, a Date header refreshed once per second, ``Content-Length: 0``).
It stores nothing, validates nothing and never streams.

busd's publish rate divided by this server's, measured in the same run on the same
machine, is the fraction of the stack's ceiling that busd achieves.

Usage:
  ceiling.py [options]

Options:
  -h, --help    Show this help.
  --host HOST   Address to listen on [default: 127.0.0.1].
  --port PORT   Port to listen on [default: 2099].
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


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    _refresh_date(loop)
    server = await loop.create_server(CeilingProtocol, host, port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    args = parse(__doc__, port=int)
    uvloop.install()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
