"""Plain-Python reference implementations of busd._core, for property tests.

Written for clarity, not speed: subjects via split(), JSON validity via the json
module, records by concatenation. Public names mirror busd._core.
"""

from __future__ import annotations

import base64
import calendar
import datetime as _dt
import json
import re
import unicodedata

MAX_DEPTH = 512
XID_ALPHABET = b"0123456789abcdefghijklmnopqrstuv"
TOKEN_RULE = ("a token is any UTF-8 text without whitespace, control characters, "
              "'\"' or '\\'")

# --------------------------------------------------------------------------- subjects


def show(s: bytes) -> str:
    cut = len(s) > 100
    text = s[:100].decode("utf-8", "backslashreplace")
    out = "".join(ch if ch.isprintable() else
                  ("\\x%02x" % ord(ch) if ord(ch) < 0x100 else "\\u%04x" % ord(ch))
                  for ch in text)
    return out + "..." if cut else out


def show_char(cp: int) -> str:
    if 0x20 <= cp < 0x7F:
        return chr(cp)
    return "\\x%02x" % cp if cp < 0x80 else "U+%04X" % cp


def forbidden(ch: str) -> bool:
    """Not in a token: control characters, Unicode whitespace, and '"' and '\\'."""
    return unicodedata.category(ch) == "Cc" or ch.isspace() or ch in "\"\\"


def _check_tokens(s: bytes, kind: str) -> None:
    """Token by token, character by character: the first fault is the one reported."""
    if not s:
        raise ValueError(f"{kind} is empty")
    segs = s.split(b".")
    offset = 0
    for i, seg in enumerate(segs):
        pos = 0
        while pos < len(seg):
            ch = seg[pos]
            if ch in b"*>":
                if kind == "subject":
                    raise ValueError(f"subject contains a wildcard: '{show(s)}'")
                if len(seg) != 1:
                    raise ValueError(
                        f"wildcard '{chr(ch)}' must be a whole segment in pattern '{show(s)}'")
                pos += 1
                continue
            text = _first_char(seg[pos:])
            if text is None:
                raise ValueError(f"{kind} is not valid UTF-8 (at byte {offset + pos}): "
                                 f"'{show(s)}'")
            if forbidden(text):
                raise ValueError(f"invalid character '{show_char(ord(text))}' in {kind} "
                                 f"'{show(s)}': {TOKEN_RULE}")
            pos += len(text.encode())
        if not seg:
            raise ValueError(f"empty segment in {kind} '{show(s)}'")
        if kind == "pattern":
            if seg == b">" and i != len(segs) - 1:
                raise ValueError(f"'>' must be the last segment in pattern '{show(s)}'")
            if i == 0 and seg in (b"*", b">"):
                raise ValueError(f"namespace may not be a wildcard: '{show(s)}'")
        offset += len(seg) + 1
    if len(segs) < 2:
        raise ValueError(f"{kind} must have at least two segments (namespace.topic): "
                         f"'{show(s)}'")


def _first_char(b: bytes) -> str | None:
    """The first character of b, or None if b does not start with valid UTF-8."""
    for size in (1, 2, 3, 4):
        try:
            return b[:size].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def validate_subject(s: bytes) -> None:
    _check_tokens(s, "subject")


def validate_pattern(s: bytes) -> None:
    _check_tokens(s, "pattern")


def match_subject(pattern: bytes, subject: bytes) -> bool:
    """`*` is one token, a last `>` is zero or more (Bus's rule, not NATS's one or more)."""
    pt = pattern.split(b".")
    st = subject.split(b".")
    for i, tok in enumerate(pt):
        if tok == b">" and i == len(pt) - 1:
            return True
        if i >= len(st):
            return False
        if tok != b"*" and tok != st[i]:
            return False
    return len(st) == len(pt)


class Pattern:
    """busd._core.Pattern: one pattern or several of one namespace, matching any."""

    def __init__(self, pattern: bytes, *more: bytes):
        self.patterns = tuple(sorted({pattern, *more}))
        self.pattern = self.patterns[0]
        self.namespace = self.pattern.split(b".")[0]
        if any(p.split(b".")[0] != self.namespace for p in self.patterns):
            raise ValueError("patterns of one filter must share a namespace")
        every = [p.split(b".") for p in self.patterns]
        self.matches_all = any(len(t) == 2 and t[1] == b">" and t[0] != b"*" for t in every)
        self.is_literal = len(every) == 1 and not (b"*" in every[0] or every[0][-1] == b">")

    def matches(self, subject: bytes) -> bool:
        return any(match_subject(p, subject) for p in self.patterns)


