#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Lab scenario (issue 7, WAN profile): fjord vs `zstd -1 -T0 | ssh` over the WireGuard tunnel
# with netem (25 ms each way = 50 ms RTT, 0.1 % loss each way, LAB_WAN_RATE [100mbit]), the
# same real mixed `zfs send` stream, from a file in the primary namespace to a file in the DR
# namespace; then both again with a 10 s link-down flap in the middle.
#   LAB_FJORD_SEND=… LAB_FJORD_RECV=… scripts/lab run scripts/lab.d/wan.sh DIR
# Writes DIR/wan.md (a markdown table) and DIR/wan.tsv. The VM is QEMU TCG (no KVM): both
# tools are CPU-bound as well as link-bound; the table says so.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$(realpath "$0")")/lib.sh"

send=${LAB_FJORD_SEND:?set LAB_FJORD_SEND to the fjord-send binary}
recv=${LAB_FJORD_RECV:?set LAB_FJORD_RECV to the fjord-recv binary}
rate=${LAB_WAN_RATE:-100mbit}
work=/tmp/lab/wan
mkdir -p "$work/sink" "$work/ssh"
R=$LAB_RESULTS

lab_step topology lab_topology
lab_step pools lab_pools src dst
zfs create src/data
lab_step fill lab_fill "$(lab_mountpoint src/data)" 41 "${LAB_FILL_SIZE:-24M}"
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

spub=$("$send" keygen --key "$work/send.key")
rpub=$("$recv" keygen --key "$work/recv.key")
FJORD_LOG=info ip netns exec dr "$recv" serve --listen "$LAB_DR_WG_IP:7450" --key "$work/recv.key" \
    --allow-key "$spub" --sink-dir "$work/sink" --idle-timeout 3s --grace 120s \
    >"$R/serve.log" 2>&1 &
serve_pid=$!
sleep 2

for ns_dev in "primary veth-p" "dr veth-d"; do
    # shellcheck disable=SC2086
    lab_netem $ns_dev "delay 25ms loss 0.1% rate $rate limit 10000"
done

printf 'case\ttool\tseconds\tMB/s\tresult\tdetail\n' >"$R/wan.tsv"
# run CASE TOOL: one transfer; FLAP=1 flaps the link for 10 s, 5 s in
run() {
    local case=$1 tool=$2 rc=0 t0 t1 secs out detail="" flap_pid=""
    out=$work/out-$case-$tool
    rm -f "$out" "$work"/sink/*.zsend
    if [[ ${FLAP:-0} == 1 ]]; then
        (sleep 5 && lab_flap primary veth-p 10) >>"$R/flaps.log" 2>&1 &
        flap_pid=$!
    fi
    t0=$(date +%s.%N)
    case $tool in
    fjord-*)
        ip netns exec primary timeout 900 "$send" send --pack --congestion "${tool#fjord-}" --stream "$work/stream.zsend" \
            --to "$LAB_DR_WG_IP:7450" --key "$work/send.key" --server-key "$rpub" \
            --dataset "backup/$case" --idle-timeout 3s --grace 120s --link-mbit 100 --link-rtt-ms 50 \
            >"$R/$case-$tool.out" 2>"$R/$case-$tool.err" || rc=$?
        t1=$(date +%s.%N)
        cp "$work/sink/backup_$case@wan.zsend" "$out" 2>/dev/null || true
        detail=$(sed -n 's/.*re-sent \([0-9]*\) bytes over \([0-9]*\) reconnects.*/re-sent \1 bytes, \2 reconnects/p' "$R/$case-$tool.out")
        ;;
    zstd-ssh)
        ip netns exec primary timeout 900 bash -c 'zstd -q -1 -T0 <"$1" | "${@:3}" "zstd -q -d >$2"' _ \
            "$work/stream.zsend" "$out" "${ssh_cmd[@]}" \
            >"$R/$case-$tool.out" 2>"$R/$case-$tool.err" || rc=$?
        t1=$(date +%s.%N)
        ((rc == 0)) || detail=$(grep -v pyenv "$R/$case-$tool.err" | tail -n1 | tr '\t' ' ')
        ;;
    esac
    [[ -z $flap_pid ]] || wait "$flap_pid" || true
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    local result=failed
    if ((rc == 0)) && cmp -s "$work/stream.zsend" "$out"; then
        result=ok
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$case" "$tool" "$secs" \
        "$(awk -v s="$size" -v t="$secs" 'BEGIN { printf "%.2f", s / t / 1e6 }')" \
        "$result (exit $rc)" "$detail" >>"$R/wan.tsv"
    lab_log "$case $tool: $result in ${secs}s (exit $rc) $detail"
}

run steady zstd-ssh
run steady fjord-cubic
run steady fjord-bbr
FLAP=1 run flap zstd-ssh
FLAP=1 run flap fjord-cubic
FLAP=1 run flap fjord-bbr

lab_assert steady-fjord-ok grep -qP '^steady\tfjord-cubic\t.*\tok ' "$R/wan.tsv"
lab_assert steady-fjord-bbr-ok grep -qP '^steady\tfjord-bbr\t.*\tok ' "$R/wan.tsv"
lab_assert steady-ssh-ok grep -qP '^steady\tzstd-ssh\t.*\tok ' "$R/wan.tsv"
lab_assert flap-fjord-ok grep -qP '^flap\tfjord-cubic\t.*\tok ' "$R/wan.tsv"
lab_assert flap-fjord-bbr-ok grep -qP '^flap\tfjord-bbr\t.*\tok ' "$R/wan.tsv"
{
    echo "| case | tool | seconds | stream MB/s | result | detail |"
    echo "| --- | --- | ---: | ---: | --- | --- |"
    tail -n +2 "$R/wan.tsv" | awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6 }'
} >"$R/wan.md"
cat "$R/wan.md"
kill "$serve_pid" 2>/dev/null || true
kill "$(cat "$work/ssh/sshd.pid" 2>/dev/null)" 2>/dev/null || true
lab_summary
