"""The protocol logic of both clients, once and without I/O: each verb is a *flow*, a
generator that decides everything and yields the waits it needs — connect, send, receive,
sleep — for the `Client` (sockets) or `AsyncClient` (asyncio) shell to perform.

A flow yields an operation `(function, *args)`: the shell calls it (and awaits the result,
in asyncio) and sends back what it returned, or throws in the `BusError` it raised. A flow
hands out a result by returning it, or by yielding anything that is not a tuple (a
subscription yields events). The only calls a flow makes itself are the ones that never
wait: closing a connection, checking whether an idle one was closed.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from datetime import timedelta
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

from busd.client._events import Event
from busd.client._http import Requests, Response, tls_context
from busd.client._sse import Message, SSEDecoder
from busd.client._subscription import SubscriptionState
from busd.client._wire import (
    ack_result,
    ack_target,
    group_target,
    groups_target,
    json_result,
    settle_target,
    batch_result,
    encode_batch,
    encode_event,
    encode_raw_batch,
    health_result,
    new_inbox,
    put_result,
    split_url,
    subscribe_target,
)
from busd.client.errors import BusConnectionError, BusError, BusTimeoutError, error_for

Flow = Generator[Any, Any, Any]
S = TypeVar("S")


class Conn(Protocol):
    """What a shell's connection offers the flows (`send` and `receive` wait: in asyncio
    they are coroutines)."""

    resp: Response | None  # where `receive` feeds the bytes
    reused: bool

    def send(self, data: bytes, timeout: float | None) -> Any: ...

    def receive(self, timeout: float | None) -> Any: ...

    def idle_closed(self) -> bool: ...

    def close(self) -> None: ...


class Run:
    """A flow being driven by a shell: `out = run.op or run.send(None)`, then while `out`
    is an op (a tuple), perform it and `out = run.send(outcome)` — the value it returned,
    or the BusError it raised; what is left is what the flow handed out (None when it has
    ended). An op that raised anything else (a cancellation) is not reported: it stays
    `op`, so the next drive performs it again — every op is a wait that can be waited
    again."""

    __slots__ = ("_flow", "op")

    def __init__(self, flow: Flow) -> None:
        self._flow = flow
        self.op: tuple | None = None

    def send(self, outcome: Any) -> Any:
        self.op = None
        try:
            if isinstance(outcome, BusError):
                out = self._flow.throw(outcome)
            else:
                out = self._flow.send(outcome)
        except StopIteration as end:
            return end.value
        if type(out) is tuple:
            self.op = out
        return out

    @property
    def ended(self) -> bool:
        return self._flow.gi_frame is None


class Deadline:
    """A time limit over several waits (the flow that set it words the error)."""

    __slots__ = ("_end",)

    def __init__(self, seconds: float | None) -> None:
        self._end = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float | None:
        """The seconds left (None: no limit); BusTimeoutError once there are none."""
        if self._end is None:
            return None
        left = self._end - time.monotonic()
        if left <= 0:
            raise BusTimeoutError("out of time")
        return left


class Pool:
    """A client's idle keep-alive connections, the most recently used first; thread-safe."""

    __slots__ = ("idle", "_size", "_lock", "closed")

    def __init__(self, size: int) -> None:
        self.idle: list[Conn] = []
        self._size = size
        self._lock = threading.Lock()
        self.closed = False

    def take(self) -> Conn | None:
        """An idle connection the server has not closed (None: open a new one)."""
        with self._lock:
            if self.closed:
                raise BusConnectionError("the client is closed")
            while self.idle:
                conn = self.idle.pop()
                if not conn.idle_closed():
                    return conn
                conn.close()
        return None

    def give(self, conn: Conn, keep_alive: bool) -> None:
        """Back after an exchange: kept if it may carry another request and there is room."""
        if keep_alive:
            conn.reused = True
            with self._lock:
                if not self.closed and len(self.idle) < self._size:
                    self.idle.append(conn)
                    return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()


class Stream:
    """One SSE response being read: its connection feeds the decoder's `messages`."""

    __slots__ = ("conn", "resp", "messages", "consumer_id")

    def __init__(self, conn: Conn) -> None:
        decoder = SSEDecoder()
        self.conn = conn
        self.resp = conn.resp = Response(sink=decoder)
        self.messages = decoder.messages
        self.consumer_id: str | None = None

    def next(self, timeout: float | None) -> Flow:
        """The next message (a flow); None when the stream ended or the connection broke;
        BusTimeoutError if nothing (not even a ping) came for `timeout` seconds."""
        messages = self.messages
        while not messages:
            if self.resp.complete:
                return None
            try:
                yield self.conn.receive, timeout
            except BusConnectionError:
                return None
        return messages.popleft()

    def close(self) -> None:
        self.conn.close()


