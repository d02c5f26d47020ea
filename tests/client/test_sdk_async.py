"""busd.AsyncClient against a real server process: every verb, request/reply and confirm
with two responders, 32 concurrent puts, error mapping, closing and cancelling."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
import uvloop
from busclient import free_port

from busd import (
    AsyncClient,
    AsyncEvent,
    BadRequestError,
    BusConnectionError,
    BusTimeoutError,
    ConflictError,
    SubscriptionError,
)

_n = itertools.count()


def topic(ns: str = "app") -> str:
    return f"{ns}.a{next(_n)}"


@pytest.fixture(scope="module")
def bus(shared_server):
    """conftest's module-wide server (app, orders, math)."""
    return shared_server


def run(coro_fn, bus, timeout: float = 20.0):
    """Run `coro_fn(client)` on uvloop with a fresh AsyncClient, bounded in time."""
    async def main():
        async with AsyncClient(f"http://127.0.0.1:{bus.port}", timeout=10) as client:
            return await asyncio.wait_for(coro_fn(client), timeout)
    return uvloop.run(main())


def test_put_batch_and_get(bus):
    async def scenario(ac: AsyncClient):
        subject = topic()
        first = await ac.put(subject, {"user_id": "123"}, key="u-1", trace_id="req-1")
        batch = await ac.put_batch([{"subject": subject, "data": {"id": 1}},
                                    {"subject": subject, "data": {"id": 2}, "key": "o-2"}])
        assert batch.count == 2 and batch.first_index == first.index + 1
        events = []
        async for event in ac.get(subject, start="oldest"):
            events.append(event)
            if len(events) == 3:
                break
        assert all(isinstance(e, AsyncEvent) for e in events)
        assert [e.payload for e in events] == [{"user_id": "123"}, {"id": 1}, {"id": 2}]
        assert (events[0].id, events[0].key, events[0].trace_id) == (first.id, "u-1", "req-1")
        assert [e.id for e in events[1:]] == batch.ids
        assert events[0].created_at == first.created_at
        sub = await ac.get(subject)  # awaited: live from here on
        await ac.put(subject, "live")
        assert (await sub.__anext__()).payload == "live"
        await sub.aclose()
    run(scenario, bus)


def test_manual_ack(bus):
    async def scenario(ac: AsyncClient):
        subject = topic()
        await ac.put(subject, "a")
        await ac.put(subject, "b")
        async with ac.get(subject, start="oldest", ack="manual", redelivery=0.3) as sub:
            first = await sub.__anext__()
            again = await sub.__anext__()
            assert again.id == first.id
            await again.ack()
            assert (await sub.__anext__()).payload == "b"
    run(scenario, bus)


async def _responders(ac: AsyncClient, subject: str, ack: str):
    subs = [await ac.get(subject, ack=ack) for _ in range(2)]

    async def serve(sub, name):
        async for event in sub:
            if isinstance(event.payload, dict):
                await event.ack({"result": event.payload["A"] + event.payload["B"], "by": name})
            else:
                await event.ack()

    tasks = [asyncio.create_task(serve(sub, f"r{i}")) for i, sub in enumerate(subs)]
    return subs, tasks


def test_request_reply_and_confirm_with_two_responders(bus):
    async def scenario(ac: AsyncClient):
        subject = topic("math")
        subs, tasks = await _responders(ac, subject, "manual")
        replies = await asyncio.gather(*(ac.put(subject, {"A": a, "B": 1}, request_reply=True,
                                                timeout=5) for a in range(10)))
        assert [r.payload["result"] for r in replies] == [a + 1 for a in range(10)]
        assert {r.payload["by"] for r in replies} <= {"r0", "r1"}
        assert (await ac.put(subject, "x", confirm=2, timeout=5)).id.startswith("e_")
        t0 = time.monotonic()
        with pytest.raises(BusTimeoutError, match="2 of 3") as info:
            await ac.put(subject, "y", confirm=3, timeout=1)
        assert isinstance(info.value, TimeoutError) and time.monotonic() - t0 < 3
        for sub in subs:
            await sub.aclose()
        await asyncio.wait_for(asyncio.gather(*tasks), 2)  # aclose ends the loops
    run(scenario, bus)


