//! Lab scenarios: fjord against real OpenZFS 2.3 in the QEMU lab
//! (`scripts/lab`). One VM boot serves every assertion of a scenario; the
//! scenario writes `ASSERT name pass|fail detail` lines and this test
//! requires each expected one to be present and passing, so a scenario that
//! silently skipped a check fails here too.
//!
//! Run with `cargo test --features lab --test lab` after `scripts/lab install`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The workspace's built binary `name` (built by `cargo test --workspace`).
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} not built: run `cargo test --workspace --features lab`",
        bin.display()
    );
    bin
}

struct Asserts {
    lines: Vec<(String, bool, String)>,
}

impl Asserts {
    fn read(path: &Path) -> Asserts {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let lines = text
            .lines()
            .filter_map(|l| l.strip_prefix("ASSERT "))
            .map(|l| {
                let mut parts = l.splitn(3, ' ');
                let name = parts.next().unwrap_or_default().to_string();
                let pass = parts.next() == Some("pass");
                (name, pass, parts.next().unwrap_or_default().to_string())
            })
            .collect();
        Asserts { lines }
    }

    fn failures(&self) -> Vec<String> {
        self.lines
            .iter()
            .filter(|(_, p, _)| !p)
            .map(|(n, _, d)| format!("{n}: {d}"))
            .collect()
    }

    fn require(&self, names: &[&str]) -> Vec<String> {
        names
            .iter()
            .filter(|n| !self.lines.iter().any(|(name, pass, _)| name == *n && *pass))
            .map(|n| format!("{n}: missing or failed"))
            .collect()
    }
}

