# shellcheck shell=bash
# Guest-side helpers for lab scenarios. A scenario does:
#     source "$(dirname "$0")/lib.sh"
# and runs inside the VM started by `scripts/lab run` (root, real OpenZFS, WireGuard, netem).
#
# Machine-readable output:
#   the log (stdout):        "STEP name ok|FAIL rc seconds"   (also in $LAB_RESULTS/steps.txt)
#   $LAB_RESULTS/results.txt "ASSERT name pass|fail detail"
#
# Topology built by lab_topology (only these addresses are ever used as targets):
#   ns primary: veth-p 192.168.77.1/24, wg0 10.10.0.1/24 (udp 51820)
#   ns dr:      veth-d 192.168.77.2/24, wg0 10.10.0.2/24 (udp 51820)
# Pools built by lab_pools: `src` and `dst` on sparse files /tmp/lab-vdev-<name>,
#   altroot /tmp/mnt-<name> (so dataset src/x mounts at /tmp/mnt-src/src/x), atime=off
#   (with atime on, reading a received file system "modifies" it and the next incremental
#   receive fails with "destination has been modified since most recent snapshot").

LAB_RESULTS=${LAB_RESULTS:?LAB_RESULTS is not set: run scenarios with scripts/lab run}
LAB_LIB=${LAB_LIB:-$(realpath "${BASH_SOURCE[0]}")}
LAB_STEP_TIMEOUT=${LAB_STEP_TIMEOUT:-300}
LAB_POOL_SIZE=${LAB_POOL_SIZE:-512M}
LAB_PRIMARY_VETH_IP=192.168.77.1
LAB_DR_VETH_IP=192.168.77.2
LAB_PRIMARY_DR2_IP=192.168.78.1
LAB_DR2_IP=192.168.78.2
LAB_PRIMARY_WG_IP=10.10.0.1
LAB_DR_WG_IP=10.10.0.2
export LAB_RESULTS LAB_LIB LAB_STEP_TIMEOUT LAB_POOL_SIZE

lab_log() { printf '%s lab: %s\n' "$(date +%T.%3N)" "$*"; }

# ---------------------------------------------------------------- steps and assertions

# lab_step [--timeout SECONDS] NAME [--timeout SECONDS] CMD...
# Runs CMD (a command or a lab_* / scenario function) in a subshell under `timeout`,
# logs "STEP NAME ok|FAIL rc seconds" and returns CMD's status (124 = timed out).
# Functions run in a child bash that re-sources this file: variables they set do not come back,
# so export what a function needs from the scenario (or define it in a file it sources).
lab_step() {
    local name t=$LAB_STEP_TIMEOUT rc=0 start end
    if [[ ${1:-} == --timeout ]]; then
        t=$2
        shift 2
    fi
    name=$1
    shift
    if [[ ${1:-} == --timeout ]]; then
        t=$2
        shift 2
    fi
    start=$(date +%s.%N)
    lab_log "step $name: $*"
    if declare -F "$1" >/dev/null; then
        # export the scenario's functions so the child bash sees them too
        local f
        for f in $(declare -F | awk '{ print $3 }'); do export -f "${f?}"; done
        # shellcheck disable=SC2016 # expanded by the child bash
        timeout --kill-after=10 "$t" bash -c 'source "$LAB_LIB"; "$@"' lab_step "$@" || rc=$?
    else
        timeout --kill-after=10 "$t" "$@" || rc=$?
    fi
    end=$(date +%s.%N)
    local dur
    dur=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
    local line
    if ((rc == 0)); then
        line="STEP $name ok 0 ${dur}s"
    elif ((rc == 124 || rc == 137)); then
        line="STEP $name FAIL $rc ${dur}s (timeout ${t}s)"
    else
        line="STEP $name FAIL $rc ${dur}s"
    fi
    echo "$line"
    echo "$line" >>"$LAB_RESULTS/steps.txt"
    return "$rc"
}

