//! Every path of a push, over the in-memory fakes (no ZFS, no sockets):
//! full, -i/-I, up to date, resume, stale token, diverged refused and
//! forced, failed parents, holds, pruning, locks, state errors, dry runs,
//! and how outcomes aggregate.

mod support;

use fjord_replicate::fake::{DrFault, PoolFault};
use fjord_replicate::report::Action;
use fjord_replicate::{
    verdict, DatasetResult, JobLock, JobResult, StateError, StateFiles, Verdict,
};
use support::World;

fn actions(o: &fjord_replicate::JobOutcome, i: usize) -> Vec<Action> {
    o.report.dataset_reports[i]
        .steps
        .iter()
        .map(|s| s.action)
        .collect()
}

#[tokio::test]
async fn full_then_incremental_then_nothing_new() {
    let mut w = World::new("");
    let first = w.push().await;
    assert_eq!(first.report.result, JobResult::Ok, "{:?}", first.report);
    assert_eq!(actions(&first, 0), [Action::Full]);
    assert_eq!(w.target_names("backup/home"), w.source_names("tank/home"));
    let second = w.push().await;
    assert_eq!(actions(&second, 0), [Action::Incremental]);
    let step = &second.report.dataset_reports[0].steps[0];
    assert!(step.intermediates && step.done && step.bytes > 0);
    assert_eq!(step.from, first.report.snapshot);
    assert_eq!(step.to, second.report.snapshot);
    assert_eq!(w.target_names("backup/home").len(), 2);
    assert!(first.state_errors.is_empty() && second.state_errors.is_empty());
}

#[tokio::test]
async fn minus_i_sends_only_the_newest_and_minus_capital_i_every_snapshot_between() {
    for (intermediates, expected) in [(true, 3), (false, 2)] {
        let mut w = World::new(&format!("intermediates = {intermediates}"));
        w.push().await;
        // Two snapshots taken by someone else, then a push.
        w.pool.set_clock(w.clock + 60);
        fjord_replicate::Pool::snapshot(
            &*w.pool,
            "tank/home",
            "fjord_2026-02-01T011000Z",
            false,
            &[],
        )
        .await
        .unwrap();
        let o = w.push().await;
        assert_eq!(o.report.result, JobResult::Ok);
        assert_eq!(
            o.report.dataset_reports[0].steps[0].intermediates,
            intermediates
        );
        assert_eq!(
            w.target_names("backup/home").len(),
            expected,
            "intermediates = {intermediates}"
        );
    }
}

#[tokio::test]
async fn an_up_to_date_target_is_reported_as_such_by_a_dry_run() {
    let mut w = World::new("");
    w.push().await;
    let state = w.state();
    let o = w.push_with(false, true, state).await;
    assert_eq!(o.report.result, JobResult::DryRun);
    let d = &o.report.dataset_reports[0];
    assert_eq!(d.result, DatasetResult::Planned);
    assert!(d.steps.is_empty(), "{:?}", d.steps);
    assert_eq!(o.report.snapshot, None, "a dry run takes no snapshot");
    assert_eq!(w.source_names("tank/home").len(), 1);
}

#[tokio::test]
async fn a_dry_run_plans_without_snapshot_lock_or_status() {
    let mut w = World::new("");
    fjord_replicate::Pool::snapshot(&*w.pool, "tank/home", "manual", false, &[])
        .await
        .unwrap();
    let state = StateFiles {
        state_dir: "/nonexistent/state".into(),
        metrics_file: None,
    };
    let o = w.push_with(false, true, state).await;
    assert_eq!(o.report.result, JobResult::DryRun);
    assert!(o.state_errors.is_empty());
    let d = &o.report.dataset_reports[0];
    assert_eq!(d.steps.len(), 1);
    assert_eq!(d.steps[0].action, Action::Full);
    assert!(!d.steps[0].done);
    assert!(!w.dr.exists("backup/home"));
}

