"""`Client`: the blocking SDK, on plain sockets with a pool of keep-alive connections."""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from busd.client._events import BatchResult, Event, PutResult
from busd.client._http import Requests, Response
from busd.client._sse import Backoff, Message, SSEDecoder, SubscriptionState, retryable
from busd.client._wire import (
    ack_result,
    ack_target,
    batch_result,
    encode_batch,
    encode_event,
    new_inbox,
    put_result,
    split_url,
    subscribe_target,
)
from busd.client.errors import BusConnectionError, BusError, BusTimeoutError, error_for

log = logging.getLogger("busd.client")

_RECV = 256 * 1024
_POLL = getattr(select, "poll", None)


class _Conn:
    """One TCP connection to the server (a keep-alive exchange, or one SSE stream)."""

    __slots__ = ("sock", "reused")

    def __init__(self, host: str, port: int, timeout: float | None) -> None:
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except TimeoutError:
            raise BusTimeoutError(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise BusConnectionError(f"cannot connect to the bus at {host}:{port}: "
                                     f"{exc.strerror or exc}") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reused = False

    def idle_closed(self) -> bool:
        """True if the server closed this idle connection (it is readable: EOF)."""
        fd = self.sock.fileno()
        if fd < 0:
            return True
        if _POLL is not None:
            poller = _POLL()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([fd], [], [], 0)[0])

    def exchange(self, data: bytes, timeout: float | None) -> Response:
        sock = self.sock
        sock.settimeout(timeout)
        resp = Response()
        try:
            sock.sendall(data)
            while not resp.complete:
                chunk = sock.recv(_RECV)
                if not chunk:
                    raise BusConnectionError("the server closed the connection before answering")
                resp.feed(chunk)
        except TimeoutError:
            raise BusTimeoutError(f"no answer from the bus within {timeout:g}s") from None
        except (OSError, ValueError) as exc:
            raise BusConnectionError(f"connection to the bus failed: {exc}") from None
        return resp

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class _Stream:
    """One SSE response being read: the head on open, then decoded messages."""

    def __init__(self, client: Client, target: str, last_event_id: str | None,
                 timeout: float | None) -> None:
        self.conn = _Conn(client._host, client._port, timeout)
        self.decoder = SSEDecoder()
        self.resp = Response(sink=self.decoder.feed)
        sock = self.conn.sock
        try:
            sock.sendall(client._requests.get_stream(target, last_event_id))
            while not self.resp.head_done or (self.resp.status != 200 and not self.resp.complete):
                chunk = sock.recv(_RECV)
                if not chunk:
                    raise BusConnectionError("the server closed the connection before answering")
                self.resp.feed(chunk)
        except BaseException as exc:
            self.conn.close()
            if isinstance(exc, socket.timeout):
                raise BusTimeoutError(
                    f"no answer to the subscription within {timeout:g}s") from None
            if isinstance(exc, (OSError, ValueError)):
                raise BusConnectionError(f"connection to the bus failed: {exc}") from None
            raise
        if self.resp.status != 200:
            self.conn.close()
            raise error_for(self.resp.status, self.resp.body)
        self.consumer_id = self.resp.header(b"x-bus-consumer-id") or None

    def next(self, timeout: float | None) -> Message | None:
        """The next message; None when the stream ended or the connection broke;
        BusTimeoutError if nothing (not even a ping) came within `timeout`."""
        messages = self.decoder.messages
        while not messages:
            if self.resp.complete:
                return None
            try:
                self.conn.sock.settimeout(timeout)
                chunk = self.conn.sock.recv(_RECV)
                if not chunk:
                    return None
                self.resp.feed(chunk)
            except TimeoutError:
                raise BusTimeoutError(f"nothing from the bus for {timeout:g}s") from None
            except (OSError, ValueError):
                return None
        return messages.popleft()

    def close(self) -> None:
        self.conn.close()


