#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Lab scenario (issue 16, the WAN matrix): fjord against `zstd -1 -T0 | ssh` and plain
# `mbuffer` over TCP, through the WireGuard tunnel with netem on its underlay, for every
# RTT x loss cell, plus a 10 s link flap. The same real mixed `zfs send` stream goes from a
# file in the primary namespace to a file in the DR namespace; every received file must be
# byte-identical to it.
#   LAB_FJORD_SEND=… LAB_FJORD_RECV=… scripts/lab run scripts/lab.d/wan.sh DIR
# Knobs (environment):
#   LAB_WAN_RATE    netem rate each way [20mbit]: a rate the VM carries with CPU to spare,
#                   so that the tools are network-bound (the CPU column shows it)
#   LAB_WAN_RTTS    round-trip times in ms [5 25 50] (half of it as delay each way)
#   LAB_WAN_LOSSES  random loss in %, each way [0 0.1 1]
#   LAB_WAN_TOOLS   [zstd-ssh mbuffer fjord fjord-cubic]; `fjord` runs with fjord's defaults
#                   (no link options at all), `fjord-cubic`/`fjord-bbr` with that
#                   `--congestion` only
#   LAB_WAN_RUNS    runs per cell and tool [3]; the report shows medians
#   LAB_WAN_FLAP    "RTT LOSS" of the flap cell [50 0.1]; empty: no flap cell
#   LAB_FILL_SIZE   data written before the snapshot [12M]
# Writes DIR/wan.tsv (every run) and DIR/wan.md (medians, ratios, targets).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$(realpath "$0")")/lib.sh"

send=${LAB_FJORD_SEND:?set LAB_FJORD_SEND to the fjord-send binary}
recv=${LAB_FJORD_RECV:?set LAB_FJORD_RECV to the fjord-recv binary}
rate=${LAB_WAN_RATE:-20mbit}
read -r -a rtts <<<"${LAB_WAN_RTTS:-5 25 50}"
read -r -a losses <<<"${LAB_WAN_LOSSES:-0 0.1 1}"
read -r -a tools <<<"${LAB_WAN_TOOLS:-zstd-ssh mbuffer fjord fjord-cubic}"
runs=${LAB_WAN_RUNS:-3}
flap_cell=${LAB_WAN_FLAP-50 0.1}
flap_secs=10
work=/tmp/lab/wan
mkdir -p "$work/sink" "$work/ssh"
R=$LAB_RESULTS

lab_step topology lab_topology
lab_step pools lab_pools src dst
zfs create src/data
lab_step fill lab_fill "$(lab_mountpoint src/data)" 41 "${LAB_FILL_SIZE:-12M}"
zfs snapshot src/data@wan
zfs send src/data@wan >"$work/stream.zsend"
size=$(stat -c %s "$work/stream.zsend")
lab_log "stream: $size bytes"

# A private sshd in the DR namespace: own host key, config and root key, port 2222.
ssh-keygen -q -t ed25519 -N '' -f "$work/ssh/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$work/ssh/client_key"
cp "$work/ssh/client_key.pub" "$work/ssh/authorized_keys"
chmod 600 "$work/ssh/authorized_keys"
mkdir -p /run/sshd
cat >"$work/ssh/sshd_config" <<EOF
Port 2222
ListenAddress $LAB_DR_WG_IP
HostKey $work/ssh/host_key
AuthorizedKeysFile $work/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
StrictModes no
# PAM lets key logins in although the shared rootfs has root's password locked
UsePAM yes
PidFile $work/ssh/sshd.pid
EOF
lab_step topology-ready lab_ping primary "$LAB_DR_WG_IP" 2
ip netns exec dr /usr/sbin/sshd -f "$work/ssh/sshd_config" -E "$R/sshd.log"
ssh_cmd=(ssh -p 2222 -i "$work/ssh/client_key" -c aes128-gcm@openssh.com
    -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
    -o BatchMode=yes "root@$LAB_DR_WG_IP")

# fjord's receiver with its defaults (idle timeout, grace, windows, congestion).
spub=$("$send" keygen --key "$work/send.key")
rpub=$("$recv" keygen --key "$work/recv.key")
FJORD_LOG=info ip netns exec dr "$recv" serve --listen "$LAB_DR_WG_IP:7450" --key "$work/recv.key" \
    --allow-key "$spub" --sink-dir "$work/sink" >"$R/serve.log" 2>&1 &
serve_pid=$!
lab_wait_udp dr 7450

# cpu_busy_jiffies / cpu_total_jiffies: the VM's /proc/stat (both namespaces share it), so a
# transfer's CPU share covers both ends, the tunnel and the netem queue.
cpu_sample() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat; }

# shape RTT LOSS: netem on both ends of the underlay; the queue holds the delay line plus
# one bandwidth-delay product (a realistic bottleneck buffer, not an unbounded one).
shape() {
    local rtt=$1 loss=$2 bps limit
    local r=${rate%bit}
    bps=$(numfmt --from=si "${r^^}")
    limit=$(awk -v b="$bps" -v r="$rtt" 'BEGIN { p = b / 8 / 1400 * (r * 1.5) / 1000; printf "%d", p + 64 }')
    for ns_dev in "primary veth-p" "dr veth-d"; do
        # shellcheck disable=SC2086
        lab_netem $ns_dev "delay $((rtt / 2))ms loss ${loss}% rate $rate limit $limit"
    done
}