# lab_assert NAME CMD...       pass when CMD exits 0
lab_assert() {
    local name=$1 rc=0
    shift
    "$@" || rc=$?
    if ((rc == 0)); then
        _lab_record "$name" pass "$*"
    else
        _lab_record "$name" fail "rc=$rc: $*"
    fi
    return 0
}

# lab_assert_eq NAME EXPECTED ACTUAL
lab_assert_eq() {
    if [[ $2 == "$3" ]]; then
        _lab_record "$1" pass "$2"
    else
        _lab_record "$1" fail "expected '$2' got '$3'"
    fi
}

# lab_pass NAME DETAIL / lab_fail NAME DETAIL
lab_pass() { _lab_record "$1" pass "${2:-}"; }
lab_fail() { _lab_record "$1" fail "${2:-}"; }

_lab_record() {
    local line="ASSERT $1 $2 ${3:-}"
    echo "$line"
    echo "$line" >>"$LAB_RESULTS/results.txt"
}

# lab_summary: prints "N passed, N failed", returns 1 if any assertion or step failed.
lab_summary() {
    local pass=0 fail=0 stepfail=0
    if [[ -f $LAB_RESULTS/results.txt ]]; then
        pass=$(grep -c '^ASSERT [^ ]* pass' "$LAB_RESULTS/results.txt" || true)
        fail=$(grep -c '^ASSERT [^ ]* fail' "$LAB_RESULTS/results.txt" || true)
    fi
    if [[ -f $LAB_RESULTS/steps.txt ]]; then
        stepfail=$(grep -c '^STEP [^ ]* FAIL' "$LAB_RESULTS/steps.txt" || true)
    fi
    echo "lab: $pass passed, $fail failed ($stepfail failed steps)"
    ((fail == 0 && stepfail == 0))
}

# ---------------------------------------------------------------- network

lab_ping() { # lab_ping NS ADDR [COUNT]
    local ns=$1 addr=$2 count=${3:-3}
    if command -v ping >/dev/null; then
        ip netns exec "$ns" ping -c "$count" -W 2 "$addr"
    else
        ip netns exec "$ns" busybox ping -c "$count" -W 2 "$addr"
    fi
}

# lab_* functions that build things use `set -e`: run them through lab_step (a child bash)
# or from a `set -e` scenario, not inside `if`/`||` (where bash ignores set -e).
lab_topology() {
    set -e
    local wgdir=/tmp/lab-wg
    ip netns add primary
    ip netns add dr
    ip -n primary link set lo up
    ip -n dr link set lo up
    ip link add veth-p type veth peer name veth-d
    ip link set veth-p netns primary
    ip link set veth-d netns dr
    ip -n primary addr add "$LAB_PRIMARY_VETH_IP/24" dev veth-p
    ip -n dr addr add "$LAB_DR_VETH_IP/24" dev veth-d
    ip -n primary link set veth-p up
    ip -n dr link set veth-d up

    mkdir -p "$wgdir"
    (umask 077 && wg genkey >"$wgdir/primary.key" && wg genkey >"$wgdir/dr.key")
    wg pubkey <"$wgdir/primary.key" >"$wgdir/primary.pub"
    wg pubkey <"$wgdir/dr.key" >"$wgdir/dr.pub"

    local ns peer my_wg peer_wg peer_veth
    for ns in primary dr; do
        if [[ $ns == primary ]]; then
            peer=dr my_wg=$LAB_PRIMARY_WG_IP peer_wg=$LAB_DR_WG_IP peer_veth=$LAB_DR_VETH_IP
        else
            peer=primary my_wg=$LAB_DR_WG_IP peer_wg=$LAB_PRIMARY_WG_IP peer_veth=$LAB_PRIMARY_VETH_IP
        fi
        ip -n "$ns" link add wg0 type wireguard
        ip netns exec "$ns" wg set wg0 listen-port 51820 private-key "$wgdir/$ns.key" \
            peer "$(cat "$wgdir/$peer.pub")" endpoint "$peer_veth:51820" \
            allowed-ips "$peer_wg/32" persistent-keepalive 5
        ip -n "$ns" addr add "$my_wg/24" dev wg0
        ip -n "$ns" link set wg0 mtu 1420 up
    done
    lab_ping primary "$LAB_DR_VETH_IP" 2
    lab_ping primary "$LAB_DR_WG_IP" 3
    lab_ping dr "$LAB_PRIMARY_WG_IP" 3
    ip netns exec primary wg show wg0
}

