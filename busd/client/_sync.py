"""`Client`: the blocking SDK — the shell that performs the protocol's flows (see
`_protocol`) on plain sockets, with a pool of keep-alive connections."""

from __future__ import annotations

import select
import socket
import ssl
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from busd.client._acks import AckQueue, Slot
from busd.client._events import BatchResult, Event, PutResult
from busd.client._http import Response
from busd.client._protocol import ClientBase, Flow, Run
from busd.client._subscription import SubscriptionBase, SubscriptionState
from busd.client.errors import BusConnectionError, BusError, BusTimeoutError, connect_error

# under glibc's mmap threshold (128 KiB): a larger buffer is mapped and unmapped by every recv
_RECV = 64 * 1024
_POLL = getattr(select, "poll", None)


class _Conn:
    """One TCP connection to the server (keep-alive exchanges, or one SSE stream)."""

    __slots__ = ("sock", "resp", "reused", "_timeout")

    def __init__(self, host: str, port: int, timeout: float | None,
                 tls: ssl.SSLContext | None) -> None:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise connect_error(host, port, exc) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            try:  # (the handshake, within the same timeout)
                sock = tls.wrap_socket(sock, server_hostname=host)
            except OSError as exc:
                sock.close()
                raise connect_error(host, port, exc) from None
        self.sock = sock
        self.resp: Response | None = None
        self.reused = False
        self._timeout = timeout

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

    def _settimeout(self, timeout: float | None) -> None:
        """(only when it changes: each change is a system call)"""
        if timeout != self._timeout:
            self.sock.settimeout(timeout)
            self._timeout = timeout

    def send(self, data: bytes, timeout: float | None) -> None:
        try:
            self._settimeout(timeout)
            self.sock.sendall(data)
        except TimeoutError:
            raise BusTimeoutError(f"the bus took no bytes for {timeout:g}s") from None
        except (OSError, ValueError) as exc:  # (ValueError: a TLS socket another thread closed)
            raise BusConnectionError(f"connection to the bus failed: {exc}") from None

    def receive(self, timeout: float | None) -> None:
        """Wait for the next bytes and feed them to `resp`."""
        try:
            self._settimeout(timeout)
            data = self.sock.recv(_RECV)
        except TimeoutError:
            raise BusTimeoutError(f"nothing from the bus for {timeout:g}s") from None
        except (OSError, ValueError) as exc:
            raise BusConnectionError(f"connection to the bus failed: {exc}") from None
        if not data:
            raise BusConnectionError("the server closed the connection")
        self.resp.feed(data)  # type: ignore[union-attr]

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _drive(run: Run) -> Any:
    """Perform the waits a flow asks for until it hands out a result."""
    out = run.op or run.send(None)  # (an op a cancellation left pending: again)
    while type(out) is tuple:
        try:
            outcome = out[0](*out[1:])
        except BusError as exc:
            outcome = exc
        out = run.send(outcome)
    return out


def _call(flow: Flow) -> Any:
    """Run a one-shot flow; cut short (a KeyboardInterrupt, a cancellation), it still
    closes what it opened."""
    try:
        return _drive(Run(flow))
    finally:
        flow.close()


