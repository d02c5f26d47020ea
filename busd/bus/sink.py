"""The two sides of a subscription's connection, as the bus layer sees them.

A consumer writes SSE bytes to a `Sink` and never sees a socket; the sink (an HTTP
connection) tells the consumer, as its `Stream`, when its buffer fills, drains or closes.
"""

from __future__ import annotations

from typing import Protocol


class Stream(Protocol):
    """What a sink talks to: the subscription writing to it."""

    def pause(self) -> None:
        """The sink's buffer is full: stop writing until `resume`."""
        ...

    def resume(self) -> None: ...

    def closed(self) -> None:
        """The connection is gone."""
        ...

    def end(self) -> None:
        """The server shuts down: finish the stream cleanly."""
        ...


class Sink(Protocol):
    """Where a subscription's bytes go."""

    def attach_stream(self, stream: Stream, headers: bytes, high_water: int | None = None
                      ) -> None:
        """Send the response head, with these extra header lines (the sink knows the
        request's protocol version, so it builds the head); from now on `write` sends body
        chunks and `stream` is told about the buffer. high_water: how much may be buffered
        before `pause`."""
        ...

    def write(self, data: bytes) -> None: ...

    def end_stream(self, last_chunk: bytes = b"") -> None:
        """Send `last_chunk`, finish the stream and close the connection."""
        ...
