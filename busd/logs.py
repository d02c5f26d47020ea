"""Structured `key=value` logging on stderr, level from BUS_LOG_LEVEL."""

from __future__ import annotations

import logging
import sys
import time

_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING,
           "ERROR": logging.ERROR}


class KeyValueFormatter(logging.Formatter):
    """`ts=… level=… logger=… msg="…"`: one line per record, easy to grep and to parse."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = (f"ts={stamp}.{int(record.msecs):03d}Z level={record.levelname} "
                f"logger={record.name} msg=\"{record.getMessage()}\"")
        if record.exc_info:
            line += " exc=" + repr(self.formatException(record.exc_info))
        return line


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
