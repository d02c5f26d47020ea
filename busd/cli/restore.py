"""`bus restore`: put dumped events back with their ids, subjects, payloads, trace ids,
keys and created_at unchanged.

Every input line is checked and rebuilt into the server's stored form first (a bad line
stops the restore before anything is written). Offline (`--path`) the events are
appended to the data directory — which a running server must not hold: its lock is
refused — and events whose id the namespace already holds are skipped, so an
interrupted restore can simply be run again. Online (`--host`) they are published in
batches that carry their ids and created_at; busd on its local store refuses an id the
namespace holds (409, listing them), and those events are counted as already present,
so running it again stores nothing twice either.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from busd._core import record_id
from busd.cli.datadir import Appender, namespaces_in, open_store, stored_record
from busd.cli.dump import DUMP_SUFFIX
from busd.cli.output import NO_PROGRESS, CommandError, UsageError, note, progress, reason
from busd.client import BusError, Client

ONLINE_BATCH_BYTES = 4 << 20
ONLINE_BATCH_EVENTS = 1000  # the server's --max-batch default
_EVENT_ID = re.compile(r'"([^"]+)"')  # the ids a 409 lists, each quoted (ids hold no '"')


def input_files(input_file: str | None, input_dir: str | None) -> list[Path]:
    """The dump files to read: one, or every `*.jsonl`/`*.json` of a directory by name."""
    if input_file is not None:
        path = Path(input_file)
        if not path.is_file():
            raise UsageError(f"--input: no such file {path}")
        return [path]
    directory = Path(input_dir)  # type: ignore[arg-type]
    if not directory.is_dir():
        raise UsageError(f"--input-dir: no such directory {directory}")
    files = sorted(p for p in directory.iterdir()
                   if p.is_file() and p.suffix in (DUMP_SUFFIX, ".json"))
    if not files:
        raise UsageError(f"--input-dir: no {DUMP_SUFFIX} files in {directory}")
    return files


def _records(files: list[Path], bar) -> Iterator[tuple[str, bytes]]:
    """(namespace, stored record) for every non-blank line, in file order."""
    for path in files:
        try:
            fh = open(path, "rb")
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc}") from None
        with fh:
            for number, line in enumerate(fh, 1):
                bar.update(len(line))
                line = line.strip()
                if line:
                    yield stored_record(line, f"{path}:{number}")


def _check(files: list[Path]) -> dict[str, int]:
    """Validate every line before writing anything; events per namespace."""
    counts: dict[str, int] = {}
    with progress(sum(p.stat().st_size for p in files), "check", unit="B",
                  unit_scale=True) as bar:
        for ns, _ in _records(files, bar):
            counts[ns] = counts.get(ns, 0) + 1
    if not counts:
        raise CommandError("nothing to restore: the input holds no events")
    return counts


def restore(path: Path, files: list[Path], secret_key: str | None = None) -> int:
    """Offline: append to the data directory's logs."""
    counts = _check(files)
    namespaces = sorted(set(namespaces_in(path)) | set(counts))
    store = open_store(path, namespaces, secret_key)
    try:
        appenders = {ns: Appender(store, ns) for ns in counts}
        with progress(sum(counts.values()), "restore") as bar:
            for ns, record in _records(files, NO_PROGRESS):
                appenders[ns].add(record)
                bar.update()
        for appender in appenders.values():
            appender.flush()
    finally:
        store.close()
    _summary(counts, {ns: a.appended for ns, a in appenders.items()},
             {ns: a.skipped for ns, a in appenders.items()})
    return 0


