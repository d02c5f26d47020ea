"""Server configuration: flags and BUS_* environment variables, validated once at start-up.

Environment variables take precedence over flags, as in Bus. A bad value is a start-up
error naming the variable or flag, never a silent default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from busd.wire import INBOX_NAMESPACE, parse_duration

NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_-]+$")

_SIZE_RE = re.compile(r"^(\d+)\s*([KMGT]i?B?|B)?$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DAY = 86400.0


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the flag/variable."""


def parse_age(text: str) -> float:
    """A retention age: a Go duration, or a number of days with a `d` suffix (`7d`)."""
    text = text.strip()
    if text.endswith("d") and text[:-1].replace(".", "", 1).isdigit():
        return float(text[:-1]) * _DAY
    return parse_duration(text)


def parse_size(text: str) -> int:
    """Parse a byte size: `1048576`, `64KiB`, `1MiB`, `10MB` (binary multiples either way)."""
    match = _SIZE_RE.match(text.strip())
    if not match:
        raise ValueError(f"invalid size {text!r} (examples: 4096, 64KiB, 1MiB, 10GiB)")
    unit = (match.group(2) or "").lower()[:1]
    return int(match.group(1)) * _SIZE_UNITS[unit]


def parse_addr(text: str) -> tuple[str, int]:
    """`:2021` (all interfaces), `127.0.0.1:2021`, `[::1]:2021` → (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"invalid address {text!r} (expected host:port or :port)")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


@dataclass(frozen=True)
class Config:
    """Everything the server needs to start; built by `load_config`."""

    host: str = "0.0.0.0"
    port: int = 2021
    path: Path = Path("./data")
    namespaces: tuple[str, ...] = ()
    secret_key: str | None = None
    block_size: int = 4096
    log_level: str = "INFO"
    dup_size: int = 1000
    dup_ttl: float = 0.0
    dup_bytes: int = 64 << 20
    fsync: str = "interval"
    fsync_interval: float = 1.0
    max_event_size: int = 1 << 20
    max_batch: int = 1000  # events per request: a batch is one step of the event loop
    max_request_size: int = 64 << 20
    max_body_memory: int = 512 << 20  # request bodies being received, all connections
    retention_age: float | None = None
    retention_bytes: int | None = None
    segment_bytes: int = 64 << 20
    ping_interval: float = 30.0
    max_connections: int = 10000
    idle_timeout: float = 120.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    auth_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    cors_origins: tuple[str, ...] | None = None  # None: `*`, as Bus
    store: str = "local"
    nats_url: str = "nats://127.0.0.1:4222"
    replicas: int = 1
    ui: bool = True  # the console at /ui (`--no-ui` / `BUS_UI=off` turn it off)


# option name → (environment variable, parser, Config field)
_OPTIONS: dict[str, tuple[str | None, object, str]] = {
    "--addr": ("BUS_ADDR", parse_addr, "addr"),
    "--path": ("BUS_PATH", Path, "path"),
    "--namespaces": ("BUS_NAMESPACES", None, "namespaces"),
    "--secret-key": ("BUS_SECRET_KEY", str, "secret_key"),
    "--block-size": ("BUS_BLOCK_SIZE", parse_size, "block_size"),
    "--log-level": ("BUS_LOG_LEVEL", None, "log_level"),
    "--dup-size": ("BUS_DUP_SIZE", int, "dup_size"),
    "--dup-ttl": ("BUS_DUP_TTL", parse_duration, "dup_ttl"),
    "--dup-bytes": ("BUS_DUP_BYTES", parse_size, "dup_bytes"),
    "--fsync": ("BUS_FSYNC", None, "fsync"),
    "--fsync-interval": ("BUS_FSYNC_INTERVAL", parse_duration, "fsync_interval"),
    "--max-event-size": ("BUS_MAX_EVENT_SIZE", parse_size, "max_event_size"),
    "--max-batch": ("BUS_MAX_BATCH", int, "max_batch"),
    "--max-body-memory": ("BUS_MAX_BODY_MEMORY", parse_size, "max_body_memory"),
    "--retention-age": ("BUS_RETENTION_AGE", parse_age, "retention_age"),
    "--retention-bytes": ("BUS_RETENTION_BYTES", parse_size, "retention_bytes"),
    "--segment-size": ("BUS_SEGMENT_SIZE", parse_size, "segment_bytes"),
    "--ping-interval": ("BUS_PING_INTERVAL", parse_duration, "ping_interval"),
    "--max-connections": ("BUS_MAX_CONNECTIONS", int, "max_connections"),
    "--idle-timeout": ("BUS_IDLE_TIMEOUT", parse_duration, "idle_timeout"),
    "--header-timeout": ("BUS_HEADER_TIMEOUT", parse_duration, "header_timeout"),
    "--body-timeout": ("BUS_BODY_TIMEOUT", parse_duration, "body_timeout"),
    "--auth-file": ("BUS_AUTH_FILE", Path, "auth_file"),
    "--tls-cert": ("BUS_TLS_CERT", Path, "tls_cert"),
    "--tls-key": ("BUS_TLS_KEY", Path, "tls_key"),
    "--cors-origins": ("BUS_CORS_ORIGINS", None, "cors_origins"),
    "--store": ("BUS_STORE", None, "store"),
    "--nats-url": ("BUS_NATS_URL", str, "nats_url"),
    "--replicas": ("BUS_REPLICAS", int, "replicas"),
}


def parse_namespaces(text: str) -> tuple[str, ...]:
    """`a,b,c` → ("a", "b", "c"), for the server and the tools alike. An empty entry
    (`a,,b`, a trailing comma) is refused like a bad name: it is a typo, not a wish."""
    names = tuple(n.strip() for n in text.split(","))
    if not any(names):
        raise ValueError("no namespaces given (expected a,b,c)")
    for name in names:
        if not name:
            raise ValueError(f"empty namespace in {text!r} (remove the extra comma)")
        if name == INBOX_NAMESPACE:
            raise ValueError(f"{INBOX_NAMESPACE!r} is reserved for inbox subjects")
        if not NAMESPACE_RE.match(name):
            raise ValueError(f"invalid namespace {name!r} (letters, digits, '_' and '-' only)")
    twice = [name for name in names if names.count(name) > 1]
    if twice:
        raise ValueError(f"namespace {twice[0]!r} is listed twice")
    return names


def _parse_choice(choices: tuple[str, ...], upper: bool = False):
    def parse(text: str) -> str:
        value = text.strip().upper() if upper else text.strip().lower()
        if value == "WARNING":
            value = "WARN"
        if value not in choices:
            raise ValueError(f"invalid value {text!r} (one of {', '.join(choices)})")
        return value

    return parse


def _parse_origins(text: str) -> tuple[str, ...] | None:
    origins = tuple(o.strip().rstrip("/") for o in text.split(",") if o.strip())
    if not origins:
        raise ValueError("no origins given (use * for any)")
    if "*" in origins:
        if len(origins) > 1:
            raise ValueError("* allows every origin: list it alone")
        return None
    for origin in origins:
        scheme, sep, host = origin.partition("://")
        if scheme not in ("http", "https") or not sep or not host or "/" in host:
            raise ValueError(f"invalid origin {origin!r} (e.g. https://app.example.com)")
    return origins


_SPECIAL_PARSERS = {
    "cors_origins": _parse_origins,
    "store": _parse_choice(("local", "jetstream")),
    "namespaces": parse_namespaces,
    "log_level": _parse_choice(("DEBUG", "INFO", "WARN", "ERROR"), upper=True),
    "fsync": _parse_choice(("never", "interval", "always")),
}


_SWITCH = {"on": True, "true": True, "1": True, "yes": True,
           "off": False, "false": False, "0": False, "no": False}


def _ui_enabled(flags: Mapping[str, object], env: Mapping[str, str]) -> bool:
    """`BUS_UI` (on/off), else `--no-ui`; the console is on unless one turns it off."""
    text = env.get("BUS_UI", "")
    if text != "":
        if text.strip().lower() not in _SWITCH:
            raise ConfigError(f"BUS_UI: invalid value {text!r} (on or off)")
        return _SWITCH[text.strip().lower()]
    return not flags.get("--no-ui")


def load_config(flags: Mapping[str, object], env: Mapping[str, str]) -> Config:
    """Build a Config from docopt-style flags (`{"--addr": ":2021", …}`) and the environment."""
    values: dict[str, object] = {}
    for option, (variable, parser, field) in _OPTIONS.items():
        raw, source = None, option
        if variable and env.get(variable, "") != "":
            raw, source = env[variable], variable
        elif flags.get(option) not in (None, ""):
            raw = flags[option]
        if raw is None:
            continue
        parse = _SPECIAL_PARSERS.get(field, parser)
        try:
            value = parse(str(raw))  # type: ignore[operator]
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        if field == "addr":
            values["host"], values["port"] = value  # type: ignore[misc]
        else:
            values[field] = value
    values["ui"] = _ui_enabled(flags, env)
    if not values.get("namespaces"):
        raise ConfigError(
            "no namespaces: set --namespaces a,b,c or BUS_NAMESPACES=a,b,c "
            "(the first segment of every subject must be one of them)"
        )
    for field in ("dup_size", "dup_bytes", "max_connections", "block_size", "max_event_size",
                  "segment_bytes"):
        if field in values and values[field] < 0:  # type: ignore[operator]
            raise ConfigError(f"{field.replace('_', '-')}: must not be negative")
    if values.get("max_body_memory", 1) < 1:  # type: ignore[operator]
        raise ConfigError("--max-body-memory/BUS_MAX_BODY_MEMORY: must be at least 1 byte")
    if values.get("max_batch", 1) < 1:  # type: ignore[operator]
        raise ConfigError("--max-batch/BUS_MAX_BATCH: must be at least 1")
    if values.get("block_size") is not None and values["block_size"] < 64:  # type: ignore[operator]
        raise ConfigError("BUS_BLOCK_SIZE/--block-size: must be at least 64 bytes")
    if values.get("fsync_interval", 1.0) <= 0:  # type: ignore[operator]
        raise ConfigError("--fsync-interval: must be greater than zero")
    if (values.get("tls_cert") is None) != (values.get("tls_key") is None):
        raise ConfigError("--tls-cert and --tls-key: give both, or neither")
    for field in ("header_timeout", "body_timeout"):
        if values.get(field, 1.0) <= 0:  # type: ignore[operator]
            raise ConfigError(f"--{field.replace('_', '-')}: must be greater than zero")
    if not 1 <= values.get("replicas", 1) <= 5:  # type: ignore[operator]
        raise ConfigError("--replicas/BUS_REPLICAS: JetStream streams have 1 to 5 replicas")
    if values.get("store") == "jetstream" and values.get("secret_key"):
        raise ConfigError("--secret-key: encryption at rest is for --store local; JetStream "
                          "encrypts at rest with its own server option (jetstream.cipher)")
    if values.get("retention_age") == 0:
        values["retention_age"] = None
    if values.get("retention_bytes") == 0:
        values["retention_bytes"] = None
    return Config(**values)  # type: ignore[arg-type]
