"""`bus dump`: every event of whole namespaces as JSON lines, exactly as stored.

Offline (`--path`) it reads the data directory, holding its lock so no server writes
meanwhile; online (`--host`) it subscribes to `<namespace>.>` from the oldest event and
stops at the number of events /healthz reported when it began (against a server without
/healthz, such as Go Bus, when the stream has been idle for a moment). Each line is one
stored record (id, subject, trace_id, key, response_subject, created_at, payload);
`bus restore` puts them back unchanged. A stream that drops mid-way is resumed after the
last event written (the SDK reconnects with `Last-Event-ID`).

Files are written to `<name>.partial` and renamed when complete, so a dump that failed
half-way never looks like a finished one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from busd.cli.datadir import Reader, select_namespaces
from busd.cli.output import CommandError, UsageError, bus_error, note, progress
from busd.client import Client, SubscriptionError

DUMP_SUFFIX = ".jsonl"
IDLE_SECONDS = 2.0  # online, without /healthz: the stream is complete after this much quiet
STALL_SECONDS = 60.0  # online, with /healthz: no event for this long, the stream stalled


@contextmanager
def open_output(path: str | Path) -> Iterator[BinaryIO]:
    """A file to write a dump to (`-` is stdout), renamed into place only on success."""
    if str(path) == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        fh = open(partial, "wb")
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc}") from None
    try:
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _write(records: Iterable[bytes], fh: BinaryIO, bar) -> int:
    n = 0
    for record in records:
        fh.write(record + b"\n")
        n += 1
        bar.update()
    return n


def _targets(namespaces: list[str], output: str | None, output_dir: str | None):
    """[(file, [namespaces written to it])]: one file, or one `<ns>.jsonl` per namespace."""
    if output is not None:
        return [(output, namespaces)]
    directory = Path(output_dir)  # type: ignore[arg-type]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--output-dir: cannot create {directory}: {exc}") from None
    return [(directory / f"{ns}{DUMP_SUFFIX}", [ns]) for ns in namespaces]


def dump(path: Path, namespaces: list[str] | None, output: str | None,
         output_dir: str | None, secret_key: str | None = None) -> int:
    """Offline: read the data directory (which no server may hold meanwhile)."""
    names = select_namespaces(path, namespaces, "--namespaces")
    written = 0
    with Reader(path, names, secret_key, lock=True) as reader:
        total = sum(reader.count(ns) for ns in names)
        with progress(total, "dump") as bar:
            for target, group in _targets(names, output, output_dir):
                with open_output(target) as fh:
                    for ns in group:
                        written += _write(reader.records(ns), fh, bar)
    note(f"dumped events={written} namespaces={','.join(names)} "
         f"to={output if output is not None else output_dir}")
    return 0


def dump_online(client: Client, namespaces: list[str] | None, output: str | None,
                output_dir: str | None) -> int:
    """Online: stream each namespace from its oldest event."""
    health = client.health()
    known = (health or {}).get("namespaces")
    if namespaces is None:
        if not known:
            raise UsageError(f"--namespaces: {client.url} does not list its namespaces "
                             "(/healthz); name them with --namespaces a,b")
        namespaces = list(known)
    elif known is not None:
        missing = [ns for ns in namespaces if ns not in known]
        if missing:
            raise UsageError(f"--namespaces: {', '.join(missing)} not declared on {client.url} "
                             f"(declared: {', '.join(known)})")
    counts = {ns: known[ns]["events"] for ns in namespaces} if known is not None else None
    total = sum(counts.values()) if counts is not None else None
    written = 0
    with progress(total, "dump") as bar:
        for target, group in _targets(namespaces, output, output_dir):
            with open_output(target) as fh:
                for ns in group:
                    expected = counts[ns] if counts is not None else None
                    written += _write(_stream(client, ns, expected), fh, bar)
    note(f"dumped events={written} namespaces={','.join(namespaces)} "
         f"to={output if output is not None else output_dir}")
    return 0


def _stream(client: Client, ns: str, expected: int | None) -> Iterator[bytes]:
    """The namespace's records from the oldest: `expected` of them, or until idle."""
    if expected == 0:
        return
    got = 0
    idle = STALL_SECONDS if expected is not None else IDLE_SECONDS
    try:
        with client.get(f"{ns}.>", start="oldest", idle_timeout=idle) as events:
            for event in events:
                yield event.raw
                got += 1
                if got == expected:
                    return
    except SubscriptionError as exc:
        raise CommandError(f"namespace {ns}: {bus_error(exc)}") from None
    if expected is not None:
        raise CommandError(f"namespace {ns}: the stream stalled after {got} of "
                           f"{expected} events")
