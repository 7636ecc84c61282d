#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Lab scenario (issue 6): the product end to end. `fjord-recv serve --config` on the DR side
# receives into real `zfs recv`; `fjord-send push --config` on the primary plans and sends
# over WireGuard. Every push is checked by comparing file hashes on both sides.
#   LAB_FJORD_SEND=/path/fjord-send LAB_FJORD_RECV=/path/fjord-recv \
#       scripts/lab run scripts/lab.d/push.sh DIR
# Cases: initial full push of a dataset with a child, then incrementals; --dry-run sends
# nothing; a push through 3 link flaps; kill -9 of fjord-recv mid-transfer, then the next
# push resumes from the receive_resume_token; SIGTERM of fjord-recv leaves a resumable
# receive, and a token whose snapshot was destroyed on the source is aborted and the push
# falls back to the common snapshot; a diverged target is refused, then --force rolls it
# back; retention prunes old snapshots but never the base nor foreign ones; an unknown key
# and a key writing outside its prefix are refused with nothing written; two overlapping
# pushes of one job (the second exits "locked"); a copy of an already replicated file costs
# references only (the receiver's chunk cache); status and Prometheus metrics.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$(realpath "$0")")/lib.sh"

send=${LAB_FJORD_SEND:?set LAB_FJORD_SEND to the fjord-send binary}
recv=${LAB_FJORD_RECV:?set LAB_FJORD_RECV to the fjord-recv binary}
work=/tmp/lab/push
mkdir -p "$work/state" "$work/metrics"
R=$LAB_RESULTS

lab_step topology lab_topology
lab_step pools lab_pools src dst
zfs create src/data
zfs create src/data/child
zfs create dst/backup
smnt=$(lab_mountpoint src/data)
cmnt=$(lab_mountpoint src/data/child)
lab_step fill lab_fill "$smnt" 21 "${LAB_FILL_SIZE:-6M}"
lab_step fill-child lab_fill "$cmnt" 22 2M

spub=$("$send" keygen --key "$work/send.key")
opub=$("$send" keygen --key "$work/other.key")
"$send" keygen --key "$work/stranger.key" >/dev/null
rpub=$("$recv" keygen --key "$work/recv.key")

# recv_config TOP_LINES PRIMARY_CLIENT_LINES: the DR node's config; the defaults grant the
# primary neither pruning nor rollback
recv_config() {
    cat >"$work/recv.toml" <<EOF
listen = "$LAB_DR_WG_IP:7450"
key = "$work/recv.key"
max_concurrent = 4
grace = "60s"
idle_timeout = "3s"
$1

[recv]
resumable = true
unmounted = true

[chunk_cache]
dir = "$work/chunks"
size = "256M"

[[client]]
name = "primary"
key = "$spub"
prefixes = ["dst/backup"]
$2

[[client]]
name = "other-site"
key = "$opub"
prefixes = ["dst/other"]
EOF
}
recv_config "" ""

# send_config FILE KEY [EXTRA JOB LINES]: a config with the one job "data"
send_config() {
    cat >"$1" <<EOF
key = "$2"
state_dir = "$work/state"
metrics_file = "$work/metrics/fjord.prom"

[[job]]
name = "data"
source = "src/data"
recursive = true
target_host = "$LAB_DR_WG_IP:7450"
target_key = "$rpub"
target_dataset = "dst/backup/data"
snapshot_prefix = "fjord"
intermediates = true
parallelism = 2
grace = "60s"
idle_timeout = "3s"
$3

[job.retention.source]
hourly = 3
daily = 0
weekly = 0

[job.retention.target]
hourly = 3
daily = 0
weekly = 0
EOF
}
send_config "$work/send.toml" "$work/send.key" ""
send_config "$work/slow.toml" "$work/send.key" 'bwlimit = "1M"'
send_config "$work/stranger.toml" "$work/stranger.key" ""
send_config "$work/other.toml" "$work/other.key" ""

