"""Subscriptions survive the server going away: across a graceful restart and a SIGKILL,
both clients resume with Last-Event-ID and hand out every event exactly once, in order.

These are the tests that fail when the guarantee breaks: resuming from the original
`start` duplicates events, resuming from `newest` loses them, a stale pooled connection
fails the publishes after the restart."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time

import pytest
import uvloop
from busclient import publish

from busd import AsyncClient, BusConnectionError, Client, SubscriptionError

STORED = 2000      # events in the log before the subscriber starts
BEFORE = 100       # events the subscriber reads before the server goes away
AFTER = 500        # events published after the server is back


def bounce(server, how: str) -> None:
    if how == "restart":
        server.restart()          # SIGTERM: the server ends its streams cleanly
    else:
        server.kill()             # SIGKILL: connections just break
        server.start()


def store(client: Client, subject: str, first: int, count: int) -> None:
    for chunk in range(first, first + count, 500):
        client.put_batch([{"subject": subject, "data": n}
                          for n in range(chunk, min(chunk + 500, first + count))])


@pytest.mark.parametrize("how", ["restart", "kill"])
def test_sync_subscription_sees_every_event_once_across_a_server_bounce(make_server, how):
    server = make_server("app")
    with Client(f"http://127.0.0.1:{server.port}", timeout=10) as client:
        store(client, "app.r", 0, STORED)
        sub = client.get("app.>", start="oldest")
        got = [next(sub).payload for _ in range(BEFORE)]
        first_consumer = sub.consumer_id
        bounce(server, how)
        for n in range(STORED, STORED + AFTER):  # through the pool: stale connections dropped
            client.put("app.r", n)
        deadline = time.monotonic() + 20
        while len(got) < STORED + AFTER and time.monotonic() < deadline:
            got.append(next(sub).payload)
        client.put("app.r", "end")          # nothing may come before it: no duplicate
        got.append(next(sub).payload)
        assert got == list(range(STORED + AFTER)) + ["end"]
        assert sub.consumer_id != first_consumer  # acks go to the new consumer
        sub.close()


@pytest.mark.parametrize("how", ["restart", "kill"])
def test_async_subscription_sees_every_event_once_across_a_server_bounce(make_server, how):
    server = make_server("app")
    with Client(f"http://127.0.0.1:{server.port}", timeout=10) as sync_client:
        store(sync_client, "app.r", 0, STORED)

    async def scenario():
        async with AsyncClient(f"http://127.0.0.1:{server.port}", timeout=10) as client:
            sub = await client.get("app.>", start="oldest")
            got = [(await sub.__anext__()).payload for _ in range(BEFORE)]
            first_consumer = sub.consumer_id
            await asyncio.to_thread(bounce, server, how)
            await asyncio.gather(*(client.put("app.r", n)
                                   for n in range(STORED, STORED + AFTER)))
            async for event in sub:
                got.append(event.payload)
                if len(got) == STORED + AFTER:
                    break
            await client.put("app.r", "end")
            got.append((await sub.__anext__()).payload)
            assert got[:STORED] == list(range(STORED))
            assert sorted(got[STORED:-1]) == list(range(STORED, STORED + AFTER))  # concurrent
            assert got[-1] == "end"
            assert sub.consumer_id != first_consumer
            await sub.aclose()

    uvloop.run(asyncio.wait_for(scenario(), 40))


def test_manual_ack_resumes_after_the_last_acked_event(make_server):
    server = make_server("app")
    with Client(f"http://127.0.0.1:{server.port}", timeout=10) as client:
        store(client, "app.m", 0, 10)
        sub = client.get("app.m", start="oldest", ack="manual", max_inflight=3)
        e0, e1, e2 = next(sub), next(sub), next(sub)
        e0.ack()
        e2.ack()      # acked out of order; e1 is not acked when the server goes away
        server.restart()
        seen = {}
        for event in sub:
            assert event.payload not in seen, f"{event.payload} handed out twice"
            seen[event.payload] = event
            event.ack()
            if len(seen) == 8:
                break
        # e1 comes back (from the new consumer); e0 and e2, acked, do not; the events the
        # old consumer had already sent (buffered) are not handed out a second time
        assert sorted(seen) == [1, 3, 4, 5, 6, 7, 8, 9]
        assert seen[1].id == e1.id and seen[1].consumer_id != e1.consumer_id
        assert seen[9].consumer_id == sub.consumer_id
        sub.close()


def test_reconnect_gives_up_after_reconnect_timeout(make_server):
    server = make_server("app")
    with Client(f"http://127.0.0.1:{server.port}", timeout=2) as client:
        sub = client.get("app.x", reconnect_timeout=1.0)
        server.stop()
        t0 = time.monotonic()
        with pytest.raises(BusConnectionError, match="gave up reconnecting"):
            next(sub)
        assert time.monotonic() - t0 < 5
        with pytest.raises(StopIteration):  # and it stays ended
            next(sub)


def test_reconnect_false_reports_the_drop(make_server):
    server = make_server("app")
    with Client(f"http://127.0.0.1:{server.port}", timeout=2) as client:
        sub = client.get("app.x", reconnect=False)
        server.stop()
        with pytest.raises(BusConnectionError, match="reconnect=False"):
            next(sub)


# A `start="newest"` subscription that has not seen an event yet resumes from the server's
# `: resume-after` hint: the events published between the restart and its reconnect (the
# SDK only reconnects when iterated) are not lost, and none comes twice.
HINTED = 50


@pytest.mark.parametrize("history", ["empty", "stored"])   # hint: oldest / an event id
def test_sync_newest_subscription_without_events_loses_nothing_across_a_restart(
        make_server, history):
    server = make_server("app")
    with Client(f"http://127.0.0.1:{server.port}", timeout=10) as client:
        if history == "stored":
            store(client, "app.r", -10, 10)
        sub = client.get("app.>")                   # newest; nothing delivered yet
        server.restart()
        for n in range(HINTED):
            assert publish(server.port, "app.r", n).status == 202
        stopper = threading.Timer(15, sub.close)    # without the hint nothing ever comes
        stopper.start()
        try:
            got = []
            for event in sub:
                got.append(event.payload)
                if len(got) == HINTED:
                    break
            assert got == list(range(HINTED))
            client.put("app.r", "end")              # nothing before it: no duplicate
            assert next(sub).payload == "end"
        finally:
            stopper.cancel()
            sub.close()


@pytest.mark.parametrize("history", ["empty", "stored"])
def test_async_newest_subscription_without_events_loses_nothing_across_a_restart(
        make_server, history):
    server = make_server("app")
    if history == "stored":
        with Client(f"http://127.0.0.1:{server.port}", timeout=10) as sync_client:
            store(sync_client, "app.r", -10, 10)

    async def scenario():
        async with AsyncClient(f"http://127.0.0.1:{server.port}", timeout=10) as client:
            sub = await client.get("app.>")
            await asyncio.to_thread(server.restart)
            for n in range(HINTED):
                assert (await asyncio.to_thread(publish, server.port, "app.r", n)).status == 202
            got = []
            async for event in sub:
                got.append(event.payload)
                if len(got) == HINTED:
                    break
            assert got == list(range(HINTED))
            await client.put("app.r", "end")
            assert (await sub.__anext__()).payload == "end"
            await sub.aclose()

    uvloop.run(asyncio.wait_for(scenario(), 20))


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_resume_point_gone_after_a_restart_is_a_subscription_error(make_server, flavour):
    """The server answers 410 to a Last-Event-ID it cannot honour (here: its data
    directory was wiped): the subscription ends with that reason instead of reconnecting."""
    server = make_server("app")
    url = f"http://127.0.0.1:{server.port}"

    def wipe() -> None:
        server.stop()
        shutil.rmtree(server.path)
        server.start()

    def check(info, took: float) -> None:
        assert info.value.status == 410
        assert "cannot resume from Last-Event-ID" in info.value.reason
        assert "not found in namespace app" in info.value.reason
        assert took < 5
        assert server.log().count("refusing to resume") == 1  # asked once, no loop

    if flavour == "sync":
        with Client(url, timeout=5) as client:
            client.put("app.w", 1)
            sub = client.get("app.>", start="oldest")
            assert next(sub).payload == 1
            wipe()
            started = time.monotonic()
            with pytest.raises(SubscriptionError) as info:
                next(sub)
            check(info, time.monotonic() - started)
            with pytest.raises(StopIteration):
                next(sub)
        return

    async def scenario():
        async with AsyncClient(url, timeout=5) as client:
            await client.put("app.w", 1)
            sub = await client.get("app.>", start="oldest")
            assert (await sub.__anext__()).payload == 1
            await asyncio.to_thread(wipe)
            started = time.monotonic()
            with pytest.raises(SubscriptionError) as info:
                await sub.__anext__()
            check(info, time.monotonic() - started)
            with pytest.raises(StopAsyncIteration):
                await sub.__anext__()

    uvloop.run(asyncio.wait_for(scenario(), 20))
