"""Facts of busd's wire and record format that the server, the stores, the CLI and the SDK
all rely on: one definition each, importable without the server (the SDK uses it).
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson

INBOX_NAMESPACE = "_bus_"  # subjects under it are inboxes: routed in memory, never stored
INBOX_PREFIX = INBOX_NAMESPACE + "."
ZERO_TIME = b"0001-01-01T00:00:00Z"  # Go's zero time.Time: the SDK's created_at when unset

# A stored record is one JSON object in a fixed layout (busd._core.make_record):
#     {"id":"e_<20-char xid>","subject":"<subject>",...}
# so its id and subject are read at fixed offsets. busd/_core.pxd declares the same offsets
# for the Cython modules; tests/test_wire.py checks that the two agree.
RECORD_PREFIX = b'{"id":"e_'  # every record the server stores starts like this
ID_AT = 7  # record[ID_AT:ID_END] is the event id: b"e_" + a 20-char xid
ID_LEN = 22
ID_END = ID_AT + ID_LEN
XID_AT = ID_AT + 2  # record[XID_AT:ID_END] is the xid
SUBJECT_AT = ID_END + len('","subject":"')  # the subject runs from here to the next '"'



def loads(data: bytes | str) -> Any:
    """Parse JSON text: with orjson, or with the standard library for the one thing JSON
    allows that orjson refuses, lone-surrogate escapes (`"\\ud800"`, RFC 8259 §8.2), which
    busd stores as sent, as Bus does. Raises ValueError for anything that is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        import json

        return json.loads(data, parse_constant=_not_json)


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # the stdlib's NaN, Infinity, -Infinity


_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"  # ASCII digits: no sign, exponent, nan or inf
_SECONDS_RE = re.compile(_NUMBER)
_DURATION_RE = re.compile(rf"({_NUMBER})(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Parse a Go-style duration (`500ms`, `5s`, `1m30s`, `0`) or plain seconds into seconds.

    Strict, because its values reach timers: no surrounding space or control characters
    (`5s\\n`), no sign or exponent, nothing non-finite (`nan`, `inf`, 400 digits).
    """
    if not text:
        raise ValueError("empty duration")
    if _SECONDS_RE.fullmatch(text):
        total = float(text)  # bare number: seconds
    else:
        total, pos = 0.0, 0
        for match in _DURATION_RE.finditer(text):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
            pos = match.end()
        if pos != len(text):
            raise ValueError(f"invalid duration {text!r} (examples: 500ms, 5s, 1m30s)")
    if not math.isfinite(total):
        raise ValueError(f"duration {text!r} is too large")
    return total
