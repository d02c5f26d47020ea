"""Bar charts of a perf/bench.py run, one PNG per metric group, from its --json file.

Usage:
  plot.py [options] [<json>]

Options:
  -h, --help    Show this help.
  --out DIR     Folder for the PNGs (default: perf/out/charts).

<json> is a file bench.py wrote with --json (default: perf/out/latest.json). A chart per
group (publish, batch, catchup, fanout, latency, memory-connection, memory-growth): for
each benchmark of the group a bar per server (busd, the ceiling, the peer) at its median,
a dot per run so the spread shows, and the same-run ratios busd/ceiling and busd/peer
under the benchmark's name (on a log axis where a group's medians differ more than 10×,
so a small bar stays readable). The subtitle says when, with which pinning and at which
loadavg the figures were taken: a chart without it would be a number without its run.
Needs matplotlib: pip install -e '.[perf]'.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
from opts import parse  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
COLORS = {"busd": "#1f6fb4", "ceiling": "#a8a8a8"}
PEER_COLOR = "#e8841a"
LOG_SPAN = 10  # a group whose medians differ more than this is drawn on a log axis


def number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 or value == 0 else f"{value:,.1f}"


def chart(group: str, rows: list[dict], result: dict, path: Path) -> None:
    """One group's rows as grouped bars: medians, every run as a dot, ratios in the labels."""
    columns = [c for c in result["columns"] if any(c in r["runs"] for r in rows)]
    width = 0.8 / len(columns)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(rows) * len(columns) + 2), 4.8))
    for j, column in enumerate(columns):
        offset = (j - (len(columns) - 1) / 2) * width
        have = [(i, r) for i, r in enumerate(rows) if column in r["runs"]]
        xs = [i + offset for i, _ in have]
        medians = [r["median"][column] for _, r in have]
        bars = ax.bar(xs, medians, width * 0.92, label=column,
                      color=COLORS.get(column, PEER_COLOR))
        ax.bar_label(bars, labels=[number(m) for m in medians], fontsize=7, padding=2)
        for x, (_, r) in zip(xs, have, strict=True):
            runs = r["runs"][column]
            ax.plot([x] * len(runs), runs, "o", color="black", markersize=2.5, alpha=0.7)
    labels = []
    for r in rows:
        ratios = "  ".join(f"{k} {v:.2f}" for k, v in r["ratios"].items())
        labels.append(textwrap.fill(r["name"], 28) + (f"\n{ratios}" if ratios else ""))
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel(rows[0]["unit"])
    values = [v for r in rows for v in r["median"].values() if v > 0]
    if values and max(values) > LOG_SPAN * min(values):  # e.g. fan-out: 10 M beside 0.5 M
        ax.set_yscale("log")
        ax.set_ylabel(rows[0]["unit"] + " (log scale)")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: number(v)))
    ax.margins(y=0.12)
    ax.legend(fontsize=8)
    pin = result["pinning"]
    load = result["loadavg"]
    ax.set_title(f"{group} — {result['started']}", fontsize=11)
    fig.text(0.01, 0.005, f"servers on CPUs {pin['server_cpus']}, harness + wrk on "
             f"{pin['client_cpus']}, wrk -t{pin['wrk_threads']}; bars: medians, dots: runs; "
             f"loadavg {load['start'][0]:.2f} → {load['end'][0]:.2f}",
             fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse(__doc__, argv, json=Path, out=Path)
    source = args.json or OUT / "latest.json"
    folder = args.out or OUT / "charts"
    result = json.loads(source.read_text())
    groups: dict[str, list[dict]] = {}
    for row in result["rows"]:
        if row["runs"]:
            groups.setdefault(row["group"], []).append(row)
    folder.mkdir(parents=True, exist_ok=True)
    for group, rows in groups.items():
        path = folder / f"{group}.png"
        chart(group, rows, result, path)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
