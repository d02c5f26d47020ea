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

# A stored record is one JSON object that starts with its id, then its subject:
#     {"id":"<event id>","subject":"<subject>",...}
# An id holds no '"' or '\\' (id_problem), so both are read without parsing: the id runs
# from ID_AT to the next '"', the subject from 13 bytes later to the next '"'. busd's own
# ids are b"e_" + a 20-char xid (ID_LEN bytes, with its second at XID_AT); busd/_core.pxd
# declares the same offsets for Cython, tests/test_wire.py checks that the two agree.
RECORD_PREFIX = b'{"id":"'  # every record the server stores starts like this
ID_AT = 7  # the event id starts here
ID_LEN = 22  # of busd's own ids: b"e_" + an xid
ID_END = ID_AT + ID_LEN  # where busd's own ids end
XID_AT = ID_AT + 2  # record[XID_AT:ID_END] is the xid of busd's own ids
SUBJECT_AT = ID_END + len('","subject":"')  # where the subject starts after busd's own ids
MAX_ID_BYTES = 128  # of a free-form id (one the publisher chose)
INDEX_START = b"index:"  # start=index:<n> delivers from index n: how a client steps over a
#                         corrupt record (the `error` event names the n to use)
START_WORDS = (b"oldest", b"newest")  # start= values that are not ids
_INDEX_START = re.compile(r"index:([0-9]{1,18})")  # a plain decimal: no sign, fits an int64
_XID_ID = re.compile(rb"e_[0-9a-v]{19}[0g]")  # e_ + an xid rs/xid decodes (low 4 bits zero)
_FREE_FORM_ID = re.compile(rb'[!#-\[\]-~]([ !#-\[\]-~]*[!#-\[\]-~])?')  # length checked apart


def is_xid_id(event_id: bytes) -> bool:
    """True for ids of busd's own form, e_<xid>, which carry their second: the logs find
    them by time. Any other id is free-form, found through an index."""
    return _XID_ID.fullmatch(event_id) is not None


def id_problem(event_id: bytes) -> str | None:
    """Why a publisher's id cannot name an event, or None when it can (any e_<xid>, or a
    free-form id: 1-128 printable ASCII characters (ids travel in HTTP headers) without
    '"' or '\\', which records hold unescaped, no space at either end, which headers
    trim; e_ is kept for xids)."""
    shown = event_id.decode("utf-8", "replace")[:MAX_ID_BYTES]
    if _XID_ID.fullmatch(event_id):
        return None
    if not event_id:
        return "empty id"
    if len(event_id) > MAX_ID_BYTES:
        return f"id of {len(event_id)} bytes is longer than {MAX_ID_BYTES} bytes: {shown!r}..."
    if event_id.startswith(b"e_"):
        return (f"invalid id {shown!r}: an id starting with e_ must be e_ followed by a "
                f"20-character xid (other ids must not start with e_)")
    if event_id in START_WORDS or event_id.startswith(INDEX_START):
        return (f"invalid id {shown!r}: oldest, newest and index:… are start= values, "
                f"not ids")
    if _FREE_FORM_ID.fullmatch(event_id) is None:
        return (f"invalid id {shown!r}: ids are printable ASCII characters without '\"' or "
                f"'\\', and no space at either end")
    return None




def index_start(start: str) -> int | None:
    """The n of a well-formed `start=index:<n>`, or None: the one parser, so that the
    server, its groups and the SDK refuse the same values (`index:`, `index:-1`, 19 digits)."""
    match = _INDEX_START.fullmatch(start)
    return None if match is None else int(match.group(1))


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
