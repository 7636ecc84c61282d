#!/usr/bin/env python3
"""Medians, markdown table and verdicts for scripts/bench.

    report.py RAW.tsv SUMMARY.tsv

RAW.tsv, one line per run: stream bytes tool run wall cpu rss_kib fwd_bytes back_bytes
Lines of the stream "_setup" (a tiny stream) give each tool's fixed cost per transfer;
the table then adds the rate net of it: stream bytes / (wall - setup).
Prints the markdown table and the verdicts to stdout; writes SUMMARY.tsv (stream, tool,
median MB/s) for plot.py. Exits 0 whatever the verdicts (they are reported, not enforced).
"""

import statistics
import sys
from collections import OrderedDict

FJORD = "fjord"
ZSSH = "zstd -1 -T0 | ssh"
SOCAT = "socat (TCP)"


def net_note(net: dict, stream: str, other: str) -> str:
    f, o = net.get((stream, FJORD)), net.get((stream, other))
    if f is None or o is None:
        return ""
    return f"; net of setup: {f:.0f} vs {o:.0f} MB/s ({f / o:.2f}×)"


def main() -> None:
    raw, summary = sys.argv[1], sys.argv[2]
    groups: "OrderedDict[tuple, list]" = OrderedDict()
    sizes = {}
    for line in open(raw):
        if not line.strip():
            continue
        stream, size, tool, _run, wall, cpu, rss, fwd, back = line.rstrip("\n").split("\t")
        sizes[stream] = int(size)
        groups.setdefault((stream, tool), []).append(
            (float(wall), float(cpu), int(rss), int(fwd), int(back)))

    setup = {tool: statistics.median(r[0] for r in runs)
             for (stream, tool), runs in groups.items() if stream == "_setup"}
    med = {}
    net = {}
    print("| stream | tool | MB/s | MB/s min–max | setup s | MB/s net of setup | wire bytes (% of stream) | back bytes | CPU s | peak RSS MiB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    with open(summary, "w") as out:
        for (stream, tool), runs in groups.items():
            if stream == "_setup":
                continue
            size = sizes[stream]
            walls = [r[0] for r in runs]
            mbs = size / statistics.median(walls) / 1e6
            lo, hi = size / max(walls) / 1e6, size / min(walls) / 1e6
            fwd = int(statistics.median(r[3] for r in runs))
            back = int(statistics.median(r[4] for r in runs))
            cpu = statistics.median(r[1] for r in runs)
            rss = statistics.median(r[2] for r in runs) / 1024
            med[(stream, tool)] = mbs
            su = setup.get(tool)
            if su is not None and statistics.median(walls) > su:
                net[(stream, tool)] = size / (statistics.median(walls) - su) / 1e6
            su_cell = f"{su:.2f}" if su is not None else "–"
            net_cell = f"{net[(stream, tool)]:.0f}" if (stream, tool) in net else "–"
            out.write(f"{stream}\t{tool}\t{mbs:.1f}\n")
            cell = tool.replace("|", "\\|")
            print(f"| {stream} ({size / 1e6:.1f} MB) | {cell} | **{mbs:.0f}** | {lo:.0f}–{hi:.0f} | {su_cell} | {net_cell} | "
                  f"{fwd:,} ({100 * fwd / size:.1f} %) | {back:,} | {cpu:.2f} | {rss:.0f} |")

    print()
    print("Verdicts (targets of issue 7/6, loopback):")
    streams = list(dict.fromkeys(s for s, _ in groups))
    any_verdict = False
    for s in streams:
        f = med.get((s, FJORD))
        if f is None:
            continue
        if s.startswith("mixed"):
            z = med.get((s, ZSSH))
            if z:
                any_verdict = True
                ok = f >= 2 * z
                print(f"- {s}: fjord {f:.0f} MB/s vs 2 × zstd|ssh = {2 * z:.0f} MB/s "
                      f"({f / z:.2f}×): {'MET' if ok else 'NOT MET'}{net_note(net, s, ZSSH)}")
        if "compressed" in s or s.endswith("-c"):
            c = med.get((s, SOCAT))
            if c:
                any_verdict = True
                ok = f >= 0.8 * c
                print(f"- {s}: fjord {f:.0f} MB/s vs 0.8 × socat = {0.8 * c:.0f} MB/s "
                      f"({f / c:.2f}×): {'MET' if ok else 'NOT MET'}{net_note(net, s, SOCAT)}")
    if not any_verdict:
        print("- none applicable (needs a mixed-* stream with fjord and zstd|ssh, "
              "a compressed-* stream with fjord and socat)")


if __name__ == "__main__":
    main()
