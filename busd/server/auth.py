"""Optional access control: bearer tokens from a TOML file, each allowed some subjects.

    [[token]]
    name = "billing"                 # shows up in logs, never the secret
    secret = "change-me"             # or secret_sha256 = "<hex of sha256(secret)>"
    publish = ["orders.>"]           # patterns as in subscriptions
    subscribe = ["orders.>", "payments.*"]
    restore = true                   # may supply events' id and created_at (bus restore)

A request names its token in `Authorization: Bearer <secret>` or, for browsers'
`EventSource` (which cannot set headers), in `?token=<secret>`. Publishing to a subject
needs a `publish` pattern that matches it; subscribing to a pattern needs the
`subscribe` patterns to cover *every* subject the pattern can match (`orders.>` is not
allowed by `orders.*` alone: `orders.eu.created` would slip through; `orders.eu.>` is not
allowed by `orders.eu.*` alone: `orders.eu` would, as `>` is zero or more segments, as in
Bus). Every valid token may publish to inbox subjects (`_bus_.…`), so request/reply
works; an inbox is read only by the token that subscribed to it first
(busd/bus/inbox_owners.py).

Secrets are kept only as SHA-256 digests, compared as digests, and never logged.
Without an auth file none of this runs: the bus is open, as Bus is.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tomllib
from pathlib import Path

log = logging.getLogger("busd.server.auth")

INBOX_PREFIX = b"_bus_."
# what no segment may hold (busd._core's subject rule: Unicode whitespace, control
# characters, '"' and '\\'; and wildcards that are not a whole segment)
_BAD_IN_SEGMENT = re.compile(r'[\s\x00-\x1f\x7f-\x9f"\\*>]')
_HEX64_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_CACHE_LIMIT = 4096  # remembered publish decisions per token


class AuthFileError(ValueError):
    """The auth file cannot be used; the message says where and why."""


class AuthError(Exception):
    """A request that is refused: `status` 401 (who are you?) or 403 (not allowed)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def parse_pattern(text: str) -> tuple[str, ...]:
    """A permission pattern's segments; raises ValueError when it is not a valid pattern.

    As subscription patterns: literal segments, `*` for one segment, `>` (last) for zero
    or more. Unlike a subscription, the first segment may be a wildcard here (`>` alone
    allows everything).
    """
    if not isinstance(text, str) or not text:
        raise ValueError(f"pattern {text!r} is empty or not a string")
    segments = tuple(text.split("."))
    for position, segment in enumerate(segments):
        if segment == ">":
            if position != len(segments) - 1:
                raise ValueError(f"pattern {text!r}: '>' must be the last segment")
        elif segment != "*" and (not segment or _BAD_IN_SEGMENT.search(segment)):
            raise ValueError(f"pattern {text!r}: invalid segment {segment!r} (any text but "
                             "whitespace, control characters, '\"' and '\\', or a "
                             "whole-segment wildcard '*' or '>')")
    return segments


def covers(pattern: tuple[str, ...], allowed: list[tuple[str, ...]]) -> bool:
    """True if every subject `pattern` can match is matched by at least one `allowed` pattern.

    Segments can be any of infinitely many tokens, so a `*` in `pattern` is covered only by
    what covers a token that appears in no literal: `*` or `>` in the allowed patterns.
    A `>` in `pattern` stands for nothing, `*`, `*.*`, …: all of them must be covered.
    """
    if any(a and a[0] == ">" for a in allowed):
        return True  # a `>` covers every remainder, the empty one too
    if not pattern:
        return any(not a for a in allowed)
    head, rest = pattern[0], pattern[1:]
    if head == ">":
        return _covers_any_tail(allowed)
    if head == "*":
        tails = [a[1:] for a in allowed if a and a[0] == "*"]
    else:
        tails = [a[1:] for a in allowed if a and a[0] in (head, "*")]
    return bool(tails) and covers(rest, tails)


def _covers_any_tail(allowed: list[tuple[str, ...]]) -> bool:
    """Covered: every run of k >= 0 arbitrary segments, for all k."""
    exact: set[int] = set()  # k covered by `*.*…` (k stars; k = 0: the empty remainder)
    open_from: int | None = None  # all k >= m covered by `*…*.>` (m stars), smallest m
    for a in allowed:
        if any(segment not in ("*", ">") for segment in a):
            continue  # a literal never covers an arbitrary segment
        if a and a[-1] == ">":
            m = len(a) - 1
            open_from = m if open_from is None else min(open_from, m)
        else:
            exact.add(len(a))
    if open_from is None:
        return False
    return all(k in exact for k in range(open_from))