#[tokio::test]
async fn a_transfer_cut_short_resumes_then_catches_up() {
    let mut w = World::new("");
    w.push().await;
    w.push().await;
    w.push().await;
    // A fresh target needs the whole history: make it -I over three.
    let mut w2 = World::new("");
    w2.push().await;
    for _ in 0..2 {
        w2.pool.set_clock(w2.clock + 60);
        w2.clock += 600;
        let name = fjord_zfs::snapname::format_snapshot_name("fjord", w2.clock);
        fjord_replicate::Pool::snapshot(&*w2.pool, "tank/home", &name, false, &[])
            .await
            .unwrap();
    }
    w2.dr.inject(DrFault::LinkLostAfter {
        target: "backup/home".into(),
        committed: 1,
    });
    let cut = w2.push().await;
    assert_eq!(cut.report.result, JobResult::Failed);
    let d = &cut.report.dataset_reports[0];
    assert_eq!(d.result, DatasetResult::Failed);
    assert!(
        d.error.as_deref().unwrap_or("").contains("unreachable"),
        "{:?}",
        d.error
    );
    assert!(
        w2.dr.resume_guid("backup/home").is_some(),
        "a resumable partial receive is left"
    );
    assert!(d.pruned_source.is_empty() && d.pruned_target.is_empty());
    let again = w2.push().await;
    assert_eq!(
        again.report.result,
        JobResult::Ok,
        "{:?}",
        again.report.dataset_reports[0]
    );
    assert_eq!(actions(&again, 0), [Action::Resume, Action::Incremental]);
    assert_eq!(w2.target_names("backup/home"), w2.source_names("tank/home"));
    assert_eq!(w2.dr.resume_guid("backup/home"), None);
}

#[tokio::test]
async fn a_stale_resume_token_is_discarded_and_the_push_falls_back_to_the_common_snapshot() {
    let mut w = World::new("");
    w.push().await;
    w.dr.inject(DrFault::LinkLostAfter {
        target: "backup/home".into(),
        committed: 0,
    });
    let cut = w.push().await;
    assert_eq!(cut.report.result, JobResult::Failed);
    // The snapshot being received is destroyed on the source (not held).
    let partial = cut.report.snapshot.clone().unwrap();
    w.pool.destroy(&format!("tank/home@{partial}")).unwrap();
    let o = w.push().await;
    assert_eq!(
        o.report.result,
        JobResult::Ok,
        "{:?}",
        o.report.dataset_reports[0]
    );
    assert_eq!(
        actions(&o, 0),
        [Action::DiscardStaleToken, Action::Incremental]
    );
    assert_eq!(w.target_names("backup/home"), w.source_names("tank/home"));
}

#[tokio::test]
async fn a_diverged_target_is_refused_then_rolled_back_with_force() {
    let mut w = World::new("");
    w.push().await;
    w.dr.write("backup/home");
    let refused = w.push().await;
    assert_eq!(refused.report.result, JobResult::Diverged);
    let d = &refused.report.dataset_reports[0];
    assert_eq!(d.result, DatasetResult::Diverged);
    assert!(
        d.error.as_deref().unwrap_or("").contains("--force"),
        "{:?}",
        d.error
    );
    assert_eq!(verdict([&refused]), Verdict::Failed);
    let forced = w.push_forced().await;
    assert_eq!(forced.report.result, JobResult::Ok);
    assert!(forced.report.dataset_reports[0].steps[0].rollback);
    assert_eq!(w.target_names("backup/home"), w.source_names("tank/home"));
}

#[tokio::test]
async fn a_target_with_a_snapshot_of_its_own_is_diverged() {
    let mut w = World::new("");
    w.push().await;
    w.dr.snapshot_foreign("backup/home", "local");
    let o = w.push().await;
    assert_eq!(o.report.result, JobResult::Diverged);
    assert!(o.report.dataset_reports[0]
        .error
        .as_deref()
        .unwrap()
        .contains("local"));
}

#[tokio::test]
async fn an_unreachable_dr_node_fails_the_dataset() {
    let mut w = World::new("");
    w.dr.inject(DrFault::Unreachable);
    let o = w.push().await;
    assert_eq!(o.report.result, JobResult::Failed);
    assert!(o.report.dataset_reports[0]
        .error
        .as_deref()
        .unwrap()
        .contains("unreachable"));
}

#[tokio::test]
async fn an_unrelated_target_is_refused_even_with_force() {
    let mut w = World::new("");
    // Someone else's dataset already sits at the target name.
    w.dr.create("backup/home");
    w.dr.snapshot_foreign("backup/home", "theirs");
    for force in [false, true] {
        let state = w.state();
        let o = w.push_with(force, false, state).await;
        assert_eq!(o.report.result, JobResult::Failed, "force = {force}");
        let e = o.report.dataset_reports[0].error.clone().unwrap();
        assert!(e.contains("--force cannot fix this"), "{e}");
    }
    assert_eq!(w.target_names("backup/home"), ["theirs"]);
}

