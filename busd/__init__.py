"""busd: a persistent, high-performance message bus wire-compatible with Bus (ella.to/bus).

`import busd` gives the Python SDK (the server is `busd.server`, started by `bus server`),
loaded on first use: `bus server` starts through this package and must not pay for it.
"""

from busd.version import __version__

__all__ = [
    "AsyncClient", "AsyncEvent", "AsyncSubscription", "BadRequestError", "BatchResult",
    "BusConnectionError", "BusError", "BusTimeoutError", "Client", "ConflictError",
    "CorruptEventError", "Event",
    "ForbiddenError", "NotFoundError", "PayloadTooLargeError", "PutResult", "ServerError",
    "StorageError", "Subscription", "SubscriptionError", "UnauthorizedError", "__version__",
]


def __getattr__(name: str):
    """`busd.Client` and the rest of __all__ come from busd.client, imported when first
    asked for (PEP 562)."""
    if name in __all__:
        import busd.client

        return getattr(busd.client, name)
    raise AttributeError(f"module 'busd' has no attribute {name!r}")
