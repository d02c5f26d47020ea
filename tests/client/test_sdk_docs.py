"""The SDK's documentation works as written: every example under examples/ and every
Python block of README's "Python SDK" section runs against a real server and says so."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from busclient import BusServer

ROOT = Path(__file__).resolve().parents[2]


def setup_namespaces() -> str:
    """The namespaces of README's set-up server command: the examples must run against it."""
    setup = (ROOT / "README.md").read_text().split("\n## Set up\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"bus server --namespaces (\S+)", setup).group(1)


NAMESPACES = setup_namespaces()


@pytest.fixture(scope="module")
def bus(tmp_path_factory):
    server = BusServer(tmp_path_factory.mktemp("sdk-docs") / "data", NAMESPACES).start()
    yield server
    server.close()


def run_python(args: list[str], bus: BusServer, code: str | None = None) -> str:
    env = dict(os.environ, BUS_URL=f"http://127.0.0.1:{bus.port}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, *args], input=code, env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def masked(output: str) -> str:
    return re.sub(r"e_[0-9a-v]{20}|index [0-9]+", "…", output)


@pytest.mark.parametrize("name, expected", [
    ("pubsub.py", "received notifications.email {'to': 'user@example.com', 'subject': 'Welcome!'}"),
    ("request_reply.py", "30"),
    ("confirm.py", "confirmed"),
])
def test_example_runs(bus, name, expected):
    first = run_python([f"examples/{name}"], bus)
    assert expected in first.splitlines()
    # and again, with the same output but for ids and indexes: nothing depends on a fresh
    # server, and no run replays an earlier run's events
    assert masked(run_python([f"examples/{name}"], bus)) == masked(first)


def test_examples_name_the_setup_namespaces():
    for example in (ROOT / "examples").glob("*.py"):
        assert f"--namespaces {NAMESPACES}" in example.read_text(), example.name


def readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python SDK\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_has_the_three_patterns_and_asyncio():
    blocks = readme_blocks()
    assert len(blocks) == 4
    assert "request_reply=True" in blocks[1] and "confirm=1" in blocks[2]
    assert "AsyncClient" in blocks[3]


@pytest.mark.parametrize("index, expected", [(0, "received"), (1, "30"), (2, "confirmed"),
                                             (3, "app.orders {'id': 2}")])
def test_readme_block_runs_as_written(bus, index, expected):
    code = readme_blocks()[index]
    assert "http://localhost:2021" in code
    out = run_python(["-"], bus, code.replace("http://localhost:2021", f"http://127.0.0.1:{bus.port}"))
    assert expected in out
