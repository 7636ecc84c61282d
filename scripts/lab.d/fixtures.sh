#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Lab scenario: make real OpenZFS send streams for tests/fixtures/lab-streams/.
#   scripts/lab fixtures                          run it and copy the streams into the repo
#   scripts/lab run scripts/lab.d/fixtures.sh DIR  run it, results only in DIR
# Writes to $LAB_RESULTS: *.zsend, resume-token.txt, *.dump.txt (zstream dump -v),
# resume-token.decoded.txt, zfs-version.txt, README.md. Every stream is also received back
# (zfs recv) and the received files compared with the snapshot, so each fixture is known good.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$(realpath "$0")")/lib.sh"

export OUT=$LAB_RESULTS
export WORK=/tmp/lab/fx
export PASSPHRASE=fjord-lab-passphrase
mkdir -p "$WORK"
: >"$WORK/commands.txt"

zfs version | tee "$OUT/zfs-version.txt"

# stream FILE CMD...: run CMD > WORK/FILE, record the command for the README
stream() {
    local file=$1
    shift
    "$@" >"$WORK/$file"
    printf '%s\t%s\n' "$file" "$*" >>"$WORK/commands.txt"
}

# small in-place changes, so incrementals stay small (recordsize=8K)
fx_mutate() {
    set -e
    local m=$1 seed=$2
    _lab_text "$((seed + 100))" 20 log >>"$m/logs/app-0.log"
    head -c 4096 /dev/urandom | dd of="$m/blobs/random-0.bin" bs=4096 seek=1 conv=notrunc status=none
    rm -f "$m/small/a/note-$((seed + 4)).txt"
    mv "$m/small/a/note-$((seed + 10)).txt" "$m/small/a/note-$((seed + 10)).moved"
    _lab_text "$((seed + 200))" 30 csv >"$m/new-$seed.csv"
    sync
}

make_fx() {
    set -e
    zfs create -o compression=lz4 -o recordsize=8K src/fx
    local m
    m=$(lab_mountpoint src/fx)
    lab_fill "$m" 1 96K
    zfs snapshot src/fx@a
    fx_mutate "$m" 1
    zfs snapshot src/fx@b
    fx_mutate "$m" 2
    zfs snapshot src/fx@c
    stream full.zsend zfs send src/fx@a
    stream incr-i.zsend zfs send -i src/fx@a src/fx@b
    stream incr-I.zsend zfs send -I src/fx@a src/fx@c
}

make_compressed() {
    set -e
    zfs create -o compression=lz4 src/comp
    local m
    m=$(lab_mountpoint src/comp)
    _lab_text 11 250 log >"$m/app.log"
    _lab_text 12 250 csv >"$m/table.csv"
    yes 'fjord compressible line 0123456789' | head -c 16384 >"$m/repeat.txt"
    head -c 4096 /dev/urandom >"$m/random.bin"
    zfs snapshot src/comp@c1
    stream compressed-c.zsend zfs send -c src/comp@c1
}

make_large() {
    set -e
    zfs create -o recordsize=1M -o compression=off src/large
    local m
    m=$(lab_mountpoint src/large)
    _lab_text 21 1500 log >"$m/big.log" # one block > 128K
    echo "small file" >"$m/small.txt"
    zfs snapshot src/large@l1
    stream large-L.zsend zfs send -L src/large@l1
}

make_embedded() {
    set -e
    zfs create -o compression=lz4 src/emb
    local m i
    m=$(lab_mountpoint src/emb)
    for i in $(seq 1 12); do
        yes "fjord embedded $i" | head -c $((i * 150)) >"$m/tiny-$i.txt"
    done
    head -c 600 /dev/urandom >"$m/noise.bin" # not embeddable
    zfs snapshot src/emb@e1
    stream embedded-e.zsend zfs send -e src/emb@e1
}

make_raw() {
    set -e
    printf '%s\n' "$PASSPHRASE" |
        zfs create -o encryption=on -o keyformat=passphrase -o keylocation=prompt src/enc
    local m
    m=$(lab_mountpoint src/enc)
    _lab_text 31 150 log >"$m/secret.log"
    head -c 8192 /dev/urandom >"$m/key-material.bin"
    mkdir "$m/dir"
    echo "nested" >"$m/dir/nested.txt"
    zfs snapshot src/enc@w1
    stream raw-w.zsend zfs send -w src/enc@w1
}

