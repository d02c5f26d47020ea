"""The Python SDK of busd: `Client` (blocking, thread-safe) and `AsyncClient` (asyncio),
with the Go SDK's verbs — put (with request/reply and confirmations), batch put, get
(an iterator of events that reconnects and resumes by itself) and ack."""

from busd.client._async import AsyncClient, AsyncSubscription
from busd.client._events import AsyncEvent, BatchResult, Event, PutResult
from busd.client._sync import Client, Subscription
from busd.client.errors import (
    BadRequestError,
    BusConnectionError,
    BusError,
    BusTimeoutError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PayloadTooLargeError,
    ServerError,
    StorageError,
    SubscriptionError,
    UnauthorizedError,
)

__all__ = [
    "AsyncClient", "AsyncEvent", "AsyncSubscription", "BadRequestError", "BatchResult",
    "BusConnectionError", "BusError", "BusTimeoutError", "Client", "ConflictError", "Event",
    "ForbiddenError", "NotFoundError", "PayloadTooLargeError", "PutResult", "ServerError",
    "StorageError", "Subscription", "SubscriptionError", "UnauthorizedError",
]
