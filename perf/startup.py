"""Start-up time: from exec of `bus server` to its port accepting, empty and with history.

Usage:
  startup.py [options]

Options:
  -h, --help            Show this help.
  -R N, --repeat N      Starts per data dir, the median is reported [default: 7].
  --stored-mb MB        History stored in the second data dir, in MiB [default: 1024].
  --event-kb KB         Payload size of the stored events (big: the dir fills fast)
                        [default: 512].
  --free-ids N          Of the stored events, this many have free-form ids (the id index
                        is loaded at start-up) [default: 1000].
  --server-cpus LIST    CPUs of the server, as `taskset -c` takes them [default: 0].
  --data-dir DIR        Where the two data dirs go (default: system temp).
  --timeout S           Give up on a start after this many seconds [default: 20].
  --server-args ARGS    More `bus server` flags, space-separated (e.g. "--dup-size 0")
                        [default: ].
  --baseline-python PY  Also start the server of another install (e.g. main's
                        .venv/bin/python), interleaved with this one start for start, so
                        both see the same machine load.

The history is written with busd's own log (NamespaceLog.append), not through HTTP, so
1 GiB takes seconds. Each start is a fresh process (`python -m busd server`) on a free
port; the clock runs from just before exec to the first accepted TCP connect (polled
every millisecond), then the server is stopped with SIGTERM. The empty dir is the
baseline measured in the same run.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BUSD, Server  # noqa: E402
from opts import parse  # noqa: E402


def fill(path: Path, megabytes: int, event_kb: int, free_ids: int) -> int:
    """Write `megabytes` of events into namespace `bench` of a data dir; events written."""
    from busd._core import make_record, new_xid, scan_body
    from busd.store.local.log import NamespaceLog

    payload = b'"' + b"x" * (event_kb * 1024) + b'"'
    (event,) = scan_body(b'{"subject":"bench.big","payload":' + payload + b"}")[1]
    nslog = NamespaceLog(path, "bench")
    nslog.open()
    count = megabytes * 1024 // event_kb
    every = max(1, count // free_ids) if free_ids else 0
    for i in range(count):
        event_id = b"order-%d" % i if every and i % every == 0 else b"e_" + new_xid()
        nslog.append([make_record(event, event_id, b"2026-01-01T00:00:00Z")])
    nslog.close()
    return count


def start_once(python: str, path: Path, cpus: str, timeout: float, extra: list[str]) -> float:
    """Seconds from exec to the first accepted connect, polled every millisecond."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
    # run beside the data dir: `python -m` imports from its working directory first, so
    # started in a checkout, a baseline python would import that checkout's busd
    server = Server([*BUSD, "--namespaces", "bench", "--log-level", "WARN"], cpus, *extra,
                    path=str(path), python=python, env=env, stderr=subprocess.PIPE,
                    cwd=str(path.parent))
    try:
        return server.start(timeout, poll=0.001).ready_after
    finally:
        server.stop()


def main() -> None:
    args = parse(__doc__, repeat=int, stored_mb=int, event_kb=int, free_ids=int,
                 timeout=float)
    root = Path(tempfile.mkdtemp(prefix="busd-startup-", dir=args.data_dir))
    try:
        empty, full = root / "empty", root / "full"
        t = time.perf_counter()
        count = fill(full, args.stored_mb, args.event_kb, args.free_ids)
        print(f"stored {count} events ({args.stored_mb} MiB, {args.free_ids} free-form ids) "
              f"in {time.perf_counter() - t:.1f}s")
        extra = args.server_args.split()
        pythons = {"this tree": sys.executable}
        if args.baseline_python:
            pythons["baseline"] = args.baseline_python
        for python in pythons.values():  # warm the .pyc files and the page cache
            start_once(python, empty, args.server_cpus, args.timeout, extra)
            start_once(python, full, args.server_cpus, args.timeout, extra)
        print(f"server flags: {args.server_args or '(defaults)'}")
        print("| server | data dir | exec → listening, median | max |")
        print("|---|---|---|---|")
        medians = {}
        for name, path in (("empty", empty), (f"{args.stored_mb} MiB stored", full)):
            times: dict[str, list[float]] = {who: [] for who in pythons}
            for _ in range(args.repeat):
                for who, python in pythons.items():
                    times[who].append(start_once(python, path, args.server_cpus,
                                                 args.timeout, extra))
            for who in pythons:
                medians[who, name] = statistics.median(times[who])
                print(f"| {who} | {name} | {medians[who, name] * 1000:.0f} ms | "
                      f"{max(times[who]) * 1000:.0f} ms |")
        for (who, name), median in medians.items():
            if who != "this tree":
                print(f"ratio this tree / baseline, {name}: "
                      f"{medians['this tree', name] / median:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
