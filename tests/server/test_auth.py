"""Access control (--auth-file): who may publish, subscribe and ack; 401/403 with reasons."""

from __future__ import annotations

import hashlib
import itertools
import signal
import time
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from authfile import token_entry, write_auth_file
from busclient import SSE, request, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

from busd._core import validate_subject
from busd.bus.fanout import FanOut
from busd.bus.inbox_owners import InboxOwners
from busd.server.auth import AuthFileError, covers, load_tokens, matches, parse_pattern
from busd.server.metrics import Metrics

BILLING = "billing-secret-1"
READER = "reader-secret-22"
ADMIN = "admin-secret-333"

AUTH_TOML = "\n".join([
    token_entry("billing", ["orders.>"], ["orders.>", "app.*"], secret=BILLING),
    token_entry("reader", [], ["orders.*", "orders.*.>"],
                secret_sha256=hashlib.sha256(READER.encode()).hexdigest()),
    token_entry("admin", [">"], [">"], secret=ADMIN, restore=True),
])


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def post(port, body, secret=None, target="/"):
    return request(port, "POST", target, body, bearer(secret) if secret else None)


@pytest.fixture
def auth_server(make_server, tmp_path):
    path = write_auth_file(tmp_path, AUTH_TOML)
    server = make_server("app,orders,payments", "--auth-file", str(path), "--log-level", "DEBUG")
    server.auth_path = path
    return server


def test_missing_and_unknown_tokens_are_401_with_a_reason(auth_server):
    port = auth_server.port
    for headers in (None, bearer("not-a-token"), {"Authorization": "Basic dXNlcjpwdw=="}):
        for method, target, body in (("POST", "/", {"subject": "orders.a"}),
                                     ("GET", "/?subject=orders.>", None),
                                     ("PUT", "/?consumer_id=c_d4o7ehksdud4d8c68bg0&event_id="
                                             "e_d4o7ehksdud4d8c68bg0", None)):
            response = request(port, method, target, body, headers)
            assert response.status == 401, (method, headers, response)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.body.strip(), "a 401 says why"
    assert b"missing token" in request(port, "POST", "/", {"subject": "orders.a"}).body
    assert b"unknown token" in post(port, {"subject": "orders.a"}, "nope-nope").body
    # what stays open: preflight, health, metrics
    assert request(port, "OPTIONS", "/").status == 204
    assert request(port, "GET", "/healthz").status == 200
    assert request(port, "GET", "/metrics").status == 200


def test_publish_is_allowed_only_on_matching_subjects(auth_server):
    port = auth_server.port
    assert post(port, {"subject": "orders.eu.created", "payload": 1}, BILLING).status == 202
    refused = post(port, {"subject": "payments.x", "payload": 1}, BILLING)
    assert refused.status == 403 and b"billing" in refused.body and b"payments.x" in refused.body
    # a batch lands whole or not at all: one forbidden subject refuses all
    batch = [{"subject": "orders.a", "payload": 1}, {"subject": "app.b", "payload": 2}]
    assert post(port, batch, BILLING).status == 403
    assert post(port, {"subject": "orders.a"}, READER).status == 403
    assert post(port, {"subject": "payments.x"}, ADMIN).status == 202
    health = request(port, "GET", "/healthz").json()["namespaces"]
    assert health["orders"]["events"] == 1 and health["app"]["events"] == 0


