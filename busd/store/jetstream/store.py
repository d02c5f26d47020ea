"""JetStreamStore: each namespace is a replicated NATS JetStream stream; busd is a gateway.

Mapping (README "Scaling out: JetStream"): namespace `ns` ↔ stream `ns` capturing `ns.>`;
an event ↔ one message on its own subject whose data is the stored record JSON, with the
headers `Bus-Event-Id` and, for keyed events, `Nats-Msg-Id: <subject> <key>` (cluster-wide
dedup); index ↔ stream sequence − 1; a batch ↔ one atomic batch publish (ADR-50,
nats-server ≥ 2.12). Inbox subjects `_bus_.*` are core NATS messages, never stored.

How the asynchronous store keeps the broker's synchronous seam:

- **Tail.** Per namespace one ordered push consumer (ack none, flow control, idle
  heartbeats, R1 in memory) feeds a bounded in-memory tail of recent records. Records —
  whichever front-end published them — are appended to the tail and fanned out to live
  consumers in one synchronous step on the loop, so `next_index` (the tail's head) and
  "deliver me new records" move together, as in LocalStore. A gap, a stall (no heartbeat)
  or a lost server recreates the consumer from the last sequence seen.
- **Reads.** `read` serves what the tail holds, synchronously; for older records it returns
  None and the consumer awaits `fetch` (batched direct gets), then comes back to `read`.
- **Publishes.** Messages go out in order through one writer task; the `202` is answered
  after JetStream's PubAck *and* after this front-end's tail has the record, so a client
  that got its `202` sees the event in `newest`, `/healthz` and its own subscriptions.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import orjson

from busd._core import (
    ParsedEvent,
    Pattern,
    is_xid,
    new_xid,
    record_id,
    records_size,
    sse_of,
    supplied_ids,
)
from busd.server.config import Config, ConfigError
from busd.store.errors import HistoryTruncatedError, PublishRefused
from busd.store.intake import Intake
from busd.store.interface import Stored, StoreListener, Synced
from busd.store.local._framing import xid_seconds
from busd.wire import ID_END, INBOX_NAMESPACE, RECORD_PREFIX, XID_AT, is_xid_id

Outcome = Callable[[int | PublishRefused], None]  # told a publish's first index, or why not

log = logging.getLogger("busd.store.jetstream.store")

API = "$JS.API."
EVENT_ID_HEADER = "Bus-Event-Id"
# + consumer id: acks forwarded between front-ends. Outside the inbox space and every
# namespace (a namespace name cannot hold `$`), so no client can publish or subscribe there.
ACK_SUBJECT = "$BUSD.ack."
SETTLE_HEADER = "Busd-Settle"  # "<action> <delay seconds>" of a forwarded nak/term/progress
# Free-form ids carry no second to search by: each one stored gets a marker in the stream
# IDS_STREAM + namespace, on subject IDS_SUBJECT + namespace + "." + a hash of the id, one
# message per subject, its data the event's stream sequence (checked against the event).
IDS_STREAM = "BUSD_IDS_"
XID_RECORD = RECORD_PREFIX + b"e_"  # how a record whose id is an e_<xid> starts
IDS_SUBJECT = "$BUSD.ids."
STATUS = "Status"
HEARTBEAT_SECONDS = 1.0  # idle heartbeat of the tail consumers
STALL_SECONDS = 2.5  # no message nor heartbeat for this long: recreate the tail consumer
CONNECT_TIMEOUT = 10.0  # start-up: no NATS server reachable for this long is an error
# start-up: JetStream API requests that get no answer (a cluster that has not formed, or a
# stream electing its leader) or find no peers yet are asked again for this long
START_TIMEOUT = 60.0
PUBLISH_TIMEOUT = 5.0  # no PubAck within this: answer 504 (outcome unknown)
VISIBLE_TIMEOUT = 2.0  # acked but not yet in this front-end's tail: answer anyway
TAIL_BYTES = 32 << 20  # in-memory tail per namespace
DIRECT_BATCH = 1000  # messages per batched direct get
ATOMIC_BATCH_LIMIT = 1000  # nats-server's default jetstream.limits.batch.max_msgs
FIND_MARGIN = 5  # seconds either side of an id's second when searching for it
FIND_WINDOW = 20_000  # records scanned after the time probe before falling back to bisection
DEFAULT_DUP_WINDOW = 120.0  # JetStream's own default duplicate window, seconds
ERR_STREAM_NOT_FOUND = 10059
ERR_NO_PEERS = 10005
ERR_UNANSWERED = -1  # ours: the request got no answer within its timeout
ERR_BATCH_DUPLICATE_ID = 10201
ERR_DUPLICATE_IN_PROCESS = 10158  # the same Nats-Msg-Id is being stored right now
ERR_BATCH_TOO_LARGE = 10199


class JetStreamError(Exception):
    """A JetStream API call failed; the message says which and why, `err_code` is
    JetStream's error code (ERR_UNANSWERED: no answer came; None: not from the API)."""

    def __init__(self, message: str, err_code: int | None = None) -> None:
        super().__init__(message)
        self.err_code = err_code


def msg_id(subject: bytes, key: bytes) -> str:
    """The Nats-Msg-Id of a keyed event: dedup is per subject (SPEC §3.5), so both go in."""
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:  # a lone surrogate (`\\ud800`, valid JSON): unique by hash
        text = ""
    if not text or not text.isprintable() or len(text) > 200:
        import hashlib
        text = "sha256:" + hashlib.sha256(key).hexdigest()
    return subject.decode() + " " + text


