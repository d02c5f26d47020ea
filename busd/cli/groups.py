"""`bus groups`: the consumer groups of a bus, as a table on a terminal or as JSON."""

from __future__ import annotations

import sys

import orjson

from busd.cli.output import CommandError, note
from busd.client import Client

COLUMNS = ("namespace", "group", "subjects", "members", "pending", "lag", "ack_floor",
           "redeliveries", "dead_letters")


def show(client: Client, namespace: str | None, name: str | None, as_json: bool) -> int:
    shown = client.groups(namespace, name)
    if as_json or not sys.stdout.isatty():
        sys.stdout.buffer.write(orjson.dumps(shown, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    rows = [COLUMNS] + [
        (ns, group, ",".join(state["subjects"]), str(len(state["members"])),
         str(state["pending"]), str(state["lag"]), str(state["ack_floor"]),
         str(state["redeliveries"]), str(state["dead_letters"]))
        for ns, groups in shown.items() for group, state in groups.items()]
    widths = [max(len(row[k]) for row in rows) for k in range(len(COLUMNS))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())
    return 0


def delete(client: Client, namespace: str | None, name: str | None) -> int:
    if not namespace or not name:
        raise CommandError("--delete needs --namespace and --name")
    deleted = client.delete_group(namespace, name)
    note(f"deleted group {name} of namespace {namespace} (acked={deleted['acked']}, "
         f"pending={deleted['pending']})")
    return 0
