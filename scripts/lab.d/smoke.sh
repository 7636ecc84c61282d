#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Lab smoke scenario: two network namespaces joined by WireGuard, netem and a link flap,
# two file-backed pools, a realistic data set, then `zfs send | zfs recv` through the tunnel
# (full under netem with a flap mid-transfer, then an incremental) and a content comparison.
#   scripts/lab run scripts/lab.d/smoke.sh [RESULTS_DIR]
# Tunables: LAB_FILL_SIZE (default 8M), LAB_SMOKE_NETEM (default "delay 20ms loss 0.5% rate 50mbit").
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$(realpath "$0")")/lib.sh"

export PORT=9000
export NETEM=${LAB_SMOKE_NETEM:-delay 20ms loss 0.5% rate 50mbit}

# xfer RECV_TARGET SEND_ARGS...: zfs send (primary) -> TCP over wg0 -> zfs recv (dr listener)
xfer() {
    set -e
    local target=$1
    shift
    lab_listen dr "$PORT" | zfs recv -F "$target" &
    local rpid=$!
    lab_wait_listen dr "$PORT"
    local t0=$SECONDS
    zfs send "$@" | lab_connect primary "$LAB_DR_WG_IP" "$PORT"
    wait "$rpid"
    lab_log "xfer $* -> $target over wg0 in $((SECONDS - t0)) s"
}

xfer_with_flap() {
    set -e
    local t0=$SECONDS
    lab_flap_bg 1 3 primary veth-p
    xfer "$@"
    local took=$((SECONDS - t0))
    lab_flap_wait
    # the flap ends 4 s after the start: a transfer that took longer saw it mid-way
    if ((took >= 4)); then
        lab_log "transfer took ${took}s: the flap (1s..4s) was mid-transfer"
    else
        lab_log "WARNING: transfer took ${took}s, the flap may have missed it"
    fi
    echo "$took" >/tmp/lab/xfer-took
}

rtt_ms() { # average RTT through the tunnel in ms (integer)
    lab_ping primary "$LAB_DR_WG_IP" 5 | awk '/min\/avg/ { split($0, a, "= "); split(a[2], v, "/"); printf "%d\n", v[2] }'
}

handshake() { ip netns exec primary wg show wg0 latest-handshakes | awk '{ exit !($2 > 0) }'; }

lab_step topology lab_topology
lab_assert wg-ping lab_ping primary "$LAB_DR_WG_IP" 2
lab_assert wg-handshake handshake

lab_step netem lab_netem primary veth-p "$NETEM"
rtt=$(rtt_ms || echo 0)
lab_assert netem-rtt-at-least-20ms test "${rtt:-0}" -ge 20

lab_step pools lab_pools src dst
zfs create src/data
mnt=$(lab_mountpoint src/data)
lab_step fill lab_fill "$mnt" 7 "${LAB_FILL_SIZE:-8M}"
zfs snapshot src/data@s1

lab_step --timeout 240 xfer-full-netem-flap xfer_with_flap dst/data src/data@s1
lab_assert flap-mid-transfer test "$(cat /tmp/lab/xfer-took)" -ge 4
dmnt=$(lab_mountpoint dst/data)
lab_assert full-content lab_compare "$mnt" "$dmnt"
lab_assert_eq full-guid "$(lab_guid src/data@s1)" "$(lab_guid dst/data@s1)"

lab_step netem-clear lab_netem_clear
lab_step mutate lab_mutate "$mnt" 8
zfs snapshot src/data@s2
lab_step --timeout 120 xfer-incremental xfer dst/data -i src/data@s1 src/data@s2
lab_assert incr-content lab_compare "$mnt" "$dmnt"
lab_assert_eq incr-guid "$(lab_guid src/data@s2)" "$(lab_guid dst/data@s2)"

lab_step flap lab_flap primary veth-p 2
lab_assert wg-ping-after-flap lab_ping primary "$LAB_DR_WG_IP" 3

zfs list -o name,used,refer,compressratio -r src dst
lab_destroy_pools src dst
lab_topology_destroy
lab_summary
