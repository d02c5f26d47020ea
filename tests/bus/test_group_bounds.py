"""A group's bounds pushed past, on real server processes: pending events (max_pending, at
most and by default 50,000) and members (1,024). Past either, the group refuses or waits,
says why, and loses nothing."""

from __future__ import annotations

import socket

import pytest
from busclient import SSE, build_request, publish, read_response, request, rss_kib, wait_until

from groupworker import Worker, batch, groups, settled_state


def arrived(worker: Worker, wait: float) -> list[dict]:
    """Every event the worker is sent until none comes for `wait` seconds."""
    events = []
    while True:
        try:
            events += worker.take(1, wait)
        except TimeoutError:
            return events


def test_members_together_hold_at_most_max_pending(store_server):
    server = store_server
    batch(server.port, "orders.created", 30)
    query = "subject=orders.>&group=g&start=oldest&max_pending=5&max_inflight=10"
    workers = [Worker(server.port, query) for _ in range(3)]
    try:
        held = [event for worker in workers for event in arrived(worker, 0.4)]
        assert len(held) == 5  # each member has room for 10: the group's bound holds them
        shown = settled_state(server.port, "g", lambda s: (s["pending"], s["lag"]) == (5, 25))
        assert shown["settings"]["max_pending"] == 5
    finally:
        for worker in workers:
            worker.close()


def test_past_max_pending_nothing_is_lost(store_server):
    server = store_server
    batch(server.port, "orders.created", 30)
    query = "subject=orders.>&group=g&start=oldest&max_pending=4&max_inflight=10"
    worker = Worker(server.port, query)
    try:
        first = worker.take(4)
        assert worker.no_event(0.4)  # the 5th waits: 4 are pending
        assert worker.settle(first[0], "nak", "&delay=1h") == 202  # still pending
        assert worker.no_event(0.3)
        seen = [e["payload"] for e in first]
        for event in first[1:]:
            assert worker.settle(event) == 202
        while len(seen) < 30:
            events = worker.take(min(3, 30 - len(seen)))
            seen += [e["payload"] for e in events]
            for event in events:
                assert worker.settle(event) == 202
        assert sorted(seen) == list(range(30)) and len(set(seen)) == 30
        shown = settled_state(server.port, "g", lambda s: (s["pending"], s["lag"]) == (1, 0))
        assert shown["acked"] == 29
    finally:
        worker.close()


@pytest.mark.parametrize("value", ["0", "50001", "-1", "many"])
def test_max_pending_past_its_bound_is_refused(shared_server, value):
    answer = request(shared_server.port, "GET", f"/?subject=orders.>&group=g&max_pending={value}")
    assert answer.status == 400 and b"max_pending" in answer.body
    assert groups(shared_server.port)["orders"] == {}


def test_the_default_bound_is_50000_pending(server):
    """The real bound, pushed past cheaply: six members at max_inflight=10000 have room for
    60,000; the group holds 50,000 and the 50,001st waits until one is settled."""
    batch(server.port, "orders.created", 50_010)
    workers = [Worker(server.port, "subject=orders.>&group=g&start=oldest&max_inflight=10000")
               for _ in range(6)]
    try:
        held = {worker: arrived(worker, 0.5) for worker in workers}
        assert sum(map(len, held.values())) == 50_000
        shown = groups(server.port, "?namespace=orders&name=g")["orders"]["g"]
        assert shown["settings"]["max_pending"] == 50_000
        assert (shown["pending"], shown["lag"]) == (50_000, 10)
        worker = workers[0]
        assert worker.settle(held[worker][0]) == 202
        more = [event for w in workers for event in arrived(w, 0.3)]
        assert [event["payload"] for event in more] == [50_000]  # the next in line, alone
    finally:
        for worker in workers:
            worker.close()


def join(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(build_request("GET", "/?subject=orders.>&group=many", None,
                               {"Accept": "text/event-stream"}))
    return sock


def test_a_group_holds_at_most_1024_members_and_a_refused_join_changes_nothing(server):
    members = [SSE(server.port, sock=sock) for sock in [join(server.port) for _ in range(1024)]]
    try:
        assert all(sse.status == 200 for sse in members)
        refused = join(server.port)
        answer = read_response(refused.makefile("rb"))
        refused.close()
        assert answer.status == 409 and b"1024 members" in answer.body
        assert answer.headers["content-type"].startswith("text/plain")
        shown = groups(server.port, "?namespace=orders&name=many")["orders"]["many"]
        assert len(shown["members"]) == 1024
        members.pop().close()
        wait_until(lambda: len(groups(server.port, "?namespace=orders&name=many")["orders"]
                               ["many"]["members"]) <= 1023,
                   what="the closed member is still listed")
        with SSE(server.port, "subject=orders.>&group=many") as again:  # room again
            assert again.status == 200
            publish(server.port, "orders.created", 1)
            # one of 1024 members gets it: it is not lost (pending until someone acks)
            wait_until(lambda: groups(server.port)["orders"]["many"]["pending"] == 1,
                       what="the event is not pending")
    finally:
        for sse in members:
            sse.close()


def test_memory_does_not_follow_the_acked_events(make_server):
    """Each delivery sets a deadline; a settled event's must not stay behind. With a long
    ack_wait, 100,000 acked events left ~13 MiB of stale deadlines on the server."""
    server = make_server("orders")
    total, step = 100_000, 500
    batch(server.port, "orders.created", total)
    worker = Worker(server.port, f"subject=orders.>&group=g&start=oldest&ack_wait=1h"
                                 f"&max_inflight={step}")
    try:
        pid = server.proc.pid
        for done in range(0, total, step):
            if done == 10_000:
                before = rss_kib(pid)
            events = worker.take(step, 10.0)
            assert worker.settle_ids([e["id"] for e in events]).status == 202
        state = settled_state(server.port, "g", lambda s: s["acked"] == total)
        assert state["pending"] == 0
        grown_mib = (rss_kib(pid) - before) / 1024
        assert grown_mib < 4, f"the server grew {grown_mib:.1f} MiB over 90,000 acked events"
    finally:
        worker.close()