class ClientBase(Generic[S]):
    """What `Client` and `AsyncClient` hold and decide: each verb is a flow here (`_put`
    for `put`, ...) that the shell's verb runs. A shell provides `_connect(timeout)` (a new
    connection), `_Subscription` (its subscription class) and `_Event` (its event class).
    """

    _Subscription: Callable[[Any, SubscriptionState], S]
    _Event: type[Event]
    _connect: Callable[[float | None], Any]

    def __init__(self, url: str = "http://localhost:2021", *, timeout: float = 30.0,
                 token: str | None = None, pool_size: int = 64,
                 ca_file: str | os.PathLike | None = None, insecure: bool = False,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        """`url`: the server's root, `http://host:port` or `https://host:port` (or
        `host:port`, `:port`: plain HTTP); see the class for `timeout` and `token`;
        `pool_size` caps the idle connections kept. An https:// client verifies the
        server's certificate against the system's CAs, or those of `ca_file` (PEM), or not
        at all with `insecure=True` (self-signed test set-ups only); `ssl_context` replaces
        all of that. An http:// client ignores them."""
        self.url = url
        tls, self._host, self._port, host_header = split_url(url)
        self._tls = tls_context(ca_file, insecure, ssl_context) if tls else None
        self._requests = Requests(host_header, token)
        self.timeout = timeout
        self._pool = Pool(pool_size)
        self._subs: weakref.WeakSet[Any] = weakref.WeakSet()

    # -- connections ---------------------------------------------------------------------
    def _request(self, data: bytes, result: Callable[[Response], Any],
                 idempotent: bool = False, timeout: float | None = None) -> Flow:
        """One request on a pooled connection (a flow): `result(response)` once answered;
        `timeout` bounds each wait. An idle connection the server has closed is dropped
        before use; a reused one that breaks before any answer is retried on a new
        connection only for idempotent requests (acks), never for publishes."""
        timeout = self.timeout if timeout is None else timeout
        while True:
            conn = self._pool.take()
            if conn is None:
                conn = yield self._connect, timeout
            resp = conn.resp = Response()
            try:
                yield conn.send, data, timeout
                while not resp.complete:
                    yield conn.receive, timeout
            except BusTimeoutError:
                conn.close()
                raise BusTimeoutError(f"no answer from the bus within {timeout:g}s") from None
            except BusConnectionError:
                conn.close()
                if idempotent and conn.reused:
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            conn.resp = None  # bytes the server sends unasked from now on are an error
            self._pool.give(conn, resp.keep_alive)
            return result(resp)

    def _subscribe(self, target: str, last_event_id: str | None,
                   timeout: float | None) -> Flow:
        """Open an SSE stream (a flow): the `Stream` once the server answered 200."""
        deadline = Deadline(timeout)
        conn = yield self._connect, deadline.left()
        stream = Stream(conn)
        resp = stream.resp
        try:
            yield conn.send, self._requests.get_stream(target, last_event_id), deadline.left()
            while not resp.head_done or (resp.status != 200 and not resp.complete):
                yield conn.receive, deadline.left()
            if resp.status != 200:
                raise error_for(resp.status, resp.body)
        except BusTimeoutError:
            conn.close()
            raise BusTimeoutError(f"no answer to the subscription within {timeout:g}s") from None
        except BaseException:
            conn.close()
            raise
        stream.consumer_id = resp.header(b"x-bus-consumer-id") or None
        return stream

    # -- the verbs' flows ------------------------------------------------------------------
    def _put(self, subject: str, data: Any, key: str | None, trace_id: str | None,
             request_reply: bool, confirm: int, timeout: float | None) -> Flow:
        if not (request_reply or confirm):
            return self._put_raw(encode_event(subject, data, key, trace_id))
        if request_reply and confirm:
            raise ValueError("use either request_reply=True or confirm=N, not both")
        if confirm < 0:
            raise ValueError("confirm must be a positive number of consumers")
        return self._put_waiting(subject, data, key, trace_id, request_reply, confirm or 1,
                                 self.timeout if timeout is None else timeout)

    def _put_waiting(self, subject: str, data: Any, key: str | None, trace_id: str | None,
                     request_reply: bool, wanted: int, timeout: float) -> Flow:
        """A publish that waits for `wanted` replies (or confirmations) on a fresh inbox."""
        deadline = Deadline(timeout)
        inbox = new_inbox()
        replies: list[Event] = []
        stream = result = None
        try:
            # subscribe to the inbox before publishing: a reply to nobody is dropped (SPEC §3.4)
            stream = yield from self._subscribe(subscribe_target(inbox), None, deadline.left())
            body = encode_event(subject, data, key, trace_id, inbox)
            result = yield from self._request(self._requests.post(body), put_result,
                                              timeout=deadline.left())
            while len(replies) < wanted:
                message: Message | None = yield from stream.next(deadline.left())
                if message is None:
                    raise BusConnectionError(f"the connection waiting for replies to {subject} "
                                             f"ended after {len(replies)} of {wanted}")
                if message[0] == b"msg":
                    replies.append(self._Event(message[2], "", None))
        except BusTimeoutError:
            if request_reply:
                error = BusTimeoutError(f"no reply to {subject} within {timeout:g}s")
            else:
                error = BusTimeoutError(f"{len(replies)} of {wanted} confirmations for "
                                        f"{subject} within {timeout:g}s")
            if result is not None:
                result.replies = replies
                error.result = result
            raise error from None
        finally:
            if stream is not None:
                stream.close()
        result.replies = replies
        if request_reply:
            result.reply = replies[0]
            result.payload = result.reply.payload
        return result

    def _put_raw(self, event: bytes) -> Flow:
        return self._request(self._requests.post(event), put_result)

    def _put_batch(self, items: Iterable[Mapping[str, Any]]) -> Flow:
        body, count = encode_batch(items)
        return self._request(self._requests.post(body), partial(batch_result, count=count))

    def _put_batch_raw(self, events: Iterable[bytes]) -> Flow:
        body, count = encode_raw_batch(events)
        return self._request(self._requests.post(body), partial(batch_result, count=count))

    def _ack(self, consumer_id: str, event_id: str) -> Flow:
        return self._request(self._requests.put(ack_target(consumer_id, event_id)), ack_result,
                             idempotent=True)

    def _settle(self, consumer_id: str, event_id: str, action: str, delay: Any) -> Flow:
        return self._request(self._requests.put(settle_target(consumer_id, event_id, action,
                                                              delay)), ack_result,
                             idempotent=True)

    def _settle_target(self, target: str) -> Flow:
        """A PUT settling what `target` lists (several acks at once: see `_acks`)."""
        return self._request(self._requests.put(target), ack_result, idempotent=True)

    def _groups(self, namespace: str | None, name: str | None) -> Flow:
        return self._request(self._requests.get(groups_target(namespace, name)), json_result,
                             idempotent=True)

    def _delete_group(self, namespace: str, name: str) -> Flow:
        return self._request(self._requests.delete(groups_target(namespace, name)),
                             json_result)

    def _health(self) -> Flow:
        return self._request(self._requests.get("/healthz"), health_result, idempotent=True)

    # -- subscriptions ---------------------------------------------------------------------
    def get(self, subject: str | Sequence[str], *, start: str = "newest", ack: str = "none",
            redelivery: float | timedelta | str | None = None,
            redelivery_count: int | None = None, max_inflight: int | None = None,
            reconnect: bool = True, reconnect_timeout: float | None = None,
            heartbeat_timeout: float | None = 75.0, idle_timeout: float | None = None,
            group: str | None = None, ack_wait: float | timedelta | str | None = None,
            max_deliver: int | None = None, backoff: list | None = None,
            dead_letter: str | None = None, max_pending: int | None = None) -> S:
        """Subscribe to `subject` (wildcards `*`, `>`; or a list of up to 32 patterns of one
        namespace: an event that matches several comes once) and iterate over its events: `for`
        with `Client` (live when this returns), `async for` with `AsyncClient` (live once
        `sub = await ac.get(...)` returns).

        `start`: "oldest", "newest", an event id (resume after it) or "index:<n>" (from index
        n: how to step over a corrupt record, see CorruptEventError). `ack="manual"`: each
        event must be `ack()`ed or it is delivered again every `redelivery` (seconds, timedelta
        or "5s"), `redelivery_count` deliveries in all (the first included; <= 0 unlimited).
        If the connection drops it reconnects (50 ms to 2 s apart; giving up after
        `reconnect_timeout` seconds if set) and resumes after the last event, so each event
        is seen once (`ack="none"`); a connection silent for `heartbeat_timeout` seconds
        (the server pings every 30 s) counts as dropped. With `idle_timeout` the iteration
        ends (the subscription closes) once no event has come for that many seconds: to
        read what is there and stop.

        `group="billing"` joins that consumer group (created by the first join with
        `start`, `ack_wait`, `max_deliver`, `backoff`, `dead_letter`, `max_pending`): each
        event goes to one member, and must be `ack()`ed, `nak(delay=)`ed, `term()`ed or kept
        with `progress()`; `Event.deliveries` counts its deliveries. A reconnect joins again
        (the server remembers the group's position).
        """
        if group is not None:
            target = group_target(subject, group, start, max_inflight, ack_wait, max_deliver,
                                  backoff, dead_letter, max_pending)
        else:
            target = subscribe_target(subject, start, ack, redelivery, redelivery_count,
                                      max_inflight)
        state = SubscriptionState(
            target, ack == "manual" or group is not None, redelivery_count, reconnect,
            reconnect_timeout, heartbeat_timeout, idle_timeout, group=group is not None)
        sub = self._Subscription(self, state)
        self._subs.add(sub)
        return sub

    def _close(self) -> None:
        """Close pooled connections and end every subscription of this client."""
        self._pool.close()
        for sub in list(self._subs):
            sub.close()
