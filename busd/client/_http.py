"""The HTTP/1.1 the SDK speaks: request bytes out, httptools-parsed responses in."""

from __future__ import annotations

import os
import ssl
from typing import TYPE_CHECKING

import httptools

from busd.client.errors import BusConnectionError
from busd.version import __version__

if TYPE_CHECKING:
    from busd.client._sse import SSEDecoder

USER_AGENT = f"busd-python/{__version__}".encode()


def tls_context(ca_file: str | os.PathLike | None, insecure: bool,
                context: ssl.SSLContext | None) -> ssl.SSLContext:
    """The TLS settings of an https:// client: `context` as given, else certificates
    verified against `ca_file` (PEM; default: the system's CAs), or not at all (`insecure`).
    A CA file that cannot be read raises OSError (ssl.SSLError if it holds no certificate)."""
    if context is not None:
        if ca_file is not None or insecure:
            raise ValueError("give ssl_context, or ca_file/insecure, not both")
        return context
    if insecure:
        if ca_file is not None:
            raise ValueError("insecure=True verifies no certificate: ca_file would go unused")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=ca_file)


class Requests:
    """Request bytes for one server: the fixed parts are built once per client."""

    __slots__ = ("_post", "_tail")

    def __init__(self, host_header: str, token: str | None = None) -> None:
        self._tail = b" HTTP/1.1\r\nHost: " + host_header.encode("idna") + \
            b"\r\nUser-Agent: " + USER_AGENT + b"\r\n"
        if token:
            if any(c in token for c in "\r\n"):
                raise ValueError("a token cannot contain line breaks")
            self._tail += b"Authorization: Bearer " + token.encode() + b"\r\n"
        self._post = b"POST /" + self._tail + \
            b"Content-Type: application/json\r\nContent-Length: "

    def post(self, body: bytes) -> bytes:
        return b"%s%d\r\n\r\n%s" % (self._post, len(body), body)

    def put(self, target: str) -> bytes:
        return b"PUT " + target.encode() + self._tail + b"Content-Length: 0\r\n\r\n"

    def get(self, target: str) -> bytes:
        return b"GET " + target.encode() + self._tail + b"\r\n"

    def delete(self, target: str) -> bytes:
        return b"DELETE " + target.encode() + self._tail + b"Content-Length: 0\r\n\r\n"

    def get_stream(self, target: str, last_event_id: str | None) -> bytes:
        extra = b"Last-Event-ID: " + last_event_id.encode() + b"\r\n" if last_event_id else b""
        return (b"GET " + target.encode() + self._tail +
                b"Accept: text/event-stream\r\nCache-Control: no-cache\r\n" + extra + b"\r\n")


class Response:
    """One response as httptools parses it. Without a `sink` the body is collected in
    `body`; with one (an SSE stream) each piece of a 2xx de-chunked body is fed to it."""

    __slots__ = ("parser", "status", "headers", "_body", "sink", "head_done", "complete",
                 "keep_alive")

    def __init__(self, sink: SSEDecoder | None = None) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self.sink = sink
        self.head_done = False
        self.complete = False
        self.keep_alive = False  # may the connection carry another request after this one

    def feed(self, data: bytes) -> None:
        """Parse received bytes; BusConnectionError if they are not HTTP."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise BusConnectionError(f"malformed HTTP response from the server: {exc}") from None

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        if self.sink is not None and 200 <= self.status < 300:
            self.sink.feed(body)
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()  # (httptools forgets it afterwards)
        self.complete = True

    @property
    def body(self) -> bytes:
        return b"".join(self._body)

    def header(self, name: bytes) -> str:
        return self.headers.get(name, b"").decode("latin-1")
