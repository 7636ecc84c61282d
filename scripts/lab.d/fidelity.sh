# shellcheck shell=bash
# Lab case `fidelity` of push.sh (sourced by it): a recursive job's tree arrives as it left.
#   properties: a tree three levels deep with user properties and a compression change on its
#     middle dataset, pushed with `properties = true`, twice (a property changed, one removed,
#     one added between the pushes): the DR tree's `zfs get -s local,received` is the
#     primary's `-s local` (prefix mapped, the DR node's forced set left out: it shows as local
#     there); a property the primary inherits stays inherited on the DR node. Then the
#     leaf is renamed on the primary: its copy is renamed after it and goes on incrementally.
#   encryption roots: `raw = true`, an encrypted child of an unencrypted parent (its own
#     encryption root), a grandchild inheriting its key and one with its own key: each copy's
#     encryptionroot, keyformat and keylocation match the primary's, after a full push and
#     after an incremental one, and the copy still opens with the primary's key (while a
#     plain `zfs send -w -p | zfs recv` of the grandchild makes it a root of its own).

# fid_props ROOT: the locally set (primary) or local and received (DR node) properties of
# ROOT's tree as "name<TAB>property<TAB>value", names relative to ROOT, sorted; the DR
# node's forced set and what it never takes from a stream are left out
fid_props() {
    local root=$1 sources=$2
    zfs get -H -r -s "$sources" -o name,property,value all "$root" |
        awk -F '\t' -v root="$root" -v OFS='\t' '
            $2 ~ /^(canmount|setuid|devices|sharenfs|sharesmb|readonly|mountpoint|reservation|refreservation|quota|refquota|keylocation)$/ { next }
            { sub("^" root, "", $1); print }' | sort
}
# fid_forced_local DATASET: the forced inert set shows as local on the DR node's copy
fid_forced_local() {
    [[ $(zfs get -H -o property,value,source canmount,readonly,setuid "$1" | tr '\t\n' '  ') == \
        "canmount noauto local readonly on local setuid off local " ]]
}
# fid_crypt ROOT: encryptionroot (relative to ROOT), keyformat and keylocation of each
# encrypted dataset of ROOT's tree, relative names, sorted
fid_crypt() {
    local root=$1
    zfs get -H -r -t filesystem,volume -o name,property,value encryption,encryptionroot,keyformat,keylocation "$root" |
        awk -F '\t' -v root="$root" '
            { n = $1; sub("^" root, "", n) }
            $2 == "encryption" { enc[n] = $3 }
            $2 == "encryptionroot" { v = $3; if (v != "-") sub("^" root, "", v); er[n] = v }
            $2 == "keyformat" { kf[n] = $3 }
            $2 == "keylocation" { kl[n] = $3 }
            END { for (n in enc) if (enc[n] != "off") printf "%s root=%s %s %s\n", n, er[n], kf[n], kl[n] }' |
        sort
}
# fid_job NAME SOURCE TARGET EXTRA: a config for one recursive job from SOURCE to TARGET
fid_job() {
    send_config "$work/$1.toml" "$work/send.key" "$4" "$work/state-$1"
    sed -i -e "s|^source = .*|source = \"$2\"|" -e "s|^target_dataset = .*|target_dataset = \"$3\"|" \
        -e "s|^name = .*|name = \"$1\"|" "$work/$1.toml"
    rm -rf "$work/state-$1"
    mkdir -p "$work/state-$1"
}

# fid_cleanup: the case's datasets gone on both sides
fid_cleanup() {
    local d
    for d in dst/backup/fid src/fid dst/backup/fenc src/fenc; do destroy_tree "$d"; done
}