fn tree() -> World {
    let w = World::new("recursive = true\nparallelism = 2");
    for d in ["tank/home/a", "tank/home/a/b", "tank/home/c"] {
        w.pool.create(d);
    }
    w
}

#[tokio::test]
async fn a_failed_parent_skips_its_children_and_the_rest_goes_on() {
    let mut w = tree();
    w.pool.inject(PoolFault::StreamFails("tank/home/a".into()));
    let o = w.push().await;
    assert_eq!(o.report.result, JobResult::Failed);
    let by = |s: &str| {
        o.report
            .dataset_reports
            .iter()
            .find(|d| d.source == s)
            .unwrap()
    };
    assert_eq!(by("tank/home").result, DatasetResult::Ok);
    assert_eq!(by("tank/home/a").result, DatasetResult::Failed);
    assert!(by("tank/home/a")
        .error
        .as_deref()
        .unwrap()
        .contains("source stream failed"));
    assert_eq!(by("tank/home/a/b").result, DatasetResult::Skipped);
    assert!(by("tank/home/a/b")
        .error
        .as_deref()
        .unwrap()
        .contains("tank/home/a failed"));
    assert_eq!(by("tank/home/c").result, DatasetResult::Ok);
    assert_eq!((o.report.datasets, o.report.failed), (4, 2));
    assert!(!w.dr.exists("backup/home/a/b"));
    // The next push brings the rest across.
    let again = w.push().await;
    assert_eq!(
        again.report.result,
        JobResult::Ok,
        "{:?}",
        again.report.error
    );
    // A new target gets a full stream of the newest snapshot.
    assert_eq!(
        w.target_names("backup/home/a/b"),
        [again.report.snapshot.clone().unwrap()]
    );
}

#[tokio::test]
async fn a_root_that_does_not_start_fails_every_child() {
    let mut w = tree();
    w.pool.inject(PoolFault::StartSend("tank/home".into()));
    let o = w.push().await;
    assert_eq!((o.report.datasets, o.report.failed), (4, 4));
    assert_eq!(o.report.dataset_reports[0].result, DatasetResult::Failed);
    assert!(o.report.dataset_reports[1..]
        .iter()
        .all(|d| d.result == DatasetResult::Skipped));
}

#[tokio::test]
async fn the_hold_moves_only_after_a_successful_transfer() {
    let mut w = World::new("");
    let first = w.push().await;
    let s1 = first.report.snapshot.clone().unwrap();
    assert_eq!(w.held("tank/home"), vec![s1.clone()]);
    w.pool.inject(PoolFault::StreamFails("tank/home".into()));
    let failed = w.push().await;
    assert_eq!(failed.report.result, JobResult::Failed);
    assert_eq!(
        w.held("tank/home"),
        vec![s1.clone()],
        "a failed push moves no hold"
    );
    let ok = w.push().await;
    assert_eq!(w.held("tank/home"), [ok.report.snapshot.clone().unwrap()]);
    // The old base is released, so an operator (or retention) may destroy it.
    w.pool.destroy(&format!("tank/home@{s1}")).unwrap();
}

#[tokio::test]
async fn a_failed_hold_keeps_the_old_one_and_warns() {
    let mut w = World::new("");
    let first = w.push().await;
    w.pool.inject(PoolFault::Hold);
    let o = w.push().await;
    assert_eq!(o.report.result, JobResult::Ok);
    assert!(o.report.dataset_reports[0]
        .warnings
        .iter()
        .any(|m| m.contains("cannot hold")));
    assert_eq!(w.held("tank/home"), [first.report.snapshot.unwrap()]);
}

