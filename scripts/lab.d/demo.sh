#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# The README's demo, inside the lab VM: a primary and a DR node over WireGuard, `fjord-recv
# serve` on the DR side, `fjord-send push` twice with changes between, the link flapped
# during the second push, then a third push of a copied file that the DR node's chunk cache
# already holds. Prints what happened: snapshots on both sides, bytes sent and re-sent, and
# the data compared file by file.
#   LAB_FJORD_SEND=… LAB_FJORD_RECV=… scripts/lab run scripts/lab.d/demo.sh DIR
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$(realpath "$0")")/lib.sh"

send=${LAB_FJORD_SEND:?set LAB_FJORD_SEND to the fjord-send binary}
recv=${LAB_FJORD_RECV:?set LAB_FJORD_RECV to the fjord-recv binary}
work=/tmp/lab/demo
mkdir -p "$work/state"
say() { printf '\n==> %s\n' "$*"; }

say "primary (10.10.0.1) and DR (10.10.0.2) over WireGuard, pools src and dst"
lab_step topology lab_topology >/dev/null
lab_step pools lab_pools src dst >/dev/null
zfs create src/home
zfs create dst/backup
mnt=$(lab_mountpoint src/home)
lab_step fill lab_fill "$mnt" 5 8M >/dev/null
echo "src/home: $(du -sh --apparent-size "$mnt" | cut -f1) in $(find "$mnt" -type f | wc -l) files"

spub=$("$send" keygen --key "$work/send.key")
rpub=$("$recv" keygen --key "$work/recv.key")
cat >"$work/recv.toml" <<TOML
listen = "$LAB_DR_WG_IP:7450"
key = "$work/recv.key"
idle_timeout = "3s"
[recv]
resumable = true
unmounted = true
[chunk_cache]
dir = "$work/chunks"
size = "1G"
[[client]]
name = "oslo-primary"
key = "$spub"
prefixes = ["dst/backup"]
TOML
cat >"$work/send.toml" <<TOML
key = "$work/send.key"
state_dir = "$work/state"
metrics_file = "$work/fjord.prom"
[[job]]
name = "home"
source = "src/home"
target_host = "$LAB_DR_WG_IP:7450"
target_key = "$rpub"
target_dataset = "dst/backup/home"
bwlimit = "2M"
idle_timeout = "3s"
grace = "2m"
TOML
say "DR: fjord-recv serve --config recv.toml"
cat "$work/recv.toml"
FJORD_LOG=info ip netns exec dr "$recv" serve --config "$work/recv.toml" 2>"$work/serve.log" &
serve=$!
sleep 2

say "primary: fjord-send push (first run: full stream)"
ip netns exec primary "$send" push --config "$work/send.toml" --verbose

say "changes on the primary"
lab_step mutate lab_mutate "$mnt" 6 6M >/dev/null
echo "src/home now $(du -sh --apparent-size "$mnt" | cut -f1)"

say "primary: fjord-send push (incremental) while the link goes down twice (5 s, 4 s)"
# The flaps start once the stream flows (the second `zfs recv` in the receiver's log).
(
    for _ in $(seq 1 300); do
        (($(grep -c 'zfs recv started' "$work/serve.log" || true) >= 2)) && break
        sleep 0.2
    done
    sleep 2 && lab_flap primary veth-p 5 && sleep 2 && lab_flap primary veth-p 4
) >/dev/null 2>&1 &
flaps=$!
ip netns exec primary "$send" push --config "$work/send.toml" --verbose
wait "$flaps" || true

big=$(find "$mnt" -type f -printf '%s %p\n' | sort -n | tail -n1 | cut -d' ' -f2-)
say "primary: a copy of $(basename "$big") ($(du -h --apparent-size "$big" | cut -f1)), which the DR node already has"
cp --reflink=never "$big" "$mnt/copy-of-$(basename "$big")"
sync
ip netns exec primary "$send" push --config "$work/send.toml" --verbose | tee "$work/copy.out"
sent=$(grep -oE '[0-9]+ bytes, re-sent' "$work/copy.out" | grep -oE '^[0-9]+' | head -n1 || true)
echo "a copy of $(stat -c %s "$big") bytes went over the link as ${sent:-?} bytes: its blocks were in the DR node's chunk cache"

say "snapshots on the primary"
zfs list -t snapshot -o name,guid,used -r src/home
say "snapshots on the DR node"
zfs list -t snapshot -o name,guid,used -r dst/backup/home
say "fjord-send status"
ip netns exec primary "$send" status --config "$work/send.toml"
say "Prometheus metrics ($work/fjord.prom)"
grep -v '^#' "$work/fjord.prom" || true

say "data compared file by file (sha256 of every file, symlink and directory)"
zfs mount -o ro dst/backup/home
if lab_compare "$mnt" "$(lab_mountpoint dst/backup/home)"; then
    echo "IDENTICAL: $(lab_manifest "$mnt" | wc -l) entries"
else
    echo "DIFFERENT"
    exit 1
fi
zfs unmount dst/backup/home
kill "$serve"
wait "$serve" || true
say "receiver log"
grep -v ' INFO ' "$work/serve.log" || true