def _fast_client():
    """nats-py's client with busd's two per-message hot paths made cheap: header blocks are
    parsed with one split (nats-py checks every character of every name), and a publish may
    carry its header block prebuilt as bytes (busd builds them without a dict)."""
    from nats.aio.client import Client
    from nats.protocol.command import hpub_cmd

    class FastClient(Client):
        async def _process_headers(self, headers):
            if not headers:
                return None
            lines = headers.split(b"\r\n")
            hdr = {}
            first = lines[0]
            if len(first) > 9:  # b"NATS/1.0 100 Idle Heartbeat": an inline status
                status, _, description = first[9:].partition(b" ")
                if status.isdigit():
                    hdr[STATUS] = status.decode()
                if description:
                    hdr["Description"] = description.decode("utf-8", "replace")
            for line in lines[1:]:
                name, sep, value = line.partition(b":")
                if sep:
                    hdr[name.strip().decode("ascii", "replace")] = \
                        value.strip().decode("utf-8", "replace")
            return hdr or None

        async def _send_publish(self, subject, reply, payload, payload_size, headers):
            if headers.__class__ is not bytes:
                return await super()._send_publish(subject, reply, payload, payload_size,
                                                   headers)
            self.stats["out_msgs"] += 1
            self.stats["out_bytes"] += payload_size
            await self._send_command(hpub_cmd(subject, reply, headers, payload))
            if self._flush_queue is not None and self._flush_queue.empty():
                await self._flush_pending()

    return FastClient


def _second(record: bytes) -> int:
    """The second in a record's e_<xid> id; -1 for a free-form id (it carries none)."""
    return xid_seconds(record[XID_AT:ID_END]) if record.startswith(XID_RECORD) else -1


def _held_reason(namespace: str, ids: list[bytes]) -> str:
    """The 409 reason, as the local store words it (`bus restore` reads the quoted ids)."""
    listed = " ".join(f'"{i.decode()}"' for i in ids)
    return (f"namespace {namespace} already holds "
            f"{'this id' if len(ids) == 1 else 'these ids'}: {listed}")


class _Tail:
    """One namespace's recent records (index `first` + i) and the consumer feeding them."""

    __slots__ = ("namespace", "records", "first", "next", "bytes", "incoming", "generation",
                 "sub", "consumer", "expect_dseq", "last_activity", "resetting", "waiters",
                 "info")

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.records: list[bytes] = []
        self.first = 0  # index of records[0]
        self.next = 0  # index the next record gets = last stream sequence seen
        self.bytes = 0
        self.incoming: list[tuple[int, bytes]] = []  # (sequence, record) not yet appended
        self.generation = 0
        self.sub = None
        self.consumer: str | None = None
        self.expect_dseq = 1
        self.last_activity = time.monotonic()
        self.resetting = False
        self.waiters: list[tuple] = []  # heap of (seq, tie, answer, since)
        self.info: dict[str, Any] = {}


