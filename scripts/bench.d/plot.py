#!/usr/bin/env python3
"""Grouped bar chart of MB/s per stream and tool, for scripts/bench.

    plot.py SUMMARY.tsv OUT.png TITLE

SUMMARY.tsv: one line per stream and tool: stream<TAB>tool<TAB>MB/s (medians).
"""

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    src, out, title = sys.argv[1], sys.argv[2], sys.argv[3]
    rows = [line.rstrip("\n").split("\t") for line in open(src) if line.strip()]
    streams = list(dict.fromkeys(r[0] for r in rows))
    tools = list(dict.fromkeys(r[1] for r in rows))
    val = {(r[0], r[1]): float(r[2]) for r in rows}

    width = 0.8 / len(tools)
    fig, ax = plt.subplots(figsize=(max(9, 2.4 * len(streams) + 2), 4.8))
    for i, tool in enumerate(tools):
        xs = [j + (i - (len(tools) - 1) / 2) * width for j in range(len(streams))]
        ys = [val.get((s, tool), 0.0) for s in streams]
        bars = ax.bar(xs, ys, width, label=tool)
        ax.bar_label(bars, labels=[f"{y:.0f}" for y in ys], fontsize=7, padding=2)
    ax.set_xticks(range(len(streams)))
    ax.set_xticklabels(streams)
    ax.set_ylabel("MB/s (stream bytes / wall s, MB = 10^6)")
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, max(val.values(), default=1) * 1.12)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main()
