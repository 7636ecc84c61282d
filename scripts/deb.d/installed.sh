#!/usr/bin/env bash
# Installs the fjord package on this machine, checks it as an administrator would, and
# purges it again (tests/deb.rs runs this; by hand: scripts/deb.d/installed.sh FILE.deb).
#
# Needs root and dpkg. Exits 77 (skip) with a SKIP line when it must not touch the
# machine: not root, no dpkg, fjord already installed, or /etc/fjord, /var/lib/fjord or
# /var/cache/fjord already there (the purge would delete someone's state). Otherwise
# prints "CHECK name ok|FAIL detail" lines and exits 1 if any failed. The machine is
# restored on every exit: the package purged, the directories and the fjord user removed
# if they were not there before, /var/lib/prometheus/node-exporter likewise.
set -uo pipefail

deb=${1:?usage: installed.sh FILE.deb}
deb=$(realpath "$deb")
failed=0
check() { # check NAME CMD...: one CHECK line from CMD's exit status (its output on failure)
    local name=$1 out rc=0
    shift
    out=$("$@" 2>&1) || rc=$?
    if ((rc == 0)); then
        echo "CHECK $name ok"
    else
        echo "CHECK $name FAIL (exit $rc): $*"
        printf '%s\n' "$out" | tail -n 20 | sed 's/^/    /'
        failed=1
    fi
}
skip() {
    echo "SKIP: $*"
    exit 77
}

((EUID == 0)) || skip "not root: the package test installs with dpkg -i"
command -v dpkg >/dev/null || skip "no dpkg: not a Debian system"
if dpkg-query -W -f '${Status}' fjord 2>/dev/null | grep -q 'installed'; then
    skip "a fjord package is installed already; not replacing it"
fi
for dir in /etc/fjord /var/lib/fjord /var/cache/fjord; do
    [[ ! -e $dir ]] || skip "$dir exists already; the purge would delete it"
done
user_before=0
getent passwd fjord >/dev/null && user_before=1
prom=/var/lib/prometheus/node-exporter
prom_made=""
work=$(mktemp -d)
chmod 0755 "$work" # the fjord user reads the test's configs and stub zfs in it

restore() {
    if dpkg-query -W -f '${Status}' fjord 2>/dev/null | grep -q 'installed\|config-files'; then
        dpkg --purge fjord >/dev/null 2>&1 || true
    fi
    rm -rf /etc/fjord /var/lib/fjord /var/cache/fjord
    if ((user_before == 0)) && getent passwd fjord >/dev/null; then
        userdel fjord 2>/dev/null || true
    fi
    if ((user_before == 0)) && getent group fjord >/dev/null; then
        groupdel fjord 2>/dev/null || true
    fi
    [[ -z $prom_made ]] || rm -rf "$prom_made"
    rm -rf "$work"
}
trap restore EXIT

# ---------------------------------------------------------------- install
check install dpkg -i "$deb"
check binaries-run sh -c 'fjord-send --version && fjord-recv --version'

mode_is() { # mode_is PATH "OWNER:GROUP MODE"
    local got
    got=$(stat -c '%U:%G %a' "$1") || return 1
    [[ $got == "$2" ]] || { echo "$1: $got, want $2"; return 1; }
}
system_user() {
    local uid shell
    uid=$(id -u fjord) && shell=$(getent passwd fjord | cut -d: -f7) || return 1
    ((uid < 1000)) || { echo "fjord has uid $uid, not a system uid"; return 1; }
    [[ $shell == */nologin || $shell == /bin/false ]] || { echo "fjord's shell is $shell"; return 1; }
    getent group fjord >/dev/null || { echo "no group fjord"; return 1; }
}
check user-fjord system_user
check mode-etc mode_is /etc/fjord "root:fjord 750"
check mode-state mode_is /var/lib/fjord "fjord:fjord 750"
check mode-cache mode_is /var/cache/fjord "fjord:fjord 750"
# a reinstall runs the maintainer scripts again (as an upgrade does): they must keep working
check reinstall dpkg -i "$deb"
check mode-etc-after-reinstall mode_is /etc/fjord "root:fjord 750"