@pytest.mark.parametrize("secret,pattern,allowed", [
    (BILLING, "orders.>", True), (BILLING, "orders.eu.*", True), (BILLING, "app.*", True),
    (BILLING, "app.>", False), (BILLING, "app.x.y", False), (BILLING, "payments.*", False),
    (READER, "orders.*", True), (READER, "orders.>", True),  # orders.* ∪ orders.*.> = orders.>
    (READER, "orders.a.b.c", True), (ADMIN, "payments.>", True),
    (BILLING, "orders.caf\u00e9.>", True), (READER, "orders.caf\u00e9.>", True),
    (BILLING, "app.x.>", False),  # app.x is allowed, app.x.y is not
])
def test_subscription_allowed_only_if_every_matching_subject_is(auth_server, secret, pattern,
                                                                allowed):
    with SSE(auth_server.port, f"subject={quote(pattern)}", headers=bearer(secret)) as sse:
        if allowed:
            assert sse.status == 200
        else:
            assert sse.status == 403
            body = sse.file.read(int(sse.headers["content-length"]))
            assert pattern.encode() in body and b"cover" in body


def test_several_subjects_need_every_one_allowed(auth_server):
    both = "subject=" + quote("app.*") + "&subject=" + quote("app.x.>")
    with SSE(auth_server.port, both, headers=bearer(BILLING)) as sse:
        assert sse.status == 403  # app.* is allowed, app.x.> is not
        assert b"app.x.>" in sse.file.read(int(sse.headers["content-length"]))
    with SSE(auth_server.port, "subject=app.*&subject=app.b", headers=bearer(BILLING)) as sse:
        assert sse.status == 200


def test_eventsource_token_in_query_and_inbox_open_to_every_token(auth_server):
    port = auth_server.port
    with SSE(port, f"subject=orders.>&token={READER}") as sse:
        assert sse.status == 200
        assert sse.consumer_id
        post(port, {"subject": "orders.q", "payload": "via-query"}, BILLING)
        assert sse.events(1)[0]["payload"] == "via-query"
    # query token works for publish too, and a wrong one is still 401
    assert post(port, {"subject": "orders.q"}, target=f"/?token={BILLING}").status == 202
    assert post(port, {"subject": "orders.q"}, target="/?token=wrong-token").status == 401
    # inboxes: any valid token, both ways; no token still 401
    with SSE(port, "subject=_bus_.d4o7ehksdud4d8c68bg0", headers=bearer(READER)) as inbox:
        assert inbox.status == 200
        inbox.message()
        assert post(port, {"subject": "_bus_.d4o7ehksdud4d8c68bg0", "payload": "r"},
                    READER).status == 202
        assert inbox.events(1)[0]["payload"] == "r"
    assert post(port, {"subject": "_bus_.d4o7ehksdud4d8c68bg0"}).status == 401


def test_an_inbox_belongs_to_the_token_that_subscribed_first(auth_server):
    """Another token that learnt the inbox (from a request's response_subject) cannot read
    its replies, during the subscription or after it ended (a requester that reconnects
    keeps its inbox); it may still publish to it: that is how a responder replies."""
    port = auth_server.port
    inbox = "_bus_.k2b8s1mfo4t0f0q9dnmdv3u1pg"
    with SSE(port, f"subject={inbox}", headers=bearer(READER)) as owner:
        assert owner.status == 200
        owner.message()
        with SSE(port, f"subject={inbox}", headers=bearer(BILLING)) as thief:
            assert thief.status == 403
            body = thief.file.read(int(thief.headers["content-length"]))
            assert b"belongs to the token that subscribed to it first" in body
        with SSE(port, f"subject={inbox}", headers=bearer(READER)) as second:
            assert second.status == 200, "the owner may subscribe again"
        assert post(port, {"subject": inbox, "payload": "reply"}, BILLING).status == 202
        assert owner.events(1)[0]["payload"] == "reply"
    with SSE(port, f"subject={inbox}", headers=bearer(BILLING)) as thief:
        assert thief.status == 403, "the binding outlives the owner's subscription"
    with SSE(port, "subject=_bus_.k2b8s1mfo4t0f0q9dnmdv3u1ph", headers=bearer(BILLING)) as own:
        assert own.status == 200, "another inbox is free"


