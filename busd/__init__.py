"""busd: a persistent, high-performance message bus wire-compatible with Bus (ella.to/bus)."""

__version__ = "0.1.0"
def __getattr__(name: str): return getattr(__import__("busd.client", fromlist=["__all__"]), name)  # noqa: E501,E704 — the SDK (Client, AsyncClient, Event, BusError, …), imported on first use
