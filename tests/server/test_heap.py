"""The start-up heap is frozen: a full collection walks only what came after it."""

from __future__ import annotations

import re
import signal

from busclient import BusServer, publish, wait_until

REPORT_HEAP_ON_SIGHUP = """
import gc, sys
from busd.server.app import Server
def reload(self):  # tells the test what the collector would walk now
    print(f"heap frozen={gc.get_freeze_count()} tracked={len(gc.get_objects())}",
          file=sys.stderr, flush=True)
Server.reload = reload
"""


def test_a_full_collection_after_start_up_does_not_walk_the_start_up_heap(tmp_path):
    server = BusServer(tmp_path / "data", "app", fault=REPORT_HEAP_ON_SIGHUP).start()
    try:
        assert publish(server.port, "app.x", {"n": 1}).status == 202
        server.proc.send_signal(signal.SIGHUP)
        found = wait_until(lambda: re.search(r"heap frozen=(\d+) tracked=(\d+)", server.log()),
                           interval=0.02, what=lambda: f"no heap line in the log:\n{server.log()}")
        frozen, tracked = map(int, found.groups())
        # modules, classes and caches made at start-up: thousands of objects, out of reach
        assert frozen > 5000, found.group(0)
        assert tracked < frozen / 4, found.group(0)
    finally:
        server.close()
