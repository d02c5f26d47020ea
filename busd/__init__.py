"""busd: a persistent, high-performance message bus wire-compatible with Bus (ella.to/bus)."""

__version__ = "0.1.0"
