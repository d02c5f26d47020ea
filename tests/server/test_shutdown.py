"""Signals and shutdown: handled from the start, the drain takes no new requests, the
store is always closed, and the exit status is 0.

Faults are injected into a real server process by a few lines it runs before `bus server`
(BusServer's `fault`): a slow recovery, a slow fsync, as on a loaded disk."""

from __future__ import annotations

import signal
import socket
import time

from busclient import BusServer, Http, publish, request, wait_until

# LocalStore is compiled and takes no patched methods: the server gets a subclass
SLOW_START = """
import asyncio
from busd.server import app
class SlowStart(app.LocalStore):
    async def start(self, listener):  # a long recovery
        await asyncio.sleep(2)
        return await super().start(listener)
app.LocalStore = SlowStart
"""

SLOW_FSYNC = """
import time
from busd.server import app
class SlowFsync(app.LocalStore):
    def _sync_logs(self, namespaces):  # a disk that takes 5 s to flush
        time.sleep(5)
        return super()._sync_logs(namespaces)
app.LocalStore = SlowFsync
"""


def wait_for_log(server: BusServer, text: str, timeout: float = 15.0) -> None:
    def logged() -> bool:
        """Whether `text` is in the log; a server that exited without it fails at once."""
        if text in server.log():
            return True
        assert server.proc.poll() is None, f"exited with {server.proc.returncode}:\n{server.log()}"
        return False

    wait_until(logged, timeout, interval=0.02,
               what=lambda: f"no {text!r} in the log:\n{server.log()}")


def test_signals_during_a_long_start_neither_kill_nor_get_lost(tmp_path):
    server = BusServer(tmp_path / "data", "app", fault=SLOW_START)
    try:
        server.spawn()
        wait_for_log(server, "msg=\"starting\"")  # now recovering, for 2 s
        server.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=10) == 0, server.log()
        assert "stopped" in server.log() and "Traceback" not in server.log()
    finally:
        server.close()


def test_a_slow_fsync_at_shutdown_still_closes_the_store_and_exits_0(tmp_path):
    server = BusServer(tmp_path / "data", "app", fault=SLOW_FSYNC).start()
    try:
        with Http(server.port) as keep_alive:
            assert keep_alive.request("GET", "/healthz").status == 200
            started = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)  # draining now: the fsync takes 5 s
            keep_alive.sock.settimeout(2)
            try:
                keep_alive.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                served = keep_alive.file.read(12)
            except OSError:
                served = b""
            assert not served.startswith(b"HTTP/1.1 200"), "the drain took a new request"
            with socket.socket() as newcomer:  # and it no longer accepts connections
                assert newcomer.connect_ex(("127.0.0.1", server.port)) != 0
        assert server.proc.wait(timeout=15) == 0, server.log()[-2000:]
        assert time.monotonic() - started >= 4.5, "the store was closed before its fsync"
        log = server.log()
        assert "the last fsync took over 3s" in log and "stopped" in log, log[-2000:]
        assert "Traceback" not in log
    finally:
        server.close()


def test_events_answered_before_sigterm_are_there_after_a_restart(make_server):
    server = make_server("app")
    for n in range(20):
        assert publish(server.port, "app.kept", n).status == 202
    assert server.stop() == 0
    server.start()
    assert request(server.port, "GET", "/healthz").json()["namespaces"]["app"]["events"] == 20
