#!/usr/bin/env python3
"""Regenerate docs/console.png, the console screenshot in the README.

Starts a throwaway busd (its own data directory, a free loopback port), publishes a
varying trickle of events for a few seconds while a second tab tails one namespace (so
both publish and delivery rates move), then photographs the overview tab with Debian's
chromium driven by Playwright (`pip install -e '.[test]'` and `apt-get install chromium`).

    .venv/bin/python tools/console_screenshot.py [--out docs/console.png] [--seconds 40]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
NAMESPACES = "orders,payments,notifications"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_listening(port: int, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"busd exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit("busd did not start listening")


def publish(port: int, subject: str, payload: object) -> None:
    body = json.dumps({"subject": subject, "payload": payload}).encode()
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/", data=body,
                                                  method="POST"), timeout=5).close()


def trickle(port: int, stop: threading.Event) -> None:
    """Events at rates that rise and fall, different per namespace."""
    started, n = time.monotonic(), 0
    while not stop.is_set():
        elapsed = time.monotonic() - started
        publish(port, "orders.created", {"order": n, "total": round(10 + n * 1.7, 2)})
        if n % 3 == 0:
            publish(port, "payments.settled", {"order": n})
        if n % 7 == 0:
            publish(port, "notifications.email", {"to": f"user{n}@example.com"})
        n += 1
        time.sleep(0.02 + 0.04 * (1 + math.sin(elapsed / 1.5)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "console.png")
    parser.add_argument("--seconds", type=float, default=40.0)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return print("no chromium: apt-get install chromium", file=sys.stderr) or 1
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen([sys.executable, "-m", "busd", "server", "--namespaces",
                                   NAMESPACES, "--path", data, "--addr", f"127.0.0.1:{port}"],
                                  stderr=subprocess.DEVNULL)
        stop = threading.Event()
        loader = threading.Thread(target=trickle, args=(port, stop), daemon=True)
        try:
            wait_until_listening(port, server)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium,
                                                     args=["--no-sandbox", "--headless=new"])
                context = browser.new_context(viewport={"width": 1100, "height": 520},
                                              device_scale_factor=1)
                tail = context.new_page()
                tail.goto(f"http://127.0.0.1:{port}/ui")
                tail.click("#tabs button[data-view=tail]")
                tail.fill("#tail-pattern", "orders.>")
                tail.click("#tail-go")
                overview = context.new_page()
                overview.goto(f"http://127.0.0.1:{port}/ui")
                loader.start()
                time.sleep(args.seconds)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                overview.screenshot(path=str(args.out))
                browser.close()
        finally:
            stop.set()
            if loader.is_alive():
                loader.join()
            server.terminate()
            server.wait(10)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
