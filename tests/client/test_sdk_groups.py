"""The SDK's consumer groups: get(..., group=) with ack, nak, term, progress, deliveries."""

from __future__ import annotations

import asyncio
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import uvloop
from busclient import wait_until

from busd import AsyncClient, Client
from busd.client.errors import ServerError


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
        b.close()  # else the nak'd event may go to b, which nobody reads, until its ack_wait
        wait_until(lambda: len(client.groups("orders", "billing")["orders"]["billing"][
            "members"]) == 1, what="b still a member of the group after closing")
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


# -- a member's acks coalesced into batched PUTs (busd/client/_acks.py) -------------------------
EVENTS = 300


def spy_on_settles(client, fails) -> list[list[str]]:
    """The event ids of each settle PUT the client sends; a PUT for which `fails(ids)` is
    true is not sent and raises a ServerError instead (as a 500 would)."""
    sent: list[list[str]] = []
    real = client._settle_target

    def settle(target: str):
        ids = parse_qs(urlsplit(target).query)["event_id"]
        sent.append(ids)
        return refuse() if fails(ids) else real(target)

    def refuse():
        raise ServerError("refused by the test", 500)
        yield  # a flow

    client._settle_target = settle
    return sent


def poisoned(ids: list[str]) -> set[str]:
    """Every seventh id: a PUT carrying one of them fails."""
    return set(ids[::7])


def check_outcomes(sent, outcomes: dict[str, BaseException | None], bad: set[str]) -> None:
    """Every ack went out once, and raised exactly when the PUT that carried it failed."""
    assert sorted(i for ids in sent for i in ids) == sorted(outcomes)
    failed = {i for ids in sent if bad & set(ids) for i in ids}
    assert {i for i, error in outcomes.items() if error is not None} == failed
    assert all(isinstance(e, ServerError) for e in outcomes.values() if e is not None)


def wait_until_settled(url: str, group: str, expected: tuple[int, int]) -> None:
    """Until the group's (acked, pending) are `expected`, for up to 5 s (JetStream's
    figures are the consumer info of up to a second ago)."""
    with Client(url) as client:
        def figures() -> tuple[int, int]:
            state = client.groups("orders", group)["orders"][group]
            return state["acked"], state["pending"]

        wait_until(lambda: figures() == expected, interval=0.1,
                   what=lambda: f"(acked, pending) {figures()}, not {expected}")


def test_async_acks_of_one_tick_go_in_one_put(store_server):
    url = f"http://127.0.0.1:{store_server.port}"

    async def main() -> None:
        async with AsyncClient(url, timeout=10) as client:
            sub = await client.get("orders.>", group="g", max_inflight=EVENTS)
            await client.put_batch([{"subject": "orders.new", "data": n}
                                    for n in range(EVENTS)])
            events = [await sub.__anext__() for _ in range(EVENTS)]
            bad = poisoned([e.id for e in events[100:]])
            sent = spy_on_settles(client, lambda ids: bool(bad & set(ids)))
            first = await asyncio.gather(*(e.ack() for e in events[:100]))
            assert first == [None] * 100 and len(sent) == 1  # one tick, one PUT
            rest = await asyncio.gather(*(e.ack() for e in events[100:]),
                                        return_exceptions=True)
            check_outcomes(sent, dict(zip((e.id for e in events), first + rest)), bad)
            failed = sum(error is not None for error in rest)
            expected = (EVENTS - failed, failed)
            wait_until_settled(url, "g", expected)  # (blocks the loop a moment)
            await sub.aclose()

    uvloop.run(main())


def test_sync_acks_from_threads_coalesce_while_a_put_is_out(store_server):
    url = f"http://127.0.0.1:{store_server.port}"
    with Client(url, timeout=10) as client:
        sub = client.get("orders.>", group="g", max_inflight=EVENTS)
        client.put_batch([{"subject": "orders.new", "data": n} for n in range(EVENTS)])
        events = [next(sub) for _ in range(EVENTS)]
        bad = poisoned([e.id for e in events])
        sent = spy_on_settles(client, lambda ids: bool(bad & set(ids)))
        outcomes: dict[str, BaseException | None] = {}
        start = threading.Barrier(8)

        def worker(mine) -> None:
            start.wait()
            for event in mine:
                try:
                    event.ack()
                    outcomes[event.id] = None
                except ServerError as exc:
                    outcomes[event.id] = exc

        threads = [threading.Thread(target=worker, args=(events[n::8],)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert len(outcomes) == EVENTS
        check_outcomes(sent, outcomes, bad)
        assert len(sent) < EVENTS / 2, len(sent)  # eight acking at once share PUTs
        failed = sum(error is not None for error in outcomes.values())
        assert 0 < failed < EVENTS  # both outcomes were tried
        expected = (EVENTS - failed, failed)
        wait_until_settled(url, "g", expected)
        sub.close()
