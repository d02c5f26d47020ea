"""systemd integration: sd_notify messages on a test datagram socket, and the unit files."""

from __future__ import annotations

import re
import socket
import tempfile
import time
from pathlib import Path

import pytest

from busd.server.config import _OPTIONS
from busd.server.systemd import notify, watchdog_interval

TOOLS = Path(__file__).resolve().parents[2] / "tools"


@pytest.fixture
def notify_socket():
    """A unix datagram socket standing in for systemd's (short path: AF_UNIX limit)."""
    directory = tempfile.mkdtemp(prefix="busd-sd-")
    path = str(Path(directory) / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    yield sock, path
    sock.close()
    Path(path).unlink(missing_ok=True)
    Path(directory).rmdir()


def receive(sock: socket.socket, seconds: float) -> list[tuple[float, str]]:
    """Every datagram (with its arrival time) received during the next `seconds`."""
    got = []
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            got.append((time.monotonic(), sock.recv(4096).decode()))
        except TimeoutError:
            break
    return got


def wait_for(sock: socket.socket, message: str, timeout: float = 10.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if message in sock.recv(4096).decode().split("\n"):
                return time.monotonic()
        except TimeoutError:
            break
    raise AssertionError(f"no {message} within {timeout}s")


def test_ready_watchdog_and_stopping(make_server, notify_socket):
    sock, path = notify_socket
    server = make_server("app", env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    wait_for(sock, "READY=1")
    pings = [t for t, m in receive(sock, 0.45) if m == "WATCHDOG=1"]
    assert len(pings) >= 3  # every 0.1 s: half of WATCHDOG_USEC
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert all(0.05 < gap < 0.3 for gap in gaps), gaps
    assert server.stop() == 0
    messages = [m for _, m in receive(sock, 0.3)]
    assert "STOPPING=1" in messages


def test_ready_is_sent_only_once_listening_and_no_watchdog_unless_asked(make_server,
                                                                        notify_socket):
    sock, path = notify_socket
    server = make_server("app", env={"NOTIFY_SOCKET": path})
    wait_for(sock, "READY=1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=2):
        pass  # READY=1 came from a server that accepts connections
    assert [m for _, m in receive(sock, 0.4)] == []
    assert server.stop() == 0
    assert "STOPPING=1" in [m for _, m in receive(sock, 0.2)]


def test_notify_without_systemd_and_watchdog_settings(monkeypatch, notify_socket):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert notify("STATUS=testing") is True
    assert sock.recv(100) == b"STATUS=testing"
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    assert watchdog_interval() == 1.5
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert watchdog_interval() is None


def test_notify_to_an_abstract_socket(monkeypatch):
    name = f"busd-test-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("READY=1") is True
        assert sock.recv(100) == b"READY=1"


def test_unit_file_is_a_notify_service_with_hardening():
    unit = (TOOLS / "busd.service").read_text()
    settings: dict[str, str] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings[key] = value
    assert settings["Type"] == "notify"
    assert re.match(r"\S*/bus server( |$)", settings["ExecStart"])
    assert settings["EnvironmentFile"] == "-/etc/busd/busd.env"
    assert settings["Restart"] in ("on-failure", "always")
    assert settings["NoNewPrivileges"] == "yes" and settings["ProtectSystem"] == "strict"
    assert "/var/lib/busd" in settings["ReadWritePaths"]
    assert "--path /var/lib/busd" in settings["ExecStart"]
    assert int(settings["LimitNOFILE"]) >= 65536
    assert "WatchdogSec" in settings and "AF_UNIX" in settings["RestrictAddressFamilies"]


def test_env_example_names_only_real_variables():
    known = {variable for variable, _, _ in _OPTIONS.values() if variable}
    text = (TOOLS / "busd.env.example").read_text()
    named = set(re.findall(r"^#?(BUS_[A-Z_]+)=", text, re.MULTILINE))
    assert "BUS_NAMESPACES" in named and len(named) > 10
    assert named <= known, named - known
