"""The Python SDK of busd: `Client` (blocking, thread-safe) and `AsyncClient` (asyncio),
with the Go SDK's verbs — put (with request/reply and confirmations), batch put, get
(an iterator of events that reconnects and resumes by itself) and ack. It imports nothing
of the server: this package, `busd/__init__.py` and `busd/wire.py` are all it needs."""

from busd.client import errors
from busd.client._async import AsyncClient, AsyncSubscription
from busd.client._events import AsyncEvent, BatchResult, Event, PutResult
from busd.client._sync import Client, Subscription
from busd.client.errors import *  # noqa: F403  (every exception: errors.__all__)

__all__ = ["AsyncClient", "AsyncEvent", "AsyncSubscription", "BatchResult", "Client", "Event",
           "PutResult", "Subscription"]
__all__ += errors.__all__