# lab_topology_dr2: a third namespace "dr2", a second DR node, on a plain veth pair from the
# primary ($LAB_PRIMARY_DR2_IP <-> $LAB_DR2_IP; no WireGuard: QUIC authenticates and encrypts
# on its own, and a third WireGuard peer would buy nothing the second one does not test)
lab_topology_dr2() {
    set -e
    ip netns del dr2 2>/dev/null || true
    ip netns add dr2
    ip -n dr2 link set lo up
    ip link add veth-p2 type veth peer name veth-d2
    ip link set veth-p2 netns primary
    ip link set veth-d2 netns dr2
    ip -n primary addr add "$LAB_PRIMARY_DR2_IP/24" dev veth-p2
    ip -n dr2 addr add "$LAB_DR2_IP/24" dev veth-d2
    ip -n primary link set veth-p2 up
    ip -n dr2 link set veth-d2 up
    lab_ping primary "$LAB_DR2_IP" 2
}

lab_topology_destroy() {
    ip netns del dr2 2>/dev/null || true
    ip netns del primary 2>/dev/null || true
    ip netns del dr 2>/dev/null || true
}

# lab_netem NS DEV "delay 20ms loss 0.5% rate 50mbit"   (egress of DEV)
lab_netem() {
    local ns=$1 dev=$2 spec=$3
    # shellcheck disable=SC2086 # the spec is a list of netem words
    ip netns exec "$ns" tc qdisc replace dev "$dev" root netem $spec
    lab_log "netem $ns/$dev: $(ip netns exec "$ns" tc qdisc show dev "$dev" | head -n1)"
}

