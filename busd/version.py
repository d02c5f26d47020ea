"""The version of busd, in a module of its own so that any part (the SDK too) can read it
without importing the `busd` package's re-exports."""

__version__ = "0.1.0"
