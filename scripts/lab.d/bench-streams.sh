#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Lab scenario: real send streams of benchmark size (not kept in the repo), for
# scripts/bench-pack and scripts/bench. `scripts/lab bench-streams` runs it and leaves:
#   mixed-incr.zsend   zfs send -i @a @b of a mixed dataset (text, binaries, random data,
#                      duplicated files; between the snapshots: edits, deletions, new files
#                      and new copies of existing files)
#   mixed-full.zsend   zfs send of @b of the same dataset
#   compressed-c.zsend zfs send -c of an lz4 dataset of text (blocks sent as stored)
#   random.zsend       zfs send of incompressible data
# Sizes follow LAB_BENCH_SIZE (default 96M of data in the mixed dataset).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$(realpath "$0")")/lib.sh"

size=${LAB_BENCH_SIZE:-96M}
bytes=$(_lab_bytes "$size")
out=$LAB_RESULTS

make_mixed() {
    set -e
    zfs create -o compression=lz4 -o recordsize=128K src/mixed
    local m
    m=$(lab_mountpoint src/mixed)
    lab_fill "$m" 5 "$size"
    zfs snapshot src/mixed@a
    lab_mutate "$m" 6 "$(($(_lab_bytes "$size") / 8 / 1024))K"
    # New copies of existing files: what a dedup-aware sender should not send again.
    mkdir -p "$m/restored"
    find "$m/bin" "$m/blobs" -type f | LC_ALL=C sort | head -n 12 | while read -r f; do
        cp "$f" "$m/restored/$(basename "$f").restored"
    done
    zfs snapshot src/mixed@b
    zfs send -i src/mixed@a src/mixed@b >"$out/mixed-incr.zsend"
    zfs send src/mixed@b >"$out/mixed-full.zsend"
}

make_compressed() {
    set -e
    zfs create -o compression=lz4 src/text
    local m i=0
    m=$(lab_mountpoint src/text)
    while (($(du -s --apparent-size --block-size=1 "$m" | cut -f1) < bytes / 2)); do
        _lab_text "$((900 + i))" 40000 log >"$m/log-$i.txt"
        i=$((i + 1))
    done
    zfs snapshot src/text@c
    zfs send -c src/text@c >"$out/compressed-c.zsend"
}

make_random() {
    set -e
    zfs create -o compression=off src/rand
    local m
    m=$(lab_mountpoint src/rand)
    head -c $((bytes / 2)) /dev/urandom >"$m/random.bin"
    zfs snapshot src/rand@r
    zfs send src/rand@r >"$out/random.zsend"
}

export size bytes out
lab_step pools lab_pools src
lab_step --timeout 1200 mixed make_mixed
lab_step --timeout 900 compressed make_compressed
lab_step --timeout 600 random make_random
for f in mixed-incr mixed-full compressed-c random; do
    lab_assert "stream-$f" test -s "$out/$f.zsend"
done
ls -l "$out"
lab_summary
