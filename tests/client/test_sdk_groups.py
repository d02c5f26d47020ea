"""The SDK's consumer groups: get(..., group=) with ack, nak, term, progress, deliveries."""

from __future__ import annotations

import time

import pytest
import uvloop

from busd import AsyncClient, Client


def test_members_share_and_settle(store_server):
    server = store_server
    with Client(f"http://127.0.0.1:{server.port}", timeout=10) as client:
        a = client.get("orders.>", group="billing", max_inflight=5)
        b = client.get("orders.>", group="billing", max_inflight=5)
        client.put_batch([{"subject": "orders.new", "data": n} for n in range(6)])
        first = [next(a) for _ in range(3)]
        second = [next(b) for _ in range(3)]
        assert {e.payload for e in first + second} == set(range(6))
        assert all(e.deliveries == 1 for e in first + second)
        for event in second:
            event.ack()
        first[0].ack()
        first[1].nak(delay=0.2)
        started = time.monotonic()
        first[2].term()
        again = next(a)
        assert again.id == first[1].id and again.deliveries == 2
        assert time.monotonic() - started >= 0.15
        again.ack()
        letters = client.get("orders.dlq.>", start="oldest", idle_timeout=2)
        letter = next(letters)
        assert letter.payload["reason"] == "term" and letter.payload["event"]["id"] == first[2].id
        for sub in (a, b, letters):
            sub.close()
        plain = client.get("orders.>", start="oldest", ack="manual")
        with pytest.raises(ValueError):
            next(plain).nak()
        plain.close()


def test_progress_restarts_ack_wait(store_server):
    with Client(f"http://127.0.0.1:{store_server.port}", timeout=10) as client:
        sub = client.get("orders.>", group="g", ack_wait="400ms", max_inflight=2)
        client.put("orders.new", 1)
        event = next(sub)
        for _ in range(4):
            time.sleep(0.2)
            event.progress()
        # twice its ack_wait after the delivery, and not handed out again
        state = client.groups("orders", "g")["orders"]["g"]
        assert state["redeliveries"] == 0 and state["members"][0]["inflight"] == 1
        event.ack()
        sub.close()


def test_reconnect_rejoins_the_group(store_server):
    """A busd killed (-9) and started again: the SDK rejoins; the unacked events come back
    (on JetStream after ack_wait: the killed front-end could not hand them back)."""
    server = store_server
    with Client(f"http://127.0.0.1:{server.port}", timeout=10) as client:
        sub = client.get("orders.>", group="g", start="oldest", max_inflight=10,
                         ack_wait="1s")
        client.put_batch([{"subject": "orders.new", "data": n} for n in range(10)])
        for _ in range(4):
            next(sub).ack()
        server.kill()
        server.start()
        rest = sorted(next(sub).payload for _ in range(6))  # the unacked ones, after rejoining
        assert rest == list(range(4, 10))
        sub.close()


def test_async_group_member(store_server):
    server = store_server

    async def main() -> None:
        async with AsyncClient(f"http://127.0.0.1:{server.port}", timeout=10) as client:
            sub = await client.get("orders.>", group="g")
            await client.put("orders.new", 1)
            event = await sub.__anext__()
            assert event.deliveries == 1
            await event.nak()
            event = await sub.__anext__()
            assert event.deliveries == 2
            await event.progress()
            await event.ack()
            await sub.aclose()

    uvloop.run(main())
