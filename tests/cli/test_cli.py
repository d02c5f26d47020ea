"""`bus put/get/ack`, help and flag errors: the CLI as a subprocess against a real server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
from busclient import free_port, publish, request

from busd.cli.main import main

ID = re.compile(r"id=(e_[0-9a-v]{20}) index=(\d+) created_at=(\S+)")


def bus(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run `python -m busd …`; BUS_* variables of the test's environment are not passed."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "busd", *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def spawn(*args: str, env: dict | None = None) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
    full_env.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "busd", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full_env)


def host(server) -> str:
    return f"http://127.0.0.1:{server.port}"


# -- help and version -------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["server", "put", "get", "ack", "debug", "dump", "restore",
                                     "copy"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code in (None, 0)
    out = capsys.readouterr().out
    assert out.startswith(f"bus {command}: ")
    assert f"bus {command} " in out and "Usage:" in out


def test_top_level_help_lists_commands_and_version_prints(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("server", "put", "get", "ack", "debug", "dump", "restore", "copy"):
        assert f"\n  {command} " in out
    result = bus("--version")
    assert result.returncode == 0 and "busd" in result.stdout


# -- bad flag values: non-zero exit, one line naming the flag -----------------------------------
@pytest.mark.parametrize("argv, flag", [
    (["get", "--subject", "app.>", "--start", "e_yesterday"], "--start"),
    (["get", "--subject", "app.>", "--ack", "sometimes"], "--ack"),
    (["get", "--subject", "app.>", "--redelivery", "5 parsecs"], "--redelivery"),
    (["get", "--subject", "app.>", "--count", "0"], "--count"),
    (["get", "--subject", "app.>", "--redelivery-count", "three"], "--redelivery-count"),
    (["put", "--subject", "app.a", "--data", "1", "--confirm", "x"], "--confirm"),
    (["put", "--subject", "app.a", "--data", "1", "--host", "ftp://nowhere"], "--host"),
    (["put", "--subject", "app.a", "--data", "1", "--host", "https://127.0.0.1:1",
      "--ca-file", "/nonexistent/ca.pem"], "--ca-file: cannot load /nonexistent/ca.pem"),
    (["ack", "--consumer-id", "c_" + "0" * 20, "--event-id", "e_" + "0" * 20, "--ca-file",
      "ca.pem", "--insecure"], "--ca-file and --insecure cannot be used together"),
    (["ack", "--consumer-id", "c_nope", "--event-id", "e_nope"], "--consumer-id"),
    (["debug", "--path", "/nonexistent/busd"], "--path"),
    (["dump", "--path", "/nonexistent/busd", "--output", "-"], "--path"),
    (["dump", "--namespaces", "a.b", "--output", "-"], "--namespaces"),
    (["restore", "--input", "/nonexistent/dump.jsonl"], "--input"),
    (["copy", "--from", "/tmp", "--to", "/tmp/x", "--skip-ids", "e_bad"], "--skip-ids"),
])
def test_bad_flag_values_exit_2_with_one_line_naming_the_flag(argv, flag, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"bus {argv[0]}: {flag}"), err


@pytest.mark.parametrize("argv, line", [
    (["put", "--subjct", "app.a", "--data", "1"],
     "bus put: unknown flag --subjct (did you mean --subject?)"),
    (["server", "--bogus"], "bus server: unknown flag --bogus"),
    (["--bogus"], "bus: unknown flag --bogus"),
    ([], "bus: give a command (bus --help describes them)"),
    (["put", "--subject", "app.a"], "bus put: missing --data"),
    (["get", "--subject"], "bus get: --subject needs a value"),
    (["debug", "--verify=yes"], "bus debug: --verify takes no value"),
    (["put", "--subject", "app.a", "--data", "1", "2"],
     "bus put: unexpected argument '2' (a value goes right after its flag)"),
    (["put", "--subject", "app.a", "--subject", "app.b", "--data", "1"],
     "bus put: --subject is given twice"),
    (["dump", "--output", "a", "--output-dir", "b"],
     "bus dump: --output and --output-dir cannot be used together"),
    (["dump", "--host", ":1", "--secret-key", "k", "--output", "-"],
     "bus dump: --secret-key cannot be used with --host"),
])
def test_command_line_errors_name_the_flag_then_show_the_usage(argv, line):
    result = bus(*argv)
    assert result.returncode == 2, result.stderr
    first, rest = result.stderr.split("\n", 1)
    assert first == line
    command = f"bus {argv[0]}" if argv and not argv[0].startswith("-") else "bus"
    assert rest.startswith(f"Usage:\n  {command} "), rest
    assert "Option(" not in rest and "Argument(" not in rest and result.stdout == ""


def test_bad_server_variable_exits_2_naming_it():
    result = bus("server", "--namespaces", "app", env={"BUS_FSYNC": "sometimes"})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "BUS_FSYNC" in result.stderr


def test_unknown_command_and_unreachable_bus():
    result = bus("publish")
    assert result.returncode == 2 and "unknown command 'publish'" in result.stderr
    result = bus("put", "--subject", "app.a", "--data", "1", "--host",
                 f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert result.stderr.startswith("bus put: cannot reach the bus at 127.0.0.1:")


# -- put / get / ack ------------------------------------------------------------------------
def test_put_then_get_prints_the_stored_event(server):
    put = bus("put", "--host", host(server), "--subject", "app.orders", "--data",
              '{"n": 1, "s": "é"}', "--trace-id", "req-1", "--key", "k-1")
    assert put.returncode == 0, put.stderr
    assert put.stdout == ""
    event_id, index, created_at = ID.search(put.stderr).groups()
    assert index == "0"
    text = bus("put", "--host", host(server), "--subject", "app.notes", "--data", "plain text")
    assert text.returncode == 0, text.stderr

    got = bus("get", "--host", host(server), "--subject", "app.>", "--start", "oldest",
              "--count", "2")
    assert got.returncode == 0, got.stderr
    assert re.search(r"consumer_id=c_[0-9a-v]{20}", got.stderr)
    first, second = got.stdout.splitlines()
    assert first == (f'{{"id":"{event_id}","subject":"app.orders","trace_id":"req-1",'
                     f'"key":"k-1","created_at":"{created_at}","payload":{{"n": 1, "s": "é"}}}}')
    assert json.loads(second)["payload"] == "plain text"


def test_get_with_several_subjects_prints_each_matching_event_once(server):
    for subject, n in (("app.a.x", 0), ("app.c", 1), ("app.b", 2), ("app.a.y", 3)):
        publish(server.port, subject, n)
    got = bus("get", "--host", host(server), "--subject", "app.a.*", "--subject", "app.a.>",
              "--subject", "app.b", "--start", "oldest", "--count", "3")
    assert got.returncode == 0, got.stderr
    assert [json.loads(line)["payload"] for line in got.stdout.splitlines()] == [0, 2, 3]


def test_put_with_a_key_seen_before_fails_with_the_reason(server):
    args = ("put", "--host", host(server), "--subject", "app.a", "--data", "1", "--key", "k")
    assert bus(*args).returncode == 0
    again = bus(*args)
    assert again.returncode == 1
    assert again.stderr.strip() == "bus put: the bus answered 409: key was processed before"


def test_get_from_an_unknown_id_says_so(server):
    publish(server.port, "app.a", 1)
    result = bus("get", "--host", host(server), "--subject", "app.>", "--start",
                 "e_" + "0" * 20)
    assert result.returncode == 1
    assert "not found" in result.stderr


def test_get_auto_acks_each_event(server):
    for n in range(3):
        publish(server.port, "app.a", n)
    # With acks, one event is in flight at a time: three events arrive quickly only if each
    # was acked (else the second would wait for 3 redeliveries of the first).
    started = time.monotonic()
    got = bus("get", "--host", host(server), "--subject", "app.a", "--start", "oldest",
              "--ack", "auto", "--redelivery", "10s", "--count", "3")
    assert got.returncode == 0, got.stderr
    assert [json.loads(line)["payload"] for line in got.stdout.splitlines()] == [0, 1, 2]
    assert time.monotonic() - started < 8
    metrics = request(server.port, "GET", "/metrics").body.decode()
    assert "busd_acks_total 3" in metrics


def test_manual_ack_with_bus_ack(server):
    reader = spawn("get", "--host", host(server), "--subject", "app.>", "--start", "oldest",
                   "--ack", "manual", "--redelivery", "300ms", "--redelivery-count", "0")
    try:
        consumer_id = reader.stderr.readline().strip().removeprefix("consumer_id=")
        first_id = publish(server.port, "app.a", "first").headers["x-bus-event-id"]
        publish(server.port, "app.a", "second")
        line1, line2 = reader.stdout.readline(), reader.stdout.readline()
        assert json.loads(line1)["id"] == json.loads(line2)["id"] == first_id  # redelivered
        acked = bus("ack", "--host", host(server), "--consumer-id", consumer_id,
                    "--event-id", first_id)
        assert acked.returncode == 0, acked.stderr
        while json.loads(line := reader.stdout.readline())["id"] == first_id:
            pass  # a redelivery that crossed the ack
        assert json.loads(line)["payload"] == "second"
    finally:
        reader.kill()
        reader.wait()


def test_get_reconnects_and_resumes_after_a_restart(server):
    publish(server.port, "app.a", 0)
    reader = spawn("get", "--host", host(server), "--subject", "app.>", "--start", "oldest",
                   "--count", "3")
    try:
        assert json.loads(reader.stdout.readline())["payload"] == 0
        server.restart()
        for n in (1, 2):
            publish(server.port, "app.a", n)
        out, err = reader.communicate(timeout=20)
    finally:
        reader.kill()
        reader.wait()
    assert reader.returncode == 0, err
    assert [json.loads(line)["payload"] for line in out.splitlines()] == [1, 2]  # no repeat
    assert err.count("consumer_id=") == 2  # the new connection's consumer


def test_put_confirm_waits_for_a_consumer_ack(server):
    consumer = spawn("get", "--host", host(server), "--subject", "app.>", "--ack", "auto")
    try:
        assert consumer.stderr.readline().startswith("consumer_id=")
        put = bus("put", "--host", host(server), "--subject", "app.job", "--data", '{"j":1}',
                  "--confirm", "1", "--timeout", "10s")
        assert put.returncode == 0, put.stderr
        assert ID.search(put.stderr)
        assert json.loads(consumer.stdout.readline())["payload"] == {"j": 1}
        short = bus("put", "--host", host(server), "--subject", "app.job", "--data", "2",
                    "--confirm", "2", "--timeout", "500ms")
        assert short.returncode == 1
        assert short.stderr.endswith("bus put: --confirm 2: 1 of 2 consumers confirmed "
                                     "within 0.5s\n"), short.stderr
        assert ID.search(short.stderr).group(2) == "1"  # stored all the same: its id is told
    finally:
        consumer.kill()
        consumer.wait()
    alone = bus("put", "--host", host(server), "--subject", "app.job", "--data", "3",
                "--confirm", "1", "--timeout", "300ms")
    assert alone.returncode == 1
    assert "0 of 1 consumers confirmed" in alone.stderr


def test_token_for_a_bus_with_an_auth_file(make_server, tmp_path):
    tokens = tmp_path / "tokens.toml"
    tokens.write_text('[[token]]\nname = "ops"\nsecret = "ops-secret-1"\n'
                      'publish = [">"]\nsubscribe = [">"]\n')
    server = make_server("app", "--auth-file", str(tokens))
    args = ("put", "--host", host(server), "--subject", "app.a", "--data", "1")
    refused = bus(*args)
    assert refused.returncode == 1 and "answered 401" in refused.stderr
    assert bus(*args, "--token", "ops-secret-1").returncode == 0
    got = bus("get", "--host", host(server), "--subject", "app.>", "--start", "oldest",
              "--count", "1", env={"BUS_TOKEN": "ops-secret-1"})
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["payload"] == 1


def test_https_with_a_ca_file_or_insecure(tls_server, certificate, tmp_path):
    cert = str(certificate[0])
    url, port = f"https://127.0.0.1:{tls_server.port}", tls_server.port
    refused = bus("put", "--host", url, "--subject", "app.a", "--data", "1")
    assert refused.returncode == 1
    assert refused.stderr == (f"bus put: cannot reach the bus at 127.0.0.1:{port}: its TLS "
                              "certificate failed verification: self-signed certificate\n")
    # put, get and ack, trusting the certificate with --ca-file or BUS_CA_FILE
    reader = spawn("get", "--host", url, "--ca-file", cert, "--subject", "app.>", "--start",
                   "oldest", "--ack", "manual", "--redelivery", "30s")
    try:
        consumer_id = reader.stderr.readline().strip().removeprefix("consumer_id=")
        put = bus("put", "--host", url, "--subject", "app.a", "--data", '{"n": 1}',
                  env={"BUS_CA_FILE": cert})
        assert put.returncode == 0, put.stderr
        event_id = ID.search(put.stderr).group(1)
        assert json.loads(reader.stdout.readline())["id"] == event_id
        acked = bus("ack", "--host", url, "--ca-file", cert, "--consumer-id", consumer_id,
                    "--event-id", event_id)
        assert acked.returncode == 0, acked.stderr
    finally:
        reader.kill()
        reader.wait()
    # --insecure: no verification (and BUS_CA_FILE, explicit or not, is not read)
    insecure = {"BUS_CA_FILE": str(tmp_path / "missing.pem")}
    consumer = spawn("get", "--host", url, "--insecure", "--subject", "app.>", "--ack", "auto",
                     env=insecure)
    try:
        assert consumer.stderr.readline().startswith("consumer_id=")
        confirmed = bus("put", "--host", url, "--insecure", "--subject", "app.job", "--data",
                        "2", "--confirm", "1", "--timeout", "10s", env=insecure)
        assert confirmed.returncode == 0, confirmed.stderr
    finally:
        consumer.kill()
        consumer.wait()
    dump = tmp_path / "app.jsonl"
    dumped = bus("dump", "--host", url, "--ca-file", cert, "--output", str(dump))
    assert dumped.returncode == 0, dumped.stderr
    assert [json.loads(line)["id"] for line in dump.read_text().splitlines()][0] == event_id
    restored = bus("restore", "--host", url, "--insecure", "--input", str(dump), env=insecure)
    assert restored.stderr.endswith("0 restored, 2 already present\n"), restored.stderr
