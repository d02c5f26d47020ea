"""Stream writes held and written together: one transport write per connection while the
loop stays busy, in order, never past MAX_HELD bytes, and nothing held is lost at the end
of a stream."""

from __future__ import annotations

import asyncio

from busd._core import sse_chunk
from busd.server.body_budget import BodyBudget
from busd.server.coalesce import MAX_HELD, WriteCoalescer
from busd.server.http import HttpConnection, Limits


class FakeTransport:
    """Keeps what is written; never full."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def writelines(self, chunks: list[bytes]) -> None:
        self.writes.append(b"".join(chunks))

    def set_write_buffer_limits(self, high: int | None = None) -> None: ...

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


class FakeStream:
    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def closed(self) -> None: ...

    def end(self) -> None: ...


def streaming(coalescer: WriteCoalescer) -> tuple[HttpConnection, FakeTransport]:
    conn = HttpConnection(lambda conn, request: None, Limits(1 << 20, 1 << 20, 10, 10, 10),
                          set(), BodyBudget(1 << 20), coalescer)
    transport = FakeTransport()
    conn.connection_made(transport)
    conn.attach_stream(FakeStream(), b"")
    transport.writes.clear()  # the response head
    return conn, transport


async def iterations(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def body(writes: list[bytes]) -> bytes:
    return b"".join(writes)


def test_a_lone_write_on_a_quiet_loop_goes_out_at_once():
    async def main() -> None:
        conn, transport = streaming(WriteCoalescer())
        for i in range(3):
            conn.write(sse_chunk(b"data: %d\n\n" % i))
            assert transport.writes == [sse_chunk(b"data: %d\n\n" % i)]  # not held
            transport.writes.clear()
            await iterations(2)  # no other write in that iteration: the next is a first again
    asyncio.run(main())


def test_writes_of_one_iteration_go_out_in_one_transport_write_in_order():
    async def main() -> None:
        coalescer = WriteCoalescer()
        (a, ta), (b, tb) = streaming(coalescer), streaming(coalescer)
        chunks = [sse_chunk(b"data: %d\n\n" % i) for i in range(10)]
        for chunk in chunks:
            a.write(chunk)
            b.write(chunk)
        assert ta.writes == [chunks[0]] and tb.writes == []  # the first starts the watch
        await iterations(5)
        assert ta.writes == [chunks[0], b"".join(chunks[1:])] and tb.writes == [b"".join(chunks)]
    asyncio.run(main())


def test_held_writes_wait_while_writes_keep_coming_then_go_once_the_loop_is_quiet():
    async def main() -> None:
        coalescer = WriteCoalescer(max_delay=3600)
        conn, transport = streaming(coalescer)
        for i in range(0, 40, 2):  # two writes in every iteration: the loop is busy
            conn.write(sse_chunk(b"data: %d\n\n" % i))
            conn.write(sse_chunk(b"data: %d\n\n" % (i + 1)))
            await asyncio.sleep(0)
        assert transport.writes == [sse_chunk(b"data: 0\n\n")]
        await iterations(5)
        assert transport.writes[1:] == [body(sse_chunk(b"data: %d\n\n" % i)
                                             for i in range(1, 40))]
    asyncio.run(main())


def test_a_busy_loop_still_writes_after_max_delay():
    async def main() -> None:
        coalescer = WriteCoalescer(max_delay=0)
        conn, transport = streaming(coalescer)
        conn.write(sse_chunk(b"data: 1\n\n"))  # goes out, and starts the watch
        conn.write(sse_chunk(b"data: 2\n\n"))
        conn.write(sse_chunk(b"data: 3\n\n"))  # the tick sees writes, but the delay is over
        await iterations(1)
        assert transport.writes[1:] == [sse_chunk(b"data: 2\n\n") + sse_chunk(b"data: 3\n\n")]
    asyncio.run(main())


def test_a_connection_never_holds_more_than_max_held():
    async def main() -> None:
        conn, transport = streaming(WriteCoalescer())
        small = sse_chunk(b"data: " + b"x" * 1000 + b"\n\n")
        sent = [small] * (3 * MAX_HELD // len(small))
        for chunk in sent:
            conn.write(chunk)
            assert conn._unsent_bytes < MAX_HELD or conn._unsent is None
        assert len(transport.writes) >= 2
        big = sse_chunk(b"data: " + b"y" * MAX_HELD + b"\n\n")
        conn.write(big)  # after what is held, not before it
        await iterations(5)
        assert body(transport.writes) == body(sent) + big
    asyncio.run(main())


def test_ending_a_stream_writes_what_is_held_first():
    async def main() -> None:
        conn, transport = streaming(WriteCoalescer())
        conn.write(sse_chunk(b"data: last\n\n"))
        conn.end_stream(sse_chunk(b"event: error\ndata: bye\n\n"))
        assert body(transport.writes) == (sse_chunk(b"data: last\n\n")
                                          + sse_chunk(b"event: error\ndata: bye\n\n")
                                          + b"0\r\n\r\n")
        await iterations(5)
        assert body(transport.writes).endswith(b"0\r\n\r\n")
    asyncio.run(main())


def test_a_failing_connection_does_not_keep_the_others_from_being_written():
    async def main() -> None:
        coalescer = WriteCoalescer()
        (bad, tbad), (good, tgood) = streaming(coalescer), streaming(coalescer)

        def broken(data: bytes) -> None:
            raise RuntimeError("transport broke")

        good.write(sse_chunk(b"data: 1\n\n"))  # goes out, and starts the watch
        tbad.write = tbad.writelines = broken
        bad.write(sse_chunk(b"data: 1\n\n"))
        good.write(sse_chunk(b"data: 2\n\n"))
        await iterations(5)
        assert tgood.writes == [sse_chunk(b"data: 1\n\n"), sse_chunk(b"data: 2\n\n")]
    asyncio.run(main())


def test_closing_a_connection_sends_what_is_held_first():
    async def main() -> None:
        conn, transport = streaming(WriteCoalescer())
        conn.write(sse_chunk(b"data: last\n\n"))
        conn.close()
        assert transport.writes == [sse_chunk(b"data: last\n\n")] and transport.closed
    asyncio.run(main())