def _any_of(pattern) -> Pattern:
    """A Pattern (or the oracle's) as the oracle's; bytes as a one-pattern one."""
    if isinstance(pattern, bytes):
        return Pattern(pattern)
    return Pattern(*pattern.patterns)


# --------------------------------------------------------------------------- JSON scan

STRING_FIELDS = ("subject", "id", "created_at", "response_subject", "trace_id", "key")
KNOWN = STRING_FIELDS + ("payload",)


class Event:
    """What busd._core.ParsedEvent should hold."""

    __slots__ = ("subject", "id", "created_at", "response_subject", "trace_id", "key",
                 "key_value", "payload")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k, b"" if k != "payload" else None))

    def astuple(self):
        return tuple(getattr(self, k) for k in self.__slots__)

    def __repr__(self):
        return "Event(%s)" % ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)


class JSONSyntaxError(ValueError):
    """Not valid JSON (busd._core says "invalid JSON at byte N: ...")."""


def _lexical_depth(body: bytes) -> int:
    depth = best = 0
    in_str = esc = False
    for ch in body:
        if in_str:
            if esc:
                esc = False
            elif ch == 0x5C:
                esc = True
            elif ch == 0x22:
                in_str = False
        elif ch == 0x22:
            in_str = True
        elif ch in b"[{":
            depth += 1
            best = max(best, depth)
        elif ch in b"]}":
            depth -= 1
    return best


def _no_constants(name):
    raise ValueError(f"{name} is not JSON")


class _Obj(list):
    """An object as its list of (key, value) pairs, duplicates kept."""


class _Num:
    """A JSON number, kept as its text (no float rounding, no int digit limit)."""

    __slots__ = ("text",)

    def __init__(self, text):
        self.text = text


def _utf8(text: str) -> bytes:
    """A decoded string's bytes; a lone surrogate (valid JSON: `"\\ud800"`) as its three
    bytes, the way busd._core decodes it."""
    return text.encode("utf-8", "surrogatepass")


def parse_json(body: bytes):
    """Strict RFC 8259 parse; objects become _Obj pair lists. Raises JSONSyntaxError."""
    if _lexical_depth(body) > MAX_DEPTH:
        raise JSONSyntaxError("nesting deeper than 512")
    try:
        text = body.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_Obj, parse_constant=_no_constants,
                           parse_int=_Num, parse_float=_Num)
    except (ValueError, UnicodeError, RecursionError) as e:
        raise JSONSyntaxError(str(e)) from None
    return value


def _skip_ws(b: bytes, i: int) -> int:
    while i < len(b) and b[i] in b" \t\r\n":
        i += 1
    return i


def _skip_value(b: bytes, i: int) -> int:
    """End of the (already validated) JSON value starting at b[i]."""
    c = b[i]
    if c == 0x22:
        i += 1
        while b[i] != 0x22:
            i += 2 if b[i] == 0x5C else 1
        return i + 1
    if c in b"[{":
        depth = 0
        while True:
            c = b[i]
            if c == 0x22:
                i = _skip_value(b, i)
                continue
            if c in b"[{":
                depth += 1
            elif c in b"]}":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
    m = re.compile(rb"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?|true|false|null").match(b, i)
    return m.end()


def _object_raw_values(b: bytes, i: int):
    """[(key_raw_span, (start, end))] of the object at b[i] (validated)."""
    out = []
    i = _skip_ws(b, i + 1)
    if b[i] == 0x7D:
        return out, i + 1
    while True:
        kend = _skip_value(b, i)
        i = _skip_ws(b, kend)
        assert b[i] == 0x3A
        vstart = _skip_ws(b, i + 1)
        vend = _skip_value(b, vstart)
        out.append((vstart, vend))
        i = _skip_ws(b, vend)
        if b[i] == 0x2C:
            i = _skip_ws(b, i + 1)
            continue
        return out, i + 1


def _top_level_objects(b: bytes):
    """Raw value spans of each top-level event object, in order."""
    i = _skip_ws(b, 0)
    if b[i] == 0x7B:
        return [_object_raw_values(b, i)[0]]
    spans = []
    i = _skip_ws(b, i + 1)
    while b[i] != 0x5D:
        if b[i] == 0x7B:
            vals, i = _object_raw_values(b, i)
            spans.append(vals)
        else:
            spans.append(None)
            i = _skip_value(b, i)
        i = _skip_ws(b, i)
        if b[i] == 0x2C:
            i = _skip_ws(b, i + 1)
    return spans


