"""Stream writes held and written together: one transport write per connection while the
loop stays busy, in order, never past MAX_HELD bytes, and nothing held is lost at the end
of a stream. coalesce.py and http.py run compiled (setup.py): every test runs on the
compiled pair and on the uncompiled sources (the oracle), and random writes must give the
same transport writes through both."""

from __future__ import annotations

import asyncio
from types import ModuleType, SimpleNamespace

import pytest
from busd._core import sse_chunk
from hypothesis import given, settings
from hypothesis import strategies as st
from source_module import load_source

import busd.server.coalesce as coalesce_compiled
import busd.server.http as http_compiled
from busd.server.body_budget import BodyBudget
from busd.server.coalesce import MAX_HELD

COMPILED = SimpleNamespace(http=http_compiled, coalesce=coalesce_compiled)
SOURCE = SimpleNamespace(http=load_source(http_compiled), coalesce=load_source(coalesce_compiled))


def test_the_installed_coalescer_is_the_compiled_one() -> None:
    assert coalesce_compiled.__file__.endswith(".so"), coalesce_compiled.__file__
    assert SOURCE.coalesce.__file__.endswith(".py")


@pytest.fixture(params=[COMPILED, SOURCE], ids=["compiled", "source"])
def impl(request) -> SimpleNamespace:
    return request.param


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


def streaming(impl: SimpleNamespace, coalescer) -> tuple[object, FakeTransport]:
    """A streaming connection of impl's HttpConnection (compiled, or the source)."""
    http: ModuleType = impl.http
    conn = http.HttpConnection(lambda conn, request: None,
                               http.Limits(1 << 20, 1 << 20, 10, 10, 10),
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


def test_a_lone_write_on_a_quiet_loop_goes_out_at_once(impl):
    async def main() -> None:
        conn, transport = streaming(impl, impl.coalesce.WriteCoalescer())
        for i in range(3):
            conn.write(sse_chunk(b"data: %d\n\n" % i))
            assert transport.writes == [sse_chunk(b"data: %d\n\n" % i)]  # not held
            transport.writes.clear()
            await iterations(2)  # no other write in that iteration: the next is a first again
    asyncio.run(main())


def test_writes_of_one_iteration_go_out_in_one_transport_write_in_order(impl):
    async def main() -> None:
        coalescer = impl.coalesce.WriteCoalescer()
        (a, ta), (b, tb) = streaming(impl, coalescer), streaming(impl, coalescer)
        chunks = [sse_chunk(b"data: %d\n\n" % i) for i in range(10)]
        for chunk in chunks:
            a.write(chunk)
            b.write(chunk)
        assert ta.writes == [chunks[0]] and tb.writes == []  # the first starts the watch
        await iterations(5)
        assert ta.writes == [chunks[0], b"".join(chunks[1:])] and tb.writes == [b"".join(chunks)]
    asyncio.run(main())


def test_held_writes_wait_while_writes_keep_coming_then_go_once_the_loop_is_quiet(impl):
    async def main() -> None:
        coalescer = impl.coalesce.WriteCoalescer(max_delay=3600)
        conn, transport = streaming(impl, coalescer)
        for i in range(0, 40, 2):  # two writes in every iteration: the loop is busy
            conn.write(sse_chunk(b"data: %d\n\n" % i))
            conn.write(sse_chunk(b"data: %d\n\n" % (i + 1)))
            await asyncio.sleep(0)
        assert transport.writes == [sse_chunk(b"data: 0\n\n")]
        await iterations(5)
        assert transport.writes[1:] == [body(sse_chunk(b"data: %d\n\n" % i)
                                             for i in range(1, 40))]
    asyncio.run(main())


def test_a_busy_loop_still_writes_after_max_delay(impl):
    async def main() -> None:
        coalescer = impl.coalesce.WriteCoalescer(max_delay=0)
        conn, transport = streaming(impl, coalescer)
        conn.write(sse_chunk(b"data: 1\n\n"))  # goes out, and starts the watch
        conn.write(sse_chunk(b"data: 2\n\n"))
        conn.write(sse_chunk(b"data: 3\n\n"))  # the tick sees writes, but the delay is over
        await iterations(1)
        assert transport.writes[1:] == [sse_chunk(b"data: 2\n\n") + sse_chunk(b"data: 3\n\n")]
    asyncio.run(main())


def test_a_connection_never_holds_more_than_max_held(impl):
    async def main() -> None:
        conn, transport = streaming(impl, impl.coalesce.WriteCoalescer())
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


def test_ending_a_stream_writes_what_is_held_first(impl):
    async def main() -> None:
        conn, transport = streaming(impl, impl.coalesce.WriteCoalescer())
        conn.write(sse_chunk(b"data: last\n\n"))
        conn.end_stream(sse_chunk(b"event: error\ndata: bye\n\n"))
        assert body(transport.writes) == (sse_chunk(b"data: last\n\n")
                                          + sse_chunk(b"event: error\ndata: bye\n\n")
                                          + b"0\r\n\r\n")
        await iterations(5)
        assert body(transport.writes).endswith(b"0\r\n\r\n")
    asyncio.run(main())


def test_a_failing_connection_does_not_keep_the_others_from_being_written(impl):
    async def main() -> None:
        coalescer = impl.coalesce.WriteCoalescer()
        (bad, tbad), (good, tgood) = streaming(impl, coalescer), streaming(impl, coalescer)

        def broken(data: bytes) -> None:
            raise RuntimeError("transport broke")

        good.write(sse_chunk(b"data: 1\n\n"))  # goes out, and starts the watch
        tbad.write = tbad.writelines = broken
        bad.write(sse_chunk(b"data: 1\n\n"))
        good.write(sse_chunk(b"data: 2\n\n"))
        await iterations(5)
        assert tgood.writes == [sse_chunk(b"data: 1\n\n"), sse_chunk(b"data: 2\n\n")]
    asyncio.run(main())


def test_closing_a_connection_sends_what_is_held_first(impl):
    async def main() -> None:
        conn, transport = streaming(impl, impl.coalesce.WriteCoalescer())
        conn.write(sse_chunk(b"data: last\n\n"))
        conn.close()
        assert transport.writes == [sse_chunk(b"data: last\n\n")] and transport.closed
    asyncio.run(main())


STEPS = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, 2), st.sampled_from([10, 900, MAX_HELD // 3,
                                                                     MAX_HELD + 5])),
    st.tuples(st.just("iterate")),
    st.tuples(st.just("end"), st.integers(0, 2))), max_size=40)


