//! Fan-out and snapshot-only jobs over the in-memory fakes: one snapshot
//! series, a hold per target, an offline target's base kept through source
//! retention and caught up incrementally, one target's failure named
//! without touching the other's result, and a job with no target that
//! snapshots and prunes only.

mod support;

use fjord_config::{Job, SendConfig};
use fjord_replicate::fake::{DrFault, FakeDrNode, FakeHooks, FakePool};
use fjord_replicate::report::Action;
use fjord_replicate::status::{self, result};
use fjord_replicate::{
    run_job, target_nodes, DatasetResult, JobContext, JobOutcome, JobResult, RunOptions, StateFiles,
};
use std::path::Path;
use std::sync::Arc;
use support::T0;

const TWO_TARGETS: &str = r#"
[[job.target]]
name = "oslo"
host = "10.0.0.2:7450"
key = "AAAA"
dataset = "backup/home"
[[job.target]]
name = "bergen"
host = "10.0.0.3:7450"
key = "BBBB"
dataset = "backup/home"
[job.retention.source]
hourly = 2
"#;

fn job(tables: &str) -> Job {
    let text = format!(
        "key = \"/k\"\nstate_dir = \"/s\"\n[[job]]\nname = \"home\"\nsource = \"tank/home\"\n{tables}"
    );
    let mut c = SendConfig::from_toml(Path::new("test.toml"), &text).expect("test config");
    c.jobs.remove(0)
}

/// A primary, two DR nodes (oslo, bergen) and the job between them.
struct Fan {
    pool: Arc<FakePool>,
    oslo: Arc<FakeDrNode>,
    bergen: Arc<FakeDrNode>,
    hooks: Arc<FakeHooks>,
    state: tempfile::TempDir,
    job: Job,
    clock: i64,
}

impl Fan {
    fn new(tables: &str) -> Fan {
        let pool = Arc::new(FakePool::new());
        pool.create("tank/home");
        Fan {
            pool,
            oslo: Arc::new(FakeDrNode::new(&["backup"])),
            bergen: Arc::new(FakeDrNode::new(&["backup"])),
            hooks: Arc::new(FakeHooks::default()),
            state: tempfile::tempdir().expect("tempdir"),
            job: job(tables),
            clock: T0,
        }
    }

    async fn push_with(&mut self, dry_run: bool) -> JobOutcome {
        self.clock += 3600;
        self.pool.set_clock(self.clock);
        let ctx = Arc::new(JobContext {
            pool: self.pool.clone(),
            targets: target_nodes(&self.job, [self.oslo.clone(), self.bergen.clone()]),
            job: self.job.clone(),
            options: RunOptions {
                force: false,
                dry_run,
                now_unix: self.clock,
            },
            hooks: self.hooks.clone(),
        });
        let state = StateFiles {
            state_dir: self.state.path().to_path_buf(),
            metrics_file: Some(self.state.path().join("fjord.prom")),
        };
        run_job(ctx, &state).await
    }

    async fn push(&mut self) -> JobOutcome {
        self.push_with(false).await
    }

    fn source(&self) -> Vec<String> {
        names(self.pool.snapshots_of("tank/home"))
    }

    fn held_by(&self, tag: &str) -> Vec<String> {
        self.pool
            .snapshots_of("tank/home")
            .into_iter()
            .filter(|s| {
                self.pool
                    .holds_of(&s.full_name("tank/home"))
                    .iter()
                    .any(|t| t == tag)
            })
            .map(|s| s.name)
            .collect()
    }
}

fn names(v: Vec<fjord_zfs::SnapshotInfo>) -> Vec<String> {
    v.into_iter().map(|s| s.name).collect()
}

fn target<'a>(o: &'a JobOutcome, name: &str) -> &'a fjord_replicate::report::TargetReport {
    o.report
        .targets
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no target {name} in {:?}", o.report))
}

#[tokio::test]
async fn one_snapshot_series_reaches_both_targets_each_holding_its_base() {
    let mut f = Fan::new(TWO_TARGETS);
    let o = f.push().await;
    assert_eq!(o.report.result, JobResult::Ok, "{:?}", o.report);
    assert_eq!(f.source().len(), 1, "one snapshot for both targets");
    let snap = o.report.snapshot.clone().unwrap();
    assert_eq!(names(f.oslo.snapshots_of("backup/home")), [snap.as_str()]);
    assert_eq!(names(f.bergen.snapshots_of("backup/home")), [snap.as_str()]);
    assert_eq!(f.held_by("fjord-home-oslo"), [snap.as_str()]);
    assert_eq!(f.held_by("fjord-home-bergen"), [snap.as_str()]);
    assert_eq!(o.report.dataset_reports.len(), 2);
    let named: Vec<_> = o
        .report
        .dataset_reports
        .iter()
        .map(|d| d.target_name.as_deref())
        .collect();
    assert_eq!(named, [Some("oslo"), Some("bergen")]);
    let st = status::load(f.state.path(), "home").unwrap().unwrap();
    assert_eq!(st.targets.len(), 2);
    assert!(st.targets.iter().all(|t| t.last_result == result::OK));
}