def scan_body(body: bytes):
    """Reference for busd._core.scan_body -> (is_batch, [Event])."""
    if not body.strip(b" \t\r\n"):
        raise ValueError("empty body")
    doc = parse_json(body)
    if isinstance(doc, _Obj):
        is_batch, items = False, [doc]
    elif isinstance(doc, list):
        is_batch, items = True, doc
        if not items:
            raise ValueError("empty batch")
    else:
        raise ValueError("body must be a JSON object or an array of objects")
    for n, item in enumerate(items):
        prefix = f"batch item {n}: " if is_batch else ""
        if not isinstance(item, _Obj):
            raise ValueError(f"batch item {n} must be a JSON object")
        seen = {}
        for k, v in item:
            if k in STRING_FIELDS and v is not None and not isinstance(v, str):
                raise ValueError(f"{prefix}field {k} must be a string")
            seen[k] = v
        if not seen.get("subject"):
            raise ValueError(f"{prefix}missing subject")
    events = []
    for item, spans in zip(items, _top_level_objects(body)):
        last = {}
        for (k, v), span in zip(item, spans):
            last[k] = (v, span)
        ev = Event()
        for k in ("subject", "id", "created_at", "response_subject"):
            v = last.get(k, (None, None))[0]
            setattr(ev, k, _utf8(v) if v else b"")
        for k in ("trace_id", "key"):
            v, span = last.get(k, (None, None))
            setattr(ev, k, body[span[0]:span[1]] if v else b"")
        v = last.get("key", (None, None))[0]
        ev.key_value = _utf8(v) if v else b""
        if "payload" in last:
            s, e = last["payload"][1]
            ev.payload = body[s:e]
        events.append(ev)
    return is_batch, events


# --------------------------------------------------------------------------- records


def json_escape(s: bytes) -> bytes:
    out = bytearray()
    for ch in s:
        if ch == 0x22:
            out += b'\\"'
        elif ch == 0x5C:
            out += b"\\\\"
        elif ch == 0x0A:
            out += b"\\n"
        elif ch == 0x0D:
            out += b"\\r"
        elif ch == 0x09:
            out += b"\\t"
        elif ch < 0x20:
            out += b"\\u%04x" % ch
        else:
            out.append(ch)
    return bytes(out)


def make_record(ev, event_id: bytes, created_at: bytes) -> bytes:
    if not 0 < len(event_id) <= 128 or b'"' in event_id:
        raise ValueError("event id must be 1-128 bytes without '\"'")
    parts = [b'{"id":"', event_id, b'","subject":"', json_escape(ev.subject), b'"']
    if ev.trace_id:
        parts += [b',"trace_id":', ev.trace_id]
    if ev.key:
        parts += [b',"key":', ev.key]
    if ev.response_subject:
        parts += [b',"response_subject":"', json_escape(ev.response_subject), b'"']
    if created_at:
        parts += [b',"created_at":"', json_escape(created_at), b'"']
    if ev.payload is not None:
        parts += [b',"payload":', ev.payload.replace(b"\n", b" ").replace(b"\r", b" ")]
    parts.append(b"}")
    return b"".join(parts)


def record_id(rec: bytes) -> bytes:
    end = rec.find(b'"', 7, 7 + 129)
    if end <= 7:
        raise ValueError("not a record: no id")
    return rec[7:end]


def record_subject(rec: bytes) -> bytes:
    start = 7 + len(record_id(rec)) + len('","subject":"')
    end = rec.find(b'"', start)
    if len(rec) <= start or end < 0:
        raise ValueError("not a record")
    return rec[start:end]


# --------------------------------------------------------------------------- SSE


def sse_chunk(text: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(text), text) if text else b""


def sse_message(rec: bytes) -> bytes:
    return b"id: " + record_id(rec) + b"\nevent: msg\ndata: " + rec + b"\n\n"


def sse_frame(records, start=0, end=-1) -> bytes:
    if end < 0:
        end = len(records)
    start = max(start, 0)
    return sse_chunk(b"".join(sse_message(r) for r in records[start:end]))


