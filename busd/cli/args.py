"""Reading `bus` command lines: docopt parses them, and when it refuses one this module
says in one line what to change (docopt-ng itself prints its internal pattern objects).

The explanation reads the command's own usage text: its forms (`bus dump --path …`,
`bus dump --host …`), which flags each requires or allows, and which flags take a value.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter

from docopt import DocoptExit, docopt

from busd.cli.output import UsageError

# A flag, and the placeholder after it when it takes a value (`--path DIR`, `--confirm N`).
_FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)(?:[ =]([A-Z]+)\b)?")
_OPTION_LINE = re.compile(r"^\s+(--?[A-Za-z][\w-]*)(?:[ =]([A-Z]+)\b)?", re.MULTILINE)


class ArgvError(UsageError):
    """A command line docopt refused; `usage` is the usage section to print after the line."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


def parse(doc: str, argv: list[str], words: list[str], **options) -> dict:
    """docopt(doc, argv), raising ArgvError instead of exiting; `words` are the arguments
    after the command's name (what the explanation looks at)."""
    try:
        return docopt(doc, argv=argv, **options)
    except DocoptExit:
        raise ArgvError(explain(doc, words), usage(doc)) from None


def usage(doc: str) -> str:
    """The usage section of a command's doc."""
    return "Usage:" + doc.split("Usage:", 1)[1].split("\n\n", 1)[0].rstrip()


def _known_flags(section: str, doc: str) -> dict[str, bool]:
    """Every flag of the usage section and of the option lines: whether it takes a value."""
    flags: dict[str, bool] = {}
    for name, placeholder in _FLAG.findall(section) + _OPTION_LINE.findall(doc):
        flags[name] = flags.get(name, False) or bool(placeholder)
    return flags


def explain(doc: str, words: list[str]) -> str:
    """The one line saying what is wrong with `words` (flags are read as docopt reads them:
    `--flag VALUE` or `--flag=VALUE`, a unique prefix standing for the whole flag)."""
    section = usage(doc)
    flags = _known_flags(section, doc)
    given: list[str] = []
    tokens = iter(words)
    for word in tokens:
        if not word.startswith("-") or word == "-":
            return f"unexpected argument {word!r} (a value goes right after its flag)"
        name, eq, _ = word.partition("=")
        matches = [name] if name in flags else \
            [f for f in flags if name.startswith("--") and f.startswith(name)]
        if len(matches) != 1:
            close = difflib.get_close_matches(name, [f for f in flags if f.startswith("--")], 1)
            return f"unknown flag {name}" + (f" (did you mean {close[0]}?)" if close else "")
        flag = matches[0]
        if not flags[flag] and eq:
            return f"{flag} takes no value"
        if flags[flag] and not eq and next(tokens, None) is None:
            return f"{flag} needs a value"
        given.append(flag)
    twice = [flag for flag, n in Counter(given).items() if n > 1]
    if twice:
        return f"{twice[0]} is given twice"
    return _form_problem(section, set(given)) or "these flags do not fit together"


def _forms(section: str) -> list[tuple[list[tuple[str, ...]], set[str] | None]]:
    """Each form of the usage but the help one: (its required flags, each a group of
    alternatives, and the flags it allows, None for `[options]`: any)."""
    forms = []
    for form in re.split(r"\n\s*bus\b", section)[1:]:
        if "--help" in form:
            continue
        required = re.sub(r"\[[^\]]*\]", " ", form)
        groups = [tuple(_flag_names(group)) for group in re.findall(r"\(([^)]*)\)", required)]
        groups += [(flag,) for flag in _flag_names(re.sub(r"\([^)]*\)", " ", required))]
        forms.append((groups, None if "[options]" in form else set(_flag_names(form))))
    return forms


def _flag_names(text: str) -> list[str]:
    return [name for name, _ in _FLAG.findall(text)]


def _form_problem(section: str, given: set[str]) -> str | None:
    """What the given flags lack, or have too many of, for the form they come closest to."""
    forms = _forms(section)
    best, best_key = None, None
    for groups, allowed in forms:
        clash = [g for g in groups if len(given.intersection(g)) > 1]
        extra = sorted(given - allowed) if allowed is not None else []
        missing = [g for g in groups if not given.intersection(g)]
        matched = sum(len(given.intersection(g)) for g in groups)
        key = (len(clash) + len(extra) + len(missing), -matched)
        if best_key is None or key < best_key:
            best, best_key = (groups, clash, extra, missing), key
    if best is None:
        return None
    groups, clash, extra, missing = best
    if clash:
        both = sorted(given.intersection(clash[0]))
        return f"{both[0]} and {both[1]} cannot be used together"
    if extra:
        # name the given flags that make this form this form (those every form allows don't)
        everywhere = set.intersection(*(a for _, a in forms if a is not None))
        chosen = sorted(f for g in groups for f in g if f in given and f not in everywhere)
        return f"{extra[0]} cannot be used with {', '.join(chosen)}" if chosen else \
            f"{extra[0]} cannot be used here"
    if missing:
        return "missing " + ", ".join(" or ".join(g) for g in missing)
    return None
