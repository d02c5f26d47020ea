"""`bus copy`: copy events between data directories, or between two namespaces of one.

`--from DIR --to DIR` copies whole namespaces (all, or `--namespaces`) from one data
directory into another, record for record; the source is read with `--from-secret-key`
and the copy written with `--to-secret-key`, so differing keys re-encrypt it (and no
key on one side encrypts or decrypts it). `--dir DIR --src NS --dst NS` is Bus's form:
the events of namespace NS are appended to another namespace of the same directory, each
subject's first segment renamed (`src.a.b` → `dst.a.b`), everything else kept.

Both skip the ids listed in `--skip-ids` and the ids the destination already holds, so
a copy that was interrupted can be run again. Neither directory may be held by a server.
"""

from __future__ import annotations

from pathlib import Path

from busd._core import record_id
from busd.cli.datadir import Appender, Reader, namespaces_in, open_store, select_namespaces
from busd.cli.output import CommandError, UsageError, note, progress
from busd.store.local.log import LogError
from busd.wire import ID_AT, id_problem


def parse_skip_ids(text: str | None) -> frozenset[bytes]:
    """`e_…,order-1` → a set of ids; each must be an event id."""
    if not text:
        return frozenset()
    ids = [i.strip() for i in text.split(",") if i.strip()]
    for event_id in ids:
        problem = id_problem(event_id.encode())
        if problem is not None:
            raise UsageError(f"--skip-ids: {problem}")
    return frozenset(i.encode() for i in ids)


def copy_dirs(source: Path, target: Path, namespaces: list[str] | None,
              skip_ids: frozenset[bytes] = frozenset(), from_secret_key: str | None = None,
              to_secret_key: str | None = None) -> int:
    if source.resolve() == target.resolve():
        raise UsageError("--to: must differ from --from (to copy one namespace into another "
                         "of the same directory use --dir, --src and --dst)")
    names = select_namespaces(source, namespaces, "--namespaces", "--from")
    with Reader(source, names, from_secret_key, key_flag="--from-secret-key") as reader:
        store = open_store(target, sorted(set(namespaces_in(target)) | set(names)),
                           to_secret_key, flag="--to", key_flag="--to-secret-key")
        try:
            appenders = {ns: Appender(store, ns, skip_ids) for ns in names}
            with progress(sum(reader.count(ns) for ns in names), "copy") as bar:
                for ns in names:
                    appender = appenders[ns]
                    for record in reader.records(ns):
                        appender.add(record)
                        bar.update()
                    appender.flush()
        finally:
            store.close()
    for ns, appender in appenders.items():
        note(f"copied namespace={ns} events={appender.appended} skipped={appender.skipped}")
    return 0


def rename_namespace(record: bytes, src: bytes, dst: bytes) -> bytes:
    """The record with its subject's first segment `src` replaced by `dst` (the subject
    starts right after the id; subjects hold no characters that JSON escapes)."""
    event_id = record_id(record)
    start = ID_AT + len(event_id) + len('","subject":"')
    end = start + len(src)
    if record[start:end] != src or record[end:end + 1] != b".":
        raise CommandError(f"record {event_id.decode(errors='replace')} is not in "
                           f"namespace {src.decode()}")
    return record[:start] + dst + record[end:]


def copy_namespace(directory: Path, src: str, dst: str,
                   skip_ids: frozenset[bytes] = frozenset(),
                   secret_key: str | None = None) -> int:
    if src == dst:
        raise UsageError("--dst: must differ from --src")
    select_namespaces(directory, [src], "--src", "--dir")
    store = open_store(directory, sorted(set(namespaces_in(directory)) | {dst}), secret_key,
                       flag="--dir")
    try:
        appender = Appender(store, dst, skip_ids)
        nslog = store.log(src)
        first, end = nslog.first_index, nslog.next_index
        src_b, dst_b = src.encode(), dst.encode()
        with progress(end - first, "copy") as bar:
            index = first
            while index < end:  # the end is fixed first: what we append to dst is not read
                try:
                    records = store.read(src, index, 4 << 20)
                except LogError as exc:  # CorruptRecordError names its segment and offset
                    raise CommandError(f"namespace {src}: {exc}") from None
                if not records:
                    break
                records = records[:end - index]
                index += len(records)
                for record in records:
                    appender.add(rename_namespace(record, src_b, dst_b))
                bar.update(len(records))
        appender.flush()
    finally:
        store.close()
    note(f"copied namespace={src} to={dst} events={appender.appended} "
         f"skipped={appender.skipped}")
    return 0
