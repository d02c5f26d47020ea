"""The SDK stands alone: `import busd` / `import busd.client` load nothing of the server,
and the SDK works from a tree holding only `busd/__init__.py`, `busd/wire.py` and
`busd/client/` (what a client-only install would ship)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from busclient import BusServer

ROOT = Path(__file__).resolve().parents[2]
SERVER_SIDE = ("busd.server", "busd.bus", "busd.store", "busd._core", "busd.config")

LOADED = f"""
import sys
{{imports}}
server_side = [m for m in sys.modules if m.startswith({SERVER_SIDE!r})]
assert not server_side, server_side
"""


def run(code: str, path: Path, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
    env["PYTHONPATH"] = str(path)
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("imports", ["import busd.client", "import busd",
                                     "from busd import Client, AsyncClient, BusError"])
def test_importing_the_sdk_loads_no_server_module(imports, tmp_path):
    run(LOADED.format(imports=imports), ROOT, tmp_path)


def test_the_sdk_works_from_a_tree_without_the_server(tmp_path):
    tree = tmp_path / "sdk-only"
    (tree / "busd").mkdir(parents=True)
    for name in ("__init__.py", "wire.py"):
        shutil.copy(ROOT / "busd" / name, tree / "busd" / name)
    shutil.copytree(ROOT / "busd" / "client", tree / "busd" / "client",
                    ignore=shutil.ignore_patterns("__pycache__"))
    server = BusServer(tmp_path / "data", "app").start()  # the full tree's server
    try:
        out = run(f"""
import asyncio, sys

class Absent:  # (this venv has the whole tree installed, editable: hide the server side)
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.startswith({SERVER_SIDE!r}):
            raise ImportError(name + " is not in this tree")

sys.meta_path.insert(0, Absent)
import busd
assert busd.__file__.startswith({str(tree)!r}), busd.__file__
from busd import AsyncClient, Client

with Client("http://127.0.0.1:{server.port}", timeout=10) as client:
    sub = client.get("app.>", start="newest")
    client.put("app.x", {{"n": 1}})
    print("sync", next(sub).payload)

async def main():
    async with AsyncClient("http://127.0.0.1:{server.port}", timeout=10) as client:
        sub = await client.get("app.>", start="oldest")
        print("async", (await sub.__anext__()).payload)

asyncio.run(main())
""", tree, tmp_path)
    finally:
        server.close()
    assert out.split("\n") == ["sync {'n': 1}", "async {'n': 1}", ""]
