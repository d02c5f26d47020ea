"""The publish path below the HTTP connection runs compiled (setup.py: api.py, broker.py and
store.py with their .pxd): the same requests, through a server built from the compiled
classes and through one built from the uncompiled sources (the oracle), must get the same
answers and leave the same records in the log."""

from __future__ import annotations

import asyncio
import json
import re
import tempfile

import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from source_module import load_source

import busd.bus.broker as broker_compiled
import busd.server.api as api_compiled
import busd.store.local.store as store_compiled
from busd.server import app
from busd.server.config import load_config

ORACLES = {module: load_source(module)
           for module in (api_compiled, broker_compiled, store_compiled)}
# what differs between two runs of one request: ids, clocks, the Date header
VARYING = re.compile(rb'e_[0-9a-v]{20}|\d{4}-\d\d-\d\dT[0-9:.]+Z|Date: [^\r]*')


def _request(method: str, path: str, body: bytes = b"") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
            .encode() + body)


def _post(payload) -> bytes:
    return _request("POST", "/", json.dumps(payload).encode())


def _event(subject: str = "app.a", **fields) -> dict:
    return {"subject": subject, "payload": {"n": 1}, **fields}


REQUESTS = [
    _post(_event()),
    _post(_event("app.b.c", key="k1")),  # a key seen twice is a 409
    _post([_event(), _event("app.z"), _event()]),
    _post(_event(id="e_cs0000000000000000g0")),  # an id stored twice is a 409
    _post([_event(id="e_cs0000000000000001g0"), _event(id="e_cs0000000000000001g0")]),
    _post(_event(created_at="2024-01-02T03:04:05Z")),
    _post(_event("other.a")),  # an undeclared namespace
    _post(_event("app.*")),  # not a subject
    _post([_event(), _event("nope.x")]),  # a batch across namespaces
    _post(_event("_bus_.reply.x")),  # an inbox: answered, not stored
    _post([_event()] * 6),  # more than --max-batch
    _post(_event(payload="x" * 300)),  # larger than --max-event-size
    _post(_event("app.p")) + _post([_event("app.q")] * 2),  # pipelined: answered in order
    _request("POST", "/", b'{"subject": "app.a", "payload": '),
    _request("POST", "/", b""),
    _request("PUT", "/?consumer_id=c_nobody&event_id=e_cs0000000000000000g0"),
    _request("DELETE", "/"),
    _request("OPTIONS", "*"),
    _request("GET", "/nowhere"),
]


class Recorder:
    """A transport that keeps what the connection writes, with what varies blanked."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(VARYING.sub(b"-", bytes(data)))

    def get_extra_info(self, name, default=None):
        return default

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...


async def _serve(classes: dict[str, type], requests: list[bytes]) -> tuple[list, list]:
    """The answers to `requests` (each on a connection of its own, a few loop steps apart)
    and the records left in the log, from a server built of `classes`."""
    saved = {name: getattr(app, name) for name in classes}
    for name, cls in classes.items():
        setattr(app, name, cls)
    try:
        with tempfile.TemporaryDirectory() as data:
            config = load_config({"--namespaces": "app", "--path": data, "--max-batch": "5",
                                  "--max-event-size": "200", "--addr": "127.0.0.1:0"}, {})
            server = app.Server(config)
            await server.store.start(server.broker)
            answers = []
            for request in requests:
                transport = Recorder()
                conn = server._new_connection()
                conn.connection_made(transport)
                conn.data_received(request)
                for _ in range(3):  # the group commit, then the answer
                    await asyncio.sleep(0)
                answers.append(transport.written)
                conn.connection_lost(None)
            store = server.store
            records = store.read("app", store.first_index("app"), 1 << 20)
            await store.stop()
    finally:
        for name, cls in saved.items():
            setattr(app, name, cls)
    return answers, [VARYING.sub(b"-", bytes(record)) for record in records]


def _classes(compiled: bool) -> dict[str, type]:
    pick = (lambda module: module) if compiled else ORACLES.__getitem__
    return {"Api": pick(api_compiled).Api, "Broker": pick(broker_compiled).Broker,
            "LocalStore": pick(store_compiled).LocalStore}


def test_the_installed_modules_are_the_compiled_ones() -> None:
    for module, oracle in ORACLES.items():
        assert module.__file__.endswith(".so"), module.__file__
        assert oracle.__file__.endswith(".py"), oracle.__file__


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(REQUESTS), min_size=1, max_size=10))
def test_compiled_publish_path_answers_and_stores_as_the_source_does(requests) -> None:
    compiled = uvloop.run(_serve(_classes(compiled=True), requests))
    oracle = uvloop.run(_serve(_classes(compiled=False), requests))
    assert compiled == oracle
    assert all(answer for answer in compiled[0]), compiled[0]  # every request was answered