def sse_frame_matching(records, pattern):
    pat = _any_of(pattern)
    picked = [r for r in records if pat.matches(record_subject(r))]
    return sse_chunk(b"".join(sse_message(r) for r in picked)), len(picked)


def first_matching(records, pattern, start=0, end=-1) -> int:
    pat = _any_of(pattern)
    if end < 0 or end > len(records):
        end = len(records)
    start = max(start, 0)
    for i in range(start, end):
        if pat.matches(record_subject(records[i])):
            return i
    return max(start, end)


# --------------------------------------------------------------------------- xid


def xid_encode(raw: bytes) -> bytes:
    """rs/xid's string form is unpadded base32hex, lower case."""
    assert len(raw) == 12
    return base64.b32hexencode(raw)[:20].lower()


def xid_decode(s: bytes) -> bytes:
    return base64.b32hexdecode(s.upper() + b"====")[:12]


def is_xid(s: bytes) -> bool:
    if len(s) != 20 or any(ch not in XID_ALPHABET for ch in s):
        return False
    # rs/xid re-encodes the decoded id and compares the last char.
    return xid_encode(xid_decode(s)) == s


def xid_time(s: bytes) -> int:
    if not is_xid(s):
        raise ValueError("not an xid")
    return int.from_bytes(xid_decode(s)[:4], "big")


# --------------------------------------------------------------------------- RFC 3339

_RFC3339 = re.compile(
    rb"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})\Z",
    re.ASCII)
_ERA_DAYS = 146097  # days in 400 Gregorian years


