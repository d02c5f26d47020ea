"""`AsyncClient`: the asyncio SDK, on `asyncio.Protocol` connections parsed by httptools."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Generator, Iterable, Mapping
from datetime import timedelta
from typing import Any

from busd.client._events import AsyncEvent, BatchResult, PutResult
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

# an SSE connection stops reading from the socket while this many messages wait unread
_HIGH_WATER = 4096


class _Conn(asyncio.Protocol):
    """One TCP connection: keep-alive exchanges, or one SSE stream (`resp.sink` set)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.resp: Response | None = None
        self.messages: Any = None  # the SSE decoder's deque, when streaming
        self.waiter: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        self.closed = False
        self.paused = False
        self.reused = False

    @classmethod
    async def open(cls, host: str, port: int, timeout: float | None) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(cls, host, port)
        except TimeoutError:
            raise BusTimeoutError(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise BusConnectionError(f"cannot connect to the bus at {host}:{port}: "
                                     f"{exc.strerror or exc}") from None
        return conn

    # protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        resp = self.resp
        if resp is None:
            self.error = BusConnectionError("the server sent data nobody asked for")
            self.close()
        else:
            try:
                resp.feed(data)
            except ValueError as exc:
                self.error = BusConnectionError(str(exc))
                self.close()
            if self.messages is not None and len(self.messages) > _HIGH_WATER and not self.paused:
                self.paused = True
                self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def progress(self) -> None:
        """Wait until something is received or the connection is lost."""
        if self.closed:
            raise self.error or BusConnectionError("the connection to the bus was closed")
        if self.paused:
            self.paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    async def exchange(self, data: bytes, timeout: float | None) -> Response:
        resp = self.resp = Response()
        self.transport.write(data)  # type: ignore[union-attr]
        try:
            async with asyncio.timeout(timeout):
                while not resp.complete:
                    if self.closed:
                        raise BusConnectionError(
                            "the server closed the connection before answering")
                    await self.progress()
        except TimeoutError:
            raise BusTimeoutError(f"no answer from the bus within {timeout:g}s") from None
        self.resp = None
        return resp

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _Stream:
    """One SSE response being read: the head on open, then decoded messages."""

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn
        self.decoder = SSEDecoder()
        self.resp = conn.resp = Response(sink=self.decoder.feed)
        conn.messages = self.decoder.messages
        self.consumer_id: str | None = None

    @classmethod
    async def open(cls, client: AsyncClient, target: str, last_event_id: str | None,
                   timeout: float | None) -> _Stream:
        conn = await _Conn.open(client._host, client._port, timeout)
        stream = cls(conn)
        resp = stream.resp
        conn.transport.write(client._requests.get_stream(target, last_event_id))  # type: ignore
        try:
            async with asyncio.timeout(timeout):
                while not resp.head_done or (resp.status != 200 and not resp.complete):
                    if conn.closed:
                        raise conn.error or BusConnectionError(
                            "the server closed the connection before answering")
                    await conn.progress()
        except TimeoutError:
            conn.close()
            raise BusTimeoutError(f"no answer to the subscription within {timeout:g}s") from None
        except BaseException:
            conn.close()
            raise
        if resp.status != 200:
            conn.close()
            raise error_for(resp.status, resp.body)
        stream.consumer_id = resp.header(b"x-bus-consumer-id") or None
        return stream

    async def next(self, timeout: float | None) -> Message | None:
        """The next message; None when the stream ended or the connection broke;
        BusTimeoutError if nothing (not even a ping) came within `timeout`."""
        messages = self.decoder.messages
        if messages:
            return messages.popleft()
        try:
            async with asyncio.timeout(timeout):
                while not messages:
                    if self.resp.complete or self.conn.closed:
                        return None
                    await self.conn.progress()
        except TimeoutError:
            raise BusTimeoutError(f"nothing from the bus for {timeout:g}s") from None
        return messages.popleft()

    def close(self) -> None:
        self.conn.close()


class AsyncSubscription:
    """What `AsyncClient.get` returns: `async for ev in sub` yields `AsyncEvent`s,
    reconnecting when the connection drops or the server restarts (resuming after the last
    event with `Last-Event-ID`), until `aclose()`. `await sub` connects it and returns it
    (iteration connects too), so `sub = await ac.get(...)` means "live from here on"."""

    def __init__(self, client: AsyncClient, state: SubscriptionState) -> None:
        self._client = client
        self._state = state
        self._stream: _Stream | None = None
        self._opened = False
        self._closed = False
        self._wakeup: asyncio.Event | None = None

    @property
    def consumer_id(self) -> str | None:
        return self._state.consumer_id

    @property
    def closed(self) -> bool:
        return self._closed

    async def _open(self) -> AsyncSubscription:
        if not self._opened:
            self._opened = True
            try:
                self._stream = await _Stream.open(self._client, self._state.target, None,
                                                  self._client.timeout)
            except BaseException:
                self._closed = True
                raise
            self._state.consumer_id = self._stream.consumer_id
        return self

    def __await__(self) -> Generator[Any, None, AsyncSubscription]:
        return self._open().__await__()

    def __aiter__(self) -> AsyncSubscription:
        return self

    async def __anext__(self) -> AsyncEvent:
        await self._open()
        state = self._state
        while True:
            stream = self._stream
            if stream is None or self._closed:
                raise StopAsyncIteration
            messages = stream.decoder.messages
            if messages:
                message: Message | None = messages.popleft()
            else:
                try:
                    message = await stream.next(state.heartbeat_timeout)
                except BusTimeoutError:
                    message = None  # a silent connection is a dead one: reconnect
            if message is None:
                await self._reconnect()
                continue
            try:
                event, visible = state.take(message, AsyncEvent, self)
            except BusError:
                await self.aclose()
                raise
            if visible:
                return event  # type: ignore[return-value]
            if event is not None and state.manual:
                await self._client.ack(event.consumer_id, event.id)

    async def _reconnect(self) -> None:
        state = self._state
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self._closed:
            return
        if not state.reconnect:
            await self.aclose()
            raise BusConnectionError("the subscription's connection ended (reconnect=False)")
        backoff = Backoff(state.reconnect_timeout)
        self._wakeup = asyncio.Event()
        while not self._closed:
            target, last_id = state.reconnect_request()
            try:
                stream = await _Stream.open(self._client, target, last_id,
                                            self._client.timeout)
            except BusError as exc:
                if not retryable(exc):
                    await self.aclose()
                    raise
                try:
                    delay = backoff.next_delay(exc)
                except BusError:
                    await self.aclose()
                    raise
                log.info("busd subscription: reconnecting in %.2fs (%s)", delay, exc)
                try:
                    await asyncio.wait_for(self._wakeup.wait(), delay)
                except TimeoutError:
                    pass
                continue
            if self._closed:
                stream.close()
                return
            self._stream = stream
            state.consumer_id = stream.consumer_id
            log.info("busd subscription: reconnected after %s, consumer %s", last_id,
                     stream.consumer_id)
            return

    async def _ack(self, event: AsyncEvent, data: Any) -> None:
        if self._state.manual:
            await self._client.ack(event.consumer_id, event.id)
            self._state.resume.acked(event.id)
        if event.response_subject:
            await self._client._publish(encode_event(event.response_subject, data))

    def close(self) -> None:
        """End the subscription now: a pending `__anext__` ends with StopAsyncIteration."""
        self._closed = True
        if self._stream is not None:
            self._stream.close()
        if self._wakeup is not None:
            self._wakeup.set()

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> AsyncSubscription:
        return await self._open()

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        stream = getattr(self, "_stream", None)
        if stream is not None:
            try:
                stream.close()
            except RuntimeError:  # its event loop is already closed
                pass


class AsyncClient:
    """An asyncio client of a busd (or Bus) server; use it from one event loop.

    Keeps a pool of keep-alive connections (one per concurrent request). `timeout` bounds
    connecting and each answer (and is the default for request/reply and confirmations);
    `token` is sent as `Authorization: Bearer <token>` (a bus with --auth-file).
    """

    def __init__(self, url: str = "http://localhost:2021", *, timeout: float = 30.0,
                 token: str | None = None, pool_size: int = 64) -> None:
        self.url = url
        self._host, self._port, host_header = split_url(url)
        self._requests = Requests(host_header, token)
        self.timeout = timeout
        self._pool_size = pool_size
        self._idle: list[_Conn] = []
        self._subs: weakref.WeakSet[AsyncSubscription] = weakref.WeakSet()
        self._closed = False

    async def _request(self, data: bytes, idempotent: bool = False) -> Response:
        """One request/answer on a pooled connection; see `Client._request` for the rules."""
        while True:
            if self._closed:
                raise BusConnectionError("the client is closed")
            conn = None
            while self._idle:
                candidate = self._idle.pop()
                if candidate.closed:
                    candidate.close()
                else:
                    conn = candidate
                    break
            if conn is None:
                conn = await _Conn.open(self._host, self._port, self.timeout)
            try:
                resp = await conn.exchange(data, self.timeout)
            except BusConnectionError:
                conn.close()
                if idempotent and conn.reused:
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            if resp.keep_alive and not self._closed and len(self._idle) < self._pool_size:
                conn.reused = True
                self._idle.append(conn)
            else:
                conn.close()
            return resp

    async def _publish(self, body: bytes) -> PutResult:
        return put_result(await self._request(self._requests.post(body)))

    async def put(self, subject: str, data: Any = None, *, key: str | None = None,
                  trace_id: str | None = None, request_reply: bool = False, confirm: int = 0,
                  timeout: float | None = None) -> PutResult:
        """Publish one event; the same arguments and rules as `Client.put`."""
        if not (request_reply or confirm):
            return await self._publish(encode_event(subject, data, key, trace_id))
        if request_reply and confirm:
            raise ValueError("use either request_reply=True or confirm=N, not both")
        if confirm < 0:
            raise ValueError("confirm must be a positive number of consumers")
        wanted = confirm or 1
        limit = self.timeout if timeout is None else timeout
        got = 0
        inbox = new_inbox()
        stream = None
        try:
            async with asyncio.timeout(limit):
                # subscribe to the inbox before publishing: a reply to nobody is dropped
                # (SPEC §3.4)
                stream = await _Stream.open(self, subscribe_target(inbox), None, None)
                result = await self._publish(encode_event(subject, data, key, trace_id, inbox))
                while got < wanted:
                    message = await stream.next(None)
                    if message is None:
                        raise BusConnectionError(f"the connection waiting for replies to "
                                                 f"{subject} ended after {got} of {wanted}")
                    if message[0] == b"msg":
                        got += 1
                        if request_reply:
                            result.reply = AsyncEvent.decode(message[2], "", None)
                            result.payload = result.reply.payload
            return result
        except TimeoutError:
            if request_reply:
                raise BusTimeoutError(f"no reply to {subject} within {limit:g}s") from None
            raise BusTimeoutError(f"{got} of {wanted} confirmations for {subject} "
                                  f"within {limit:g}s") from None
        finally:
            if stream is not None:
                stream.close()

    async def put_batch(self, items: Iterable[Mapping[str, Any]]) -> BatchResult:
        """Publish events atomically; the same rules as `Client.put_batch`."""
        body, count = encode_batch(items)
        return batch_result(await self._request(self._requests.post(body)), count)

    def get(self, subject: str, *, start: str = "newest", ack: str = "none",
            redelivery: float | timedelta | str | None = None,
            redelivery_count: int | None = None, max_inflight: int | None = None,
            reconnect: bool = True, reconnect_timeout: float | None = None,
            heartbeat_timeout: float | None = 75.0) -> AsyncSubscription:
        """Subscribe; the same arguments and guarantees as `Client.get`. Use
        `async for ev in ac.get(...)`, or `sub = await ac.get(...)` to be live before
        going on."""
        state = SubscriptionState(
            subscribe_target(subject, start, ack, redelivery, redelivery_count, max_inflight),
            ack == "manual", redelivery_count, reconnect, reconnect_timeout, heartbeat_timeout)
        sub = AsyncSubscription(self, state)
        self._subs.add(sub)
        return sub

    async def ack(self, consumer_id: str, event_id: str) -> None:
        """Acknowledge an event by ids (what `AsyncEvent.ack()` does first)."""
        ack_result(await self._request(self._requests.put(ack_target(consumer_id, event_id)),
                                       idempotent=True))

    async def aclose(self) -> None:
        """Close pooled connections and end every subscription of this client."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        for sub in list(self._subs):
            sub.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
