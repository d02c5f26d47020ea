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
  --requests-per-conn N   Requests fed to each of micro_publish's 32 connections [default: 300].
  --batch N               Events per request, 0 = one event, not an array [default: 0].
  --top N                 Functions to list, by the instructions they executed themselves
                          [default: 25].

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

CONNECTIONS = 32  # micro_publish's
PATH_FUNCTIONS = ("*HttpConnection_7data_received", "*LocalStore_51_commit")
_COST = re.compile(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S+?):(\S+)")


def main() -> None:
    args = parse(__doc__, requests_per_conn=int, batch=int, top=int)
    tree = Path(args.DIR or ".").resolve()
    if shutil.which("valgrind") is None:
        usage_error("valgrind is not installed (Debian: apt-get install valgrind)")
    if not (tree / "perf" / "micro_publish.py").exists():
        usage_error(f"{tree} is not a busd checkout (no perf/micro_publish.py)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        *(f"--toggle-collect={name}" for name in PATH_FUNCTIONS),
                        sys.executable, "perf/micro_publish.py", "--requests-per-conn",
                        str(args.requests_per_conn), "--batch", str(args.batch)],
                       cwd=tree, check=True, capture_output=True)
        report = subprocess.run(["callgrind_annotate", "--threshold=99", str(out)],
                                check=True, capture_output=True, text=True).stdout
    requests = args.requests_per_conn * CONNECTIONS
    total = next(int(line.split()[0].replace(",", "")) for line in report.splitlines()
                 if "PROGRAM TOTALS" in line)
    per = f"request of {args.batch} events" if args.batch else "single-event request"
    print(f"{tree}: {total / requests:,.0f} instructions per {per} "
          f"({requests:,} requests)")
    shown = 0
    for line in report.splitlines():
        match = _COST.match(line)
        if match and shown < args.top:
            print(f"  {int(match.group(1).replace(',', '')) / requests:9,.0f}  {match.group(3)}")
            shown += 1


if __name__ == "__main__":
    main()
