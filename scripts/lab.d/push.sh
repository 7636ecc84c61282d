#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Lab scenario (issue 6): the product end to end. `fjord-recv serve --config` on the DR side
# receives into real `zfs recv`; `fjord-send push --config --json` on the primary plans and
# sends over WireGuard. The scenario reads what each push did from its JSON Lines (one object
# per dataset, one per job), never from prose or logs, and compares file hashes on both sides.
#   LAB_FJORD_SEND=/path/fjord-send LAB_FJORD_RECV=/path/fjord-recv \
#       scripts/lab run scripts/lab.d/push.sh DIR
#
# One VM boot, independent cases. Each case starts from a known state that it sets up itself
# (start_from): "fresh" (src/data and its child filled, nothing replicated, empty state_dir)
# or "golden" (fresh plus one full push: both pools are rewound to a `zpool checkpoint` taken
# right after it, state_dir and metrics restored), and it names the receiver config it needs
# (serve_use restarts fjord-recv only when the config differs). Every case runs even when an
# earlier one failed; each prints "CASE name PASS|FAIL" and records ASSERT case-NAME.
#
# Cases:
#   full             initial full push of a dataset with a child; guid, content, base held
#   dry-run          --dry-run plans the pending snapshot, takes none, sends nothing
#   incremental      an incremental from the common snapshot
#   flaps            a push through 3 link flaps (reconnects, same content)
#   kill9-resume     kill -9 of fjord-recv mid-transfer; the next push resumes from the token
#   sigterm-stale    SIGTERM of fjord-recv leaves a resumable receive and exits; the token's
#                    snapshot is destroyed on the source, the push discards the stale token
#   diverged         a diverged target is refused, --force too (no rollback granted); the
#                    push goes on once the operator removes the DR snapshot
#   attack           a stolen key rolls the source back and pushes --force: refused by
#                    default, refused below min_age, honoured only with min_age = 0s
#   retention        hourly = 3 on both sides: target pruning refused until granted, then the
#                    old snapshot goes on both sides, the base and a foreign one stay
#   access           an unknown key and a key writing outside its prefix: refused, nothing written
#   evil             zfs send -p with risky properties is received inert
#   overlap          two overlapping pushes of one job: the second exits 6 ("locked")
#   locked           the job lock held from the shell (flock): the push exits 6
#   state-dir        state_dir missing: the push exits 7 naming state_dir (not 6)
#   dedup            a copy of a replicated file costs references only (chunk cache)
#   status-metrics   fjord-send status --json and the Prometheus metrics after a push
#   recv-prune       the DR node's own retention: fjord-recv prune (--dry-run, then for real)
#   recv-as-fjord-user  the receiver as an unprivileged user (no capability, no new
#                    privileges) with exactly the README's `zfs allow` set on dst/backup:
#                    a full and an incremental push, held and inert; nothing more allowed
#   reload           SIGHUP: a client added by a reload pushes, a removed one is refused, a
#                    broken file is rejected and the receiver keeps serving; serve's metrics
#   promote-pg       failover with a real PostgreSQL (the host's): rows committed before the
#                    pushed snapshot are there after promote on the DR node; RTO logged
#                    (not in CASES: run it with LAB_CASES="full promote-pg")
#   promote          failover: fjord-recv promote --dry-run changes nothing; promote makes the
#                    copy writable and mounted at its mountpoint, fenced (fjord:promoted); a
#                    push from the old primary is refused with exit 8 and the promoted message
#   gameday-pg       the game day with the host's PostgreSQL under a write load: pushes while
#                    it writes, the primary killed, promote (RTO, RPO logged), the fenced old
#                    push, demote, the push back, `fjord-send switchover` back with 0 rows lost
#   failback         fjord-recv demote on the old primary keeps its diverged snapshot and
#                    writes aside and stops its pushes; the promoted copy is pushed back
#                    (roles and keys swapped); promote there, demote on the DR node, and the
#                    old primary's push carries on incrementally
#   tripwire         normal pushes build the ransomware tripwire's history; files overwritten
#                    with random data trip it (push --json, status, metrics, pruning paused);
#                    a normal push after does not trip; tripwire ack resumes pruning
#   drill-pg         restore drill with a real PostgreSQL (the host's): the built-in check starts
#                    a server on the drill clone of the pushed copy and counts the rows committed
#                    before the snapshot (not in CASES: run it with LAB_CASES="full drill-pg")
#   drill            restore drill: fjord-recv drill clones the newest snapshot into the scratch
#                    dataset, a check compares the file hashes with the source's and passes; a
#                    leftover of an interrupted drill goes first; a failing check is recorded
#                    failed and its clone destroyed all the same; status shows the last drill
#   tree             whole trees: a child three levels deep arrives full, then incremental; a
#                    child destroyed on the primary is reported and kept, then destroyed under
#                    a receiver granting allow_destroy_removed; a target whose parents do
#                    not exist gets them created inert (canmount=off, readonly)
#   fidelity         the tree as it left (fidelity.sh): properties of a three-level tree with
#                    `properties = true` over two pushes (changed, removed, added, inherited),
#                    and the encryption roots, keyformats and keylocations of a raw job
#   zvol             a volume: received readonly with volmode=none (no device node), then
#                    incrementally; a promotion gives the device back with the primary's bytes
#   fanout           one job, two DR nodes (dr2: a third namespace): both get the snapshot,
#                    each base held with its own tag; dr2 offline for 3 pushes while source
#                    retention runs keeps its base held; back, it catches up incrementally
#   snaponly         a job with no target: snapshots and source retention, status --check ok
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$(realpath "$0")")/lib.sh"
# shellcheck source=fidelity.sh
source "$(dirname "$(realpath "$0")")/fidelity.sh"

send=${LAB_FJORD_SEND:?set LAB_FJORD_SEND to the fjord-send binary}
recv=${LAB_FJORD_RECV:?set LAB_FJORD_RECV to the fjord-recv binary}
work=/tmp/lab/push
R=$LAB_RESULTS
smnt=/tmp/mnt-src/src/data
cmnt=/tmp/mnt-src/src/data/child
MiB=1048576
export send recv work R smnt cmnt MiB
mkdir -p "$work/state" "$work/metrics"

command -v jq >/dev/null || { echo "push.sh: jq is required in the lab guest" >&2; exit 1; }
"$send" push --help 2>/dev/null | grep -q -- '--json' ||
    { echo "push.sh: $send has no 'push --json'" >&2; exit 1; }

# ---------------------------------------------------------------- configs

# recv_config NAME TOP_LINES PRIMARY_CLIENT_LINES: $work/recv-NAME.toml, the DR node's config;
# the defaults grant the primary neither pruning nor rollback
recv_config() {
    cat >"$work/recv-$1.toml" <<EOF
listen = "$LAB_DR_WG_IP:7450"
key = "$work/recv.key"
max_concurrent = 4
grace = "60s"
idle_timeout = "3s"
$2

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
$3

[[client]]
name = "other-site"
key = "$opub"
prefixes = ["dst/other"]
EOF
}