def test_32_concurrent_puts(bus):
    async def scenario(ac: AsyncClient):
        subject = topic()
        results = await asyncio.gather(*(ac.put(subject, n) for n in range(320)))
        assert len({r.id for r in results}) == 320
        indexes = sorted(r.index for r in results)
        assert indexes == list(range(indexes[0], indexes[0] + 320))
        assert len(ac._pool.idle) <= 320
        seen = []
        async for event in ac.get(subject, start="oldest"):
            seen.append(event.payload)
            if len(seen) == 320:
                break
        assert sorted(seen) == list(range(320))
    run(scenario, bus)


def test_errors(bus):
    async def scenario(ac: AsyncClient):
        subject = topic()
        await ac.put(subject, 1, key="k")
        with pytest.raises(ConflictError) as info:
            await ac.put(subject, 1, key="k")
        assert info.value.status == 409 and info.value.reason == "key was processed before"
        with pytest.raises(BadRequestError, match="nowhere"):
            await ac.put("nowhere.x", 1)
        with pytest.raises(BadRequestError):
            await ac.get("app.>.x")
        with pytest.raises(SubscriptionError, match="not found"):
            async for _ in ac.get(subject, start="e_d4o7ehksdud4d8c68bg0"):
                pass
        with pytest.raises(TimeoutError, match="no reply"):
            await ac.put(topic("math"), 1, request_reply=True, timeout=0.3)
    run(scenario, bus)
    port = free_port()

    async def unreachable():
        async with AsyncClient(f"http://127.0.0.1:{port}", timeout=2) as ac:
            with pytest.raises(BusConnectionError, match=str(port)):
                await ac.put("app.x", 1)
            with pytest.raises(ConnectionError):
                await ac.get("app.x")
    uvloop.run(unreachable())


def test_aclose_and_cancel_end_a_waiting_iteration_promptly(bus):
    async def scenario(ac: AsyncClient):
        sub = await ac.get(topic())

        async def drain():
            return [event async for event in sub]

        task = asyncio.create_task(drain())
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        await sub.aclose()
        assert await asyncio.wait_for(task, 2) == [] and time.monotonic() - t0 < 1
        other = await ac.get(topic())
        task = asyncio.create_task(other.__anext__())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await other.aclose()
    run(scenario, bus)


def test_a_cancelled_wait_leaves_the_subscription_as_it_was(bus):
    async def scenario(ac: AsyncClient):
        subject = topic()
        sub = await ac.get(subject)
        consumer = sub.consumer_id
        for _ in range(3):   # a receive with a timeout, the asyncio way
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(sub.__anext__(), 0.1)
        assert not sub.closed
        await ac.put(subject, "after")
        assert (await asyncio.wait_for(sub.__anext__(), 5)).payload == "after"
        assert sub.consumer_id == consumer   # the same stream: no reconnect
        await sub.aclose()
    run(scenario, bus)


def test_raw_publishing_health_and_idle_timeout(bus):
    async def scenario(ac: AsyncClient):
        subject = topic()
        await ac.put_batch([{"subject": subject, "data": n, "key": f"k{n}"} for n in range(3)])
        events = [e async for e in ac.get(subject, start="oldest", idle_timeout=0.3)]
        assert [e.payload for e in events] == [0, 1, 2]
        # the same records again, as they are (keys included): refused as seen before
        with pytest.raises(ConflictError):
            await ac.put_raw(events[0].raw)
        with pytest.raises(ConflictError):
            await ac.put_batch_raw([e.raw for e in events])
        assert (await ac.health())["namespaces"]["app"]["events"] >= 3
    run(scenario, bus)

