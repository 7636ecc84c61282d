#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Quickest lab health check: zfs loaded, a pool on a file vdev, WireGuard and netem present.
#   scripts/lab run scripts/lab.d/check.sh
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$(realpath "$0")")/lib.sh"

zfs version
lab_step pool lab_pools src
lab_assert pool-online test "$(zpool list -H -o health src)" = ONLINE
lab_assert wireguard-module modprobe wireguard
lab_assert netem-module modprobe sch_netem
lab_destroy_pools src
lab_summary
