//! Game day on the primary's side, over the in-memory fakes: a push into a
//! target promoted on the DR node is refused as its own failure kind, with
//! the DR node's words.

mod support;

use fjord_replicate::{verdict, DatasetResult, JobResult, Verdict};
use support::World;

const FENCED: &str = "backup/home was promoted on the DR node at 2026-02-01T05:00:00Z (recovery point @fjord_x): it is a primary now and takes no pushes";

#[tokio::test]
async fn a_push_into_a_promoted_target_is_refused_as_promoted_with_the_dr_nodes_message() {
    let mut w = World::new("recursive = true");
    w.pool.create("tank/home/a");
    let first = w.push().await;
    assert_eq!(first.report.result, JobResult::Ok);
    let before = w.target_names("backup/home");
    w.dr.promote("backup/home", FENCED);
    let o = w.push().await;
    assert_eq!(o.report.result, JobResult::Promoted, "{:?}", o.report);
    let root = &o.report.dataset_reports[0];
    assert_eq!(root.result, DatasetResult::Promoted);
    let e = root.error.as_deref().unwrap_or_default();
    assert!(e.contains(FENCED), "{e}");
    // Nothing was sent, the child was not tried.
    assert_eq!(w.target_names("backup/home"), before);
    assert!(w.dr.transfers().len() == 2, "{:?}", w.dr.transfers());
    assert_eq!(o.report.dataset_reports[1].result, DatasetResult::Skipped);
    // Its own verdict (and exit code), worse than a failed job.
    assert_eq!(verdict([&o]), Verdict::Promoted);
    let mut failed = w.push().await;
    failed.report.result = JobResult::Failed;
    assert_eq!(verdict([&o, &failed]), Verdict::Promoted);
    // The JSON says so.
    let lines = o.report.json_lines();
    assert!(lines[0].contains("\"result\":\"promoted\""), "{}", lines[0]);
    assert!(lines.last().unwrap().contains("\"result\":\"promoted\""));
}

#[tokio::test]
async fn a_promoted_child_fences_only_its_own_subtree() {
    let mut w = World::new("recursive = true");
    w.pool.create("tank/home/a");
    w.pool.create("tank/home/b");
    w.push().await;
    w.dr.promote("backup/home/a", FENCED);
    let o = w.push().await;
    assert_eq!(o.report.result, JobResult::Promoted);
    let by = |s: &str| {
        o.report
            .dataset_reports
            .iter()
            .find(|d| d.source == s)
            .map(|d| d.result)
    };
    assert_eq!(by("tank/home"), Some(DatasetResult::Ok));
    assert_eq!(by("tank/home/a"), Some(DatasetResult::Promoted));
    assert_eq!(by("tank/home/b"), Some(DatasetResult::Ok));
}

use fjord_replicate::fake::PoolFault;
use fjord_replicate::HookError;
use std::time::Duration;

#[tokio::test]
async fn hooks_run_around_the_snapshot_and_what_they_record_is_on_it() {
    let mut w = World::new("");
    w.hooks.records(&[("fjord:wal_lsn", "0/16B3F40")]);
    let o = w.push().await;
    assert_eq!(o.report.result, JobResult::Ok, "{:?}", o.report.error);
    let snap = o.report.snapshot.clone().unwrap();
    assert_eq!(
        w.hooks.calls(),
        ["pre home".to_string(), format!("post home @{snap}")]
    );
    assert_eq!(
        w.pool.props_of(&format!("tank/home@{snap}")),
        [("fjord:wal_lsn".to_string(), "0/16B3F40".to_string())]
    );
}

