"""busd: a persistent, high-performance message bus wire-compatible with Bus (ella.to/bus).

`import busd` loads the Python SDK only (the server is `busd.server`, started by `bus server`).
"""

__version__ = "0.1.0"

# after __version__, which the SDK's User-Agent reads
from busd.client import (  # noqa: E402
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

__all__ = [
    "AsyncClient", "AsyncEvent", "AsyncSubscription", "BadRequestError", "BatchResult",
    "BusConnectionError", "BusError", "BusTimeoutError", "Client", "ConflictError", "Event",
    "ForbiddenError", "NotFoundError", "PayloadTooLargeError", "PutResult", "ServerError",
    "StorageError", "Subscription", "SubscriptionError", "UnauthorizedError", "__version__",
]
