"""Configuration: flags, BUS_* variables taking precedence, and clear start-up errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from busd.server.config import ConfigError, load_config, parse_size
from busd.wire import parse_duration


def test_env_takes_precedence_over_flags():
    config = load_config({"--namespaces": "a,b", "--addr": ":9000", "--fsync": "never"},
                         {"BUS_ADDR": "127.0.0.1:2042", "BUS_FSYNC": "always"})
    assert (config.host, config.port, config.fsync) == ("127.0.0.1", 2042, "always")
    assert config.namespaces == ("a", "b")


def test_defaults_match_the_spec():
    config = load_config({}, {"BUS_NAMESPACES": "app"})
    assert (config.host, config.port) == ("0.0.0.0", 2021)
    assert str(config.path) == "data" and config.block_size == 4096
    assert config.dup_size == 1000 and config.dup_ttl == 0 and config.fsync == "interval"
    assert config.max_event_size == 1 << 20 and config.log_level == "INFO"
    assert config.max_batch == 1000 and config.max_body_memory == 512 << 20


@pytest.mark.parametrize("flags, env, names", [
    ({}, {}, "BUS_NAMESPACES"),
    ({"--namespaces": "a,_bus_"}, {}, "reserved"),
    ({"--namespaces": "a.b"}, {}, "invalid namespace"),
    ({"--namespaces": "a"}, {"BUS_ADDR": "nowhere"}, "BUS_ADDR"),
    ({"--namespaces": "a", "--fsync": "sometimes"}, {}, "--fsync"),
    ({"--namespaces": "a"}, {"BUS_LOG_LEVEL": "LOUD"}, "BUS_LOG_LEVEL"),
    ({"--namespaces": "a"}, {"BUS_DUP_SIZE": "many"}, "BUS_DUP_SIZE"),
    ({"--namespaces": "a"}, {"BUS_MAX_EVENT_SIZE": "1 lots"}, "BUS_MAX_EVENT_SIZE"),
    ({"--namespaces": "a"}, {"BUS_RETENTION_AGE": "forever"}, "BUS_RETENTION_AGE"),
    ({"--namespaces": "a", "--max-batch": "0"}, {}, "--max-batch"),
    ({"--namespaces": "a"}, {"BUS_MAX_BATCH": "all"}, "BUS_MAX_BATCH"),
    ({"--namespaces": "a", "--max-body-memory": "0"}, {}, "--max-body-memory"),
    ({"--namespaces": "a"}, {"BUS_MAX_BODY_MEMORY": "lots"}, "BUS_MAX_BODY_MEMORY"),
])
def test_bad_values_name_the_setting(flags, env, names):
    with pytest.raises(ConfigError, match=names):
        load_config(flags, env)


@pytest.mark.parametrize("text, seconds", [
    ("0s", 0), ("500ms", 0.5), ("5s", 5), ("1m30s", 90), ("1h", 3600), ("2.5s", 2.5), ("3", 3),
])
def test_go_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [
    "", "nan", "inf", "infinity", "1e3", "-5s", "+5s", "5s\n", " 5s", "5s ", "1_000ms",
    "\u0663s", "9" * 400, "9" * 400 + "h",
])
def test_durations_are_strict(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text, size", [
    ("4096", 4096), ("64KiB", 65536), ("1MiB", 1 << 20), ("10MB", 10 << 20), ("2g", 2 << 30),
])
def test_sizes(text, size):
    assert parse_size(text) == size


def test_server_without_namespaces_exits_with_a_hint(tmp_path):
    result = subprocess.run([sys.executable, "-m", "busd", "server", "--path", str(tmp_path)],
                            capture_output=True, text=True, timeout=30,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "BUS_NAMESPACES" in result.stderr and "--namespaces" in result.stderr


def _bus(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "busd", *args], capture_output=True,
                          text=True, timeout=30, env={"PATH": "/usr/bin:/bin", **(env or {})})


@pytest.mark.parametrize("namespaces", ["a,,b", "a,b,"])
def test_an_empty_namespace_entry_is_refused_naming_the_flag(tmp_path, namespaces):
    data = tmp_path / "data"
    reason = f"empty namespace in {namespaces!r} (remove the extra comma)\n"
    result = _bus("server", "--path", str(data), "--namespaces", namespaces)
    assert (result.returncode, result.stderr) == (2, f"bus server: --namespaces: {reason}")
    result = _bus("server", "--path", str(data), env={"BUS_NAMESPACES": namespaces})
    assert (result.returncode, result.stderr) == (2, f"bus server: BUS_NAMESPACES: {reason}")
    result = _bus("dump", "--path", str(tmp_path), "--namespaces", namespaces, "--output", "-")
    assert (result.returncode, result.stderr) == (2, f"bus dump: --namespaces: {reason}")
    assert not data.exists()
