"""`bus get --group` and `bus groups` against a real server."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

from busclient import request
from test_cli import bus, host


def test_get_group_members_ack_and_groups_lists_and_deletes(make_server):
    server = make_server("orders")
    body = [{"subject": "orders.new", "payload": n} for n in range(4)]
    assert request(server.port, "POST", "/", body).status == 202
    got = bus("get", "--subject", "orders.>", "--group", "billing", "--start", "oldest",
              "--max-inflight", "4", "--count", "4", "--host", host(server))
    assert got.returncode == 0, got.stderr
    assert [json.loads(line)["payload"] for line in got.stdout.splitlines()] == [0, 1, 2, 3]
    listed = bus("groups", "--host", host(server))  # into a pipe: JSON
    state = json.loads(listed.stdout)["orders"]["billing"]
    assert state["acked"] == 4 and state["pending"] == 0 and state["cursor"] == 4
    deleted = bus("groups", "--delete", "--namespace", "orders", "--name", "billing",
                  "--host", host(server))
    assert deleted.returncode == 0 and "deleted group billing" in deleted.stderr
    assert json.loads(bus("groups", "--json", "--host", host(server)).stdout) == {"orders": {}}
    missing = bus("groups", "--delete", "--namespace", "orders", "--name", "billing",
                  "--host", host(server))
    assert missing.returncode != 0 and "billing" in missing.stderr


def test_groups_table_on_a_terminal(make_server):
    server = make_server("orders")
    request(server.port, "GET", "/?subject=orders.>&group=g1", None)  # created, then gone
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
    proc = subprocess.run([sys.executable, "-m", "busd", "groups", "--host", host(server)],
                          stdout=follower, stderr=subprocess.PIPE, env=env, timeout=30)
    os.close(follower)
    output = os.read(leader, 65536).decode()
    os.close(leader)
    assert proc.returncode == 0, proc.stderr
    lines = output.strip().splitlines()
    assert lines[0].split() == ["namespace", "group", "subjects", "members", "pending", "lag",
                                "ack_floor", "redeliveries", "dead_letters"]
    assert lines[1].split()[:3] == ["orders", "g1", "orders.>"]
