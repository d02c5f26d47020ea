"""A fake transport and handler for busd.server.http's connection, fed bytes in pieces: the
transcript of everything the connection did (requests handed on, bytes written, pauses,
closes, its state at the end), for comparing builds and checking what requests became."""

from __future__ import annotations

import asyncio
import re
from itertools import accumulate, pairwise

from hypothesis import strategies as st

from busd.server.body_budget import BodyBudget
from busd.server.coalesce import WriteCoalescer

DATE = re.compile(rb"Date: [^\r]*\r\n")


class Transcript:
    """A transport and a handler that write down everything a connection does."""

    def __init__(self, module) -> None:
        self.module = module
        self.log: list[tuple] = []
        self.deferred: list = []
        self.closing = False

    # transport
    def write(self, data: bytes) -> None:
        self.log.append(("write", DATE.sub(b"Date: -\r\n", bytes(data))))

    def writelines(self, chunks) -> None:
        self.write(b"".join(chunks))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.log.append(("eof",))

    def pause_reading(self) -> None:
        self.log.append(("pause",))

    def resume_reading(self) -> None:
        self.log.append(("resume",))

    def close(self) -> None:
        self.closing = True
        self.log.append(("close",))

    def is_closing(self) -> bool:
        return self.closing

    def set_write_buffer_limits(self, high=None) -> None: ...

    def get_extra_info(self, name, default=None):
        return default

    # stream
    def pause(self) -> None:
        self.log.append(("stream-pause",))

    def resume(self) -> None:
        self.log.append(("stream-resume",))

    def closed(self) -> None:
        self.log.append(("stream-closed",))

    # handler
    def handle(self, conn, request) -> None:
        self.log.append(("request", request.method, request.url,
                         sorted(request.headers.items()), bytes(request.body),
                         bool(request.keep_alive)))
        path = request.url.partition(b"?")[0]
        http = self.module
        if path == b"/defer":
            self.deferred.append((conn, conn.defer()))
        elif path == b"/stream":
            def begin() -> None:
                conn.attach_stream(self, b"X-Test: 1\r\n")
                conn.write(b"5\r\nhello\r\n")
                conn.flush()
            conn.start_stream(begin)
        elif path == b"/close":
            conn.reply(http.response(200, b"bye", close=True), True)
        else:
            body = b"%d %s" % (len(request.body), request.method)
            conn.reply(http.response(200, body, close=not request.keep_alive),
                       not request.keep_alive)

    def answer_deferred(self) -> None:
        """What a group commit does at the end of a loop iteration."""
        deferred, self.deferred = self.deferred, []
        for conn, ticket in deferred:
            conn.fulfil(ticket, self.module.response(202, b"stored"))


def run(module, pieces: list[bytes], limits: tuple, cls: str = "HttpConnection"
        ) -> list[tuple]:
    async def drive() -> list[tuple]:
        transcript = Transcript(module)
        conn = getattr(module, cls)(transcript.handle, module.Limits(*limits), set(),
                                    BodyBudget(1 << 20), WriteCoalescer())
        conn.connection_made(transcript)
        for piece in pieces:
            conn.data_received(piece)
            transcript.answer_deferred()
            await asyncio.sleep(0)
        transcript.log.append(("state", conn.state, conn.is_closed, conn.read_paused,
                               conn.write_paused, conn.unanswered(), conn.stream is not None))
        conn.connection_lost(None)
        return transcript.log

    module.CorsHttpConnection.allowed = frozenset({b"http://o"})
    try:
        return asyncio.run(drive())
    finally:
        module.CorsHttpConnection.allowed = frozenset()


CONNECTION_CLASSES = st.sampled_from(["HttpConnection", "CorsHttpConnection"])


def cut_into_reads(requests: st.SearchStrategy[bytes]) -> st.SearchStrategy[list[bytes]]:
    """Up to six requests drawn from `requests`, pipelined, then cut into reads: at random
    places, the first 40 bytes a byte at a time (slowly), at each request's end (a read
    each), or several of these at once."""
    @st.composite
    def reads(draw) -> list[bytes]:
        pipelined = draw(st.lists(requests, min_size=1, max_size=6))
        data = b"".join(pipelined)
        cuts = set(draw(st.lists(st.integers(0, len(data)), max_size=8)))
        if draw(st.booleans()):
            cuts |= set(range(min(len(data), 40)))
        if draw(st.booleans()):
            cuts |= set(accumulate(map(len, pipelined)))
        bounds = [0, *sorted(cuts), len(data)]
        return [data[a:b] for a, b in pairwise(bounds) if b > a]
    return reads()
