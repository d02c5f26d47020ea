"""What rebuilding the dedup cache costs at start-up, and saving it while serving.

Writes N keyed events (batches of 1000, over 50 subjects) into a real log in a temp dir,
then times, in this process: the rebuild without a saved cache (the logs' tails, as many
records as `--dup-bytes` can hold), one whole save (the dump; a serving busd runs it in
steps of 10,000 keys), and the rebuild from that saved cache (load, nothing to replay).

Usage:
  dedup_rebuild.py [options]

Options:
  -h, --help          Show this help.
  --events N          Keyed events written first [default: 400000].
  --dup-size N        Keys per subject (as --dup-size) [default: 1000].
  --rounds N          Repeats of each timing, the median is reported [default: 3].
  --data-dir DIR      Where the temp log goes [default: perf/out].
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from busd._core import scan_body, stamp_events  # noqa: E402
from opts import parse  # noqa: E402

from busd.bus.broker import Broker  # noqa: E402
from busd.server.config import Config  # noqa: E402
from busd.store.local.store import LocalStore  # noqa: E402


def timed(action) -> tuple[float, object]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def main() -> None:
    args = parse(__doc__, events=int, dup_size=int, rounds=int)
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(dir=args.data_dir))
    try:
        store = LocalStore(root, ["app"])
        store.open()
        for b in range(args.events // 1000):
            body = json.dumps([{"subject": f"app.s{i % 50}", "key": f"k{b}.{i}",
                                "payload": {"n": i}} for i in range(1000)]).encode()
            store.append_batch("app", stamp_events(scan_body(body)[1], True)[3])
        config = Config(path=root, namespaces=("app",), dup_size=args.dup_size)
        tails, dumps, loads = [], [], []
        for _ in range(args.rounds):
            broker = Broker(config, store)
            seconds, keys = timed(broker.rebuild_dedup)
            tails.append(seconds)
            seconds, data = timed(lambda b=broker: b"".join(b.save_dedup(force=True)))
            dumps.append(seconds)
            broker.write_dedup(data)
            again = Broker(config, store)
            seconds, _ = timed(again.rebuild_dedup)
            loads.append(seconds)
            (root / "dedup.snapshot").unlink()
        store.close()
        print(f"{args.events:,} keyed records, {keys:,} keys held (--dup-size {args.dup_size}, "
              f"50 subjects), saved cache {len(data):,} bytes; medians of {args.rounds}:")
        print(f"  rebuild from the logs' tails (no saved cache): {statistics.median(tails):.3f} s"
              f"  ({' / '.join(f'{t:.3f}' for t in tails)})")
        print(f"  one whole save (the dump):                    {statistics.median(dumps):.3f} s")
        print(f"  rebuild from the saved cache:                  {statistics.median(loads):.3f} s")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
