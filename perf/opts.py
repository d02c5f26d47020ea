"""Command-line options of the perf tools: docopt, like `bus`, with the values typed here.

Each tool's module docstring is its usage text; `parse` turns docopt's dict into
attributes (``--fanout-events`` → ``args.fanout_events``, ``<json>`` → ``args.json``) and
converts the values named in ``types``, so the tools read typed values as they did under
argparse.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from docopt import docopt

EXIT_USAGE = 2  # as `bus`: a flag value that cannot be used, nothing was done


def usage_error(message: str) -> None:
    """Exit like `bus` does on a bad flag value: one line naming the flag, status 2."""
    print(f"{Path(sys.argv[0]).name}: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def parse(doc: str, argv: list[str] | None = None,
          **types: Callable[[str], object]) -> SimpleNamespace:
    """docopt over ``doc``; options named in ``types`` (by attribute name) are converted,
    a value the converter refuses exits with `usage_error`."""
    values = {}
    for key, value in docopt(doc, argv).items():
        name = key.lstrip("-").strip("<>").replace("-", "_")
        convert = types.get(name)
        if convert is not None and value is not None:
            try:
                value = convert(value)
            except ValueError as exc:
                usage_error(f"{key}: invalid value {value!r} ({exc})")
        values[name] = value
    return SimpleNamespace(**values)
