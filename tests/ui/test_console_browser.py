"""The console in a real browser (headless chromium): overview, live tail across tabs,
pattern and time filtering, pause/resume, publish form errors, consumer groups (figures,
dead letters republished, delete with confirmation), the token prompt, TLS. Every tab is
opened by the `open_tab` fixture, which fails the test on a JavaScript error or a console
error it was not told to expect; tests save screenshots (under the test's tmp_path, or
$BUSD_SCREENSHOTS when set)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from authfile import token_entry, write_auth_file
from busclient import SSE, publish, request, wait_until

TOKEN = "console-token-1"
AUTH = token_entry("console", ["app.>"], ["app.>"], secret=TOKEN)
TIMEOUT_MS = 5000


class Console:
    """One tab on /ui, recording console errors and uncaught exceptions (open_tab checks
    them when the test ends)."""

    def __init__(self, context, url: str, expected_errors: tuple[str, ...] = ()) -> None:
        self.url = url
        self.page = context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.problems: list[str] = []
        self.page.on("console", lambda message: self.problems.append(message.text)
                     if message.type == "error"
                     and not any(e in message.text for e in expected_errors) else None)
        self.page.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))
        self.page.goto(url)

    def view(self, name: str) -> None:
        self.page.click(f"#tabs button[data-view={name}]")

    def text(self, selector: str) -> str:
        return self.page.locator(selector).inner_text()

    def wait_text(self, selector: str, part: str) -> None:
        self.page.wait_for_function("([s, part]) => (document.querySelector(s) || {})"
                                    ".textContent?.includes(part)", arg=[selector, part])

    def tail(self, pattern: str, start: str = "newest", value: str = "",
             cap: int | None = None, until: str = "live") -> None:
        """Start the tail and wait for its status to say `until` (empty: do not wait)."""
        self.view("tail")
        self.page.fill("#tail-pattern", pattern)
        self.page.select_option("#tail-start", start)
        if value:
            self.page.fill("#tail-start-value", value)
        if cap is not None:
            self.page.fill("#tail-cap", str(cap))
        self.page.click("#tail-go")
        if until:
            self.wait_text("#tail-status", until)

    def give_token(self, token: str) -> None:
        self.page.wait_for_selector("#token-form", state="visible")
        self.page.fill("#token-input", token)
        self.page.click("#token-form button[type=submit]")

    def received(self, count: int) -> None:
        self.page.wait_for_function("(n) => document.querySelector('#tail-count')"
                                    ".textContent === String(n)", arg=count)

    def rows(self) -> list[dict]:
        """The tail's rows, newest first."""
        return self.page.eval_on_selector_all(
            "#tail-rows .event", "rows => rows.map(r => ({id: r.dataset.id, "
            "subject: r.dataset.subject, text: r.textContent}))")

    def screenshot(self, folder: Path, name: str) -> Path:
        path = folder / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 1000
        return path


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("BUSD_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def open_tab(browser):
    """`open_tab(server or url, expected_errors=())` → a Console in a fresh browser context;
    when the test ends, a tab that logged an error it did not expect, or threw, fails it."""
    context = browser.new_context(viewport={"width": 1200, "height": 800},
                                  ignore_https_errors=True)
    tabs: list[Console] = []

    def open_(target, expected_errors: tuple[str, ...] = ()) -> Console:
        url = target if isinstance(target, str) else f"http://127.0.0.1:{target.port}/ui"
        tabs.append(Console(context, url, expected_errors))
        return tabs[-1]

    yield open_
    context.close()
    assert {tab.url: tab.problems for tab in tabs if tab.problems} == {}, "JavaScript errors"


def published_ids(port: int, subject: str, count: int, **fields) -> list[str]:
    ids = []
    for n in range(count):
        answer = publish(port, subject, {"n": n}, **fields)
        assert answer.status == 202, answer
        ids.append(answer.headers["x-bus-event-id"])
    return ids


def published_pixels(tab: Console, namespace: str) -> int:
    """Pixels of the publish-rate colour (#2563eb) above the bottom of a namespace's chart."""
    return tab.page.evaluate("""(namespace) => {
        const canvas = document.querySelector(`.card[data-namespace=${namespace}] canvas`);
        const {width, height} = canvas;
        const data = canvas.getContext('2d').getImageData(0, 0, width, height * 0.75).data;
        let count = 0;
        for (let i = 0; i < data.length; i += 4) {
          if (data[i] < 90 && data[i + 1] > 70 && data[i + 1] < 130 && data[i + 2] > 200
              && data[i + 3] > 200) count += 1;
        }
        return count; }""", namespace)


def test_overview_shows_every_namespace_with_figures_and_live_rates(make_server, open_tab,
                                                                     shots):
    server = make_server("app,orders,math")
    published_ids(server.port, "orders.created", 3)
    tab = open_tab(server)
    tab.page.wait_for_selector("#namespaces .card[data-namespace=math]")
    names = tab.page.eval_on_selector_all("#namespaces .card",
                                          "cards => cards.map(c => c.dataset.namespace)")
    assert names == ["app", "orders", "math"]
    events = "#namespaces .card[data-namespace=orders] dd[data-figure=events]"
    tab.wait_text(events, "3")
    stop = threading.Event()

    def load() -> None:  # a steady trickle, so two polls a second apart see a rate
        while not stop.is_set():
            publish(server.port, "orders.created", 1)
            time.sleep(0.05)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        rate = "#namespaces .card[data-namespace=orders] dd[data-figure='published/s']"
        tab.page.wait_for_function(
            "(s) => parseFloat(document.querySelector(s).textContent) > 0", arg=rate)
    finally:
        stop.set()
        loader.join()
    assert tab.text("#namespaces .card[data-namespace=app] dd[data-figure=events]") == "0"
    assert published_pixels(tab, "orders") > 10, "the orders chart drew no publish rate"
    assert published_pixels(tab, "app") == 0  # nothing published there: a flat line at 0
    tab.screenshot(shots, "overview")


def test_an_event_published_in_one_tab_arrives_in_the_tail_of_another(make_server, open_tab,
                                                                       shots):
    server = make_server("app")
    watcher, publisher = open_tab(server), open_tab(server)
    watcher.tail("app.>")
    publisher.view("publish")
    publisher.page.fill("#publish-subject", "app.orders.created")
    publisher.page.fill("#publish-payload", '{"order": 42, "items": ["a", "b"]}')
    publisher.page.fill("#publish-key", "order-42")
    publisher.page.fill("#publish-trace", "req-7")
    publisher.page.click("#publish-form button[type=submit]")
    publisher.wait_text("#publish-result", "stored")
    event_id = publisher.page.get_attribute("#publish-result", "data-id")
    assert event_id.startswith("e_") and "index 0" in publisher.text("#publish-result")

    watcher.received(1)
    [row] = watcher.rows()
    assert row["id"] == event_id and row["subject"] == "app.orders.created"
    assert "key order-42" in row["text"] and "trace req-7" in row["text"]
    watcher.page.click("#tail-rows .event summary")  # the payload opens, pretty-printed
    assert '"items": [' in watcher.page.inner_text("#tail-rows .event pre")
    watcher.screenshot(shots, "tail")
    publisher.screenshot(shots, "publish")


def test_the_publish_form_checks_json_and_shows_the_servers_reason(make_server, open_tab):
    server = make_server("app")
    tab = open_tab(server, expected_errors=("status of 400",))  # the refused publish
    tab.view("publish")
    tab.page.fill("#publish-subject", "app.x")
    tab.page.fill("#publish-payload", '{"unclosed": ')
    tab.page.click("#publish-form button[type=submit]")
    tab.wait_text("#payload-error", "not valid JSON")
    tab.page.fill("#publish-payload", "[1, 2]")
    tab.page.fill("#publish-subject", "elsewhere.x")
    tab.page.click("#publish-form button[type=submit]")
    tab.wait_text("#publish-error", "400")
    assert "'elsewhere' is not declared" in tab.text("#publish-error")
    assert tab.text("#payload-error") == ""
    stats = request(server.port, "GET", "/stats").json()
    assert stats["namespaces"]["app"]["published"] == 0  # the bad JSON never left the page


def test_a_pattern_filters_history_and_live_events(make_server, open_tab):
    server = make_server("app")
    wanted = published_ids(server.port, "app.a.x", 1) + published_ids(server.port, "app.a.y", 1)
    published_ids(server.port, "app.b.x", 2)
    tab = open_tab(server)
    tab.tail("app.a.*", start="oldest")
    tab.received(2)
    published_ids(server.port, "app.b.live", 1)
    wanted += published_ids(server.port, "app.a.live", 1)
    tab.received(3)
    time.sleep(0.2)  # a wrongly matched event would arrive now
    assert [row["id"] for row in tab.rows()] == wanted[::-1]
    # after an event id: only what follows it
    tab.tail("app.>", start="id", value=wanted[1])
    tab.received(4)
    assert [row["subject"] for row in tab.rows()] == ["app.a.live", "app.b.live", "app.b.x",
                                                      "app.b.x"]


def test_a_tail_from_a_time_shows_what_was_created_at_or_after_it(make_server, open_tab):
    server = make_server("app")
    published_ids(server.port, "app.before", 3)
    time.sleep(0.01)
    first = publish(server.port, "app.after", {"n": 0})
    since = first.headers["x-bus-event-created-at"]  # at it: included
    after = [first.headers["x-bus-event-id"]] + published_ids(server.port, "app.after", 2)
    tab = open_tab(server)
    tab.tail("app.>", start="time", value=since)
    tab.received(3)
    after += published_ids(server.port, "app.live", 1)
    tab.received(4)
    time.sleep(0.2)  # an event from before the time would have arrived by now
    assert [row["id"] for row in tab.rows()] == after[::-1]


def test_a_start_the_bus_cannot_use_shows_its_reason_and_stops(make_server, open_tab):
    server = make_server("app")
    tab = open_tab(server, expected_errors=("status of 400",))  # the refused subscription
    tab.tail("app.>", start="id", value="e_not-an-id", until="")
    tab.wait_text("#tail-error", "invalid start 'e_not-an-id'")  # the bus's `event: error`
    assert tab.text("#tail-status") == "stopped"
    assert tab.page.is_disabled("#tail-pause")
    # a pattern the bus refuses before any stream: the status and reason, read by fetch
    tab.tail("nowhere.>", until="")
    tab.wait_text("#tail-error", "400")
    assert "'nowhere' is not declared" in tab.text("#tail-error")


def test_pause_keeps_the_streams_place_and_loses_nothing(make_server, open_tab, shots):
    server = make_server("app")
    tab = open_tab(server)
    tab.tail("app.>", cap=10)
    tab.page.click("#tail-pause")
    held = published_ids(server.port, "app.held", 4)
    tab.wait_text("#tail-status", "4 waiting")
    assert tab.rows() == []
    tab.screenshot(shots, "paused")
    tab.page.click("#tail-pause")
    tab.wait_text("#tail-status", "live")
    assert [row["id"] for row in tab.rows()] == held[::-1]

    # held past the row cap: the stream closes and resumes after the last event it saw
    tab.page.click("#tail-pause")
    more = published_ids(server.port, "app.more", 15)
    tab.wait_text("#tail-status", "10 waiting")
    tab.page.click("#tail-pause")
    tab.received(19)
    time.sleep(0.2)  # a duplicate would arrive now
    assert tab.text("#tail-count") == "19"
    assert [row["id"] for row in tab.rows()] == more[::-1][:10]
    live = published_ids(server.port, "app.live", 1)  # the stream opened again is live
    tab.received(20)
    assert [row["id"] for row in tab.rows()] == (more + live)[::-1][:10]


def settle(port: int, member: SSE, event_id: str, action: str) -> None:
    answer = request(port, "PUT", f"/?consumer_id={member.consumer_id}&event_id={event_id}"
                                  f"&action={action}")
    assert answer.status == 202, answer


def billing_group(port: int) -> dict:
    """GET /groups' entry for group billing of namespace orders."""
    answer = request(port, "GET", "/groups?namespace=orders&name=billing")
    assert answer.status == 200, answer
    return answer.json()["orders"]["billing"]


def busy_group(port: int) -> tuple[SSE, list[str]]:
    """Group billing on orders.created with one member holding 3 events (the second delivered
    thrice), 4 more waiting behind them, and one dead letter (the first event, termed).
    The member's stream and the 8 event ids."""
    ids = [publish(port, "orders.created", {"order": n, "items": ["a", "b"]},
                   trace_id=f"req-{n}").headers["x-bus-event-id"] for n in range(8)]
    member = SSE(port, "subject=orders.created&group=billing&start=oldest&max_inflight=3")
    assert member.status == 200
    assert [event["id"] for event in member.events(3)] == ids[:3]
    settle(port, member, ids[0], "term")
    assert member.events(1)[0]["id"] == ids[3]
    for _ in range(2):
        settle(port, member, ids[1], "nak")
        assert member.events(1)[0]["id"] == ids[1]
    wait_until(lambda: billing_group(port)["dead_letters"] > 0,  # an event, after the term
               interval=0.02, what="the dead letter was not stored")
    return member, ids


def test_the_groups_page_shows_the_figures_of_get_groups(make_server, open_tab, shots):
    server = make_server("app,orders")
    member, _ = busy_group(server.port)
    tab = open_tab(server)
    tab.view("groups")
    row = "#groups-table tr[data-group='orders/billing']"
    tab.page.wait_for_selector(row)
    shown = tab.page.eval_on_selector_all(
        row + " td[data-figure]", "cells => Object.fromEntries(cells.map(c => "
                                  "[c.dataset.figure, Number(c.textContent)]))")
    group = billing_group(server.port)
    assert shown == {"members": len(group["members"]), "pending": group["pending"],
                     "lag": group["lag"], "redeliveries": group["redeliveries"],
                     "dead_letters": group["dead_letters"]}
    assert shown == {"members": 1, "pending": 3, "lag": 4, "redeliveries": 2,
                     "dead_letters": 1}
    assert tab.text(row + " td:nth-child(3)") == "orders.created"
    assert tab.text("#groups-status") == "1 group"
    tab.screenshot(shots, "groups")
    member.close()


def test_a_dead_letter_is_republished_to_its_original_subject(make_server, open_tab, shots):
    server = make_server("app,orders")
    member, ids = busy_group(server.port)
    tab = open_tab(server)
    tab.view("groups")
    tab.page.click("#groups-table tr[data-group='orders/billing'] button.dead-letters")
    letter = "#dead-letter-rows .event"
    tab.page.wait_for_selector(letter)
    assert tab.page.get_attribute(letter, "data-id") == ids[0]  # the original event
    assert "term after 1 delivery" in tab.text(letter)
    tab.page.click(letter + " button.republish")
    tab.wait_text(letter + " .outcome", "republished as")
    republished = tab.text(letter + " .outcome").rsplit(" ", 1)[1]
    tab.screenshot(shots, "dead-letters")
    with SSE(server.port, f"subject=orders.created&start={ids[-1]}") as sse:
        [event] = sse.events(1)
    assert event["id"] == republished != ids[0]
    assert (event["subject"], event["payload"], event["trace_id"]) == \
        ("orders.created", {"order": 0, "items": ["a", "b"]}, "req-0")
    member.close()


def test_deleting_a_group_asks_first(make_server, open_tab):
    server = make_server("app,orders")
    member, _ = busy_group(server.port)
    tab = open_tab(server)
    tab.view("groups")
    row = "#groups-table tr[data-group='orders/billing']"
    questions: list[str] = []

    def answer(dialog, accept: bool) -> None:
        questions.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    tab.page.once("dialog", lambda dialog: answer(dialog, False))
    tab.page.click(row + " button.delete")
    assert len(questions) == 1 and "Delete consumer group billing of orders?" in questions[0]
    time.sleep(0.2)  # a delete sent anyway would have landed now
    assert billing_group(server.port)["members"]
    assert tab.page.is_visible(row)

    tab.page.once("dialog", lambda dialog: answer(dialog, True))
    tab.page.click(row + " button.delete")
    tab.page.wait_for_selector(row, state="detached")
    assert request(server.port, "GET", "/groups?namespace=orders").json() == {"orders": {}}
    assert tab.text("#groups-status") == "no consumer groups yet"
    ended = [member.message() for _ in range(2)]  # the member is told, and its stream ends
    assert any("was deleted" in (message or {}).get("data", "") for message in ended), ended
    member.close()


def test_a_delete_the_bus_refuses_shows_its_reason_and_keeps_the_group(make_server,
                                                                       open_tab, tmp_path):
    admin = "console-admin-2"
    auth = write_auth_file(tmp_path, AUTH, token_entry("admin", [">"], [">"], secret=admin))
    server = make_server("app,orders", "--auth-file", str(auth))
    member = SSE(server.port, "subject=orders.created&group=billing",
                 headers={"Authorization": f"Bearer {admin}"})
    assert member.status == 200
    tab = open_tab(server, expected_errors=("status of 401", "status of 403"))
    tab.give_token(TOKEN)  # it may not subscribe to orders.created, so not delete its group
    tab.view("groups")
    tab.page.once("dialog", lambda dialog: dialog.accept())
    tab.page.click("#groups-table tr[data-group='orders/billing'] button.delete")
    tab.wait_text("#groups-error", "403")
    assert "may not delete group 'billing'" in tab.text("#groups-error")
    assert tab.page.is_visible("#groups-table tr[data-group='orders/billing']")
    assert request(server.port, "GET", "/groups", headers={"Authorization": f"Bearer {admin}"}
                   ).json()["orders"]["billing"]["members"]
    member.close()


def test_an_authd_bus_asks_for_a_token_refuses_a_wrong_one_and_keeps_it_in_the_tab(
        make_server, open_tab, tmp_path, shots):
    server = make_server("app", "--auth-file", str(write_auth_file(tmp_path, AUTH)))
    event_id = request(server.port, "POST", "/", {"subject": "app.secret", "payload": 1},
                       {"Authorization": f"Bearer {TOKEN}"}).headers["x-bus-event-id"]
    tab = open_tab(server, expected_errors=("status of 401",))
    tab.give_token("not-the-token")
    tab.wait_text("#token-error", "unknown token")
    assert tab.page.is_hidden("#app")
    assert tab.page.evaluate("sessionStorage.getItem('busd.token')") is None
    tab.screenshot(shots, "token-refused")

    tab.give_token(TOKEN)
    tab.page.wait_for_selector("#namespaces .card[data-namespace=app]")
    assert tab.page.evaluate("[sessionStorage.getItem('busd.token'), localStorage.length]") \
        == [TOKEN, 0]
    tab.tail("app.>", start="oldest")  # EventSource carries it as ?token=
    tab.received(1)
    assert tab.rows()[0]["id"] == event_id


def test_the_console_works_over_tls(tls_server, open_tab):
    tab = open_tab(f"https://127.0.0.1:{tls_server.port}/ui")
    tab.page.wait_for_selector("#namespaces .card[data-namespace=app]")
    tab.tail("app.>")
    published = request_tls(tls_server.port)
    tab.received(1)
    assert tab.rows()[0]["id"] == published


def request_tls(port: int) -> str:
    """Publish one event over HTTPS (the test certificate is not verified)."""
    import http.client
    import ssl

    connection = http.client.HTTPSConnection("127.0.0.1", port,
                                             context=ssl._create_unverified_context(),
                                             timeout=5)
    connection.request("POST", "/", body=b'{"subject":"app.tls","payload":1}')
    answer = connection.getresponse()
    assert answer.status == 202
    event_id = answer.getheader("X-Bus-Event-Id")
    connection.close()
    return event_id
