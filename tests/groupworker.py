"""Test-side consumer group members: a member's stream read by a thread, its settles."""

from __future__ import annotations

import json
import queue
import socket
import threading
import time

from busclient import SSE, Http, request, wait_until


def batch(port: int, subject: str, count: int, start: int = 0) -> None:
    """Publish `count` events (payload = their number) in batches of 500."""
    for first in range(start, start + count, 500):
        body = [{"subject": subject, "payload": n}
                for n in range(first, min(first + 500, start + count))]
        assert request(port, "POST", "/", body).status == 202


class Worker:
    """One group member: its stream (read by a thread into a queue, so waiting for an event
    that must not come never breaks the socket), and a keep-alive connection for acks."""

    def __init__(self, port: int, query: str) -> None:
        self.port = port
        self.sse = SSE(port, query)
        assert self.sse.status == 200, self.sse.status
        self.id = self.sse.consumer_id
        self.http = Http(port)
        self.messages: queue.Queue = queue.Queue()
        self.sse.sock.settimeout(None)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while (message := self.sse.message(timeout=None)) is not None:
                self.messages.put(message)
        except (OSError, ValueError):
            pass
        self.messages.put(None)

    def message(self, timeout: float = 5.0) -> dict | None:
        """The next SSE message (None: the stream ended); queue.Empty after `timeout`."""
        return self.messages.get(timeout=timeout)

    def take(self, count: int, timeout: float = 5.0) -> list[dict]:
        """The next `count` events (decoded records); TimeoutError if they do not come."""
        found, deadline = [], time.monotonic() + timeout
        while len(found) < count:
            try:
                message = self.message(max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"got {len(found)} of {count} events") from None
            if message is None:
                raise ConnectionError(f"stream ended after {len(found)} of {count} events")
            if message.get("event") == "msg":
                found.append(json.loads(message["data"]))
        return found

    def no_event(self, wait: float = 0.5) -> bool:
        try:
            self.take(1, wait)
        except TimeoutError:
            return True
        return False

    def settle(self, event: dict, action: str = "", extra: str = "") -> int:
        return self.settle_ids([event["id"]], action, extra).status

    def settle_ids(self, event_ids: list[str], action: str = "", extra: str = ""):
        """One PUT settling every id in `event_ids` (a batch): the response."""
        target = f"/?consumer_id={self.id}" + "".join(f"&event_id={i}" for i in event_ids)
        if action:
            target += f"&action={action}"
        return self.http.request("PUT", target + extra)

    def close(self) -> None:
        self.sse.sock.shutdown(socket.SHUT_RDWR)
        self.sse.close()
        self.http.close()


def groups(port: int, query: str = "") -> dict:
    answer = request(port, "GET", "/groups" + query)
    assert answer.status == 200, answer
    return answer.json()


def settled_state(port: int, name: str, ok, timeout: float = 3.0,
                  namespace: str = "orders") -> dict:
    """The group as GET /groups shows it once `ok(state)`: at once on the local store; on
    JetStream the cluster's figures (pending, lag, floors) are refreshed every second."""
    def settled() -> dict | None:
        state = groups(port)[namespace].get(name)
        return state if state is not None and ok(state) else None

    return wait_until(settled, timeout, interval=0.1,
                      what=lambda: f"group {name} not settled: {groups(port)[namespace].get(name)}")


def ack_each(workers: list[Worker]) -> tuple[list[list], list[BaseException], list]:
    """Each worker, in a thread of its own, acks every event it gets (each must be a first
    delivery) until none comes for 2 s: (payloads seen per worker, errors, the threads)."""
    seen: list[list] = [[] for _ in workers]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        worker = workers[k]
        try:
            while True:
                event = worker.take(1, timeout=2.0)[0]
                assert event["deliveries"] == 1
                seen[k].append(event["payload"])
                assert worker.settle(event) == 202
        except TimeoutError:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(workers))]
    for thread in threads:
        thread.start()
    return seen, errors, threads
