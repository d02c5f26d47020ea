"""Tokens files for `--auth-file` tests, written from Python values so that each test says
only who may do what."""

from __future__ import annotations

import json
from pathlib import Path


def token_entry(name: str, publish: list[str], subscribe: list[str], **fields) -> str:
    """One `[[token]]` table; `fields` are further keys (secret=, secret_sha256=,
    restore=True): strings and lists written as JSON (valid TOML for these), booleans as
    TOML's true/false."""
    table = {"name": name, **fields, "publish": publish, "subscribe": subscribe}
    return "[[token]]\n" + "".join(f"{key} = {_toml(value)}\n" for key, value in table.items())


def _toml(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else json.dumps(value)


def write_auth_file(folder: Path, *entries: str) -> Path:
    """`folder`/tokens.toml holding these token_entry() tables."""
    path = folder / "tokens.toml"
    path.write_text("\n".join(entries))
    return path