/// The scenario of issue 18: bergen is offline for three pushes while
/// source retention (hourly = 2) runs; its base stays held and is never
/// pruned; back online, it catches up with one incremental from that base.
#[tokio::test]
async fn an_offline_target_keeps_its_base_and_catches_up_incrementally() {
    let mut f = Fan::new(TWO_TARGETS);
    f.push().await;
    let o = f.push().await;
    assert_eq!(o.report.result, JobResult::Ok, "{:?}", o.report);
    let base = o.report.snapshot.clone().unwrap();
    for _ in 0..3 {
        f.bergen.inject(DrFault::Unreachable);
        let o = f.push().await;
        assert_eq!(o.report.result, JobResult::Failed);
        assert_eq!(target(&o, "oslo").result, JobResult::Ok);
        assert_eq!(target(&o, "bergen").result, JobResult::Failed);
        let err = o.report.error.clone().unwrap();
        assert!(err.starts_with("target bergen: "), "{err}");
        assert!(
            o.report.warnings.is_empty()
                && o.report
                    .dataset_reports
                    .iter()
                    .all(|d| d.warnings.is_empty()),
            "the held base is kept by the plan, not refused by zfs: {:?}",
            o.report
        );
    }
    let src = f.source();
    assert!(src.contains(&base), "bergen's base was pruned: {src:?}");
    // hourly = 2 keeps the two newest; bergen's base on top of them
    assert_eq!(src.len(), 3, "{src:?}");
    assert_eq!(f.held_by("fjord-home-bergen"), [base.as_str()]);
    assert_eq!(f.held_by("fjord-home-oslo"), [src[2].clone()]);
    let st = status::load(f.state.path(), "home").unwrap().unwrap();
    let bergen = st.targets.iter().find(|t| t.name == "bergen").unwrap();
    assert_eq!(bergen.last_result, result::FAILED);
    let prom = std::fs::read_to_string(f.state.path().join("fjord.prom")).unwrap();
    assert!(
        prom.contains("fjord_job_last_result{job=\"home\",target=\"bergen\",result=\"failed\"} 1"),
        "{prom}"
    );

    let before = f.bergen.transfers().len();
    let o = f.push().await;
    assert_eq!(o.report.result, JobResult::Ok, "{:?}", o.report);
    let d = o
        .report
        .dataset_reports
        .iter()
        .find(|d| d.target_name.as_deref() == Some("bergen"))
        .unwrap();
    assert_eq!(d.steps.len(), 1, "{d:?}");
    assert_eq!(d.steps[0].action, Action::Incremental);
    assert_eq!(d.steps[0].from.as_deref(), Some(base.as_str()));
    let sent = &f.bergen.transfers()[before..];
    assert!(sent.iter().all(|t| t.from.is_some()), "no full resend");
    let newest = f.pool.snapshots_of("tank/home").last().unwrap().guid;
    assert_eq!(
        f.oslo.snapshots_of("backup/home").last().unwrap().guid,
        newest
    );
    assert_eq!(
        f.bergen.snapshots_of("backup/home").last().unwrap().guid,
        newest
    );
    // bergen's old base is released and pruned now that it moved on
    assert!(!f.source().contains(&base), "{:?}", f.source());
}

#[tokio::test]
async fn a_failing_target_leaves_the_other_ok_and_is_named() {
    let mut f = Fan::new(TWO_TARGETS);
    f.oslo.inject(DrFault::Unreachable);
    let o = f.push().await;
    assert_eq!(o.report.result, JobResult::Failed);
    assert_eq!(target(&o, "oslo").result, JobResult::Failed);
    assert_eq!(target(&o, "bergen").result, JobResult::Ok);
    assert!(target(&o, "oslo").error.is_some());
    assert!(f.bergen.exists("backup/home") && !f.oslo.exists("backup/home"));
    let err = o.report.error.clone().unwrap();
    assert!(
        err.starts_with("target oslo: ") && !err.contains("bergen"),
        "{err}"
    );
    let st = status::load(f.state.path(), "home").unwrap().unwrap();
    assert_eq!(st.last_result, result::FAILED);
    let oslo = st.targets.iter().find(|t| t.name == "oslo").unwrap();
    assert_eq!(
        (oslo.last_result.as_str(), oslo.last_success),
        (result::FAILED, None)
    );
}

