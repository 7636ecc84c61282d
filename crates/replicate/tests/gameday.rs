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
