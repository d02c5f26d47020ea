"""A subscription's protocol logic, without I/O, for both clients: its state, and the
flows (see `_protocol`) that hand out events, reconnect and resume, and ack."""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from typing import Any

from busd.client._events import Event
from busd.client._sse import RESUME_AFTER, Message, Resume
from busd.client._wire import encode_event
from busd.client.errors import BusConnectionError, BusError, BusTimeoutError, stream_error

log = logging.getLogger("busd.client")

Flow = Generator[Any, Any, Any]


class SubscriptionState:
    """Everything a subscription knows — its request target, the stream it reads, the
    resume point — and the flows its shell runs: `connect` once, `events` to iterate,
    `acked` for `Event.ack`. `close()` may come from any thread: it only sets `closed` and
    closes the stream, which ends a wait on it."""

    def __init__(self, target: str, manual: bool, redelivery_count: int | None,
                 reconnect: bool, reconnect_timeout: float | None,
                 heartbeat_timeout: float | None, idle_timeout: float | None = None,
                 group: bool = False) -> None:
        self.target = target
        self.group = group  # a group member: the server keeps the position, not the SDK
        self.manual = manual
        self.resume = Resume(manual, redelivery_count)
        self.reconnect = reconnect
        self.reconnect_timeout = reconnect_timeout
        self.heartbeat_timeout = heartbeat_timeout
        self.idle_timeout = idle_timeout
        self.consumer_id: str | None = None
        self.stream: Any = None    # the open `Stream`; None while reconnecting
        self.closed = False
        self._idle_end: float | None = None

    # -- the flows -------------------------------------------------------------------------
    def connect(self, client: Any) -> Flow:
        """The first connection, as asked (no Last-Event-ID)."""
        self._install((yield from client._subscribe(self.target, None, client.timeout)))

    def events(self, client: Any, sub: Any) -> Flow:
        """Hands out each event the caller is to see, reconnecting (and resuming) when the
        connection drops; ends once closed, or idle for `idle_timeout` (from the first
        call on, and after each event)."""
        event_cls, idle = client._Event, self.idle_timeout
        if idle is not None:
            self._idle_end = time.monotonic() + idle
        while not self.closed:
            messages = self.stream.messages
            if messages:
                message: Message | None = messages.popleft()
            elif self._idle():
                break
            else:
                try:
                    message = yield from self.stream.next(self._cut(self.heartbeat_timeout))
                except BusTimeoutError:
                    if self._idle():
                        break
                    message = None  # a silent connection is a dead one: reconnect
            if message is None:
                if not (yield from self._reconnect(client, sub)):
                    break
                continue
            event, visible = self.take(message, event_cls, sub)
            if visible:
                if idle is not None:
                    self._idle_end = time.monotonic() + idle
                yield event
            elif event is not None and self.manual:
                try:
                    yield from client._ack(event.consumer_id, event.id)
                except BusError as exc:
                    # not worth ending the iteration for: the server delivers the event
                    # again (hidden and re-acked again), or its consumer is gone
                    log.debug("busd subscription: re-ack of %s failed (%s)", event.id, exc)
        self.close()

    def acked(self, client: Any, event: Event, data: Any) -> Flow:
        """`event.ack(data)` but a group member's (the shells coalesce those, see `_acks`):
        the ack (with `ack="manual"`), then the reply it asks for."""
        if self.manual:
            yield from client._ack(event.consumer_id, event.id)
            self.resume.acked(event.id)
        yield from self.replied(client, event, data)

    def replied(self, client: Any, event: Event, data: Any) -> Flow:
        """The reply an acked event asks for (a request's, or a confirmation), if any."""
        if event.response_subject:
            yield from client._put_raw(encode_event(event.response_subject, data))

    def settled(self, client: Any, event: Event, action: str, delay: Any) -> Flow:
        """A group member's `event.nak(delay)`, `term()` or `progress()`."""
        if not self.group:
            raise ValueError(f"{action}() is for consumer group members (get(..., group=))")
        yield from client._settle(event.consumer_id, event.id, action, delay)

    def _reconnect(self, client: Any, sub: Any) -> Flow:
        """Replace the dropped stream: True once reconnected, False if closed (or idle)
        first; raises if it may not (reconnect=False), cannot (a 4xx) or gave up."""
        self.stream.close()
        self.stream = None
        if self.closed:
            return False
        if not self.reconnect:
            raise BusConnectionError("the subscription's connection ended (reconnect=False)")
        backoff = Backoff(self.reconnect_timeout)
        while not (self.closed or self._idle()):
            target, last_id = self.reconnect_request()
            try:
                stream = yield from client._subscribe(target, last_id, self._cut(client.timeout))
            except BusError as exc:
                if not retryable(exc):
                    raise
                delay = backoff.next_delay(exc)
                log.info("busd subscription: reconnecting in %.2fs (%s)", delay, exc)
                yield sub._sleep, self._cut(delay)
                continue
            self._install(stream)
            log.info("busd subscription: reconnected after %s, consumer %s", last_id,
                     stream.consumer_id)
            return True
        return False

    # -- the state -------------------------------------------------------------------------
    def take(self, message: Message, event_cls: type[Event],
             sub: object) -> tuple[Event | None, bool]:
        """(event, visible) for a message: a `msg` becomes an event, visible unless the caller
        already acked it (then it only needs acking on the current consumer); an `error`
        raises SubscriptionError (CorruptEventError at a corrupt record); anything else is
        (None, False)."""
        kind, _, data = message
        if kind == b"msg":
            event = event_cls(data, self.consumer_id or "", sub)
            resume = self.resume
            if self.group:
                return event, True
            if not self.manual:
                resume.last_id = event.id
                resume.started = True
                return event, True
            return event, resume.delivered(event.id)
        if kind == b"error":
            raise stream_error(data.decode("utf-8", "replace"))
        if kind == b"consumer" and data:
            self.consumer_id = data.decode()
        elif kind == RESUME_AFTER:
            self.resume.resume_after(data.decode("ascii", "replace"))
        return None, False

    def reconnect_request(self) -> tuple[str, str | None]:
        """(request target, Last-Event-ID) for the next reconnect: after the resume point,
        from the oldest retained event if the server said nothing came before the stream,
        or as first asked when there is no resume point."""
        if self.group:
            return self.target, None
        point = self.resume.reconnecting()
        if point == "oldest":
            return _with_start(self.target, "oldest"), None
        return self.target, point

    def close(self) -> None:
        self.closed = True
        stream = self.stream
        if stream is not None:
            stream.close()

    def _install(self, stream: Any) -> None:
        self.stream = stream
        self.consumer_id = stream.consumer_id
        if self.closed:  # closed while connecting: close() may not have seen this stream
            stream.close()

    def _idle(self) -> bool:
        return self._idle_end is not None and time.monotonic() >= self._idle_end

    def _cut(self, limit: float | None) -> float | None:
        """A wait of `limit` seconds (None: unbounded) cut to the idle time left."""
        if self._idle_end is None:
            return limit
        left = max(self._idle_end - time.monotonic(), 0.001)
        return left if limit is None else min(limit, left)