#[tokio::test]
async fn a_dry_run_plans_per_target() {
    let mut f = Fan::new(TWO_TARGETS);
    f.push().await;
    f.bergen.inject(DrFault::Unreachable);
    let behind = f.push().await;
    let sent = f.oslo.transfers().len() + f.bergen.transfers().len();
    let o = f.push_with(true).await;
    assert_eq!(o.report.result, JobResult::DryRun, "{:?}", o.report);
    let plans: Vec<_> = o
        .report
        .dataset_reports
        .iter()
        .map(|d| {
            let steps: Vec<_> = d.steps.iter().map(|s| (s.action, s.done)).collect();
            (d.target_name.clone().unwrap(), d.result, steps)
        })
        .collect();
    assert_eq!(
        plans,
        [
            ("oslo".to_string(), DatasetResult::Planned, vec![]),
            (
                "bergen".to_string(),
                DatasetResult::Planned,
                vec![(Action::Incremental, false)]
            )
        ]
    );
    let bergen = &o.report.dataset_reports[1].steps[0];
    assert_eq!(bergen.to, behind.report.snapshot);
    assert_eq!(
        f.oslo.transfers().len() + f.bergen.transfers().len(),
        sent,
        "a dry run sends nothing"
    );
}

#[tokio::test]
async fn a_snapshot_only_job_snapshots_and_prunes_and_never_talks_to_a_dr_node() {
    let mut f = Fan::new("[job.retention.source]\nhourly = 2\n");
    assert!(f.job.targets().is_empty());
    let untouched = f.oslo.targets();
    for _ in 0..4 {
        let o = f.push().await;
        assert_eq!(o.report.result, JobResult::Ok, "{:?}", o.report);
        assert!(o.report.snapshot_only && o.report.targets.is_empty());
    }
    let o = f.push().await;
    assert_eq!(f.source().len(), 2, "{:?}", f.source());
    assert_eq!(o.report.dataset_reports.len(), 1);
    assert_eq!(o.report.dataset_reports[0].pruned_source.len(), 1);
    assert_eq!(f.hooks.calls().len(), 10, "pre and post hooks, each push");
    assert!(f.oslo.transfers().is_empty() && f.bergen.transfers().is_empty());
    assert_eq!(f.oslo.targets(), untouched);
    assert_eq!(f.bergen.targets(), untouched);
    let st = status::load(f.state.path(), "home").unwrap().unwrap();
    assert!(st.snapshot_only && st.targets.is_empty());
    assert_eq!(st.last_result, result::OK);
    let (level, why) = fjord_replicate::check::assess_job(
        &st,
        &fjord_replicate::check::LagThresholds {
            warn: std::time::Duration::from_secs(1800),
            crit: std::time::Duration::from_secs(7200),
        },
        f.clock + 60,
    );
    assert_eq!(level, fjord_replicate::check::Level::Ok, "{why:?}");
}

/// A random history of pushes with either target, or both, offline, under
/// source retention: a target never loses its common snapshot with the
/// source once it had one (its base stays held and unpruned), a target
/// online for a push ends at the source's newest snapshot, retention never
/// even tries to destroy a base, and after the first push nothing is ever
/// sent in full again.
async fn history(offline: Vec<(bool, bool)>) -> Result<(), proptest::test_runner::TestCaseError> {
    use proptest::prelude::*;
    let mut f = Fan::new(TWO_TARGETS);
    let first = f.push().await;
    prop_assert_eq!(first.report.result, JobResult::Ok);
    for (oslo_off, bergen_off) in offline {
        if oslo_off {
            f.oslo.inject(DrFault::Unreachable);
        }
        if bergen_off {
            f.bergen.inject(DrFault::Unreachable);
        }
        let o = f.push().await;
        f.oslo.clear_faults();
        f.bergen.clear_faults();
        let src = f.pool.snapshots_of("tank/home");
        let newest = src.last().map(|s| s.guid);
        for (node, off) in [(&f.oslo, oslo_off), (&f.bergen, bergen_off)] {
            let tgt = node.snapshots_of("backup/home");
            prop_assert!(
                tgt.iter().any(|t| src.iter().any(|s| s.guid == t.guid)),
                "a target lost its base: {:?}",
                o.report
            );
            if !off {
                prop_assert_eq!(tgt.last().map(|s| s.guid), newest);
            }
        }
        let full = o
            .report
            .dataset_reports
            .iter()
            .flat_map(|d| &d.steps)
            .any(|s| s.action == Action::Full);
        prop_assert!(!full, "a full resend: {:?}", o.report);
        // zfs (and the fake) refuses to destroy a held snapshot: the plan
        // itself must keep every base, not try and fail with a warning
        prop_assert!(
            o.report
                .dataset_reports
                .iter()
                .all(|d| d.warnings.is_empty()),
            "{:?}",
            o.report
        );
    }
    Ok(())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

    #[test]
    fn each_target_keeps_its_base_through_any_history_of_outages(
        offline in proptest::collection::vec((proptest::bool::ANY, proptest::bool::ANY), 1..12),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(history(offline))?;
    }
}
