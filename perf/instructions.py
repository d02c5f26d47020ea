"""Instructions per publish request on busd's own path, counted by valgrind (callgrind).

Timings on these VMs move by up to 1.6x from run to run, in bursts; a count of executed
instructions does not move with the machine's load, so it shows a change of a few percent
on the publish path in one run of each tree (it does not see cache misses or the kernel:
confirm with perf/bench.py). Runs perf/micro_publish.py of the checkout DIR under callgrind,
collecting only inside HttpConnection.data_received and LocalStore._commit (a request from
its bytes to its answer, the group commit's share included), and prints their instructions
per request, then the functions that executed most of them. micro_publish's fake transport
is Python: ~470 instructions a request of the figure are its `write`, alike in every tree.

DIR must hold its own compiled modules (`pip wheel` it and unpack the `.so` files into it,
or copy a built tree): micro_publish imports the busd beside it.

Usage:
  instructions.py [options] [DIR]

Options:
  -h, --help              Show this help.
  --requests-per-conn N   Requests fed to each of micro_publish's connections [default: 300].
  --connections N         micro_publish's connections, each fed one request per loop
                          iteration (so N requests per group commit) [default: 32].
  --batch N               Events per request, 0 = one event, not an array [default: 0].
  --client NAME           micro_publish's request header lines: minimal, wrk or go
                          [default: minimal].
  --top N                 Functions to list, by the instructions they executed themselves
                          [default: 25].
  --subscribers K         micro_publish's K live subscriptions on distinct subjects (needs
                          --batch): the live fan-out's cost is counted too. Its held writes
                          go out from a loop callback, outside the two functions, so the
                          whole process is counted instead, twice (N and 2N requests a
                          connection), and the difference is divided by the extra requests
                          and by their deliveries. perf/bench.py's subjects row has four
                          publishing connections: give four here too [default: 0].

Example (the tree before a change, copied to /tmp/before, beside the checkout):
  .venv/bin/python perf/instructions.py /tmp/before; .venv/bin/python perf/instructions.py
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from opts import parse, usage_error

PATH_FUNCTIONS = ("*HttpConnection_7data_received", "*LocalStore_51_commit")
_COST = re.compile(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S+?):(\S+)")


def count(tree: Path, toggles: tuple[str, ...], micro_args: list[str]) -> dict[str, int]:
    """Run micro_publish under callgrind: instructions per function, and "total"."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        *(f"--toggle-collect={name}" for name in toggles),
                        sys.executable, "perf/micro_publish.py", *micro_args],
                       cwd=tree, check=True, capture_output=True)
        report = subprocess.run(["callgrind_annotate", "--threshold=100", str(out)],
                                check=True, capture_output=True, text=True).stdout
    costs = {"total": next(int(line.split()[0].replace(",", "")) for line in
                           report.splitlines() if "PROGRAM TOTALS" in line)}
    for line in report.splitlines():
        match = _COST.match(line)
        if match:
            name = match.group(3)
            costs[name] = costs.get(name, 0) + int(match.group(1).replace(",", ""))
    return costs


def main() -> None:
    args = parse(__doc__, requests_per_conn=int, connections=int, batch=int, top=int,
                 subscribers=int)
    tree = Path(args.DIR or ".").resolve()
    if shutil.which("valgrind") is None:
        usage_error("valgrind is not installed (Debian: apt-get install valgrind)")
    if not (tree / "perf" / "micro_publish.py").exists():
        usage_error(f"{tree} is not a busd checkout (no perf/micro_publish.py)")
    if args.subscribers and not args.batch:
        usage_error("--subscribers needs --batch")
    n, micro = args.requests_per_conn, ["--batch", str(args.batch), "--client", args.client,
                                        "--connections", str(args.connections)]
    if args.subscribers:
        micro += ["--subscribers", str(args.subscribers)]
        small = count(tree, (), ["--requests-per-conn", str(n), *micro])
        large = count(tree, (), ["--requests-per-conn", str(2 * n), *micro])
        costs = {name: large[name] - small.get(name, 0) for name in large}
    else:
        costs = count(tree, PATH_FUNCTIONS, ["--requests-per-conn", str(n), *micro])
    requests = n * args.connections
    per = f"request of {args.batch} events" if args.batch else "single-event request"
    total = costs.pop("total")
    print(f"{tree}: {total / requests:,.0f} instructions per {per} "
          f"({requests:,} requests)")
    if args.subscribers:
        print(f"  {total / requests / args.batch:,.0f} per event, one delivery each "
              f"({args.subscribers:,} subscriptions)")
    for name, cost in sorted(costs.items(), key=lambda item: -item[1])[:args.top]:
        print(f"  {cost / requests:9,.0f}  {name}")


if __name__ == "__main__":
    main()
