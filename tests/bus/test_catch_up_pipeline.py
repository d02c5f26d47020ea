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
