"""`bus restore`: put dumped events back with their ids, subjects, payloads, trace ids,
keys and created_at unchanged.

Every input line is checked and rebuilt into the server's stored form first (a bad line
stops the restore before anything is written). Offline (`--path`) the events are
appended to the data directory — which a running server must not hold: its lock is
refused — and events whose id the namespace already holds are skipped, so an
interrupted restore can simply be run again. Online (`--host`) they are published in
batches that carry their ids and created_at.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from busd.cli_datadir import Appender, namespaces_in, open_store, stored_record
from busd.cli_dump import DUMP_SUFFIX
from busd.cli_http import BusHttp, HttpError
from busd.cli_output import NO_PROGRESS, CommandError, UsageError, note, progress

ONLINE_BATCH_BYTES = 4 << 20
ONLINE_BATCH_EVENTS = 1000  # the server's --max-batch default


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


def restore_online(bus: BusHttp, files: list[Path]) -> int:
    """Online: publish in batches (one namespace per batch, as the API requires)."""
    counts = _check(files)
    health = bus.health()
    known = (health or {}).get("namespaces")
    if known is not None:
        missing = [ns for ns in counts if ns not in known]
        if missing:
            raise CommandError(f"namespace {', '.join(missing)} is not declared on {bus.url} "
                               f"(declared: {', '.join(known)}); start it with "
                               f"--namespaces including {', '.join(missing)}")
        for ns in counts:
            if known[ns].get("events"):
                note(f"warning: namespace {ns} on {bus.url} already holds "
                     f"{known[ns]['events']} events; restored events are added after them")
    stored = {ns: 0 for ns in counts}
    refused: list[str] = []
    batch: list[bytes] = []
    batch_ns, batch_bytes = None, 0
    with progress(sum(counts.values()), "restore") as bar:

        def send() -> None:
            nonlocal batch, batch_bytes
            if batch:
                stored[batch_ns] += _publish(bus, batch, refused)
                bar.update(len(batch))
                batch, batch_bytes = [], 0

        for ns, record in _records(files, NO_PROGRESS):
            alone = b'"response_subject":' in record  # the API takes these one at a time
            if alone or ns != batch_ns or batch_bytes + len(record) > ONLINE_BATCH_BYTES \
                    or len(batch) == ONLINE_BATCH_EVENTS:
                send()
                batch_ns = ns
            batch.append(record)
            batch_bytes += len(record)
            if alone:
                send()
        send()
    _summary(counts, stored, {})
    if refused:
        raise CommandError(f"{len(refused)} events were refused, the first: {refused[0]}")
    return 0


def _publish(bus: BusHttp, records: list[bytes], refused: list[str]) -> int:
    """Publish a batch (a lone event as itself: events with a response_subject cannot be
    batched); if it is refused as a whole (a key the server has seen: 409, or an
    event too large: 413), publish its events one by one and note the refused ones."""
    try:
        if len(records) == 1:
            bus.publish(records[0])
            return 1
        answer = bus.publish_batch(records)
    except HttpError as exc:
        if exc.status not in (409, 413):
            raise
    else:
        return answer.get("count", len(records))
    stored = 0
    for record in records:
        try:
            bus.publish(record)
            stored += 1
        except HttpError as exc:
            if exc.status not in (409, 413):
                raise
            hint = " (restart the target with --dup-size 0 while restoring)" \
                if exc.status == 409 else ""
            refused.append(f"{record[7:29].decode()}: {exc.reason}{hint}")
    return stored


def _summary(counts: dict[str, int], stored: dict[str, int], skipped: dict[str, int]) -> None:
    for ns in counts:
        note(f"restored namespace={ns} events={stored.get(ns, 0)} "
             f"already_present={skipped.get(ns, 0)} in_input={counts[ns]}")