serve_start() {
    FJORD_LOG=info ip netns exec dr "$recv" serve --config "$work/recv.toml" >>"$R/serve.log" 2>&1 &
    serve_pid=$!
    sleep 2
}
# serve_restart: a new recv.toml takes effect
serve_restart() {
    kill "$serve_pid" 2>/dev/null || true
    wait "$serve_pid" 2>/dev/null || true
    serve_start
}
# history DATASET: the DR node's snapshot history by guid
history() { { zfs list -H -t snapshot -o guid -s createtxg -d 1 "$1" 2>/dev/null || true; } | tr '\n' ' '; }
# inert DATASET: the received dataset is never mounted by itself and carries nothing risky
inert() {
    [[ $(zfs get -H -o value canmount,setuid,devices,readonly,sharenfs,mounted "$1" | tr '\n' ' ') == "noauto off off on off no " ]]
}
# all_held DATASET: every snapshot carries the DR node's hold
all_held() {
    local s
    for s in $(zfs list -H -t snapshot -o name -d 1 "$1"); do
        zfs holds -H "$s" | grep -q $'\tfjord-dr\t' || { echo "not held: $s"; return 1; }
    done
}
# push NAME CONFIG [ARGS]: runs a push from the primary namespace; output in $R/NAME.{out,err}
push() {
    local name=$1 cfg=$2 rc=0
    shift 2
    ip netns exec primary timeout 600 "$send" push --config "$cfg" --verbose "$@" \
        >"$R/$name.out" 2>"$R/$name.err" || rc=$?
    lab_log "push $name exit $rc"
    sed 's/^/    /' "$R/$name.out" "$R/$name.err"
    return "$rc"
}
# compare_target NAME: file hashes of src/data and its child against the target (mounted
# read-only for it); records asserts, never fails itself
compare_target() {
    local ds
    for ds in dst/backup/data dst/backup/data/child; do
        zfs mount -o ro "$ds" 2>/dev/null || true
    done
    lab_assert "$1-data" lab_compare "$smnt" "$(lab_mountpoint dst/backup/data 2>/dev/null || echo /nonexistent)"
    lab_assert "$1-child" lab_compare "$cmnt" "$(lab_mountpoint dst/backup/data/child 2>/dev/null || echo /nonexistent)"
    for ds in dst/backup/data/child dst/backup/data; do
        zfs unmount "$ds" 2>/dev/null || true
    done
    return 0
}
# (these never fail: a missing dataset gives empty output, so `set -e` does not end the scenario)
newest() { { zfs list -H -t snapshot -o name -s createtxg -d 1 "$1" 2>/dev/null || true; } | tail -n1; }
snaps() { { zfs list -H -t snapshot -o name -s createtxg -d 1 "$1" 2>/dev/null || true; } | sed 's/.*@//' | tr '\n' ' '; }
token() { zfs get -H -o value receive_resume_token "$1" 2>/dev/null || echo -; }
# wait_receiving N: until more than N receives have verified bytes flowing into zfs recv
# (per serve.log), plus 3 s of data
wait_receiving() {
    local i
    for i in $(seq 1 200); do
        if (($(started_count) > ${1:-0})); then
            sleep 3
            return 0
        fi
        sleep 0.3
    done
    return 1
}
started_count() {
    local n
    n=$(grep -c 'verified bytes flowing into zfs recv' "$R/serve.log" 2>/dev/null || true)
    echo "${n:-0}"
}

serve_start

# 1. initial full push (parent and child), then --dry-run, then an incremental
rc=0
push full "$work/send.toml" || rc=$?
lab_assert_eq full-exit 0 "$rc"
compare_target full
lab_assert_eq full-guid "$(lab_guid "$(newest src/data)")" "$(lab_guid "dst/backup/data@$(newest src/data | sed 's/.*@//')" 2>/dev/null || echo none)"
lab_assert base-held sh -c "zfs holds -H '$(newest src/data)' | grep -q fjord"

before_src=$(snaps src/data)
before_dst=$(snaps dst/backup/data)
rc=0
push dry "$work/send.toml" --dry-run || rc=$?
lab_assert_eq dry-run-exit 0 "$rc"
lab_assert dry-run-prints-plan grep -qiE 'up to date|incremental|full' "$R/dry.out"
lab_assert_eq dry-run-no-source-snapshot "$before_src" "$(snaps src/data)"
lab_assert_eq dry-run-no-target-change "$before_dst" "$(snaps dst/backup/data)"

lab_step mutate-1 lab_mutate "$smnt" 31 256K
rc=0
push incr "$work/send.toml" || rc=$?
lab_assert_eq incr-exit 0 "$rc"
lab_assert incr-was-incremental grep -qi incremental "$R/incr.out"
compare_target incr