class JetStreamStore(Intake):
    """The Store the broker and consumers use, over a NATS JetStream cluster."""

    dirty = False  # JetStream persists (and replicates) before it acks

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        """Raises ConfigError when nats-py (the `jetstream` extra) is not installed."""
        try:
            import nats  # noqa: F401 - the optional dependency: only this store needs it
        except ImportError as exc:
            raise ConfigError(f"--store jetstream needs the nats-py package ({exc}): "
                              f"pip install 'busd[jetstream]'") from None
        self.config = config
        self.loop = loop
        self.namespaces = list(config.namespaces)
        self.servers = [url.strip() for url in config.nats_url.split(",") if url.strip()]
        self.replicas = config.replicas
        self.nc = None
        self.atomic = False
        self.max_payload = 1 << 20
        self._listener: StoreListener | None = None  # set by start()
        self._tails = {ns: _Tail(ns) for ns in self.namespaces}
        self._handlers: dict[str, Callable[[Any], bool]] = {}
        self._deadlines: deque[tuple[float, str]] = deque()
        self._token = 0
        self._reply_prefix = ""
        self._outbox: deque[tuple[str, bytes, str, bytes | None]] = deque()
        self._wake: asyncio.Event | None = None
        self._flush_scheduled = False
        self._tasks: list[asyncio.Task] = []
        self._closing = False
        self._pending_ids: dict[str, set[bytes]] = {ns: set() for ns in self.namespaces}
        self._start_deadline = 0.0  # until then, `_api` asks an unanswered request again

    # -- start-up ---------------------------------------------------------------------------
    async def start(self, listener: StoreListener) -> dict[str, str]:
        """Connect, create or verify every stream, start the tails; a report per namespace."""
        from nats.errors import NoServersError

        self._listener = listener
        self._start_deadline = time.monotonic() + START_TIMEOUT

        async def on_error(exc: Exception) -> None:
            log.warning("nats error=%r", exc)

        async def on_disconnect() -> None:
            if not self._closing:
                log.warning("nats disconnected; reconnecting")

        async def on_reconnect() -> None:
            log.info("nats reconnected server=%s", self.nc.connected_url.netloc
                     if self.nc and self.nc.connected_url else "?")
            for tail in self._tails.values():  # its consumer may have lived on the lost node
                self._spawn(self._reset_tail(tail, "reconnected to NATS"))

        self.nc = _fast_client()()
        try:  # keeps reconnecting forever once up, so the first connect gets a deadline
            await asyncio.wait_for(self.nc.connect(
                servers=self.servers, name="busd", no_echo=True, connect_timeout=2,
                max_reconnect_attempts=-1, reconnect_time_wait=0.25, allow_reconnect=True,
                skip_subject_validation=True, pending_size=64 << 20, error_cb=on_error,
                disconnected_cb=on_disconnect, reconnected_cb=on_reconnect), CONNECT_TIMEOUT)
        except (TimeoutError, NoServersError, OSError) as exc:
            raise JetStreamError(f"cannot connect to NATS at {','.join(self.servers)}: "
                                 f"{exc or type(exc).__name__}") from None
        self.max_payload = self.nc.max_payload
        version = self.nc.connected_server_version
        self._reply_prefix = self.nc.new_inbox()
        await self.nc.subscribe(self._reply_prefix + ".*", cb=self._on_reply,
                                pending_msgs_limit=0, pending_bytes_limit=0)
        self._wake = asyncio.Event()
        self._tasks.append(self.loop.create_task(self._writer()))
        try:
            await self._api("INFO", None)
        except JetStreamError as exc:
            raise JetStreamError(f"JetStream is not available at {','.join(self.servers)}: "
                                 f"{exc}") from None
        reports = {}
        for ns in self.namespaces:
            reports[ns] = await self._ensure_stream(ns, (version.major, version.minor))
            await self._ensure_ids_stream(ns)
        self.atomic = all(self._tails[ns].info["config"].get("allow_atomic")
                          for ns in self.namespaces)
        for ns in self.namespaces:
            tail = self._tails[ns]
            state = tail.info["state"]
            tail.first = tail.next = state["last_seq"]
            await self._start_tail(tail)
        await self.nc.subscribe(INBOX_NAMESPACE + ".>", cb=self._on_inbox,
                                pending_msgs_limit=0, pending_bytes_limit=0)
        await self.nc.subscribe(ACK_SUBJECT + "*", cb=self._on_ack,
                                pending_msgs_limit=0, pending_bytes_limit=0)
        self._tasks.append(self.loop.create_task(self._housekeeping()))
        self._start_deadline = 0.0
        return reports

    async def _api(self, what: str, body: dict | None, timeout: float = 5.0) -> dict:
        """A JetStream API request's JSON answer, or JetStreamError with the reason. While
        starting, one nobody answers or that finds no peers yet is asked again until
        START_TIMEOUT: a daemon started with its cluster (a reboot, a rolling restart)
        waits for it rather than exiting."""
        attempt = 0
        while True:
            try:
                return await self._api_once(what, body, timeout)
            except JetStreamError as exc:
                if (exc.err_code not in (ERR_UNANSWERED, ERR_NO_PEERS)
                        or time.monotonic() + timeout > self._start_deadline):
                    raise
                log.warning("waiting for JetStream request=%s reason=%r", what, str(exc))
                attempt += 1
                await asyncio.sleep(min(1.0, 0.25 * attempt))

    async def _api_once(self, what: str, body: dict | None, timeout: float) -> dict:
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout
        try:
            msg = await self.nc.request(API + what, orjson.dumps(body) if body else b"",
                                        timeout=timeout)
        except NoRespondersError:
            raise JetStreamError(f"{what}: no JetStream responders (is JetStream enabled and "
                                 f"does the cluster have a leader?)") from None
        except (TimeoutError, NatsTimeout):
            raise JetStreamError(f"{what}: no answer within {timeout:g}s",
                                 ERR_UNANSWERED) from None
        answer = orjson.loads(msg.data)
        error = answer.get("error")
        if error:
            raise JetStreamError(f"{what}: {error.get('description')} "
                                 f"(code {error.get('err_code')})", error.get("err_code"))
        return answer

    async def _ensure_stream(self, ns: str, version: tuple[int, int]) -> str:
        """Create the namespace's stream, or check that the existing one fits."""
        config = self.config
        want: dict[str, Any] = {
            "name": ns, "subjects": [f"{ns}.>"], "num_replicas": self.replicas,
            "storage": "file", "retention": "limits", "discard": "old", "allow_direct": True,
            "duplicate_window": int((config.dup_ttl or DEFAULT_DUP_WINDOW) * 1e9),
            "max_age": int((config.retention_age or 0) * 1e9),
            "max_bytes": config.retention_bytes or -1,
        }
        if version >= (2, 12):
            want["allow_atomic"] = True
        tail = self._tails[ns]
        try:
            info = await self._api(f"STREAM.INFO.{ns}", None)
            created = False
        except JetStreamError as exc:
            if exc.err_code != ERR_STREAM_NOT_FOUND:
                raise
            info = await self._api(f"STREAM.CREATE.{ns}", want, timeout=15.0)
            created = True
        have = info["config"]
        if have.get("subjects") != want["subjects"]:
            raise JetStreamError(f"stream {ns!r} exists with subjects {have.get('subjects')}; "
                                 f"busd needs exactly {want['subjects']} for namespace {ns!r}")
        if have.get("num_replicas", 1) != self.replicas:
            raise JetStreamError(f"stream {ns!r} has {have.get('num_replicas', 1)} replicas but "
                                 f"--replicas/BUS_REPLICAS asks for {self.replicas}; change one "
                                 f"of them (nats stream edit {ns} --replicas N)")
        missing = {k: v for k, v in want.items()
                   if k in ("allow_direct", "allow_atomic") and not have.get(k)}
        if missing:
            info = await self._api(f"STREAM.UPDATE.{ns}", {**have, **missing}, timeout=15.0)
        tail.info = info
        state = info["state"]
        return (f"{'created' if created else 'found'} stream={ns} replicas={self.replicas} "
                f"messages={state['messages']} first_seq={state['first_seq']} "
                f"last_seq={state['last_seq']} atomic_batches="
                f"{bool(info['config'].get('allow_atomic'))}")

    async def _ensure_ids_stream(self, ns: str) -> None:
        """The namespace's free-form id markers: kept as long as the events (max_age)."""
        want = {"name": IDS_STREAM + ns, "subjects": [f"{IDS_SUBJECT}{ns}.*"],
                "num_replicas": self.replicas, "storage": "file", "retention": "limits",
                "discard": "old", "allow_direct": True, "max_msgs_per_subject": 1,
                "max_age": int((self.config.retention_age or 0) * 1e9)}
        try:
            await self._api(f"STREAM.INFO.{IDS_STREAM}{ns}", None)
        except JetStreamError as exc:
            if exc.err_code != ERR_STREAM_NOT_FOUND:
                raise
            await self._api(f"STREAM.CREATE.{IDS_STREAM}{ns}", want, timeout=15.0)

    # -- the tail -----------------------------------------------------------------------------
    async def _start_tail(self, tail: _Tail) -> None:
        """Subscribe a fresh deliver subject, then create the ordered consumer on it."""
        tail.generation += 1
        generation = tail.generation
        old_sub, old_consumer = tail.sub, tail.consumer
        tail.sub = None
        if old_sub is not None:
            try:
                await old_sub.unsubscribe()
            except Exception:  # noqa: BLE001 - the connection may be gone; nothing to undo
                pass
        if old_consumer:
            self._tasks.append(self.loop.create_task(self._delete_consumer(tail.namespace,
                                                                           old_consumer)))
        deliver = self.nc.new_inbox()

        async def on_message(msg) -> None:
            if tail.generation == generation:
                self._on_tail(tail, msg)

        tail.sub = await self.nc.subscribe(deliver, cb=on_message, pending_msgs_limit=0,
                                           pending_bytes_limit=0)
        tail.expect_dseq = 1
        start = tail.next + 1
        consumer = {"deliver_subject": deliver, "ack_policy": "none", "max_deliver": 1,
                    "flow_control": True, "idle_heartbeat": int(HEARTBEAT_SECONDS * 1e9),
                    "mem_storage": True, "num_replicas": 1, "inactive_threshold": int(30e9),
                    "deliver_policy": "by_start_sequence", "opt_start_seq": start}
        answer = await self._api(f"CONSUMER.CREATE.{tail.namespace}",
                                 {"stream_name": tail.namespace, "config": consumer})
        tail.consumer = answer.get("name")
        tail.last_activity = time.monotonic()

    async def _delete_consumer(self, ns: str, name: str) -> None:
        try:
            await self._api(f"CONSUMER.DELETE.{ns}.{name}", None, timeout=2.0)
        except Exception:  # noqa: BLE001 - it expires by itself (inactive_threshold)
            pass

    async def _reset_tail(self, tail: _Tail, reason: str) -> None:
        """Recreate the tail's consumer from the last sequence seen, until it works."""
        if tail.resetting or self._closing:
            return
        tail.resetting = True
        log.warning("restarting tail ns=%s from_seq=%d reason=%r", tail.namespace,
                    tail.next + 1, reason)
        try:
            while not self._closing:
                try:
                    await self._start_tail(tail)
                    log.info("tail restarted ns=%s from_seq=%d", tail.namespace, tail.next + 1)
                    return
                except Exception as exc:  # noqa: BLE001 - keep trying while the cluster heals
                    log.warning("tail restart failed ns=%s error=%r", tail.namespace, str(exc))
                    await asyncio.sleep(0.5)
        finally:
            tail.resetting = False
            tail.last_activity = time.monotonic()

    def _on_tail(self, tail: _Tail, msg) -> None:
        tail.last_activity = time.monotonic()
        headers = msg.headers
        if headers and STATUS in headers:
            if headers[STATUS] != "100":
                return
            if msg.reply:  # flow control request: everything before it has been taken
                self._outbox.append((msg.reply, b"", "", None))
                self._wake.set()
                return
            stalled = headers.get("Nats-Consumer-Stalled")
            if stalled:
                self._outbox.append((stalled, b"", "", None))
                self._wake.set()
            last = headers.get("Nats-Last-Stream")
            seen = tail.incoming[-1][0] if tail.incoming else tail.next
            if last is not None and int(last) > seen:
                self._spawn(self._reset_tail(tail, f"heartbeat says stream at {last}, "
                                                   f"tail at {seen}"))
            return
        tokens = msg.reply.split(".")
        if len(tokens) == 9:
            sseq, dseq = int(tokens[5]), int(tokens[6])
        else:  # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<dseq>…
            sseq, dseq = int(tokens[7]), int(tokens[8])
        if dseq != tail.expect_dseq:
            tail.generation += 1  # ignore the rest of this consumer's messages
            self._spawn(self._reset_tail(tail, f"consumer sequence {dseq}, expected "
                                               f"{tail.expect_dseq}"))
            return
        tail.expect_dseq = dseq + 1
        tail.incoming.append((sseq, msg.data))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_tails)

    def _flush_tails(self) -> None:
        """Append what arrived to the tails and fan it out: one synchronous step."""
        self._flush_scheduled = False
        for tail in self._tails.values():
            if tail.incoming:
                self._append(tail)

    def _append(self, tail: _Tail) -> None:
        incoming, tail.incoming = tail.incoming, []
        records = []
        head = tail.next
        for sseq, data in incoming:
            if sseq <= head:
                continue  # seen before a consumer restart
            if sseq != head + 1:
                if records:
                    self._extend(tail, records, head)
                    records = []
                log.warning("gap in stream ns=%s from_seq=%d to_seq=%d (deleted messages)",
                            tail.namespace, head + 1, sseq - 1)
                tail.records, tail.bytes, tail.first = [], 0, sseq - 1
            records.append(data)
            head = sseq
        if records:
            self._extend(tail, records, head)
        waiters = tail.waiters
        while waiters and waiters[0][0] <= tail.next:
            heapq.heappop(waiters)[2]()

    def _extend(self, tail: _Tail, records: list[bytes], head: int) -> None:
        size = sum(map(len, records))
        tail.records.extend(records)
        tail.bytes += size
        tail.next = head
        state = tail.info.get("state")
        if state is not None and state.get("last_seq", 0) < head:  # sizes until the next INFO
            state["bytes"] = state.get("bytes", 0) + size
            state["messages"] = state.get("messages", 0) + head - state["last_seq"]
            if not state.get("first_seq"):
                state["first_seq"] = head - len(records) + 1
            state["last_seq"] = head
        if tail.bytes > TAIL_BYTES:
            drop, size = 0, 0
            while size < TAIL_BYTES // 4 and drop < len(tail.records) - 1:
                size += len(tail.records[drop])
                drop += 1
            del tail.records[:drop]
            tail.bytes -= size
            tail.first += drop
        self._listener.appended(tail.namespace, records, head)

    # -- the synchronous part of the Store interface ------------------------------------------
    def read(self, namespace: str, start_index: int, max_bytes: int = 1 << 20,
             disk: bool = True) -> list[bytes] | None:
        """Records from the in-memory tail; None when start_index is older than the tail
        (the caller awaits `fetch`), [] at the head. (`disk`: nothing here is on disk.)"""
        tail = self._tails[namespace]
        if start_index < tail.first:
            return None
        records = tail.records
        i = start_index - tail.first
        j, n, size = i, len(records), 0
        while j < n and size < max_bytes:
            size += len(records[j])
            j += 1
        return records[i:j]

    def first_index(self, namespace: str) -> int:
        tail = self._tails[namespace]
        state = tail.info.get("state") or {}
        if not state.get("messages"):
            return min(state.get("last_seq", 0), tail.next)
        return min(state["first_seq"] - 1, tail.next)

    def next_index(self, namespace: str) -> int:
        return self._tails[namespace].next

    def stats(self) -> dict[str, dict[str, int]]:
        out = {}
        for ns, tail in self._tails.items():
            first = self.first_index(ns)
            out[ns] = {"count": tail.next - first, "bytes": (tail.info.get("state") or {})
                       .get("bytes", 0), "first_index": first, "next_index": tail.next,
                       "segments": 0}
        return out

    def fsync(self, done: Synced) -> None:
        """JetStream persists (and replicates) before it acks: nothing to wait for."""
        done(None)

    def apply_retention(self, now: float) -> int:
        """The streams' max_age and max_bytes: JetStream applies them itself."""
        return 0

    def locate(self, namespace: str, start: bytes
               ) -> int | Coroutine[Any, Any, int | str]:
        """oldest/newest at once; an event id is a search that may ask the cluster."""
        if start == b"oldest":
            return self.first_index(namespace)
        if start == b"newest":
            return self.next_index(namespace)
        return self._find(namespace, start)

    async def stop(self) -> None:
        self._closing = True
        for tail in self._tails.values():
            if tail.consumer:
                await self._delete_consumer(tail.namespace, tail.consumer)
        for task in self._tasks:
            task.cancel()
        if self.nc is not None:
            try:
                await asyncio.wait_for(self.nc.drain(), 3.0)
            except Exception:  # noqa: BLE001 - closing anyway
                await self.nc.close()

    # -- asynchronous reads ---------------------------------------------------------------------
    async def _direct_get(self, ns: str, request: dict) -> list[tuple[int, bytes]]:
        """A batched direct get: (sequence, record) pairs, [] when there is nothing."""
        future = self.loop.create_future()
        found: list[tuple[int, bytes]] = []

        def handler(msg) -> bool:
            if msg is None:
                future.done() or future.set_exception(JetStreamError(
                    f"direct get on stream {ns}: no answer within {PUBLISH_TIMEOUT:g}s"))
                return True
            headers = msg.headers or {}
            status = headers.get(STATUS)
            if status is None:
                found.append((int(headers["Nats-Sequence"]), msg.data))
                return False
            if status in ("204", "404"):
                future.done() or future.set_result(found)
            else:
                future.done() or future.set_exception(JetStreamError(
                    f"direct get on stream {ns}: status {status} "
                    f"{headers.get('Description', '')}".strip()))
            return True

        reply = self._register(handler)
        self._outbox.append((f"{API}DIRECT.GET.{ns}", orjson.dumps(request), reply, None))
        self._wake.set()
        return await future

    async def fetch_sse(self, namespace: str, start_index: int, max_bytes: int,
                        pattern: Pattern | None) -> tuple[int, bytes, int, int]:
        first, records = await self.fetch(namespace, start_index, max_bytes)
        return (first, *sse_of(records, pattern), len(records))

    async def fetch(self, namespace: str, start_index: int, max_bytes: int
                    ) -> tuple[int, list[bytes]]:
        """Records from start_index on, read from the stream: (index of the first, records),
        a contiguous run. Raises HistoryTruncatedError for records deleted by retention."""
        for attempt in range(50):
            got = await self._direct_get(namespace, {"seq": start_index + 1,
                                                     "batch": DIRECT_BATCH,
                                                     "max_bytes": max_bytes})
            if got:
                break
            if start_index >= self._tails[namespace].next:
                return start_index, []
            await asyncio.sleep(0.02 * (attempt + 1))  # a replica that lags: ask again
        else:
            raise JetStreamError(f"records from index {start_index} of {namespace} exist but "
                                 f"no replica serves them")
        first = got[0][0] - 1
        if first > start_index and start_index < self.first_index(namespace):
            raise HistoryTruncatedError(self.first_index(namespace))
        records = [got[0][1]]
        for (seq, data), (prev, _) in zip(got[1:], got, strict=False):
            if seq != prev + 1:
                break
            records.append(data)
        return first, records

    async def _find(self, namespace: str, event_id: bytes) -> int | str:
        """The index after an event id, or the reason it cannot be served. A search, not a
        walk: a free-form id's marker; for an e_<xid> a time probe (the xid carries its
        second) and a short scan, or else a bisection on sequence numbers by the ids'
        seconds (for history whose ids predate its storing)."""
        if not is_xid_id(event_id):
            index = await self._find_free_form(namespace, event_id)
            if index is not None:
                return index + 1
            return f"event {event_id.decode()} not found in namespace {namespace}"
        second = xid_seconds(event_id[2:])
        tail = self._tails[namespace]
        for index in range(len(tail.records) - 1, -1, -1):  # recent events: no round trip
            record = tail.records[index]
            if record_id(record) == event_id:
                return tail.first + index + 1
            if 0 <= _second(record) < second - FIND_MARGIN:
                break
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(max(0, second - FIND_MARGIN)))
        probe = await self._direct_get(namespace, {"start_time": stamp, "batch": 1})
        if probe:
            found = await self._scan(namespace, probe[0][0], event_id, second, FIND_WINDOW)
            if isinstance(found, int):
                return found + 1
        state = (await self._api(f"STREAM.INFO.{namespace}", None))["state"]
        if state["messages"]:
            found = await self._bisect(namespace, state["first_seq"], state["last_seq"], second)
            if found is not None:
                hit = await self._scan(namespace, found, event_id, second, FIND_WINDOW)
                if isinstance(hit, int):
                    return hit + 1
            if state["first_seq"] > 1:
                oldest = await self._direct_get(namespace, {"seq": state["first_seq"],
                                                            "batch": 1})
                if oldest and _second(oldest[0][1]) > second:
                    oldest_id = record_id(oldest[0][1]).decode()
                    return (f"history truncated: event {event_id.decode()} was deleted by "
                            f"retention; the oldest retained event is {oldest_id}")
        return f"event {event_id.decode()} not found in namespace {namespace}"

    @staticmethod
    def _marker_subject(ns: str, event_id: bytes) -> str:
        return f"{IDS_SUBJECT}{ns}.{hashlib.sha256(event_id).hexdigest()[:40]}"

    async def _find_free_form(self, ns: str, event_id: bytes) -> int | None:
        """The index of the event with this free-form id: its marker names the sequence,
        and the event there must carry the id (a marker outliving its event names none)."""
        marker = await self._direct_get(IDS_STREAM + ns, {
            "multi_last": [self._marker_subject(ns, event_id)], "batch": 1})
        if not marker:
            return None
        seq = int(marker[0][1])
        got = await self._direct_get(ns, {"seq": seq, "batch": 1})
        if got and got[0][0] == seq and record_id(got[0][1]) == event_id:
            return seq - 1
        return None

    async def _held_ids(self, ns: str, ids: list[bytes]) -> list[bytes]:
        """Those of ids the namespace's stream holds."""
        found = await asyncio.gather(*(self._find(ns, i) for i in ids))
        return [i for i, where in zip(ids, found, strict=True) if isinstance(where, int)]

    async def _scan(self, ns: str, seq: int, event_id: bytes, second: int, limit: int
                    ) -> int | None:
        scanned = 0
        while scanned < limit:
            got = await self._direct_get(ns, {"seq": seq, "batch": DIRECT_BATCH,
                                              "max_bytes": 4 << 20})
            if not got:
                return None
            for s, record in got:
                if record_id(record) == event_id:
                    return s - 1
                if _second(record) > second + FIND_MARGIN:
                    return None
            scanned += len(got)
            seq = got[-1][0] + 1
        return None

    async def _bisect(self, ns: str, lo: int, hi: int, second: int) -> int | None:
        """The first sequence whose record's id second is ≥ second − FIND_MARGIN."""
        target = second - FIND_MARGIN
        while lo < hi:
            mid = (lo + hi) // 2
            got = await self._direct_get(ns, {"seq": mid, "batch": 1})
            if not got:
                hi = mid
                continue
            seq, record = got[0]
            if _second(record) < target:
                lo = seq + 1
            else:
                hi = mid
        return lo

    # -- publishing -------------------------------------------------------------------------------
    def _register(self, handler: Callable[[Any], bool], timeout: float = PUBLISH_TIMEOUT) -> str:
        self._token += 1
        token = str(self._token)
        self._handlers[token] = handler
        self._deadlines.append((time.monotonic() + timeout, token))
        return self._reply_prefix + "." + token

    async def _on_reply(self, msg) -> None:
        token = msg.subject[len(self._reply_prefix) + 1:]
        handler = self._handlers.get(token)
        if handler is not None and handler(msg):
            del self._handlers[token]

    async def _writer(self) -> None:
        """Sends queued messages in order (one task: nothing can overtake)."""
        outbox, nc = self._outbox, self.nc
        while True:
            await self._wake.wait()
            self._wake.clear()
            while outbox:
                subject, data, reply, headers = outbox.popleft()
                try:
                    await nc.publish(subject, data, reply=reply, headers=headers)
                except Exception as exc:  # noqa: BLE001 - fail that message, keep going
                    token = reply[len(self._reply_prefix) + 1:] if reply else None
                    handler = self._handlers.pop(token, None) if token else None
                    log.warning("publish failed subject=%s error=%r", subject, exc)
                    if handler is not None:
                        handler(exc)

    def reserve_ids(self, namespace: str, ids: list[bytes]) -> None:
        """Refuse an id twice in a batch (400) or one a publish on this front-end is storing
        (409); `publish` then asks the cluster about the rest (409 for one it holds)."""
        if len(set(ids)) != len(ids):
            twice = next(i for i in ids if ids.count(i) > 1)
            raise PublishRefused(400, f"id {twice.decode()} appears twice in the batch")
        pending = self._pending_ids[namespace]
        if pending.intersection(ids):
            raise PublishRefused(409, _held_reason(namespace, [i for i in ids if i in pending]))
        pending.update(ids)

    def release_ids(self, namespace: str, ids: list[bytes]) -> None:
        self._pending_ids[namespace].difference_update(ids)

    def publish(self, namespace: str, events: list[ParsedEvent], records: list[bytes],
                dedup: bool, done: Stored) -> None:
        """Publish one request's events; `done` gets the first index (after the PubAck and
        once this front-end's tail has them) or a PublishRefused. With `dedup`, keyed events
        carry a Nats-Msg-Id, so the whole cluster refuses a key it has seen."""
        n = len(records)
        supplied = supplied_ids(events)

        def stored(outcome: int | PublishRefused) -> None:
            if supplied:
                self.release_ids(namespace, supplied)
            if not isinstance(outcome, PublishRefused):
                self._listener.published(namespace, n, records_size(records))
            done(outcome)

        for record in records:
            if len(record) + 256 > self.max_payload:
                stored(PublishRefused(413, f"an event of {len(record)} bytes is larger than "
                                           f"the NATS server's max_payload "
                                           f"({self.max_payload})"))
                return
        if supplied:  # a restore, or the Go SDK's WithId: the cluster may hold them
            self._spawn(self._publish_new_ids(namespace, events, records, dedup, supplied,
                                              stored))
            return
        self._publish_checked(namespace, events, records, dedup, stored)

    async def _publish_new_ids(self, namespace, events, records, dedup, supplied,
                               done: Outcome) -> None:
        """Publish events whose ids the publisher chose, unless the stream holds one (409);
        each free-form id stored gets its marker."""
        def finished(outcome: int | PublishRefused) -> None:
            if not isinstance(outcome, PublishRefused):
                for offset, event in enumerate(events):
                    if event.id and not is_xid_id(event.id):
                        self._outbox.append((self._marker_subject(namespace, event.id),
                                             b"%d" % (outcome + offset + 1), "", None))
                self._wake.set()
            done(outcome)

        try:
            held = await self._held_ids(namespace, supplied)
        except Exception as exc:  # noqa: BLE001 - the publisher gets an answer whatever broke
            finished(PublishRefused(503, f"cannot check the ids with JetStream: {exc}"))
            return
        if held:
            finished(PublishRefused(409, _held_reason(namespace, held)))
            return
        self._publish_checked(namespace, events, records, dedup, finished)

    def _publish_checked(self, namespace, events, records, dedup, stored: Outcome) -> None:
        n = len(records)
        subjects = [event.subject for event in events]
        msg_ids = [msg_id(event.subject, event.key_value) if event.key_value else None
                   for event in events] if dedup else None
        if n == 1 or self.atomic:
            if n > ATOMIC_BATCH_LIMIT:
                stored(PublishRefused(413, f"a batch of {n} events is larger than JetStream's "
                                           f"atomic batch limit ({ATOMIC_BATCH_LIMIT} events)"))
                return
            self._publish_atomic(namespace, subjects, records, msg_ids, stored)
        else:
            self._publish_each(namespace, subjects, records, msg_ids, stored)

    @staticmethod
    def _headers(record: bytes, msg_id: str | None, batch: bytes = b"") -> bytes:
        """The message's header block: the event id, the dedup id, batch headers."""
        block = b"NATS/1.0\r\nBus-Event-Id: " + record_id(record) + b"\r\n"
        if msg_id:
            block += b"Nats-Msg-Id: " + msg_id.encode() + b"\r\n"
        return block + batch + b"\r\n"

    def _publish_atomic(self, ns, subjects, records, msg_ids, done) -> None:
        n = len(records)

        def handler(msg) -> bool:
            outcome = self._pub_ack(ns, msg, n == 1)
            if isinstance(outcome, PublishRefused):
                done(outcome)
            else:
                self._when_visible(ns, outcome, n, lambda: done(outcome - n))
            return True

        reply = self._register(handler)
        out = self._outbox
        if n == 1:
            out.append((subjects[0].decode(), records[0], reply,
                        self._headers(records[0], msg_ids[0] if msg_ids else None)))
        else:
            batch_id = b"Nats-Batch-Id: " + new_xid() + b"\r\nNats-Batch-Sequence: "
            for i in range(n):
                batch = b"%s%d\r\n" % (batch_id, i + 1)
                if i == n - 1:
                    batch += b"Nats-Batch-Commit: 1\r\n"
                headers = self._headers(records[i], msg_ids[i] if msg_ids else None, batch)
                out.append((subjects[i].decode(), records[i], reply if i == n - 1 else "",
                            headers))
        self._wake.set()

    def _publish_each(self, ns, subjects, records, msg_ids, done) -> None:
        """Servers without atomic batches: N pipelined publishes, in order, on one
        connection. Each is durable on its own; see README for what is not atomic."""
        n = len(records)
        outcomes: list[int | PublishRefused | None] = [None] * n
        left = [n]

        def finish() -> None:
            refused = [o for o in outcomes if isinstance(o, PublishRefused)]
            if refused:
                stored = n - len(refused)
                done(PublishRefused(refused[0].status, f"{refused[0].reason} ({stored} of {n} "
                                    f"events of the batch were stored; batches are not atomic "
                                    f"on this JetStream server)"))
                return
            seqs = outcomes
            self._when_visible(ns, max(seqs), n, lambda: done(min(seqs) - 1))

        for i in range(n):
            def handler(msg, i=i) -> bool:
                outcomes[i] = self._pub_ack(ns, msg, False)
                left[0] -= 1
                if not left[0]:
                    finish()
                return True

            reply = self._register(handler)
            self._outbox.append((subjects[i].decode(), records[i], reply,
                                 self._headers(records[i], msg_ids[i] if msg_ids else None)))
        self._wake.set()

    def _pub_ack(self, ns: str, msg, single: bool) -> int | PublishRefused:
        """The stream sequence a PubAck confirms, or why the publish was not stored. A single
        event refused as a duplicate has its key taken indeed; a refused batch keeps none."""
        if msg is None:
            return PublishRefused(504, f"JetStream did not confirm the publish within "
                                       f"{PUBLISH_TIMEOUT:g}s; it may or may not be stored "
                                       f"(retrying with a key is safe)")
        if isinstance(msg, Exception):
            return PublishRefused(503, f"cannot reach NATS: {msg!r}")
        headers = msg.headers
        if headers and headers.get(STATUS) == "503":
            return PublishRefused(503, f"no JetStream stream answers for namespace {ns} "
                                       f"(the cluster may be electing a leader); retry")
        try:
            ack = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            return PublishRefused(502, f"unexpected answer from JetStream: {msg.data[:200]!r}")
        error = ack.get("error")
        if error:
            if error.get("err_code") in (ERR_BATCH_DUPLICATE_ID, ERR_DUPLICATE_IN_PROCESS):
                return PublishRefused(409, "key was processed before", keys_taken=single)
            status = 503 if error.get("code") == 503 else 500
            return PublishRefused(status, f"JetStream refused the publish: "
                                          f"{error.get('description')}")
        if ack.get("duplicate"):
            return PublishRefused(409, "key was processed before", keys_taken=single)
        return ack["seq"]

    def _when_visible(self, ns: str, seq: int, n: int, answer: Callable[[], None]) -> None:
        tail = self._tails[ns]
        if tail.next >= seq:
            answer()
        else:
            heapq.heappush(tail.waiters, (seq, id(answer), answer, time.monotonic()))

    def send(self, subject: str, data: bytes, reply: str = "") -> None:
        """A core NATS message, in order after everything queued before it (group acks,
        pull requests)."""
        self._outbox.append((subject, data, reply, None))
        self._wake.set()

    def publish_inbox(self, subject: bytes, record: bytes) -> None:
        """Inbox events ride core NATS to the other front-ends (never stored)."""
        self._outbox.append((subject.decode(), record, "", None))
        self._wake.set()

    def forward_ack(self, consumer_id: bytes, event_id: bytes, action: str = "ack",
                    delay: float = 0.0) -> None:
        """An ack (or a group member's nak, term, progress: header SETTLE_HEADER) for a
        consumer this front-end does not hold: to the others, core NATS. Front-ends name
        consumers c_<xid>; any other id (acks check only the prefix) is held by none, and
        would not make a NATS subject."""
        if len(consumer_id) != 22 or not is_xid(consumer_id[2:]):
            return
        headers = None if action == "ack" else \
            b"NATS/1.0\r\n%s: %s %r\r\n\r\n" % (SETTLE_HEADER.encode(), action.encode(), delay)
        self._outbox.append((ACK_SUBJECT + consumer_id.decode(), event_id, "", headers))
        self._wake.set()

    async def _on_inbox(self, msg) -> None:
        self._listener.inbox_event(msg.subject.encode(), msg.data)

    async def _on_ack(self, msg) -> None:
        action, _, delay = ((msg.headers or {}).get(SETTLE_HEADER) or "ack").partition(" ")
        try:
            seconds = float(delay or 0)
        except ValueError:
            return
        self._listener.ack_forwarded(msg.subject[len(ACK_SUBJECT):].encode(), msg.data,
                                     action, seconds)

    # -- housekeeping ------------------------------------------------------------------------------
    def _spawn(self, coro) -> None:
        task = self.loop.create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _housekeeping(self) -> None:
        """Timeouts of unanswered requests, stalled tails, stream sizes (every 0.2 s / 1 s)."""
        last_info = 0.0
        while True:
            await asyncio.sleep(0.2)
            now = time.monotonic()
            deadlines = self._deadlines
            while deadlines and deadlines[0][0] <= now:
                _, token = deadlines.popleft()
                handler = self._handlers.pop(token, None)
                if handler is not None:
                    handler(None)
            for tail in self._tails.values():
                waiters = tail.waiters
                while waiters and waiters[0][3] + VISIBLE_TIMEOUT <= now:
                    log.warning("answering a publish before the tail saw it ns=%s seq=%d "
                                "tail_at=%d", tail.namespace, waiters[0][0], tail.next)
                    heapq.heappop(waiters)[2]()
                if (not tail.resetting and now - tail.last_activity > STALL_SECONDS
                        and self.nc.is_connected):
                    self._spawn(self._reset_tail(tail, f"no message or heartbeat for "
                                                       f"{now - tail.last_activity:.1f}s"))
            if now - last_info >= 1.0 and self.nc.is_connected:
                last_info = now
                for ns, tail in self._tails.items():
                    try:
                        tail.info = await self._api(f"STREAM.INFO.{ns}", None, timeout=1.0)
                    except Exception:  # noqa: BLE001 - keep the last known sizes
                        pass
