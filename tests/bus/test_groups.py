"""Consumer groups (SPEC §3.7), against real server processes: the behavioural tests run
on both stores (`store_server`: local, and --store jetstream over one nats-server); the
ones about the local journal, retention or the request checks run on the local store."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from busclient import SSE, Http, publish, request, wait_until
from groupworker import Worker, ack_each, batch, groups, settled_state


def test_three_members_share_the_events_each_acked_once(store_server):
    server = store_server
    workers = [Worker(server.port, "subject=orders.>&group=billing&start=oldest"
                                   "&max_inflight=20") for _ in range(3)]
    total = 10_000 if server.store == "local" else 1_500
    seen, errors, threads = ack_each(workers)
    batch(server.port, "orders.created", total)
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    everything = sorted(n for got in seen for n in got)
    assert everything == list(range(total))  # each event once, none lost
    for got in seen:  # nobody idle while the others had a backlog
        assert len(got) > total / 3 * 0.5, [len(g) for g in seen]
        assert got == sorted(got)  # in index order per member
    state = settled_state(server.port, "billing", lambda s: s["ack_floor"] == total)
    assert state["acked"] == total and state["pending"] == 0 and state["lag"] == 0
    assert state["cursor"] == total
    for worker in workers:
        worker.close()


def test_a_member_that_disconnects_gives_its_events_back_at_once(store_server):
    server = store_server
    batch(server.port, "orders.created", 10)
    first = Worker(server.port, "subject=orders.>&group=g&start=oldest&max_inflight=4")
    held = first.take(4)
    second = Worker(server.port, "subject=orders.>&group=g&max_inflight=10")
    rest = second.take(6)
    assert {e["payload"] for e in held + rest} == set(range(10))
    first.close()
    started = time.monotonic()
    again = second.take(4, timeout=1.0)  # not after ack_wait (30 s)
    assert time.monotonic() - started < 1.0
    assert sorted(e["payload"] for e in again) == sorted(e["payload"] for e in held)
    assert all(e["deliveries"] == 2 for e in again)
    assert groups(server.port)["orders"]["g"]["redeliveries"] == 4
    second.close()


@pytest.mark.parametrize("per_put", [1, 25])
def test_kill_9_loses_no_unacked_event_and_redelivers_no_acked_one(make_server, per_put):
    """Local only: the group's journal is what survives (JetStream keeps the state)."""
    server = make_server("orders")
    batch(server.port, "orders.created", 300)
    worker = Worker(server.port, "subject=orders.>&group=g&start=oldest&max_inflight=100")
    acked, batch_of = set(), {}
    for _ in range(150):
        event = worker.take(1)[0]
        if event["payload"] % 3:  # a third stays unacked
            batch_of[event["id"]] = event["payload"]
        if len(batch_of) == per_put:  # `per_put` acks in one PUT
            assert worker.settle_ids(list(batch_of)).status == 202
            acked.update(batch_of.values())
            batch_of.clear()
    server.kill()  # SIGKILL: nothing flushed at exit
    worker.close()
    server.start()
    worker = Worker(server.port, "subject=orders.>&group=g&max_inflight=400")
    got = [e["payload"] for e in worker.take(300 - len(acked), timeout=5.0)]
    assert sorted(got) == sorted(set(range(300)) - acked)
    assert worker.no_event(0.3)
    worker.close()


def test_nak_with_delay_waits_before_the_redelivery(store_server):
    server = store_server
    worker = Worker(server.port, "subject=orders.>&group=g")
    publish(server.port, "orders.created", 1)
    event = worker.take(1)[0]
    naked = time.monotonic()
    assert worker.settle(event, "nak", "&delay=600ms") == 202
    again = worker.take(1, timeout=3.0)[0]
    assert time.monotonic() - naked >= 0.55
    assert again["id"] == event["id"] and again["deliveries"] == 2
    assert worker.settle(again, "nak") == 202  # no delay: at once
    started = time.monotonic()
    third = worker.take(1)[0]
    assert third["deliveries"] == 3 and time.monotonic() - started < 0.3
    worker.close()


