"""What every benchmark here needs: a free port, a server pinned to a CPU set and ready, its
CPU seconds and RSS.

`Server` takes a command in the form of the scripts' --busd-cmd templates (placeholders
{python} {port} {addr} {path}), runs it under `taskset -c`, and `start` returns once the
port accepts connections and the process runs on exactly those CPUs, so no benchmark
measures a server that is still starting or one that is not where it was put.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# `bus server` on the server's address and data dir; the scripts add --namespaces and more.
BUSD = ["{python}", "-m", "busd", "server", "--addr", "{addr}", "--path", "{path}"]
TICK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    """A loopback port free now, for a server told its number on the command line."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_list(text: str) -> list[int]:
    """CPU numbers from `taskset -c` syntax: ``0``, ``0,2``, ``1-3``."""
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    if not cpus:
        raise ValueError("no CPU in it")
    return sorted(cpus)


def cpus_allowed(pid: int | str = "self") -> list[int]:
    """The CPUs the kernel lets a process run on (its Cpus_allowed_list)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Cpus_allowed_list:"):
                return cpu_list(line.split(":", 1)[1].strip())
    raise RuntimeError(f"no Cpus_allowed_list for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its waited-for children, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / TICK
    except OSError:
        return 0.0


def in_tree(code: str, env: dict[str, str] | None = None) -> dict:
    """`Server` keywords that make `python -m busd` import source tree `code`'s busd: on
    PYTHONPATH, and as the working directory, which -m puts before PYTHONPATH (started from
    another checkout, it would import that one)."""
    code = str(Path(code).resolve())
    return {"cwd": code, "env": {**(os.environ if env is None else env), "PYTHONPATH": code}}


class Server:
    """A server process we started ourselves, stopped by its own pid only. ``flags`` follow
    the formatted template as given; with ``cpus`` it runs under `taskset -c`; ``popen``
    goes to subprocess.Popen (the output is discarded unless it says otherwise)."""

    def __init__(self, template: list[str] | str, cpus: list[int] | str | None, *flags: str,
                 name: str = "busd", path: str = "", python: str = sys.executable,
                 grace: float = 10.0, **popen) -> None:
        self.name = name
        self.port = free_port()
        subst = {"python": python, "port": str(self.port), "addr": f"127.0.0.1:{self.port}",
                 "path": path}
        words = shlex.split(template) if isinstance(template, str) else template
        self.cmd = [word.format(**subst) for word in words] + list(flags)
        self.cpus = cpu_list(cpus) if isinstance(cpus, str) else cpus
        if self.cpus:
            self.cmd = ["taskset", "-c", ",".join(map(str, self.cpus)), *self.cmd]
        self.grace = grace
        self.popen = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL,
                      "stderr": subprocess.DEVNULL, **popen}
        self.proc: subprocess.Popen | None = None
        self.ready_after = 0.0  # seconds from just before exec to the first accepted connect

    def start(self, timeout: float = 30.0, poll: float = 0.05) -> Server:
        started = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, **self.popen)
        while True:
            attempt = time.perf_counter()
            if self.proc.poll() is not None:
                raise self._failed(f"exited with {self.proc.returncode} before accepting "
                                   "connections")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if attempt - started > timeout:
                    raise self._failed(f"did not accept connections within {timeout}s") from None
                time.sleep(poll)
        self.ready_after = attempt - started
        got = cpus_allowed(self.proc.pid)
        if self.cpus and got != self.cpus:
            raise self._failed(f"runs on CPUs {got}, not {self.cpus}")
        return self

    def _failed(self, what: str) -> RuntimeError:
        self.stop()
        output = self.output()
        return RuntimeError(f"{self.name} {what}" + (f":\n{output}" if output else ""))

    def output(self) -> str:
        """The end of what the stopped server wrote, if its stderr was a pipe."""
        pipe = self.proc.stderr
        return pipe.read().decode(errors="replace")[-2000:] if pipe else ""

    def rss_kib(self, key: str = "VmRSS") -> int:
        """VmRSS (or another KiB field of /proc/PID/status)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise RuntimeError(f"no {key} for {self.name} (pid {self.proc.pid})")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                log(f"  {self.name} (pid {self.proc.pid}) ignored SIGTERM for {self.grace:g}s: "
                    "SIGKILL")
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
