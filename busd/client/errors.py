"""The SDK's exceptions: one per kind of failure, each carrying what the server said."""

from __future__ import annotations

import re
import ssl
from typing import Any

__all__ = [
    "BadRequestError", "BusConnectionError", "BusError", "BusTimeoutError", "ConflictError",
    "CorruptEventError",
    "ForbiddenError", "NotFoundError", "PayloadTooLargeError", "ServerError", "StorageError",
    "SubscriptionError", "UnauthorizedError",
]


class BusError(Exception):
    """Base of every error the SDK raises on purpose.

    `status` is the HTTP status the server answered (None when no answer came), and
    `reason` the server's one-line explanation (or what went wrong on the client side).
    """

    status: int | None

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(f"{status}: {reason}" if status is not None else reason)
        self.reason = reason
        self.status = status


class BadRequestError(BusError):
    """400: the server refused the request (bad JSON, subject, parameter, namespace...)."""


class UnauthorizedError(BusError):
    """401: the server wants a token (`Client(url, token=...)`) and got none, or an unknown one."""


class ForbiddenError(BusError):
    """403: the token may not publish to / subscribe to this subject (or ack this consumer)."""


class NotFoundError(BusError):
    """404: no such endpoint (the URL does not point at a bus server's root)."""


class ConflictError(BusError):
    """409: an event with this `key` was already published on this subject."""


class PayloadTooLargeError(BusError):
    """413: an event's payload is larger than the server's --max-event-size, or the
    request larger than the server takes."""


class ServerError(BusError):
    """5xx: the server could not do what was asked."""


class StorageError(ServerError):
    """507 (or 500 on the publish path): the server could not write its log (disk full...)."""


class BusConnectionError(BusError, ConnectionError):
    """The server could not be reached, or the connection broke before an answer came."""


class BusTimeoutError(BusError, TimeoutError):
    """No answer (or not enough replies/confirmations) within the timeout.

    From a `put` with `request_reply`/`confirm` whose event was stored, `result` is its
    `PutResult` (id, index, created_at), with the replies that did come in `replies`."""

    result: Any = None


class SubscriptionError(BusError):
    """The server ended a subscription with an `error` event (e.g. start id not found,
    history truncated by retention), or refused to resume it after a reconnect (410: the
    last event seen is no longer, or never was, in the log); the reason is the server's."""


class CorruptEventError(SubscriptionError):
    """The subscription ended at an event the server cannot serve: its record is corrupt on
    disk (nothing corrupt is ever served). Reconnecting stops there again; to step over it
    deliberately, subscribe again with `start=error.resume_start` ("index:<n>", the index
    just after it). `index` is the corrupt record's."""

    def __init__(self, reason: str, index: int, resume_start: str) -> None:
        super().__init__(reason)
        self.index = index
        self.resume_start = resume_start


_CORRUPT = re.compile(r"corrupt record at index (\d+) .*\bstart=(index:\d+)")


def stream_error(reason: str) -> SubscriptionError:
    """The exception for a stream's `error` event (the server's reason)."""
    corrupt = _CORRUPT.search(reason)
    if corrupt is not None:
        return CorruptEventError(reason, int(corrupt.group(1)), corrupt.group(2))
    return SubscriptionError(reason or "subscription ended")


_BY_STATUS: dict[int, type[BusError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    410: SubscriptionError,
    413: PayloadTooLargeError,
    507: StorageError,
}


def error_for(status: int, body: bytes) -> BusError:
    """The exception for a non-success answer: its class by status, the body as reason."""
    reason = body.decode("utf-8", "replace").strip() or f"HTTP {status}"
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else BusError
    return cls(reason, status)


def connect_error(host: str, port: int, exc: OSError) -> BusError:
    """The exception for a connection that could not be opened (or secured)."""
    if isinstance(exc, TimeoutError):
        return BusTimeoutError(f"connecting to {host}:{port} timed out")
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = f"its TLS certificate failed verification: {exc.verify_message}"
    else:
        why = exc.strerror or str(exc)
    return BusConnectionError(f"cannot reach the bus at {host}:{port}: {why}")
