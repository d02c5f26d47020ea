"""Transport security: HTTPS with --tls-cert/--tls-key (the server, the SDK), and
--cors-origins."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import ssl

import pytest
from busclient import SSE, build_request, publish, read_response, request

from busd import AsyncClient, BusConnectionError, Client


def tls_socket(port: int, cert) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(cert))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def test_https_publish_and_subscribe(make_server, certificate):
    cert, key = certificate
    server = make_server("app", "--tls-cert", str(cert), "--tls-key", str(key))
    with tls_socket(server.port, cert) as sock:
        reader = sock.makefile("rb")
        for n in range(3):  # keep-alive over TLS
            sock.sendall(build_request("POST", "/", json.dumps(
                [{"subject": "app.tls", "payload": [n, i, "t" * 100]} for i in range(1000)]
            ).encode()))
            assert read_response(reader).status == 202
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
    stream_sock = tls_socket(server.port, cert)
    stream_sock.sendall(build_request("GET", "/?subject=app.>&start=oldest"))
    with SSE(server.port, sock=stream_sock) as stream:  # ~400 KB of history through TLS
        events = stream.events(3000, timeout=30)
        assert [e["payload"][:2] for e in events][:2] == [[0, 0], [0, 1]]
        assert events[-1]["payload"][:2] == [2, 999]
    # plain HTTP on the TLS port gets nowhere
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as plain:
        plain.sendall(build_request("GET", "/healthz"))
        try:
            answer = plain.recv(100)
        except ConnectionResetError:
            answer = b""
        assert not answer.startswith(b"HTTP/1.1 200")


def test_sdk_over_https_verifies_the_certificate(tls_server, certificate):
    cert, _ = certificate
    url = f"https://127.0.0.1:{tls_server.port}"
    with Client(url, ca_file=cert, timeout=10) as client:
        sub = client.get("app.>", start="oldest", ack="manual")
        puts = [client.put("app.tls", n) for n in range(3)]  # keep-alive over TLS
        for put in puts:
            event = next(sub)
            assert (event.id, event.payload) == (put.id, puts.index(put))
            event.ack()
        assert client.health()["namespaces"]["app"]["events"] == 3
        sub.close()
    with Client(url, timeout=10) as client:  # the system's CAs do not know this one
        for call in (lambda: client.put("app.tls", 1), lambda: client.get("app.>")):
            with pytest.raises(BusConnectionError, match=(
                    f"cannot reach the bus at 127.0.0.1:{tls_server.port}: its TLS "
                    "certificate failed verification: self-signed certificate")):
                call()
    with Client(url, insecure=True, timeout=10) as client:
        assert client.put("app.tls", "unverified").index == 3
    with Client(url, ssl_context=ssl.create_default_context(cafile=str(cert)),
                timeout=10) as client:
        assert client.put("app.tls", "own context").index == 4


@pytest.mark.filterwarnings("error::ResourceWarning",
                            "error::pytest.PytestUnraisableExceptionWarning")
def test_async_sdk_over_https_verifies_the_certificate(tls_server, certificate):
    cert, _ = certificate
    url = f"https://127.0.0.1:{tls_server.port}"

    async def scenario():
        async with AsyncClient(url, ca_file=cert, timeout=10) as client:
            sub = await client.get("app.>", start="oldest", ack="manual")
            put = await client.put("app.tls", {"n": 1})
            event = await sub.__anext__()
            assert (event.id, event.payload) == (put.id, {"n": 1})
            await event.ack()
            assert (await client.put_batch([{"subject": "app.tls", "data": 2}])).count == 1
            await sub.aclose()
        async with AsyncClient(url, timeout=10) as client:
            with pytest.raises(BusConnectionError, match="certificate failed verification"):
                await client.put("app.tls", 1)
            with pytest.raises(BusConnectionError, match="certificate failed verification"):
                await client.get("app.>")
        async with AsyncClient(url, insecure=True, timeout=10) as client:
            assert (await client.put("app.tls", 3)).index == 2
            sub = await client.get("app.>", start="oldest")
            assert (await sub.__anext__()).payload == {"n": 1}
        # the loop ends at once: closing must not have needed it (TLS's closing handshake
        # would, or leave the connection open: that warns on the gc.collect() below)

    asyncio.run(asyncio.wait_for(scenario(), 30))
    gc.collect()


def test_tls_needs_both_files(make_server, certificate):
    cert, _ = certificate
    with pytest.raises(RuntimeError, match="--tls-cert and --tls-key"):
        make_server("app", "--tls-cert", str(cert))
    with pytest.raises(RuntimeError, match="cannot load"):
        make_server("app", "--tls-cert", str(cert), "--tls-key", str(cert))


def test_cors_defaults_to_any_origin_and_allows_authorization(server):
    answer = request(server.port, "GET", "/healthz", headers={"Origin": "https://x.example"})
    assert answer.headers["access-control-allow-origin"] == "*"
    assert "Authorization" in answer.headers["access-control-allow-headers"]


def test_cors_origins_restrict_who_may_read(make_server):
    server = make_server("app", "--cors-origins", "https://app.example, http://localhost:8080")
    port = server.port
    good = {"Origin": "https://app.example"}
    answer = publish(port, "app.cors", 1)
    assert "access-control-allow-origin" not in answer.headers
    assert answer.headers["vary"] == "Origin"
    answer = request(port, "POST", "/", {"subject": "app.cors"}, headers=good)
    assert answer.status == 202
    assert answer.headers["access-control-allow-origin"] == "https://app.example"
    preflight = request(port, "OPTIONS", "/", headers={
        "Origin": "http://localhost:8080", "Access-Control-Request-Method": "POST"})
    assert preflight.status == 204
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:8080"
    evil = request(port, "GET", "/healthz", headers={"Origin": "https://evil.example"})
    assert evil.status == 200 and "access-control-allow-origin" not in evil.headers
    with SSE(port, "subject=app.>&start=oldest", headers=good) as sse:
        assert sse.headers["access-control-allow-origin"] == "https://app.example"
        assert len(sse.events(2)) == 2
    with SSE(port, "subject=app.>", headers={"Origin": "https://evil.example"}) as sse:
        assert sse.status == 200 and "access-control-allow-origin" not in sse.headers


@pytest.mark.parametrize("value", ["app.example", "https://a.example/path", "*,https://a.b"])
def test_bad_cors_origins_stop_the_server(make_server, value):
    with pytest.raises(RuntimeError, match="cors"):
        make_server("app", "--cors-origins", value)


def test_cors_origins_refuse_writes_from_other_origins(make_server):
    """A page elsewhere can send a `no-cors` POST (it cannot read the answer): refused."""
    server = make_server("app", "--cors-origins", "https://app.example")
    port = server.port
    for origin in ("https://evil.example", "null", "https://app.example, https://evil.example"):
        answer = request(port, "POST", "/", {"subject": "app.cors"}, headers={"Origin": origin})
        assert answer.status == 403 and b"not in --cors-origins" in answer.body, answer
        assert "access-control-allow-origin" not in answer.headers
    consumer = "c_" + "0" * 20
    ack = request(port, "PUT", f"/?consumer_id={consumer}&event_id=e_{'0' * 20}",
                  headers={"Origin": "https://evil.example"})
    assert ack.status == 403
    assert request(port, "GET", "/healthz").json()["namespaces"]["app"]["events"] == 0
    assert request(port, "POST", "/", {"subject": "app.cors"},
                   headers={"Origin": "https://app.example"}).status == 202
    assert publish(port, "app.cors", "no Origin: not a browser").status == 202
    open_bus = make_server("app")  # the default, *, refuses no origin (as Bus)
    assert request(open_bus.port, "POST", "/", {"subject": "app.cors"},
                   headers={"Origin": "https://evil.example"}).status == 202