def test_backoff_schedule_spaces_the_redeliveries(store_server):
    server = store_server
    worker = Worker(server.port, "subject=orders.>&group=g&backoff=200ms,500ms&max_deliver=0")
    publish(server.port, "orders.created", 1)
    times = []
    for _ in range(4):
        worker.take(1, timeout=3.0)
        times.append(time.monotonic())
    since = [t - times[0] for t in times[1:]]  # from the first: robust to a late read
    assert 0.1 <= since[0] < 0.5, since
    assert 0.6 <= since[1] < 1.0, since
    assert 1.1 <= since[2] < 1.5, since  # the last step repeats
    worker.close()


def test_max_deliver_dead_letters_with_reason_and_count(store_server):
    server = store_server
    watcher = SSE(server.port, "subject=orders.dlq.>")
    worker = Worker(server.port, "subject=orders.>&group=billing&ack_wait=100ms&max_deliver=3")
    publish(server.port, "orders.created", {"n": 1})
    deliveries = [e["deliveries"] for e in worker.take(3, timeout=3.0)]
    assert deliveries == [1, 2, 3]
    letter = watcher.events(1, timeout=3.0)[0]
    assert letter["subject"] == "orders.dlq.billing"
    assert letter["payload"]["reason"] == "max_deliver"
    assert letter["payload"]["deliveries"] == 3
    assert letter["payload"]["group"] == "billing"
    assert letter["payload"]["event"]["payload"] == {"n": 1}
    assert worker.no_event(0.4)  # its own dead letter does not come back to the group
    state = settled_state(server.port, "billing", lambda s: s["pending"] == 0)
    assert state["dead_letters"] == 1 and state["lag"] == 0  # nor does it count as lag
    watcher.close()
    worker.close()


def test_its_own_dead_letters_are_neither_delivered_nor_lag(store_server):
    """The group's pattern (the whole namespace) matches its dead-letter subject: the dead
    letter stored past the cursor of a group whose only member is full is not lag."""
    server = store_server
    worker = Worker(server.port, "subject=orders.>&group=g&start=oldest")  # max_inflight 1
    batch(server.port, "orders.created", 2)
    first = worker.take(1)[0]
    assert worker.settle(first, "term") == 202
    second = worker.take(1)[0]  # the member is full again: the cursor waits after it
    settled_state(server.port, "g", lambda s: s["dead_letters"] == 1 and s["next_index"] == 3
                  and s["cursor"] == 2)
    time.sleep(1.5)  # JetStream's figures are refreshed every second
    assert groups(server.port)["orders"]["g"]["lag"] == 0
    assert worker.settle(second) == 202
    assert worker.no_event(0.4)
    worker.close()


def test_term_dead_letters_at_once_on_the_chosen_subject(store_server):
    server = store_server
    watcher = SSE(server.port, "subject=orders.poison")
    worker = Worker(server.port, "subject=orders.created&group=g&dead_letter=orders.poison"
                                 "&ack_wait=300ms")
    publish(server.port, "orders.created", 7)
    event = worker.take(1)[0]
    assert worker.settle(event, "term") == 202
    letter = watcher.events(1, timeout=2.0)[0]
    assert letter["payload"]["reason"] == "term" and letter["payload"]["deliveries"] == 1
    assert letter["payload"]["event"]["id"] == event["id"]
    assert worker.no_event(0.8)  # past ack_wait: termed for good
    worker.close()
    watcher.close()


def test_progress_restarts_ack_wait(store_server):
    server = store_server
    # room for one more: on JetStream a redelivery comes only to a member with room
    worker = Worker(server.port, "subject=orders.>&group=g&ack_wait=400ms&max_inflight=2")
    publish(server.port, "orders.created", 1)
    event = worker.take(1)[0]
    for _ in range(4):
        time.sleep(0.2)
        assert worker.settle(event, "progress") == 202
    assert worker.no_event(0.1)  # 0.9 s after delivery: not redelivered
    again = worker.take(1, timeout=1.0)[0]
    assert again["deliveries"] == 2
    worker.close()