def matches(subject: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Does a concrete subject match one permission pattern."""
    for position, segment in enumerate(pattern):
        if segment == ">":
            return True  # zero or more segments
        if position >= len(subject) or (segment != "*" and segment != subject[position]):
            return False
    return len(subject) == len(pattern)


class Token:
    """One `[[token]]`: a name and what it may publish to and subscribe to."""

    __slots__ = ("name", "publish", "subscribe", "restore", "_publish_cache")

    def __init__(self, name: str, publish: list[tuple[str, ...]],
                 subscribe: list[tuple[str, ...]], restore: bool = False) -> None:
        self.name = name
        self.publish = publish
        self.subscribe = subscribe
        self.restore = restore  # may write history: events with their own id and created_at
        self._publish_cache: dict[bytes, bool] = {}

    def may_publish(self, subject: bytes) -> bool:
        allowed = self._publish_cache.get(subject)
        if allowed is None:
            if subject.startswith(INBOX_PREFIX):
                allowed = True
            else:
                segments = tuple(subject.decode("utf-8", "replace").split("."))
                allowed = any(matches(segments, p) for p in self.publish)
            if len(self._publish_cache) >= _CACHE_LIMIT:
                self._publish_cache.clear()
            self._publish_cache[subject] = allowed
        return allowed

    def may_subscribe(self, pattern: bytes) -> bool:
        if pattern.startswith(INBOX_PREFIX):
            return True
        segments = tuple(pattern.decode("utf-8", "replace").split("."))
        if len(segments) == 2 and segments[1] == ">":
            # subjects have two segments at least, so `ns.>` delivers what `ns.*.>` does:
            # the namespace alone (its zero-segment case) is no subject to cover
            segments = (segments[0], "*", ">")
        return covers(segments, self.subscribe)


class Auth:
    """The tokens of one auth file; `reload()` swaps them in place (SIGHUP)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.tokens: dict[bytes, Token] = load_tokens(self.path)

    def reload(self) -> bool:
        """Re-read the file; on any error keep the tokens in force and log why."""
        try:
            tokens = load_tokens(self.path)
        except AuthFileError as exc:
            log.error("auth file not reloaded, keeping the previous tokens reason=%r", str(exc))
            return False
        self.tokens = tokens
        log.info("auth file reloaded path=%s tokens=%d names=%s", self.path, len(tokens),
                 ",".join(sorted(t.name for t in tokens.values())))
        return True

    def authenticate(self, secret: bytes | None) -> Token:
        """The token a request presents; AuthError(401) when missing or unknown."""
        if not secret:
            raise AuthError(401, "missing token: send 'Authorization: Bearer <token>' "
                                 "(or ?token=<token> from a browser's EventSource)")
        token = self.tokens.get(hashlib.sha256(secret).digest())
        if token is None:
            raise AuthError(401, "unknown token")
        return token


def load_tokens(path: Path) -> dict[bytes, Token]:
    """sha256(secret) → Token. Raises AuthFileError naming the file and the problem."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise AuthFileError(f"cannot read auth file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AuthFileError(f"auth file {path} is not valid TOML: {exc}") from None
    unknown = set(data) - {"token"}
    if unknown:
        raise AuthFileError(f"auth file {path}: unknown top-level key(s) "
                            f"{', '.join(sorted(unknown))} (expected [[token]] tables)")
    entries = data.get("token", [])
    if not isinstance(entries, list):
        raise AuthFileError(f"auth file {path}: 'token' must be an array of tables ([[token]])")
    tokens: dict[bytes, Token] = {}
    names: set[str] = set()
    for number, entry in enumerate(entries, 1):
        where = f"auth file {path}, token #{number}"
        if not isinstance(entry, dict):
            raise AuthFileError(f"{where}: must be a table")
        unknown = set(entry) - {"name", "secret", "secret_sha256", "publish", "subscribe",
                                "restore"}
        if unknown:
            raise AuthFileError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise AuthFileError(f"{where}: 'name' must be 1-64 letters, digits, '_', '-', "
                                "'.' or '@'")
        where = f"auth file {path}, token {name!r}"
        if name in names:
            raise AuthFileError(f"{where}: the name is used twice")
        names.add(name)
        secret, hexdigest = entry.get("secret"), entry.get("secret_sha256")
        if (secret is None) == (hexdigest is None):
            raise AuthFileError(f"{where}: set exactly one of 'secret' and 'secret_sha256'")
        if secret is not None:
            if not isinstance(secret, str) or len(secret) < 8:
                raise AuthFileError(f"{where}: 'secret' must be a string of at least 8 "
                                    "characters")
            if any(c.isspace() for c in secret):
                raise AuthFileError(f"{where}: 'secret' must not contain whitespace")
            digest = hashlib.sha256(secret.encode()).digest()
        else:
            if not isinstance(hexdigest, str) or not _HEX64_RE.match(hexdigest):
                raise AuthFileError(f"{where}: 'secret_sha256' must be 64 hex digits")
            digest = bytes.fromhex(hexdigest)
        if digest in tokens:
            raise AuthFileError(f"{where}: the same secret as token {tokens[digest].name!r}")
        rights = {}
        for key in ("publish", "subscribe"):
            patterns = entry.get(key, [])
            if not isinstance(patterns, list):
                raise AuthFileError(f"{where}: {key!r} must be a list of patterns")
            try:
                rights[key] = [parse_pattern(p) for p in patterns]
            except ValueError as exc:
                raise AuthFileError(f"{where}: {key}: {exc}") from None
        restore = entry.get("restore", False)
        if not isinstance(restore, bool):
            raise AuthFileError(f"{where}: 'restore' must be true or false")
        tokens[digest] = Token(name, rights["publish"], rights["subscribe"], restore)
    return tokens