#[tokio::test]
async fn a_failing_pre_hook_means_no_snapshot_and_a_failed_job_but_the_post_hook_runs() {
    let mut w = World::new("");
    w.hooks.fail_pre(HookError::Failed {
        what: "psql -c CHECKPOINT".into(),
        status: Some(2),
        stderr: "could not connect to server".into(),
    });
    let o = w.push().await;
    assert_eq!(o.report.result, JobResult::Failed);
    assert_eq!(o.report.snapshot, None);
    let e = o.report.error.clone().unwrap_or_default();
    assert!(
        e.contains("pre-snapshot hook failed, so no snapshot was taken")
            && e.contains("could not connect"),
        "{e}"
    );
    assert!(w.source_names("tank/home").is_empty());
    assert!(w.dr.transfers().is_empty());
    assert_eq!(w.hooks.calls(), ["pre home", "post home (no snapshot)"]);
    assert_eq!(verdict([&o]), Verdict::Failed);
}

#[tokio::test]
async fn a_pre_hook_that_timed_out_says_so() {
    let mut w = World::new("");
    w.hooks.fail_pre(HookError::Timeout {
        what: "/usr/local/sbin/freeze".into(),
        after: Duration::from_secs(60),
    });
    let o = w.push().await;
    let e = o.report.error.clone().unwrap_or_default();
    assert!(
        e.contains("did not finish within 60s and was killed"),
        "{e}"
    );
    assert!(w.source_names("tank/home").is_empty());
}

#[tokio::test]
async fn the_post_hook_runs_when_the_snapshot_fails() {
    let mut w = World::new("");
    w.pool.inject(PoolFault::Snapshot);
    let o = w.push().await;
    assert_eq!(o.report.result, JobResult::Failed);
    assert!(o
        .report
        .error
        .clone()
        .unwrap_or_default()
        .contains("out of space"));
    assert_eq!(w.hooks.calls(), ["pre home", "post home (no snapshot)"]);
}

#[tokio::test]
async fn a_failing_post_hook_fails_the_job_but_the_snapshot_is_replicated() {
    let mut w = World::new("");
    w.hooks.fail_post(HookError::Failed {
        what: "/usr/local/sbin/thaw".into(),
        status: Some(1),
        stderr: "still frozen".into(),
    });
    let o = w.push().await;
    assert_eq!(o.report.result, JobResult::Failed);
    let e = o.report.error.clone().unwrap_or_default();
    assert!(
        e.contains("post-snapshot hook failed") && e.contains("still frozen"),
        "{e}"
    );
    let snap = o.report.snapshot.clone().unwrap();
    assert_eq!(w.target_names("backup/home"), [snap]);
}

#[tokio::test]
async fn a_demoted_source_is_neither_snapshotted_nor_sent_and_the_error_says_how_to_undo_it() {
    let mut w = World::new("");
    assert_eq!(w.push().await.report.result, JobResult::Ok);
    let before_source = w.source_names("tank/home");
    let before_target = w.target_names("backup/home");
    w.pool.set_property(
        "tank/home",
        fjord_config::DEMOTED_PROP,
        "2026-02-01T05:00:00Z @fjord_x",
    );
    let o = w.push().await;
    assert_eq!(o.report.result, JobResult::Failed, "{:?}", o.report);
    let e = o.report.error.clone().unwrap_or_default();
    assert!(e.contains("tank/home was demoted"), "{e}");
    assert!(e.contains("fjord-recv promote tank/home"), "{e}");
    assert!(o.report.snapshot.is_none());
    assert_eq!(w.source_names("tank/home"), before_source);
    assert_eq!(w.target_names("backup/home"), before_target);
    assert_eq!(verdict([&o]), Verdict::Failed);
    // promoted again (the marker lifted): pushes go on
    w.pool
        .set_property("tank/home", fjord_config::DEMOTED_PROP, "-");
    assert_eq!(w.push().await.report.result, JobResult::Ok);
}

mod switchover {
    use super::support::World;
    use fjord_replicate::switchover::{switchover, Step, SwitchResult};
    use fjord_replicate::{JobContext, RunOptions};
    use std::sync::Arc;

    async fn run(w: &mut World, dry_run: bool) -> fjord_replicate::switchover::SwitchoverReport {
        w.clock += 3600;
        w.pool.set_clock(w.clock);
        let ctx = Arc::new(JobContext {
            pool: w.pool.clone(),
            targets: fjord_replicate::target_nodes(&w.job, [w.dr.clone()]),
            job: w.job.clone(),
            options: RunOptions {
                force: false,
                dry_run,
                now_unix: w.clock,
            },
            hooks: w.hooks.clone(),
        });
        switchover(ctx, &w.state()).await
    }