def test_lingering_inbox_bindings_are_bounded_and_expire():
    now = [0.0]
    live: dict[bytes, list[str]] = {}
    owners = InboxOwners(lambda subject: live.get(subject, ()), linger=10.0, limit=3,
                         clock=lambda: now[0])
    assert owners.claim(b"_bus_.a", "x") is None
    assert owners.claim(b"_bus_.a", "y") == "x"
    for name in (b"_bus_.b", b"_bus_.c", b"_bus_.d"):
        assert owners.claim(name, "x") is None
    assert len(owners) == 3, "past the limit the oldest lingering binding goes"
    assert owners.claim(b"_bus_.a", "y") is None
    live[b"_bus_.b"] = ["x"]  # a live subscriber holds its inbox whatever lingers
    now[0] = 11.0
    assert owners.claim(b"_bus_.b", "y") == "x"
    assert owners.claim(b"_bus_.c", "y") is None, "expired after the linger"


@dataclass(eq=False)
class InboxStub:
    id: bytes
    subject: bytes
    owner: str


def test_an_inbox_binding_lingers_from_when_its_last_subscriber_left():
    """A subscription longer than the linger still leaves its inbox bound for the linger."""
    now = [0.0]
    fanout = FanOut(("app",), Metrics(("app",)))
    fanout.inbox_owners.clock = lambda: now[0]
    reader = InboxStub(id=b"c_1", subject=b"_bus_.a", owner="x")
    assert fanout.inbox_owners.claim(b"_bus_.a", "x") is None
    fanout.add_inbox(reader)
    now[0] = fanout.inbox_owners.linger * 2
    assert fanout.inbox_owners.claim(b"_bus_.a", "y") == "x"
    fanout.remove_inbox(reader)
    now[0] += fanout.inbox_owners.linger - 1
    assert fanout.inbox_owners.claim(b"_bus_.a", "y") == "x"


def test_only_a_restore_token_may_supply_ids_and_created_at(auth_server):
    port = auth_server.port
    supplied = {"subject": "orders.r", "id": "e_d4o7ehksdud4d8c68bg0"}
    refused = post(port, supplied, BILLING)
    assert refused.status == 403 and b"only a token with restore = true" in refused.body
    stamped = {"subject": "orders.r", "created_at": "2020-01-01T00:00:00Z"}
    assert post(port, stamped, BILLING).status == 403
    assert post(port, [{"subject": "orders.r"}, supplied], BILLING).status == 403
    # the Go SDK sends Go's zero time when created_at is unset: not a supplied one
    go_default = {"subject": "orders.r", "created_at": "0001-01-01T00:00:00Z"}
    assert post(port, go_default, BILLING).status == 202
    assert post(port, supplied, ADMIN).status == 202
    assert post(port, stamped, ADMIN).status == 202
    with SSE(port, "subject=orders.r&start=oldest", headers=bearer(ADMIN)) as sse:
        ids = [event["id"] for event in sse.events(3)]
    assert ids[1] == supplied["id"]