class Subscription:
    """The iterator `Client.get` returns: yields `Event`s, reconnecting when the connection
    drops or the server restarts (resuming after the last event with `Last-Event-ID`), until
    `close()` — which may be called from any thread and ends the iteration promptly."""

    def __init__(self, client: Client, state: SubscriptionState) -> None:
        self._client = client
        self._state = state
        self._closed = threading.Event()
        self._stream: _Stream | None = _Stream(client, state.target, None, client.timeout)
        state.consumer_id = self._stream.consumer_id

    @property
    def consumer_id(self) -> str | None:
        """The server-side consumer id of the current connection (changes on reconnect)."""
        return self._state.consumer_id

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> Event:
        state = self._state
        while True:
            stream = self._stream
            if stream is None or self._closed.is_set():
                raise StopIteration
            messages = stream.decoder.messages
            if messages:
                message: Message | None = messages.popleft()
            else:
                try:
                    message = stream.next(state.heartbeat_timeout)
                except BusTimeoutError:
                    message = None  # a silent connection is a dead one: reconnect
                except BaseException:
                    self.close()
                    raise
            if message is None:
                self._reconnect()
                continue
            try:
                event, visible = state.take(message, Event, self)
            except BusError:
                self.close()
                raise
            if visible:
                return event  # type: ignore[return-value]
            if event is not None and state.manual:
                self._client.ack(event.consumer_id, event.id)

    def _reconnect(self) -> None:
        state = self._state
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self._closed.is_set():
            return
        if not state.reconnect:
            self.close()
            raise BusConnectionError("the subscription's connection ended (reconnect=False)")
        backoff = Backoff(state.reconnect_timeout)
        while not self._closed.is_set():
            target, last_id = state.reconnect_request()
            try:
                stream = _Stream(self._client, target, last_id, self._client.timeout)
            except BusError as exc:
                if not retryable(exc):
                    self.close()
                    raise
                try:
                    delay = backoff.next_delay(exc)
                except BusError:
                    self.close()
                    raise
                log.info("busd subscription: reconnecting in %.2fs (%s)", delay, exc)
                self._closed.wait(delay)
                continue
            if self._closed.is_set():
                stream.close()
                return
            self._stream = stream
            state.consumer_id = stream.consumer_id
            log.info("busd subscription: reconnected after %s, consumer %s", last_id,
                     stream.consumer_id)
            return

    def _ack(self, event: Event, data: Any) -> None:
        if self._state.manual:
            self._client.ack(event.consumer_id, event.id)
            self._state.resume.acked(event.id)
        if event.response_subject:
            self._client._publish(encode_event(event.response_subject, data))

    def close(self) -> None:
        """End the subscription (safe from any thread, and more than once)."""
        self._closed.set()
        stream = self._stream
        if stream is not None:
            stream.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        stream = getattr(self, "_stream", None)
        if stream is not None:
            stream.close()


