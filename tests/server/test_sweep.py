"""Sweep: a pass over many connections is spread over loop callbacks."""

from __future__ import annotations

import asyncio

from busd.server.sweep import Sweep


def test_a_pass_visits_every_item_a_slice_per_callback():
    async def main():
        loop = asyncio.get_running_loop()
        order: list[object] = []
        sweep = Sweep(loop, lambda item, now: order.append(item), size=10)
        loop.call_soon(order.append, "other")  # queued before the pass starts
        sweep.start(range(25))
        assert order == list(range(10)) and sweep.running
        sweep.start(range(100, 200))  # while a pass runs: skipped
        for _ in range(5):
            await asyncio.sleep(0)
        assert not sweep.running
        return order

    order = asyncio.run(main())
    assert [x for x in order if x != "other"] == list(range(25))
    assert 10 <= order.index("other") < 25  # ran between slices, not after the pass


def test_the_items_are_a_snapshot():
    async def main():
        items = set(range(30))
        seen = []
        sweep = Sweep(asyncio.get_running_loop(), lambda item, now: seen.append(item), size=7)
        sweep.start(items)
        items.clear()  # changing the set meanwhile is safe
        while sweep.running:
            await asyncio.sleep(0)
        return seen

    assert sorted(asyncio.run(main())) == list(range(30))
