"""Consumer groups on `--store jetstream`: a group is one JetStream durable pull consumer.

JetStream keeps the group's state (ack floor, pending, delivery counts) replicated in the
cluster, so members on different front-ends compete for the same events and a dead
front-end's unacked events come back after AckWait. What stays here, per front-end, is
what the members on it hold: each front-end pulls only as many messages as its members
have room for (max_inflight), hands them out round-robin, and turns the members' acks,
naks (with delay), terms and progress into `+ACK`, `-NAK`, `+TERM`, `+WPI`. A member that
disconnects naks what it held, so the others get it at once.

Dead letters: `term` stores the record it holds; `max_deliver` comes from JetStream's
MAX_DELIVERIES advisory (one front-end of the cluster takes each, a queue subscription),
which names the stream sequence, read back with a direct get. Both are stored as the
local store's groups store them (GroupRegistry.dead_letter).

The group's settings travel in the consumer's metadata, so every front-end learns the
groups the others created (a refresh every second).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import orjson

from busd.bus.group.dispatcher import next_with_room, with_deliveries
from busd.bus.group.journal import Counters
from busd.bus.group.member import Member
from busd.bus.group.registry import Groups, JoinRefused
from busd.bus.group.settings import GroupSettings, parse_settings
from busd._core import Pattern, now_rfc3339, record_id

log = logging.getLogger("busd.bus.group.jetstream")

DURABLE_PREFIX = "busd_g_"
SETTINGS_KEY = "busd_group"
PULL_EXPIRES = 1.0  # a pull request waits this long for messages
TICK = 0.05  # local ack_wait expiry and stale pull requests
REFRESH = 1.0  # consumer info and the cluster's list of groups
MAX_PULLS = 8  # pull requests outstanding per group on one front-end
LETTERS_AHEAD = 1000  # own dead letters past the cursor looked up per refresh (at most)
ERR_CONSUMER_NOT_FOUND = 10014
ERR_CONSUMER_EXISTS = 10148


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def consumer_config(settings: GroupSettings, start_seq: int) -> dict:
    """The durable consumer a group is."""
    config = {"durable_name": DURABLE_PREFIX + settings.name, "ack_policy": "explicit",
              "ack_wait": _ns(settings.ack_wait), "max_deliver": settings.max_deliver or -1,
              # max_pending bounds the group's unsettled events cluster-wide
              "max_ack_pending": settings.max_pending, "deliver_policy": "by_start_sequence",
              "opt_start_seq": start_seq, "max_waiting": 512,
              "metadata": {SETTINGS_KEY: orjson.dumps(settings.to_json()).decode()}}
    if settings.backoff:
        config["backoff"] = [_ns(step) for step in settings.backoff]
    if len(settings.subjects) == 1:
        config["filter_subject"] = settings.subjects[0]
    else:
        config["filter_subjects"] = list(settings.subjects)
    return config


class Held:
    """One event a member on this front-end holds: where to settle it, and until when."""

    __slots__ = ("reply", "record", "deliveries", "member", "due")

    def __init__(self, reply: str, record: bytes, deliveries: int, member: Member,
                 due: float) -> None:
        self.reply = reply
        self.record = record
        self.deliveries = deliveries
        self.member = member
        self.due = due


class JetStreamGroup:
    """One group as seen from this front-end: the Group that members talk to."""

    def __init__(self, settings: GroupSettings, store, host: JetStreamGroups) -> None:
        self.settings = settings
        self.namespace = settings.namespace
        self.name = settings.name
        self.durable = DURABLE_PREFIX + settings.name
        self.store = store
        self.host = host
        self.loop = asyncio.get_running_loop()
        self.counters = Counters()  # acked, dead_letters: this front-end's share
        self.members: list[Member] = []
        self.pending: dict[int, Held] = {}  # index → what a member here holds
        self.by_id: dict[bytes, int] = {}
        self.info: dict = {}
        self._letters_ahead = 0  # of the consumer's num_pending: never delivered
        self.ready = False  # the consumer exists
        # once open: None, or the JoinRefused every join waiting for it gets
        self.opened: asyncio.Future[JoinRefused | None] = self.loop.create_future()
        self.done = False
        self._turn = 0
        self._pulls: dict[str, list] = {}  # token → [messages still expected, deadline]
        self._token = 0
        self._scheduled = False
        self._sub = None
        self._advisory = None
        self._ticker = self.loop.call_later(TICK, self._tick)
        self._last_refresh = 0.0

    # -- opening -----------------------------------------------------------------------
    async def open(self, start_seq: int | None) -> None:
        """Find or create the consumer (start_seq: create it there if missing), then
        subscribe to its deliveries and its max-deliveries advisories."""
        store, ns = self.store, self.namespace
        try:
            self.info = await store._api(f"CONSUMER.INFO.{ns}.{self.durable}", None)
        except Exception as exc:  # noqa: BLE001 - absent: create it
            if getattr(exc, "err_code", None) != ERR_CONSUMER_NOT_FOUND or start_seq is None:
                raise
            body = {"stream_name": ns, "action": "create",
                    "config": consumer_config(self.settings, start_seq)}
            try:
                self.info = await store._api(f"CONSUMER.CREATE.{ns}.{self.durable}", body)
            except Exception as exc2:  # noqa: BLE001 - another front-end created it first
                if getattr(exc2, "err_code", None) != ERR_CONSUMER_EXISTS:
                    raise
                self.info = await store._api(f"CONSUMER.INFO.{ns}.{self.durable}", None)
        self._inbox = store.nc.new_inbox()
        self._sub = await store.nc.subscribe(self._inbox + ".*", cb=self._on_message,
                                             pending_msgs_limit=0, pending_bytes_limit=0)
        self._advisory = await store.nc.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{ns}.{self.durable}",
            queue=f"busd_dlq_{ns}_{self.name}", cb=self._on_max_deliveries)
        self.ready = True
        self.schedule()

    def cluster_settings(self) -> GroupSettings | None:
        """The settings the consumer carries (the creator's), once known."""
        text = ((self.info.get("config") or {}).get("metadata") or {}).get(SETTINGS_KEY)
        return GroupSettings.from_json(orjson.loads(text)) if text else None

    # -- what members call ----------------------------------------------------------------
    def join(self, member: Member) -> None:
        self.members.append(member)
        self.schedule()

    def leave(self, member: Member) -> None:
        """Its unacked events go back to the group at once (an immediate nak)."""
        if member not in self.members:
            return
        self.members.remove(member)
        for index in tuple(member.inflight):
            held = self.pending.get(index)
            if held is not None and held.member is member:
                self.store.send(held.reply, b"-NAK")
                self._forget(index)
        member.inflight.clear()
        self.schedule()

    def schedule(self) -> None:
        if not self._scheduled and not self.done:
            self._scheduled = True
            self.loop.call_soon(self._pull)

    def settle(self, event_id: bytes, action: str, delay: float = 0.0) -> None:
        """ack, nak (after `delay`), term (dead-letter now) or progress; an event this
        front-end does not hold (settled already, or redelivered elsewhere) is ignored."""
        index = self.by_id.get(event_id)
        held = None if index is None else self.pending.get(index)
        if held is None:
            return
        if action == "progress":
            self.store.send(held.reply, b"+WPI")
            held.due = self.loop.time() + self.settings.wait_after(held.deliveries)
            return
        self._forget(index)
        if action == "ack":
            self.counters.acked += 1
            self.store.send(held.reply, b"+ACK")
        elif action == "nak":
            self.store.send(held.reply, b"-NAK" if delay <= 0 else
                            b'-NAK {"delay":%d}' % _ns(delay))
        else:
            self._term(held)
        self.schedule()

    def close(self, reason: str) -> None:
        """The group is deleted (or shutdown): end every member's stream with `reason`."""
        self.done = True
        self._ticker.cancel()
        for member in tuple(self.members):
            member.fail(reason)
        self.members.clear()
        for sub in (self._sub, self._advisory):
            if sub is not None:
                self.store._spawn(_unsubscribe(sub))

    # -- delivery -----------------------------------------------------------------------
    def _room(self) -> int:
        return sum(max(0, m.max_inflight - len(m.inflight)) for m in self.members
                   if not m.paused)

    def _pull(self) -> None:
        """Ask the consumer for as many messages as the members here have room for."""
        self._scheduled = False
        if self.done or not self.ready:
            return
        wanted = self._room() - sum(pull[0] for pull in self._pulls.values())
        if wanted <= 0 or len(self._pulls) >= MAX_PULLS:
            return
        self._token += 1
        token = str(self._token)
        self._pulls[token] = [wanted, self.loop.time() + PULL_EXPIRES + 2.0]
        self.store.send(f"$JS.API.CONSUMER.MSG.NEXT.{self.namespace}.{self.durable}",
                        b'{"batch":%d,"expires":%d}' % (wanted, _ns(PULL_EXPIRES)),
                        f"{self._inbox}.{token}")

    async def _on_message(self, msg) -> None:
        headers = msg.headers
        if headers and "Status" in headers:  # 404/408/409 on the request's own subject
            if headers["Status"] != "100":
                self._pulls.pop(msg.subject.rpartition(".")[2], None)
                self.schedule()
            return
        # a message carries its own subject: it counts against the oldest request (the
        # consumer serves them in order)
        for token, pull in self._pulls.items():
            pull[0] -= 1
            if pull[0] <= 0:
                del self._pulls[token]
            break
        self._deliver(msg)
        self.schedule()

    def _deliver(self, msg) -> None:
        tokens = msg.reply.split(".")
        at = 2 if len(tokens) == 9 else 4  # $JS.ACK[.<domain>.<hash>].<stream>.<consumer>…
        deliveries, seq = int(tokens[at + 2]), int(tokens[at + 3])
        if msg.subject == self.settings.dead_letter:  # its own dead letters never come back
            self.store.send(msg.reply, b"+ACK")
            return
        member = self._member_with_room()
        if member is None:  # the member it was pulled for left meanwhile
            self.store.send(msg.reply, b"-NAK")
            return
        index = seq - 1
        if index in self.pending:  # redelivered (its ack_wait ran out here too)
            self._forget(index)
        record = msg.data
        held = Held(msg.reply, record, deliveries, member,
                    self.loop.time() + self.settings.wait_after(deliveries))
        self.pending[index] = held
        self.by_id[record_id(record)] = index
        member.inflight.add(index)
        if deliveries > 1:
            self.counters.redeliveries += 1
        member.send([with_deliveries(record, deliveries)])

    def _member_with_room(self) -> Member | None:
        """Round-robin over the members with room (a paused one too: it was pulled for)."""
        member, self._turn = next_with_room(self.members, self._turn, False)
        return member

    def _forget(self, index: int) -> None:
        held = self.pending.pop(index, None)
        if held is not None:
            held.member.inflight.discard(index)
            self.by_id.pop(record_id(held.record), None)

    def _tick(self) -> None:
        """Drop what JetStream will redeliver anyway (ack_wait over), stale pull
        requests; refresh the consumer info now and then."""
        now = self.loop.time()
        for index in [i for i, held in self.pending.items() if held.due <= now]:
            self._forget(index)
        for token in [t for t, pull in self._pulls.items() if pull[1] <= now]:
            del self._pulls[token]
        if self.ready and now - self._last_refresh >= REFRESH:
            self._last_refresh = now
            self.store._spawn(self._refresh())
        self.schedule()
        self._ticker = self.loop.call_later(TICK, self._tick)

    async def _refresh(self) -> None:
        try:
            info = await self.store._api(f"CONSUMER.INFO.{self.namespace}.{self.durable}",
                                         None, timeout=1.0)
            self._letters_ahead = await self._own_letters_ahead(info)
            self.info = info
        except Exception as exc:  # noqa: BLE001 - keep the last known figures
            if getattr(exc, "err_code", None) == ERR_CONSUMER_NOT_FOUND and not self.done:
                self.host.vanished(self)

    async def _own_letters_ahead(self, info: dict) -> int:
        """How many of the consumer's num_pending are the group's own dead letters (it
        acks them unseen when it gets there): at most LETTERS_AHEAD, so lag stays an
        upper bound."""
        settings = self.settings  # the creator's, once open
        # a pattern matching the whole namespace matches the group's own dead letters
        sees = Pattern(*(s.encode() for s in settings.subjects)).matches(
            settings.dead_letter.encode())
        if not sees or not info.get("num_pending"):
            return 0
        after = (info.get("delivered") or {}).get("stream_seq", 0)
        found = await self.store._direct_get(self.namespace, {
            "seq": after + 1, "next_by_subj": settings.dead_letter,
            "batch": LETTERS_AHEAD, "max_bytes": 1 << 20})
        return len(found)

    # -- dead letters ---------------------------------------------------------------------
    def _term(self, held: Held) -> None:
        def stored(ok: bool) -> None:
            if ok:
                self.counters.dead_letters += 1
                self.store.send(held.reply, b"+TERM")
            else:
                self.store.send(held.reply, b"-NAK")

        self.host.dead_letter(self, held.record, "term", held.deliveries, stored)

    async def _on_max_deliveries(self, msg) -> None:
        """An event reached max_deliver: store its dead letter (read back by sequence)."""
        advisory = orjson.loads(msg.data)
        seq, deliveries = int(advisory["stream_seq"]), int(advisory["deliveries"])
        self._forget(seq - 1)
        for _ in range(10):
            try:
                got = await self.store._direct_get(self.namespace, {"seq": seq, "batch": 1})
                break
            except Exception as exc:  # noqa: BLE001 - the cluster may be electing
                log.warning("dead letter: cannot read the event ns=%s group=%s seq=%d "
                            "error=%r", self.namespace, self.name, seq, exc)
                await asyncio.sleep(0.5)
        else:
            return
        if not got or got[0][0] != seq:
            log.warning("dead letter: the event is gone ns=%s group=%s seq=%d",
                        self.namespace, self.name, seq)
            return
        done = self.loop.create_future()
        self.host.dead_letter(self, got[0][1], "max_deliver", deliveries,
                              lambda ok: done.done() or done.set_result(ok))
        if await done:
            self.counters.dead_letters += 1

    # -- introspection --------------------------------------------------------------------
    def lag(self) -> int:
        return max(0, int(self.info.get("num_pending", 0)) - self._letters_ahead)

    def describe(self) -> dict:
        info = self.info
        ack_floor = (info.get("ack_floor") or {}).get("stream_seq", 0)
        delivered = (info.get("delivered") or {}).get("stream_seq", 0)
        counters = self.counters
        return {"namespace": self.namespace, "name": self.name,
                "subjects": list(self.settings.subjects),
                "created_at": self.settings.created_at, "settings": self.settings.shown(),
                "members": [member.describe() for member in self.members],
                "ack_floor": ack_floor, "cursor": delivered,
                "next_index": self.store.next_index(self.namespace),
                "pending": int(info.get("num_ack_pending", 0)),
                "acked": counters.acked, "lag": self.lag(),
                "redeliveries": counters.redeliveries,
                "dead_letters": counters.dead_letters, "skipped_by_retention": 0,
                "jetstream_consumer": self.durable}


async def _unsubscribe(sub) -> None:
    try:
        await sub.unsubscribe()
    except Exception:  # noqa: BLE001 - the connection may be gone
        pass


class JetStreamGroups(Groups):
    """The registry on `--store jetstream`: joins, GET and DELETE /groups as with the local
    store (join checks and dead letters are the local registry's); state is JetStream's."""

    def open(self, namespaces: tuple[str, ...]) -> int:
        """Learn the cluster's groups now and every REFRESH seconds."""
        self.loop = asyncio.get_running_loop()
        self._namespaces = namespaces
        self._refresher = self.loop.create_task(self._refresh_loop())
        return 0

    def close(self) -> None:
        self._refresher.cancel()
        for group in self.groups.values():
            group.done = True
            group._ticker.cancel()

    async def _refresh_loop(self) -> None:
        while True:
            for namespace in self._namespaces:
                try:
                    await self._learn(namespace)
                except Exception as exc:  # noqa: BLE001 - try again next time
                    log.warning("cannot list the groups ns=%s error=%r", namespace, exc)
            await asyncio.sleep(REFRESH)

    async def _learn(self, namespace: str) -> None:
        """Groups created by other front-ends (and gone ones) in this namespace.

        Gone means ready before the listing began and not in it: a group whose consumer is
        created while the listing is out (a join at start-up, say) is missing from it and
        alive, and was dropped, its members' streams ended, when any ready one counted."""
        ready_before = [group for (ns, _), group in self.groups.items()
                        if ns == namespace and group.ready]
        found: dict[str, GroupSettings] = {}
        offset = 0
        for _ in range(8):  # pages of 256: the groups and the front-ends' tail consumers
            page = await self.store._api(f"CONSUMER.LIST.{namespace}", {"offset": offset},
                                         timeout=2.0)
            for info in page.get("consumers") or []:
                text = ((info.get("config") or {}).get("metadata") or {}).get(SETTINGS_KEY)
                if text and info["name"].startswith(DURABLE_PREFIX):
                    settings = GroupSettings.from_json(orjson.loads(text))
                    found[settings.name] = settings
            offset += len(page.get("consumers") or [])
            if offset >= page.get("total", 0) or not page.get("consumers"):
                break
        for name, settings in found.items():
            if (namespace, name) not in self.groups:
                self._add(settings, None)
        for group in ready_before:
            if group.name not in found and self.groups.get((namespace, group.name)) is group:
                self.vanished(group)

    def _add(self, settings: GroupSettings, start_seq: int | None) -> JetStreamGroup:
        group = JetStreamGroup(settings, self.store, self)
        self.groups[settings.namespace, settings.name] = group

        async def opening() -> None:
            """Open it; joins wait for this, so the one that lost a race to create the
            group with other subjects gets its 409 instead of a stream."""
            refusal = None
            try:
                await group.open(start_seq)
            except Exception as exc:  # noqa: BLE001 - the joins waiting are told why
                log.error("group consumer not opened ns=%s group=%s error=%r",
                          settings.namespace, settings.name, exc)
                refusal = JoinRefused(503, f"cannot open the group's JetStream consumer: {exc}")
            else:
                theirs = group.cluster_settings()
                if theirs is not None and theirs.subjects != settings.subjects:
                    refusal = JoinRefused(409, f"group {settings.name} of namespace "
                                               f"{settings.namespace} subscribes to "
                                               f"{','.join(theirs.subjects)}, not "
                                               f"{','.join(settings.subjects)}: use another "
                                               f"group name")
                elif theirs is not None:
                    group.settings = theirs
            if refusal is not None:
                self._drop(group, refusal.reason)
            group.opened.set_result(refusal)

        self.store._spawn(opening())
        return group

    def opened(self, group: JetStreamGroup) -> asyncio.Future[JoinRefused | None]:
        return group.opened

    def _drop(self, group: JetStreamGroup, reason: str) -> None:
        if self.groups.get((group.namespace, group.name)) is group:
            del self.groups[group.namespace, group.name]
        group.close(reason)

    def vanished(self, group: JetStreamGroup) -> None:
        """Its consumer was deleted (by another front-end)."""
        self._drop(group, f"group {group.name} of namespace {group.namespace} was deleted")

    def create(self, namespace: str, name: str, subjects: tuple[str, ...], start: str,
               cursor: int, params: dict[str, str]) -> JetStreamGroup:
        settings = parse_settings(namespace, name, subjects, start, params,
                                  now_rfc3339().decode())
        if settings.backoff and 0 < settings.max_deliver <= len(settings.backoff):
            raise JoinRefused(400, f"max_deliver ({settings.max_deliver}) must be more than "
                                   f"the backoff steps ({len(settings.backoff)}) on JetStream")
        self.check_room(namespace)
        log.info("group created ns=%s group=%s subjects=%s start_seq=%d", namespace, name,
                 ",".join(subjects), cursor + 1)
        return self._add(settings, cursor + 1)

    def delete(self, namespace: str, name: str) -> dict | None:
        group = self.groups.pop((namespace, name), None)
        if group is None:
            return None
        shown = group.describe()
        group.close(f"group {name} of namespace {namespace} was deleted")
        self.store._spawn(self.store._delete_consumer(namespace, group.durable))
        log.info("group deleted ns=%s group=%s", namespace, name)
        return shown

    def after_commit(self, answer: Callable[[BaseException | None], None]) -> None:
        """JetStream keeps the state: a settle is answered once it is sent."""
        answer(None)