# lab_netem_clear [NS DEV]: remove netem (default: both veth ends)
lab_netem_clear() {
    if (($# == 2)); then
        ip netns exec "$1" tc qdisc del dev "$2" root 2>/dev/null || true
    else
        ip netns exec primary tc qdisc del dev veth-p root 2>/dev/null || true
        ip netns exec dr tc qdisc del dev veth-d root 2>/dev/null || true
    fi
    lab_log "netem cleared"
}

# lab_flap NS DEV SECONDS: link down for SECONDS, then up again
lab_flap() {
    local ns=$1 dev=$2 secs=$3
    lab_log "flap $ns/$dev: down for ${secs}s"
    ip -n "$ns" link set "$dev" down
    sleep "$secs"
    ip -n "$ns" link set "$dev" up
    lab_log "flap $ns/$dev: up"
}

# lab_flap_bg DELAY SECONDS [NS DEV]: flap in the background after DELAY seconds
# (default primary veth-p); sets LAB_FLAP_PID, wait for it with lab_flap_wait.
lab_flap_bg() {
    local delay=$1 secs=$2 ns=${3:-primary} dev=${4:-veth-p}
    (
        sleep "$delay"
        lab_flap "$ns" "$dev" "$secs"
    ) &
    LAB_FLAP_PID=$!
    lab_log "flap scheduled in ${delay}s for ${secs}s on $ns/$dev (pid $LAB_FLAP_PID)"
}

lab_flap_wait() {
    [[ -n ${LAB_FLAP_PID:-} ]] || return 0
    wait "$LAB_FLAP_PID" || true
    LAB_FLAP_PID=
}

# lab_wait_listen NS PORT [SECONDS]: wait until a TCP listener is up in NS
lab_wait_listen() {
    local ns=$1 port=$2 secs=${3:-20} i
    for ((i = 0; i < secs * 10; i++)); do
        if ip netns exec "$ns" ss -Hltn "sport = :$port" | grep -q .; then
            return 0
        fi
        sleep 0.1
    done
    echo "lab_wait_listen: nothing listens on $ns:$port after ${secs}s" >&2
    return 1
}

# lab_wait_udp NS PORT [SECONDS]: wait until a UDP socket (a QUIC endpoint) is bound in NS
lab_wait_udp() {
    lab_wait "${3:-20}" "a UDP socket on $1:$2" _lab_udp_bound "$1" "$2"
}
_lab_udp_bound() { ip netns exec "$1" ss -Huan "sport = :$2" | grep -q .; }

# lab_wait SECONDS WHAT CMD...: poll CMD (every 0.2 s) until it succeeds; after SECONDS,
# print "lab_wait: timed out after N s waiting for WHAT" and return 1
lab_wait() {
    local secs=$1 what=$2 end
    shift 2
    end=$(($(date +%s) + secs))
    while :; do
        "$@" && return 0
        (($(date +%s) < end)) || break
        sleep 0.2
    done
    echo "lab_wait: timed out after ${secs} s waiting for $what" >&2
    return 1
}

# lab_listen NS PORT: TCP listener writing the first connection's data to stdout
lab_listen() {
    if command -v socat >/dev/null; then
        ip netns exec "$1" socat -u "TCP-LISTEN:$2,reuseaddr" STDOUT
    else
        ip netns exec "$1" busybox nc -l -p "$2"
    fi
}

# lab_connect NS ADDR PORT: send stdin to ADDR:PORT, close at EOF
lab_connect() {
    if command -v socat >/dev/null; then
        ip netns exec "$1" socat -u STDIN "TCP:$2:$3"
    else
        ip netns exec "$1" busybox nc "$2" "$3"
    fi
}

# ---------------------------------------------------------------- pools and data

# lab_pools [NAME...]: file-backed pools (default: src dst)
lab_pools() {
    set -e
    local -a names=("$@")
    ((${#names[@]})) || names=(src dst)
    local name
    for name in "${names[@]}"; do
        truncate -s "$LAB_POOL_SIZE" "/tmp/lab-vdev-$name"
        zpool create -f -O atime=off -R "/tmp/mnt-$name" "$name" "/tmp/lab-vdev-$name"
    done
    zpool list
}

lab_destroy_pools() {
    local -a names=("$@")
    ((${#names[@]})) || names=(src dst)
    local name
    for name in "${names[@]}"; do
        zpool destroy -f "$name" 2>/dev/null || true
        rm -f "/tmp/lab-vdev-$name"
    done
}

# lab_mountpoint DATASET
lab_mountpoint() { zfs get -H -o value mountpoint "$1"; }

# lab_guid DATASET@SNAP
lab_guid() { zfs get -Hp -o value guid "$1"; }

# Deterministic pseudo-text: lab_text SEED LINES KIND(log|csv)
_lab_text() {
    awk -v seed="$1" -v n="$2" -v kind="$3" 'BEGIN {
        srand(seed)
        split("info warn error debug", lv, " ")
        split("replicator scheduler api db cache auth", svc, " ")
        split("snapshot taken|send started|send finished|retrying connection|checksum verified|holding snapshot|pruned old snapshot|resume token saved", msg, "|")
        if (kind == "csv") print "id,ts,host,bytes,ratio,status"
        for (i = 0; i < n; i++) {
            t = 1764064800 + i * 7 + int(rand() * 5)
            if (kind == "csv")
                printf "%d,%d,host-%02d,%d,%.3f,%s\n", i, t, int(rand() * 40), int(rand() * 1e9), rand() * 4, (rand() < 0.9 ? "ok" : "retry")
            else
                printf "ts=%d host=node-%02d %s[%d]: %s %s id=%08x bytes=%d\n", t, int(rand() * 16), svc[1 + int(rand() * 6)], 1000 + int(rand() * 30000), lv[1 + int(rand() * 4)], msg[1 + int(rand() * 8)], int(rand() * 2^31), int(rand() * 1e7)
        }
    }'
}

# _lab_bytes SIZE: 300K, 8M, 8 (MiB) -> bytes
_lab_bytes() {
    case $1 in
    *[Kk]) echo $((${1%[Kk]} * 1024)) ;;
    *[Mm]) echo $((${1%[Mm]} * 1024 * 1024)) ;;
    *) echo $(($1 * 1024 * 1024)) ;;
    esac
}

# lab_fill MOUNTPOINT SEED [SIZE]: a realistic mix of about SIZE (300K, 8M; default $LAB_FILL_SIZE or 8M):
# ~35% text (logs, CSV), ~25% binaries (copies of /usr/bin), ~25% incompressible (/dev/urandom),
# ~15% duplicates (same content under several names), plus small files, nested dirs,
# an empty file and a symlink. File names and text are deterministic in SEED.
lab_fill() {
    set -e
    local mnt=$1 seed=$2 budget
    budget=$(_lab_bytes "${3:-${LAB_FILL_SIZE:-8M}}")
    local text_b=$((budget * 35 / 100)) bin_b=$((budget * 25 / 100)) rnd_b=$((budget * 25 / 100))
    local dup_b=$((budget * 15 / 100))
    mkdir -p "$mnt"/{logs,data,bin,blobs,dups,small/a/b/c}
    local i=0 sz=0 lines
    # text: logs and CSV, ~100-120 bytes a line
    while ((sz < text_b)); do
        lines=$(((text_b - sz) / 110 < 4000 ? (text_b - sz) / 110 + 1 : 4000))
        if ((i % 3 == 2)); then
            _lab_text "$((seed * 1000 + i))" "$lines" csv >"$mnt/data/table-$i.csv"
            sz=$((sz + $(stat -c %s "$mnt/data/table-$i.csv")))
        else
            _lab_text "$((seed * 1000 + i))" "$lines" log >"$mnt/logs/app-$i.log"
            sz=$((sz + $(stat -c %s "$mnt/logs/app-$i.log")))
        fi
        i=$((i + 1))
    done
    # binaries: files from /usr/bin under 2 MiB, picked by seed
    local -a bins
    mapfile -t bins < <(find /usr/bin -maxdepth 1 -type f -size -2048k -size +8k -printf '%s %p\n' | LC_ALL=C sort -k2)
    ((${#bins[@]})) || { echo "lab_fill: no binaries in /usr/bin" >&2; return 1; }
    sz=0
    i=$((seed % ${#bins[@]}))
    local tries=0 b bs
    while ((sz < bin_b && tries < ${#bins[@]})); do
        bs=${bins[i]%% *}
        b=${bins[i]#* }
        if ((sz + bs <= bin_b + (bin_b / 2 < 65536 ? bin_b / 2 : 65536))); then
            cp "$b" "$mnt/bin/"
            sz=$((sz + bs))
        fi
        i=$(((i + 7919) % ${#bins[@]}))
        tries=$((tries + 1))
    done
    # incompressible: 64 KiB .. 1 MiB chunks
    sz=0
    i=0
    while ((sz < rnd_b)); do
        local n=$(((65536 << ((seed + i) % 5)) > rnd_b - sz ? rnd_b - sz : (65536 << ((seed + i) % 5))))
        head -c "$n" /dev/urandom >"$mnt/blobs/random-$i.bin"
        sz=$((sz + n))
        i=$((i + 1))
    done
    # small files (embedded-data sized): budget/8K of them, 8 to 40
    local notes=$((budget / 8192 < 8 ? 8 : (budget / 8192 > 40 ? 40 : budget / 8192)))
    for i in $(seq 1 "$notes"); do
        _lab_text "$((seed * 7 + i))" $((1 + i % 5)) log >"$mnt/small/a/note-$i.txt"
    done
    # duplicates: a small, a text, a binary and a random file, each under up to 3 more names,
    # as far as the duplicate budget goes
    local dsrc dsz c
    sz=0
    for dsrc in "$mnt/small/a/note-1.txt" "$mnt/logs/app-0.log" \
        "$(find "$mnt/bin" -type f | LC_ALL=C sort | head -n1)" "$mnt/blobs/random-0.bin"; do
        [[ -f $dsrc ]] || continue
        dsz=$(stat -c %s "$dsrc")
        for c in 1 2 3; do
            ((sz + dsz <= dup_b || dsz < 4096)) || break
            if ((c == 3)); then
                cp "$dsrc" "$mnt/small/a/b/$(basename "$dsrc").again"
            else
                cp "$dsrc" "$mnt/dups/$(basename "$dsrc").copy$c"
            fi
            sz=$((sz + dsz))
        done
    done
    : >"$mnt/small/empty"
    ln -sf ../logs/app-0.log "$mnt/small/latest.log"
    sync
    lab_log "fill $mnt seed=$seed: $(du -sh --apparent-size "$mnt" | cut -f1) in $(find "$mnt" -type f | wc -l) files"
}

# lab_mutate MOUNTPOINT SEED [NEW_SIZE]: modify in place, append, truncate, delete, rename,
# and create files (NEW_SIZE of new random data, default 128K, plus a CSV of NEW_SIZE/4).
lab_mutate() {
    set -e
    local mnt=$1 seed=$2 new
    new=$(_lab_bytes "${3:-128K}")
    local -a files
    mapfile -t files < <(cd "$mnt" && find . -type f -size +0 | LC_ALL=C sort)
    local n=${#files[@]} i k f
    ((n > 0)) || { echo "lab_mutate: no files in $mnt" >&2; return 1; }
    # overwrite 4 KiB in the middle of some files
    for k in 1 2 3 4 5; do
        f=$mnt/${files[(seed * 31 + k * 17) % n]}
        local size off
        size=$(stat -c %s "$f")
        off=$((size / 2 / 4096))
        head -c 4096 /dev/urandom | dd of="$f" bs=4096 seek="$off" conv=notrunc status=none
    done
    # append to logs
    for f in "$mnt"/logs/*.log; do
        [[ -f $f ]] && _lab_text "$((seed * 97))" 50 log >>"$f"
    done
    # truncate one file, delete a few, rename one
    f=$mnt/${files[(seed * 13 + 1) % n]}
    [[ -f $f ]] && truncate -s "$(($(stat -c %s "$f") / 3))" "$f"
    for k in 1 2 3; do
        f=$mnt/${files[(seed * 53 + k * 11) % n]}
        rm -f "$f"
    done
    i=$((seed * 5 % n))
    f=$mnt/${files[i]}
    [[ -f $f ]] && mv "$f" "$f.renamed"
    # new files
    mkdir -p "$mnt/new-$seed"
    _lab_text "$seed" $((new / 4 / 40 + 1)) csv >"$mnt/new-$seed/added.csv"
    head -c "$new" /dev/urandom >"$mnt/new-$seed/added.bin"
    sync
    lab_log "mutate $mnt seed=$seed: now $(find "$mnt" -type f | wc -l) files"
}

# lab_manifest DIR: (one file system: child datasets mounted below are not entered) sorted "relative-path sha256" (files), "-> target" (symlinks), "dir" lines
lab_manifest() {
    (
        cd "$1" || exit 1
        {
            find . -xdev -mindepth 1 -type f -print0 | xargs -0 -r sha256sum | awk '{ h = $1; $1 = ""; print substr($0, 2) " " h }'
            find . -xdev -mindepth 1 -type l -printf '%p -> %l\n'
            find . -xdev -mindepth 1 -type d -printf '%p dir\n'
        } | LC_ALL=C sort
    )
}

# lab_compare SRC_MOUNT DST_MOUNT: 0 if every file's content (sha256), symlink and dir match
lab_compare() {
    local a b
    a=$(mktemp)
    b=$(mktemp)
    lab_manifest "$1" >"$a"
    lab_manifest "$2" >"$b"
    if diff -u --label "$1" --label "$2" "$a" "$b"; then
        lab_log "compare $1 == $2 ($(wc -l <"$a") entries)"
        rm -f "$a" "$b"
        return 0
    fi
    lab_log "compare $1 != $2"
    rm -f "$a" "$b"
    return 1
}
