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


def test_writes_of_one_iteration_go_out_in_one_transport_write_in_order():
    async def main() -> None:
        coalescer = WriteCoalescer()
        (a, ta), (b, tb) = streaming(coalescer), streaming(coalescer)
        chunks = [sse_chunk(b"data: %d\n\n" % i) for i in range(10)]
        for chunk in chunks:
            a.write(chunk)
            b.write(chunk)
        assert ta.writes == [] and tb.writes == []
        await iterations(5)
        assert ta.writes == [b"".join(chunks)] and tb.writes == ta.writes
    asyncio.run(main())


def test_held_writes_wait_while_writes_keep_coming_then_go_once_the_loop_is_quiet():
    async def main() -> None:
        coalescer = WriteCoalescer(max_delay=3600)
        conn, transport = streaming(coalescer)
        for i in range(20):  # a write in every iteration: the loop is busy
            conn.write(sse_chunk(b"data: %d\n\n" % i))
            await asyncio.sleep(0)
        assert transport.writes == []
        await iterations(5)
        assert transport.writes == [body(sse_chunk(b"data: %d\n\n" % i) for i in range(20))]
    asyncio.run(main())


def test_a_busy_loop_still_writes_after_max_delay():
    async def main() -> None:
        coalescer = WriteCoalescer(max_delay=0)
        conn, transport = streaming(coalescer)
        conn.write(sse_chunk(b"data: 1\n\n"))
        conn.write(sse_chunk(b"data: 2\n\n"))  # the tick sees writes, but the delay is over
        await iterations(1)
        assert len(transport.writes) == 1
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

        tbad.write = tbad.writelines = broken
        bad.write(sse_chunk(b"data: 1\n\n"))
        good.write(sse_chunk(b"data: 2\n\n"))
        await iterations(5)
        assert tgood.writes == [sse_chunk(b"data: 2\n\n")]
    asyncio.run(main())


def test_closing_a_connection_sends_what_is_held_first():
    async def main() -> None:
        conn, transport = streaming(WriteCoalescer())
        conn.write(sse_chunk(b"data: last\n\n"))
        conn.close()
        assert transport.writes == [sse_chunk(b"data: last\n\n")] and transport.closed
    asyncio.run(main())