def test_restore_must_be_a_boolean(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('[[token]]\nname = "a"\nsecret = "abcdefgh1"\nrestore = "yes"\n')
    with pytest.raises(AuthFileError, match="'restore' must be true or false"):
        load_tokens(path)


def test_acks_only_from_the_token_that_subscribed(auth_server):
    port = auth_server.port
    query = "subject=orders.>&start=oldest&ack=manual&redelivery=1s&redelivery_count=0"
    post(port, {"subject": "orders.ack", "payload": 1}, BILLING)
    post(port, {"subject": "orders.ack", "payload": 2}, BILLING)
    with SSE(port, query, headers=bearer(READER)) as sse:
        first = sse.events(1)[0]
        target = f"/?consumer_id={sse.consumer_id}&event_id={first['id']}"
        stolen = request(port, "PUT", target, headers=bearer(BILLING))
        assert stolen.status == 403 and b"only the token that subscribed" in stolen.body
        again = sse.events(1, timeout=3)[0]
        assert again["id"] == first["id"], "a refused ack must not count: redelivered"
        assert request(port, "PUT", target, headers=bearer(READER)).status == 202
        assert sse.events(1)[0]["payload"] == 2


def test_sighup_reloads_tokens_without_dropping_streams(auth_server):
    port = auth_server.port
    with SSE(port, "subject=orders.>", headers=bearer(BILLING)) as sse:
        sse.message()
        text = AUTH_TOML.replace(f'secret = "{BILLING}"', 'secret = "rotated-secret-9"')
        auth_server.auth_path.write_text(text)
        auth_server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: post(port, {"subject": "orders.r"}, BILLING).status == 401,
                   what="SIGHUP did not reload the auth file")
        assert post(port, {"subject": "orders.r", "payload": "new"}, "rotated-secret-9").status \
            == 202
        for _ in range(100):  # probes that got a 202 before the reload come first
            if sse.events(1)[0].get("payload") == "new":
                break
        else:
            raise AssertionError("the open stream did not survive the reload")
        # a broken file is refused on reload, and the tokens in force stay
        auth_server.auth_path.write_text("[[token]\nname=")
        auth_server.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert post(port, {"subject": "orders.r"}, "rotated-secret-9").status == 202
        assert "auth file not reloaded" in auth_server.log()
    assert auth_server.proc.poll() is None


def test_secrets_never_appear_in_logs_health_or_metrics(auth_server):
    port = auth_server.port
    post(port, {"subject": "orders.s", "payload": {"card": "4111-PAYLOAD-SECRET"}}, BILLING)
    post(port, {"subject": "payments.s"}, BILLING)  # 403
    post(port, {"subject": "orders.s"}, target=f"/?token={READER}")  # 403 via query
    request(port, "GET", f"/?subject=payments.>&token={READER}")
    with SSE(port, f"subject=orders.>&token={READER}") as sse:
        sse.message()
    texts = {"healthz": request(port, "GET", "/healthz").body.decode(),
             "metrics": request(port, "GET", "/metrics").body.decode()}
    auth_server.stop()
    texts["log"] = auth_server.log()
    assert "billing" in texts["log"] or "tokens=3" in texts["log"]
    for where, text in texts.items():
        for secret in (BILLING, READER, ADMIN):
            assert secret not in text, f"a secret shows up in {where}"
        assert "4111-PAYLOAD-SECRET" not in text, f"a payload shows up in {where}"


def test_no_auth_file_means_open_and_sighup_is_harmless(make_server):
    server = make_server("orders")
    assert post(server.port, {"subject": "orders.open"}).status == 202
    assert post(server.port, {"subject": "orders.open"}, "anything-at-all").status == 202
    server.proc.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    assert server.proc.poll() is None
    assert post(server.port, {"subject": "orders.open"}).status == 202


@pytest.mark.parametrize("text,problem", [
    ("[[token]]\nname='a'\npublish=['x.>']\n", "exactly one of"),
    ("[[token]]\nname='a'\nsecret='short'\n", "at least 8"),
    ("[[token]]\nname='a'\nsecret='longenough'\npublish=['x.>.y']\n", "last segment"),
    ("[[token]]\nname='a'\nsecret='longenough'\n[[token]]\nname='a'\nsecret='other-one'\n",
     "used twice"),
    ("[[token]]\nname='a'\nsecret='longenough'\nsubscribe='x.>'\n", "list of patterns"),
    ("[[token]]\nname='a'\nsecret_sha256='abc'\n", "64 hex"),
    ("[token]\nname='a'\n", "array of tables"),
    ("[[token]\n", "not valid TOML"),
])
def test_bad_auth_files_stop_the_server_with_a_reason(tmp_path, make_server, text, problem):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(AuthFileError, match=problem):
        load_tokens(path)
    with pytest.raises(RuntimeError) as failed:
        make_server("x", "--auth-file", str(path))
    assert problem in str(failed.value)