class Client:
    """A blocking client of a busd (or Bus) server.

    Keeps a pool of keep-alive connections and is safe to share between threads.
    `timeout` bounds connecting and each answer (and is the default for request/reply and
    confirmations). `token` is sent as `Authorization: Bearer <token>` to a bus that
    runs with --auth-file.
    """

    def __init__(self, url: str = "http://localhost:2021", *, timeout: float = 30.0,
                 token: str | None = None, pool_size: int = 64) -> None:
        self.url = url
        self._host, self._port, host_header = split_url(url)
        self._requests = Requests(host_header, token)
        self.timeout = timeout
        self._pool_size = pool_size
        self._idle: list[_Conn] = []
        self._lock = threading.Lock()
        self._subs: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._closed = False

    # -- connections ---------------------------------------------------------------------
    def _request(self, data: bytes, idempotent: bool = False) -> Response:
        """One request/answer on a pooled connection. An idle connection the server has
        closed is dropped before use; a reused one that breaks before any answer is retried
        on a new connection only for idempotent requests (acks), never for publishes."""
        while True:
            conn = None
            with self._lock:
                if self._closed:
                    raise BusConnectionError("the client is closed")
                while self._idle:
                    candidate = self._idle.pop()
                    if candidate.idle_closed():
                        candidate.close()
                    else:
                        conn = candidate
                        break
            if conn is None:
                conn = _Conn(self._host, self._port, self.timeout)
            try:
                resp = conn.exchange(data, self.timeout)
            except BusConnectionError:
                conn.close()
                if idempotent and conn.reused:
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            if resp.keep_alive:
                conn.reused = True
                with self._lock:
                    if not self._closed and len(self._idle) < self._pool_size:
                        self._idle.append(conn)
                        return resp
            conn.close()
            return resp

    def _publish(self, body: bytes) -> PutResult:
        return put_result(self._request(self._requests.post(body)))

    # -- verbs ---------------------------------------------------------------------------
    def put(self, subject: str, data: Any = None, *, key: str | None = None,
            trace_id: str | None = None, request_reply: bool = False, confirm: int = 0,
            timeout: float | None = None) -> PutResult:
        """Publish one event and return its id, index and created_at.

        `data`: bytes/str holding valid JSON are sent as they are, other strings as JSON
        strings, other values JSON-encoded, None as no payload. `key` makes the server refuse
        a second event with the same key on this subject (ConflictError). With
        `request_reply=True` wait for one reply (its payload is in `.payload`); with
        `confirm=N` wait for N consumers to ack; both raise BusTimeoutError after `timeout`
        seconds (default: the client's timeout).
        """
        if not (request_reply or confirm):
            return self._publish(encode_event(subject, data, key, trace_id))
        if request_reply and confirm:
            raise ValueError("use either request_reply=True or confirm=N, not both")
        if confirm < 0:
            raise ValueError("confirm must be a positive number of consumers")
        wanted = confirm or 1
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        inbox = new_inbox()
        # subscribe to the inbox before publishing: a reply to nobody is dropped (SPEC §3.4)
        stream = _Stream(self, subscribe_target(inbox), None, limit)
        try:
            result = self._publish(encode_event(subject, data, key, trace_id, inbox))
            got = 0
            while got < wanted:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BusTimeoutError(_waited(subject, request_reply, got, wanted, limit))
                try:
                    message = stream.next(remaining)
                except BusTimeoutError:
                    raise BusTimeoutError(_waited(subject, request_reply, got, wanted,
                                                  limit)) from None
                if message is None:
                    raise BusConnectionError(f"the connection waiting for replies to {subject} "
                                             f"ended after {got} of {wanted}")
                if message[0] == b"msg":
                    got += 1
                    if request_reply:
                        result.reply = Event.decode(message[2], "", None)
                        result.payload = result.reply.payload
            return result
        finally:
            stream.close()

    def put_batch(self, items: Iterable[Mapping[str, Any]]) -> BatchResult:
        """Publish events atomically (all land or none): dicts with `subject`, `data` and
        optional `key`, `trace_id`; all in one namespace."""
        body, count = encode_batch(items)
        return batch_result(self._request(self._requests.post(body)), count)

    def get(self, subject: str, *, start: str = "newest", ack: str = "none",
            redelivery: float | timedelta | str | None = None,
            redelivery_count: int | None = None, max_inflight: int | None = None,
            reconnect: bool = True, reconnect_timeout: float | None = None,
            heartbeat_timeout: float | None = 75.0) -> Subscription:
        """Subscribe to `subject` (wildcards `*`, `>`) and iterate over its events.

        `start`: "oldest", "newest" or an event id (resume after it). `ack="manual"`: each
        event must be `ack()`ed or it is delivered again every `redelivery` (seconds, timedelta
        or "5s"), `redelivery_count` deliveries in all (the first included; <= 0 unlimited).
        The subscription is live when this returns.
        If the connection drops it reconnects (50 ms to 2 s apart; giving up after
        `reconnect_timeout` seconds if set) and resumes after the last event, so each event
        is seen once (`ack="none"`); a connection silent for `heartbeat_timeout` seconds
        (the server pings every 30 s) counts as dropped.
        """
        state = SubscriptionState(
            subscribe_target(subject, start, ack, redelivery, redelivery_count, max_inflight),
            ack == "manual", redelivery_count, reconnect, reconnect_timeout, heartbeat_timeout)
        sub = Subscription(self, state)
        self._subs.add(sub)
        return sub

    def ack(self, consumer_id: str, event_id: str) -> None:
        """Acknowledge an event by ids (what `Event.ack()` does first)."""
        ack_result(self._request(self._requests.put(ack_target(consumer_id, event_id)),
                                 idempotent=True))

    def close(self) -> None:
        """Close pooled connections and end every subscription of this client."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        for sub in list(self._subs):
            sub.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _waited(subject: str, request_reply: bool, got: int, wanted: int, limit: float) -> str:
    if request_reply:
        return f"no reply to {subject} within {limit:g}s"
    return f"{got} of {wanted} confirmations for {subject} within {limit:g}s"
