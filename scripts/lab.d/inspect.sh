#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Lab scenario: fjord's codec against real OpenZFS.
#   LAB_FJORD_SEND=/path/fjord-send LAB_FJORD_RECV=/path/fjord-recv scripts/lab run scripts/lab.d/inspect.sh DIR
# Runs fixtures.sh first (full, -i, -I, -c, -L, -e, -w, -R and a resumed -t stream, each
# received back by zfs recv and compared), then:
#   - `fjord-send inspect --verify` accepts every one of those streams;
#   - a stream with one flipped byte is refused by inspect *and* by zfs recv;
#   - `fjord-recv verify` passes a good stream into zfs recv intact, and on the damaged
#     one forwards only a verified prefix, so zfs recv never completes the snapshot.
# Asserts go to $LAB_RESULTS/results.txt (fixtures' own to $LAB_RESULTS/fixtures/results.txt).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$(realpath "$0")")/lib.sh"

send=${LAB_FJORD_SEND:?set LAB_FJORD_SEND to the fjord-send binary}
recv=${LAB_FJORD_RECV:?set LAB_FJORD_RECV to the fjord-recv binary}
here=$(dirname "$(realpath "$0")")
streams=/tmp/lab/fx

mkdir -p "$LAB_RESULTS/fixtures"
rc=0
LAB_RESULTS=$LAB_RESULTS/fixtures bash "$here/fixtures.sh" || rc=$?
lab_assert_eq fixtures-scenario 0 "$rc"

for f in full incr-i incr-I compressed-c large-L embedded-e raw-w replicate-R resumed-t; do
    lab_assert "inspect-verify-$f" "$send" inspect --verify "$streams/$f.zsend"
done
"$send" inspect --json --verify "$streams/resumed-t.zsend" >"$LAB_RESULTS/resumed-t.json"
lab_assert inspect-resumed-kind grep -q '"kind": "resumed"' "$LAB_RESULTS/resumed-t.json"
lab_assert inspect-token-matches sh -c "grep -q \"\\\"resume_object\\\": \$(zstream token \"\$(cat $streams/resume-token.txt)\" | awk '/object:/ { print \$2 }')\" $LAB_RESULTS/resumed-t.json"

# One flipped byte in the middle of an incremental.
bad=/tmp/lab/incr-i.flipped.zsend
cp "$streams/incr-i.zsend" "$bad"
size=$(stat -c %s "$bad")
mid=$((size / 2))
orig=$(od -An -tu1 -j "$mid" -N1 "$bad" | tr -d ' ')
printf '%b' "$(printf '\\%03o' $(((orig ^ 0x20) & 0xff)))" | dd of="$bad" bs=1 seek="$mid" conv=notrunc status=none
lab_assert flipped-differs sh -c "! cmp -s $bad $streams/incr-i.zsend"

inspect_rc=0
"$send" inspect --verify "$bad" 2>"$LAB_RESULTS/flipped.stderr" || inspect_rc=$?
lab_assert_eq inspect-rejects-flipped 1 "$inspect_rc"
lab_assert inspect-names-the-record grep -Eq 'record #[0-9]+ \(DRR_[A-Z_]+\) at byte [0-9]+' "$LAB_RESULTS/flipped.stderr"
lab_assert_eq inspect-one-line 1 "$(wc -l <"$LAB_RESULTS/flipped.stderr")"

zfs recv dst/flip <"$streams/full.zsend"
zrc=0
zfs recv dst/flip <"$bad" 2>"$LAB_RESULTS/flipped.zfs-recv.stderr" || zrc=$?
lab_assert zfs-recv-rejects-flipped test "$zrc" -ne 0
lab_assert zfs-recv-left-no-snapshot sh -c '! zfs list dst/flip@b'

# fjord-recv verify in front of zfs recv.
zfs recv dst/filtered <"$streams/full.zsend"
lab_assert filter-good-stream-received sh -c "'$recv' verify - <'$streams/incr-i.zsend' | zfs recv dst/filtered"
lab_assert_eq filter-good-guid "$(lab_guid src/fx@b)" "$(lab_guid dst/filtered@b 2>/dev/null || echo none)"
lab_assert filter-good-content lab_compare "$(lab_mountpoint src/fx)/.zfs/snapshot/b" "$(lab_mountpoint dst/filtered)"
zfs recv dst/filtered-bad <"$streams/full.zsend"
frc=0
"$recv" verify - <"$bad" 2>"$LAB_RESULTS/filter-bad.stderr" | zfs recv dst/filtered-bad 2>/dev/null || frc=$?
lab_assert filter-bad-fails test "$frc" -ne 0
lab_assert filter-bad-no-snapshot sh -c '! zfs list dst/filtered-bad@b'
lab_assert filter-bad-says-why grep -q 'nothing after them' "$LAB_RESULTS/filter-bad.stderr"

lab_summary
