#!/usr/bin/env python3
"""Medians, markdown tables and the issue's targets for scripts/bench.

    report.py RAW.tsv SUMMARY.tsv

RAW.tsv, one line per run (tab-separated):
    stream bytes tool run wall send_cpu recv_cpu send_rss_kib recv_rss_kib fwd_bytes back_bytes
where tool is scripts/bench's tool name (fjord, fjord-raw, zstd-ssh, ssh, quinn-bulk,
mbuffer, socat). Lines of the stream "_setup" (a tiny stream) give each tool's fixed cost
per transfer; the table then adds the rate net of it: stream bytes / (wall - setup), where
the setup is under half the wall time.

Prints two markdown tables to stdout: every stream and tool (medians), then the loopback
targets of issue 16, each "met" or "missed" from ratios of medians. Writes SUMMARY.tsv
(stream, tool label, median MB/s) for plot.py. Exits 0 whatever the verdicts (they are
reported, not enforced).
"""

import statistics
import sys
from collections import OrderedDict

LABELS = {
    "fjord": "fjord (packed)",
    "fjord-raw": "fjord (raw)",
    "zstd-ssh": "zstd -1 -T0 | ssh",
    "ssh": "ssh (cat)",
    "quinn-bulk": "quinn bulk (QUIC ceiling)",
    "mbuffer": "mbuffer (TCP)",
    "socat": "socat (TCP)",
}
GIB = 1 << 30
MIB = 1 << 20
RSS_LIMIT_MIB = 256


def label(tool: str) -> str:
    return LABELS.get(tool, tool)


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def is_mixed(stream: str) -> bool:
    return stream.startswith("mixed")


def is_incompressible(stream: str) -> bool:
    return stream.startswith("random") or "incompressible" in stream