make_replicate() {
    set -e
    zfs create src/rep
    zfs create src/rep/child
    local m c
    m=$(lab_mountpoint src/rep)
    c=$(lab_mountpoint src/rep/child)
    _lab_text 41 80 log >"$m/parent.log"
    _lab_text 42 80 csv >"$c/child.csv"
    zfs snapshot -r src/rep@r1
    _lab_text 43 20 log >>"$m/parent.log"
    echo "added in r2" >"$c/r2.txt"
    zfs snapshot -r src/rep@r2
    stream replicate-R.zsend zfs send -R src/rep@r2
}

make_resumed() {
    set -e
    zfs create -o compression=off src/big
    local m i full cut rc=0
    m=$(lab_mountpoint src/big)
    for i in $(seq 1 12); do
        head -c 32768 /dev/urandom >"$m/chunk-$i.bin"
    done
    zfs snapshot src/big@s1
    full=$(zfs send src/big@s1 | wc -c)
    cut=$((full / 2))
    echo "full stream $full bytes, cutting at $cut"
    zfs send src/big@s1 | head -c "$cut" | zfs recv -s dst/big || rc=$?
    ((rc != 0)) || { echo "interrupted receive unexpectedly succeeded" >&2; return 1; }
    local token
    token=$(zfs get -H -o value receive_resume_token dst/big)
    [[ -n $token && $token != - ]] || { echo "no receive_resume_token on dst/big" >&2; return 1; }
    printf '%s\n' "$token" >"$WORK/resume-token.txt"
    printf 'resume-token.txt\tzfs send src/big@s1 | head -c %s | zfs recv -s dst/big; zfs get -H -o value receive_resume_token dst/big\n' "$cut" >>"$WORK/commands.txt"
    zfs send -t "$token" >"$WORK/resumed-t.zsend"
    # shellcheck disable=SC2016 # literal command text for the README
    printf 'resumed-t.zsend\tzfs send -t "$(cat resume-token.txt)"\n' >>"$WORK/commands.txt"
    zstream token "$token" >"$OUT/resume-token.decoded.txt" 2>&1 || true
}

# ---------------------------------------------------------------- verification by receiving

snapdir() { echo "$(lab_mountpoint "${1%@*}")/.zfs/snapshot/${1#*@}"; }