# 2. a push through three link flaps
lab_step mutate-2 lab_mutate "$smnt" 32 10M
n=$(started_count)
# The flaps start once the stream is flowing (planning before it takes a while under TCG).
(
    wait_receiving "$n"
    lab_flap primary veth-p 5
    sleep 2 && lab_flap primary veth-p 4
    sleep 2 && lab_flap primary veth-p 4
) >"$R/flaps.log" 2>&1 &
flaps=$!
t0=$SECONDS
rc=0
push flaps "$work/slow.toml" || rc=$?
took=$((SECONDS - t0))
wait "$flaps" || true
lab_assert_eq flaps-exit 0 "$rc"
lab_assert flaps-mid-transfer test "$took" -ge 17
lab_assert flaps-reconnected grep -qE 'reconnect(s|ed)? *[:=]? *[1-9]|[1-9][0-9]* reconnects' "$R/flaps.out"
compare_target flaps

# 3. kill -9 of fjord-recv mid-transfer; the next push resumes from the token
lab_step mutate-3 lab_mutate "$smnt" 33 10M
n=$(started_count)
push killed "$work/slow.toml" &
killed=$!
if wait_receiving "$n"; then
    kill -9 "$serve_pid"
    lab_log "killed fjord-recv (-9) mid-transfer"
fi
# A restarted receiver does not know the session: the running push fails at once.
sleep 1
serve_start
rc=0
wait "$killed" || rc=$?
lab_assert killed-push-failed test "$rc" -ne 0
lab_assert killed-token-saved test "$(token dst/backup/data)" != -
rc=0
push resumed "$work/send.toml" || rc=$?
lab_assert_eq resumed-exit 0 "$rc"
lab_assert resumed-from-token grep -qi 'resum.*token' "$R/resumed.out"
lab_assert_eq resumed-no-token-left - "$(token dst/backup/data)"
compare_target resumed

# 4. SIGTERM of fjord-recv: a resumable state, a clean exit; then the token goes stale
lab_step mutate-4 lab_mutate "$smnt" 34 10M
n=$(started_count)
push termed "$work/slow.toml" &
termed=$!
sigterm_rc=none
if wait_receiving "$n"; then
    kill -TERM "$serve_pid"
    t1=$SECONDS
    sigterm_rc=0
    timeout 30 tail --pid="$serve_pid" -f /dev/null || sigterm_rc=timeout
    lab_log "fjord-recv exited $((SECONDS - t1)) s after SIGTERM"
fi
lab_assert_eq sigterm-exits 0 "$sigterm_rc"
serve_start
wait "$termed" || true
lab_assert sigterm-token-saved test "$(token dst/backup/data)" != -
# The snapshot that push was sending goes away on the source: the token is stale.
stale=$(newest src/data)
zfs destroy -r "$stale"
lab_log "destroyed $stale (the token's snapshot)"
rc=0
push stale "$work/send.toml" || rc=$?
lab_assert_eq stale-exit 0 "$rc"
lab_assert stale-token-aborted grep -qi stale "$R/stale.out"
lab_assert_eq stale-no-token-left - "$(token dst/backup/data)"
compare_target stale

# 5. a diverged target is refused, and --force too: by default the DR node's policy grants no
# client a rollback; the operator's own snapshot stays
lab_assert held-after-pushes all_held dst/backup/data
lab_assert inert-after-pushes inert dst/backup/data
lab_assert inert-child inert dst/backup/data/child
zfs snapshot dst/backup/data@made-on-dr
lab_step mutate-5 lab_mutate "$smnt" 35 128K
rc=0
push diverged "$work/send.toml" || rc=$?
lab_assert_eq diverged-exit 4 "$rc"
lab_assert diverged-names-snapshot grep -q made-on-dr "$R/diverged.err"
lab_assert diverged-target-kept sh -c "zfs list dst/backup/data@made-on-dr"
lab_assert diverged-status grep -q '"last_result": *"diverged"' "$work/state/data.status.json"
before_hist=$(history dst/backup/data)
rc=0
push forced-default "$work/send.toml" --force || rc=$?
lab_assert_eq forced-default-refused 4 "$rc"
lab_assert forced-default-names-setting grep -q allow_rollback "$R/forced-default.err"
lab_assert_eq forced-default-history-kept "$before_hist" "$(history dst/backup/data)"
# the operator removes the snapshot made on the DR node; the push goes on
zfs destroy dst/backup/data@made-on-dr
rc=0
push after-divergence "$work/send.toml" || rc=$?
lab_assert_eq after-divergence-exit 0 "$rc"
compare_target after-divergence

