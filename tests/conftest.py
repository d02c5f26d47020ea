"""Shared fixtures: a real busd process per test (or per module) on a free loopback port."""

from __future__ import annotations

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