# send_config FILE KEY [EXTRA JOB LINES] [STATE_DIR]: a config with the one job "data"
send_config() {
    cat >"$1" <<EOF
key = "$2"
state_dir = "${4:-$work/state}"
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

# ---------------------------------------------------------------- the receiver

# (empty when none was started: never `kill 0`, which is the whole process group)
serve_pid() { cat "$work/serve.pid" 2>/dev/null || true; }
serve_alive() {
    local pid
    pid=$(serve_pid)
    [[ $pid =~ ^[1-9][0-9]*$ ]] && kill -0 "$pid" 2>/dev/null
}
# serve_start [CONFIG]: start fjord-recv serve with $work/recv-CONFIG.toml (default: the last
# one) and wait until its UDP socket is bound
serve_start() {
    local cfg=${1:-$(cat "$work/serve.config" 2>/dev/null || echo default)}
    serve_stop
    echo "$cfg" >"$work/serve.config"
    echo "=== serve_start $cfg $(date +%T)" >>"$R/serve.log"
    local as="" bin=$recv
    # as-fjord*: as fjord-recv.service runs it (User=fjord, no capability, NoNewPrivileges)
    [[ $cfg == as-fjord* ]] && as=$as_fjord bin=$work/fjord/fjord-recv
    # shellcheck disable=SC2086 # $as is a command prefix (words)
    FJORD_LOG=info ip netns exec dr $as "$bin" serve --config "$work/recv-$cfg.toml" >>"$R/serve.log" 2>&1 </dev/null &
    echo $! >"$work/serve.pid"
    lab_wait_udp dr 7450 90
}
# serve_wait_exit SECONDS: until the receiver process is gone
serve_wait_exit() {
    serve_alive || return 0
    timeout "$1" tail --pid="$(serve_pid)" -f /dev/null
}
# serve_kill [SIGNAL]: signal the receiver (TERM by default), if it runs
serve_kill() {
    serve_alive || return 0
    kill -"${1:-TERM}" "$(serve_pid)" 2>/dev/null || true
}
serve_stop() {
    serve_alive || return 0
    serve_kill TERM
    serve_wait_exit 30 || { serve_kill KILL; serve_wait_exit 10 || true; }
}
# serve_use CONFIG: the receiver runs with recv-CONFIG.toml (restarted only when it differs)
serve_use() {
    if serve_alive && [[ $(cat "$work/serve.config" 2>/dev/null) == "$1" ]]; then
        return 0
    fi
    serve_stop
    serve_start "$1"
}
# serve_log_mark / serve_log_since MARK: the part of serve.log written after the mark
serve_log_mark() { wc -c <"$R/serve.log"; }
serve_log_since() { tail -c +"$(($1 + 1))" "$R/serve.log"; }

# ---------------------------------------------------------------- zfs state

# (these never fail: a missing dataset gives empty output)
history() { { zfs list -H -t snapshot -o guid -s createtxg -d 1 "$1" 2>/dev/null || true; } | tr '\n' ' '; }
newest() { { zfs list -H -t snapshot -o name -s createtxg -d 1 "$1" 2>/dev/null || true; } | tail -n1; }
snaps() { { zfs list -H -t snapshot -o name -s createtxg -d 1 "$1" 2>/dev/null || true; } | sed 's/.*@//' | tr '\n' ' '; }
token() { zfs get -H -o value receive_resume_token "$1" 2>/dev/null || echo -; }
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
# destroy_tree DATASET: release every hold below it, then destroy it recursively
destroy_tree() {
    zfs list -H -o name "$1" >/dev/null 2>&1 || return 0
    zfs recv -A "$1" 2>/dev/null || true
    local s t
    for s in $(zfs list -H -t snapshot -o name -r "$1"); do
        for t in $(zfs holds -H "$s" | cut -f2); do zfs release "$t" "$s"; done
    done
    zfs destroy -r "$1"
}
# fjord_snapshot_now DATASET: a recursive snapshot named like the ones push takes
fjord_snapshot_now() { zfs snapshot -r "$1@fjord_$(date -u +%Y-%m-%dT%H%M%SZ)"; }

# recv_pid DATASET: the `zfs recv` into DATASET (its last argument), if one runs
recv_pid() { pgrep -f "zfs (recv|receive) .*$1\$" | head -n1 || true; }
# recv_read DATASET: bytes that zfs recv has read so far (0 when none runs)
recv_read() {
    local pid
    pid=$(recv_pid "$1")
    [[ -n $pid ]] || { echo 0; return; }
    awk '/^rchar:/ { print $2; f = 1 } END { if (!f) print 0 }' "/proc/$pid/io" 2>/dev/null || echo 0
}
# wait_receiving DATASET BYTES [SECONDS]: until a zfs recv into DATASET has read BYTES
wait_receiving() {
    local ds=$1 want=$2
    lab_wait "${3:-180}" "zfs recv into $ds read $want bytes" _received_at_least "$ds" "$want"
}
_received_at_least() { (($(recv_read "$1") >= $2)); }
# wait_no_recv DATASET [SECONDS]: until no zfs recv into DATASET runs
wait_no_recv() { lab_wait "${2:-60}" "no zfs recv into $1" _no_recv "$1"; }
_no_recv() { [[ -z $(recv_pid "$1") ]]; }
lock_held() { ! flock -n "$work/state/data.lock" true 2>/dev/null; }

# ---------------------------------------------------------------- known states

# fresh_datasets: src/data and src/data/child filled, no dst/backup/data, empty state_dir
fresh_datasets() {
    destroy_tree dst/backup/data
    destroy_tree src/data
    zfs create src/data
    zfs create src/data/child
    lab_fill "$smnt" 21 "${LAB_FILL_SIZE:-3M}" >/dev/null
    lab_fill "$cmnt" 22 1M >/dev/null
    rm -rf "$work/state" "$work/metrics"
    mkdir -p "$work/state" "$work/metrics"
}

# golden_take: when src/data and its child are replicated (same newest snapshot, no token),
# checkpoint both pools and keep state_dir and metrics as the golden state
golden_take() {
    local ds
    rm -f "$work/golden.ok"
    for ds in data data/child; do
        local s
        s=$(newest "src/$ds")
        [[ -n $s ]] || { echo "golden: src/$ds has no snapshot" >&2; return 1; }
        [[ $(lab_guid "$s") == "$(lab_guid "dst/backup/${s#src/}" 2>/dev/null)" ]] ||
            { echo "golden: dst/backup/${s#src/} is not replicated" >&2; return 1; }
        [[ $(token "dst/backup/$ds") == - ]] || { echo "golden: dst/backup/$ds has a token" >&2; return 1; }
    done
    local p
    for p in src dst; do
        zpool checkpoint -d "$p" 2>/dev/null || true
        zpool checkpoint "$p"
    done
    rm -rf "$work/golden-state" "$work/golden-metrics"
    cp -a "$work/state" "$work/golden-state"
    cp -a "$work/metrics" "$work/golden-metrics"
    touch "$work/golden.ok"
    lab_log "golden state taken at $(newest src/data)"
}

# golden_build: fresh datasets, one full push, golden_take
golden_build() {
    fresh_datasets
    serve_use default
    push golden-build "$work/send.toml"
    golden_take
}

# pools_rewind: both pools back to the golden checkpoint (no zfs recv may run)
pools_rewind() {
    local p
    lab_wait 60 "no zfs recv runs" _no_recv ''
    for p in src dst; do
        zpool export "$p" || zpool export -f "$p"
        zpool import -d "/tmp/lab-vdev-$p" -R "/tmp/mnt-$p" --rewind-to-checkpoint "$p"
        zpool checkpoint "$p"
    done
    # The rewind itself leaves 1024 bytes "written" on each received file system (seen on
    # OpenZFS 2.3.2), which push rightly refuses as a modified target: back to the snapshot.
    local ds s
    for ds in $(zfs list -H -t filesystem -o name -r dst/backup/data 2>/dev/null); do
        s=$(newest "$ds")
        [[ -z $s ]] || zfs rollback "$s"
    done
}

# start_from fresh|golden: the known state a case starts from
start_from() {
    case $1 in
    fresh)
        fresh_datasets
        ;;
    golden)
        if [[ -f $work/golden.ok ]]; then
            if ! pools_rewind; then
                lab_log "rewind failed: building the golden state again"
                rm -f "$work/golden.ok"
            fi
        fi
        [[ -f $work/golden.ok ]] || golden_build
        rm -rf "$work/state" "$work/metrics"
        cp -a "$work/golden-state" "$work/state"
        cp -a "$work/golden-metrics" "$work/metrics"
        ;;
    *) return 2 ;;
    esac
    # the network too: no link left down or netem left behind by an earlier case
    ip -n primary link set veth-p up
    ip -n dr link set veth-d up
    lab_netem_clear >/dev/null
    lab_log "start_from $1: source $(snaps src/data)| target $(snaps dst/backup/data)"
}

# ---------------------------------------------------------------- pushes and their JSON

# push NAME CONFIG [ARGS]: one push from the primary namespace. $R/NAME.json holds its JSON
# Lines (stdout), $R/NAME.err its stderr, $R/NAME.rc its exit status; returns that status.
push() {
    local name=$1 cfg=$2 rc=0
    shift 2
    ip netns exec primary timeout 600 "$send" push --config "$cfg" --json "$@" \
        >"$R/$name.json" 2>"$R/$name.err" || rc=$?
    if jq -e -s 'all(.[]; type == "object" and (.type == "dataset" or .type == "job"))' \
        "$R/$name.json" >/dev/null 2>&1; then
        lab_pass "$name-stdout-json"
    else
        lab_fail "$name-stdout-json" "stdout is not only dataset/job JSON objects"
    fi
    echo "$rc" >"$R/$name.rc"
    lab_log "push $name exit $rc"
    sed 's/^/    /' "$R/$name.json" "$R/$name.err"
    return "$rc"
}

# jjob NAME FIELD: the job object's FIELD (arrays joined by spaces, null as "null")
jjob() {
    jq -r --arg f "$2" 'select(.type == "job") | .[$f]
        | if type == "array" then map(tostring) | join(" ") else tostring end' \
        "$R/$1.json" 2>/dev/null | head -n1 || true
}
# jds NAME SOURCE FIELD: the FIELD of the dataset object of SOURCE
jds() {
    jq -r --arg s "$2" --arg f "$3" 'select(.type == "dataset" and .source == $s) | .[$f]
        | if type == "array" then map(tostring) | join(" ") else tostring end' \
        "$R/$1.json" 2>/dev/null | head -n1 || true
}
# jactions NAME SOURCE: the actions of SOURCE's steps, comma-separated
jactions() {
    jq -r --arg s "$2" 'select(.type == "dataset" and .source == $s)
        | [.steps[]?.action] | join(",")' "$R/$1.json" 2>/dev/null | head -n1 || true
}
# jsteps NAME SOURCE JQ_FILTER: true when some step of SOURCE matches the filter
jstep() {
    jq -e -s --arg s "$2" "[.[] | select(.type == \"dataset\" and .source == \$s) | .steps[]? | select($3)] | length > 0" \
        "$R/$1.json" >/dev/null 2>&1
}
# jds_has NAME SOURCE FIELD VALUE: the array FIELD of SOURCE's dataset object holds VALUE
# (jq -e over all lines needs -s: without it the exit status is the last line's)
jds_has() {
    jq -e -s --arg s "$2" --arg f "$3" --arg v "$4" \
        'any(.[] | select(.type == "dataset" and .source == $s) | .[$f][]?; . == $v)' \
        "$R/$1.json" >/dev/null 2>&1
}
# jmessages NAME: every error and warning of the push's JSON, one a line
jmessages() {
    jq -r '(.error // empty), (.warnings[]? // empty)' "$R/$1.json" 2>/dev/null || true
}
# jsays NAME WORD: some error or warning of the push names WORD
jsays() { jmessages "$1" | grep -q -- "$2"; }

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

# ---------------------------------------------------------------- cases

case_full() {
    start_from fresh
    serve_use default
    local rc=0
    push full "$work/send.toml" || rc=$?
    lab_assert_eq full-exit 0 "$rc"
    lab_assert_eq full-json-job ok "$(jjob full result)"
    lab_assert_eq full-json-datasets "ok full ok full" \
        "$(jds full src/data result) $(jactions full src/data) $(jds full src/data/child result) $(jactions full src/data/child)"
    lab_assert_eq full-json-replicated "$(jjob full snapshot)" "$(jds full src/data replicated)"
    compare_target full
    local s
    s=$(newest src/data)
    lab_assert_eq full-guid "$(lab_guid "$s")" "$(lab_guid "dst/backup/data@${s#*@}" 2>/dev/null || echo none)"
    lab_assert base-held sh -c "zfs holds -H '$s' | grep -q fjord"
}

case_dry_run() {
    start_from golden
    serve_use default
    # a snapshot the push has not sent yet: the plan is an incremental
    fjord_snapshot_now src/data
    local before_src before_dst rc=0
    before_src=$(snaps src/data)
    before_dst=$(snaps dst/backup/data)
    push dry "$work/send.toml" --dry-run || rc=$?
    lab_assert_eq dry-run-exit 0 "$rc"
    lab_assert_eq dry-run-prints-plan "dry_run planned incremental" \
        "$(jjob dry result) $(jds dry src/data result) $(jactions dry src/data)"
    lab_assert dry-run-step-not-done jstep dry src/data '.action == "incremental" and .done == false'
    lab_assert_eq dry-run-no-source-snapshot "$before_src" "$(snaps src/data)"
    lab_assert_eq dry-run-no-target-change "$before_dst" "$(snaps dst/backup/data)"
}

case_incremental() {
    start_from golden
    serve_use default
    local base rc=0
    base=$(newest src/data)
    lab_mutate "$smnt" 31 256K >/dev/null
    push incr "$work/send.toml" || rc=$?
    lab_assert_eq incr-exit 0 "$rc"
    lab_assert_eq incr-was-incremental "ok incremental" "$(jjob incr result) $(jactions incr src/data)"
    lab_assert incr-from-base jstep incr src/data ".action == \"incremental\" and .from == \"${base#*@}\" and .done == true"
    lab_assert_eq incr-replicated "$(jjob incr snapshot)" "$(jds incr src/data replicated)"
    compare_target incr
}

case_flaps() {
    start_from golden
    serve_use default
    lab_mutate "$smnt" 32 10M >/dev/null
    # the flaps start once zfs recv has read 2 MiB of the stream (planning takes a while)
    (
        wait_receiving dst/backup/data $((2 * MiB)) 180 || exit 1
        lab_flap primary veth-p 5
        sleep 2 && lab_flap primary veth-p 4
        sleep 2 && lab_flap primary veth-p 4
    ) >"$R/flaps.log" 2>&1 &
    local flaps=$! t0=$SECONDS rc=0 took frc=0
    push flaps "$work/slow.toml" || rc=$?
    took=$((SECONDS - t0))
    wait "$flaps" || frc=$?
    lab_assert_eq flaps-exit 0 "$rc"
    lab_assert_eq flaps-flapped 0 "$frc"
    lab_assert flaps-mid-transfer test "$took" -ge 17
    lab_assert flaps-reconnected test "$(jds flaps src/data reconnects)" -ge 1
    lab_assert_eq flaps-json-ok ok "$(jjob flaps result)"
    compare_target flaps
}

case_kill9_resume() {
    start_from golden
    serve_use default
    lab_mutate "$smnt" 33 6M >/dev/null
    push killed "$work/slow.toml" &
    local killed=$! rc=0
    wait_receiving dst/backup/data $((2 * MiB)) 180 ||
        lab_fail killed-mid-transfer "no zfs recv read 2 MiB before the kill"
    serve_kill KILL
    lab_log "killed fjord-recv (-9) mid-transfer"
    serve_wait_exit 30
    # zfs recv sees the end of its input and leaves the partial receive
    wait_no_recv dst/backup/data 60
    # a restarted receiver does not know the session: the running push fails
    serve_start default
    wait "$killed" || rc=$?
    lab_assert killed-push-failed test "$rc" -ne 0
    lab_assert_eq killed-json-failed "failed failed" "$(jjob killed result) $(jds killed src/data result)"
    lab_assert killed-token-saved test "$(token dst/backup/data)" != -
    rc=0
    push resumed "$work/send.toml" || rc=$?
    lab_assert_eq resumed-exit 0 "$rc"
    lab_assert resumed-from-token jstep resumed src/data '.action == "resume" and .done == true'
    lab_assert_eq resumed-resume-first resume "$(jactions resumed src/data | cut -d, -f1)"
    lab_assert_eq resumed-no-token-left - "$(token dst/backup/data)"
    compare_target resumed
}

case_sigterm_stale() {
    start_from golden
    serve_use default
    lab_mutate "$smnt" 34 6M >/dev/null
    push termed "$work/slow.toml" &
    local termed=$! sigterm_rc=none t1
    if wait_receiving dst/backup/data $((2 * MiB)) 180; then
        serve_kill TERM
        t1=$SECONDS
        sigterm_rc=0
        serve_wait_exit 30 || sigterm_rc=timeout
        lab_log "fjord-recv exited $((SECONDS - t1)) s after SIGTERM"
    fi
    lab_assert_eq sigterm-exits 0 "$sigterm_rc"
    serve_start default
    wait "$termed" || true
    wait_no_recv dst/backup/data 60
    lab_assert sigterm-token-saved test "$(token dst/backup/data)" != -
    # the snapshot that push was sending goes away on the source: the token is stale
    local stale
    stale=$(jjob termed snapshot)
    if [[ -z $stale || $stale == null ]]; then stale=$(newest src/data); else stale=src/data@$stale; fi
    zfs destroy -r "$stale"
    lab_log "destroyed $stale (the token's snapshot)"
    local rc=0
    push stale "$work/send.toml" || rc=$?
    lab_assert_eq stale-exit 0 "$rc"
    lab_assert_eq stale-token-aborted discard_stale_token "$(jactions stale src/data | cut -d, -f1)"
    lab_assert stale-then-incremental jstep stale src/data '.action == "incremental" and .done == true'
    lab_assert_eq stale-no-token-left - "$(token dst/backup/data)"
    compare_target stale
}

case_diverged() {
    start_from golden
    serve_use default
    lab_assert held-after-pushes all_held dst/backup/data
    lab_assert inert-after-pushes inert dst/backup/data
    lab_assert inert-child inert dst/backup/data/child
    zfs snapshot dst/backup/data@made-on-dr
    lab_mutate "$smnt" 35 128K >/dev/null
    local rc=0 before_hist
    push diverged "$work/send.toml" || rc=$?
    lab_assert_eq diverged-exit 4 "$rc"
    lab_assert_eq diverged-json "diverged diverged skipped" \
        "$(jjob diverged result) $(jds diverged src/data result) $(jds diverged src/data/child result)"
    lab_assert diverged-names-snapshot sh -c "jq -r 'select(.source == \"src/data\") | .error' '$R/diverged.json' | grep -q made-on-dr"
    lab_assert diverged-stderr-names-snapshot grep -q made-on-dr "$R/diverged.err"
    lab_assert diverged-target-kept zfs list dst/backup/data@made-on-dr
    lab_assert diverged-status grep -q '"last_result": *"diverged"' "$work/state/data.status.json"
    before_hist=$(history dst/backup/data)
    rc=0
    push forced-default "$work/send.toml" --force || rc=$?
    lab_assert_eq forced-default-refused 4 "$rc"
    lab_assert forced-default-names-setting jsays forced-default allow_rollback
    lab_assert_eq forced-default-history-kept "$before_hist" "$(history dst/backup/data)"
    # the operator removes the snapshot made on the DR node; the push goes on
    zfs destroy dst/backup/data@made-on-dr
    rc=0
    push after-divergence "$work/send.toml" || rc=$?
    lab_assert_eq after-divergence-exit 0 "$rc"
    lab_assert_eq after-divergence-json ok "$(jjob after-divergence result)"
    compare_target after-divergence
}

# a stolen key with the primary's pool: roll the source back past the last push, overwrite
# the files, push --force. Refused by default; granted rollback is still refused below
# min_age (7 days by default); only with min_age = 0s is the rollback honoured.
case_attack() {
    start_from golden
    serve_use default
    local old_base s t rc=0 before_hist
    old_base=$(newest src/data)
    zfs hold attack-keep "$old_base"
    lab_mutate "$smnt" 351 128K >/dev/null
    push extra "$work/send.toml" || rc=$?
    lab_assert_eq attack-extra-push 0 "$rc"
    zfs release attack-keep "$old_base"
    # the attacker owns the pool: release the sender's holds on the newer snapshots, roll back
    for s in $(zfs list -H -t snapshot -o name -s createtxg -d 1 src/data | sed -n "\|^$old_base\$|,\$p" | tail -n +2); do
        for t in $(zfs holds -H "$s" | cut -f2); do zfs release "$t" "$s"; done
    done
    zfs rollback -r "$old_base"
    lab_fill "$smnt" 99 1M >/dev/null
    before_hist=$(history dst/backup/data)
    rc=0
    push attack "$work/send.toml" --force || rc=$?
    lab_assert attack-refused test "$rc" -ne 0
    lab_assert_eq attack-history-kept "$before_hist" "$(history dst/backup/data)"
    serve_use rollback
    rc=0
    push attack-young "$work/send.toml" --force || rc=$?
    lab_assert attack-young-refused test "$rc" -ne 0
    lab_assert attack-young-says-min-age jsays attack-young min_age
    lab_assert_eq attack-young-history-kept "$before_hist" "$(history dst/backup/data)"
    serve_use rollback-now
    rc=0
    push forced "$work/send.toml" --force || rc=$?
    lab_assert_eq forced-exit 0 "$rc"
    lab_assert forced-json-rollback jstep forced src/data '.rollback == true and .done == true'
    lab_assert forced-rolled-back test "$before_hist" != "$(history dst/backup/data)"
    lab_assert forced-held all_held dst/backup/data
    compare_target forced
}

# retention (hourly = 3, source and target): of four old hourly snapshots with our prefix the
# oldest is outside the 3 newest hours that have snapshots, on both sides; a foreign snapshot
# and the base stay
case_retention() {
    start_from golden
    serve_use default
    local h rc=0 base
    for h in 00 01 02 03; do
        zfs snapshot "src/data@fjord_2026-01-01T${h}0000Z"
    done
    zfs snapshot src/data@manual-keep
    lab_mutate "$smnt" 36 128K >/dev/null
    push retention-ungranted "$work/send.toml" || rc=$?
    lab_assert_eq retention-ungranted-exit 0 "$rc"
    lab_assert retention-ungranted-target-kept zfs list dst/backup/data@fjord_2026-01-01T000000Z
    lab_assert retention-ungranted-says-why jsays retention-ungranted allow_prune
    lab_assert_eq retention-ungranted-json-nothing-pruned "" "$(jds retention-ungranted src/data pruned_target)"
    serve_use prune
    lab_mutate "$smnt" 361 128K >/dev/null
    rc=0
    push retention "$work/send.toml" || rc=$?
    lab_assert_eq retention-exit 0 "$rc"
    lab_log "source: $(snaps src/data)"
    lab_log "target: $(snaps dst/backup/data)"
    lab_assert retention-old-pruned-source sh -c "! zfs list src/data@fjord_2026-01-01T000000Z 2>/dev/null"
    lab_assert retention-old-pruned-target sh -c "! zfs list dst/backup/data@fjord_2026-01-01T000000Z 2>/dev/null"
    lab_assert retention-json-pruned-target jds_has retention src/data pruned_target fjord_2026-01-01T000000Z
    lab_assert retention-foreign-kept zfs list src/data@manual-keep
    base=$(newest src/data)
    lab_assert retention-base-kept-source zfs list "$base"
    lab_assert retention-base-kept-target zfs list "dst/backup/${base#src/}"
    lab_assert retention-base-held sh -c "zfs holds -H '$base' | grep -q fjord"
    compare_target retention
}

# an unknown key, and a known key writing outside its prefix: refused, nothing written
case_access() {
    start_from golden
    serve_use default
    local before_dst rc=0
    before_dst=$(snaps dst/backup/data)
    push stranger "$work/stranger.toml" || rc=$?
    lab_assert stranger-refused test "$rc" -ne 0
    lab_assert_eq stranger-json-failed failed "$(jjob stranger result)"
    lab_assert_eq stranger-wrote-nothing "$before_dst" "$(snaps dst/backup/data)"
    rc=0
    push outside "$work/other.toml" || rc=$?
    lab_assert outside-prefix-refused test "$rc" -ne 0
    lab_assert outside-prefix-says-why jsays outside prefix
    lab_assert_eq outside-prefix-wrote-nothing "$before_dst" "$(snaps dst/backup/data)"
}

# a hostile stream (zfs send -p) with properties that would mount, share and run setuid
# programs on the DR node: received inert
case_evil() {
    start_from golden
    serve_use default
    destroy_tree dst/backup/evil
    destroy_tree src/evil
    zfs create -o setuid=on -o devices=on -o canmount=on -o mountpoint=/root -o quota=1G src/evil
    zfs snapshot src/evil@s1
    local rc=0
    ip netns exec primary sh -c "zfs send -p src/evil@s1 | timeout 300 '$send' send --stream - \
        --to $LAB_DR_WG_IP:7450 --key '$work/send.key' --server-key '$rpub' --dataset dst/backup/evil" \
        >"$R/evil.out" 2>"$R/evil.err" || rc=$?
    lab_assert_eq evil-received 0 "$rc"
    zfs get -H -o property,value,source canmount,setuid,devices,readonly,mountpoint,quota,mounted dst/backup/evil >"$R/evil.props" || true
    lab_assert evil-inert inert dst/backup/evil
    lab_assert evil-mountpoint-not-root sh -c "! zfs get -H -o value mountpoint dst/backup/evil | grep -qx '/root'"
    lab_assert_eq evil-quota-excluded none "$(zfs get -H -o value quota dst/backup/evil)"
    lab_assert evil-held all_held dst/backup/evil
}

# two overlapping pushes of one job: the second exits 6 ("locked"), the first completes
case_overlap() {
    start_from golden
    serve_use default
    lab_mutate "$smnt" 38 1M >/dev/null
    push overlap-a "$work/slow.toml" &
    local a=$! rc=0
    # until the first push holds the job's lock (flock(2), as the job lock uses)
    lab_wait 60 "the first push holds the job lock" lock_held || true
    push overlap-b "$work/send.toml" || rc=$?
    lab_assert_eq overlap-second-locked 6 "$rc"
    lab_assert_eq overlap-second-json-locked locked "$(jjob overlap-b result)"
    rc=0
    wait "$a" || rc=$?
    lab_assert_eq overlap-first-ok 0 "$rc"
    compare_target overlap
}

# the job lock held from the shell: the push exits 6 and takes no snapshot
case_locked() {
    start_from golden
    serve_use default
    local before rc=0
    before=$(snaps src/data)
    exec 9>"$work/state/data.lock"
    flock -n 9
    push locked "$work/send.toml" || rc=$?
    exec 9>&-
    lab_assert_eq locked-exit 6 "$rc"
    lab_assert_eq locked-json locked "$(jjob locked result)"
    lab_assert locked-says-lock grep -qi lock "$R/locked.err"
    lab_assert_eq locked-no-snapshot "$before" "$(snaps src/data)"
}

# state_dir missing: the push cannot write its local state and exits 7 (not 6, "locked")
case_state_dir() {
    start_from golden
    serve_use default
    send_config "$work/nostate.toml" "$work/send.key" "" "$work/no-such-state-dir"
    rm -rf "$work/no-such-state-dir"
    local rc=0
    push nostate "$work/nostate.toml" || rc=$?
    lab_assert_eq state-dir-exit 7 "$rc"
    lab_assert state-dir-named sh -c "grep -q state_dir '$R/nostate.err' || jq -r '.error // empty' '$R/nostate.json' | grep -q state_dir"
}

# a copy of a file the DR node already has: its blocks are in the receiver's chunk cache, so
# the push sends references, not the 4 MiB of incompressible data
case_dedup() {
    start_from golden
    serve_use default
    local rc=0 mark bytes
    lab_mutate "$smnt" 37 4M >/dev/null
    push dedup-base "$work/send.toml" || rc=$?
    lab_assert_eq dedup-base-exit 0 "$rc"
    cp --reflink=never "$smnt/new-37/added.bin" "$smnt/copy-of-added.bin"
    sync
    mark=$(serve_log_mark)
    rc=0
    push dedup "$work/send.toml" || rc=$?
    lab_assert_eq dedup-exit 0 "$rc"
    bytes=$(jds dedup src/data bytes)
    lab_log "a 4 MiB copy of a replicated file cost ${bytes:-?} bytes on the wire"
    lab_assert dedup-inventory-used sh -c "tail -c +$((mark + 1)) '$R/serve.log' | grep -q 'chunk inventory promised'"
    lab_assert dedup-costs-references-only test "${bytes:-99999999}" -lt "$MiB"
    compare_target dedup
}

case_status_metrics() {
    start_from golden
    serve_use default
    local rc=0
    push status-push "$work/send.toml" || rc=$?
    lab_assert_eq status-push-exit 0 "$rc"
    rc=0
    ip netns exec primary "$send" status --config "$work/send.toml" --json >"$R/status.json" 2>"$R/status.err" || rc=$?
    lab_assert_eq status-exit 0 "$rc"
    lab_assert status-ok grep -q '"last_result": *"ok"' "$R/status.json"
    lab_assert_eq status-bytes-match "$(jjob status-push bytes)" "$(jq -r '.[] | select(.job == "data") | .bytes' "$R/status.json" 2>/dev/null)"
    cp "$work/metrics/fjord.prom" "$R/fjord.prom" 2>/dev/null || true
    lab_assert metrics-last-success grep -q '^fjord_job_last_success_timestamp_seconds{job="data"}' "$work/metrics/fjord.prom"
    lab_assert metrics-lag grep -q '^fjord_job_replication_lag_seconds{job="data"}' "$work/metrics/fjord.prom"
}

# the ransomware tripwire (tripwire.toml: min_history = 2, min_bytes = 256K, pause_pruning):
# two normal pushes (new text files) build the history; every file of src/data overwritten in
# place with random data trips it (push --json, status --json and exit 4, metrics) and pauses
# the source's pruning; the next normal push does not trip but stays paused until
# `fjord-send tripwire ack`, after which pruning resumes
jtw() {
    jq -r --arg f "$2" 'select(.type == "dataset" and .source == "src/data") | .tripwire | .[$f] | tostring' \
        "$R/$1.json" 2>/dev/null | head -n1 || true
}
tw_text() {
    mkdir -p "$smnt/tw"
    _lab_text "$1" 12000 csv >"$smnt/tw/table-$1.csv"
    sync
}
case_tripwire() {
    start_from golden
    rm -rf "$work/dr-state"
    serve_use tripwire
    local cfg=$work/tripwire.toml rc=0 i f rcfg=$work/recv-tripwire.toml
    for i in 1 2; do
        tw_text "$((700 + i))"
        rc=0
        push "tw-normal-$i" "$cfg" || rc=$?
        lab_assert_eq "tripwire-normal-$i-exit" 0 "$rc"
        lab_assert_eq "tripwire-learning-$i" learning "$(jtw "tw-normal-$i" verdict)"
    done
    # mass encryption: every file's bytes replaced in place by random ones
    while IFS= read -r -d '' f; do
        head -c "$(stat -c %s "$f")" /dev/urandom | dd of="$f" conv=notrunc status=none
    done < <(find "$smnt" -xdev -type f -print0)
    sync
    rc=0
    push tw-attack "$cfg" || rc=$?
    lab_assert_eq tripwire-attack-exit 0 "$rc"
    lab_assert_eq tripwire-tripped-json tripped "$(jtw tw-attack verdict)"
    # shares of logical block bytes: the zero-padded tail of each file's last 128K block is
    # compressible, so all-random files measure about 80% incompressible here, not 100%
    lab_assert tripwire-tripped-shares jq -e -s \
        'any(.[]; .type == "dataset" and .source == "src/data" and .tripwire.sample.incompressible > 0.7 and .tripwire.sample.rewritten > 0.9)' \
        "$R/tw-attack.json"
    lab_assert_eq tripwire-paused-json true "$(jtw tw-attack pruning_paused)"
    rc=0
    ip netns exec primary "$send" status --config "$cfg" --json >"$R/tw-status.json" 2>"$R/tw-status.err" || rc=$?
    lab_assert_eq tripwire-status-exit 4 "$rc"
    lab_assert_eq tripwire-status-json src/data \
        "$(jq -r '.[0].tripwire_alarms[0].dataset' "$R/tw-status.json" 2>/dev/null || true)"
    cp "$work/metrics/fjord.prom" "$R/tw-attack.prom" 2>/dev/null || true
    lab_assert tripwire-metrics grep -q '^fjord_tripwire_tripped{job="data",dataset="src/data"} 1$' "$work/metrics/fjord.prom"
    lab_assert tripwire-metrics-share grep -q '^fjord_tripwire_incompressible_ratio{job="data",dataset="src/data"} ' "$work/metrics/fjord.prom"
    # the DR node's own tripwire, from the bytes it received: critical in its status
    rc=0
    "$recv" status --config "$rcfg" --json --metrics-file "$R/tw-dr.prom" >"$R/tw-dr-status.json" 2>"$R/tw-dr-status.err" || rc=$?
    lab_assert_eq tripwire-dr-status "0 $(jjob tw-attack snapshot)" \
        "$rc $(jq -r '.[] | select(.dataset == "dst/backup/data") | .tripwire.alarm.snapshot' "$R/tw-dr-status.json" 2>/dev/null || true)"
    lab_assert tripwire-dr-share jq -e '.[] | select(.dataset == "dst/backup/data") | .tripwire.last.incompressible > 0.7' "$R/tw-dr-status.json"
    lab_assert tripwire-dr-metrics grep -q '^fjord_dr_tripwire_tripped{dataset="dst/backup/data"} 1$' "$R/tw-dr.prom"
    rc=0
    "$recv" status --config "$rcfg" --check >"$R/tw-dr-check.out" 2>&1 || rc=$?
    lab_assert_eq tripwire-dr-check-critical 2 "$rc"
    lab_assert tripwire-dr-check-line grep -q 'TRIPWIRE at @' "$R/tw-dr-check.out"
    # a normal push: not tripped, the alarm and the pause stay until acknowledged
    tw_text 703
    rc=0
    push tw-after "$cfg" || rc=$?
    lab_assert_eq tripwire-after-exit 0 "$rc"
    lab_assert_eq tripwire-after-not-tripped normal "$(jtw tw-after verdict)"
    lab_assert_eq tripwire-after-paused "true " "$(jtw tw-after pruning_paused) $(jds tw-after src/data pruned_source)"
    rc=0
    ip netns exec primary "$send" tripwire ack --config "$cfg" data >"$R/tw-ack.out" 2>&1 || rc=$?
    lab_assert_eq tripwire-ack-exit 0 "$rc"
    lab_assert tripwire-ack-says grep -q 'src/data: tripwire alarm acknowledged' "$R/tw-ack.out"
    lab_assert tripwire-ack-metrics grep -q '^fjord_tripwire_tripped{job="data",dataset="src/data"} 0$' "$work/metrics/fjord.prom"
    # the DR node's alarm stays after the normal push, until the DR node's own ack
    rc=0
    "$recv" status --config "$rcfg" --check >"$R/tw-dr-check-after.out" 2>&1 || rc=$?
    lab_assert_eq tripwire-dr-after-normal 2 "$rc"
    rc=0
    "$recv" tripwire ack --config "$rcfg" dst/backup/data >"$R/tw-dr-ack.out" 2>&1 || rc=$?
    lab_assert_eq tripwire-dr-ack "0" "$rc"
    lab_assert tripwire-dr-ack-says grep -q 'dst/backup/data: tripwire alarm acknowledged' "$R/tw-dr-ack.out"
    rc=0
    "$recv" status --config "$rcfg" --check >"$R/tw-dr-check-acked.out" 2>&1 || rc=$?
    lab_assert_eq tripwire-dr-acked-ok 0 "$rc"
    rc=0
    ip netns exec primary "$send" status --config "$cfg" --json >"$R/tw-status-acked.json" 2>/dev/null || rc=$?
    lab_assert_eq tripwire-status-clear "0 0" "$rc $(jq -r '.[0].tripwire_alarms | length' "$R/tw-status-acked.json" 2>/dev/null || true)"
    tw_text 704
    rc=0
    push tw-final "$cfg" || rc=$?
    lab_assert_eq tripwire-final-exit 0 "$rc"
    lab_assert_eq tripwire-final-not-tripped normal "$(jtw tw-final verdict)"
    lab_assert tripwire-pruning-resumed test -n "$(jds tw-final src/data pruned_source)"
}

# the DR node's own status (fjord-recv status, from zfs on the DR node): the copies are
# fresh after a push; when pushes stop, the thresholds say so as a check (Nagios codes) and
# as metrics. A warning or critical age of 0s makes any copy stale without waiting.
case_dr_status() {
    start_from golden
    serve_use default
    local rc=0 snap cfg="$work/recv-default.toml" copy
    push drstatus-push "$work/send.toml" || rc=$?
    lab_assert_eq drstatus-push-exit 0 "$rc"
    snap=$(jjob drstatus-push snapshot)
    rc=0
    "$recv" status --config "$cfg" --json >"$R/drstatus.json" 2>"$R/drstatus.err" || rc=$?
    lab_assert_eq drstatus-exit 0 "$rc"
    copy() { jq -r --arg d "$1" --arg f "$2" '.[] | select(.dataset == $d) | .[$f] | tostring' "$R/drstatus.json" 2>/dev/null || true; }
    lab_assert_eq drstatus-newest "$snap" "$(copy dst/backup/data newest_snapshot)"
    lab_assert_eq drstatus-child-newest "$snap" "$(copy dst/backup/data/child newest_snapshot)"
    lab_assert_eq drstatus-fresh ok "$(copy dst/backup/data health)"
    lab_assert_eq drstatus-no-partial false "$(copy dst/backup/data partial_receive)"
    rc=0
    "$recv" status --config "$cfg" --check >"$R/drcheck-ok.out" 2>/dev/null || rc=$?
    lab_assert_eq drstatus-check-ok 0 "$rc"
    lab_assert drstatus-check-ok-line grep -q '^FJORD-DR OK' "$R/drcheck-ok.out"
    rc=0
    "$recv" status --config "$cfg" --check --warn-age 0s --crit-age 1h >"$R/drcheck-warn.out" 2>/dev/null || rc=$?
    lab_assert_eq drstatus-check-warning 1 "$rc"
    lab_assert drstatus-check-warning-names grep -q '^FJORD-DR WARNING.*dst/backup/data' "$R/drcheck-warn.out"
    rc=0
    "$recv" status --config "$cfg" --check --warn-age 0s --crit-age 0s --metrics-file "$R/dr.prom" \
        >"$R/drcheck-crit.out" 2>/dev/null || rc=$?
    lab_assert_eq drstatus-check-critical 2 "$rc"
    lab_assert drstatus-metrics-age grep -q '^fjord_dr_newest_snapshot_age_seconds{client="primary",dataset="dst/backup/data"}' "$R/dr.prom"
    lab_assert drstatus-metrics-health grep -q '^fjord_dr_health{client="primary",dataset="dst/backup/data"} 2' "$R/dr.prom"
}

# SIGHUP reloads the receiver's clients: a reload that adds the stranger's key lets its push
# in, one that removes it refuses it again, a broken file is rejected (the previous config
# stays, the receiver keeps serving); serve's own metrics count the reloads and refusals
case_reload() {
    start_from golden
    local cfg=$work/recv-reload.toml stpub rc=0 mark before_dst m=$work/metrics/fjord-recv.prom
    stpub=$("$send" pubkey --key "$work/stranger.key")
    recv_config reload "metrics_file = \"$m\"" ""
    serve_use reload
    push reload-before "$work/stranger.toml" || rc=$?
    lab_assert reload-stranger-refused-before test "$rc" -ne 0
    printf '\n[[client]]\nname = "stranger"\nkey = "%s"\nprefixes = ["dst/backup"]\n' "$stpub" >>"$cfg"
    mark=$(serve_log_mark)
    serve_kill HUP
    lab_assert reload-added-logged lab_wait 30 "the reload" _logged_since "$mark" "reloaded .*clients added: stranger"
    rc=0
    push reload-added "$work/stranger.toml" || rc=$?
    lab_assert_eq reload-added-accepted 0 "$rc"
    lab_assert_eq reload-added-json-ok ok "$(jjob reload-added result)"
    recv_config reload "metrics_file = \"$m\"" ""
    mark=$(serve_log_mark)
    serve_kill HUP
    lab_assert reload-removed-logged lab_wait 30 "the reload" _logged_since "$mark" "reloaded .*removed: stranger"
    before_dst=$(snaps dst/backup/data)
    rc=0
    push reload-removed "$work/stranger.toml" || rc=$?
    lab_assert reload-removed-refused test "$rc" -ne 0
    lab_assert_eq reload-removed-wrote-nothing "$before_dst" "$(snaps dst/backup/data)"
    printf 'bogus_key = 1\n' >>"$cfg"
    mark=$(serve_log_mark)
    serve_kill HUP
    lab_assert reload-broken-rejected lab_wait 30 "the rejection" _logged_since "$mark" "reload rejected.*recv-reload.toml"
    lab_assert reload-serve-alive serve_alive
    rc=0
    push reload-primary "$work/send.toml" || rc=$?
    lab_assert_eq reload-primary-still-served 0 "$rc"
    lab_assert reload-metrics lab_wait 40 "the metrics file" grep -q '^fjord_dr_reloads_total{result="rejected"} 1' "$m"
    lab_assert reload-metrics-applied grep -q '^fjord_dr_reloads_total{result="applied"} 2' "$m"
    lab_assert reload-metrics-refused grep -q '^fjord_dr_refused_requests_total{code="not_pinned",client="unknown"}' "$m"
    cp "$m" "$R/reload.prom" || true
    serve_stop
}
# _logged_since MARK REGEX: serve.log after MARK matches REGEX
_logged_since() { serve_log_since "$1" | grep -qE "$2"; }

# the DR node's own retention: fjord-recv prune with hourly = 2
case_recv_prune() {
    start_from golden
    serve_use default
    local h rc=0 before_hist
    for h in 00 01 02 03; do
        zfs snapshot -r "src/data@fjord_2026-01-01T${h}0000Z"
    done
    push prune-setup "$work/send.toml" || rc=$?
    lab_assert_eq prune-setup-exit 0 "$rc"
    lab_log "target: $(snaps dst/backup/data)"
    before_hist=$(history dst/backup/data)
    rc=0
    "$recv" prune --config "$work/recv-dr-retention.toml" --dry-run --json >"$R/prune-dry.json" 2>"$R/prune-dry.err" || rc=$?
    lab_assert_eq prune-dry-exit 0 "$rc"
    lab_assert prune-dry-lists grep -q '"dataset":"dst/backup/data"' "$R/prune-dry.json"
    lab_assert_eq prune-dry-destroyed-nothing "$before_hist" "$(history dst/backup/data)"
    rc=0
    "$recv" prune --config "$work/recv-dr-retention.toml" >"$R/prune.out" 2>"$R/prune.err" || rc=$?
    lab_assert_eq prune-exit 0 "$rc"
    lab_log "target after prune: $(snaps dst/backup/data)"
    lab_assert prune-kept-newest zfs list "$(newest dst/backup/data)"
    lab_assert prune-destroyed-old sh -c "! zfs list dst/backup/data@fjord_2026-01-01T000000Z 2>/dev/null"
    lab_assert prune-kept-two test "$(zfs list -H -t snapshot -o name -d 1 dst/backup/data | grep -c '@fjord_')" -le 3
}

# $as_fjord CMD...: CMD as the fjord user, with neither capabilities nor a way to gain any
# (a string of words: the cases run in child shells, which see exported scalars only)
as_fjord="setpriv --reuid=fjord --regid=fjord --init-groups --no-new-privs --bounding-set=-all --inh-caps=-all"
export as_fjord

# fjord_user_setup: the fjord user and what the package's postinst makes for it, the
# receiver's key and binary where it can read them, and exactly the README's `zfs allow`
# set on the target tree (the guest's /etc is a writable overlay: no dpkg here)
# fjord_account: the fjord user and group, as the package's adduser --system makes them
# (useradd cannot replace the guest's /etc/shadow, so the postinst finds them made)
fjord_account() {
    local id=990
    while getent passwd "$id" >/dev/null || getent group "$id" >/dev/null; do id=$((id - 1)); done
    getent group fjord >/dev/null || echo "fjord:x:$id:" >>/etc/group
    getent passwd fjord >/dev/null ||
        echo "fjord:x:$id:$(getent group fjord | cut -d: -f3):fjord:/var/lib/fjord:/usr/sbin/nologin" >>/etc/passwd
}
fjord_user_setup() {
    set -e
    local perms
    perms=$(sed -n 's/^ *zfs allow -u fjord \([a-z,]*\) backup$/\1/p' "$LAB_REPO/README.md" | head -n1)
    [[ -n $perms ]] || { echo "no 'zfs allow -u fjord PERMS' line in $LAB_REPO/README.md" >&2; return 1; }
    fjord_account
    rm -rf "$work/fjord"
    install -d -o fjord -g fjord -m 0750 "$work/fjord"
    install -o fjord -g fjord -m 0600 "$work/recv.key" "$work/fjord/recv.key"
    install -m 0755 "$recv" "$work/fjord/fjord-recv"
    sed -e "0,/^key = /s|^key = .*|key = \"$work/fjord/recv.key\"|" -e "s|^dir = .*|dir = \"$work/fjord/chunks\"|" \
        "$work/recv-default.toml" >"$work/recv-as-fjord.toml"
    # udev's rule (90-zfs.rules) makes /dev/zfs 0666 on a real system; the lab has no udev
    chmod 0666 /dev/zfs
    zfs unallow -u fjord dst/backup 2>/dev/null || true
    zfs allow -u fjord "$perms" dst/backup
    zfs allow dst/backup
}

# the receiver as fjord-recv.service runs it: user fjord, no capability, no new
# privileges, only the README's delegation; a full and an incremental push
case_recv_as_fjord_user() {
    # the golden source, but no target: the first push is a full one
    start_from golden
    destroy_tree dst/backup/data
    fjord_user_setup
    serve_use as-fjord
    local pid rc=0
    pid=$(serve_pid)
    lab_assert_eq fjord-user-runs-as fjord "$(ps -o user= -p "$pid" | tr -d ' ')"
    lab_assert_eq fjord-user-no-capabilities 0000000000000000 "$(awk '/^CapEff:/ { print $2 }' "/proc/$pid/status")"
    push fjord-full "$work/send.toml" || rc=$?
    lab_assert_eq fjord-user-full-exit 0 "$rc"
    lab_assert_eq fjord-user-full-action "ok full" "$(jjob fjord-full result) $(jactions fjord-full src/data)"
    compare_target fjord-user-full
    lab_mutate "$smnt" 41 256K >/dev/null
    rc=0
    push fjord-incr "$work/send.toml" || rc=$?
    lab_assert_eq fjord-user-incr-exit 0 "$rc"
    lab_assert_eq fjord-user-incr-action "ok incremental" "$(jjob fjord-incr result) $(jactions fjord-incr src/data)"
    compare_target fjord-user-incr
    lab_assert fjord-user-held all_held dst/backup/data
    lab_assert fjord-user-inert inert dst/backup/data
    # nothing beyond the delegation: no snapshot of its own, nothing outside dst/backup
    lab_assert fjord-user-cannot-snapshot sh -c "! $as_fjord zfs snapshot dst/backup/data@not-allowed 2>/dev/null"
    lab_assert fjord-user-cannot-touch-source sh -c "! $as_fjord zfs hold x $(newest src/data) 2>/dev/null"
    serve_stop
    zfs unallow -u fjord dst/backup
}

# failover on the DR node: fjord-recv promote --dry-run changes nothing; promote makes the
# copy (and its child) writable and mounted at its own mountpoint, fenced with fjord:promoted;
# a rerun only finishes; a push from the old primary is then refused (exit 8, "promoted")
# promote_run NAME ARGS...: fjord-recv promote on the DR node; $R/NAME.out, .err, .rc
promote_run() {
    local name=$1 rc=0
    shift
    "$recv" promote "$@" >"$R/$name.out" 2>"$R/$name.err" || rc=$?
    echo "$rc" >"$R/$name.rc"
    lab_log "promote $name exit $rc"
    sed 's/^/    /' "$R/$name.out" "$R/$name.err"
    return "$rc"
}
# _marker_is VALUE SNAP: fjord:promoted's value is "TIME @SNAP"
_marker_is() { [[ $1 =~ ^20[0-9-]+T[0-9:]+Z\ @(.*)$ && ${BASH_REMATCH[1]} == "$2" ]]; }
case_promote() {
    start_from golden
    serve_use default
    local rc=0 snap before_snaps before_mnt marker t0
    # the incremental push runs the hooks: a pre and a post command, and the PostgreSQL hook
    # against a stand-in psql that prints a WAL position; properties = true (zfs send -p)
    # carries fjord:wal_lsn to the DR node
    rm -f "$work/hooks.log" "$work/psql.args"
    lab_mutate "$smnt" 41 256K >/dev/null
    push promote-incr "$work/hooks.toml" || rc=$?
    lab_assert_eq promote-incr-exit "0 incremental" "$rc $(jactions promote-incr src/data)"
    snap=$(jjob promote-incr snapshot)
    lab_assert_eq promote-hooks-order "pre post $snap" "$(tr '\n' ' ' <"$work/hooks.log" | sed 's/ $//')"
    lab_assert promote-hooks-checkpoint grep -q -- "-c CHECKPOINT -c SELECT pg_current_wal_lsn()" "$work/psql.args"
    lab_assert_eq promote-hooks-lsn-source 0/16B3F40 "$(zfs get -H -o value fjord:wal_lsn "src/data@$snap")"
    lab_assert_eq promote-hooks-lsn-target 0/16B3F40 "$(zfs get -H -o value fjord:wal_lsn "dst/backup/data@$snap")"
    before_snaps=$(snaps dst/backup/data)
    before_mnt=$(lab_mountpoint dst/backup/data)
    # --dry-run: the plan, nothing changed
    rc=0
    promote_run promote-dry dst/backup/data --dry-run --json || rc=$?
    lab_assert_eq promote-dry-exit 0 "$rc"
    lab_assert_eq promote-dry-plan "true fence $snap 0/16B3F40" \
        "$(jq -r '[.dry_run, .actions[0].action, .recovery_points[0].snapshot, .recovery_points[0].log_position.value] | map(tostring) | join(" ")' "$R/promote-dry.out" 2>/dev/null)"
    lab_assert_eq promote-dry-nothing-done 0 "$(jq '[.actions[] | select(.done)] | length' "$R/promote-dry.out" 2>/dev/null)"
    lab_assert promote-dry-still-inert inert dst/backup/data
    lab_assert_eq promote-dry-no-marker - "$(zfs get -H -o value fjord:promoted dst/backup/data)"
    lab_assert_eq promote-dry-same-snapshots "$before_snaps" "$(snaps dst/backup/data)"
    # for real
    t0=$SECONDS
    rc=0
    promote_run promote dst/backup/data || rc=$?
    lab_log "promote took $((SECONDS - t0)) s"
    lab_assert_eq promote-exit 0 "$rc"
    lab_assert promote-prints-recovery-point grep -q "^recovery point: dst/backup/data@$snap (created .*, .* old), fjord:wal_lsn 0/16B3F40" "$R/promote.out"
    lab_assert promote-prints-fence grep -q "^done: fence dst/backup/data" "$R/promote.out"
    lab_assert_eq promote-writable "off off yes yes" \
        "$(zfs get -H -o value readonly dst/backup/data) $(zfs get -H -o value readonly dst/backup/data/child) $(zfs get -H -o value mounted dst/backup/data) $(zfs get -H -o value mounted dst/backup/data/child)"
    lab_assert_eq promote-original-mountpoint "$before_mnt" "$(lab_mountpoint dst/backup/data)"
    lab_assert promote-data-readable lab_compare "$smnt" "$(lab_mountpoint dst/backup/data)"
    lab_assert promote-child-readable lab_compare "$cmnt" "$(lab_mountpoint dst/backup/data/child)"
    # written into the promoted file system itself, not into a directory under an unmounted one
    echo after-failover >"$(lab_mountpoint dst/backup/data)/failover.txt" || true
    lab_assert_eq promote-writes dst/backup/data \
        "$(findmnt -n -o SOURCE --target "$(lab_mountpoint dst/backup/data)/failover.txt" 2>/dev/null)"
    marker=$(zfs get -H -o value fjord:promoted dst/backup/data)
    lab_assert promote-marker _marker_is "$marker" "$snap"
    lab_assert_eq promote-marker-inherited "inherited from dst/backup/data" \
        "$(zfs get -H -o source fjord:promoted dst/backup/data/child)"
    # a rerun finishes nothing and rolls nothing back
    rc=0
    promote_run promote-again dst/backup/data || rc=$?
    lab_assert_eq promote-again-exit 0 "$rc"
    lab_assert promote-again-keeps-writes grep -qx after-failover "$(lab_mountpoint dst/backup/data)/failover.txt"
    lab_assert promote-again-says-already grep -q "^already promoted at" "$R/promote-again.out"
    # the old primary pushes: refused, with the promoted message and exit 8
    lab_mutate "$smnt" 42 64K >/dev/null
    rc=0
    push promote-fenced "$work/send.toml" || rc=$?
    lab_assert_eq promote-fenced-exit 8 "$rc"
    lab_assert_eq promote-fenced-json "promoted promoted" \
        "$(jjob promote-fenced result) $(jds promote-fenced src/data result)"
    lab_assert promote-fenced-message jsays promote-fenced "was promoted on the DR node at"
    lab_assert promote-fenced-how grep -q "fjord-recv demote dst/backup/data" "$R/promote-fenced.err"
    lab_assert_eq promote-fenced-nothing-received "$before_snaps" "$(snaps dst/backup/data)"
    lab_assert promote-fenced-logged grep -q "refused: promoted on this node" "$R/serve.log"
}

# failback and the way back, with the same binaries and keys: the DR copy is promoted and
# written to; the old primary comes back with a snapshot and writes of its own the DR node
# never saw. `fjord-recv demote` on the old primary keeps them aside (nothing destroyed),
# leaves src/data at the base, inert, and stops its own pushes; the promoted copy is pushed
# back (fjord-send on the DR node with its recv.key, fjord-recv serve on the old primary with
# its send.key); then the roles return: promote on the old primary, demote on the DR node,
# and the old primary's push carries on incrementally.
# demote_run NAME ARGS...: fjord-recv demote; $R/NAME.out, .err, .rc
demote_run() {
    local name=$1 rc=0
    shift
    "$recv" demote "$@" >"$R/$name.out" 2>"$R/$name.err" || rc=$?
    echo "$rc" >"$R/$name.rc"
    lab_log "demote $name exit $rc"
    sed 's/^/    /' "$R/$name.out" "$R/$name.err"
    return "$rc"
}
# fb_configs: the old primary's receiver (its send.key, the DR node as its only client) and
# the DR node's push job back to it (its recv.key). The first push back runs with --force and
# the receiver grants allow_rollback: on these pools, rewound to a zpool checkpoint by
# start_from golden, a clone promoted back by demote shows 1024 bytes written even after
# `zfs rollback` (OpenZFS 2.3.2; a pool that was never rewound shows 0, checked by hand), so
# the receiver must roll that back (nothing is destroyed: the base is the newest snapshot)
fb_configs() {
    cat >"$work/fb-recv.toml" <<EOF
listen = "$LAB_PRIMARY_WG_IP:7451"
key = "$work/send.key"
grace = "60s"
idle_timeout = "3s"
min_age = "0s"

[recv]
resumable = true
unmounted = true

[[client]]
name = "dr-node"
key = "$rpub"
prefixes = ["src/data"]
allow_rollback = true
EOF
    cat >"$work/fb-send.toml" <<EOF
key = "$work/recv.key"
state_dir = "$work/fb-state"

[[job]]
name = "back"
source = "dst/backup/data"
recursive = true
target_host = "$LAB_PRIMARY_WG_IP:7451"
target_key = "$spub"
target_dataset = "src/data"
grace = "60s"
idle_timeout = "3s"
EOF
    rm -rf "$work/fb-state"
    mkdir -p "$work/fb-state"
}
# in_mounted DATASET FILE: FILE exists in DATASET, mounted read-only for the look if need be
in_mounted() {
    local was rc=0
    was=$(zfs get -H -o value mounted "$1")
    [[ $was == yes ]] || zfs mount -o ro "$1"
    [[ -e "$(lab_mountpoint "$1")/$2" ]] || rc=1
    [[ $was == yes ]] || zfs unmount "$1"
    return "$rc"
}
not_in_mounted() { ! in_mounted "$@"; }
case_failback() {
    start_from golden
    serve_use default
    local rc=0 base aside late fbpid dsnap
    base=$(newest src/data)
    base=${base#*@}
    # failover: the DR copy is promoted and written to
    promote_run fb-promote dst/backup/data || rc=$?
    lab_assert_eq fb-promote-exit 0 "$rc"
    echo written-on-dr >"$(lab_mountpoint dst/backup/data)/dr.txt"
    # the old primary comes back with a snapshot and writes the DR node never saw
    echo late-on-primary >"$smnt/late.txt"
    fjord_snapshot_now src/data
    late=$(newest src/data)
    late=${late#*@}
    echo uncommitted-on-primary >"$smnt/uncommitted.txt"
    # --dry-run: the plan, nothing changed
    rc=0
    demote_run fb-demote-dry src/data --dry-run --json || rc=$?
    lab_assert_eq fb-demote-dry-exit 0 "$rc"
    lab_assert_eq fb-demote-dry-plan "true $base" \
        "$(jq -r '[.dry_run, .base] | map(tostring) | join(" ")' "$R/fb-demote-dry.out" 2>/dev/null)"
    lab_assert fb-demote-dry-lists-late jq -e --arg s "$late" 'any(.kept.snapshots[]; .[1] == $s)' "$R/fb-demote-dry.out"
    lab_assert_eq fb-demote-dry-unchanged "yes $late" "$(zfs get -H -o value mounted src/data) $(newest src/data | sed 's/.*@//')"
    # demote for real: the diverged writes are kept aside, src/data is at the base, inert
    rc=0
    demote_run fb-demote src/data || rc=$?
    lab_assert_eq fb-demote-exit 0 "$rc"
    aside=$(zfs list -H -o name,fjord:kept_from -d 1 src | awk -F'\t' -v b="src/data@$base" '$2 == b { print $1 }' | tail -n1)
    lab_assert fb-aside-exists test -n "$aside"
    lab_assert fb-demote-lists-aside grep -q "keeping the writes made after @$base as $aside" "$R/fb-demote.out"
    lab_assert_eq fb-base-only "$base" "$(snaps src/data | sed 's/ $//')"
    lab_assert_eq fb-demoted-inert "on noauto no" "$(zfs get -H -o value readonly,canmount,mounted src/data | tr '\n' ' ' | sed 's/ $//')"
    lab_assert fb-demoted-marker sh -c "zfs get -H -o value fjord:demoted src/data | grep -q ' @$base\$'"
    lab_assert fb-kept-snapshot zfs list "$aside@$late"
    lab_assert fb-kept-late in_mounted "$aside" late.txt
    lab_assert fb-kept-uncommitted in_mounted "$aside" uncommitted.txt
    lab_assert fb-kept-child zfs list "$aside/child"
    # the old primary's own push timer, forgotten: refused, nothing snapshotted
    rc=0
    push fb-old-push "$work/send.toml" || rc=$?
    lab_assert_eq fb-old-push-exit 4 "$rc"
    lab_assert fb-old-push-says jsays fb-old-push "src/data was demoted"
    lab_assert_eq fb-old-push-no-snapshot "$base" "$(snaps src/data | sed 's/ $//')"
    # failback: the promoted copy flows back, same binaries, same keys
    fb_configs
    FJORD_LOG=info ip netns exec primary "$recv" serve --config "$work/fb-recv.toml" >>"$R/fb-serve.log" 2>&1 </dev/null &
    fbpid=$!
    lab_wait_udp primary 7451 90
    rc=0
    ip netns exec dr timeout 600 "$send" push --config "$work/fb-send.toml" --json --force >"$R/fb-back.json" 2>"$R/fb-back.err" || rc=$?
    sed 's/^/    /' "$R/fb-back.json" "$R/fb-back.err"
    lab_assert_eq fb-back-exit 0 "$rc"
    lab_assert_eq fb-back-incremental "incremental" "$(jq -r 'select(.type == "dataset" and .source == "dst/backup/data") | [.steps[].action] | join(",")' "$R/fb-back.json" 2>/dev/null)"
    dsnap=$(newest dst/backup/data)
    lab_assert_eq fb-back-same-guid "$(lab_guid "$dsnap")" "$(lab_guid "src/data@${dsnap#*@}" 2>/dev/null)"
    lab_assert fb-back-has-dr-write in_mounted src/data dr.txt
    lab_assert fb-back-no-late not_in_mounted src/data late.txt
    kill "$fbpid" 2>/dev/null || true
    wait "$fbpid" 2>/dev/null || true
    # the way back: the old primary becomes the primary again, the DR node a target again
    rc=0
    promote_run fb-repromote src/data || rc=$?
    lab_assert_eq fb-repromote-exit 0 "$rc"
    lab_assert_eq fb-repromote-undemoted "-" "$(zfs get -H -o value fjord:demoted src/data)"
    rc=0
    demote_run fb-dr-demote dst/backup/data || rc=$?
    lab_assert_eq fb-dr-demote-exit 0 "$rc"
    lab_assert_eq fb-dr-unfenced "-" "$(zfs get -H -o value fjord:promoted dst/backup/data)"
    lab_mutate "$smnt" 61 128K >/dev/null
    rc=0
    push fb-resume "$work/send.toml" || rc=$?
    lab_assert_eq fb-resume "0 incremental" "$rc $(jactions fb-resume src/data)"
    compare_target fb-resume-content
}

# failover with a real PostgreSQL (the host's, through the shared root file system): its data
# directory on src/data, rows committed, a push with the PostgreSQL hook (CHECKPOINT, WAL
# position on the snapshot), more rows that never reach the DR node, then the primary dies
# (immediate stop, link down). On the DR node: promote, PostgreSQL starts on the promoted copy
# and has exactly the rows committed before the snapshot. RTO: from the failure to the first
# answered query on the DR node.
export PG_BIN=/usr/lib/postgresql/15/bin
# pg_as ARGS...: a PostgreSQL program as the postgres user
pg_as() { runuser -u postgres -- "$@"; }
# pg_start DATADIR SOCKDIR PORT
pg_start() {
    pg_as "$PG_BIN/pg_ctl" -D "$1" -o "-k $2 -p $3 -c listen_addresses=''" -l "$2/log" -w -t 300 start
}
# pg_sql SOCKDIR PORT SQL: one statement as postgres, unaligned tuples only
pg_sql() { psql -X -q -A -t -v ON_ERROR_STOP=1 -d "host=$1 port=$2 user=postgres dbname=postgres" -c "$3"; }
case_promote_pg() {
    [[ -x $PG_BIN/initdb ]] || { lab_fail promote-pg-installed "no PostgreSQL in $PG_BIN"; return 0; }
    start_from golden
    serve_use default
    local rc=0 snap lsn t_fail t_query pgdir="$smnt/pg" psock="$work/pg-primary" dsock="$work/pg-dr"
    rm -rf "$psock" "$dsock"
    mkdir -p "$pgdir" "$psock" "$dsock"
    chown postgres "$pgdir" "$psock" "$dsock"
    pg_as "$PG_BIN/initdb" -D "$pgdir/data" -A trust >"$R/pg-initdb.log" 2>&1
    pg_start "$pgdir/data" "$psock" 55432 >/dev/null
    pg_sql "$psock" 55432 "create table t (id int primary key); insert into t select generate_series(1, 1000)"
    send_config "$work/pg.toml" "$work/send.key" "properties = true
[job.hooks]
timeout = '120s'
database = 'postgresql'
connection = 'host=$psock port=55432 user=postgres dbname=postgres'"
    push pg-push "$work/pg.toml" || rc=$?
    lab_assert_eq pg-push-exit 0 "$rc"
    snap=$(jjob pg-push snapshot)
    lsn=$(zfs get -H -o value fjord:wal_lsn "dst/backup/data@$snap")
    lab_log "PostgreSQL WAL position on the DR snapshot: $lsn"
    lab_assert pg-lsn-on-dr-snapshot _is_lsn "$lsn"
    # committed after the snapshot: lost with the primary
    pg_sql "$psock" 55432 "insert into t select generate_series(1001, 2000)"
    # the primary dies
    t_fail=$(date +%s.%N)
    pg_as "$PG_BIN/pg_ctl" -D "$pgdir/data" -m immediate -w stop >/dev/null || true
    ip -n primary link set veth-p down
    rc=0
    promote_run pg-promote dst/backup/data || rc=$?
    lab_assert_eq pg-promote-exit 0 "$rc"
    lab_assert pg-promote-prints-lsn grep -q "fjord:wal_lsn $lsn" "$R/pg-promote.out"
    local ddir
    ddir="$(lab_mountpoint dst/backup/data)/pg/data"
    rc=0
    pg_start "$ddir" "$dsock" 55433 >/dev/null || rc=$?
    lab_assert_eq pg-starts-on-dr 0 "$rc"
    local count
    count=$(pg_sql "$dsock" 55433 "select count(*) from t" 2>>"$R/pg-dr.err" || echo none)
    t_query=$(date +%s.%N)
    lab_assert_eq pg-rows-before-snapshot 1000 "$count"
    lab_log "RTO (immediate stop of the primary to the first answered query on the DR node): $(echo "$t_query - $t_fail" | bc) s"
    echo "rto_seconds=$(echo "$t_query - $t_fail" | bc)" >>"$R/pg-rto"
    pg_as "$PG_BIN/pg_ctl" -D "$ddir" -m fast -w stop >/dev/null || true
    ip -n primary link set veth-p up
}

# game day with a real PostgreSQL (the host's) under a steady write load: an insert loop
# logs each committed id with its commit time; pushes with the PostgreSQL hook run while it
# writes; the primary dies (database killed, link cut); promote on the DR node, PostgreSQL
# starts there with every row of the newest replicated snapshot (RTO and RPO measured); the
# fenced old primary's push is refused; it comes back: demote keeps its diverged writes, the
# promoted copy flows back; a planned switchover (`fjord-send switchover` on the DR node: clean
# stop of its database, final push back, promote there, demote here) returns the primary role
# with 0 committed rows lost.
# pg_writer SOCK PORT FROM LOG: inserts ids FROM, FROM+1, ... one at a time (each its own
# transaction, with clock_timestamp()), appending "id epoch" to LOG after each commit
pg_writer() {
    local sock=$1 port=$2 id=$3 log=$4
    while pg_sql "$sock" "$port" "insert into t values ($id, clock_timestamp())" 2>/dev/null; do
        echo "$id $(date +%s.%N)" >>"$log"
        id=$((id + 1))
    done
}
# committed_before EPOCH LOG: the newest id committed before EPOCH (0 if none)
committed_before() { awk -v t="$1" '$2 < t { id = $1 } END { print id + 0 }' "$2"; }
# pg_stop DATADIR MODE
pg_stop() { pg_as "$PG_BIN/pg_ctl" -D "$1" -m "$2" -w stop >/dev/null 2>&1 || true; }
case_gameday_pg() {
    [[ -x $PG_BIN/initdb ]] || { lab_fail gd-pg-installed "no PostgreSQL in $PG_BIN"; return 0; }
    start_from golden
    serve_use default
    local rc=0 i t0 safe wpid t_fail t_query dmax dcount rpo pdir="$smnt/pg/data"
    local psock="$work/gd-primary" dsock="$work/gd-dr" wlog="$work/gd-writer.log" ddir aside
    rm -rf "$psock" "$dsock" "$wlog"
    mkdir -p "$smnt/pg" "$psock" "$dsock"
    chown postgres "$smnt/pg" "$psock" "$dsock"
    pg_as "$PG_BIN/initdb" -D "$pdir" -A trust >"$R/gd-initdb.log" 2>&1
    pg_start "$pdir" "$psock" 55442 >/dev/null
    pg_sql "$psock" 55442 "create table t (id int primary key, at timestamptz not null)"
    send_config "$work/gd.toml" "$work/send.key" "properties = true
[job.hooks]
timeout = '120s'
database = 'postgresql'
connection = 'host=$psock port=55442 user=postgres dbname=postgres'"
    : >"$wlog"
    pg_writer "$psock" 55442 1 "$wlog" &
    wpid=$!
    lab_wait 60 "the writer committed a row" test -s "$wlog"
    # pushes every few seconds while it writes; every id committed before a push started is
    # in that push's snapshot
    safe=0
    zfs list dst/drill >/dev/null 2>&1 || zfs create -o canmount=off -o mountpoint=none dst/drill
    local dpid=""
    for i in 1 2 3; do
        t0=$(date +%s.%N)
        # a restore drill of the DR copy (PostgreSQL started on a clone of its newest
        # snapshot) while the second push runs into it
        if ((i == 2)); then
            "$recv" drill --config "$work/recv-drill-pg.toml" --json >"$R/gd-drill.json" 2>"$R/gd-drill.err" &
            dpid=$!
        fi
        rc=0
        push "gd-push$i" "$work/gd.toml" || rc=$?
        lab_assert_eq "gd-push$i-exit" 0 "$rc"
        ((rc != 0)) || safe=$(committed_before "$t0" "$wlog")
        sleep 2
    done
    rc=0
    wait "$dpid" || rc=$?
    sed 's/^/    /' "$R/gd-drill.json" "$R/gd-drill.err"
    lab_assert_eq gd-drill-during-replication "0 ok" "$rc $(jq -r .result "$R/gd-drill.json" 2>/dev/null)"
    lab_assert gd-drill-counted-rows test "$(jq -r '.output_tail' "$R/gd-drill.json" 2>/dev/null | grep -v '^$' | tail -n1)" -gt 0
    lab_log "writer at id $(tail -n1 "$wlog" | cut -d' ' -f1); ids up to $safe were committed before the last push began"
    # the primary dies
    t_fail=$(date +%s.%N)
    pg_stop "$pdir" immediate
    wait "$wpid" 2>/dev/null || true
    ip -n primary link set veth-p down
    rc=0
    promote_run gd-promote dst/backup/data || rc=$?
    lab_assert_eq gd-promote-exit 0 "$rc"
    ddir="$(lab_mountpoint dst/backup/data)/pg/data"
    rc=0
    pg_start "$ddir" "$dsock" 55443 >/dev/null || rc=$?
    lab_assert_eq gd-pg-starts-on-dr 0 "$rc"
    dmax=$(pg_sql "$dsock" 55443 "select coalesce(max(id), 0) from t" 2>>"$R/gd-dr.err" || echo 0)
    t_query=$(date +%s.%N)
    dcount=$(pg_sql "$dsock" 55443 "select count(*) from t" 2>>"$R/gd-dr.err" || echo -1)
    lab_assert_eq gd-no-gaps "$dmax" "$dcount"
    lab_assert gd-all-replicated-rows test "$dmax" -ge "$safe"
    # RPO: commit time of the newest row on the primary minus that of the newest on the DR node
    rpo=$(echo "$(tail -n1 "$wlog" | cut -d' ' -f2) - $(awk -v id="$dmax" '$1 == id { print $2 }' "$wlog")" | bc)
    lab_log "RTO (database killed to the first answered query on the DR node): $(echo "$t_query - $t_fail" | bc) s; RPO: $rpo s of committed writes ($(($(tail -n1 "$wlog" | cut -d' ' -f1) - dmax)) rows) lost; $dmax rows on the DR node"
    echo "rto_seconds=$(echo "$t_query - $t_fail" | bc) rpo_seconds=$rpo rows_lost=$(($(tail -n1 "$wlog" | cut -d' ' -f1) - dmax))" >"$R/gd-rto-rpo"
    # the DR node takes writes
    pg_sql "$dsock" 55443 "insert into t select g, clock_timestamp() from generate_series(1000001, 1000100) g"
    # the old primary comes back: its push (without the database hook: its database is
    # down) is refused, fenced
    ip -n primary link set veth-p up
    rc=0
    push gd-fenced "$work/send.toml" || rc=$?
    lab_assert_eq gd-fenced-exit 8 "$rc"
    lab_assert gd-fenced-message jsays gd-fenced "was promoted on the DR node at"
    # failback: demote keeps what the old primary committed after the base
    rc=0
    demote_run gd-demote src/data || rc=$?
    lab_assert_eq gd-demote-exit 0 "$rc"
    aside=$(zfs list -H -o name,fjord:kept_from -d 1 src | awk -F'\t' '$2 ~ /^src\/data@/ { print $1 }' | tail -n1)
    lab_assert gd-demote-kept test -n "$aside"
    lab_assert gd-demote-listed grep -q "as $aside" "$R/gd-demote.out"
    fb_configs
    # the old primary's receiver lets the DR node's switchover promote src/data; the DR
    # node's job stops its database cleanly before the final snapshot
    echo "allow_promote = true" >>"$work/fb-recv.toml"
    printf '[job.hooks]\nstop_writes = ["runuser", "-u", "postgres", "--", "%s/pg_ctl", "-D", "%s", "-m", "fast", "-w", "stop"]\ntimeout = "120s"\n' \
        "$PG_BIN" "$(lab_mountpoint dst/backup/data)/pg/data" >>"$work/fb-send.toml"
    FJORD_LOG=info ip netns exec primary "$recv" serve --config "$work/fb-recv.toml" >>"$R/gd-fb-serve.log" 2>&1 </dev/null &
    local fbpid=$!
    lab_wait_udp primary 7451 90
    rc=0
    ip netns exec dr timeout 600 "$send" push --config "$work/fb-send.toml" --json --force >"$R/gd-back.json" 2>"$R/gd-back.err" || rc=$?
    lab_assert_eq gd-back-exit 0 "$rc"
    # planned switchover, one command on the DR node: stop writes, final push back, promote
    # on the old primary, demote here
    local drows
    drows=$(pg_sql "$dsock" 55443 "select count(*) from t")
    rc=0
    ip netns exec dr timeout 900 "$send" switchover --config "$work/fb-send.toml" --job back --json >"$R/gd-switch.json" 2>"$R/gd-switch.err" || rc=$?
    sed 's/^/    /' "$R/gd-switch.json" "$R/gd-switch.err"
    lab_assert_eq gd-switch-exit 0 "$rc"
    lab_assert_eq gd-switch-steps "stop_writes final_push promote_target demote_source" \
        "$(jq -r '[.steps[] | select(.done) | .step] | join(" ")' "$R/gd-switch.json" 2>/dev/null)"
    lab_assert_eq gd-switch-same-final "$(jq -r .final_snapshot "$R/gd-switch.json" 2>/dev/null)" "$(newest src/data | sed 's/.*@//')"
    lab_assert_eq gd-switch-dr-demoted "on noauto" "$(zfs get -H -o value readonly,canmount dst/backup/data | tr '\n' ' ' | sed 's/ $//')"
    lab_assert gd-switch-dr-marked sh -c "zfs get -H -o value fjord:demoted dst/backup/data | grep -q ' @$(jq -r .final_snapshot "$R/gd-switch.json" 2>/dev/null)\$'"
    lab_assert_eq gd-switch-dr-unfenced "-" "$(zfs get -H -o value fjord:promoted dst/backup/data)"
    rc=0
    ip netns exec dr timeout 600 "$send" switchover --config "$work/fb-send.toml" --job back --json >"$R/gd-switch-again.json" 2>/dev/null || rc=$?
    lab_assert_eq gd-switch-again "0 already_done" "$rc $(jq -r .result "$R/gd-switch-again.json" 2>/dev/null)"
    kill "$fbpid" 2>/dev/null || true
    wait "$fbpid" 2>/dev/null || true
    # The switchover's mount (by the receiver) and unmount (by the sender) ran under `ip netns
    # exec`, which gives each its own mount namespace: repeat them in this one
    zfs unmount dst/backup/data 2>/dev/null || true
    [[ $(zfs get -H -o value mounted src/data) == yes ]] || zfs mount src/data
    [[ $(zfs get -H -o value mounted src/data/child) == yes ]] || zfs mount src/data/child || true
    rc=0
    pg_start "$pdir" "$psock" 55442 >/dev/null || rc=$?
    lab_assert_eq gd-switch-pg-starts 0 "$rc"
    lab_assert_eq gd-switch-zero-loss "$drows" "$(pg_sql "$psock" 55442 "select count(*) from t" 2>>"$R/gd-primary.err" || echo none)"
    lab_assert_eq gd-switch-dr-rows 100 "$(pg_sql "$psock" 55442 "select count(*) from t where id > 1000000" 2>/dev/null || echo none)"
    rc=0
    push gd-after "$work/gd.toml" || rc=$?
    lab_assert_eq gd-after-switchover "0 incremental" "$rc $(jactions gd-after src/data)"
    pg_stop "$pdir" fast
}
# _is_lsn VALUE: a PostgreSQL WAL position (hex/hex)
_is_lsn() { [[ $1 =~ ^[0-9A-F]+/[0-9A-F]+$ ]]; }

# a restore drill with a real PostgreSQL (the host's): its data directory on src/data, 1000
# rows, a push with the PostgreSQL hook, 1000 more rows that never reach the DR node; on the DR
# node fjord-recv drill with check = "postgresql" starts a server on the drill clone (as
# postgres, its own port and socket directory), counts the rows (exactly the snapshot's
# 1000), stops it, destroys the clone; the copy itself is untouched and the record has the WAL
# position
case_drill_pg() {
    [[ -x $PG_BIN/initdb ]] || { lab_fail drill-pg-installed "no PostgreSQL in $PG_BIN"; return 0; }
    start_from golden
    serve_use default
    local rc=0 snap lsn pgdir="$smnt/pg" psock="$work/pg-primary" before t0
    rm -rf "$psock"
    mkdir -p "$pgdir" "$psock"
    chown postgres "$pgdir" "$psock"
    pg_as "$PG_BIN/initdb" -D "$pgdir/data" -A trust >"$R/drill-pg-initdb.log" 2>&1
    pg_start "$pgdir/data" "$psock" 55432 >/dev/null
    pg_sql "$psock" 55432 "create table t (id int primary key); insert into t select generate_series(1, 1000)"
    send_config "$work/pg.toml" "$work/send.key" "properties = true
[job.hooks]
timeout = '120s'
database = 'postgresql'
connection = 'host=$psock port=55432 user=postgres dbname=postgres'"
    push drill-pg-push "$work/pg.toml" || rc=$?
    lab_assert_eq drill-pg-push-exit 0 "$rc"
    snap=$(jjob drill-pg-push snapshot)
    lsn=$(zfs get -H -o value fjord:wal_lsn "dst/backup/data@$snap")
    pg_sql "$psock" 55432 "insert into t select generate_series(1001, 2000)"
    zfs create -o canmount=off -o mountpoint=none dst/drill
    before=$(snaps dst/backup/data)
    t0=$(date +%s.%N)
    rc=0
    "$recv" drill --config "$work/recv-drill-pg.toml" --json >"$R/drill-pg.json" 2>"$R/drill-pg.err" || rc=$?
    lab_log "drill with PostgreSQL took $(echo "$(date +%s.%N) - $t0" | bc) s"
    sed 's/^/    /' "$R/drill-pg.json" "$R/drill-pg.err"
    lab_assert_eq drill-pg-exit "0 ok $snap $lsn" \
        "$rc $(jq -r '[.result, .plan.snapshot, .plan.log_position.value] | join(" ")' "$R/drill-pg.json" 2>/dev/null)"
    lab_assert_eq drill-pg-rows-of-the-snapshot 1000 "$(jq -r '.output_tail' "$R/drill-pg.json" 2>/dev/null | grep -v '^$' | tail -n1)"
    lab_assert_eq drill-pg-clone-gone "" "$(scratch_children)"
    lab_assert_eq drill-pg-copy-untouched "$before" "$(snaps dst/backup/data)"
    lab_assert drill-pg-copy-inert inert dst/backup/data
    # ([p]: the pattern must not match the sh -c that runs pgrep)
    lab_assert drill-pg-no-server-left sh -c "! pgrep -f '[p]ostgres.*-p 55433' >/dev/null"
    pg_as "$PG_BIN/pg_ctl" -D "$pgdir/data" -m fast -w stop >/dev/null || true
}

# restore drills on the DR node (fjord-recv drill, recv-drill.toml): from golden, the scratch
# dataset dst/drill; a leftover clone of an "interrupted" drill; --dry-run changes nothing; the
# drill's check compares the clone's file hashes with the source's (sha256sum -c) and passes;
# the clone is gone after it; a failing check is recorded failed, its clone destroyed too;
# fjord-recv status --json / --check / --metrics-file show the last drill
# drill_run NAME ARGS...: fjord-recv drill on the DR node; $R/NAME.json (stdout), .err, .rc
drill_run() {
    local name=$1 rc=0
    shift
    "$recv" drill --config "$work/recv-drill.toml" --json "$@" >"$R/$name.json" 2>"$R/$name.err" || rc=$?
    echo "$rc" >"$R/$name.rc"
    lab_log "drill $name exit $rc"
    sed 's/^/    /' "$R/$name.json" "$R/$name.err"
    return "$rc"
}
# jdrill NAME JQ: a value of the drill's JSON
jdrill() { jq -r "$2 | tostring" "$R/$1.json" 2>/dev/null || true; }
# scratch_children: the file systems under dst/drill (none when only the parent is there)
scratch_children() { { zfs list -H -o name -r -t filesystem dst/drill 2>/dev/null || true; } | grep -v '^dst/drill$' | tr '\n' ' '; }
case_drill() {
    start_from golden
    local rc=0 snap leftover before bad
    zfs create -o canmount=off -o mountpoint=none dst/drill
    # the hashes of the source's own files (not the child's), as the check compares them
    (cd "$smnt" && find . -xdev -type f | sort | xargs sha256sum) >"$work/drill-sums"
    lab_log "drill: $(wc -l <"$work/drill-sums") files to compare"
    snap=$(newest dst/backup/data)
    before=$(snaps dst/backup/data)
    leftover=dst/drill/fjord-drill-dst_backup_data-20260101T000000Z
    zfs clone -o canmount=noauto -o fjord:drill="$snap 2026-01-01T00:00:00Z" "$snap" "$leftover"
    rc=0
    "$recv" check-config --config "$work/recv-drill.toml" >"$R/drill-check-config.out" 2>&1 || rc=$?
    lab_assert_eq drill-check-config 0 "$rc"
    rc=0
    drill_run drill-dry --dry-run || rc=$?
    lab_assert_eq drill-dry-exit "0 planned ${snap#*@} $leftover" \
        "$rc $(jdrill drill-dry .result) $(jdrill drill-dry .plan.snapshot) $(jdrill drill-dry '.plan.leftovers[0]')"
    lab_assert_eq drill-dry-nothing-done "$leftover " "$(scratch_children)"
    rc=0
    drill_run drill-ok || rc=$?
    lab_assert_eq drill-ok-exit "0 ok" "$rc $(jdrill drill-ok .result)"
    lab_assert_eq drill-ok-steps "destroy_leftover clone mount check destroy" \
        "$(jq -r '[.steps[] | select(.ok) | .action] | join(" ")' "$R/drill-ok.json" 2>/dev/null)"
    lab_assert drill-ok-compared jq -e '.output_tail | test(": OK\n") and (test("FAILED") | not)' "$R/drill-ok.json"
    lab_assert_eq drill-ok-clone-gone "" "$(scratch_children)"
    lab_assert drill-ok-recorded grep -q '"result": "ok"' "$work/drill-state/drill/dst@backup@data.json"
    rc=0
    "$recv" status --config "$work/recv-drill.toml" --check --warn-age 1d --crit-age 2d >"$R/drill-status-ok.out" 2>/dev/null || rc=$?
    lab_assert_eq drill-status-check-ok 0 "$rc"
    lab_assert drill-status-check-ok-line grep -q '^FJORD-DR OK.*1 drills ok' "$R/drill-status-ok.out"
    # a failing check: the clone's first file against a hash it does not have
    bad=$(echo tampered | sha256sum | cut -c1-64)
    sed "1s/^[0-9a-f]\{64\}/$bad/" "$work/drill-sums" >"$work/drill-sums-bad"
    rc=0
    drill_run drill-fail dst/backup/data --check "cd \"\$FJORD_DRILL_MOUNTPOINT\" && sha256sum -c $work/drill-sums-bad" || rc=$?
    lab_assert_eq drill-fail-exit "4 failed" "$rc $(jdrill drill-fail .result)"
    lab_assert drill-fail-says-why jq -e '.output_tail | test(": FAILED\n")' "$R/drill-fail.json"
    lab_assert_eq drill-fail-clone-gone "" "$(scratch_children)"
    lab_assert drill-fail-destroyed jq -e '[.steps[] | select(.action == "destroy" and .ok)] | length == 1' "$R/drill-fail.json"
    rc=0
    "$recv" status --config "$work/recv-drill.toml" --json >"$R/drill-status.json" 2>"$R/drill-status.err" || rc=$?
    lab_assert_eq drill-status-json "0 failed warning true" \
        "$rc $(jq -r '.[] | select(.dataset == "dst/backup/data") | [.drill.last.result, .drill.health, (.drill.last.last_success_at != null)] | map(tostring) | join(" ")' "$R/drill-status.json" 2>/dev/null)"
    rc=0
    "$recv" status --config "$work/recv-drill.toml" --check --warn-age 1d --crit-age 2d \
        --metrics-file "$R/drill.prom" >"$R/drill-status-warn.out" 2>/dev/null || rc=$?
    lab_assert_eq drill-status-check-warning 1 "$rc"
    lab_assert drill-status-check-names grep -q 'drills: dst/backup/data: the last drill failed' "$R/drill-status-warn.out"
    lab_assert drill-metrics grep -q '^fjord_recv_drill_last_result{dataset="dst/backup/data",result="failed"} 1' "$R/drill.prom"
    lab_assert drill-metrics-success grep -q '^fjord_recv_drill_last_success_timestamp_seconds{dataset="dst/backup/data"} [0-9]' "$R/drill.prom"
    lab_assert_eq drill-copy-untouched "$before" "$(snaps dst/backup/data)"
    lab_assert drill-copy-inert inert dst/backup/data
}

# jremoved NAME FIELD: FIELD of each copy in the job's "removed" (children destroyed on the
# primary), joined by spaces
jremoved() {
    jq -r --arg f "$2" 'select(.type == "job") | [.removed[]? | .[$f] | tostring] | join(" ")' \
        "$R/$1.json" 2>/dev/null | head -n1 || true
}
# parent_inert DATASET: a parent the DR node created: never mounted, read-only
parent_inert() {
    [[ $(zfs get -H -o value canmount,readonly,mounted "$1" | tr '\n' ' ') == "off on no " ]]
}

# whole trees: a tree three levels deep with a new child (full, then incremental), a child
# destroyed on the primary (reported and kept by default, destroyed under a receiver config
# that grants allow_destroy_removed), and a target whose parents do not exist (created inert)
case_tree() {
    start_from golden
    serve_use default
    local rc=0
    zfs create src/data/child/deep
    zfs create src/data/gone
    lab_fill "$cmnt/deep" 23 256K >/dev/null
    push tree-new "$work/send.toml" || rc=$?
    lab_assert_eq tree-new-exit 0 "$rc"
    lab_assert_eq tree-new-full "ok full ok full" \
        "$(jds tree-new src/data/child/deep result) $(jactions tree-new src/data/child/deep) $(jds tree-new src/data/gone result) $(jactions tree-new src/data/gone)"
    local s
    s=$(newest src/data/child/deep)
    lab_assert_eq tree-deep-guid "$(lab_guid "$s")" "$(lab_guid "dst/backup/${s#src/}" 2>/dev/null || echo none)"
    # the child goes on the primary; the new one changes
    destroy_tree src/data/gone
    lab_fill "$cmnt/deep/more" 24 128K >/dev/null
    rc=0
    push tree-removed "$work/send.toml" || rc=$?
    lab_assert_eq tree-removed-exit 0 "$rc"
    lab_assert_eq tree-deep-incremental "ok incremental" \
        "$(jds tree-removed src/data/child/deep result) $(jactions tree-removed src/data/child/deep)"
    lab_assert_eq tree-removed-reported "dst/backup/data/gone false" \
        "$(jremoved tree-removed target) $(jremoved tree-removed destroyed)"
    lab_assert tree-removed-says-grant jsays tree-removed allow_destroy_removed
    lab_assert tree-removed-kept zfs list -H dst/backup/data/gone
    ip netns exec primary "$send" status --config "$work/send.toml" >"$R/tree-status.txt" 2>&1 || true
    lab_assert tree-status-warning grep -q 'warning: dst/backup/data/gone: its source was destroyed' "$R/tree-status.txt"
    # a receiver that grants it (and min_age 0: the copy's snapshots are seconds old)
    serve_use tree-destroy
    rc=0
    push tree-destroyed "$work/send.toml" || rc=$?
    lab_assert_eq tree-destroyed-exit 0 "$rc"
    lab_assert_eq tree-destroyed-reported "dst/backup/data/gone true" \
        "$(jremoved tree-destroyed target) $(jremoved tree-destroyed destroyed)"
    lab_assert tree-destroyed-gone sh -c '! zfs list -H dst/backup/data/gone 2>/dev/null'
    lab_assert tree-destroyed-rest-kept zfs list -H dst/backup/data/child/deep
    # a target whose parents do not exist: created inert under the client's prefix
    send_config "$work/nested.toml" "$work/send.key" "" "$work/state-nested"
    sed -i 's|^target_dataset = .*|target_dataset = "dst/backup/nested/site/data"|' "$work/nested.toml"
    rm -rf "$work/state-nested" && mkdir -p "$work/state-nested"
    rc=0
    push tree-nested "$work/nested.toml" || rc=$?
    lab_assert_eq tree-nested-exit 0 "$rc"
    lab_assert tree-nested-parent-inert parent_inert dst/backup/nested
    lab_assert tree-nested-site-inert parent_inert dst/backup/nested/site
    s=$(newest src/data/child/deep)
    lab_assert_eq tree-nested-guid "$(lab_guid "$s")" \
        "$(lab_guid "dst/backup/nested/site/${s#src/}" 2>/dev/null || echo none)"
    destroy_tree dst/backup/nested
}

# ---------------------------------------------------------------- fan-out and snapshot-only

fmnt=/tmp/mnt-src/src/fan
export fmnt
# fan_config FILE: the job "fan" (src/fan) to two DR nodes: "dr" (the receiver of every case,
# over WireGuard) and "dr2" (the third namespace, plain veth); source retention hourly = 2
fan_config() {
    cat >"$1" <<EOF
key = "$work/send.key"
state_dir = "$work/state-fan"

[[job]]
name = "fan"
source = "src/fan"
grace = "5s"
idle_timeout = "3s"

[job.retention.source]
hourly = 2

[[job.target]]
name = "dr"
host = "$LAB_DR_WG_IP:7450"
key = "$rpub"
dataset = "dst/backup/fan"

[[job.target]]
name = "dr2"
host = "$LAB_DR2_IP:7450"
key = "$rpub2"
dataset = "dst/dr2/fan"
EOF
}
# serve2_start / serve2_stop: the second DR node's fjord-recv serve, in dr2
serve2_start() {
    FJORD_LOG=info ip netns exec dr2 "$recv" serve --config "$work/recv-dr2.toml" \
        >>"$R/serve2.log" 2>&1 </dev/null &
    echo $! >"$work/serve2.pid"
    lab_wait_udp dr2 7450 90
}
serve2_stop() {
    local pid
    pid=$(cat "$work/serve2.pid" 2>/dev/null || true)
    [[ $pid =~ ^[1-9][0-9]*$ ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    timeout 30 tail --pid="$pid" -f /dev/null || kill -KILL "$pid" 2>/dev/null || true
    rm -f "$work/serve2.pid"
}
# jtarget NAME TARGET FIELD: FIELD of TARGET in the job object's targets
jtarget() {
    jq -r --arg t "$2" --arg f "$3" 'select(.type == "job") | .targets[]? | select(.name == $t)
        | .[$f] | tostring' "$R/$1.json" 2>/dev/null | head -n1 || true
}
# jtsteps NAME TARGET FIELD: FIELD of each step of TARGET's dataset object, comma-separated
jtsteps() {
    jq -r --arg t "$2" --arg f "$3" 'select(.type == "dataset" and .target_name == $t)
        | [.steps[]? | .[$f] | tostring] | join(",")' "$R/$1.json" 2>/dev/null | head -n1 || true
}
# held_by SNAPSHOT TAG
held_by() { zfs holds -H "$1" 2>/dev/null | cut -f2 | grep -qx "$2"; }
# next_second: snapshot names have a resolution of a second; two pushes never share one
next_second() { lab_wait 5 "the next second" _past "$(date +%s)"; }
_past() { (($(date +%s) > $1)); }

case_fanout() {
    serve_use default
    local rc i base s
    serve2_stop
    destroy_tree src/fan
    destroy_tree dst/backup/fan
    destroy_tree dst/dr2
    zfs create dst/dr2
    zfs create src/fan
    lab_fill "$fmnt" 51 256K >/dev/null
    rm -rf "$work/state-fan" && mkdir -p "$work/state-fan"
    lab_topology_dr2
    rpub2=$("$recv" keygen --key "$work/recv2.key")
    sed -e "s|^listen = .*|listen = \"$LAB_DR2_IP:7450\"|" \
        -e "s|^key = \"$work/recv.key\"|key = \"$work/recv2.key\"|" \
        -e "s|$work/chunks|$work/chunks2|" -e 's|prefixes = \["dst/backup"\]|prefixes = ["dst/dr2"]|' \
        "$work/recv-default.toml" >"$work/recv-dr2.toml"
    fan_config "$work/fan.toml"
    serve2_start
    rc=0
    push fan-first "$work/fan.toml" || rc=$?
    lab_assert_eq fan-first-exit 0 "$rc"
    lab_assert_eq fan-first-targets "ok ok" "$(jtarget fan-first dr result) $(jtarget fan-first dr2 result)"
    base=$(newest src/fan)
    lab_assert_eq fan-first-dr-guid "$(lab_guid "$base")" "$(lab_guid "dst/backup/fan@${base#*@}" 2>/dev/null || echo none)"
    lab_assert_eq fan-first-dr2-guid "$(lab_guid "$base")" "$(lab_guid "dst/dr2/fan@${base#*@}" 2>/dev/null || echo none)"
    lab_assert fan-held-per-target sh -c "held() { zfs holds -H '$base' | cut -f2 | grep -qx \"\$1\"; }; held fjord-fan-dr && held fjord-fan-dr2"
    # dr2 goes offline for three pushes while the source's retention runs
    serve2_stop
    for i in 1 2 3; do
        next_second
        lab_mutate "$fmnt" $((52 + i)) 64K >/dev/null
        rc=0
        push "fan-offline-$i" "$work/fan.toml" || rc=$?
        lab_assert_eq "fan-offline-$i-exit" 4 "$rc"
        lab_assert_eq "fan-offline-$i-targets" "ok failed" \
            "$(jtarget "fan-offline-$i" dr result) $(jtarget "fan-offline-$i" dr2 result)"
        lab_assert "fan-offline-$i-base-held" held_by "$base" fjord-fan-dr2
    done
    lab_log "source after dr2's absence: $(snaps src/fan)"
    lab_assert fan-offline-names-target grep -q 'target dr2' "$R/fan-offline-3.err"
    lab_assert fan-offline-pruned sh -c "[ \$(zfs list -H -t snapshot -d 1 -o name src/fan | wc -l) -le 3 ]"
    lab_assert fan-offline-base-kept zfs list "$base"
    s=$(newest src/fan)
    lab_assert_eq fan-offline-dr-current "$(lab_guid "$s")" "$(lab_guid "dst/backup/fan@${s#*@}" 2>/dev/null || echo none)"
    # dr2 back: one incremental from its own base, no full
    serve2_start
    next_second
    rc=0
    push fan-back "$work/fan.toml" || rc=$?
    lab_assert_eq fan-back-exit 0 "$rc"
    lab_assert_eq fan-back-dr2-incremental "incremental ${base#*@}" \
        "$(jtsteps fan-back dr2 action) $(jtsteps fan-back dr2 from)"
    s=$(newest src/fan)
    lab_assert_eq fan-back-dr-guid "$(lab_guid "$s")" "$(lab_guid "$(newest dst/backup/fan)" 2>/dev/null || echo none)"
    lab_assert_eq fan-back-dr2-guid "$(lab_guid "$s")" "$(lab_guid "$(newest dst/dr2/fan)" 2>/dev/null || echo none)"
    serve2_stop
    ip netns del dr2 2>/dev/null || true
    destroy_tree dst/dr2
    destroy_tree dst/backup/fan
    destroy_tree src/fan
}

# a job with no target: snapshots and source retention only (hourly = 2 over two old
# hours' snapshots: the older one goes, the pushes' newest stays)
case_snaponly() {
    local rc i
    destroy_tree src/snap
    zfs create src/snap
    rm -rf "$work/state-snap" && mkdir -p "$work/state-snap"
    zfs snapshot src/snap@fjord_2026-01-01T000000Z
    zfs snapshot src/snap@fjord_2026-01-01T010000Z
    cat >"$work/snap.toml" <<EOF
key = "$work/send.key"
state_dir = "$work/state-snap"

[[job]]
name = "snap"
source = "src/snap"

[job.retention.source]
hourly = 2
EOF
    for i in 1 2; do
        next_second
        rc=0
        push "snaponly-$i" "$work/snap.toml" || rc=$?
        lab_assert_eq "snaponly-$i-exit" 0 "$rc"
        lab_assert_eq "snaponly-$i-json" "true ok" "$(jjob "snaponly-$i" snapshot_only) $(jjob "snaponly-$i" result)"
    done
    lab_log "snapshot-only source: $(snaps src/snap)"
    lab_assert snaponly-old-pruned sh -c '! zfs list src/snap@fjord_2026-01-01T000000Z 2>/dev/null'
    lab_assert snaponly-newest-kept zfs list "src/snap@$(jjob snaponly-2 snapshot)"
    ip netns exec primary "$send" status --config "$work/snap.toml" --check >"$R/snaponly-check.txt" 2>&1 || true
    lab_assert snaponly-check-ok grep -q 'FJORD-SEND OK' "$R/snaponly-check.txt"
    destroy_tree src/snap
}

# ---------------------------------------------------------------- the Quick start
# The README's Quick start, word for word, with the package built from these binaries and
# installed with dpkg -i in the VM (/usr is a writable overlay there): pools named as in the
# examples (tank, backup), the example configs with only the edits the README's comments
# name, the receiver started as fjord-recv.service starts it (its ExecStartPre and
# ExecStart, as User=fjord with no capability: the lab VM has no systemd), a dry run and the
# first push from the primary, and the DR node's own status of the copy.

# quickstart_lines: the Quick start's commands, comments cut off
quickstart_lines() {
    sed -n '/^## Quick start$/,/^## Commands$/p' "$LAB_REPO/README.md" |
        sed -n 's/^    \(.*[^ ]\) *# .*$/\1/p; t; s/^    \([^ ].*\)$/\1/p' | sed 's/ *$//'
}
# quickstart_edit LINE: the edits the README's comment on LINE asks for
quickstart_edit() {
    case $1 in
    "cp /usr/share/doc/fjord/examples/recv.toml /etc/fjord/recv.toml")
        # the client's key: the sender's public key (the example's listen and prefixes fit)
        sed -i "0,/^key = \"BASE64PUBKEY=\"/s||key = \"$(fjord-send pubkey --key /etc/fjord/send.key)\"|" /etc/fjord/recv.toml
        ;;
    "cp /usr/share/doc/fjord/examples/send.toml /etc/fjord/send.toml")
        sed -i "s|^target_key = \"BASE64PUBKEY=\"|target_key = \"$(fjord-recv pubkey --key /etc/fjord/recv.key)\"|" /etc/fjord/send.toml
        ;;
    esac
}
# quickstart_serve: what `systemctl enable --now fjord-recv` starts, from the installed unit
quickstart_serve() {
    local unit=/lib/systemd/system/fjord-recv.service pre start env
    pre=$(sed -n 's/^ExecStartPre=//p' "$unit")
    start=$(sed -n 's/^ExecStart=//p' "$unit")
    env=$(sed -n 's/^Environment=//p' "$unit")
    [[ -n $pre && -n $start ]] || return 1
    # shellcheck disable=SC2086 # the unit's command lines are words
    ip netns exec dr $as_fjord env $env $pre || return 1
    # shellcheck disable=SC2086
    ip netns exec dr $as_fjord env $env $start >>"$R/quickstart-serve.log" 2>&1 </dev/null &
    echo $! >"$work/quickstart-serve.pid"
    lab_wait_udp dr 7450 90
}
case_quickstart() {
    serve_stop
    local deb rc=0 line side=primary n=0 failed=""
    rm -rf "$work/deb"
    deb=$(DEBFULLNAME="fjord lab" DEBEMAIL=lab@fjord.test "$LAB_REPO/scripts/deb" \
        --bin-dir "$(dirname "$recv")" --out "$work/deb" --fast 2>"$R/quickstart-deb.err" | tail -n1)
    lab_assert quickstart-package test -f "$deb"
    fjord_account
    # man-db's trigger rebuilds its index, minutes under emulation (the man pages themselves
    # are checked by tests/deb.rs); its own switch to skip that
    rm -f /var/lib/man-db/auto-update
    dpkg -i "$deb" >"$R/quickstart-dpkg.log" 2>&1 || rc=$?
    lab_assert_eq quickstart-dpkg-install 0 "$rc"
    # the package's /usr/lib/sysctl.d/60-fjord.conf, applied by postinst: the caps fjord's
    # 4 MiB socket buffers need (README "Socket buffers")
    lab_assert_eq quickstart-udp-buffer-caps "4194304 4194304" \
        "$(sysctl -n net.core.rmem_max) $(sysctl -n net.core.wmem_max)"
    lab_pools tank backup
    zfs create tank/home
    lab_fill "$(lab_mountpoint tank/home)" 31 1M >/dev/null
    # udev's rule (90-zfs.rules) makes /dev/zfs 0666 on a real system; the lab has no udev
    chmod 0666 /dev/zfs
    : >"$R/quickstart.log"
    while IFS= read -r line; do
        n=$((n + 1))
        case $line in
        "fjord-recv keygen"*) side=dr ;;
        "cp /usr/share/doc/fjord/examples/send.toml"*) side=primary ;;
        esac
        echo "=== [$side] $line" >>"$R/quickstart.log"
        rc=0
        case $line in
        "systemctl enable --now fjord-recv") quickstart_serve >>"$R/quickstart.log" 2>&1 || rc=$? ;;
        # no systemd in the VM: the timer's unit is checked by systemd-analyze in tests/deb.rs
        "systemctl enable --now fjord-push.timer") continue ;;
        *)
            ip netns exec "$side" bash -c "$line" >>"$R/quickstart.log" 2>&1 || rc=$?
            quickstart_edit "$line"
            ;;
        esac
        echo "=== exit $rc" >>"$R/quickstart.log"
        ((rc == 0)) || failed+="$n: $line (exit $rc); "
    done < <(quickstart_lines)
    lab_assert_eq quickstart-lines "13 " "$n $failed"
    lab_assert quickstart-dry-run-reached-zfs grep -q '^home: would: tank/home -> backup/oslo/home: full @fjord_' "$R/quickstart.log"
    local snap
    snap=$(zfs list -H -t snapshot -o name -s createtxg tank/home 2>/dev/null | tail -n1)
    lab_assert quickstart-replicated test -n "$snap"
    lab_assert_eq quickstart-copy "${snap#*@}" \
        "$(zfs list -H -t snapshot -o name -s createtxg backup/oslo/home 2>/dev/null | tail -n1 | cut -d@ -f2)"
    lab_assert quickstart-copy-inert inert backup/oslo/home
    lab_assert_eq quickstart-serve-user fjord "$(ps -o user= -p "$(cat "$work/quickstart-serve.pid")" | tr -d ' ')"
    lab_assert quickstart-buffers-granted bash -c "! grep -q 'granted UDP buffers' '$R/quickstart-serve.log' '$R/quickstart.log'"
    rc=0
    fjord-recv status --config /etc/fjord/recv.toml --check >"$R/quickstart-status.out" 2>&1 || rc=$?
    lab_assert_eq quickstart-dr-status 0 "$rc"
    kill "$(cat "$work/quickstart-serve.pid")" 2>/dev/null || true
    tail --pid="$(cat "$work/quickstart-serve.pid")" -f /dev/null &
    wait $! || true
    lab_destroy_pools tank backup
}

# zd_devices: the volumes' block devices (/dev/zdN), by /sys/block: the lab VM has no udev,
# so no /dev/zvol links
zd_devices() { find /sys/block -maxdepth 1 -name 'zd*' -printf '/dev/%f\n' 2>/dev/null | sort -V; }
_zd_count_is() { [[ $(zd_devices | grep -c .) -eq $1 ]]; }

# zvol: a volume replicates (zvols are what VM disks are): zfs recv refuses the file system
# part of the inert set for a volume, so the receiver gives it readonly=on and volmode=none
# (no device node on the DR node) instead; incremental pushes follow; a promotion gives the
# device back, with the primary's bytes
case_zvol() {
    start_from golden
    serve_use default
    local rc=0 snap src_dev dr_dev
    zfs create -V 8M -o volblocksize=16K src/vm
    send_config "$work/vm.toml" "$work/send.key" ""
    sed -i -e 's#^name = "data"#name = "vm"#' -e 's#^source = "src/data"#source = "src/vm"#' \
        -e 's#^recursive = true#recursive = false#' \
        -e 's#^target_dataset = "dst/backup/data"#target_dataset = "dst/backup/vm"#' "$work/vm.toml"
    lab_wait 30 "the source volume's device" _zd_count_is 1 || true
    src_dev=$(zd_devices | head -n1)
    lab_assert zvol-source-device test -b "$src_dev"
    head -c 3M /dev/urandom | dd of="$src_dev" bs=1M conv=fsync status=none || true
    push zvol-full "$work/vm.toml" || rc=$?
    lab_assert_eq zvol-full "0 ok full" "$rc $(jds zvol-full src/vm result) $(jactions zvol-full src/vm)"
    lab_assert_eq zvol-type volume "$(zfs get -H -o value type dst/backup/vm 2>/dev/null)"
    lab_assert_eq zvol-inert "on local none local" \
        "$(zfs get -H -o value,source readonly,volmode dst/backup/vm 2>/dev/null | tr '\t\n' '  ' | sed 's/ $//')"
    lab_assert zvol-no-device _zd_count_is 1
    head -c 1M /dev/urandom | dd of="$src_dev" bs=1M seek=5 conv=fsync status=none || true
    rc=0
    push zvol-incr "$work/vm.toml" || rc=$?
    lab_assert_eq zvol-incr "0 ok incremental" "$rc $(jds zvol-incr src/vm result) $(jactions zvol-incr src/vm)"
    snap=$(newest src/vm)
    lab_assert_eq zvol-guid "$(zfs get -H -o value guid "$snap")" \
        "$(zfs get -H -o value guid "dst/backup/vm@${snap#*@}" 2>/dev/null)"
    rc=0
    promote_run zvol-promote dst/backup/vm || rc=$?
    lab_assert_eq zvol-promote-exit 0 "$rc"
    lab_assert_eq zvol-promoted "off default" \
        "$(zfs get -H -o value readonly,volmode dst/backup/vm 2>/dev/null | tr '\n' ' ' | sed 's/ $//')"
    lab_wait 30 "the promoted volume's device" _zd_count_is 2 || true
    dr_dev=$(zd_devices | grep -vx -- "$src_dev" | head -n1)
    lab_assert_eq zvol-promoted-bytes "$(sha256sum <"$src_dev")" "$(sha256sum <"${dr_dev:-/nonexistent}" 2>/dev/null)"
}

CASES=(full dry-run incremental flaps kill9-resume sigterm-stale diverged attack retention
    access evil overlap locked state-dir dedup status-metrics dr-status recv-prune
    recv-as-fjord-user promote reload tripwire drill failback gameday-pg tree fidelity zvol
    fanout snaponly quickstart)

# case_run NAME: the case's function in a child bash (set -e, its own timeout); one failure
# never stops the others
case_main() {
    set -euo pipefail
    trap _case_cleanup EXIT
    "case_${1//-/_}"
}
# _case_cleanup: end what the case left running in the background (a push, the flaps), but
# not the receiver
_case_cleanup() {
    local p
    for p in $(jobs -p); do
        [[ $p == "$(serve_pid)" ]] && continue
        [[ $p =~ ^[1-9][0-9]*$ ]] || continue
        pkill -TERM -P "$p" 2>/dev/null || true
        kill "$p" 2>/dev/null || true
    done
}
FAILED=()
case_run() {
    local name=$1 t=${2:-600} before after rc=0
    before=$(grep -c '^ASSERT [^ ]* fail' "$R/results.txt" 2>/dev/null || true)
    echo "==================== case $name"
    lab_step --timeout "$t" "case-$name" case_main "$name" || rc=$?
    after=$(grep -c '^ASSERT [^ ]* fail' "$R/results.txt" 2>/dev/null || true)
    if ((rc == 0 && ${after:-0} == ${before:-0})); then
        echo "CASE $name PASS"
        lab_pass "case-$name"
    else
        echo "CASE $name FAIL (exit $rc, $((${after:-0} - ${before:-0})) failed assertions)"
        lab_fail "case-$name" "exit $rc, $((${after:-0} - ${before:-0})) failed assertions"
        FAILED+=("$name")
    fi
    # golden state: taken once the first case has replicated src/data
    if [[ $name == full && ! -f $work/golden.ok ]]; then
        lab_step golden golden_take || true
    fi
}

# ---------------------------------------------------------------- shared setup

lab_step topology lab_topology
lab_step pools lab_pools src dst
zfs create dst/backup

spub=$("$send" keygen --key "$work/send.key")
opub=$("$send" keygen --key "$work/other.key")
"$send" keygen --key "$work/stranger.key" >/dev/null
rpub=$("$recv" keygen --key "$work/recv.key")
export spub opub rpub

recv_config default "" ""
recv_config rollback "" "allow_rollback = true"
recv_config rollback-now 'min_age = "0s"' "allow_rollback = true"
recv_config prune 'min_age = "0s"' "allow_rollback = true
allow_prune = true"
# recv-tree-destroy.toml: the primary may have copies of children destroyed on it destroyed
recv_config tree-destroy 'min_age = "0s"' "allow_destroy_removed = true"
recv_config dr-retention 'min_age = "0s"
[retention]
hourly = 2' ""
# recv-tripwire.toml: the default receiver keeping its own ransomware tripwire (state_dir)
recv_config tripwire "state_dir = \"$work/dr-state\"
[tripwire]
min_history = 2
min_bytes = '256K'" ""
# recv-drill.toml: the default receiver with restore drills of dst/backup/data into dst/drill;
# the check compares the clone's files with the source's hashes ($work/drill-sums)
recv_config drill "[drill]
scratch = \"dst/drill\"
mount_dir = \"$work/drill-mnt\"
state_dir = \"$work/drill-state\"
timeout = \"60s\"
check = [\"/bin/sh\", \"-c\", 'cd \"\$FJORD_DRILL_MOUNTPOINT\" && sha256sum -c $work/drill-sums']

[[drill.target]]
dataset = \"dst/backup/data\"" ""
# recv-drill-pg.toml: the drill of dst/backup/data with the built-in PostgreSQL check
recv_config drill-pg "[drill]
scratch = \"dst/drill\"
mount_dir = \"$work/drill-mnt\"
state_dir = \"$work/drill-state\"
timeout = \"300s\"

[[drill.target]]
dataset = \"dst/backup/data\"
check = \"postgresql\"
data_dir = \"pg/data\"
port = 55433
query = \"select count(*) from t\"
pg_bin = \"$PG_BIN\"" ""
send_config "$work/send.toml" "$work/send.key" ""
send_config "$work/slow.toml" "$work/send.key" 'bwlimit = "1M"'
send_config "$work/stranger.toml" "$work/stranger.key" ""
send_config "$work/other.toml" "$work/other.key" ""
send_config "$work/tripwire.toml" "$work/send.key" "[job.tripwire]
min_history = 2
min_bytes = '256K'
pause_pruning = true"
# hooks.toml: the job with hooks (a stand-in psql that prints a WAL position) and zfs send -p
printf '#!/bin/sh\necho "$*" >>"%s"\necho 0/16B3F40\n' "$work/psql.args" >"$work/fake-psql"
chmod 755 "$work/fake-psql"
send_config "$work/hooks.toml" "$work/send.key" "properties = true
[job.hooks]
pre_snapshot = ['/bin/sh', '-c', 'echo pre >>$work/hooks.log']
post_snapshot = ['/bin/sh', '-c', 'echo post \$FJORD_SNAPSHOT >>$work/hooks.log']
timeout = '20s'
database = 'postgresql'
psql = '$work/fake-psql'"
: >"$R/serve.log"

# LAB_CASES="full dr-status": run only these (by hand, while working on a case; "full"
# makes the golden state the others start from)
if [[ -n ${LAB_CASES:-} ]]; then
    read -r -a CASES <<<"$LAB_CASES"
fi
t_all=$SECONDS
# case_timeout NAME: seconds a case may take (the game day runs a database, three pushes, a
# drill, a failover, a failback and a switchover; under emulation with other VMs on the
# cores it took 400 to over 600 s)
case_timeout() {
    case $1 in
    gameday-pg) echo 1500 ;;
    failback) echo 900 ;;
    *) echo 600 ;;
    esac
}
for c in "${CASES[@]}"; do
    case_run "$c" "$(case_timeout "$c")"
done

serve_stop
echo "==================== cases: ${#CASES[@]} run, ${#FAILED[@]} failed ($((SECONDS - t_all)) s)"
for c in "${CASES[@]}"; do
    if [[ " ${FAILED[*]} " == *" $c "* ]]; then echo "CASE $c FAIL"; else echo "CASE $c PASS"; fi
done
lab_summary