def test_two_groups_on_one_pattern_each_get_everything(store_server):
    server = store_server
    a = Worker(server.port, "subject=orders.>&group=a")
    b = Worker(server.port, "subject=orders.>&group=b")
    batch(server.port, "orders.created", 20)
    for worker in (a, b):
        got = []
        for _ in range(20):
            event = worker.take(1)[0]
            got.append(event["payload"])
            assert worker.settle(event) == 202
        assert got == list(range(20))
        worker.close()


def test_group_created_from_oldest_reads_the_history(store_server):
    server = store_server
    batch(server.port, "orders.created", 30)
    later = Worker(server.port, "subject=orders.>&group=late")  # default: newest
    worker = Worker(server.port, "subject=orders.>&group=g&start=oldest&max_inflight=100")
    assert [e["payload"] for e in worker.take(30)] == list(range(30))
    assert later.no_event(0.3)
    worker.close()
    later.close()


def test_groups_endpoint_lists_and_delete_ends_members(store_server):
    server = store_server
    worker = Worker(server.port, "subject=orders.*&group=billing&max_inflight=3&ack_wait=2s"
                                 "&max_deliver=4&backoff=1s,2s")
    publish(server.port, "orders.created", 1)
    worker.take(1)
    shown = groups(server.port)
    assert set(shown) == {"app", "orders", "math"} and shown["app"] == {}
    state = shown["orders"]["billing"]
    assert state["subjects"] == ["orders.*"]
    assert state["settings"] == {"start": "newest", "ack_wait_s": 2.0, "max_deliver": 4,
                                 "backoff_s": [1.0, 2.0], "dead_letter": "orders.dlq.billing",
                                 "max_pending": 50_000}
    assert [m["consumer_id"] for m in state["members"]] == [worker.id]
    assert state["members"][0]["inflight"] == 1
    assert settled_state(server.port, "billing", lambda s: s["pending"] == 1)
    assert groups(server.port, "?namespace=orders&name=billing") == {"orders": {
        "billing": groups(server.port)["orders"]["billing"]}}
    assert request(server.port, "GET", "/groups?namespace=orders&name=nope").status == 404
    assert request(server.port, "GET", "/groups?namespace=nope").status == 404
    deleted = request(server.port, "DELETE", "/groups?namespace=orders&name=billing")
    assert deleted.status == 200 and deleted.json()["name"] == "billing"
    message = worker.message()
    while message.get("event") != "error":
        message = worker.message()
    assert "deleted" in message["data"]
    assert groups(server.port)["orders"] == {}
    assert request(server.port, "DELETE", "/groups?namespace=orders&name=billing").status == 404
    assert request(server.port, "DELETE", "/groups?namespace=orders").status == 400
    assert request(server.port, "POST", "/groups").status == 405
    worker.close()


def test_deleted_group_is_gone_after_a_restart(store_server):
    server = store_server
    Worker(server.port, "subject=orders.>&group=g").close()
    assert request(server.port, "DELETE", "/groups?namespace=orders&name=g").status == 200
    assert groups(server.port)["orders"] == {}
    server.restart()
    assert groups(server.port)["orders"] == {}


def test_join_with_another_pattern_is_a_conflict(store_server):
    server = store_server
    worker = Worker(server.port, "subject=orders.>&group=g")
    answer = request(server.port, "GET", "/?subject=orders.created&group=g")
    assert answer.status == 409 and b"orders.>" in answer.body
    worker.close()