# 5b. a stolen key with the primary's pool: roll the source back past the last push,
# overwrite the files, push --force. Refused by default; granted rollback is still refused
# below min_age (7 days by default); only with min_age = 0s is the rollback honoured.
old_base=$(newest src/data)
zfs hold attack-keep "$old_base"
lab_step mutate-5b lab_mutate "$smnt" 351 128K
push extra "$work/send.toml" || true
zfs release attack-keep "$old_base"
# the attacker owns the pool: release the sender's holds on the newer snapshots, roll back
for s in $(zfs list -H -t snapshot -o name -s createtxg -d 1 src/data | sed -n "\|^$old_base\$|,\$p" | tail -n +2); do
    for t in $(zfs holds -H "$s" | cut -f2); do zfs release "$t" "$s"; done
done
zfs rollback -r "$old_base"
lab_step overwrite lab_fill "$smnt" 99 1M
before_hist=$(history dst/backup/data)
rc=0
push attack "$work/send.toml" --force || rc=$?
lab_assert attack-refused test "$rc" -ne 0
lab_assert_eq attack-history-kept "$before_hist" "$(history dst/backup/data)"
recv_config "" "allow_rollback = true"
serve_restart
rc=0
push attack-young "$work/send.toml" --force || rc=$?
lab_assert attack-young-refused test "$rc" -ne 0
lab_assert attack-young-says-min-age grep -q min_age "$R/attack-young.err"
lab_assert_eq attack-young-history-kept "$before_hist" "$(history dst/backup/data)"
recv_config 'min_age = "0s"' "allow_rollback = true"
serve_restart
rc=0
push forced "$work/send.toml" --force || rc=$?
lab_assert_eq forced-exit 0 "$rc"
lab_assert forced-rolled-back test "$before_hist" != "$(history dst/backup/data)"
lab_assert forced-held all_held dst/backup/data
compare_target forced

# 6. retention (hourly = 3, source and target): of four old hourly snapshots with our prefix
# the oldest is outside the 3 newest hours that have snapshots, on both sides; a foreign
# snapshot and the base stay
for h in 00 01 02 03; do
    zfs snapshot "src/data@fjord_2026-01-01T${h}0000Z"
done
zfs snapshot src/data@manual-keep
lab_step mutate-6 lab_mutate "$smnt" 36 128K
rc=0
push retention-ungranted "$work/send.toml" || rc=$?
lab_assert_eq retention-ungranted-exit 0 "$rc"
lab_assert retention-ungranted-target-kept zfs list dst/backup/data@fjord_2026-01-01T000000Z
lab_assert retention-ungranted-says-why grep -q allow_prune "$R/retention-ungranted.out" "$R/retention-ungranted.err"
recv_config 'min_age = "0s"' "allow_rollback = true
allow_prune = true"
serve_restart
lab_step mutate-6b lab_mutate "$smnt" 361 128K
rc=0
push retention "$work/send.toml" || rc=$?
lab_assert_eq retention-exit 0 "$rc"
lab_log "source: $(snaps src/data)"
lab_log "target: $(snaps dst/backup/data)"
lab_assert retention-old-pruned-source sh -c "! zfs list src/data@fjord_2026-01-01T000000Z 2>/dev/null"
lab_assert retention-old-pruned-target sh -c "! zfs list dst/backup/data@fjord_2026-01-01T000000Z 2>/dev/null"
lab_assert retention-foreign-kept zfs list src/data@manual-keep
base=$(newest src/data)
lab_assert retention-base-kept-source zfs list "$base"
lab_assert retention-base-kept-target zfs list "dst/backup/${base#src/}"
lab_assert retention-base-held sh -c "zfs holds -H '$base' | grep -q fjord"
compare_target retention

# 7. an unknown key, and a known key writing outside its prefix: refused, nothing written
before_dst=$(snaps dst/backup/data)
rc=0
push stranger "$work/stranger.toml" || rc=$?
lab_assert stranger-refused test "$rc" -ne 0
lab_assert_eq stranger-wrote-nothing "$before_dst" "$(snaps dst/backup/data)"
rc=0
push outside "$work/other.toml" || rc=$?
lab_assert outside-prefix-refused test "$rc" -ne 0
lab_assert outside-prefix-says-why grep -q 'prefix' "$R/outside.err"
lab_assert_eq outside-prefix-wrote-nothing "$before_dst" "$(snaps dst/backup/data)"