def main() -> None:
    raw, summary = sys.argv[1], sys.argv[2]
    groups: "OrderedDict[tuple, list]" = OrderedDict()
    sizes = {}
    for line in open(raw):
        if not line.strip():
            continue
        (stream, size, tool, _run, wall, scpu, rcpu, srss, rrss, fwd,
         back) = line.rstrip("\n").split("\t")
        sizes[stream] = int(size)
        groups.setdefault((stream, tool), []).append({
            "wall": float(wall), "scpu": float(scpu), "rcpu": float(rcpu),
            "srss": int(srss), "rrss": int(rrss), "fwd": int(fwd), "back": int(back)})

    setup = {tool: statistics.median(r["wall"] for r in runs)
             for (stream, tool), runs in groups.items() if stream == "_setup"}
    med = {}
    print("| stream | tool | MB/s | MB/s min–max | setup s | MB/s net of setup | wire bytes (% of stream) "
          "| back bytes | CPU s send / recv / total | sender CPU s per GiB | peak RSS MiB send / recv |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    with open(summary, "w") as out:
        for (stream, tool), runs in groups.items():
            if stream == "_setup":
                continue
            size = sizes[stream]
            walls = [r["wall"] for r in runs]
            wall = statistics.median(walls)
            m = {
                "mbs": size / wall / 1e6,
                "wall": wall,
                "fwd": int(statistics.median(r["fwd"] for r in runs)),
                "back": int(statistics.median(r["back"] for r in runs)),
                "scpu": statistics.median(r["scpu"] for r in runs),
                "rcpu": statistics.median(r["rcpu"] for r in runs),
                "cpu": statistics.median(r["scpu"] + r["rcpu"] for r in runs),
                "srss": statistics.median(r["srss"] for r in runs) / 1024,
                "rrss": statistics.median(r["rrss"] for r in runs) / 1024,
            }
            m["scpu_gib"] = m["scpu"] / (size / GIB)
            med[(stream, tool)] = m
            lo, hi = size / max(walls) / 1e6, size / min(walls) / 1e6
            su = setup.get(tool)
            su_cell = f"{su:.2f}" if su is not None else "–"
            # Net of setup only where the setup is under half the wall time: on streams
            # barely longer than the setup probe the difference is noise.
            net_cell = f"{size / (wall - su) / 1e6:.0f}" if su is not None and wall > 2 * su else "–"
            out.write(f"{stream}\t{label(tool)}\t{m['mbs']:.1f}\n")
            print(f"| {stream} ({size / 1e6:.1f} MB) | {cell(label(tool))} | **{m['mbs']:.0f}** | {lo:.0f}–{hi:.0f} "
                  f"| {su_cell} | {net_cell} | {m['fwd']:,} ({100 * m['fwd'] / size:.1f} %) | {m['back']:,} "
                  f"| {m['scpu']:.2f} / {m['rcpu']:.2f} / {m['cpu']:.2f} | {m['scpu_gib']:.2f} "
                  f"| {m['srss']:.0f} / {m['rrss']:.0f} |")

    streams = [s for s in dict.fromkeys(s for s, _ in groups) if s != "_setup"]
    rows = targets(streams, sizes, med)
    print()
    print("Loopback targets of issue 16 (ratios of the medians above):")
    print()
    print("| # | target | stream | measured | result |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(cell(c) if i < 4 else c for i, c in enumerate(r)) + " |")


def targets(streams: list, sizes: dict, med: dict) -> list:
    rows = []
    t1 = "packed fjord ≥ 2 × zstd -1 -T0 | ssh, wire bytes ≤ its"
    t2 = "raw fjord ≥ 1 × ssh (cat) and ≥ 0.8 × quinn bulk"
    t3 = "fjord sender CPU s per GiB ≤ zstd | ssh sending side (zstd + ssh)"
    t4 = f"peak RSS ≤ {RSS_LIMIT_MIB} MiB per side, any stream size"

    # 1. The mixed stream, packed.
    for s in filter(is_mixed, streams):
        f, z = med.get((s, "fjord")), med.get((s, "zstd-ssh"))
        if f and z:
            ratio = f["mbs"] / z["mbs"]
            ok = ratio >= 2 and f["fwd"] <= z["fwd"]
            rows.append(["1", t1, s, f"{f['mbs']:.0f} vs {z['mbs']:.0f} MB/s = {ratio:.2f}×; wire "
                         f"{f['fwd']:,} vs {z['fwd']:,} bytes ({f['fwd'] / z['fwd']:.3f}×)", verdict(ok)])
    if not any(r[0] == "1" for r in rows):
        rows.append(["1", t1, "–", "needs a mixed* stream with fjord and zstd-ssh", "not measured"])

    # 2. The incompressible stream, raw.
    for s in filter(is_incompressible, streams):
        f = med.get((s, "fjord-raw"))
        if not f:
            continue
        parts, oks = [f"{f['mbs']:.0f} MB/s"], []
        for tool, need in (("ssh", 1.0), ("quinn-bulk", 0.8)):
            o = med.get((s, tool))
            if o:
                ratio = f["mbs"] / o["mbs"]
                oks.append(ratio >= need)
                parts.append(f"{label(tool)} {o['mbs']:.0f} MB/s: {ratio:.2f}× (needs {need:g}×)")
            else:
                oks.append(None)
                parts.append(f"{label(tool)} not run")
        result = "not measured" if None in oks else verdict(all(oks))
        rows.append(["2", t2, s, "; ".join(parts), result])
    if not any(r[0] == "2" for r in rows):
        rows.append(["2", t2, "–", "needs a random* stream with fjord-raw, ssh and quinn-bulk", "not measured"])

    # 3. Sender CPU per GiB, each fjord mode on each stream, against the zstd pipeline's
    # sending side on the same stream.
    for s in streams:
        z = med.get((s, "zstd-ssh"))
        for tool in ("fjord", "fjord-raw"):
            f = med.get((s, tool))
            if f and z:
                rows.append(["3", t3, f"{s}, {label(tool)}",
                             f"{f['scpu_gib']:.2f} vs {z['scpu_gib']:.2f} s/GiB "
                             f"({f['scpu_gib'] / z['scpu_gib']:.2f}×)" if z["scpu_gib"] > 0 else
                             f"{f['scpu_gib']:.2f} vs {z['scpu_gib']:.2f} s/GiB",
                             verdict(f["scpu_gib"] <= z["scpu_gib"])])
    if not any(r[0] == "3" for r in rows):
        rows.append(["3", t3, "–", "needs fjord or fjord-raw with zstd-ssh", "not measured"])

    # 4. Peak RSS, each fjord mode, the largest over all streams and both sides.
    for tool in ("fjord", "fjord-raw"):
        ms = [(s, med[(s, tool)]) for s in streams if (s, tool) in med]
        if not ms:
            continue
        worst_s, worst = max(ms, key=lambda sm: max(sm[1]["srss"], sm[1]["rrss"]))
        peak = max(worst["srss"], worst["rrss"])
        biggest = max(sizes[s] for s, _ in ms)
        rows.append(["4", t4, f"all ({len(ms)}), {label(tool)}",
                     f"largest {peak:.0f} MiB (send {worst['srss']:.0f}, recv {worst['rrss']:.0f}) on "
                     f"{worst_s}; streams up to {biggest / MIB:.0f} MiB", verdict(peak <= RSS_LIMIT_MIB)])
    if not any(r[0] == "4" for r in rows):
        rows.append(["4", t4, "–", "needs fjord or fjord-raw", "not measured"])
    return rows


if __name__ == "__main__":
    main()