/// One VM at a time: two TCG guests on two cores would starve each other
/// and skew the timing checks of the network scenarios.
static ONE_VM: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Boots the lab, runs `scenario` with `env`, returns its results directory.
fn run_scenario(scenario: &str, env: &[(&str, PathBuf)]) -> PathBuf {
    let _vm = ONE_VM
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let results = std::env::temp_dir().join(format!(
        "fjord-lab-{}-{}",
        scenario.trim_end_matches(".sh"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&results);
    std::fs::create_dir_all(&results).expect("results dir");
    let mut cmd = Command::new(repo().join("scripts/lab"));
    cmd.arg("run")
        .arg(repo().join("scripts/lab.d").join(scenario))
        .arg(&results);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd.status().expect("scripts/lab runs");
    let log = std::fs::read_to_string(results.join("log")).unwrap_or_default();
    let tail: Vec<_> = log
        .lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    assert!(
        results.join("status").is_file(),
        "the lab VM did not finish {scenario} (no status file); log tail:\n{}",
        tail.join("\n")
    );
    if !status.success() {
        eprintln!("{scenario} failed; log tail:\n{}", tail.join("\n"));
    }
    results
}

#[test]
fn inspect_accepts_real_streams_and_refuses_damage_like_zfs_recv() {
    let results = run_scenario(
        "inspect.sh",
        &[
            ("LAB_FJORD_SEND", binary("fjord-send")),
            ("LAB_FJORD_RECV", binary("fjord-recv")),
        ],
    );
    let fixtures = Asserts::read(&results.join("fixtures/results.txt"));
    let main = Asserts::read(&results.join("results.txt"));
    let mut problems = fixtures.failures();
    problems.extend(main.failures());
    // zfs itself: each kind of stream was received and matches its source.
    problems.extend(fixtures.require(&[
        "full-recv",
        "full-content",
        "incr-i-recv",
        "incr-i-content",
        "incr-I-recv",
        "incr-I-content",
        "compressed-recv",
        "large-recv",
        "embedded-recv",
        "raw-recv",
        "raw-content",
        "replicate-recv",
        "replicate-child-content",
        "resumed-recv",
        "resumed-content",
    ]));
    // fjord: verifies all of them, refuses the damaged one as zfs recv does,
    // and its filter lets only verified bytes reach zfs recv.
    problems.extend(main.require(&[
        "fixtures-scenario",
        "inspect-verify-full",
        "inspect-verify-incr-i",
        "inspect-verify-incr-I",
        "inspect-verify-compressed-c",
        "inspect-verify-large-L",
        "inspect-verify-embedded-e",
        "inspect-verify-raw-w",
        "inspect-verify-replicate-R",
        "inspect-verify-resumed-t",
        "inspect-resumed-kind",
        "inspect-token-matches",
        "inspect-rejects-flipped",
        "inspect-names-the-record",
        "inspect-one-line",
        "zfs-recv-rejects-flipped",
        "zfs-recv-left-no-snapshot",
        "filter-good-stream-received",
        "filter-good-guid",
        "filter-good-content",
        "filter-bad-fails",
        "filter-bad-no-snapshot",
        "filter-bad-says-why",
    ]));
    assert!(
        problems.is_empty(),
        "lab assertions failed ({}):\n{}",
        results.display(),
        problems.join("\n")
    );
}

#[test]
fn wireguard_netem_and_flaps_carry_zfs_send() {
    // The lab's own network: a real WireGuard tunnel between two namespaces,
    // netem delay/loss/rate, a link flap, zfs send | zfs recv through it.
    let results = run_scenario("smoke.sh", &[]);
    let asserts = Asserts::read(&results.join("results.txt"));
    let mut problems = asserts.failures();
    assert!(
        asserts.lines.len() >= 5,
        "smoke scenario made only {} assertions",
        asserts.lines.len()
    );
    problems.extend(asserts.require(&[
        "wg-handshake",
        "wg-ping",
        "netem-rtt-at-least-20ms",
        "flap-mid-transfer",
        "wg-ping-after-flap",
        "full-content",
        "full-guid",
        "incr-content",
        "incr-guid",
    ]));
    assert!(
        problems.is_empty(),
        "lab assertions failed ({}):\n{}",
        results.display(),
        problems.join("\n")
    );
}

#[test]
fn quic_transfer_survives_wireguard_link_flaps() {
    let results = run_scenario(
        "transport.sh",
        &[
            ("LAB_FJORD_SEND", binary("fjord-send")),
            ("LAB_FJORD_RECV", binary("fjord-recv")),
        ],
    );
    let asserts = Asserts::read(&results.join("results.txt"));
    let mut problems = asserts.failures();
    problems.extend(asserts.require(&[
        "send-succeeded",
        "flaps-were-mid-transfer",
        "stored-stream-present",
        "stored-byte-identical",
        "no-partial-left",
        "reconnected",
        "resent-within-window",
        "zfs-recv-of-stored",
        "stored-content",
        "stored-guid",
        "unknown-key-refused",
        "unknown-key-stored-nothing",
    ]));
    let counters = std::fs::read_to_string(results.join("counters")).unwrap_or_default();
    eprintln!("transport over WireGuard with 3 flaps: {}", counters.trim());
    assert!(
        problems.is_empty(),
        "lab assertions failed ({}):\n{}",
        results.display(),
        problems.join("\n")
    );
}

#[test]
fn push_and_serve_replicate_into_zfs_through_flaps_crashes_and_divergence() {
    // Independent cases in one VM boot, each from a known pool state (push.sh); about
    // 35 minutes under TCG, so more time than the default 1500 s for the scenario.
    let results = run_scenario(
        "push.sh",
        &[
            ("LAB_FJORD_SEND", binary("fjord-send")),
            ("LAB_FJORD_RECV", binary("fjord-recv")),
            ("LAB_SCENARIO_TIMEOUT", PathBuf::from("3300")),
            ("LAB_TIMEOUT", PathBuf::from("3600")),
        ],
    );
    let asserts = Asserts::read(&results.join("results.txt"));
    let mut problems = asserts.failures();
    // The cases of push.sh (CASES there), each recorded as `case-NAME`.
    let cases = [
        "full",
        "dry-run",
        "incremental",
        "flaps",
        "kill9-resume",
        "sigterm-stale",
        "diverged",
        "attack",
        "retention",
        "access",
        "evil",
        "overlap",
        "locked",
        "state-dir",
        "dedup",
        "status-metrics",
        "dr-status",
        "recv-prune",
        "recv-as-fjord-user",
        "promote",
        "failback",
        "gameday-pg",
        "tripwire",
        "drill",
        "reload",
        "tree",
        "fidelity",
        "zvol",
        "fanout",
        "snaponly",
        "quickstart",
    ];
    let mut required = vec![
        // full
        "full-exit",
        "full-json-job",
        "full-json-datasets",
        "full-json-replicated",
        "full-guid",
        "base-held",
        // dry-run
        "dry-run-exit",
        "dry-run-prints-plan",
        "dry-run-step-not-done",
        "dry-run-no-source-snapshot",
        "dry-run-no-target-change",
        // incremental
        "incr-exit",
        "incr-was-incremental",
        "incr-from-base",
        "incr-replicated",
        // flaps
        "flaps-exit",
        "flaps-flapped",
        "flaps-mid-transfer",
        "flaps-reconnected",
        "flaps-json-ok",
        // kill9-resume
        "killed-push-failed",
        "killed-json-failed",
        "killed-token-saved",
        "resumed-exit",
        "resumed-from-token",
        "resumed-resume-first",
        "resumed-no-token-left",
        // sigterm-stale
        "sigterm-exits",
        "sigterm-token-saved",
        "stale-exit",
        "stale-token-aborted",
        "stale-then-incremental",
        "stale-no-token-left",
        // diverged
        "held-after-pushes",
        "inert-after-pushes",
        "inert-child",
        "diverged-exit",
        "diverged-json",
        "diverged-names-snapshot",
        "diverged-stderr-names-snapshot",
        "diverged-target-kept",
        "diverged-status",
        "forced-default-refused",
        "forced-default-names-setting",
        "forced-default-history-kept",
        "after-divergence-exit",
        "after-divergence-json",
        // attack
        "attack-extra-push",
        "attack-refused",
        "attack-history-kept",
        "attack-young-refused",
        "attack-young-says-min-age",
        "attack-young-history-kept",
        "forced-exit",
        "forced-json-rollback",
        "forced-rolled-back",
        "forced-held",
        // retention
        "retention-ungranted-exit",
        "retention-ungranted-target-kept",
        "retention-ungranted-says-why",
        "retention-ungranted-json-nothing-pruned",
        "retention-exit",
        "retention-old-pruned-source",
        "retention-old-pruned-target",
        "retention-json-pruned-target",
        "retention-foreign-kept",
        "retention-base-kept-source",
        "retention-base-kept-target",
        "retention-base-held",
        // access
        "stranger-refused",
        "stranger-json-failed",
        "stranger-wrote-nothing",
        "outside-prefix-refused",
        "outside-prefix-says-why",
        "outside-prefix-wrote-nothing",
        // evil
        "evil-received",
        "evil-inert",
        "evil-mountpoint-not-root",
        "evil-quota-excluded",
        "evil-held",
        // overlap
        "overlap-second-locked",
        "overlap-second-json-locked",
        "overlap-first-ok",
        // locked
        "locked-exit",
        "locked-json",
        "locked-says-lock",
        "locked-no-snapshot",
        // state-dir
        "state-dir-exit",
        "state-dir-named",
        // dedup
        "dedup-base-exit",
        "dedup-exit",
        "dedup-inventory-used",
        "dedup-costs-references-only",
        // status-metrics
        "status-push-exit",
        "status-exit",
        "status-ok",
        "status-bytes-match",
        "metrics-last-success",
        "metrics-lag",
        // dr-status
        "drstatus-newest",
        "drstatus-child-newest",
        "drstatus-fresh",
        "drstatus-check-ok",
        "drstatus-check-warning",
        "drstatus-check-critical",
        "drstatus-metrics-age",
        "drstatus-metrics-health",
        // recv-prune
        "prune-setup-exit",
        "prune-dry-exit",
        "prune-dry-lists",
        "prune-dry-destroyed-nothing",
        "prune-exit",
        "prune-kept-newest",
        "prune-destroyed-old",
        "prune-kept-two",
        // recv-as-fjord-user
        "fjord-user-runs-as",
        "fjord-user-no-capabilities",
        "fjord-user-full-exit",
        "fjord-user-full-action",
        "fjord-user-full-data",
        "fjord-user-full-child",
        "fjord-user-incr-exit",
        "fjord-user-incr-action",
        "fjord-user-incr-data",
        "fjord-user-incr-child",
        "fjord-user-held",
        "fjord-user-inert",
        "fjord-user-cannot-snapshot",
        "fjord-user-cannot-touch-source",
        // promote
        "promote-incr-exit",
        "promote-hooks-order",
        "promote-hooks-lsn-target",
        "promote-dry-plan",
        "promote-dry-nothing-done",
        "promote-dry-still-inert",
        "promote-exit",
        "promote-prints-recovery-point",
        "promote-writable",
        "promote-original-mountpoint",
        "promote-data-readable",
        "promote-writes",
        "promote-marker",
        "promote-again-keeps-writes",
        "promote-fenced-exit",
        "promote-fenced-json",
        "promote-fenced-message",
        "promote-fenced-nothing-received",
        // failback
        "fb-demote-dry-plan",
        "fb-demote-dry-unchanged",
        "fb-demote-exit",
        "fb-aside-exists",
        "fb-base-only",
        "fb-demoted-inert",
        "fb-kept-snapshot",
        "fb-kept-late",
        "fb-kept-uncommitted",
        "fb-old-push-exit",
        "fb-old-push-no-snapshot",
        "fb-back-exit",
        "fb-back-incremental",
        "fb-back-same-guid",
        "fb-back-has-dr-write",
        "fb-back-no-late",
        "fb-repromote-undemoted",
        "fb-dr-unfenced",
        "fb-resume",
        // the README's Quick start with the package
        "quickstart-package",
        "quickstart-dpkg-install",
        "quickstart-lines",
        "quickstart-dry-run-reached-zfs",
        "quickstart-replicated",
        "quickstart-copy",
        "quickstart-copy-inert",
        "quickstart-serve-user",
        "quickstart-dr-status",
        // game day with PostgreSQL under load
        "gd-push3-exit",
        "gd-drill-during-replication",
        "gd-drill-counted-rows",
        "gd-promote-exit",
        "gd-pg-starts-on-dr",
        "gd-no-gaps",
        "gd-all-replicated-rows",
        "gd-fenced-exit",
        "gd-fenced-message",
        "gd-demote-exit",
        "gd-demote-kept",
        "gd-back-exit",
        "gd-switch-exit",
        "gd-switch-steps",
        "gd-switch-same-final",
        "gd-switch-dr-demoted",
        "gd-switch-dr-unfenced",
        "gd-switch-again",
        "gd-switch-pg-starts",
        "gd-switch-zero-loss",
        "gd-switch-dr-rows",
        "gd-after-switchover",
        // tripwire
        "tripwire-learning-2",
        "tripwire-tripped-json",
        "tripwire-tripped-shares",
        "tripwire-paused-json",
        "tripwire-status-exit",
        "tripwire-status-json",
        "tripwire-metrics",
        "tripwire-dr-status",
        "tripwire-dr-share",
        "tripwire-dr-metrics",
        "tripwire-dr-check-critical",
        "tripwire-dr-check-line",
        "tripwire-after-not-tripped",
        "tripwire-after-paused",
        "tripwire-ack-exit",
        "tripwire-ack-metrics",
        "tripwire-dr-after-normal",
        "tripwire-dr-ack",
        "tripwire-dr-ack-says",
        "tripwire-dr-acked-ok",
        "tripwire-status-clear",
        "tripwire-final-not-tripped",
        "tripwire-pruning-resumed",
        // drill
        "drill-dry-exit",
        "drill-dry-nothing-done",
        "drill-ok-exit",
        "drill-ok-steps",
        "drill-ok-compared",
        "drill-ok-clone-gone",
        "drill-status-check-ok",
        "drill-fail-exit",
        "drill-fail-says-why",
        "drill-fail-clone-gone",
        "drill-status-json",
        "drill-status-check-warning",
        "drill-metrics",
        "drill-copy-untouched",
        // tree
        "tree-new-exit",
        "tree-new-full",
        "tree-deep-guid",
        "tree-removed-exit",
        "tree-deep-incremental",
        "tree-removed-reported",
        "tree-removed-says-grant",
        "tree-removed-kept",
        "tree-status-warning",
        "tree-destroyed-exit",
        "tree-destroyed-reported",
        "tree-destroyed-gone",
        "tree-destroyed-rest-kept",
        "tree-nested-exit",
        "tree-nested-parent-inert",
        "tree-nested-site-inert",
        "tree-nested-guid",
        // fidelity
        "fid-1-exit",
        "fid-1-props",
        "fid-1-forced-local",
        "fid-1-inherited",
        "fid-2-exit",
        "fid-2-incremental",
        "fid-2-props",
        "fid-2-removed-gone",
        "fid-2-inherited",
        "fid-2-forced-local",
        "fid-3-exit",
        "fid-3-renamed",
        "fid-3-moved-incremental",
        "fid-3-nothing-removed",
        "fid-3-old-name-gone",
        "fid-3-props",
        "fenc-1-exit",
        "fenc-1-roots",
        "fenc-plain-recv-own-root",
        "fenc-plain-opens",
        "fenc-2-exit",
        "fenc-2-incremental",
        "fenc-2-roots",
        "fenc-load-key",
        "fenc-kid-content",
        // zvol
        "zvol-source-device",
        "zvol-full",
        "zvol-type",
        "zvol-inert",
        "zvol-no-device",
        "zvol-incr",
        "zvol-guid",
        "zvol-promote-exit",
        "zvol-promoted",
        "zvol-promoted-bytes",
        // fanout
        "fan-first-exit",
        "fan-first-targets",
        "fan-first-dr-guid",
        "fan-first-dr2-guid",
        "fan-held-per-target",
        "fan-offline-3-exit",
        "fan-offline-3-targets",
        "fan-offline-3-base-held",
        "fan-offline-names-target",
        "fan-offline-pruned",
        "fan-offline-base-kept",
        "fan-back-exit",
        "fan-back-dr2-incremental",
        "fan-back-dr-guid",
        "fan-back-dr2-guid",
        // snaponly
        "snaponly-2-exit",
        "snaponly-2-json",
        "snaponly-old-pruned",
        "snaponly-newest-kept",
        "snaponly-check-ok",
        // reload
        "reload-added-accepted",
        "reload-removed-refused",
        "reload-removed-wrote-nothing",
        "reload-broken-rejected",
        "reload-primary-still-served",
        "reload-metrics",
    ];
    // Every push's data is compared on both datasets (parent and child).
    let compared = [
        "full",
        "incr",
        "flaps",
        "resumed",
        "stale",
        "after-divergence",
        "forced",
        "retention",
        "overlap",
        "dedup",
        "fb-resume-content",
    ];
    let names: Vec<String> = compared
        .iter()
        .flat_map(|c| [format!("{c}-data"), format!("{c}-child")])
        .chain(cases.iter().map(|c| format!("case-{c}")))
        .collect();
    required.extend(names.iter().map(String::as_str));
    problems.extend(asserts.require(&required));
    assert!(
        problems.is_empty(),
        "lab assertions failed ({}):\n{}",
        results.display(),
        problems.join("\n")
    );
}
