"""A throw-away in-memory imitation of busd's wire protocol, for testing perf/bench.py itself.

NOT busd and not a reference implementation: it exists so the SSE sections of the
benchmark (catch-up, fan-out, latency, memory) can be exercised before busd is ready,
and so a harness bug can be told apart from a server bug. It speaks the wire format of
SPEC §3 / compat/go-sdk-wire.json closely enough for the harness: ``POST /`` (one event
or a JSON array) answers 202 with the X-BUS-EVENT-* headers (batches: the JSON count
body), ``GET /?subject=ns.>&start=oldest|newest`` streams chunked SSE (``retry: 2000``,
one ``event: consumer`` message, then ``id:/event: msg/data:`` messages).

Deliberately naive where busd must not be: events live in a Python list, live events are
written to every matching consumer without any bound, so a consumer that stops reading
makes this process grow — section f of the bench shows that.

    python perf/mockbus.py --port 2098
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import time
from urllib.parse import parse_qs, unquote

import httptools
import orjson
import uvloop

CORS = (
    b"Access-Control-Allow-Origin: *\r\n"
    b"Access-Control-Allow-Methods: GET, POST, PUT, OPTIONS\r\n"
    b"Access-Control-Allow-Headers: Content-Type, Last-Event-ID, X-BUS-EVENT-ID, "
    b"X-BUS-EVENT-CREATED-AT, X-BUS-EVENT-INDEX, X-BUS-CONSUMER-ID\r\n"
    b"Access-Control-Expose-Headers: X-BUS-EVENT-ID, X-BUS-EVENT-CREATED-AT, "
    b"X-BUS-EVENT-INDEX, X-BUS-CONSUMER-ID\r\n"
)
_ids = itertools.count()
_pid = os.getpid() & 0xFFFF


def new_id(prefix: str) -> str:
    return f"{prefix}_mock{_pid:05d}{next(_ids):011d}"


def ts() -> str:
    t = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t // 10**9)) + f".{t % 10**9:09d}Z"


class Bus:
    def __init__(self) -> None:
        self.log: list[bytes] = []  # pre-encoded SSE messages
        self.subjects: list[str] = []
        self.consumers: set[Conn] = set()


BUS = Bus()


def matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, seg in enumerate(p):
        if seg == ">":
            return len(s) > i
        if i >= len(s) or (seg != "*" and seg != s[i]):
            return False
    return len(p) == len(s)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.pattern: str | None = None
        self.can_write = asyncio.Event()
        self.can_write.set()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        BUS.consumers.discard(self)
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.reply(400, b"bad request\n")
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method, url, body = self.parser.get_method(), self.url, b"".join(self.body)
        self.url, self.body = b"", []
        if method == b"POST":
            self.publish(body)
        elif method == b"GET":
            self.subscribe(url)
        elif method == b"OPTIONS":
            self.reply(204, b"")
        else:
            self.reply(202, b"")

    def reply(self, status: int, body: bytes, extra: bytes = b"") -> None:
        reason = {202: b"Accepted", 204: b"No Content", 400: b"Bad Request"}.get(status, b"OK")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\n%s%sContent-Length: %d\r\n\r\n%s"
            % (status, reason, CORS, extra, len(body), body)
        )

    def publish(self, body: bytes) -> None:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return self.reply(400, b"invalid json\n")
        events = doc if isinstance(doc, list) else [doc]
        first, ids = len(BUS.log), []
        for ev in events:
            subject = ev.get("subject") if isinstance(ev, dict) else None
            if not subject:
                return self.reply(400, b"missing subject\n")
            rec = {"id": new_id("e"), "subject": subject, "created_at": ts()}
            if "payload" in ev:
                rec["payload"] = ev["payload"]
            msg = b"id: %s\nevent: msg\ndata: %s\n\n" % (rec["id"].encode(), orjson.dumps(rec))
            BUS.log.append(msg)
            BUS.subjects.append(subject)
            ids.append(rec["id"])
            for c in BUS.consumers:
                if matches(c.pattern, subject):
                    c.transport.write(chunk(msg))  # unbounded on purpose (see module doc)
        if isinstance(doc, list):
            self.reply(202, orjson.dumps({"count": len(ids), "first_index": first, "ids": ids}),
                       b"Content-Type: application/json\r\n")
        else:
            self.reply(202, b"", b"X-BUS-EVENT-ID: %s\r\nX-BUS-EVENT-CREATED-AT: %s\r\n"
                       b"X-BUS-EVENT-INDEX: %d\r\n" % (ids[0].encode(), ts().encode(), first))

    def subscribe(self, url: bytes) -> None:
        q = parse_qs(httptools.parse_url(url).query.decode() if b"?" in url else "")
        pattern = unquote(q.get("subject", [""])[0])
        if not pattern:
            return self.reply(400, b"missing subject\n")
        cid = new_id("c")
        self.transport.write(
            b"HTTP/1.1 200 OK\r\n" + CORS + b"Cache-Control: no-cache\r\nContent-Type: text/event-stream\r\n"
            b"X-Accel-Buffering: no\r\nX-BUS-CONSUMER-ID: %s\r\nTransfer-Encoding: chunked\r\n\r\n" % cid.encode()
            + chunk(b"retry: 2000\n\nevent: consumer\ndata: %s\n\n" % cid.encode())
        )
        self.pattern = pattern
        if q.get("start", [""])[0] == "oldest":
            asyncio.ensure_future(self.replay(len(BUS.log)))
        else:
            BUS.consumers.add(self)

    async def replay(self, upto: int) -> None:
        i = 0
        while i < upto:
            await self.can_write.wait()
            if self.transport.is_closing():
                return
            j = min(upto, i + 2000)
            msgs = [BUS.log[k] for k in range(i, j) if matches(self.pattern, BUS.subjects[k])]
            if msgs:
                self.transport.write(chunk(b"".join(msgs)))
            i = j
        # Catch-up done synchronously with the last history write: go live, no gap.
        for k in range(upto, len(BUS.log)):
            if matches(self.pattern, BUS.subjects[k]):
                self.transport.write(chunk(BUS.log[k]))
        BUS.consumers.add(self)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Conn, host, port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=2098)
    args = ap.parse_args()
    uvloop.install()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