def restore_online(client: Client, files: list[Path]) -> int:
    """Online: publish in batches (one namespace per batch, as the API requires). Events
    whose id the bus already holds are skipped: busd (local store) refuses them with a
    409 naming the ids."""
    counts = _check(files)
    health = client.health()
    known = (health or {}).get("namespaces")
    if known is not None:
        missing = [ns for ns in counts if ns not in known]
        if missing:
            raise CommandError(f"namespace {', '.join(missing)} is not declared on {client.url} "
                               f"(declared: {', '.join(known)}); start it with "
                               f"--namespaces including {', '.join(missing)}")
        for ns in counts:
            if known[ns].get("events"):
                note(f"warning: namespace {ns} on {client.url} already holds "
                     f"{known[ns]['events']} events; restored events are added after them "
                     "(a bus on --store local refuses ids it holds: those are skipped)")
    stored = {ns: 0 for ns in counts}
    present = {ns: 0 for ns in counts}
    refused: list[str] = []
    batch: list[bytes] = []
    batch_ids: set[bytes] = set()
    batch_ns, batch_bytes = None, 0
    with progress(sum(counts.values()), "restore") as bar:

        def send() -> None:
            nonlocal batch, batch_bytes
            if batch:
                sent, held = _publish(client, batch, refused)
                stored[batch_ns] += sent
                present[batch_ns] += held
                bar.update(len(batch))
                batch, batch_bytes = [], 0
                batch_ids.clear()

        for ns, record in _records(files, NO_PROGRESS):
            alone = b'"response_subject":' in record  # the API takes these one at a time
            if alone or ns != batch_ns or batch_bytes + len(record) > ONLINE_BATCH_BYTES \
                    or len(batch) == ONLINE_BATCH_EVENTS:
                send()
                batch_ns = ns
            event_id = record_id(record)
            if event_id in batch_ids:  # the input repeats it: the first copy is the event
                present[ns] += 1
                bar.update()
                continue
            batch.append(record)
            batch_ids.add(event_id)
            batch_bytes += len(record)
            if alone:
                send()
        send()
    _summary(counts, stored, present)
    if refused:
        raise CommandError(f"{len(refused)} events were refused, the first: {refused[0]}")
    return 0


def _publish(client: Client, records: list[bytes], refused: list[str]) -> tuple[int, int]:
    """Publish a batch (a lone event as itself: events with a response_subject cannot be
    batched); (events stored, events the bus already held). Those the bus holds are left
    out and the rest sent again; a batch refused for another reason (a key the server has
    seen: 409, an event too large: 413) is published one by one, noting the refused."""
    held = 0
    while True:
        try:
            if len(records) == 1:
                client.put_raw(records[0])
                return 1, held
            return client.put_batch_raw(records).count, held
        except BusError as exc:
            if exc.status not in (409, 413):
                raise
            ids = _held_ids(exc, records)
            if not ids and len(records) == 1:
                refused.append(_refusal(records[0], exc))
                return 0, held
        if not ids:
            break
        records = [record for record in records if record_id(record) not in ids]
        held += len(ids)
        if not records:
            return 0, held
    stored = 0
    for record in records:
        try:
            client.put_raw(record)
            stored += 1
        except BusError as exc:
            if exc.status not in (409, 413):
                raise
            if _held_ids(exc, [record]):
                held += 1
            else:
                refused.append(_refusal(record, exc))
    return stored, held


def _refusal(record: bytes, exc: BusError) -> str:
    hint = " (restart the target with --dup-size 0 while restoring)" \
        if exc.status == 409 else ""
    return f"{record_id(record).decode()}: {reason(exc)}{hint}"


def _held_ids(exc: BusError, records: list[bytes]) -> set[bytes]:
    """The ids of `records` that a 409 says the namespace already holds (busd lists them;
    a 409 for a dedup key lists none)."""
    if exc.status != 409:
        return set()
    named = {match.encode() for match in _EVENT_ID.findall(exc.reason)}
    return named.intersection(map(record_id, records))


def _summary(counts: dict[str, int], stored: dict[str, int], skipped: dict[str, int]) -> None:
    for ns in counts:
        note(f"restored namespace={ns} events={stored.get(ns, 0)} "
             f"already_present={skipped.get(ns, 0)} in_input={counts[ns]}")
    note(f"{sum(stored.values())} restored, {sum(skipped.values())} already present")