class Subscription(SubscriptionBase):
    """The iterator `Client.get` returns: yields `Event`s, reconnecting when the connection
    drops or the server restarts (resuming after the last event with `Last-Event-ID`), until
    `close()` — which may be called from any thread and ends the iteration promptly."""

    def __init__(self, client: Client, state: SubscriptionState) -> None:
        super().__init__(client, state, threading.Event())
        self._acks = AckQueue()
        self._acks_lock = threading.Lock()
        _call(state.connect(client))
        self._run = Run(state.events(client, self))

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> Event:
        try:
            event = _drive(self._run)
        except BaseException:
            # whatever ends a wait here (a KeyboardInterrupt can come mid-parse) ends the
            # subscription: the stream is not to be trusted after it
            self.close()
            raise
        if event is None:
            raise StopIteration
        return event

    def _sleep(self, delay: float | None) -> None:
        self._wake.wait(delay)

    def _ack(self, event: Event, data: Any) -> None:
        if not self._state.group:
            _call(self._state.acked(self._client, event, data))
            return
        slot = Slot(event.consumer_id, event.id, threading.Event())
        with self._acks_lock:
            lead = self._acks.add(slot)
        try:
            while not lead:
                slot.wake.wait()
                slot.wake.clear()
                with self._acks_lock:
                    lead = slot.lead and not slot.done
                    if slot.done:
                        break
            if lead:
                self._send_acks()
        except BaseException:
            self._abandon(slot)
            raise
        if slot.error is not None:
            raise slot.error
        _call(self._state.replied(self._client, event, data))

    def _send_acks(self) -> None:
        """Lead: one PUT of the waiting acks (this one's first), then the next leader."""
        with self._acks_lock:
            target, batch = self._acks.take()
        error: BaseException | None = None
        try:
            _call(self._client._settle_target(target))
        except BusError as exc:
            error = exc
        except BaseException:
            error = BusConnectionError("the ack was cut short (interrupted)")
            raise
        finally:
            with self._acks_lock:
                leader = self._acks.answered(batch, error)
            for slot in batch:
                slot.wake.set()
            if leader is not None:
                leader.wake.set()

    def _abandon(self, slot: Slot) -> None:
        """A caller interrupted while waiting: its ack is dropped if not sent yet, and a
        lead it was given passes on."""
        with self._acks_lock:
            leader = self._acks.abandon(slot)
        if leader is not None:
            leader.wake.set()

    def _settle(self, event: Event, action: str, delay: Any) -> None:
        _call(self._state.settled(self._client, event, action, delay))

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client(ClientBase[Subscription]):
    """A blocking client of a busd (or Bus) server.

    Keeps a pool of keep-alive connections and is safe to share between threads.
    `timeout` bounds connecting and each answer (and is the default for request/reply and
    confirmations). `token` is sent as `Authorization: Bearer <token>` to a bus that
    runs with --auth-file.
    """

    _Subscription = Subscription
    _Event = Event

    def _connect(self, timeout: float | None) -> _Conn:
        return _Conn(self._host, self._port, timeout, self._tls)

    def put(self, subject: str, data: Any = None, *, key: str | None = None,
            trace_id: str | None = None, request_reply: bool = False, confirm: int = 0,
            timeout: float | None = None) -> PutResult:
        """Publish one event and return its id, index and created_at.

        `data`: bytes/str holding valid JSON are sent as they are, other strings as JSON
        strings, other values JSON-encoded, None as no payload. `key` makes the server refuse
        a second event with the same key on this subject (ConflictError). With
        `request_reply=True` wait for one reply (its payload is in `.payload`); with
        `confirm=N` wait for N consumers to ack (every reply is in `.replies`); both raise
        BusTimeoutError after `timeout` seconds (default: the client's timeout).
        """
        return _call(self._put(subject, data, key, trace_id, request_reply, confirm, timeout))

    def put_raw(self, event: bytes) -> PutResult:
        """Publish one event given as its JSON object, sent as it is: a record from
        `bus dump` (or `Event.raw`) keeps its own id and created_at."""
        return _call(self._put_raw(event))

    def put_batch(self, items: Iterable[Mapping[str, Any]]) -> BatchResult:
        """Publish events atomically (all land or none): dicts with `subject`, `data` and
        optional `key`, `trace_id`; all in one namespace."""
        return _call(self._put_batch(items))

    def put_batch_raw(self, events: Iterable[bytes]) -> BatchResult:
        """`put_batch` of events given as their JSON objects, sent as they are (dumped
        records keep their ids and created_at)."""
        return _call(self._put_batch_raw(events))

    def ack(self, consumer_id: str, event_id: str) -> None:
        """Acknowledge an event by ids (what `Event.ack()` does first)."""
        _call(self._ack(consumer_id, event_id))

    def groups(self, namespace: str | None = None, name: str | None = None) -> dict:
        """The consumer groups (GET /groups): namespace -> group name -> its figures."""
        return _call(self._groups(namespace, name))

    def delete_group(self, namespace: str, name: str) -> dict:
        """Remove a consumer group; what it was."""
        return _call(self._delete_group(namespace, name))

    def health(self) -> dict | None:
        """busd's `/healthz` report (version, namespaces with their event counts...), or
        None from a server that has none (Bus, in Go)."""
        return _call(self._health())

    def close(self) -> None:
        """Close pooled connections and end every subscription of this client."""
        self._close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
