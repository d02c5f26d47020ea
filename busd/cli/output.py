"""How `bus` commands talk to the person running them: one-line errors, progress bars.

A command raises CommandError for anything the user must fix or should know failed; the
front-end prints `bus <command>: <message>` on stderr and exits with its code. Progress
bars go to stderr and only appear when stderr is a terminal, so scripts and pipes see
nothing but the data and the errors.
"""

from __future__ import annotations

import sys

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the SDK is imported by the commands that talk to a bus, not `bus server`
    from busd.client import BusError

EXIT_FAILURE = 1  # the command ran and failed (server unreachable, corruption found, …)
EXIT_USAGE = 2  # a bad flag value: nothing was done


class CommandError(Exception):
    """A command failed; str() is the one line to print, `code` the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


class UsageError(CommandError):
    """A flag value that cannot be used; the message names the flag."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


def reason(exc: BusError) -> str:
    """The first line of what the bus (or the SDK) said: the SDK keeps the whole answer,
    a command prints one line."""
    return exc.reason.strip().split("\n", 1)[0]


def bus_error(exc: BusError) -> str:
    """A failed request as the line to print: the bus's status, if it answered, and why."""
    return f"the bus answered {exc.status}: {reason(exc)}" if exc.status is not None \
        else reason(exc)


def interactive() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _Quiet:
    """Stands in for a tqdm bar when stderr is not a terminal."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc) -> None:
        pass


NO_PROGRESS = _Quiet()


def progress(total: int | None, desc: str, unit: str = "ev", *, unit_scale: bool = False):
    """A progress bar on stderr when it is a terminal, else an object that does nothing."""
    if not interactive():
        return NO_PROGRESS
    from tqdm import tqdm  # imported only when a bar is shown

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, file=sys.stderr,
                dynamic_ncols=True, leave=False)


def note(text: str) -> None:
    """One line of information on stderr (never stdout: that carries the data)."""
    print(text, file=sys.stderr, flush=True)
