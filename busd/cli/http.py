"""A minimal blocking HTTP client for the `bus` commands that talk to a running bus.

Only what the CLI needs, on the standard library's http.client: publish one event or a
batch, acknowledge, read /healthz, and subscribe (an SSE stream read line by line). It
speaks the wire protocol of SPEC §3, so it works against busd and against Go Bus alike.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import orjson

from busd.cli.output import CommandError, UsageError

DEFAULT_HOST = "http://localhost:2021"


class HttpError(CommandError):
    """The bus answered with an error status; `status` and `reason` say which and why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"the bus answered {status}: {reason}")
        self.status = status
        self.reason = reason


@dataclass
class Message:
    """One SSE message: `event` (msg, consumer, error, …), `id` and `data`."""

    event: str
    id: str
    data: bytes


def parse_host(url: str, flag: str = "--host") -> tuple[str, str, int, str]:
    """(scheme, host, port, base path) from `http://h:p`, `https://h`, `h:p` or `:p`."""
    text = url.strip()
    if text.startswith(":"):
        text = "localhost" + text
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"{flag}: invalid URL {url!r} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{flag}: invalid URL {url!r} (expected http://host:port)")
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/")


class BusHttp:
    """Requests to one bus over a keep-alive connection (reopened when the server closed it)."""

    def __init__(self, url: str = DEFAULT_HOST, timeout: float | None = 30.0,
                 token: str | None = None) -> None:
        self.url = url
        self.scheme, self.host, self.port, self.base = parse_host(url)
        self.timeout = timeout
        self.token = token
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._conn: http.client.HTTPConnection | None = None

    # -- plumbing ---------------------------------------------------------------------------
    def connect(self, timeout: float | None = None) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else \
            http.client.HTTPConnection
        return cls(self.host, self.port, timeout=timeout)

    def _unreachable(self, exc: BaseException) -> CommandError:
        return CommandError(f"cannot reach the bus at {self.url}: {exc}")

    def request(self, method: str, target: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        """Send a request and read the whole answer (the response's .data holds the body)."""
        headers = {**self.auth, **(headers or {})}
        if body is not None:
            headers.setdefault("Content-Type", "application/json")
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = self.connect(self.timeout)
            try:
                self._conn.request(method, self.base + target, body=body, headers=headers)
                response = self._conn.getresponse()
                response.data = response.read()  # type: ignore[attr-defined]
                if response.will_close:
                    self.close()
                return response
            except (http.client.RemoteDisconnected, BrokenPipeError,
                    ConnectionResetError) as exc:
                self.close()
                if attempt:  # a stale keep-alive connection gets one retry
                    raise self._unreachable(exc) from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise self._unreachable(exc) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @staticmethod
    def _check(response: http.client.HTTPResponse, ok: tuple[int, ...] = (200, 202)) -> None:
        if response.status not in ok:
            text = response.data.decode("utf-8", "replace").strip()  # type: ignore[attr-defined]
            raise HttpError(response.status, text.splitlines()[0] if text else response.reason)

    # -- the verbs --------------------------------------------------------------------------
    def publish(self, event: dict | bytes) -> dict:
        """Publish one event; its id, index and created_at (from the X-Bus-Event-* headers)."""
        body = event if isinstance(event, bytes) else orjson.dumps(event)
        response = self.request("POST", "/", body)
        self._check(response)
        index = response.getheader("X-Bus-Event-Index")
        return {"id": response.getheader("X-Bus-Event-Id"),
                "index": int(index) if index and index.lstrip("-").isdigit() else index,
                "created_at": response.getheader("X-Bus-Event-Created-At")}

    def publish_batch(self, records: list[bytes]) -> dict:
        """Publish stored-form records as one batch; the answer's count, first_index, ids."""
        response = self.request("POST", "/", b"[" + b",".join(records) + b"]")
        self._check(response)
        return orjson.loads(response.data)  # type: ignore[attr-defined]

    def ack(self, consumer_id: str, event_id: str) -> None:
        response = self.request("PUT", f"/?consumer_id={quote(consumer_id)}"
                                       f"&event_id={quote(event_id)}")
        self._check(response)

    def health(self) -> dict | None:
        """busd's /healthz, or None when the server has none (Go Bus)."""
        response = self.request("GET", "/healthz")
        if response.status == 404:
            return None
        self._check(response, (200,))
        try:
            return orjson.loads(response.data)  # type: ignore[attr-defined]
        except orjson.JSONDecodeError:
            return None

    def subscribe(self, pattern: str, start: str = "", ack: str = "", redelivery: str = "",
                  redelivery_count: int | None = None,
                  timeout: float | None = None) -> Subscription:
        query = [("subject", pattern), ("start", start), ("ack", ack),
                 ("redelivery", redelivery),
                 ("redelivery_count", "" if redelivery_count is None else str(redelivery_count))]
        target = "/?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query if v)
        conn = self.connect(timeout)
        try:
            conn.request("GET", self.base + target,
                         headers={"Accept": "text/event-stream", **self.auth})
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self._unreachable(exc) from None
        if response.status != 200:
            response.data = response.read()  # type: ignore[attr-defined]
            conn.close()
            self._check(response, (200,))
        return Subscription(conn, response)


class Subscription:
    """An open SSE stream: the consumer id, then messages until the server ends it."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse):
        self.conn = conn
        self.response = response
        self.consumer_id = response.getheader("X-Bus-Consumer-Id") or ""

    def settimeout(self, seconds: float | None) -> None:
        if self.conn.sock is not None:
            self.conn.sock.settimeout(seconds)

    def messages(self) -> Iterator[Message]:
        """Every message of the stream; raises TimeoutError when the socket times out."""
        event, event_id, data = "", "", []
        readline = self.response.readline
        while True:
            try:
                line = readline()
            except TimeoutError:
                raise TimeoutError("no message within the timeout") from None
            except (OSError, http.client.HTTPException) as exc:
                raise CommandError(f"the stream broke: {exc}") from None
            if not line:
                return
            line = line.rstrip(b"\r\n")
            if not line:
                if data or event:
                    yield Message(event or "message", event_id, b"\n".join(data))
                event, event_id, data = "", "", []
                continue
            if line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                data.append(value)
            elif name == b"event":
                event = value.decode()
            elif name == b"id":
                event_id = value.decode()

    def close(self) -> None:
        try:
            self.conn.close()
        except OSError:
            pass

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
