"""A real browser (headless Chromium) on another origin: EventSource with ?token= and CORS,
publishes with fetch and a Bearer header, resumes via Last-Event-ID across a restart, and
stops for good when the server cannot resume it."""

from __future__ import annotations

import re
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from authfile import token_entry, write_auth_file
from busclient import SSE, publish, request

TOKEN = "browser-secret-1"
AUTH = token_entry("page", ["app.>"], ["app.>"], secret=TOKEN)

PAGE = b"""<!doctype html><meta charset="utf-8"><title>busd page</title>
<script>
window.received = []; window.consumers = []; window.opens = 0; window.errors = 0;
function subscribe(bus, token) {
  const source = new EventSource(bus + "/?subject=app.>&start=oldest&token=" + token);
  window.source = source;
  source.onopen = () => { window.opens += 1; };
  source.onerror = () => { window.errors += 1; };
  source.addEventListener("consumer", (e) => window.consumers.push(e.data));
  source.addEventListener("msg", (e) => {
    window.received.push({id: e.lastEventId, payload: JSON.parse(e.data).payload});
  });
}
async function publish(bus, token, payload) {
  const answer = await fetch(bus + "/", {
    method: "POST",
    headers: {"Content-Type": "application/json", "Authorization": "Bearer " + token},
    body: JSON.stringify({subject: "app.browser", payload: payload}),
  });
  return {status: answer.status, id: answer.headers.get("X-Bus-Event-Id"),
          text: await answer.text()};
}
async function removeGroup(bus, token, namespace, name) {
  const answer = await fetch(`${bus}/groups?namespace=${namespace}&name=${name}`, {
    method: "DELETE", headers: {"Authorization": "Bearer " + token},
  });
  return {status: answer.status, text: await answer.text()};
}
</script><p>busd test page</p>
"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def page_origin():
    """The test page, served from another origin (localhost:<port>, not 127.0.0.1:<bus>)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def wait_for(page, expression: str, timeout: float = 15.0):
    page.wait_for_function(expression, timeout=timeout * 1000)
    return page.evaluate(expression)


def test_browser_eventsource_cors_fetch_and_resume_after_restart(make_server, tmp_path,
                                                                 page_origin, browser):
    auth = write_auth_file(tmp_path, AUTH)
    server = make_server("app", "--auth-file", str(auth))
    bus = f"http://127.0.0.1:{server.port}"
    page = browser.new_page()
    problems: list[str] = []
    expected = ("net::ERR", "status of 401")  # the restart; the wrong token on purpose
    page.on("console", lambda message: problems.append(message.text)
            if message.type == "error" and not any(e in message.text for e in expected)
            else None)
    page.goto(page_origin + "/")
    page.evaluate("([bus, token]) => subscribe(bus, token)", [bus, TOKEN])
    wait_for(page, "window.consumers.length === 1")

    # fetch from another origin: preflight with Authorization, 202 headers readable
    published = []
    for n in range(3):
        answer = page.evaluate("([bus, token, n]) => publish(bus, token, n)", [bus, TOKEN, n])
        assert answer["status"] == 202 and answer["id"].startswith("e_"), answer
        published.append(answer["id"])
    refused = page.evaluate("([bus]) => publish(bus, 'wrong-token', 99)", [bus])
    assert refused["status"] == 401 and "unknown token" in refused["text"]
    wait_for(page, "window.received.length === 3")

    # the server restarts mid-stream; events land while the browser is reconnecting
    assert server.stop() == 0
    server.start()
    assert publish(server.port, "app.browser", "no token").status == 401
    for n in range(3, 5):
        answer = request(server.port, "POST", "/", {"subject": "app.browser", "payload": n},
                         {"Authorization": f"Bearer {TOKEN}"})
        assert answer.status == 202
        published.append(answer.headers["x-bus-event-id"])
    wait_for(page, "window.opens >= 2", timeout=20)  # EventSource reconnected by itself
    for n in range(5, 7):
        answer = page.evaluate("([bus, token, n]) => publish(bus, token, n)", [bus, TOKEN, n])
        assert answer["status"] == 202
        published.append(answer["id"])
    wait_for(page, "window.received.length >= 7", timeout=20)
    time.sleep(0.5)  # a duplicate would arrive now
    received = page.evaluate("window.received")
    assert [event["id"] for event in received] == published, "lost or duplicated on resume"
    assert [event["payload"] for event in received] == list(range(7))
    assert page.evaluate("window.consumers.length") == 2
    assert not problems, problems


def test_browser_stops_reconnecting_when_its_last_event_id_is_unknown(make_server, tmp_path,
                                                                      page_origin, browser):
    """The data directory is wiped under a connected page: EventSource reconnects with a
    Last-Event-ID the server has never seen, gets a 410, and gives up (readyState CLOSED)
    instead of asking again every 2 s."""
    server = make_server("app")
    bus = f"http://127.0.0.1:{server.port}"
    page = browser.new_page()
    page.goto(page_origin + "/")
    page.evaluate("([bus]) => subscribe(bus, '')", [bus])
    wait_for(page, "window.consumers.length === 1")
    last = publish(server.port, "app.browser", 1).headers["x-bus-event-id"]
    wait_for(page, "window.received.length === 1")

    assert server.stop() == 0
    shutil.rmtree(server.path)
    server.start()
    wait_for(page, "window.source.readyState === EventSource.CLOSED", timeout=20)
    time.sleep(5)  # two and a half reconnect delays (retry: 2000)
    assert page.evaluate("window.source.readyState") == 2
    assert page.evaluate("[window.opens, window.consumers.length]") == [1, 1]
    refusals = re.findall(r"refusing to resume.*", server.log())
    assert len(refusals) == 1, refusals  # asked once, then never again
    assert last in refusals[0]


def test_a_page_on_another_origin_cannot_publish_with_no_cors(make_server, page_origin,
                                                                browser):
    """`mode: "no-cors"` sends the POST and only hides the answer: the bus must refuse it."""
    server = make_server("app", "--cors-origins", "https://app.example")
    page = browser.new_page()
    page.goto(page_origin + "/")
    sent = page.evaluate("""(bus) => fetch(bus + "/", {method: "POST", mode: "no-cors",
        body: JSON.stringify({subject: "app.sneaky", payload: 1})}).then(
        (answer) => answer.type, (error) => "failed: " + error)""",
                         f"http://127.0.0.1:{server.port}")
    assert sent == "opaque"  # the browser sent it, and shows the page nothing
    assert request(server.port, "GET", "/healthz").json()["namespaces"]["app"]["events"] == 0


def test_a_page_on_another_origin_deletes_a_group_after_a_preflight(make_server, tmp_path,
                                                                   page_origin, browser):
    server = make_server("app", "--auth-file", str(write_auth_file(tmp_path, AUTH)))
    member = SSE(server.port, f"subject=app.>&group=workers&token={TOKEN}")
    assert member.status == 200
    page = browser.new_page()
    page.goto(page_origin + "/")
    answer = page.evaluate("([bus, token]) => removeGroup(bus, token, 'app', 'workers')",
                           [f"http://127.0.0.1:{server.port}", TOKEN])
    assert answer["status"] == 200 and '"name":"workers"' in answer["text"], answer
    assert request(server.port, "GET", "/groups", headers={"Authorization": f"Bearer {TOKEN}"}
                   ).json() == {"app": {}}
    member.close()
    page.close()
