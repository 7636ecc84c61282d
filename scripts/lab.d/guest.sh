#!/usr/bin/env bash
# Guest-side wrapper, started by `scripts/lab run` inside the VM:
#   guest.sh RESULTS_DIR SCENARIO_SCRIPT
# Sends all output to RESULTS_DIR/log, loads zfs, runs the scenario under a timeout and
# writes its exit status to RESULTS_DIR/status (absent status = the VM failed).
set -uo pipefail

results=$1
scenario=$2
exec >"$results/log" 2>&1 </dev/null

now() { date +%s.%N; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
finish() {
    echo "guest_scenario_end_epoch=$(now)" >>"$results/timing"
    echo "$1" >"$results/status.tmp"
    mv "$results/status.tmp" "$results/status"
    sync
    echo "guest: scenario exit status $1"
    exit 0
}

echo "guest: kernel $(uname -r), uptime $(uptime_s) s, $(nproc) cpus, $(free -m | awk '/^Mem:/ { print $2 }') MiB"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LAB_RESULTS=$results
export LAB_LIB
LAB_LIB=$(dirname "$(realpath "$0")")/lib.sh

if ! timeout 120 modprobe zfs; then
    echo "guest: FATAL: 'modprobe zfs' failed on kernel $(uname -r):"
    echo "guest: is the zfs dkms module built for it? (ls /lib/modules/$(uname -r)/updates/dkms)"
    ls "/lib/modules/$(uname -r)/updates/dkms" || true
    finish 97
fi
echo "guest: zfs $(cat /sys/module/zfs/version 2>/dev/null), uptime $(uptime_s) s"

# Writable working directory for scenarios (/tmp is a throw-away overlay in the guest).
mkdir -p /tmp/lab
cd /tmp/lab || finish 96

echo "guest_scenario_start_epoch=$(now)" >>"$results/timing"
echo "guest_scenario_start_uptime=$(uptime_s)" >>"$results/timing"
echo "guest: ==== scenario $scenario"
rc=0
timeout --kill-after=20 "${LAB_SCENARIO_TIMEOUT:-1500}" bash "$scenario" || rc=$?
if ((rc == 124)); then
    echo "guest: scenario TIMED OUT after ${LAB_SCENARIO_TIMEOUT:-1500}s"
fi
echo "guest: ==== scenario done, rc=$rc, uptime $(uptime_s) s"
finish "$rc"
