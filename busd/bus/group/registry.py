"""Every consumer group of the server: creating and joining, loading them at start-up,
committing their journals once per loop iteration, fsync by policy, deleting.

On disk, a group is two files under `<data dir>/.groups/<namespace>/`: `<name>.json` (its
settings, written once, synced, renamed into place) and `<name>.state` (its journal). The
registry batches every group changed in one loop iteration into one commit: one write(2)
per changed group; then the acks that changed them are answered (under --fsync always
after one shared fsync of those journals, in a worker thread).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

from busd._core import now_rfc3339, scan_body
from busd.bus.group.dispatcher import Group
from busd.bus.group.journal import Counters, Journal
from busd.bus.group.member import Member
from busd.bus.group.settings import GroupSettings, parse_settings
from busd.bus.publication import Publication
from busd.store.errors import PublishRefused
from busd.store.interface import Store
from busd.store.local.files import sync_dir

log = logging.getLogger("busd.bus.group.registry")

GROUPS_DIR = ".groups"
MAX_GROUPS_PER_NAMESPACE = 256
MAX_MEMBERS_PER_GROUP = 1024

Answer = Callable[[BaseException | None], None]


class JoinRefused(Exception):
    """A join that cannot be served: (status, reason)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Groups:
    """The groups of every namespace, by (namespace, name)."""

    def __init__(self, root: Path, store: Store, fanout, publish, fsync: str,
                 fsync_interval: float) -> None:
        """publish: the broker's publish (dead letters are ordinary events)."""
        self.root = Path(root) / GROUPS_DIR
        self.store = store
        self.fanout = fanout
        self.publish = publish
        self.fsync_always = fsync == "always"
        self.fsync_never = fsync == "never"
        self.fsync_interval = fsync_interval
        self.groups: dict[tuple[str, str], Group] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._changed: set[Group] = set()
        self._answers: list[Answer] = []
        self._commit_scheduled = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="busd-groups")
        self._syncing = False
        self._sync_waiting: list[tuple[list[Journal], list[Answer]]] = []
        self._interval_timer: asyncio.TimerHandle | None = None

    # -- start-up and shutdown --------------------------------------------------------------
    def open(self, namespaces: tuple[str, ...]) -> int:
        """Load every group of the declared namespaces; how many."""
        self.loop = asyncio.get_running_loop()
        for namespace in namespaces:
            folder = self.root / namespace
            if not folder.is_dir():
                continue
            for meta in sorted(folder.glob("*.json")):
                self._load(_saved_settings(meta))
        if not self.fsync_never and not self.fsync_always:
            self._interval_timer = self.loop.call_later(self.fsync_interval, self._interval)
        return len(self.groups)

    def _load(self, settings: GroupSettings) -> Group:
        journal = Journal(self._folder(settings.namespace) / f"{settings.name}.state")
        counters, pending = journal.load()
        head = self.store.next_index(settings.namespace)
        if counters.cursor > head:
            pending = self._back_to_head(settings, journal, counters, pending, head)
        group = Group(settings, journal, self.store, self, counters, pending)
        self.groups[settings.namespace, settings.name] = group
        log.info("group loaded ns=%s group=%s cursor=%d pending=%d", settings.namespace,
                 settings.name, counters.cursor, len(pending))
        return group

    def _back_to_head(self, settings: GroupSettings, journal: Journal, counters: Counters,
                      pending: dict[int, int], head: int) -> dict[int, int]:
        """The log lost events the group was delivered (the log and the journal are fsynced
        apart: a power loss under --fsync interval or never): resume at the log's head, or
        the next events published, at the lost ones' indexes, would be skipped or taken for
        redeliveries. Moves the cursor, rewrites the journal so that its lost deliveries
        stay lost, and returns the pending events that remain."""
        kept = {index: n for index, n in pending.items() if index < head}
        log.warning("group state is ahead of its log ns=%s group=%s cursor=%d head=%d "
                    "lost_pending=%d: the group resumes at the head", settings.namespace,
                    settings.name, counters.cursor, head, len(pending) - len(kept))
        counters.cursor = head
        try:
            journal.rewrite(counters, kept.items(), not self.fsync_never)
        except OSError as exc:
            log.error("group state not rewritten ns=%s group=%s error=%r", settings.namespace,
                      settings.name, exc)
        return kept

    def close(self) -> None:
        """Shutdown: commit and sync what is left, close the files."""
        if self._interval_timer is not None:
            self._interval_timer.cancel()
        self._commit()
        self._executor.shutdown(wait=True)
        for group in self.groups.values():
            if group.journal.dirty and not self.fsync_never:
                group.journal.sync()
            group.journal.close()

    def _folder(self, namespace: str) -> Path:
        return self.root / namespace

    # -- join, inspect, delete ---------------------------------------------------------------
    def find(self, namespace: str, name: str) -> Group | None:
        return self.groups.get((namespace, name))

    def create(self, namespace: str, name: str, subjects: tuple[str, ...], start: str,
               cursor: int, params: dict[str, str]) -> Group:
        """A new group whose cursor is `cursor` (raises SettingsError, JoinRefused)."""
        settings = parse_settings(namespace, name, subjects, start, params,
                                  now_rfc3339().decode())
        self.check_room(namespace)
        folder = self._folder(namespace)
        folder.mkdir(parents=True, exist_ok=True)
        meta = folder / f"{name}.json"
        temp = meta.with_suffix(".tmp")
        temp.write_bytes(orjson.dumps(settings.to_json()))
        (folder / f"{name}.state").unlink(missing_ok=True)  # a deleted group's leftovers
        group = self._load(settings)
        group.counters.cursor = cursor
        group.journal.commit(group.counters, 0, list, False, False)
        if not self.fsync_never:
            group.journal.sync()
            with open(temp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(temp, meta)
        if not self.fsync_never:
            sync_dir(folder)
        log.info("group created ns=%s group=%s subjects=%s cursor=%d", namespace, name,
                 ",".join(subjects), cursor)
        return group

    def opened(self, group: Group) -> asyncio.Future[JoinRefused | None] | None:
        """While a store opens the group (JetStream finds or makes its consumer): a future
        of None, or of the JoinRefused a join gets; None: ready (a local group always)."""
        return None

    def check_room(self, namespace: str) -> None:
        """Raises JoinRefused when the namespace has as many groups as it may."""
        if sum(1 for ns, _ in self.groups if ns == namespace) >= MAX_GROUPS_PER_NAMESPACE:
            raise JoinRefused(409, f"namespace {namespace} has {MAX_GROUPS_PER_NAMESPACE} "
                                   "groups, the most it may: delete one first")

    def join(self, group: Group, subjects: tuple[str, ...], sink, consumer_id: bytes,
             max_inflight: int, owner: str | None) -> Member:
        if tuple(sorted(subjects)) != tuple(sorted(group.settings.subjects)):
            raise JoinRefused(409, f"group {group.name} of namespace {group.namespace} "
                                   f"subscribes to {','.join(group.settings.subjects)}, not "
                                   f"{','.join(subjects)}: use another group name")
        if len(group.members) >= MAX_MEMBERS_PER_GROUP:
            raise JoinRefused(409, f"group {group.name} has {MAX_MEMBERS_PER_GROUP} members, "
                                   "the most it may")
        return Member(group, sink, consumer_id, max_inflight, owner, self.fanout.consumers)

    def describe(self, namespaces: tuple[str, ...], namespace: str | None = None,
                 name: str | None = None) -> dict:
        shown = {ns: {} for ns in namespaces if namespace in (None, ns)}
        for (ns, group_name), group in sorted(self.groups.items()):
            if ns in shown and name in (None, group_name):
                shown[ns][group_name] = group.describe()
        return shown

    def delete(self, namespace: str, name: str) -> dict | None:
        """Remove a group and its files; what it was, or None if there is none."""
        group = self.groups.pop((namespace, name), None)
        if group is None:
            return None
        shown = group.describe()
        group.close(f"group {name} of namespace {namespace} was deleted")
        self._changed.discard(group)
        self.fanout.waiting[namespace].discard(group)
        group.journal.close()
        folder = self._folder(namespace)
        (folder / f"{name}.json").unlink(missing_ok=True)
        (folder / f"{name}.state").unlink(missing_ok=True)
        if not self.fsync_never:
            sync_dir(folder)
        log.info("group deleted ns=%s group=%s", namespace, name)
        return shown

    # -- Host (what groups ask) ----------------------------------------------------------------
    def changed(self, group: Group) -> None:
        self._changed.add(group)
        if not self._commit_scheduled:
            self._commit_scheduled = True
            self.loop.call_soon(self._commit)

    def wait_for_append(self, group: Group) -> None:
        self.fanout.wait_for_append(group)

    def dead_letter(self, group: Group, record: bytes, reason: str, deliveries: int,
                    done: Callable[[bool], None]) -> None:
        """Publish the dead letter: the original record, why, and how often it went out."""
        body = orjson.dumps({"subject": group.settings.dead_letter,
                             "payload": {"group": group.name, "reason": reason,
                                         "deliveries": deliveries, "event": "\0"}})
        body = body.replace(b'"\\u0000"', record)
        _, events = scan_body(body, 1)

        stored = _DeadLetter(group, done)
        try:
            self.publish(events, False, stored)
        except PublishRefused as exc:
            stored.answer(None, None, exc)

    # -- answering after the commit ---------------------------------------------------------
    def after_commit(self, answer: Answer) -> None:
        """Call `answer` once what was settled so far is written (and synced, by policy)."""
        if self._commit_scheduled:
            self._answers.append(answer)
        else:
            answer(None)

    def _commit(self) -> None:
        self._commit_scheduled = False
        changed, self._changed = self._changed, set()
        answers, self._answers = self._answers, []
        error = None
        for group in changed:
            if group.done:
                continue
            try:
                group.journal.commit(group.counters, len(group.pending), group.snapshot,
                                     self.fsync_always, not self._syncing)
            except OSError as exc:
                log.error("group state not written ns=%s group=%s error=%r",
                          group.namespace, group.name, exc)
                error = error or exc
        if self.fsync_always and error is None and changed:
            self._sync([g.journal for g in changed if not g.done], answers)
            return
        for answer in answers:
            answer(error)

    def _sync(self, journals: list[Journal], answers: list[Answer]) -> None:
        """fsync these journals in the worker thread, then answer; overlapping calls wait
        and share the next one."""
        if self._syncing:
            self._sync_waiting.append((journals, answers))
            return
        self._syncing = True

        def run() -> None:
            for journal in journals:
                if journal.dirty:
                    journal.sync()

        def finished(future: asyncio.Future) -> None:
            self._syncing = False
            error = future.exception()
            if error is not None:
                log.error("group state not synced error=%r", error)
            for answer in answers:
                answer(error)
            if self._sync_waiting:
                waiting, self._sync_waiting = self._sync_waiting, []
                self._sync(list({id(j): j for js, _ in waiting for j in js}.values()),
                           [a for _, answers_ in waiting for a in answers_])

        self.loop.run_in_executor(self._executor, run).add_done_callback(finished)

    def _interval(self) -> None:
        """--fsync interval: sync the journals written since the last time."""
        dirty = [g.journal for g in self.groups.values() if g.journal.dirty]
        if dirty and not self._syncing:
            self._sync(dirty, [])
        self._interval_timer = self.loop.call_later(self.fsync_interval, self._interval)


class DamagedGroupError(Exception):
    """A group's saved settings do not read back (a power loss under --fsync never, a
    damaged disk): start-up stops rather than drop the group behind the operator's back."""


def _saved_settings(meta: Path) -> GroupSettings:
    try:
        return GroupSettings.from_json(orjson.loads(meta.read_bytes()))
    except (ValueError, KeyError, TypeError) as exc:  # orjson's errors are ValueErrors
        raise DamagedGroupError(
            f"group settings {meta} are damaged ({exc}): restore the file, or delete it and "
            f"{meta.with_suffix('.state').name} beside it to drop the group") from exc


class _DeadLetter(Publication):
    """A dead letter in flight: `done(stored)` once its outcome is known."""

    def __init__(self, group: Group, done: Callable[[bool], None]) -> None:
        self.group = group
        self.done = done

    def answer(self, ids: list[bytes] | None, stamps: list[bytes] | None,
               outcome: int | PublishRefused) -> None:
        if isinstance(outcome, PublishRefused):
            log.error("dead letter not stored ns=%s group=%s reason=%r", self.group.namespace,
                      self.group.name, outcome.reason)
        self.done(not isinstance(outcome, PublishRefused))
