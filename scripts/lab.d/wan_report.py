#!/usr/bin/env python3
"""The WAN matrix's report: medians per cell and tool from wan.tsv, as markdown.

Usage: wan_report.py WAN.TSV STREAM_BYTES RATE FLAP_SECS
"""
import csv
import statistics
import sys
from collections import defaultdict

TOOL_ORDER = ["zstd-ssh", "mbuffer", "fjord", "fjord-cubic", "fjord-bbr"]
TARGET_RATIO = 3.0


def median(xs):
    return statistics.median(xs) if xs else None


def main():
    path, size, rate, flap_secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    runs = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            key = (int(row["rtt_ms"]), float(row["loss_pct"]), row["flap"] == "1")
            runs[(key, row["tool"])].append(row)
    cells = sorted({k for k, _ in runs}, key=lambda k: (k[2], k[0], k[1]))
    tools = [t for t in TOOL_ORDER if any(t == tt for _, tt in runs)]
    tools += sorted({t for _, t in runs} - set(tools))

    def stat(cell, tool):
        rows = runs.get((cell, tool), [])
        ok = [r for r in rows if r["result"] == "ok"]
        return {
            "n": len(rows),
            "ok": len(ok),
            "secs": median([float(r["seconds"]) for r in ok]),
            "cpu": median([float(r["cpu_pct"]) for r in ok]),
            "reconnects": max([int(r["reconnects"] or 0) for r in ok], default=None),
            "resent": max([int(r["resent_bytes"] or 0) for r in ok], default=None),
        }

    def name(cell):
        rtt, loss, flap = cell
        return f"{rtt} ms, {loss:g} %" + (f", {flap_secs} s flap" if flap else "")

    out = []
    out.append(
        f"Stream: {size:,} bytes (a real mixed `zfs send` stream), link {rate} each way, "
        "loss each way. Each cell: seconds (median of the runs that arrived "
        "byte-identical), stream MB/s, and the VM's CPU use over the transfer (both "
        "ends, 2 vCPUs = 100 %). `fjord` is fjord with its defaults (no link options); "
        "`fjord-cubic` and `fjord-bbr` add only that `--congestion`."
    )
    out.append("")
    out.append("| link | " + " | ".join(tools) + " | fjord vs zstd\\|ssh |")
    out.append("| --- | " + " | ".join("---:" for _ in tools) + " | ---: |")
    for cell in cells:
        base = stat(cell, "zstd-ssh")["secs"]
        cols = []
        for tool in tools:
            s = stat(cell, tool)
            if s["secs"] is None:
                cols.append(f"failed ({s['n'] - s['ok']}/{s['n']})")
                continue
            txt = f"{s['secs']:.1f} s, {size / s['secs'] / 1e6:.1f} MB/s, CPU {s['cpu']:.0f} %"
            if s["ok"] < s["n"]:
                txt += f" ({s['n'] - s['ok']} of {s['n']} failed)"
            if tool.startswith("fjord") and cell[2]:
                txt += f", {s['reconnects']} reconnects, {s['resent']:,} B re-sent"
            cols.append(txt)
        fj = stat(cell, "fjord")["secs"]
        ratio = f"{base / fj:.2f}×" if base and fj else "–"
        out.append(f"| {name(cell)} | " + " | ".join(cols) + f" | {ratio} |")
    out.append("")
    out.append("| target (issue 16, fjord's defaults) | figure | result |")
    out.append("| --- | --- | --- |")
    for cell in cells:
        rtt, loss, flap = cell
        if flap or rtt != 50 or loss not in (0.1, 1.0):
            continue
        base, fj = stat(cell, "zstd-ssh")["secs"], stat(cell, "fjord")["secs"]
        if base and fj:
            r = base / fj
            verdict = "met" if r >= TARGET_RATIO else "missed"
            out.append(f"| ≥ 3× `zstd \\| ssh` at {name(cell)} | {r:.2f}× | {verdict} |")
    for cell in cells:
        if not cell[2]:
            continue
        s = stat(cell, "fjord")
        if s["secs"] is not None:
            clean = s["reconnects"] == 0 and s["resent"] == 0
            out.append(
                f"| no re-sending beyond QUIC's own for a {flap_secs} s flap "
                f"(shorter than the idle timeout) | {s['reconnects']} reconnects, "
                f"{s['resent']:,} bytes re-sent | {'met' if clean else 'missed'} |"
            )
    print("\n".join(out))


if __name__ == "__main__":
    main()