@pytest.mark.parametrize("query, word", [
    ("subject=orders.>&group=bad name", "group"),
    ("subject=orders.>&group=" + "x" * 65, "group"),
    ("subject=orders.>&group=g&ack_wait=fast", "ack_wait"),
    ("subject=orders.>&group=g&ack_wait=1ns", "ack_wait"),
    ("subject=orders.>&group=g&max_deliver=-1", "max_deliver"),
    ("subject=orders.>&group=g&backoff=1s,,2s", "backoff"),
    ("subject=orders.>&group=g&dead_letter=app.x", "dead_letter"),
    ("subject=orders.>&group=g&dead_letter=orders.*", "dead_letter"),
    ("subject=orders.>&group=g&start=e_00000000000000000000", "group"),
    ("subject=orders.>&subject=app.x&group=g", "namespace"),
    ("subject=orders.>&group=g&max_inflight=0", "max_inflight"),
])
def test_bad_group_options_are_refused_with_a_reason(shared_server, query, word):
    """Local only: the checks are the front door's, before any store is asked."""
    answer = request(shared_server.port, "GET", "/?" + query.replace(" ", "%20"))
    assert answer.status == 400, answer
    assert word.encode() in answer.body
    assert groups(shared_server.port)["orders"] == {}  # nothing was created


def test_settle_actions_are_checked(shared_server):
    """Local only: the checks are the front door's, before any store is asked."""
    port = shared_server.port
    target = "/?consumer_id=c_00000000000000000000&event_id=e_00000000000000000000"
    assert request(port, "PUT", target + "&action=maybe").status == 400
    assert request(port, "PUT", target + "&action=nak&delay=soon").status == 400
    assert request(port, "PUT", target + "&action=nak&delay=1s").status == 202  # idempotent
    plain = SSE(port, "subject=orders.>&ack=manual")
    answer = request(port, "PUT", f"/?consumer_id={plain.consumer_id}&event_id="
                                  "e_00000000000000000000&action=nak")
    assert answer.status == 400 and b"group" in answer.body
    plain.close()


def test_one_put_settles_every_listed_id_exactly_once(server):
    batch(server.port, "orders.created", 40)
    worker = Worker(server.port, "subject=orders.>&group=g&start=oldest&max_inflight=40")
    events = worker.take(40)
    acked, rest = events[:30], events[30:]
    ids = [e["id"] for e in acked]
    # an id twice, one never delivered, one free-form: each listed id once, the rest no-op
    answer = worker.settle_ids(ids + ids[:5] + ["e_00000000000000000000", "unknown"])
    assert answer.status == 202, answer
    state = groups(server.port)["orders"]["g"]
    assert state["acked"] == 30 and state["pending"] == 10
    assert worker.settle_ids(ids).status == 202  # again: idempotent
    assert groups(server.port)["orders"]["g"]["acked"] == 30
    assert worker.settle_ids([e["id"] for e in rest], "nak").status == 202  # one action
    again = worker.take(10, timeout=2.0)  # the nak'ed ones only, at once
    assert sorted(e["payload"] for e in again) == [e["payload"] for e in rest]
    assert all(e["deliveries"] == 2 for e in again)
    assert worker.no_event(0.3)
    worker.close()


def test_a_settle_past_the_bound_or_with_an_empty_id_is_refused_whole(server):
    batch(server.port, "orders.created", 10)
    worker = Worker(server.port, "subject=orders.>&group=g&start=oldest&max_inflight=10")
    ids = [e["id"] for e in worker.take(10)]
    over = worker.settle_ids(ids + [f"x{n}" for n in range(991)])  # 1,001 ids
    assert over.status == 400 and b"at most 1000" in over.body, over
    empty = worker.settle_ids(ids + [""])
    assert empty.status == 400 and b"event_id" in empty.body, empty
    assert groups(server.port)["orders"]["g"]["acked"] == 0  # nothing was settled
    assert worker.settle_ids(ids + [f"x{n}" for n in range(990)]).status == 202  # 1,000
    state = groups(server.port)["orders"]["g"]
    assert state["acked"] == 10 and state["pending"] == 0
    worker.close()