def test_auth_file_from_the_environment(make_server, tmp_path):
    path = tmp_path / "env.toml"
    path.write_text(AUTH_TOML)
    server = make_server("orders", env={"BUS_AUTH_FILE": str(path)})
    assert post(server.port, {"subject": "orders.e"}).status == 401
    assert post(server.port, {"subject": "orders.e"}, BILLING).status == 202


# -- the coverage rule, checked against brute force ---------------------------------------

LITERALS = ["a", "b"]
SEGMENT = st.sampled_from(LITERALS + ["*"])


@st.composite
def patterns(draw, first_literal=False):
    segments = draw(st.lists(SEGMENT, min_size=1, max_size=4))
    if first_literal:
        segments[0] = draw(st.sampled_from(LITERALS))
    if draw(st.booleans()):
        segments.append(">")
    return tuple(segments)


def brute_force_covers(pattern, allowed) -> bool:
    """Every subject over the literals plus one fresh token, long enough to expose a gap."""
    longest = max([len(pattern)] + [len(a) for a in allowed]) + 2
    alphabet = LITERALS + ["fresh"]
    for length in range(1, longest + 1):
        for subject in itertools.product(alphabet, repeat=length):
            if matches(subject, pattern) and not any(matches(subject, a) for a in allowed):
                return False
    return True


@settings(max_examples=400, deadline=None)
@given(patterns(first_literal=True), st.lists(patterns(), max_size=4))
def test_covers_agrees_with_brute_force(pattern, allowed):
    assert covers(pattern, allowed) == brute_force_covers(pattern, allowed)


def test_permission_segments_follow_the_subject_rule():
    """A segment the auth file takes is one a subject may hold, for every code point."""
    differ = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF or chr(cp) in ".*>":
            continue
        try:
            parse_pattern("a." + chr(cp))
            in_auth = True
        except ValueError:
            in_auth = False
        try:
            validate_subject(("a." + chr(cp)).encode())
            in_subject = True
        except ValueError:
            in_subject = False
        if in_auth != in_subject:
            differ.append(hex(cp))
    assert differ == []


def test_covers_examples():
    p = parse_pattern
    assert covers(p("orders.*.>"), [p("orders.*"), p("orders.*.>")])
    assert not covers(p("orders.>"), [p("orders.*"), p("orders.*.>")])  # `orders` itself
    assert not covers(p("orders.>"), [p("orders.*"), p("orders.*.*")])
    assert covers(p("a.*.>"), [p("a.*"), p("a.x.>"), p("a.*.*"), p("a.*.*.>")])
    assert not covers(p("a.*.>"), [p("a.x.>"), p("a.*.*"), p("a.*.*.>")])  # a.y
    assert not covers(p("a.*"), [p("a.x"), p("a.y")])
    assert covers(p("a.x"), [p("*.x")]) and covers(p("a.b.c"), [p(">")])
    # `>` is zero or more segments (as in Bus): `a.x.>` takes `a.x` too
    assert matches(("a", "x"), p("a.x.>")) and not matches(("a",), p("a.x.>"))
    assert not covers(p("a.x.>"), [p("a.x.*.>")])
    assert not covers(p("a.x.>"), [p("a.x.*"), p("a.x.*.*")])
    assert covers(p("a.x.>"), [p("a.x"), p("a.x.*.>")])
    assert covers(p("a.x.>"), [p("a.>")]) and covers(p("a.x.>"), [p("a.*.>")])
    assert covers(p("a.x.*"), [p("a.x.*.>")])
    assert covers(p("a.caf\u00e9.>"), [p("*.caf\u00e9.>")]) and parse_pattern("a.b$")
    for bad in ("", "a..b", "a.>.b", "a.b c", "a.*x", "a.b\u00a0", 'a."', "a.\x7f"):
        with pytest.raises(ValueError):
            parse_pattern(bad)
