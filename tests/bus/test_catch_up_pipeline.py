"""Catch-up from disk: the next chunk is fetched (read, framed and, encrypted, opened in a
worker) while the loop writes this one, and the chunks still go out in order, once."""

from __future__ import annotations

import asyncio

from busd._core import Pattern
from busd.bus.consumer import Consumer
from busd.bus.fanout import FanOut
from busd.server.metrics import Metrics

CHUNK = 3  # records per fetch


class DiskOnlyStore:
    """Nothing in memory: every catch-up read is a fetch; each answers CHUNK records."""

    def __init__(self, head: int, events: list) -> None:
        self.head, self.events = head, events

    def next_index(self, namespace: str) -> int:
        return self.head

    def first_index(self, namespace: str) -> int:
        return 0

    def read(self, namespace, start_index, max_bytes, disk=True):
        return None

    def fetch_sse(self, namespace, start_index, max_bytes, pattern):
        """As LocalStore's: the read starts at the call, its answer comes later."""
        self.events.append(("fetch", start_index))
        count = min(CHUNK, self.head - start_index)
        future = asyncio.get_running_loop().create_future()
        future.get_loop().call_later(0.01, future.set_result,
                                     (start_index, b"chunk@%d" % start_index, count, count))
        return future


class RecordingSink:
    def __init__(self, events: list) -> None:
        self.events = events

    def attach_stream(self, stream, headers, high_water=None) -> None:
        pass

    def write(self, data: bytes) -> None:
        if data.startswith(b"chunk@"):
            self.events.append(("write", int(data[6:])))

    def end_stream(self, last_chunk: bytes = b"") -> None:
        pass


def test_the_next_chunk_is_fetched_before_this_one_is_written():
    events: list = []

    async def main():
        store = DiskOnlyStore(12, events)
        fanout = FanOut(("app",), Metrics(("app",)))
        consumer = Consumer(fanout, store, RecordingSink(events), b"c1", Pattern(b"app.>"),
                            "app", None)
        consumer.start(b"", 0)
        for _ in range(200):
            if consumer.live:
                break
            await asyncio.sleep(0.01)
        return consumer

    consumer = asyncio.run(main())
    assert consumer.live and consumer.cursor == 12
    assert [e for e in events if e[0] == "write"] == [("write", i) for i in range(0, 12, 3)]
    assert [e for e in events if e[0] == "fetch"] == [("fetch", i) for i in range(0, 12, 3)]
    for start in range(0, 9, 3):  # chunk `start` goes out after the next fetch started
        assert events.index(("fetch", start + 3)) < events.index(("write", start))


class EmptyStore:
    """Nothing stored: a consumer from index 0 is at the head at once."""

    def next_index(self, namespace: str) -> int:
        return 0

    def first_index(self, namespace: str) -> int:
        return 0


class BreakingSink(RecordingSink):
    """Its first write of records raises; keeps how the stream ended."""

    def __init__(self, events: list) -> None:
        super().__init__(events)
        self.ended: bytes | None = None

    def write(self, data: bytes) -> None:
        if b"event: msg" in data:
            raise OSError("the socket broke")

    def end_stream(self, last_chunk: bytes = b"") -> None:
        self.ended = last_chunk


def test_a_live_delivery_that_fails_ends_that_stream_only():
    """The fan-out writes live deliveries to the sink itself; what that raises is handed to
    the consumer (push_failed), which ends its stream with an error event, as any step."""
    async def main():
        fanout = FanOut(("app",), Metrics(("app",)))
        sinks = [BreakingSink([]), RecordingSink([])]
        written: list[bytes] = []
        sinks[1].write = written.append
        consumers = [Consumer(fanout, EmptyStore(), sink, b"c%d" % i, Pattern(b"app.>"), "app",
                              None) for i, sink in enumerate(sinks)]
        for consumer in consumers:
            consumer.start(b"", 0)
        await asyncio.sleep(0.05)
        assert all(c.live for c in consumers)
        fanout.push("app", [b'{"id":"e_' + b"0" * 20 + b'","subject":"app.a","payload":1}'], 1)
        return consumers, sinks, written

    (broken, fine), (sink, _), written = asyncio.run(main())
    assert broken.done and not broken.live
    assert b"event: error" in sink.ended and b"could not go on serving this stream" in sink.ended
    assert b"c0" not in broken.fanout.consumers
    assert fine.live and fine.cursor == 1 and any(b"event: msg" in w for w in written)
