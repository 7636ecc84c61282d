#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Lab scenario: fjord's QUIC transport over a real WireGuard tunnel with real link flaps.
#   LAB_FJORD_SEND=/path/fjord-send LAB_FJORD_RECV=/path/fjord-recv \
#       scripts/lab run scripts/lab.d/transport.sh DIR
# A real `zfs send` stream goes from the primary namespace to `fjord-recv serve` in the DR
# namespace over wg0 (10.10.0.1 -> 10.10.0.2), rate-limited so that three `ip link set down`
# flaps of the underlay land mid-transfer. Then: the stored stream is byte-identical,
# the sender reconnected and re-sent no more than its replay window per flap, and
# `zfs recv` of the stored stream gives the source's data and snapshot guid.
# A second transfer with an unknown sender key is refused with nothing stored.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$(realpath "$0")")/lib.sh"

send=${LAB_FJORD_SEND:?set LAB_FJORD_SEND to the fjord-send binary}
recv=${LAB_FJORD_RECV:?set LAB_FJORD_RECV to the fjord-recv binary}
work=/tmp/lab/transport
window_mib=4
mkdir -p "$work/sink"

lab_step topology lab_topology
lab_step pools lab_pools src dst
zfs create src/data
mnt=$(lab_mountpoint src/data)
lab_step fill lab_fill "$mnt" 9 "${LAB_FILL_SIZE:-12M}"
zfs snapshot src/data@s1
zfs send src/data@s1 >"$work/s1.zsend"
lab_log "stream: $(stat -c %s "$work/s1.zsend") bytes"

spub=$("$send" keygen --key "$work/send.key")
rpub=$("$recv" keygen --key "$work/recv.key")
"$send" keygen --key "$work/stranger.key" >/dev/null

FJORD_LOG=info ip netns exec dr "$recv" serve --listen "$LAB_DR_WG_IP:7450" --key "$work/recv.key" \
    --allow-key "$spub" --sink-dir "$work/sink" --idle-timeout 3s --grace 120s \
    >"$LAB_RESULTS/serve.log" 2>&1 &
serve_pid=$!
sleep 2

# Three flaps of the underlay while the stream (at 1 MiB/s) is under way.
(
    sleep 3 && lab_flap primary veth-p 4
    sleep 3 && lab_flap primary veth-p 6
    sleep 3 && lab_flap primary veth-p 3
) >"$LAB_RESULTS/flaps.log" 2>&1 &
flaps_pid=$!
t0=$SECONDS
src=0
ip netns exec primary "$send" send --stream - --to "$LAB_DR_WG_IP:7450" --key "$work/send.key" \
    --server-key "$rpub" --dataset backup/data --bwlimit 1M --replay-window-mib "$window_mib" \
    --idle-timeout 3s --grace 120s <"$work/s1.zsend" >"$LAB_RESULTS/send.out" 2>"$LAB_RESULTS/send.err" || src=$?
took=$((SECONDS - t0))
wait "$flaps_pid" || true
lab_log "send exit $src after ${took}s: $(cat "$LAB_RESULTS/send.out")"
cat "$LAB_RESULTS/send.err"

lab_assert_eq send-succeeded 0 "$src"
lab_assert flaps-were-mid-transfer test "$took" -ge 16
stored=$(find "$work/sink" -maxdepth 1 -name '*.zsend' | head -n1)
lab_assert stored-stream-present test -n "$stored"
lab_assert stored-byte-identical cmp "$work/s1.zsend" "${stored:-/nonexistent}"
lab_assert no-partial-left sh -c "! ls -A '$work/sink' | grep -q partial"
reconnects=$(sed -n 's/.* over \([0-9]*\) reconnects.*/\1/p' "$LAB_RESULTS/send.out")
resent=$(sed -n 's/.*re-sent \([0-9]*\) bytes.*/\1/p' "$LAB_RESULTS/send.out")
lab_log "reconnects=$reconnects re-sent=$resent"
echo "reconnects=${reconnects:-} resent=${resent:-}" >"$LAB_RESULTS/counters"
lab_assert reconnected test "${reconnects:-0}" -ge 1
lab_assert resent-within-window test "${resent:-999999999999}" -le $((${reconnects:-0} * window_mib * 1024 * 1024))

lab_assert zfs-recv-of-stored sh -c "zfs recv dst/data <'${stored:-/nonexistent}'"
lab_assert stored-content lab_compare "$mnt" "$(lab_mountpoint dst/data 2>/dev/null || echo /nonexistent)"
lab_assert_eq stored-guid "$(lab_guid src/data@s1)" "$(lab_guid dst/data@s1 2>/dev/null || echo none)"

# An unknown key is refused before any work: nothing stored.
before=$(find "$work/sink" -type f | wc -l)
urc=0
ip netns exec primary timeout 60 "$send" send --stream "$work/s1.zsend" --to "$LAB_DR_WG_IP:7450" \
    --key "$work/stranger.key" --server-key "$rpub" --dataset backup/other --grace 10s \
    >/dev/null 2>"$LAB_RESULTS/stranger.err" || urc=$?
lab_assert unknown-key-refused test "$urc" -ne 0
lab_assert_eq unknown-key-stored-nothing "$before" "$(find "$work/sink" -type f | wc -l)"

kill "$serve_pid" 2>/dev/null || true
wait "$serve_pid" 2>/dev/null || true
lab_summary
