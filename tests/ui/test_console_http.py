"""The console's files at /ui (content types, ETag/304, CSP, no inline code), /stats, the
--no-ui / BUS_UI=off switch and the token rule, checked over raw sockets."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
import time
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from busclient import SSE, Http, _read_head, build_request, publish, request

ROOT = Path(__file__).resolve().parents[2]
UI = ROOT / "busd" / "ui"
FILES = {"/ui/index.html": "text/html", "/ui/app.js": "text/javascript",
         "/ui/app.css": "text/css", "/ui/icon.svg": "image/svg+xml"}


@pytest.mark.parametrize("path", [*FILES, "/ui", "/ui/"])
def test_each_file_has_its_type_a_strict_policy_and_an_etag(shared_server, path):
    answer = request(shared_server.port, "GET", path)
    assert answer.status == 200
    expected = FILES.get(path, "text/html")
    assert answer.headers["content-type"].startswith(expected)
    policy = answer.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["cache-control"] == "no-cache"
    assert re.fullmatch(r'"[0-9a-f]{32}"', answer.headers["etag"])
    name = path.removeprefix("/ui").removeprefix("/") or "index.html"
    on_disk = (UI / name).read_bytes()
    assert answer.body == on_disk


def test_if_none_match_is_a_304_with_no_body_and_the_connection_goes_on(shared_server):
    with Http(shared_server.port) as http:
        etag = http.request("GET", "/ui/app.js").headers["etag"]
        for header in (etag, f'W/{etag}', f'"other", {etag}', "*"):
            answer = http.request("GET", "/ui/app.js", headers={"If-None-Match": header})
            assert answer.status == 304, header
            assert answer.body == b"" and "content-length" not in answer.headers
            assert answer.headers["etag"] == etag
        changed = http.request("GET", "/ui/app.js", headers={"If-None-Match": '"stale"'})
        assert changed.status == 200 and changed.body  # the same keep-alive connection


def test_head_other_methods_and_unknown_files(shared_server):
    port = shared_server.port
    with Http(port) as http:
        http.send(build_request("HEAD", "/ui"))
        status, headers = _read_head(http.file)
        assert status == 200 and int(headers["content-length"]) > 0
        # no body followed the head: the next answer on the connection reads cleanly
        assert http.request("GET", "/healthz").status == 200
    post = request(port, "POST", "/ui", b"{}")
    assert post.status == 405 and post.headers["allow"] == "GET, HEAD, OPTIONS"
    missing = request(port, "GET", "/ui/../setup.py")
    assert missing.status == 404 and b"no such console file" in missing.body
    assert request(port, "GET", "/ui/secret.py").status == 404


class _Inline(HTMLParser):
    """Collects what a strict CSP would block: inline scripts, styles, handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.assets: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "style":
            self.problems.append("<style> element")
        if tag == "script" and "src" not in attributes:
            self.problems.append("inline <script>")
        for name in attributes:
            if name == "style" or name.startswith("on"):
                self.problems.append(f"{name}= on <{tag}>")
        for name in ("src", "href"):
            if attributes.get(name, "").startswith("/"):
                self.assets.append(attributes[name])


def test_the_page_has_no_inline_code_and_every_asset_it_names_is_served(shared_server):
    parser = _Inline()
    parser.feed(request(shared_server.port, "GET", "/ui").body.decode())
    assert parser.problems == []
    assert sorted(parser.assets) == ["/ui/app.css", "/ui/app.js", "/ui/icon.svg"]
    for asset in parser.assets:
        assert request(shared_server.port, "GET", asset).status == 200


def test_every_console_file_is_package_data():
    """`pip install .` ships what busd/server/ui.py serves: pyproject's patterns cover them."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["busd.ui"]
    served = [p.name for p in UI.iterdir() if p.is_file() and p.suffix != ".py"]
    assert served and all(any(fnmatch.fnmatch(name, pattern) for pattern in patterns)
                          for name in served), (served, patterns)


def test_stats_counts_publishes_and_deliveries(make_server):
    server = make_server("app,orders")
    first = request(server.port, "GET", "/stats")
    assert first.status == 200 and first.headers["cache-control"] == "no-store"
    assert first.headers["content-type"] == "application/json"
    before = first.json()
    assert set(before["namespaces"]) == {"app", "orders"}
    with SSE(server.port, "subject=app.>&start=oldest") as stream:
        for n in range(3):
            assert publish(server.port, "app.x", n).status == 202
        assert len(stream.events(3)) == 3
        time.sleep(0.05)
        after = request(server.port, "GET", "/stats").json()
    app = after["namespaces"]["app"]
    assert (app["events"], app["next_index"], app["published"], app["delivered"]) == (3, 3, 3, 3)
    assert app["bytes"] > before["namespaces"]["app"]["bytes"] and app["segments"] == 1
    assert after["namespaces"]["orders"]["published"] == 0
    assert after["consumers"] == 1 and after["t"] > before["t"]
    assert request(server.port, "POST", "/stats", b"{}").status == 405


@pytest.mark.parametrize("how", ["flag", "env"])
def test_the_console_can_be_turned_off(make_server, how):
    server = make_server("app", "--no-ui") if how == "flag" else \
        make_server("app", env={"BUS_UI": "off"})
    for path in ("/ui", "/ui/app.js"):
        answer = request(server.port, "GET", path)
        assert answer.status == 404 and b"console is turned off" in answer.body
    assert request(server.port, "GET", "/stats").status == 200  # an API, not the page


def test_bus_ui_on_wins_over_the_flag_and_a_bad_value_stops_the_start(make_server, tmp_path):
    server = make_server("app", "--no-ui", env={"BUS_UI": "on"})
    assert request(server.port, "GET", "/ui").status == 200
    done = subprocess.run([sys.executable, "-m", "busd", "server", "--namespaces", "app",
                           "--path", str(tmp_path / "d"), "--addr", "127.0.0.1:0"],
                          env={"BUS_UI": "maybe", "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "BUS_UI" in done.stderr and "on or off" in done.stderr


def test_under_auth_only_the_page_is_served_without_a_valid_token(make_server, tmp_path):
    auth = tmp_path / "tokens.toml"
    auth.write_text('[[token]]\nname = "ops"\nsecret = "console-secret-1"\npublish = ["app.>"]\n'
                    'subscribe = ["app.>"]\n')
    server = make_server("app", "--auth-file", str(auth))
    assert request(server.port, "GET", "/ui").status == 200
    assert request(server.port, "GET", "/ui/app.js").status == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        refused = request(server.port, "GET", "/stats", headers=headers)
        assert refused.status == 401, headers
    assert request(server.port, "GET", "/stats?token=wrong").status == 401
    allowed = request(server.port, "GET", "/stats",
                      headers={"Authorization": "Bearer console-secret-1"})
    assert allowed.status == 200 and "app" in json.loads(allowed.body)["namespaces"]