# ---------------------------------------------------------------- units
units=(/lib/systemd/system/fjord-recv.service /lib/systemd/system/fjord-push.service
    /lib/systemd/system/fjord-push.timer /lib/systemd/system/fjord-drill.service
    /lib/systemd/system/fjord-drill.timer)
check units-installed ls "${units[@]}"
if command -v systemd-analyze >/dev/null; then
    # verify prints problems but may still exit 0 for some: any output naming our units fails too
    verify() {
        local out rc=0
        out=$(systemd-analyze verify "${units[@]}" 2>&1) || rc=$?
        printf '%s\n' "$out"
        ((rc == 0)) && ! grep -q 'fjord-' <<<"$out"
    }
    check systemd-analyze-verify verify
    # the receiver's exposure, for the log (systemd-analyze security: lower is tighter)
    systemd-analyze security --offline=yes /lib/systemd/system/fjord-recv.service 2>/dev/null |
        tail -n 1 | sed 's/^/    fjord-recv.service: /' || true
else
    echo "CHECK systemd-analyze-verify skipped: no systemd-analyze"
fi

# ---------------------------------------------------------------- man pages
pages() { dpkg -L fjord | grep '^/usr/share/man/man1/.*\.1\.gz$'; }
every_page_renders() {
    local p n=0 err
    for p in $(pages); do
        err=$(MANWIDTH=80 man --warnings -l "$p" 2>&1 >/dev/null) || { echo "$p: man failed"; return 1; }
        [[ -z $err ]] || { echo "$p: $err"; return 1; }
        n=$((n + 1))
    done
    echo "$n pages"
    ((n > 0))
}
# one page per command the binaries list in --help, and the binaries' own
every_command_has_a_page() {
    local b c
    for b in fjord-send fjord-recv; do
        [[ -f /usr/share/man/man1/$b.1.gz ]] || { echo "no page $b"; return 1; }
        for c in $("$b" --help | awk '/^Commands:/ { f = 1; next } f && /^  [a-z]/ { print $1 }'); do
            [[ $c == help ]] && continue
            [[ -f /usr/share/man/man1/$b-$c.1.gz ]] || { echo "no page $b-$c"; return 1; }
        done
    done
}
check man-pages-render every_page_renders
check man-page-per-command every_command_has_a_page
check man-finds-fjord-send sh -c 'man -w fjord-send | grep -q /usr/share/man/man1/fjord-send.1.gz'
check man-page-has-options sh -c 'MANWIDTH=80 man fjord-send-push 2>/dev/null | grep -q -- --dry-run'

# ---------------------------------------------------------------- completions
# complete WORDS...: what bash offers for the last word, through the installed script
complete_words() {
    bash -c '
        source /usr/share/bash-completion/completions/$1 || exit 1
        fn=$(complete -p "$1" | sed -n "s/.*-F \([^ ]*\).*/\1/p")
        [[ -n $fn ]] || { echo "no completion function for $1"; exit 1; }
        COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
        COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
        "$fn" "$1" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
        printf "%s\n" "${COMPREPLY[@]}"' complete_words "$@"
}
offers() { # offers WANT WORDS...
    local want=$1 got
    shift
    got=$(complete_words "$@") || { echo "$got"; return 1; }
    grep -qx -- "$want" <<<"$got" || { echo "offered: $(tr '\n' ' ' <<<"$got")"; return 1; }
}
check bash-completes-subcommand offers push fjord-send pu
check bash-completes-recv-serve offers serve fjord-recv se
check bash-completes-option offers --config fjord-recv serve --con
check bash-hides-generate-docs sh -c '! grep -q generate-docs /usr/share/bash-completion/completions/fjord-send'
if command -v zsh >/dev/null; then
    check zsh-completion-parses zsh -n /usr/share/zsh/vendor-completions/_fjord-send
fi
if command -v fish >/dev/null; then
    check fish-completion-parses fish -n /usr/share/fish/vendor_completions.d/fjord-send.fish
fi

# ---------------------------------------------------------------- check-config
# the installed examples with their placeholder keys replaced by real ones, where the
# examples put them; the receiver's checked as the fjord user, as its unit runs it
ex=/usr/share/doc/fjord/examples
mkdir -p "$work/bin"
if ! command -v zfs >/dev/null; then
    # check-config only looks for zfs on the PATH; it runs nothing
    printf '#!/bin/sh\nexit 0\n' >"$work/bin/zfs"
    chmod 0755 "$work/bin/zfs"