def _days(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 (year 0 handled by shifting 400 years)."""
    shift = 0
    if y == 0:
        y, shift = 400, _ERA_DAYS
    return _dt.date(y, m, d).toordinal() - _dt.date(1970, 1, 1).toordinal() - shift


def parse_rfc3339(s: bytes) -> int:
    m = _RFC3339.match(s)
    if not m:
        raise ValueError("not an RFC 3339 time")
    y, mo, d, hh, mi, ss = (int(g) for g in m.groups()[:6])
    frac = int((m.group(7) or b"").ljust(9, b"0"))
    tz = m.group(8)
    off = 0
    if tz != b"Z":
        oh, om = int(tz[1:3]), int(tz[4:6])
        if oh > 23 or om > 59:
            raise ValueError("bad offset")
        off = (oh * 3600 + om * 60) * (-1 if tz[:1] == b"-" else 1)
    if not 1 <= mo <= 12:
        raise ValueError("bad month")
    if not 1 <= d <= calendar.monthrange(y or 400, mo)[1]:
        raise ValueError("bad day")
    if hh > 23 or mi > 59 or ss > 59:
        raise ValueError("bad time of day")
    secs = _days(y, mo, d) * 86400 + hh * 3600 + mi * 60 + ss - off
    return secs * 1_000_000_000 + frac


def format_rfc3339(ns: int) -> bytes:
    secs, frac = divmod(ns, 1_000_000_000)
    days, sod = divmod(secs, 86400)
    base = _dt.date(1970, 1, 1).toordinal()
    shift = 0
    if days + base < 1:  # year 0: compute in year 400 and print 0
        days += _ERA_DAYS
        shift = 400
    if not (1 <= days + base <= _dt.date.max.toordinal()):
        raise ValueError("out of range")
    date = _dt.date.fromordinal(days + base)
    out = "%04d-%02d-%02dT%02d:%02d:%02d" % (date.year - shift, date.month, date.day,
                                           sod // 3600, sod // 60 % 60, sod % 60)
    if frac:
        out += ("." + "%09d" % frac).rstrip("0")
    return (out + "Z").encode()


# --------------------------------------------------------------------------- publish


def id_problem(event_id: bytes) -> str | None:
    """Reference for busd.wire.id_problem (which stamp_events calls): None when usable."""
    shown = event_id.decode("utf-8", "replace")[:128]
    if event_id[:2] == b"e_" and len(event_id) == 22 and is_xid(event_id[2:]):
        return None
    if not event_id:
        return "empty id"
    if len(event_id) > 128:
        return f"id of {len(event_id)} bytes is longer than 128 bytes: {shown!r}..."
    if event_id[:2] == b"e_":
        return (f"invalid id {shown!r}: an id starting with e_ must be e_ followed by a "
                f"20-character xid (other ids must not start with e_)")
    if (any(not 0x20 <= c < 0x7F or c in b'"\\' for c in event_id)
            or event_id != event_id.strip(b" ")):
        return (f"invalid id {shown!r}: ids are printable ASCII characters without '\"' or "
                f"'\\', and no space at either end")
    return None


ZERO_TIME = b"0001-01-01T00:00:00Z"
MAX_FIELD_BYTES = 256  # of a key or trace_id, as JSON text without its quotes


def stamp_events(events, is_batch: bool, new_id, now):
    """Reference for busd._core.stamp_events; `new_id()`/`now()` stand in for the clock."""
    namespace, ids, stamps, records, keyed, stamp = None, [], [], [], [], None
    for i, ev in enumerate(events):
        if len(ev.key) > MAX_FIELD_BYTES + 2 or len(ev.trace_id) > MAX_FIELD_BYTES + 2:
            field = "key" if len(ev.key) > MAX_FIELD_BYTES + 2 else "trace_id"
            where = f"batch item {i}: " if is_batch else ""
            raise ValueError(f"{where}field {field} is longer than {MAX_FIELD_BYTES} bytes")
        validate_subject(ev.subject)
        ns = ev.subject.split(b".", 1)[0]
        if namespace is None:
            namespace = ns
        elif ns != namespace:
            raise ValueError(f"a batch must stay in one namespace: found '{show(namespace)}' "
                             f"and '{show(ns)}'")
        if ev.response_subject:
            if is_batch:
                raise ValueError("events in a batch cannot have a response_subject")
            try:
                validate_subject(ev.response_subject)
            except ValueError as exc:
                raise ValueError(f"response_subject: {exc}") from None
        if ev.key_value:
            keyed.append((ev.subject, ev.key_value))
        event_id = ev.id
        if event_id:
            problem = id_problem(event_id)
            if problem is not None:
                raise ValueError(problem)
        else:
            event_id = new_id()
        created_at = ev.created_at
        if not created_at or created_at == ZERO_TIME:  # one clock reading per publish
            stamp = now() if stamp is None else stamp
            created_at = stamp
        else:
            try:
                created_at = format_rfc3339(parse_rfc3339(created_at))
            except ValueError:
                raise ValueError(f"invalid created_at '{show(created_at)}': expected RFC 3339, "
                                 "e.g. 2026-11-27T13:20:58.365157351Z") from None
        ids.append(event_id)
        stamps.append(created_at)
        records.append(make_record(ev, event_id, created_at))
    if is_batch and namespace == b"_bus_":
        raise ValueError("inbox (_bus_) subjects cannot be published in a batch")
    return namespace, ids, stamps, records, keyed or None


# --------------------------------------------------------------------------- publish answers


def header_name(raw: bytes) -> bytes:
    """busd._core.header_name: a header name as the connection keys it. (read_head's
    reference is httptools' own callbacks: tests/server/test_request_head.py.)"""
    return raw.lower()


def published_response(head: bytes, ids, created_at, first_index: int, is_batch: bool,
                       close: bool) -> bytes:
    """busd._core.published_response: the 202 that busd.server.http.response formats for
    the API's headers or batch body (the shared formatter every other answer goes through),
    with `head` in place of its status, CORS and Date lines."""
    from busd.server.http import response, status_head
    if is_batch:
        body = b'{"count":%d,"first_index":%d,"ids":["%s"]}' % (len(ids), first_index,
                                                               b'","'.join(ids))
        fields = {"body": body, "content_type": b"application/json"}
    else:
        headers = b"X-Bus-Event-Id: %s\r\nX-Bus-Event-Created-At: %s\r\n" \
                  b"X-Bus-Event-Index: %d\r\n" % (ids[0], created_at[0], first_index)
        fields = {"headers": headers}
    while True:  # again if the Date's second turned between the two calls
        real, formatted = status_head(202), response(202, close=close, **fields)
        if formatted.startswith(real):
            return head + formatted[len(real):]


# --------------------------------------------------------------------------- subscription index


def sublist_match(pairs, subject: bytes) -> set:
    """busd.bus._sublist.Sublist.match: the values of the (pattern, value) pairs whose
    pattern the subject matches."""
    return {value for pattern, value in pairs if match_subject(pattern, subject)}


def sublist_split(pairs, records):
    """Sublist.split: records grouped per matching value, in record order, each record
    once per value."""
    out: dict = {}
    for rec in records:
        for value in sublist_match(pairs, record_subject(rec)):
            out.setdefault(value, []).append(rec)
    return out