def _chunk(n: int, size: int) -> bytes:
    return sse_chunk(b"data: %d" % n + b"x" * size + b"\n\n")


def _transcript(impl: SimpleNamespace, steps: list[tuple]) -> list[list[bytes]]:
    """The transport writes of three streams of one coalescer."""
    async def main() -> list[list[bytes]]:
        coalescer = impl.coalesce.WriteCoalescer(max_delay=3600)  # no clock in the result
        streams = [streaming(impl, coalescer) for _ in range(3)]
        for n, step in enumerate(steps):
            if step[0] == "write":
                streams[step[1]][0].write(_chunk(n, step[2]))
            elif step[0] == "end":
                streams[step[1]][0].end_stream()
            else:
                await asyncio.sleep(0)
        await iterations(5)
        return [transport.writes for _, transport in streams]
    return asyncio.run(main())


@settings(max_examples=150, deadline=None)
@given(STEPS)
def test_compiled_coalescer_writes_as_the_source_does(steps):
    compiled = _transcript(COMPILED, steps)
    assert compiled == _transcript(SOURCE, steps)
    expected, ended = [b""] * 3, [False] * 3  # each stream: all it was given, in order, once
    for n, step in enumerate(steps):
        if step[0] == "write" and not ended[step[1]]:
            expected[step[1]] += _chunk(n, step[2])
        elif step[0] == "end" and not ended[step[1]]:
            expected[step[1]] += b"0\r\n\r\n"
            ended[step[1]] = True
    assert [b"".join(writes) for writes in compiled] == expected