#[tokio::test]
async fn pruning_runs_after_success_only_and_never_takes_the_base() {
    let keep = "[job.retention.source]\nhourly = 1\n[job.retention.target]\nhourly = 2\n";
    let mut w = World::new(keep);
    for _ in 0..3 {
        let o = w.push().await;
        assert_eq!(o.report.result, JobResult::Ok);
    }
    assert_eq!(w.source_names("tank/home").len(), 1);
    assert_eq!(w.target_names("backup/home").len(), 2);
    w.pool.inject(PoolFault::StreamFails("tank/home".into()));
    let failed = w.push().await;
    let d = &failed.report.dataset_reports[0];
    assert!(
        d.pruned_source.is_empty() && d.pruned_target.is_empty(),
        "no pruning after a failure"
    );
    assert_eq!(
        w.source_names("tank/home").len(),
        2,
        "the failed push's snapshot stays"
    );
    // The base is on both sides after every push.
    let ok = w.push().await;
    let base = ok.report.snapshot.unwrap();
    assert!(w.source_names("tank/home").contains(&base));
    assert!(w.target_names("backup/home").contains(&base));
}

#[tokio::test]
async fn a_refused_prune_is_a_warning_not_a_failure() {
    let mut w = World::new("[job.retention.target]\nhourly = 1\n");
    w.push().await;
    w.dr.inject(DrFault::RefuseDestroy);
    let o = w.push().await;
    assert_eq!(o.report.result, JobResult::Ok);
    assert!(o.report.dataset_reports[0]
        .warnings
        .iter()
        .any(|m| m.contains("allow_prune")));
}

#[tokio::test]
async fn a_locked_job_is_skipped_and_only_that_is_exit_6() {
    let mut w = World::new("");
    let _held = JobLock::acquire(w.state.path(), "home").unwrap();
    let o = w.push().await;
    assert_eq!(o.report.result, JobResult::Locked);
    assert!(o.state_errors.is_empty());
    assert_eq!(verdict([&o]), Verdict::Locked);
    assert_eq!(
        w.source_names("tank/home").len(),
        0,
        "a skipped run takes no snapshot"
    );
}

#[tokio::test]
async fn a_missing_state_dir_is_a_state_error_not_a_held_lock() {
    let mut w = World::new("");
    let state = StateFiles {
        state_dir: w.state.path().join("missing"),
        metrics_file: None,
    };
    let o = w.push_with(false, false, state).await;
    assert_eq!(o.report.result, JobResult::Failed);
    assert!(
        matches!(o.state_errors[..], [StateError::Lock(_)]),
        "{:?}",
        o.state_errors
    );
    assert!(
        o.state_errors[0].to_string().contains("state_dir"),
        "{}",
        o.state_errors[0]
    );
    assert_eq!(verdict([&o]), Verdict::StateLost);
    assert_eq!(w.source_names("tank/home").len(), 0, "nothing runs blind");
}

#[tokio::test]
async fn an_unwritable_metrics_file_is_a_state_error_after_a_good_push() {
    let mut w = World::new("");
    let state = StateFiles {
        state_dir: w.state.path().to_path_buf(),
        metrics_file: Some(w.state.path().join("no/such/dir/fjord.prom")),
    };
    let o = w.push_with(false, false, state).await;
    assert_eq!(o.report.result, JobResult::Ok);
    assert!(
        matches!(o.state_errors[..], [StateError::Metrics { .. }]),
        "{:?}",
        o.state_errors
    );
    assert_eq!(verdict([&o]), Verdict::StateLost);
    let status = fjord_replicate::status::load(w.state.path(), "home")
        .unwrap()
        .unwrap();
    assert_eq!(status.last_result, "ok");
}

#[tokio::test]
async fn status_keeps_the_last_success_through_a_failure() {
    let mut w = World::new("");
    let ok = w.push().await;
    let after_ok = fjord_replicate::status::load(w.state.path(), "home")
        .unwrap()
        .unwrap();
    assert_eq!(after_ok.last_success, Some(w.clock));
    assert!(after_ok.newest_replicated_snapshot_time.is_some());
    w.dr.inject(DrFault::Unreachable);
    let failed = w.push().await;
    assert_eq!(failed.report.result, JobResult::Failed);
    let after = fjord_replicate::status::load(w.state.path(), "home")
        .unwrap()
        .unwrap();
    assert_eq!(after.last_result, "failed");
    assert_eq!(after.last_success, after_ok.last_success);
    assert_eq!(
        after.newest_replicated_snapshot_time,
        after_ok.newest_replicated_snapshot_time
    );
    assert!(after.last_error.is_some());
    drop(ok);
}

