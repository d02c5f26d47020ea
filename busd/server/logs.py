"""Structured `key=value` logging on stderr (logfmt), level from BUS_LOG_LEVEL.

Call sites log a short text followed by `key=value` pairs (`"opened namespace ns=%s
events=%d"`); the formatter emits the text as `msg="…"` and the pairs as they are, so a
line reads `ts=… level=INFO logger=busd.server.app msg="opened namespace" ns=app events=3`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
import time

_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING,
           "ERROR": logging.ERROR}
_LEVEL_NAMES = {logging.WARNING: "WARN", logging.CRITICAL: "ERROR"}
_PAIRS_START = re.compile(r"(?:^|\s)(?=[A-Za-z_][\w.-]*=)")
SECRET_FIELDS = frozenset({"secret_key"})


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def split_message(message: str) -> tuple[str, str]:
    """("opened namespace", "ns=app events=3") from "opened namespace ns=app events=3"."""
    match = _PAIRS_START.search(message)
    if match is None:
        return message, ""
    return message[:match.start()].rstrip(), message[match.end():].strip()


class KeyValueFormatter(logging.Formatter):
    """`ts=… level=… logger=… msg="…" k=v …`: one line per record, easy to grep and parse."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        level = _LEVEL_NAMES.get(record.levelno, record.levelname)
        text, pairs = split_message(record.getMessage())
        line = f"ts={stamp}.{int(record.msecs):03d}Z level={level} logger={record.name}"
        if text:
            line += " msg=" + _quote(text)
        if pairs:
            line += " " + pairs.replace("\n", "\\n")
        if record.exc_info:
            line += " exc=" + _quote(self.formatException(record.exc_info))
        return line


class RepeatFilter(logging.Filter):
    """At most one WARN/ERROR line per cause (logger and message template) per `interval`
    seconds: a client reconnecting in a tight loop must not flood the log. The next line
    let through for that cause says how many were held back (`suppressed=N`)."""

    def __init__(self, interval: float = 10.0, max_causes: int = 1024) -> None:
        super().__init__()
        self.interval = interval
        self.max_causes = max_causes  # bounded: templates are few, but never let it grow
        self._causes: dict[tuple[str, object], list] = {}  # cause -> [last emitted, held]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        cause, now = (record.name, record.msg), record.created
        seen = self._causes.get(cause)
        if seen is not None and now - seen[0] < self.interval:
            seen[1] += 1
            return False
        if seen is None:
            if len(self._causes) >= self.max_causes:
                self._causes.clear()
            self._causes[cause] = [now, 0]
        else:
            if seen[1]:
                record.msg = f"{record.msg} suppressed={seen[1]}"
            seen[0], seen[1] = now, 0
        return True


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))


def format_value(value: object) -> str:
    """A config value as one logfmt token: bare if it has no space or quote, else quoted."""
    if isinstance(value, (tuple, list)):
        value = ",".join(map(str, value))
    text = "" if value is None else str(value)
    if text == "" or any(c in text for c in ' "=\\\n'):
        return _quote(text)
    return text


def describe_config(config: object) -> str:
    """Every field of a Config dataclass as `key=value` pairs, secrets masked."""
    pairs = []
    for field in dataclasses.fields(config):  # type: ignore[arg-type]
        value = getattr(config, field.name)
        if field.name in SECRET_FIELDS and value:
            value = "***"
        pairs.append(f"{field.name}={format_value(value)}")
    return " ".join(pairs)
