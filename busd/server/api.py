# cython: annotation_typing=False, nonecheck=True
# cython: wraparound=True, boundscheck=True, cdivision=False
"""The HTTP API of SPEC §3: turns requests into broker calls and outcomes into responses."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson

from busd._core import (Pattern, TooManyEvents, is_xid, new_xid, published_response, scan_body,
                        validate_pattern)
from busd.bus.broker import Broker
from busd.bus.consumer import AckPolicy, Consumer, InboxConsumer, index_cursor
from busd.bus.group.dispatcher import ACTIONS
from busd.bus.group.registry import JoinRefused
from busd.bus.group.settings import NAME as GROUP_NAME
from busd.bus.group.settings import SettingsError, parse_delay, parse_settings
from busd.bus.publication import Publication
from busd.bus.timesearch import locate_time, parse_start_time
from busd.server.auth import Auth, AuthError, Token
from busd.server.http import (HttpConnection, Request, error_response, origin_form, response,
                              status_head)
from busd.server.metrics import PROMETHEUS_TYPE, render_prometheus
from busd.server.stats import snapshot
from busd.server.ui import Console
from busd.store.errors import PublishRefused
from busd.version import __version__
from busd.wire import (INBOX_NAMESPACE, INDEX_START, ZERO_TIME, id_problem, index_start,
                       parse_duration)

log = logging.getLogger("busd.server.api")

API_METHODS = b"GET, POST, PUT, OPTIONS"  # the Allow header of a 405 on a Bus API path
# busd's own endpoints, each with everything under it (`/ui/app.js`). Every other path is
# the Bus API, as in Bus: the Go SDK sends `POST //` for `NewClient("http://host/")` and
# `POST /bus/`, `GET /bus?…` for a client with a base path.
OWN_ENDPOINTS = (b"/healthz", b"/metrics", b"/groups", b"/stats", b"/ui")
DEFAULT_REDELIVERY = 5.0
DEFAULT_REDELIVERY_COUNT = 3
# Shorter redeliveries (`1ns`) turn unacked events into a flood of copies: the server busy
# resending up to max_inflight events, the reader's bandwidth spent on duplicates.
MIN_REDELIVERY = 0.1
STATS_PATH = b"/stats"  # the console's counters (busd.server.stats)
# `subject=` patterns one subscription (or group) may have: each costs a match per record
# scanned and a place in the live index
MAX_SUBJECTS = 32
MAX_SETTLE_IDS = 1000  # event_id= values one PUT may settle
_INTEGER = re.compile(r"-?[0-9]{1,18}")


class BadRequest(Exception):
    """A request parameter that cannot be used; answered 400 with this reason."""


def _pairs(url: bytes) -> list[tuple[str, str]]:
    """The query's (name, value) pairs, in order."""
    _, _, query = url.partition(b"?")
    try:
        return parse_qsl(query.decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("query string is not valid UTF-8") from None


def _query(url: bytes) -> dict[str, str]:
    return dict(_pairs(url))


def _all(url: bytes, name: str) -> list[str]:
    """Every value of a repeated query parameter, in order."""
    return [value for key, value in _pairs(url) if key == name]


def subscription_subjects(url: bytes, token: Token | None) -> tuple[str, ...]:
    """The distinct `subject=` patterns of a subscription or a group join, in order: valid,
    at most MAX_SUBJECTS, all of one namespace, each one the token may subscribe to
    (raises BadRequest, AuthError)."""
    subjects = tuple(dict.fromkeys(_all(url, "subject")))
    if not subjects or subjects == ("",):
        raise BadRequest("missing subject: GET /?subject=<pattern> subscribes "
                         "(e.g. subject=orders.>)")
    if len(subjects) > MAX_SUBJECTS:
        raise BadRequest(f"too many subject= patterns ({len(subjects)}): one subscription "
                         f"takes at most {MAX_SUBJECTS}")
    namespace = subjects[0].split(".", 1)[0]
    for subject in subjects:
        try:
            validate_pattern(subject.encode())
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if subject.split(".", 1)[0] != namespace:
            raise BadRequest(f"all subjects of one subscription must be in one namespace: "
                             f"{subject!r} is not in {namespace!r}")
    if namespace == INBOX_NAMESPACE and len(subjects) > 1:
        raise BadRequest("an inbox (_bus_) subscription takes one subject")
    if token is not None:
        for subject in subjects:
            if not token.may_subscribe(subject.encode()):
                raise AuthError(403, f"token {token.name!r} may not subscribe to {subject!r}: "
                                     "its subscribe patterns do not cover every subject it "
                                     "matches")
    return subjects


def _not_allowed(method: bytes, path: bytes, allow: bytes, close: bool) -> bytes:
    """405 with the `Allow` header RFC 9110 requires."""
    reason = (f"method {method.decode(errors='replace')} is not allowed on "
              f"{path.decode(errors='replace')}; use {allow.decode()}\n")
    return response(405, reason.encode(), headers=b"Allow: " + allow + b"\r\n", close=close)


def _integer(params: dict[str, str], name: str, default: int) -> int:
    """An integer option; empty means `default`. Matched whole, so `1%0d%0a` is refused
    (int() would strip it), and so are `+1`, `1_0` and non-ASCII digits."""
    text = params.get(name, "")
    if not text:
        return default
    if _INTEGER.fullmatch(text) is None:
        raise BadRequest(f"invalid {name} {text!r}: expected a whole number (at most 18 digits)")
    return int(text)


def _redelivery(text: str) -> float:
    """Seconds between deliveries of an unacked event. Empty or zero mean the default (the
    Go SDK sends `redelivery=0s` when unset); anything else must be at least 100ms."""
    try:
        seconds = parse_duration(text or "0")
    except ValueError as exc:
        raise BadRequest(f"invalid redelivery: {exc}") from None
    if seconds == 0:
        return DEFAULT_REDELIVERY
    if seconds < MIN_REDELIVERY:
        raise BadRequest(f"invalid redelivery {text!r}: must be at least "
                         f"{MIN_REDELIVERY * 1000:g}ms (0 or empty: the default, "
                         f"{DEFAULT_REDELIVERY:g}s)")
    return seconds


def _reply(conn: HttpConnection, method: bytes, answer: bytes, close: bool) -> None:
    """Send an answer; to HEAD only its head (RFC 9110 §9.3.2), GET's for a GET path."""
    conn.reply(answer[:answer.index(b"\r\n\r\n") + 4] if method == b"HEAD" else answer, close)


def is_own_endpoint(path: bytes) -> bool:
    """True for busd's own endpoints (OWN_ENDPOINTS and what is under them)."""
    for name in OWN_ENDPOINTS:
        if path.startswith(name) and (len(path) == len(name) or path[len(name)] == 0x2F):
            return True
    return False


def _valid_id(value: str, prefix: str) -> bool:
    return len(value) == 22 and value.startswith(prefix) and is_xid(value[2:].encode())


def check_ack_ids(consumer_id: str, event_ids: list[str]) -> None:
    """Bus checks only an ack's prefixes, so busd needs only a `c_…` consumer id and
    non-empty event ids (free-form event ids, not `e_…`, are acked too): ids that name no
    consumer or no event in flight are acked as a no-op (202). Several `event_id=` settle
    them all at once (at most MAX_SETTLE_IDS: the bound of one request's work). Raises
    BadRequest else."""
    if not consumer_id.startswith("c_"):
        raise BadRequest(f"invalid or missing consumer_id {consumer_id!r}: expected c_…, the "
                         "X-Bus-Consumer-Id of the subscription")
    if not event_ids or not all(event_ids):
        raise BadRequest("missing event_id: the id of the event to acknowledge")
    if len(event_ids) > MAX_SETTLE_IDS:
        raise BadRequest(f"too many event_id: {len(event_ids)} in one PUT, at most "
                         f"{MAX_SETTLE_IDS}")


def _when_located(conn: HttpConnection, search: Awaitable, found: Callable[[Any], None],
                  failed: Callable[[str], None]) -> None:
    """`found(where)` once the start `search` answers, or `failed(why)` if it raises or is
    cancelled; either in this stream's place in the connection's response order."""
    ticket = conn.defer()

    def located(task: asyncio.Future) -> None:
        error = None if task.cancelled() else task.exception()
        if error is not None or task.cancelled():
            conn.fulfil(ticket, lambda: failed(f"cannot look the start event up: "
                                               f"{error or 'cancelled'}"))
        else:
            conn.fulfil(ticket, lambda: found(task.result()))

    asyncio.ensure_future(search).add_done_callback(located)


def publish_answer(conn: HttpConnection, ticket: int, close: bool, is_batch: bool
                   ) -> PublishAnswer:
    """A PublishAnswer for the request with this ticket (conn.defer's; its fields set in C:
    a constructor's argument parsing cost as much as the object)."""
    answer = PublishAnswer.__new__(PublishAnswer)
    answer.conn, answer.ticket, answer.close, answer.is_batch = conn, ticket, close, is_batch
    return answer


class PublishAnswer(Publication):
    """An HTTP publish in flight: answered in its place on its connection once the store
    has the outcome. Made by publish_answer."""

    def answer(self, ids: list[bytes], stamps: list[bytes],
               outcome: int | PublishRefused) -> None:
        if isinstance(outcome, int):  # a flag test, where isinstance of a class is a call
            answer = published_response(status_head(202), ids, stamps, outcome, self.is_batch,
                                        self.close)
        else:
            answer = error_response(outcome.status, outcome.reason, self.close)
        self.conn.fulfil(self.ticket, answer, self.close)


class Api:
    """Routes one request: `POST`, `GET`, `PUT` on any path that is not one of busd's own
    (`/`, `//`, `/bus/` …: the Bus API), `OPTIONS *`, and busd's own endpoints."""

    def __init__(self, broker: Broker, auth: Auth | None = None) -> None:
        self.broker = broker
        self.config = broker.config
        self.max_batch = broker.config.max_batch  # both read on every publish
        self.max_event_size = broker.config.max_event_size
        self.started = time.monotonic()
        self.auth = auth  # None: open bus, and no auth work on any request
        self.console = Console() if broker.config.ui else None

    def route(self, conn: HttpConnection, request: Request) -> None:
        """The connection's handler. (A method, not `__call__`: the connection calls a bound
        method by vectorcall, a callable object through a tuple of its arguments.)"""
        method, url = request.method, request.url
        # `/` is every publish's and ack's target; `b"?" in url` costs more than partition
        # (CPython tries the needle as an int first, and formats the TypeError it clears)
        path = url if url == b"/" else url.partition(b"?")[0]
        close = not request.keep_alive
        try:
            if method == b"OPTIONS":
                conn.reply(response(204, close=close), close)
            elif path == b"/" or (path[:1] == b"/" and not is_own_endpoint(path)):
                token = None if self.auth is None else self._authenticate(request)
                if method == b"POST":
                    self.publish(conn, request, token)
                elif method == b"GET":
                    self.subscribe(conn, request, token)
                elif method == b"PUT":
                    self.ack(conn, request, token)
                else:
                    _reply(conn, method, _not_allowed(method, path, API_METHODS, close), close)
            elif Console.serves(path):  # the page needs no token: it asks for one
                _reply(conn, method, self._console(method, path, request, close), close)
            elif path == STATS_PATH and method in (b"GET", b"HEAD"):
                if self.auth is not None:
                    self._authenticate(request)
                _reply(conn, method, response(200, snapshot(self.broker, self.started),
                                              headers=b"Cache-Control: no-store\r\n",
                                              content_type=b"application/json", close=close),
                       close)
            elif path == b"/groups":
                token = None if self.auth is None else self._authenticate(request)
                self.groups(conn, request, method, close, token)
            elif path[:1] != b"/" and (url := origin_form(request.url)) is not request.url:
                request.url = url  # the absolute form (`http://host/…`) that proxies send
                self.route(conn, request)
            else:
                _reply(conn, method, self._resource(method, path, close), close)
        except BadRequest as exc:
            conn.reply(error_response(400, str(exc), close), close)
        except AuthError as exc:
            log.info("refused status=%d method=%s reason=%r", exc.status,
                     method.decode(errors="replace"), exc.reason)  # names, never secrets
            _reply(conn, method, self._refuse(exc, close), close)

    def _console(self, method: bytes, path: bytes, request: Request, close: bool) -> bytes:
        """The console's files: GET and HEAD only, a 404 with --no-ui."""
        if self.console is None:
            return error_response(404, "the console is turned off on this bus (--no-ui or "
                                       "BUS_UI=off)", close)
        if method not in (b"GET", b"HEAD"):
            return _not_allowed(method, path, b"GET, HEAD, OPTIONS", close)
        return self.console.answer(path, request.headers.get(b"if-none-match"), close)

    def _resource(self, method: bytes, path: bytes, close: bool) -> bytes:
        """The answer on busd's own endpoints: `/metrics` and `/healthz` are read-only."""
        read = method in (b"GET", b"HEAD")
        if path == b"/metrics" and read:
            return response(200, render_prometheus(self.broker, self.started),
                            content_type=PROMETHEUS_TYPE, close=close)
        if path == b"/healthz" and read:
            health = self.health()
            return response(200 if health["status"] == "ok" else 503, orjson.dumps(health),
                            close=close, content_type=b"application/json")
        if path in (b"/metrics", b"/healthz", STATS_PATH):
            return _not_allowed(method, path, b"GET, HEAD, OPTIONS", close)
        return error_response(404, f"no such endpoint: {method.decode(errors='replace')} "
                                   f"{path.decode(errors='replace')}", close)

    # -- access control (only with --auth-file) ----------------------------------------------
    def _authenticate(self, request: Request) -> Token:
        """The request's token, from `Authorization: Bearer …` or `?token=…` (EventSource)."""
        header = request.headers.get(b"authorization")
        secret = None
        if header is not None:
            scheme, _, value = header.strip().partition(b" ")
            if scheme.lower() != b"bearer":
                raise AuthError(401, "unsupported Authorization scheme: use "
                                     "'Authorization: Bearer <token>'")
            secret = value.strip()
        elif b"token=" in request.url:
            secret = _query(request.url).get("token", "").encode()
        return self.auth.authenticate(secret)

    @staticmethod
    def _refuse(exc: AuthError, close: bool) -> bytes:
        body = exc.reason.encode() + b"\n"
        headers = b'WWW-Authenticate: Bearer realm="busd"\r\n' if exc.status == 401 else b""
        return response(exc.status, body, headers=headers, close=close)

    # -- POST / -----------------------------------------------------------------------------
    def publish(self, conn: HttpConnection, request: Request,
                   token: Token | None = None) -> None:
        body, close = request.body, not request.keep_alive
        try:
            is_batch, events = scan_body(body, self.max_batch)
        except TooManyEvents as exc:
            conn.reply(error_response(413, f"{exc}: send at most --max-batch "
                                           f"({self.max_batch}) per request", close), close)
            return
        except ValueError as exc:
            if not body or body.isspace():
                raise BadRequest("empty body: send one JSON event object, or an array of "
                                 "them") from None
            raise BadRequest(str(exc)) from None
        if token is not None:
            for event in events:
                if not token.may_publish(event.subject):
                    raise AuthError(403, f"token {token.name!r} may not publish to "
                                         f"{event.subject.decode(errors='replace')!r}")
                if not token.restore and (event.id or event.created_at not in (b"", ZERO_TIME)):
                    raise AuthError(403, f"token {token.name!r} may not supply an event's id "
                                         f"or created_at: only a token with restore = true "
                                         f"may write history")
        limit = self.max_event_size  # on each payload; the HTTP layer bounds bodies
        if len(body) > limit:
            for event in events:
                if event.payload_size > limit:
                    conn.reply(error_response(413, f"an event's payload of {event.payload_size} "
                                                   f"bytes is larger than --max-event-size "
                                                   f"({limit} bytes)", close), close)
                    return
        ticket = conn.defer()
        try:
            self.broker.publish(events, is_batch, publish_answer(conn, ticket, close, is_batch))
        except PublishRefused as exc:
            conn.fulfil(ticket, error_response(exc.status, exc.reason, close), close)

    # -- GET / --------------------------------------------------------------------------------
    def subscribe(self, conn: HttpConnection, request: Request,
                     token: Token | None = None) -> None:
        params = _query(request.url)
        subjects = subscription_subjects(request.url, token)
        subject_bytes = subjects[0].encode()
        namespace = subjects[0].split(".", 1)[0]
        ack = self._ack_policy(params)
        consumer_id = b"c_" + new_xid()
        headers = b"X-Bus-Consumer-Id: " + consumer_id + b"\r\n"
        broker = self.broker
        owner = None if token is None else token.name
        if namespace == INBOX_NAMESPACE:
            if b"*" in subject_bytes or b">" in subject_bytes:
                raise BadRequest("inbox (_bus_) subscriptions cannot use wildcards")
            if owner is not None:
                bound = broker.fanout.inbox_owners.claim(subject_bytes, owner)
                if bound is not None:
                    raise AuthError(403, f"token {owner!r} may not subscribe to {subjects[0]!r}: "
                                         f"the inbox belongs to the token that subscribed to "
                                         f"it first")
            inbox = InboxConsumer(broker.fanout, conn, consumer_id, subject_bytes, owner)
            conn.start_stream(lambda: inbox.start(headers))
            return
        if namespace not in broker.namespaces:
            raise BadRequest(f"namespace {namespace!r} is not declared; declared namespaces: "
                             f"{', '.join(sorted(broker.namespaces))}")
        if "group" in params:
            self.join_group(conn, request, params, namespace, subjects, consumer_id, headers,
                            token)
            return
        start, resuming = self._start(params, request)
        consumer = Consumer(broker.fanout, broker.store, conn, consumer_id,
                            Pattern(*(subject.encode() for subject in subjects)), namespace,
                            ack, owner)

        def begin(cursor: int | str, definite: bool = True) -> None:
            """Stream from `cursor`, or say why not: in the stream's `error` event (the Go
            SDK reads it), or — resuming with `Last-Event-ID` from an id that definitely
            cannot be served — as a 410 instead of a stream. After an `error` event
            EventSource reconnects with the same id every 2 s, forever; after a non-200
            answer it stops for good."""
            if isinstance(cursor, str) and resuming and definite:
                log.warning("refusing to resume consumer=%s reason=%r", consumer_id.decode(),
                            cursor)
                conn.reply(error_response(410, f"cannot resume from Last-Event-ID: {cursor}",
                                          close=True), close=True)
            else:
                consumer.start(headers, cursor)

        def locate() -> None:
            """Where to start, when the stream's turn comes (after earlier responses). A
            search that takes a round trip keeps its place in the response order. It runs
            inside whatever answered the responses before it (a group commit's answers):
            what the search raises ends this stream only."""
            try:
                if isinstance(start, str):  # why the start cannot be served
                    cursor = start
                elif (index := index_start(start.decode())) is not None:
                    cursor = index_cursor(broker.store, namespace, index)
                elif not resuming and (nanos := parse_start_time(start.decode())) is not None:
                    cursor = locate_time(broker.store, namespace, nanos)
                else:
                    cursor = broker.store.locate(namespace, start)
            except Exception as exc:  # noqa: BLE001 - one stream's failure, not the group's
                log.exception("finding where a stream starts failed consumer=%s",
                              consumer_id.decode())
                begin(f"cannot look the start event up: {exc!r}", False)
                return
            if isinstance(cursor, (int, str)):
                begin(cursor)
            else:  # no verdict on the id when the search fails: clients retry
                _when_located(conn, cursor, begin, lambda reason: begin(reason, False))

        conn.start_stream(locate)

    @staticmethod
    def _start(params: dict[str, str], request: Request) -> tuple[bytes | str, bool]:
        """Where to start, and whether it came from a `Last-Event-ID` header (a resume).

        A malformed `start=` gives the reason (a str) instead, for the stream's `error`
        event, as Bus answers it: the Go SDK hands its user that reason, where a 400 would
        be `failed to connect after 3 attempts`. A malformed `Last-Event-ID` header is a 400:
        a browser's EventSource stops at a non-200 answer, but retries an `error` forever."""
        start = params.get("start", "") or "newest"
        last_event_id = request.headers.get(b"last-event-id", b"").decode(errors="replace")
        resuming = bool(last_event_id.strip(" \t"))  # HTTP's optional whitespace only
        if resuming:
            start = last_event_id.strip(" \t")
        if start in ("oldest", "newest") or id_problem(start.encode()) is None:
            return start.encode(), resuming
        if not resuming and index_start(start) is not None:
            return start.encode(), False
        name = "Last-Event-ID" if resuming else "start"
        reason = (f"invalid {name} {start!r}: use oldest, newest, an event id "
                  f"{'' if resuming else 'or index:<n> '}({id_problem(start.encode())})")
        if resuming:
            raise BadRequest(reason)
        return reason, False

    @staticmethod
    def _ack_policy(params: dict[str, str]) -> AckPolicy | None:
        mode = params.get("ack", "") or "none"
        if mode not in ("none", "manual"):
            raise BadRequest(f"invalid ack {mode!r}: use none or manual")
        redelivery = _redelivery(params.get("redelivery", ""))
        count = _integer(params, "redelivery_count", DEFAULT_REDELIVERY_COUNT)
        inflight = _integer(params, "max_inflight", 1)
        if not 1 <= inflight <= 10000:
            raise BadRequest("invalid max_inflight: must be between 1 and 10000")
        if mode == "none":
            return None
        return AckPolicy(redelivery, count, inflight)

    # -- PUT / ----------------------------------------------------------------------------------
    def ack(self, conn: HttpConnection, request: Request,
               token: Token | None = None) -> None:
        pairs = _pairs(request.url)
        params = dict(pairs)
        consumer_id = params.get("consumer_id", "")
        event_ids = [value for key, value in pairs if key == "event_id"]
        check_ack_ids(consumer_id, event_ids)
        if token is not None:
            consumer = self.broker.fanout.consumers.get(consumer_id.encode())
            if consumer is not None and consumer.owner != token.name:
                raise AuthError(403, f"token {token.name!r} may not ack for consumer "
                                     f"{consumer_id}: only the token that subscribed may")
        action = params.get("action", "") or "ack"
        if action not in ACTIONS:
            raise BadRequest(f"invalid action {action[:40]!r}: use ack, nak, term or progress")
        try:
            delay = parse_delay(params.get("delay", ""))
        except SettingsError as exc:
            raise BadRequest(str(exc)) from None
        close = not request.keep_alive
        ticket = conn.defer()

        def answer(error: BaseException | None) -> None:
            conn.fulfil(ticket, response(202, close=close) if error is None else error_response(
                500, f"the group's state could not be written: {error}", close), close)

        try:
            self.broker.settle(consumer_id.encode(), [eid.encode() for eid in event_ids], action,
                               delay, answer)
        except ValueError as exc:
            conn.fulfil(ticket, error_response(400, str(exc), close), close)

    # -- consumer groups (SPEC §3.7) ----------------------------------------------------------
    def join_group(self, conn: HttpConnection, request: Request, params: dict[str, str],
                   namespace: str, subjects: tuple[str, ...], consumer_id: bytes,
                   headers: bytes, token: Token | None) -> None:
        """Join the group `group=` names, creating it on the first join; then stream."""
        name = params["group"]
        # the group remembers where it is, so a (browser's) Last-Event-ID is moot, but it
        # must still be well-formed
        last_event_id = request.headers.get(b"last-event-id", b"").strip(b" \t")
        if last_event_id and id_problem(last_event_id) is not None:
            raise BadRequest(f"invalid Last-Event-ID: {id_problem(last_event_id)}")
        if GROUP_NAME.fullmatch(name) is None:
            raise BadRequest(f"invalid group {name[:80]!r}: 1 to 64 of A-Z a-z 0-9 _ -")
        max_inflight = _integer(params, "max_inflight", 1)
        if not 1 <= max_inflight <= 10000:
            raise BadRequest("invalid max_inflight: must be between 1 and 10000")
        groups, owner = self.broker.groups, None if token is None else token.name
        start = params.get("start", "") or "newest"
        if groups.find(namespace, name) is None:
            try:  # the settings are checked now, where a 400 can still be answered
                parse_settings(namespace, name, subjects, start, params, "")
            except SettingsError as exc:
                raise BadRequest(str(exc)) from None
            self._check_group_start(start)

        def refuse(status: int, reason: str) -> None:
            conn.reply(error_response(status, reason, close=True), close=True)

        def failed(exc: Exception) -> None:
            """Answer why the join failed: a refusal's own status, else a 500 that says what
            broke (the store, say), never a stream that ends in silence."""
            if isinstance(exc, (SettingsError, JoinRefused)):
                refuse(getattr(exc, "status", 400), str(exc))
                return
            log.error("group join failed ns=%s group=%s error=%r", namespace, name, exc)
            refuse(500, f"cannot join group {name} of namespace {namespace}: {exc}")

        def join(cursor: int | str | None) -> None:
            """Create the group at `cursor` (unless a join created it meanwhile), then
            enter it; or answer why not."""
            try:
                group = groups.find(namespace, name)
                if group is None:
                    if isinstance(cursor, str):
                        refuse(400, f"cannot create the group: {cursor}")
                        return
                    group = groups.create(namespace, name, subjects, start, cursor, params)
            except Exception as exc:  # noqa: BLE001 - answered with the reason
                failed(exc)
                return
            enter(group)

        def enter(group) -> None:
            """Join the group once its store has it open (JetStream: its consumer found
            or made, so a join that lost a race to create it is refused now), stream."""
            opened = groups.opened(group)
            if opened is not None and not opened.done():
                ticket = conn.defer()
                opened.add_done_callback(lambda _: conn.fulfil(ticket, lambda: enter(group)))
                return
            try:
                if opened is not None:
                    refusal = (JoinRefused(503, "the server is shutting down")
                               if opened.cancelled() else opened.result())
                    if refusal is not None:
                        raise refusal
                member = groups.join(group, subjects, conn, consumer_id, max_inflight, owner)
            except Exception as exc:  # noqa: BLE001 - answered with the reason
                failed(exc)
                return
            member.start(headers)

        def begin() -> None:
            if groups.find(namespace, name) is not None:
                join(None)
                return
            try:
                cursor = self._group_start(namespace, start)
            except Exception as exc:  # noqa: BLE001 - answered with the reason
                failed(exc)
                return
            if isinstance(cursor, (int, str)):
                join(cursor)
            else:
                _when_located(conn, cursor, join, lambda reason: refuse(503, reason))

        conn.start_stream(begin)

    @staticmethod
    def _check_group_start(start: str) -> None:
        if start in ("oldest", "newest") or parse_start_time(start) is not None:
            return
        if start.startswith(INDEX_START.decode()):
            if index_start(start) is None:
                raise BadRequest(f"invalid start {start[:80]!r}: index:<n>, n a whole number")
        elif id_problem(start.encode()) is not None:
            raise BadRequest(f"invalid start {start[:80]!r}: use oldest, newest, an event id, "
                             f"index:<n> or an RFC 3339 time ({id_problem(start.encode())})")

    def _group_start(self, namespace: str, start: str):
        """Where a new group starts (an index, why not, or an awaitable of either)."""
        nanos = parse_start_time(start)
        if nanos is not None:
            return locate_time(self.broker.store, namespace, nanos)
        if (index := index_start(start)) is not None:
            return index_cursor(self.broker.store, namespace, index)
        return self.broker.store.locate(namespace, start.encode())

    def groups(self, conn: HttpConnection, request: Request, method: bytes, close: bool,
               token: Token | None = None) -> None:
        """GET /groups lists (namespace=, name= narrow it), DELETE /groups removes one (with
        --auth-file: by a token that may subscribe to every subject of the group)."""
        params = _query(request.url)
        namespace, name = params.get("namespace") or None, params.get("name")
        if name is not None and GROUP_NAME.fullmatch(name) is None:
            raise BadRequest(f"invalid name {name[:80]!r}: 1 to 64 of A-Z a-z 0-9 _ -")
        if namespace is not None and namespace not in self.broker.namespaces:
            _reply(conn, method, error_response(404, f"namespace {namespace[:80]!r} is not "
                                                     "declared", close), close)
            return
        groups = self.broker.groups
        if method in (b"GET", b"HEAD"):
            shown = groups.describe(self.config.namespaces, namespace, name)
            if name is not None and namespace is not None and not shown[namespace]:
                answer = error_response(404, f"no group {name[:80]!r} in namespace "
                                             f"{namespace}", close)
            else:
                answer = response(200, orjson.dumps(shown), close=close,
                                  content_type=b"application/json")
            _reply(conn, method, answer, close)
        elif method == b"DELETE":
            if namespace is None or name is None:
                raise BadRequest("DELETE /groups needs namespace= and name=")
            group = groups.find(namespace, name)
            if token is not None and group is not None and not all(
                    token.may_subscribe(subject.encode()) for subject in group.settings.subjects):
                raise AuthError(403, f"token {token.name!r} may not delete group {name!r}: it "
                                     "may not subscribe to all of its subjects")
            deleted = groups.delete(namespace, name)
            if deleted is None:
                conn.reply(error_response(404, f"no group {name[:80]!r} in namespace "
                                               f"{namespace}", close), close)
            else:
                conn.reply(response(200, orjson.dumps(deleted), close=close,
                                    content_type=b"application/json"), close)
        else:
            _reply(conn, method, _not_allowed(method, b"/groups", b"GET, HEAD, DELETE, OPTIONS",
                                              close), close)

    # -- GET /healthz ---------------------------------------------------------------------------
    def health(self) -> dict:
        store, metrics = self.broker.store, self.broker.metrics
        sizes = store.stats()
        faults = self.broker.faults
        return {
            "status": "degraded" if faults else "ok",
            **({"faults": faults} if faults else {}),
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "consumers": len(self.broker.fanout.consumers),
            "namespaces": {ns: {"events": store.next_index(ns) - store.first_index(ns),
                                "first_index": store.first_index(ns),
                                "next_index": store.next_index(ns),
                                "bytes": sizes[ns]["bytes"],
                                # this process's count, unlike `events` (the log's)
                                "published_since_start":
                                    metrics.per_namespace[ns].events_in}
                           for ns in self.config.namespaces},
        }
