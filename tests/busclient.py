"""Test-side tools: run the real server as a subprocess, and talk to it over raw sockets.

Deliberately independent of busd's own code, so the tests check the wire, not themselves.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def rss_kib(pid: int) -> int:
    """A server process's resident memory, for the tests of its bounds."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def wait_until(condition: Callable[[], T], timeout: float = 5.0, interval: float = 0.05, *,
               what: str | Callable[[], str]) -> T:
    """Poll condition() until it gives a true value, and return that value; after `timeout`
    seconds fail the test saying `what` (a string, or a callable giving one, e.g. a server's
    log, called only on failure)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"after {timeout} s: {what() if callable(what) else what}")
        time.sleep(interval)
    return value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def refused(*args: str, env: dict | None = None) -> str:
    """Run a `bus server` that must refuse to start: exit 2 and its one `bus server:` line."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
    result = subprocess.run([sys.executable, "-m", "busd", "server", *args], capture_output=True,
                            text=True, timeout=20, env={**full_env, **(env or {})})
    lines = [line for line in result.stderr.splitlines() if line.startswith("bus server:")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


class BusServer:
    """`python -m busd server` on a free loopback port with its own data directory."""

    command: tuple[str, ...] = ("-m", "busd")  # what runs `bus` (a test may wrap it)

    def __init__(self, path: Path, namespaces: str = "app,orders,math", *args: str,
                 env: dict[str, str] | None = None, fault: str = "") -> None:
        """fault: Python source the server process runs first, to inject a fault (a slow
        disk, say) into the real server."""
        self.path = Path(path)
        if fault:
            self.command = ("-c", fault + "\nimport sys\nfrom busd.cli.main import main\n"
                                          "sys.exit(main())")
        self.namespaces = namespaces
        self.args = list(args)
        self.env = env or {}
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.stderr_path = self.path.parent / f"server-{self.port}.log"

    def spawn(self) -> subprocess.Popen:
        """Start the process and return at once (start() also waits until it listens)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
        env.update(self.env)
        cmd = [sys.executable, *self.command, "server", "--addr", f"127.0.0.1:{self.port}",
               "--path", str(self.path), "--namespaces", self.namespaces, *self.args]
        self._stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                     stderr=self._stderr)
        return self.proc

    def start(self, timeout: float = 15.0) -> BusServer:
        self.spawn()
        return self.wait_listening(timeout)

    def wait_listening(self, timeout: float = 15.0) -> BusServer:
        """Until the spawned server accepts connections; an exit fails with its log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not start listening:\n{self.log()}")

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, and the exit code (the test fails if it takes longer than `timeout`)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._stderr.close()
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._stderr.close()

    def restart(self) -> BusServer:
        self.stop()
        return self.start()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:200]!r}>"


def _read_head(sock_file) -> tuple[int, dict[str, str]]:
    status_line = sock_file.readline()
    if not status_line:
        raise ConnectionError("connection closed before a response")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while True:
        line = sock_file.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def read_response(sock_file) -> Response:
    """Read one non-streaming response from a socket file."""
    status, headers = _read_head(sock_file)
    if status == 100:
        return read_response(sock_file)
    body = b""
    if "content-length" in headers:
        body = sock_file.read(int(headers["content-length"]))
    return Response(status, headers, body)


class Http:
    """A keep-alive HTTP/1.1 connection speaking raw bytes."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str, target: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Response:
        self.send(build_request(method, target, body, headers))
        return read_response(self.file)

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> Http:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def build_request(method: str, target: str, body: bytes | None = None,
                  headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def request(port: int, method: str, target: str = "/", body=None,
            headers: dict[str, str] | None = None) -> Response:
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
    with Http(port) as http:
        return http.request(method, target, body, headers)


def publish(port: int, subject: str, payload=None, **fields) -> Response:
    event = {"subject": subject, **fields}
    if payload is not None:
        event["payload"] = payload
    return request(port, "POST", "/", event)


class SSE:
    """A subscription: reads the response head, then chunked SSE messages."""

    def __init__(self, port: int, query: str = "", headers: dict[str, str] | None = None,
                 timeout: float = 10.0, raw_request: bytes | None = None,
                 sock: socket.socket | None = None) -> None:
        """Subscribe with `query` (or the exact `raw_request`), or adopt a `sock` on which
        the request was already sent."""
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            sock.sendall(raw_request or build_request(
                "GET", "/?" + query, None, {"Accept": "text/event-stream", **(headers or {})}))
        self.sock = sock
        self.file = self.sock.makefile("rb")
        self.status, self.headers = _read_head(self.file)
        self._buffer = b""
        self.ended = False
        self.consumer_id = self.headers.get("x-bus-consumer-id")

    def _read_chunk(self) -> bool:
        size_line = self.file.readline()
        if not size_line:
            self.ended = True
            return False
        size = int(size_line.strip(), 16)
        if size == 0:
            self.file.readline()
            self.ended = True
            return False
        self._buffer += self.file.read(size)
        assert self.file.read(2) == b"\r\n", "chunk not terminated by CRLF"
        return True

    def message(self, timeout: float = 5.0) -> dict | None:
        """The next SSE message as a dict of its fields (`event`, `id`, `data`, ...)."""
        self.sock.settimeout(timeout)
        while b"\n\n" not in self._buffer:
            if not self._read_chunk():
                return None
        raw, self._buffer = self._buffer.split(b"\n\n", 1)
        fields: dict[str, str] = {}
        for line in raw.decode().split("\n"):
            if line.startswith(":"):
                fields.setdefault("comment", line[1:].strip())
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        return fields

    def events(self, count: int, timeout: float = 5.0) -> list[dict]:
        """The next `count` `msg` events (decoded records), skipping other messages."""
        found = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"got {len(found)} of {count} events")
            message = self.message(remaining)
            if message is None:
                raise ConnectionError(f"stream ended after {len(found)} of {count} events")
            if message.get("event") == "msg":
                record = json.loads(message["data"])
                assert message["id"] == record["id"]
                found.append(record)
        return found

    def no_event(self, wait: float = 0.5) -> bool:
        """True if no `msg` event arrives within `wait` seconds."""
        try:
            self.events(1, timeout=wait)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> SSE:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ack(port: int, consumer_id: str, event_id: str) -> Response:
    return request(port, "PUT", f"/?consumer_id={consumer_id}&event_id={event_id}")
