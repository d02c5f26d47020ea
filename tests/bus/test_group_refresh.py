"""The JetStream registry's refresh: which of its groups it takes for deleted elsewhere."""

from __future__ import annotations

import asyncio

from busd.bus.group.jetstream import JetStreamGroups


class FakeGroup:
    def __init__(self, name: str, ready: bool) -> None:
        self.namespace, self.name, self.ready, self.closed = "orders", name, ready, None

    def close(self, reason: str) -> None:
        self.closed = reason


class ListingStore:
    """A store whose CONSUMER.LIST answers no consumers, while `meanwhile` happens."""

    def __init__(self, meanwhile) -> None:
        self.meanwhile = meanwhile

    async def _api(self, subject: str, body, timeout: float = 5.0) -> dict:
        assert subject == "CONSUMER.LIST.orders"
        self.meanwhile()
        return {"consumers": [], "total": 0}


def test_a_group_created_while_the_listing_is_out_is_not_taken_for_deleted():
    """Before, a group whose consumer was created while a refresh's CONSUMER.LIST was out
    (the first refresh runs at start-up, beside the first joins) was missing from the
    listing, so dropped, and its members' streams ended with 'was deleted': the likely
    cause of a test_groups.py jetstream test seen once ending a stream before its first
    event under a loaded full run."""
    gone, fresh = FakeGroup("gone", ready=True), FakeGroup("fresh", ready=False)

    def created_meanwhile() -> None:
        fresh.ready = True

    registry = JetStreamGroups.__new__(JetStreamGroups)
    registry.store = ListingStore(created_meanwhile)
    registry.groups = {("orders", "gone"): gone, ("orders", "fresh"): fresh}
    asyncio.run(registry._learn("orders"))
    assert fresh.closed is None and ("orders", "fresh") in registry.groups
    assert gone.closed == "group gone of namespace orders was deleted"
    assert ("orders", "gone") not in registry.groups