class SubscriptionBase:
    """What the two subscription shells share; each adds iteration (`__next__` or
    `__anext__`) and `_sleep(delay)`, a wait that `close()` cuts short through `wake`."""

    def __init__(self, client: Any, state: SubscriptionState, wake: Any) -> None:
        self._client = client
        self._state = state
        self._wake = wake

    @property
    def consumer_id(self) -> str | None:
        """The server-side consumer id of the current connection (changes on reconnect)."""
        return self._state.consumer_id

    @property
    def closed(self) -> bool:
        return self._state.closed

    def close(self) -> None:
        """End the subscription now (a `Subscription` from any thread, more than once): a
        waiting iteration ends."""
        self._state.close()
        self._wake.set()

    def __del__(self) -> None:
        state = getattr(self, "_state", None)  # (None if __init__ failed before setting it)
        if state is not None and state.stream is not None:
            try:
                state.stream.close()
            except RuntimeError:  # an asyncio stream whose event loop is already closed
                pass


def _with_start(target: str, start: str) -> str:
    """`target` (from subscribe_target) with its `start=` parameter replaced."""
    path, _, query = target.partition("?")
    params = [f"start={start}" if p.startswith("start=") else p for p in query.split("&")]
    return path + "?" + "&".join(params)


class Backoff:
    """Reconnect delays: 50 ms doubling to `ceiling` (the server's `retry: 2000`), and the
    deadline after which a subscription gives up (None: never)."""

    def __init__(self, give_up_after: float | None, ceiling: float = 2.0) -> None:
        self.delay = 0.05
        self.ceiling = ceiling
        self.deadline = None if give_up_after is None else time.monotonic() + give_up_after

    def next_delay(self, error: BaseException) -> float:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise BusConnectionError(f"gave up reconnecting the subscription: {error}") from error
        delay, self.delay = self.delay, min(self.delay * 2, self.ceiling)
        return delay


def retryable(error: BusError) -> bool:
    """Whether a failed (re)connect is worth another try: no answer, or a 5xx — not a 4xx,
    which means the request itself is wrong (it will not get better)."""
    return error.status is None or error.status >= 500