    fn steps(r: &fjord_replicate::switchover::SwitchoverReport) -> Vec<(Step, bool)> {
        r.steps.iter().map(|s| (s.step, s.done)).collect()
    }

    #[tokio::test]
    async fn a_switchover_pushes_a_final_snapshot_promotes_exactly_it_and_demotes_the_source() {
        let mut w = World::new("");
        w.push().await;
        let dry = run(&mut w, true).await;
        assert_eq!(dry.result, SwitchResult::DryRun);
        assert_eq!(w.dr.promoted_to("backup/home"), None);
        let before = w.source_names("tank/home").len();
        assert_eq!(
            w.source_names("tank/home").len(),
            before,
            "a dry run takes no snapshot"
        );

        let r = run(&mut w, false).await;
        assert_eq!(r.result, SwitchResult::Ok, "{r:?}");
        assert_eq!(
            steps(&r),
            [
                (Step::StopWrites, true),
                (Step::FinalPush, true),
                (Step::PromoteTarget, true),
                (Step::DemoteSource, true)
            ]
        );
        let last = w.source_names("tank/home").pop();
        assert_eq!(r.final_snapshot, last);
        assert_eq!(w.dr.promoted_to("backup/home"), last);
        assert_eq!(w.target_names("backup/home"), w.source_names("tank/home"));
        // the old primary's pushes stop, and a second switchover says it is done
        let o = w.push().await;
        assert_eq!(o.report.result, fjord_replicate::JobResult::Failed);
        assert_eq!(run(&mut w, false).await.result, SwitchResult::AlreadyDone);
    }

    #[tokio::test]
    async fn a_refused_promotion_leaves_the_source_a_primary_and_a_rerun_finishes() {
        let mut w = World::new("");
        w.push().await;
        w.dr.refuse_next_promote();
        let r = run(&mut w, false).await;
        assert_eq!(r.result, SwitchResult::Failed);
        assert_eq!(r.steps.last().map(|s| s.step), Some(Step::PromoteTarget));
        assert!(
            r.error
                .as_deref()
                .unwrap_or_default()
                .contains("run switchover again"),
            "{r:?}"
        );
        assert_eq!(
            w.pool.property_of("tank/home", fjord_config::DEMOTED_PROP),
            None
        );
        let final_snapshot = r.final_snapshot.clone();
        // the grant is given: the rerun pushes (nothing new since) and promotes
        let again = run(&mut w, false).await;
        assert_eq!(again.result, SwitchResult::Ok, "{again:?}");
        assert!(w
            .pool
            .property_of("tank/home", fjord_config::DEMOTED_PROP)
            .is_some());
        assert!(again.final_snapshot >= final_snapshot);
    }

    #[tokio::test]
    async fn a_run_cut_after_the_promotion_skips_the_push_and_demotes_to_the_promoted_snapshot() {
        let mut w = World::new("");
        w.push().await;
        let held = w.held("tank/home").pop().expect("the base is held");
        // an earlier run got as far as the promotion
        fjord_replicate::DrNode::promote(&*w.dr, "backup/home", &held)
            .await
            .expect("promoted");
        let snaps_before = w.source_names("tank/home");
        let r = run(&mut w, false).await;
        assert_eq!(r.result, SwitchResult::Ok, "{r:?}");
        assert_eq!(steps(&r)[1], (Step::FinalPush, false));
        assert_eq!(r.final_snapshot.as_deref(), Some(held.as_str()));
        assert_eq!(w.source_names("tank/home"), snaps_before, "no new snapshot");
        assert!(w
            .pool
            .property_of("tank/home", fjord_config::DEMOTED_PROP)
            .is_some_and(|v| v.ends_with(&format!("@{held}"))));
    }
}