#[tokio::test]
async fn a_failed_snapshot_fails_the_job_before_anything_is_sent() {
    let mut w = World::new("");
    w.pool.inject(PoolFault::Snapshot);
    let o = w.push().await;
    assert_eq!(o.report.result, JobResult::Failed);
    assert!(o
        .report
        .error
        .as_deref()
        .unwrap()
        .contains("taking snapshot"));
    assert!(w.dr.transfers().is_empty());
}

#[tokio::test]
async fn a_missing_source_fails_with_advice() {
    let mut w = World::new("");
    w.job.source = "tank/nothing".into();
    let o = w.push().await;
    assert_eq!(o.report.result, JobResult::Failed);
    assert!(o
        .report
        .error
        .as_deref()
        .unwrap()
        .contains("does not exist"));
}

#[test]
fn outcomes_aggregate_worst_first() {
    use fjord_replicate::{JobOutcome, JobReport};
    let outcome = |result| JobOutcome {
        report: JobReport::new("j", result),
        state_errors: vec![],
    };
    let ok = outcome(JobResult::Ok);
    let dry = outcome(JobResult::DryRun);
    let locked = outcome(JobResult::Locked);
    let diverged = outcome(JobResult::Diverged);
    let failed = outcome(JobResult::Failed);
    assert_eq!(verdict([]), Verdict::Ok);
    assert_eq!(verdict([&ok, &dry]), Verdict::Ok);
    assert_eq!(verdict([&ok, &locked]), Verdict::Locked);
    assert_eq!(verdict([&locked, &diverged]), Verdict::Failed);
    assert_eq!(verdict([&failed, &ok]), Verdict::Failed);
    let mut lost = outcome(JobResult::Ok);
    lost.state_errors.push(StateError::Metrics {
        path: "/x".into(),
        cause: std::io::Error::other("x"),
    });
    assert_eq!(verdict([&failed, &lost]), Verdict::StateLost);
}

#[tokio::test]
async fn json_lines_carry_each_dataset_then_the_job() {
    let mut w = tree();
    let o = w.push().await;
    let lines = o.report.json_lines();
    assert_eq!(lines.len(), 5);
    let values: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for v in &values[..4] {
        assert_eq!(v["type"], "dataset");
        for key in [
            "job",
            "source",
            "target",
            "result",
            "steps",
            "replicated",
            "bytes",
            "bytes_resent",
            "reconnects",
            "duration_secs",
            "pruned_source",
            "pruned_target",
            "warnings",
            "error",
        ] {
            assert!(v.get(key).is_some(), "dataset line lacks {key}: {v}");
        }
        assert_eq!(v["result"], "ok");
        assert_eq!(v["steps"][0]["action"], "full");
        assert_eq!(v["steps"][0]["done"], true);
    }
    let job = &values[4];
    assert_eq!(job["type"], "job");
    assert_eq!(job["result"], "ok");
    assert_eq!(job["datasets"], 4);
    assert_eq!(job["snapshot"], serde_json::json!(o.report.snapshot));
    for key in [
        "job",
        "failed",
        "bytes",
        "bytes_resent",
        "reconnects",
        "duration_secs",
        "error",
    ] {
        assert!(job.get(key).is_some(), "job line lacks {key}");
    }
}

/// The Quick start's `push --dry-run` on a dataset that has no snapshot yet:
/// it plans the full send of the snapshot the push would take (it failed,
/// "the source has no snapshot to send", found by the lab case
/// `quickstart`).
#[tokio::test]
async fn a_first_dry_run_plans_the_full_send_of_the_snapshot_it_would_take() {
    let mut w = World::new("");
    let state = w.state();
    let o = w.push_with(false, true, state).await;
    assert_eq!(o.report.result, JobResult::DryRun, "{:?}", o.report);
    let d = &o.report.dataset_reports[0];
    assert_eq!(d.result, DatasetResult::Planned, "{d:?}");
    assert_eq!(d.steps.len(), 1);
    assert_eq!(d.steps[0].action, Action::Full);
    assert!(!d.steps[0].done);
    assert!(
        d.steps[0]
            .to
            .as_deref()
            .is_some_and(|t| t.starts_with("fjord_")),
        "{:?}",
        d.steps[0]
    );
    assert!(
        w.source_names("tank/home").is_empty(),
        "a dry run takes no snapshot"
    );
    assert!(!w.dr.exists("backup/home"));
}