case_fidelity() {
    # The receiver (default, plus allow_rename) starts before the case's datasets exist and
    # stops after they are gone: `ip netns exec` gives it a private copy of the mounts there
    # are when it starts, which keeps them busy for `zfs destroy` (seen in the lab VM).
    recv_config fid-rename "" "allow_rename = true"
    serve_use fid-rename
    fid_cleanup
    # properties: three levels, user properties, a compression change in the middle
    zfs create -o com.example:tier=gold src/fid
    zfs create -o compression=gzip -o com.example:owner=ops -o recordsize=64K src/fid/mid
    zfs create -o com.example:note=leaf -o atime=on src/fid/mid/leaf
    lab_fill /tmp/mnt-src/src/fid/mid/leaf 41 256K >/dev/null
    fid_job fid src/fid dst/backup/fid "properties = true"
    local rc=0
    push fid-1 "$work/fid.toml" || rc=$?
    lab_assert_eq fid-1-exit 0 "$rc"
    fid_props src/fid local >"$R/fid-1-primary.props"
    fid_props dst/backup/fid local,received >"$R/fid-1-dr.props"
    lab_assert fid-1-props diff "$R/fid-1-primary.props" "$R/fid-1-dr.props"
    lab_assert fid-1-forced-local fid_forced_local dst/backup/fid/mid
    # leaf inherits compression from mid on both sides (nothing local or received there)
    lab_assert_eq fid-1-inherited "gzip inherited from dst/backup/fid/mid" \
        "$(zfs get -H -o value,source compression dst/backup/fid/mid/leaf | tr '\t' ' ')"
    # between the pushes: a value changed, a compression change, one removed, one added
    zfs set com.example:owner=dba src/fid/mid
    zfs set compression=zle src/fid/mid
    zfs inherit com.example:note src/fid/mid/leaf
    zfs set com.example:added=yes src/fid/mid/leaf
    lab_fill /tmp/mnt-src/src/fid/mid/leaf/more 42 128K >/dev/null
    rc=0
    push fid-2 "$work/fid.toml" || rc=$?
    lab_assert_eq fid-2-exit 0 "$rc"
    lab_assert_eq fid-2-incremental "incremental" "$(jactions fid-2 src/fid/mid/leaf)"
    fid_props src/fid local >"$R/fid-2-primary.props"
    fid_props dst/backup/fid local,received >"$R/fid-2-dr.props"
    lab_assert fid-2-props diff "$R/fid-2-primary.props" "$R/fid-2-dr.props"
    lab_assert fid-2-removed-gone sh -c "! grep -q 'com.example:note' '$R/fid-2-dr.props'"
    lab_assert_eq fid-2-inherited "zle inherited from dst/backup/fid/mid" \
        "$(zfs get -H -o value,source compression dst/backup/fid/mid/leaf | tr '\t' ' ')"
    lab_assert fid-2-forced-local fid_forced_local dst/backup/fid/mid/leaf
    # a child renamed on the primary: its copy is renamed after it (found by guid, under a
    # receiver granting allow_rename) and goes on incrementally; nothing is reported removed
    zfs rename src/fid/mid/leaf src/fid/mid/moved
    rc=0
    push fid-3 "$work/fid.toml" || rc=$?
    lab_assert_eq fid-3-exit 0 "$rc"
    lab_assert_eq fid-3-renamed "dst/backup/fid/mid/leaf dst/backup/fid/mid/moved" \
        "$(jq -r 'select(.type == "job") | .renamed[]? | "\(.from) \(.to)"' "$R/fid-3.json" 2>/dev/null)"
    lab_assert_eq fid-3-moved-incremental "ok incremental" \
        "$(jds fid-3 src/fid/mid/moved result) $(jactions fid-3 src/fid/mid/moved)"
    lab_assert_eq fid-3-nothing-removed "" "$(jremoved fid-3 target)"
    lab_assert fid-3-old-name-gone sh -c '! zfs list -H dst/backup/fid/mid/leaf 2>/dev/null'
    fid_props src/fid local >"$R/fid-3-primary.props"
    fid_props dst/backup/fid local,received >"$R/fid-3-dr.props"
    lab_assert fid-3-props diff "$R/fid-3-primary.props" "$R/fid-3-dr.props"

    # encryption roots of a raw job
    local key1=$work/fid-key1 key2=$work/fid-key2
    echo "fjord-lab-passphrase-one" >"$key1"
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$key2"
    zfs create src/fenc
    zfs create -o encryption=on -o keyformat=passphrase -o keylocation="file://$key1" src/fenc/secret
    zfs create src/fenc/secret/kid
    zfs create -o encryption=on -o keyformat=hex -o keylocation="file://$key2" src/fenc/secret/own
    lab_fill /tmp/mnt-src/src/fenc/secret/kid 43 256K >/dev/null
    fid_job fenc src/fenc dst/backup/fenc "raw = true
properties = true"
    rc=0
    push fenc-1 "$work/fenc.toml" || rc=$?
    lab_assert_eq fenc-1-exit 0 "$rc"
    fid_crypt src/fenc >"$R/fenc-1-primary.crypt"
    fid_crypt dst/backup/fenc >"$R/fenc-1-dr.crypt"
    lab_assert fenc-1-roots diff "$R/fenc-1-primary.crypt" "$R/fenc-1-dr.crypt"
    # what fjord corrects: a plain per-dataset raw receive of the grandchild makes it an
    # encryption root of its own, even below its parent's copy
    local s
    s=$(newest src/fenc/secret/kid)
    zfs send -w -p "$s" | zfs recv -u dst/backup/fenc/secret/plain || true
    lab_assert_eq fenc-plain-recv-own-root dst/backup/fenc/secret/plain \
        "$(zfs get -H -o value encryptionroot dst/backup/fenc/secret/plain 2>&1)"
    # ... which the primary's key still opens (the key is wrapped by the parent's wrapping key)
    lab_assert fenc-plain-opens zfs load-key -L "file://$key1" dst/backup/fenc/secret/plain
    zfs unload-key dst/backup/fenc/secret/plain 2>/dev/null || true
    destroy_tree dst/backup/fenc/secret/plain
    lab_fill /tmp/mnt-src/src/fenc/secret/kid/more 44 128K >/dev/null
    rc=0
    push fenc-2 "$work/fenc.toml" || rc=$?
    lab_assert_eq fenc-2-exit 0 "$rc"
    lab_assert_eq fenc-2-incremental "incremental" "$(jactions fenc-2 src/fenc/secret/kid)"
    fid_crypt src/fenc >"$R/fenc-2-primary.crypt"
    fid_crypt dst/backup/fenc >"$R/fenc-2-dr.crypt"
    lab_assert fenc-2-roots diff "$R/fenc-2-primary.crypt" "$R/fenc-2-dr.crypt"
    # the copies open with the primary's keys, as at a failover
    rc=0
    zfs load-key -r dst/backup/fenc/secret >"$R/fenc-load-key.out" 2>&1 || rc=$?
    lab_assert_eq fenc-load-key 0 "$rc"
    zfs mount -o ro dst/backup/fenc/secret/kid 2>>"$R/fenc-load-key.out" || true
    lab_assert fenc-kid-content lab_compare /tmp/mnt-src/src/fenc/secret/kid \
        "$(lab_mountpoint dst/backup/fenc/secret/kid 2>/dev/null || echo /nonexistent)"
    zfs unmount dst/backup/fenc/secret/kid 2>/dev/null || true
    zfs unload-key -r dst/backup/fenc/secret 2>/dev/null || true
    fid_cleanup
    serve_use default
}
