"""Which token an inbox belongs to under --auth-file: the first one that subscribed to it.

Inbox ids are unguessable (128 random bits), but they travel in events as
`response_subject`: whoever reads the request knows the inbox. Binding the inbox to the
token that subscribed first keeps such a reader from also reading the replies. Publishing
to an inbox stays open to every token (that is how a responder replies).

A binding holds while the owner has a subscriber on the inbox (the fan-out's inbox
registry says so) and for `linger` seconds after its last one left, so that a requester
that reconnects keeps its inbox. Lingering bindings are bounded in number (`limit`, the
oldest forgotten first): clients choose inbox names, so nothing here may grow with them.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

DEFAULT_LINGER = 300.0  # seconds a binding outlives its last subscriber
DEFAULT_LIMIT = 65536  # lingering bindings kept at most


class InboxOwners:
    """The bindings of inboxes that have no subscriber right now (live ones are asked of
    `live_owners`, the fan-out's registry)."""

    def __init__(self, live_owners: Callable[[bytes], Iterable[str | None]],
                 linger: float = DEFAULT_LINGER, limit: int = DEFAULT_LIMIT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._live_owners = live_owners
        self.linger = linger
        self.limit = limit
        self.clock = clock
        self._lingering: OrderedDict[bytes, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lingering)

    def owner(self, subject: bytes) -> str | None:
        """The token the inbox is bound to, or None when it is free."""
        for name in self._live_owners(subject):
            if name is not None:
                return name
        entry = self._lingering.get(subject)
        if entry is None:
            return None
        if entry[1] + self.linger <= self.clock():
            del self._lingering[subject]
            return None
        return entry[0]

    def claim(self, subject: bytes, name: str) -> str | None:
        """Bind a free inbox to `name` (from this subscribe on, before its stream starts);
        the other token's name when the inbox is bound to another, else None."""
        owner = self.owner(subject)
        if owner is not None and owner != name:
            return owner
        self.keep(subject, name)
        return None

    def keep(self, subject: bytes, name: str | None) -> None:
        """The owner's subscriber left (or is about to start): the binding lingers from now."""
        if name is None:
            return
        lingering = self._lingering
        lingering[subject] = (name, self.clock())
        lingering.move_to_end(subject)
        while len(lingering) > self.limit:
            lingering.popitem(last=False)