fi
export PATH=$work/bin:$PATH
if [[ ! -d $prom ]]; then
    prom_made=/var/lib/prometheus
    [[ -d $prom_made ]] && prom_made=$prom
    mkdir -p "$prom"
fi
setup_keys() {
    set -e
    spub=$(fjord-send keygen --key /etc/fjord/send.key)
    rpub=$(fjord-recv keygen --key /etc/fjord/recv.key)
    chown fjord:fjord /etc/fjord/recv.key
    sed "s|BASE64PUBKEY=|$spub|" "$ex/recv.toml" >/etc/fjord/recv.toml
    sed "s|BASE64PUBKEY=|$rpub|" "$ex/send.toml" >/etc/fjord/send.toml
    chmod 0640 /etc/fjord/recv.toml /etc/fjord/send.toml
    chgrp fjord /etc/fjord/recv.toml
}
check keys-and-configs setup_keys
check recv-check-config runuser -u fjord -- env PATH="$PATH" fjord-recv check-config --config /etc/fjord/recv.toml
check send-check-config fjord-send check-config --config /etc/fjord/send.toml
# the receiver starts from that config as the fjord user, as its unit starts it (on
# loopback: the example listens on the DR node's WireGuard address), tells systemd it is
# ready, and stops on SIGTERM with exit 0
serve_as_fjord() {
    local cfg=$work/recv-loopback.toml pid rc=0 said
    sed 's|^listen = .*|listen = "127.0.0.1:0"|' /etc/fjord/recv.toml >"$cfg"
    chmod 0644 "$cfg"
    python3 - "$work/notify" >"$work/notified" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(30)
print(s.recv(1024).decode(), flush=True)
PY
    local listener=$!
    for _ in $(seq 50); do [[ -S $work/notify ]] && break; sleep 0.1; done
    chmod 0777 "$work/notify"
    # setpriv execs: SIGTERM reaches fjord-recv itself, as systemd's would
    NOTIFY_SOCKET="$work/notify" setpriv --reuid=fjord --regid=fjord --init-groups \
        fjord-recv serve --config "$cfg" 2>"$work/serve.err" &
    pid=$!
    wait "$listener" || { echo "no READY=1 within 30 s"; cat "$work/serve.err"; kill "$pid" 2>/dev/null; return 1; }
    said=$(cat "$work/notified")
    kill -TERM "$pid"
    wait "$pid" || rc=$?
    cat "$work/serve.err"
    grep -q '^READY=1' <<<"$said" || { echo "notified: $said"; return 1; }
    ((rc == 0)) || { echo "serve exited $rc after SIGTERM"; return 1; }
}
if command -v python3 >/dev/null; then
    check serve-as-fjord serve_as_fjord
fi
# the examples as shipped (placeholder keys) are refused with the config exit code
refused() {
    local rc=0
    "$@" >/dev/null 2>&1 || rc=$?
    ((rc == 5)) || { echo "exit $rc, want 5"; return 1; }
}
check recv-placeholder-refused refused fjord-recv check-config --config "$ex/recv.toml"
check send-placeholder-refused refused fjord-send check-config --config "$ex/send.toml"

# ---------------------------------------------------------------- purge
rm -f /etc/fjord/recv.key /etc/fjord/send.key /etc/fjord/recv.toml /etc/fjord/send.toml
check purge dpkg --purge fjord
check binaries-gone sh -c '! test -e /usr/bin/fjord-send && ! test -e /usr/bin/fjord-recv'
check units-gone sh -c '! test -e /lib/systemd/system/fjord-recv.service'
check purge-removes-dirs sh -c '! test -e /var/lib/fjord && ! test -e /var/cache/fjord && ! test -e /etc/fjord'
# Debian keeps system users on purge (files they own may remain)
check purge-keeps-user getent passwd fjord
check nothing-left sh -c '! dpkg-query -W fjord 2>/dev/null | grep -q .'

if ((failed)); then
    echo "installed.sh: some checks failed"
    exit 1
fi
echo "installed.sh: all checks passed"
