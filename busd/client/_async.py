"""`AsyncClient`: the asyncio SDK — the shell that performs the protocol's flows (see
`_protocol`) on `asyncio.Protocol` connections."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Generator, Iterable, Mapping
from typing import Any

from busd.client._acks import AckQueue, Slot
from busd.client._events import AsyncEvent, BatchResult, PutResult
from busd.client._http import Response
from busd.client._protocol import ClientBase, Flow, Run
from busd.client._subscription import SubscriptionBase, SubscriptionState
from busd.client.errors import BusConnectionError, BusError, BusTimeoutError, connect_error

# an SSE connection stops reading from the socket while this many messages wait unread
_HIGH_WATER = 4096


class _Conn(asyncio.Protocol):
    """One TCP connection: keep-alive exchanges, or one SSE stream. What arrives is fed to
    `resp` at once; `receive` waits for bytes it has not reported yet (so a receive that
    was cancelled can be performed again)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.resp: Response | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        self.closed = False
        self.paused = False
        self.reused = False
        self.fresh = False  # bytes were fed since the last receive returned

    @classmethod
    async def open(cls, host: str, port: int, timeout: float | None,
                   tls: ssl.SSLContext | None) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):  # (the TLS handshake included)
                _, conn = await loop.create_connection(
                    cls, host, port, ssl=tls, server_hostname=host if tls else None)
        except OSError as exc:
            raise connect_error(host, port, exc) from None
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
            except BusConnectionError as exc:
                self.error = exc
                self.close()
            sink = resp.sink
            if sink is not None and len(sink.messages) > _HIGH_WATER and not self.paused:
                self.paused = True
                self.transport.pause_reading()  # type: ignore[union-attr]
        self.fresh = True
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # what the flows ask for
    def idle_closed(self) -> bool:
        return self.closed

    async def send(self, data: bytes, timeout: float | None) -> None:
        """(a write does not wait: the timeout is for the sockets of `Client`)"""
        if self.closed:
            raise self.error or BusConnectionError("the connection to the bus was closed")
        self.fresh = False  # what came before is the previous answer's
        self.transport.write(data)  # type: ignore[union-attr]

    async def receive(self, timeout: float | None) -> None:
        """Wait until more bytes were fed to `resp`, or the connection is lost."""
        if self.closed:
            raise self.error or BusConnectionError("the connection to the bus was closed")
        if self.paused:
            self.paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        if not self.fresh:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self.waiter
            except TimeoutError:
                raise BusTimeoutError(f"nothing from the bus for {timeout:g}s") from None
            finally:
                self.waiter = None
        self.fresh = False

    def close(self) -> None:
        """Close at once (nothing we wrote is still wanted: an abandoned exchange, or a
        stream), without TLS's closing handshake, which would outlive an ending loop."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


async def _drive(run: Run) -> Any:
    """Perform (await) the waits a flow asks for until it hands out a result."""
    out = run.op or run.send(None)  # (an op a cancellation left pending: again)
    while type(out) is tuple:
        try:
            outcome = await out[0](*out[1:])
        except BusError as exc:
            outcome = exc
        out = run.send(outcome)
    return out


async def _call(flow: Flow) -> Any:
    """Run a one-shot flow; cut short (a KeyboardInterrupt, a cancellation), it still
    closes what it opened."""
    try:
        return await _drive(Run(flow))
    finally:
        flow.close()


class AsyncSubscription(SubscriptionBase):
    """What `AsyncClient.get` returns: `async for ev in sub` yields `AsyncEvent`s,
    reconnecting when the connection drops or the server restarts (resuming after the last
    event with `Last-Event-ID`), until `aclose()`. `await sub` connects it and returns it
    (iteration connects too), so `sub = await ac.get(...)` means "live from here on".
    A cancelled `__anext__` (e.g. under `asyncio.timeout`) leaves it as it was."""

    def __init__(self, client: AsyncClient, state: SubscriptionState) -> None:
        super().__init__(client, state, asyncio.Event())
        self._acks = AckQueue()
        self._opened = False
        self._run = Run(state.events(client, self))

    async def _open(self) -> AsyncSubscription:
        if not self._opened:
            self._opened = True
            try:
                await _call(self._state.connect(self._client))
            except BaseException:
                self.close()
                raise
        return self

    def __await__(self) -> Generator[Any, None, AsyncSubscription]:
        return self._open().__await__()

    def __aiter__(self) -> AsyncSubscription:
        return self

    async def __anext__(self) -> AsyncEvent:
        await self._open()
        try:
            event = await _drive(self._run)
        except BaseException:
            if self._run.ended:  # (a cancelled wait is waited again on the next call)
                self.close()
            raise
        if event is None:
            raise StopAsyncIteration
        return event

    async def _sleep(self, delay: float | None) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), delay)
        except TimeoutError:
            pass

    async def _ack(self, event: AsyncEvent, data: Any) -> None:
        if not self._state.group:
            await _call(self._state.acked(self._client, event, data))
            return
        loop = asyncio.get_running_loop()
        slot = Slot(event.consumer_id, event.id, loop.create_future())
        if self._acks.add(slot):
            loop.create_task(self._send_acks())
        await asyncio.shield(slot.wake)
        if slot.error is not None:
            raise slot.error
        await _call(self._state.replied(self._client, event, data))

    async def _send_acks(self) -> None:
        """The sender: one PUT at a time of the acks waiting (those of this loop tick
        too), until none is left."""
        await asyncio.sleep(0)  # the acks made in this loop tick go in the first PUT
        queue = self._acks
        while True:
            target, batch = queue.take()
            error: BaseException | None = None
            try:
                await _call(self._client._settle_target(target))
            except BusError as exc:
                error = exc
            except BaseException:
                error = BusConnectionError("the ack was cut short (cancelled)")
                raise
            finally:
                leader = queue.answered(batch, error)
                for slot in batch:
                    if not slot.wake.done():
                        slot.wake.set_result(None)
            if leader is None:
                return

    async def _settle(self, event: AsyncEvent, action: str, delay: Any) -> None:
        await _call(self._state.settled(self._client, event, action, delay))

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> AsyncSubscription:
        return await self._open()

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(ClientBase[AsyncSubscription]):
    """An asyncio client of a busd (or Bus) server; use it from one event loop.

    Keeps a pool of keep-alive connections (one per concurrent request). `timeout` bounds
    connecting and each answer (and is the default for request/reply and confirmations);
    `token` is sent as `Authorization: Bearer <token>` (a bus with --auth-file).
    """

    _Subscription = AsyncSubscription
    _Event = AsyncEvent

    async def _connect(self, timeout: float | None) -> _Conn:
        return await _Conn.open(self._host, self._port, timeout, self._tls)

    async def put(self, subject: str, data: Any = None, *, key: str | None = None,
                  trace_id: str | None = None, request_reply: bool = False, confirm: int = 0,
                  timeout: float | None = None) -> PutResult:
        """Publish one event; the same arguments and rules as `Client.put`."""
        return await _call(self._put(subject, data, key, trace_id, request_reply, confirm,
                                     timeout))

    async def put_raw(self, event: bytes) -> PutResult:
        """Publish one event's JSON object as it is; see `Client.put_raw`."""
        return await _call(self._put_raw(event))

    async def put_batch(self, items: Iterable[Mapping[str, Any]]) -> BatchResult:
        """Publish events atomically; the same rules as `Client.put_batch`."""
        return await _call(self._put_batch(items))

    async def put_batch_raw(self, events: Iterable[bytes]) -> BatchResult:
        """Publish events' JSON objects as they are, atomically; see `Client.put_batch_raw`."""
        return await _call(self._put_batch_raw(events))

    async def ack(self, consumer_id: str, event_id: str) -> None:
        """Acknowledge an event by ids (what `AsyncEvent.ack()` does first)."""
        await _call(self._ack(consumer_id, event_id))

    async def groups(self, namespace: str | None = None, name: str | None = None) -> dict:
        """The consumer groups; see `Client.groups`."""
        return await _call(self._groups(namespace, name))

    async def delete_group(self, namespace: str, name: str) -> dict:
        """Remove a consumer group; see `Client.delete_group`."""
        return await _call(self._delete_group(namespace, name))

    async def health(self) -> dict | None:
        """busd's `/healthz` report, or None from a server without one; see `Client.health`."""
        return await _call(self._health())

    async def aclose(self) -> None:
        """Close pooled connections and end every subscription of this client."""
        self._close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
