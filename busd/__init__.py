"""busd: a persistent, high-performance message bus wire-compatible with Bus (ella.to/bus).

`import busd` loads the Python SDK only (the server is `busd.server`, started by `bus server`).
"""

from busd.client import (
    AsyncClient,
    AsyncEvent,
    AsyncSubscription,
    BadRequestError,
    BatchResult,
    BusConnectionError,
    BusError,
    BusTimeoutError,
    Client,
    ConflictError,
    CorruptEventError,
    Event,
    ForbiddenError,
    NotFoundError,
    PayloadTooLargeError,
    PutResult,
    ServerError,
    StorageError,
    Subscription,
    SubscriptionError,
    UnauthorizedError,
)
from busd.version import __version__

__all__ = [
    "AsyncClient", "AsyncEvent", "AsyncSubscription", "BadRequestError", "BatchResult",
    "BusConnectionError", "BusError", "BusTimeoutError", "Client", "ConflictError",
    "CorruptEventError", "Event",
    "ForbiddenError", "NotFoundError", "PayloadTooLargeError", "PutResult", "ServerError",
    "StorageError", "Subscription", "SubscriptionError", "UnauthorizedError", "__version__",
]
