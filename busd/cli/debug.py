"""`bus debug`: look inside a data directory without a server.

Prints every retained event as one JSON line on stdout, then totals on stderr; with
`--verify` it checks every record's CRC (and every segment's header and tail) instead,
and fails naming the first bad record's namespace, segment and offset. Read-only: it
changes nothing on disk, so it may be pointed at a directory a server is using.
"""

from __future__ import annotations

import sys
from pathlib import Path

from busd.cli.datadir import Reader, select_namespaces
from busd.cli.output import CommandError, note, progress


def debug(path: Path, namespace: str | None = None, verify: bool = False,
          secret_key: str | None = None) -> int:
    namespaces = select_namespaces(path, [namespace] if namespace else None, "--namespace")
    with Reader(path, namespaces, secret_key, lock=False) as reader:
        if verify:
            problems = _verify(reader)
        else:
            problems = []
            _print_events(reader, problems)
        _totals(reader)
    if problems:
        for line in problems[1:]:
            note(f"also: {line}")
        raise CommandError(problems[0] + (f" ({len(problems) - 1} more problems above)"
                                          if len(problems) > 1 else ""))
    if verify:
        note(f"verified namespaces={len(namespaces)}: every record's CRC is good")
    return 0


def _print_events(reader: Reader, problems: list[str]) -> None:
    out = sys.stdout.buffer

    def corrupt(exc) -> None:
        problems.append(f"corrupt record namespace={ns} segment={exc.segment_path} "
                        f"index={exc.index} offset={exc.offset}")
        note(f"skipping {problems[-1]}")

    for ns in reader.namespaces:
        for record in reader.records(ns, skip_corrupt=True, on_corrupt=corrupt):
            out.write(record + b"\n")
    out.flush()


def _verify(reader: Reader) -> list[str]:
    """Every problem found, in namespace and segment order; [] when all is well."""
    total = sum(nslog.bytes for nslog in reader.logs.values())
    problems = []
    with progress(total, "verify", unit="B", unit_scale=True) as bar:
        for ns, nslog in reader.logs.items():
            for line in nslog.verify():
                segment, _, problem = line.partition(": ")
                problems.append(f"{problem} namespace={ns} segment={segment}")
            bar.update(nslog.bytes)
    return problems


def _totals(reader: Reader) -> None:
    events = size = segments = 0
    for ns, nslog in reader.logs.items():
        note(f"namespace={ns} events={nslog.count} bytes={nslog.bytes} "
             f"segments={nslog.segments} first_index={nslog.first_index} "
             f"next_index={nslog.next_index}")
        events += nslog.count
        size += nslog.bytes
        segments += nslog.segments
    note(f"total namespaces={len(reader.logs)} events={events} bytes={size} "
         f"segments={segments}")