printf 'rtt_ms\tloss_pct\tflap\ttool\trun\tseconds\tMB_s\tcpu_pct\tresult\treconnects\tresent_bytes\n' >"$R/wan.tsv"
# run RTT LOSS FLAP TOOL RUN: one transfer, one line of wan.tsv
run() {
    local rtt=$1 loss=$2 flap=$3 tool=$4 n=$5 rc=0 t0 t1 c0 c1 secs out name flap_pid=""
    local reconnects="" resent=""
    name=r$rtt-l$loss-f$flap-$tool-$n
    out=$work/out-$name
    rm -f "$out" "$work"/sink/*.zsend
    read -r -a c0 <<<"$(cpu_sample)"
    t0=$(date +%s.%N)
    if ((flap)); then
        # 1 s in: every tool is past its handshake and moving data by then
        (sleep 1 && lab_flap primary veth-p "$flap_secs") >>"$R/flaps.log" 2>&1 &
        flap_pid=$!
    fi
    case $tool in
    fjord | fjord-cubic | fjord-bbr)
        local extra=()
        [[ $tool == fjord ]] || extra=(--congestion "${tool#fjord-}")
        ip netns exec primary timeout 900 "$send" send --pack "${extra[@]}" --stream "$work/stream.zsend" \
            --to "$LAB_DR_WG_IP:7450" --key "$work/send.key" --server-key "$rpub" \
            --dataset "backup/$name" >"$R/$name.out" 2>"$R/$name.err" || rc=$?
        t1=$(date +%s.%N)
        cp "$work/sink/backup_$name@wan.zsend" "$out" 2>/dev/null || true
        reconnects=$(sed -n 's/.*re-sent [0-9]* bytes over \([0-9]*\) reconnects.*/\1/p' "$R/$name.out")
        resent=$(sed -n 's/.*re-sent \([0-9]*\) bytes over.*/\1/p' "$R/$name.out")
        ;;
    zstd-ssh)
        ip netns exec primary timeout 900 bash -c 'zstd -q -1 -T0 <"$1" | "${@:3}" "zstd -q -d >$2"' _ \
            "$work/stream.zsend" "$out" "${ssh_cmd[@]}" >"$R/$name.out" 2>"$R/$name.err" || rc=$?
        t1=$(date +%s.%N)
        ;;
    mbuffer)
        # `-I HOST:PORT` would accept only HOST as the client: listen on the port alone
        ip netns exec dr timeout 900 mbuffer -q -I 9090 -o "$out" >"$R/$name.rx" 2>&1 &
        local rx=$!
        lab_wait_listen dr 9090 20
        ip netns exec primary timeout 900 mbuffer -q -i "$work/stream.zsend" -O "$LAB_DR_WG_IP:9090" \
            >"$R/$name.out" 2>"$R/$name.err" || rc=$?
        ((rc == 0)) || kill "$rx" 2>/dev/null || true
        wait "$rx" || rc=$?
        t1=$(date +%s.%N)
        ;;
    esac
    read -r -a c1 <<<"$(cpu_sample)"
    [[ -z $flap_pid ]] || wait "$flap_pid" || true
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    local result=failed cpu
    if ((rc == 0)) && cmp -s "$work/stream.zsend" "$out"; then
        result=ok
    fi
    cpu=$(awk -v b="$((c1[0] - c0[0]))" -v t="$((c1[1] - c0[1]))" 'BEGIN { printf "%.0f", t ? 100 * b / t : 0 }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rtt" "$loss" "$flap" "$tool" "$n" "$secs" \
        "$(awk -v s="$size" -v t="$secs" 'BEGIN { printf "%.2f", s / t / 1e6 }')" "$cpu" \
        "$result" "$reconnects" "$resent" >>"$R/wan.tsv"
    lab_log "$name: $result in ${secs}s (exit $rc), VM CPU ${cpu}%, reconnects ${reconnects:--}, re-sent ${resent:--}"
    rm -f "$out"
}

# Runs interleave the tools (run 1 of every tool, then run 2, …) so that a slow spell of
# the shared host hits every tool alike.
cells=()
for rtt in "${rtts[@]}"; do
    for loss in "${losses[@]}"; do cells+=("$rtt $loss 0"); done
done
[[ -z $flap_cell ]] || cells+=("$flap_cell 1")
for cell in "${cells[@]}"; do
    read -r rtt loss flap <<<"$cell"
    shape "$rtt" "$loss"
    for ((n = 1; n <= runs; n++)); do
        for tool in "${tools[@]}"; do run "$rtt" "$loss" "$flap" "$tool" "$n"; done
    done
done
lab_netem_clear

python3 "$(dirname "$(realpath "$0")")/wan_report.py" "$R/wan.tsv" "$size" "$rate" "$flap_secs" >"$R/wan.md"
cat "$R/wan.md"
lab_assert every-transfer-byte-identical bash -c "! tail -n +2 '$R/wan.tsv' | cut -f9 | grep -qv '^ok$'"
kill "$serve_pid" 2>/dev/null || true
kill "$(cat "$work/ssh/sshd.pid" 2>/dev/null)" 2>/dev/null || true
lab_summary