# check NAME SRC_SNAP DST_FS: dst mount matches the snapshot's files, same guid
check() {
    local name=$1 snap=$2 fs=$3
    lab_assert "$name-content" lab_compare "$(snapdir "$snap")" "$(lab_mountpoint "$fs")"
    lab_assert_eq "$name-guid" "$(lab_guid "$snap")" "$(lab_guid "$fs@${snap#*@}")"
}

# rx NAME FILE ZFS-RECV-ARGS...: receive WORK/FILE, record pass/fail
rx() {
    local name=$1 file=$2
    shift 2
    if zfs recv "$@" <"$WORK/$file"; then
        lab_pass "$name-recv" "zfs recv $* < $file"
    else
        lab_fail "$name-recv" "zfs recv $* < $file"
        return 1
    fi
}

verify() {
    rx full full.zsend dst/fx && check full src/fx@a dst/fx
    rx incr-i incr-i.zsend dst/fx && check incr-i src/fx@b dst/fx
    rx full2 full.zsend dst/fx2 && rx incr-I incr-I.zsend dst/fx2 &&
        check incr-I src/fx@c dst/fx2 &&
        lab_assert_eq incr-I-middle-guid "$(lab_guid src/fx@b)" "$(lab_guid dst/fx2@b)"
    rx compressed compressed-c.zsend dst/comp && check compressed src/comp@c1 dst/comp
    rx large large-L.zsend dst/large && check large src/large@l1 dst/large
    rx embedded embedded-e.zsend dst/emb && check embedded src/emb@e1 dst/emb
    if rx raw raw-w.zsend dst/enc; then
        lab_assert_eq raw-still-encrypted "aes-256-gcm" "$(zfs get -H -o value encryption dst/enc)"
        # shellcheck disable=SC2016 # expanded by sh
        lab_assert raw-load-key sh -c 'printf "%s\n" "$PASSPHRASE" | zfs load-key dst/enc && zfs mount dst/enc'
        check raw src/enc@w1 dst/enc
    fi
    zfs create dst/r
    rx replicate replicate-R.zsend -d dst/r &&
        check replicate src/rep@r2 dst/r/rep && check replicate-child src/rep/child@r2 dst/r/rep/child &&
        lab_assert_eq replicate-r1-guid "$(lab_guid src/rep/child@r1)" "$(lab_guid dst/r/rep/child@r1)"
    rx resumed resumed-t.zsend -s dst/big && check resumed src/big@s1 dst/big
    return 0
}

# facts about the record mix, from zstream dump
dump_asserts() {
    local f
    for f in "$WORK"/*.zsend; do
        # shellcheck disable=SC2094 # reads a .zsend, writes a .dump.txt
        zstream dump -v <"$f" >"$OUT/$(basename "$f" .zsend).dump.txt" 2>&1
    done
    local d=$OUT
    lab_assert embedded-has-WRITE_EMBEDDED grep -Eq 'Total DRR_WRITE_EMBEDDED records = [1-9]' "$d/embedded-e.dump.txt"
    lab_assert compressed-has-lz4-WRITE grep -Eq '^WRITE .*compression type = 15' "$d/compressed-c.dump.txt"
    # shellcheck disable=SC2016 # awk program
    lab_assert large-has-block-over-128K awk '/^WRITE / { for (i = 1; i < NF; i++) if ($i == "logical_size" && $(i + 2) > 131072) f = 1 } END { exit !f }' "$d/large-L.dump.txt"
    lab_assert replicate-has-2-datasets-4-snaps grep -Eq 'Total DRR_BEGIN records = 5' "$d/replicate-R.dump.txt"
    lab_assert incr-I-has-2-snaps grep -Eq 'Total DRR_BEGIN records = [2-9]' "$d/incr-I.dump.txt"
    lab_assert raw-has-OBJECT_RANGE grep -q '^OBJECT_RANGE ' "$d/raw-w.dump.txt"
    lab_assert resumed-has-resume-begin grep -q 'resume_object' "$d/resumed-t.dump.txt"
    local max
    for f in "$WORK"/*.zsend; do
        # a non-raw full stream of any file system carries ~35K of uncompressed metadata
        # (the SA layouts ZAP alone is 2 x 16K) plus 312 bytes of header per record
        case $(basename "$f") in
        full.zsend | large-L.zsend | resumed-t.zsend) max=$((320 * 1024)) ;;
        incr-I.zsend | replicate-R.zsend) max=$((160 * 1024)) ;;
        incr-i.zsend | raw-w.zsend) max=$((64 * 1024)) ;;
        *) max=$((80 * 1024)) ;;
        esac
        lab_assert "size-$(basename "$f")" test "$(stat -c %s "$f")" -le "$max"
    done
}

readme() {
    local f
    {
        echo "# Lab streams: real OpenZFS send streams"
        echo
        echo "Made by \`scripts/lab fixtures\` (scenario \`scripts/lab.d/fixtures.sh\`) in the lab VM:"
        echo "kernel $(uname -r), $(zfs version | paste -sd ' ')."
        echo "Pools on file vdevs; every stream was received back with \`zfs recv\` and the files"
        echo "compared with the source snapshot (see the scenario). The data is partly random, so a"
        echo "re-run makes different bytes: regenerate all of them together."
        echo
        echo "| file | bytes | command |"
        echo "| --- | ---: | --- |"
        while IFS=$'\t' read -r f cmd; do
            echo "| $f | $(stat -c %s "$WORK/$f") | \`${cmd//|/\\|}\` |"
        done <"$WORK/commands.txt"
        echo
        echo "Datasets: src/fx (recordsize=8K, lz4; @a full fill, @b and @c small changes),"
        echo "src/comp (lz4, text), src/large (recordsize=1M, one ~132K block: > 128K), src/emb (lz4, tiny"
        echo "compressible files), src/enc (aes-256-gcm, passphrase \`$PASSPHRASE\`), src/rep"
        echo "with child src/rep/child (@r1, @r2), src/big (384K random; its receive was cut at"
        echo "half the stream, then resumed with the token)."
        echo
        echo "The resume token decodes (\`zstream token\`) to:"
        echo
        echo '```'
        cat "$OUT/resume-token.decoded.txt"
        echo '```'
        echo
        echo "Snapshot guids (decimal):"
        echo
        echo '```'
        zfs list -H -p -t snapshot -o name,guid,createtxg -r src
        echo '```'
    } >"$OUT/README.md"
}

lab_step pools lab_pools src dst
lab_step fx make_fx
lab_step compressed make_compressed
lab_step large make_large
lab_step embedded make_embedded
lab_step raw make_raw
lab_step replicate make_replicate
lab_step resumed make_resumed
zfs list -o name,used,refer,compression,recordsize,encryption -r src
lab_step verify verify
lab_step dumps dump_asserts
cp "$WORK"/*.zsend "$WORK/resume-token.txt" "$OUT/"
readme
ls -l "$OUT"
lab_summary