def test_deliveries_field_keeps_the_record_json(store_server):
    server = store_server
    worker = Worker(server.port, "subject=orders.>&group=g")
    publish(server.port, "orders.created", {"nested": [1, {"a": "}"}]}, key="k", trace_id="t")
    message = worker.message()
    while message.get("event") != "msg":
        message = worker.message()
    record = json.loads(message["data"])
    assert record["payload"] == {"nested": [1, {"a": "}"}]} and record["deliveries"] == 1
    assert record["key"] == "k" and record["trace_id"] == "t"
    worker.close()


def test_retention_deleting_unacked_events_skips_and_counts_them(make_server):
    """Local only: busd's own retention (JetStream's stream limits are the cluster's)."""
    server = make_server("orders", "--segment-size", "4KiB", "--retention-bytes", "12KiB")
    batch(server.port, "orders.created", 5)
    holder = Worker(server.port, "subject=orders.>&group=g&start=oldest&max_inflight=5")
    held = holder.take(5)  # never acked
    batch(server.port, "orders.created", 2000, start=5)  # ~100 KiB: old segments go

    def first_index() -> int:
        return request(server.port, "GET", "/healthz").json()["namespaces"]["orders"][
            "first_index"]

    wait_until(lambda: first_index() >= 100, interval=0.1,
               what=lambda: f"retention kept the first events: first_index {first_index()}")
    first = first_index()
    holder.close()
    worker = Worker(server.port, "subject=orders.>&group=g&max_inflight=1000")
    got = [e["payload"] for e in worker.take(2005 - first, timeout=5.0)]
    assert got[0] == first and not set(got) & {e["payload"] for e in held}
    state = groups(server.port)["orders"]["g"]
    # the 5 held ones, and the first - 5 the group had not read yet
    assert state["skipped_by_retention"] == first and state["ack_floor"] >= first
    worker.close()


def test_a_log_that_lost_its_tail_does_not_make_the_group_skip_new_events(make_server):
    """Local only. Under --fsync interval the log and the group's state are fsynced apart,
    so a power loss can take back events the group was delivered: it then resumes at the
    log's head, not past it, and every event published after the restart reaches it."""
    server = make_server("orders")
    for n in range(20):  # one write each: the cut below falls between writes
        publish(server.port, "orders.created", n)
    worker = Worker(server.port, "subject=orders.>&group=g&start=oldest&max_inflight=100")
    events = worker.take(20)
    assert worker.settle_ids([e["id"] for e in events[:10]]).status == 202
    settled_state(server.port, "g", lambda s: s["ack_floor"] == 10)
    worker.close()
    assert server.stop() == 0
    segment = sorted((server.path / "orders").glob("*.seg"))[-1]
    data, end = segment.read_bytes(), 16
    for _ in range(5):
        end += 8 + int.from_bytes(data[end:end + 4], "little")
    segment.write_bytes(data[:end])  # what a power loss kept: the first 5 events
    server.start()
    assert "group state is ahead of its log" in server.log()
    state = groups(server.port)["orders"]["g"]
    assert (state["pending"], state["ack_floor"]) == (0, 5)
    batch(server.port, "orders.created", 10, start=100)
    worker = Worker(server.port, "subject=orders.>&group=g&max_inflight=100")
    events = worker.take(10)
    assert sorted(e["payload"] for e in events) == list(range(100, 110))
    assert worker.no_event(0.3)
    assert worker.settle_ids([e["id"] for e in events]).status == 202
    settled_state(server.port, "g", lambda s: s["ack_floor"] == 15)
    worker.close()
    for n in range(200, 210):  # at indexes 15..24, where the lost deliveries were
        publish(server.port, "orders.created", n)
    server.restart()  # the journal on disk holds the corrected state, not the lost one
    worker = Worker(server.port, "subject=orders.>&group=g&max_inflight=100")
    assert sorted(e["payload"] for e in worker.take(10)) == list(range(200, 210))
    assert worker.no_event(0.3)
    worker.close()