# 7b. a hostile stream (zfs send -p) with properties that would mount, share and run setuid
# programs on the DR node: received inert
zfs create -o setuid=on -o devices=on -o canmount=on -o mountpoint=/root -o quota=1G src/evil
zfs snapshot src/evil@s1
rc=0
ip netns exec primary sh -c "zfs send -p src/evil@s1 | timeout 300 '$send' send --stream - \
    --to $LAB_DR_WG_IP:7450 --key '$work/send.key' --server-key '$rpub' --dataset dst/backup/evil" \
    >"$R/evil.out" 2>"$R/evil.err" || rc=$?
lab_assert_eq evil-received 0 "$rc"
zfs get -H -o property,value,source canmount,setuid,devices,readonly,mountpoint,quota,mounted dst/backup/evil >"$R/evil.props" || true
lab_assert evil-inert inert dst/backup/evil
lab_assert evil-mountpoint-not-root sh -c "! zfs get -H -o value mountpoint dst/backup/evil | grep -qx '/root'"
lab_assert_eq evil-quota-excluded none "$(zfs get -H -o value quota dst/backup/evil)"
lab_assert evil-held all_held dst/backup/evil

# 8. two overlapping pushes of one job: the second exits "locked", the first completes
lab_step mutate-8 lab_mutate "$smnt" 38 6M
push overlap-a "$work/slow.toml" &
a=$!
# until the first push holds the job's lock (flock(2), as the job lock uses)
for _ in $(seq 1 150); do
    flock -n "$work/state/data.lock" true 2>/dev/null || break
    sleep 0.2
done
rc=0
push overlap-b "$work/send.toml" || rc=$?
lab_assert_eq overlap-second-locked 6 "$rc"
rc=0
wait "$a" || rc=$?
lab_assert_eq overlap-first-ok 0 "$rc"
compare_target overlap

# 8b. a copy of a file the DR node already has: its blocks are in the receiver's chunk
# cache, so the push sends references, not the 6 MiB of incompressible data
cp --reflink=never "$smnt/new-38/added.bin" "$smnt/copy-of-added.bin"
sync
rc=0
push dedup "$work/send.toml" || rc=$?
lab_assert_eq dedup-exit 0 "$rc"
dedup_bytes=$(grep -oE 'src/data@[^ ]* -> @[^ ]* -> dst/backup/data: [0-9]+ bytes' "$R/dedup.out" | grep -oE '[0-9]+ bytes' | grep -oE '[0-9]+' | head -n1 || true)
lab_log "a 6 MiB copy of a replicated file cost ${dedup_bytes:-?} bytes on the wire"
lab_assert dedup-inventory-used grep -q 'chunk inventory promised' "$R/serve.log"
lab_assert dedup-costs-references-only test "${dedup_bytes:-99999999}" -lt 1048576
compare_target dedup

# 9. status and metrics
rc=0
ip netns exec primary "$send" status --config "$work/send.toml" --json >"$R/status.json" 2>"$R/status.err" || rc=$?
lab_assert_eq status-exit 0 "$rc"
lab_assert status-ok grep -q '"last_result": *"ok"' "$R/status.json"
cp "$work/metrics/fjord.prom" "$R/fjord.prom" 2>/dev/null || true
lab_assert metrics-last-success grep -q '^fjord_job_last_success_timestamp_seconds{job="data"}' "$work/metrics/fjord.prom"
lab_assert metrics-lag grep -q '^fjord_job_replication_lag_seconds{job="data"}' "$work/metrics/fjord.prom"

# 10. the DR node's own retention: fjord-recv prune
recv_config 'min_age = "0s"
[retention]
hourly = 2' ""
rc=0
"$recv" prune --config "$work/recv.toml" --dry-run --json >"$R/prune-dry.json" 2>"$R/prune-dry.err" || rc=$?
lab_assert_eq prune-dry-exit 0 "$rc"
lab_assert prune-dry-lists grep -q '"dataset":"dst/backup/data"' "$R/prune-dry.json"
before_hist=$(history dst/backup/data)
lab_assert_eq prune-dry-destroyed-nothing "$before_hist" "$(history dst/backup/data)"
rc=0
"$recv" prune --config "$work/recv.toml" >"$R/prune.out" 2>"$R/prune.err" || rc=$?
lab_assert_eq prune-exit 0 "$rc"
lab_assert prune-kept-newest zfs list "$(newest dst/backup/data)"
lab_assert prune-kept-two test "$(zfs list -H -t snapshot -o name -d 1 dst/backup/data | grep -c '@fjord_')" -le 3

kill "$serve_pid" 2>/dev/null || true
wait "$serve_pid" 2>/dev/null || true
lab_summary
