"""busd: a persistent, high-performance message bus wire-compatible with Bus (ella.to/bus)."""

__version__ = "0.1.0"
from busd.client import *  # noqa: E402,F401,F403  (the SDK: Client, AsyncClient, Event, …)