def test_damaged_group_settings_stop_the_start_naming_the_file(make_server):
    """Local only: a settings file that does not read back (a power loss under --fsync
    never) stops the start with what to do, and nothing of the group is removed."""
    server = make_server("orders")
    Worker(server.port, "subject=orders.>&group=g").close()
    assert server.stop() == 0
    folder = server.path / ".groups" / "orders"
    (folder / "g.json").write_bytes((folder / "g.json").read_bytes()[:5])
    state = (folder / "g.state").read_bytes()
    with pytest.raises(RuntimeError) as err:
        server.start()
    assert f"group settings {folder / 'g.json'} are damaged" in str(err.value)
    assert "delete it and g.state beside it to drop the group" in str(err.value)
    assert (folder / "g.state").read_bytes() == state


def test_metrics_per_group(store_server):
    server = store_server
    worker = Worker(server.port, "subject=orders.>&group=billing&ack_wait=100ms&max_deliver=2")
    batch(server.port, "orders.created", 3)
    worker.take(3)
    worker.take(3, timeout=2.0)  # each once more, then dead-lettered
    settled_state(server.port, "billing", lambda s: s["dead_letters"] == 3 and
                  s["pending"] == s["lag"] == 0)
    text = request(server.port, "GET", "/metrics").body.decode()
    labels = '{namespace="orders",group="billing"}'
    assert f"busd_group_dead_letters_total{labels} 3" in text
    assert f"busd_group_redeliveries_total{labels} 3" in text
    assert f"busd_group_pending{labels} 0" in text
    assert f"busd_group_lag{labels} 0" in text
    worker.close()


def test_start_at_a_time_finds_the_first_event_at_or_after_it(store_server):
    server = store_server
    batch(server.port, "orders.created", 20)
    time.sleep(0.05)
    boundary = time.time_ns()
    time.sleep(0.05)
    batch(server.port, "orders.created", 20, start=20)
    stamp = datetime.fromtimestamp(boundary / 1e9, UTC).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")
    plain = SSE(server.port, f"subject=orders.>&start={stamp}")
    assert [e["payload"] for e in plain.events(20)] == list(range(20, 40))
    plain.close()
    worker = Worker(server.port, f"subject=orders.>&group=t&start={stamp}&max_inflight=50")
    assert [e["payload"] for e in worker.take(20)] == list(range(20, 40))
    assert worker.no_event(0.2)
    worker.close()
    late = SSE(server.port, "subject=orders.>&start=2999-01-01T00:00:00Z")  # after all: live
    publish(server.port, "orders.created", "new")
    assert late.events(1)[0]["payload"] == "new"
    late.close()


def test_group_created_after_an_event_id_starts_right_after_it(store_server):
    server = store_server
    body = [{"subject": "orders.created", "payload": n} for n in range(10)]
    ids = request(server.port, "POST", "/", body).json()["ids"]
    worker = Worker(server.port, f"subject=orders.>&group=g&start={ids[3]}&max_inflight=20")
    assert [e["payload"] for e in worker.take(6)] == list(range(4, 10))
    worker.close()


def test_groups_per_namespace_are_bounded(make_server):
    """Local only: 256 JetStream consumers would cost the suite more than it tells."""
    server = make_server("orders", "--fsync", "never")
    with Http(server.port) as http:
        for k in range(256):
            http.send(f"GET /?subject=orders.>&group=g{k} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            http.close()
            http = Http(server.port)
    assert len(groups(server.port)["orders"]) == 256
    answer = request(server.port, "GET", "/?subject=orders.>&group=one-more")
    assert answer.status == 409 and b"256" in answer.body
    assert request(server.port, "DELETE", "/groups?namespace=orders&name=g0").status == 200
    assert request(server.port, "GET", "/?subject=orders.>&group=one-more").status == 200
