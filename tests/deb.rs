//! The Debian package (`scripts/deb`), built from this build's binaries and
//! checked as an administrator would use it.
//!
//! Always (with dpkg-deb): the package builds and holds what the README
//! promises. As root on Debian: `scripts/deb.d/installed.sh` installs it with
//! `dpkg -i`, verifies the units (`systemd-analyze verify`), renders every
//! man page (`man -l`), completes subcommands through the bash completion,
//! runs `check-config` on the installed examples with real keys, starts
//! `serve` from that config as the fjord user (READY=1, exit 0 on SIGTERM),
//! checks the fjord user and the directory modes, purges the package and restores the
//! machine. It skips with a message (exit 77) when it must not touch the
//! machine: not root, no dpkg, fjord installed already, `/var/lib/fjord`
//! there already.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The directory of the workspace's built binaries (`cargo test
/// --workspace` builds them before any test runs).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir")
        .to_path_buf();
    for b in ["fjord-send", "fjord-recv"] {
        assert!(
            dir.join(b).is_file(),
            "{} not built: run `cargo test --workspace`",
            dir.join(b).display()
        );
    }
    dir
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Builds the package into a fresh directory; returns its path.
fn build(out: &Path) -> PathBuf {
    let output = Command::new(repo().join("scripts/deb"))
        .arg("--bin-dir")
        .arg(bin_dir())
        .arg("--out")
        .arg(out)
        .arg("--fast")
        // a routable maintainer address, as a site's packager sets it
        .env("DEBFULLNAME", "fjord CI")
        .env("DEBEMAIL", "ci@fjord.test")
        .output()
        .expect("scripts/deb runs");
    assert!(
        output.status.success(),
        "scripts/deb failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let deb = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(deb.is_file(), "scripts/deb printed no package: {stdout}");
    deb
}

#[test]
fn the_package_builds_installs_and_purges_cleanly() {
    if !have("dpkg-deb") {
        eprintln!("SKIP: no dpkg-deb on this machine: the Debian package is not built");
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let deb = build(out.path());

    let listing = Command::new("dpkg-deb")
        .arg("--contents")
        .arg(&deb)
        .output()
        .expect("dpkg-deb --contents");
    let listing = String::from_utf8_lossy(&listing.stdout);
    for path in [
        "./usr/bin/fjord-send",
        "./usr/bin/fjord-recv",
        "./lib/systemd/system/fjord-recv.service",
        "./lib/systemd/system/fjord-push.service",
        "./lib/systemd/system/fjord-push.timer",
        "./lib/systemd/system/fjord-drill.service",
        "./lib/systemd/system/fjord-drill.timer",
        "./usr/share/man/man1/fjord-send.1.gz",
        "./usr/share/man/man1/fjord-send-push.1.gz",
        "./usr/share/man/man1/fjord-recv-serve.1.gz",
        "./usr/share/bash-completion/completions/fjord-send",
        "./usr/share/zsh/vendor-completions/_fjord-recv",
        "./usr/share/fish/vendor_completions.d/fjord-send.fish",
        "./usr/share/doc/fjord/copyright",
        "./usr/share/doc/fjord/changelog.Debian.gz",
        "./usr/share/doc/fjord/examples/recv.toml",
        "./usr/share/doc/fjord/examples/send.toml",
        "./usr/share/doc/fjord/examples/fjord-push.cron",
        "./usr/share/doc/fjord/examples/fjord-drill.cron",
        "./usr/share/man/man1/fjord-recv-drill.1.gz",
        "./usr/share/doc/fjord/examples/prometheus/fjord-alerts.yml",
        "./usr/share/doc/fjord/examples/grafana/fjord.json",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(path)),
            "{path} is not in the package:\n{listing}"
        );
    }
    assert!(
        !listing.lines().any(|l| l.contains(" ./etc/")),
        "the package ships files under /etc (then they need conffiles):\n{listing}"
    );

    // Debian's own package checker: no error and no warning (the one
    // override, shipped in the package, says why)
    if have("lintian") {
        let output = Command::new("lintian")
            .args(["--fail-on", "error,warning"])
            .arg(&deb)
            .output()
            .expect("lintian runs");
        assert!(
            output.status.success(),
            "lintian finds fault with the package:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    } else {
        eprintln!("SKIP: no lintian on this machine (scripts/test installs it)");
    }

    let output = Command::new(repo().join("scripts/deb.d/installed.sh"))
        .arg(&deb)
        .output()
        .expect("installed.sh runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    if output.status.code() == Some(77) {
        eprintln!("the installation checks were skipped (see SKIP above)");
        return;
    }
    let failed: Vec<&str> = stdout.lines().filter(|l| l.contains(" FAIL")).collect();
    assert!(
        output.status.success() && failed.is_empty(),
        "installed.sh failed: {failed:?}"
    );
    // Every check ran and passed: a check that silently did not run fails here.
    let mut required = vec![
        "install",
        "user-fjord",
        "mode-etc",
        "mode-state",
        "mode-cache",
        "reinstall",
        "man-pages-render",
        "man-page-per-command",
        "man-finds-fjord-send",
        "bash-completes-subcommand",
        "bash-completes-recv-serve",
        "bash-completes-option",
        "recv-check-config",
        "send-check-config",
        "recv-placeholder-refused",
        "send-placeholder-refused",
        "purge",
        "purge-removes-dirs",
        "purge-keeps-user",
    ];
    if have("systemd-analyze") {
        required.push("systemd-analyze-verify");
    }
    if have("python3") {
        // the stand-in for systemd's notify socket is a few lines of Python
        required.push("serve-as-fjord");
    }
    for name in required {
        assert!(
            stdout.lines().any(|l| l == format!("CHECK {name} ok")),
            "check {name} did not pass:\n{stdout}"
        );
    }
}

/// The receiver's `zfs allow` line (Quick start, "Least privilege"; the lab
/// case `recv-as-fjord-user` runs with the first one) is one set, and the
/// README's table says why each permission in it is there.
#[test]
fn the_readme_documents_one_receiver_permission_set() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let sets: Vec<&str> = readme
        .lines()
        .filter_map(|l| l.trim().strip_prefix("zfs allow -u fjord "))
        .filter_map(|l| l.strip_suffix(" backup"))
        .collect();
    assert!(sets.len() >= 2, "the receiver's zfs allow line: {sets:?}");
    assert!(
        sets.iter().all(|s| *s == sets[0]),
        "different receiver permission sets in README.md: {sets:?}"
    );
    let table = readme
        .split("| permission | why the receiver needs it |")
        .nth(1)
        .expect("README.md has the receiver's permission table");
    let table: String = table
        .lines()
        .take_while(|l| l.starts_with('|') || l.is_empty())
        .map(|l| l.split('|').nth(1).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(" ");
    for perm in sets[0].split(',') {
        assert!(
            table.contains(&format!("`{perm}`")),
            "permission {perm} is delegated but not explained in the table"
        );
    }
}
