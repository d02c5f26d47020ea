"""`bus server`: environment over flags, start-up logs (config with secrets masked,
namespaces and their event counts), key=value log lines."""

from __future__ import annotations

import logging
import re

from busclient import publish

from busd.server.config import load_config
from busd.server.logs import KeyValueFormatter, describe_config, split_message

LINE = re.compile(r'^ts=\S+Z level=(DEBUG|INFO|WARN|ERROR) logger=\S+( msg="[^"]*")?( \S+=\S+)*$')


def _pairs(line: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line))


def test_environment_overrides_flags_and_secrets_are_masked(make_server):
    server = make_server("app", "--dup-size", "5", "--fsync", "never", "--log-level", "ERROR",
                         env={"BUS_DUP_SIZE": "7", "BUS_FSYNC": "always",
                              "BUS_LOG_LEVEL": "INFO", "BUS_SECRET_KEY": "hunter2-secret"})
    publish(server.port, "app.a", 1)
    assert server.stop() == 0
    log = server.log()
    starting = next(line for line in log.splitlines() if 'msg="starting"' in line)
    fields = _pairs(starting)
    assert fields["dup_size"] == "7" and fields["fsync"] == "always"
    assert fields["secret_key"] == "***"
    assert "hunter2" not in log
    assert "level=INFO" in log  # BUS_LOG_LEVEL won over --log-level ERROR


def test_start_up_logs_namespaces_with_event_counts(make_server):
    server = make_server("app,orders")
    for n in range(3):
        publish(server.port, "app.a", n)
    server.restart()
    assert server.stop() == 0
    opened = [_pairs(line) for line in server.log().splitlines()
              if 'msg="opened namespace"' in line]
    assert {(f["ns"], f["events"]) for f in opened[-2:]} == {("app", "3"), ("orders", "0")}
    for line in server.log().splitlines():
        assert LINE.match(line), line


def test_log_lines_are_logfmt():
    formatter = KeyValueFormatter()
    record = logging.LogRecord("busd.x", logging.WARNING, __file__, 1,
                               'recovered "torn" tail ns=%s bytes=%d', ("app", 12), None)
    line = formatter.format(record)
    assert ' level=WARN logger=busd.x msg="recovered \\"torn\\" tail" ns=app bytes=12' in line
    assert split_message("listening") == ("listening", "")
    assert split_message("a b c=1 d=2") == ("a b", "c=1 d=2")


def test_describe_config_masks_the_key():
    config = load_config({"--namespaces": "a,b", "--secret-key": "s3cret"}, {})
    text = describe_config(config)
    assert "secret_key=***" in text and "s3cret" not in text
    assert "namespaces=a,b" in text
