"""Facts of busd's wire and record format that the server, the stores, the CLI and the SDK
all rely on: one definition each, importable without the server (the SDK uses it).
"""

from __future__ import annotations

import math
import re

INBOX_NAMESPACE = "_bus_"  # subjects under it are inboxes: routed in memory, never stored
INBOX_PREFIX = INBOX_NAMESPACE + "."

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
